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
//                               "persistent" below; for H a multiple of 4,
//                               lstm_sequence_backward4 and the _blocked
//                               pair in "persistent, vec4").

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
    // The blocked kernels run steps first..end-1 (backward: end-1 down to
    // first) for samples 0..rows-1; rows < batch is the run of the leading
    // steps every sample shares (see "shared steps" below).
    first: u32,
    end: u32,
    rows: u32,
    _pad1: u32,
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

// ---------------------------------------------------------------- persistent, vec4
//
// For H a multiple of 4 the persistent kernels move four units (or four
// columns of U) per vec4, which lavapipe loads about as fast as one float.
// Two forms:
//
// lstm_sequence_forward_blocked / lstm_sequence_backward_blocked (H <= 64):
//   register-blocked like matmul_direct. A workgroup owns 8 samples
//   (samples are independent, so workgroups never talk) and lane l owns
//   units 8l .. 8l+7 (two vec4 groups) of all 8. Forward, per step, the
//   lane computes the 8 samples x 32 gate columns of its units as a block
//   over k, then their cell updates; h_t goes to the other lanes through
//   workgroup memory, stored [slot][unit][sample] so that one vec4 load
//   gives h[k] of four samples (two slots by parity of t: one barrier per
//   step). Backward, per step, the lane turns dh, dc of its units into dz_t,
//   shares dz_t through workgroup memory, and after a barrier sums
//   dz_t·Uᵀ for its own units, so dh and dc stay private. Each lane copies
//   its 32 columns (forward) or 8 rows (backward) of U into private memory
//   once: per k, 8 private vec4 loads and 2 (forward) or 8 (backward) shared
//   vec4 loads feed 256 multiply-adds. (Measured on lavapipe at T=100, B=32,
//   H=64: forward ~4x, backward ~4x faster than the scalar pair kernels.)
// lstm_sequence_backward4 (H > 64): the pair kernel with vec4 state and U
//   rows (dz_t·Uᵀ four columns at a time): ~1.25x faster than the scalar one.
//   (A vec4 pair forward was slower than the scalar one: its 8 vec4
//   accumulators do not fit in registers.)

// H / 4, specialised per pipeline.
override H4: u32 = 1u;

// lstm_sequence_forward_blocked bindings (as lstm_sequence_forward, vec4 views)
@group(0) @binding(1) var<storage, read> sf4_xw: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> sf4_bias: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> sf4_u: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> sf4_mask: array<u32>;
@group(0) @binding(5) var<storage, read_write> sf4_gates: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read_write> sf4_c: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read_write> sf4_h: array<vec4<f32>>;
@group(0) @binding(8) var<storage, read_write> sf4_h_last: array<vec4<f32>>;

// lstm_sequence_backward4 / _blocked bindings (as lstm_sequence_backward, vec4 views)
@group(0) @binding(1) var<storage, read_write> sb4_dz: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> sb4_dh_seq: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> sb4_dh_last: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> sb4_gates: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read> sb4_c: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read> sb4_u: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read> sb4_mask: array<u32>;
// Blocked backward only: [2, B, H / 4], the gradient of h and of c after
// the shared steps, per sample (written by the run after them, summed by
// the run of them); then, written by the run of the shared steps, h_{t-1}
// [T, H / 4] and dz_t [T, H] of sample 0 for each shared step t.
@group(0) @binding(8) var<storage, read_write> sb4_carry: array<vec4<f32>>;

fn sigmoid4(v: vec4<f32>) -> vec4<f32> {
    return 1.0 / (1.0 + exp(-v));
}

fn tanh4(v: vec4<f32>) -> vec4<f32> {
    return tanh(clamp(v, vec4<f32>(-15.0), vec4<f32>(15.0)));
}

// The four gates' pre-activations of units 4*j4 .. 4*j4+3 of one sample.
struct Gates4 {
    i: vec4<f32>,
    f: vec4<f32>,
    g: vec4<f32>,
    o: vec4<f32>,
}

