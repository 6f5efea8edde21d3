//! matmul in all three layouts and both kernel variants (the direct one
//! also with each lane axis forced: N, M, and K with its in-workgroup
//! reduction) against the CPU reference (computed in f64), on awkward
//! shapes (not multiples of any tile, sizes of 1, K not a multiple of the 8
//! lanes or smaller than them), the seed model's shapes, non-zero offsets
//! and accumulation; which lane axis the launcher picks for the seed's shapes; the backward rule against central finite differences; and
//! the GPU backward (ABt for dA, AtB for dB, accumulating) against the CPU
//! backward.
//!
//! Tolerance for f32 sums of K products of values in [-1, 1]:
//! rtol 1e-4 plus atol 2e-6·√K (the rounding of a K-term sum grows like √K).

mod common;

use common::*;
use crossmodal::ops::matmul::*;
use crossmodal::{DType, Error, GpuContext};
use ndarray::{Array2, Ix2};

const LAYOUTS: [Layout; 3] = [Layout::AB, Layout::AtB, Layout::ABt];
const VARIANTS: [MatmulVariant; 2] = [MatmulVariant::Direct, MatmulVariant::Tiled];

/// A kernel to test: a variant as `matmul_with` runs it (the direct one
/// with the lane axis `direct_lanes` picks), or the direct one with a
/// forced lane axis.
#[derive(Clone, Copy, Debug)]
enum Kernel {
    Variant(MatmulVariant),
    Lanes(DirectLanes),
}

const KERNELS: [Kernel; 5] = [
    Kernel::Variant(MatmulVariant::Direct),
    Kernel::Variant(MatmulVariant::Tiled),
    Kernel::Lanes(DirectLanes::N),
    Kernel::Lanes(DirectLanes::M),
    Kernel::Lanes(DirectLanes::K),
];

#[allow(clippy::too_many_arguments)]
fn launch(
    ctx: &GpuContext,
    kernel: Kernel,
    layout: Layout,
    c: &crossmodal::GpuTensor,
    a: &crossmodal::GpuTensor,
    b: &crossmodal::GpuTensor,
    p: MatmulParams,
) -> crossmodal::Result<crossmodal::gpu::Dispatch> {
    match kernel {
        Kernel::Variant(v) => matmul_with(ctx, v, layout, c, a, b, p),
        Kernel::Lanes(l) => matmul_direct(ctx, l, layout, c, a, b, p),
    }
}

/// Value written around each matrix inside its buffer: a kernel that reads
/// or writes outside its matrix shows up in the result or the check.
const SENTINEL: f32 = 1.0e4;

fn random2(rows: usize, cols: usize, seed: u64) -> Array2<f32> {
    random(&[rows, cols], seed)
        .into_dimensionality::<Ix2>()
        .unwrap()
}

fn f64_of(a: &Array2<f32>) -> Array2<f64> {
    a.mapv(|v| v as f64)
}

/// Stored shapes of A and B for `C[m,n] = op(A)·op(B)` with inner size k.
fn stored_shapes(layout: Layout, m: usize, n: usize, k: usize) -> ([usize; 2], [usize; 2]) {
    match layout {
        Layout::AB => ([m, k], [k, n]),
        Layout::AtB => ([k, m], [k, n]),
        Layout::ABt => ([m, k], [n, k]),
    }
}

/// Uploads `data` at element `offset` of a buffer with `tail` sentinel
/// elements after it.
fn upload_at(ctx: &GpuContext, data: &[f32], offset: usize, tail: usize) -> crossmodal::GpuTensor {
    let mut buf = vec![SENTINEL; offset];
    buf.extend_from_slice(data);
    buf.extend(std::iter::repeat_n(SENTINEL, tail));
    let len = buf.len();
    ctx.upload_f32(&buf, &[len]).unwrap()
}

fn tolerance(k: usize) -> (f32, f32) {
    (1e-4, 2e-6 * (k.max(1) as f32).sqrt())
}

