//! `crossmodal gradcheck`: every backward pass against central finite
//! differences, and every GPU backward kernel against its CPU reference.
//!
//! Two kinds of check, each a row of the printed table:
//!
//! - **FD vs CPU (f64)**: the op's CPU reference backward, run in f64,
//!   against central finite differences ([`central_difference`]) of the
//!   CPU reference forward in f64. This checks the math of the reference.
//! - **GPU (f32) vs CPU (f64)**: the GPU backward kernels (f32) against
//!   the same f64 reference gradient. This checks the kernels.
//!
//! **Op checks** ([`op_cases`]) drive each op family with a random incoming
//! gradient `dy`: the scalar is `Σ dy ⊙ forward(inputs)` (softmax
//! cross-entropy: its own batch-mean loss), on small awkward shapes —
//! non-square, a distinct size per dimension, sizes that are not multiples
//! of any workgroup — so a transposed or shifted index cannot pass. The GPU
//! gradient buffers start non-zero ([`Device::grad`]), so the check also
//! proves the kernels accumulate (`+=`) as the convention requires.
//!
//! **Model checks** ([`gradcheck_experiment`]) build an experiment's model
//! shrunk to test size ([`Shrink`]), and compare per parameter the
//! gradients of `CpuExecutor<f64>` against central differences of its f64
//! training loss on a sample of coordinates ([`ModelOptions::samples`]),
//! and the `GpuExecutor` gradients against the `CpuExecutor<f64>` ones on
//! every coordinate. Dropout is deterministic here: both executors apply
//! the mask of training step 0 in a gradient pass, and the finite
//! differences use [`CpuExecutor::run_training_loss`], which applies the
//! same mask, so the function differentiated is exactly the one whose
//! gradient is checked.
//!
//! The harness takes every gradient through a closure ([`OpCase::analytic`],
//! [`OpCase::gpu`]) or a value ([`ModelGradients`]), so a test can inject a
//! wrong one and see the check fail (tests/gradcheck.rs does).

use std::fmt::Write as _;
use std::path::Path;

use ndarray::{
    s, Array1, Array2, ArrayD, ArrayView1, ArrayView2, ArrayView3, ArrayView4, Axis, Ix1, Ix2, Ix3,
    Ix4, IxDyn,
};
use rand::{rngs::StdRng, seq::SliceRandom, Rng, SeedableRng};

use crate::error::{Error, Result};
use crate::experiment::model::{build_model, BuiltModel};
use crate::experiment::run::Experiment;
use crate::experiment::schema::{InputKind, LayerKind, ModelSpec};
use crate::gpu::{Dispatch, GpuContext, GpuOptions, GpuTensor};
use crate::graph::gpu::GpuExecutor;
use crate::graph::init::init_params;
use crate::graph::{Batch, CpuExecutor, Executor, HostData, NodeId, TrainConfig};
use crate::ops::activation::{
    activation_backward, activation_backward_cpu, activation_forward, activation_forward_cpu,
    Activation,
};
use crate::ops::average::{average_backward, average_backward_cpu, average_forward_cpu};
use crate::ops::bias::{bias_add_cpu, bias_backward, bias_backward_cpu};
use crate::ops::concat::{concat_backward_all, concat_backward_cpu, concat_forward_cpu};
use crate::ops::conv2d::{
    conv2d_backward_bias, conv2d_backward_bias_cpu, conv2d_backward_input,
    conv2d_backward_input_cpu, conv2d_backward_weight, conv2d_backward_weight_cpu,
    conv2d_forward_cpu, Conv2dGeometry, Padding,
};
use crate::ops::dropout::{dropout_backward, dropout_backward_cpu, dropout_forward_cpu, Dropout};
use crate::ops::embedding::{
    embedding_backward, embedding_backward_cpu, embedding_forward_cpu, token_order,
};
use crate::ops::lstm::{lstm_backward_cpu, lstm_forward_cpu, LstmState};
use crate::ops::matmul::{matmul, matmul_backward_cpu, matmul_cpu, Layout, MatmulParams};
use crate::ops::pool2d::{
    avgpool_backward, avgpool_backward_cpu, avgpool_forward_cpu, maxpool_backward,
    maxpool_backward_cpu, maxpool_forward, maxpool_forward_cpu, windows_disjoint, Pool2dGeometry,
};
use crate::ops::recurrent::{
    recurrent_backward_sequence, recurrent_backward_stepwise, recurrent_forward_sequence,
    recurrent_forward_stepwise, HiddenGrad, RecurrentBuffers, RecurrentCell, RecurrentCpuGrads,
    RecurrentDims, RecurrentGrads, RecurrentWeights,
};
use crate::ops::rnn::{rnn_backward_cpu, rnn_forward_cpu, RnnState};
use crate::ops::softmax_cross_entropy::{
    softmax_cross_entropy_backward, softmax_cross_entropy_backward_cpu,
    softmax_cross_entropy_forward, softmax_cross_entropy_forward_cpu,
    weighted_softmax_cross_entropy_backward, weighted_softmax_cross_entropy_backward_cpu,
    weighted_softmax_cross_entropy_forward, weighted_softmax_cross_entropy_forward_cpu,
};
use crate::tensor::DType;

// ---------------------------------------------------------------- tolerances

/// `|got - want| <= rtol·|want| + atol` elementwise, with
/// `atol = max(floor · max|want|, atol_min)`: an absolute floor that scales
/// with the gradient, for entries that are sums of terms cancelling to
/// (near) zero, where a relative bound means nothing.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Tolerance {
    pub rtol: f64,
    /// The absolute floor as a fraction of the gradient's largest entry.
    pub floor: f64,
    /// The absolute floor when the gradient is (near) zero everywhere.
    pub atol_min: f64,
}

impl Tolerance {
    /// Finite differences against the f64 reference: central differences
    /// with step [`FD_STEP`] have truncation error `h²·f'''/6 ≈ 1e-11` and
    /// rounding error `ε·|loss|/h ≈ 1e-11` (ε = 2.2e-16, losses of order
    /// 1–100), so agreement to a relative 1e-6 is expected of a correct
    /// gradient while a wrong term (a transposed or shifted index, a
    /// missing factor) is off by orders of magnitude more. The floor
    /// (1e-7 of the largest entry) covers entries that cancel; it is at
    /// least 1e-9, the rounding noise of a difference quotient of a loss
    /// of order 100, so a gradient whose entries are all far below 1e-9 is
    /// checked only loosely by finite differences (its GPU row still holds
    /// it to rtol 1e-4).
    pub const FD: Tolerance = Tolerance {
        rtol: 1e-6,
        floor: 1e-7,
        atol_min: 1e-9,
    };

    /// The GPU (f32) against the f64 reference: f32 rounds each operation
    /// to 6e-8 relative, and the kernels sum in other orders than the
    /// reference (tiles, trees, recurrences over up to 100 steps), so a
    /// correct kernel agrees to ~1e-5 relative on entries that do not
    /// cancel; rtol 1e-4 leaves a margin of 10. Entries that cancel get an
    /// absolute floor of 1e-5 of the gradient's largest entry (as in
    /// tests/graph_backends.rs); `atol_min` only keeps an all-zero
    /// gradient (a parameter the loss does not reach) from dividing by zero.
    pub const GPU: Tolerance = Tolerance {
        rtol: 1e-4,
        floor: 1e-5,
        atol_min: 1e-30,
    };

    /// The absolute floor for a gradient whose largest entry is `scale`.
    pub fn atol(&self, scale: f64) -> f64 {
        (self.floor * scale).max(self.atol_min)
    }
}

impl std::fmt::Display for Tolerance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "rtol {:.0e}, atol {:.0e}·max", self.rtol, self.floor)
    }
}

/// Central finite-difference step (f64).
pub const FD_STEP: f64 = 1e-5;

/// Central finite differences of `f` with respect to the coordinates
/// `coords` of `x` (all of them when `coords` is `None`), in f64:
/// `(f(x + h·e_i) - f(x - h·e_i)) / 2h` with `h` = [`FD_STEP`].
pub fn central_difference(
    x: &ArrayD<f64>,
    coords: Option<&[usize]>,
    mut f: impl FnMut(&ArrayD<f64>) -> Result<f64>,
) -> Result<Vec<f64>> {
    let mut probe = x.as_standard_layout().into_owned();
    let all: Vec<usize>;
    let coords = match coords {
        Some(c) => c,
        None => {
            all = (0..x.len()).collect();
            &all
        }
    };
    let mut out = Vec::with_capacity(coords.len());
    for &i in coords {
        fn slot(p: &mut ArrayD<f64>, i: usize) -> &mut f64 {
            &mut p.as_slice_mut().expect("standard layout")[i]
        }
        let orig = *slot(&mut probe, i);
        *slot(&mut probe, i) = orig + FD_STEP;
        let plus = f(&probe)?;
        *slot(&mut probe, i) = orig - FD_STEP;
        let minus = f(&probe)?;
        *slot(&mut probe, i) = orig;
        out.push((plus - minus) / (2.0 * FD_STEP));
    }
    Ok(out)
}

