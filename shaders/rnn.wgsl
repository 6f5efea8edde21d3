// Vanilla RNN (Keras SimpleRNN, tanh): the per-step cell kernels and the
// persistent whole-sequence kernels (which also do the recurrent h·U and
// dh·Uᵀ); the other matmuls (input projection, per-step recurrent products,
// weight gradients) run in matmul.wgsl and the bias gradient in bias.wgsl
// (bias_backward).
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
// rnn_sequence_forward / rnn_sequence_backward: every step in one dispatch,
//                             recurrent matmuls included (see "persistent" below).

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
    // Read by the LSTM's blocked kernels only (shared steps).
    first: u32,
    end: u32,
    rows: u32,
    _pad1: u32,
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

// ---------------------------------------------------------------- persistent
//
// rnn_sequence_forward / rnn_sequence_backward run the whole recurrence in
// one dispatch, laid out as lstm_sequence_* (see lstm.wgsl): each invocation
// owns two samples (a = g and b = g + ceil(B/2) for global lane g) and loops
// over every step with h (forward) or dh, dz_t (backward) in private arrays;
// the weight loads U[k, col] have the same address in every lane (one
// scalar load per 8-lane vector on lavapipe) and each feeds both samples.
// Four columns (forward) or four rows (backward) of U at a time, so that
// each load of the private state feeds four multiply-adds; the last block
// clamps its index and drops the duplicates.

// Lanes of a persistent workgroup: lavapipe's SIMD width.
const PLANES: u32 = 8u;
// Largest H of the persistent kernels (the size of their private arrays).
const MAX_H: u32 = 256u;
// H, specialised per pipeline: constant trip counts.
override HIDDEN: u32 = 1u;

// rnn_sequence_forward bindings
@group(0) @binding(1) var<storage, read> sf_xw: array<f32>;
@group(0) @binding(2) var<storage, read> sf_bias: array<f32>;
@group(0) @binding(3) var<storage, read> sf_u: array<f32>;
@group(0) @binding(4) var<storage, read> sf_mask: array<u32>;
@group(0) @binding(5) var<storage, read_write> sf_h: array<f32>;
@group(0) @binding(6) var<storage, read_write> sf_h_last: array<f32>;

// rnn_sequence_backward bindings: gradient to write, incoming, saved
@group(0) @binding(1) var<storage, read_write> sb_dz: array<f32>;
@group(0) @binding(2) var<storage, read> sb_dh_seq: array<f32>;
@group(0) @binding(3) var<storage, read> sb_dh_last: array<f32>;
@group(0) @binding(4) var<storage, read> sb_h: array<f32>;
@group(0) @binding(5) var<storage, read> sb_u: array<f32>;
@group(0) @binding(6) var<storage, read> sb_mask: array<u32>;

// The two samples of one invocation, clamped into the batch; `live_*` says
// whether this invocation stores that sample's results.
struct Pair {
    a: u32,
    b: u32,
    live_a: bool,
    live_b: bool,
}

fn sample_pair(wid: vec3<u32>, lid: vec3<u32>) -> Pair {
    let nb = params.batch;
    let half = (nb + 1u) / 2u;
    let g = wid.x * PLANES + lid.x;
    return Pair(min(g, half - 1u), min(g + half, nb - 1u), g < half, g + half < nb);
}

fn sf_real(t: u32, n: u32) -> bool {
    return params.mask_kind == 0u || mask_real(sf_mask[t * params.batch + n]);
}

fn sb_real(t: u32, n: u32) -> bool {
    return params.mask_kind == 0u || mask_real(sb_mask[t * params.batch + n]);
}

// h_t[j] of sample n from the recurrent part `zr` of column j: into h[nxt + j]
// (h[cur + j] is h_{t-1}), and to storage when `live`.
fn rnn_cell_step(t: u32, n: u32, j: u32, zr: f32, real: bool, live: bool, cur: u32,
                 h: ptr<function, array<f32, 2u * MAX_H>>) {
    let row = (t * params.batch + n) * HIDDEN + j;
    var hv = (*h)[cur + j];
    // A masked step carries h through unchanged.
    if (real) {
        // tanh of a clamped argument: some drivers return NaN for |v| beyond ~44.
        hv = tanh(clamp(sf_xw[row] + zr + sf_bias[j], -15.0, 15.0));
    }
    (*h)[HIDDEN - cur + j] = hv;
    if (live) {
        sf_h[row + params.batch * HIDDEN] = hv;
        if (t + 1u == params.steps) { sf_h_last[n * HIDDEN + j] = hv; }
    }
}

