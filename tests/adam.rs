//! Adam against the CPU reference over several steps (fresh gradients, the
//! step rewritten in place between submits) on awkward and seed-model sizes,
//! gradients with zeros, determinism; the reference against the textbook
//! bias-corrected form in f64; bad hyperparameters.

mod common;

use common::*;
// Launchers by path: the test carries the launcher's name.
use crossmodal::optim::adam::{self as op, adam_update_cpu, Adam, AdamConfig};
use crossmodal::DType;
use ndarray::ArrayD;

/// A larger rate than Keras's default so that w moves visibly in a few steps.
const CONFIG: AdamConfig = AdamConfig {
    learning_rate: 0.01,
    beta_1: 0.9,
    beta_2: 0.999,
    epsilon: 1e-7,
};

/// Gradient for `step`: random, with about a third of the entries zero, and
/// the first `always_zero` entries zero at every step.
fn gradient(shape: &[usize], step: u64, always_zero: usize) -> ArrayD<f32> {
    let mut g = random(shape, 1000 + step);
    let mask = random_u32(g.len(), 0, 3, 2000 + step);
    for (i, (x, k)) in g.iter_mut().zip(mask).enumerate() {
        if k == 0 || i < always_zero {
            *x = 0.0;
        }
    }
    g
}

struct Run {
    w: Vec<f32>,
    m: Vec<f32>,
    v: Vec<f32>,
}

/// `steps` updates through [`Adam`] on the GPU, with the reference alongside;
/// returns the GPU state after the comparison.
fn check_steps(config: AdamConfig, shape: &[usize], steps: u32) -> Option<Run> {
    let ctx = gpu()?;
    let always_zero = 5.min(shape.iter().product());
    let w0 = random(shape, 1);
    let gw = ctx.upload_f32(w0.as_slice().unwrap(), shape).unwrap();
    let gg = ctx.zeros(shape, DType::F32).unwrap();
    let mut adam = Adam::new(config).unwrap();
    let slot = adam.prepare(ctx, &gw, &gg).unwrap();

    let mut w = w0.clone();
    let mut m = ArrayD::<f32>::zeros(shape);
    let mut v = ArrayD::<f32>::zeros(shape);
    for t in 1..=steps {
        let g = gradient(shape, t as u64, always_zero);
        ctx.write_f32(&gg, g.as_slice().unwrap()).unwrap();
        adam.set_step(ctx, t).unwrap();
        // No wait between steps: each params write lands before its own submit.
        ctx.run(&adam.dispatches()).unwrap();
        adam_update_cpu(&mut w, &g.view(), &mut m, &mut v, &config, t);
    }
    let s = &adam.slots()[slot];
    let run = Run {
        w: ctx.read_f32(&gw).unwrap(),
        m: ctx.read_f32(&s.m).unwrap(),
        v: ctx.read_f32(&s.v).unwrap(),
    };
    // Same f32 operations in the same order; a GPU compiler may fuse a
    // multiply-add or round sqrt/division differently by an ulp, and the
    // step m·alpha/(sqrt(v)+eps) is at most ~alpha·3 in size.
    let what = format!("adam_update {shape:?} after {steps} steps");
    assert_close(
        &format!("{what}: m"),
        &run.m,
        m.as_slice().unwrap(),
        1e-6,
        1e-9,
    );
    assert_close(
        &format!("{what}: v"),
        &run.v,
        v.as_slice().unwrap(),
        1e-6,
        1e-12,
    );
    assert_close(
        &format!("{what}: w"),
        &run.w,
        w.as_slice().unwrap(),
        1e-6,
        1e-7,
    );
    // Entries whose gradient was always zero never move.
    assert_eq!(
        &run.w[..always_zero],
        &w0.as_slice().unwrap()[..always_zero]
    );
    Some(run)
}

#[test]
fn adam_update() {
    check_steps(CONFIG, &[37, 53], 6);
    // A multiple of 4 (the vec4 kernel), 481 vec4s: not a multiple of 256.
    check_steps(CONFIG, &[37, 52], 6);
    check_steps(CONFIG, &[100003], 4);
    check_steps(AdamConfig::default(), &[1], 3);
}

#[test]
fn adam_update_seed_shapes() {
    // Embedding, LSTM kernel and recurrent kernel, gate bias, Conv2D kernel,
    // Dense kernel and bias of the seed model, with Keras's default Adam.
    let shapes: [&[usize]; 7] = [
        &[10000, 32],
        &[32, 256],
        &[64, 256],
        &[256],
        &[3, 3, 1, 32],
        &[5472, 2],
        &[2],
    ];
    for shape in shapes {
        check_steps(AdamConfig::default(), shape, 2);
    }
}

#[test]
fn adam_update_is_deterministic() {
    let Some(a) = check_steps(CONFIG, &[37, 53], 3) else {
        return;
    };
    let b = check_steps(CONFIG, &[37, 53], 3).unwrap();
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&a.w), bits(&b.w));
    assert_eq!(bits(&a.m), bits(&b.m));
    assert_eq!(bits(&a.v), bits(&b.v));
}

