// Row sums over segments of a permutation:
//   out[c, :] = Σ x[order[p], :] for p in start[c] .. start[c+1], in ascending p.
// One invocation per (segment, column): the lanes of a workgroup take
// consecutive columns of one segment, so they all loop the same number of
// rows (on lavapipe a workgroup is one SIMD loop: lanes along positions
// would idle while one long segment sums). Deterministic: one writer per
// output element, a fixed order.
//
// The graph executor sums an LSTM's gate gradients per chunk of equal
// tokens with it (see `ops::segment_sum`). The segment count changes per
// batch while the grid is fixed at the largest count, so workgroups stride
// over the segments (y) instead of one workgroup row per segment.
// The `_vec4` entry does four columns per invocation when the width is a
// multiple of 4 (params.width counts vec4s then).

struct Params {
    segments: u32, // segments this run (start holds segments + 1 entries)
    width: u32,    // columns (vec4 columns in segment_sum_vec4)
    rows: u32,     // rows of x (entries of order)
    _pad: u32,
}

const WG: u32 = 64u;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read> order: array<u32>;
@group(0) @binding(4) var<storage, read> start: array<u32>;

@group(0) @binding(1) var<storage, read_write> out4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> x4: array<vec4<f32>>;

// Grid: x = ceil(width / WG), y = up to the largest segment count.
@compute @workgroup_size(WG)
fn segment_sum(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_id) lid: vec3<u32>) {
    let col = wid.x * WG + lid.x;
    if (col >= params.width) { return; }
    for (var c = wid.y; c < params.segments; c += nwg.y) {
        var acc = 0.0;
        let end = min(start[c + 1u], params.rows);
        for (var p = start[c]; p < end; p++) {
            acc += x[order[p] * params.width + col];
        }
        out[c * params.width + col] = acc;
    }
}

@compute @workgroup_size(WG)
fn segment_sum_vec4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_id) lid: vec3<u32>) {
    let col = wid.x * WG + lid.x;
    if (col >= params.width) { return; }
    for (var c = wid.y; c < params.segments; c += nwg.y) {
        var acc = vec4<f32>(0.0);
        let end = min(start[c + 1u], params.rows);
        for (var p = start[c]; p < end; p++) {
            acc += x4[order[p] * params.width + col];
        }
        out4[c * params.width + col] = acc;
    }
}
