//! Op families: one module per op, CPU reference and GPU launchers, forward and backward side by side.

pub mod activation;
pub mod average;
pub mod bias;
pub mod clip_norm;
pub mod concat;
pub mod conv2d;
pub mod dropout;
pub mod embedding;
pub mod lstm;
pub mod matmul;
pub mod peak;
pub mod pool2d;
pub mod recurrent;
pub mod reduce;
pub mod rnn;
pub mod segment_sum;
pub mod softmax_cross_entropy;
pub mod threads;
