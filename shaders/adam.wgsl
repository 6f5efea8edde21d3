// Adam, exactly as Keras 3 writes it (keras/src/optimizers/adam.py,
// Adam.update_step), one invocation per weight:
//   m += (g - m) * (1 - beta_1)
//   v += (g*g - v) * (1 - beta_2)
//   w -= (m * alpha) / (sqrt(v) + epsilon)
// with alpha = lr * sqrt(1 - beta_2^t) / (1 - beta_1^t) for the 1-based step t.
// alpha and the (1 - beta) factors come from the host (computed in f64,
// rounded to f32), so a new step only rewrites this uniform.
// adam_update_vec4 does four weights per invocation when n is a multiple of
// 4 (the same operations per component; on lavapipe a lane's load is a
// gather, so vec4 loads move four times the data per gather).

struct Params {
    n: u32,
    // 1-based step t that alpha was computed for (kept for inspection).
    step: u32,
    alpha: f32,
    epsilon: f32,
    one_minus_beta_1: f32,
    one_minus_beta_2: f32,
    _pad0: u32,
    _pad1: u32,
}

const WG: u32 = 256u;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read_write> w: array<f32>;
@group(0) @binding(2) var<storage, read> g: array<f32>;
@group(0) @binding(3) var<storage, read_write> m: array<f32>;
@group(0) @binding(4) var<storage, read_write> v: array<f32>;

@compute @workgroup_size(WG)
fn adam_update(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = (wid.y * nwg.x + wid.x) * WG + lid.x;
    if (i >= params.n) { return; }
    let gi = g[i];
    let mi = m[i] + (gi - m[i]) * params.one_minus_beta_1;
    let vi = v[i] + (gi * gi - v[i]) * params.one_minus_beta_2;
    m[i] = mi;
    v[i] = vi;
    w[i] = w[i] - (mi * params.alpha) / (sqrt(vi) + params.epsilon);
}

@group(0) @binding(1) var<storage, read_write> w4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> g4: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> m4: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> v4: array<vec4<f32>>;

@compute @workgroup_size(WG)
fn adam_update_vec4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = (wid.y * nwg.x + wid.x) * WG + lid.x;
    if (i >= params.n / 4u) { return; }
    let gi = g4[i];
    let mi = m4[i] + (gi - m4[i]) * params.one_minus_beta_1;
    let vi = v4[i] + (gi * gi - v4[i]) * params.one_minus_beta_2;
    m4[i] = mi;
    v4[i] = vi;
    w4[i] = w4[i] - (mi * params.alpha) / (sqrt(vi) + params.epsilon);
}
