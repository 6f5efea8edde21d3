// Matrix multiply in the three layouts backward needs:
//   matmul_ab  : C[M,N] (+)= A[M,K]  · B[K,N]
//   matmul_atb : C[M,N] (+)= A[K,M]ᵀ · B[K,N]
//   matmul_abt : C[M,N] (+)= A[M,K]  · B[N,K]ᵀ
// Offsets (in elements) let one buffer hold many matrices (e.g. the LSTM's
// per-timestep hidden states). `accumulate` = 1 adds into C (backward).

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
@group(0) @binding(1) var<storage, read_write> c: array<f32>;
@group(0) @binding(2) var<storage, read> a: array<f32>;
@group(0) @binding(3) var<storage, read> b: array<f32>;

const TILE: u32 = 16u;

fn store(row: u32, col: u32, value: f32) {
    let i = params.c_offset + row * params.n + col;
    if (params.accumulate != 0u) {
        c[i] = c[i] + value;
    } else {
        c[i] = value;
    }
}

@compute @workgroup_size(TILE, TILE)
fn matmul_ab(@builtin(global_invocation_id) gid: vec3<u32>) {
    let row = gid.y;
    let col = gid.x;
    if (row >= params.m || col >= params.n) { return; }
    var acc = 0.0;
    for (var k = 0u; k < params.k; k++) {
        acc += a[params.a_offset + row * params.k + k] * b[params.b_offset + k * params.n + col];
    }
    store(row, col, acc);
}

@compute @workgroup_size(TILE, TILE)
fn matmul_atb(@builtin(global_invocation_id) gid: vec3<u32>) {
    let row = gid.y;
    let col = gid.x;
    if (row >= params.m || col >= params.n) { return; }
    var acc = 0.0;
    for (var k = 0u; k < params.k; k++) {
        acc += a[params.a_offset + k * params.m + row] * b[params.b_offset + k * params.n + col];
    }
    store(row, col, acc);
}

@compute @workgroup_size(TILE, TILE)
fn matmul_abt(@builtin(global_invocation_id) gid: vec3<u32>) {
    let row = gid.y;
    let col = gid.x;
    if (row >= params.m || col >= params.n) { return; }
    var acc = 0.0;
    for (var k = 0u; k < params.k; k++) {
        acc += a[params.a_offset + row * params.k + k] * b[params.b_offset + col * params.k + k];
    }
    store(row, col, acc);
}
