//! Concat (last axis) and its backward (split) against the CPU reference on
//! awkward and seed shapes, with accumulation, and the backward against
//! finite differences.

mod common;

use common::*;
// Test names equal the launcher names, so the launchers are called by path.
use crossmodal::ops::concat::{self as op, concat_backward_cpu, concat_forward_cpu};
use crossmodal::DType;
use ndarray::ArrayD;

fn check_forward(shapes: &[Vec<usize>]) {
    let Some(ctx) = gpu() else { return };
    let xs: Vec<ArrayD<f32>> = shapes
        .iter()
        .enumerate()
        .map(|(i, s)| random(s, 1 + i as u64))
        .collect();
    let views: Vec<_> = xs.iter().map(|x| x.view()).collect();
    let want = concat_forward_cpu(&views);
    let gxs: Vec<_> = xs
        .iter()
        .map(|x| ctx.upload_f32(x.as_slice().unwrap(), x.shape()).unwrap())
        .collect();
    // Start from garbage: every output element must be written.
    let gout = ctx
        .upload_f32(random(want.shape(), 99).as_slice().unwrap(), want.shape())
        .unwrap();
    let refs: Vec<_> = gxs.iter().collect();
    let ds = op::concat_forward_all(ctx, &refs, &gout).unwrap();
    ctx.run(&ds.iter().collect::<Vec<_>>()).unwrap();
    // A copy: exact.
    assert_close(
        "concat_forward",
        &ctx.read_f32(&gout).unwrap(),
        want.as_slice().unwrap(),
        0.0,
        0.0,
    );
}

fn check_backward(shapes: &[Vec<usize>]) {
    let Some(ctx) = gpu() else { return };
    let mut total = shapes[0].clone();
    *total.last_mut().unwrap() = shapes.iter().map(|s| *s.last().unwrap()).sum();
    let dy = random(&total, 10);
    // Accumulation: the gradients start non-zero.
    let dx0: Vec<ArrayD<f32>> = shapes
        .iter()
        .enumerate()
        .map(|(i, s)| random(s, 20 + i as u64))
        .collect();
    let mut want = dx0.clone();
    concat_backward_cpu(&mut want.iter_mut().collect::<Vec<_>>(), &dy.view());
    let gdy = ctx.upload_f32(dy.as_slice().unwrap(), &total).unwrap();
    let gdx: Vec<_> = dx0
        .iter()
        .map(|x| ctx.upload_f32(x.as_slice().unwrap(), x.shape()).unwrap())
        .collect();
    let refs: Vec<_> = gdx.iter().collect();
    let ds = op::concat_backward_all(ctx, &refs, &gdy).unwrap();
    ctx.run(&ds.iter().collect::<Vec<_>>()).unwrap();
    for (i, (g, w)) in gdx.iter().zip(&want).enumerate() {
        // One f32 addition per element, as in the reference: exact.
        assert_close(
            &format!("concat_backward input {i}"),
            &ctx.read_f32(g).unwrap(),
            w.as_slice().unwrap(),
            0.0,
            0.0,
        );
    }
}

/// B=5 rows, widths 3, 17, 1: nothing a multiple of the workgroup.
fn awkward() -> Vec<Vec<usize>> {
    vec![vec![5, 3], vec![5, 17], vec![5, 1]]
}

/// The seed model's fusion: LSTM(64) and the flattened image features.
fn seed() -> Vec<Vec<usize>> {
    vec![vec![32, 64], vec![32, 5408]]
}

#[test]
fn concat_forward() {
    check_forward(&awkward());
    // leading axes beyond one: [2, 3, F]
    check_forward(&[vec![2, 3, 4], vec![2, 3, 9]]);
}

#[test]
fn concat_backward() {
    check_backward(&awkward());
    check_backward(&[vec![2, 3, 4], vec![2, 3, 9]]);
}

/// Blocks whose width, offset and total are multiples of 4 run the vec4
/// kernels: all of them (7 rows, widths 4, 12, 8), and a mix where only the
/// first block qualifies (widths 4, 3, 5; total 12).
#[test]
fn concat_vec4_blocks() {
    for shapes in [
        vec![vec![7, 4], vec![7, 12], vec![7, 8]],
        vec![vec![7, 4], vec![7, 3], vec![7, 5]],
    ] {
        check_forward(&shapes);
        check_backward(&shapes);
    }
}

#[test]
fn concat_seed_shape() {
    check_forward(&seed());
    check_backward(&seed());
}

#[test]
fn concat_rejects_bad_shapes() {
    let Some(ctx) = gpu() else { return };
    let a = ctx.zeros(&[5, 3], DType::F32).unwrap();
    let b = ctx.zeros(&[4, 2], DType::F32).unwrap();
    let out = ctx.zeros(&[5, 5], DType::F32).unwrap();
    // rows differ
    let e = op::concat_forward(ctx, &b, &out, 0).unwrap_err();
    assert!(e.to_string().contains("concat_forward"), "{e}");
    // block past the end
    assert!(op::concat_forward(ctx, &a, &out, 3).is_err());
    assert!(op::concat_backward(ctx, &a, &out, 3).is_err());
    // widths do not add up
    assert!(op::concat_forward_all(ctx, &[&a, &a], &out).is_err());
    assert!(op::concat_backward_all(ctx, &[&a], &out).is_err());
}

#[test]
fn concat_backward_matches_finite_differences() {
    let shapes = [vec![3, 2], vec![3, 5], vec![3, 1]];
    let xs: Vec<ArrayD<f64>> = shapes
        .iter()
        .enumerate()
        .map(|(i, s)| to_f64(&random(s, 40 + i as u64)))
        .collect();
    let w = to_f64(&random(&[3, 8], 50));
    let mut grads: Vec<ArrayD<f64>> = xs.iter().map(|x| ArrayD::zeros(x.raw_dim())).collect();
    concat_backward_cpu(&mut grads.iter_mut().collect::<Vec<_>>(), &w.view());
    for (i, grad) in grads.iter().enumerate() {
        let fd = finite_difference(&xs[i], 1e-6, |xi| {
            let mut views: Vec<_> = xs.iter().map(|x| x.view()).collect();
            views[i] = xi.view();
            weighted_sum(&concat_forward_cpu(&views), &w)
        });
        assert_close_f64(&format!("concat gradient {i}"), grad, &fd, 1e-6, 1e-8);
    }
}
