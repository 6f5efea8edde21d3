//! conv2d kernels against the CPU reference (evaluated in f64, so the
//! tolerances measure the GPU's f32 rounding only) on awkward shapes and the
//! seed model's shape, accumulation into non-zero gradients, the fast
//! (im2col) references against the plain-loop definitions, the backward
//! references against finite differences, and shape errors.

mod common;

use common::*;
use crossmodal::gpu::GpuTensor;
use crossmodal::ops::conv2d as op;
use crossmodal::ops::conv2d::{
    conv2d_backward_bias_cpu, conv2d_backward_bias_naive_cpu, conv2d_backward_input_cpu,
    conv2d_backward_input_naive_cpu, conv2d_backward_weight_cpu, conv2d_backward_weight_naive_cpu,
    conv2d_forward_cpu, conv2d_forward_naive_cpu, Conv2dGeometry, Conv2dParams, Conv2dVariant,
    Padding,
};
use crossmodal::{Error, GpuContext};
use ndarray::{Array1, Array4, Ix1, Ix4};

fn geometry(
    input: [usize; 4],
    out_c: usize,
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: Padding,
) -> Conv2dGeometry {
    Conv2dGeometry::new(input, out_c, kernel, stride, padding).unwrap()
}

/// Awkward shapes for the general kernels (all but the last have Cout not
/// a multiple of 4): nothing a multiple of the workgroup or of the kernels'
/// pixel (4), channel (8) and tap (3) tiles, distinct sizes per dimension,
/// a non-square kernel, strides 1 and 2 (and mixed), both paddings, a Same
/// kernel larger than the input, several channel blocks, and a stride
/// larger than the kernel (input pixels no window reads).
fn awkward() -> Vec<Conv2dGeometry> {
    let mut cases = Vec::new();
    for stride in [[1, 1], [2, 2], [2, 1], [1, 2]] {
        for padding in [Padding::Valid, Padding::Same] {
            cases.push(geometry([3, 11, 9, 5], 7, [3, 2], stride, padding));
        }
    }
    cases.push(geometry([2, 4, 3, 3], 2, [5, 4], [1, 2], Padding::Same));
    cases.push(geometry([2, 6, 5, 10], 17, [2, 2], [1, 2], Padding::Same));
    cases.push(geometry([2, 7, 6, 3], 4, [1, 2], [2, 3], Padding::Valid));
    cases
}

/// Shapes the register-blocked `*_direct` kernels take (Cout a multiple of
/// 4): pixel counts not multiples of their 16-pixel blocks or 128-pixel
/// workgroups, Cout below, between and above their 16-channel blocks,
/// 30 taps (not a multiple of the weight gradient's 9), Cin 1 (one input
/// channel per invocation of the input gradient) and 5 (blocks of 4, the
/// last one partial), strides 1 and 2 (mixed), both paddings, and a Same
/// kernel larger than the input.
fn direct() -> Vec<Conv2dGeometry> {
    let mut cases = Vec::new();
    for padding in [Padding::Valid, Padding::Same] {
        for stride in [[1, 1], [2, 1], [1, 2]] {
            cases.push(geometry([3, 11, 9, 5], 20, [3, 2], stride, padding));
        }
        cases.push(geometry([5, 13, 10, 1], 4, [3, 3], [1, 1], padding));
    }
    cases.push(geometry([2, 4, 3, 3], 8, [5, 4], [1, 1], Padding::Same));
    cases.push(geometry([1, 9, 7, 2], 36, [2, 5], [1, 1], Padding::Same));
    cases
}

/// Runs `check` on the direct shapes that `kernel` takes the direct path
/// for, and asserts that there are some with and without padding.
fn check_direct(kernel: &str, check: fn(&Conv2dGeometry)) {
    let cases: Vec<_> = direct()
        .into_iter()
        .filter(|g| Conv2dVariant::for_kernel(kernel, g) == Conv2dVariant::Direct)
        .collect();
    for padding in [Padding::Valid, Padding::Same] {
        assert!(
            cases.iter().any(|g| g.padding == padding),
            "{kernel}: no direct case with {padding:?}"
        );
    }
    for g in &cases {
        check(g);
    }
}

