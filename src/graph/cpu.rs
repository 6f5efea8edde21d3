//! The CPU reference backend: runs a [`Graph`] with the ndarray references
//! of `ops` and `optim` only (no GPU, nothing falls back from elsewhere).
//!
//! Generic over the element type `A` so a test can run a whole model in
//! f64; the [`Executor`] methods cast to and from f32 at the boundary, and
//! the inherent methods ([`CpuExecutor::run_loss`],
//! [`CpuExecutor::run_gradients`], [`CpuExecutor::grad`], …) work in `A`.
//!
//! - Forward runs, in graph order, only the nodes the requested value needs
//!   (the loss, or the output of `predict`); every input node among them
//!   must be in the batch with the node's dtype and element count.
//! - Backward runs [`Graph::backward_order`]; each node's incoming gradient
//!   is one buffer that every consumer accumulates into (the references
//!   add `+=`), so a value used twice gets the sum. Values the backward
//!   needs (LSTM/RNN states and masks, maxpool argmax, softmax
//!   probabilities) are kept from the forward.
//! - A recurrent layer reading an embedding runs the leading steps at
//!   which every sample of the batch holds the same token (the padding of
//!   pre-padded texts) once for the whole batch (`ops::recurrent::
//!   shared_steps`); the embedding's gradient then sums those steps over
//!   the samples (the table's gradient is the same).
//!   [`CpuExecutor::per_position_gradients`] turns it off (shadow, saliency).
//! - [`CpuExecutor::with_input_gradients`] adds f32 inputs (e.g. the
//!   image) to the backward: their gradients are read with
//!   [`CpuExecutor::grad`] (saliency); without it inputs get none.
//! - A training step then clips by global norm (optional, the reference of
//!   [`crate::ops::clip_norm`]) and applies Adam or SGD to every parameter
//!   that leads to the loss.
//! - Dropout is active in the forward of a training step or of a gradient
//!   pass ([`CpuExecutor::run_gradients`], [`CpuExecutor::run_training_loss`]),
//!   with the mask of the current training step (the count of training
//!   steps applied: masks change every step and a run is reproducible from
//!   the seeds); the loss, `predict` and [`CpuExecutor::run_loss`] run it
//!   as the identity (inference).

use ndarray::{
    s, Array1, Array2, Array3, Array4, ArrayD, ArrayView1, ArrayView2, ArrayView3, ArrayView4,
    ArrayViewD, Axis, Dimension, IxDyn, NdFloat, Zip,
};

use crate::error::{Error, Result};
use crate::graph::{
    Batch, Executor, Graph, HostData, NodeId, Op, Optimizer, OptimizerSnapshot, Phase, TrainConfig,
};
use crate::ops::activation::{activation_backward_cpu, activation_forward_cpu};
use crate::ops::average::{average_backward_cpu, average_forward_cpu};
use crate::ops::bias::{bias_add_cpu, bias_backward_cpu};
use crate::ops::clip_norm::{clip_norm_scale_cpu, clip_norm_sumsq_cpu};
use crate::ops::concat::{concat_backward_cpu, concat_forward_cpu};
use crate::ops::conv2d::{
    conv2d_backward_bias_cpu, conv2d_backward_input_cpu, conv2d_backward_weight_cpu,
    conv2d_forward_cpu, Conv2dGeometry,
};
use crate::ops::dropout::{dropout_backward_cpu, dropout_forward_cpu, Dropout};
use crate::ops::embedding::{embedding_backward_cpu, embedding_forward_cpu};
use crate::ops::lstm::{lstm_backward_cpu, lstm_forward_shared_cpu, LstmStates};
use crate::ops::matmul::{matmul_backward_cpu, matmul_cpu, Layout};
use crate::ops::pool2d::{
    avgpool_backward_cpu, avgpool_forward_cpu, maxpool_backward_cpu, maxpool_forward_cpu,
    Pool2dGeometry,
};
use crate::ops::recurrent::{shared_steps, RecurrentCpuGrads};
use crate::ops::reduce::{accuracy_count_cpu, reduce_sum_cpu};
use crate::ops::rnn::{rnn_backward_shared_cpu, rnn_forward_shared_cpu};
use crate::ops::softmax_cross_entropy::{
    softmax_cross_entropy_backward_cpu, softmax_cross_entropy_forward_cpu, softmax_forward_cpu,
    weighted_softmax_cross_entropy_backward_cpu, weighted_softmax_cross_entropy_forward_cpu,
};
use crate::optim::adam::adam_update_cpu;
use crate::optim::sgd::sgd_update_cpu;
use crate::tensor::DType;

/// What a node's forward keeps for its backward, besides its inputs and
/// output.
#[derive(Debug)]
enum Saved<A> {
    None,
    Lstm {
        states: LstmStates<A>,
        mask: Option<Array2<bool>>,
    },
    Rnn {
        h_all: Array3<A>,
        mask: Option<Array2<bool>>,
        /// The leading steps run once for the whole batch.
        shared: usize,
    },
    MaxPool(Array4<u32>),
    Probs(Array2<A>),
    /// The training step whose dropout mask the forward applied.
    Dropout(u32),
}

/// Optimizer state of one parameter.
#[derive(Debug)]
enum Slot<A> {
    Adam {
        m: ArrayD<A>,
        v: ArrayD<A>,
    },
    /// Empty when momentum is 0 (Keras keeps no velocity then).
    Sgd {
        velocity: ArrayD<A>,
    },
}

/// The wall time of one node's forward or backward (or of the update) in
/// the last run, when [`CpuExecutor::record_times`] is on.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CpuTiming {
    pub phase: Phase,
    /// `None` for the update (clipping and the optimizer).
    pub node: Option<NodeId>,
    pub seconds: f64,
}