// ---------------------------------------------------------------- rows

/// Which two gradients a row compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum CheckKind {
    /// The CPU reference backward (f64) against central differences (f64).
    FdVsCpu,
    /// The GPU kernels (f32) against the CPU reference backward (f64).
    GpuVsCpu,
}

impl std::fmt::Display for CheckKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CheckKind::FdVsCpu => "FD vs CPU f64",
            CheckKind::GpuVsCpu => "GPU f32 vs CPU f64",
        })
    }
}

/// One comparison: a gradient (of one input or parameter) checked one way.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CheckRow {
    /// The op case or the experiment, e.g. `conv2d 2x7x6x3 k3x2 s2x1 valid`.
    pub case: String,
    /// The input or parameter whose gradient is compared, e.g. `w`.
    pub input: String,
    pub kind: CheckKind,
    /// Coordinates compared.
    pub count: usize,
    /// The reference gradient's largest entry (the scale of the floor).
    pub scale: f64,
    pub max_abs: f64,
    /// Largest `|got - want| / |want|` over entries above the absolute floor.
    pub max_rel: f64,
    pub tolerance: Tolerance,
    pub pass: bool,
    /// Where the check failed worst: (coordinate, got, want).
    pub worst: Option<(usize, f64, f64)>,
}

/// Compares `got` with `want` coordinate by coordinate (`coords[i]` names
/// entry i, for messages) under `tol`.
pub fn compare(
    case: &str,
    input: &str,
    kind: CheckKind,
    got: &[f64],
    want: &[f64],
    coords: Option<&[usize]>,
    tol: Tolerance,
) -> CheckRow {
    let scale = want.iter().fold(0.0f64, |m, w| m.max(w.abs()));
    let atol = tol.atol(scale);
    let (mut max_abs, mut max_rel) = (0.0f64, 0.0f64);
    let mut worst: Option<(usize, f64, f64, f64)> = None;
    let mut pass = got.len() == want.len();
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g - w).abs();
        let excess = if err.is_finite() {
            err - (atol + tol.rtol * w.abs())
        } else {
            f64::INFINITY
        };
        if !err.is_finite() {
            max_abs = f64::INFINITY;
        } else {
            max_abs = max_abs.max(err);
        }
        if w.abs() > atol {
            max_rel = max_rel.max(err / w.abs());
        }
        if excess > 0.0 {
            pass = false;
            if worst.is_none_or(|(_, _, _, e)| excess > e) {
                let at = coords.map_or(i, |c| c[i]);
                worst = Some((at, g, w, excess));
            }
        }
    }
    CheckRow {
        case: case.to_string(),
        input: input.to_string(),
        kind,
        count: want.len(),
        scale,
        max_abs,
        max_rel,
        tolerance: tol,
        pass,
        worst: worst.map(|(i, g, w, _)| (i, g, w)),
    }
}

/// The rows of one `gradcheck` run and what was skipped.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Report {
    pub rows: Vec<CheckRow>,
    /// Lines for the reader: the adapter, skipped GPU checks, shrinking.
    pub notes: Vec<String>,
}

impl Report {
    /// True when there is at least one row and every row passed.
    pub fn passed(&self) -> bool {
        !self.rows.is_empty() && self.rows.iter().all(|r| r.pass)
    }

    pub fn failures(&self) -> impl Iterator<Item = &CheckRow> {
        self.rows.iter().filter(|r| !r.pass)
    }

    /// The rows as a markdown table, then the notes and any failures.
    pub fn table(&self) -> String {
        let mut out = String::new();
        out.push_str(
            "| case | input | check | n | max \\|grad\\| | max abs err | max rel err | tolerance | result |\n",
        );
        out.push_str("|---|---|---|---:|---:|---:|---:|---|---|\n");
        for r in &self.rows {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {:.2e} | {:.2e} | {:.2e} | {} | {} |",
                r.case,
                r.input,
                r.kind,
                r.count,
                r.scale,
                r.max_abs,
                r.max_rel,
                r.tolerance,
                if r.pass { "pass" } else { "FAIL" }
            );
        }
        for n in &self.notes {
            let _ = writeln!(out, "\n{n}");
        }
        for r in self.failures() {
            if let Some((i, g, w)) = r.worst {
                let _ = writeln!(
                    out,
                    "\nFAIL {} / {} ({}): worst at coordinate {i}: got {g:e}, want {w:e}",
                    r.case, r.input, r.kind
                );
            }
        }
        let failed = self.failures().count();
        let _ = writeln!(
            out,
            "\n{} checks, {} passed, {failed} failed",
            self.rows.len(),
            self.rows.len() - failed
        );
        out
    }
}

// ---------------------------------------------------------------- device side

/// The GPU side of an op check: uploads, gradient buffers that start
/// non-zero, and readback that removes the starting values again.
pub struct Device<'a> {
    pub ctx: &'a GpuContext,
    /// Per input, a power of two near the reference gradient's largest
    /// entry: the starting values are small multiples of it, so adding the
    /// gradient in f32 and subtracting them again is exact to f32 rounding
    /// of the gradient's own scale.
    scales: Vec<f64>,
}

/// The starting value of element `i` of a gradient buffer, in units of its scale.
fn prefill_unit(i: usize) -> f64 {
    [0.25, -0.5, 0.0, 0.75][i % 4]
}

impl<'a> Device<'a> {
    /// A device side whose gradient buffers for input `i` start at
    /// multiples of a power of two near `scales[i]`.
    pub fn new(ctx: &'a GpuContext, scales: &[f64]) -> Self {
        let scales = scales
            .iter()
            .map(|&s| {
                if s > 0.0 && s.is_finite() {
                    2f64.powi(s.log2().round() as i32)
                } else {
                    1.0
                }
            })
            .collect();
        Self { ctx, scales }
    }

    fn scale(&self, input: usize) -> f64 {
        self.scales.get(input).copied().unwrap_or(1.0)
    }

    /// Uploads an f64 array as f32.
    pub fn upload(&self, a: &ArrayD<f64>) -> Result<GpuTensor> {
        let v: Vec<f32> = a.iter().map(|&x| x as f32).collect();
        self.ctx.upload_f32(&v, a.shape())
    }

    pub fn upload_u32(&self, v: &[u32], shape: &[usize]) -> Result<GpuTensor> {
        self.ctx.upload_u32(v, shape)
    }

    /// An f32 scratch tensor of zeros.
    pub fn zeros(&self, shape: &[usize]) -> Result<GpuTensor> {
        self.ctx.zeros(shape, DType::F32)
    }

    /// The gradient buffer of input `input`, starting non-zero.
    pub fn grad(&self, input: usize, shape: &[usize]) -> Result<GpuTensor> {
        let s = self.scale(input);
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|i| (prefill_unit(i) * s) as f32).collect();
        self.ctx.upload_f32(&v, shape)
    }

    /// Reads input `input`'s gradient buffer and subtracts its starting values.
    pub fn read_grad(&self, input: usize, t: &GpuTensor) -> Result<ArrayD<f64>> {
        let s = self.scale(input);
        let v = self.ctx.read_f32(t)?;
        let v: Vec<f64> = v
            .iter()
            .enumerate()
            .map(|(i, &g)| g as f64 - prefill_unit(i) * s)
            .collect();
        ArrayD::from_shape_vec(IxDyn(&t.shape), v)
            .map_err(|e| Error::shape("gradcheck", e.to_string()))
    }

    /// Records `dispatches` in order in one submit.
    pub fn run(&self, dispatches: &[Dispatch]) -> Result<()> {
        let refs: Vec<&Dispatch> = dispatches.iter().collect();
        self.ctx.run(&refs)
    }
}

// ---------------------------------------------------------------- op cases

/// The scalar an op check differentiates, at a point.
pub type LossFn = Box<dyn Fn(&[ArrayD<f64>]) -> f64>;
/// The analytic (CPU reference) gradient of every input at a point.
pub type AnalyticFn = Box<dyn Fn(&[ArrayD<f64>]) -> Vec<ArrayD<f64>>>;
/// The GPU gradient of every input at a point (`None` where no kernel
/// computes that input's gradient, e.g. the identity `dx = dy` of a bias).
pub type GpuFn = Box<dyn Fn(&Device, &[ArrayD<f64>]) -> Result<Vec<Option<ArrayD<f64>>>>>;