/// Shapes whose input gradient runs as a forward conv over flipped weights
/// (stride 1, Cin a multiple of 4): Cin 4, 8, 12 and 36 (one, a partial and
/// three 16-channel blocks of that conv's output), Cout odd and even (dy
/// read one channel at a time), non-square, even (asymmetric Same padding),
/// 1x1 and larger-than-the-input kernels, pixel counts not multiples of the
/// 128-pixel workgroups, both paddings.
fn flipped() -> Vec<Conv2dGeometry> {
    let mut cases = Vec::new();
    for padding in [Padding::Valid, Padding::Same] {
        cases.push(geometry([3, 11, 9, 8], 20, [3, 2], [1, 1], padding));
        cases.push(geometry([2, 7, 9, 4], 7, [3, 3], [1, 1], padding));
    }
    cases.push(geometry([2, 6, 5, 12], 9, [4, 4], [1, 1], Padding::Same));
    cases.push(geometry([1, 4, 3, 36], 5, [5, 4], [1, 1], Padding::Same));
    cases.push(geometry([2, 5, 7, 4], 3, [1, 1], [1, 1], Padding::Valid));
    cases
}

/// The seed model's Conv2D(32, 3x3) on 32x28x28x1 images.
fn seed() -> Conv2dGeometry {
    geometry([32, 28, 28, 1], 32, [3, 3], [1, 1], Padding::Valid)
}

fn rand4(shape: [usize; 4], seed: u64) -> Array4<f64> {
    to_f64(&random(&shape, seed))
        .into_dimensionality::<Ix4>()
        .unwrap()
}

fn rand1(len: usize, seed: u64) -> Array1<f64> {
    to_f64(&random(&[len], seed))
        .into_dimensionality::<Ix1>()
        .unwrap()
}

/// Uploads an f64 array as f32 (the values are f32-exact: they came from f32).
fn upload<D: ndarray::Dimension>(ctx: &GpuContext, a: &ndarray::Array<f64, D>) -> GpuTensor {
    let v: Vec<f32> = a.iter().map(|&v| v as f32).collect();
    ctx.upload_f32(&v, a.shape()).unwrap()
}

fn as_f32<D: ndarray::Dimension>(a: &ndarray::Array<f64, D>) -> Vec<f32> {
    a.iter().map(|&v| v as f32).collect()
}

fn label(g: &Conv2dGeometry) -> String {
    format!(
        "{:?} k{:?} s{:?} {:?} -> {}",
        g.input_shape(),
        g.kernel,
        g.stride,
        g.padding,
        g.out_c
    )
}

/// The forward kernel, plain and with the fused ReLU (against the
/// reference followed by max(., 0)), on whichever variant `g` selects.
fn check_forward(g: &Conv2dGeometry) {
    if let Some(ctx) = gpu() {
        check_forward_on(ctx, g);
    }
}

fn check_forward_on(ctx: &GpuContext, g: &Conv2dGeometry) {
    let x = rand4(g.input_shape(), 1);
    let w = rand4(g.weight_shape(), 2);
    let b = rand1(g.out_c, 3);
    let plain = conv2d_forward_cpu(&x.view(), &w.view(), &b.view(), g);
    let relu = plain.mapv(|v| v.max(0.0));
    let (gx, gw, gb) = (upload(ctx, &x), upload(ctx, &w), upload(ctx, &b));
    type Launch = fn(
        &GpuContext,
        &GpuTensor,
        &GpuTensor,
        &GpuTensor,
        &GpuTensor,
        &Conv2dGeometry,
    ) -> crossmodal::Result<crossmodal::gpu::Dispatch>;
    let launches: [(&str, Launch, &Array4<f64>); 2] = [
        ("conv2d_forward", op::conv2d_forward, &plain),
        ("conv2d_forward_relu", op::conv2d_forward_relu, &relu),
    ];
    for (name, launch, want) in launches {
        let gy = ctx
            .zeros(&g.output_shape(), crossmodal::DType::F32)
            .unwrap();
        ctx.run(&[&launch(ctx, &gx, &gw, &gb, &gy, g).unwrap()])
            .unwrap();
        // At most KH*KW*Cin products of values in [-1, 1].
        assert_close(
            &format!("{name} {}", label(g)),
            &ctx.read_f32(&gy).unwrap(),
            &as_f32(want),
            1e-5,
            1e-5,
        );
    }
}