/// Runs a graph on the host with the ndarray references; see the module
/// documentation.
#[derive(Debug)]
pub struct CpuExecutor<A: NdFloat> {
    graph: Graph,
    loss: NodeId,
    config: TrainConfig,
    /// The nodes the loss needs, in graph order.
    loss_order: Vec<NodeId>,
    /// [`Graph::backward_order`] of the loss.
    backward: Vec<NodeId>,
    needs_grad: Vec<bool>,
    params: Vec<NodeId>,
    /// Every f32 node's last value; parameters always hold theirs.
    values: Vec<Option<ArrayD<A>>>,
    /// The data of u32 input nodes (token ids, labels).
    ids: Vec<Vec<u32>>,
    /// Which values the last forward computed (parameters always count).
    computed: Vec<bool>,
    saved: Vec<Saved<A>>,
    /// Each node's gradient after the last backward (None where no
    /// gradient was computed).
    grads: Vec<Option<ArrayD<A>>>,
    /// One slot per parameter, in [`Graph::params`] order.
    slots: Vec<Slot<A>>,
    /// The 1-based Adam step the next update uses.
    step: u32,
    /// Training steps applied: the dropout mask of the next one.
    train_steps: u32,
    /// Rows the loss scored right since the last
    /// [`Executor::take_correct_count`].
    correct: u64,
    /// The forward being run: `Some(step)` in training (dropout masks of
    /// that step), `None` at inference.
    training: Option<u32>,
    /// Per-node wall times of the last run, when recording.
    times: Option<Vec<CpuTiming>>,
    /// Whether a recurrent layer reading an embedding runs the leading
    /// steps where every sample holds the same token once (see
    /// [`CpuExecutor::per_position_gradients`]).
    share_steps: bool,
}

impl<A: NdFloat> Slot<A> {
    /// State tensor `k` in [`OptimizerSnapshot::slot_names`] order.
    fn tensor(&self, k: usize) -> &ArrayD<A> {
        match self {
            Slot::Adam { m, v } => [m, v][k],
            Slot::Sgd { velocity } => velocity,
        }
    }

    fn tensor_mut(&mut self, k: usize) -> &mut ArrayD<A> {
        match self {
            Slot::Adam { m, .. } if k == 0 => m,
            Slot::Adam { v, .. } => v,
            Slot::Sgd { velocity } => velocity,
        }
    }
}

// ---------------------------------------------------------------- helpers

fn cast<A: NdFloat>(v: f32) -> A {
    A::from(v).expect("every f32 converts to an NdFloat")
}

fn to_f32<A: NdFloat>(v: A) -> f32 {
    v.to_f32().unwrap_or(f32::NAN)
}

fn as1<A: NdFloat>(a: &ArrayD<A>) -> ArrayView1<'_, A> {
    a.view()
        .into_dimensionality()
        .expect("rank checked by the graph")
}
fn as2<A: NdFloat>(a: &ArrayD<A>) -> ArrayView2<'_, A> {
    a.view()
        .into_dimensionality()
        .expect("rank checked by the graph")
}
fn as3<A: NdFloat>(a: &ArrayD<A>) -> ArrayView3<'_, A> {
    a.view()
        .into_dimensionality()
        .expect("rank checked by the graph")
}
fn as4<A: NdFloat>(a: &ArrayD<A>) -> ArrayView4<'_, A> {
    a.view()
        .into_dimensionality()
        .expect("rank checked by the graph")
}
fn own<D: Dimension, A: NdFloat>(a: ArrayD<A>) -> ndarray::Array<A, D> {
    a.into_dimensionality().expect("rank checked by the graph")
}

fn shape4(s: &[usize]) -> [usize; 4] {
    [s[0], s[1], s[2], s[3]]
}

fn conv_geometry(graph: &Graph, x: NodeId, w: NodeId, op: &Op) -> Result<Conv2dGeometry> {
    let Op::Conv2d { stride, padding } = op else {
        unreachable!("called for Conv2d nodes")
    };
    let xs = &graph.node(x).value.shape;
    let ws = &graph.node(w).value.shape;
    Conv2dGeometry::new(shape4(xs), ws[3], [ws[0], ws[1]], *stride, *padding)
}

fn pool_geometry(graph: &Graph, x: NodeId, op: &Op) -> Result<Pool2dGeometry> {
    let (Op::MaxPool2d { pool, stride } | Op::AvgPool2d { pool, stride }) = op else {
        unreachable!("called for pooling nodes")
    };
    Pool2dGeometry::new(shape4(&graph.node(x).value.shape), *pool, *stride)
}

/// `[T,B]` mask from time-major token ids: true = real step (id != 0).
fn mask_from_ids(ids: &[u32], shape: &[usize]) -> Array2<bool> {
    Array2::from_shape_fn((shape[0], shape[1]), |(t, b)| ids[t * shape[1] + b] != 0)
}

/// Whether an op can pass a gradient back (Softmax is prediction only).
fn has_backward(op: &Op) -> bool {
    !matches!(op, Op::Softmax | Op::Input { .. } | Op::Param { .. })
}

/// Gradient buffers of the inputs of one node during its backward.
///
/// `take` hands out an input's accumulated gradient to add into; an input
/// that needs no gradient, or one listed twice, gets a temporary zero
/// buffer. `put` returns it: the first buffer goes back, later ones are
/// added (so a value listed twice gets both contributions), and buffers of
/// inputs that need no gradient are dropped.
struct GradPool<'a, A> {
    grads: &'a mut [Option<ArrayD<A>>],
    needs: &'a [bool],
    graph: &'a Graph,
}

impl<A: NdFloat> GradPool<'_, A> {
    fn take(&mut self, id: NodeId) -> ArrayD<A> {
        if self.needs[id.0] {
            if let Some(g) = self.grads[id.0].take() {
                return g;
            }
        }
        ArrayD::zeros(IxDyn(&self.graph.node(id).value.shape))
    }

    fn put(&mut self, id: NodeId, g: ArrayD<A>) {
        if !self.needs[id.0] {
            return;
        }
        match &mut self.grads[id.0] {
            Some(acc) => *acc += &g,
            slot @ None => *slot = Some(g),
        }
    }

    fn needs(&self, id: NodeId) -> bool {
        self.needs[id.0]
    }
}