#[test]
fn adam_update_matches_f64_reference() {
    let Some(ctx) = gpu() else { return };
    let shape = [37, 53];
    let w0 = random(&shape, 3);
    let gw = ctx.upload_f32(w0.as_slice().unwrap(), &shape).unwrap();
    let gg = ctx.zeros(&shape, DType::F32).unwrap();
    let gm = ctx.zeros(&shape, DType::F32).unwrap();
    let gv = ctx.zeros(&shape, DType::F32).unwrap();
    // The bare launcher, its step advanced through Dispatch::set_params.
    let d = op::adam_update(ctx, &gw, &gg, &gm, &gv, &CONFIG.params(w0.len(), 1)).unwrap();
    let mut w = to_f64(&w0);
    let mut m = ArrayD::<f64>::zeros(w.raw_dim());
    let mut v = ArrayD::<f64>::zeros(w.raw_dim());
    for t in 1..=8 {
        let g = gradient(&shape, t as u64, 0);
        ctx.write_f32(&gg, g.as_slice().unwrap()).unwrap();
        d.set_params(ctx, &CONFIG.params(w0.len(), t));
        ctx.run(&[&d]).unwrap();
        adam_update_cpu(&mut w, &to_f64(&g).view(), &mut m, &mut v, &CONFIG, t);
    }
    // f32 against f64: each step of size <= ~3·alpha carries f32 rounding.
    assert_close(
        "adam f32 kernel vs f64 reference",
        &ctx.read_f32(&gw).unwrap(),
        to_f32(&w).as_slice().unwrap(),
        1e-6,
        1e-6,
    );
}

#[test]
fn adam_reference_matches_textbook_form() {
    // Kingma & Ba with bias-corrected moments: Keras's epsilon hat equals
    // epsilon / sqrt(1 - beta_2^t) in the textbook form
    //   w -= lr · m̂ / (sqrt(v̂) + ε̂),  m̂ = m/(1-β1^t), v̂ = v/(1-β2^t).
    let shape = [7, 5];
    let mut w = to_f64(&random(&shape, 4));
    let mut w_book = w.clone();
    let mut m = ArrayD::<f64>::zeros(w.raw_dim());
    let mut v = ArrayD::<f64>::zeros(w.raw_dim());
    let (mut mb, mut vb) = (m.clone(), v.clone());
    let c = AdamConfig {
        epsilon: 1e-3, // large enough that its placement matters
        ..CONFIG
    };
    for t in 1..=10 {
        let g = to_f64(&gradient(&shape, t as u64, 2));
        adam_update_cpu(&mut w, &g.view(), &mut m, &mut v, &c, t);
        let (b1t, b2t) = (c.beta_1.powi(t as i32), c.beta_2.powi(t as i32));
        mb = &mb * c.beta_1 + &(&g * (1.0 - c.beta_1));
        vb = &vb * c.beta_2 + &(&g * &g * (1.0 - c.beta_2));
        let eps = c.epsilon / (1.0 - b2t).sqrt();
        let step = (&mb / (1.0 - b1t)) / ((&vb / (1.0 - b2t)).mapv(f64::sqrt) + eps);
        w_book = &w_book - &(step * c.learning_rate);
        assert_close_f64("adam vs textbook", &w, &w_book, 1e-12, 1e-14);
    }
}

#[test]
fn adam_first_step_is_about_lr_times_sign() {
    // At t = 1: m = (1-β1)g, v = (1-β2)g², alpha = lr·sqrt(1-β2)/(1-β1), so
    // the step is lr·g/(|g| + ε/sqrt(1-β2)) ≈ lr·sign(g) for |g| ≫ ε.
    let c = AdamConfig::default();
    let g = to_f64(&random(&[50], 5)).mapv(|x| x + x.signum() * 0.01);
    let mut w = ArrayD::<f64>::zeros(g.raw_dim());
    let mut m = w.clone();
    let mut v = w.clone();
    adam_update_cpu(&mut w, &g.view(), &mut m, &mut v, &c, 1);
    let e = c.epsilon / (1.0 - c.beta_2).sqrt();
    let want = g.mapv(|x| -c.learning_rate * x / (x.abs() + e));
    assert_close_f64("first Adam step", &w, &want, 1e-12, 0.0);
    // |g| >= 0.01 here, so the step is lr·sign(g) within ε̂/0.01 ≈ 3e-4.
    let sign = g.mapv(|x| -c.learning_rate * x.signum());
    assert_close_f64("first Adam step ≈ -lr·sign(g)", &w, &sign, 4e-4, 0.0);
}

#[test]
fn adam_rejects_bad_hyperparameters() {
    let Some(ctx) = gpu() else { return };
    for bad in [
        AdamConfig {
            beta_1: 1.0,
            ..AdamConfig::default()
        },
        AdamConfig {
            beta_2: -0.1,
            ..AdamConfig::default()
        },
        AdamConfig {
            epsilon: f64::NAN,
            ..AdamConfig::default()
        },
    ] {
        assert!(Adam::new(bad).is_err(), "{bad:?}");
    }
    let mut adam = Adam::new(AdamConfig::default()).unwrap();
    let err = adam.set_step(ctx, 0).unwrap_err().to_string();
    assert!(err.contains("step 0"), "{err}");
    assert_eq!(adam.step(), 1);
    let w = ctx.zeros(&[4], DType::F32).unwrap();
    let g = ctx.zeros(&[5], DType::F32).unwrap();
    let err = adam.prepare(ctx, &w, &g).unwrap_err().to_string();
    assert!(err.contains("adam_update") && err.contains('g'), "{err}");
}
