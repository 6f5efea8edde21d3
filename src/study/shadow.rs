//! The shadow check: the first N training steps of an experiment on both
//! backends, [`GpuExecutor`] and [`CpuExecutor<f32>`], from the same initial
//! parameters and the same batches, comparing every node's forward value
//! and gradient after each step; the report names the first node that
//! disagrees beyond the tolerance, or says that all agree.
//!
//! Order of the comparison, per step: forward values in graph (topological)
//! order (parameters as they were before the step, i.e. what the forward
//! read; so step k > 1 also checks the previous update), then gradients in
//! reverse graph order (a node's gradient is complete once every node after
//! it has run its backward, so this is the order in which a backward bug
//! first shows). The check stops at the first step with a divergence:
//! later steps only inherit it.
//!
//! Tolerance: element `i` diverges when `|gpu - cpu| > atol + rtol·|cpu|`,
//! with [`Tolerance::DEFAULT`] rtol 1e-3, atol 1e-4. Both backends compute
//! in f32 but sum in different orders (tiled GPU matmuls and workgroup
//! reductions against ndarray's sequential loops); the rounding of a sum of
//! K terms is about √K·2⁻²⁴ of the terms' magnitude, ~5e-6 for the seed
//! model's widest sum (K = 5472), and grows through the 100 recurrent steps
//! of the LSTM. rtol 1e-3 leaves two orders of magnitude above that; atol
//! 1e-4 covers values that cancel to near zero (gradients of saturated
//! units), where a relative bound means nothing. A real bug (a transposed
//! index, a missed accumulation, a wrong mask) moves values by O(1) of
//! their size and is far above both.
//!
//! Batches are built as a run builds them ([`make_batch`]): the data set
//! of the experiment, the tokenizer fitted on all its texts (a run fits it
//! on the training split; for a comparison of backends the vocabulary only
//! has to be the same on both), consecutive samples from the first.

use std::fmt;

use crate::data::tokenizer::Tokenizer;
use crate::error::{Error, Result};
use crate::experiment::model::{build_model, BuiltModel};
use crate::experiment::prepare::{load_data, make_batch, train_config, Encoded};
use crate::experiment::run::Experiment;
use crate::experiment::schema::InputKind;
use crate::gpu::GpuContext;
use crate::graph::cpu::CpuExecutor;
use crate::graph::gpu::{ExecOptions, GpuExecutor};
use crate::graph::init::init_params;
use crate::graph::{Batch, Executor, NodeId, Op};

/// When two values count as equal: `|a - b| <= atol + rtol·|reference|`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tolerance {
    pub rtol: f64,
    pub atol: f64,
}

impl Tolerance {
    /// rtol 1e-3, atol 1e-4 (see the module doc for why).
    pub const DEFAULT: Tolerance = Tolerance {
        rtol: 1e-3,
        atol: 1e-4,
    };
}

impl Default for Tolerance {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// What was compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Quantity {
    /// The node's value in the forward pass.
    Value,
    /// The gradient of the loss with respect to the node's value.
    Gradient,
}

/// The first element of a node that disagrees.
#[derive(Clone, Debug, PartialEq)]
pub struct Divergence {
    /// 1-based training step.
    pub step: usize,
    pub quantity: Quantity,
    pub node: String,
    pub kind: &'static str,
    pub shape: Vec<usize>,
    /// Flat index of the worst element (largest excess over the tolerance).
    pub index: usize,
    pub gpu: f32,
    pub cpu: f32,
    /// Elements beyond the tolerance, of `len`.
    pub count: usize,
    pub len: usize,
}

/// The outcome of [`shadow_check`].
#[derive(Clone, Debug, PartialEq)]
pub struct ShadowReport {
    pub experiment: String,
    pub device: String,
    pub tolerance: Tolerance,
    /// Steps run on both backends (stops after the first divergent one).
    pub steps: usize,
    /// Node values and gradients compared, over all steps.
    pub compared: usize,
    /// The largest `|gpu - cpu| / (atol + rtol·|cpu|)` over everything
    /// compared (1 is the tolerance), and where.
    pub worst_ratio: f64,
    pub worst_at: String,
    pub first_divergence: Option<Divergence>,
}

impl ShadowReport {
    pub fn agrees(&self) -> bool {
        self.first_divergence.is_none()
    }
}

