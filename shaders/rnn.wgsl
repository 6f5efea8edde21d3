// Vanilla RNN (Keras SimpleRNN, tanh), the elementwise parts; the matmuls
// (input projection, recurrent h·U, dh·Uᵀ and the weight gradients) run in
// matmul.wgsl and the bias gradient in bias.wgsl (bias_backward).
//
// Buffers are time-major:
//   z, dz        : [T, B, H]     h_all : [T+1, B, H] (slot 0 = initial state 0)
//   mask         : [T, B] u32 or f32, nonzero = real step; masked steps
//                  carry h through unchanged.
//
// rnn_cell_forward  (step t): h_t = tanh(z_t + b) -> h_all slot t+1 (and
//                             h_last on the final step).
// rnn_cell_backward (step t): dh -> dz_t = dh (1 - h_t²) and the masked
//                             carry into dh_{t-1} (dz_t·Uᵀ is added by a matmul).

struct Params {
    batch: u32,
    hidden: u32,
    step: u32,
    steps: u32,
    // 0: no mask, 1: u32 mask, 2: f32 mask
    mask_kind: u32,
    has_seq: u32,
    has_last: u32,
    _pad0: u32,
}

const WG: u32 = 64u;

@group(0) @binding(0) var<uniform> params: Params;

// rnn_cell_forward bindings
@group(0) @binding(1) var<storage, read> z: array<f32>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read> fwd_mask: array<u32>;
@group(0) @binding(4) var<storage, read_write> h_state: array<f32>;
@group(0) @binding(5) var<storage, read_write> h_final: array<f32>;

// rnn_cell_backward bindings: gradients to write, incoming, saved
@group(0) @binding(1) var<storage, read_write> dz: array<f32>;
@group(0) @binding(2) var<storage, read_write> dh_carry: array<f32>;
@group(0) @binding(3) var<storage, read> dh_seq: array<f32>;
@group(0) @binding(4) var<storage, read> dh_final: array<f32>;
@group(0) @binding(5) var<storage, read> h_saved: array<f32>;
@group(0) @binding(6) var<storage, read> bwd_mask: array<u32>;

fn index(wid: vec3<u32>, nwg: vec3<u32>, lid: vec3<u32>) -> u32 {
    return (wid.y * nwg.x + wid.x) * WG + lid.x;
}

fn mask_real(bits: u32) -> bool {
    if (params.mask_kind == 1u) { return bits != 0u; }
    // f32: +0.0 and -0.0 are masked
    return (bits & 0x7fffffffu) != 0u;
}

@compute @workgroup_size(WG)
fn rnn_cell_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = index(wid, nwg, lid);
    let nb = params.batch;
    let nh = params.hidden;
    if (i >= nb * nh) { return; }
    let b = i / nh;
    let j = i % nh;
    let t = params.step;
    let prev = t * nb * nh + i;
    // z_t has the same [B,H] layout as h_t: step t's slice starts at t*B*H.
    // tanh of a clamped argument: some drivers return NaN for |v| beyond ~44.
    var h = tanh(clamp(z[prev] + bias[j], -15.0, 15.0));
    if (params.mask_kind != 0u && !mask_real(fwd_mask[t * nb + b])) {
        h = h_state[prev];
    }
    h_state[prev + nb * nh] = h;
    if (t + 1u == params.steps) { h_final[i] = h; }
}

@compute @workgroup_size(WG)
fn rnn_cell_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = index(wid, nwg, lid);
    let nb = params.batch;
    let nh = params.hidden;
    if (i >= nb * nh) { return; }
    let b = i / nh;
    let t = params.step;
    // The last step is the first one backward: the carry holds nothing yet.
    let first = t + 1u == params.steps;
    var dh = 0.0;
    if (!first) { dh = dh_carry[i]; }
    if (params.has_seq != 0u) { dh += dh_seq[t * nb * nh + i]; }
    if (first && params.has_last != 0u) { dh += dh_final[i]; }

    let cur = t * nb * nh + i;
    if (params.mask_kind != 0u && !mask_real(bwd_mask[t * nb + b])) {
        // A masked step passes h straight through.
        dz[cur] = 0.0;
        dh_carry[i] = dh;
        return;
    }
    let h = h_saved[cur + nb * nh];
    dz[cur] = dh * (1.0 - h * h);
    // dh_{t-1} = dz_t·Uᵀ, added by the matmul that follows.
    dh_carry[i] = 0.0;
}
