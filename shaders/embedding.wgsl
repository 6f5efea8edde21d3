// Embedding lookup (gather) and its gradient, without float atomics.
// Table [V, D] row-major, tokens u32 [N] (any leading shape), output [N, D].
//
// embedding_forward:  out[n, :] = table[tok[n], :]; a token >= V reads
//                     nothing and yields a zero row (the launcher cannot see
//                     token values, so the kernel is the bounds check).
// embedding_backward: dtable[t, :] += dy[q, :] for each position q with
//                     tok[q] = t, in ascending q. Position p owns token
//                     t = tok[p] when it is the first position holding t, and
//                     only the owner writes row t: one writer per row and a
//                     fixed summation order, so the result is bitwise
//                     reproducible. Rows of the padding token and of tokens
//                     >= V get no update. O(N^2) token compares, O(N*D) adds;
//                     rows of tokens that do not occur are never touched.

struct Params {
    n: u32,        // positions
    v: u32,        // vocabulary rows
    d: u32,        // embedding width
    has_pad: u32,  // 1: the token `pad` gets no gradient
    pad: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

const WG: u32 = 256u;
// backward: lanes per workgroup (4 positions each) and table columns per
// workgroup
const WG_POS: u32 = 64u;
const D_CHUNK: u32 = 64u;
// the token of lanes past N (owners need a token < V, so these own nothing)
const NONE: u32 = 0xffffffffu;

@group(0) @binding(0) var<uniform> params: Params;

// forward bindings
@group(0) @binding(1) var<storage, read> table: array<f32>;
@group(0) @binding(2) var<storage, read> tokens: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

// backward bindings: gradient to write, incoming gradient, saved tokens
@group(0) @binding(1) var<storage, read_write> dtable: array<f32>;
@group(0) @binding(2) var<storage, read> dy: array<f32>;
@group(0) @binding(3) var<storage, read> tok: array<u32>;

@compute @workgroup_size(WG)
fn embedding_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = (wid.y * nwg.x + wid.x) * WG + lid.x;
    if (i >= params.n * params.d) { return; }
    let n = i / params.d;
    let col = i - n * params.d;
    let t = tokens[n];
    var value = 0.0;
    if (t < params.v) { value = table[t * params.d + col]; }
    out[i] = value;
}

// Grid: x = ceil(N / (4 * WG_POS)) workgroups of positions, y = ceil(D /
// D_CHUNK) column chunks. Each invocation holds 4 positions as a vec4,
// p = base + k * WG_POS + lid for k < 4, and one column chunk. Comparing
// each token with 4 positions at once quarters the trips of the O(N^2) scan
// (lavapipe pays per trip; on it this beat one position per lane ~2.5x).
@compute @workgroup_size(WG_POS)
fn embedding_backward(@builtin(workgroup_id) wid: vec3<u32>,
                      @builtin(local_invocation_id) lid: vec3<u32>) {
    let n = params.n;
    let p = vec4<u32>(wid.x * 4u * WG_POS + lid.x) + vec4<u32>(0u, 1u, 2u, 3u) * WG_POS;
    let c0 = wid.y * D_CHUNK;
    let c1 = min(c0 + D_CHUNK, params.d);
    var t = vec4<u32>(NONE);
    for (var k = 0u; k < 4u; k++) {
        if (p[k] < n) { t[k] = tok[p[k]]; }
    }
    var owner = p < vec4<u32>(n) & t < vec4<u32>(params.v);
    if (params.has_pad != 0u) { owner &= t != vec4<u32>(params.pad); }
    // q is the same in every lane, so tok[q] is a uniform (cheap) load; lanes
    // only differ in what they compare it with. The loop visits q in
    // ascending order, so a position's ownership is settled before q reaches it.
    for (var q = 0u; q < n; q++) {
        let tq = tok[q];
        let hit = t == vec4<u32>(tq);
        let before = vec4<u32>(q) < p;
        // An earlier position holding the same token owns it.
        owner &= !(hit & before);
        // Only the owner of tq passes (one writer per row), for each q >= it.
        if (any(hit & owner & !before)) {
            let row = tq * params.d;
            let src = q * params.d;
            for (var c = c0; c < c1; c++) {
                dtable[row + c] += dy[src + c];
            }
        }
    }
}