fn sf4_real(t: u32, n: u32) -> bool {
    return params.mask_kind == 0u || mask_real(sf4_mask[t * params.batch + n]);
}

fn sb4_real(t: u32, n: u32) -> bool {
    return params.mask_kind == 0u || mask_real(sb4_mask[t * params.batch + n]);
}

// lstm_cell_back for units 4*j4..4*j4+3.
fn lstm_cell_back4(t: u32, n: u32, j4: u32, real: bool, live: bool,
                   dh: ptr<function, array<vec4<f32>, MAX_H / 4u>>,
                   dc: ptr<function, array<vec4<f32>, MAX_H / 4u>>,
                   dz: ptr<function, array<vec4<f32>, MAX_H>>) {
    let nb = params.batch;
    let row = (t * nb + n) * H4 + j4;
    var g = (*dh)[j4];
    if (params.has_seq != 0u) { g += sb4_dh_seq[row]; }
    var d = Gates4(vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0));
    if (real) {
        let zrow = (t * nb + n) * 4u * H4;
        let ig = sb4_gates[zrow + j4];
        let fg = sb4_gates[zrow + H4 + j4];
        let gg = sb4_gates[zrow + 2u * H4 + j4];
        let og = sb4_gates[zrow + 3u * H4 + j4];
        let tc = tanh4(sb4_c[row + nb * H4]);
        let dct = (*dc)[j4] + g * og * (1.0 - tc * tc);
        d = Gates4(dct * gg * ig * (1.0 - ig),
                   dct * sb4_c[row] * fg * (1.0 - fg),
                   dct * ig * (1.0 - gg * gg),
                   g * tc * og * (1.0 - og));
        (*dc)[j4] = dct * fg;
        g = vec4<f32>(0.0);
    }
    (*dh)[j4] = g;
    (*dz)[j4] = d.i;
    (*dz)[H4 + j4] = d.f;
    (*dz)[2u * H4 + j4] = d.g;
    (*dz)[3u * H4 + j4] = d.o;
    if (live) {
        let zrow = (t * nb + n) * 4u * H4;
        sb4_dz[zrow + j4] = d.i;
        sb4_dz[zrow + H4 + j4] = d.f;
        sb4_dz[zrow + 2u * H4 + j4] = d.g;
        sb4_dz[zrow + 3u * H4 + j4] = d.o;
    }
}

// The components of v summed in a fixed order.
fn hsum(v: vec4<f32>) -> f32 {
    return (v.x + v.y) + (v.z + v.w);
}

