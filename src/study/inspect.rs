//! `crossmodal inspect`: what an experiment's model is and what one
//! training step does, without training it.
//!
//! - [`Summary`]: every input and layer with its kind, output shape and
//!   parameter count, and the totals (as Keras' `summary()`).
//! - [`MemoryReport`]: the GPU executor's memory plan by buffer class
//!   (inputs, parameters, their gradients, optimizer state, forward-only
//!   activations, values saved for backward, activation gradients, backward
//!   scratch), planned against naive (one buffer per tensor). The plan is
//!   built with the executor's buffers, so it needs an adapter (lavapipe
//!   will do).
//! - `graph.dot` / `graph.mmd`: the forward graph and the backward graph
//!   (one node per backward stage, gradient edges, dotted edges for the
//!   values a backward reads from its forward).
//! - [`ScheduleRow`]: every dispatch of one training step in recording
//!   order, with an estimate of its traffic and FLOPs ([`estimate_costs`]),
//!   also written as `schedule.csv`.
//! - [`Profile`] (`--profile`): one training step with a GPU timestamp
//!   around every dispatch, summed per kernel, per layer and per phase,
//!   beside the CPU reference backend's per-node times of the same step.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::error::{Error, Result};
use crate::experiment::atomic::{create_dir_all, write_atomic_str};
use crate::experiment::prepare::train_config;
use crate::experiment::run::Experiment;
use crate::experiment::schema::{LayerKind, ModelSpec};
use crate::gpu::GpuContext;
use crate::graph::cpu::CpuExecutor;
use crate::graph::gpu::{GpuExecutor, ScheduledDispatch, TensorRole};
use crate::graph::{Executor, Graph, NodeId, Op, Phase};
use crate::study::shadow::Prepared;

/// Options of [`inspect`].
#[derive(Clone, Debug, Default)]
pub struct InspectOptions {
    /// Where the graph and schedule files go (default
    /// `runs/<name>/inspect/`).
    pub out: Option<PathBuf>,
    /// Time one training step per dispatch and on the CPU backend.
    pub profile: bool,
    /// Build the model for this batch size instead of the experiment's.
    pub batch: Option<usize>,
}

// ------------------------------------------------------------- summary

/// One row of the model summary.
#[derive(Clone, Debug, PartialEq)]
pub struct SummaryRow {
    pub name: String,
    pub kind: String,
    pub output_shape: Vec<usize>,
    pub params: usize,
    pub inputs: Vec<String>,
}

/// The model summary: inputs, then layers in graph order, then the loss.
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    pub batch: usize,
    pub rows: Vec<SummaryRow>,
    pub total_params: usize,
    /// Parameters the loss depends on (the optimizer updates them).
    pub trainable_params: usize,
}

fn kind_label(kind: &LayerKind) -> String {
    match kind {
        LayerKind::Embedding {
            vocab,
            dim,
            mask_zero,
        } => format!(
            "Embedding({vocab}, {dim}{})",
            if *mask_zero { ", mask_zero" } else { "" }
        ),
        LayerKind::Lstm {
            units,
            return_sequences,
        } => format!(
            "LSTM({units}{})",
            if *return_sequences { ", seq" } else { "" }
        ),
        LayerKind::SimpleRnn {
            units,
            return_sequences,
        } => format!(
            "SimpleRNN({units}{})",
            if *return_sequences { ", seq" } else { "" }
        ),
        LayerKind::Conv2d {
            filters,
            kernel,
            strides,
            activation,
            ..
        } => format!(
            "Conv2D({filters}, {}x{}, /{}x{}{})",
            kernel.0,
            kernel.1,
            strides.0,
            strides.1,
            activation.map_or(String::new(), |a| format!(", {a:?}").to_lowercase())
        ),
        LayerKind::MaxPool2d { pool, .. } => format!("MaxPool2D({}x{})", pool.0, pool.1),
        LayerKind::AvgPool2d { pool, .. } => format!("AvgPool2D({}x{})", pool.0, pool.1),
        LayerKind::Flatten => "Flatten".into(),
        LayerKind::Dense { units, activation } => format!(
            "Dense({units}{})",
            activation.map_or(String::new(), |a| format!(", {a:?}").to_lowercase())
        ),
        LayerKind::Concat => "Concatenate".into(),
        LayerKind::Average => "Average".into(),
        LayerKind::Dropout { rate } => format!("Dropout({rate})"),
    }
}

/// The layer (or input) of the spec that a graph node belongs to: the
/// longest layer name equal to the node's or followed by `.` or `/`.
pub fn layer_of(spec: &ModelSpec, node: &str) -> String {
    spec.layers
        .iter()
        .map(|l| l.name.as_str())
        .chain(spec.inputs.iter().map(|(n, _)| n.as_str()))
        .filter(|l| {
            node == *l
                || node
                    .strip_prefix(l)
                    .is_some_and(|r| r.starts_with('.') || r.starts_with('/'))
        })
        .max_by_key(|l| l.len())
        .unwrap_or(node)
        .to_string()
}

