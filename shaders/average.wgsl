// Elementwise mean of k >= 2 same-shape tensors (late fusion: the average of
// per-modality heads' logits), forward and backward.
// Forward:  y = (1/k) * sum_i x_i, read two inputs per dispatch, so k = 2 is
//           one dispatch; further pairs (or a last single input) accumulate
//           into y. scale = 1/k.
// Backward: dx_i += dy * (1/k), two gradients per dispatch (an unpaired one
//           is alone; its partner binding is a one-element placeholder that
//           is never touched).
// Each output element is written by exactly one invocation of a dispatch.

struct Params {
    n: u32,          // elements per tensor
    scale: f32,      // 1/k
    pair: u32,       // 1: the second input / gradient binding is used
    accumulate: u32, // forward: 1 adds into y (pairs after the first)
}

const WG: u32 = 256u;

@group(0) @binding(0) var<uniform> params: Params;

// forward bindings: the two inputs, then the output
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

// backward bindings: gradients to write, then the incoming gradient
@group(0) @binding(1) var<storage, read_write> dx_a: array<f32>;
@group(0) @binding(2) var<storage, read_write> dx_b: array<f32>;
@group(0) @binding(3) var<storage, read> dy: array<f32>;

fn index(wid: vec3<u32>, nwg: vec3<u32>, lid: vec3<u32>) -> u32 {
    return (wid.y * nwg.x + wid.x) * WG + lid.x;
}

@compute @workgroup_size(WG)
fn average_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = index(wid, nwg, lid);
    if (i >= params.n) { return; }
    // Branches on uniforms only: no divergence.
    var s = a[i];
    if (params.pair != 0u) { s += b[i]; }
    var v = s * params.scale;
    if (params.accumulate != 0u) { v = y[i] + v; }
    y[i] = v;
}

@compute @workgroup_size(WG)
fn average_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = index(wid, nwg, lid);
    if (i >= params.n) { return; }
    let g = dy[i] * params.scale;
    dx_a[i] += g;
    if (params.pair != 0u) { dx_b[i] += g; }
}