impl<A: NdFloat> CpuExecutor<A> {
    /// Builds the executor: checks that `loss` is a one-element value whose
    /// backward every op on the way supports, that `params` gives every
    /// parameter of the graph exactly once with its element count, and the
    /// optimizer settings.
    pub fn new(
        graph: &Graph,
        loss: NodeId,
        params: &[(NodeId, Vec<f32>)],
        config: TrainConfig,
    ) -> Result<Self> {
        let n = graph.nodes().len();
        if loss.0 >= n {
            return Err(Error::graph(
                format!("#{}", loss.0),
                format!("the loss is not a node of this graph of {n} nodes"),
            ));
        }
        let loss_node = graph.node(loss);
        if loss_node.value.numel() != 1 || loss_node.value.dtype != DType::F32 {
            return Err(Error::graph(
                &loss_node.name,
                format!(
                    "the loss must be one f32 value, this node is {:?} {:?}",
                    loss_node.value.dtype, loss_node.value.shape
                ),
            ));
        }
        match &config.optimizer {
            Optimizer::Adam(c) => c.validate()?,
            Optimizer::Sgd(c) => c.validate()?,
        }
        if let Some(c) = config.clip_global_norm {
            if !(c > 0.0 && c.is_finite()) {
                return Err(Error::Unsupported {
                    op: "clip_global_norm".into(),
                    what: format!("a norm of {c}"),
                    why: "it must be finite and > 0".into(),
                });
            }
        }
        let backward = graph.backward_order(loss);
        if let Some(&bad) = backward.iter().find(|&&i| !has_backward(&graph.node(i).op)) {
            let node = graph.node(bad);
            return Err(Error::Unsupported {
                op: node.name.clone(),
                what: format!("the backward of {}", node.op.kind()),
                why: "it is for prediction only; the loss must not depend on it".into(),
            });
        }

        let mut values: Vec<Option<ArrayD<A>>> = vec![None; n];
        let mut computed = vec![false; n];
        let mut seen = vec![false; n];
        for (id, data) in params {
            let Some(node) = graph.nodes().get(id.0) else {
                return Err(Error::graph(
                    format!("#{}", id.0),
                    "a parameter value names no node of this graph",
                ));
            };
            if !matches!(node.op, Op::Param { .. }) {
                return Err(Error::graph(
                    &node.name,
                    format!("given a parameter value, but it is {}", node.op.kind()),
                ));
            }
            if std::mem::replace(&mut seen[id.0], true) {
                return Err(Error::graph(&node.name, "parameter value given twice"));
            }
            values[id.0] = Some(Self::host_array(graph, *id, data)?);
            computed[id.0] = true;
        }
        let param_ids = graph.params();
        if let Some(&missing) = param_ids.iter().find(|p| !seen[p.0]) {
            return Err(Error::graph(
                &graph.node(missing).name,
                "no initial value for this parameter",
            ));
        }
        let slots = param_ids
            .iter()
            .map(|&p| {
                let shape = IxDyn(&graph.node(p).value.shape);
                match &config.optimizer {
                    Optimizer::Adam(_) => Slot::Adam {
                        m: ArrayD::zeros(shape.clone()),
                        v: ArrayD::zeros(shape),
                    },
                    Optimizer::Sgd(c) if c.uses_velocity() => Slot::Sgd {
                        velocity: ArrayD::zeros(shape),
                    },
                    Optimizer::Sgd(_) => Slot::Sgd {
                        velocity: ArrayD::zeros(IxDyn(&[0])),
                    },
                }
            })
            .collect();

        let mut exec = Self {
            graph: graph.clone(),
            loss,
            config,
            loss_order: Vec::new(),
            backward,
            needs_grad: graph.needs_grad(loss),
            params: param_ids,
            values,
            ids: vec![Vec::new(); n],
            computed,
            saved: (0..n).map(|_| Saved::None).collect(),
            grads: vec![None; n],
            slots,
            step: 1,
            train_steps: 0,
            correct: 0,
            training: None,
            times: None,
            share_steps: true,
        };
        exec.loss_order = exec.needed(loss);
        Ok(exec)
    }

    /// `data` as a parameter of node `id`, checking its element count.
    fn host_array(graph: &Graph, id: NodeId, data: &[f32]) -> Result<ArrayD<A>> {
        let node = graph.node(id);
        if data.len() != node.value.numel() {
            return Err(Error::shape(
                &node.name,
                format!(
                    "the value has {} elements, the parameter {:?} holds {}",
                    data.len(),
                    node.value.shape,
                    node.value.numel()
                ),
            ));
        }
        let v: Vec<A> = data.iter().map(|&x| cast(x)).collect();
        Ok(ArrayD::from_shape_vec(IxDyn(&node.value.shape), v).expect("length checked"))
    }

    /// Runs every recurrent step for every sample, so that the gradient of
    /// an embedding feeding a recurrent layer is per position (for
    /// [`CpuExecutor::grad`]). By default, the leading steps at which every
    /// sample holds the same token (pre-padding) run once for the whole
    /// batch, and the embedding's gradient at each such step is the sum over
    /// the samples, in sample 0's row: the table's gradient is the same.
    pub fn per_position_gradients(mut self) -> Self {
        self.share_steps = false;
        self
    }

    /// Also computes, on every backward, the gradient of the loss with
    /// respect to the f32 input nodes `inputs` (read with
    /// [`CpuExecutor::grad`]): the backward order grows by the nodes that
    /// lead from them to the loss, and the ops on the way also write their
    /// input gradients (e.g. a convolution's backward-input). Parameters'
    /// gradients are unchanged; without this, inputs get none (no cost).
    pub fn with_input_gradients(mut self, inputs: &[NodeId]) -> Result<Self> {
        self.graph.check_gradient_sources(inputs)?;
        let backward = self.graph.backward_order_with(self.loss, inputs);
        if let Some(&bad) = backward
            .iter()
            .find(|&&i| !has_backward(&self.graph.node(i).op))
        {
            let node = self.graph.node(bad);
            return Err(Error::Unsupported {
                op: node.name.clone(),
                what: format!("the backward of {}", node.op.kind()),
                why: "it is for prediction only; the loss must not depend on it".into(),
            });
        }
        self.backward = backward;
        self.needs_grad = self.graph.needs_grad_with(self.loss, inputs);
        Ok(self)
    }

    /// The graph this executor runs.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// The nodes `target` depends on (itself included), in graph order.
    fn needed(&self, target: NodeId) -> Vec<NodeId> {
        let mut need = vec![false; target.0 + 1];
        need[target.0] = true;
        for i in (0..=target.0).rev() {
            if need[i] {
                for j in &self.graph.node(NodeId(i)).inputs {
                    need[j.0] = true;
                }
            }
        }
        (0..=target.0).filter(|&i| need[i]).map(NodeId).collect()
    }