/// The summary of `graph`, built from `spec` (see [`Summary`]).
pub fn summarize(spec: &ModelSpec, graph: &Graph, loss: NodeId, batch: usize) -> Result<Summary> {
    let needs = graph.needs_grad(loss);
    let mut params_of: BTreeMap<String, usize> = BTreeMap::new();
    for p in graph.params() {
        let node = graph.node(p);
        *params_of.entry(layer_of(spec, &node.name)).or_default() += node.value.numel();
    }
    let mut rows = Vec::new();
    for (name, _) in &spec.inputs {
        let id = graph.expect_id(name)?;
        let node = graph.node(id);
        rows.push(SummaryRow {
            name: name.clone(),
            kind: format!("Input ({:?})", node.value.dtype),
            output_shape: node.value.shape.clone(),
            params: 0,
            inputs: Vec::new(),
        });
    }
    let mut layers: Vec<(NodeId, &crate::experiment::schema::LayerSpec)> = spec
        .layers
        .iter()
        .map(|l| Ok((graph.expect_id(&l.name)?, l)))
        .collect::<Result<_>>()?;
    layers.sort_by_key(|(id, _)| *id);
    for (id, l) in layers {
        rows.push(SummaryRow {
            name: l.name.clone(),
            kind: kind_label(&l.kind),
            output_shape: graph.node(id).value.shape.clone(),
            params: params_of.get(&l.name).copied().unwrap_or(0),
            inputs: l.inputs.clone(),
        });
    }
    let l = graph.node(loss);
    rows.push(SummaryRow {
        name: l.name.clone(),
        kind: "softmax + cross-entropy".into(),
        output_shape: l.value.shape.clone(),
        params: 0,
        inputs: l
            .inputs
            .iter()
            .map(|&i| graph.node(i).name.clone())
            .collect(),
    });
    let params = graph.params();
    Ok(Summary {
        batch,
        rows,
        total_params: params.iter().map(|&p| graph.node(p).value.numel()).sum(),
        trainable_params: params
            .iter()
            .filter(|p| needs[p.0])
            .map(|&p| graph.node(p).value.numel())
            .sum(),
    })
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rule = "-".repeat(96);
        writeln!(f, "{rule}")?;
        writeln!(
            f,
            "{:<22} {:<28} {:<18} {:>10}  connected to",
            "layer", "kind", "output shape", "params"
        )?;
        writeln!(f, "{}", "=".repeat(96))?;
        for r in &self.rows {
            writeln!(
                f,
                "{:<22} {:<28} {:<18} {:>10}  {}",
                r.name,
                r.kind,
                format!("{:?}", r.output_shape),
                r.params,
                r.inputs.join(", ")
            )?;
        }
        writeln!(f, "{}", "=".repeat(96))?;
        writeln!(
            f,
            "total params: {} ({})",
            self.total_params,
            bytes(self.total_params as u64 * 4)
        )?;
        writeln!(f, "trainable params: {}", self.trainable_params)?;
        writeln!(
            f,
            "non-trainable params: {}",
            self.total_params - self.trainable_params
        )?;
        write!(f, "{rule}")
    }
}

fn bytes(b: u64) -> String {
    let b = b as f64;
    if b >= 1024.0 * 1024.0 {
        format!("{:.2} MiB", b / (1024.0 * 1024.0))
    } else if b >= 1024.0 {
        format!("{:.1} KiB", b / 1024.0)
    } else {
        format!("{b} B")
    }
}

// ------------------------------------------------------------- memory

/// A buffer class of the memory report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum BufferClass {
    Inputs,
    Parameters,
    ParameterGradients,
    OptimizerState,
    /// Values whose last use is in the forward pass.
    Activations,
    /// Values and op state (recurrent states, argmax, probabilities)
    /// written in forward and read again by a backward stage.
    SavedForBackward,
    /// Incoming gradients of non-parameter nodes.
    ActivationGradients,
    /// State first used in backward (recurrent carries, dz).
    BackwardScratch,
}

impl BufferClass {
    fn label(self) -> &'static str {
        match self {
            BufferClass::Inputs => "inputs",
            BufferClass::Parameters => "parameters",
            BufferClass::ParameterGradients => "parameter gradients",
            BufferClass::OptimizerState => "optimizer state",
            BufferClass::Activations => "activations (forward only)",
            BufferClass::SavedForBackward => "saved for backward",
            BufferClass::ActivationGradients => "activation gradients",
            BufferClass::BackwardScratch => "backward scratch",
        }
    }
}

/// One class of the memory report: its tensors, their bytes one buffer
/// each (naive), and the bytes of the buffers the class owns alone
/// (pinned tensors); shared buffers are counted once, in
/// [`MemoryReport::shared_bytes`].
#[derive(Clone, Debug, PartialEq)]
pub struct ClassRow {
    pub class: BufferClass,
    pub tensors: usize,
    pub naive_bytes: u64,
    pub own_bytes: u64,
}

/// The GPU memory plan by class.
#[derive(Clone, Debug, PartialEq)]
pub struct MemoryReport {
    pub rows: Vec<ClassRow>,
    /// Tensors placed in shared (reused) buffers, those buffers and their bytes.
    pub shared_tensors: usize,
    pub shared_buffers: usize,
    pub shared_bytes: u64,
    pub naive_total: u64,
    pub planned_total: u64,
    /// One line per shared buffer: its bytes and tensors with lifetimes.
    pub buffers: Vec<String>,
}

/// The memory report of a built executor.
pub fn memory_report(gpu: &GpuExecutor) -> MemoryReport {
    let phases = gpu.stage_phases();
    let in_fwd = |s: usize| phases[s].0 == Phase::Forward;
    let mut rows: BTreeMap<BufferClass, ClassRow> = BTreeMap::new();
    let mut add = |class, n: usize, naive: u64, own: u64| {
        let r = rows.entry(class).or_insert(ClassRow {
            class,
            tensors: 0,
            naive_bytes: 0,
            own_bytes: 0,
        });
        r.tensors += n;
        r.naive_bytes += naive;
        r.own_bytes += own;
    };
    let plan = gpu.memory_plan();
    for t in gpu.planned_tensors() {
        let class = match (t.role, t.lifetime) {
            (TensorRole::Input, _) => BufferClass::Inputs,
            (TensorRole::Param, _) => BufferClass::Parameters,
            (TensorRole::ParamGrad, _) => BufferClass::ParameterGradients,
            (TensorRole::Gradient, _) => BufferClass::ActivationGradients,
            (_, Some((first, _))) if !in_fwd(first) => BufferClass::BackwardScratch,
            (_, Some((_, last))) if !in_fwd(last) => BufferClass::SavedForBackward,
            _ => BufferClass::Activations,
        };
        let own = if plan.slots[t.slot].pinned {
            t.bytes
        } else {
            0
        };
        add(class, 1, t.bytes, own);
    }
    let opt = gpu.optimizer_state_bytes();
    if opt > 0 {
        add(BufferClass::OptimizerState, 0, opt, opt);
    }
    let rows: Vec<ClassRow> = rows.into_values().collect();
    let naive_total = rows.iter().map(|r| r.naive_bytes).sum();
    let own: u64 = rows.iter().map(|r| r.own_bytes).sum();
    MemoryReport {
        shared_tensors: plan.tensors,
        shared_buffers: plan.buffers,
        shared_bytes: plan.planned_bytes,
        naive_total,
        planned_total: own + plan.planned_bytes,
        buffers: gpu.describe_plan(),
        rows,
    }
}

