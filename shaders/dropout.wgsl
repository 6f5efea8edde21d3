// Dropout (Keras semantics) with a counter-based mask: element i at training
// step `step` is kept when
//   xxh32([seed_hi, step, i], seed_lo) >= threshold      (threshold = rate * 2^32)
// an integer test, so this kernel and the CPU reference (src/ops/dropout.rs,
// dropout_hash) agree bit for bit. Nothing is stored: backward recomputes the
// mask from the same (seed, step).
// dropout_forward:  y = kept ? x * scale : 0 in training (training != 0),
//                   y = x otherwise (inference is the identity).
// dropout_backward: dx += kept ? dy * scale : 0 (training only).
// scale = 1 / (1 - rate), computed on the host in f64 and rounded to f32.

struct Params {
    n: u32,
    // The 64-bit seed as two words.
    seed_lo: u32,
    seed_hi: u32,
    // The training step whose mask this is.
    step: u32,
    // Dropped when the hash is below this (round(rate * 2^32)).
    threshold: u32,
    scale: f32,
    // forward: 1 = training (mask), 0 = inference (copy).
    training: u32,
    _pad0: u32,
}

const WG: u32 = 256u;

// xxHash32 primes.
const P2: u32 = 2246822519u;
const P3: u32 = 3266489917u;
const P4: u32 = 668265263u;
const P5: u32 = 374761393u;

@group(0) @binding(0) var<uniform> params: Params;

// forward bindings
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

// backward bindings: gradient to write, incoming gradient
@group(0) @binding(1) var<storage, read_write> dx: array<f32>;
@group(0) @binding(2) var<storage, read> dy: array<f32>;

fn round_word(h: u32, w: u32) -> u32 {
    let a = h + w * P3;
    return ((a << 17u) | (a >> 15u)) * P4;
}

// xxHash32 of the 12-byte message (seed_hi, step, i) with seed seed_lo.
fn keep(i: u32) -> bool {
    var h = params.seed_lo + P5 + 12u;
    h = round_word(h, params.seed_hi);
    h = round_word(h, params.step);
    h = round_word(h, i);
    h ^= h >> 15u;
    h *= P2;
    h ^= h >> 13u;
    h *= P3;
    h ^= h >> 16u;
    return h >= params.threshold;
}

fn index(wid: vec3<u32>, nwg: vec3<u32>, lid: vec3<u32>) -> u32 {
    return (wid.y * nwg.x + wid.x) * WG + lid.x;
}

@compute @workgroup_size(WG)
fn dropout_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = index(wid, nwg, lid);
    if (i >= params.n) { return; }
    if (params.training == 0u) {
        y[i] = x[i];
    } else {
        y[i] = select(0.0, x[i] * params.scale, keep(i));
    }
}

@compute @workgroup_size(WG)
fn dropout_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = index(wid, nwg, lid);
    if (i < params.n && keep(i)) {
        dx[i] += dy[i] * params.scale;
    }
}
