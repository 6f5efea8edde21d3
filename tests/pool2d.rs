//! Max and average pooling kernels against the CPU reference (argmax exactly,
//! values from a reference evaluated in f64) on awkward shapes, overlapping
//! windows and the seed model's shape; both max-pool backward kernels
//! (gather for any stride, per-window for disjoint windows) on every
//! geometry they take; accumulation into non-zero gradients; tie-breaking; the fast max-pool references against the
//! naive definitions; the backward references against finite differences;
//! shape errors.

mod common;

use common::*;
use crossmodal::gpu::GpuTensor;
use crossmodal::ops::pool2d as op;
use crossmodal::ops::pool2d::{
    avgpool_backward_cpu, avgpool_forward_cpu, maxpool_backward_cpu, maxpool_backward_naive_cpu,
    maxpool_forward_cpu, maxpool_forward_naive_cpu, Pool2dGeometry, Pool2dParams,
};
use crossmodal::{DType, Error, GpuContext};
use ndarray::{Array4, Ix4};
use rand::{rngs::StdRng, seq::SliceRandom, SeedableRng};

fn geometry(input: [usize; 4], pool: [usize; 2], stride: [usize; 2]) -> Pool2dGeometry {
    Pool2dGeometry::new(input, pool, stride).unwrap()
}

/// Odd sizes (floor drops the last row/column), distinct sizes per
/// dimension, overlapping windows (stride < pool), non-square pools and
/// strides, and a stride larger than the pool (input elements in no window).
/// Channel counts that are multiples of 4 (8, 4) run the vec4 max-pool
/// kernels; the others the scalar ones.
fn awkward() -> Vec<Pool2dGeometry> {
    let x = [3, 11, 9, 5];
    vec![
        geometry(x, [2, 2], [2, 2]),
        geometry(x, [3, 3], [2, 2]),
        geometry(x, [3, 2], [2, 1]),
        geometry(x, [2, 3], [1, 2]),
        geometry(x, [2, 2], [3, 2]),
        geometry([2, 7, 6, 3], [7, 1], [1, 1]),
        geometry([3, 11, 9, 8], [2, 2], [2, 2]),
        geometry([2, 7, 6, 4], [3, 2], [2, 3]),
        geometry([3, 9, 7, 4], [2, 3], [1, 2]),
    ]
}

/// The seed model's MaxPool 2x2 after the 32-filter conv: 32x26x26x32.
fn seed() -> Pool2dGeometry {
    Pool2dGeometry::keras([32, 26, 26, 32], [2, 2]).unwrap()
}

fn rand4(shape: [usize; 4], seed: u64) -> Array4<f64> {
    to_f64(&random(&shape, seed))
        .into_dimensionality::<Ix4>()
        .unwrap()
}

/// Uploads an f64 array as f32 (the values are f32-exact: they came from f32).
fn upload(ctx: &GpuContext, a: &Array4<f64>) -> GpuTensor {
    ctx.upload_f32(&as_f32(a), a.shape()).unwrap()
}

fn as_f32(a: &Array4<f64>) -> Vec<f32> {
    a.iter().map(|&v| v as f32).collect()
}

fn label(g: &Pool2dGeometry) -> String {
    format!(
        "{:?} pool {:?} stride {:?}",
        g.input_shape(),
        g.pool,
        g.stride
    )
}

fn check_maxpool_forward(g: &Pool2dGeometry, x: &Array4<f64>) {
    let Some(ctx) = gpu() else { return };
    let (want, want_arg) = maxpool_forward_cpu(&x.view(), g);
    let gx = upload(ctx, x);
    let gy = ctx.zeros(&g.output_shape(), DType::F32).unwrap();
    let garg = ctx.zeros(&g.output_shape(), DType::U32).unwrap();
    ctx.run(&[&op::maxpool_forward(ctx, &gx, &gy, &garg, g).unwrap()])
        .unwrap();
    let got_arg = ctx.read_u32(&garg).unwrap();
    assert_eq!(
        got_arg,
        want_arg.iter().copied().collect::<Vec<_>>(),
        "maxpool_forward argmax {}",
        label(g)
    );
    // The maximum is one of the inputs: exact.
    assert_eq!(
        ctx.read_f32(&gy).unwrap(),
        as_f32(&want),
        "maxpool_forward y {}",
        label(g)
    );
}