impl fmt::Display for ShadowReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "shadow check of {} on {} against the CPU reference (f32)",
            self.experiment, self.device
        )?;
        writeln!(
            f,
            "tolerance: |gpu - cpu| <= {:e} + {:e}·|cpu|; {} step(s), {} node values and gradients compared",
            self.tolerance.atol, self.tolerance.rtol, self.steps, self.compared
        )?;
        writeln!(
            f,
            "largest error: {:.3} of the tolerance, at {}",
            self.worst_ratio, self.worst_at
        )?;
        match &self.first_divergence {
            None => write!(f, "AGREE: every value and gradient is within the tolerance"),
            Some(d) => write!(
                f,
                "DIVERGED at step {}: the {} of node {:?} ({}, shape {:?}): {} of {} elements \
                 beyond the tolerance; worst at flat index {}: gpu {:e}, cpu {:e}",
                d.step,
                match d.quantity {
                    Quantity::Value => "value",
                    Quantity::Gradient => "gradient",
                },
                d.node,
                d.kind,
                d.shape,
                d.count,
                d.len,
                d.index,
                d.gpu,
                d.cpu
            ),
        }
    }
}

/// An experiment's model and data, ready for steps on any backend.
pub struct Prepared {
    pub model: BuiltModel,
    pub params: Vec<(NodeId, Vec<f32>)>,
    encoded: Encoded,
    batch: usize,
}

impl Prepared {
    /// Loads the data of `exp`, fits the tokenizer on all its texts and
    /// builds the model for `batch` samples (default: the experiment's).
    pub fn new(exp: &Experiment, batch: Option<usize>) -> Result<Self> {
        let data = load_data(&exp.data, exp.seed)?;
        let batch = batch.unwrap_or(exp.training.batch_size);
        if batch == 0 {
            return Err(Error::graph(
                "training",
                "the batch size must be at least 1",
            ));
        }
        let seq_len = exp
            .model
            .inputs
            .iter()
            .find_map(|(_, k)| match k {
                InputKind::Tokens { seq_len } => Some(*seq_len),
                _ => None,
            })
            .unwrap_or(1);
        let tokenizer = Tokenizer::fit(exp.text.tokenizer, &data.texts)?;
        let tokens = tokenizer.encode(&data.texts, seq_len, exp.text.padding, exp.text.truncation);
        let model = build_model(&exp.model, batch, data.classes.len(), exp.seed, None)?;
        let params = init_params(&model.graph, exp.seed);
        Ok(Self {
            model,
            params,
            encoded: Encoded { tokens, data },
            batch,
        })
    }

    /// The model's batch size.
    pub fn batch_size(&self) -> usize {
        self.batch
    }

    /// Batch `k`: samples `k·B ..` (wrapping around the data set).
    pub fn batch(&self, k: usize) -> Result<Batch> {
        let n = self.encoded.data.len();
        if n == 0 {
            return Err(Error::graph("data", "the data set is empty"));
        }
        let idx: Vec<usize> = (0..self.batch).map(|j| (k * self.batch + j) % n).collect();
        Ok(make_batch(&self.model, &self.encoded, &idx, None))
    }
}

/// Compares `gpu` against `cpu`; returns the worst ratio to the tolerance,
/// its index, and the count beyond it.
fn compare(gpu: &[f32], cpu: &[f32], tol: Tolerance) -> (f64, usize, usize) {
    let mut worst = (0.0f64, 0usize);
    let mut count = 0;
    for (i, (&g, &c)) in gpu.iter().zip(cpu).enumerate() {
        let bound = tol.atol + tol.rtol * (c as f64).abs();
        let err = (g as f64 - c as f64).abs();
        // NaN on either side diverges.
        let ratio = if err.is_nan() {
            f64::INFINITY
        } else {
            err / bound
        };
        if ratio > 1.0 {
            count += 1;
        }
        if ratio > worst.0 {
            worst = (ratio, i);
        }
    }
    (worst.0, worst.1, count)
}