@compute @workgroup_size(PLANES)
fn lstm_sequence_backward4(@builtin(workgroup_id) wid: vec3<u32>,
                           @builtin(local_invocation_id) lid: vec3<u32>) {
    let s = sample_pair(wid, lid);
    let row = 4u * H4; // vec4 per row of U
    var dha: array<vec4<f32>, MAX_H / 4u>;
    var dhb: array<vec4<f32>, MAX_H / 4u>;
    var dca: array<vec4<f32>, MAX_H / 4u>;
    var dcb: array<vec4<f32>, MAX_H / 4u>;
    var dza: array<vec4<f32>, MAX_H>;
    var dzb: array<vec4<f32>, MAX_H>;
    for (var j4 = 0u; j4 < H4; j4++) {
        var la = vec4<f32>(0.0);
        var lb = vec4<f32>(0.0);
        if (params.has_last != 0u) {
            la = sb4_dh_last[s.a * H4 + j4];
            lb = sb4_dh_last[s.b * H4 + j4];
        }
        dha[j4] = la;
        dhb[j4] = lb;
        dca[j4] = vec4<f32>(0.0);
        dcb[j4] = vec4<f32>(0.0);
    }
    for (var i = 0u; i < params.steps; i++) {
        let t = params.steps - 1u - i;
        let real_a = sb4_real(t, s.a);
        let real_b = sb4_real(t, s.b);
        for (var j4 = 0u; j4 < H4; j4++) {
            lstm_cell_back4(t, s.a, j4, real_a, s.live_a, &dha, &dca, &dza);
            lstm_cell_back4(t, s.b, j4, real_b, s.live_b, &dhb, &dcb, &dzb);
        }
        if (t == 0u) { break; }
        // dh_{t-1}[k] += Σ_col dz_t[col]·U[k, col] for k = 4*k4 .. 4*k4+3,
        // columns four at a time, each k's four partial sums added last.
        for (var k4 = 0u; k4 < H4; k4++) {
            let r = 4u * k4 * row;
            var a0 = vec4<f32>(0.0); var a1 = vec4<f32>(0.0);
            var a2 = vec4<f32>(0.0); var a3 = vec4<f32>(0.0);
            var b0 = vec4<f32>(0.0); var b1 = vec4<f32>(0.0);
            var b2 = vec4<f32>(0.0); var b3 = vec4<f32>(0.0);
            for (var c4 = 0u; c4 < row; c4++) {
                let za = dza[c4];
                let zb = dzb[c4];
                let u0 = sb4_u[r + c4];
                let u1 = sb4_u[r + row + c4];
                let u2 = sb4_u[r + 2u * row + c4];
                let u3 = sb4_u[r + 3u * row + c4];
                a0 = fma(za, u0, a0); b0 = fma(zb, u0, b0);
                a1 = fma(za, u1, a1); b1 = fma(zb, u1, b1);
                a2 = fma(za, u2, a2); b2 = fma(zb, u2, b2);
                a3 = fma(za, u3, a3); b3 = fma(zb, u3, b3);
            }
            dha[k4] += vec4<f32>(hsum(a0), hsum(a1), hsum(a2), hsum(a3));
            dhb[k4] += vec4<f32>(hsum(b0), hsum(b1), hsum(b2), hsum(b3));
        }
    }
}

// ---------------------------------------------------------------- blocked
//
// Shared steps: when the first S steps have the same input row in every
// sample (pre-padded texts, no mask), every sample has the same state until
// step S. Forward then runs twice: steps 0..S-1 for sample 0 alone (rows =
// 1, one workgroup), writing its state into every sample, then steps
// S..T-1 for every sample from slot S (first = S). Backward runs S..T-1
// for every sample, leaving the gradient of the state at slot S in
// sb4_carry, then 0..S-1 for sample 0 from the samples' sum of it (backward
// is linear in it), with dz of the shared steps summed in sample 0's row.
// Without shared steps the first run is empty (end = 0) and the second is
// the whole sequence.

const SB: u32 = 8u;  // samples per blocked workgroup
// Samples a blocked workgroup computes: SB, or 1 in the run of the shared
// steps (its products then skip the other seven samples' rows).
override SAMPLES: u32 = 8u;
const BH: u32 = 64u; // largest H of the blocked kernels

alias Row8 = array<vec4<f32>, 8>; // 8 vec4: one sample's 32 columns, or one column's 8 units
alias Block8 = array<Row8, 8>;    // SB samples

fn fma_row8(acc: Row8, x: f32, u: Row8) -> Row8 {
    let s = vec4<f32>(x);
    return Row8(fma(s, u[0], acc[0]), fma(s, u[1], acc[1]), fma(s, u[2], acc[2]), fma(s, u[3], acc[3]),
                fma(s, u[4], acc[4]), fma(s, u[5], acc[5]), fma(s, u[6], acc[6]), fma(s, u[7], acc[7]));
}

fn fma_row8v(acc: Row8, x: vec4<f32>, u: Row8) -> Row8 {
    return Row8(fma(x, u[0], acc[0]), fma(x, u[1], acc[1]), fma(x, u[2], acc[2]), fma(x, u[3], acc[3]),
                fma(x, u[4], acc[4]), fma(x, u[5], acc[5]), fma(x, u[6], acc[6]), fma(x, u[7], acc[7]));
}

