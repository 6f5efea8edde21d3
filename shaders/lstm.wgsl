// LSTM (Keras semantics), the elementwise parts; the matmuls (input
// projection, recurrent h·U, dh·Uᵀ and the weight gradients) run in
// matmul.wgsl and the bias gradient in bias.wgsl (bias_backward). Gate order
// along the 4H axis: i, f, g (cell), o.
//
// Buffers are time-major:
//   z, gates, dz : [T, B, 4H]    h_all, c_all : [T+1, B, H] (slot 0 = initial state 0)
//   mask         : [T, B] u32 or f32, nonzero = real step (so Keras' token ids
//                  can serve as the mask_zero mask directly); masked steps
//                  carry h and c through unchanged.
//
// lstm_gates_forward  (step t): z_t + b -> gates_t, c_{t+1 slot}, h_{t+1 slot}
//                               (and h_last on the final step).
// lstm_gates_backward (step t): dh, dc -> dz_t, dc carry, dh carry (masked
//                               carry only: dz_t·Uᵀ is added by a matmul).

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

// lstm_gates_forward bindings
@group(0) @binding(1) var<storage, read> z: array<f32>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read> fwd_mask: array<u32>;
@group(0) @binding(4) var<storage, read_write> gates_out: array<f32>;
@group(0) @binding(5) var<storage, read_write> c_state: array<f32>;
@group(0) @binding(6) var<storage, read_write> h_state: array<f32>;
@group(0) @binding(7) var<storage, read_write> h_final: array<f32>;

// lstm_gates_backward bindings: gradients to write, incoming, saved
@group(0) @binding(1) var<storage, read_write> dz: array<f32>;
@group(0) @binding(2) var<storage, read_write> dh_carry: array<f32>;
@group(0) @binding(3) var<storage, read_write> dc_carry: array<f32>;
@group(0) @binding(4) var<storage, read> dh_seq: array<f32>;
@group(0) @binding(5) var<storage, read> dh_final: array<f32>;
@group(0) @binding(6) var<storage, read> gates_in: array<f32>;
@group(0) @binding(7) var<storage, read> c_saved: array<f32>;
@group(0) @binding(8) var<storage, read> bwd_mask: array<u32>;

fn index(wid: vec3<u32>, nwg: vec3<u32>, lid: vec3<u32>) -> u32 {
    return (wid.y * nwg.x + wid.x) * WG + lid.x;
}

fn sigmoid(v: f32) -> f32 {
    return 1.0 / (1.0 + exp(-v));
}

// tanh of a clamped argument: some drivers compute tanh through exp and
// return NaN for |v| beyond ~44; tanh(15) is already 1 in f32.
fn tanh_safe(v: f32) -> f32 {
    return tanh(clamp(v, -15.0, 15.0));
}

fn mask_real(bits: u32) -> bool {
    if (params.mask_kind == 1u) { return bits != 0u; }
    // f32: +0.0 and -0.0 are masked
    return (bits & 0x7fffffffu) != 0u;
}

@compute @workgroup_size(WG)
fn lstm_gates_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = index(wid, nwg, lid);
    let nb = params.batch;
    let nh = params.hidden;
    if (i >= nb * nh) { return; }
    let b = i / nh;
    let j = i % nh;
    let t = params.step;
    let zrow = (t * nb + b) * 4u * nh;
    let prev = t * nb * nh + i;
    let next = prev + nb * nh;

    let ig = sigmoid(z[zrow + j] + bias[j]);
    let fg = sigmoid(z[zrow + nh + j] + bias[nh + j]);
    let gg = tanh_safe(z[zrow + 2u * nh + j] + bias[2u * nh + j]);
    let og = sigmoid(z[zrow + 3u * nh + j] + bias[3u * nh + j]);
    gates_out[zrow + j] = ig;
    gates_out[zrow + nh + j] = fg;
    gates_out[zrow + 2u * nh + j] = gg;
    gates_out[zrow + 3u * nh + j] = og;

    let c_prev = c_state[prev];
    var c = fg * c_prev + ig * gg;
    var h = og * tanh_safe(c);
    if (params.mask_kind != 0u && !mask_real(fwd_mask[t * nb + b])) {
        c = c_prev;
        h = h_state[prev];
    }
    c_state[next] = c;
    h_state[next] = h;
    if (t + 1u == params.steps) { h_final[i] = h; }
}

@compute @workgroup_size(WG)
fn lstm_gates_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                       @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = index(wid, nwg, lid);
    let nb = params.batch;
    let nh = params.hidden;
    if (i >= nb * nh) { return; }
    let b = i / nh;
    let j = i % nh;
    let t = params.step;
    // The last step is the first one backward: the carries hold nothing yet.
    let first = t + 1u == params.steps;
    var dh = 0.0;
    var dc = 0.0;
    if (!first) {
        dh = dh_carry[i];
        dc = dc_carry[i];
    }
    if (params.has_seq != 0u) { dh += dh_seq[t * nb * nh + i]; }
    if (first && params.has_last != 0u) { dh += dh_final[i]; }

    let zrow = (t * nb + b) * 4u * nh;
    if (params.mask_kind != 0u && !mask_real(bwd_mask[t * nb + b])) {
        // A masked step passes h and c straight through.
        dz[zrow + j] = 0.0;
        dz[zrow + nh + j] = 0.0;
        dz[zrow + 2u * nh + j] = 0.0;
        dz[zrow + 3u * nh + j] = 0.0;
        dh_carry[i] = dh;
        dc_carry[i] = dc;
        return;
    }
    let ig = gates_in[zrow + j];
    let fg = gates_in[zrow + nh + j];
    let gg = gates_in[zrow + 2u * nh + j];
    let og = gates_in[zrow + 3u * nh + j];
    let prev = t * nb * nh + i;
    let c_prev = c_saved[prev];
    let tc = tanh_safe(c_saved[prev + nb * nh]);
    let dct = dc + dh * og * (1.0 - tc * tc);
    dz[zrow + j] = dct * gg * ig * (1.0 - ig);
    dz[zrow + nh + j] = dct * c_prev * fg * (1.0 - fg);
    dz[zrow + 2u * nh + j] = dct * ig * (1.0 - gg * gg);
    dz[zrow + 3u * nh + j] = dh * tc * og * (1.0 - og);
    dc_carry[i] = dct * fg;
    // dh_{t-1} = dz_t·Uᵀ, added by the matmul that follows.
    dh_carry[i] = 0.0;
}
