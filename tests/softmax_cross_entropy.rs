//! Softmax and fused softmax cross-entropy against the CPU reference
//! (computed in f64) on awkward, seed and large class counts, with extreme
//! logits, out-of-range labels and accumulation; the backward against finite
//! differences of the mean loss. The class-weighted variants likewise, plus:
//! unit weights give the unweighted results bit for bit.

mod common;

use common::*;
// Test names equal the launcher names, so the launchers are called by path.
use crossmodal::ops::softmax_cross_entropy::{
    self as op, softmax_cross_entropy_backward_cpu, softmax_cross_entropy_forward_cpu,
    softmax_forward_cpu, weighted_softmax_cross_entropy_backward_cpu,
    weighted_softmax_cross_entropy_forward_cpu,
};
use crossmodal::DType;
use ndarray::{Array2, ArrayD, Ix2};

fn matrix(b: usize, c: usize, seed: u64, scale: f32) -> Array2<f32> {
    (random(&[b, c], seed) * scale)
        .into_dimensionality::<Ix2>()
        .unwrap()
}

fn f64_of(a: &Array2<f32>) -> Array2<f64> {
    a.mapv(|v| v as f64)
}

fn f32_vec<D: ndarray::Dimension>(a: &ndarray::Array<f64, D>) -> Vec<f32> {
    a.iter().map(|&v| v as f32).collect()
}

// exp and division differ by a few ulps between implementations (lavapipe
// is within 1e-6 of the f64 reference; the margin is for real GPUs), and the
// kernel sums a row in a different order than the reference.
const PROB_RTOL: f32 = 4e-6;
const PROB_ATOL: f32 = 1e-8;
const LOSS_RTOL: f32 = 4e-6;
const LOSS_ATOL: f32 = 1e-6;

fn check_softmax(b: usize, c: usize, scale: f32) {
    let Some(ctx) = gpu() else { return };
    let x = matrix(b, c, 1, scale);
    let want = softmax_forward_cpu(&f64_of(&x).view());
    let gx = ctx.upload_f32(x.as_slice().unwrap(), &[b, c]).unwrap();
    let gp = ctx.zeros(&[b, c], DType::F32).unwrap();
    ctx.run(&[&op::softmax_forward(ctx, &gx, &gp).unwrap()])
        .unwrap();
    assert_close(
        &format!("softmax_forward {b}x{c} (scale {scale})"),
        &ctx.read_f32(&gp).unwrap(),
        &f32_vec(&want),
        PROB_RTOL,
        PROB_ATOL,
    );
}

/// Runs the fused forward; returns (probs, loss) from the GPU.
fn gpu_forward(x: &Array2<f32>, labels: &[u32]) -> Option<(Vec<f32>, Vec<f32>)> {
    let ctx = gpu()?;
    let (b, c) = x.dim();
    let gx = ctx.upload_f32(x.as_slice().unwrap(), &[b, c]).unwrap();
    let gl = ctx.upload_u32(labels, &[b]).unwrap();
    let gp = ctx.zeros(&[b, c], DType::F32).unwrap();
    let gloss = ctx.zeros(&[b], DType::F32).unwrap();
    ctx.run(&[&op::softmax_cross_entropy_forward(ctx, &gx, &gl, &gp, &gloss).unwrap()])
        .unwrap();
    Some((ctx.read_f32(&gp).unwrap(), ctx.read_f32(&gloss).unwrap()))
}

fn check_forward(b: usize, c: usize, scale: f32) {
    let x = matrix(b, c, 2, scale);
    let labels = random_u32(b, 0, c as u32, 3);
    let (want_p, want_l) = softmax_cross_entropy_forward_cpu(&f64_of(&x).view(), &labels);
    let Some((p, l)) = gpu_forward(&x, &labels) else {
        return;
    };
    let what = format!("softmax_cross_entropy_forward {b}x{c} (scale {scale})");
    assert_close(
        &format!("{what} probs"),
        &p,
        &f32_vec(&want_p),
        PROB_RTOL,
        PROB_ATOL,
    );
    assert_close(
        &format!("{what} loss"),
        &l,
        &f32_vec(&want_l),
        LOSS_RTOL,
        LOSS_ATOL,
    );
}

