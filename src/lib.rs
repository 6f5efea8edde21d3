//! crossmodal: cross-modal sentiment analysis whose numerics run in
//! hand-written WGSL compute shaders through wgpu, each kernel beside an
//! ndarray CPU reference.
//!
//! - [`gpu`]: adapter choice, buffers, pipeline cache, dispatch, timestamps.
//! - [`ops`]: one module per op family: CPU reference and GPU launchers,
//!   forward and backward side by side.
//! - [`optim`]: SGD and Adam update kernels.
//! - [`study`]: inspection, the CPU/GPU shadow check, gradient checks and
//!   benchmarks (`crossmodal inspect`, `run --shadow`, `gradcheck`, `bench`).

pub mod data;
pub mod error;
pub mod experiment;
pub mod gpu;
pub mod graph;
pub mod nn;
pub mod ops;
pub mod optim;
pub mod study;
pub mod tensor;

pub use error::{Error, Result};
pub use gpu::{GpuContext, GpuTensor};
pub use tensor::DType;
