//! Segment sums against the CPU reference (scalar and vec4 widths, shapes
//! not multiples of the workgroup, a segment count lowered per run through
//! the params, empty input) and the token chunking they are used with.

mod common;

use common::*;
use crossmodal::ops::segment_sum::{
    self as op, segment_sum_cpu, token_chunks, SegmentSumParams, MAX_CHUNK,
};
use crossmodal::DType;
use ndarray::Ix2;

/// Tokens with a long run of one token (padding-like), repeats and
/// singletons.
fn padded_tokens(n: usize, seed: u64) -> Vec<u32> {
    let wide = random_u32(n, 1, 50, seed);
    (0..n)
        .map(|i| if i % 5 < 3 { 0 } else { wide[i] })
        .collect()
}

#[test]
fn token_chunks_cut_runs_and_keep_order() {
    let tokens = padded_tokens(1000, 3);
    let c = token_chunks(&tokens);
    assert_eq!(c.start.len(), c.chunks() + 1);
    assert_eq!(c.first.len(), c.chunks());
    assert_eq!(*c.start.last().unwrap() as usize, tokens.len());
    // 600 zeros cut into ceil(600/64) = 10 chunks, the rest one chunk per
    // distinct token at most 64 long.
    assert_eq!(
        c.token.iter().filter(|&&t| t == 0).count(),
        600usize.div_ceil(MAX_CHUNK)
    );
    for k in 0..c.chunks() {
        let (s, e) = (c.start[k] as usize, c.start[k + 1] as usize);
        assert!(
            e > s && e - s <= MAX_CHUNK,
            "chunk {k} has {} positions",
            e - s
        );
        assert_eq!(c.first[k], c.order[s]);
        for &q in &c.order[s..e] {
            assert_eq!(tokens[q as usize], c.token[k], "chunk {k} mixes tokens");
            assert_eq!(c.chunk_of[q as usize] as usize, k);
        }
        // Positions ascend inside a chunk, tokens ascend across chunks.
        assert!(c.order[s..e].windows(2).all(|w| w[0] < w[1]));
        if k > 0 {
            assert!(c.token[k - 1] <= c.token[k]);
        }
    }
    assert_eq!(token_chunks(&[]).chunks(), 0);
}

/// Sums `segments` of the chunks of `tokens` on the GPU, with the dispatch
/// prepared for every chunk and the count lowered through the params.
fn check(rows: usize, width: usize, segments: Option<usize>, seed: u64) {
    let Some(ctx) = gpu() else { return };
    let tokens = padded_tokens(rows, seed);
    let c = token_chunks(&tokens);
    let x = random(&[rows, width], seed + 1)
        .into_dimensionality::<Ix2>()
        .unwrap();
    let used = segments.unwrap_or(c.chunks()).min(c.chunks());
    let want = segment_sum_cpu(&x.view(), &c.order, &c.start[..=used]);
    let gx = ctx
        .upload_f32(x.as_slice().unwrap(), &[rows, width])
        .unwrap();
    let gorder = ctx.upload_u32(&c.order, &[rows]).unwrap();
    let gstart = ctx.upload_u32(&c.start, &[c.start.len()]).unwrap();
    let gout = ctx.zeros(&[rows.max(1), width], DType::F32).unwrap();
    let d = op::segment_sum(ctx, &gout, &gx, &gorder, &gstart, c.chunks()).unwrap();
    d.set_params(ctx, &SegmentSumParams::new(rows, width, used));
    ctx.run(&[&d]).unwrap();
    let got = ctx.read_f32(&gout).unwrap();
    // Same additions in the same order: exact.
    assert_close(
        "segment_sum",
        &got[..used * width],
        want.as_slice().unwrap(),
        0.0,
        0.0,
    );
    // Rows past the segments this run are left alone.
    assert!(got[used * width..].iter().all(|&v| v == 0.0));
}

#[test]
fn segment_sum_vec4_matches_cpu() {
    check(1000, 68, None, 1);
}

#[test]
fn segment_sum_scalar_matches_cpu() {
    check(777, 37, None, 2);
}

#[test]
fn segment_sum_seed_shape_matches_cpu() {
    // The seed's LSTM: 100 steps × 32 samples, 4 gates × 64 units.
    check(3200, 256, None, 3);
}

#[test]
fn segment_sum_fewer_segments_than_prepared() {
    check(1000, 68, Some(7), 4);
    check(777, 37, Some(1), 5);
}

#[test]
fn segment_sum_rejects_too_many_segments() {
    let Some(ctx) = gpu() else { return };
    let x = ctx.zeros(&[10, 4], DType::F32).unwrap();
    let order = ctx.zeros(&[10], DType::U32).unwrap();
    let start = ctx.zeros(&[4], DType::U32).unwrap();
    let out = ctx.zeros(&[10, 4], DType::F32).unwrap();
    let e = op::segment_sum(ctx, &out, &x, &order, &start, 5).unwrap_err();
    assert!(e.to_string().contains("5 segments"), "{e}");
}