fn check_backward(b: usize, c: usize) {
    let Some(ctx) = gpu() else { return };
    let x = matrix(b, c, 4, 3.0);
    let labels = random_u32(b, 0, c as u32, 5);
    // Saved probs as the forward kernel would leave them (f32).
    let probs = softmax_forward_cpu(&x.view());
    // Accumulation: dlogits starts non-zero.
    let d0 = matrix(b, c, 6, 1.0);
    let mut want = f64_of(&d0);
    softmax_cross_entropy_backward_cpu(&mut want, &f64_of(&probs).view(), &labels);
    let gd = ctx.upload_f32(d0.as_slice().unwrap(), &[b, c]).unwrap();
    let gp = ctx.upload_f32(probs.as_slice().unwrap(), &[b, c]).unwrap();
    let gl = ctx.upload_u32(&labels, &[b]).unwrap();
    ctx.run(&[&op::softmax_cross_entropy_backward(ctx, &gd, &gp, &gl).unwrap()])
        .unwrap();
    // One subtraction, one division and one addition per element.
    assert_close(
        &format!("softmax_cross_entropy_backward {b}x{c}"),
        &ctx.read_f32(&gd).unwrap(),
        &f32_vec(&want),
        1e-6,
        1e-7,
    );
}

#[test]
fn softmax_forward() {
    // 37 rows, 5 classes; one class; many classes (the row reduction).
    check_softmax(37, 5, 3.0);
    check_softmax(37, 1, 3.0);
    check_softmax(37, 1000, 3.0);
    check_softmax(32, 2, 3.0);
}

#[test]
fn softmax_cross_entropy_forward() {
    check_forward(37, 5, 3.0);
    check_forward(37, 1, 3.0);
    check_forward(37, 1000, 3.0);
    check_forward(3, 130, 3.0);
}

#[test]
fn softmax_cross_entropy_backward() {
    check_backward(37, 5);
    check_backward(37, 1);
    check_backward(37, 1000);
}

/// The seed model's head: Dense(2) -> softmax, batch 32.
#[test]
fn softmax_cross_entropy_seed_shape() {
    check_softmax(32, 2, 3.0);
    check_forward(32, 2, 3.0);
    check_backward(32, 2);
}

/// Logits of ±1e4 overflow a naive exp; the stable form stays finite and
/// matches the f64 reference (assert_close also rejects non-finite values).
#[test]
fn softmax_cross_entropy_is_stable() {
    check_softmax(37, 5, 1e4);
    check_softmax(37, 1000, 1e4);
    check_forward(37, 5, 1e4);
    check_forward(32, 2, 1e4);
    check_forward(37, 1000, 1e4);
    // All logits equal and huge: uniform probabilities, loss log C.
    let x = Array2::from_elem((3, 4), 1e4f32);
    if let Some((p, l)) = gpu_forward(&x, &[0, 1, 3]) {
        assert_close("uniform probs", &p, &[0.25; 12], 1e-6, 0.0);
        assert_close("uniform loss", &l, &[4f32.ln(); 3], 1e-6, 0.0);
    }
}