/// Runs one matmul and checks C against the f64 reference, and that the
/// elements of C's buffer around the matrix are untouched.
#[allow(clippy::too_many_arguments)]
fn check(
    ctx: &GpuContext,
    kernel: Kernel,
    layout: Layout,
    m: usize,
    n: usize,
    k: usize,
    offsets: (usize, usize, usize),
    accumulate: bool,
    seed: u64,
) {
    let (ash, bsh) = stored_shapes(layout, m, n, k);
    let a = random2(ash[0], ash[1], seed);
    let b = random2(bsh[0], bsh[1], seed + 1);
    let c0 = random2(m, n, seed + 2);
    let mut want = matmul_cpu(layout, &f64_of(&a).view(), &f64_of(&b).view());
    if accumulate {
        want += &f64_of(&c0);
    }
    let (ao, bo, co) = offsets;
    let ga = upload_at(ctx, a.as_slice().unwrap(), ao, 3);
    let gb = upload_at(ctx, b.as_slice().unwrap(), bo, 5);
    let gc = upload_at(ctx, c0.as_slice().unwrap(), co, 7);
    let mut p = MatmulParams::new(m, n, k).offsets(ao, bo, co);
    if accumulate {
        p = p.accumulate();
    }
    let d = launch(ctx, kernel, layout, &gc, &ga, &gb, p).unwrap();
    ctx.run(&[&d]).unwrap();
    let got = ctx.read_f32(&gc).unwrap();
    let what = format!(
        "{kernel:?} {layout:?} m={m} n={n} k={k} offsets={offsets:?} accumulate={accumulate}"
    );
    assert!(
        got[..co]
            .iter()
            .chain(&got[co + m * n..])
            .all(|&v| v == SENTINEL),
        "{what}: wrote outside C"
    );
    let want32: Vec<f32> = want.iter().map(|&v| v as f32).collect();
    let (rtol, atol) = tolerance(k);
    assert_close(&what, &got[co..co + m * n], &want32, rtol, atol);
}

fn check_all(m: usize, n: usize, k: usize, offsets: (usize, usize, usize), accumulate: bool) {
    if let Some(ctx) = gpu() {
        check_all_on(ctx, m, n, k, offsets, accumulate);
    }
}

fn check_all_on(
    ctx: &GpuContext,
    m: usize,
    n: usize,
    k: usize,
    offsets: (usize, usize, usize),
    accumulate: bool,
) {
    for (i, kernel) in KERNELS.into_iter().enumerate() {
        for (j, layout) in LAYOUTS.into_iter().enumerate() {
            check(
                ctx,
                kernel,
                layout,
                m,
                n,
                k,
                offsets,
                accumulate,
                (10 * i + j) as u64,
            );
        }
    }
}

/// A dispatch prepared for a large C and then given smaller m and n in its
/// params (as the graph executor does with per-batch chunk counts; the
/// remainders mod 4 stay, as `matmul` asks): the workgroups past the new
/// edge must write nothing, the rest the product. Once with sizes that are
/// multiples of 4 (the vec4 kernels), once without.
#[test]
fn matmul_sizes_lowered_after_prepare() {
    let Some(ctx) = gpu() else { return };
    let k = 29;
    for (m_max, n_max, m, n) in [(300, 260, 36, 44), (301, 259, 37, 43)] {
        for (i, kernel) in KERNELS.into_iter().enumerate() {
            for (j, layout) in LAYOUTS.into_iter().enumerate() {
                let seed = 100 + (10 * i + j) as u64;
                let (ash, bsh) = stored_shapes(layout, m, n, k);
                let a = random2(ash[0], ash[1], seed);
                let b = random2(bsh[0], bsh[1], seed + 1);
                let want = matmul_cpu(layout, &f64_of(&a).view(), &f64_of(&b).view());
                let ga = upload_at(ctx, a.as_slice().unwrap(), 0, (m_max - m) * k);
                let gb = upload_at(ctx, b.as_slice().unwrap(), 0, (n_max - n) * k);
                let gc = upload_at(ctx, &[], 0, m_max * n_max);
                let prepared = MatmulParams::new(m_max, n_max, k);
                let d = launch(ctx, kernel, layout, &gc, &ga, &gb, prepared).unwrap();
                d.set_params(ctx, &MatmulParams::new(m, n, k));
                ctx.run(&[&d]).unwrap();
                let got = ctx.read_f32(&gc).unwrap();
                let what = format!("{kernel:?} {layout:?} prepared {m_max}x{n_max}, run {m}x{n}");
                assert!(
                    got[m * n..].iter().all(|&v| v == SENTINEL),
                    "{what}: wrote past C"
                );
                let want32: Vec<f32> = want.iter().map(|&v| v as f32).collect();
                let (rtol, atol) = tolerance(k);
                assert_close(&what, &got[..m * n], &want32, rtol, atol);
            }
        }
    }
}

