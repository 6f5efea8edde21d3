//! The GPU backend: a [`Graph`] compiled once into a fixed schedule of
//! prepared dispatches over planned buffers, run by the wgpu kernels of
//! [`crate::ops`] and [`crate::optim`].
//!
//! Built once ([`GpuExecutor::new`]):
//! - every tensor the schedule touches is declared (node values, gradients,
//!   the recurrent layers' state and scratch, argmax, probabilities) and
//!   every stage (each node's forward, each node's backward in
//!   [`Graph::backward_order`], the optimizer update) lists the tensors it
//!   binds; the [`plan`](crate::graph::plan) gives tensors whose stage
//!   intervals do not intersect one shared buffer. Flatten is a view: the
//!   same tensor under a new shape, for its value and its gradient.
//! - every dispatch is prepared once over those buffers; binding a tensor
//!   outside its planned interval is caught here, at construction.
//!
//! A training step writes the batch inputs (`queue.write_buffer`), records
//! into ONE command encoder the clears of the tensors that are accumulated
//! into (each just before its first stage, since its buffer may hold an
//! earlier tensor), the forward dispatches the loss needs, the backward
//! dispatches and the optimizer updates (Adam's step count is rewritten in
//! its uniforms first), copies the loss into a staging buffer kept for the
//! purpose, submits once and maps 4 bytes. Nothing is allocated per step.
//!
//! With [`TrainConfig::clip_global_norm`] the update stage first records
//! [`clip_norm`]: the sum of squares of every parameter gradient into a
//! one-element buffer, then each gradient scaled by `clip / norm` when the
//! norm exceeds the clip, computed on the device (no readback), in the
//! same submit, before the optimizer dispatches.
//!
//! Dropout nodes apply the mask of the current training step (the count
//! of steps applied) in training and gradient runs and copy at inference
//! (`loss`, `predict`): the mode and step are rewritten in their uniforms
//! before each run (one `write_buffer` per dropout dispatch); backward
//! recomputes the forward's mask from the same step.
//!
//! With [`ExecOptions::input_gradients`] the backward also covers the
//! nodes leading from those f32 inputs to the loss, and each such input
//! gets a pinned gradient buffer (saliency: the gradient w.r.t. the image).
//!
//! Backward seeds from the loss: the loss node must be a
//! `SoftmaxCrossEntropy` (its backward kernel is the gradient of the batch
//! mean). With class weights it runs the weighted kernels (the same number
//! of dispatches) over a pinned `<loss>/class_weights` tensor written once
//! at construction. Gradients accumulate (`+=` in every backward kernel), so a value
//! used twice receives the sum of both contributions.
//!
//! An embedding read by one LSTM or SimpleRNN alone (and not inspected)
//! runs per chunk of equal tokens ([`feeds_recurrent_only`]): before each
//! run that records the layer, the host sorts the batch's tokens, cuts the
//! runs into chunks of at most 64 positions (`ops::segment_sum::
//! token_chunks`), writes them and rewrites the chunk count in the params
//! of the dispatches prepared for one chunk per position (the matmul and
//! gather grids cover that; workgroups past the count return at once).
//! [`GpuExecutor::chunk_counts`] reports the last batch's counts.
//!
//! Such an LSTM whose kernels share steps (the blocked form,
//! `ops::recurrent::recurrent_shares_steps`) runs its recurrence as two
//! runs each way ([`SharedUse`]): the host also counts the leading steps at
//! which every sample holds the same token (the padding of pre-padded
//! texts), which run once, for sample 0, and rewrites the runs' step
//! ranges; the embedding's gradient (summed per token anyway) is the same.
//! [`GpuExecutor::shared_step_counts`] reports the last batch's counts.

use std::collections::HashMap;

use crate::error::{Error, Result};
use crate::gpu::{Dispatch, GpuContext, GpuTensor, KernelTiming};
use crate::graph::exec::{
    Batch, Executor, HostData, Optimizer, OptimizerSnapshot, Phase, TrainConfig,
};
use crate::graph::plan::{plan_memory, MemoryPlan, PlanRequest};
use crate::graph::{Graph, NodeId, Op};
use crate::ops::activation::{activation_backward, activation_forward, Activation};
use crate::ops::average::{average_backward, average_forward};
use crate::ops::bias::{bias_add, bias_backward};
use crate::ops::clip_norm::{check_clip, clip_norm};
use crate::ops::concat::{concat_backward, concat_forward_all};
use crate::ops::conv2d::{
    conv2d_backward_bias, conv2d_backward_input, conv2d_backward_weight, conv2d_forward,
    conv2d_forward_relu, Conv2dGeometry,
};
use crate::ops::dropout::{dropout_backward, dropout_forward, Dropout};
use crate::ops::embedding::{embedding_backward, embedding_forward, embedding_params, token_order};
use crate::ops::lstm::LstmState;
use crate::ops::matmul::{matmul, Layout, MatmulParams};
use crate::ops::pool2d::{
    avgpool_backward, avgpool_forward, maxpool_backward, maxpool_forward, maxpool_relu_backward,
    windows_disjoint, Pool2dGeometry,
};
use crate::ops::recurrent::{
    input_gradients, input_projection, recurrent_backward_sequence, recurrent_backward_shared,
    recurrent_forward_recurrence, recurrent_forward_sequence, recurrent_sequence_forward_shared,
    recurrent_shares_steps, set_shared_backward, set_shared_steps, shared_carry_len, shared_steps,
    HiddenGrad, RecurrentBuffers, RecurrentDims, RecurrentGrads, RecurrentWeights,
};
use crate::ops::reduce::{accuracy_count, reduce_sum, SumOptions};
use crate::ops::rnn::RnnState;
use crate::ops::segment_sum::{segment_sum, token_chunks, SegmentSumParams};
use crate::ops::softmax_cross_entropy::{
    softmax_cross_entropy_backward, softmax_cross_entropy_forward, softmax_forward,
    weighted_softmax_cross_entropy_backward, weighted_softmax_cross_entropy_forward,
};
use crate::optim::{adam::Adam, sgd::Sgd};
use crate::tensor::{numel, DType};

type TensorId = usize;

/// How a tensor is zeroed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Zero {
    /// Fully written before it is read.
    No,
    /// Accumulated into: cleared before its first stage in every run.
    EveryRun,
    /// Its first bytes are read as a constant zero and never written (the
    /// recurrent initial state, slot 0 of h_all/c_all): cleared before its
    /// first stage only when its buffer is shared (a new buffer is zero).
    Prefix(u64),
}

#[derive(Clone, Debug)]
struct TensorInfo {
    name: String,
    shape: Vec<usize>,
    dtype: DType,
    pinned: bool,
    zero: Zero,
}

impl TensorInfo {
    fn bytes(&self) -> u64 {
        (numel(&self.shape) * self.dtype.size_bytes()) as u64
    }
}

/// A tensor under a shape: Flatten's value and gradient are views of its
/// input's.
#[derive(Clone, Debug)]
struct View {
    id: TensorId,
    shape: Vec<usize>,
}

/// The state and scratch of a recurrent layer (LSTM: all fields; RNN: no
/// gates, c_all, dc_carry). Backward scratch exists only when the layer is
/// in the backward order.
#[derive(Clone, Copy, Debug)]
struct Recurrent {
    dims: RecurrentDims,
    z: TensorId,
    gates: Option<TensorId>,
    h_all: TensorId,
    c_all: Option<TensorId>,
    h_last: TensorId,
    dz: Option<TensorId>,
    dh_carry: Option<TensorId>,
    dc_carry: Option<TensorId>,
    /// Set when the input is an embedding read by this layer alone
    /// ([`feeds_recurrent_only`]).
    chunked: Option<ChunkScratch>,
    /// The carry of an LSTM reading a chunked embedding, should its kernels
    /// share steps (see [`SharedUse`]; `ops::recurrent::shared_carry_len`).
    shared_carry: Option<TensorId>,
}

/// The per-batch chunk buffers of an embedding whose only reader is a
/// recurrent layer ([`feeds_recurrent_only`]), written from the host with
/// the batch (`ops::segment_sum::token_chunks`; the order is the
/// embedding's own). Each holds room for one chunk per position.
#[derive(Clone, Copy, Debug)]
struct ChunkBufs {
    /// `[N+1]` chunk bounds in the order.
    start: TensorId,
    /// `[N]` the first position of each chunk.
    first: TensorId,
    /// `[N]` the token of each chunk.
    token: TensorId,
    /// `[N]` the chunk of each position.
    chunk_of: TensorId,
    /// `[N]` the positions 0..N, written once: the order of the chunk rows
    /// the embedding's backward adds (chunk tokens ascend already).
    identity: TensorId,
}

/// A recurrent layer's tensors for a chunked input: the input row of each
/// chunk (`[N, D]`, forward, kept for the backward), their projections
/// `rows·W` (`[N, G]`, forward scratch) and the gate gradients summed per
/// chunk (`[N, G]`, backward scratch). Room for one chunk per position.
#[derive(Clone, Copy, Debug)]
struct ChunkScratch {
    embedding: NodeId,
    rows: TensorId,
    proj: TensorId,
    sums: TensorId,
}

/// Whether embedding `id`'s only reader is a recurrent layer taking it as
/// its input x. Then the layer works per chunk of equal tokens: every
/// position of a chunk has the same input row, so its forward projects one
/// row per chunk (`P = Xc·W`) and gathers `z = P[chunk of position]`, and
/// its backward sums dz per chunk (`ops::segment_sum`), so that
/// `dW = Xᵀ·dZ` and `dX = dZ·Wᵀ` need one row per chunk instead of one per
/// position (with pre-padded short texts most positions are padding: ~200
/// chunks instead of 3200 rows in the seed).
/// The embedding's gradient buffer then holds one row per chunk, which its
/// backward adds into the table rows of the chunks' tokens. Not when the
/// embedding's value or gradient is kept for inspection (its gradient
/// would not be per position), nor when the layer is not in the backward.
fn feeds_recurrent_only(graph: &Graph, id: NodeId, inspected: bool, in_backward: &[bool]) -> bool {
    !inspected
        && graph.only_reader(id).is_some_and(|r| {
            let node = graph.node(r);
            matches!(node.op, Op::Lstm { .. } | Op::Rnn { .. })
                && node.inputs[0] == id
                && !node.inputs[1..].contains(&id)
                && in_backward[r.0]
        })
}

/// Whether conv node `id`'s only reader is a ReLU, so that the conv writes
/// `max(z, 0)` straight into the ReLU's value (`ops::conv2d::
/// conv2d_forward_relu`) and the ReLU records no forward. The ReLU's
/// backward masks by its input's sign; the shared buffer's `max(z, 0) > 0`
/// is the same mask. Not when the conv's own value is kept for inspection
/// (it would read the ReLU's).
fn relu_reads_only(graph: &Graph, id: NodeId, inspected: bool) -> bool {
    !inspected
        && graph.only_reader(id).is_some_and(|r| {
            let node = graph.node(r);
            node.op == Op::Activation(Activation::Relu) && node.inputs == [id]
        })
}

/// Whether ReLU node `id`'s only reader is a max-pool with disjoint
/// windows, so that the pool's backward applies the ReLU's mask
/// (`ops::pool2d::maxpool_relu_backward`: the pooled maximum is the ReLU's
/// output at the argmax, positive exactly where the ReLU's input is) and
/// writes the ReLU's input gradient; the ReLU records no backward. Not
/// when the ReLU's gradient is kept for inspection.
fn relu_feeds_pool_only(graph: &Graph, id: NodeId, inspected: bool) -> bool {
    !inspected
        && graph.node(id).op == Op::Activation(Activation::Relu)
        && graph.only_reader(id).is_some_and(|r| {
            let node = graph.node(r);
            matches!(node.op, Op::MaxPool2d { .. })
                && node.inputs == [id]
                && pool_geometry(graph, r).is_ok_and(|g| windows_disjoint(&g))
        })
}