impl fmt::Display for MemoryReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<28} {:>8} {:>14} {:>14}",
            "buffer class", "tensors", "naive", "own buffers"
        )?;
        for r in &self.rows {
            writeln!(
                f,
                "{:<28} {:>8} {:>14} {:>14}",
                r.class.label(),
                if r.tensors > 0 {
                    r.tensors.to_string()
                } else {
                    "-".into()
                },
                bytes(r.naive_bytes),
                if r.own_bytes > 0 {
                    bytes(r.own_bytes)
                } else {
                    "shared".into()
                }
            )?;
        }
        writeln!(
            f,
            "shared: {} intermediate tensors in {} buffers: {}",
            self.shared_tensors,
            self.shared_buffers,
            bytes(self.shared_bytes)
        )?;
        write!(
            f,
            "total: naive {} -> planned {} ({:.1}% saved)",
            bytes(self.naive_total),
            bytes(self.planned_total),
            100.0 * (1.0 - self.planned_total as f64 / self.naive_total.max(1) as f64)
        )
    }
}

// ------------------------------------------------------------- graph files

fn esc(s: &str) -> String {
    s.replace('"', "'")
}

/// The forward graph and the backward graph of `graph` for `loss` as
/// Graphviz DOT: forward nodes are boxes in cluster "forward", backward
/// stages (`∇name`) and parameter gradients are red in cluster "backward";
/// solid edges carry values or gradients, dotted edges are the saved
/// values a backward stage reads from its forward.
pub fn graph_dot(graph: &Graph, loss: NodeId) -> String {
    let needs = graph.needs_grad(loss);
    let backward = graph.backward_order(loss);
    let mut s = String::from("digraph model {\n  rankdir=TB;\n  node [fontname=\"monospace\"];\n");
    s.push_str("  subgraph cluster_forward {\n    label=\"forward\";\n    color=blue;\n");
    for id in graph.ids() {
        let n = graph.node(id);
        let style = match n.op {
            Op::Input { .. } => "shape=parallelogram",
            Op::Param { .. } => "shape=note",
            _ => "shape=box",
        };
        let _ = writeln!(
            s,
            "    f{} [{style}, color=blue, label=\"{}\\n{} {:?}\"];",
            id.0,
            esc(&n.name),
            n.op.kind(),
            n.value.shape
        );
    }
    s.push_str("  }\n  subgraph cluster_backward {\n    label=\"backward\";\n    color=red;\n");
    for &id in &backward {
        let n = graph.node(id);
        let _ = writeln!(
            s,
            "    b{} [shape=box, style=rounded, color=red, label=\"∇ {}\\n{} backward\"];",
            id.0,
            esc(&n.name),
            n.op.kind()
        );
    }
    for p in graph.params().into_iter().filter(|p| needs[p.0]) {
        let _ = writeln!(
            s,
            "    g{} [shape=note, color=red, label=\"∂loss/∂{}\"];",
            p.0,
            esc(&graph.node(p).name)
        );
    }
    s.push_str("  }\n");
    for id in graph.ids() {
        for i in &graph.node(id).inputs {
            let _ = writeln!(s, "  f{} -> f{};", i.0, id.0);
        }
    }
    for &id in &backward {
        let _ = writeln!(
            s,
            "  f{} -> b{} [style=dotted, color=gray, constraint=false];",
            id.0, id.0
        );
        for i in &graph.node(id).inputs {
            if !needs[i.0] {
                continue;
            }
            let target = if backward.contains(i) { "b" } else { "g" };
            let _ = writeln!(s, "  b{} -> {target}{} [color=red];", id.0, i.0);
        }
    }
    s.push_str("}\n");
    s
}

/// The same graphs as [`graph_dot`] as a Mermaid flowchart.
pub fn graph_mermaid(graph: &Graph, loss: NodeId) -> String {
    let needs = graph.needs_grad(loss);
    let backward = graph.backward_order(loss);
    let mut s = String::from("flowchart TD\n  subgraph forward\n");
    for id in graph.ids() {
        let n = graph.node(id);
        let _ = writeln!(
            s,
            "    f{}[\"{}<br/>{} {:?}\"]:::fwd",
            id.0,
            esc(&n.name),
            n.op.kind(),
            n.value.shape
        );
    }
    s.push_str("  end\n  subgraph backward\n");
    for &id in &backward {
        let n = graph.node(id);
        let _ = writeln!(
            s,
            "    b{}(\"∇ {}<br/>{} backward\"):::bwd",
            id.0,
            esc(&n.name),
            n.op.kind()
        );
    }
    for p in graph.params().into_iter().filter(|p| needs[p.0]) {
        let _ = writeln!(
            s,
            "    g{}[/\"∂loss/∂{}\"/]:::bwd",
            p.0,
            esc(&graph.node(p).name)
        );
    }
    s.push_str("  end\n");
    for id in graph.ids() {
        for i in &graph.node(id).inputs {
            let _ = writeln!(s, "  f{} --> f{}", i.0, id.0);
        }
    }
    for &id in &backward {
        let _ = writeln!(s, "  f{} -.-> b{}", id.0, id.0);
        for i in &graph.node(id).inputs {
            if needs[i.0] {
                let target = if backward.contains(i) { "b" } else { "g" };
                let _ = writeln!(s, "  b{} ==> {target}{}", id.0, i.0);
            }
        }
    }
    s.push_str("  classDef fwd fill:#e8f0ff,stroke:#3060c0\n");
    s.push_str("  classDef bwd fill:#ffe8e8,stroke:#c03030\n");
    s
}

// ------------------------------------------------------------- schedule

/// Estimated cost of one dispatch: compulsory traffic (every tensor the
/// kernel must touch read or written once; accumulated outputs read and
/// written) and arithmetic (multiply-add = 2 FLOPs, elementwise and
/// transcendental ops ~1 each). `None` where the kernel is not modelled.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cost {
    pub bytes_read: Option<u64>,
    pub bytes_written: Option<u64>,
    pub flops: Option<u64>,
}

impl Cost {
    fn new(read: usize, written: usize, flops: usize) -> Self {
        Self {
            bytes_read: Some(4 * read as u64),
            bytes_written: Some(4 * written as u64),
            flops: Some(flops as u64),
        }
    }
}

/// A matmul `C[m,n] (+)= A[m,k]·B[k,n]`.
fn matmul_cost(m: usize, n: usize, k: usize, accumulate: bool) -> Cost {
    Cost::new(
        m * k + k * n + if accumulate { m * n } else { 0 },
        m * n,
        2 * m * n * k,
    )
}

fn shape(graph: &Graph, id: NodeId) -> &[usize] {
    &graph.node(id).value.shape
}

