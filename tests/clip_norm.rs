//! Gradient clipping by global norm: the sum-of-squares and scale kernels
//! against the CPU reference (in f64), on several gradients whose sizes are
//! not multiples of the 256-lane workgroup, with enough partial sums that
//! the final one-workgroup pass loops, and on the seed model's parameter
//! shapes. Clipping has no backward pass, so there is no finite-difference
//! check; the reference is checked against the definition instead.

mod common;

use common::*;
use crossmodal::ops::clip_norm::*;
use crossmodal::{DType, Error, GpuContext, GpuTensor};
use ndarray::{ArrayD, ArrayViewD, ArrayViewMutD};

/// Distinct sizes, none a multiple of 256: 1961, 5, 3000, 1001.
const SHAPES: [&[usize]; 4] = [&[37, 53], &[5], &[1000, 3], &[7, 11, 13]];

/// The seed model's parameters: embedding, LSTM kernel, recurrent kernel
/// and bias, conv kernel and bias, dense kernel and bias.
const SEED_SHAPES: [&[usize]; 8] = [
    &[10000, 32],
    &[32, 256],
    &[64, 256],
    &[256],
    &[3, 3, 1, 32],
    &[32],
    &[5472, 2],
    &[2],
];

fn grads(shapes: &[&[usize]], seed: u64) -> Vec<ArrayD<f32>> {
    shapes
        .iter()
        .enumerate()
        .map(|(k, s)| random(s, seed + k as u64))
        .collect()
}

fn upload(ctx: &GpuContext, gs: &[ArrayD<f32>]) -> Vec<GpuTensor> {
    gs.iter()
        .map(|g| ctx.upload_f32(g.as_slice().unwrap(), g.shape()).unwrap())
        .collect()
}

fn sumsq_f64(gs: &[ArrayD<f32>]) -> f64 {
    let views: Vec<ArrayD<f64>> = gs.iter().map(to_f64).collect();
    let views: Vec<ArrayViewD<f64>> = views.iter().map(|g| g.view()).collect();
    clip_norm_sumsq_cpu(&views)
}

/// The GPU sum of squares with `items` elements per lane.
fn gpu_sumsq(ctx: &GpuContext, gs: &[GpuTensor], items: u32) -> f32 {
    let sumsq = ctx.zeros(&[1], DType::F32).unwrap();
    let refs: Vec<&GpuTensor> = gs.iter().collect();
    let d = clip_norm_sumsq(ctx, &sumsq, &refs, items).unwrap();
    assert_eq!(d.len(), gs.len() + 1, "one partial pass per gradient + one");
    ctx.run(&d.iter().collect::<Vec<_>>()).unwrap();
    ctx.read_f32(&sumsq).unwrap()[0]
}

#[test]
fn clip_norm_sumsq_matches_the_reference() {
    let Some(ctx) = gpu() else { return };
    let gs = grads(&SHAPES, 1);
    let want = sumsq_f64(&gs) as f32;
    let on = upload(ctx, &gs);
    // items 16: one chunk per small gradient; items 1: 8 + 1 + 12 + 4
    // chunks; items 3: chunks that end inside a lane's run.
    for items in [DEFAULT_ITEMS, 1, 3] {
        let got = gpu_sumsq(ctx, &on, items);
        // f32 sums of ~6000 positive terms in a tree: rounding ~1e-7.
        assert_close(
            &format!("sum of squares, items {items}"),
            &[got],
            &[want],
            1e-6,
            0.0,
        );
    }
    // Deterministic: the same bits every run.
    let a = gpu_sumsq(ctx, &on, 1);
    let b = gpu_sumsq(ctx, &on, 1);
    assert_eq!(a.to_bits(), b.to_bits());
}

#[test]
fn clip_norm_sumsq_with_more_partials_than_lanes() {
    let Some(ctx) = gpu() else { return };
    // 90 300 + 777 elements at 256 per chunk: 353 + 4 partial sums, so the
    // final pass's lanes each add more than one.
    let gs = grads(&[&[300, 301], &[777]], 7);
    let want = sumsq_f64(&gs) as f32;
    let got = gpu_sumsq(ctx, &upload(ctx, &gs), 1);
    assert_close("sum of squares, 357 partials", &[got], &[want], 1e-6, 0.0);
}

#[test]
fn clip_norm_scale_matches_the_reference() {
    let Some(ctx) = gpu() else { return };
    let g = random(&[37, 53], 3);
    let norm = sumsq_f64(std::slice::from_ref(&g)).sqrt() as f32;
    for clip in [norm / 3.0, norm * 2.0] {
        let sumsq = ctx.upload_f32(&[norm * norm], &[1]).unwrap();
        let on = ctx.upload_f32(g.as_slice().unwrap(), g.shape()).unwrap();
        ctx.run(&[&clip_norm_scale(ctx, &on, &sumsq, clip).unwrap()])
            .unwrap();
        let mut want = g.clone();
        clip_norm_scale_cpu(&mut want.view_mut(), norm * norm, clip);
        let got = ctx.read_f32(&on).unwrap();
        if clip > norm {
            // Within the clip: not written at all.
            assert_eq!(got, g.as_slice().unwrap(), "an inactive clip changed g");
        } else {
            // The same formula; sqrt may differ by an ulp between devices.
            assert_close("scaled gradient", &got, want.as_slice().unwrap(), 1e-6, 0.0);
        }
    }
}