/// lavapipe has subgroups of 8 lanes, so the direct kernels share the
/// values every lane needs by subgroupBroadcast; a context opened without
/// subgroups compiles the per-lane loads instead (the path of devices
/// without them): both must give the product, on odd and vec4-aligned
/// shapes, with offsets, in every lane arrangement and layout.
#[test]
fn matmul_with_and_without_subgroups() {
    let Some(ctx) = gpu() else { return };
    if ctx.info.name.contains("llvmpipe") {
        assert!(ctx.shares_lanes(), "lavapipe should have 8-lane subgroups");
    }
    let Some(plain) = gpu_without_subgroups() else {
        return;
    };
    assert!(!plain.shares_lanes());
    for c in [ctx, plain] {
        check_all_on(c, 37, 53, 29, (3, 5, 7), true);
        check_all_on(c, 36, 132, 20, (4, 8, 12), true);
        check_all_on(c, 300, 32, 40, (0, 0, 0), false);
    }
}

#[test]
fn matmul_odd_shape() {
    // 37×53×29: no size is a multiple of any tile or of 4.
    check_all(37, 53, 29, (0, 0, 0), false);
}

#[test]
fn matmul_odd_shape_offsets_accumulate() {
    check_all(37, 53, 29, (3, 5, 7), true);
}

#[test]
fn matmul_sizes_of_one() {
    for (m, n, k) in [(1, 1, 1), (1, 53, 29), (37, 1, 29), (37, 53, 1), (1, 1, 65)] {
        check_all(m, n, k, (1, 2, 3), true);
    }
}

#[test]
fn matmul_across_tile_edges() {
    // One past a tile (65), two tiles and a bit (130), in every position.
    for (m, n, k) in [(65, 130, 17), (130, 65, 65), (17, 130, 130), (130, 17, 3)] {
        check_all(m, n, k, (0, 0, 0), false);
    }
}

#[test]
fn matmul_vec4_paths() {
    // Multiples of 4 with offsets aligned to 4 take the vec4 direct kernels
    // (B and C along N; A along M for AtB); offsets of 2 take the scalar one.
    for offsets in [(0, 0, 0), (4, 8, 12), (2, 2, 2), (4, 8, 2)] {
        check_all(36, 132, 20, offsets, true);
    }
    // Row count not a multiple of the 16-row block, columns not of 128.
    check_all(20, 44, 12, (8, 4, 4), false);
}

#[test]
fn matmul_lanes_along_k() {
    // K split over the 8 lanes: K not a multiple of 8, K below 8 (idle
    // lanes), a long K with a ragged last chunk; dense-layer-like shapes.
    for (m, n, k) in [
        (20, 3, 1001),
        (17, 36, 5),
        (32, 2, 5472),
        (5, 20, 9),
        (12, 8, 1000),
    ] {
        check_all(m, n, k, (0, 0, 0), false);
        check_all(m, n, k, (4, 8, 4), true);
        check_all(m, n, k, (1, 3, 2), true);
    }
}

#[test]
fn matmul_lanes_along_m() {
    // Tall and narrow: 128-row tiles with a partial last one.
    for (m, n, k) in [(300, 32, 40), (129, 7, 13)] {
        check_all(m, n, k, (0, 0, 0), false);
        check_all(m, n, k, (4, 4, 8), true);
    }
}