/// Tensors a node keeps besides its value.
#[derive(Clone, Copy, Debug)]
enum Extra {
    None,
    /// A conv whose ReLU is fused into its forward ([`relu_reads_only`]):
    /// its value is the ReLU's.
    ConvRelu,
    /// A ReLU whose backward is fused into its max-pool reader's
    /// ([`relu_feeds_pool_only`]): its gradient is its input's, which the
    /// pool's backward writes; it records no backward.
    ReluIntoPool,
    Recurrent(Recurrent),
    MaxPool {
        argmax: TensorId,
    },
    /// The token positions sorted by token (`ops::embedding::token_order`),
    /// written from the host with the batch; the backward reads them.
    /// `chunks`: see [`feeds_recurrent_only`].
    Embedding {
        order: TensorId,
        chunks: Option<ChunkBufs>,
    },
    /// `weights`: the class weights, when the loss has them (written once
    /// at construction).
    /// `correct`: the count of rows whose first maximum is the label,
    /// accumulated over every forward through the loss (read and reset by
    /// [`Executor::take_correct_count`]).
    Loss {
        probs: TensorId,
        rows: TensorId,
        weights: Option<TensorId>,
        correct: TensorId,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StageKind {
    Forward(NodeId),
    Backward(NodeId),
    Update,
}

struct Stage {
    kind: StageKind,
    /// For the update: the gradient clipping, if any (the optimizer holds
    /// its own dispatches, recorded after these).
    dispatches: Vec<Dispatch>,
}

/// An embedding in the backward: the tensor its token order goes into
/// and, when chunked, what else each batch sets.
#[derive(Debug)]
struct TokenOrder {
    node: NodeId,
    order: TensorId,
    chunked: Option<ChunkUse>,
}

/// What each batch sets for a chunked embedding ([`feeds_recurrent_only`]):
/// the chunk buffers, and the chunk count C in the params of the dispatches
/// prepared for one chunk per position. A batch with more than
/// [`MAX_CHUNK_SHARE`] as many chunks as positions (few repeated tokens:
/// chunking would add the chunk sums and gathers to products of the same
/// size) runs the per-position dispatches instead, recorded in place of
/// the chunked ones.
#[derive(Debug)]
struct ChunkUse {
    bufs: ChunkBufs,
    /// The recurrent reader.
    reader: NodeId,
    /// The recurrent reader's forward stage (its first two dispatches:
    /// [`chunked_input_projection`]).
    forward: usize,
    /// The recurrent reader's backward stage and the index of the first of
    /// its [`chunked_input_gradients`] dispatches.
    recurrent: (usize, usize),
    /// Whether those include the input gradient (the fourth).
    with_dx: bool,
    /// The embedding's backward stage (its only dispatch adds the chunk
    /// rows into the table).
    scatter: Option<usize>,
    positions: usize,
    vocab: usize,
    width: usize,
    gates: usize,
    padding_idx: Option<u32>,
    /// The per-position input projection (replacing the forward's first
    /// [`CHUNK_PROJECTION_DISPATCHES`]), dW and dx (replacing the chunked
    /// backward dispatches) and the embedding's scatter by token.
    per_position: PerPosition,
    /// The chunk count of the last batch written (none yet: chunked).
    last_chunks: std::cell::Cell<Option<usize>>,
    /// The reader's shared steps, where its kernels run them.
    shared: Option<SharedUse>,
}

/// An LSTM reading a chunked embedding whose kernels run shared leading
/// steps (`ops::recurrent::recurrent_shares_steps`): before each run the
/// host counts the steps at which every sample holds the same token
/// (`ops::recurrent::shared_steps`, at most T - 1) and rewrites the step
/// ranges of the two forward runs (`ops::recurrent::set_shared_steps`) and
/// of the two backward runs with the two dU products that follow them
/// (`ops::recurrent::set_shared_backward`). The embedding's gradient then
/// holds the sum over the samples of a shared step's rows in sample 0's
/// (chunked, it is summed per token anyway).
#[derive(Debug)]
struct SharedUse {
    dims: RecurrentDims,
    /// Whether the LSTM is masked (dU then sums every row).
    masked: bool,
    /// The forward stage and index of the run of the shared steps (the
    /// other run follows it).
    forward: (usize, usize),
    /// The backward stage and index of the run after the shared steps
    /// (the run of the shared steps and the two dU products follow it).
    backward: (usize, usize),
    /// The shared steps of the last batch written.
    last: std::cell::Cell<Option<usize>>,
}

impl ChunkUse {
    /// Whether the last batch written runs chunked ([`MAX_CHUNK_SHARE`]).
    fn chunked_now(&self) -> bool {
        self.last_chunks
            .get()
            .is_none_or(|c| c as f64 <= MAX_CHUNK_SHARE * self.positions as f64)
    }
}

/// Where the runs of an LSTM's shared steps are (see [`SharedUse`]), if
/// its forward stage `forward` and backward stage `backward` have them.
fn shared_use(
    stages: &[Stage],
    forward: usize,
    backward: usize,
    dims: RecurrentDims,
    masked: bool,
) -> Option<SharedUse> {
    let find = |s: usize, entry: &str| {
        let i = stages[s].dispatches.iter().position(|d| d.name == entry)?;
        // Two runs of the kernel, one after the other.
        (stages[s].dispatches.get(i + 1)?.name == entry).then_some((s, i))
    };
    Some(SharedUse {
        dims,
        masked,
        forward: find(forward, "lstm_sequence_forward_blocked")?,
        backward: find(backward, "lstm_sequence_backward_blocked")?,
        last: std::cell::Cell::new(None),
    })
}

/// The per-position alternatives of a chunked embedding's dispatches.
#[derive(Debug)]
struct PerPosition {
    projection: Dispatch,
    gradients: Vec<Dispatch>,
    scatter: Option<Dispatch>,
}

/// The most chunks per position a batch runs chunked with.
const MAX_CHUNK_SHARE: f64 = 0.5;

/// Dispatches [`chunked_input_projection`] records.
const CHUNK_PROJECTION_DISPATCHES: usize = 3;

/// A dropout dispatch whose uniforms follow the run: the stage holding it
/// (its only dispatch), the layer and its element count.
#[derive(Clone, Copy, Debug)]
struct DropoutUse {
    stage: usize,
    dropout: Dropout,
    n: usize,
}

enum OptimizerState {
    Adam(Adam),
    Sgd(Sgd),
}

impl OptimizerState {
    fn dispatches(&self) -> Vec<&Dispatch> {
        match self {
            OptimizerState::Adam(a) => a.dispatches(),
            OptimizerState::Sgd(s) => s.dispatches(),
        }
    }

    fn state_bytes(&self) -> u64 {
        match self {
            OptimizerState::Adam(a) => a
                .slots()
                .iter()
                .map(|s| s.m.size_bytes() + s.v.size_bytes())
                .sum(),
            OptimizerState::Sgd(s) => s.slots().iter().map(|s| s.velocity.size_bytes()).sum(),
        }
    }

    /// The settings, as a training configuration names them.
    fn config(&self) -> Optimizer {
        match self {
            OptimizerState::Adam(a) => Optimizer::Adam(*a.config()),
            OptimizerState::Sgd(s) => Optimizer::Sgd(*s.config()),
        }
    }

    /// State tensor `k` (in [`OptimizerSnapshot::slot_names`] order) of slot `i`.
    fn tensor(&self, i: usize, k: usize) -> &GpuTensor {
        match self {
            OptimizerState::Adam(a) if k == 0 => &a.slots()[i].m,
            OptimizerState::Adam(a) => &a.slots()[i].v,
            OptimizerState::Sgd(s) => &s.slots()[i].velocity,
        }
    }

    fn buffers(&self) -> usize {
        match self {
            OptimizerState::Adam(a) => 2 * a.slots().len(),
            OptimizerState::Sgd(s) => s.slots().len(),
        }
    }
}

/// Options of [`GpuExecutor::with_options`].
#[derive(Clone, Debug, Default)]
pub struct ExecOptions {
    /// Nodes whose value and gradient keep buffers of their own, so that
    /// [`Executor::value`] and [`GpuExecutor::gradient_of`] can read them
    /// after any run. The schedule is otherwise unchanged.
    pub inspect: Vec<NodeId>,
    /// F32 input nodes (e.g. the image) whose gradient every backward also
    /// computes, into a buffer of its own read with
    /// [`GpuExecutor::gradient_of`]: the nodes leading from them to the
    /// loss join the backward (a convolution adds its backward-input
    /// dispatch), the rest of the schedule is unchanged. Empty (the
    /// default): inputs get no gradient and cost nothing.
    pub input_gradients: Vec<NodeId>,
}

/// What one run recorded and submitted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StepStats {
    pub forward_dispatches: usize,
    pub backward_dispatches: usize,
    /// The optimizer's, plus the gradient clipping's when configured.
    pub update_dispatches: usize,
    /// `clear_buffer` commands (accumulated gradients, shared initial states).
    pub clears: usize,
    /// `queue.write_buffer` calls for inputs (plus Adam's step uniforms and
    /// the dropout dispatches' mode and step).
    pub writes: usize,
    pub submits: usize,
    /// Bytes read back to the host.
    pub readback_bytes: u64,
}

impl StepStats {
    pub fn dispatches(&self) -> usize {
        self.forward_dispatches + self.backward_dispatches + self.update_dispatches
    }
}

/// One dispatch of a training step, in recording order (see
/// [`GpuExecutor::train_schedule`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScheduledDispatch {
    pub phase: Phase,
    /// The node whose forward or backward records it (`None`: the update).
    pub node: Option<NodeId>,
    /// The WGSL entry point.
    pub entry: &'static str,
    pub workgroups: [u32; 3],
}

/// What a planned tensor holds for the graph.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TensorRole {
    /// The value of an input or parameter node (pinned).
    Input,
    Param,
    /// A parameter's gradient (pinned: the optimizer reads it).
    ParamGrad,
    /// The value of any other node.
    Value,
    /// The incoming gradient of any other node.
    Gradient,
    /// Per-op state and scratch (recurrent states, pre-activations and
    /// carries, argmax, probabilities, per-row losses).
    Internal,
}

/// One tensor of the memory plan (see [`GpuExecutor::planned_tensors`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub bytes: u64,
    pub role: TensorRole,
    pub pinned: bool,
    /// The stages that bind it, `[first, last]` (see
    /// [`GpuExecutor::stage_phases`]); `None`: no stage does.
    pub lifetime: Option<(usize, usize)>,
    /// Its buffer in [`MemoryPlan::slots`].
    pub slot: usize,
}

/// What a run records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Run {
    Train,
    Gradients,
    Forward(NodeId),
}

/// The GPU backend of a graph (see the module doc).
pub struct GpuExecutor<'a> {
    ctx: &'a GpuContext,
    graph: Graph,
    loss: NodeId,
    /// The loss's count of correct predictions (see [`Extra::Loss`]) and
    /// the host-visible buffer it is read through.
    correct: TensorId,
    correct_staging: wgpu::Buffer,
    /// Embeddings in the backward, whose token order (and chunks) are
    /// written from the batch's ids before a backward run.
    token_orders: Vec<TokenOrder>,
    tensors: Vec<TensorInfo>,
    handles: Vec<GpuTensor>,
    lifetimes: Vec<Option<(usize, usize)>>,
    value: Vec<Option<View>>,
    grad: Vec<Option<View>>,
    stages: Vec<Stage>,
    /// Per stage: (tensor, bytes from its start) to clear first.
    clears: Vec<Vec<(TensorId, u64)>>,
    optimizer: Option<OptimizerState>,
    /// The global sum of squares of the gradients, when clipping.
    clip_sumsq: Option<GpuTensor>,
    dropouts: Vec<DropoutUse>,
    plan: MemoryPlan,
    /// Host-visible buffers the loss and predictions are copied into.
    loss_staging: wgpu::Buffer,
    staging: HashMap<TensorId, wgpu::Buffer>,
    /// Buffers this executor created: planned and pinned tensors, optimizer
    /// state, staging.
    buffers_created: usize,
    /// Training steps applied (Adam's next step is this + 1).
    steps: u32,
    /// Which stages the last run recorded (for `value`).
    last_run: Vec<bool>,
    last_stats: StepStats,
}

fn ancestors(graph: &Graph, target: NodeId) -> Vec<bool> {
    let mut keep = vec![false; graph.nodes().len()];
    keep[target.0] = true;
    for id in graph.ids().rev() {
        if keep[id.0] {
            for i in &graph.node(id).inputs {
                keep[i.0] = true;
            }
        }
    }
    keep
}

/// Hands out tensors to the dispatches of one stage, checking each against
/// the stage's planned interval (a missing entry in the stage's uses would
/// let the plan give the tensor's buffer to another one).
struct Binder<'b> {
    tensors: &'b [TensorInfo],
    handles: &'b [GpuTensor],
    lifetimes: &'b [Option<(usize, usize)>],
    stage: usize,
    node: &'b str,
}

impl Binder<'_> {
    fn view(&self, v: &View) -> Result<GpuTensor> {
        let live = self.lifetimes[v.id].is_some_and(|(a, b)| a <= self.stage && self.stage <= b);
        if !live {
            return Err(Error::graph(
                self.node,
                format!(
                    "internal error: stage {} binds tensor {:?} outside its planned lifetime {:?}",
                    self.stage, self.tensors[v.id].name, self.lifetimes[v.id]
                ),
            ));
        }
        Ok(self.unbound_view(v))
    }

    fn id(&self, id: TensorId) -> Result<GpuTensor> {
        self.view(&View {
            id,
            shape: self.tensors[id].shape.clone(),
        })
    }

    /// A handle for a bundle field the launcher does not bind in this stage
    /// (e.g. the LSTM's backward scratch during forward); never checked.
    fn unbound(&self, id: TensorId) -> GpuTensor {
        self.unbound_view(&View {
            id,
            shape: self.tensors[id].shape.clone(),
        })
    }

    fn unbound_view(&self, v: &View) -> GpuTensor {
        let h = &self.handles[v.id];
        GpuTensor {
            buffer: h.buffer.clone(),
            shape: v.shape.clone(),
            dtype: h.dtype,
        }
    }
}

