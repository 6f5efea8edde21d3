//! SGD (plain, momentum, Nesterov) against the CPU reference over several
//! steps with a fresh gradient each step, on awkward and seed-model sizes;
//! the reference against the closed form of momentum under a constant
//! gradient; learning-rate changes and bad hyperparameters.

mod common;

use common::*;
// Launchers by path: the test carries the launcher's name.
use crossmodal::optim::sgd::{self as op, sgd_update_cpu, Sgd, SgdConfig};
use crossmodal::DType;
use ndarray::ArrayD;

const PLAIN: SgdConfig = SgdConfig {
    learning_rate: 0.05,
    momentum: 0.0,
    nesterov: false,
};
const MOMENTUM: SgdConfig = SgdConfig {
    learning_rate: 0.05,
    momentum: 0.9,
    nesterov: false,
};
const NESTEROV: SgdConfig = SgdConfig {
    learning_rate: 0.05,
    momentum: 0.9,
    nesterov: true,
};

/// Runs `steps` updates through [`Sgd`] and the f32 reference side by side.
fn check_steps(config: SgdConfig, shape: &[usize], steps: u64) {
    let Some(ctx) = gpu() else { return };
    let w0 = random(shape, 1);
    let gw = ctx.upload_f32(w0.as_slice().unwrap(), shape).unwrap();
    let gg = ctx.zeros(shape, DType::F32).unwrap();
    let mut sgd = Sgd::new(config).unwrap();
    let slot = sgd.prepare(ctx, &gw, &gg).unwrap();

    let mut w = w0.clone();
    let mut v = ArrayD::<f32>::zeros(shape);
    for step in 0..steps {
        let g = random(shape, 100 + step);
        ctx.write_f32(&gg, g.as_slice().unwrap()).unwrap();
        ctx.run(&sgd.dispatches()).unwrap();
        sgd_update_cpu(&mut w, &g.view(), &mut v, &config);
    }
    // Same f32 operations in the same order; a GPU compiler may fuse a
    // multiply-add, which changes the last bit of a product (|lr·g| <= 0.05).
    let what = format!("sgd_update {config:?} {shape:?}");
    assert_close(
        &format!("{what} w"),
        &ctx.read_f32(&gw).unwrap(),
        w.as_slice().unwrap(),
        1e-6,
        1e-7,
    );
    if config.uses_velocity() {
        assert_close(
            &format!("{what} velocity"),
            &ctx.read_f32(&sgd.slots()[slot].velocity).unwrap(),
            v.as_slice().unwrap(),
            1e-6,
            1e-8,
        );
    }
}

#[test]
fn sgd_update() {
    for config in [PLAIN, MOMENTUM, NESTEROV] {
        check_steps(config, &[37, 53], 5);
        check_steps(config, &[100003], 3);
    }
}

#[test]
fn sgd_update_seed_shapes() {
    // Embedding, Dense kernel and bias of the seed model.
    for shape in [&[10000, 32][..], &[5472, 2], &[2]] {
        check_steps(MOMENTUM, shape, 2);
    }
}

#[test]
fn sgd_update_launcher_with_placeholder_velocity() {
    let Some(ctx) = gpu() else { return };
    let shape = [37, 53];
    let w0 = random(&shape, 2);
    let g = random(&shape, 3);
    let gw = ctx.upload_f32(w0.as_slice().unwrap(), &shape).unwrap();
    let gg = ctx.upload_f32(g.as_slice().unwrap(), &shape).unwrap();
    let placeholder = ctx.zeros(&[1], DType::F32).unwrap();
    let d = op::sgd_update(ctx, &gw, &gg, &placeholder, &PLAIN.params(w0.len())).unwrap();
    ctx.run(&[&d]).unwrap();
    let mut w = w0.clone();
    sgd_update_cpu(
        &mut w,
        &g.view(),
        &mut ArrayD::zeros(shape.as_slice()),
        &PLAIN,
    );
    assert_close(
        "plain sgd",
        &ctx.read_f32(&gw).unwrap(),
        w.as_slice().unwrap(),
        1e-6,
        1e-7,
    );
    // With momentum the velocity must match w.
    let err = op::sgd_update(ctx, &gw, &gg, &placeholder, &MOMENTUM.params(w0.len()))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("sgd_update") && err.contains("velocity"),
        "{err}"
    );
}

