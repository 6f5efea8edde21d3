//! Embedding kernels against the CPU reference (awkward and seed shapes,
//! out-of-range tokens, padding index, accumulation, determinism) and the
//! table gradient against finite differences.

mod common;

use common::*;
// Test names equal the launcher names, so the launchers are called by path.
use crossmodal::ops::embedding::{self as op, embedding_backward_cpu, embedding_forward_cpu};
use crossmodal::DType;
use ndarray::{Array2, Ix2};

/// Tokens in [0, hi) with many repeats: every third position draws from the
/// few tokens [0, 4), the rest from the whole range.
fn repeated_tokens(n: usize, hi: u32, seed: u64) -> Vec<u32> {
    let wide = random_u32(n, 0, hi, seed);
    let narrow = random_u32(n, 0, 4.min(hi), seed + 1);
    (0..n)
        .map(|i| if i % 3 == 0 { narrow[i] } else { wide[i] })
        .collect()
}

fn table(v: usize, d: usize, seed: u64) -> Array2<f32> {
    random(&[v, d], seed).into_dimensionality::<Ix2>().unwrap()
}

fn check_forward(v: usize, d: usize, token_shape: &[usize], tokens: &[u32]) {
    let Some(ctx) = gpu() else { return };
    let t = table(v, d, 1);
    let want = embedding_forward_cpu(&t.view(), tokens);
    let gt = ctx.upload_f32(t.as_slice().unwrap(), &[v, d]).unwrap();
    let gtok = ctx.upload_u32(tokens, token_shape).unwrap();
    let mut out_shape = token_shape.to_vec();
    out_shape.push(d);
    let gout = ctx.zeros(&out_shape, DType::F32).unwrap();
    ctx.run(&[&op::embedding_forward(ctx, &gt, &gtok, &gout).unwrap()])
        .unwrap();
    // A gather copies values: exact.
    assert_close(
        "embedding_forward",
        &ctx.read_f32(&gout).unwrap(),
        want.as_slice().unwrap(),
        0.0,
        0.0,
    );
}

/// Runs the GPU backward on a non-zero starting gradient and returns it.
fn gpu_backward(
    v: usize,
    d: usize,
    token_shape: &[usize],
    tokens: &[u32],
    pad: Option<u32>,
    dtable0: &Array2<f32>,
    dy: &Array2<f32>,
) -> Option<Vec<f32>> {
    let ctx = gpu()?;
    let gdt = ctx
        .upload_f32(dtable0.as_slice().unwrap(), &[v, d])
        .unwrap();
    let mut dy_shape = token_shape.to_vec();
    dy_shape.push(d);
    let gdy = ctx.upload_f32(dy.as_slice().unwrap(), &dy_shape).unwrap();
    let gtok = ctx.upload_u32(tokens, token_shape).unwrap();
    let order = op::token_order(tokens);
    let gorder = ctx.upload_u32(&order, &[order.len()]).unwrap();
    ctx.run(&[&op::embedding_backward(ctx, &gdt, &gdy, &gtok, &gorder, pad).unwrap()])
        .unwrap();
    Some(ctx.read_f32(&gdt).unwrap())
}

fn check_backward(v: usize, d: usize, token_shape: &[usize], tokens: &[u32], pad: Option<u32>) {
    let n = tokens.len();
    // Accumulation: the table gradient starts non-zero.
    let dtable0 = table(v, d, 2);
    let dy = table(n, d, 3);
    let mut want = dtable0.clone();
    embedding_backward_cpu(&mut want, &dy.view(), tokens, pad);
    let Some(got) = gpu_backward(v, d, token_shape, tokens, pad, &dtable0, &dy) else {
        return;
    };
    // The kernel makes the same f32 additions in the same order as the
    // reference (no products, so no FMA contraction): exact.
    assert_close(
        &format!("embedding_backward (pad {pad:?})"),
        &got,
        want.as_slice().unwrap(),
        0.0,
        0.0,
    );
    if let Some(p) = pad {
        let p = p as usize;
        assert_eq!(
            &got[p * d..(p + 1) * d],
            dtable0.row(p).as_slice().unwrap(),
            "the padding row must get no gradient"
        );
    }
}

/// V=37, D=13, N=53: nothing is a multiple of a workgroup size.
const V: usize = 37;
const D: usize = 13;
const N: usize = 53;

#[test]
fn embedding_forward() {
    let tokens = repeated_tokens(N, V as u32, 10);
    check_forward(V, D, &[N], &tokens);
    // [B, T] tokens give a [B, T, D] output.
    check_forward(V, D, &[5, 7], &repeated_tokens(35, V as u32, 11));
}

#[test]
fn embedding_forward_out_of_range_token_gives_zeros() {
    let mut tokens = repeated_tokens(N, V as u32, 12);
    tokens[4] = V as u32;
    tokens[20] = u32::MAX;
    // The reference writes zero rows for them, so this also checks the kernel.
    check_forward(V, D, &[N], &tokens);
}