/// The matmuls a node's stage records, in order, for `stepwise` extra
/// per-step ones (recurrent layers on devices without the persistent
/// kernels): `(m, n, k, accumulate)`. `chunked`: a recurrent backward whose
/// input kernel and input gradients go per chunk of equal tokens (the
/// graph executor's chunked embedding input) with `chunks` rows in its
/// chunked products (see [`estimate_costs`]). `shared`: an LSTM sharing
/// that many leading steps, whose dU is two products (the rows after them,
/// and one compact row per shared step; see `ops::recurrent::
/// recurrent_backward_shared`).
fn expected_matmuls(
    graph: &Graph,
    needs: &[bool],
    id: NodeId,
    phase: Phase,
    stepwise: bool,
    chunked: Option<usize>,
    shared: Option<usize>,
) -> Vec<(usize, usize, usize, bool)> {
    let node = graph.node(id);
    let ins = &node.inputs;
    match (&node.op, phase) {
        (Op::Dense, Phase::Forward) => {
            let (x, w) = (shape(graph, ins[0]), shape(graph, ins[1]));
            vec![(x[0], w[1], x[1], false)]
        }
        (Op::Dense, Phase::Backward) => {
            let (x, w) = (shape(graph, ins[0]), shape(graph, ins[1]));
            let (b, f, u) = (x[0], x[1], w[1]);
            let mut v = Vec::new();
            if needs[ins[0].0] {
                v.push((b, f, u, true));
            }
            v.push((f, u, b, true));
            v
        }
        (Op::Lstm { .. } | Op::Rnn { .. }, _) => {
            let x = shape(graph, ins[0]);
            let (t, b, d) = (x[0], x[1], x[2]);
            let h = shape(graph, ins[2])[0];
            let g = shape(graph, ins[2])[1];
            let steps = if stepwise { t.saturating_sub(1) } else { 0 };
            if phase == Phase::Forward {
                let mut v = vec![(chunked.unwrap_or(t * b), g, d, false)];
                v.extend(std::iter::repeat_n((b, g, h, true), steps));
                v
            } else {
                let mut v: Vec<_> = std::iter::repeat_n((b, h, g, true), steps).collect();
                // dU, then dW (over the chunks' rows when chunked).
                // (Masked: the first over every row, the second over none.)
                let masked = matches!(node.op, Op::Lstm { masked: true, .. });
                match shared.map(|s| if masked { 0 } else { s }) {
                    Some(s) => v.extend([(h, g, (t - s) * b, true), (h, g, s, true)]),
                    None => v.push((h, g, t * b, true)),
                }
                v.push((d, g, chunked.unwrap_or(t * b), true));
                if needs[ins[0].0] {
                    v.push((chunked.unwrap_or(t * b), d, g, true));
                }
                v
            }
        }
        _ => Vec::new(),
    }
}

/// The recurrent layer embedding `id` feeds as its input, if it is the
/// embedding's only reader (else `id` itself).
fn chunk_reader(graph: &Graph, id: NodeId) -> NodeId {
    if !matches!(graph.node(id).op, Op::Embedding { .. }) {
        return id;
    }
    match graph.only_reader(id) {
        Some(r) if matches!(graph.node(r).op, Op::Lstm { .. } | Op::Rnn { .. }) => r,
        _ => id,
    }
}

/// The cost of every dispatch of `schedule` (see [`Cost`]); the matmuls of
/// a stage are matched to the ones its launcher records, in order.
/// `chunks`: the chunk count of each recurrent layer whose embedding input
/// the GPU executor runs per chunk of equal tokens
/// ([`GpuExecutor::chunk_counts`] after a run); a chunked layer missing
/// from it is costed at one chunk per position, the most a batch can have.
///
/// `shared`: the leading steps each LSTM whose kernels share them ran once
/// in the last batch ([`GpuExecutor::shared_step_counts`]; missing: none):
/// its two runs each way and its two dU products are costed with them.
pub fn estimate_costs(
    graph: &Graph,
    loss: NodeId,
    schedule: &[ScheduledDispatch],
    chunks: &[(NodeId, usize)],
    shared: &[(NodeId, usize)],
) -> Vec<Cost> {
    let needs = graph.needs_grad(loss);
    let trained: Vec<NodeId> = graph.params().into_iter().filter(|p| needs[p.0]).collect();
    let mut costs = vec![Cost::default(); schedule.len()];
    let mut i = 0;
    let mut update_k = 0;
    while i < schedule.len() {
        // One stage: consecutive dispatches of the same phase and node.
        let (phase, node) = (schedule[i].phase, schedule[i].node);
        let mut j = i;
        while j < schedule.len() && schedule[j].phase == phase && schedule[j].node == node {
            j += 1;
        }
        let stage = &schedule[i..j];
        match node {
            None => {
                for (k, d) in stage.iter().enumerate() {
                    costs[i + k] = update_cost(graph, &trained, d.entry, &mut update_k);
                }
            }
            Some(id) => {
                let matmuls = stage
                    .iter()
                    .filter(|d| d.entry.starts_with("matmul"))
                    .count();
                // A chunked recurrent layer (its forward gathers, its
                // backward sums per chunk); an embedding feeding one.
                let reader = chunk_reader(graph, id);
                let chunked = schedule
                    .iter()
                    .any(|d| d.node == Some(reader) && d.entry.starts_with("segment_sum"));
                let rows = chunked.then(|| {
                    chunks.iter().find(|c| c.0 == reader).map_or_else(
                        || {
                            let x = shape(graph, graph.node(reader).inputs[0]);
                            x[0] * x[1]
                        },
                        |c| c.1,
                    )
                });
                // An LSTM sharing leading steps records its blocked kernel
                // twice in a stage.
                let runs = stage
                    .iter()
                    .filter(|d| {
                        d.entry.starts_with("lstm_sequence_") && d.entry.ends_with("_blocked")
                    })
                    .count();
                let shared =
                    (runs == 2).then(|| shared.iter().find(|c| c.0 == id).map_or(0, |c| c.1));
                let plan = [false, true]
                    .into_iter()
                    .map(|sw| {
                        expected_matmuls(
                            graph,
                            &needs,
                            id,
                            phase,
                            sw,
                            rows.filter(|_| reader == id),
                            shared,
                        )
                    })
                    .find(|m| m.len() == matmuls);
                let mut m_k = 0;
                let mut ordinal: BTreeMap<&str, usize> = BTreeMap::new();
                for (k, d) in stage.iter().enumerate() {
                    let nth = ordinal.entry(d.entry).or_default();
                    costs[i + k] = if d.entry.starts_with("matmul") {
                        let c = plan
                            .as_ref()
                            .and_then(|p| p.get(m_k))
                            .map_or(Cost::default(), |&(m, n, kk, acc)| {
                                matmul_cost(m, n, kk, acc)
                            });
                        m_k += 1;
                        c
                    } else {
                        let prev = (k > 0).then(|| &stage[k - 1]);
                        kernel_cost(graph, &needs, id, phase, d, *nth, prev, rows, shared)
                    };
                    *nth += 1;
                }
            }
        }
        i = j;
    }
    costs
}

