// Embedding lookup (gather) and its gradient, without float atomics.
// Table [V, D] row-major, tokens u32 [N] (any leading shape), output [N, D].
//
// embedding_forward:  out[n, :] = table[tok[n], :]; a token >= V reads
//                     nothing and yields a zero row (the launcher cannot see
//                     token values, so the kernel is the bounds check).
// embedding_backward: dtable[t, :] += dy[q, :] for each position q with
//                     tok[q] = t, in ascending q. `order` holds the positions
//                     sorted by token, ties in ascending position (computed on
//                     the host from the ids it uploads): the first entry of
//                     each run of equal tokens starts a group, and only that
//                     invocation writes row t, adding the group's rows in
//                     order. One writer per row and a fixed summation order,
//                     so the result is bitwise reproducible; O(N*D) work.
//                     Rows of the padding token and of tokens >= V get no
//                     update; rows of tokens that do not occur are never
//                     touched.
// The `_vec4` entries do four columns per invocation when D is a multiple of
// 4 (params.d counts vec4s then; same additions in the same order per
// column): on lavapipe a lane's load is a gather, so vec4 loads move four
// times the data per gather.

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
// backward: sorted positions per workgroup (one table column per workgroup row)
const WG_POS: u32 = 64u;

@group(0) @binding(0) var<uniform> params: Params;

// forward bindings
@group(0) @binding(1) var<storage, read> table: array<f32>;
@group(0) @binding(2) var<storage, read> tokens: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

// backward bindings: gradient to write, incoming gradient, saved tokens and
// their order
@group(0) @binding(1) var<storage, read_write> dtable: array<f32>;
@group(0) @binding(2) var<storage, read> dy: array<f32>;
@group(0) @binding(3) var<storage, read> tok: array<u32>;
@group(0) @binding(4) var<storage, read> order: array<u32>;

@group(0) @binding(1) var<storage, read> table4: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> out4: array<vec4<f32>>;

@group(0) @binding(1) var<storage, read_write> dtable4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> dy4: array<vec4<f32>>;

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

// Grid: x = ceil(N / WG_POS) workgroups of sorted positions, y = D (one
// table column each).
@compute @workgroup_size(WG_POS)
fn embedding_backward(@builtin(workgroup_id) wid: vec3<u32>,
                      @builtin(local_invocation_id) lid: vec3<u32>) {
    let k = wid.x * WG_POS + lid.x;
    let c = wid.y;
    if (k >= params.n || c >= params.d) { return; }
    let t = tok[order[k]];
    // Only the first position of a group writes its row.
    if (k > 0u && tok[order[k - 1u]] == t) { return; }
    if (t >= params.v || (params.has_pad != 0u && t == params.pad)) { return; }
    let at = t * params.d + c;
    var acc = dtable[at];
    for (var j = k; j < params.n; j++) {
        let q = order[j];
        if (tok[q] != t) { break; }
        acc += dy[q * params.d + c];
    }
    dtable[at] = acc;
}

@compute @workgroup_size(WG)
fn embedding_forward_vec4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                          @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = (wid.y * nwg.x + wid.x) * WG + lid.x;
    if (i >= params.n * params.d) { return; }
    let n = i / params.d;
    let col = i - n * params.d;
    let t = tokens[n];
    var value = vec4<f32>(0.0);
    if (t < params.v) { value = table4[t * params.d + col]; }
    out4[i] = value;
}

@compute @workgroup_size(WG_POS)
fn embedding_backward_vec4(@builtin(workgroup_id) wid: vec3<u32>,
                           @builtin(local_invocation_id) lid: vec3<u32>) {
    let k = wid.x * WG_POS + lid.x;
    let c = wid.y;
    if (k >= params.n || c >= params.d) { return; }
    let t = tok[order[k]];
    if (k > 0u && tok[order[k - 1u]] == t) { return; }
    if (t >= params.v || (params.has_pad != 0u && t == params.pad)) { return; }
    let at = t * params.d + c;
    var acc = dtable4[at];
    for (var j = k; j < params.n; j++) {
        let q = order[j];
        if (tok[q] != t) { break; }
        acc += dy4[q * params.d + c];
    }
    dtable4[at] = acc;
}