type MaxpoolBackward = fn(
    &GpuContext,
    &GpuTensor,
    &GpuTensor,
    &GpuTensor,
    &Pool2dGeometry,
) -> crossmodal::Result<crossmodal::gpu::Dispatch>;

fn check_maxpool_backward(g: &Pool2dGeometry) {
    check_maxpool_backward_with(g, "maxpool_backward", op::maxpool_backward);
}

fn check_maxpool_backward_with(g: &Pool2dGeometry, name: &str, launch: MaxpoolBackward) {
    let Some(ctx) = gpu() else { return };
    let x = rand4(g.input_shape(), 1);
    let (_, argmax) = maxpool_forward_cpu(&x.view(), g);
    let dy = rand4(g.output_shape(), 2);
    // Accumulation: dx starts non-zero and the kernel adds to it.
    let dx0 = rand4(g.input_shape(), 3);
    let mut want = dx0.clone();
    maxpool_backward_cpu(&mut want, &dy.view(), &argmax.view(), g);
    let garg = ctx
        .upload_u32(argmax.as_slice().unwrap(), &g.output_shape())
        .unwrap();
    let (gdx, gdy) = (upload(ctx, &dx0), upload(ctx, &dy));
    ctx.run(&[&launch(ctx, &gdx, &gdy, &garg, g).unwrap()])
        .unwrap();
    // At most ceil(PH/SH)*ceil(PW/SW) + 1 f32 terms per element.
    assert_close(
        &format!("{name} {}", label(g)),
        &ctx.read_f32(&gdx).unwrap(),
        &as_f32(&want),
        1e-6,
        1e-6,
    );
}

fn check_avgpool_forward(g: &Pool2dGeometry) {
    let Some(ctx) = gpu() else { return };
    let x = rand4(g.input_shape(), 4);
    let want = avgpool_forward_cpu(&x.view(), g);
    let gx = upload(ctx, &x);
    let gy = ctx.zeros(&g.output_shape(), DType::F32).unwrap();
    ctx.run(&[&op::avgpool_forward(ctx, &gx, &gy, g).unwrap()])
        .unwrap();
    // Sums of at most PH*PW values in [-1, 1], then one division.
    assert_close(
        &format!("avgpool_forward {}", label(g)),
        &ctx.read_f32(&gy).unwrap(),
        &as_f32(&want),
        1e-6,
        1e-6,
    );
}

fn check_avgpool_backward(g: &Pool2dGeometry) {
    let Some(ctx) = gpu() else { return };
    let dy = rand4(g.output_shape(), 5);
    let dx0 = rand4(g.input_shape(), 6);
    let mut want = dx0.clone();
    avgpool_backward_cpu(&mut want, &dy.view(), g);
    let (gdx, gdy) = (upload(ctx, &dx0), upload(ctx, &dy));
    ctx.run(&[&op::avgpool_backward(ctx, &gdx, &gdy, g).unwrap()])
        .unwrap();
    assert_close(
        &format!("avgpool_backward {}", label(g)),
        &ctx.read_f32(&gdx).unwrap(),
        &as_f32(&want),
        1e-6,
        1e-6,
    );
}

#[test]
fn pool2d_geometry_floors() {
    let x = [3, 11, 9, 5];
    assert_eq!(geometry(x, [2, 2], [2, 2]).output_shape(), [3, 5, 4, 5]);
    assert_eq!(geometry(x, [3, 3], [2, 2]).output_shape(), [3, 5, 4, 5]);
    assert_eq!(geometry(x, [3, 2], [2, 1]).output_shape(), [3, 5, 8, 5]);
    assert_eq!(geometry(x, [2, 2], [3, 2]).output_shape(), [3, 4, 4, 5]);
    assert_eq!(seed().output_shape(), [32, 13, 13, 32]);
    let p = geometry(x, [3, 2], [2, 1]).params();
    assert_eq!((p.win_h, p.win_w), (2, 2));
    assert_eq!(std::mem::size_of::<Pool2dParams>() % 16, 0);
}

#[test]
fn maxpool_forward() {
    for g in awkward() {
        check_maxpool_forward(&g, &rand4(g.input_shape(), 7));
    }
}

#[test]
fn maxpool_forward_seed_shape() {
    let g = seed();
    check_maxpool_forward(&g, &rand4(g.input_shape(), 8));
}