fn check_backward_input(g: &Conv2dGeometry) {
    if let Some(ctx) = gpu() {
        check_backward_input_on(ctx, g);
    }
}

fn check_backward_input_on(ctx: &GpuContext, g: &Conv2dGeometry) {
    let dy = rand4(g.output_shape(), 4);
    let w = rand4(g.weight_shape(), 5);
    // Accumulation: dx starts non-zero and the kernel adds to it.
    let dx0 = rand4(g.input_shape(), 6);
    let mut want = dx0.clone();
    conv2d_backward_input_cpu(&mut want, &dy.view(), &w.view(), g);
    let (gdx, gdy, gw) = (upload(ctx, &dx0), upload(ctx, &dy), upload(ctx, &w));
    let dispatches = op::conv2d_backward_input(ctx, &gdx, &gdy, &gw, g).unwrap();
    ctx.run(&dispatches.iter().collect::<Vec<_>>()).unwrap();
    // At most KH*KW*Cout products per element.
    assert_close(
        &format!("conv2d_backward_input {}", label(g)),
        &ctx.read_f32(&gdx).unwrap(),
        &as_f32(&want),
        1e-5,
        1e-5,
    );
}

fn check_backward_weight(g: &Conv2dGeometry) {
    let Some(ctx) = gpu() else { return };
    let dy = rand4(g.output_shape(), 7);
    let x = rand4(g.input_shape(), 8);
    let dw0 = rand4(g.weight_shape(), 9);
    let mut want = dw0.clone();
    conv2d_backward_weight_cpu(&mut want, &dy.view(), &x.view(), g);
    let (gdw, gdy, gx) = (upload(ctx, &dw0), upload(ctx, &dy), upload(ctx, &x));
    ctx.run(&[&op::conv2d_backward_weight(ctx, &gdw, &gdy, &gx, g).unwrap()])
        .unwrap();
    // Sums of up to N*OH*OW products (21632 for the seed): rounding grows
    // with the number of terms, so atol scales with sqrt(terms).
    let terms = (g.batch * g.out_h() * g.out_w()) as f32;
    assert_close(
        &format!("conv2d_backward_weight {}", label(g)),
        &ctx.read_f32(&gdw).unwrap(),
        &as_f32(&want),
        1e-5,
        2e-6 * terms.sqrt(),
    );
}

fn check_backward_bias(g: &Conv2dGeometry) {
    let Some(ctx) = gpu() else { return };
    let dy = rand4(g.output_shape(), 10);
    let db0 = rand1(g.out_c, 11);
    let mut want = db0.clone();
    conv2d_backward_bias_cpu(&mut want, &dy.view(), g);
    let (gdb, gdy) = (upload(ctx, &db0), upload(ctx, &dy));
    ctx.run(&[&op::conv2d_backward_bias(ctx, &gdb, &gdy, g).unwrap()])
        .unwrap();
    let terms = (g.batch * g.out_h() * g.out_w()) as f32;
    assert_close(
        &format!("conv2d_backward_bias {}", label(g)),
        &ctx.read_f32(&gdb).unwrap(),
        &as_f32(&want),
        1e-5,
        2e-6 * terms.sqrt(),
    );
}