/// One op on one shape: its differentiable inputs, the scalar whose
/// gradient is checked, and the two gradient sources.
pub struct OpCase {
    /// The op family (the module in `src/ops`), e.g. `pool2d`.
    pub op: &'static str,
    /// The case, e.g. `maxpool 2x5x7x3 pool 3x2 stride 2x1 (gather)`.
    pub name: String,
    /// The differentiable inputs, by name, at the point checked.
    pub inputs: Vec<(&'static str, ArrayD<f64>)>,
    /// The scalar: `Σ dy ⊙ forward(inputs)` (a fixed random `dy`) with
    /// the CPU reference forward in f64.
    pub loss: LossFn,
    /// The CPU reference backward in f64.
    pub analytic: AnalyticFn,
    /// The GPU backward kernels.
    pub gpu: Option<GpuFn>,
}

impl OpCase {
    /// Whether `filter` selects this case: the op family, or part of the
    /// case name (`relu`, `maxpool`, `stepwise`).
    pub fn matches(&self, filter: &str) -> bool {
        let f = filter.to_ascii_lowercase();
        self.op == f || self.name.to_ascii_lowercase().contains(&f)
    }
}

/// Runs one op case: an FD row per input, and a GPU row per input that a
/// kernel computes (when `ctx` is given).
pub fn check_op(case: &OpCase, ctx: Option<&GpuContext>) -> Result<Vec<CheckRow>> {
    let point: Vec<ArrayD<f64>> = case.inputs.iter().map(|(_, a)| a.clone()).collect();
    let analytic = (case.analytic)(&point);
    if analytic.len() != point.len() {
        return Err(Error::shape(
            &case.name,
            format!(
                "the analytic gradient has {} parts for {} inputs",
                analytic.len(),
                point.len()
            ),
        ));
    }
    let mut rows = Vec::new();
    for (i, (name, x)) in case.inputs.iter().enumerate() {
        let mut probe = point.clone();
        let fd = central_difference(x, None, |xi| {
            probe[i] = xi.clone();
            Ok((case.loss)(&probe))
        })?;
        let want: Vec<f64> = analytic[i].iter().copied().collect();
        if analytic[i].shape() != x.shape() {
            return Err(Error::shape(
                &case.name,
                format!(
                    "the analytic gradient of {name} has shape {:?}, the input {:?}",
                    analytic[i].shape(),
                    x.shape()
                ),
            ));
        }
        let got_std = analytic[i].as_standard_layout();
        let got: Vec<f64> = got_std.iter().copied().collect();
        debug_assert_eq!(want.len(), got.len());
        rows.push(compare(
            &case.name,
            name,
            CheckKind::FdVsCpu,
            &got,
            &fd,
            None,
            Tolerance::FD,
        ));
    }
    if let (Some(ctx), Some(gpu)) = (ctx, &case.gpu) {
        let scales: Vec<f64> = analytic
            .iter()
            .map(|a| a.iter().fold(0.0f64, |m, v| m.max(v.abs())))
            .collect();
        let dev = Device::new(ctx, &scales);
        let grads = gpu(&dev, &point)?;
        for (i, g) in grads.iter().enumerate() {
            let Some(g) = g else { continue };
            let name = case.inputs.get(i).map_or("?", |(n, _)| *n);
            let want: Vec<f64> = analytic[i].as_standard_layout().iter().copied().collect();
            let got: Vec<f64> = g.as_standard_layout().iter().copied().collect();
            rows.push(compare(
                &case.name,
                name,
                CheckKind::GpuVsCpu,
                &got,
                &want,
                None,
                Tolerance::GPU,
            ));
        }
    }
    Ok(rows)
}

fn uniform(shape: &[usize], lo: f64, hi: f64, rng: &mut StdRng) -> ArrayD<f64> {
    ArrayD::from_shape_simple_fn(IxDyn(shape), || rng.random_range(lo..hi))
}

fn wsum(y: &ArrayD<f64>, w: &ArrayD<f64>) -> f64 {
    y.iter().zip(w.iter()).map(|(a, b)| a * b).sum()
}

fn v1(a: &ArrayD<f64>) -> ArrayView1<'_, f64> {
    a.view().into_dimensionality::<Ix1>().expect("rank 1")
}
fn v2(a: &ArrayD<f64>) -> ArrayView2<'_, f64> {
    a.view().into_dimensionality::<Ix2>().expect("rank 2")
}
fn v3(a: &ArrayD<f64>) -> ArrayView3<'_, f64> {
    a.view().into_dimensionality::<Ix3>().expect("rank 3")
}
fn v4(a: &ArrayD<f64>) -> ArrayView4<'_, f64> {
    a.view().into_dimensionality::<Ix4>().expect("rank 4")
}

fn dims_name(shape: &[usize]) -> String {
    shape
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("x")
}

fn matmul_case(m: usize, n: usize, k: usize, seed: u64) -> OpCase {
    let mut rng = StdRng::seed_from_u64(seed);
    let a = uniform(&[m, k], -1.0, 1.0, &mut rng);
    let b = uniform(&[k, n], -1.0, 1.0, &mut rng);
    let dy = uniform(&[m, n], -1.0, 1.0, &mut rng);
    let (dy1, dy2, dy3) = (dy.clone(), dy.clone(), dy);
    OpCase {
        op: "matmul",
        name: format!("matmul {m}x{k}·{k}x{n} (AB; backward ABt, AtB)"),
        inputs: vec![("a", a), ("b", b)],
        loss: Box::new(move |x| {
            wsum(
                &matmul_cpu(Layout::AB, &v2(&x[0]), &v2(&x[1])).into_dyn(),
                &dy1,
            )
        }),
        analytic: Box::new(move |x| {
            let mut da = Array2::zeros((m, k));
            let mut db = Array2::zeros((k, n));
            matmul_backward_cpu(&mut da, &mut db, &v2(&dy2), &v2(&x[0]), &v2(&x[1]));
            vec![da.into_dyn(), db.into_dyn()]
        }),
        gpu: Some(Box::new(move |dev, x| {
            let (ga, gb, gdy) = (dev.upload(&x[0])?, dev.upload(&x[1])?, dev.upload(&dy3)?);
            let (gda, gdb) = (dev.grad(0, &[m, k])?, dev.grad(1, &[k, n])?);
            let ctx = dev.ctx;
            dev.run(&[
                // dA[m,k] += dC[m,n]·B[k,n]ᵀ
                matmul(
                    ctx,
                    Layout::ABt,
                    &gda,
                    &gdy,
                    &gb,
                    MatmulParams::new(m, k, n).accumulate(),
                )?,
                // dB[k,n] += A[m,k]ᵀ·dC[m,n]
                matmul(
                    ctx,
                    Layout::AtB,
                    &gdb,
                    &ga,
                    &gdy,
                    MatmulParams::new(k, n, m).accumulate(),
                )?,
            ])?;
            Ok(vec![
                Some(dev.read_grad(0, &gda)?),
                Some(dev.read_grad(1, &gdb)?),
            ])
        })),
    }
}

fn bias_case(shape: &[usize], seed: u64) -> OpCase {
    let mut rng = StdRng::seed_from_u64(seed);
    let cols = *shape.last().expect("rank >= 1");
    let x = uniform(shape, -1.0, 1.0, &mut rng);
    let b = uniform(&[cols], -1.0, 1.0, &mut rng);
    let dy = uniform(shape, -1.0, 1.0, &mut rng);
    let (dy1, dy2, dy3) = (dy.clone(), dy.clone(), dy);
    OpCase {
        op: "bias",
        name: format!("bias {} + {cols}", dims_name(shape)),
        inputs: vec![("x", x), ("b", b)],
        loss: Box::new(move |x| {
            let mut y = x[0].clone();
            bias_add_cpu(&mut y, &v1(&x[1]));
            wsum(&y, &dy1)
        }),
        analytic: Box::new(move |_| {
            let mut db = Array1::zeros(cols);
            bias_backward_cpu(&mut db, &dy2.view());
            vec![dy2.clone(), db.into_dyn()]
        }),
        gpu: Some(Box::new(move |dev, _| {
            let gdy = dev.upload(&dy3)?;
            let gdb = dev.grad(1, &[cols])?;
            dev.run(&bias_backward(dev.ctx, &gdb, &gdy)?)?;
            // dx = dy is the identity: no kernel.
            Ok(vec![None, Some(dev.read_grad(1, &gdb)?)])
        })),
    }
}