@compute @workgroup_size(PLANES)
fn rnn_sequence_forward(@builtin(workgroup_id) wid: vec3<u32>,
                        @builtin(local_invocation_id) lid: vec3<u32>) {
    let s = sample_pair(wid, lid);
    // h_{t-1} and h_t of samples a and b by parity of t.
    var ha: array<f32, 2u * MAX_H>;
    var hb: array<f32, 2u * MAX_H>;
    // The initial state is slot 0 of h_all.
    for (var j = 0u; j < HIDDEN; j++) {
        ha[j] = sf_h[s.a * HIDDEN + j];
        hb[j] = sf_h[s.b * HIDDEN + j];
    }
    for (var t = 0u; t < params.steps; t++) {
        let cur = (t & 1u) * HIDDEN;
        let real_a = sf_real(t, s.a);
        let real_b = sf_real(t, s.b);
        for (var j0 = 0u; j0 < HIDDEN; j0 += 4u) {
            let j1 = min(j0 + 1u, HIDDEN - 1u);
            let j2 = min(j0 + 2u, HIDDEN - 1u);
            let j3 = min(j0 + 3u, HIDDEN - 1u);
            var za = vec4<f32>(0.0);
            var zb = vec4<f32>(0.0);
            for (var k = 0u; k < HIDDEN; k++) {
                let r = k * HIDDEN;
                let w = vec4<f32>(sf_u[r + j0], sf_u[r + j1], sf_u[r + j2], sf_u[r + j3]);
                za += ha[cur + k] * w;
                zb += hb[cur + k] * w;
            }
            rnn_cell_step(t, s.a, j0, za.x, real_a, s.live_a, cur, &ha);
            rnn_cell_step(t, s.b, j0, zb.x, real_b, s.live_b, cur, &hb);
            if (j0 + 1u < HIDDEN) {
                rnn_cell_step(t, s.a, j1, za.y, real_a, s.live_a, cur, &ha);
                rnn_cell_step(t, s.b, j1, zb.y, real_b, s.live_b, cur, &hb);
            }
            if (j0 + 2u < HIDDEN) {
                rnn_cell_step(t, s.a, j2, za.z, real_a, s.live_a, cur, &ha);
                rnn_cell_step(t, s.b, j2, zb.z, real_b, s.live_b, cur, &hb);
            }
            if (j0 + 3u < HIDDEN) {
                rnn_cell_step(t, s.a, j3, za.w, real_a, s.live_a, cur, &ha);
                rnn_cell_step(t, s.b, j3, zb.w, real_b, s.live_b, cur, &hb);
            }
        }
    }
}

// dz_t[j] of sample n from the total dh (dh[j] plus the incoming dh_seq)
// into dz[j] and storage when `live`; leaves in dh[j] the masked carry into
// step t-1 (dz_t·Uᵀ is added by the caller).
fn rnn_cell_back(t: u32, n: u32, j: u32, real: bool, live: bool,
                 dh: ptr<function, array<f32, MAX_H>>, dz: ptr<function, array<f32, MAX_H>>) {
    let row = (t * params.batch + n) * HIDDEN + j;
    var g = (*dh)[j];
    if (params.has_seq != 0u) { g += sb_dh_seq[row]; }
    var d = 0.0;
    if (real) {
        let h = sb_h[row + params.batch * HIDDEN];
        d = g * (1.0 - h * h);
        g = 0.0;
    }
    // A masked step passes dh straight through.
    (*dh)[j] = g;
    (*dz)[j] = d;
    if (live) { sb_dz[row] = d; }
}

@compute @workgroup_size(PLANES)
fn rnn_sequence_backward(@builtin(workgroup_id) wid: vec3<u32>,
                         @builtin(local_invocation_id) lid: vec3<u32>) {
    let s = sample_pair(wid, lid);
    // What flows into step t from step t+1, and dz_t, of samples a and b.
    var dha: array<f32, MAX_H>;
    var dhb: array<f32, MAX_H>;
    var dza: array<f32, MAX_H>;
    var dzb: array<f32, MAX_H>;
    for (var j = 0u; j < HIDDEN; j++) {
        var la = 0.0;
        var lb = 0.0;
        if (params.has_last != 0u) {
            la = sb_dh_last[s.a * HIDDEN + j];
            lb = sb_dh_last[s.b * HIDDEN + j];
        }
        dha[j] = la;
        dhb[j] = lb;
    }
    for (var i = 0u; i < params.steps; i++) {
        let t = params.steps - 1u - i;
        let real_a = sb_real(t, s.a);
        let real_b = sb_real(t, s.b);
        for (var j = 0u; j < HIDDEN; j++) {
            rnn_cell_back(t, s.a, j, real_a, s.live_a, &dha, &dza);
            rnn_cell_back(t, s.b, j, real_b, s.live_b, &dhb, &dzb);
        }
        // dh_0 is not needed (h_0 is the constant initial state).
        if (t == 0u) { break; }
        // dh_{t-1}[k] += Σ_col dz_t[col]·U[k, col], four k at a time.
        for (var k0 = 0u; k0 < HIDDEN; k0 += 4u) {
            let k1 = min(k0 + 1u, HIDDEN - 1u);
            let k2 = min(k0 + 2u, HIDDEN - 1u);
            let k3 = min(k0 + 3u, HIDDEN - 1u);
            var aa = vec4<f32>(0.0);
            var ab = vec4<f32>(0.0);
            for (var col = 0u; col < HIDDEN; col++) {
                let w = vec4<f32>(sb_u[k0 * HIDDEN + col], sb_u[k1 * HIDDEN + col],
                                  sb_u[k2 * HIDDEN + col], sb_u[k3 * HIDDEN + col]);
                aa += dza[col] * w;
                ab += dzb[col] * w;
            }
            dha[k0] += aa.x;
            dhb[k0] += ab.x;
            if (k0 + 1u < HIDDEN) { dha[k1] += aa.y; dhb[k1] += ab.y; }
            if (k0 + 2u < HIDDEN) { dha[k2] += aa.z; dhb[k2] += ab.z; }
            if (k0 + 3u < HIDDEN) { dha[k3] += aa.w; dhb[k3] += ab.w; }
        }
    }
}
