//! Row softmax and softmax fused with cross-entropy: CPU reference and GPU
//! launchers, forward then backward. Logits are [B, C]; labels are u32 class
//! indices [B] (the one-hot is implicit). The loss per row is
//! `-log p[label]`, computed stably as `logsumexp(row) - logit[label]`; the
//! backward is that of the batch mean (Keras' categorical cross-entropy with
//! its default reduction): `dlogits += (softmax - onehot) / B`.
//!
//! Label values live on the device, so the launchers check only their count.
//! A label >= C is never read through: its loss is NaN (which stops a run
//! and says the data is wrong) and its backward row is `probs / B`.
//!
//! The `weighted_` variants take per-class weights `w` [C] (Keras
//! `class_weight`): `loss[r] = w[label] · CE[r]` and `dlogits += w[label] ·
//! (softmax - onehot) / B`, so the batch mean stays a mean over B (Keras'
//! sum-over-batch-size, not divided by the sum of the weights). They are
//! separate kernels, so the unweighted path is unchanged bit for bit, and
//! one dispatch each, as the unweighted ones.

use ndarray::{Array1, Array2, ArrayView2, Axis, NdFloat};

use crate::error::{Error, Result};
use crate::gpu::{Access, Dispatch, GpuContext, GpuTensor, Grid, KernelSpec, Shader};
use crate::tensor::{expect_numel, expect_shape, DType};

/// Uniform parameters, mirrored by `Params` in `shaders/softmax_cross_entropy.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct SoftmaxParams {
    /// Rows (batch).
    pub b: u32,
    /// Classes.
    pub c: u32,
    /// Loss written for a label >= C (NaN).
    pub bad_label_loss: f32,
    pub _pad: u32,
}

// ---------------------------------------------------------------- CPU reference

/// Softmax of each row, after subtracting the row max.
pub fn softmax_forward_cpu<A: NdFloat>(logits: &ArrayView2<A>) -> Array2<A> {
    let mut probs = logits.to_owned();
    for mut row in probs.axis_iter_mut(Axis(0)) {
        let m = row.fold(A::neg_infinity(), |m, &v| m.max(v));
        row.mapv_inplace(|v| (v - m).exp());
        let sum = row.sum();
        row.mapv_inplace(|v| v / sum);
    }
    probs
}

/// `(probs, loss)` with `loss[r] = logsumexp(logits[r]) - logits[r, label]`;
/// NaN for a label >= C.
pub fn softmax_cross_entropy_forward_cpu<A: NdFloat>(
    logits: &ArrayView2<A>,
    labels: &[u32],
) -> (Array2<A>, Array1<A>) {
    let probs = softmax_forward_cpu(logits);
    let loss = logits
        .axis_iter(Axis(0))
        .zip(labels)
        .map(|(row, &label)| {
            let m = row.fold(A::neg_infinity(), |m, &v| m.max(v));
            let sum = row.fold(A::zero(), |s, &v| s + (v - m).exp());
            match row.get(label as usize) {
                Some(&x) => sum.ln() - (x - m),
                None => A::nan(),
            }
        })
        .collect();
    (probs, loss)
}

/// `dlogits += (probs - onehot(labels)) / B`: the gradient of the mean loss.
pub fn softmax_cross_entropy_backward_cpu<A: NdFloat>(
    dlogits: &mut Array2<A>,
    probs: &ArrayView2<A>,
    labels: &[u32],
) {
    let b = A::from(probs.nrows()).unwrap();
    for ((mut drow, prow), &label) in dlogits
        .axis_iter_mut(Axis(0))
        .zip(probs.axis_iter(Axis(0)))
        .zip(labels)
    {
        for (c, (d, &p)) in drow.iter_mut().zip(prow).enumerate() {
            let y = if c == label as usize {
                A::one()
            } else {
                A::zero()
            };
            *d += (p - y) / b;
        }
    }
}

/// The weight of each row's label: `w[label]`, or 1 for a label >= C
/// (whose loss is NaN anyway).
fn row_weights<A: NdFloat>(labels: &[u32], class_weights: &[A]) -> Vec<A> {
    labels
        .iter()
        .map(|&l| {
            class_weights
                .get(l as usize)
                .copied()
                .unwrap_or_else(A::one)
        })
        .collect()
}

/// As [`softmax_cross_entropy_forward_cpu`] with `loss[r]` multiplied by
/// `class_weights[labels[r]]`.
///
/// # Panics
/// If `class_weights` does not have one entry per class.
pub fn weighted_softmax_cross_entropy_forward_cpu<A: NdFloat>(
    logits: &ArrayView2<A>,
    labels: &[u32],
    class_weights: &[A],
) -> (Array2<A>, Array1<A>) {
    assert_eq!(class_weights.len(), logits.ncols(), "one weight per class");
    let (probs, mut loss) = softmax_cross_entropy_forward_cpu(logits, labels);
    for (l, w) in loss.iter_mut().zip(row_weights(labels, class_weights)) {
        *l = w * *l;
    }
    (probs, loss)
}

