// Bias add and its gradient, for y viewed as [rows, cols] (leading dims
// flattened into rows) and a bias of [cols].
// bias_add:      y[r,c] += b[c], in place (a Dense layer adds it to the matmul output).
// bias_backward: out[chunk, c] (+)= sum over the chunk's rows of dy[r, c].
//   One workgroup per (column tile, row chunk); each invocation sums a strided
//   set of rows in a fixed order, then the workgroup adds the lanes up in a
//   fixed tree. No atomics, so the result is bit-reproducible. With several
//   row chunks the launcher runs it again over the partial sums (two levels).
// bias_backward_vec4: the same over vec4 columns when cols is a multiple of 4
//   (params.cols counts vec4s): on lavapipe a lane's load is a gather, so vec4
//   loads move four times the data per gather.

struct Params {
    rows: u32,
    cols: u32,
    // bias_backward only: rows each workgroup reduces, and whether to add into out.
    rows_per_group: u32,
    accumulate: u32,
}

const WG: u32 = 256u;
// Columns per workgroup in bias_backward (a power of two dividing WG); the
// remaining WG / COLS lanes split the rows. Small for narrow biases so that
// lanes are not wasted on absent columns.
override COLS: u32 = 32u;

@group(0) @binding(0) var<uniform> params: Params;

// bias_add bindings
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;

// bias_backward bindings: gradient to write (db or a partial-sum buffer), incoming gradient
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read> dy: array<f32>;

@group(0) @binding(1) var<storage, read_write> out4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> dy4: array<vec4<f32>>;

var<workgroup> partial: array<f32, WG>;
var<workgroup> partial4: array<vec4<f32>, WG>;

@compute @workgroup_size(WG)
fn bias_add(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = (wid.y * nwg.x + wid.x) * WG + lid.x;
    if (i < params.rows * params.cols) {
        y[i] += b[i % params.cols];
    }
}

@compute @workgroup_size(WG)
fn bias_backward(@builtin(workgroup_id) wid: vec3<u32>,
                 @builtin(local_invocation_index) li: u32) {
    let lanes = WG / COLS;
    let lane = li / COLS;
    // Adjacent invocations read adjacent columns of one row (coalesced on GPUs).
    let c = wid.x * COLS + li % COLS;
    let chunk = wid.y;
    let r0 = chunk * params.rows_per_group;
    let r1 = min(r0 + params.rows_per_group, params.rows);
    var s = 0.0;
    if (c < params.cols) {
        for (var r = r0 + lane; r < r1; r += lanes) {
            s += dy[r * params.cols + c];
        }
    }
    partial[li] = s;
    workgroupBarrier();
    for (var half = lanes / 2u; half > 0u; half /= 2u) {
        if (lane < half) {
            partial[li] += partial[li + half * COLS];
        }
        workgroupBarrier();
    }
    if (lane == 0u && c < params.cols) {
        let o = chunk * params.cols + c;
        if (params.accumulate != 0u) {
            out[o] = out[o] + partial[li];
        } else {
            out[o] = partial[li];
        }
    }
}

@compute @workgroup_size(WG)
fn bias_backward_vec4(@builtin(workgroup_id) wid: vec3<u32>,
                      @builtin(local_invocation_index) li: u32) {
    let lanes = WG / COLS;
    let lane = li / COLS;
    let c = wid.x * COLS + li % COLS;
    let chunk = wid.y;
    let r0 = chunk * params.rows_per_group;
    let r1 = min(r0 + params.rows_per_group, params.rows);
    var s = vec4<f32>(0.0);
    if (c < params.cols) {
        for (var r = r0 + lane; r < r1; r += lanes) {
            s += dy4[r * params.cols + c];
        }
    }
    partial4[li] = s;
    workgroupBarrier();
    for (var half = lanes / 2u; half > 0u; half /= 2u) {
        if (lane < half) {
            partial4[li] += partial4[li + half * COLS];
        }
        workgroupBarrier();
    }
    if (lane == 0u && c < params.cols) {
        let o = chunk * params.cols + c;
        if (params.accumulate != 0u) {
            out4[o] = out4[o] + partial4[li];
        } else {
            out4[o] = partial4[li];
        }
    }
}
