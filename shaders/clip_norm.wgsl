// Gradient clipping by global norm (tf.clip_by_global_norm), on the device
// without a readback:
// clip_norm_partials: partials[offset + g] = sum of x^2 over chunk g of one
//   gradient (items * WG elements). Run once per gradient, each at its own
//   offset, so all gradients' partial sums end up in one buffer.
// clip_norm_sumsq:    sumsq[0] = sum of partials[0..n] (one workgroup).
// clip_norm_scale:    g *= clip / sqrt(sumsq[0]) when sqrt(sumsq[0]) > clip,
//   else g is left untouched (the CPU reference's formula; a NaN norm fails
//   the comparison and leaves g as it is there too).
// Every sum is a fixed-order lane sum followed by a fixed workgroup tree: no
// atomics, bit-reproducible (the structure of reduce.wgsl).

struct Params {
    // partials: elements of this gradient; sumsq: number of partials;
    // scale: elements of this gradient.
    n: u32,
    // partials: index of this gradient's first partial sum.
    offset: u32,
    // partials: elements per lane per chunk.
    items: u32,
    // partials: chunks (workgroups) of this gradient.
    groups: u32,
    // scale: the largest global norm left unscaled.
    clip: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

const WG: u32 = 256u;

@group(0) @binding(0) var<uniform> params: Params;

// clip_norm_partials bindings
@group(0) @binding(1) var<storage, read_write> partials: array<f32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;

// clip_norm_sumsq bindings
@group(0) @binding(1) var<storage, read_write> sumsq: array<f32>;
@group(0) @binding(2) var<storage, read> parts: array<f32>;

// clip_norm_scale bindings: gradient to scale in place, then the sum of squares
@group(0) @binding(1) var<storage, read_write> g: array<f32>;
@group(0) @binding(2) var<storage, read> total: array<f32>;

var<workgroup> lanes: array<f32, WG>;

// Adds the 256 lane sums in a fixed tree; the result is in lanes[0].
fn tree(lid: u32) {
    workgroupBarrier();
    for (var half = WG / 2u; half > 0u; half /= 2u) {
        if (lid < half) {
            lanes[lid] += lanes[lid + half];
        }
        workgroupBarrier();
    }
}

@compute @workgroup_size(WG)
fn clip_norm_partials(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_id) lid: vec3<u32>) {
    // Large grids are folded into 2-D; c is uniform across the workgroup.
    let c = wid.y * nwg.x + wid.x;
    var s = 0.0;
    if (c < params.groups) {
        // Lanes read consecutive elements (coalesced), `items` strides of WG.
        let base = c * params.items * WG + lid.x;
        for (var k = 0u; k < params.items; k++) {
            let i = base + k * WG;
            if (i < params.n) {
                let v = x[i];
                s += v * v;
            }
        }
    }
    lanes[lid.x] = s;
    tree(lid.x);
    if (lid.x == 0u && c < params.groups) {
        partials[params.offset + c] = lanes[0];
    }
}

@compute @workgroup_size(WG)
fn clip_norm_sumsq(@builtin(local_invocation_id) lid: vec3<u32>) {
    // One workgroup: lane l adds partials l, l + WG, ... in order.
    var s = 0.0;
    for (var i = lid.x; i < params.n; i += WG) {
        s += parts[i];
    }
    lanes[lid.x] = s;
    tree(lid.x);
    if (lid.x == 0u) {
        sumsq[0] = lanes[0];
    }
}

@compute @workgroup_size(WG)
fn clip_norm_scale(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = (wid.y * nwg.x + wid.x) * WG + lid.x;
    // The same load for every lane (cheap); the norm as the CPU computes it.
    let norm = sqrt(total[0]);
    if (i < params.n && norm > params.clip) {
        g[i] = g[i] * (params.clip / norm);
    }
}