/// Inputs with many ties (values in {-1, -0.5, 0, 0.5, 1}, and a constant
/// input): the GPU must pick the first maximum in scan order, as the
/// reference does.
#[test]
fn maxpool_forward_ties_pick_the_first_maximum() {
    for g in awkward() {
        let x = rand4(g.input_shape(), 9).mapv(|v| (v * 2.0).round() / 2.0);
        check_maxpool_forward(&g, &x);
        check_maxpool_forward(&g, &Array4::from_elem(g.input_shape(), 0.25));
    }
    // In a constant input every window's argmax is its top-left element.
    let g = geometry([2, 5, 4, 3], [2, 2], [1, 2]);
    let (_, argmax) = maxpool_forward_cpu(&Array4::from_elem(g.input_shape(), 1.0).view(), &g);
    for ((n, oh, ow, c), &a) in argmax.indexed_iter() {
        let origin = ((n * 5 + oh) * 4 + ow * 2) * 3 + c;
        assert_eq!(a as usize, origin);
    }
}

/// The fast max-pool references (whole pixels, slices) against the naive
/// per-element definitions: argmax and y exactly (NaNs included), dx
/// exactly, on awkward shapes, ties, NaNs, non-standard layouts (x and dx)
/// and the seed shape.
#[test]
fn maxpool_references_match_the_naive_definitions() {
    let mut cases = awkward();
    cases.push(seed());
    for g in &cases {
        let random_x = rand4(g.input_shape(), 12);
        let ties = random_x.mapv(|v| (v * 2.0).round() / 2.0);
        // NaN in some windows, including first in scan order.
        let mut nans = random_x.clone();
        nans.iter_mut().step_by(7).for_each(|v| *v = f64::NAN);
        // Same logical array, memory order [C, W, H, N].
        let permute = |a: &Array4<f64>| {
            a.clone()
                .permuted_axes([3, 2, 1, 0])
                .as_standard_layout()
                .into_owned()
                .permuted_axes([3, 2, 1, 0])
        };
        let permuted = permute(&random_x);
        for (what, x) in [
            ("random", &random_x),
            ("ties", &ties),
            ("nans", &nans),
            ("permuted", &permuted),
        ] {
            let what = format!("{what} {}", label(g));
            let (y, argmax) = maxpool_forward_cpu(&x.view(), g);
            let (want_y, want_arg) = maxpool_forward_naive_cpu(&x.view(), g);
            assert_eq!(argmax, want_arg, "maxpool_forward argmax {what}");
            let bits = |a: &Array4<f64>| a.mapv(f64::to_bits);
            assert_eq!(bits(&y), bits(&want_y), "maxpool_forward y {what}");

            let dy = rand4(g.output_shape(), 13);
            let dx0 = rand4(g.input_shape(), 14);
            let mut dx = if what.starts_with("permuted") {
                permute(&dx0)
            } else {
                dx0.clone()
            };
            let mut want = dx0;
            maxpool_backward_cpu(&mut dx, &dy.view(), &argmax.view(), g);
            maxpool_backward_naive_cpu(&mut want, &dy.view(), &argmax.view(), g);
            assert_eq!(dx, want, "maxpool_backward {what}");
        }
    }
}

#[test]
fn maxpool_backward() {
    for g in awkward() {
        check_maxpool_backward(&g);
    }
}

#[test]
fn maxpool_backward_seed_shape() {
    check_maxpool_backward(&seed());
}

#[test]
fn maxpool_backward_gather() {
    // Every geometry, the disjoint ones included.
    for g in awkward().into_iter().chain([seed()]) {
        check_maxpool_backward_with(&g, "maxpool_backward_gather", op::maxpool_backward_gather);
    }
}