    fn check_node(&self, id: NodeId) -> Result<()> {
        if id.0 >= self.graph.nodes().len() {
            return Err(Error::graph(
                format!("#{}", id.0),
                format!(
                    "not a node of this graph of {} nodes",
                    self.graph.nodes().len()
                ),
            ));
        }
        Ok(())
    }

    fn check_param(&self, id: NodeId) -> Result<()> {
        self.check_node(id)?;
        let node = self.graph.node(id);
        if !matches!(node.op, Op::Param { .. }) {
            return Err(Error::graph(
                &node.name,
                format!("not a parameter but {}", node.op.kind()),
            ));
        }
        Ok(())
    }

    // ------------------------------------------------------------ forward

    /// Checks and stores the batch: every entry an input node with its
    /// dtype and element count, none twice, and every input in `order`
    /// present.
    fn load_inputs(&mut self, batch: &Batch, order: &[NodeId]) -> Result<()> {
        let n = self.graph.nodes().len();
        let mut given = vec![false; n];
        for (id, data) in &batch.inputs {
            self.check_node(*id)?;
            let node = self.graph.node(*id);
            let Op::Input { shape, dtype } = &node.op else {
                return Err(Error::graph(
                    &node.name,
                    format!(
                        "the batch feeds it, but it is {}, not Input",
                        node.op.kind()
                    ),
                ));
            };
            if std::mem::replace(&mut given[id.0], true) {
                return Err(Error::graph(&node.name, "the batch feeds this input twice"));
            }
            let (len, got) = match data {
                HostData::F32(v) => (v.len(), DType::F32),
                HostData::U32(v) => (v.len(), DType::U32),
            };
            if got != *dtype {
                return Err(Error::graph(
                    &node.name,
                    format!("the input is {dtype:?}, the batch gives {got:?} data"),
                ));
            }
            if len != node.value.numel() {
                return Err(Error::shape(
                    format!("input {:?}", node.name),
                    format!(
                        "the batch gives {len} values, the input's shape {shape:?} holds {}",
                        node.value.numel()
                    ),
                ));
            }
        }
        if let Some(missing) = order
            .iter()
            .find(|i| matches!(self.graph.node(**i).op, Op::Input { .. }) && !given[i.0])
        {
            return Err(Error::graph(
                &self.graph.node(*missing).name,
                "this input is needed but the batch does not feed it",
            ));
        }
        for (i, c) in self.computed.iter_mut().enumerate() {
            *c = matches!(self.graph.nodes()[i].op, Op::Param { .. });
        }
        for (id, data) in &batch.inputs {
            match data {
                HostData::F32(v) => {
                    let shape = IxDyn(&self.graph.node(*id).value.shape);
                    let a = v.iter().map(|&x| cast(x)).collect();
                    self.values[id.0] = Some(ArrayD::from_shape_vec(shape, a).expect("checked"));
                }
                HostData::U32(v) => {
                    let ids = &mut self.ids[id.0];
                    ids.clear();
                    ids.extend_from_slice(v);
                }
            }
            self.computed[id.0] = true;
        }
        Ok(())
    }

    /// Runs the nodes of `order` (graph order) on `batch`, in training
    /// (`Some(step)`: dropout masks of that step) or at inference (`None`).
    fn forward(&mut self, batch: &Batch, order: &[NodeId], training: Option<u32>) -> Result<()> {
        self.training = training;
        self.load_inputs(batch, order)?;
        if let Some(t) = &mut self.times {
            t.clear();
        }
        for &id in order {
            if matches!(self.graph.node(id).op, Op::Input { .. } | Op::Param { .. }) {
                continue;
            }
            let start = std::time::Instant::now();
            let (value, saved) = self.forward_node(id)?;
            self.record_time(Phase::Forward, Some(id), start);
            if let Saved::Probs(probs) = &saved {
                let labels = &self.ids[self.graph.node(id).inputs[1].0];
                self.correct += accuracy_count_cpu(&probs.view(), labels) as u64;
            }
            self.values[id.0] = Some(value);
            self.saved[id.0] = saved;
            self.computed[id.0] = true;
        }
        Ok(())
    }

    /// The leading steps a recurrent layer reading `x` runs once for the
    /// whole batch: where `x` is an embedding, the steps at which every
    /// sample holds the same token (`ops::recurrent::shared_steps`: the
    /// padding of pre-padded texts), unless per-position gradients were
    /// asked for.
    fn shared_steps(&self, x: NodeId) -> usize {
        let node = self.graph.node(x);
        match (&node.op, node.value.shape.as_slice()) {
            (Op::Embedding { .. }, &[steps, batch, _]) if self.share_steps => {
                shared_steps(&self.ids[node.inputs[1].0], steps, batch)
            }
            _ => 0,
        }
    }

    fn val(&self, id: NodeId) -> &ArrayD<A> {
        self.values[id.0]
            .as_ref()
            .expect("forward computes inputs before their consumers")
    }