/// The whole clip on `shapes`: the GPU result against the f64 reference,
/// and the clipped global norm against the clip.
fn check_clip(ctx: &GpuContext, shapes: &[&[usize]], seed: u64) {
    let gs = grads(shapes, seed);
    let norm = sumsq_f64(&gs).sqrt();
    for (factor, active) in [(0.25, true), (4.0, false)] {
        let clip = (norm * factor) as f32;
        let on = upload(ctx, &gs);
        let refs: Vec<&GpuTensor> = on.iter().collect();
        let sumsq = ctx.zeros(&[1], DType::F32).unwrap();
        let d = clip_norm(ctx, &sumsq, &refs, clip).unwrap();
        assert_eq!(d.len(), 2 * gs.len() + 1);
        ctx.run(&d.iter().collect::<Vec<_>>()).unwrap();

        let mut want: Vec<ArrayD<f64>> = gs.iter().map(to_f64).collect();
        let mut views: Vec<ArrayViewMutD<f64>> = want.iter_mut().map(|g| g.view_mut()).collect();
        let before = clip_norm_cpu(&mut views, clip as f64);
        assert!((before - norm).abs() <= 1e-12 * norm);
        let got_norm = ctx.read_f32(&sumsq).unwrap()[0].sqrt();
        assert_close("norm", &[got_norm], &[norm as f32], 1e-6, 0.0);
        let mut clipped = 0.0f64;
        for (k, (t, w)) in on.iter().zip(&want).enumerate() {
            let got = ctx.read_f32(t).unwrap();
            clipped += got.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>();
            if active {
                // The scale carries the sum's rounding (1e-6) into every entry.
                let w32: Vec<f32> = w.iter().map(|&v| v as f32).collect();
                assert_close(&format!("clipped gradient {k}"), &got, &w32, 2e-6, 1e-9);
            } else {
                assert_eq!(got, gs[k].as_slice().unwrap(), "gradient {k} changed");
            }
        }
        if active {
            assert_close("clipped norm", &[clipped.sqrt() as f32], &[clip], 2e-6, 0.0);
        }
    }
}

#[test]
fn clip_norm_matches_the_reference() {
    let Some(ctx) = gpu() else { return };
    check_clip(ctx, &SHAPES, 20);
}

#[test]
fn clip_norm_seed_model_shapes() {
    let Some(ctx) = gpu() else { return };
    check_clip(ctx, &SEED_SHAPES, 30);
}

#[test]
fn clip_norm_leaves_a_nan_gradient_as_the_reference_does() {
    let Some(ctx) = gpu() else { return };
    let mut g = random(&[300], 4);
    g[[17]] = f32::NAN;
    let on = ctx.upload_f32(g.as_slice().unwrap(), &[300]).unwrap();
    let sumsq = ctx.zeros(&[1], DType::F32).unwrap();
    let d = clip_norm(ctx, &sumsq, &[&on], 1e-3).unwrap();
    ctx.run(&d.iter().collect::<Vec<_>>()).unwrap();
    let mut want = g.clone();
    let norm = clip_norm_cpu(&mut [want.view_mut()], 1e-3);
    assert!(norm.is_nan() && ctx.read_f32(&sumsq).unwrap()[0].is_nan());
    // A NaN norm fails `norm > clip`: nothing is scaled on either side.
    let got = ctx.read_f32(&on).unwrap();
    for (i, (a, b)) in got.iter().zip(want.iter()).enumerate() {
        assert_eq!(a.to_bits(), b.to_bits(), "element {i}");
    }
}

#[test]
fn clip_norm_cpu_follows_the_definition() {
    // Two gradients, f64: scaled by clip / ‖(g1, g2)‖ when above the clip.
    let a = to_f64(&random(&[4, 3], 5));
    let b = to_f64(&random(&[6], 6));
    let norm = (a.mapv(|v| v * v).sum() + b.mapv(|v| v * v).sum()).sqrt();
    let (mut ca, mut cb) = (a.clone(), b.clone());
    let got = clip_norm_cpu(&mut [ca.view_mut(), cb.view_mut()], norm / 2.0);
    assert!((got - norm).abs() <= 1e-14 * norm);
    assert_close_f64("g1", &ca, &(&a * 0.5), 1e-14, 0.0);
    assert_close_f64("g2", &cb, &(&b * 0.5), 1e-14, 0.0);
    let (mut ca, mut cb) = (a.clone(), b.clone());
    clip_norm_cpu(&mut [ca.view_mut(), cb.view_mut()], norm * 1.01);
    assert_eq!((ca, cb), (a, b), "within the clip nothing changes");
}

#[test]
fn clip_norm_rejects_bad_arguments() {
    let Some(ctx) = gpu() else { return };
    let g = ctx.zeros(&[10], DType::F32).unwrap();
    let sumsq = ctx.zeros(&[1], DType::F32).unwrap();
    for clip in [0.0, -1.0, f32::NAN, f32::INFINITY] {
        let e = clip_norm(ctx, &sumsq, &[&g], clip).unwrap_err();
        assert!(matches!(e, Error::Unsupported { .. }), "{e}");
    }
    let e = clip_norm(ctx, &sumsq, &[], 1.0).unwrap_err();
    assert!(e.to_string().contains("at least one"), "{e}");
    let two = ctx.zeros(&[2], DType::F32).unwrap();
    let e = clip_norm(ctx, &two, &[&g], 1.0).unwrap_err();
    assert!(e.to_string().contains("sumsq"), "{e}");
    let ids = ctx.zeros(&[10], DType::U32).unwrap();
    let e = clip_norm(ctx, &sumsq, &[&g, &ids], 1.0).unwrap_err();
    assert!(e.to_string().contains("f32"), "{e}");
}
