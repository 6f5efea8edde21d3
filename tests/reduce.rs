//! Sum (and mean) reduction and the accuracy counter against the CPU
//! reference: awkward lengths, several passes, a grid folded into 2-D,
//! accumulation, ties, determinism.

mod common;

use common::*;
use crossmodal::gpu::Dispatch;
// Launchers by path: the tests carry the launchers' names.
use crossmodal::ops::reduce::{self as op, accuracy_count_cpu, reduce_sum_cpu, SumOptions};
use crossmodal::{DType, GpuContext};
use ndarray::{ArrayD, Ix2};

fn run_all(ctx: &GpuContext, ds: &[Dispatch]) {
    let refs: Vec<&Dispatch> = ds.iter().collect();
    ctx.run(&refs).unwrap();
}

/// Sums `x` on the GPU (out starting at `out0`) and checks it against the f64
/// reference; returns each pass's workgroup counts.
fn check_sum(x: &ArrayD<f32>, options: SumOptions, out0: f32) -> Vec<[u32; 3]> {
    let Some(ctx) = gpu() else { return Vec::new() };
    let n = x.len();
    let want = reduce_sum_cpu(&to_f64(x).view(), options.scale as f64)
        + if options.accumulate { out0 as f64 } else { 0.0 };
    let gx = ctx.upload_f32(x.as_slice().unwrap(), x.shape()).unwrap();
    let gout = ctx.upload_f32(&[out0], &[1]).unwrap();
    let ds = op::reduce_sum(ctx, &gout, &gx, options).unwrap();
    run_all(ctx, &ds);
    // f32 rounding grows with the number of terms; values are in [-1, 1] and
    // the sum may cancel, so the absolute tolerance scales with n · scale.
    let atol = 1e-8 * n as f32 * options.scale.abs() + 1e-7;
    assert_close(
        &format!("reduce_sum n={n} {options:?}"),
        &ctx.read_f32(&gout).unwrap(),
        &[want as f32],
        1e-6,
        atol,
    );
    ds.iter().map(|d| d.workgroups).collect()
}

#[test]
fn reduce_sum() {
    for (i, n) in [1usize, 255, 256, 257, 4097, 100003]
        .into_iter()
        .enumerate()
    {
        check_sum(&random(&[n], 10 + i as u64), SumOptions::default(), 0.0);
    }
    // Non-1-D input: all elements are summed.
    check_sum(&random(&[37, 53], 20), SumOptions::default(), 0.0);
}

#[test]
fn reduce_sum_mean_and_accumulate() {
    let Some(_) = gpu() else { return };
    let x = random(&[100003], 21);
    // Overwrite: out0 is ignored.
    check_sum(&x, SumOptions::mean(100003), 123.0);
    check_sum(&x, SumOptions::mean(100003).accumulate(), 1.5);
    check_sum(&x, SumOptions::default().scale(-2.5).accumulate(), -7.0);
    // Seed batch: mean of 32 per-sample losses.
    check_sum(&random(&[32], 22).mapv(f32::abs), SumOptions::mean(32), 0.0);
}

#[test]
fn reduce_sum_passes() {
    let Some(_) = gpu() else { return };
    // One chunk is 256 × 16 = 4096 elements.
    assert_eq!(
        check_sum(&random(&[4096], 23), SumOptions::default(), 0.0).len(),
        1
    );
    assert_eq!(
        check_sum(&random(&[4097], 24), SumOptions::default(), 0.0).len(),
        2
    );
    // 1 element per lane: 100003 → 391 → 2 → 1.
    let opts = SumOptions::default().items(1).accumulate();
    assert_eq!(check_sum(&random(&[100003], 25), opts, 0.25).len(), 3);
}

#[test]
fn reduce_sum_folded_grid() {
    let Some(_) = gpu() else { return };
    // n > 256 · 65535 with one element per lane: 65537 workgroups in the first
    // pass, more than one grid dimension allows, so the grid is folded 2-D.
    let n = 256 * 65535 + 257;
    let x = random(&[n], 26);
    let passes = check_sum(&x, SumOptions::default().items(1), 0.0);
    assert_eq!(passes.len(), 4); // 16777217 → 65537 → 257 → 2 → 1
    assert!(passes[0][1] > 1, "first pass not folded: {:?}", passes[0]);
    assert_eq!(check_sum(&x, SumOptions::mean(n), 0.0).len(), 3);
}

#[test]
fn reduce_sum_is_deterministic() {
    let Some(ctx) = gpu() else { return };
    let x = random(&[100003], 27);
    let gx = ctx.upload_f32(x.as_slice().unwrap(), &[100003]).unwrap();
    let mut bits = Vec::new();
    for _ in 0..3 {
        let gout = ctx.zeros(&[1], DType::F32).unwrap();
        run_all(
            ctx,
            &op::reduce_sum(ctx, &gout, &gx, SumOptions::default()).unwrap(),
        );
        bits.push(ctx.read_f32(&gout).unwrap()[0].to_bits());
    }
    assert!(bits.iter().all(|&b| b == bits[0]), "{bits:?}");
}