    fn forward_node(&self, id: NodeId) -> Result<(ArrayD<A>, Saved<A>)> {
        let node = self.graph.node(id);
        let ins = &node.inputs;
        let out_shape = IxDyn(&node.value.shape);
        Ok(match &node.op {
            Op::Input { .. } | Op::Param { .. } => unreachable!("loaded, not computed"),
            Op::Embedding { .. } => {
                let table = as2(self.val(ins[0]));
                let y = embedding_forward_cpu(&table, &self.ids[ins[1].0]);
                let y = y.into_shape_with_order(out_shape).expect("T·B rows of D");
                (y, Saved::None)
            }
            Op::Lstm {
                return_sequences,
                masked,
            } => {
                let mask = masked.then(|| {
                    mask_from_ids(&self.ids[ins[4].0], &self.graph.node(ins[4]).value.shape)
                });
                let states = lstm_forward_shared_cpu(
                    &as3(self.val(ins[0])),
                    &as2(self.val(ins[1])),
                    &as2(self.val(ins[2])),
                    &as1(self.val(ins[3])),
                    mask.as_ref().map(|m| m.view()).as_ref(),
                    self.shared_steps(ins[0]),
                );
                let y = recurrent_output(&states.h_all, *return_sequences);
                (y, Saved::Lstm { states, mask })
            }
            Op::Rnn {
                return_sequences,
                masked,
            } => {
                let mask = masked.then(|| {
                    mask_from_ids(&self.ids[ins[4].0], &self.graph.node(ins[4]).value.shape)
                });
                let (h_all, shared) = rnn_forward_shared_cpu(
                    &as3(self.val(ins[0])),
                    &as2(self.val(ins[1])),
                    &as2(self.val(ins[2])),
                    &as1(self.val(ins[3])),
                    mask.as_ref().map(|m| m.view()).as_ref(),
                    self.shared_steps(ins[0]),
                );
                let y = recurrent_output(&h_all, *return_sequences);
                (
                    y,
                    Saved::Rnn {
                        h_all,
                        mask,
                        shared,
                    },
                )
            }
            Op::Conv2d { .. } => {
                let g = conv_geometry(&self.graph, ins[0], ins[1], &node.op)?;
                let y = conv2d_forward_cpu(
                    &as4(self.val(ins[0])),
                    &as4(self.val(ins[1])),
                    &as1(self.val(ins[2])),
                    &g,
                );
                (y.into_dyn(), Saved::None)
            }
            Op::MaxPool2d { .. } => {
                let g = pool_geometry(&self.graph, ins[0], &node.op)?;
                let (y, argmax) = maxpool_forward_cpu(&as4(self.val(ins[0])), &g);
                (y.into_dyn(), Saved::MaxPool(argmax))
            }
            Op::AvgPool2d { .. } => {
                let g = pool_geometry(&self.graph, ins[0], &node.op)?;
                let y = avgpool_forward_cpu(&as4(self.val(ins[0])), &g);
                (y.into_dyn(), Saved::None)
            }
            Op::Flatten => {
                // A reshape; the copy (one contiguous copy, values are kept
                // in standard layout) keeps every node's value its own.
                let y = self
                    .val(ins[0])
                    .as_standard_layout()
                    .into_owned()
                    .into_shape_with_order(out_shape)
                    .expect("same element count");
                (y, Saved::None)
            }
            Op::Dense => {
                let mut y = matmul_cpu(Layout::AB, &as2(self.val(ins[0])), &as2(self.val(ins[1])))
                    .into_dyn();
                bias_add_cpu(&mut y, &as1(self.val(ins[2])));
                (y, Saved::None)
            }
            Op::Activation(act) => {
                let y = activation_forward_cpu(*act, &self.val(ins[0]).view());
                (y, Saved::None)
            }
            Op::Dropout { rate, seed } => {
                let d = Dropout::new(*rate, *seed)?;
                let y = dropout_forward_cpu(&d, &self.val(ins[0]).view(), self.training);
                let saved = match self.training {
                    Some(step) => Saved::Dropout(step),
                    None => Saved::None,
                };
                (y, saved)
            }
            Op::Concat => {
                let views: Vec<ArrayViewD<A>> = ins.iter().map(|&i| self.val(i).view()).collect();
                (concat_forward_cpu(&views), Saved::None)
            }
            Op::Average => {
                let views: Vec<ArrayViewD<A>> = ins.iter().map(|&i| self.val(i).view()).collect();
                (average_forward_cpu(&views), Saved::None)
            }
            Op::Softmax => (
                softmax_forward_cpu(&as2(self.val(ins[0]))).into_dyn(),
                Saved::None,
            ),
            Op::SoftmaxCrossEntropy { class_weights } => {
                let logits = as2(self.val(ins[0]));
                let labels = &self.ids[ins[1].0];
                let classes = logits.ncols();
                if let Some(bad) = labels.iter().find(|&&l| l as usize >= classes) {
                    return Err(Error::graph(
                        &node.name,
                        format!("label {bad} is out of range for {classes} classes"),
                    ));
                }
                let (probs, losses) = match class_weights {
                    None => softmax_cross_entropy_forward_cpu(&logits, labels),
                    Some(w) => weighted_softmax_cross_entropy_forward_cpu(
                        &logits,
                        labels,
                        &w.iter().map(|&v| cast(v)).collect::<Vec<A>>(),
                    ),
                };
                let scale = A::one() / A::from(losses.len()).expect("batch size");
                let mean = reduce_sum_cpu(&losses.view().into_dyn(), scale);
                (ArrayD::from_elem(out_shape, mean), Saved::Probs(probs))
            }
        })
    }

    // ------------------------------------------------------------ backward

    /// Backward from the loss: the gradient of every node that needs one.
    /// Requires the forward of the loss to have just run.
    fn backward_pass(&mut self) {
        for (i, g) in self.grads.iter_mut().enumerate() {
            if self.needs_grad[i] || matches!(self.graph.nodes()[i].op, Op::Param { .. }) {
                let shape = IxDyn(&self.graph.nodes()[i].value.shape);
                match g {
                    // A contiguous fill is a memset; `fill` goes element
                    // by element (a few % of a seed step over ~2M values).
                    Some(a) if a.raw_dim() == shape => match a.as_slice_mut() {
                        Some(s) => s.fill(A::zero()),
                        None => a.fill(A::zero()),
                    },
                    _ => *g = Some(ArrayD::zeros(shape)),
                }
            } else {
                *g = None;
            }
        }
        if let Some(g) = &mut self.grads[self.loss.0] {
            g.fill(A::one());
        }
        for k in 0..self.backward.len() {
            let id = self.backward[k];
            let start = std::time::Instant::now();
            self.backward_node(id);
            self.record_time(Phase::Backward, Some(id), start);
        }
    }