#[test]
fn conv2d_geometry_follows_tensorflow() {
    // (in, kernel, stride, padding) -> (out, pad before), per TensorFlow.
    let cases = [
        (28, 3, 1, Padding::Valid, 26, 0),
        (28, 3, 1, Padding::Same, 28, 1),
        (11, 3, 2, Padding::Valid, 5, 0),
        (11, 3, 2, Padding::Same, 6, 1),
        (9, 2, 2, Padding::Same, 5, 0),
        (10, 2, 2, Padding::Same, 5, 0),
        (6, 3, 2, Padding::Same, 3, 0),
        (10, 1, 3, Padding::Same, 4, 0),
        (4, 5, 1, Padding::Same, 4, 2),
    ];
    for (input, k, s, padding, out, pad) in cases {
        let g = geometry([1, input, 7, 1], 1, [k, 1], [s, 1], padding);
        assert_eq!(
            (g.out_h(), g.pad_top()),
            (out, pad),
            "rows: {input} {k} {s} {padding:?}"
        );
        let g = geometry([1, 7, input, 1], 1, [1, k], [1, s], padding);
        assert_eq!(
            (g.out_w(), g.pad_left()),
            (out, pad),
            "cols: {input} {k} {s} {padding:?}"
        );
    }
    let g = seed();
    assert_eq!(g.output_shape(), [32, 26, 26, 32]);
    let p = g.params();
    assert_eq!((p.out_h, p.out_w, p.pad_top, p.pad_left), (26, 26, 0, 0));
    assert_eq!(std::mem::size_of::<Conv2dParams>() % 16, 0);
}

#[test]
fn conv2d_forward() {
    for g in awkward() {
        check_forward(&g);
    }
}

#[test]
fn conv2d_forward_seed_shape() {
    check_forward(&seed());
}

#[test]
fn conv2d_backward_input() {
    for g in awkward() {
        check_backward_input(&g);
    }
}

#[test]
fn conv2d_backward_input_flipped() {
    for g in flipped() {
        assert_eq!(
            Conv2dVariant::for_kernel("backward_input", &g),
            Conv2dVariant::Flipped,
            "{}",
            label(&g)
        );
        check_backward_input(&g);
    }
    // The other shapes keep the gather kernels.
    let flipped = |g: &Conv2dGeometry| {
        Conv2dVariant::for_kernel("backward_input", g) == Conv2dVariant::Flipped
    };
    assert!(!flipped(&seed()));
    let strided = geometry([3, 11, 9, 8], 20, [3, 2], [2, 1], Padding::Same);
    assert!(!flipped(&strided));
}

/// The direct forward and input-gradient kernels read their weights
/// through subgroupBroadcast where the device has subgroups (lavapipe); a
/// context without them loads them per lane. Both paths on the direct and
/// flipped shapes (the flipped input gradient runs the forward kernel).
#[test]
fn conv2d_without_subgroups() {
    let Some(plain) = gpu_without_subgroups() else {
        return;
    };
    for g in direct()
        .iter()
        .filter(|g| Conv2dVariant::for_kernel("forward", g) == Conv2dVariant::Direct)
    {
        check_forward_on(plain, g);
    }
    for g in flipped().iter().chain(
        direct()
            .iter()
            .filter(|g| Conv2dVariant::for_kernel("backward_input", g) == Conv2dVariant::Direct),
    ) {
        check_backward_input_on(plain, g);
    }
}

#[test]
fn conv2d_backward_input_seed_shape() {
    check_backward_input(&seed());
}

#[test]
fn conv2d_backward_weight() {
    for g in awkward() {
        check_backward_weight(&g);
    }
}

#[test]
fn conv2d_backward_weight_seed_shape() {
    check_backward_weight(&seed());
}

#[test]
fn conv2d_backward_bias() {
    for g in awkward() {
        check_backward_bias(&g);
    }
}

#[test]
fn conv2d_forward_direct() {
    check_direct("forward", check_forward);
}

#[test]
fn conv2d_backward_input_direct() {
    check_direct("backward_input", check_backward_input);
}

#[test]
fn conv2d_backward_weight_direct() {
    check_direct("backward_weight", check_backward_weight);
}

#[test]
fn conv2d_backward_bias_direct() {
    check_direct("backward_bias", check_backward_bias);
}