// Moves every row up one (row 0 drops out): loops over the rows keep
// constant indices into the block (a dynamic index would push the whole
// block out of registers, as in matmul.wgsl).
fn shift_block8(acc: ptr<function, Block8>) {
    (*acc)[0] = (*acc)[1]; (*acc)[1] = (*acc)[2]; (*acc)[2] = (*acc)[3]; (*acc)[3] = (*acc)[4];
    (*acc)[4] = (*acc)[5]; (*acc)[5] = (*acc)[6]; (*acc)[6] = (*acc)[7];
}

// The unit groups (vec4 of units) of lane l, clamped into H4, and whether
// each exists (a lane past H/8 works on a clamped group and stores nothing).
struct LaneGroups {
    g0: u32,
    g1: u32,
    ok0: bool,
    ok1: bool,
}

fn lane_groups(l: u32) -> LaneGroups {
    return LaneGroups(min(2u * l, H4 - 1u), min(2u * l + 1u, H4 - 1u), 2u * l < H4, 2u * l + 1u < H4);
}

// h_{t-1} of the workgroup's samples: [slot][unit][sample / 4], vec4 over
// four samples; slot = t & 1.
var<workgroup> blk_h: array<vec4<f32>, 256>;  // 2 * BH * SB / 4
// dz_t of the workgroup's samples: [sample][4H / 4], vec4 over four columns.
var<workgroup> blk_dz: array<vec4<f32>, 512>; // SB * 4 * BH / 4

// The slot-`slot` h of units u..u+3 of sample s.
fn blk_h_get(slot: u32, u: u32, s: u32) -> vec4<f32> {
    let at = (slot * 4u * H4 + u) * 2u + s / 4u;
    let c = s % 4u;
    return vec4<f32>(blk_h[at][c], blk_h[at + 2u][c], blk_h[at + 4u][c], blk_h[at + 6u][c]);
}

fn blk_h_set(slot: u32, u: u32, s: u32, v: vec4<f32>) {
    let at = (slot * 4u * H4 + u) * 2u + s / 4u;
    let c = s % 4u;
    blk_h[at][c] = v.x;
    blk_h[at + 2u][c] = v.y;
    blk_h[at + 4u][c] = v.z;
    blk_h[at + 6u][c] = v.w;
}

// h_{t-1} at `at` and `at + 1` (samples 0..3 and 4..7 of unit k) and dz_t
// of column group c4 for the 8 samples are the same for every lane of a
// blocked workgroup. Where the device has subgroups
// (`gpu::pipeline::shader_source`), lane l reads one of them from
// workgroup memory and subgroupBroadcast hands them to the others (1 load
// per lane instead of 2, or 8), as in matmul.wgsl.
// #if subgroups
fn blk_h_pair(at: u32, lane: u32) -> array<vec4<f32>, 2> {
    let v = blk_h[at + lane % 2u];
    return array<vec4<f32>, 2>(subgroupBroadcast(v, 0u), subgroupBroadcast(v, 1u));
}

fn blk_dz_column(c4: u32, hh: u32, lane: u32) -> Row8 {
    let v = blk_dz[c4 + lane * hh];
    return Row8(subgroupBroadcast(v, 0u), subgroupBroadcast(v, 1u), subgroupBroadcast(v, 2u),
                subgroupBroadcast(v, 3u), subgroupBroadcast(v, 4u), subgroupBroadcast(v, 5u),
                subgroupBroadcast(v, 6u), subgroupBroadcast(v, 7u));
}
// #else
fn blk_h_pair(at: u32, lane: u32) -> array<vec4<f32>, 2> {
    return array<vec4<f32>, 2>(blk_h[at], blk_h[at + 1u]);
}

fn blk_dz_column(c4: u32, hh: u32, lane: u32) -> Row8 {
    return Row8(blk_dz[c4], blk_dz[c4 + hh], blk_dz[c4 + 2u * hh], blk_dz[c4 + 3u * hh],
                blk_dz[c4 + 4u * hh], blk_dz[c4 + 5u * hh], blk_dz[c4 + 6u * hh], blk_dz[c4 + 7u * hh]);
}
// #endif

