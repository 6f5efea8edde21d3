// Matrix multiply in the three layouts backward needs:
//   AB  : C[M,N] (+)= A[M,K]  · B[K,N]
//   AtB : C[M,N] (+)= A[K,M]ᵀ · B[K,N]
//   ABt : C[M,N] (+)= A[M,K]  · B[N,K]ᵀ
// The layout is the override constant LAYOUT, so each layout gets its own
// pipeline with the index arithmetic folded. Offsets (in elements) let one
// buffer hold many matrices (e.g. the LSTM's per-timestep states);
// `accumulate` = 1 adds into C (backward). Every size and offset is
// bounds-checked: out-of-range rows and columns are clamped for loads (so
// loads need no branches) and skipped for stores.
//
// Two families of kernels, chosen per adapter by `ops::matmul`:
//
// matmul_direct*  (software adapters such as lavapipe). One invocation
//   computes a DR×DC block of C (16 rows × 16 columns = 64 vec4
//   accumulators) reading storage directly, no workgroup memory. lavapipe
//   runs 8 invocations as one SIMD chunk and turns every storage load into
//   a loop over the lanes (in Mesa 25 even loads whose address is uniform),
//   so what counts is FMAs per loaded element: a 16×16 block does 256 FMAs
//   per 32 loaded elements. Bigger blocks or unrolling K make the loop body
//   overflow the CPU's instruction cache and run slower; staging tiles in
//   workgroup memory (barriers are coroutine switches there) was slower too.
//   matmul_direct     : scalar loads, any layout, sizes and offsets.
//   matmul_direct_b4  : B and C as vec4 along N (AB, AtB; N, B and C offsets
//                       multiples of 4): a vec4 load costs about half of
//                       four scalar ones.
//   matmul_direct_ab4 : AtB with A also vec4 along M (M, A offset multiples of 4).
//   matmul_direct_c4  : scalar loads, C stored as vec4 along N (N and C offset
//                       multiples of 4; ABt, or B offset not aligned).
//   The 8 invocations of a workgroup lie along one axis, the override
//   constant LANES, picked per call by ops::matmul so that few lanes compute
//   clamped (wasted) rows or columns:
//     LANES_N : 8 blocks side by side along N (a 16×128 tile), all of K;
//     LANES_M : 8 blocks stacked along M (a 128×16 tile), all of K;
//     LANES_K : one 16×16 block, lane l summing the l-th eighth of K; the
//               partial blocks meet in workgroup memory and each lane adds
//               two rows of all eight in lane order (deterministic, no
//               atomics). For small M·N with a long K (dense layers).
//   Under LANES_N every lane reads the same rows of op(A), under LANES_M the
//   same columns of op(B): with subgroups each lane loads a share and
//   subgroupBroadcast hands it round ("lane sharing" below).
//
// matmul_tiled  (real GPUs). A 64×64 tile of C per 16×16 workgroup, each
//   invocation 4×4 outputs, K in steps of 16 staged in workgroup memory with
//   coalesced global loads.

