// LSTM (Keras semantics): the per-step gate kernels and the persistent
// whole-sequence kernels (which also do the recurrent h·U and dh·Uᵀ); the
// other matmuls (input projection, per-step recurrent products, weight
// gradients) run in matmul.wgsl and the bias gradient in bias.wgsl
// (bias_backward). Gate order along the 4H axis: i, f, g (cell), o.
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
// lstm_sequence_forward / lstm_sequence_backward: every step in one
//                               dispatch, recurrent matmuls included (see
//                               "persistent" below).

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

// ---------------------------------------------------------------- persistent
//
// lstm_sequence_forward / lstm_sequence_backward run the whole recurrence in
// one dispatch, exploiting that samples are independent: each invocation
// owns two samples (a = g and b = g + ceil(B/2) for global lane g) and loops
// over every step, keeping h, c (forward) or dh, dc, dz_t (backward) in
// private arrays. So no barriers and no workgroup memory; the weight loads
// U[k, col] have the same address in every lane (k and col are loop
// counters), which lavapipe turns into one scalar load per 8-lane vector
// instead of one per lane, and each of them feeds both samples. (Measured on
// lavapipe at T=100, B=32, H=64: ~3x faster than one workgroup per sample
// with lanes along the gate columns, whose per-lane weight loads cost one
// scalar load per lane.) Lanes past ceil(B/2) and the b of an odd last
// pair work on a clamped sample and store nothing.
//
// Only the per-sample state loads and stores (x·W, gates, c, dz, mask) have
// per-lane addresses: O(H) per step against O(H²) multiply-adds.

// Lanes of a persistent workgroup: lavapipe's SIMD width.
const PLANES: u32 = 8u;
// Largest H of the persistent kernels (the size of their private arrays).
const MAX_H: u32 = 256u;
// H, specialised per pipeline: constant trip counts.
override HIDDEN: u32 = 1u;

// lstm_sequence_forward bindings
@group(0) @binding(1) var<storage, read> sf_xw: array<f32>;
@group(0) @binding(2) var<storage, read> sf_bias: array<f32>;
@group(0) @binding(3) var<storage, read> sf_u: array<f32>;
@group(0) @binding(4) var<storage, read> sf_mask: array<u32>;
@group(0) @binding(5) var<storage, read_write> sf_gates: array<f32>;
@group(0) @binding(6) var<storage, read_write> sf_c: array<f32>;
@group(0) @binding(7) var<storage, read_write> sf_h: array<f32>;
@group(0) @binding(8) var<storage, read_write> sf_h_last: array<f32>;

// lstm_sequence_backward bindings: gradient to write, incoming, saved
@group(0) @binding(1) var<storage, read_write> sb_dz: array<f32>;
@group(0) @binding(2) var<storage, read> sb_dh_seq: array<f32>;
@group(0) @binding(3) var<storage, read> sb_dh_last: array<f32>;
@group(0) @binding(4) var<storage, read> sb_gates: array<f32>;
@group(0) @binding(5) var<storage, read> sb_c: array<f32>;
@group(0) @binding(6) var<storage, read> sb_u: array<f32>;
@group(0) @binding(7) var<storage, read> sb_mask: array<u32>;

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