/// The seed shape takes the direct kernels, the awkward Cout (7, 17) the
/// general ones; the input gradient's direct kernel needs stride 1.
#[test]
fn conv2d_variant_choice() {
    for kernel in [
        "forward",
        "backward_input",
        "backward_weight",
        "backward_bias",
    ] {
        assert_eq!(
            Conv2dVariant::for_kernel(kernel, &seed()),
            Conv2dVariant::Direct,
            "{kernel}"
        );
        let g = geometry([3, 11, 9, 5], 7, [3, 2], [1, 1], Padding::Valid);
        assert_eq!(
            Conv2dVariant::for_kernel(kernel, &g),
            Conv2dVariant::General
        );
    }
    let g = geometry([3, 11, 9, 5], 20, [3, 2], [2, 1], Padding::Same);
    assert_eq!(
        Conv2dVariant::for_kernel("backward_input", &g),
        Conv2dVariant::General
    );
}

#[test]
fn conv2d_backward_bias_seed_shape() {
    check_backward_bias(&seed());
}

/// The loss `Σ wt·conv(x, w, b)` and its gradients from the backward
/// references must match central differences; distinct sizes per dimension
/// and unequal strides make a swapped index or stride fail.
#[test]
fn conv2d_backward_matches_finite_differences() {
    let cases = [
        geometry([2, 7, 6, 3], 4, [3, 2], [2, 2], Padding::Same),
        geometry([2, 7, 6, 3], 4, [3, 2], [2, 1], Padding::Same),
        geometry([2, 7, 6, 3], 4, [2, 3], [1, 2], Padding::Valid),
    ];
    for g in &cases {
        let x = rand4(g.input_shape(), 20);
        let w = rand4(g.weight_shape(), 21);
        let b = rand1(g.out_c, 22);
        let wt = rand4(g.output_shape(), 23);
        let loss = |x: &Array4<f64>, w: &Array4<f64>, b: &Array1<f64>| {
            let y = conv2d_forward_cpu(&x.view(), &w.view(), &b.view(), g);
            (&y * &wt).sum()
        };

        let mut dx = Array4::zeros(x.raw_dim());
        conv2d_backward_input_cpu(&mut dx, &wt.view(), &w.view(), g);
        let fd = finite_difference(&x.clone().into_dyn(), 1e-5, |v| {
            loss(&v.clone().into_dimensionality().unwrap(), &w, &b)
        });
        assert_close_f64(&format!("dx {}", label(g)), &dx.into_dyn(), &fd, 1e-6, 1e-8);

        let mut dw = Array4::zeros(w.raw_dim());
        conv2d_backward_weight_cpu(&mut dw, &wt.view(), &x.view(), g);
        let fd = finite_difference(&w.clone().into_dyn(), 1e-5, |v| {
            loss(&x, &v.clone().into_dimensionality().unwrap(), &b)
        });
        assert_close_f64(&format!("dw {}", label(g)), &dw.into_dyn(), &fd, 1e-6, 1e-8);

        let mut db = Array1::zeros(b.raw_dim());
        conv2d_backward_bias_cpu(&mut db, &wt.view(), g);
        let fd = finite_difference(&b.clone().into_dyn(), 1e-5, |v| {
            loss(&x, &w, &v.clone().into_dimensionality().unwrap())
        });
        assert_close_f64(&format!("db {}", label(g)), &db.into_dyn(), &fd, 1e-6, 1e-8);
    }
}

/// `got == want` up to rounding: rtol 1e-12 in f64, and an atol of 1e-15
/// per summed term for results that cancel to near zero.
fn assert_same<D: ndarray::Dimension>(
    what: &str,
    got: &ndarray::Array<f64, D>,
    want: &ndarray::Array<f64, D>,
    terms: usize,
) {
    assert_eq!(got.shape(), want.shape(), "{what}: shape");
    let atol = 1e-15 * terms as f64;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= atol + 1e-12 * w.abs(),
            "{what}: element {i} is {g}, the naive reference gives {w}"
        );
    }
}