    fn backward_node(&mut self, id: NodeId) {
        let Self {
            graph,
            values,
            ids,
            saved,
            grads,
            needs_grad,
            ..
        } = self;
        let graph: &Graph = graph;
        let node = graph.node(id);
        let ins = &node.inputs;
        let val = |i: NodeId| {
            values[i.0]
                .as_ref()
                .expect("forward computed every value the loss needs")
        };
        let dy = grads[id.0]
            .take()
            .expect("a node in backward order has a gradient");
        let mut pool = GradPool {
            grads,
            needs: needs_grad,
            graph,
        };
        match &node.op {
            Op::Input { .. } | Op::Param { .. } | Op::Softmax => {
                unreachable!("not in the backward order (checked in new)")
            }
            Op::Embedding { padding_idx } => {
                let mut dtable: Array2<A> = own(pool.take(ins[0]));
                let rows = dtable.ncols();
                let dy2 = dy
                    .view()
                    .into_shape_with_order((dy.len() / rows, rows))
                    .expect("standard layout");
                embedding_backward_cpu(&mut dtable, &dy2, &ids[ins[1].0], *padding_idx);
                pool.put(ins[0], dtable.into_dyn());
            }
            Op::Lstm {
                return_sequences, ..
            }
            | Op::Rnn {
                return_sequences, ..
            } => {
                let x = as3(val(ins[0]));
                let (w, u) = (as2(val(ins[1])), as2(val(ins[2])));
                let (steps, batch, _) = x.dim();
                let hidden = u.nrows();
                let dh_full;
                let dh_seq = if *return_sequences {
                    as3(&dy)
                } else {
                    let mut d = Array3::zeros((steps, batch, hidden));
                    d.slice_mut(s![steps - 1, .., ..]).assign(&as2(&dy));
                    dh_full = d;
                    dh_full.view()
                };
                let mut g = RecurrentCpuGrads {
                    dx: own(pool.take(ins[0])),
                    dw: own(pool.take(ins[1])),
                    du: own(pool.take(ins[2])),
                    db: own(pool.take(ins[3])),
                };
                match &saved[id.0] {
                    Saved::Lstm { states, mask } => lstm_backward_cpu(
                        &mut g,
                        &dh_seq,
                        states,
                        &x,
                        &w,
                        &u,
                        mask.as_ref().map(|m| m.view()).as_ref(),
                    ),
                    Saved::Rnn {
                        h_all,
                        mask,
                        shared,
                    } => rnn_backward_shared_cpu(
                        &mut g,
                        &dh_seq,
                        &h_all.view(),
                        &x,
                        &w,
                        &u,
                        mask.as_ref().map(|m| m.view()).as_ref(),
                        *shared,
                    ),
                    _ => unreachable!("the recurrent forward saves its states"),
                }
                pool.put(ins[0], g.dx.into_dyn());
                pool.put(ins[1], g.dw.into_dyn());
                pool.put(ins[2], g.du.into_dyn());
                pool.put(ins[3], g.db.into_dyn());
            }
            Op::Conv2d { .. } => {
                let g = conv_geometry(graph, ins[0], ins[1], &node.op)
                    .expect("checked when the graph was built");
                let dy4 = as4(&dy);
                // The input gradient is the costliest part: skip it for data.
                if pool.needs(ins[0]) {
                    let mut dx: Array4<A> = own(pool.take(ins[0]));
                    conv2d_backward_input_cpu(&mut dx, &dy4, &as4(val(ins[1])), &g);
                    pool.put(ins[0], dx.into_dyn());
                }
                if pool.needs(ins[1]) {
                    let mut dw: Array4<A> = own(pool.take(ins[1]));
                    conv2d_backward_weight_cpu(&mut dw, &dy4, &as4(val(ins[0])), &g);
                    pool.put(ins[1], dw.into_dyn());
                }
                if pool.needs(ins[2]) {
                    let mut db: Array1<A> = own(pool.take(ins[2]));
                    conv2d_backward_bias_cpu(&mut db, &dy4, &g);
                    pool.put(ins[2], db.into_dyn());
                }
            }
            Op::MaxPool2d { .. } => {
                let g = pool_geometry(graph, ins[0], &node.op).expect("checked when built");
                let Saved::MaxPool(argmax) = &saved[id.0] else {
                    unreachable!("maxpool forward saves argmax")
                };
                let mut dx: Array4<A> = own(pool.take(ins[0]));
                maxpool_backward_cpu(&mut dx, &as4(&dy), &argmax.view(), &g);
                pool.put(ins[0], dx.into_dyn());
            }
            Op::AvgPool2d { .. } => {
                let g = pool_geometry(graph, ins[0], &node.op).expect("checked when built");
                let mut dx: Array4<A> = own(pool.take(ins[0]));
                avgpool_backward_cpu(&mut dx, &as4(&dy), &g);
                pool.put(ins[0], dx.into_dyn());
            }
            Op::Flatten => {
                let mut dx = pool.take(ins[0]);
                Zip::from(dx.as_slice_mut().expect("standard layout"))
                    .and(dy.as_slice().expect("standard layout"))
                    .for_each(|d, &g| *d += g);
                pool.put(ins[0], dx);
            }
            Op::Dense => {
                let mut dx: Array2<A> = own(pool.take(ins[0]));
                let mut dw: Array2<A> = own(pool.take(ins[1]));
                matmul_backward_cpu(
                    &mut dx,
                    &mut dw,
                    &as2(&dy),
                    &as2(val(ins[0])),
                    &as2(val(ins[1])),
                );
                pool.put(ins[0], dx.into_dyn());
                pool.put(ins[1], dw.into_dyn());
                let mut db: Array1<A> = own(pool.take(ins[2]));
                bias_backward_cpu(&mut db, &dy.view());
                pool.put(ins[2], db.into_dyn());
            }
            Op::Activation(act) => {
                let saved_value = if act.backward_uses_input() {
                    val(ins[0])
                } else {
                    val(id)
                };
                let mut dx = pool.take(ins[0]);
                activation_backward_cpu(*act, &mut dx, &dy.view(), &saved_value.view());
                pool.put(ins[0], dx);
            }
            Op::Dropout { rate, seed } => {
                let Saved::Dropout(step) = saved[id.0] else {
                    unreachable!("backward follows a training forward")
                };
                let d = Dropout {
                    rate: *rate,
                    seed: *seed,
                };
                let mut dx = pool.take(ins[0]);
                dropout_backward_cpu(&d, &mut dx, &dy.view(), step);
                pool.put(ins[0], dx);
            }
            Op::Concat => {
                let mut dxs: Vec<ArrayD<A>> = ins.iter().map(|&i| pool.take(i)).collect();
                let mut refs: Vec<&mut ArrayD<A>> = dxs.iter_mut().collect();
                concat_backward_cpu(&mut refs, &dy.view());
                for (&i, dx) in ins.iter().zip(dxs) {
                    pool.put(i, dx);
                }
            }
            Op::Average => {
                for &i in ins {
                    if pool.needs(i) {
                        let mut dx = pool.take(i);
                        average_backward_cpu(&mut dx, &dy.view(), ins.len());
                        pool.put(i, dx);
                    }
                }
            }
            Op::SoftmaxCrossEntropy { class_weights } => {
                let Saved::Probs(probs) = &saved[id.0] else {
                    unreachable!("the loss forward saves its probabilities")
                };
                let labels = &ids[ins[1].0];
                let weights: Option<Vec<A>> = class_weights
                    .as_ref()
                    .map(|w| w.iter().map(|&v| cast(v)).collect());
                let backward = |d: &mut Array2<A>| match &weights {
                    None => softmax_cross_entropy_backward_cpu(d, &probs.view(), labels),
                    Some(w) => {
                        weighted_softmax_cross_entropy_backward_cpu(d, &probs.view(), labels, w)
                    }
                };
                let scale = dy.iter().next().copied().unwrap_or_else(A::one);
                let mut dlogits: Array2<A> = own(pool.take(ins[0]));
                if scale == A::one() {
                    backward(&mut dlogits);
                } else {
                    // The loss feeds another node: scale the reference's gradient.
                    let mut d = Array2::zeros(dlogits.raw_dim());
                    backward(&mut d);
                    dlogits.scaled_add(scale, &d);
                }
                pool.put(ins[0], dlogits.into_dyn());
            }
        }
        self.grads[id.0] = Some(dy);
    }