/// A label >= C is not read through: NaN loss for that row, the others
/// unaffected, and the backward row is probs / B.
#[test]
fn softmax_cross_entropy_bad_label() {
    let Some(ctx) = gpu() else { return };
    let (b, c) = (6, 5);
    let x = matrix(b, c, 7, 3.0);
    let labels = [0, 4, 5, u32::MAX, 2, 1];
    let (want_p, want_l) = softmax_cross_entropy_forward_cpu(&f64_of(&x).view(), &labels);
    let (p, l) = gpu_forward(&x, &labels).unwrap();
    assert_close("probs", &p, &f32_vec(&want_p), PROB_RTOL, PROB_ATOL);
    for r in 0..b {
        if labels[r] < c as u32 {
            assert_close(
                "loss",
                &l[r..r + 1],
                &[want_l[r] as f32],
                LOSS_RTOL,
                LOSS_ATOL,
            );
        } else {
            assert!(
                l[r].is_nan(),
                "row {r}: label {} gives loss {}",
                labels[r],
                l[r]
            );
        }
    }
    let probs = softmax_forward_cpu(&x.view());
    let mut want = Array2::<f64>::zeros((b, c));
    softmax_cross_entropy_backward_cpu(&mut want, &f64_of(&probs).view(), &labels);
    let gd = ctx.zeros(&[b, c], DType::F32).unwrap();
    let gp = ctx.upload_f32(probs.as_slice().unwrap(), &[b, c]).unwrap();
    let gl = ctx.upload_u32(&labels, &[b]).unwrap();
    ctx.run(&[&op::softmax_cross_entropy_backward(ctx, &gd, &gp, &gl).unwrap()])
        .unwrap();
    assert_close(
        "backward",
        &ctx.read_f32(&gd).unwrap(),
        &f32_vec(&want),
        1e-6,
        1e-7,
    );
}

#[test]
fn softmax_cross_entropy_rejects_bad_shapes() {
    let Some(ctx) = gpu() else { return };
    let x = ctx.zeros(&[4, 3], DType::F32).unwrap();
    let p = ctx.zeros(&[4, 3], DType::F32).unwrap();
    let p_wrong = ctx.zeros(&[3, 4], DType::F32).unwrap();
    let labels = ctx.zeros(&[4], DType::U32).unwrap();
    let labels_short = ctx.zeros(&[3], DType::U32).unwrap();
    let labels_f32 = ctx.zeros(&[4], DType::F32).unwrap();
    let loss = ctx.zeros(&[4], DType::F32).unwrap();
    let empty = ctx.zeros(&[4, 0], DType::F32).unwrap();
    assert!(op::softmax_cross_entropy_forward(ctx, &x, &labels, &p, &loss).is_ok());
    let e = op::softmax_cross_entropy_forward(ctx, &x, &labels_short, &p, &loss).unwrap_err();
    assert!(
        e.to_string().contains("softmax_cross_entropy_forward"),
        "{e}"
    );
    assert!(op::softmax_cross_entropy_forward(ctx, &x, &labels_f32, &p, &loss).is_err());
    assert!(op::softmax_cross_entropy_forward(ctx, &x, &labels, &p_wrong, &loss).is_err());
    assert!(op::softmax_cross_entropy_forward(ctx, &x, &labels, &p, &labels).is_err());
    assert!(op::softmax_cross_entropy_forward(ctx, &empty, &labels, &empty, &loss).is_err());
    assert!(op::softmax_cross_entropy_backward(ctx, &x, &p, &labels_short).is_err());
    assert!(op::softmax_forward(ctx, &x, &p_wrong).is_err());
}

#[test]
fn softmax_cross_entropy_backward_matches_finite_differences() {
    // B = 3 rows, C = 4 classes: a transposed index would fail.
    let (b, c) = (3, 4);
    let x = to_f64(&random(&[b, c], 8)) * 2.0;
    let labels = [2, 0, 3];
    let mean_loss = |x: &ArrayD<f64>| {
        let x = x.view().into_dimensionality::<Ix2>().unwrap();
        softmax_cross_entropy_forward_cpu(&x, &labels)
            .1
            .mean()
            .unwrap()
    };
    let x2 = x.view().into_dimensionality::<Ix2>().unwrap();
    let probs = softmax_forward_cpu(&x2);
    let mut grad = Array2::<f64>::zeros((b, c));
    softmax_cross_entropy_backward_cpu(&mut grad, &probs.view(), &labels);
    let fd = finite_difference(&x, 1e-6, mean_loss);
    assert_close_f64("mean loss gradient", &grad.into_dyn(), &fd, 1e-6, 1e-9);
}

// ---------------------------------------------------------------- class weights