/// The fast references (im2col and matrix products) against the naive
/// plain-loop definitions, which share no code with them, in f64: awkward
/// shapes (strides 2 and mixed, Same padding, Cin > 1, a kernel larger
/// than the input), the seed shape, accumulation into non-zero gradients.
#[test]
fn conv2d_references_match_the_naive_definitions() {
    let mut cases = awkward();
    cases.push(geometry([2, 9, 8, 4], 3, [3, 3], [2, 2], Padding::Same));
    cases.push(seed());
    for g in &cases {
        let x = rand4(g.input_shape(), 30);
        let w = rand4(g.weight_shape(), 31);
        let b = rand1(g.out_c, 32);
        let dy = rand4(g.output_shape(), 33);
        let taps = g.kernel[0] * g.kernel[1] * g.in_c;
        let pixels = g.batch * g.out_h() * g.out_w();

        let y = conv2d_forward_cpu(&x.view(), &w.view(), &b.view(), g);
        let want = conv2d_forward_naive_cpu(&x.view(), &w.view(), &b.view(), g);
        assert_same(&format!("forward {}", label(g)), &y, &want, taps);

        let dx0 = rand4(g.input_shape(), 34);
        let (mut dx, mut want) = (dx0.clone(), dx0);
        conv2d_backward_input_cpu(&mut dx, &dy.view(), &w.view(), g);
        conv2d_backward_input_naive_cpu(&mut want, &dy.view(), &w.view(), g);
        let terms = g.kernel[0] * g.kernel[1] * g.out_c;
        assert_same(&format!("backward_input {}", label(g)), &dx, &want, terms);

        let dw0 = rand4(g.weight_shape(), 35);
        let (mut dw, mut want) = (dw0.clone(), dw0);
        conv2d_backward_weight_cpu(&mut dw, &dy.view(), &x.view(), g);
        conv2d_backward_weight_naive_cpu(&mut want, &dy.view(), &x.view(), g);
        assert_same(&format!("backward_weight {}", label(g)), &dw, &want, pixels);

        let db0 = rand1(g.out_c, 36);
        let (mut db, mut want) = (db0.clone(), db0);
        conv2d_backward_bias_cpu(&mut db, &dy.view(), g);
        conv2d_backward_bias_naive_cpu(&mut want, &dy.view(), g);
        assert_same(&format!("backward_bias {}", label(g)), &db, &want, pixels);
    }
}

/// Inputs and gradients that are not in standard layout (axes permuted in
/// memory) give the same results as standard-layout copies (up to rounding:
/// a non-standard dx receives the gradient summed apart, then added).
#[test]
fn conv2d_references_accept_any_layout() {
    let g = geometry([2, 7, 6, 3], 4, [3, 2], [2, 1], Padding::Same);
    // Same logical shape, memory order [C, W, H, N] (or reversed for w).
    let permuted = |a: &Array4<f64>| {
        let mut p = a
            .clone()
            .permuted_axes([3, 2, 1, 0])
            .as_standard_layout()
            .into_owned();
        p = p.permuted_axes([3, 2, 1, 0]);
        assert!(!p.is_standard_layout());
        assert_eq!(p, *a);
        p
    };
    let x = rand4(g.input_shape(), 40);
    let w = rand4(g.weight_shape(), 41);
    let b = rand1(g.out_c, 42);
    let dy = rand4(g.output_shape(), 43);
    let (xp, wp, dyp) = (permuted(&x), permuted(&w), permuted(&dy));
    // More than any sum here has terms (N·OH·OW = 48).
    let terms = 64;

    let want = conv2d_forward_cpu(&x.view(), &w.view(), &b.view(), &g);
    let got = conv2d_forward_cpu(&xp.view(), &wp.view(), &b.view(), &g);
    assert_same("forward", &got, &want, terms);

    let dx0 = rand4(g.input_shape(), 44);
    let (mut got, mut want) = (permuted(&dx0), dx0);
    conv2d_backward_input_cpu(&mut want, &dy.view(), &w.view(), &g);
    conv2d_backward_input_cpu(&mut got, &dyp.view(), &wp.view(), &g);
    assert_same("backward_input", &got, &want, terms);

    let dw0 = rand4(g.weight_shape(), 45);
    let (mut got, mut want) = (permuted(&dw0), dw0);
    conv2d_backward_weight_cpu(&mut want, &dy.view(), &x.view(), &g);
    conv2d_backward_weight_cpu(&mut got, &dyp.view(), &xp.view(), &g);
    assert_same("backward_weight", &got, &want, terms);

    let (mut got, mut want) = (Array1::zeros(g.out_c), Array1::zeros(g.out_c));
    conv2d_backward_bias_cpu(&mut want, &dy.view(), &g);
    conv2d_backward_bias_cpu(&mut got, &dyp.view(), &g);
    assert_same("backward_bias", &got, &want, terms);
}