    // ------------------------------------------------------------ update

    /// Rescales every parameter gradient so their global L2 norm is at most
    /// `clip` (as `tf.clip_by_global_norm`; untouched when already within),
    /// with the reference of [`crate::ops::clip_norm`].
    fn clip_gradients(&mut self, clip: f32) {
        let views: Vec<ArrayViewD<A>> = self
            .params
            .iter()
            .filter_map(|p| self.grads[p.0].as_ref().map(|g| g.view()))
            .collect();
        let sumsq = clip_norm_sumsq_cpu(&views);
        let clip: A = cast(clip);
        for p in &self.params {
            if let Some(g) = &mut self.grads[p.0] {
                clip_norm_scale_cpu(&mut g.view_mut(), sumsq, clip);
            }
        }
    }

    /// Applies the optimizer to every parameter that leads to the loss.
    fn update(&mut self) {
        for (k, p) in self.params.iter().enumerate() {
            if !self.needs_grad[p.0] {
                continue;
            }
            let (Some(w), Some(g)) = (&mut self.values[p.0], &self.grads[p.0]) else {
                continue;
            };
            match (&self.config.optimizer, &mut self.slots[k]) {
                (Optimizer::Adam(c), Slot::Adam { m, v }) => {
                    adam_update_cpu(w, &g.view(), m, v, c, self.step)
                }
                (Optimizer::Sgd(c), Slot::Sgd { velocity }) => {
                    sgd_update_cpu(w, &g.view(), velocity, c)
                }
                _ => unreachable!("slots follow the optimizer"),
            }
        }
        if matches!(self.config.optimizer, Optimizer::Adam(_)) {
            self.step += 1;
        }
    }

    // ------------------------------------------------------------ API in A

    /// Forward of the loss at inference (dropout is the identity); returns
    /// it in `A`.
    pub fn run_loss(&mut self, batch: &Batch) -> Result<A> {
        self.loss_in(batch, None)
    }

    /// Forward of the loss in training, with the dropout masks the next
    /// training step (and [`CpuExecutor::run_gradients`]) uses: the
    /// function whose gradient `run_gradients` computes.
    pub fn run_training_loss(&mut self, batch: &Batch) -> Result<A> {
        self.loss_in(batch, Some(self.train_steps))
    }

    fn loss_in(&mut self, batch: &Batch, training: Option<u32>) -> Result<A> {
        let order = self.loss_order.clone();
        self.forward(batch, &order, training)?;
        Ok(self.val(self.loss)[0])
    }

    /// Forward (in training) and backward of the loss without an update;
    /// returns the loss and leaves every gradient readable with
    /// [`CpuExecutor::grad`].
    pub fn run_gradients(&mut self, batch: &Batch) -> Result<A> {
        let loss = self.run_training_loss(batch)?;
        self.backward_pass();
        Ok(loss)
    }

    /// Forward, backward, clipping and the optimizer update; returns the
    /// loss before the update.
    pub fn run_train_step(&mut self, batch: &Batch) -> Result<A> {
        let loss = self.run_gradients(batch)?;
        let start = std::time::Instant::now();
        if let Some(clip) = self.config.clip_global_norm {
            self.clip_gradients(clip);
        }
        self.update();
        self.record_time(Phase::Update, None, start);
        self.train_steps = self.train_steps.wrapping_add(1);
        Ok(loss)
    }

    /// A node's gradient after the last backward (after clipping, on a
    /// training step). Parameters that do not lead to the loss read zero.
    pub fn grad(&self, id: NodeId) -> Result<&ArrayD<A>> {
        self.check_node(id)?;
        self.grads[id.0].as_ref().ok_or_else(|| {
            Error::graph(
                &self.graph.node(id).name,
                "no gradient: no backward has run, or the loss does not depend on this node",
            )
        })
    }

    /// A node's value after the last forward (parameters: the current
    /// value). U32 inputs have no `A` value; see [`Executor::value`].
    pub fn value_array(&self, id: NodeId) -> Result<&ArrayD<A>> {
        self.check_node(id)?;
        let node = self.graph.node(id);
        match &self.values[id.0] {
            Some(v) if self.computed[id.0] => Ok(v),
            _ if node.value.dtype == DType::U32 => Err(Error::graph(
                &node.name,
                "a u32 input has no float value; read it with Executor::value",
            )),
            _ => Err(Error::graph(
                &node.name,
                "not computed by the last forward pass",
            )),
        }
    }

