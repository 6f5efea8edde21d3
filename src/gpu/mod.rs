//! The wgpu runtime every op uses: adapter choice and device ([`context`]),
//! typed device buffers and the buffer pool ([`buffer`]), shader and pipeline
//! cache with explicit bind group layouts ([`pipeline`]), the one dispatch
//! helper that respects the adapter's limits ([`dispatch`]), and timestamp
//! queries for the profiler ([`timer`]).

pub mod buffer;
pub mod context;
pub mod dispatch;
pub mod pipeline;
pub mod timer;

pub use buffer::{BufferPool, GpuTensor};
pub use context::{BackendChoice, GpuContext, GpuOptions};
pub use dispatch::{Dispatch, Grid};
pub use pipeline::{shader_source, Access, KernelSpec, Shader};
pub use timer::KernelTiming;