#[test]
fn sgd_set_learning_rate_applies_to_prepared_updates() {
    let Some(ctx) = gpu() else { return };
    let shape = [257];
    let w0 = random(&shape, 4);
    let g = random(&shape, 5);
    let gw = ctx.upload_f32(w0.as_slice().unwrap(), &shape).unwrap();
    let gg = ctx.upload_f32(g.as_slice().unwrap(), &shape).unwrap();
    let mut sgd = Sgd::new(MOMENTUM).unwrap();
    sgd.prepare(ctx, &gw, &gg).unwrap();
    let (mut w, mut v) = (w0.clone(), ArrayD::<f32>::zeros(shape.as_slice()));
    for lr in [0.05, 0.2, 0.001] {
        sgd.set_learning_rate(ctx, lr).unwrap();
        ctx.run(&sgd.dispatches()).unwrap();
        let config = SgdConfig {
            learning_rate: lr,
            ..MOMENTUM
        };
        sgd_update_cpu(&mut w, &g.view(), &mut v, &config);
    }
    assert_close(
        "sgd after learning-rate changes",
        &ctx.read_f32(&gw).unwrap(),
        w.as_slice().unwrap(),
        1e-6,
        1e-7,
    );
    assert!(sgd.set_learning_rate(ctx, f64::NAN).is_err());
}

#[test]
fn sgd_reference_matches_closed_form() {
    // Constant gradient g, velocity from 0: v_t = -lr·g·(1 - m^t)/(1 - m),
    // w_t = w_0 + Σ_{s<=t} v_s (momentum), and w_t = w_0 - t·lr·g (plain).
    let g = to_f64(&random(&[7, 3], 6));
    let w0 = to_f64(&random(&[7, 3], 7));
    let (lr, m) = (MOMENTUM.learning_rate, MOMENTUM.momentum);
    let (mut w, mut v) = (w0.clone(), ArrayD::<f64>::zeros(g.raw_dim()));
    let (mut wp, mut vp) = (w0.clone(), ArrayD::<f64>::zeros(g.raw_dim()));
    let mut sum_v = 0.0;
    for t in 1..=6 {
        sgd_update_cpu(&mut w, &g.view(), &mut v, &MOMENTUM);
        sgd_update_cpu(&mut wp, &g.view(), &mut vp, &PLAIN);
        let vt = -lr * (1.0 - m.powi(t)) / (1.0 - m);
        sum_v += vt;
        assert_close_f64("velocity", &v, &(&g * vt), 1e-12, 1e-15);
        assert_close_f64("momentum w", &w, &(&w0 + &(&g * sum_v)), 1e-12, 1e-15);
        let plain = &w0 - &(&g * (t as f64 * lr));
        assert_close_f64("plain w", &wp, &plain, 1e-12, 1e-15);
    }
    // Nesterov: w moves by m·v_t - lr·g at step t.
    let (mut wn, mut vn) = (w0.clone(), ArrayD::<f64>::zeros(g.raw_dim()));
    let mut want = w0.clone();
    for t in 1..=4 {
        sgd_update_cpu(&mut wn, &g.view(), &mut vn, &NESTEROV);
        let vt = -lr * (1.0 - m.powi(t)) / (1.0 - m);
        want = &want + &(&g * (m * vt - lr));
        assert_close_f64("nesterov w", &wn, &want, 1e-12, 1e-15);
    }
}

#[test]
fn sgd_rejects_bad_hyperparameters() {
    for momentum in [-0.1, 1.5] {
        let err = Sgd::new(SgdConfig {
            momentum,
            ..SgdConfig::default()
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("momentum"), "{err}");
    }
    assert_eq!(SgdConfig::default().learning_rate, 0.01);
}