/// The tensors and stages of a graph before buffers exist.
struct Declared {
    tensors: Vec<TensorInfo>,
    value: Vec<Option<View>>,
    grad: Vec<Option<View>>,
    extra: Vec<Extra>,
}

impl Declared {
    fn add(
        &mut self,
        name: String,
        shape: &[usize],
        dtype: DType,
        pinned: bool,
        zero: Zero,
    ) -> TensorId {
        self.tensors.push(TensorInfo {
            name,
            shape: shape.to_vec(),
            dtype,
            pinned,
            zero,
        });
        self.tensors.len() - 1
    }

    fn val(&self, n: NodeId) -> &View {
        self.value[n.0].as_ref().expect("every node has a value")
    }

    fn vid(&self, n: NodeId) -> TensorId {
        self.val(n).id
    }

    fn gid(&self, n: NodeId) -> Option<TensorId> {
        self.grad[n.0].as_ref().map(|v| v.id)
    }
}

fn recurrent_dims(graph: &Graph, n: NodeId) -> RecurrentDims {
    let node = graph.node(n);
    let x = &graph.node(node.inputs[0]).value.shape;
    let h = graph.node(node.inputs[2]).value.shape[0];
    RecurrentDims::new(x[0], x[1], x[2], h)
}

fn conv_geometry(graph: &Graph, n: NodeId) -> Result<Conv2dGeometry> {
    let node = graph.node(n);
    let Op::Conv2d { stride, padding } = node.op else {
        unreachable!("conv_geometry of a Conv2d node")
    };
    let x = &graph.node(node.inputs[0]).value.shape;
    let w = &graph.node(node.inputs[1]).value.shape;
    Conv2dGeometry::new(
        [x[0], x[1], x[2], x[3]],
        w[3],
        [w[0], w[1]],
        stride,
        padding,
    )
}

fn pool_geometry(graph: &Graph, n: NodeId) -> Result<Pool2dGeometry> {
    let node = graph.node(n);
    let (Op::MaxPool2d { pool, stride } | Op::AvgPool2d { pool, stride }) = node.op else {
        unreachable!("pool_geometry of a pooling node")
    };
    let x = &graph.node(node.inputs[0]).value.shape;
    Pool2dGeometry::new([x[0], x[1], x[2], x[3]], pool, stride)
}

/// Declares every tensor: values, gradients and per-op state; `sources`
/// are the inputs given a gradient ([`ExecOptions::input_gradients`]).
fn declare(graph: &Graph, loss: NodeId, inspect: &[NodeId], sources: &[NodeId]) -> Declared {
    let n = graph.nodes().len();
    let needs = graph.needs_grad_with(loss, sources);
    let in_backward: Vec<bool> = {
        let mut b = vec![false; n];
        for id in graph.backward_order_with(loss, sources) {
            b[id.0] = true;
        }
        b
    };
    let mut l = Declared {
        tensors: Vec::new(),
        value: vec![None; n],
        grad: vec![None; n],
        extra: vec![Extra::None; n],
    };
    for id in graph.ids() {
        let node = graph.node(id);
        let name = &node.name;
        let shape = node.value.shape.clone();
        let inspected = inspect.contains(&id);
        let f32 = DType::F32;
        let own = |l: &mut Declared, pinned: bool, zero: Zero| {
            let t = l.add(name.clone(), &shape, node.value.dtype, pinned, zero);
            Some(View {
                id: t,
                shape: shape.clone(),
            })
        };
        let value = match &node.op {
            Op::Input { .. } | Op::Param { .. } => own(&mut l, true, Zero::No),
            Op::Conv2d { .. } if relu_reads_only(graph, id, inspected) => {
                l.extra[id.0] = Extra::ConvRelu;
                own(&mut l, false, Zero::No)
            }
            // The ReLU fused into its conv shares the conv's value buffer.
            Op::Activation(_) if matches!(l.extra[node.inputs[0].0], Extra::ConvRelu) => {
                let t = l.vid(node.inputs[0]);
                l.tensors[t].pinned |= inspected;
                l.tensors[t].name = name.clone();
                Some(View {
                    id: t,
                    shape: shape.clone(),
                })
            }
            Op::Flatten => {
                let t = l.vid(node.inputs[0]);
                l.tensors[t].pinned |= inspected;
                Some(View {
                    id: t,
                    shape: shape.clone(),
                })
            }
            Op::Lstm {
                return_sequences, ..
            }
            | Op::Rnn {
                return_sequences, ..
            } => {
                let lstm = matches!(node.op, Op::Lstm { .. });
                let dims = recurrent_dims(graph, id);
                let RecurrentDims {
                    steps: t,
                    batch: b,
                    hidden: h,
                    ..
                } = dims;
                let g = if lstm { 4 * h } else { h };
                let state0 = Zero::Prefix((b * h * 4) as u64);
                let z = l.add(format!("{name}/z"), &[t, b, g], f32, false, Zero::No);
                let gates =
                    lstm.then(|| l.add(format!("{name}/gates"), &[t, b, g], f32, false, Zero::No));
                let h_all = l.add(format!("{name}/h_all"), &[t + 1, b, h], f32, false, state0);
                let c_all = lstm
                    .then(|| l.add(format!("{name}/c_all"), &[t + 1, b, h], f32, false, state0));
                let last_pinned = inspected && !return_sequences;
                let h_last = l.add(
                    format!("{name}/h_last"),
                    &[b, h],
                    f32,
                    last_pinned,
                    Zero::No,
                );
                let bwd = in_backward[id.0];
                let dz = bwd.then(|| l.add(format!("{name}/dz"), &[t, b, g], f32, false, Zero::No));
                let dh_carry =
                    bwd.then(|| l.add(format!("{name}/dh_carry"), &[b, h], f32, false, Zero::No));
                let dc_carry = (bwd && lstm)
                    .then(|| l.add(format!("{name}/dc_carry"), &[b, h], f32, false, Zero::No));
                let embedding = node.inputs[0];
                let chunked = match l.extra[embedding.0] {
                    Extra::Embedding {
                        chunks: Some(_), ..
                    } if bwd => Some(ChunkScratch {
                        embedding,
                        proj: l.add(
                            format!("{name}/chunk_xw"),
                            &[t * b, g],
                            f32,
                            false,
                            Zero::No,
                        ),
                        sums: l.add(
                            format!("{name}/chunk_dz"),
                            &[t * b, g],
                            f32,
                            false,
                            Zero::No,
                        ),
                        rows: l.add(
                            format!("{name}/chunk_x"),
                            &[t * b, dims.input],
                            f32,
                            false,
                            Zero::No,
                        ),
                    }),
                    _ => None,
                };
                let shared_carry = (lstm && chunked.is_some()).then(|| {
                    l.add(
                        format!("{name}/shared_carry"),
                        &[shared_carry_len(dims, 4)],
                        f32,
                        false,
                        Zero::No,
                    )
                });
                l.extra[id.0] = Extra::Recurrent(Recurrent {
                    dims,
                    z,
                    gates,
                    h_all,
                    c_all,
                    h_last,
                    dz,
                    dh_carry,
                    dc_carry,
                    chunked,
                    shared_carry,
                });
                if *return_sequences {
                    // Copied out of h_all slots 1..=T by an accumulating split.
                    own(&mut l, inspected, Zero::EveryRun)
                } else {
                    Some(View {
                        id: h_last,
                        shape: shape.clone(),
                    })
                }
            }
            Op::Embedding { .. } if in_backward[id.0] => {
                let tokens = &graph.node(node.inputs[1]).value.shape;
                let n = tokens.iter().product::<usize>();
                // Written with every batch, like an input: its own buffer.
                let order = l.add(format!("{name}/order"), &[n], DType::U32, true, Zero::No);
                let chunks = feeds_recurrent_only(graph, id, inspected, &in_backward).then(|| {
                    let mut host = |what: &str, len: usize| {
                        l.add(format!("{name}/{what}"), &[len], DType::U32, true, Zero::No)
                    };
                    ChunkBufs {
                        start: host("chunk_start", n + 1),
                        first: host("chunk_first", n),
                        token: host("chunk_token", n),
                        chunk_of: host("chunk_of", n),
                        identity: host("identity", n),
                    }
                });
                l.extra[id.0] = Extra::Embedding { order, chunks };
                own(&mut l, inspected, Zero::No)
            }
            Op::MaxPool2d { .. } => {
                let argmax = l.add(
                    format!("{name}/argmax"),
                    &shape,
                    DType::U32,
                    false,
                    Zero::No,
                );
                l.extra[id.0] = Extra::MaxPool { argmax };
                own(&mut l, inspected, Zero::No)
            }
            Op::SoftmaxCrossEntropy { class_weights } => {
                let logits = &graph.node(node.inputs[0]).value.shape;
                let probs = l.add(format!("{name}/probs"), logits, f32, false, Zero::No);
                let rows = l.add(format!("{name}/rows"), &[logits[0]], f32, false, Zero::No);
                // Constant data, like a parameter: its own buffer.
                let weights = class_weights.as_ref().map(|w| {
                    l.add(
                        format!("{name}/class_weights"),
                        &[w.len()],
                        f32,
                        true,
                        Zero::No,
                    )
                });
                // A counter across steps: its own buffer (wgpu zeroes it).
                let correct = l.add(format!("{name}/correct"), &[1], DType::U32, true, Zero::No);
                l.extra[id.0] = Extra::Loss {
                    probs,
                    rows,
                    weights,
                    correct,
                };
                // The loss is read back every step: its own buffer.
                own(&mut l, true, Zero::No)
            }
            _ => own(&mut l, inspected, Zero::No),
        };
        l.value[id.0] = value;

        let input = matches!(node.op, Op::Input { .. });
        if needs[id.0] && id != loss && (!input || sources.contains(&id)) {
            l.grad[id.0] = match node.op {
                Op::Activation(_)
                    if relu_feeds_pool_only(graph, id, inspected)
                        && l.gid(node.inputs[0]).is_some() =>
                {
                    // The pool's backward writes the ReLU's input gradient.
                    l.extra[id.0] = Extra::ReluIntoPool;
                    let t = l.gid(node.inputs[0]).expect("checked above");
                    Some(View {
                        id: t,
                        shape: shape.clone(),
                    })
                }
                Op::Flatten => {
                    let t = l
                        .gid(node.inputs[0])
                        .expect("Flatten's input needs a gradient");
                    l.tensors[t].pinned |= inspected;
                    Some(View {
                        id: t,
                        shape: shape.clone(),
                    })
                }
                _ => {
                    // Input gradients are read by the host: pinned too.
                    let pinned = inspected || input || matches!(node.op, Op::Param { .. });
                    let t = l.add(
                        format!("{name}.grad"),
                        &shape,
                        DType::F32,
                        pinned,
                        Zero::EveryRun,
                    );
                    Some(View { id: t, shape })
                }
            };
        }
    }
    l
}

/// The tensors a stage binds.
fn stage_uses(graph: &Graph, l: &Declared, kind: StageKind) -> Vec<TensorId> {
    let mut u = Vec::new();
    match kind {
        StageKind::Update => {
            for p in graph.params() {
                if let Some(g) = l.gid(p) {
                    u.push(l.vid(p));
                    u.push(g);
                }
            }
        }
        StageKind::Forward(n) => {
            let node = graph.node(n);
            u.extend(node.inputs.iter().map(|&i| l.vid(i)));
            u.push(l.vid(n));
            match l.extra[n.0] {
                Extra::Recurrent(r) => {
                    u.extend([r.z, r.h_all, r.h_last]);
                    u.extend(r.gates.into_iter().chain(r.c_all));
                    if let Some(ch) = r.chunked {
                        u.extend([ch.rows, ch.proj]);
                        if let Extra::Embedding {
                            chunks: Some(c), ..
                        } = l.extra[ch.embedding.0]
                        {
                            u.extend([c.first, c.chunk_of]);
                        }
                    }
                }
                Extra::MaxPool { argmax } => u.push(argmax),
                Extra::Embedding { .. } => {}
                Extra::Loss {
                    probs,
                    rows,
                    weights,
                    correct,
                } => u.extend([probs, rows, correct].into_iter().chain(weights)),
                Extra::None | Extra::ConvRelu | Extra::ReluIntoPool => {}
            }
        }
        StageKind::Backward(n) => {
            let node = graph.node(n);
            let input = |i: usize| node.inputs[i];
            u.extend(l.gid(n));
            u.extend(node.inputs.iter().filter_map(|&i| l.gid(i)));
            match &node.op {
                Op::Embedding { .. } => {
                    u.push(l.vid(input(1)));
                    if let Extra::Embedding { order, chunks } = l.extra[n.0] {
                        u.push(order);
                        u.extend(chunks.map(|c| [c.token, c.identity]).into_iter().flatten());
                    }
                }
                Op::Lstm { .. } | Op::Rnn { .. } => {
                    u.extend(node.inputs.iter().map(|&i| l.vid(i)));
                    if let Extra::Recurrent(r) = l.extra[n.0] {
                        u.push(r.h_all);
                        u.extend(
                            [
                                r.gates,
                                r.c_all,
                                r.dz,
                                r.dh_carry,
                                r.dc_carry,
                                r.shared_carry,
                            ]
                            .into_iter()
                            .flatten(),
                        );
                        if let Some(ch) = r.chunked {
                            u.extend([ch.sums, ch.rows]);
                            if let Extra::Embedding {
                                order,
                                chunks: Some(c),
                            } = l.extra[ch.embedding.0]
                            {
                                u.extend([order, c.start]);
                            }
                        }
                    }
                }
                Op::Conv2d { .. } | Op::Dense => u.extend([l.vid(input(0)), l.vid(input(1))]),
                Op::Activation(a) => u.push(if a.backward_uses_input() {
                    l.vid(input(0))
                } else {
                    l.vid(n)
                }),
                Op::MaxPool2d { .. } => {
                    if let Extra::MaxPool { argmax } = l.extra[n.0] {
                        u.push(argmax);
                    }
                    if matches!(l.extra[input(0).0], Extra::ReluIntoPool) {
                        u.push(l.vid(n));
                    }
                }
                Op::SoftmaxCrossEntropy { .. } => {
                    if let Extra::Loss { probs, weights, .. } = l.extra[n.0] {
                        u.extend([probs, l.vid(input(1))].into_iter().chain(weights));
                    }
                }
                _ => {}
            }
        }
    }
    u.sort_unstable();
    u.dedup();
    u
}