/// The ReLU-fused disjoint backward against the CPU composition: pool
/// over relu(z), pool backward, then ReLU backward (mask z > 0). z has
/// zeros and negative windows (whole windows <= 0 pass no gradient); dz
/// starts non-zero (accumulation).
#[test]
fn maxpool_relu_backward() {
    let Some(ctx) = gpu() else { return };
    let disjoint: Vec<_> = awkward()
        .into_iter()
        .filter(op::windows_disjoint)
        .chain([seed()])
        .collect();
    for (k, g) in disjoint.iter().enumerate() {
        let z =
            rand4(g.input_shape(), 10 + k as u64)
                .mapv(|v| if v.abs() < 0.1 { 0.0 } else { v - 0.3 });
        let r = z.mapv(|v| v.max(0.0));
        let (y, argmax) = maxpool_forward_cpu(&r.view(), g);
        let dy = rand4(g.output_shape(), 20 + k as u64);
        let mut dr = Array4::<f64>::zeros(g.input_shape());
        maxpool_backward_cpu(&mut dr, &dy.view(), &argmax.view(), g);
        let dz0 = rand4(g.input_shape(), 30 + k as u64);
        let want = &dz0 + &(&dr * &z.mapv(|v| if v > 0.0 { 1.0 } else { 0.0 }));
        assert!(y.iter().any(|&v| v == 0.0), "no window is all <= 0");
        let garg = ctx
            .upload_u32(argmax.as_slice().unwrap(), &g.output_shape())
            .unwrap();
        let (gdz, gdy, gy) = (upload(ctx, &dz0), upload(ctx, &dy), upload(ctx, &y));
        ctx.run(&[&op::maxpool_relu_backward(ctx, &gdz, &gdy, &garg, &gy, g).unwrap()])
            .unwrap();
        // One addition per element: exact up to the f32 rounding of it.
        assert_close(
            &format!("maxpool_relu_backward {}", label(g)),
            &ctx.read_f32(&gdz).unwrap(),
            &as_f32(&want),
            1e-6,
            1e-6,
        );
    }
    // Overlapping windows are refused with a clear error.
    let g = geometry([3, 11, 9, 5], [3, 3], [2, 2]);
    let dz = ctx.zeros(&g.input_shape(), DType::F32).unwrap();
    let dy = ctx.zeros(&g.output_shape(), DType::F32).unwrap();
    let arg = ctx.zeros(&g.output_shape(), DType::U32).unwrap();
    let e = op::maxpool_relu_backward(ctx, &dz, &dy, &arg, &dy, &g).unwrap_err();
    assert!(e.to_string().contains("disjoint"), "{e}");
}

#[test]
fn maxpool_backward_disjoint() {
    let disjoint: Vec<_> = awkward()
        .into_iter()
        .filter(op::windows_disjoint)
        .chain([seed()])
        .collect();
    // Stride = pool (scalar and vec4), stride > pool (rows in no window),
    // the seed's 2x2 (vec4).
    assert_eq!(disjoint.len(), 4);
    for g in &disjoint {
        check_maxpool_backward_with(
            g,
            "maxpool_backward_disjoint",
            op::maxpool_backward_disjoint,
        );
    }
    // Overlapping windows need the gather kernel.
    let Some(ctx) = gpu() else { return };
    let g = geometry([3, 11, 9, 5], [3, 3], [2, 2]);
    assert!(!op::windows_disjoint(&g));
    let dx = ctx.zeros(&g.input_shape(), DType::F32).unwrap();
    let dy = ctx.zeros(&g.output_shape(), DType::F32).unwrap();
    let arg = ctx.zeros(&g.output_shape(), DType::U32).unwrap();
    assert_pool_shape_error(
        op::maxpool_backward_disjoint(ctx, &dx, &dy, &arg, &g),
        "maxpool_backward_disjoint",
    );
}

#[test]
fn avgpool_forward() {
    for g in awkward() {
        check_avgpool_forward(&g);
    }
}

#[test]
fn avgpool_forward_seed_shape() {
    check_avgpool_forward(&seed());
}

#[test]
fn avgpool_backward() {
    for g in awkward() {
        check_avgpool_backward(&g);
    }
}

#[test]
fn avgpool_backward_seed_shape() {
    check_avgpool_backward(&seed());
}

/// Distinct values spaced 0.01 apart in a random order: no ties, and a
/// finite-difference step of 1e-6 never changes a window's argmax.
fn distinct(shape: [usize; 4], seed: u64) -> Array4<f64> {
    let mut v: Vec<f64> = (0..shape.iter().product::<usize>())
        .map(|i| i as f64 * 0.01 - 1.0)
        .collect();
    v.shuffle(&mut StdRng::seed_from_u64(seed));
    Array4::from_shape_vec(shape, v).unwrap()
}

