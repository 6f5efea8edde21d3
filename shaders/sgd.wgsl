// SGD with optional (Nesterov) momentum, Keras 3 semantics
// (keras/src/optimizers/sgd.py, update_step), one invocation per weight:
//   mode 0 (momentum = 0): w = w - g * lr
//   mode 1 (momentum):     v = v * momentum - g * lr;  w = w + v
//   mode 2 (Nesterov):     v = v * momentum - g * lr;  w = w + (v * momentum - g * lr)
// The operations are in Keras's order so an f32 reference matches closely.

struct Params {
    n: u32,
    mode: u32,
    lr: f32,
    momentum: f32,
}

const WG: u32 = 256u;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read_write> w: array<f32>;
@group(0) @binding(2) var<storage, read> g: array<f32>;
// Unused (may be a 1-element placeholder) in mode 0.
@group(0) @binding(3) var<storage, read_write> velocity: array<f32>;

@compute @workgroup_size(WG)
fn sgd_update(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = (wid.y * nwg.x + wid.x) * WG + lid.x;
    if (i >= params.n) { return; }
    let step = g[i] * params.lr;
    if (params.mode == 0u) {
        w[i] = w[i] - step;
        return;
    }
    let v = velocity[i] * params.momentum - step;
    velocity[i] = v;
    if (params.mode == 1u) {
        w[i] = w[i] + v;
    } else {
        w[i] = w[i] + (v * params.momentum - step);
    }
}