fn forward_dispatches(
    ctx: &GpuContext,
    graph: &Graph,
    l: &Declared,
    n: NodeId,
    b: &Binder,
) -> Result<Vec<Dispatch>> {
    let node = graph.node(n);
    let x = |i: usize| b.view(l.val(node.inputs[i]));
    let out = b.view(l.val(n))?;
    Ok(match &node.op {
        Op::Input { .. } | Op::Param { .. } | Op::Flatten => Vec::new(),
        Op::Embedding { .. } => vec![embedding_forward(ctx, &x(0)?, &x(1)?, &out)?],
        Op::Lstm {
            return_sequences,
            masked,
        }
        | Op::Rnn {
            return_sequences,
            masked,
        } => {
            let Extra::Recurrent(r) = l.extra[n.0] else {
                unreachable!("recurrent nodes have state")
            };
            let (xs, w, u, bias) = (x(0)?, x(1)?, x(2)?, x(3)?);
            let mask = masked.then(|| x(4)).transpose()?;
            let weights = RecurrentWeights {
                w: &w,
                u: &u,
                b: &bias,
            };
            // Backward scratch is not bound by forward; without a backward
            // it does not exist and z stands in.
            let scratch = |t: Option<TensorId>| b.unbound(t.unwrap_or(r.z));
            let bufs = RecurrentBuffers {
                dims: r.dims,
                z: b.id(r.z)?,
                h_all: b.id(r.h_all)?,
                h_last: b.id(r.h_last)?,
                dz: scratch(r.dz),
                dh_carry: scratch(r.dh_carry),
                cell: (),
            };
            let mut d = match r.chunked {
                Some(ch) => chunked_input_projection(ctx, l, b, &r, ch, &w)?,
                None => Vec::new(),
            };
            let chunked = r.chunked.is_some();
            d.extend(if matches!(node.op, Op::Lstm { .. }) {
                let bufs = bufs.with_cell(LstmState {
                    gates: b.id(r.gates.expect("LSTM gates"))?,
                    c_all: b.id(r.c_all.expect("LSTM c_all"))?,
                    dc_carry: scratch(r.dc_carry),
                });
                if chunked && recurrent_shares_steps::<LstmState>(ctx, r.dims) {
                    // Steps set per batch (SharedUse).
                    recurrent_sequence_forward_shared(ctx, &bufs, &weights, mask.as_ref(), 0)?
                        .into()
                } else if chunked {
                    recurrent_forward_recurrence(ctx, &bufs, &weights, mask.as_ref())?
                } else {
                    recurrent_forward_sequence(ctx, &bufs, &xs, &weights, mask.as_ref())?
                }
            } else {
                let bufs = bufs.with_cell(RnnState);
                if chunked {
                    recurrent_forward_recurrence(ctx, &bufs, &weights, mask.as_ref())?
                } else {
                    recurrent_forward_sequence(ctx, &bufs, &xs, &weights, mask.as_ref())?
                }
            });
            if *return_sequences {
                // out = h_all[1..=T]: the split (concat backward) of h_all
                // seen as one row, into the cleared output.
                let RecurrentDims {
                    steps: t,
                    batch: bt,
                    hidden: h,
                    ..
                } = r.dims;
                let seq = b.view(&View {
                    id: l.vid(n),
                    shape: vec![1, t * bt * h],
                })?;
                let all = b.view(&View {
                    id: r.h_all,
                    shape: vec![1, (t + 1) * bt * h],
                })?;
                d.push(concat_backward(ctx, &seq, &all, bt * h)?);
            }
            d
        }
        Op::Conv2d { .. } => {
            let g = conv_geometry(graph, n)?;
            let launch = if matches!(l.extra[n.0], Extra::ConvRelu) {
                conv2d_forward_relu
            } else {
                conv2d_forward
            };
            vec![launch(ctx, &x(0)?, &x(1)?, &x(2)?, &out, &g)?]
        }
        Op::MaxPool2d { .. } => {
            let Extra::MaxPool { argmax } = l.extra[n.0] else {
                unreachable!("max pooling keeps argmax")
            };
            let g = pool_geometry(graph, n)?;
            vec![maxpool_forward(ctx, &x(0)?, &out, &b.id(argmax)?, &g)?]
        }
        Op::AvgPool2d { .. } => {
            let g = pool_geometry(graph, n)?;
            vec![avgpool_forward(ctx, &x(0)?, &out, &g)?]
        }
        Op::Dense => {
            let (xs, w, bias) = (x(0)?, x(1)?, x(2)?);
            let (rows, f, units) = (xs.shape[0], xs.shape[1], w.shape[1]);
            vec![
                matmul(
                    ctx,
                    Layout::AB,
                    &out,
                    &xs,
                    &w,
                    MatmulParams::new(rows, units, f),
                )?,
                bias_add(ctx, &out, &bias)?,
            ]
        }
        // Fused into the conv's forward (its value is this node's).
        Op::Activation(_) if matches!(l.extra[node.inputs[0].0], Extra::ConvRelu) => Vec::new(),
        Op::Activation(a) => vec![activation_forward(ctx, *a, &x(0)?, &out)?],
        Op::Dropout { rate, seed } => {
            // Mode and step are rewritten before every run.
            let d = Dropout::new(*rate, *seed)?;
            vec![dropout_forward(ctx, &d, &x(0)?, &out, Some(0))?]
        }
        Op::Concat => {
            let xs = (0..node.inputs.len()).map(x).collect::<Result<Vec<_>>>()?;
            let refs: Vec<&GpuTensor> = xs.iter().collect();
            concat_forward_all(ctx, &refs, &out)?
        }
        Op::Average => {
            let xs = (0..node.inputs.len()).map(x).collect::<Result<Vec<_>>>()?;
            let refs: Vec<&GpuTensor> = xs.iter().collect();
            average_forward(ctx, &refs, &out)?
        }
        Op::Softmax => vec![softmax_forward(ctx, &x(0)?, &out)?],
        Op::SoftmaxCrossEntropy { .. } => {
            let Extra::Loss {
                probs,
                rows,
                weights,
                correct,
            } = l.extra[n.0]
            else {
                unreachable!("the loss keeps probs and rows")
            };
            let (logits, labels) = (x(0)?, x(1)?);
            let (rows, probs) = (b.id(rows)?, b.id(probs)?);
            let mut d = vec![match weights {
                None => softmax_cross_entropy_forward(ctx, &logits, &labels, &probs, &rows)?,
                Some(w) => weighted_softmax_cross_entropy_forward(
                    ctx,
                    &logits,
                    &labels,
                    &b.id(w)?,
                    &probs,
                    &rows,
                )?,
            }];
            d.extend(reduce_sum(
                ctx,
                &out,
                &rows,
                SumOptions::mean(logits.shape[0]),
            )?);
            d.push(accuracy_count(ctx, &b.id(correct)?, &probs, &labels)?);
            d
        }
    })
}

/// The input-kernel and input gradients of recurrent layer `r` whose input
/// is a chunked embedding ([`feeds_recurrent_only`]), after its recurrence
/// backward left dz: `S = dz` summed per chunk, `dW += Xcᵀ·S` (Xc: the
/// chunks' input rows, kept from the forward), and (when the embedding
/// needs it) the gradient's first C rows `+= S·Wᵀ`, one per chunk.
/// Prepared for one chunk per position; [`GpuExecutor::write_token_orders`]
/// sets this batch's count C. Returns [`CHUNK_DISPATCHES`] dispatches, or
/// one fewer without dx.
#[allow(clippy::too_many_arguments)]
fn chunked_input_gradients(
    ctx: &GpuContext,
    l: &Declared,
    b: &Binder,
    r: &Recurrent,
    ch: ChunkScratch,
    dw: &GpuTensor,
    dx: Option<&GpuTensor>,
    w: &GpuTensor,
) -> Result<Vec<Dispatch>> {
    let Extra::Embedding {
        order,
        chunks: Some(c),
    } = l.extra[ch.embedding.0]
    else {
        unreachable!("a chunked recurrent input is an embedding with chunks")
    };
    let dims = r.dims;
    let n = dims.steps * dims.batch;
    let (d_in, g) = (dims.input, b.id(ch.sums)?.numel() / n.max(1));
    let dz = b.view(&View {
        id: r.dz.expect("a layer in the backward has dz"),
        shape: vec![n, g],
    })?;
    let (sums, rows) = (b.id(ch.sums)?, b.id(ch.rows)?);
    let mut d = vec![
        segment_sum(ctx, &sums, &dz, &b.id(order)?, &b.id(c.start)?, n)?,
        matmul(
            ctx,
            Layout::AtB,
            dw,
            &rows,
            &sums,
            MatmulParams::new(d_in, g, n).accumulate(),
        )?,
    ];
    if let Some(dx) = dx {
        d.push(matmul(
            ctx,
            Layout::ABt,
            dx,
            &sums,
            w,
            MatmulParams::new(n, d_in, g).accumulate(),
        )?);
    }
    Ok(d)
}

/// Dispatches [`chunked_input_gradients`] appends with dx.
const CHUNK_DISPATCHES: usize = 3;

/// The per-position dispatches a chunked embedding's batch runs when it
/// has too many chunks ([`MAX_CHUNK_SHARE`]): the input projection
/// `z = X·W` (forward stage binder `b[0]`), `dW += Xᵀ·dZ` and
/// `dX += dZ·Wᵀ` (backward stage `b[1]`), and the embedding's scatter of
/// dX by token (its backward stage `scatter`).
fn per_position_dispatches(
    ctx: &GpuContext,
    graph: &Graph,
    l: &Declared,
    (embedding, reader): (NodeId, NodeId),
    r: &Recurrent,
    b: [&Binder; 2],
    scatter: Option<&Binder>,
) -> Result<PerPosition> {
    let dims = r.dims;
    let w_id = graph.node(reader).inputs[1];
    let z = b[0].id(r.z)?;
    let gates = z.numel() / (dims.steps * dims.batch).max(1);
    let projection = input_projection(
        ctx,
        &z,
        &b[0].view(l.val(embedding))?,
        &b[0].view(l.val(w_id))?,
        dims,
        gates,
    )?;
    let grad = |b: &Binder, id: NodeId| -> Result<Option<GpuTensor>> {
        l.grad[id.0].as_ref().map(|v| b.view(v)).transpose()
    };
    let gradients = input_gradients(
        ctx,
        grad(b[1], w_id)?.as_ref(),
        grad(b[1], embedding)?.as_ref(),
        &b[1].id(r.dz.expect("a layer in the backward has dz"))?,
        &b[1].view(l.val(embedding))?,
        &b[1].view(l.val(w_id))?,
        dims,
    )?;
    let scatter = match (scatter, l.extra[embedding.0]) {
        (Some(b), Extra::Embedding { order, .. }) => {
            let e = graph.node(embedding);
            let Op::Embedding { padding_idx } = e.op else {
                unreachable!("Extra::Embedding belongs to an embedding")
            };
            match (grad(b, e.inputs[0])?, grad(b, embedding)?) {
                (Some(dtable), Some(dy)) => Some(embedding_backward(
                    ctx,
                    &dtable,
                    &dy,
                    &b.view(l.val(e.inputs[1]))?,
                    &b.id(order)?,
                    padding_idx,
                )?),
                _ => None,
            }
        }
        _ => None,
    };
    Ok(PerPosition {
        projection,
        gradients,
        scatter,
    })
}