struct Params {
    m: u32,
    n: u32,
    k: u32,
    accumulate: u32,
    a_offset: u32,
    b_offset: u32,
    c_offset: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> params: Params;

// Scalar views (matmul_direct, matmul_tiled).
@group(0) @binding(1) var<storage, read_write> c: array<f32>;
@group(0) @binding(2) var<storage, read> a: array<f32>;
@group(0) @binding(3) var<storage, read> b: array<f32>;

// vec4 views of the same bindings (matmul_direct_b4, matmul_direct_ab4).
@group(0) @binding(1) var<storage, read_write> c4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> a4: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> b4: array<vec4<f32>>;

const AB: u32 = 0u;
const ATB: u32 = 1u;
const ABT: u32 = 2u;
override LAYOUT: u32 = AB;

// ------------------------------------------------------------------ indexing

// Storage index of op(A)[i, 0] and the step from op(A)[i, kk] to [i, kk+1].
fn a_base(i: u32) -> u32 {
    let row = min(i, max(params.m, 1u) - 1u);
    return params.a_offset + select(row * params.k, row, LAYOUT == ATB);
}
fn a_step() -> u32 {
    return select(1u, params.m, LAYOUT == ATB);
}

// Storage index of op(B)[0, j] and the step from op(B)[kk, j] to [kk+1, j].
fn b_base(j: u32) -> u32 {
    let col = min(j, max(params.n, 1u) - 1u);
    return params.b_offset + select(col, col * params.k, LAYOUT == ABT);
}
fn b_step() -> u32 {
    return select(params.n, 1u, LAYOUT == ABT);
}

// vec4 index of B[0, j..j+4] (B[K,N], N and offset multiples of 4).
fn b4_base(j4: u32) -> u32 {
    return params.b_offset / 4u + min(j4, params.n / 4u - 1u);
}
// vec4 index of A[0, i..i+4] (A[K,M] for AtB, M and offset multiples of 4).
fn a4_base(i4: u32) -> u32 {
    return params.a_offset / 4u + min(i4, params.m / 4u - 1u);
}

// ------------------------------------------------------------------ stores

fn store_c(i: u32, j: u32, v: f32) {
    if (i < params.m && j < params.n) {
        let idx = params.c_offset + i * params.n + j;
        c[idx] = select(v, c[idx] + v, params.accumulate != 0u);
    }
}

fn store_c4(i: u32, j: u32, v: vec4<f32>) {
    // Aligned path: N is a multiple of 4, so a vec4 is wholly in or out.
    if (i < params.m && j < params.n) {
        let idx = params.c_offset / 4u + i * (params.n / 4u) + j / 4u;
        c4[idx] = select(v, c4[idx] + v, params.accumulate != 0u);
    }
}

// ------------------------------------------------------------------ direct

const DR: u32 = 16u; // rows of C per invocation
const DC: u32 = 16u; // columns of C per invocation (4 vec4)
const DL: u32 = 8u;  // invocations per workgroup (lavapipe's SIMD width)

const LANES_N: u32 = 0u;
const LANES_M: u32 = 1u;
const LANES_K: u32 = 2u;
override LANES: u32 = LANES_N;

// The block of C and the range of K one direct invocation covers.
struct Tile {
    row0: u32,
    col0: u32,
    k0: u32,
    k1: u32,
}

fn direct_tile(wid: vec3<u32>, lid: vec3<u32>) -> Tile {
    if (LANES == LANES_M) {
        return Tile((wid.y * DL + lid.x) * DR, wid.x * DC, 0u, params.k);
    }
    if (LANES == LANES_K) {
        let chunk = (params.k + DL - 1u) / DL;
        let k0 = min(lid.x * chunk, params.k);
        return Tile(wid.y * DR, wid.x * DC, k0, min(k0 + chunk, params.k));
    }
    return Tile(wid.y * DR, (wid.x * DL + lid.x) * DC, 0u, params.k);
}

// Whether workgroup `wid`'s whole tile of C lies past its edge: such a
// workgroup returns at once (uniform across the workgroup, so before any
// barrier). Callers may size the grid for the largest m or n they will
// write into the params and lower them per run (the graph executor's
// per-batch chunk counts); on lavapipe an idle workgroup would otherwise
// run the whole K loop on clamped rows.
fn direct_idle(wid: vec3<u32>) -> bool {
    var rows = DR;
    var cols = DC * DL;
    if (LANES == LANES_M) { rows = DR * DL; cols = DC; }
    if (LANES == LANES_K) { cols = DC; }
    return wid.y * rows >= params.m || wid.x * cols >= params.n;
}

// LANES_K: every lane's partial 16×16 block, [lane][row][column group].
var<workgroup> partial: array<vec4<f32>, 512>;

alias Row = array<vec4<f32>, 4>; // DC columns of one row of C
alias Block = array<Row, 16>;    // DR rows

fn fma_row(acc: Row, x: f32, y: Row) -> Row {
    let s = vec4<f32>(x);
    return Row(fma(s, y[0], acc[0]), fma(s, y[1], acc[1]), fma(s, y[2], acc[2]), fma(s, y[3], acc[3]));
}

// acc[i][j] += x[i] * y[j]: one K step of the outer product.
fn fma_block(acc: ptr<function, Block>, x: array<f32, 16>, y: Row) {
    (*acc)[0] = fma_row((*acc)[0], x[0], y);
    (*acc)[1] = fma_row((*acc)[1], x[1], y);
    (*acc)[2] = fma_row((*acc)[2], x[2], y);
    (*acc)[3] = fma_row((*acc)[3], x[3], y);
    (*acc)[4] = fma_row((*acc)[4], x[4], y);
    (*acc)[5] = fma_row((*acc)[5], x[5], y);
    (*acc)[6] = fma_row((*acc)[6], x[6], y);
    (*acc)[7] = fma_row((*acc)[7], x[7], y);
    (*acc)[8] = fma_row((*acc)[8], x[8], y);
    (*acc)[9] = fma_row((*acc)[9], x[9], y);
    (*acc)[10] = fma_row((*acc)[10], x[10], y);
    (*acc)[11] = fma_row((*acc)[11], x[11], y);
    (*acc)[12] = fma_row((*acc)[12], x[12], y);
    (*acc)[13] = fma_row((*acc)[13], x[13], y);
    (*acc)[14] = fma_row((*acc)[14], x[14], y);
    (*acc)[15] = fma_row((*acc)[15], x[15], y);
}

fn flatten(v: array<vec4<f32>, 4>) -> array<f32, 16> {
    return array<f32, 16>(v[0].x, v[0].y, v[0].z, v[0].w, v[1].x, v[1].y, v[1].z, v[1].w,
                          v[2].x, v[2].y, v[2].z, v[2].w, v[3].x, v[3].y, v[3].z, v[3].w);
}

// The stores loop over rows and columns by shifting the block down one
// row (column group) per iteration and storing the first: indices stay
// constant (a dynamic index into `acc` would push the whole block out of
// registers in the main loop), and the code stays small (256 unrolled
// guarded stores take LLVM seconds to compile on lavapipe).
fn store_row(i: u32, j: u32, r: Row) {
    var q = r;
    for (var t = 0u; t < 4u; t++) {
        let jt = j + 4u * t;
        store_c(i, jt, q[0].x);
        store_c(i, jt + 1u, q[0].y);
        store_c(i, jt + 2u, q[0].z);
        store_c(i, jt + 3u, q[0].w);
        q[0] = q[1]; q[1] = q[2]; q[2] = q[3];
    }
}

fn store_row4(i: u32, j: u32, r: Row) {
    var q = r;
    for (var t = 0u; t < 4u; t++) {
        store_c4(i, j + 4u * t, q[0]);
        q[0] = q[1]; q[1] = q[2]; q[2] = q[3];
    }
}

fn store_block(row0: u32, col0: u32, acc: ptr<function, Block>) {
    for (var i = 0u; i < DR; i++) {
        store_row(row0 + i, col0, (*acc)[0]);
        (*acc)[0] = (*acc)[1]; (*acc)[1] = (*acc)[2]; (*acc)[2] = (*acc)[3]; (*acc)[3] = (*acc)[4];
        (*acc)[4] = (*acc)[5]; (*acc)[5] = (*acc)[6]; (*acc)[6] = (*acc)[7]; (*acc)[7] = (*acc)[8];
        (*acc)[8] = (*acc)[9]; (*acc)[9] = (*acc)[10]; (*acc)[10] = (*acc)[11]; (*acc)[11] = (*acc)[12];
        (*acc)[12] = (*acc)[13]; (*acc)[13] = (*acc)[14]; (*acc)[14] = (*acc)[15];
    }
}

// LANES_K: parks this lane's block in `partial` (same shifting as the stores).
fn stash_block(lane: u32, acc: ptr<function, Block>) {
    for (var i = 0u; i < DR; i++) {
        let at = (lane * DR + i) * 4u;
        partial[at] = (*acc)[0][0];
        partial[at + 1u] = (*acc)[0][1];
        partial[at + 2u] = (*acc)[0][2];
        partial[at + 3u] = (*acc)[0][3];
        (*acc)[0] = (*acc)[1]; (*acc)[1] = (*acc)[2]; (*acc)[2] = (*acc)[3]; (*acc)[3] = (*acc)[4];
        (*acc)[4] = (*acc)[5]; (*acc)[5] = (*acc)[6]; (*acc)[6] = (*acc)[7]; (*acc)[7] = (*acc)[8];
        (*acc)[8] = (*acc)[9]; (*acc)[9] = (*acc)[10]; (*acc)[10] = (*acc)[11]; (*acc)[11] = (*acc)[12];
        (*acc)[12] = (*acc)[13]; (*acc)[13] = (*acc)[14]; (*acc)[14] = (*acc)[15];
    }
}

// LANES_K: row r of the block summed over the lanes' partials, lane 0 first.
fn reduced_row(r: u32) -> Row {
    var q: Row;
    for (var l = 0u; l < DL; l++) {
        let at = (l * DR + r) * 4u;
        q[0] += partial[at];
        q[1] += partial[at + 1u];
        q[2] += partial[at + 2u];
        q[3] += partial[at + 3u];
    }
    return q;
}

// Stores the invocation's block; under LANES_K first sums the lanes' blocks
// (lane l stores rows 2l and 2l+1). Scalar and vec4 versions: an entry point
// touches only one view of C.
fn finish_block(t: Tile, lid: vec3<u32>, acc: ptr<function, Block>) {
    if (LANES == LANES_K) {
        stash_block(lid.x, acc);
        workgroupBarrier();
        for (var h = 0u; h < DR / DL; h++) {
            let r = lid.x * (DR / DL) + h;
            store_row(t.row0 + r, t.col0, reduced_row(r));
        }
    } else {
        store_block(t.row0, t.col0, acc);
    }
}

fn finish_block4(t: Tile, lid: vec3<u32>, acc: ptr<function, Block>) {
    if (LANES == LANES_K) {
        stash_block(lid.x, acc);
        workgroupBarrier();
        for (var h = 0u; h < DR / DL; h++) {
            let r = lid.x * (DR / DL) + h;
            store_row4(t.row0 + r, t.col0, reduced_row(r));
        }
    } else {
        store_block4(t.row0, t.col0, acc);
    }
}

fn store_block4(row0: u32, col0: u32, acc: ptr<function, Block>) {
    for (var i = 0u; i < DR; i++) {
        store_row4(row0 + i, col0, (*acc)[0]);
        (*acc)[0] = (*acc)[1]; (*acc)[1] = (*acc)[2]; (*acc)[2] = (*acc)[3]; (*acc)[3] = (*acc)[4];
        (*acc)[4] = (*acc)[5]; (*acc)[5] = (*acc)[6]; (*acc)[6] = (*acc)[7]; (*acc)[7] = (*acc)[8];
        (*acc)[8] = (*acc)[9]; (*acc)[9] = (*acc)[10]; (*acc)[10] = (*acc)[11]; (*acc)[11] = (*acc)[12];
        (*acc)[12] = (*acc)[13]; (*acc)[13] = (*acc)[14]; (*acc)[14] = (*acc)[15];
    }
}

// ------------------------------------------------------------------ lane sharing
//
// Under LANES_N the 8 lanes of a direct workgroup read the same 16 rows of
// op(A) at each k, under LANES_M the same 16 columns of op(B), and lavapipe
// turns each such load into 8 per-lane loads. Where the device has
// subgroups spanning the workgroup (`gpu::pipeline::shader_source`), lane l
// loads two of the 16 values (or one of the four vec4) and
// subgroupBroadcast hands them to the other lanes: 2 loads and 16 register
// moves instead of 16 loads per lane (A·B at 512³ on lavapipe: 24 % → 36 %
// of the FMA peak). Elsewhere the helpers load all 16 themselves. `own`
// holds the storage indices of this lane's share: entries 2l and 2l+1 of
// the 16 (or entry l mod 4 of the four vec4).

// The plain loads: a[ia[i] + ka] for the 16 rows, b[ib[j] + kb] for the 16
// columns, and the vec4 forms.
fn a_rows(ia: array<u32, 16>, ka: u32) -> array<f32, 16> {
    return array<f32, 16>(
        a[ia[0] + ka], a[ia[1] + ka], a[ia[2] + ka], a[ia[3] + ka],
        a[ia[4] + ka], a[ia[5] + ka], a[ia[6] + ka], a[ia[7] + ka],
        a[ia[8] + ka], a[ia[9] + ka], a[ia[10] + ka], a[ia[11] + ka],
        a[ia[12] + ka], a[ia[13] + ka], a[ia[14] + ka], a[ia[15] + ka]);
}

fn b_cols(ib: array<u32, 16>, kb: u32) -> array<f32, 16> {
    return array<f32, 16>(
        b[ib[0] + kb], b[ib[1] + kb], b[ib[2] + kb], b[ib[3] + kb],
        b[ib[4] + kb], b[ib[5] + kb], b[ib[6] + kb], b[ib[7] + kb],
        b[ib[8] + kb], b[ib[9] + kb], b[ib[10] + kb], b[ib[11] + kb],
        b[ib[12] + kb], b[ib[13] + kb], b[ib[14] + kb], b[ib[15] + kb]);
}

fn a4_rows(ia: array<u32, 4>, ka: u32) -> array<vec4<f32>, 4> {
    return array<vec4<f32>, 4>(a4[ia[0] + ka], a4[ia[1] + ka], a4[ia[2] + ka], a4[ia[3] + ka]);
}

fn b4_cols(ib: array<u32, 4>, kb: u32) -> Row {
    return Row(b4[ib[0] + kb], b4[ib[1] + kb], b4[ib[2] + kb], b4[ib[3] + kb]);
}

// The same values, shared where the lanes allow (the helpers below pick).
// #if subgroups
fn share16(v0: f32, v1: f32) -> array<f32, 16> {
    return array<f32, 16>(
        subgroupBroadcast(v0, 0u), subgroupBroadcast(v1, 0u), subgroupBroadcast(v0, 1u), subgroupBroadcast(v1, 1u),
        subgroupBroadcast(v0, 2u), subgroupBroadcast(v1, 2u), subgroupBroadcast(v0, 3u), subgroupBroadcast(v1, 3u),
        subgroupBroadcast(v0, 4u), subgroupBroadcast(v1, 4u), subgroupBroadcast(v0, 5u), subgroupBroadcast(v1, 5u),
        subgroupBroadcast(v0, 6u), subgroupBroadcast(v1, 6u), subgroupBroadcast(v0, 7u), subgroupBroadcast(v1, 7u));
}

fn share4(v: vec4<f32>) -> array<vec4<f32>, 4> {
    return array<vec4<f32>, 4>(subgroupBroadcast(v, 0u), subgroupBroadcast(v, 1u),
                               subgroupBroadcast(v, 2u), subgroupBroadcast(v, 3u));
}

fn a_rows_shared(ia: array<u32, 16>, own: vec2<u32>, ka: u32) -> array<f32, 16> {
    return share16(a[own.x + ka], a[own.y + ka]);
}

fn b_cols_shared(ib: array<u32, 16>, own: vec2<u32>, kb: u32) -> array<f32, 16> {
    return share16(b[own.x + kb], b[own.y + kb]);
}

fn a4_rows_shared(ia: array<u32, 4>, own: u32, ka: u32) -> array<vec4<f32>, 4> {
    return share4(a4[own + ka]);
}

fn b4_cols_shared(ib: array<u32, 4>, own: u32, kb: u32) -> Row {
    return share4(b4[own + kb]);
}
// #else
fn a_rows_shared(ia: array<u32, 16>, own: vec2<u32>, ka: u32) -> array<f32, 16> {
    return a_rows(ia, ka);
}

fn b_cols_shared(ib: array<u32, 16>, own: vec2<u32>, kb: u32) -> array<f32, 16> {
    return b_cols(ib, kb);
}

fn a4_rows_shared(ia: array<u32, 4>, own: u32, ka: u32) -> array<vec4<f32>, 4> {
    return a4_rows(ia, ka);
}

fn b4_cols_shared(ib: array<u32, 4>, own: u32, kb: u32) -> Row {
    return b4_cols(ib, kb);
}
// #endif

// op(A)'s 16 rows at k: shared under LANES_N, where every lane reads them.
fn x16(ia: array<u32, 16>, own: vec2<u32>, ka: u32) -> array<f32, 16> {
    if (LANES == LANES_N) { return a_rows_shared(ia, own, ka); }
    return a_rows(ia, ka);
}

fn x4x4(ia: array<u32, 4>, own: u32, ka: u32) -> array<vec4<f32>, 4> {
    if (LANES == LANES_N) { return a4_rows_shared(ia, own, ka); }
    return a4_rows(ia, ka);
}

// op(B)'s 16 columns at k: shared under LANES_M.
fn y16(ib: array<u32, 16>, own: vec2<u32>, kb: u32) -> array<f32, 16> {
    if (LANES == LANES_M) { return b_cols_shared(ib, own, kb); }
    return b_cols(ib, kb);
}

fn y4x4(ib: array<u32, 4>, own: u32, kb: u32) -> Row {
    if (LANES == LANES_M) { return b4_cols_shared(ib, own, kb); }
    return b4_cols(ib, kb);
}

fn to_row(v: array<f32, 16>) -> Row {
    return Row(vec4(v[0], v[1], v[2], v[3]), vec4(v[4], v[5], v[6], v[7]),
               vec4(v[8], v[9], v[10], v[11]), vec4(v[12], v[13], v[14], v[15]));
}

// The block of t with scalar loads (any layout, size and offset).
fn direct_scalar(t: Tile, lane: u32, acc: ptr<function, Block>) {
    let row0 = t.row0;
    let col0 = t.col0;
    let ia = array<u32, 16>(
        a_base(row0), a_base(row0 + 1u), a_base(row0 + 2u), a_base(row0 + 3u),
        a_base(row0 + 4u), a_base(row0 + 5u), a_base(row0 + 6u), a_base(row0 + 7u),
        a_base(row0 + 8u), a_base(row0 + 9u), a_base(row0 + 10u), a_base(row0 + 11u),
        a_base(row0 + 12u), a_base(row0 + 13u), a_base(row0 + 14u), a_base(row0 + 15u));
    let ib = array<u32, 16>(
        b_base(col0), b_base(col0 + 1u), b_base(col0 + 2u), b_base(col0 + 3u),
        b_base(col0 + 4u), b_base(col0 + 5u), b_base(col0 + 6u), b_base(col0 + 7u),
        b_base(col0 + 8u), b_base(col0 + 9u), b_base(col0 + 10u), b_base(col0 + 11u),
        b_base(col0 + 12u), b_base(col0 + 13u), b_base(col0 + 14u), b_base(col0 + 15u));
    let sa = a_step();
    let sb = b_step();
    let own_a = vec2(a_base(row0 + 2u * lane), a_base(row0 + 2u * lane + 1u));
    let own_b = vec2(b_base(col0 + 2u * lane), b_base(col0 + 2u * lane + 1u));
    for (var kk = t.k0; kk < t.k1; kk++) {
        fma_block(acc, x16(ia, own_a, kk * sa), to_row(y16(ib, own_b, kk * sb)));
    }
}

@compute @workgroup_size(DL)
fn matmul_direct(@builtin(workgroup_id) wid: vec3<u32>,
                 @builtin(local_invocation_id) lid: vec3<u32>) {
    if (direct_idle(wid)) { return; }
    let t = direct_tile(wid, lid);
    var acc: Block;
    direct_scalar(t, lid.x, &acc);
    finish_block(t, lid, &acc);
}

@compute @workgroup_size(DL)
fn matmul_direct_c4(@builtin(workgroup_id) wid: vec3<u32>,
                    @builtin(local_invocation_id) lid: vec3<u32>) {
    if (direct_idle(wid)) { return; }
    let t = direct_tile(wid, lid);
    var acc: Block;
    direct_scalar(t, lid.x, &acc);
    finish_block4(t, lid, &acc);
}

@compute @workgroup_size(DL)
fn matmul_direct_b4(@builtin(workgroup_id) wid: vec3<u32>,
                    @builtin(local_invocation_id) lid: vec3<u32>) {
    if (direct_idle(wid)) { return; }
    let t = direct_tile(wid, lid);
    let row0 = t.row0;
    let ia = array<u32, 16>(
        a_base(row0), a_base(row0 + 1u), a_base(row0 + 2u), a_base(row0 + 3u),
        a_base(row0 + 4u), a_base(row0 + 5u), a_base(row0 + 6u), a_base(row0 + 7u),
        a_base(row0 + 8u), a_base(row0 + 9u), a_base(row0 + 10u), a_base(row0 + 11u),
        a_base(row0 + 12u), a_base(row0 + 13u), a_base(row0 + 14u), a_base(row0 + 15u));
    let j4 = t.col0 / 4u;
    let ib = array<u32, 4>(b4_base(j4), b4_base(j4 + 1u), b4_base(j4 + 2u), b4_base(j4 + 3u));
    let sa = a_step();
    let sb = params.n / 4u;
    let own_a = vec2(a_base(row0 + 2u * lid.x), a_base(row0 + 2u * lid.x + 1u));
    let own_b = b4_base(j4 + lid.x % 4u);
    var acc: Block;
    for (var kk = t.k0; kk < t.k1; kk++) {
        fma_block(&acc, x16(ia, own_a, kk * sa), y4x4(ib, own_b, kk * sb));
    }
    finish_block4(t, lid, &acc);
}

@compute @workgroup_size(DL)
fn matmul_direct_ab4(@builtin(workgroup_id) wid: vec3<u32>,
                     @builtin(local_invocation_id) lid: vec3<u32>) {
    if (direct_idle(wid)) { return; }
    // AtB only: A[K,M] rows are contiguous along M.
    let t = direct_tile(wid, lid);
    let i4 = t.row0 / 4u;
    let ia = array<u32, 4>(a4_base(i4), a4_base(i4 + 1u), a4_base(i4 + 2u), a4_base(i4 + 3u));
    let j4 = t.col0 / 4u;
    let ib = array<u32, 4>(b4_base(j4), b4_base(j4 + 1u), b4_base(j4 + 2u), b4_base(j4 + 3u));
    let sa = params.m / 4u;
    let sb = params.n / 4u;
    let own_a = a4_base(i4 + lid.x % 4u);
    let own_b = b4_base(j4 + lid.x % 4u);
    var acc: Block;
    for (var kk = t.k0; kk < t.k1; kk++) {
        fma_block(&acc, flatten(x4x4(ia, own_a, kk * sa)), y4x4(ib, own_b, kk * sb));
    }
    finish_block4(t, lid, &acc);
}

// ------------------------------------------------------------------ tiled

const TM: u32 = 64u;  // rows of C per workgroup
const TN: u32 = 64u;  // columns of C per workgroup
const TK: u32 = 16u;  // K step staged in workgroup memory
const TT: u32 = 16u;  // invocations per workgroup side (16×16, each 4×4 outputs)
// Tile rows are padded by 4 floats: fewer bank conflicts on the transposing
// stores, still 16-byte aligned for vec4 reads.
const SA: u32 = TM + 4u;
const SB: u32 = TN + 4u;

var<workgroup> tile_a: array<f32, 1088>; // TK * SA: op(A)[m0.., k0..] stored [kk][mm]
var<workgroup> tile_b: array<f32, 1088>; // TK * SB: op(B)[k0.., n0..] stored [kk][nn]

@compute @workgroup_size(TT, TT)
fn matmul_tiled(@builtin(workgroup_id) wid: vec3<u32>,
                @builtin(local_invocation_id) lid: vec3<u32>) {
    if (wid.y * TM >= params.m || wid.x * TN >= params.n) { return; }
    let tid = lid.y * TT + lid.x;
    let m0 = wid.y * TM;
    let n0 = wid.x * TN;
    var acc: array<vec4<f32>, 4>;
    for (var k0 = 0u; k0 < params.k; k0 += TK) {
        // Each invocation stages 4 elements of each tile; consecutive
        // invocations read consecutive storage addresses in every layout.
        for (var e = 0u; e < 4u; e++) {
            let idx = tid + e * TT * TT;
            var mm: u32;
            var ka: u32;
            if (LAYOUT == ATB) { ka = idx / TM; mm = idx % TM; } else { mm = idx / TK; ka = idx % TK; }
            var va = 0.0;
            if (m0 + mm < params.m && k0 + ka < params.k) {
                va = a[a_base(m0 + mm) + (k0 + ka) * a_step()];
            }
            tile_a[ka * SA + mm] = va;
            var nn: u32;
            var kb: u32;
            if (LAYOUT == ABT) { nn = idx / TK; kb = idx % TK; } else { kb = idx / TN; nn = idx % TN; }
            var vb = 0.0;
            if (n0 + nn < params.n && k0 + kb < params.k) {
                vb = b[b_base(n0 + nn) + (k0 + kb) * b_step()];
            }
            tile_b[kb * SB + nn] = vb;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TK; kk++) {
            let pa = kk * SA + lid.y * 4u;
            let pb = kk * SB + lid.x * 4u;
            let x = vec4<f32>(tile_a[pa], tile_a[pa + 1u], tile_a[pa + 2u], tile_a[pa + 3u]);
            let y = vec4<f32>(tile_b[pb], tile_b[pb + 1u], tile_b[pb + 2u], tile_b[pb + 3u]);
            acc[0] = fma(vec4<f32>(x.x), y, acc[0]);
            acc[1] = fma(vec4<f32>(x.y), y, acc[1]);
            acc[2] = fma(vec4<f32>(x.z), y, acc[2]);
            acc[3] = fma(vec4<f32>(x.w), y, acc[3]);
        }
        workgroupBarrier();
    }
    let i0 = m0 + lid.y * 4u;
    let j0 = n0 + lid.x * 4u;
    store_c(i0, j0, acc[0].x); store_c(i0, j0 + 1u, acc[0].y); store_c(i0, j0 + 2u, acc[0].z); store_c(i0, j0 + 3u, acc[0].w);
    store_c(i0 + 1u, j0, acc[1].x); store_c(i0 + 1u, j0 + 1u, acc[1].y); store_c(i0 + 1u, j0 + 2u, acc[1].z); store_c(i0 + 1u, j0 + 3u, acc[1].w);
    store_c(i0 + 2u, j0, acc[2].x); store_c(i0 + 2u, j0 + 1u, acc[2].y); store_c(i0 + 2u, j0 + 2u, acc[2].z); store_c(i0 + 2u, j0 + 3u, acc[2].w);
    store_c(i0 + 3u, j0, acc[3].x); store_c(i0 + 3u, j0 + 1u, acc[3].y); store_c(i0 + 3u, j0 + 2u, acc[3].z); store_c(i0 + 3u, j0 + 3u, acc[3].w);
}