#[test]
fn embedding_backward() {
    let tokens = repeated_tokens(N, V as u32, 13);
    check_backward(V, D, &[N], &tokens, None);
    check_backward(V, D, &[N], &tokens, Some(tokens[0]));
    // out-of-range tokens are ignored
    let mut bad = tokens.clone();
    bad[7] = V as u32 + 3;
    bad[8] = u32::MAX;
    check_backward(V, D, &[N], &bad, Some(2));
    // A wide D (one workgroup row per column)
    check_backward(11, 150, &[3, 7], &repeated_tokens(21, 11, 14), Some(0));
    // D a multiple of 4: the vec4 kernels (the seed's D = 32 is too).
    check_backward(V, 12, &[N], &bad, Some(2));
}

#[test]
fn embedding_forward_vec4() {
    let mut tokens = repeated_tokens(N, V as u32, 15);
    tokens[3] = V as u32;
    check_forward(V, 12, &[N], &tokens);
}

#[test]
fn token_order_groups_tokens_and_keeps_positions_ascending() {
    let tokens = [5, 0, 5, 2, 0, 5, 9];
    assert_eq!(op::token_order(&tokens), [1, 4, 3, 0, 2, 5, 6]);
    let tokens = seed_tokens();
    let order = op::token_order(&tokens);
    for w in order.windows(2) {
        let (a, b) = (w[0] as usize, w[1] as usize);
        assert!(
            (tokens[a], a) < (tokens[b], b),
            "positions {a} and {b} are out of order"
        );
    }
}

/// Seed model: tokens [32, 100], Embedding(10000, 32), ~30% padding zeros.
fn seed_tokens() -> Vec<u32> {
    let few = random_u32(3200, 1, 60, 20);
    let many = random_u32(3200, 1, 10000, 21);
    let pick = random_u32(3200, 0, 10, 22);
    (0..3200)
        .map(|i| match pick[i] {
            0..=2 => 0,
            3..=6 => few[i],
            _ => many[i],
        })
        .collect()
}

#[test]
fn embedding_seed_shape() {
    let tokens = seed_tokens();
    check_forward(10000, 32, &[32, 100], &tokens);
    check_backward(10000, 32, &[32, 100], &tokens, Some(0));
    check_backward(10000, 32, &[32, 100], &tokens, None);
}

#[test]
fn embedding_backward_is_deterministic() {
    let tokens = seed_tokens();
    let zeros = Array2::zeros((10000, 32));
    let dy = table(3200, 32, 23) * 100.0;
    let Some(a) = gpu_backward(10000, 32, &[32, 100], &tokens, None, &zeros, &dy) else {
        return;
    };
    let b = gpu_backward(10000, 32, &[32, 100], &tokens, None, &zeros, &dy).unwrap();
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert!(bits(&a) == bits(&b), "two backward runs differ in some bit");
}

#[test]
fn embedding_rejects_bad_shapes() {
    let Some(ctx) = gpu() else { return };
    let t = ctx.zeros(&[10, 4], DType::F32).unwrap();
    let tok = ctx.zeros(&[6], DType::U32).unwrap();
    let tok_f = ctx.zeros(&[6], DType::F32).unwrap();
    let out = ctx.zeros(&[6, 4], DType::F32).unwrap();
    let wrong = ctx.zeros(&[6, 5], DType::F32).unwrap();
    let flat = ctx.zeros(&[40], DType::F32).unwrap();
    assert!(op::embedding_forward(ctx, &t, &tok, &out).is_ok());
    let e = op::embedding_forward(ctx, &t, &tok, &wrong).unwrap_err();
    assert!(e.to_string().contains("embedding_forward"), "{e}");
    assert!(op::embedding_forward(ctx, &t, &tok_f, &out).is_err());
    assert!(op::embedding_forward(ctx, &flat, &tok, &out).is_err());
    let order = ctx.zeros(&tok.shape, DType::U32).unwrap();
    assert!(op::embedding_backward(ctx, &t, &wrong, &tok, &order, None).is_err());
    // The order must be one u32 position per token.
    let short = ctx.zeros(&[3], DType::U32).unwrap();
    let e = op::embedding_backward(ctx, &t, &out, &tok, &short, None).unwrap_err();
    assert!(e.to_string().contains("token_order"), "{e}");
}

#[test]
fn embedding_backward_matches_finite_differences() {
    // Distinct V, D, N; repeated tokens; no padding (the padding row's
    // forward still depends on the table, only its gradient is dropped).
    let (v, d, n) = (7, 3, 11);
    let tokens = repeated_tokens(n, v as u32, 30);
    let t = to_f64(&random(&[v, d], 31));
    let w = to_f64(&random(&[n, d], 32));
    let w2 = w.clone().into_dimensionality::<Ix2>().unwrap();
    let mut grad = Array2::<f64>::zeros((v, d));
    embedding_backward_cpu(&mut grad, &w2.view(), &tokens, None);
    let fd = finite_difference(&t, 1e-6, |t| {
        let t = t.view().into_dimensionality::<Ix2>().unwrap();
        weighted_sum(&embedding_forward_cpu(&t, &tokens).into_dyn(), &w)
    });
    assert_close_f64(
        "embedding table gradient",
        &grad.into_dyn(),
        &fd,
        1e-6,
        1e-8,
    );
}