/// `z = X·W` of recurrent layer `r` whose input is a chunked embedding
/// ([`feeds_recurrent_only`]): `Xc` = the input row of each chunk (the row
/// at its first position), `P = Xc·W`, then `z[q] = P[chunk of q]`. The
/// first two are prepared for one chunk per position;
/// [`GpuExecutor::write_token_orders`] sets this batch's count C. Each z
/// row is the dot products `x_q·W` of the per-position projection.
fn chunked_input_projection(
    ctx: &GpuContext,
    l: &Declared,
    b: &Binder,
    r: &Recurrent,
    ch: ChunkScratch,
    w: &GpuTensor,
) -> Result<Vec<Dispatch>> {
    let Extra::Embedding {
        chunks: Some(c), ..
    } = l.extra[ch.embedding.0]
    else {
        unreachable!("a chunked recurrent input is an embedding with chunks")
    };
    let dims = r.dims;
    let n = dims.steps * dims.batch;
    let (d_in, proj) = (dims.input, b.id(ch.proj)?);
    let g = proj.numel() / n.max(1);
    let x = b.view(&View {
        id: l.vid(ch.embedding),
        shape: vec![n, d_in],
    })?;
    let rows = b.id(ch.rows)?;
    Ok(vec![
        embedding_forward(ctx, &x, &b.id(c.first)?, &rows)?,
        matmul(
            ctx,
            Layout::AB,
            &proj,
            &rows,
            w,
            MatmulParams::new(n, g, d_in),
        )?,
        embedding_forward(ctx, &proj, &b.id(c.chunk_of)?, &b.id(r.z)?)?,
    ])
}

fn backward_dispatches(
    ctx: &GpuContext,
    graph: &Graph,
    l: &Declared,
    n: NodeId,
    b: &Binder,
) -> Result<Vec<Dispatch>> {
    let node = graph.node(n);
    let x = |i: usize| b.view(l.val(node.inputs[i]));
    // The gradient of input i, if it needs one.
    let dx = |i: usize| -> Result<Option<GpuTensor>> {
        l.grad[node.inputs[i].0]
            .as_ref()
            .map(|v| b.view(v))
            .transpose()
    };
    let need = |i: usize, what: &str| -> Result<GpuTensor> {
        dx(i)?.ok_or_else(|| Error::Unsupported {
            op: node.name.clone(),
            what: format!("{what} as a constant (it does not depend on a parameter)"),
            why: "this op's backward always writes that gradient".into(),
        })
    };
    let dy = || -> Result<GpuTensor> {
        b.view(l.grad[n.0].as_ref().ok_or_else(|| {
            Error::graph(&node.name, "internal error: no incoming gradient buffer")
        })?)
    };
    Ok(match &node.op {
        Op::Input { .. } | Op::Param { .. } | Op::Flatten => Vec::new(),
        Op::Embedding { padding_idx } => {
            let Extra::Embedding { order, chunks } = l.extra[n.0] else {
                unreachable!("an embedding in the backward declares its order")
            };
            let dtable = need(0, "the embedding table")?;
            match chunks {
                // The gradient holds one row per chunk (the recurrent
                // reader's backward wrote them); the chunks' tokens ascend.
                Some(c) => vec![embedding_backward(
                    ctx,
                    &dtable,
                    &dy()?,
                    &b.id(c.token)?,
                    &b.id(c.identity)?,
                    *padding_idx,
                )?],
                None => vec![embedding_backward(
                    ctx,
                    &dtable,
                    &dy()?,
                    &x(1)?,
                    &b.id(order)?,
                    *padding_idx,
                )?],
            }
        }
        Op::Lstm {
            return_sequences,
            masked,
        }
        | Op::Rnn {
            return_sequences,
            masked,
        } => {
            let Extra::Recurrent(r) = l.extra[n.0] else {
                unreachable!("recurrent nodes have state")
            };
            let (xs, w, u, bias) = (x(0)?, x(1)?, x(2)?, x(3)?);
            let mask = masked.then(|| x(4)).transpose()?;
            let weights = RecurrentWeights {
                w: &w,
                u: &u,
                b: &bias,
            };
            let (gx, gw, gu, gb) = (
                dx(0)?,
                need(1, "the input kernel")?,
                need(2, "the recurrent kernel")?,
                need(3, "the bias")?,
            );
            // A chunked input's dW and dx come after, from dz per chunk.
            let grads = RecurrentGrads {
                dx: gx.as_ref().filter(|_| r.chunked.is_none()),
                dw: Some(&gw).filter(|_| r.chunked.is_none()),
                du: &gu,
                db: &gb,
            };
            let g = dy()?;
            let dh = if *return_sequences {
                HiddenGrad {
                    seq: Some(&g),
                    last: None,
                }
            } else {
                HiddenGrad {
                    seq: None,
                    last: Some(&g),
                }
            };
            let scratch = |t: Option<TensorId>| -> Result<GpuTensor> {
                b.id(t.ok_or_else(|| {
                    Error::graph(&node.name, "internal error: no backward scratch")
                })?)
            };
            let bufs = RecurrentBuffers {
                dims: r.dims,
                // z and h_last are not bound by backward.
                z: b.unbound(r.z),
                h_all: b.id(r.h_all)?,
                h_last: b.unbound(r.h_last),
                dz: scratch(r.dz)?,
                dh_carry: scratch(r.dh_carry)?,
                cell: (),
            };
            let mut d = if matches!(node.op, Op::Lstm { .. }) {
                let bufs = bufs.with_cell(LstmState {
                    gates: b.id(r.gates.expect("LSTM gates"))?,
                    c_all: b.id(r.c_all.expect("LSTM c_all"))?,
                    dc_carry: scratch(r.dc_carry)?,
                });
                match r.shared_carry {
                    Some(carry) if recurrent_shares_steps::<LstmState>(ctx, r.dims) => {
                        // Steps set per batch (SharedUse).
                        let (carry, m) = (b.id(carry)?, mask.as_ref());
                        recurrent_backward_shared(
                            ctx, &grads, dh, &bufs, &xs, &weights, m, &carry, 0,
                        )?
                    }
                    _ => recurrent_backward_sequence(
                        ctx,
                        &grads,
                        dh,
                        &bufs,
                        &xs,
                        &weights,
                        mask.as_ref(),
                    )?,
                }
            } else {
                let bufs = bufs.with_cell(RnnState);
                recurrent_backward_sequence(ctx, &grads, dh, &bufs, &xs, &weights, mask.as_ref())?
            };
            if let Some(ch) = r.chunked {
                d.extend(chunked_input_gradients(
                    ctx,
                    l,
                    b,
                    &r,
                    ch,
                    &gw,
                    gx.as_ref(),
                    &w,
                )?);
            }
            d
        }
        Op::Conv2d { .. } => {
            let g = conv_geometry(graph, n)?;
            let (xs, w, gy) = (x(0)?, x(1)?, dy()?);
            let mut d = vec![
                conv2d_backward_weight(ctx, &need(1, "the conv kernel")?, &gy, &xs, &g)?,
                conv2d_backward_bias(ctx, &need(2, "the conv bias")?, &gy, &g)?,
            ];
            if let Some(gx) = dx(0)? {
                d.extend(conv2d_backward_input(ctx, &gx, &gy, &w, &g)?);
            }
            d
        }
        Op::MaxPool2d { .. } => {
            let Extra::MaxPool { argmax } = l.extra[n.0] else {
                unreachable!("max pooling keeps argmax")
            };
            let g = pool_geometry(graph, n)?;
            if matches!(l.extra[node.inputs[0].0], Extra::ReluIntoPool) {
                // The ReLU's input gradient, masked by the pooled maxima.
                vec![maxpool_relu_backward(
                    ctx,
                    &need(0, "the pooled input")?,
                    &dy()?,
                    &b.id(argmax)?,
                    &b.view(l.val(n))?,
                    &g,
                )?]
            } else {
                vec![maxpool_backward(
                    ctx,
                    &need(0, "the pooled input")?,
                    &dy()?,
                    &b.id(argmax)?,
                    &g,
                )?]
            }
        }
        Op::AvgPool2d { .. } => {
            let g = pool_geometry(graph, n)?;
            vec![avgpool_backward(
                ctx,
                &need(0, "the pooled input")?,
                &dy()?,
                &g,
            )?]
        }
        Op::Dense => {
            let (xs, w, gy) = (x(0)?, x(1)?, dy()?);
            let (rows, f, units) = (xs.shape[0], xs.shape[1], w.shape[1]);
            let mut d = Vec::new();
            if let Some(gx) = dx(0)? {
                // dx += dy·Wᵀ
                d.push(matmul(
                    ctx,
                    Layout::ABt,
                    &gx,
                    &gy,
                    &w,
                    MatmulParams::new(rows, f, units).accumulate(),
                )?);
            }
            // dW += xᵀ·dy
            d.push(matmul(
                ctx,
                Layout::AtB,
                &need(1, "the dense kernel")?,
                &xs,
                &gy,
                MatmulParams::new(f, units, rows).accumulate(),
            )?);
            d.extend(bias_backward(ctx, &need(2, "the dense bias")?, &gy)?);
            d
        }
        Op::Activation(_) if matches!(l.extra[n.0], Extra::ReluIntoPool) => Vec::new(),
        Op::Activation(a) => {
            let saved = if a.backward_uses_input() {
                x(0)?
            } else {
                b.view(l.val(n))?
            };
            vec![activation_backward(
                ctx,
                *a,
                &need(0, "the activation input")?,
                &dy()?,
                &saved,
            )?]
        }
        Op::Dropout { rate, seed } => {
            let d = Dropout::new(*rate, *seed)?;
            vec![dropout_backward(
                ctx,
                &d,
                &need(0, "the dropout input")?,
                &dy()?,
                0,
            )?]
        }
        Op::Concat => {
            let gy = dy()?;
            let mut d = Vec::new();
            let mut offset = 0;
            for (i, &input) in node.inputs.iter().enumerate() {
                if let Some(gx) = dx(i)? {
                    d.push(concat_backward(ctx, &gx, &gy, offset)?);
                }
                offset += graph.node(input).value.shape[1];
            }
            d
        }
        Op::Softmax => {
            return Err(Error::Unsupported {
                op: node.name.clone(),
                what: "the backward of Softmax".into(),
                why: "softmax is for prediction; train through SoftmaxCrossEntropy".into(),
            })
        }
        Op::Average => {
            let dxs = (0..node.inputs.len())
                .filter_map(|i| dx(i).transpose())
                .collect::<Result<Vec<_>>>()?;
            let refs: Vec<&GpuTensor> = dxs.iter().collect();
            average_backward(ctx, &refs, &dy()?, node.inputs.len())?
        }
        Op::SoftmaxCrossEntropy { .. } => {
            let Extra::Loss { probs, weights, .. } = l.extra[n.0] else {
                unreachable!("the loss keeps probs and rows")
            };
            match dx(0)? {
                Some(gl) => {
                    let (probs, labels) = (b.id(probs)?, x(1)?);
                    vec![match weights {
                        None => softmax_cross_entropy_backward(ctx, &gl, &probs, &labels)?,
                        Some(w) => weighted_softmax_cross_entropy_backward(
                            ctx,
                            &gl,
                            &probs,
                            &labels,
                            &b.id(w)?,
                        )?,
                    }]
                }
                None => Vec::new(),
            }
        }
    })
}

impl<'a> GpuExecutor<'a> {
    /// Builds the schedule of `graph` for training on `loss` from the
    /// initial `params` (every parameter of the graph, once).
    pub fn new(
        ctx: &'a GpuContext,
        graph: &Graph,
        loss: NodeId,
        params: &[(NodeId, Vec<f32>)],
        config: TrainConfig,
    ) -> Result<Self> {
        Self::with_options(ctx, graph, loss, params, config, ExecOptions::default())
    }

