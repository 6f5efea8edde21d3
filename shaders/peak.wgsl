// Adapter peak probes for the benches: how fast this adapter can do FMAs
// from registers, and how fast it can stream memory, so kernel figures can
// be stated as a fraction of what the adapter itself reaches.
//
// fma_peak     : each invocation runs CHAINS independent vec4 FMA chains
//                x = x * mul + add for `iterations` rounds, then writes their
//                sum (so nothing is optimised away). mul and add come from the
//                uniform, so the compiler cannot fold the loop.
// copy_bandwidth: dst[i] = src[i] over vec4 elements.

struct Params {
    // fma_peak: rounds of the loop (each round is UNROLL FMAs per chain);
    // copy_bandwidth: number of vec4 elements.
    n: u32,
    _pad: u32,
    mul: f32,
    add: f32,
}

const WG: u32 = 64u;
// Independent chains per invocation: enough to cover FMA latency on a GPU
// lane and on a CPU SIMD unit (lavapipe keeps one vec4 per 4 registers).
const CHAINS: u32 = 4u;
const UNROLL: u32 = 8u;

@group(0) @binding(0) var<uniform> params: Params;

@group(0) @binding(1) var<storage, read_write> out: array<f32>;

@group(0) @binding(1) var<storage, read_write> dst: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> src: array<vec4<f32>>;

fn index(wid: vec3<u32>, nwg: vec3<u32>, lid: vec3<u32>) -> u32 {
    return (wid.y * nwg.x + wid.x) * WG + lid.x;
}

@compute @workgroup_size(WG)
fn fma_peak(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = index(wid, nwg, lid);
    // Distinct starting values per invocation and chain.
    let s = f32(i % 16u) * 0.0625;
    var x0 = vec4<f32>(s, s + 0.1, s + 0.2, s + 0.3);
    var x1 = x0 + vec4<f32>(0.4);
    var x2 = x0 + vec4<f32>(0.8);
    var x3 = x0 + vec4<f32>(1.2);
    let m = vec4<f32>(params.mul);
    let a = vec4<f32>(params.add);
    for (var r = 0u; r < params.n; r++) {
        // UNROLL rounds of CHAINS independent FMAs.
        x0 = fma(x0, m, a); x1 = fma(x1, m, a); x2 = fma(x2, m, a); x3 = fma(x3, m, a);
        x0 = fma(x0, m, a); x1 = fma(x1, m, a); x2 = fma(x2, m, a); x3 = fma(x3, m, a);
        x0 = fma(x0, m, a); x1 = fma(x1, m, a); x2 = fma(x2, m, a); x3 = fma(x3, m, a);
        x0 = fma(x0, m, a); x1 = fma(x1, m, a); x2 = fma(x2, m, a); x3 = fma(x3, m, a);
        x0 = fma(x0, m, a); x1 = fma(x1, m, a); x2 = fma(x2, m, a); x3 = fma(x3, m, a);
        x0 = fma(x0, m, a); x1 = fma(x1, m, a); x2 = fma(x2, m, a); x3 = fma(x3, m, a);
        x0 = fma(x0, m, a); x1 = fma(x1, m, a); x2 = fma(x2, m, a); x3 = fma(x3, m, a);
        x0 = fma(x0, m, a); x1 = fma(x1, m, a); x2 = fma(x2, m, a); x3 = fma(x3, m, a);
    }
    let v = x0 + x1 + x2 + x3;
    out[i] = v.x + v.y + v.z + v.w;
}

@compute @workgroup_size(WG)
fn copy_bandwidth(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = index(wid, nwg, lid);
    if (i < params.n) { dst[i] = src[i]; }
}
