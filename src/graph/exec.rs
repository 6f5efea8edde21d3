//! What a backend does with a built graph: the [`Executor`] trait that the
//! GPU (wgpu kernels) and CPU (ndarray references) backends implement, the
//! [`Batch`] it is fed, and the optimizer settings a training step applies.

use crate::error::Result;
use crate::graph::NodeId;
use crate::optim::{adam::AdamConfig, sgd::SgdConfig};

/// Host data for one input node.
#[derive(Clone, Debug, PartialEq)]
pub enum HostData {
    F32(Vec<f32>),
    U32(Vec<u32>),
}

/// One step's inputs, by input node. Token ids are time-major `[T,B]`.
#[derive(Clone, Debug, Default)]
pub struct Batch {
    pub inputs: Vec<(NodeId, HostData)>,
}

impl Batch {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with(mut self, input: NodeId, data: HostData) -> Self {
        self.inputs.push((input, data));
        self
    }
}

/// Which part of a training step work belongs to (both backends' timings
/// and the GPU schedule).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Phase {
    Forward,
    Backward,
    /// Gradient clipping and the optimizer.
    Update,
}

/// The update a training step applies to every parameter.
#[derive(Clone, Debug, PartialEq)]
pub enum Optimizer {
    Sgd(SgdConfig),
    Adam(AdamConfig),
}

impl Default for Optimizer {
    fn default() -> Self {
        Optimizer::Adam(AdamConfig::default())
    }
}

/// Training settings shared by both backends.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TrainConfig {
    pub optimizer: Optimizer,
    /// Rescale all gradients so their global L2 norm is at most this.
    pub clip_global_norm: Option<f32>,
}

/// A backend running one graph. Built once from the graph, the loss node
/// and the initial parameters; every call reuses what was built.
pub trait Executor {
    /// Forward, backward and the optimizer update; returns the batch loss.
    fn train_step(&mut self, batch: &Batch) -> Result<f32>;

    /// Forward only; returns the batch loss.
    fn loss(&mut self, batch: &Batch) -> Result<f32>;

    /// Forward only; returns the value of `output` (e.g. probabilities).
    fn predict(&mut self, batch: &Batch, output: NodeId) -> Result<Vec<f32>>;

    /// Forward and backward without an update: the loss and each parameter's
    /// gradient, in [`crate::graph::Graph::params`] order.
    fn gradients(&mut self, batch: &Batch) -> Result<(f32, Vec<Vec<f32>>)>;

    /// A parameter's current value.
    fn param(&self, id: NodeId) -> Result<Vec<f32>>;

    /// Overwrites a parameter.
    fn set_param(&mut self, id: NodeId, value: &[f32]) -> Result<()>;

    /// The value of any node after the last forward (inspection).
    fn value(&mut self, id: NodeId) -> Result<Vec<f32>>;
}