    /// As [`GpuExecutor::new`], with nodes kept for inspection.
    pub fn with_options(
        ctx: &'a GpuContext,
        graph: &Graph,
        loss: NodeId,
        params: &[(NodeId, Vec<f32>)],
        config: TrainConfig,
        options: ExecOptions,
    ) -> Result<Self> {
        let op = "GpuExecutor";
        if loss.0 >= graph.nodes().len() {
            return Err(Error::graph(format!("#{}", loss.0), "no such loss node"));
        }
        let loss_node = graph.node(loss);
        if !matches!(loss_node.op, Op::SoftmaxCrossEntropy { .. }) {
            return Err(Error::Unsupported {
                op: op.into(),
                what: format!(
                    "loss node {:?} of kind {}",
                    loss_node.name,
                    loss_node.op.kind()
                ),
                why: "backward is seeded by SoftmaxCrossEntropy, the only loss op".into(),
            });
        }
        if let Some(c) = config.clip_global_norm {
            check_clip("clip_global_norm", c)?;
        }
        for &i in &options.inspect {
            if i.0 >= graph.nodes().len() {
                return Err(Error::graph(format!("#{}", i.0), "no such node to inspect"));
            }
        }
        graph.check_gradient_sources(&options.input_gradients)?;
        let backward = graph.backward_order_with(loss, &options.input_gradients);
        if let Some(&s) = backward
            .iter()
            .find(|&&i| matches!(graph.node(i).op, Op::Softmax))
        {
            return Err(Error::Unsupported {
                op: graph.node(s).name.clone(),
                what: "the backward of Softmax".into(),
                why: "softmax is for prediction; train through SoftmaxCrossEntropy".into(),
            });
        }

        // Tensors and stages.
        let l = declare(graph, loss, &options.inspect, &options.input_gradients);
        let mut kinds: Vec<StageKind> = graph
            .ids()
            .filter(|&i| {
                !matches!(
                    graph.node(i).op,
                    Op::Input { .. } | Op::Param { .. } | Op::Flatten
                )
            })
            .map(StageKind::Forward)
            .collect();
        kinds.extend(
            backward
                .iter()
                .filter(|&&i| !matches!(graph.node(i).op, Op::Flatten))
                .map(|&i| StageKind::Backward(i)),
        );
        let trainable = graph.params().iter().any(|&p| l.grad[p.0].is_some());
        if trainable {
            kinds.push(StageKind::Update);
        }
        let uses: Vec<Vec<TensorId>> = kinds.iter().map(|&k| stage_uses(graph, &l, k)).collect();
        let mut lifetimes: Vec<Option<(usize, usize)>> = vec![None; l.tensors.len()];
        for (s, u) in uses.iter().enumerate() {
            for &t in u {
                let life = lifetimes[t].get_or_insert((s, s));
                life.1 = s;
            }
        }

        // The plan and its buffers.
        let requests: Vec<PlanRequest> = l
            .tensors
            .iter()
            .zip(&lifetimes)
            .map(|(t, &lifetime)| PlanRequest {
                bytes: t.bytes(),
                pinned: t.pinned,
                lifetime,
            })
            .collect();
        let plan = plan_memory(&requests);
        let mut buffers_created = 0;
        let slot_buffers = plan
            .slots
            .iter()
            .map(|s| {
                buffers_created += 1;
                Ok(ctx
                    .zeros(&[(s.bytes as usize / 4).max(1)], DType::F32)?
                    .buffer)
            })
            .collect::<Result<Vec<_>>>()?;
        let handles: Vec<GpuTensor> = l
            .tensors
            .iter()
            .enumerate()
            .map(|(i, t)| GpuTensor {
                buffer: slot_buffers[plan.slot_of[i]].clone(),
                shape: t.shape.clone(),
                dtype: t.dtype,
            })
            .collect();
        let mut clears = vec![Vec::new(); kinds.len()];
        for (t, info) in l.tensors.iter().enumerate() {
            let Some((first, _)) = lifetimes[t] else {
                continue;
            };
            let shared = plan.slots[plan.slot_of[t]].tensors.len() > 1;
            let bytes = match info.zero {
                Zero::EveryRun => info.bytes(),
                Zero::Prefix(b) if shared => b,
                _ => 0,
            };
            if bytes > 0 {
                clears[first].push((t, bytes));
            }
        }

        // Initial parameters.
        let mut given = vec![false; graph.nodes().len()];
        for (id, data) in params {
            let node = graph
                .nodes()
                .get(id.0)
                .ok_or_else(|| Error::graph(format!("#{}", id.0), "no such parameter node"))?;
            if !matches!(node.op, Op::Param { .. }) {
                return Err(Error::graph(
                    &node.name,
                    "given an initial value but is not a Param",
                ));
            }
            if given[id.0] {
                return Err(Error::graph(&node.name, "given two initial values"));
            }
            given[id.0] = true;
            let h = &handles[l.vid(*id)];
            ctx.write_f32(h, data)
                .map_err(|e| Error::graph(&node.name, format!("initial value: {e}")))?;
        }
        if let Some(p) = graph.params().into_iter().find(|p| !given[p.0]) {
            return Err(Error::graph(&graph.node(p).name, "no initial value given"));
        }
        // Class weights, once.
        for id in graph.ids() {
            let node = graph.node(id);
            if let (
                Op::SoftmaxCrossEntropy {
                    class_weights: Some(w),
                },
                Extra::Loss {
                    weights: Some(t), ..
                },
            ) = (&node.op, l.extra[id.0])
            {
                ctx.write_f32(&handles[t], w)
                    .map_err(|e| Error::graph(&node.name, format!("class weights: {e}")))?;
            }
        }

        // Dispatches, prepared once.
        let mut stages = Vec::with_capacity(kinds.len());
        let mut clip_sumsq = None;
        let mut dropouts = Vec::new();
        for (s, &kind) in kinds.iter().enumerate() {
            let node_name = match kind {
                StageKind::Forward(n) | StageKind::Backward(n) => graph.node(n).name.as_str(),
                StageKind::Update => "optimizer",
            };
            let binder = Binder {
                tensors: &l.tensors,
                handles: &handles,
                lifetimes: &lifetimes,
                stage: s,
                node: node_name,
            };
            let dispatches = match kind {
                StageKind::Forward(n) => forward_dispatches(ctx, graph, &l, n, &binder)?,
                StageKind::Backward(n) => backward_dispatches(ctx, graph, &l, n, &binder)?,
                StageKind::Update => match config.clip_global_norm {
                    Some(clip) => {
                        // Every parameter gradient, in Graph::params order
                        // (the CPU executor's order).
                        let grads = graph
                            .params()
                            .iter()
                            .filter_map(|&p| l.gid(p))
                            .map(|g| binder.id(g))
                            .collect::<Result<Vec<_>>>()?;
                        let refs: Vec<&GpuTensor> = grads.iter().collect();
                        let sumsq = ctx.zeros(&[1], DType::F32)?;
                        buffers_created += 1;
                        let d = clip_norm(ctx, &sumsq, &refs, clip)?;
                        clip_sumsq = Some(sumsq);
                        d
                    }
                    None => Vec::new(),
                },
            };
            if let StageKind::Forward(n) | StageKind::Backward(n) = kind {
                if let Op::Dropout { rate, seed } = graph.node(n).op {
                    dropouts.push(DropoutUse {
                        stage: s,
                        dropout: Dropout::new(rate, seed)?,
                        n: graph.node(n).value.numel(),
                    });
                }
            }
            stages.push(Stage { kind, dispatches });
        }
        let optimizer = if trainable {
            let mut opt = match &config.optimizer {
                Optimizer::Adam(c) => OptimizerState::Adam(Adam::new(*c)?),
                Optimizer::Sgd(c) => OptimizerState::Sgd(Sgd::new(*c)?),
            };
            for p in graph.params() {
                if let Some(g) = l.gid(p) {
                    let (w, g) = (&handles[l.vid(p)], &handles[g]);
                    match &mut opt {
                        OptimizerState::Adam(a) => a.prepare(ctx, w, g)?,
                        OptimizerState::Sgd(s) => s.prepare(ctx, w, g)?,
                    };
                }
            }
            buffers_created += opt.buffers();
            Some(opt)
        } else {
            None
        };
        let correct_staging = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("correct-count readback"),
            size: 4,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        buffers_created += 1;
        let loss_staging = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("loss readback"),
            size: 4,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        buffers_created += 1;

        let n_stages = stages.len();
        let Extra::Loss { correct, .. } = l.extra[loss.0] else {
            unreachable!("the loss node was checked to be SoftmaxCrossEntropy")
        };
        let stage_of = |kind: StageKind| kinds.iter().position(|&k| k == kind);
        let mut token_orders = Vec::new();
        for id in graph.ids() {
            let Extra::Embedding { order, chunks } = l.extra[id.0] else {
                continue;
            };
            let chunked = match chunks {
                None => None,
                Some(bufs) => {
                    let reader = graph
                        .only_reader(id)
                        .expect("a chunked embedding has one reader");
                    let Extra::Recurrent(r) = l.extra[reader.0] else {
                        unreachable!("found above")
                    };
                    let s = stage_of(StageKind::Backward(reader))
                        .expect("the recurrent reader of a chunked embedding is in the backward");
                    let with_dx = l.gid(id).is_some();
                    let tail = CHUNK_DISPATCHES - usize::from(!with_dx);
                    let node = graph.node(id);
                    let table = &graph.node(node.inputs[0]).value.shape;
                    let Op::Embedding { padding_idx } = node.op else {
                        unreachable!("Extra::Embedding belongs to an embedding")
                    };
                    let positions = r.dims.steps * r.dims.batch;
                    let forward = stage_of(StageKind::Forward(reader))
                        .expect("every node has a forward stage");
                    let scatter = stage_of(StageKind::Backward(id));
                    let binder = |stage: usize| Binder {
                        tensors: &l.tensors,
                        handles: &handles,
                        lifetimes: &lifetimes,
                        stage,
                        node: &node.name,
                    };
                    let per_position = per_position_dispatches(
                        ctx,
                        graph,
                        &l,
                        (id, reader),
                        &r,
                        [&binder(forward), &binder(s)],
                        scatter.map(binder).as_ref(),
                    )?;
                    Some(ChunkUse {
                        bufs,
                        reader,
                        forward,
                        recurrent: (s, stages[s].dispatches.len() - tail),
                        with_dx,
                        scatter,
                        positions,
                        vocab: table[0],
                        width: table[1],
                        gates: l.tensors[r.chunked.expect("chunked").sums].shape[1],
                        padding_idx,
                        per_position,
                        last_chunks: std::cell::Cell::new(None),
                        shared: shared_use(
                            &stages,
                            forward,
                            s,
                            r.dims,
                            matches!(graph.node(reader).op, Op::Lstm { masked: true, .. }),
                        ),
                    })
                }
            };
            if let Some(c) = &chunked {
                // The positions in order, once: the chunk rows are added
                // in this order.
                let identity: Vec<u32> = (0..c.positions as u32).collect();
                ctx.queue.write_buffer(
                    &handles[c.bufs.identity].buffer,
                    0,
                    bytemuck::cast_slice(&identity),
                );
            }
            token_orders.push(TokenOrder {
                node: id,
                order,
                chunked,
            });
        }
        Ok(Self {
            ctx,
            graph: graph.clone(),
            loss,
            correct,
            correct_staging,
            token_orders,
            tensors: l.tensors,
            handles,
            lifetimes,
            value: l.value,
            grad: l.grad,
            stages,
            clears,
            optimizer,
            clip_sumsq,
            dropouts,
            plan,
            loss_staging,
            staging: HashMap::new(),
            buffers_created,
            steps: 0,
            last_run: vec![false; n_stages],
            last_stats: StepStats::default(),
        })
    }

    /// The memory plan: intermediate tensors, the buffers holding them, their
    /// bytes against one buffer each.
    pub fn memory_plan(&self) -> &MemoryPlan {
        &self.plan
    }

    /// Each parameter (in [`Graph::params`] order) with its optimizer slot:
    /// slots were prepared, in that order, for the parameters that receive
    /// a gradient.
    fn optimizer_slot_of_param(&self) -> Vec<(NodeId, Option<usize>)> {
        let mut next = 0;
        self.graph
            .params()
            .into_iter()
            .map(|p| {
                let slot = self.grad[p.0].is_some().then(|| {
                    next += 1;
                    next - 1
                });
                (p, slot)
            })
            .collect()
    }

    /// For each recurrent layer reading a chunked embedding (see the
    /// module doc), the number of chunks of equal tokens in the last batch
    /// written: the row count of its chunked products. Empty before a run.
    pub fn chunk_counts(&self) -> Vec<(NodeId, usize)> {
        self.token_orders
            .iter()
            .filter_map(|t| t.chunked.as_ref())
            .filter_map(|u| Some((u.reader, u.last_chunks.get()?)))
            .collect()
    }

    /// For each LSTM whose kernels run shared leading steps (see the
    /// module doc), how many steps the last batch written shared.
    pub fn shared_step_counts(&self) -> Vec<(NodeId, usize)> {
        self.token_orders
            .iter()
            .filter_map(|t| t.chunked.as_ref())
            .filter_map(|u| Some((u.reader, u.shared.as_ref()?.last.get()?)))
            .collect()
    }

    /// The dispatches of one training step in recording order (what
    /// [`GpuExecutor::profile_step`] times, one entry per timing).
    pub fn train_schedule(&self) -> Vec<ScheduledDispatch> {
        let mut out = Vec::new();
        for s in self.stages_for(Run::Train) {
            let (phase, node) = self.stage_phase(s);
            out.extend(
                self.stage_dispatches(s)
                    .into_iter()
                    .map(|d| ScheduledDispatch {
                        phase,
                        node,
                        entry: d.name,
                        workgroups: d.workgroups,
                    }),
            );
        }
        out
    }

    fn stage_phase(&self, s: usize) -> (Phase, Option<NodeId>) {
        match self.stages[s].kind {
            StageKind::Forward(n) => (Phase::Forward, Some(n)),
            StageKind::Backward(n) => (Phase::Backward, Some(n)),
            StageKind::Update => (Phase::Update, None),
        }
    }