fn conv2d_case(g: Conv2dGeometry, seed: u64) -> OpCase {
    let mut rng = StdRng::seed_from_u64(seed);
    let x = uniform(&g.input_shape(), -1.0, 1.0, &mut rng);
    let w = uniform(&g.weight_shape(), -1.0, 1.0, &mut rng);
    let b = uniform(&g.bias_shape(), -1.0, 1.0, &mut rng);
    let dy = uniform(&g.output_shape(), -1.0, 1.0, &mut rng);
    let (dy1, dy2, dy3) = (dy.clone(), dy.clone(), dy);
    let pad = match g.padding {
        Padding::Valid => "valid",
        Padding::Same => "same",
    };
    OpCase {
        op: "conv2d",
        name: format!(
            "conv2d {} -> {} k{}x{} s{}x{} {pad}",
            dims_name(&g.input_shape()),
            g.out_c,
            g.kernel[0],
            g.kernel[1],
            g.stride[0],
            g.stride[1]
        ),
        inputs: vec![("x", x), ("w", w), ("b", b)],
        loss: Box::new(move |x| {
            let y = conv2d_forward_cpu(&v4(&x[0]), &v4(&x[1]), &v1(&x[2]), &g);
            wsum(&y.into_dyn(), &dy1)
        }),
        analytic: Box::new(move |x| {
            let dy = v4(&dy2);
            let mut dx = ndarray::Array4::zeros(g.input_shape());
            let mut dw = ndarray::Array4::zeros(g.weight_shape());
            let mut db = Array1::zeros(g.out_c);
            conv2d_backward_input_cpu(&mut dx, &dy, &v4(&x[1]), &g);
            conv2d_backward_weight_cpu(&mut dw, &dy, &v4(&x[0]), &g);
            conv2d_backward_bias_cpu(&mut db, &dy, &g);
            vec![dx.into_dyn(), dw.into_dyn(), db.into_dyn()]
        }),
        gpu: Some(Box::new(move |dev, x| {
            let (gx, gw, gdy) = (dev.upload(&x[0])?, dev.upload(&x[1])?, dev.upload(&dy3)?);
            let gdx = dev.grad(0, &g.input_shape())?;
            let gdw = dev.grad(1, &g.weight_shape())?;
            let gdb = dev.grad(2, &g.bias_shape())?;
            let ctx = dev.ctx;
            let mut dispatches = conv2d_backward_input(ctx, &gdx, &gdy, &gw, &g)?;
            dispatches.push(conv2d_backward_weight(ctx, &gdw, &gdy, &gx, &g)?);
            dispatches.push(conv2d_backward_bias(ctx, &gdb, &gdy, &g)?);
            dev.run(&dispatches)?;
            Ok(vec![
                Some(dev.read_grad(0, &gdx)?),
                Some(dev.read_grad(1, &gdw)?),
                Some(dev.read_grad(2, &gdb)?),
            ])
        })),
    }
}

fn pool_case(max: bool, g: Pool2dGeometry, seed: u64) -> OpCase {
    let mut rng = StdRng::seed_from_u64(seed);
    // Continuous random values: no ties within a window, so the max is
    // differentiable and a step of FD_STEP does not move the argmax.
    let x = uniform(&g.input_shape(), -1.0, 1.0, &mut rng);
    let dy = uniform(&g.output_shape(), -1.0, 1.0, &mut rng);
    let (dy1, dy2, dy3) = (dy.clone(), dy.clone(), dy);
    let path = if !max {
        "gather"
    } else if windows_disjoint(&g) {
        "disjoint"
    } else {
        "gather"
    };
    let name = format!(
        "{} {} pool {}x{} stride {}x{} ({path})",
        if max { "maxpool" } else { "avgpool" },
        dims_name(&g.input_shape()),
        g.pool[0],
        g.pool[1],
        g.stride[0],
        g.stride[1]
    );
    OpCase {
        op: "pool2d",
        name,
        inputs: vec![("x", x)],
        loss: Box::new(move |x| {
            let y = if max {
                maxpool_forward_cpu(&v4(&x[0]), &g).0
            } else {
                avgpool_forward_cpu(&v4(&x[0]), &g)
            };
            wsum(&y.into_dyn(), &dy1)
        }),
        analytic: Box::new(move |x| {
            let mut dx = ndarray::Array4::zeros(g.input_shape());
            if max {
                let (_, argmax) = maxpool_forward_cpu(&v4(&x[0]), &g);
                maxpool_backward_cpu(&mut dx, &v4(&dy2), &argmax.view(), &g);
            } else {
                avgpool_backward_cpu(&mut dx, &v4(&dy2), &g);
            }
            vec![dx.into_dyn()]
        }),
        gpu: Some(Box::new(move |dev, x| {
            let ctx = dev.ctx;
            let (gx, gdy) = (dev.upload(&x[0])?, dev.upload(&dy3)?);
            let gdx = dev.grad(0, &g.input_shape())?;
            if max {
                let gy = dev.zeros(&g.output_shape())?;
                let garg = ctx.zeros(&g.output_shape(), DType::U32)?;
                dev.run(&[
                    maxpool_forward(ctx, &gx, &gy, &garg, &g)?,
                    maxpool_backward(ctx, &gdx, &gdy, &garg, &g)?,
                ])?;
            } else {
                dev.run(&[avgpool_backward(ctx, &gdx, &gdy, &g)?])?;
            }
            Ok(vec![Some(dev.read_grad(0, &gdx)?)])
        })),
    }
}

fn activation_case(act: Activation, shape: &[usize], seed: u64) -> OpCase {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut x = uniform(shape, -2.0, 2.0, &mut rng);
    if act == Activation::Relu {
        // Away from the kink at 0, where central differences straddle it.
        x.mapv_inplace(|v| {
            if v.abs() < 0.05 {
                v.signum() * 0.05 + v
            } else {
                v
            }
        });
    }
    let dy = uniform(shape, -1.0, 1.0, &mut rng);
    let (dy1, dy2, dy3) = (dy.clone(), dy.clone(), dy);
    let label = match act {
        Activation::Relu => "relu",
        Activation::Sigmoid => "sigmoid",
        Activation::Tanh => "tanh",
    };
    OpCase {
        op: "activation",
        name: format!("{label} {}", dims_name(shape)),
        inputs: vec![("x", x)],
        loss: Box::new(move |x| wsum(&activation_forward_cpu(act, &x[0].view()), &dy1)),
        analytic: Box::new(move |x| {
            let saved = if act.backward_uses_input() {
                x[0].clone()
            } else {
                activation_forward_cpu(act, &x[0].view())
            };
            let mut dx = ArrayD::zeros(x[0].raw_dim());
            activation_backward_cpu(act, &mut dx, &dy2.view(), &saved.view());
            vec![dx]
        }),
        gpu: Some(Box::new(move |dev, x| {
            let ctx = dev.ctx;
            let (gx, gdy) = (dev.upload(&x[0])?, dev.upload(&dy3)?);
            let gy = dev.zeros(x[0].shape())?;
            let gdx = dev.grad(0, x[0].shape())?;
            let saved = if act.backward_uses_input() { &gx } else { &gy };
            dev.run(&[
                activation_forward(ctx, act, &gx, &gy)?,
                activation_backward(ctx, act, &gdx, &gdy, saved)?,
            ])?;
            Ok(vec![Some(dev.read_grad(0, &gdx)?)])
        })),
    }
}

fn embedding_case(padding_idx: Option<u32>, seed: u64) -> OpCase {
    let (vocab, dim, t, b) = (11usize, 5usize, 4usize, 3usize);
    let mut rng = StdRng::seed_from_u64(seed);
    let table = uniform(&[vocab, dim], -1.0, 1.0, &mut rng);
    // Repeated ids (their gradients add up), the padding id 0, and one id
    // past the table (a zero row, no gradient).
    let tokens: Vec<u32> = vec![3, 0, 7, 3, 10, 0, 14, 7, 3, 1, 0, 9];
    debug_assert_eq!(tokens.len(), t * b);
    let mut dy = uniform(&[t * b, dim], -1.0, 1.0, &mut rng);
    if let Some(p) = padding_idx {
        // With a padding id, the positions holding it are masked downstream
        // (`mask_zero`): nothing reads them, so their incoming gradient is
        // zero, and the padding row gets no gradient by design.
        for (q, &tok) in tokens.iter().enumerate() {
            if tok == p {
                dy.slice_mut(s![q, ..]).fill(0.0);
            }
        }
    }
    let dy = dy.into_dyn();
    let (dy1, dy2, dy3) = (dy.clone(), dy.clone(), dy);
    let (t1, t2, t3) = (tokens.clone(), tokens.clone(), tokens);
    OpCase {
        op: "embedding",
        name: format!(
            "embedding {vocab}x{dim} tokens {t}x{b}{}",
            match padding_idx {
                Some(p) => format!(" padding {p}"),
                None => String::new(),
            }
        ),
        inputs: vec![("table", table)],
        loss: Box::new(move |x| wsum(&embedding_forward_cpu(&v2(&x[0]), &t1).into_dyn(), &dy1)),
        analytic: Box::new(move |_| {
            let mut dt = Array2::zeros((vocab, dim));
            embedding_backward_cpu(&mut dt, &v2(&dy2), &t2, padding_idx);
            vec![dt.into_dyn()]
        }),
        gpu: Some(Box::new(move |dev, _| {
            let gdy = dev.upload(&dy3)?;
            let gtok = dev.upload_u32(&t3, &[t, b])?;
            let gorder = dev.upload_u32(&token_order(&t3), &[t * b])?;
            let gdt = dev.grad(0, &[vocab, dim])?;
            dev.run(&[embedding_backward(
                dev.ctx,
                &gdt,
                &gdy,
                &gtok,
                &gorder,
                padding_idx,
            )?])?;
            Ok(vec![Some(dev.read_grad(0, &gdt)?)])
        })),
    }
}