// One unit group of sample s (batch index n) at step t, forward: gates from
// x·W + zr + b, c and h updated (masked steps carry them), h_t into slot
// `nxt` of blk_h and, when `live`, the saved values into storage.
fn blocked_cell(t: u32, n: u32, s: u32, grp: u32, ok: bool, live: bool, real: bool, zr: Gates4,
                cur: u32, nxt: u32, c: ptr<function, vec4<f32>>) {
    let zrow = (t * params.batch + n) * 4u * H4;
    let ig = sigmoid4(sf4_xw[zrow + grp] + zr.i + sf4_bias[grp]);
    let fg = sigmoid4(sf4_xw[zrow + H4 + grp] + zr.f + sf4_bias[H4 + grp]);
    let gg = tanh4(sf4_xw[zrow + 2u * H4 + grp] + zr.g + sf4_bias[2u * H4 + grp]);
    let og = sigmoid4(sf4_xw[zrow + 3u * H4 + grp] + zr.o + sf4_bias[3u * H4 + grp]);
    var cv = *c;
    var hv = blk_h_get(cur, 4u * grp, s);
    if (real) {
        cv = fg * cv + ig * gg;
        hv = og * tanh4(cv);
    }
    *c = cv;
    if (ok) {
        blk_h_set(nxt, 4u * grp, s, hv);
        if (live) {
            sf4_gates[zrow + grp] = ig;
            sf4_gates[zrow + H4 + grp] = fg;
            sf4_gates[zrow + 2u * H4 + grp] = gg;
            sf4_gates[zrow + 3u * H4 + grp] = og;
            let next = ((t + 1u) * params.batch + n) * H4 + grp;
            sf4_c[next] = cv;
            sf4_h[next] = hv;
            if (t + 1u == params.steps) { sf4_h_last[n * H4 + grp] = hv; }
            // The run of the shared steps (one sample) writes its state
            // into every sample: the run after it starts from it, backward
            // reads c_{t-1}, and dU reads every row of h_all.
            if (params.rows < params.batch) {
                for (var m = 1u; m < params.batch; m++) {
                    sf4_c[next + m * H4] = cv;
                    sf4_h[next + m * H4] = hv;
                }
            }
        }
    }
}