/// Positive weights, distinct per class (0.25 .. 2.25).
fn class_weights(c: usize, seed: u64) -> Vec<f32> {
    random(&[c], seed).iter().map(|&v| 1.25 + v).collect()
}

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// Runs the weighted forward; returns (probs, loss) from the GPU.
fn gpu_weighted_forward(
    x: &Array2<f32>,
    labels: &[u32],
    w: &[f32],
) -> Option<(Vec<f32>, Vec<f32>)> {
    let ctx = gpu()?;
    let (b, c) = x.dim();
    let gx = ctx.upload_f32(x.as_slice().unwrap(), &[b, c]).unwrap();
    let gl = ctx.upload_u32(labels, &[b]).unwrap();
    let gw = ctx.upload_f32(w, &[c]).unwrap();
    let gp = ctx.zeros(&[b, c], DType::F32).unwrap();
    let gloss = ctx.zeros(&[b], DType::F32).unwrap();
    let d = op::weighted_softmax_cross_entropy_forward(ctx, &gx, &gl, &gw, &gp, &gloss).unwrap();
    ctx.run(&[&d]).unwrap();
    Some((ctx.read_f32(&gp).unwrap(), ctx.read_f32(&gloss).unwrap()))
}

/// Runs the weighted backward from `d0`; returns dlogits.
fn gpu_weighted_backward(
    d0: &Array2<f32>,
    probs: &Array2<f32>,
    labels: &[u32],
    w: &[f32],
) -> Option<Vec<f32>> {
    let ctx = gpu()?;
    let (b, c) = d0.dim();
    let gd = ctx.upload_f32(d0.as_slice().unwrap(), &[b, c]).unwrap();
    let gp = ctx.upload_f32(probs.as_slice().unwrap(), &[b, c]).unwrap();
    let gl = ctx.upload_u32(labels, &[b]).unwrap();
    let gw = ctx.upload_f32(w, &[c]).unwrap();
    let d = op::weighted_softmax_cross_entropy_backward(ctx, &gd, &gp, &gl, &gw).unwrap();
    ctx.run(&[&d]).unwrap();
    Some(ctx.read_f32(&gd).unwrap())
}

fn check_weighted_forward(b: usize, c: usize, scale: f32) {
    let x = matrix(b, c, 12, scale);
    let labels = random_u32(b, 0, c as u32, 13);
    let w = class_weights(c, 14);
    let (want_p, want_l) =
        weighted_softmax_cross_entropy_forward_cpu(&f64_of(&x).view(), &labels, &f64s(&w));
    let Some((p, l)) = gpu_weighted_forward(&x, &labels, &w) else {
        return;
    };
    let what = format!("weighted_softmax_cross_entropy_forward {b}x{c} (scale {scale})");
    assert_close(
        &format!("{what} probs"),
        &p,
        &f32_vec(&want_p),
        PROB_RTOL,
        PROB_ATOL,
    );
    // One more rounding (the weight product) than the unweighted loss.
    assert_close(
        &format!("{what} loss"),
        &l,
        &f32_vec(&want_l),
        LOSS_RTOL,
        LOSS_ATOL,
    );
}

fn check_weighted_backward(b: usize, c: usize) {
    let x = matrix(b, c, 15, 3.0);
    let labels = random_u32(b, 0, c as u32, 16);
    let w = class_weights(c, 17);
    let probs = softmax_forward_cpu(&x.view());
    // Accumulation: dlogits starts non-zero.
    let d0 = matrix(b, c, 18, 1.0);
    let mut want = f64_of(&d0);
    weighted_softmax_cross_entropy_backward_cpu(
        &mut want,
        &f64_of(&probs).view(),
        &labels,
        &f64s(&w),
    );
    let Some(got) = gpu_weighted_backward(&d0, &probs, &labels, &w) else {
        return;
    };
    // One subtraction, multiplication, division and addition per element.
    assert_close(
        &format!("weighted_softmax_cross_entropy_backward {b}x{c}"),
        &got,
        &f32_vec(&want),
        1e-6,
        1e-7,
    );
}

