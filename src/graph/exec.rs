//! What a backend does with a built graph: the [`Executor`] trait that the
//! GPU (wgpu kernels) and CPU (ndarray references) backends implement, the
//! [`Batch`] it is fed, and the optimizer settings a training step applies.

use crate::error::{Error, Result};
use crate::graph::{Graph, NodeId};
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

/// One value per parameter, by node.
pub type ParamValues = Vec<(NodeId, Vec<f32>)>;

/// An optimizer's state between steps: what a checkpoint keeps so that a
/// resumed run continues exactly where it stopped.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OptimizerSnapshot {
    /// Training steps applied. The next step's dropout masks and Adam's
    /// bias correction (its 1-based step is `steps + 1`) follow from it.
    pub steps: u32,
    /// Named state tensors, each with one value per parameter in
    /// [`crate::graph::Graph::params`] order: `m` and `v` for Adam,
    /// `velocity` for SGD with momentum, none for plain SGD. A parameter
    /// that never receives a gradient holds zeros.
    pub slots: Vec<(String, ParamValues)>,
}

impl OptimizerSnapshot {
    /// The slot names an optimizer keeps, in snapshot order.
    pub fn slot_names(optimizer: &Optimizer) -> &'static [&'static str] {
        match optimizer {
            Optimizer::Adam(_) => &["m", "v"],
            Optimizer::Sgd(c) if c.uses_velocity() => &["velocity"],
            Optimizer::Sgd(_) => &[],
        }
    }

    /// Checks that this snapshot fits `graph` under `optimizer`: the same
    /// slots, every parameter in order with its size.
    pub fn check(&self, graph: &Graph, optimizer: &Optimizer) -> Result<()> {
        let names = Self::slot_names(optimizer);
        let got: Vec<&str> = self.slots.iter().map(|(n, _)| n.as_str()).collect();
        if got != names {
            return Err(Error::graph(
                "optimizer",
                format!("the saved state has slots {got:?}, this optimizer keeps {names:?}"),
            ));
        }
        let params = graph.params();
        for (name, values) in &self.slots {
            if values.len() != params.len() {
                return Err(Error::graph(
                    "optimizer",
                    format!(
                        "slot {name} holds {} tensors for {} parameters",
                        values.len(),
                        params.len()
                    ),
                ));
            }
            for ((id, v), &p) in values.iter().zip(&params) {
                let node = graph.node(p);
                if *id != p || v.len() != node.value.numel() {
                    return Err(Error::graph(
                        &node.name,
                        format!(
                            "optimizer slot {name}: expected {} values for this parameter, got {} (for node #{})",
                            node.value.numel(),
                            v.len(),
                            id.0
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
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

    /// Training steps applied so far.
    fn steps_applied(&self) -> u32;

    /// How many rows the loss scored right (first maximum of its
    /// probabilities at the label) over every forward pass through the loss
    /// since the last call (training steps, gradient passes, `loss`), then
    /// resets the count. A training epoch's running accuracy, as Keras
    /// reports it, without another pass over the data.
    fn take_correct_count(&mut self) -> Result<u64>;

    /// Changes the optimizer's learning rate from the next training step
    /// (learning-rate schedules).
    fn set_learning_rate(&mut self, learning_rate: f64) -> Result<()>;

    /// The optimizer's state (checkpoints, resume).
    fn optimizer_snapshot(&self) -> Result<OptimizerSnapshot>;

    /// Restores a state taken by [`Executor::optimizer_snapshot`] from an
    /// executor of the same graph and optimizer.
    fn restore_optimizer(&mut self, snapshot: &OptimizerSnapshot) -> Result<()>;
}