@compute @workgroup_size(PLANES)
fn lstm_sequence_forward_blocked(@builtin(workgroup_id) wid: vec3<u32>,
                                 @builtin(local_invocation_id) lid: vec3<u32>) {
    let nb = params.batch;
    let hh = 4u * H4; // H, also the vec4 count of a row of U
    let lg = lane_groups(lid.x);
    // This lane's columns of U, k by k: gates i, f, g, o of group 0, then of group 1.
    let uc = array<u32, 8>(lg.g0, H4 + lg.g0, 2u * H4 + lg.g0, 3u * H4 + lg.g0,
                           lg.g1, H4 + lg.g1, 2u * H4 + lg.g1, 3u * H4 + lg.g1);
    var u: array<Row8, 64>; // BH
    for (var k = 0u; k < hh; k++) {
        let r = k * hh;
        u[k] = Row8(sf4_u[r + uc[0]], sf4_u[r + uc[1]], sf4_u[r + uc[2]], sf4_u[r + uc[3]],
                    sf4_u[r + uc[4]], sf4_u[r + uc[5]], sf4_u[r + uc[6]], sf4_u[r + uc[7]]);
    }
    let n0 = wid.x * SB;
    // c of this lane's units: [sample][group]. The initial state is slot
    // `first` of h_all and c_all (slot 0: the zero state).
    var c: array<vec4<f32>, 16>; // 2 * SB
    let slot0 = params.first & 1u;
    for (var s = 0u; s < SB; s++) {
        let n = min(n0 + s, params.rows - 1u);
        let at = (params.first * nb + n) * H4;
        c[2u * s] = sf4_c[at + lg.g0];
        c[2u * s + 1u] = sf4_c[at + lg.g1];
        if (lg.ok0) { blk_h_set(slot0, 4u * lg.g0, s, sf4_h[at + lg.g0]); }
        if (lg.ok1) { blk_h_set(slot0, 4u * lg.g1, s, sf4_h[at + lg.g1]); }
    }
    workgroupBarrier();
    for (var t = params.first; t < params.end; t++) {
        let cur = t & 1u;
        let nxt = 1u - cur;
        // acc[s] = h_{t-1}[s]·U[:, this lane's columns]
        var acc: Block8;
        for (var k = 0u; k < hh; k++) {
            let uk = u[k];
            let hp = blk_h_pair((cur * hh + k) * 2u, lid.x);
            let ha = hp[0]; // samples 0..3
            let hb = hp[1]; // samples 4..7
            acc[0] = fma_row8(acc[0], ha.x, uk);
            if (SAMPLES > 1u) {
                acc[1] = fma_row8(acc[1], ha.y, uk);
                acc[2] = fma_row8(acc[2], ha.z, uk);
                acc[3] = fma_row8(acc[3], ha.w, uk);
                acc[4] = fma_row8(acc[4], hb.x, uk);
                acc[5] = fma_row8(acc[5], hb.y, uk);
                acc[6] = fma_row8(acc[6], hb.z, uk);
                acc[7] = fma_row8(acc[7], hb.w, uk);
            }
        }
        for (var s = 0u; s < SAMPLES; s++) {
            let n = min(n0 + s, params.rows - 1u);
            let live = n0 + s < params.rows;
            let real = sf4_real(t, n);
            let r = acc[0];
            var c0 = c[2u * s];
            var c1 = c[2u * s + 1u];
            blocked_cell(t, n, s, lg.g0, lg.ok0, live, real, Gates4(r[0], r[1], r[2], r[3]), cur, nxt, &c0);
            blocked_cell(t, n, s, lg.g1, lg.ok1, live, real, Gates4(r[4], r[5], r[6], r[7]), cur, nxt, &c1);
            c[2u * s] = c0;
            c[2u * s + 1u] = c1;
            shift_block8(&acc);
        }
        // Slot nxt is complete; slot cur is free for step t+1's h.
        workgroupBarrier();
    }
}