fn assert_conv2d_shape_error<T: std::fmt::Debug>(r: crossmodal::Result<T>, what: &str) {
    match r {
        Err(Error::Shape { op, message }) => {
            assert!(
                op.contains("conv2d"),
                "{what}: error names {op:?}: {message}"
            )
        }
        other => panic!("{what}: expected a conv2d shape error, got {other:?}"),
    }
}

#[test]
fn conv2d_shape_errors() {
    // Geometry: a Valid kernel larger than the input, zero stride.
    assert_conv2d_shape_error(
        Conv2dGeometry::new([1, 2, 5, 1], 1, [3, 3], [1, 1], Padding::Valid),
        "kernel larger than input",
    );
    assert_conv2d_shape_error(
        Conv2dGeometry::new([1, 5, 5, 1], 1, [3, 3], [0, 1], Padding::Same),
        "zero stride",
    );

    let Some(ctx) = gpu() else { return };
    let g = geometry([3, 11, 9, 5], 7, [3, 2], [2, 1], Padding::Same);
    let zeros = |shape: &[usize]| ctx.zeros(shape, crossmodal::DType::F32).unwrap();
    let (x, w, b, y) = (
        zeros(&g.input_shape()),
        zeros(&g.weight_shape()),
        zeros(&g.bias_shape()),
        zeros(&g.output_shape()),
    );
    // The weight in OIHW / HWOI order instead of HWIO.
    let w_bad = zeros(&[3, 2, 7, 5]);
    let x_bad = zeros(&[3, 9, 11, 5]);
    let b_bad = zeros(&[5]);
    let y_bad = zeros(&[3, 6, 9, 6]);
    assert_conv2d_shape_error(op::conv2d_forward(ctx, &x, &w_bad, &b, &y, &g), "forward w");
    assert_conv2d_shape_error(op::conv2d_forward(ctx, &x_bad, &w, &b, &y, &g), "forward x");
    assert_conv2d_shape_error(op::conv2d_forward(ctx, &x, &w, &b_bad, &y, &g), "forward b");
    assert_conv2d_shape_error(op::conv2d_forward(ctx, &x, &w, &b, &y_bad, &g), "forward y");
    assert_conv2d_shape_error(
        op::conv2d_backward_input(ctx, &x, &y, &w_bad, &g),
        "backward_input w",
    );
    assert_conv2d_shape_error(
        op::conv2d_backward_input(ctx, &x, &y_bad, &w, &g),
        "backward_input dy",
    );
    assert_conv2d_shape_error(
        op::conv2d_backward_weight(ctx, &w_bad, &y, &x, &g),
        "backward_weight dw",
    );
    assert_conv2d_shape_error(
        op::conv2d_backward_weight(ctx, &w, &y, &x_bad, &g),
        "backward_weight x",
    );
    assert_conv2d_shape_error(
        op::conv2d_backward_bias(ctx, &b_bad, &y, &g),
        "backward_bias db",
    );
    // A flattened view of the output is accepted.
    let flat = zeros(&[3, numel(&g.output_shape()) / 3]);
    op::conv2d_forward(ctx, &x, &w, &b, &flat, &g).unwrap();
}

fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}