/// The general kernel an entry is a variant of (`_direct`, `_vec4`): the
/// same reads, writes and FLOPs.
fn scalar_entry(entry: &str) -> &str {
    let entry = entry.strip_suffix("_vec4").unwrap_or(entry);
    entry.strip_suffix("_direct").unwrap_or(entry)
}

fn update_cost(graph: &Graph, trained: &[NodeId], entry: &str, k: &mut usize) -> Cost {
    let n = |k: usize| trained.get(k).map(|&p| graph.node(p).value.numel());
    match scalar_entry(entry) {
        "adam_update" => {
            let c = n(*k).map_or(Cost::default(), |n| Cost::new(4 * n, 3 * n, 12 * n));
            *k += 1;
            c
        }
        "sgd_update" => {
            let c = n(*k).map_or(Cost::default(), |n| Cost::new(3 * n, 2 * n, 3 * n));
            *k += 1;
            c
        }
        _ => Cost::default(),
    }
}

/// The cost of a non-matmul dispatch: the `nth` of its entry in the stage
/// of node `id`; `prev` is the stage's previous dispatch (the first pass of
/// a two-pass reduction).
#[allow(clippy::too_many_arguments)]
fn kernel_cost(
    graph: &Graph,
    needs: &[bool],
    id: NodeId,
    phase: Phase,
    d: &ScheduledDispatch,
    nth: usize,
    prev: Option<&ScheduledDispatch>,
    chunks: Option<usize>,
    shared: Option<usize>,
) -> Cost {
    let node = graph.node(id);
    let ins = &node.inputs;
    let y = node.value.numel();
    let inp = |i: usize| graph.node(ins[i]).value.numel();
    let sh = |i: usize| shape(graph, ins[i]);
    // A two-pass reduction's second pass reads the first pass's partial
    // rows (one per workgroup row of the first pass).
    let second_pass = |cols: usize| {
        let partial_rows = prev.map_or(1, |p| p.workgroups[1] as usize);
        Cost::new(partial_rows * cols + cols, cols, partial_rows * cols)
    };
    // conv2d's register-blocked variants and the vec4 kernels cost what the
    // general kernels do.
    let entry = scalar_entry(d.entry);
    match entry {
        // A recurrent layer's chunked input (`chunks` rows): its chunks'
        // input rows, z gathered from their projections, and the gate
        // gradients summed per chunk.
        "embedding_forward" if matches!(node.op, Op::Lstm { .. } | Op::Rnn { .. }) => {
            let x = sh(0);
            let n = x[0] * x[1];
            let c = chunks.unwrap_or(n);
            if nth == 0 {
                Cost::new(c + c * x[2], c * x[2], 0)
            } else {
                let g = sh(2)[1];
                Cost::new(n + n * g, n * g, 0)
            }
        }
        "segment_sum" => {
            let x = sh(0);
            let (n, g) = (x[0] * x[1], sh(2)[1]);
            let c = chunks.unwrap_or(n);
            Cost::new(n * g + n + c + 1, c * g, n * g)
        }
        "embedding_forward" => Cost::new(inp(1) + y, y, 0),
        // A chunked embedding adds one row per chunk.
        "embedding_backward" if chunks.is_some() => {
            let (c, d) = (chunks.unwrap_or(0), sh(0)[1]);
            Cost::new(c * d + 2 * c, c * d, c * d)
        }
        "embedding_backward" => Cost::new(y + inp(1) + inp(0), inp(0), y),
        "lstm_sequence_forward" | "lstm_sequence_forward_blocked" | "rnn_sequence_forward" => {
            let x = sh(0);
            // With shared steps: their run (sample 0), then the rest.
            let (t, b) = match shared {
                Some(s) if nth == 0 => (s, 1),
                Some(s) => (x[0] - s, x[1]),
                None => (x[0], x[1]),
            };
            let (h, g) = (sh(2)[0], sh(2)[1]);
            let lstm = g == 4 * h;
            let cell = if lstm { 12 } else { 3 };
            let written = if lstm {
                t * b * g + 2 * (t + 1) * b * h + b * h
            } else {
                (t + 1) * b * h + b * h
            };
            Cost::new(
                t * b * g + h * g + g + t * b,
                written,
                t * (2 * b * h * g + b * h * cell),
            )
        }
        "lstm_gates_forward" | "rnn_cell_forward" => {
            let b = sh(0)[1];
            let (h, g) = (sh(2)[0], sh(2)[1]);
            let lstm = g == 4 * h;
            if lstm {
                Cost::new(b * g + 2 * b * h + g, b * g + 2 * b * h, b * h * 12 + b * g)
            } else {
                Cost::new(b * h + h, b * h, 3 * b * h)
            }
        }
        "lstm_sequence_backward"
        | "lstm_sequence_backward4"
        | "lstm_sequence_backward_blocked"
        | "rnn_sequence_backward" => {
            let x = sh(0);
            // With shared steps: the rest, then their run (sample 0).
            let (t, b) = match shared {
                Some(s) if nth == 0 => (x[0] - s, x[1]),
                Some(s) => (s, 1),
                None => (x[0], x[1]),
            };
            let (h, g) = (sh(2)[0], sh(2)[1]);
            let lstm = g == 4 * h;
            let saved = if lstm {
                t * b * g + 2 * (t + 1) * b * h
            } else {
                (t + 1) * b * h
            };
            Cost::new(
                saved + h * g + y + t * b,
                t * b * g + if lstm { 2 * b * h } else { b * h },
                t * (2 * b * g * h + b * h * if lstm { 20 } else { 4 }),
            )
        }
        "lstm_gates_backward" | "rnn_cell_backward" => {
            let b = sh(0)[1];
            let (h, g) = (sh(2)[0], sh(2)[1]);
            Cost::new(b * g + 3 * b * h, b * g + b * h, b * h * 20)
        }
        "bias_backward" => {
            // Dense: dy [B,U]; recurrent: dz [T·B, G].
            let (rows, cols) = match node.op {
                Op::Lstm { .. } | Op::Rnn { .. } => {
                    let x = sh(0);
                    (x[0] * x[1], sh(2)[1])
                }
                _ => (
                    node.value.shape[0],
                    node.value.numel() / node.value.shape[0].max(1),
                ),
            };
            if nth == 0 {
                Cost::new(rows * cols, cols, rows * cols)
            } else {
                second_pass(cols)
            }
        }
        "bias_add" => Cost::new(y + inp(2), y, y),
        // The input gradient at stride 1 with Cin % 4 == 0: the weights
        // flipped, then a forward conv of dy accumulated into dx.
        "conv2d_flip_weight" => Cost::new(inp(1), inp(1), 0),
        "conv2d_forward" | "conv2d_backward_input" | "conv2d_backward_weight" => {
            let w = sh(1);
            let macs = y * w[0] * w[1] * w[2];
            match entry {
                "conv2d_forward" if phase == Phase::Backward => {
                    Cost::new(y + inp(1) + inp(0), inp(0), 2 * macs)
                }
                "conv2d_forward" => Cost::new(inp(0) + inp(1) + inp(2), y, 2 * macs + y),
                "conv2d_backward_input" => Cost::new(y + inp(1) + inp(0), inp(0), 2 * macs),
                _ => Cost::new(y + inp(0) + inp(1), inp(1), 2 * macs),
            }
        }
        "conv2d_backward_bias" => Cost::new(y + inp(2), inp(2), y),
        "maxpool_forward" | "avgpool_forward" => {
            let window = match node.op {
                Op::MaxPool2d { pool, .. } | Op::AvgPool2d { pool, .. } => pool[0] * pool[1],
                _ => 1,
            };
            let argmax = if d.entry == "maxpool_forward" { y } else { 0 };
            Cost::new(inp(0), y + argmax, y * window)
        }
        "maxpool_backward" | "maxpool_backward_disjoint" => {
            Cost::new(2 * y + inp(0), inp(0), inp(0))
        }
        // dy, argmax and the pooled maxima; the ReLU's input gradient.
        "maxpool_relu_backward_disjoint" => Cost::new(3 * y + inp(0), inp(0), inp(0)),
        "avgpool_backward" => Cost::new(y + inp(0), inp(0), inp(0)),
        "relu_forward" => Cost::new(y, y, y),
        "sigmoid_forward" | "tanh_forward" => Cost::new(y, y, 4 * y),
        "relu_backward" | "sigmoid_backward" | "tanh_backward" => Cost::new(3 * y, y, 3 * y),
        "dropout_forward" => Cost::new(y, y, 2 * y),
        "dropout_backward" => Cost::new(2 * y, y, 2 * y),
        "concat_forward" => {
            let n = ins.get(nth).map_or(0, |&i| graph.node(i).value.numel());
            Cost::new(n, n, 0)
        }
        "concat_backward" => match node.op {
            // The sequence output copied out of h_all (into a cleared buffer).
            Op::Lstm { .. } | Op::Rnn { .. } => Cost::new(2 * y, y, y),
            _ => {
                let n = ins
                    .iter()
                    .filter(|i| needs[i.0])
                    .nth(nth)
                    .map_or(0, |&i| graph.node(i).value.numel());
                Cost::new(2 * n, n, n)
            }
        },
        "softmax_cross_entropy_forward" => {
            let l = inp(0);
            let b = sh(0)[0];
            Cost::new(l + b, l + b, 5 * l)
        }
        "reduce_sum" => {
            if nth == 0 {
                let b = sh(0)[0];
                Cost::new(b, 1, b)
            } else {
                second_pass(1)
            }
        }
        // Reads the probabilities and labels, adds one count.
        "accuracy_count" => {
            let l = inp(0);
            let b = sh(0)[0];
            Cost::new(l + b, 1, l)
        }
        "softmax_cross_entropy_backward" => {
            let l = inp(0);
            Cost::new(2 * l + sh(0)[0], l, 2 * l)
        }
        "softmax_forward" => Cost::new(y, y, 5 * y),
        _ if phase == Phase::Update => Cost::default(),
        _ => Cost::default(),
    }
}