/// `dlogits += w[label] · (probs - onehot(labels)) / B`: the gradient of
/// the mean weighted loss.
///
/// # Panics
/// If `class_weights` does not have one entry per class.
pub fn weighted_softmax_cross_entropy_backward_cpu<A: NdFloat>(
    dlogits: &mut Array2<A>,
    probs: &ArrayView2<A>,
    labels: &[u32],
    class_weights: &[A],
) {
    assert_eq!(class_weights.len(), probs.ncols(), "one weight per class");
    let b = A::from(probs.nrows()).unwrap();
    let weights = row_weights(labels, class_weights);
    for (((mut drow, prow), &label), w) in dlogits
        .axis_iter_mut(Axis(0))
        .zip(probs.axis_iter(Axis(0)))
        .zip(labels)
        .zip(weights)
    {
        for (c, (d, &p)) in drow.iter_mut().zip(prow).enumerate() {
            let y = if c == label as usize {
                A::one()
            } else {
                A::zero()
            };
            *d += w * (p - y) / b;
        }
    }
}

// ---------------------------------------------------------------- GPU

static SHADER: Shader = crate::shader!("softmax_cross_entropy");
static SOFTMAX_FORWARD: KernelSpec = KernelSpec {
    shader: &SHADER,
    entry: "softmax_forward",
    bindings: &[Access::Read, Access::ReadWrite],
};
static FORWARD: KernelSpec = KernelSpec {
    shader: &SHADER,
    entry: "softmax_cross_entropy_forward",
    bindings: &[
        Access::Read,
        Access::Read,
        Access::ReadWrite,
        Access::ReadWrite,
    ],
};
static BACKWARD: KernelSpec = KernelSpec {
    shader: &SHADER,
    entry: "softmax_cross_entropy_backward",
    bindings: &[Access::ReadWrite, Access::Read, Access::Read],
};
static WEIGHTED_FORWARD: KernelSpec = KernelSpec {
    shader: &SHADER,
    entry: "weighted_softmax_cross_entropy_forward",
    // logits, labels, probs, loss, class weights
    bindings: &[
        Access::Read,
        Access::Read,
        Access::ReadWrite,
        Access::ReadWrite,
        Access::Read,
    ],
};
static WEIGHTED_BACKWARD: KernelSpec = KernelSpec {
    shader: &SHADER,
    entry: "weighted_softmax_cross_entropy_backward",
    // dlogits, probs, labels, class weights
    bindings: &[Access::ReadWrite, Access::Read, Access::Read, Access::Read],
};
/// Lanes per row in the forward kernels (one workgroup per row).
const ROW_WORKGROUP: u32 = 64;
/// Lanes per workgroup in the elementwise backward.
const WORKGROUP: u32 = 256;

/// Checks that `t` is an f32 [B, C] matrix and returns (B, C).
fn matrix(op: &str, name: &str, t: &GpuTensor) -> Result<(usize, usize)> {
    let &[b, c] = t.shape.as_slice() else {
        return Err(Error::shape(
            op,
            format!("{name} has shape {:?}, expected [batch, classes]", t.shape),
        ));
    };
    if t.dtype != DType::F32 {
        return Err(Error::shape(op, format!("{name} must hold f32 values")));
    }
    if t.numel() > u32::MAX as usize {
        return Err(Error::Unsupported {
            op: op.into(),
            what: format!("{name} of shape {:?}", t.shape),
            why: "indices are 32-bit".into(),
        });
    }
    Ok((b, c))
}

/// Checks labels: u32 with one value per row; and at least one class.
fn check_labels(op: &str, labels: &GpuTensor, logits_name: &str, b: usize, c: usize) -> Result<()> {
    if labels.dtype != DType::U32 {
        return Err(Error::shape(op, "labels must hold u32 class indices"));
    }
    expect_numel(op, "labels", &labels.shape, b)?;
    if c == 0 {
        return Err(Error::shape(
            op,
            format!("{logits_name} has no classes (shape [{b}, 0])"),
        ));
    }
    Ok(())
}

/// The forward grid: one workgroup per row.
fn row_grid(op: &str, b: usize) -> Result<Grid> {
    let lanes = b * ROW_WORKGROUP as usize;
    if lanes > u32::MAX as usize {
        return Err(Error::Unsupported {
            op: op.into(),
            what: format!("{b} rows"),
            why: "the grid is counted in 32 bits".into(),
        });
    }
    Ok(Grid::linear(lanes, ROW_WORKGROUP))
}

/// Checks the class weights: f32, one per class.
fn check_weights(op: &str, class_weights: &GpuTensor, c: usize) -> Result<()> {
    if class_weights.dtype != DType::F32 {
        return Err(Error::shape(op, "class weights must hold f32 values"));
    }
    if class_weights.shape != [c] {
        return Err(Error::shape(
            op,
            format!(
                "class weights have shape {:?}, expected [{c}] (one per class)",
                class_weights.shape
            ),
        ));
    }
    Ok(())
}

