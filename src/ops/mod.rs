//! Op families: one module per op, CPU reference and GPU launchers, forward and backward side by side.

pub mod activation;
pub mod concat;
pub mod embedding;
pub mod matmul;
pub mod softmax_cross_entropy;