// One unit group of sample s (batch index n) at step t, backward: dz_t from
// the total dh (dh plus the incoming dh_seq) and dc, into blk_dz and (when
// `live`) storage; leaves in dh and dc what flows to step t-1 besides
// dz_t·Uᵀ.
fn blocked_cell_back(t: u32, n: u32, s: u32, grp: u32, ok: bool, live: bool, real: bool,
                     dh: ptr<function, vec4<f32>>, dc: ptr<function, vec4<f32>>) {
    let nb = params.batch;
    let row = (t * nb + n) * H4 + grp;
    let zrow = (t * nb + n) * 4u * H4;
    var g = *dh;
    if (params.has_seq != 0u) {
        if (params.rows < nb) {
            // A shared h_t: its gradient is the sum over the samples.
            for (var m = 0u; m < nb; m++) { g += sb4_dh_seq[row + m * H4]; }
        } else {
            g += sb4_dh_seq[row];
        }
    }
    var d = Gates4(vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0));
    if (real) {
        let ig = sb4_gates[zrow + grp];
        let fg = sb4_gates[zrow + H4 + grp];
        let gg = sb4_gates[zrow + 2u * H4 + grp];
        let og = sb4_gates[zrow + 3u * H4 + grp];
        let tc = tanh4(sb4_c[row + nb * H4]);
        let dct = *dc + g * og * (1.0 - tc * tc);
        d = Gates4(dct * gg * ig * (1.0 - ig),
                   dct * sb4_c[row] * fg * (1.0 - fg),
                   dct * ig * (1.0 - gg * gg),
                   g * tc * og * (1.0 - og));
        *dc = dct * fg;
        g = vec4<f32>(0.0);
    }
    // A masked step passes dh (and dc, left as it is) straight through.
    *dh = g;
    if (ok) {
        let at = s * 4u * H4 + grp;
        blk_dz[at] = d.i;
        blk_dz[at + H4] = d.f;
        blk_dz[at + 2u * H4] = d.g;
        blk_dz[at + 3u * H4] = d.o;
        if (live) {
            sb4_dz[zrow + grp] = d.i;
            sb4_dz[zrow + H4 + grp] = d.f;
            sb4_dz[zrow + 2u * H4 + grp] = d.g;
            sb4_dz[zrow + 3u * H4 + grp] = d.o;
            // A shared step's dz is the samples' sum, in sample 0's row;
            // the other rows are 0 for the weight gradients that sum all.
            if (params.rows < nb) {
                for (var m = 1u; m < nb; m++) {
                    let at = zrow + m * 4u * H4 + grp;
                    sb4_dz[at] = vec4<f32>(0.0);
                    sb4_dz[at + H4] = vec4<f32>(0.0);
                    sb4_dz[at + 2u * H4] = vec4<f32>(0.0);
                    sb4_dz[at + 3u * H4] = vec4<f32>(0.0);
                }
                // And compact rows of dz_t and h_{t-1} (= o_{t-1} * tanh(c)
                // as forward computed it; 0 before the first step), so
                // that dU of the shared steps is one product over T rows
                // instead of T*B (without a mask; a masked step carries h).
                let hc = 2u * nb * H4 + t * H4 + grp;
                let zc = 2u * nb * H4 + params.steps * H4 + t * 4u * H4 + grp;
                var hp = vec4<f32>(0.0);
                if (t > 0u) {
                    hp = sb4_gates[zrow - nb * 4u * H4 + 3u * H4 + grp] * tanh4(sb4_c[row]);
                }
                sb4_carry[hc] = hp;
                sb4_carry[zc] = d.i;
                sb4_carry[zc + H4] = d.f;
                sb4_carry[zc + 2u * H4] = d.g;
                sb4_carry[zc + 3u * H4] = d.o;
            }
        }
    }
}