/// Gradients of `Σ wt·pool(x)` from the backward references against central
/// differences, on distinct sizes per dimension with overlapping and
/// non-overlapping windows.
#[test]
fn pool2d_backward_matches_finite_differences() {
    let input = [2, 7, 6, 3];
    for g in [
        geometry(input, [2, 2], [2, 2]),
        geometry(input, [3, 2], [2, 1]),
        geometry(input, [2, 3], [1, 2]),
    ] {
        let x = distinct(g.input_shape(), 10);
        let wt = rand4(g.output_shape(), 11);

        let (_, argmax) = maxpool_forward_cpu(&x.view(), &g);
        let mut dx = Array4::zeros(x.raw_dim());
        maxpool_backward_cpu(&mut dx, &wt.view(), &argmax.view(), &g);
        let fd = finite_difference(&x.clone().into_dyn(), 1e-6, |v| {
            let v = v.clone().into_dimensionality::<Ix4>().unwrap();
            (&maxpool_forward_cpu(&v.view(), &g).0 * &wt).sum()
        });
        assert_close_f64(
            &format!("maxpool dx {}", label(&g)),
            &dx.into_dyn(),
            &fd,
            1e-6,
            1e-8,
        );

        let mut dx = Array4::zeros(x.raw_dim());
        avgpool_backward_cpu(&mut dx, &wt.view(), &g);
        let fd = finite_difference(&x.clone().into_dyn(), 1e-6, |v| {
            let v = v.clone().into_dimensionality::<Ix4>().unwrap();
            (&avgpool_forward_cpu(&v.view(), &g) * &wt).sum()
        });
        assert_close_f64(
            &format!("avgpool dx {}", label(&g)),
            &dx.into_dyn(),
            &fd,
            1e-6,
            1e-8,
        );
    }
}

fn assert_pool_shape_error<T: std::fmt::Debug>(r: crossmodal::Result<T>, name: &str) {
    match r {
        Err(Error::Shape { op, message }) => {
            assert!(
                op.contains(name),
                "error names {op:?}, not {name}: {message}"
            )
        }
        other => panic!("expected a {name} shape error, got {other:?}"),
    }
}

#[test]
fn pool2d_shape_errors() {
    assert_pool_shape_error(Pool2dGeometry::new([1, 5, 1, 2], [2, 2], [2, 2]), "pool2d");
    assert_pool_shape_error(Pool2dGeometry::new([1, 5, 5, 2], [2, 2], [0, 2]), "pool2d");

    let Some(ctx) = gpu() else { return };
    let g = geometry([3, 11, 9, 5], [3, 3], [2, 2]);
    let f32s = |shape: &[usize]| ctx.zeros(shape, DType::F32).unwrap();
    let (x, y) = (f32s(&g.input_shape()), f32s(&g.output_shape()));
    let arg = ctx.zeros(&g.output_shape(), DType::U32).unwrap();
    let x_bad = f32s(&[3, 9, 11, 5]);
    let y_bad = f32s(&[3, 5, 5, 5]);
    let arg_f32 = f32s(&g.output_shape());
    assert_pool_shape_error(
        op::maxpool_forward(ctx, &x_bad, &y, &arg, &g),
        "maxpool_forward",
    );
    assert_pool_shape_error(
        op::maxpool_forward(ctx, &x, &y_bad, &arg, &g),
        "maxpool_forward",
    );
    assert_pool_shape_error(
        op::maxpool_forward(ctx, &x, &y, &arg_f32, &g),
        "maxpool_forward",
    );
    assert_pool_shape_error(
        op::maxpool_backward(ctx, &x_bad, &y, &arg, &g),
        "maxpool_backward",
    );
    assert_pool_shape_error(
        op::maxpool_backward(ctx, &x, &y, &arg_f32, &g),
        "maxpool_backward",
    );
    assert_pool_shape_error(op::avgpool_forward(ctx, &x, &y_bad, &g), "avgpool_forward");
    assert_pool_shape_error(
        op::avgpool_backward(ctx, &x_bad, &y, &g),
        "avgpool_backward",
    );
    // The seed flattens the pooled output: a [N, OH*OW*C] view is accepted.
    let flat = f32s(&[3, 5 * 4 * 5]);
    op::maxpool_forward(ctx, &x, &flat, &arg, &g).unwrap();
}
