//! Optimizers: SGD with momentum and Adam, each with its own WGSL update kernel.

pub mod adam;
pub mod sgd;
