// Reductions for the loss and the metrics.
// reduce_sum:     out[g] (+)= scale * sum of x over chunk g (items * WG elements).
//   Each lane adds `items` elements strided by WG in a fixed order, then the
//   workgroup adds the lanes in a fixed tree: no atomics, bit-reproducible.
//   With more than one chunk the launcher runs it again over the partial sums
//   until one value is left; only that last pass scales and accumulates.
// accuracy_count: count[0] += number of rows r with argmax(probs[r, :]) == labels[r].
//   The argmax is the FIRST maximum (strict >), so ties go to the lower class
//   and a NaN never wins. Integer counts do not depend on the order in which
//   they are added, so a u32 atomic keeps the result deterministic.

struct Params {
    // reduce_sum: elements of x; accuracy_count: rows.
    n: u32,
    // reduce_sum: number of chunks (workgroups); accuracy_count: classes.
    groups: u32,
    // reduce_sum: elements per lane per chunk.
    items: u32,
    // reduce_sum: 1 adds into out, 0 overwrites it.
    accumulate: u32,
    scale: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

const WG: u32 = 256u;

@group(0) @binding(0) var<uniform> params: Params;

// reduce_sum bindings
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;

// accuracy_count bindings
@group(0) @binding(1) var<storage, read_write> count: array<atomic<u32>>;
@group(0) @binding(2) var<storage, read> probs: array<f32>;
@group(0) @binding(3) var<storage, read> labels: array<u32>;

var<workgroup> partial: array<f32, WG>;
var<workgroup> hits: atomic<u32>;

@compute @workgroup_size(WG)
fn reduce_sum(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_id) lid: vec3<u32>) {
    // Large grids are folded into 2-D; g is uniform across the workgroup.
    let g = wid.y * nwg.x + wid.x;
    var s = 0.0;
    if (g < params.groups) {
        let base = g * params.items * WG + lid.x;
        for (var k = 0u; k < params.items; k++) {
            let i = base + k * WG;
            if (i < params.n) {
                s += x[i];
            }
        }
    }
    partial[lid.x] = s;
    workgroupBarrier();
    for (var half = WG / 2u; half > 0u; half /= 2u) {
        if (lid.x < half) {
            partial[lid.x] += partial[lid.x + half];
        }
        workgroupBarrier();
    }
    if (lid.x == 0u && g < params.groups) {
        let total = params.scale * partial[0];
        if (params.accumulate != 0u) {
            out[g] = out[g] + total;
        } else {
            out[g] = total;
        }
    }
}

@compute @workgroup_size(WG)
fn accuracy_count(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_id) lid: vec3<u32>) {
    let r = (wid.y * nwg.x + wid.x) * WG + lid.x;
    let cols = params.groups;
    if (r < params.n) {
        let row = r * cols;
        var best = probs[row];
        var arg = 0u;
        for (var j = 1u; j < cols; j++) {
            let v = probs[row + j];
            if (v > best) {
                best = v;
                arg = j;
            }
        }
        if (arg == labels[r]) {
            atomicAdd(&hits, 1u);
        }
    }
    workgroupBarrier();
    // One global atomic per workgroup rather than per row.
    if (lid.x == 0u) {
        let h = atomicLoad(&hits);
        if (h > 0u) {
            atomicAdd(&count[0], h);
        }
    }
}