fn params(b: usize, c: usize) -> SoftmaxParams {
    SoftmaxParams {
        b: b as u32,
        c: c as u32,
        bad_label_loss: f32::NAN,
        _pad: 0,
    }
}

/// `probs = softmax(logits)` per row; both [B, C].
pub fn softmax_forward(
    ctx: &GpuContext,
    logits: &GpuTensor,
    probs: &GpuTensor,
) -> Result<Dispatch> {
    let op = SOFTMAX_FORWARD.entry;
    let (b, c) = matrix(op, "logits", logits)?;
    matrix(op, "probs", probs)?;
    expect_shape(op, "probs", &probs.shape, &logits.shape)?;
    ctx.prepare(
        &SOFTMAX_FORWARD,
        &[],
        &params(b, c),
        &[logits, probs],
        row_grid(op, b)?,
    )
}

/// `probs = softmax(logits)` and `loss[r] = -log probs[r, labels[r]]`
/// (stable; NaN for a label >= C). `logits`, `probs` [B, C]; `labels`
/// u32 [B]; `loss` [B].
pub fn softmax_cross_entropy_forward(
    ctx: &GpuContext,
    logits: &GpuTensor,
    labels: &GpuTensor,
    probs: &GpuTensor,
    loss: &GpuTensor,
) -> Result<Dispatch> {
    let op = FORWARD.entry;
    let (b, c) = matrix(op, "logits", logits)?;
    matrix(op, "probs", probs)?;
    expect_shape(op, "probs", &probs.shape, &logits.shape)?;
    check_labels(op, labels, "logits", b, c)?;
    if loss.dtype != DType::F32 {
        return Err(Error::shape(op, "loss must hold f32 values"));
    }
    expect_numel(op, "loss", &loss.shape, b)?;
    ctx.prepare(
        &FORWARD,
        &[],
        &params(b, c),
        &[logits, labels, probs, loss],
        row_grid(op, b)?,
    )
}

/// `dlogits += (probs - onehot(labels)) / B`, the gradient of the mean
/// loss; `probs` saved by [`softmax_cross_entropy_forward`].
pub fn softmax_cross_entropy_backward(
    ctx: &GpuContext,
    dlogits: &GpuTensor,
    probs: &GpuTensor,
    labels: &GpuTensor,
) -> Result<Dispatch> {
    let op = BACKWARD.entry;
    let (b, c) = matrix(op, "dlogits", dlogits)?;
    matrix(op, "probs", probs)?;
    expect_shape(op, "probs", &probs.shape, &dlogits.shape)?;
    check_labels(op, labels, "dlogits", b, c)?;
    ctx.prepare(
        &BACKWARD,
        &[],
        &params(b, c),
        &[dlogits, probs, labels],
        Grid::linear(b * c, WORKGROUP),
    )
}

/// As [`softmax_cross_entropy_forward`] with `loss[r]` multiplied by
/// `class_weights[labels[r]]`; `class_weights` f32 [C].
pub fn weighted_softmax_cross_entropy_forward(
    ctx: &GpuContext,
    logits: &GpuTensor,
    labels: &GpuTensor,
    class_weights: &GpuTensor,
    probs: &GpuTensor,
    loss: &GpuTensor,
) -> Result<Dispatch> {
    let op = WEIGHTED_FORWARD.entry;
    let (b, c) = matrix(op, "logits", logits)?;
    matrix(op, "probs", probs)?;
    expect_shape(op, "probs", &probs.shape, &logits.shape)?;
    check_labels(op, labels, "logits", b, c)?;
    check_weights(op, class_weights, c)?;
    if loss.dtype != DType::F32 {
        return Err(Error::shape(op, "loss must hold f32 values"));
    }
    expect_numel(op, "loss", &loss.shape, b)?;
    ctx.prepare(
        &WEIGHTED_FORWARD,
        &[],
        &params(b, c),
        &[logits, labels, probs, loss, class_weights],
        row_grid(op, b)?,
    )
}

/// `dlogits += class_weights[label] · (probs - onehot(labels)) / B`, the
/// gradient of the mean weighted loss; `probs` saved by
/// [`weighted_softmax_cross_entropy_forward`].
pub fn weighted_softmax_cross_entropy_backward(
    ctx: &GpuContext,
    dlogits: &GpuTensor,
    probs: &GpuTensor,
    labels: &GpuTensor,
    class_weights: &GpuTensor,
) -> Result<Dispatch> {
    let op = WEIGHTED_BACKWARD.entry;
    let (b, c) = matrix(op, "dlogits", dlogits)?;
    matrix(op, "probs", probs)?;
    expect_shape(op, "probs", &probs.shape, &dlogits.shape)?;
    check_labels(op, labels, "dlogits", b, c)?;
    check_weights(op, class_weights, c)?;
    ctx.prepare(
        &WEIGHTED_BACKWARD,
        &[],
        &params(b, c),
        &[dlogits, probs, labels, class_weights],
        Grid::linear(b * c, WORKGROUP),
    )
}