@compute @workgroup_size(PLANES)
fn lstm_sequence_backward_blocked(@builtin(workgroup_id) wid: vec3<u32>,
                                  @builtin(local_invocation_id) lid: vec3<u32>) {
    let nb = params.batch;
    let hh = 4u * H4; // H, also the vec4 count of a row of U and of dz
    let lg = lane_groups(lid.x);
    // This lane's rows of U (its 8 units k), four columns at a time.
    let k0 = 4u * lg.g0;
    let k1 = 4u * lg.g1;
    let ur = array<u32, 8>(k0 * hh, (k0 + 1u) * hh, (k0 + 2u) * hh, (k0 + 3u) * hh,
                           k1 * hh, (k1 + 1u) * hh, (k1 + 2u) * hh, (k1 + 3u) * hh);
    var u: array<Row8, 64>; // BH
    for (var c4 = 0u; c4 < hh; c4++) {
        u[c4] = Row8(sb4_u[ur[0] + c4], sb4_u[ur[1] + c4], sb4_u[ur[2] + c4], sb4_u[ur[3] + c4],
                     sb4_u[ur[4] + c4], sb4_u[ur[5] + c4], sb4_u[ur[6] + c4], sb4_u[ur[7] + c4]);
    }
    let n0 = wid.x * SB;
    // What flows into step t besides dz_{t+1}·Uᵀ (added below), and dc, of
    // this lane's units: [sample][group].
    var dh: array<vec4<f32>, 16>; // 2 * SB
    var dc: array<vec4<f32>, 16>;
    let shared_run = params.rows < nb;
    for (var s = 0u; s < SB; s++) {
        let n = min(n0 + s, params.rows - 1u);
        var l0 = vec4<f32>(0.0);
        var l1 = vec4<f32>(0.0);
        var c0 = vec4<f32>(0.0);
        var c1 = vec4<f32>(0.0);
        if (shared_run) {
            // The gradient of the shared state: the sum over the samples
            // of what the run after the shared steps left.
            for (var m = 0u; m < nb; m++) {
                l0 += sb4_carry[m * H4 + lg.g0];
                l1 += sb4_carry[m * H4 + lg.g1];
                c0 += sb4_carry[(nb + m) * H4 + lg.g0];
                c1 += sb4_carry[(nb + m) * H4 + lg.g1];
            }
        } else if (params.has_last != 0u) {
            l0 = sb4_dh_last[n * H4 + lg.g0];
            l1 = sb4_dh_last[n * H4 + lg.g1];
        }
        dh[2u * s] = l0;
        dh[2u * s + 1u] = l1;
        dc[2u * s] = c0;
        dc[2u * s + 1u] = c1;
    }
    for (var i = 0u; i < params.end - params.first; i++) {
        let t = params.end - 1u - i;
        for (var s = 0u; s < SAMPLES; s++) {
            let n = min(n0 + s, params.rows - 1u);
            let live = n0 + s < params.rows;
            let real = sb4_real(t, n);
            var h0 = dh[2u * s];
            var h1 = dh[2u * s + 1u];
            var c0 = dc[2u * s];
            var c1 = dc[2u * s + 1u];
            blocked_cell_back(t, n, s, lg.g0, lg.ok0, live, real, &h0, &c0);
            blocked_cell_back(t, n, s, lg.g1, lg.ok1, live, real, &h1, &c1);
            dh[2u * s] = h0;
            dh[2u * s + 1u] = h1;
            dc[2u * s] = c0;
            dc[2u * s + 1u] = c1;
        }
        // dh_0 is not needed (h_0 is the constant initial state).
        if (t == 0u) { break; }
        // blk_dz holds dz_t of every unit.
        workgroupBarrier();
        // acc[s][k] = four partial sums of Σ_col dz_t[s][col]·U[k, col] for
        // this lane's 8 units k; each k's four are added last, in a fixed order.
        var acc: Block8;
        for (var c4 = 0u; c4 < hh; c4++) {
            let uc = u[c4];
            let d = blk_dz_column(c4, hh, lid.x);
            acc[0] = fma_row8v(acc[0], d[0], uc);
            if (SAMPLES > 1u) {
                acc[1] = fma_row8v(acc[1], d[1], uc);
                acc[2] = fma_row8v(acc[2], d[2], uc);
                acc[3] = fma_row8v(acc[3], d[3], uc);
                acc[4] = fma_row8v(acc[4], d[4], uc);
                acc[5] = fma_row8v(acc[5], d[5], uc);
                acc[6] = fma_row8v(acc[6], d[6], uc);
                acc[7] = fma_row8v(acc[7], d[7], uc);
            }
        }
        for (var s = 0u; s < SAMPLES; s++) {
            let r = acc[0];
            dh[2u * s] += vec4<f32>(hsum(r[0]), hsum(r[1]), hsum(r[2]), hsum(r[3]));
            dh[2u * s + 1u] += vec4<f32>(hsum(r[4]), hsum(r[5]), hsum(r[6]), hsum(r[7]));
            shift_block8(&acc);
        }
        // Every lane has read blk_dz before step t-1 rewrites it.
        workgroupBarrier();
    }
    // After shared steps: leave the gradient of the state they end in.
    if (params.first > 0u && !shared_run) {
        for (var s = 0u; s < SB; s++) {
            let n = n0 + s;
            if (n < nb) {
                if (lg.ok0) {
                    sb4_carry[n * H4 + lg.g0] = dh[2u * s];
                    sb4_carry[(nb + n) * H4 + lg.g0] = dc[2u * s];
                }
                if (lg.ok1) {
                    sb4_carry[n * H4 + lg.g1] = dh[2u * s + 1u];
                    sb4_carry[(nb + n) * H4 + lg.g1] = dc[2u * s + 1u];
                }
            }
        }
    }
}