    /// Every stage of the schedule (the indices of
    /// [`PlannedTensor::lifetime`]): its phase and node.
    pub fn stage_phases(&self) -> Vec<(Phase, Option<NodeId>)> {
        (0..self.stages.len())
            .map(|s| self.stage_phase(s))
            .collect()
    }

    /// Every tensor the plan places (the requests of
    /// [`GpuExecutor::memory_plan`], in order), with its role.
    pub fn planned_tensors(&self) -> Vec<PlannedTensor> {
        let mut role = vec![TensorRole::Internal; self.tensors.len()];
        for id in self.graph.ids() {
            let param = matches!(self.graph.node(id).op, Op::Param { .. });
            if let Some(v) = &self.value[id.0] {
                role[v.id] = match self.graph.node(id).op {
                    Op::Input { .. } => TensorRole::Input,
                    Op::Param { .. } => TensorRole::Param,
                    _ => TensorRole::Value,
                };
            }
            if let Some(g) = &self.grad[id.0] {
                role[g.id] = if param {
                    TensorRole::ParamGrad
                } else {
                    TensorRole::Gradient
                };
            }
        }
        self.tensors
            .iter()
            .enumerate()
            .map(|(t, info)| PlannedTensor {
                name: info.name.clone(),
                shape: info.shape.clone(),
                bytes: info.bytes(),
                role: role[t],
                pinned: info.pinned,
                lifetime: self.lifetimes[t],
                slot: self.plan.slot_of[t],
            })
            .collect()
    }

    /// Bytes of optimizer state (Adam's m and v, SGD's velocity).
    pub fn optimizer_state_bytes(&self) -> u64 {
        self.optimizer
            .as_ref()
            .map_or(0, OptimizerState::state_bytes)
    }

    /// Device buffers this executor has created (tensors, optimizer state,
    /// staging). Constant across training steps. Buffers the launchers
    /// create while the schedule is built (uniforms, reduction partials)
    /// are not counted; they too are created only then.
    pub fn buffers_created(&self) -> usize {
        self.buffers_created
    }

    /// What the last run (train step, gradients, loss or predict) recorded.
    pub fn step_stats(&self) -> StepStats {
        self.last_stats
    }

    /// Training steps applied so far (the next one's dropout masks).
    pub fn steps(&self) -> u32 {
        self.steps
    }

    /// The global L2 norm of the parameter gradients that the last training
    /// step clipped (before clipping), read from the device; `None` without
    /// [`TrainConfig::clip_global_norm`].
    pub fn last_global_norm(&self) -> Result<Option<f32>> {
        self.clip_sumsq
            .as_ref()
            .map(|t| Ok(self.ctx.read_f32(t)?[0].sqrt()))
            .transpose()
    }

    /// The planned tensors sharing a buffer, by name, one line per buffer
    /// (for reports).
    pub fn describe_plan(&self) -> Vec<String> {
        self.plan
            .slots
            .iter()
            .filter(|s| !s.pinned)
            .map(|s| {
                let names: Vec<String> = s
                    .tensors
                    .iter()
                    .map(|&t| {
                        let (a, b) = self.lifetimes[t].unwrap_or((0, 0));
                        format!("{} [{a}..{b}]", self.tensors[t].name)
                    })
                    .collect();
                format!("{} bytes: {}", s.bytes, names.join(", "))
            })
            .collect()
    }

    fn stages_for(&self, run: Run) -> Vec<usize> {
        let target = match run {
            Run::Train | Run::Gradients => self.loss,
            Run::Forward(n) => n,
        };
        let keep = ancestors(&self.graph, target);
        (0..self.stages.len())
            .filter(|&s| match self.stages[s].kind {
                StageKind::Forward(n) => keep[n.0],
                StageKind::Backward(_) => !matches!(run, Run::Forward(_)),
                StageKind::Update => run == Run::Train,
            })
            .collect()
    }

    /// Writes the inputs the recorded stages read.
    fn write_inputs(&self, batch: &Batch, target: NodeId) -> Result<usize> {
        let keep = ancestors(&self.graph, target);
        let mut writes = 0;
        for id in self.graph.inputs() {
            if !keep[id.0] {
                continue;
            }
            let node = self.graph.node(id);
            let data = batch
                .inputs
                .iter()
                .find(|(i, _)| *i == id)
                .map(|(_, d)| d)
                .ok_or_else(|| Error::graph(&node.name, "the batch has no data for this input"))?;
            let h = &self.handles[self.vid(id)];
            let (bytes, len, dtype): (&[u8], usize, DType) = match data {
                HostData::F32(v) => (bytemuck::cast_slice(v), v.len(), DType::F32),
                HostData::U32(v) => (bytemuck::cast_slice(v), v.len(), DType::U32),
            };
            if dtype != h.dtype || len != h.numel() {
                return Err(Error::shape(
                    &node.name,
                    format!(
                        "the batch gives {len} {dtype:?} values, the input is {:?} of shape {:?}",
                        h.dtype, h.shape
                    ),
                ));
            }
            if len > 0 {
                self.ctx.queue.write_buffer(&h.buffer, 0, bytes);
            }
            writes += 1;
        }
        for (id, _) in &batch.inputs {
            if self
                .graph
                .nodes()
                .get(id.0)
                .is_none_or(|n| !matches!(n.op, Op::Input { .. }))
            {
                return Err(Error::graph(
                    format!("#{}", id.0),
                    "the batch feeds a node that is not an Input",
                ));
            }
        }
        Ok(writes)
    }

    /// Writes, for every embedding in the backward, the order its backward
    /// kernel sums in: the batch's token ids sorted (on the host) by token;
    /// for a chunked one also its chunks and their count, which its
    /// reader's forward needs too. `backward`: the run records a backward;
    /// `stages`: the stages it records.
    fn write_token_orders(&self, batch: &Batch, stages: &[usize], backward: bool) -> Result<usize> {
        let mut writes = 0;
        for TokenOrder {
            node,
            order,
            chunked,
        } in &self.token_orders
        {
            let (node, order, chunked) = (*node, *order, chunked.as_ref());
            let needed = backward || chunked.is_some_and(|u| stages.contains(&u.forward));
            if !needed {
                continue;
            }
            let tokens = self.graph.node(node).inputs[1];
            let Some((_, HostData::U32(ids))) = batch.inputs.iter().find(|(i, _)| *i == tokens)
            else {
                return Err(Error::graph(
                    &self.graph.node(node).name,
                    "the batch has no u32 token ids for this embedding",
                ));
            };
            let write = |t: TensorId, data: &[u32]| {
                if !data.is_empty() {
                    let bytes = bytemuck::cast_slice(data);
                    self.ctx
                        .queue
                        .write_buffer(&self.handles[t].buffer, 0, bytes);
                }
            };
            let Some(u) = chunked else {
                write(order, &token_order(ids));
                writes += 1;
                continue;
            };
            let ch = token_chunks(ids);
            write(order, &ch.order);
            write(u.bufs.start, &ch.start);
            write(u.bufs.first, &ch.first);
            write(u.bufs.token, &ch.token);
            write(u.bufs.chunk_of, &ch.chunk_of);
            // This batch's chunk count in the dispatches sized for one
            // chunk per position (chunked_input_projection, then
            // chunked_input_gradients).
            let c = ch.chunks();
            u.last_chunks.set(Some(c));
            let ctx = self.ctx;
            let d = &self.stages[u.forward].dispatches;
            d[0].set_params(ctx, &embedding_params(c, u.positions, u.width, None));
            d[1].set_params(ctx, &MatmulParams::new(c, u.gates, u.width));
            let (s, i) = u.recurrent;
            let d = &self.stages[s].dispatches;
            d[i].set_params(ctx, &SegmentSumParams::new(u.positions, u.gates, c));
            d[i + 1].set_params(ctx, &MatmulParams::new(u.width, u.gates, c).accumulate());
            writes += 9;
            if u.with_dx {
                d[i + 2].set_params(ctx, &MatmulParams::new(c, u.width, u.gates).accumulate());
                writes += 1;
            }
            if let Some(s) = u.scatter {
                let p = embedding_params(c, u.vocab, u.width, u.padding_idx);
                self.stages[s].dispatches[0].set_params(ctx, &p);
                writes += 1;
            }
            if let Some(sh) = &u.shared {
                let dims = sh.dims;
                let n = shared_steps(ids, dims.steps, dims.batch).min(dims.steps - 1);
                let ((fs, fi), (bs, bi)) = (sh.forward, sh.backward);
                let (f, b) = (&self.stages[fs].dispatches, &self.stages[bs].dispatches);
                set_shared_steps(ctx, dims, [&f[fi], &f[fi + 1]], n)?;
                set_shared_backward(ctx, dims, &b[bi..], n, sh.masked)?;
                sh.last.set(Some(n));
                writes += 6;
            }
        }
        Ok(writes)
    }

    fn vid(&self, n: NodeId) -> TensorId {
        self.value[n.0].as_ref().expect("every node has a value").id
    }

    /// The dispatches of stage `s` in recording order (the update: the
    /// clipping, then the optimizer).
    fn stage_dispatches(&self, s: usize) -> Vec<&Dispatch> {
        let stage = &self.stages[s];
        let mut d: Vec<&Dispatch> = stage.dispatches.iter().collect();
        // A chunked embedding's batch with few repeated tokens runs the
        // per-position dispatches in place of the chunked ones.
        for u in self.token_orders.iter().filter_map(|t| t.chunked.as_ref()) {
            if u.chunked_now() {
                continue;
            }
            let alt = &u.per_position;
            if s == u.forward {
                d.splice(0..CHUNK_PROJECTION_DISPATCHES, [&alt.projection]);
            }
            if s == u.recurrent.0 {
                d.splice(u.recurrent.1.., alt.gradients.iter());
            }
            if Some(s) == u.scatter {
                if let Some(scatter) = &alt.scatter {
                    d.splice(0..1, [scatter]);
                }
            }
        }
        if stage.kind == StageKind::Update {
            if let Some(o) = &self.optimizer {
                d.extend(o.dispatches());
            }
        }
        d
    }

    /// Writes the mode and step of the dropout dispatches among `stages`
    /// for `run`: training and gradient runs use the mask of the next
    /// training step, forward-only runs copy. Returns the writes.
    fn set_dropout_mode(&self, stages: &[usize], run: Run) -> usize {
        let training = (!matches!(run, Run::Forward(_))).then_some(self.steps);
        let mut writes = 0;
        for u in &self.dropouts {
            if stages.contains(&u.stage) {
                let d = &self.stages[u.stage].dispatches[0];
                d.set_params(self.ctx, &u.dropout.params(u.n, training));
                writes += 1;
            }
        }
        writes
    }

    /// Records the stages: clears, then dispatches (timestamped when a
    /// query set is given).
    fn record(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        stages: &[usize],
        timer: Option<&wgpu::QuerySet>,
        stats: &mut StepStats,
        names: &mut Vec<&'static str>,
    ) {
        let mut k = 0u32;
        for &s in stages {
            for &(t, bytes) in &self.clears[s] {
                encoder.clear_buffer(&self.handles[t].buffer, 0, Some(bytes));
                stats.clears += 1;
            }
            let stage = &self.stages[s];
            let dispatches = self.stage_dispatches(s);
            let count = match stage.kind {
                StageKind::Forward(_) => &mut stats.forward_dispatches,
                StageKind::Backward(_) => &mut stats.backward_dispatches,
                StageKind::Update => &mut stats.update_dispatches,
            };
            *count += dispatches.len();
            for d in dispatches {
                let ts = timer.map(|q| wgpu::ComputePassTimestampWrites {
                    query_set: q,
                    beginning_of_pass_write_index: Some(2 * k),
                    end_of_pass_write_index: Some(2 * k + 1),
                });
                d.record(encoder, ts);
                names.push(d.name);
                k += 1;
            }
        }
    }