/// One dispatch of a training step.
#[derive(Clone, Debug, PartialEq)]
pub struct ScheduleRow {
    pub phase: Phase,
    /// The spec layer (or `optimizer`).
    pub layer: String,
    pub node: String,
    pub op: String,
    pub entry: &'static str,
    pub workgroups: [u32; 3],
    pub cost: Cost,
}

/// The training-step schedule of a built executor, with costs.
pub fn schedule(
    spec: &ModelSpec,
    graph: &Graph,
    loss: NodeId,
    gpu: &GpuExecutor,
) -> Vec<ScheduleRow> {
    let dispatches = gpu.train_schedule();
    let costs = estimate_costs(
        graph,
        loss,
        &dispatches,
        &gpu.chunk_counts(),
        &gpu.shared_step_counts(),
    );
    dispatches
        .iter()
        .zip(costs)
        .map(|(d, cost)| {
            let (layer, node, op) = match d.node {
                Some(n) => {
                    let node = graph.node(n);
                    (
                        layer_of(spec, &node.name),
                        node.name.clone(),
                        node.op.kind().to_string(),
                    )
                }
                None => ("optimizer".into(), "-".into(), "update".into()),
            };
            ScheduleRow {
                phase: d.phase,
                layer,
                node,
                op,
                entry: d.entry,
                workgroups: d.workgroups,
                cost,
            }
        })
        .collect()
}

fn opt(v: Option<u64>) -> String {
    v.map_or("?".into(), |v| v.to_string())
}

fn phase_name(p: Phase) -> &'static str {
    match p {
        Phase::Forward => "forward",
        Phase::Backward => "backward",
        Phase::Update => "update",
    }
}

