//! Dropout: the kernels against the CPU reference (the mask and the
//! forward bit for bit, backward with accumulation), backward against
//! central finite differences with a fixed mask, the statistics of the
//! counter-based mask (drop fraction, independence across steps and seeds),
//! the hash against the xxHash32 definition, and bad rates.

mod common;

use common::*;
use crossmodal::graph::{Graph, Op};
use crossmodal::nn;
use crossmodal::ops::dropout as dropout_op;
use crossmodal::ops::dropout::*;
use crossmodal::{DType, Error, GpuContext};
use ndarray::ArrayD;

/// 37×53 = 1961 elements: not a multiple of the 256-lane workgroup.
const SHAPE: [usize; 2] = [37, 53];
/// The seed model's concat (32 × (64 + 5408)), where dropout would go.
const SEED_SHAPE: [usize; 2] = [32, 5472];

fn layer(rate: f32, seed: u64) -> Dropout {
    Dropout::new(rate, seed).unwrap()
}

/// Random values away from 0, so a zero output means a dropped element.
fn nonzero(shape: &[usize], seed: u64) -> ArrayD<f32> {
    random(shape, seed).mapv(|v| if v.abs() < 1e-3 { 0.5 } else { v })
}

fn gpu_forward(ctx: &GpuContext, d: &Dropout, x: &ArrayD<f32>, training: Option<u32>) -> Vec<f32> {
    let gx = ctx.upload_f32(x.as_slice().unwrap(), x.shape()).unwrap();
    let gy = ctx.zeros(x.shape(), DType::F32).unwrap();
    ctx.run(&[&dropout_op::dropout_forward(ctx, d, &gx, &gy, training).unwrap()])
        .unwrap();
    ctx.read_f32(&gy).unwrap()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn check_forward(shape: &[usize], rate: f32, seed: u64, step: u32) {
    let Some(ctx) = gpu() else { return };
    let d = layer(rate, seed);
    let x = nonzero(shape, 1);
    let want = dropout_forward_cpu(&d, &x.view(), Some(step));
    let got = gpu_forward(ctx, &d, &x, Some(step));
    // One integer test and one f32 multiply per element: identical bits.
    assert_eq!(
        bits(&got),
        bits(want.as_slice().unwrap()),
        "forward, rate {rate}"
    );
    let mask = dropout_mask_cpu::<f32>(&d, shape, step);
    for (i, (&y, &m)) in got.iter().zip(mask.iter()).enumerate() {
        assert_eq!(y == 0.0, m == 0.0, "mask element {i}");
    }
    assert!(got.contains(&0.0), "nothing was dropped");
}

#[test]
fn dropout_forward() {
    check_forward(&SHAPE, 0.3, 42, 0);
    check_forward(&SHAPE, 0.3, 42, 7);
    check_forward(&SHAPE, 0.8, u64::MAX - 3, 123_456);
}

#[test]
fn dropout_forward_seed_shape() {
    check_forward(&SEED_SHAPE, 0.5, 2024, 3);
}

#[test]
fn dropout_forward_at_inference_is_the_identity() {
    let Some(ctx) = gpu() else { return };
    let d = layer(0.5, 9);
    let x = random(&SHAPE, 2);
    let want = dropout_forward_cpu(&d, &x.view(), None);
    assert_eq!(want, x);
    assert_eq!(
        bits(&gpu_forward(ctx, &d, &x, None)),
        bits(x.as_slice().unwrap())
    );
    // Rate 0 keeps everything, in training too.
    let none = layer(0.0, 9);
    assert_eq!(dropout_forward_cpu(&none, &x.view(), Some(4)), x);
    assert_eq!(
        bits(&gpu_forward(ctx, &none, &x, Some(4))),
        bits(x.as_slice().unwrap())
    );
}

fn check_backward(shape: &[usize], rate: f32, step: u32) {
    let Some(ctx) = gpu() else { return };
    let d = layer(rate, 77);
    let dy = random(shape, 3);
    // Accumulation: dx starts non-zero and the kernel adds to it.
    let dx0 = random(shape, 4);
    let mut want = dx0.clone();
    dropout_backward_cpu(&d, &mut want, &dy.view(), step);
    let gdx = ctx.upload_f32(dx0.as_slice().unwrap(), shape).unwrap();
    let gdy = ctx.upload_f32(dy.as_slice().unwrap(), shape).unwrap();
    ctx.run(&[&dropout_op::dropout_backward(ctx, &d, &gdx, &gdy, step).unwrap()])
        .unwrap();
    // dx + dy·scale may be fused into one fma on the device: an ulp.
    assert_close(
        "dropout backward",
        &ctx.read_f32(&gdx).unwrap(),
        want.as_slice().unwrap(),
        1e-6,
        1e-7,
    );
}

#[test]
fn dropout_backward() {
    check_backward(&SHAPE, 0.3, 5);
    check_backward(&SEED_SHAPE, 0.5, 6);
}

#[test]
fn dropout_backward_matches_finite_differences() {
    // [5,7]: distinct sizes; a fixed mask (seed and step) on both sides.
    let d = layer(0.4, 31);
    let step = 2;
    let x = to_f64(&random(&[5, 7], 10));
    let w = to_f64(&random(&[5, 7], 11));
    let mut dx = ArrayD::zeros(x.raw_dim());
    dropout_backward_cpu(&d, &mut dx, &w.view(), step);
    let fd = finite_difference(&x, 1e-6, |x| {
        weighted_sum(&dropout_forward_cpu(&d, &x.view(), Some(step)), &w)
    });
    assert_close_f64("dropout gradient", &dx, &fd, 1e-6, 1e-8);
    assert!(dx.iter().any(|&v| v == 0.0) && dx.iter().any(|&v| v != 0.0));
}

/// Fraction of zeros in the GPU mask of `n` ones.
fn drop_fraction(ctx: &GpuContext, d: &Dropout, n: usize, step: u32) -> (f64, Vec<f32>) {
    let x = ArrayD::from_elem(vec![n], 1.0f32);
    let y = gpu_forward(ctx, d, &x, Some(step));
    let zeros = y.iter().filter(|&&v| v == 0.0).count();
    (zeros as f64 / n as f64, y)
}

#[test]
fn dropout_drops_a_fraction_close_to_the_rate() {
    let Some(ctx) = gpu() else { return };
    let n = 1 << 20;
    for (k, rate) in [0.1f32, 0.5, 0.9].into_iter().enumerate() {
        let d = layer(rate, 1000 + k as u64);
        let (frac, y) = drop_fraction(ctx, &d, n, 0);
        // Binomial: 5 standard deviations (about 3e-3 at rate 0.5).
        let p = rate as f64;
        let sigma = (p * (1.0 - p) / n as f64).sqrt();
        assert!(
            (frac - p).abs() < 5.0 * sigma,
            "rate {rate}: dropped {frac}"
        );
        // Kept values are scaled by 1/(1-rate), rounded to f32.
        let scale = (1.0 / (1.0 - rate as f64)) as f32;
        assert!(y.iter().all(|&v| v == 0.0 || v == scale), "rate {rate}");
    }
}

#[test]
fn dropout_masks_differ_across_steps_and_seeds() {
    let Some(ctx) = gpu() else { return };
    let n = 1 << 18;
    let p = 0.5;
    let d = layer(p as f32, 5);
    let (_, a) = drop_fraction(ctx, &d, n, 0);
    let (_, a_again) = drop_fraction(ctx, &d, n, 0);
    assert_eq!(bits(&a), bits(&a_again), "the same seed and step");
    // Independent masks disagree on 2p(1-p) of the elements; a mask
    // shifted or reused would disagree on far fewer or more.
    let disagree = |b: &[f32]| {
        a.iter()
            .zip(b)
            .filter(|(x, y)| (**x == 0.0) != (**y == 0.0))
            .count() as f64
            / n as f64
    };
    let want = 2.0 * p * (1.0 - p);
    let sigma = (want * (1.0 - want) / n as f64).sqrt();
    for (what, other, step) in [
        ("the next step", layer(p as f32, 5), 1),
        ("a later step", layer(p as f32, 5), 1 << 20),
        ("another seed", layer(p as f32, 6), 0),
        (
            "a seed differing in its high word",
            layer(p as f32, 5 | (1 << 32)),
            0,
        ),
    ] {
        let (_, b) = drop_fraction(ctx, &other, n, step);
        let f = disagree(&b);
        assert!(
            (f - want).abs() < 5.0 * sigma,
            "{what}: masks disagree on {f} of the elements"
        );
    }
    // Neighbouring elements are independent too: the mask against itself
    // shifted by one.
    let shifted = {
        let mut s = a[1..].to_vec();
        s.push(a[0]);
        s
    };
    let f = disagree(&shifted);
    assert!((f - want).abs() < 5.0 * sigma, "neighbours disagree on {f}");
}

/// xxHash32 of a short message (under 16 bytes), straight from the
/// specification, to check [`dropout_hash`] is what its documentation says.
fn xxh32_short(bytes: &[u8], seed: u32) -> u32 {
    const P1: u32 = 2_654_435_761;
    const P2: u32 = 2_246_822_519;
    const P3: u32 = 3_266_489_917;
    const P4: u32 = 668_265_263;
    const P5: u32 = 374_761_393;
    assert!(bytes.len() < 16);
    let mut h = seed.wrapping_add(P5).wrapping_add(bytes.len() as u32);
    let mut words = bytes.chunks_exact(4);
    for w in &mut words {
        let w = u32::from_le_bytes(w.try_into().unwrap());
        h = h
            .wrapping_add(w.wrapping_mul(P3))
            .rotate_left(17)
            .wrapping_mul(P4);
    }
    for &b in words.remainder() {
        h = h
            .wrapping_add((b as u32).wrapping_mul(P5))
            .rotate_left(11)
            .wrapping_mul(P1);
    }
    h ^= h >> 15;
    h = h.wrapping_mul(P2);
    h ^= h >> 13;
    h = h.wrapping_mul(P3);
    h ^ (h >> 16)
}

#[test]
fn dropout_hash_is_xxh32() {
    // The specification's published values.
    assert_eq!(xxh32_short(b"", 0), 0x02CC_5D05);
    assert_eq!(xxh32_short(b"abc", 0), 0x32D1_53FF);
    for (seed, step, index) in [
        (0u64, 0u32, 0u32),
        (42, 7, 1961),
        (u64::MAX, u32::MAX, 12345),
    ] {
        let mut msg = Vec::new();
        for w in [(seed >> 32) as u32, step, index] {
            msg.extend_from_slice(&w.to_le_bytes());
        }
        assert_eq!(
            dropout_hash(seed, step, index),
            xxh32_short(&msg, seed as u32),
            "seed {seed}, step {step}, index {index}"
        );
    }
}

#[test]
fn dropout_rejects_bad_rates_and_shapes() {
    for rate in [1.0, 1.5, -0.1, f32::NAN] {
        let e = Dropout::new(rate, 0).unwrap_err();
        assert!(matches!(e, Error::Unsupported { .. }), "{e}");
        let mut g = Graph::new();
        let x = g
            .add(
                "x",
                Op::Input {
                    shape: vec![2, 3],
                    dtype: DType::F32,
                },
                &[],
            )
            .unwrap();
        let e = nn::dropout(&mut g, "drop", x, rate, 0).unwrap_err();
        assert!(e.to_string().contains("drop"), "{e}");
    }
    let Some(ctx) = gpu() else { return };
    let d = layer(0.5, 0);
    let x = ctx.zeros(&[6], DType::F32).unwrap();
    let y = ctx.zeros(&[7], DType::F32).unwrap();
    let e = dropout_op::dropout_forward(ctx, &d, &x, &y, Some(0)).unwrap_err();
    assert!(e.to_string().contains("dropout_forward"), "{e}");
    let ids = ctx.zeros(&[6], DType::U32).unwrap();
    assert!(dropout_op::dropout_backward(ctx, &d, &x, &ids, 0).is_err());
}
