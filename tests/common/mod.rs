//! Helpers shared by the kernel tests: the GPU context (skip without an
//! adapter, fail when `CI` is set), seeded random tensors, closeness checks
//! with stated tolerances, and central finite differences in f64.
#![allow(dead_code)]

use std::sync::OnceLock;

use crossmodal::GpuContext;
use ndarray::{ArrayD, IxDyn};
use rand::{rngs::StdRng, Rng, SeedableRng};

/// The shared GPU context, or `None` (with a visible message) when no adapter
/// exists. Under `CI` a missing adapter fails the test instead.
pub fn gpu() -> Option<&'static GpuContext> {
    static CTX: OnceLock<Option<GpuContext>> = OnceLock::new();
    let ctx = CTX.get_or_init(|| match GpuContext::from_env() {
        Ok(ctx) => {
            eprintln!("GPU tests run on {}", ctx.describe());
            Some(ctx)
        }
        Err(e) => {
            if std::env::var_os("CI").is_some() {
                panic!("CI is set and no GPU adapter is available: {e}");
            }
            eprintln!("SKIPPING GPU test: {e}");
            None
        }
    });
    ctx.as_ref()
}

/// A second context on the same adapter, opened without subgroup
/// operations (`GpuOptions::without_subgroups`): the kernels' per-lane-load
/// path. `None` where [`gpu`] is.
pub fn gpu_without_subgroups() -> Option<&'static GpuContext> {
    static CTX: OnceLock<Option<GpuContext>> = OnceLock::new();
    gpu()?;
    CTX.get_or_init(|| {
        let options = crossmodal::gpu::GpuOptions {
            without_subgroups: true,
            ..crossmodal::gpu::GpuOptions::from_env().expect("GPU options from the environment")
        };
        Some(GpuContext::new(&options).expect("the adapter opens without subgroups"))
    })
    .as_ref()
}

/// Uniform values in [-1, 1) from a fixed seed.
pub fn random(shape: &[usize], seed: u64) -> ArrayD<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    ArrayD::from_shape_fn(IxDyn(shape), |_| rng.random_range(-1.0f32..1.0))
}

/// Uniform integers in [lo, hi) from a fixed seed.
pub fn random_u32(n: usize, lo: u32, hi: u32, seed: u64) -> Vec<u32> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(lo..hi)).collect()
}

pub fn to_f64(a: &ArrayD<f32>) -> ArrayD<f64> {
    a.mapv(|v| v as f64)
}

pub fn to_f32(a: &ArrayD<f64>) -> ArrayD<f32> {
    a.mapv(|v| v as f32)
}

/// Asserts |got - want| <= atol + rtol * |want| elementwise, naming the
/// first offending index.
pub fn assert_close(what: &str, got: &[f32], want: &[f32], rtol: f32, atol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length differs");
    let mut worst = (0usize, 0f32);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(g.is_finite(), "{what}: non-finite value {g} at {i}");
        let excess = (g - w).abs() - (atol + rtol * w.abs());
        if excess > worst.1 {
            worst = (i, excess);
        }
    }
    let i = worst.0;
    assert!(
        worst.1 <= 0.0,
        "{what}: element {i} is {} but the reference is {} (rtol {rtol}, atol {atol})",
        got[i],
        want[i]
    );
}

/// The same check in f64 (gradient checks).
pub fn assert_close_f64(what: &str, got: &ArrayD<f64>, want: &ArrayD<f64>, rtol: f64, atol: f64) {
    assert_eq!(got.shape(), want.shape(), "{what}: shape differs");
    for (i, (&g, &w)) in got.iter().zip(want.iter()).enumerate() {
        assert!(
            (g - w).abs() <= atol + rtol * w.abs(),
            "{what}: element {i} is {g} but finite differences give {w} (rtol {rtol}, atol {atol})"
        );
    }
}

/// Central finite differences of a scalar function of `x`, in f64.
pub fn finite_difference(
    x: &ArrayD<f64>,
    eps: f64,
    mut f: impl FnMut(&ArrayD<f64>) -> f64,
) -> ArrayD<f64> {
    let mut probe = x.clone();
    let mut grad = ArrayD::zeros(x.raw_dim());
    for i in 0..x.len() {
        let orig = probe.as_slice().unwrap()[i];
        probe.as_slice_mut().unwrap()[i] = orig + eps;
        let plus = f(&probe);
        probe.as_slice_mut().unwrap()[i] = orig - eps;
        let minus = f(&probe);
        probe.as_slice_mut().unwrap()[i] = orig;
        grad.as_slice_mut().unwrap()[i] = (plus - minus) / (2.0 * eps);
    }
    grad
}

/// `sum(w * y)`: the scalar loss whose gradient with respect to y is `w`,
/// used to drive backward passes with a random incoming gradient.
pub fn weighted_sum(y: &ArrayD<f64>, w: &ArrayD<f64>) -> f64 {
    (y * w).sum()
}

pub mod recurrent;

/// Experiments at test size, scratch folders.
pub mod experiments;