/// Which recurrent layer a case checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cell {
    Lstm,
    Rnn,
}

/// A recurrent case: T, B, D, H, masked, the gradient of every h_t
/// (`return_sequences`) or of h_T, and the per-step kernel path or the
/// default (persistent where the device allows it).
#[derive(Clone, Copy)]
struct RecurrentCase {
    cell: Cell,
    dims: RecurrentDims,
    masked: bool,
    sequences: bool,
    stepwise: bool,
}

/// `[T,B]` token ids: sample b pre-padded with `b % 3` zeros, and one zero
/// inside sample 0 (a masked middle step); all non-zero when unmasked.
fn recurrent_ids(t: usize, b: usize, masked: bool) -> Vec<u32> {
    let mut ids = vec![1u32; t * b];
    if masked {
        for j in 0..b {
            for i in 0..(j % 3).min(t - 1) {
                ids[i * b + j] = 0;
            }
        }
        ids[(t / 2) * b] = 0;
    }
    ids
}

fn recurrent_case(c: RecurrentCase, seed: u64) -> OpCase {
    let RecurrentDims {
        steps: t,
        batch: b,
        input: d,
        hidden: h,
    } = c.dims;
    let gates = if c.cell == Cell::Lstm { 4 * h } else { h };
    let mut rng = StdRng::seed_from_u64(seed);
    let x = uniform(&[t, b, d], -1.0, 1.0, &mut rng);
    let w = uniform(&[d, gates], -0.6, 0.6, &mut rng);
    let u = uniform(&[h, gates], -0.6, 0.6, &mut rng);
    let bias = uniform(&[gates], -0.5, 0.5, &mut rng);
    let out_shape = if c.sequences {
        vec![t, b, h]
    } else {
        vec![b, h]
    };
    let dy = uniform(&out_shape, -1.0, 1.0, &mut rng);
    let ids = recurrent_ids(t, b, c.masked);
    let mask = c
        .masked
        .then(|| Array2::from_shape_fn((t, b), |(i, j)| ids[i * b + j] != 0));
    // The incoming gradient of every h_t, as the CPU backward takes it.
    let dh_seq = if c.sequences {
        dy.clone()
    } else {
        let mut a = ndarray::Array3::zeros((t, b, h));
        a.slice_mut(s![t - 1, .., ..]).assign(&v2(&dy));
        a.into_dyn()
    };
    // h_all [T+1,B,H] of the CPU forward.
    let forward = {
        let mask = mask.clone();
        move |x: &[ArrayD<f64>]| -> (ArrayD<f64>, Option<crate::ops::lstm::LstmStates<f64>>) {
            let m = mask.as_ref().map(|m| m.view());
            let args = (v3(&x[0]), v2(&x[1]), v2(&x[2]), v1(&x[3]));
            match c.cell {
                Cell::Lstm => {
                    let st = lstm_forward_cpu(&args.0, &args.1, &args.2, &args.3, m.as_ref());
                    (st.h_all.clone().into_dyn(), Some(st))
                }
                Cell::Rnn => (
                    rnn_forward_cpu(&args.0, &args.1, &args.2, &args.3, m.as_ref()).into_dyn(),
                    None,
                ),
            }
        }
    };
    let forward2 = forward.clone();
    let (dy1, dy3) = (dy.clone(), dy);
    let mask2 = mask.clone();
    let label = match c.cell {
        Cell::Lstm => "lstm",
        Cell::Rnn => "rnn",
    };
    let name = format!(
        "{label} T{t} B{b} D{d} H{h}{}{} ({})",
        if c.masked { " masked" } else { "" },
        if c.sequences { " seq" } else { " last" },
        if c.stepwise { "stepwise" } else { "sequence" }
    );
    OpCase {
        op: label,
        name,
        inputs: vec![("x", x), ("w", w), ("u", u), ("b", bias)],
        loss: Box::new(move |x| {
            let (h_all, _) = forward(x);
            let out = if c.sequences {
                h_all.slice(s![1.., .., ..]).to_owned().into_dyn()
            } else {
                h_all.index_axis(Axis(0), t).to_owned().into_dyn()
            };
            wsum(&out, &dy1)
        }),
        analytic: Box::new(move |x| {
            let (h_all, states) = forward2(x);
            let m = mask2.as_ref().map(|m| m.view());
            let mut grads = RecurrentCpuGrads::zeros(c.dims, gates);
            let dh = v3(&dh_seq);
            match (c.cell, states) {
                (Cell::Lstm, Some(st)) => lstm_backward_cpu(
                    &mut grads,
                    &dh,
                    &st,
                    &v3(&x[0]),
                    &v2(&x[1]),
                    &v2(&x[2]),
                    m.as_ref(),
                ),
                _ => rnn_backward_cpu(
                    &mut grads,
                    &dh,
                    &v3(&h_all),
                    &v3(&x[0]),
                    &v2(&x[1]),
                    &v2(&x[2]),
                    m.as_ref(),
                ),
            }
            vec![
                grads.dx.into_dyn(),
                grads.dw.into_dyn(),
                grads.du.into_dyn(),
                grads.db.into_dyn(),
            ]
        }),
        gpu: Some(Box::new(move |dev, x| {
            let ctx = dev.ctx;
            let (gx, gw, gu, gb) = (
                dev.upload(&x[0])?,
                dev.upload(&x[1])?,
                dev.upload(&x[2])?,
                dev.upload(&x[3])?,
            );
            let gdy = dev.upload(&dy3)?;
            let gmask = if c.masked {
                Some(dev.upload_u32(&ids, &[t, b])?)
            } else {
                None
            };
            let (gdx, gdw, gdu, gdb) = (
                dev.grad(0, &[t, b, d])?,
                dev.grad(1, &[d, gates])?,
                dev.grad(2, &[h, gates])?,
                dev.grad(3, &[gates])?,
            );
            let weights = RecurrentWeights {
                w: &gw,
                u: &gu,
                b: &gb,
            };
            let grads = RecurrentGrads {
                dx: Some(&gdx),
                dw: Some(&gdw),
                du: &gdu,
                db: &gdb,
            };
            let dh = if c.sequences {
                HiddenGrad {
                    seq: Some(&gdy),
                    last: None,
                }
            } else {
                HiddenGrad {
                    seq: None,
                    last: Some(&gdy),
                }
            };
            let m = gmask.as_ref();
            let run = |ds: &[Dispatch]| dev.run(ds);
            match c.cell {
                Cell::Lstm => {
                    recurrent_passes::<LstmState>(ctx, &c, &grads, dh, &gx, &weights, m, run)?
                }
                Cell::Rnn => {
                    recurrent_passes::<RnnState>(ctx, &c, &grads, dh, &gx, &weights, m, run)?
                }
            }
            Ok(vec![
                Some(dev.read_grad(0, &gdx)?),
                Some(dev.read_grad(1, &gdw)?),
                Some(dev.read_grad(2, &gdu)?),
                Some(dev.read_grad(3, &gdb)?),
            ])
        })),
    }
}

/// Runs forward and backward of one cell on the path `c` names (through
/// `run`, while the layer's buffers live).
#[allow(clippy::too_many_arguments)]
fn recurrent_passes<C: RecurrentCell>(
    ctx: &GpuContext,
    c: &RecurrentCase,
    grads: &RecurrentGrads,
    dh: HiddenGrad,
    gx: &GpuTensor,
    weights: &RecurrentWeights,
    m: Option<&GpuTensor>,
    run: impl FnOnce(&[Dispatch]) -> Result<()>,
) -> Result<()> {
    let bufs = RecurrentBuffers::<C>::new(ctx, c.dims)?;
    let mut ds = Vec::new();
    if c.stepwise {
        ds.extend(recurrent_forward_stepwise(ctx, &bufs, gx, weights, m)?);
        ds.extend(recurrent_backward_stepwise(
            ctx, grads, dh, &bufs, gx, weights, m,
        )?);
    } else {
        ds.extend(recurrent_forward_sequence(ctx, &bufs, gx, weights, m)?);
        ds.extend(recurrent_backward_sequence(
            ctx, grads, dh, &bufs, gx, weights, m,
        )?);
    }
    run(&ds)
}

