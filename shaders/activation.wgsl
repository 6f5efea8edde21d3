// Elementwise activations, forward and backward side by side.
// Forward:  y = f(x).
// Backward: dx += dy * f'(.), from x (ReLU) or from the saved output y
//           (sigmoid: y(1-y), tanh: 1-y^2), so forward need not keep x.
// The `_vec4` entries do the same four elements per invocation, for
// lengths that are a multiple of 4 (params.n counts vec4s then): on
// lavapipe an invocation's load is a gather across the SIMD lanes, so one
// vec4 load per lane moves four times the data of a scalar one.

struct Params {
    n: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

const WG: u32 = 256u;

@group(0) @binding(0) var<uniform> params: Params;

// forward bindings
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

// backward bindings: gradient to write, incoming gradient, saved value
@group(0) @binding(1) var<storage, read_write> dx: array<f32>;
@group(0) @binding(2) var<storage, read> dy: array<f32>;
@group(0) @binding(3) var<storage, read> saved: array<f32>;

// vec4 forward bindings
@group(0) @binding(1) var<storage, read> x4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> y4: array<vec4<f32>>;

// vec4 backward bindings
@group(0) @binding(1) var<storage, read_write> dx4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> dy4: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> saved4: array<vec4<f32>>;

fn index(wid: vec3<u32>, nwg: vec3<u32>, lid: vec3<u32>) -> u32 {
    return (wid.y * nwg.x + wid.x) * WG + lid.x;
}

@compute @workgroup_size(WG)
fn relu_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = index(wid, nwg, lid);
    if (i < params.n) { y[i] = max(x[i], 0.0); }
}

@compute @workgroup_size(WG)
fn relu_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = index(wid, nwg, lid);
    // saved = x; the derivative at 0 is taken as 0, as in Keras.
    if (i < params.n) { dx[i] += select(0.0, dy[i], saved[i] > 0.0); }
}

@compute @workgroup_size(WG)
fn sigmoid_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = index(wid, nwg, lid);
    if (i < params.n) { y[i] = 1.0 / (1.0 + exp(-x[i])); }
}

@compute @workgroup_size(WG)
fn sigmoid_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = index(wid, nwg, lid);
    // saved = y
    if (i < params.n) { let s = saved[i]; dx[i] += dy[i] * s * (1.0 - s); }
}

@compute @workgroup_size(WG)
fn tanh_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = index(wid, nwg, lid);
    if (i < params.n) { y[i] = tanh(x[i]); }
}

@compute @workgroup_size(WG)
fn tanh_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = index(wid, nwg, lid);
    // saved = y
    if (i < params.n) { let t = saved[i]; dx[i] += dy[i] * (1.0 - t * t); }
}

@compute @workgroup_size(WG)
fn relu_forward_vec4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = index(wid, nwg, lid);
    if (i < params.n) { y4[i] = max(x4[i], vec4<f32>(0.0)); }
}

@compute @workgroup_size(WG)
fn relu_backward_vec4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = index(wid, nwg, lid);
    if (i < params.n) { dx4[i] += select(vec4<f32>(0.0), dy4[i], saved4[i] > vec4<f32>(0.0)); }
}

@compute @workgroup_size(WG)
fn sigmoid_forward_vec4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                        @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = index(wid, nwg, lid);
    if (i < params.n) { y4[i] = 1.0 / (1.0 + exp(-x4[i])); }
}

@compute @workgroup_size(WG)
fn sigmoid_backward_vec4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                         @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = index(wid, nwg, lid);
    if (i < params.n) { let s = saved4[i]; dx4[i] += dy4[i] * s * (1.0 - s); }
}

@compute @workgroup_size(WG)
fn tanh_forward_vec4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = index(wid, nwg, lid);
    if (i < params.n) { y4[i] = tanh(x4[i]); }
}

@compute @workgroup_size(WG)
fn tanh_backward_vec4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = index(wid, nwg, lid);
    if (i < params.n) { let t = saved4[i]; dx4[i] += dy4[i] * (1.0 - t * t); }
}