#[test]
fn matmul_lane_axis_choice() {
    // The seed model's matmuls: the LSTM's input projection and weight
    // gradients fill 128-column tiles; its dx (N = 32) is tall and narrow;
    // the dense layer (N = 2) has a long K or a long M.
    assert_eq!(direct_lanes(3200, 256, 32), DirectLanes::N);
    assert_eq!(direct_lanes(64, 256, 3200), DirectLanes::N);
    assert_eq!(direct_lanes(32, 256, 3200), DirectLanes::N);
    assert_eq!(direct_lanes(3200, 32, 256), DirectLanes::M);
    assert_eq!(direct_lanes(32, 2, 5472), DirectLanes::K);
    assert_eq!(direct_lanes(5472, 2, 32), DirectLanes::M);
    assert_eq!(direct_lanes(32, 5472, 2), DirectLanes::N);
}

#[test]
fn matmul_empty_inner_size() {
    // K = 0: C = 0, or C unchanged when accumulating.
    check_all(7, 5, 0, (0, 0, 0), false);
    check_all(7, 5, 0, (1, 1, 1), true);
}

#[test]
fn matmul_seed_dense_input() {
    // [32×96]·[96×256]
    check_all(32, 256, 96, (0, 0, 0), false);
}

#[test]
fn matmul_seed_lstm_projection() {
    // [3200×32]·[32×256]: the batched input projection of the LSTM.
    check_all(3200, 256, 32, (0, 0, 0), false);
}

#[test]
fn matmul_seed_lstm_weight_gradient() {
    // [3200×64]ᵀ·[3200×256]: K = 3200 (time steps × batch), accumulating.
    let Some(ctx) = gpu() else { return };
    for kernel in KERNELS {
        check(ctx, kernel, Layout::AtB, 64, 256, 3200, (0, 0, 0), true, 7);
    }
}

#[test]
fn matmul_variant_per_adapter() {
    let Some(ctx) = gpu() else { return };
    let v = matmul_variant(ctx);
    if ctx.is_software() {
        assert_eq!(v, MatmulVariant::Direct);
    } else {
        assert_eq!(v, MatmulVariant::Tiled);
    }
    assert!(!v.to_string().is_empty());
}

#[test]
fn matmul_tile_sizes_match_the_shader() {
    // The Rust constants describe the WGSL ones; the grid depends on them.
    let src = include_str!("../shaders/matmul.wgsl");
    for (name, value) in [
        ("DR", DIRECT_BLOCK.0),
        ("DC", DIRECT_BLOCK.1),
        ("DL", DIRECT_LANES),
        ("TM", TILED_TILE.0),
        ("TN", TILED_TILE.1),
        ("TK", TILED_TILE.2),
        ("TT", TILED_THREADS),
    ] {
        let decl = format!("const {name}: u32 = {value}u;");
        assert!(src.contains(&decl), "shaders/matmul.wgsl lacks `{decl}`");
    }
}

#[test]
fn matmul_rejects_short_buffers() {
    let Some(ctx) = gpu() else { return };
    let a = ctx.zeros(&[4, 5], DType::F32).unwrap();
    let b = ctx.zeros(&[5, 6], DType::F32).unwrap();
    let c = ctx.zeros(&[4, 6], DType::F32).unwrap();
    // B needs 5·6 elements from offset 1.
    let p = MatmulParams::new(4, 6, 5).offsets(0, 1, 0);
    for variant in VARIANTS {
        let err = matmul_with(ctx, variant, Layout::AB, &c, &a, &b, p).unwrap_err();
        assert!(
            matches!(&err, Error::Shape { op, .. } if op.starts_with("matmul")),
            "{err}"
        );
        assert!(err.to_string().contains("B [5, 6]"), "{err}");
    }
}

// ---------------------------------------------------------------- backward