    /// Overwrites a parameter with values in `A` (finite differences in f64).
    pub fn set_param_array(&mut self, id: NodeId, value: &[A]) -> Result<()> {
        self.check_param(id)?;
        let w = self.values[id.0]
            .as_mut()
            .expect("parameters always hold a value");
        if value.len() != w.len() {
            return Err(Error::shape(
                &self.graph.node(id).name,
                format!(
                    "the value has {} elements, the parameter {:?} holds {}",
                    value.len(),
                    w.shape(),
                    w.len()
                ),
            ));
        }
        w.as_slice_mut()
            .expect("parameters are standard layout")
            .copy_from_slice(value);
        Ok(())
    }

    /// Turns per-node timing on or off: while on, every run records the
    /// wall time of each node's forward and backward and of the update,
    /// read with [`CpuExecutor::times`] (one `Instant` pair per node).
    pub fn record_times(&mut self, on: bool) {
        self.times = on.then(Vec::new);
    }

    /// The timings of the last run, in execution order (empty unless
    /// [`CpuExecutor::record_times`] is on).
    pub fn times(&self) -> &[CpuTiming] {
        self.times.as_deref().unwrap_or(&[])
    }

    fn record_time(&mut self, phase: Phase, node: Option<NodeId>, start: std::time::Instant) {
        if let Some(t) = &mut self.times {
            t.push(CpuTiming {
                phase,
                node,
                seconds: start.elapsed().as_secs_f64(),
            });
        }
    }

    /// The 1-based Adam step the next training step uses.
    pub fn adam_step(&self) -> u32 {
        self.step
    }

    /// Training steps applied so far (the next one's dropout masks).
    pub fn steps(&self) -> u32 {
        self.train_steps
    }
}

/// A recurrent layer's output from `h_all` `[T+1,B,H]`: every h_t
/// `[T,B,H]`, or h_T `[B,H]`.
fn recurrent_output<A: NdFloat>(h_all: &Array3<A>, return_sequences: bool) -> ArrayD<A> {
    if return_sequences {
        h_all.slice(s![1.., .., ..]).to_owned().into_dyn()
    } else {
        h_all
            .index_axis(Axis(0), h_all.len_of(Axis(0)) - 1)
            .to_owned()
            .into_dyn()
    }
}

impl<A: NdFloat> Executor for CpuExecutor<A> {
    fn train_step(&mut self, batch: &Batch) -> Result<f32> {
        self.run_train_step(batch).map(to_f32)
    }

    fn loss(&mut self, batch: &Batch) -> Result<f32> {
        self.run_loss(batch).map(to_f32)
    }

    fn predict(&mut self, batch: &Batch, output: NodeId) -> Result<Vec<f32>> {
        self.check_node(output)?;
        let order = self.needed(output);
        self.forward(batch, &order, None)?;
        self.value(output)
    }

    fn gradients(&mut self, batch: &Batch) -> Result<(f32, Vec<Vec<f32>>)> {
        let loss = self.run_gradients(batch)?;
        let grads = self
            .params
            .iter()
            .map(|p| match &self.grads[p.0] {
                Some(g) => g.iter().map(|&v| to_f32(v)).collect(),
                None => vec![0.0; self.graph.node(*p).value.numel()],
            })
            .collect();
        Ok((to_f32(loss), grads))
    }

    fn param(&self, id: NodeId) -> Result<Vec<f32>> {
        self.check_param(id)?;
        Ok(self.val(id).iter().map(|&v| to_f32(v)).collect())
    }

    fn set_param(&mut self, id: NodeId, value: &[f32]) -> Result<()> {
        let a: Vec<A> = value.iter().map(|&v| cast(v)).collect();
        self.set_param_array(id, &a)
    }

    fn value(&mut self, id: NodeId) -> Result<Vec<f32>> {
        self.check_node(id)?;
        let node = self.graph.node(id);
        if node.value.dtype == DType::U32 {
            if !self.computed[id.0] {
                return Err(Error::graph(&node.name, "not fed by the last forward pass"));
            }
            // Ids as floats (exact below 2^24).
            return Ok(self.ids[id.0].iter().map(|&v| v as f32).collect());
        }
        Ok(self.value_array(id)?.iter().map(|&v| to_f32(v)).collect())
    }

    fn steps_applied(&self) -> u32 {
        self.train_steps
    }

    fn take_correct_count(&mut self) -> Result<u64> {
        Ok(std::mem::take(&mut self.correct))
    }

    fn set_learning_rate(&mut self, learning_rate: f64) -> Result<()> {
        let mut optimizer = self.config.optimizer.clone();
        match &mut optimizer {
            Optimizer::Adam(c) => c.learning_rate = learning_rate,
            Optimizer::Sgd(c) => c.learning_rate = learning_rate,
        }
        match &optimizer {
            Optimizer::Adam(c) => c.validate()?,
            Optimizer::Sgd(c) => c.validate()?,
        }
        self.config.optimizer = optimizer;
        Ok(())
    }

    fn optimizer_snapshot(&self) -> Result<OptimizerSnapshot> {
        let names = OptimizerSnapshot::slot_names(&self.config.optimizer);
        let slots = names
            .iter()
            .enumerate()
            .map(|(k, name)| {
                let values = self
                    .params
                    .iter()
                    .zip(&self.slots)
                    .map(|(&p, slot)| (p, slot.tensor(k).iter().map(|&x| to_f32(x)).collect()))
                    .collect();
                (name.to_string(), values)
            })
            .collect();
        Ok(OptimizerSnapshot {
            steps: self.train_steps,
            slots,
        })
    }

    fn restore_optimizer(&mut self, snapshot: &OptimizerSnapshot) -> Result<()> {
        snapshot.check(&self.graph, &self.config.optimizer)?;
        for (k, (_, values)) in snapshot.slots.iter().enumerate() {
            for (slot, (_, v)) in self.slots.iter_mut().zip(values) {
                slot.tensor_mut(k)
                    .iter_mut()
                    .zip(v)
                    .for_each(|(t, &x)| *t = cast(x));
            }
        }
        self.train_steps = snapshot.steps;
        self.step = snapshot.steps.wrapping_add(1);
        Ok(())
    }
}
