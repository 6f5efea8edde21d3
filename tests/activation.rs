//! Activation kernels (ReLU, sigmoid, tanh) against the CPU reference and
//! the backward passes against finite differences.

mod common;

use common::*;
use crossmodal::ops::activation::*;
use ndarray::ArrayD;

const ALL: [Activation; 3] = [Activation::Relu, Activation::Sigmoid, Activation::Tanh];

/// 37×53 = 1961 elements: not a multiple of the 256-lane workgroup.
const SHAPE: [usize; 2] = [37, 53];

fn check_forward(act: Activation, shape: &[usize]) {
    let Some(ctx) = gpu() else { return };
    let x = random(shape, 1) * 3.0;
    let want = activation_forward_cpu(act, &x.view());
    let gx = ctx.upload_f32(x.as_slice().unwrap(), shape).unwrap();
    let gy = ctx.zeros(shape, crossmodal::DType::F32).unwrap();
    ctx.run(&[&activation_forward(ctx, act, &gx, &gy).unwrap()])
        .unwrap();
    // exp/tanh differ by a few ulps between implementations.
    assert_close(
        &format!("{act:?} forward"),
        &ctx.read_f32(&gy).unwrap(),
        want.as_slice().unwrap(),
        1e-5,
        1e-6,
    );
}

fn check_backward(act: Activation, shape: &[usize]) {
    let Some(ctx) = gpu() else { return };
    let x = random(shape, 2) * 3.0;
    let y = activation_forward_cpu(act, &x.view());
    let dy = random(shape, 3);
    let saved = if act.backward_uses_input() { &x } else { &y };
    // Accumulation: dx starts non-zero and the kernel adds to it.
    let dx0 = random(shape, 4);
    let mut want = dx0.clone();
    activation_backward_cpu(act, &mut want, &dy.view(), &saved.view());

    let gdx = ctx.upload_f32(dx0.as_slice().unwrap(), shape).unwrap();
    let gdy = ctx.upload_f32(dy.as_slice().unwrap(), shape).unwrap();
    let gsaved = ctx.upload_f32(saved.as_slice().unwrap(), shape).unwrap();
    ctx.run(&[&activation_backward(ctx, act, &gdx, &gdy, &gsaved).unwrap()])
        .unwrap();
    assert_close(
        &format!("{act:?} backward"),
        &ctx.read_f32(&gdx).unwrap(),
        want.as_slice().unwrap(),
        1e-5,
        1e-6,
    );
}

#[test]
fn relu_forward() {
    check_forward(Activation::Relu, &SHAPE)
}
#[test]
fn sigmoid_forward() {
    check_forward(Activation::Sigmoid, &SHAPE)
}
#[test]
fn tanh_forward() {
    check_forward(Activation::Tanh, &SHAPE)
}
#[test]
fn relu_backward() {
    check_backward(Activation::Relu, &SHAPE)
}
#[test]
fn sigmoid_backward() {
    check_backward(Activation::Sigmoid, &SHAPE)
}
#[test]
fn tanh_backward() {
    check_backward(Activation::Tanh, &SHAPE)
}

/// 37×52 = 1924 elements: a multiple of 4, so the vec4 kernels run (481
/// vec4s, not a multiple of the workgroup either).
const SHAPE_VEC4: [usize; 2] = [37, 52];

#[test]
fn vec4_kernels_match_the_reference() {
    for act in ALL {
        check_forward(act, &SHAPE_VEC4);
        check_backward(act, &SHAPE_VEC4);
    }
}

/// The seed model's ReLU after conv2d: 32×26×26×32.
#[test]
fn relu_seed_shape() {
    check_forward(Activation::Relu, &[32, 26, 26, 32]);
    check_backward(Activation::Relu, &[32, 26, 26, 32]);
}

#[test]
fn activation_backward_matches_finite_differences() {
    for act in ALL {
        let x = to_f64(&random(&[5, 7], 10)) * 2.0;
        // keep ReLU inputs away from the kink at 0
        let x = x.mapv(|v| if v.abs() < 0.05 { v + 0.1 } else { v });
        let w = to_f64(&random(&[5, 7], 11));
        let y = activation_forward_cpu(act, &x.view());
        let saved = if act.backward_uses_input() {
            x.clone()
        } else {
            y
        };
        let mut dx = ArrayD::zeros(x.raw_dim());
        activation_backward_cpu(act, &mut dx, &w.view(), &saved.view());
        let fd = finite_difference(&x, 1e-6, |x| {
            weighted_sum(&activation_forward_cpu(act, &x.view()), &w)
        });
        assert_close_f64(&format!("{act:?} gradient"), &dx, &fd, 1e-6, 1e-8);
    }
}

/// The f32 sigmoid and tanh of the CPU references (fast approximations)
/// against the exact f64 formulas: within 3e-7 relative (2-3 ulp) over
/// [-90, 90] (dense near 0, where tanh switches formula at 0.625), exact
/// saturation far out, and NaN passed through.
#[test]
fn fast_f32_sigmoid_tanh_match_f64() {
    let mut xs: Vec<f32> = (-900_000..=900_000).map(|i| i as f32 * 1e-4).collect();
    xs.extend((-2000..=2000).map(|i| i as f32 * 1e-6));
    xs.extend([0.625, -0.625, 0.624_999_9, 1e-30, -1e-30, 0.0, -0.0]);
    let (mut worst_s, mut worst_t) = (0.0f64, 0.0f64);
    for &x in &xs {
        let s = sigmoid_cpu(x) as f64;
        let s64 = 1.0 / (1.0 + (-(x as f64)).exp());
        // Below e^-87 the f32 sigmoid is ~1e-38 (the exp clamps): compare
        // absolutely there.
        let rel = |got: f64, want: f64| (got - want).abs() / want.abs().max(1e-30);
        if x > -80.0 {
            worst_s = worst_s.max(rel(s, s64));
        } else {
            assert!(s < 1e-34, "sigmoid({x}) = {s}");
        }
        let t = tanh_cpu(x) as f64;
        let t64 = (x as f64).tanh();
        worst_t = worst_t.max(if t64 == 0.0 { t.abs() } else { rel(t, t64) });
    }
    assert!(worst_s < 3e-7, "sigmoid: worst relative error {worst_s:e}");
    assert!(worst_t < 3e-7, "tanh: worst relative error {worst_t:e}");
    assert_eq!(tanh_cpu(100.0f32), 1.0);
    assert_eq!(tanh_cpu(-100.0f32), -1.0);
    assert_eq!(sigmoid_cpu(100.0f32), 1.0);
    assert!(sigmoid_cpu(f32::NAN).is_nan() && tanh_cpu(f32::NAN).is_nan());
    // f64 keeps the exact formulas.
    assert_eq!(tanh_cpu(0.3f64), 0.3f64.tanh());
    assert_eq!(sigmoid_cpu(0.3f64), 1.0 / (1.0 + (-0.3f64).exp()));
}