#[test]
fn weighted_softmax_cross_entropy_forward() {
    check_weighted_forward(37, 5, 3.0);
    check_weighted_forward(37, 1, 3.0);
    check_weighted_forward(37, 1000, 3.0);
    check_weighted_forward(32, 2, 3.0);
    check_weighted_forward(37, 5, 1e4);
}

#[test]
fn weighted_softmax_cross_entropy_backward() {
    check_weighted_backward(37, 5);
    check_weighted_backward(37, 1);
    check_weighted_backward(37, 1000);
    check_weighted_backward(32, 2);
}

/// Weights all 1.0 give exactly the unweighted probabilities, losses and
/// gradients, on the GPU and in the CPU reference.
#[test]
fn weighted_softmax_cross_entropy_with_unit_weights_is_bit_identical() {
    for (b, c) in [(37, 5), (32, 2), (3, 130)] {
        let x = matrix(b, c, 19, 3.0);
        let labels = random_u32(b, 0, c as u32, 20);
        let ones = vec![1.0f32; c];
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        // CPU reference, f32.
        let (p0, l0) = softmax_cross_entropy_forward_cpu(&x.view(), &labels);
        let (p1, l1) = weighted_softmax_cross_entropy_forward_cpu(&x.view(), &labels, &ones);
        assert_eq!(bits(p0.as_slice().unwrap()), bits(p1.as_slice().unwrap()));
        assert_eq!(bits(l0.as_slice().unwrap()), bits(l1.as_slice().unwrap()));
        let d0 = matrix(b, c, 21, 1.0);
        let (mut g0, mut g1) = (d0.clone(), d0.clone());
        softmax_cross_entropy_backward_cpu(&mut g0, &p0.view(), &labels);
        weighted_softmax_cross_entropy_backward_cpu(&mut g1, &p0.view(), &labels, &ones);
        assert_eq!(bits(g0.as_slice().unwrap()), bits(g1.as_slice().unwrap()));
        // GPU.
        let Some((gp0, gl0)) = gpu_forward(&x, &labels) else {
            continue;
        };
        let (gp1, gl1) = gpu_weighted_forward(&x, &labels, &ones).unwrap();
        assert_eq!(bits(&gp0), bits(&gp1), "{b}x{c} probs");
        assert_eq!(bits(&gl0), bits(&gl1), "{b}x{c} loss");
        let ctx = gpu().unwrap();
        let gd = ctx.upload_f32(d0.as_slice().unwrap(), &[b, c]).unwrap();
        let gp = ctx.upload_f32(p0.as_slice().unwrap(), &[b, c]).unwrap();
        let gl = ctx.upload_u32(&labels, &[b]).unwrap();
        ctx.run(&[&op::softmax_cross_entropy_backward(ctx, &gd, &gp, &gl).unwrap()])
            .unwrap();
        let unweighted = ctx.read_f32(&gd).unwrap();
        let weighted = gpu_weighted_backward(&d0, &p0, &labels, &ones).unwrap();
        assert_eq!(bits(&unweighted), bits(&weighted), "{b}x{c} gradient");
    }
}

/// A label >= C reads no weight: NaN loss, backward row probs / B; the
/// other rows weighted as usual.
#[test]
fn weighted_softmax_cross_entropy_bad_label() {
    let (b, c) = (6, 5);
    let x = matrix(b, c, 22, 3.0);
    let labels = [0, 4, 5, u32::MAX, 2, 1];
    let w = class_weights(c, 23);
    let (_, want_l) =
        weighted_softmax_cross_entropy_forward_cpu(&f64_of(&x).view(), &labels, &f64s(&w));
    let Some((_, l)) = gpu_weighted_forward(&x, &labels, &w) else {
        return;
    };
    for r in 0..b {
        if labels[r] < c as u32 {
            assert_close(
                "loss",
                &l[r..r + 1],
                &[want_l[r] as f32],
                LOSS_RTOL,
                LOSS_ATOL,
            );
        } else {
            assert!(
                l[r].is_nan(),
                "row {r}: label {} gives loss {}",
                labels[r],
                l[r]
            );
        }
    }
    let probs = softmax_forward_cpu(&x.view());
    let mut want = Array2::<f64>::zeros((b, c));
    weighted_softmax_cross_entropy_backward_cpu(
        &mut want,
        &f64_of(&probs).view(),
        &labels,
        &f64s(&w),
    );
    let got = gpu_weighted_backward(&Array2::zeros((b, c)), &probs, &labels, &w).unwrap();
    assert_close("backward", &got, &f32_vec(&want), 1e-6, 1e-7);
    for r in [2, 3] {
        let row: Vec<f64> = probs.row(r).iter().map(|&p| p as f64 / b as f64).collect();
        assert_close(
            "bad-label row",
            &got[r * c..(r + 1) * c],
            &row.iter().map(|&v| v as f32).collect::<Vec<_>>(),
            1e-6,
            1e-7,
        );
    }
}