/// The schedule as CSV (with each dispatch's GPU time when profiled).
pub fn schedule_csv(rows: &[ScheduleRow], gpu_ns: Option<&[f64]>) -> String {
    let mut s = String::from(
        "index,phase,layer,node,op,entry,workgroups_x,workgroups_y,workgroups_z,bytes_read,bytes_written,flops",
    );
    s.push_str(if gpu_ns.is_some() { ",gpu_ns\n" } else { "\n" });
    for (i, r) in rows.iter().enumerate() {
        let [x, y, z] = r.workgroups;
        let _ = write!(
            s,
            "{i},{},{},{},{},{},{x},{y},{z},{},{},{}",
            phase_name(r.phase),
            r.layer,
            r.node,
            r.op,
            r.entry,
            r.cost.bytes_read.map_or(String::new(), |v| v.to_string()),
            r.cost
                .bytes_written
                .map_or(String::new(), |v| v.to_string()),
            r.cost.flops.map_or(String::new(), |v| v.to_string()),
        );
        if let Some(t) = gpu_ns {
            let _ = write!(s, ",{:.0}", t.get(i).copied().unwrap_or(f64::NAN));
        }
        s.push('\n');
    }
    s
}

fn schedule_table(rows: &[ScheduleRow]) -> String {
    let mut s = format!(
        "{:>3} {:<8} {:<12} {:<34} {:<16} {:>12} {:>12} {:>14}\n",
        "#", "phase", "node", "entry", "workgroups", "read B", "written B", "FLOPs"
    );
    for (i, r) in rows.iter().enumerate() {
        let [x, y, z] = r.workgroups;
        let _ = writeln!(
            s,
            "{i:>3} {:<8} {:<12} {:<34} {:<16} {:>12} {:>12} {:>14}",
            phase_name(r.phase),
            r.node,
            r.entry,
            format!("{x}x{y}x{z}"),
            opt(r.cost.bytes_read),
            opt(r.cost.bytes_written),
            opt(r.cost.flops)
        );
    }
    let sum = |f: fn(&Cost) -> Option<u64>| rows.iter().filter_map(|r| f(&r.cost)).sum::<u64>();
    let _ = write!(
        s,
        "{} dispatches; estimated {} read, {} written, {:.3} GFLOP",
        rows.len(),
        bytes(sum(|c| c.bytes_read)),
        bytes(sum(|c| c.bytes_written)),
        sum(|c| c.flops) as f64 * 1e-9
    );
    s
}

// ------------------------------------------------------------- profile

/// One measured training step on both backends.
#[derive(Clone, Debug, PartialEq)]
pub struct Profile {
    /// GPU time of every schedule row (ns), or why there is none.
    pub gpu_ns: std::result::Result<Vec<f64>, String>,
    /// Wall time of one GPU training step (submit to readback).
    pub gpu_step_seconds: f64,
    /// Wall time of one CPU training step, and per (layer, phase) sums.
    pub cpu_step_seconds: f64,
    pub cpu_seconds: Vec<(String, Phase, f64)>,
}

/// Times one training step on both backends (after one warm-up step each),
/// from the same initial parameters on the same batches.
pub fn profile(
    ctx: &GpuContext,
    exp: &Experiment,
    p: &Prepared,
    gpu: &mut GpuExecutor,
) -> Result<Profile> {
    let spec = &exp.model;
    let graph = &p.model.graph;
    let (b0, b1) = (p.batch(0)?, p.batch(1)?);
    gpu.train_step(&b0)?;
    let t = Instant::now();
    gpu.train_step(&b1)?;
    let gpu_step_seconds = t.elapsed().as_secs_f64();
    let gpu_ns = match gpu.profile_step(&b1) {
        Ok(t) => Ok(t.into_iter().map(|k| k.nanoseconds).collect()),
        Err(Error::Unsupported { why, .. }) => Err(format!(
            "no GPU timestamps: {why} (device {})",
            ctx.describe()
        )),
        Err(e) => return Err(e),
    };

    let mut cpu =
        CpuExecutor::<f32>::new(graph, p.model.loss, &p.params, train_config(&exp.training))?;
    cpu.train_step(&b0)?;
    cpu.record_times(true);
    let t = Instant::now();
    cpu.train_step(&b1)?;
    let cpu_step_seconds = t.elapsed().as_secs_f64();
    let mut sums: BTreeMap<(String, u8), (Phase, f64)> = BTreeMap::new();
    for t in cpu.times() {
        let layer = t.node.map_or("optimizer".to_string(), |n| {
            layer_of(spec, &graph.node(n).name)
        });
        let key = (layer, t.phase as u8);
        sums.entry(key).or_insert((t.phase, 0.0)).1 += t.seconds;
    }
    Ok(Profile {
        gpu_ns,
        gpu_step_seconds,
        cpu_step_seconds,
        cpu_seconds: sums
            .into_iter()
            .map(|((l, _), (ph, s))| (l, ph, s))
            .collect(),
    })
}

