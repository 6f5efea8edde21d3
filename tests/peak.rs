//! The adapter peak probes compute what they should: the FMA chains match
//! their f64 reference, the copy copies every element (sizes not multiples
//! of the workgroup), bad sizes are shape errors, and the measuring helpers
//! return finite positive figures. Timing itself is not asserted.

mod common;

use common::*;
use crossmodal::ops::peak::*;
use crossmodal::{DType, Error};

#[test]
fn fma_peak_computes_the_chains() {
    let Some(ctx) = gpu() else { return };
    // Two workgroups; the multiplier keeps the start values visible after
    // 3 rounds (24 FMAs per chain).
    let items = 2 * WORKGROUP as usize;
    let (rounds, mul, add) = (3, 0.9f32, 0.05f32);
    let out = ctx.zeros(&[items], DType::F32).unwrap();
    ctx.run(&[&fma_peak(ctx, &out, rounds, mul, add).unwrap()])
        .unwrap();
    let got = ctx.read_f32(&out).unwrap();
    let want: Vec<f32> = (0..items)
        .map(|i| fma_peak_cpu(i, rounds, mul, add) as f32)
        .collect();
    // 16 chains of 24 f32 FMAs (or mul + add) summed: a few ulps of 16.
    assert_close("fma_peak", &got, &want, 1e-5, 1e-5);
    // The start values differ per invocation, so the result does too.
    assert_ne!(got[0], got[1]);
}

#[test]
fn fma_peak_rejects_partial_workgroups() {
    let Some(ctx) = gpu() else { return };
    let out = ctx.zeros(&[100], DType::F32).unwrap();
    let err = fma_peak(ctx, &out, 1, 1.0, 0.0).unwrap_err();
    assert!(
        matches!(&err, Error::Shape { op, .. } if op == "fma_peak"),
        "{err}"
    );
}

#[test]
fn copy_bandwidth_copies_everything() {
    let Some(ctx) = gpu() else { return };
    // 1001 vec4: not a multiple of the 64-lane workgroup.
    let n = 4 * 1001;
    let src = random(&[n], 5);
    let gsrc = ctx.upload_f32(src.as_slice().unwrap(), &[n]).unwrap();
    let gdst = ctx.zeros(&[n], DType::F32).unwrap();
    ctx.run(&[&copy_bandwidth(ctx, &gdst, &gsrc).unwrap()])
        .unwrap();
    assert_eq!(ctx.read_f32(&gdst).unwrap(), src.as_slice().unwrap());
}

#[test]
fn copy_bandwidth_rejects_bad_sizes() {
    let Some(ctx) = gpu() else { return };
    let a = ctx.zeros(&[6], DType::F32).unwrap();
    let b = ctx.zeros(&[8], DType::F32).unwrap();
    let c = ctx.zeros(&[6], DType::F32).unwrap();
    for (dst, src) in [(&b, &a), (&a, &b), (&a, &c)] {
        let err = copy_bandwidth(ctx, dst, src).unwrap_err();
        assert!(
            matches!(&err, Error::Shape { op, .. } if op == "copy_bandwidth"),
            "{err}"
        );
    }
}

#[test]
fn measurements_are_finite_and_positive() {
    let Some(ctx) = gpu() else { return };
    let gflops = measure_fma_peak(ctx).unwrap();
    let gbs = measure_bandwidth(ctx).unwrap();
    eprintln!("FMA peak {gflops:.1} GFLOP/s, copy bandwidth {gbs:.1} GB/s");
    assert!(gflops.is_finite() && gflops > 0.0, "{gflops}");
    assert!(gbs.is_finite() && gbs > 0.0, "{gbs}");
}
