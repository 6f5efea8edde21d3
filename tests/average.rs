//! Average (elementwise mean of k tensors) against the CPU reference on
//! shapes that are not multiples of the workgroup size and on the late
//! fusion head's shape, for k = 2..5 (pairs and an odd input out); the
//! backward with accumulation, repeated inputs and a subset of gradients;
//! the backward against finite differences; shape errors.

mod common;

use common::*;
// Test names equal the launcher names, so the launchers are called by path.
use crossmodal::ops::average::{self as op, average_backward_cpu, average_forward_cpu};
use crossmodal::DType;
use ndarray::ArrayD;

fn f32s(a: &ArrayD<f64>) -> Vec<f32> {
    a.iter().map(|&v| v as f32).collect()
}

/// Forward on the GPU against the f64 reference; returns the dispatch count.
fn check_forward(shape: &[usize], k: usize) -> usize {
    let Some(ctx) = gpu() else { return 0 };
    let xs: Vec<ArrayD<f32>> = (0..k).map(|i| random(shape, 1 + i as u64)).collect();
    let x64: Vec<ArrayD<f64>> = xs.iter().map(to_f64).collect();
    let want = average_forward_cpu(&x64.iter().map(|x| x.view()).collect::<Vec<_>>());
    let gxs: Vec<_> = xs
        .iter()
        .map(|x| ctx.upload_f32(x.as_slice().unwrap(), shape).unwrap())
        .collect();
    // Start from garbage: the first dispatch must overwrite, not add.
    let gy = ctx
        .upload_f32(random(shape, 99).as_slice().unwrap(), shape)
        .unwrap();
    let ds = op::average_forward(ctx, &gxs.iter().collect::<Vec<_>>(), &gy).unwrap();
    ctx.run(&ds.iter().collect::<Vec<_>>()).unwrap();
    // k - 1 additions and one scaling in f32 (k = 2: exact in f32 up to the
    // one rounding of the sum; the reference is f64).
    assert_close(
        &format!("average_forward {shape:?} k={k}"),
        &ctx.read_f32(&gy).unwrap(),
        &f32s(&want),
        1e-6,
        1e-7,
    );
    ds.len()
}

/// Backward into `which` (input indices, possibly repeated) against the
/// reference, from non-zero gradients; returns the dispatch count.
fn check_backward(shape: &[usize], k: usize, which: &[usize]) -> usize {
    let Some(ctx) = gpu() else { return 0 };
    let dy = random(shape, 10);
    let dx0: Vec<ArrayD<f32>> = (0..k).map(|i| random(shape, 20 + i as u64)).collect();
    let mut want: Vec<ArrayD<f64>> = dx0.iter().map(to_f64).collect();
    for &i in which {
        average_backward_cpu(&mut want[i], &to_f64(&dy).view(), k);
    }
    let gdy = ctx.upload_f32(dy.as_slice().unwrap(), shape).unwrap();
    let gdx: Vec<_> = dx0
        .iter()
        .map(|x| ctx.upload_f32(x.as_slice().unwrap(), shape).unwrap())
        .collect();
    let refs: Vec<_> = which.iter().map(|&i| &gdx[i]).collect();
    let ds = op::average_backward(ctx, &refs, &gdy, k).unwrap();
    ctx.run(&ds.iter().collect::<Vec<_>>()).unwrap();
    for i in 0..k {
        // One multiplication and one (or two) additions per element.
        assert_close(
            &format!("average_backward {shape:?} k={k} into {which:?}: dx {i}"),
            &ctx.read_f32(&gdx[i]).unwrap(),
            &f32s(&want[i]),
            1e-6,
            1e-7,
        );
    }
    ds.len()
}