#[test]
fn reduce_sum_of_nothing_is_zero() {
    let Some(ctx) = gpu() else { return };
    let gx = ctx.zeros(&[0], DType::F32).unwrap();
    let gout = ctx.upload_f32(&[5.0], &[1]).unwrap();
    run_all(
        ctx,
        &op::reduce_sum(ctx, &gout, &gx, SumOptions::default()).unwrap(),
    );
    assert_eq!(ctx.read_f32(&gout).unwrap(), [0.0]);
}

/// Counts on the GPU (count starting at `count0`) against the reference.
fn check_accuracy(probs: &ArrayD<f32>, labels: &[u32], count0: u32) {
    let Some(ctx) = gpu() else { return };
    let p2 = probs.view().into_dimensionality::<Ix2>().unwrap();
    let want = count0 + accuracy_count_cpu(&p2, labels);
    let gp = ctx
        .upload_f32(probs.as_slice().unwrap(), probs.shape())
        .unwrap();
    let gl = ctx.upload_u32(labels, &[labels.len()]).unwrap();
    let gc = ctx.upload_u32(&[count0], &[1]).unwrap();
    ctx.run(&[&op::accuracy_count(ctx, &gc, &gp, &gl).unwrap()])
        .unwrap();
    assert_eq!(
        ctx.read_u32(&gc).unwrap(),
        [want],
        "accuracy_count {:?}",
        probs.shape()
    );
}

/// Scores and labels where roughly half the argmaxes match the label.
fn batch(rows: usize, cols: usize, seed: u64) -> (ArrayD<f32>, Vec<u32>) {
    let probs = random(&[rows, cols], seed);
    let p2 = probs.view().into_dimensionality::<Ix2>().unwrap();
    let noise = random_u32(rows, 0, cols as u32, seed + 1);
    let coin = random_u32(rows, 0, 2, seed + 2);
    let labels = (0..rows)
        .map(|r| {
            if coin[r] == 1 {
                argmax_first(p2.row(r).as_slice().unwrap())
            } else {
                noise[r]
            }
        })
        .collect();
    (probs, labels)
}

fn argmax_first(row: &[f32]) -> u32 {
    let mut arg = 0;
    for j in 1..row.len() {
        if row[j] > row[arg] {
            arg = j;
        }
    }
    arg as u32
}

#[test]
fn accuracy_count() {
    // Rows not a multiple of 256, several workgroups.
    let (p, l) = batch(1000, 7, 30);
    check_accuracy(&p, &l, 0);
    let (p, l) = batch(100003, 3, 33);
    check_accuracy(&p, &l, 0);
    // One class: every row's argmax is 0.
    let (p, _) = batch(37, 1, 36);
    check_accuracy(&p, &[0; 37], 0);
}

#[test]
fn accuracy_count_seed_shape_accumulates() {
    // Dense(2) → softmax on a batch of 32; the counter adds to what it holds.
    let (p, l) = batch(32, 2, 40);
    check_accuracy(&p, &l, 17);
}

#[test]
fn accuracy_count_ties_go_to_the_first_maximum() {
    let Some(_) = gpu() else { return };
    // Scores on a coarse grid so that most rows have tied maxima.
    let probs = random(&[513, 4], 50).mapv(|v| (v * 1.5).round());
    // Label each row with its last maximal class: it counts only when that is
    // also the first (a single maximum).
    let labels: Vec<u32> = probs
        .view()
        .into_dimensionality::<Ix2>()
        .unwrap()
        .rows()
        .into_iter()
        .map(|row| {
            let max = row.iter().cloned().fold(f32::MIN, f32::max);
            row.iter().rposition(|&v| v == max).unwrap() as u32
        })
        .collect();
    let p2 = probs.view().into_dimensionality::<Ix2>().unwrap();
    let want = accuracy_count_cpu(&p2, &labels);
    let firsts: Vec<u32> = p2
        .rows()
        .into_iter()
        .map(|r| argmax_first(r.as_slice().unwrap()))
        .collect();
    // The data really has ties, and the reference picks the first maximum.
    let tied = firsts.iter().zip(&labels).filter(|(a, b)| a != b).count();
    assert!(tied > 100, "only {tied} tied rows");
    assert_eq!(want as usize, labels.len() - tied);
    check_accuracy(&probs, &labels, 0);
    check_accuracy(&probs, &firsts, 0);
}

#[test]
fn accuracy_count_rejects_bad_shapes() {
    let Some(ctx) = gpu() else { return };
    let p = ctx.zeros(&[4, 3], DType::F32).unwrap();
    let l = ctx.zeros(&[5], DType::U32).unwrap();
    let c = ctx.zeros(&[1], DType::U32).unwrap();
    let err = op::accuracy_count(ctx, &c, &p, &l).unwrap_err().to_string();
    assert!(
        err.contains("accuracy_count") && err.contains("labels"),
        "{err}"
    );
    let f = ctx.zeros(&[1], DType::F32).unwrap();
    let l4 = ctx.zeros(&[4], DType::U32).unwrap();
    assert!(op::accuracy_count(ctx, &f, &p, &l4).is_err());
    let err = op::reduce_sum(ctx, &p, &f, SumOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("reduce_sum"), "{err}");
}
