// Concatenation along the last (feature) axis and its backward (split).
// Rows are all leading axes flattened: x [R, F] is the column block
// [offset, offset + F) of out [R, F_total]. One dispatch per input.
//
// concat_forward:  out[r, offset + j] = x[r, j]
// concat_backward: dx[r, j] += dy[r, offset + j]
// The `_vec4` entries move four columns per invocation when F, F_total and
// the offset are multiples of 4 (params then count vec4s): on lavapipe a
// lane's load is a gather, so vec4 loads move four times the data per gather.

struct Params {
    rows: u32,
    f: u32,       // width of this input
    total: u32,   // width of the concatenated tensor
    offset: u32,  // first column of this input's block
}

const WG: u32 = 256u;

@group(0) @binding(0) var<uniform> params: Params;

// forward bindings
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

// backward bindings: gradient to write, incoming gradient
@group(0) @binding(1) var<storage, read_write> dx: array<f32>;
@group(0) @binding(2) var<storage, read> dy: array<f32>;

@group(0) @binding(1) var<storage, read> x4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> out4: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read_write> dx4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> dy4: array<vec4<f32>>;

// One invocation per element of the input block, in the input's order, so
// consecutive lanes touch consecutive addresses of both tensors.
fn block_index(i: u32) -> u32 {
    let r = i / params.f;
    return r * params.total + params.offset + (i - r * params.f);
}

@compute @workgroup_size(WG)
fn concat_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = (wid.y * nwg.x + wid.x) * WG + lid.x;
    if (i >= params.rows * params.f) { return; }
    out[block_index(i)] = x[i];
}

@compute @workgroup_size(WG)
fn concat_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = (wid.y * nwg.x + wid.x) * WG + lid.x;
    if (i >= params.rows * params.f) { return; }
    dx[i] += dy[block_index(i)];
}

@compute @workgroup_size(WG)
fn concat_forward_vec4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                       @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = (wid.y * nwg.x + wid.x) * WG + lid.x;
    if (i >= params.rows * params.f) { return; }
    out4[block_index(i)] = x4[i];
}

@compute @workgroup_size(WG)
fn concat_backward_vec4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                        @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = (wid.y * nwg.x + wid.x) * WG + lid.x;
    if (i >= params.rows * params.f) { return; }
    dx4[i] += dy4[block_index(i)];
}