// Gates of unit j of sample n at step t from the recurrent part `zr`
// (i, f, g, o columns of h_{t-1}·U); updates c[j] and h[nxt + j] (h[cur + j]
// is h_{t-1}) and stores gates, c_t, h_t (and h_T) when `live`.
fn lstm_cell_step(t: u32, n: u32, j: u32, zr: vec4<f32>, real: bool, live: bool, cur: u32,
                  h: ptr<function, array<f32, 2u * MAX_H>>, c: ptr<function, array<f32, MAX_H>>) {
    let zrow = (t * params.batch + n) * 4u * HIDDEN;
    let ig = sigmoid(sf_xw[zrow + j] + zr.x + sf_bias[j]);
    let fg = sigmoid(sf_xw[zrow + HIDDEN + j] + zr.y + sf_bias[HIDDEN + j]);
    let gg = tanh_safe(sf_xw[zrow + 2u * HIDDEN + j] + zr.z + sf_bias[2u * HIDDEN + j]);
    let og = sigmoid(sf_xw[zrow + 3u * HIDDEN + j] + zr.w + sf_bias[3u * HIDDEN + j]);
    var cv = (*c)[j];
    var hv = (*h)[cur + j];
    // A masked step carries h and c through unchanged.
    if (real) {
        cv = fg * cv + ig * gg;
        hv = og * tanh_safe(cv);
    }
    (*c)[j] = cv;
    (*h)[HIDDEN - cur + j] = hv;
    if (live) {
        sf_gates[zrow + j] = ig;
        sf_gates[zrow + HIDDEN + j] = fg;
        sf_gates[zrow + 2u * HIDDEN + j] = gg;
        sf_gates[zrow + 3u * HIDDEN + j] = og;
        let next = ((t + 1u) * params.batch + n) * HIDDEN + j;
        sf_c[next] = cv;
        sf_h[next] = hv;
        if (t + 1u == params.steps) { sf_h_last[n * HIDDEN + j] = hv; }
    }
}

@compute @workgroup_size(PLANES)
fn lstm_sequence_forward(@builtin(workgroup_id) wid: vec3<u32>,
                         @builtin(local_invocation_id) lid: vec3<u32>) {
    let s = sample_pair(wid, lid);
    let g4 = 4u * HIDDEN;
    // h_{t-1} and h_t of samples a and b by parity of t, and their c.
    var ha: array<f32, 2u * MAX_H>;
    var hb: array<f32, 2u * MAX_H>;
    var ca: array<f32, MAX_H>;
    var cb: array<f32, MAX_H>;
    // The initial state is slot 0 of h_all and c_all.
    for (var j = 0u; j < HIDDEN; j++) {
        ha[j] = sf_h[s.a * HIDDEN + j];
        hb[j] = sf_h[s.b * HIDDEN + j];
        ca[j] = sf_c[s.a * HIDDEN + j];
        cb[j] = sf_c[s.b * HIDDEN + j];
    }
    for (var t = 0u; t < params.steps; t++) {
        let cur = (t & 1u) * HIDDEN;
        let real_a = sf_real(t, s.a);
        let real_b = sf_real(t, s.b);
        for (var j = 0u; j < HIDDEN; j++) {
            // Columns j of the four gates: h_{t-1}·U[:, j + q*H].
            var za = vec4<f32>(0.0);
            var zb = vec4<f32>(0.0);
            for (var k = 0u; k < HIDDEN; k++) {
                let r = k * g4 + j;
                let w = vec4<f32>(sf_u[r], sf_u[r + HIDDEN], sf_u[r + 2u * HIDDEN], sf_u[r + 3u * HIDDEN]);
                za += ha[cur + k] * w;
                zb += hb[cur + k] * w;
            }
            lstm_cell_step(t, s.a, j, za, real_a, s.live_a, cur, &ha, &ca);
            lstm_cell_step(t, s.b, j, zb, real_b, s.live_b, cur, &hb, &cb);
        }
    }
}