fn concat_case(widths: &[usize], rows: usize, seed: u64) -> OpCase {
    let mut rng = StdRng::seed_from_u64(seed);
    let names: [&'static str; 4] = ["x0", "x1", "x2", "x3"];
    let inputs: Vec<(&'static str, ArrayD<f64>)> = widths
        .iter()
        .enumerate()
        .map(|(i, &w)| (names[i % 4], uniform(&[rows, w], -1.0, 1.0, &mut rng)))
        .collect();
    let total: usize = widths.iter().sum();
    let dy = uniform(&[rows, total], -1.0, 1.0, &mut rng);
    let (dy1, dy2, dy3) = (dy.clone(), dy.clone(), dy);
    let widths = widths.to_vec();
    let n = widths.len();
    OpCase {
        op: "concat",
        name: format!(
            "concat {rows}x[{}]",
            widths
                .iter()
                .map(|w| w.to_string())
                .collect::<Vec<_>>()
                .join(",")
        ),
        inputs,
        loss: Box::new(move |x| {
            let views: Vec<_> = x.iter().map(|a| a.view()).collect();
            wsum(&concat_forward_cpu(&views), &dy1)
        }),
        analytic: Box::new(move |x| {
            let mut grads: Vec<ArrayD<f64>> =
                x.iter().map(|a| ArrayD::zeros(a.raw_dim())).collect();
            let mut refs: Vec<&mut ArrayD<f64>> = grads.iter_mut().collect();
            concat_backward_cpu(&mut refs, &dy2.view());
            grads
        }),
        gpu: Some(Box::new(move |dev, x| {
            let gdy = dev.upload(&dy3)?;
            let gdx = (0..n)
                .map(|i| dev.grad(i, x[i].shape()))
                .collect::<Result<Vec<_>>>()?;
            let refs: Vec<&GpuTensor> = gdx.iter().collect();
            dev.run(&concat_backward_all(dev.ctx, &refs, &gdy)?)?;
            gdx.iter()
                .enumerate()
                .map(|(i, g)| dev.read_grad(i, g).map(Some))
                .collect()
        })),
    }
}

fn softmax_ce_case(b: usize, c: usize, seed: u64) -> OpCase {
    let mut rng = StdRng::seed_from_u64(seed);
    let logits = uniform(&[b, c], -2.0, 2.0, &mut rng);
    let labels: Vec<u32> = (0..b).map(|_| rng.random_range(0..c as u32)).collect();
    let (l1, l2, l3) = (labels.clone(), labels.clone(), labels);
    OpCase {
        op: "softmax_cross_entropy",
        name: format!("softmax_cross_entropy {b}x{c} (batch mean)"),
        inputs: vec![("logits", logits)],
        loss: Box::new(move |x| {
            let (_, loss) = softmax_cross_entropy_forward_cpu(&v2(&x[0]), &l1);
            loss.sum() / b as f64
        }),
        analytic: Box::new(move |x| {
            let (probs, _) = softmax_cross_entropy_forward_cpu(&v2(&x[0]), &l2);
            let mut dl = Array2::zeros((b, c));
            softmax_cross_entropy_backward_cpu(&mut dl, &probs.view(), &l2);
            vec![dl.into_dyn()]
        }),
        gpu: Some(Box::new(move |dev, x| {
            let ctx = dev.ctx;
            let gl = dev.upload(&x[0])?;
            let glab = dev.upload_u32(&l3, &[b])?;
            let (gp, gloss) = (dev.zeros(&[b, c])?, dev.zeros(&[b])?);
            let gdl = dev.grad(0, &[b, c])?;
            dev.run(&[
                softmax_cross_entropy_forward(ctx, &gl, &glab, &gp, &gloss)?,
                softmax_cross_entropy_backward(ctx, &gdl, &gp, &glab)?,
            ])?;
            Ok(vec![Some(dev.read_grad(0, &gdl)?)])
        })),
    }
}

fn weighted_softmax_ce_case(b: usize, c: usize, seed: u64) -> OpCase {
    let mut rng = StdRng::seed_from_u64(seed);
    let logits = uniform(&[b, c], -2.0, 2.0, &mut rng);
    let labels: Vec<u32> = (0..b).map(|_| rng.random_range(0..c as u32)).collect();
    // Distinct weights per class, so a weight read from the wrong class shows.
    let weights: Vec<f64> = (0..c).map(|k| 0.5 + 0.75 * k as f64).collect();
    let (l1, l2, l3) = (labels.clone(), labels.clone(), labels);
    let (w1, w2) = (weights.clone(), weights.clone());
    let w3: Vec<f32> = weights.iter().map(|&w| w as f32).collect();
    OpCase {
        op: "softmax_cross_entropy",
        name: format!("weighted_softmax_cross_entropy {b}x{c} (batch mean)"),
        inputs: vec![("logits", logits)],
        loss: Box::new(move |x| {
            let (_, loss) = weighted_softmax_cross_entropy_forward_cpu(&v2(&x[0]), &l1, &w1);
            loss.sum() / b as f64
        }),
        analytic: Box::new(move |x| {
            let (probs, _) = weighted_softmax_cross_entropy_forward_cpu(&v2(&x[0]), &l2, &w2);
            let mut dl = Array2::zeros((b, c));
            weighted_softmax_cross_entropy_backward_cpu(&mut dl, &probs.view(), &l2, &w2);
            vec![dl.into_dyn()]
        }),
        gpu: Some(Box::new(move |dev, x| {
            let ctx = dev.ctx;
            let gl = dev.upload(&x[0])?;
            let glab = dev.upload_u32(&l3, &[b])?;
            let gw = ctx.upload_f32(&w3, &[c])?;
            let (gp, gloss) = (dev.zeros(&[b, c])?, dev.zeros(&[b])?);
            let gdl = dev.grad(0, &[b, c])?;
            dev.run(&[
                weighted_softmax_cross_entropy_forward(ctx, &gl, &glab, &gw, &gp, &gloss)?,
                weighted_softmax_cross_entropy_backward(ctx, &gdl, &gp, &glab, &gw)?,
            ])?;
            Ok(vec![Some(dev.read_grad(0, &gdl)?)])
        })),
    }
}

fn average_case(k: usize, shape: &[usize], seed: u64) -> OpCase {
    let mut rng = StdRng::seed_from_u64(seed);
    let names: [&'static str; 4] = ["x0", "x1", "x2", "x3"];
    let inputs: Vec<(&'static str, ArrayD<f64>)> = (0..k)
        .map(|i| (names[i % 4], uniform(shape, -1.0, 1.0, &mut rng)))
        .collect();
    let dy = uniform(shape, -1.0, 1.0, &mut rng);
    let (dy1, dy2, dy3) = (dy.clone(), dy.clone(), dy);
    OpCase {
        op: "average",
        name: format!("average {k}x{}", dims_name(shape)),
        inputs,
        loss: Box::new(move |x| {
            let views: Vec<_> = x.iter().map(|a| a.view()).collect();
            wsum(&average_forward_cpu(&views), &dy1)
        }),
        analytic: Box::new(move |x| {
            x.iter()
                .map(|a| {
                    let mut dx = ArrayD::zeros(a.raw_dim());
                    average_backward_cpu(&mut dx, &dy2.view(), k);
                    dx
                })
                .collect()
        }),
        gpu: Some(Box::new(move |dev, x| {
            let gdy = dev.upload(&dy3)?;
            let gdx = (0..k)
                .map(|i| dev.grad(i, x[i].shape()))
                .collect::<Result<Vec<_>>>()?;
            let refs: Vec<&GpuTensor> = gdx.iter().collect();
            dev.run(&average_backward(dev.ctx, &refs, &gdy, k)?)?;
            gdx.iter()
                .enumerate()
                .map(|(i, g)| dev.read_grad(i, g).map(Some))
                .collect()
        })),
    }
}

fn dropout_case(shape: &[usize], rate: f32, step: u32, seed: u64) -> OpCase {
    let mut rng = StdRng::seed_from_u64(seed);
    let x = uniform(shape, -1.0, 1.0, &mut rng);
    let dy = uniform(shape, -1.0, 1.0, &mut rng);
    let d = Dropout {
        rate,
        seed: seed ^ 0x5eed,
    };
    let (dy1, dy2, dy3) = (dy.clone(), dy.clone(), dy);
    OpCase {
        op: "dropout",
        name: format!("dropout {} rate {rate} step {step}", dims_name(shape)),
        inputs: vec![("x", x)],
        loss: Box::new(move |x| wsum(&dropout_forward_cpu(&d, &x[0].view(), Some(step)), &dy1)),
        analytic: Box::new(move |x| {
            let mut dx = ArrayD::zeros(x[0].raw_dim());
            dropout_backward_cpu(&d, &mut dx, &dy2.view(), step);
            vec![dx]
        }),
        gpu: Some(Box::new(move |dev, x| {
            let gdy = dev.upload(&dy3)?;
            let gdx = dev.grad(0, x[0].shape())?;
            dev.run(&[dropout_backward(dev.ctx, &d, &gdx, &gdy, step)?])?;
            Ok(vec![Some(dev.read_grad(0, &gdx)?)])
        })),
    }
}

/// Every op family with a backward, on small awkward shapes: matmul,
/// bias, conv2d (valid and same padding, unequal strides), max pooling
/// (disjoint and overlapping windows) and average pooling, ReLU / sigmoid
/// / tanh, embedding (with and without a padding id), LSTM and SimpleRNN
/// (masked or not, gradient of every step or of the last, through the
/// default and the per-step kernels), concat, average, softmax
/// cross-entropy (plain and class-weighted) and dropout.
pub fn op_cases() -> Result<Vec<OpCase>> {
    let conv = |input, out_c, kernel, stride, padding| {
        Conv2dGeometry::new(input, out_c, kernel, stride, padding)
    };
    let rec = |cell, (t, b, d, h), masked, sequences, stepwise| RecurrentCase {
        cell,
        dims: RecurrentDims::new(t, b, d, h),
        masked,
        sequences,
        stepwise,
    };
    let mut cases = vec![
        matmul_case(5, 7, 3, 1),
        matmul_case(19, 33, 17, 2),
        bias_case(&[7, 5], 3),
        // More rows than one bias_backward workgroup sums: the chained path.
        bias_case(&[2100, 3], 4),
        conv2d_case(conv([2, 7, 6, 3], 4, [3, 2], [2, 1], Padding::Valid)?, 5),
        conv2d_case(conv([2, 5, 7, 2], 3, [3, 3], [1, 2], Padding::Same)?, 6),
        // Stride 1, Cin % 4 == 0: the input gradient as a flipped forward conv.
        conv2d_case(conv([2, 6, 5, 4], 6, [3, 2], [1, 1], Padding::Same)?, 16),
        pool_case(true, Pool2dGeometry::keras([2, 5, 7, 3], [2, 2])?, 7),
        pool_case(true, Pool2dGeometry::new([2, 7, 6, 3], [3, 2], [2, 1])?, 8),
        pool_case(false, Pool2dGeometry::new([2, 7, 6, 3], [3, 2], [2, 1])?, 9),
    ];
    for (i, act) in [Activation::Relu, Activation::Sigmoid, Activation::Tanh]
        .into_iter()
        .enumerate()
    {
        cases.push(activation_case(act, &[3, 5, 7], 10 + i as u64));
    }
    cases.push(embedding_case(None, 13));
    cases.push(embedding_case(Some(0), 14));
    for (i, c) in [
        // H = 6: the pair persistent form; H = 8: the blocked form (H % 4 == 0).
        rec(Cell::Lstm, (5, 3, 4, 6), false, true, false),
        rec(Cell::Lstm, (6, 5, 3, 8), true, false, false),
        rec(Cell::Lstm, (5, 3, 4, 6), true, true, true),
        rec(Cell::Rnn, (5, 3, 4, 6), false, true, false),
        rec(Cell::Rnn, (6, 5, 3, 8), true, false, false),
        rec(Cell::Rnn, (5, 3, 4, 6), true, true, true),
    ]
    .into_iter()
    .enumerate()
    {
        cases.push(recurrent_case(c, 20 + i as u64));
    }
    cases.push(concat_case(&[4, 7, 2], 3, 30));
    cases.push(softmax_ce_case(5, 3, 31));
    cases.push(softmax_ce_case(4, 7, 32));
    cases.push(weighted_softmax_ce_case(6, 3, 35));
    cases.push(average_case(2, &[3, 7, 5], 36));
    cases.push(average_case(3, &[4, 9], 37));
    cases.push(dropout_case(&[5, 7], 0.3, 3, 33));
    cases.push(dropout_case(&[3, 100], 0.5, 0, 34));
    Ok(cases)
}

/// The op families [`op_cases`] covers, for messages.
pub fn op_names() -> &'static [&'static str] {
    &[
        "matmul",
        "bias",
        "conv2d",
        "pool2d",
        "activation",
        "embedding",
        "lstm",
        "rnn",
        "concat",
        "average",
        "softmax_cross_entropy",
        "dropout",
    ]
}

/// Runs the op cases `filter` selects (all when `None`; see
/// [`OpCase::matches`]); GPU rows only when `ctx` is given.
pub fn check_ops(filter: Option<&str>, ctx: Option<&GpuContext>) -> Result<Report> {
    let cases: Vec<OpCase> = op_cases()?
        .into_iter()
        .filter(|c| filter.is_none_or(|f| c.matches(f)))
        .collect();
    if cases.is_empty() {
        return Err(Error::Unsupported {
            op: "gradcheck".into(),
            what: format!("the op {:?}", filter.unwrap_or_default()),
            why: format!(
                "no case matches it; ops: {} (or part of a case name, e.g. relu, maxpool, stepwise)",
                op_names().join(", ")
            ),
        });
    }
    let mut report = Report::default();
    for case in &cases {
        report.rows.extend(check_op(case, ctx)?);
    }
    Ok(report)
}

// ---------------------------------------------------------------- models

/// How an experiment's model is shrunk to test size. Token inputs get at
/// most `seq_len` steps, image inputs at most `image`×`image` pixels (the
/// channels stay), every Embedding at most `vocab` rows; the batch is
/// `batch`. Layer widths (units, filters, embedding dims) stay as written,
/// so the kernels run at the experiment's widths; only what grows the cost
/// of a finite-difference evaluation without changing the code paths
/// shrinks. A model whose layers need larger images (e.g. a deep stack of
/// valid convolutions) fails to build with an error naming the layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shrink {
    pub batch: usize,
    pub seq_len: usize,
    pub vocab: usize,
    pub image: usize,
}

impl Default for Shrink {
    fn default() -> Self {
        Self {
            batch: 3,
            seq_len: 7,
            vocab: 50,
            image: 8,
        }
    }
}

/// Options of a model check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModelOptions {
    pub shrink: Shrink,
    /// Coordinates per parameter checked by finite differences (all of
    /// them when the parameter is smaller): half where the analytic
    /// gradient is largest, half at random, so that a sparse gradient
    /// (an embedding table) is not checked only where it is zero.
    pub samples: usize,
    /// Seeds the parameters, the batch and the coordinate sample.
    pub seed: u64,
}

impl Default for ModelOptions {
    fn default() -> Self {
        Self {
            shrink: Shrink::default(),
            samples: 24,
            seed: 1,
        }
    }
}

/// `spec` with its sizes shrunk by `s` (see [`Shrink`]).
pub fn shrink_spec(spec: &ModelSpec, s: &Shrink) -> ModelSpec {
    let mut out = spec.clone();
    for (_, kind) in &mut out.inputs {
        match kind {
            InputKind::Tokens { seq_len } => *seq_len = (*seq_len).min(s.seq_len),
            InputKind::Image { height, width, .. } => {
                *height = (*height).min(s.image);
                *width = (*width).min(s.image);
            }
        }
    }
    for layer in &mut out.layers {
        if let LayerKind::Embedding { vocab, .. } = &mut layer.kind {
            *vocab = (*vocab).min(s.vocab);
        }
    }
    out
}

/// A shrunk model with its initial parameters and one batch.
pub struct ModelProblem {
    pub name: String,
    pub model: BuiltModel,
    pub params: Vec<(NodeId, Vec<f32>)>,
    pub batch: Batch,
}

/// The number of classes: the output layer's units.
/// The class count: the units of the Dense layer that gives the output,
/// looking through shape-keeping layers (an Average of heads, a Dropout).
fn classes(spec: &ModelSpec) -> Result<usize> {
    let mut name = spec.output.as_str();
    for _ in 0..=spec.layers.len() {
        let layer = spec.layers.iter().find(|l| l.name == name);
        match layer.map(|l| (&l.kind, l.inputs.first())) {
            Some((LayerKind::Dense { units, .. }, _)) => return Ok(*units),
            Some((LayerKind::Average | LayerKind::Dropout { .. }, Some(input))) => {
                name = input.as_str()
            }
            _ => break,
        }
    }
    Err(Error::graph(
        &spec.output,
        "the output must come from a Dense layer (its units are the classes), \
         possibly through Average or Dropout",
    ))
}

/// Builds `exp`'s model shrunk by `opts.shrink`, Keras-initialised from
/// `opts.seed`, with a random batch: pre-padded token ids (sample j starts
/// with `j % 3` zeros) below the smallest vocabulary, images in [0, 1),
/// random labels.
pub fn model_problem(exp: &Experiment, opts: &ModelOptions) -> Result<ModelProblem> {
    let spec = shrink_spec(&exp.model, &opts.shrink);
    let classes = classes(&spec)?;
    let batch_size = opts.shrink.batch;
    let model = build_model(&spec, batch_size, classes, opts.seed, None)?;
    let params = init_params(&model.graph, opts.seed);
    let vocab = spec
        .layers
        .iter()
        .filter_map(|l| match l.kind {
            LayerKind::Embedding { vocab, .. } => Some(vocab),
            _ => None,
        })
        .min()
        .unwrap_or(opts.shrink.vocab)
        .max(2);
    let mut rng = StdRng::seed_from_u64(opts.seed ^ 0xba7c);
    let mut batch = Batch::new();
    for (_, id, kind) in &model.inputs {
        let data = match kind {
            InputKind::Tokens { seq_len } => {
                let (t, b) = (*seq_len, batch_size);
                let mut ids = vec![0u32; t * b];
                for j in 0..b {
                    for i in (j % 3).min(t.saturating_sub(1))..t {
                        ids[i * b + j] = rng.random_range(1..vocab as u32);
                    }
                }
                HostData::U32(ids)
            }
            InputKind::Image { .. } => {
                let n = model.graph.node(*id).value.numel();
                HostData::F32((0..n).map(|_| rng.random::<f32>()).collect())
            }
        };
        batch = batch.with(*id, data);
    }
    let labels = (0..batch_size)
        .map(|_| rng.random_range(0..classes as u32))
        .collect();
    batch = batch.with(model.labels, HostData::U32(labels));
    Ok(ModelProblem {
        name: exp.name.clone(),
        model,
        params,
        batch,
    })
}

/// The gradients a model check compares, in `Graph::params` order.
#[derive(Clone, Debug)]
pub struct ModelGradients {
    /// `CpuExecutor<f64>` after one gradient pass.
    pub cpu: Vec<ArrayD<f64>>,
    /// `GpuExecutor` (when an adapter was given).
    pub gpu: Option<Vec<Vec<f32>>>,
}

fn cpu_executor(p: &ModelProblem) -> Result<CpuExecutor<f64>> {
    CpuExecutor::<f64>::new(
        &p.model.graph,
        p.model.loss,
        &p.params,
        TrainConfig::default(),
    )
}

/// One gradient pass of each backend on the problem's batch.
pub fn model_gradients(p: &ModelProblem, ctx: Option<&GpuContext>) -> Result<ModelGradients> {
    let mut cpu = cpu_executor(p)?;
    cpu.run_gradients(&p.batch)?;
    let cpu_grads = p
        .model
        .graph
        .params()
        .into_iter()
        .map(|id| match cpu.grad(id) {
            Ok(g) => g.clone(),
            // A parameter the loss does not reach has a zero gradient.
            Err(_) => ArrayD::zeros(IxDyn(&p.model.graph.node(id).value.shape)),
        })
        .collect();
    let gpu = match ctx {
        Some(ctx) => {
            let mut exec = GpuExecutor::new(
                ctx,
                &p.model.graph,
                p.model.loss,
                &p.params,
                TrainConfig::default(),
            )?;
            Some(exec.gradients(&p.batch)?.1)
        }
        None => None,
    };
    Ok(ModelGradients {
        cpu: cpu_grads,
        gpu,
    })
}

/// The coordinates of a parameter checked by finite differences (see
/// [`ModelOptions::samples`]), ascending.
fn sample_coordinates(grad: &ArrayD<f64>, samples: usize, rng: &mut StdRng) -> Vec<usize> {
    let n = grad.len();
    if n <= samples {
        return (0..n).collect();
    }
    let g: Vec<f64> = grad.iter().copied().collect();
    let mut by_size: Vec<usize> = (0..n).collect();
    by_size.sort_by(|&a, &b| g[b].abs().total_cmp(&g[a].abs()).then(a.cmp(&b)));
    let top = samples / 2;
    let mut picked: Vec<usize> = by_size[..top].to_vec();
    let mut rest: Vec<usize> = by_size[top..].to_vec();
    rest.shuffle(rng);
    picked.extend(rest.into_iter().take(samples - top));
    picked.sort_unstable();
    picked
}

/// Per parameter: `grads.cpu` against central differences of the f64
/// training loss on sampled coordinates, and `grads.gpu` (if any) against
/// `grads.cpu` everywhere.
pub fn check_model_gradients(
    p: &ModelProblem,
    grads: &ModelGradients,
    opts: &ModelOptions,
) -> Result<Vec<CheckRow>> {
    let params = p.model.graph.params();
    if grads.cpu.len() != params.len() {
        return Err(Error::graph(
            &p.name,
            format!(
                "{} CPU gradients for {} parameters",
                grads.cpu.len(),
                params.len()
            ),
        ));
    }
    let mut exec = cpu_executor(p)?;
    let mut rng = StdRng::seed_from_u64(opts.seed ^ 0xc00d);
    let mut rows = Vec::new();
    for (i, &id) in params.iter().enumerate() {
        let name = p.model.graph.node(id).name.clone();
        let value: ArrayD<f64> = exec.value_array(id)?.clone();
        let coords = sample_coordinates(&grads.cpu[i], opts.samples, &mut rng);
        let fd = central_difference(&value, Some(&coords), |v| {
            exec.set_param_array(id, v.as_slice().expect("standard layout"))?;
            exec.run_training_loss(&p.batch)
        })?;
        exec.set_param_array(id, value.as_slice().expect("standard layout"))?;
        let cpu = grads.cpu[i].as_standard_layout();
        let cpu = cpu.as_slice().expect("standard layout");
        let analytic: Vec<f64> = coords.iter().map(|&c| cpu[c]).collect();
        rows.push(compare(
            &p.name,
            &name,
            CheckKind::FdVsCpu,
            &analytic,
            &fd,
            Some(&coords),
            Tolerance::FD,
        ));
        if let Some(gpu) = &grads.gpu {
            let got: Vec<f64> = gpu
                .get(i)
                .map(|g| g.iter().map(|&v| v as f64).collect())
                .unwrap_or_default();
            rows.push(compare(
                &p.name,
                &name,
                CheckKind::GpuVsCpu,
                &got,
                cpu,
                None,
                Tolerance::GPU,
            ));
        }
    }
    Ok(rows)
}

/// The model check of an experiment file (see the module documentation).
pub fn gradcheck_experiment(
    path: &Path,
    ctx: Option<&GpuContext>,
    opts: &ModelOptions,
) -> Result<Report> {
    let exp = Experiment::load(path)?;
    let p = model_problem(&exp, opts)?;
    let grads = model_gradients(&p, ctx)?;
    let mut report = Report {
        rows: check_model_gradients(&p, &grads, opts)?,
        notes: Vec::new(),
    };
    let s = opts.shrink;
    report.notes.push(format!(
        "{}: shrunk to batch {}, sequences ≤ {} steps, images ≤ {}x{}, vocabularies ≤ {}; \
         finite differences on ≤ {} coordinates per parameter (h = {FD_STEP:e}), \
         dropout with the step-0 training mask on both backends",
        path.display(),
        s.batch,
        s.seq_len,
        s.image,
        s.image,
        s.vocab,
        opts.samples
    ));
    Ok(report)
}

/// What `crossmodal gradcheck [TARGET]` runs: the op checks (all, or the
/// op family / case `target` names), or the model check when `target` ends
/// in `.ron`, on the adapter `options` choose. Without an adapter the GPU
/// rows are skipped with a note (the FD rows still run). Prints the table;
/// returns whether every check passed.
pub fn run_cli(target: Option<&str>, options: &GpuOptions) -> Result<bool> {
    let (ctx, note) = match GpuContext::new(options) {
        Ok(ctx) => {
            let note = format!("GPU: {}", ctx.describe());
            (Some(ctx), note)
        }
        Err(e) => (None, format!("no GPU adapter, GPU rows skipped: {e}")),
    };
    let mut report = match target {
        Some(t) if t.ends_with(".ron") => {
            gradcheck_experiment(Path::new(t), ctx.as_ref(), &ModelOptions::default())?
        }
        _ => check_ops(target, ctx.as_ref())?,
    };
    report.notes.insert(0, note);
    println!("{}", report.table());
    Ok(report.passed())
}