/// Runs `steps` training steps of the prepared model on both executors
/// (which must have been built from `p.params`) and compares them (see the
/// module doc). The GPU executor must keep every node for inspection
/// ([`ExecOptions::inspect`]). The report's experiment and device are left
/// empty for the caller.
pub fn shadow_steps(
    p: &Prepared,
    gpu: &mut GpuExecutor,
    cpu: &mut CpuExecutor<f32>,
    steps: usize,
    tol: Tolerance,
) -> Result<ShadowReport> {
    let g = &p.model.graph;
    let loss = p.model.loss;
    let needs = g.needs_grad(loss);
    // The forward of a training step computes the loss's ancestors.
    let mut ancestor = vec![false; g.nodes().len()];
    ancestor[loss.0] = true;
    for id in g.ids().rev() {
        if ancestor[id.0] {
            for i in &g.node(id).inputs {
                ancestor[i.0] = true;
            }
        }
    }
    let mut compared = 0;
    let mut worst = (0.0f64, String::from("nothing"));
    let report = |steps, compared, worst: (f64, String), first_divergence| ShadowReport {
        experiment: String::new(),
        device: String::new(),
        tolerance: tol,
        steps,
        compared,
        worst_ratio: worst.0,
        worst_at: worst.1,
        first_divergence,
    };
    for step in 1..=steps {
        let batch = p.batch(step - 1)?;
        let before: Vec<(NodeId, Vec<f32>, Vec<f32>)> = g
            .params()
            .into_iter()
            .map(|id| Ok((id, gpu.param(id)?, cpu.param(id)?)))
            .collect::<Result<_>>()?;
        gpu.train_step(&batch)?;
        cpu.train_step(&batch)?;

        let mut check = |q: Quantity, id: NodeId, a: &[f32], b: &[f32]| -> Option<Divergence> {
            let node = g.node(id);
            compared += 1;
            let (ratio, index, count) = if a.len() == b.len() {
                compare(a, b, tol)
            } else {
                (f64::INFINITY, 0, a.len().max(b.len()))
            };
            if ratio > worst.0 {
                worst = (ratio, format!("step {step}, {q:?} of {:?}", node.name));
            }
            (count > 0).then(|| Divergence {
                step,
                quantity: q,
                node: node.name.clone(),
                kind: node.op.kind(),
                shape: node.value.shape.clone(),
                index,
                gpu: a.get(index).copied().unwrap_or(f32::NAN),
                cpu: b.get(index).copied().unwrap_or(f32::NAN),
                count,
                len: a.len().max(b.len()),
            })
        };

        for id in g.ids() {
            let node = g.node(id);
            if !ancestor[id.0] || matches!(node.op, Op::Input { .. }) {
                continue;
            }
            let d = if let Some((_, a, b)) = before.iter().find(|(p, _, _)| *p == id) {
                check(Quantity::Value, id, a, b)
            } else {
                let (a, b) = (gpu.value(id)?, cpu.value(id)?);
                check(Quantity::Value, id, &a, &b)
            };
            if d.is_some() {
                return Ok(report(step, compared, worst, d));
            }
        }
        for id in g.ids().rev() {
            let node = g.node(id);
            if !needs[id.0] || id == loss || matches!(node.op, Op::Input { .. }) {
                continue;
            }
            let a = gpu.gradient_of(id)?;
            let b: Vec<f32> = cpu.grad(id)?.iter().copied().collect();
            if let Some(d) = check(Quantity::Gradient, id, &a, &b) {
                return Ok(report(step, compared, worst, Some(d)));
            }
        }
    }
    Ok(report(steps, compared, worst, None))
}

/// Builds both executors for `p` from the same initial parameters; every
/// node is kept on the GPU for inspection.
pub fn executors<'a>(
    ctx: &'a GpuContext,
    p: &Prepared,
    exp: &Experiment,
) -> Result<(GpuExecutor<'a>, CpuExecutor<f32>)> {
    let g = &p.model.graph;
    let config = train_config(&exp.training);
    let options = ExecOptions {
        inspect: g.ids().collect(),
        ..ExecOptions::default()
    };
    let gpu = GpuExecutor::with_options(ctx, g, p.model.loss, &p.params, config.clone(), options)?;
    let cpu = CpuExecutor::<f32>::new(g, p.model.loss, &p.params, config)?.per_position_gradients();
    Ok((gpu, cpu))
}

/// The shadow check of `exp` for `steps` training steps (see the module
/// doc).
pub fn shadow_check(
    ctx: &GpuContext,
    exp: &Experiment,
    steps: usize,
    tol: Tolerance,
) -> Result<ShadowReport> {
    if steps == 0 {
        return Err(Error::graph("shadow", "needs at least one step"));
    }
    let p = Prepared::new(exp, None)?;
    let (mut gpu, mut cpu) = executors(ctx, &p, exp)?;
    let mut report = shadow_steps(&p, &mut gpu, &mut cpu, steps, tol)?;
    report.experiment = exp.name.clone();
    report.device = ctx.describe();
    Ok(report)
}