#[test]
fn weighted_softmax_cross_entropy_rejects_bad_shapes() {
    let Some(ctx) = gpu() else { return };
    let x = ctx.zeros(&[4, 3], DType::F32).unwrap();
    let p = ctx.zeros(&[4, 3], DType::F32).unwrap();
    let labels = ctx.zeros(&[4], DType::U32).unwrap();
    let loss = ctx.zeros(&[4], DType::F32).unwrap();
    let w = ctx.zeros(&[3], DType::F32).unwrap();
    let w_short = ctx.zeros(&[2], DType::F32).unwrap();
    let w_u32 = ctx.zeros(&[3], DType::U32).unwrap();
    let fwd = |w| op::weighted_softmax_cross_entropy_forward(ctx, &x, &labels, w, &p, &loss);
    assert!(fwd(&w).is_ok());
    let e = fwd(&w_short).unwrap_err().to_string();
    assert!(
        e.contains("weighted_softmax_cross_entropy_forward")
            && e.contains("[2]")
            && e.contains("[3]"),
        "{e}"
    );
    assert!(fwd(&w_u32).is_err());
    let bwd = |w| op::weighted_softmax_cross_entropy_backward(ctx, &x, &p, &labels, w);
    assert!(bwd(&w).is_ok());
    let e = bwd(&w_short).unwrap_err().to_string();
    assert!(e.contains("weighted_softmax_cross_entropy_backward"), "{e}");
    assert!(bwd(&w_u32).is_err());
}

/// The gradient of the weighted batch mean `(1/B) Σ w[y_r] CE_r` (Keras
/// sum-over-batch-size: not divided by the sum of the weights).
#[test]
fn weighted_softmax_cross_entropy_backward_matches_finite_differences() {
    let (b, c) = (3, 4);
    let x = to_f64(&random(&[b, c], 24)) * 2.0;
    let labels = [2, 0, 2];
    let w = [0.5, 2.0, 1.5, 0.25];
    let mean_loss = |x: &ArrayD<f64>| {
        let x = x.view().into_dimensionality::<Ix2>().unwrap();
        let rows = weighted_softmax_cross_entropy_forward_cpu(&x, &labels, &w).1;
        rows.sum() / b as f64
    };
    let x2 = x.view().into_dimensionality::<Ix2>().unwrap();
    let probs = softmax_forward_cpu(&x2);
    let mut grad = Array2::<f64>::zeros((b, c));
    weighted_softmax_cross_entropy_backward_cpu(&mut grad, &probs.view(), &labels, &w);
    let fd = finite_difference(&x, 1e-6, mean_loss);
    assert_close_f64(
        "weighted mean loss gradient",
        &grad.into_dyn(),
        &fd,
        1e-6,
        1e-9,
    );
    // Not normalised by the weights: the weighted loss is Σ w CE / B.
    let (_, ce) = softmax_cross_entropy_forward_cpu(&x2, &labels);
    let want: f64 = ce
        .iter()
        .zip(labels)
        .map(|(l, y)| w[y as usize] * l)
        .sum::<f64>()
        / b as f64;
    assert!((mean_loss(&x) - want).abs() < 1e-12);
}