#[test]
fn average_forward() {
    if gpu().is_none() {
        return;
    }
    // 37·5 = 185 and 3·7·13 = 273: not multiples of 256; a large one folds
    // the grid.
    assert_eq!(check_forward(&[37, 5], 2), 1, "k = 2 is one dispatch");
    assert_eq!(check_forward(&[3, 7, 13], 3), 2);
    assert_eq!(check_forward(&[37, 5], 4), 2);
    assert_eq!(check_forward(&[3, 7, 13], 5), 3);
    check_forward(&[1], 2);
    check_forward(&[300, 257], 2);
}

#[test]
fn average_backward() {
    if gpu().is_none() {
        return;
    }
    assert_eq!(
        check_backward(&[37, 5], 2, &[0, 1]),
        1,
        "k = 2 is one dispatch"
    );
    assert_eq!(check_backward(&[3, 7, 13], 3, &[0, 1, 2]), 2);
    assert_eq!(check_backward(&[37, 5], 5, &[4, 2, 0, 1, 3]), 3);
    // Only some inputs need a gradient.
    assert_eq!(check_backward(&[37, 5], 2, &[1]), 1);
    assert_eq!(check_backward(&[3, 7, 13], 4, &[3, 0]), 1);
    // An input listed twice gets both contributions (never paired with
    // itself: two writable bindings of one buffer).
    assert_eq!(check_backward(&[37, 5], 3, &[1, 1, 2]), 2);
    assert_eq!(check_backward(&[37, 5], 2, &[0, 0]), 2);
    check_backward(&[300, 257], 2, &[0, 1]);
}

/// The late-fusion head: two Dense(2) logits of a batch of 32.
#[test]
fn average_seed_shape() {
    check_forward(&[32, 2], 2);
    check_backward(&[32, 2], 2, &[0, 1]);
}

#[test]
fn average_backward_matches_finite_differences() {
    // k = 3 inputs of [3, 4]; loss = Σ w ⊙ average(xs).
    let (k, shape) = (3, [3, 4]);
    let xs: Vec<ArrayD<f64>> = (0..k).map(|i| to_f64(&random(&shape, 30 + i))).collect();
    let w = to_f64(&random(&shape, 40));
    for i in 0..k as usize {
        let loss = |xi: &ArrayD<f64>| {
            let mut views: Vec<_> = xs.iter().map(|x| x.view()).collect();
            views[i] = xi.view();
            weighted_sum(&average_forward_cpu(&views), &w)
        };
        let fd = finite_difference(&xs[i], 1e-6, loss);
        let mut grad = ArrayD::<f64>::zeros(fd.raw_dim());
        average_backward_cpu(&mut grad, &w.view(), k as usize);
        assert_close_f64(&format!("d loss / d x{i}"), &grad, &fd, 1e-6, 1e-9);
    }
}

#[test]
fn average_rejects_bad_shapes() {
    let Some(ctx) = gpu() else { return };
    let a = ctx.zeros(&[4, 3], DType::F32).unwrap();
    let b = ctx.zeros(&[4, 3], DType::F32).unwrap();
    let t = ctx.zeros(&[3, 4], DType::F32).unwrap();
    let u = ctx.zeros(&[4, 3], DType::U32).unwrap();
    let y = ctx.zeros(&[4, 3], DType::F32).unwrap();
    assert!(op::average_forward(ctx, &[&a, &b], &y).is_ok());
    let e = op::average_forward(ctx, &[&a, &t], &y).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("average_forward") && msg.contains("[3, 4]") && msg.contains("[4, 3]"),
        "{msg}"
    );
    assert!(op::average_forward(ctx, &[&a, &b], &t).is_err());
    assert!(op::average_forward(ctx, &[&a, &u], &y).is_err());
    assert!(op::average_forward(ctx, &[&a], &y).is_err(), "k = 1");
    assert!(op::average_backward(ctx, &[&a, &b], &y, 2).is_ok());
    let e = op::average_backward(ctx, &[&a, &t], &y, 2).unwrap_err();
    assert!(e.to_string().contains("average_backward"), "{e}");
    assert!(op::average_backward(ctx, &[&a, &b, &a], &y, 2).is_err());
    assert!(op::average_backward(ctx, &[&a], &y, 1).is_err());
}
