//! Bias add and bias gradient against the CPU reference (awkward and seed
//! shapes, accumulation, one- and two-level reductions) and the gradient
//! against finite differences.

mod common;

use common::*;
use crossmodal::gpu::Dispatch;
// Launchers by path: the tests carry the launchers' names.
use crossmodal::ops::bias::{self as op, bias_add_cpu, bias_backward_cpu};
use ndarray::{Array1, ArrayD, Ix1};

fn run_all(ctx: &crossmodal::GpuContext, ds: &[Dispatch]) {
    let refs: Vec<&Dispatch> = ds.iter().collect();
    ctx.run(&refs).unwrap();
}

fn check_add(shape: &[usize]) {
    let Some(ctx) = gpu() else { return };
    let cols = *shape.last().unwrap();
    let y = random(shape, 1);
    let b = random(&[cols], 2).into_dimensionality::<Ix1>().unwrap();
    let mut want = y.clone();
    bias_add_cpu(&mut want, &b.view());

    let gy = ctx.upload_f32(y.as_slice().unwrap(), shape).unwrap();
    let gb = ctx.upload_f32(b.as_slice().unwrap(), &[cols]).unwrap();
    ctx.run(&[&op::bias_add(ctx, &gy, &gb).unwrap()]).unwrap();
    // One f32 addition per element: exactly the CPU's.
    assert_close(
        &format!("bias_add {shape:?}"),
        &ctx.read_f32(&gy).unwrap(),
        want.as_slice().unwrap(),
        0.0,
        0.0,
    );
}

/// Returns how many dispatches the launcher chose, so tests can check that
/// both the one- and two-level paths ran.
fn check_backward(shape: &[usize]) -> usize {
    let Some(ctx) = gpu() else { return 0 };
    let cols = *shape.last().unwrap();
    let rows = shape.iter().product::<usize>() / cols;
    let dy = random(shape, 3);
    // Accumulation: db starts non-zero.
    let db0 = random(&[cols], 4).into_dimensionality::<Ix1>().unwrap();
    // Reference in f64, so the tolerance measures the kernel's rounding only.
    let mut want = db0.mapv(|v| v as f64);
    bias_backward_cpu(&mut want, &to_f64(&dy).view());
    let want: Vec<f32> = want.iter().map(|&v| v as f32).collect();

    let gdb = ctx.upload_f32(db0.as_slice().unwrap(), &[cols]).unwrap();
    let gdy = ctx.upload_f32(dy.as_slice().unwrap(), shape).unwrap();
    let ds = op::bias_backward(ctx, &gdb, &gdy).unwrap();
    run_all(ctx, &ds);
    // f32 sums of `rows` values in [-1, 1]: error grows with the number of
    // terms, so atol scales with rows (|sum| itself may cancel to ~0).
    assert_close(
        &format!("bias_backward {shape:?}"),
        &ctx.read_f32(&gdb).unwrap(),
        &want,
        1e-5,
        1e-7 * rows as f32,
    );
    ds.len()
}

#[test]
fn bias_add() {
    // 37×53: neither dimension a multiple of the workgroup or column tile.
    check_add(&[37, 53]);
    check_add(&[3, 5, 7]);
}

#[test]
fn bias_add_seed_shapes() {
    check_add(&[32, 2]); // Dense(2)
    check_add(&[32, 256]); // LSTM gates 4×64
    check_add(&[32, 26, 26, 32]); // Conv2D(32) output, NHWC
}

#[test]
fn bias_backward() {
    assert_eq!(check_backward(&[37, 53]), 1);
    check_backward(&[1, 1]);
    check_backward(&[5, 3]);
    check_backward(&[300, 7]);
    // Column counts that are multiples of 4 run the vec4 kernel.
    assert_eq!(check_backward(&[37, 52]), 1);
    check_backward(&[300, 8]);
    assert_eq!(check_backward(&[70000, 36]), 2);
}

#[test]
fn bias_backward_seed_shapes() {
    let Some(_) = gpu() else { return };
    assert_eq!(check_backward(&[32, 2]), 1); // Dense(2)
    check_backward(&[3200, 256]); // LSTM gates over 100 steps × 32
                                  // Conv2D bias: 21632 rows, reduced in two levels.
    assert_eq!(check_backward(&[32, 26, 26, 32]), 2);
}

#[test]
fn bias_backward_three_levels() {
    let Some(_) = gpu() else { return };
    // 256 rows per workgroup at 32+ columns: 70000 rows need 274 chunks,
    // then 2, then 1.
    assert_eq!(check_backward(&[70000, 33]), 3);
}

#[test]
fn bias_backward_is_deterministic() {
    let Some(ctx) = gpu() else { return };
    let shape = [32, 26, 26, 32];
    let dy = random(&shape, 5);
    let gdy = ctx.upload_f32(dy.as_slice().unwrap(), &shape).unwrap();
    let mut results = Vec::new();
    for _ in 0..2 {
        let gdb = ctx.zeros(&[32], crossmodal::DType::F32).unwrap();
        run_all(ctx, &op::bias_backward(ctx, &gdb, &gdy).unwrap());
        results.push(ctx.read_f32(&gdb).unwrap());
    }
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&results[0]), bits(&results[1]));
}

#[test]
fn bias_rejects_mismatched_shapes() {
    let Some(ctx) = gpu() else { return };
    let y = ctx.zeros(&[4, 5], crossmodal::DType::F32).unwrap();
    let b = ctx.zeros(&[4], crossmodal::DType::F32).unwrap();
    let err = op::bias_add(ctx, &y, &b).unwrap_err().to_string();
    assert!(err.contains("bias_add") && err.contains("[4, 5]"), "{err}");
    let err = op::bias_backward(ctx, &b, &y).unwrap_err().to_string();
    assert!(err.contains("bias_backward"), "{err}");
}

#[test]
fn bias_backward_matches_finite_differences() {
    // y = x + b over [3, 4, 5]; loss = Σ w·y; d loss / d b vs central differences.
    let shape = [3, 4, 5];
    let x = to_f64(&random(&shape, 6));
    let w = to_f64(&random(&shape, 7));
    let b = to_f64(&random(&[5], 8));
    let loss = |b: &ArrayD<f64>| {
        let mut y = x.clone();
        bias_add_cpu(&mut y, &b.view().into_dimensionality::<Ix1>().unwrap());
        weighted_sum(&y, &w)
    };
    let fd = finite_difference(&b, 1e-6, loss);
    let mut db = Array1::<f64>::zeros(5);
    bias_backward_cpu(&mut db, &w.view());
    assert_close_f64("bias gradient", &db.into_dyn(), &fd, 1e-6, 1e-8);
}