// dz_t of unit j of sample n from the total dh (dh[j] plus the incoming
// dh_seq) and dc[j], into dz[.. j + q*H] and storage when `live`; leaves in
// dh[j] and dc[j] what flows to step t-1 besides dz_t·Uᵀ.
fn lstm_cell_back(t: u32, n: u32, j: u32, real: bool, live: bool,
                  dh: ptr<function, array<f32, MAX_H>>, dc: ptr<function, array<f32, MAX_H>>,
                  dz: ptr<function, array<f32, 4u * MAX_H>>) {
    let nb = params.batch;
    let row = (t * nb + n) * HIDDEN + j;
    var g = (*dh)[j];
    if (params.has_seq != 0u) { g += sb_dh_seq[row]; }
    var d = vec4<f32>(0.0);
    if (real) {
        let zrow = (t * nb + n) * 4u * HIDDEN;
        let ig = sb_gates[zrow + j];
        let fg = sb_gates[zrow + HIDDEN + j];
        let gg = sb_gates[zrow + 2u * HIDDEN + j];
        let og = sb_gates[zrow + 3u * HIDDEN + j];
        let tc = tanh_safe(sb_c[row + nb * HIDDEN]);
        let dct = (*dc)[j] + g * og * (1.0 - tc * tc);
        d = vec4<f32>(dct * gg * ig * (1.0 - ig),
                      dct * sb_c[row] * fg * (1.0 - fg),
                      dct * ig * (1.0 - gg * gg),
                      g * tc * og * (1.0 - og));
        (*dc)[j] = dct * fg;
        // dh_{t-1} = dz_t·Uᵀ, added by the caller.
        g = 0.0;
    }
    // A masked step passes dh (and dc, left as it is) straight through.
    (*dh)[j] = g;
    (*dz)[j] = d.x;
    (*dz)[HIDDEN + j] = d.y;
    (*dz)[2u * HIDDEN + j] = d.z;
    (*dz)[3u * HIDDEN + j] = d.w;
    if (live) {
        let zrow = (t * nb + n) * 4u * HIDDEN;
        sb_dz[zrow + j] = d.x;
        sb_dz[zrow + HIDDEN + j] = d.y;
        sb_dz[zrow + 2u * HIDDEN + j] = d.z;
        sb_dz[zrow + 3u * HIDDEN + j] = d.w;
    }
}

@compute @workgroup_size(PLANES)
fn lstm_sequence_backward(@builtin(workgroup_id) wid: vec3<u32>,
                          @builtin(local_invocation_id) lid: vec3<u32>) {
    let s = sample_pair(wid, lid);
    let g4 = 4u * HIDDEN;
    // What flows into step t from step t+1, and dz_t, of samples a and b.
    var dha: array<f32, MAX_H>;
    var dhb: array<f32, MAX_H>;
    var dca: array<f32, MAX_H>;
    var dcb: array<f32, MAX_H>;
    var dza: array<f32, 4u * MAX_H>;
    var dzb: array<f32, 4u * MAX_H>;
    for (var j = 0u; j < HIDDEN; j++) {
        var la = 0.0;
        var lb = 0.0;
        if (params.has_last != 0u) {
            la = sb_dh_last[s.a * HIDDEN + j];
            lb = sb_dh_last[s.b * HIDDEN + j];
        }
        dha[j] = la;
        dhb[j] = lb;
        dca[j] = 0.0;
        dcb[j] = 0.0;
    }
    for (var i = 0u; i < params.steps; i++) {
        let t = params.steps - 1u - i;
        let real_a = sb_real(t, s.a);
        let real_b = sb_real(t, s.b);
        for (var j = 0u; j < HIDDEN; j++) {
            lstm_cell_back(t, s.a, j, real_a, s.live_a, &dha, &dca, &dza);
            lstm_cell_back(t, s.b, j, real_b, s.live_b, &dhb, &dcb, &dzb);
        }
        // dh_0 is not needed (h_0 is the constant initial state).
        if (t == 0u) { break; }
        // dh_{t-1}[k] += Σ_col dz_t[col]·U[k, col], four k at a time (the
        // last block clamps k and drops the duplicates).
        for (var k0 = 0u; k0 < HIDDEN; k0 += 4u) {
            let k1 = min(k0 + 1u, HIDDEN - 1u);
            let k2 = min(k0 + 2u, HIDDEN - 1u);
            let k3 = min(k0 + 3u, HIDDEN - 1u);
            var aa = vec4<f32>(0.0);
            var ab = vec4<f32>(0.0);
            for (var col = 0u; col < g4; col++) {
                let w = vec4<f32>(sb_u[k0 * g4 + col], sb_u[k1 * g4 + col],
                                  sb_u[k2 * g4 + col], sb_u[k3 * g4 + col]);
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