fn profile_text(p: &Profile, rows: &[ScheduleRow]) -> String {
    let mut s = String::new();
    let ms = |ns: f64| ns * 1e-6;
    let _ = writeln!(
        s,
        "one training step, wall time: GPU {:.2} ms, CPU reference {:.2} ms",
        p.gpu_step_seconds * 1e3,
        p.cpu_step_seconds * 1e3
    );
    let gpu = match &p.gpu_ns {
        Ok(t) => Some(t),
        Err(why) => {
            let _ = writeln!(s, "GPU per-dispatch times: unavailable: {why}");
            None
        }
    };
    // Per layer and phase.
    let mut layers: Vec<String> = Vec::new();
    for r in rows {
        if !layers.contains(&r.layer) {
            layers.push(r.layer.clone());
        }
    }
    for (l, _, _) in &p.cpu_seconds {
        if !layers.contains(l) {
            layers.push(l.clone());
        }
    }
    let gpu_sum = |layer: &str, ph: Phase| {
        gpu.map(|t| {
            rows.iter()
                .zip(t.iter())
                .filter(|(r, _)| r.layer == layer && r.phase == ph)
                .map(|(_, &ns)| ns)
                .sum::<f64>()
        })
    };
    let cpu_sum = |layer: &str, ph: Phase| {
        p.cpu_seconds
            .iter()
            .filter(|(l, q, _)| l == layer && *q == ph)
            .map(|(_, _, s)| s * 1e9)
            .sum::<f64>()
    };
    let cell = |v: Option<f64>| match v {
        None => "n/a".to_string(),
        Some(0.0) => "-".to_string(),
        Some(ns) => format!("{:.3}", ms(ns)),
    };
    let _ = writeln!(
        s,
        "\nper layer (ms)           GPU fwd    GPU bwd   GPU upd |   CPU fwd    CPU bwd   CPU upd"
    );
    for l in &layers {
        let _ = writeln!(
            s,
            "{:<22} {:>9} {:>10} {:>9} | {:>9} {:>10} {:>9}",
            l,
            cell(gpu_sum(l, Phase::Forward)),
            cell(gpu_sum(l, Phase::Backward)),
            cell(gpu_sum(l, Phase::Update)),
            cell(Some(cpu_sum(l, Phase::Forward))),
            cell(Some(cpu_sum(l, Phase::Backward))),
            cell(Some(cpu_sum(l, Phase::Update))),
        );
    }
    let total = |ph: Phase| {
        (
            gpu.map(|t| {
                rows.iter()
                    .zip(t.iter())
                    .filter(|(r, _)| r.phase == ph)
                    .map(|(_, &ns)| ns)
                    .sum::<f64>()
            }),
            p.cpu_seconds
                .iter()
                .filter(|(_, q, _)| *q == ph)
                .map(|(_, _, s)| s * 1e9)
                .sum::<f64>(),
        )
    };
    let (gf, cf) = total(Phase::Forward);
    let (gb, cb) = total(Phase::Backward);
    let (gu, cu) = total(Phase::Update);
    let _ = writeln!(
        s,
        "{:<22} {:>9} {:>10} {:>9} | {:>9} {:>10} {:>9}",
        "total",
        cell(gf),
        cell(gb),
        cell(gu),
        cell(Some(cf)),
        cell(Some(cb)),
        cell(Some(cu)),
    );
    if let Some(t) = gpu {
        let all: f64 = t.iter().sum();
        let mut kernels: BTreeMap<&str, (usize, f64, u64)> = BTreeMap::new();
        for (r, &ns) in rows.iter().zip(t.iter()) {
            let k = kernels.entry(r.entry).or_default();
            k.0 += 1;
            k.1 += ns;
            k.2 += r.cost.flops.unwrap_or(0);
        }
        let mut kernels: Vec<_> = kernels.into_iter().collect();
        kernels.sort_by(|a, b| b.1 .1.total_cmp(&a.1 .1));
        let _ = writeln!(
            s,
            "\nper kernel (GPU, sum of timestamped dispatches {:.3} ms)",
            ms(all)
        );
        let _ = writeln!(
            s,
            "{:<34} {:>5} {:>10} {:>7} {:>10}",
            "entry", "count", "ms", "share", "GFLOP/s"
        );
        for (name, (n, ns, flops)) in kernels {
            let _ = writeln!(
                s,
                "{:<34} {:>5} {:>10.3} {:>6.1}% {:>10.2}",
                name,
                n,
                ms(ns),
                100.0 * ns / all.max(1e-9),
                if ns > 0.0 { flops as f64 / ns } else { 0.0 }
            );
        }
    }
    s
}

// ------------------------------------------------------------- the command

/// Everything `crossmodal inspect` prints and writes.
#[derive(Clone, Debug)]
pub struct Inspection {
    pub name: String,
    pub summary: Summary,
    /// The device, or why there is none.
    pub device: std::result::Result<String, String>,
    pub memory: Option<MemoryReport>,
    pub schedule: Vec<ScheduleRow>,
    pub profile: Option<Profile>,
    pub files: Vec<PathBuf>,
}

/// Inspects `exp` (see the module doc); `gpu` is the device context or
/// why none could be made (the summary and graph files need none).
pub fn inspect(
    exp: &Experiment,
    options: &InspectOptions,
    gpu: std::result::Result<&GpuContext, String>,
) -> Result<Inspection> {
    let p = Prepared::new(exp, options.batch)?;
    let m = &p.model;
    let summary = summarize(&exp.model, &m.graph, m.loss, p.batch_size())?;
    let out = options
        .out
        .clone()
        .unwrap_or_else(|| Path::new("runs").join(&exp.name).join("inspect"));
    create_dir_all(&out)?;
    let mut files = vec![out.join("graph.dot"), out.join("graph.mmd")];
    write_atomic_str(&files[0], &graph_dot(&m.graph, m.loss))?;
    write_atomic_str(&files[1], &graph_mermaid(&m.graph, m.loss))?;

    let (device, memory, schedule_rows, profile) = match gpu {
        Err(why) => (Err(why), None, Vec::new(), None),
        Ok(ctx) => {
            let mut gpu = GpuExecutor::new(
                ctx,
                &m.graph,
                m.loss,
                &p.params,
                train_config(&exp.training),
            )?;
            let memory = memory_report(&gpu);
            let profile = if options.profile {
                Some(profile(ctx, exp, &p, &mut gpu)?)
            } else {
                None
            };
            // After a profile, chunked layers are costed at the profiled
            // batch's chunk counts; without one, at one chunk per position.
            let rows = schedule(&exp.model, &m.graph, m.loss, &gpu);
            let gpu_ns = profile.as_ref().and_then(|p| p.gpu_ns.as_ref().ok());
            let csv = out.join("schedule.csv");
            write_atomic_str(&csv, &schedule_csv(&rows, gpu_ns.map(Vec::as_slice)))?;
            files.push(csv);
            (Ok(ctx.describe()), Some(memory), rows, profile)
        }
    };
    Ok(Inspection {
        name: exp.name.clone(),
        summary,
        device,
        memory,
        schedule: schedule_rows,
        profile,
        files,
    })
}

impl fmt::Display for Inspection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "model {:?} at batch {}", self.name, self.summary.batch)?;
        writeln!(f, "{}", self.summary)?;
        match (&self.device, &self.memory) {
            (Ok(device), Some(m)) => {
                writeln!(f, "\nmemory plan of the GPU executor on {device}")?;
                writeln!(f, "{m}")?;
                writeln!(
                    f,
                    "\nkernel schedule of one training step (estimated traffic and FLOPs)"
                )?;
                writeln!(f, "{}", schedule_table(&self.schedule))?;
            }
            (Err(why), _) => {
                writeln!(
                    f,
                    "\nmemory plan, kernel schedule and GPU profile need a GPU adapter \
                     (lavapipe will do): {why}"
                )?;
            }
            (Ok(_), None) => {}
        }
        if let Some(p) = &self.profile {
            writeln!(f, "\nprofile")?;
            write!(f, "{}", profile_text(p, &self.schedule))?;
        }
        write!(f, "\nwrote")?;
        for p in &self.files {
            write!(f, " {}", p.display())?;
        }
        Ok(())
    }
}