#[test]
fn matmul_backward_cpu_matches_finite_differences() {
    // Non-square, every size distinct, so a transposed index cannot pass.
    let (m, k, n) = (3, 5, 4);
    let a = to_f64(&random(&[m, k], 20));
    let b = to_f64(&random(&[k, n], 21));
    let w = to_f64(&random(&[m, n], 22));
    let a2 = a.clone().into_dimensionality::<Ix2>().unwrap();
    let b2 = b.clone().into_dimensionality::<Ix2>().unwrap();
    let w2 = w.clone().into_dimensionality::<Ix2>().unwrap();
    let loss = |a: &Array2<f64>, b: &Array2<f64>| -> f64 {
        let y = matmul_cpu(Layout::AB, &a.view(), &b.view()).into_dyn();
        weighted_sum(&y, &w)
    };
    let mut da = Array2::<f64>::zeros((m, k));
    let mut db = Array2::<f64>::zeros((k, n));
    matmul_backward_cpu(&mut da, &mut db, &w2.view(), &a2.view(), &b2.view());
    let fd_a = finite_difference(&a, 1e-6, |x| {
        loss(&x.clone().into_dimensionality().unwrap(), &b2)
    });
    let fd_b = finite_difference(&b, 1e-6, |x| {
        loss(&a2, &x.clone().into_dimensionality().unwrap())
    });
    assert_close_f64("dA", &da.into_dyn(), &fd_a, 1e-6, 1e-9);
    assert_close_f64("dB", &db.into_dyn(), &fd_b, 1e-6, 1e-9);
}

/// dA += dC·Bᵀ (ABt) and dB += Aᵀ·dC (AtB) on the GPU, starting from
/// non-zero gradients, against `matmul_backward_cpu` in f64.
fn check_backward(variant: MatmulVariant, m: usize, n: usize, k: usize) {
    let Some(ctx) = gpu() else { return };
    let a = random2(m, k, 30);
    let b = random2(k, n, 31);
    let dc = random2(m, n, 32);
    let da0 = random2(m, k, 33);
    let db0 = random2(k, n, 34);
    let mut want_da = f64_of(&da0);
    let mut want_db = f64_of(&db0);
    matmul_backward_cpu(
        &mut want_da,
        &mut want_db,
        &f64_of(&dc).view(),
        &f64_of(&a).view(),
        &f64_of(&b).view(),
    );
    let up = |x: &Array2<f32>| ctx.upload_f32(x.as_slice().unwrap(), x.shape()).unwrap();
    let (ga, gb, gdc, gda, gdb) = (up(&a), up(&b), up(&dc), up(&da0), up(&db0));
    // dA[m,k] += dC[m,n] · B[k,n]ᵀ: inner size n.
    let d1 = matmul_with(
        ctx,
        variant,
        Layout::ABt,
        &gda,
        &gdc,
        &gb,
        MatmulParams::new(m, k, n).accumulate(),
    )
    .unwrap();
    // dB[k,n] += A[m,k]ᵀ · dC[m,n]: inner size m.
    let d2 = matmul_with(
        ctx,
        variant,
        Layout::AtB,
        &gdb,
        &ga,
        &gdc,
        MatmulParams::new(k, n, m).accumulate(),
    )
    .unwrap();
    ctx.run(&[&d1, &d2]).unwrap();
    let as32 = |x: Array2<f64>| -> Vec<f32> { x.iter().map(|&v| v as f32).collect() };
    let what = format!("{variant:?} backward m={m} n={n} k={k}");
    let (rtol, atol) = tolerance(n);
    assert_close(
        &format!("{what} dA"),
        &ctx.read_f32(&gda).unwrap(),
        &as32(want_da),
        rtol,
        atol,
    );
    let (rtol, atol) = tolerance(m);
    assert_close(
        &format!("{what} dB"),
        &ctx.read_f32(&gdb).unwrap(),
        &as32(want_db),
        rtol,
        atol,
    );
}

#[test]
fn matmul_backward_gpu_odd_shape() {
    for variant in VARIANTS {
        check_backward(variant, 37, 53, 29);
    }
}

#[test]
fn matmul_backward_gpu_seed_shape() {
    // The seed's dense input: [32×96]·[96×256].
    for variant in VARIANTS {
        check_backward(variant, 32, 256, 96);
    }
}