    /// One run: inputs, one encoder, one submit, and the readback of `read`
    /// (through a staging buffer kept for it).
    fn run(&mut self, batch: &Batch, run: Run, read: Option<TensorId>) -> Result<Vec<u32>> {
        let target = match run {
            Run::Forward(n) => n,
            _ => self.loss,
        };
        let stages = self.stages_for(run);
        let mut stats = StepStats {
            writes: self.write_inputs(batch, target)?,
            ..StepStats::default()
        };
        let backward = !matches!(run, Run::Forward(_));
        stats.writes += self.write_token_orders(batch, &stages, backward)?;
        if run == Run::Train {
            if let Some(OptimizerState::Adam(a)) = &mut self.optimizer {
                a.set_step(self.ctx, self.steps + 1)?;
                stats.writes += a.slots().len();
            }
        }
        stats.writes += self.set_dropout_mode(&stages, run);
        if let Some(t) = read {
            if t != self.vid(self.loss) && !self.staging.contains_key(&t) {
                let buffer = self.ctx.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("prediction readback"),
                    size: self.tensors[t].bytes().max(4),
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                });
                self.buffers_created += 1;
                self.staging.insert(t, buffer);
            }
        }
        let ctx = self.ctx;
        let scope = ctx.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let mut encoder = ctx.device.create_command_encoder(&Default::default());
        let mut names = Vec::new();
        self.record(&mut encoder, &stages, None, &mut stats, &mut names);
        let staging = read.map(|t| {
            let s = self.staging.get(&t).unwrap_or(&self.loss_staging);
            let bytes = self.tensors[t].bytes();
            if bytes > 0 {
                encoder.copy_buffer_to_buffer(&self.handles[t].buffer, 0, s, 0, bytes);
            }
            (s, bytes)
        });
        ctx.queue.submit([encoder.finish()]);
        stats.submits = 1;
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Validation {
                op: "GpuExecutor run".into(),
                message: e.to_string(),
            });
        }
        self.last_run = vec![false; self.stages.len()];
        for &s in &stages {
            self.last_run[s] = true;
        }
        let words = match staging {
            Some((s, bytes)) if bytes > 0 => {
                stats.readback_bytes = bytes;
                ctx.map_read_words(s, bytes)?
            }
            _ => {
                ctx.wait()?;
                Vec::new()
            }
        };
        if run == Run::Train {
            self.steps += 1;
        }
        self.last_stats = stats;
        Ok(words)
    }

    /// One training step with a timestamp around every dispatch: the GPU
    /// time of each, in recording order. Applies the update like
    /// [`Executor::train_step`]; allocates its query buffers per call.
    pub fn profile_step(&mut self, batch: &Batch) -> Result<Vec<KernelTiming>> {
        let ctx = self.ctx;
        if !ctx.has_timestamps() {
            return Err(Error::Unsupported {
                op: "profile_step".into(),
                what: "timestamp queries".into(),
                why: format!("adapter {} lacks TIMESTAMP_QUERY", ctx.info.name),
            });
        }
        let stages = self.stages_for(Run::Train);
        let total: usize = stages.iter().map(|&s| self.stage_dispatches(s).len()).sum();
        let count = 2 * total as u32;
        if count == 0 || count > wgpu::QUERY_SET_MAX_QUERIES {
            return Err(Error::Unsupported {
                op: "profile_step".into(),
                what: format!("{total} timed dispatches"),
                why: format!(
                    "one query set holds 1 to {} timestamps",
                    wgpu::QUERY_SET_MAX_QUERIES
                ),
            });
        }
        let mut stats = StepStats {
            writes: self.write_inputs(batch, self.loss)?
                + self.write_token_orders(batch, &stages, true)?,
            ..StepStats::default()
        };
        if let Some(OptimizerState::Adam(a)) = &mut self.optimizer {
            a.set_step(ctx, self.steps + 1)?;
        }
        stats.writes += self.set_dropout_mode(&stages, Run::Train);
        let query_set = ctx.device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("step timestamps"),
            ty: wgpu::QueryType::Timestamp,
            count,
        });
        let bytes = count as u64 * 8;
        let resolve = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("timestamp resolve"),
            size: bytes,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let readback = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("timestamp readback"),
            size: bytes,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let scope = ctx.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let mut encoder = ctx.device.create_command_encoder(&Default::default());
        let mut names = Vec::new();
        self.record(
            &mut encoder,
            &stages,
            Some(&query_set),
            &mut stats,
            &mut names,
        );
        encoder.resolve_query_set(&query_set, 0..count, &resolve, 0);
        encoder.copy_buffer_to_buffer(&resolve, 0, &readback, 0, bytes);
        ctx.queue.submit([encoder.finish()]);
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Validation {
                op: "profile_step".into(),
                message: e.to_string(),
            });
        }
        let words = ctx.map_read_words(&readback, bytes)?;
        self.steps += 1;
        self.last_run = vec![false; self.stages.len()];
        for &s in &stages {
            self.last_run[s] = true;
        }
        stats.submits = 1;
        self.last_stats = stats;
        // Little-endian u64 pairs (a Vec<u32> need not be 8-aligned).
        let ticks: Vec<u64> = words
            .chunks_exact(2)
            .map(|w| w[0] as u64 | (w[1] as u64) << 32)
            .collect();
        let period = ctx.queue.get_timestamp_period() as f64;
        Ok(names
            .iter()
            .enumerate()
            .map(|(i, &name)| KernelTiming {
                name,
                nanoseconds: ticks[2 * i + 1].saturating_sub(ticks[2 * i]) as f64 * period,
            })
            .collect())
    }

    /// Reads tensor `t` if the last run left it intact, else an error
    /// naming `node` and saying why.
    fn read_kept(&self, node: NodeId, t: TensorId, what: &str) -> Result<Vec<f32>> {
        let name = &self.graph.node(node).name;
        let info = &self.tensors[t];
        if !info.pinned {
            let Some((first, _)) = self.lifetimes[t] else {
                return Err(Error::graph(name, format!("its {what} is never computed")));
            };
            if !self.last_run[first] {
                return Err(Error::graph(
                    name,
                    format!("its {what} was not computed by the last run"),
                ));
            }
            let slot = &self.plan.slots[self.plan.slot_of[t]];
            if let Some(&later) = slot.tensors.iter().find(|&&u| {
                u != t && self.lifetimes[u].is_some_and(|(f, _)| f > first && self.last_run[f])
            }) {
                return Err(Error::graph(
                    name,
                    format!(
                        "its {what} was overwritten by {:?}, which the memory plan puts in the \
                         same buffer; keep it with ExecOptions::inspect",
                        self.tensors[later].name
                    ),
                ));
            }
        }
        let h = &self.handles[t];
        match h.dtype {
            DType::F32 => self.ctx.read_f32(h),
            // Indices (tokens, labels) as floats: exact below 2^24.
            DType::U32 => Ok(self
                .ctx
                .read_u32(h)?
                .into_iter()
                .map(|v| v as f32)
                .collect()),
        }
    }

    /// Forward and backward of the loss, no update; returns the loss and
    /// reads nothing else back (the gradients stay on the device for
    /// [`GpuExecutor::gradient_of`], as with the CPU executor's
    /// `run_gradients`).
    pub fn run_gradients(&mut self, batch: &Batch) -> Result<f32> {
        let t = self.vid(self.loss);
        let w = self.run(batch, Run::Gradients, Some(t))?;
        Ok(f32::from_bits(w[0]))
    }

    /// The gradient of any node after the last backward (inspection): the
    /// accumulated gradient of its value. Parameters' gradients and input
    /// gradients ([`ExecOptions::input_gradients`]) are always kept; others
    /// need [`ExecOptions::inspect`] unless their buffer was not reused
    /// since.
    pub fn gradient_of(&mut self, id: NodeId) -> Result<Vec<f32>> {
        if id.0 >= self.graph.nodes().len() {
            return Err(Error::graph(format!("#{}", id.0), "no such node"));
        }
        let node = self.graph.node(id);
        let name = &node.name;
        let g = self.grad[id.0].as_ref().ok_or_else(|| {
            let why = if matches!(node.op, Op::Input { .. }) {
                "has no gradient (inputs get one only with ExecOptions::input_gradients)"
            } else {
                "has no gradient (it does not lead from a parameter to the loss)"
            };
            Error::graph(name, why)
        })?;
        self.read_kept(id, g.id, "gradient")
    }
}

impl Executor for GpuExecutor<'_> {
    fn train_step(&mut self, batch: &Batch) -> Result<f32> {
        let t = self.vid(self.loss);
        let w = self.run(batch, Run::Train, Some(t))?;
        Ok(f32::from_bits(w[0]))
    }

    fn loss(&mut self, batch: &Batch) -> Result<f32> {
        let t = self.vid(self.loss);
        let w = self.run(batch, Run::Forward(self.loss), Some(t))?;
        Ok(f32::from_bits(w[0]))
    }

    fn predict(&mut self, batch: &Batch, output: NodeId) -> Result<Vec<f32>> {
        if output.0 >= self.graph.nodes().len() {
            return Err(Error::graph(
                format!("#{}", output.0),
                "no such output node",
            ));
        }
        let t = self.vid(output);
        let w = self.run(batch, Run::Forward(output), Some(t))?;
        Ok(match self.tensors[t].dtype {
            DType::F32 => bytemuck::cast_vec(w),
            DType::U32 => w.into_iter().map(|v| v as f32).collect(),
        })
    }

    fn gradients(&mut self, batch: &Batch) -> Result<(f32, Vec<Vec<f32>>)> {
        let loss = self.run_gradients(batch)?;
        let grads = self
            .graph
            .params()
            .into_iter()
            .map(|p| match &self.grad[p.0] {
                Some(g) => self.ctx.read_f32(&self.handles[g.id]),
                None => Ok(vec![0.0; self.graph.node(p).value.numel()]),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((loss, grads))
    }

    fn param(&self, id: NodeId) -> Result<Vec<f32>> {
        let node = self
            .graph
            .nodes()
            .get(id.0)
            .ok_or_else(|| Error::graph(format!("#{}", id.0), "no such node"))?;
        if !matches!(node.op, Op::Param { .. }) {
            return Err(Error::graph(&node.name, "is not a Param"));
        }
        self.ctx.read_f32(&self.handles[self.vid(id)])
    }

    fn set_param(&mut self, id: NodeId, value: &[f32]) -> Result<()> {
        let node = self
            .graph
            .nodes()
            .get(id.0)
            .ok_or_else(|| Error::graph(format!("#{}", id.0), "no such node"))?;
        if !matches!(node.op, Op::Param { .. }) {
            return Err(Error::graph(&node.name, "is not a Param"));
        }
        self.ctx
            .write_f32(&self.handles[self.vid(id)], value)
            .map_err(|e| Error::graph(&node.name, e.to_string()))
    }

    fn value(&mut self, id: NodeId) -> Result<Vec<f32>> {
        if id.0 >= self.graph.nodes().len() {
            return Err(Error::graph(format!("#{}", id.0), "no such node"));
        }
        let t = self.vid(id);
        self.read_kept(id, t, "value")
    }

    fn steps_applied(&self) -> u32 {
        self.steps
    }

    fn take_correct_count(&mut self) -> Result<u64> {
        // Through the staging buffer kept since construction: no allocation.
        let t = &self.handles[self.correct];
        let mut encoder = self.ctx.device.create_command_encoder(&Default::default());
        encoder.copy_buffer_to_buffer(&t.buffer, 0, &self.correct_staging, 0, 4);
        // Zeroed after the copy, in submission order.
        encoder.clear_buffer(&t.buffer, 0, None);
        self.ctx.queue.submit([encoder.finish()]);
        Ok(self.ctx.map_read_words(&self.correct_staging, 4)?[0] as u64)
    }

    fn set_learning_rate(&mut self, learning_rate: f64) -> Result<()> {
        match &mut self.optimizer {
            Some(OptimizerState::Adam(a)) => a.set_learning_rate(self.ctx, learning_rate),
            Some(OptimizerState::Sgd(s)) => s.set_learning_rate(self.ctx, learning_rate),
            None => Err(Error::graph(
                "optimizer",
                "this graph has no trainable parameter",
            )),
        }
    }

    fn optimizer_snapshot(&self) -> Result<OptimizerSnapshot> {
        let Some(opt) = &self.optimizer else {
            return Ok(OptimizerSnapshot {
                steps: self.steps,
                slots: Vec::new(),
            });
        };
        let slot_of = self.optimizer_slot_of_param();
        let names = OptimizerSnapshot::slot_names(&opt.config());
        let mut slots = Vec::with_capacity(names.len());
        for (k, name) in names.iter().enumerate() {
            let values = slot_of
                .iter()
                .map(|&(p, slot)| {
                    let v = match slot {
                        Some(i) => self.ctx.read_f32(opt.tensor(i, k))?,
                        None => vec![0.0; self.graph.node(p).value.numel()],
                    };
                    Ok((p, v))
                })
                .collect::<Result<Vec<_>>>()?;
            slots.push((name.to_string(), values));
        }
        Ok(OptimizerSnapshot {
            steps: self.steps,
            slots,
        })
    }

    fn restore_optimizer(&mut self, snapshot: &OptimizerSnapshot) -> Result<()> {
        if let Some(opt) = &self.optimizer {
            snapshot.check(&self.graph, &opt.config())?;
            let slot_of = self.optimizer_slot_of_param();
            for (k, (_, values)) in snapshot.slots.iter().enumerate() {
                for (&(_, slot), (_, v)) in slot_of.iter().zip(values) {
                    if let Some(i) = slot {
                        self.ctx.write_f32(opt.tensor(i, k), v)?;
                    }
                }
            }
        } else if !snapshot.slots.is_empty() {
            return Err(Error::graph(
                "optimizer",
                "this graph has no trainable parameter, the saved state has optimizer slots",
            ));
        }
        self.steps = snapshot.steps;
        Ok(())
    }
}
