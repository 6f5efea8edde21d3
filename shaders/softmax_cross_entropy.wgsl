// Row softmax, softmax fused with cross-entropy, and the fused backward.
// Logits [B, C] row-major; labels u32 [B] are class indices (the one-hot is
// implicit).
//
// softmax_forward:               probs = softmax(logits) per row.
// softmax_cross_entropy_forward: probs as above and loss[r] = -log p[label],
//                                computed as logsumexp - logit[label] (never
//                                the log of a rounded probability). A label
//                                >= C is not read through: its loss is
//                                params.bad_label_loss (NaN), which stops a run.
// softmax_cross_entropy_backward: dlogits += (probs - onehot) / B, the
//                                gradient of the batch-mean loss.
// weighted_softmax_cross_entropy_forward / _backward: the same with
//                                per-class weights w (Keras class_weight):
//                                loss[r] = w[label] * (-log p[label]) and
//                                dlogits += w[label] * (probs - onehot) / B.
//                                The batch mean stays a mean over B (not over
//                                the sum of weights). A label >= C reads no
//                                weight: NaN loss, backward row probs / B.
//                                Separate entry points, so the unweighted
//                                kernels above are untouched.
//
// Forward: one workgroup per row, lanes stride over the classes, max and
// sum are fixed-shape tree reductions in workgroup memory (deterministic).
// Both subtract the row max before exp, so large logits stay finite.

struct Params {
    b: u32,              // rows (batch)
    c: u32,              // classes
    bad_label_loss: f32, // loss written for a label >= C
    _pad0: u32,
}

const WG: u32 = 64u;
const LOWEST: f32 = -3.40282347e38;

@group(0) @binding(0) var<uniform> params: Params;

// forward bindings (both forward kernels)
@group(0) @binding(1) var<storage, read> logits: array<f32>;
// softmax_forward
@group(0) @binding(2) var<storage, read_write> softmax_probs: array<f32>;
// softmax_cross_entropy_forward
@group(0) @binding(2) var<storage, read> labels: array<u32>;
@group(0) @binding(3) var<storage, read_write> probs: array<f32>;
@group(0) @binding(4) var<storage, read_write> loss: array<f32>;
// weighted_softmax_cross_entropy_forward: the bindings above, then the weights
@group(0) @binding(5) var<storage, read> class_weights: array<f32>;

// backward bindings: gradient to write, saved probs, labels
@group(0) @binding(1) var<storage, read_write> dlogits: array<f32>;
@group(0) @binding(2) var<storage, read> saved_probs: array<f32>;
@group(0) @binding(3) var<storage, read> saved_labels: array<u32>;
// weighted_softmax_cross_entropy_backward: the bindings above, then the weights
@group(0) @binding(4) var<storage, read> saved_weights: array<f32>;

var<workgroup> red: array<f32, WG>;

// (row max, sum of exp(logit - max)) of the row starting at `base`.
// Called by every lane of the workgroup (it contains barriers).
fn row_stats(base: u32, lid: u32) -> vec2<f32> {
    var m = LOWEST;
    for (var c = lid; c < params.c; c += WG) { m = max(m, logits[base + c]); }
    red[lid] = m;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) { red[lid] = max(red[lid], red[lid + s]); }
        workgroupBarrier();
    }
    let row_max = red[0];
    workgroupBarrier();  // everyone has read red[0] before it is reused
    var sum = 0.0;
    for (var c = lid; c < params.c; c += WG) { sum += exp(logits[base + c] - row_max); }
    red[lid] = sum;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) { red[lid] += red[lid + s]; }
        workgroupBarrier();
    }
    return vec2<f32>(row_max, red[0]);
}

// The grid may be folded into 2-D for many rows: one workgroup per row.
fn row_of(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.y * nwg.x + wid.x;
}

@compute @workgroup_size(WG)
fn softmax_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_id) lid3: vec3<u32>) {
    let row = row_of(wid, nwg);
    if (row >= params.b) { return; }  // uniform across the workgroup
    let lid = lid3.x;
    let base = row * params.c;
    let stats = row_stats(base, lid);
    for (var c = lid; c < params.c; c += WG) {
        softmax_probs[base + c] = exp(logits[base + c] - stats.x) / stats.y;
    }
}

@compute @workgroup_size(WG)
fn softmax_cross_entropy_forward(@builtin(workgroup_id) wid: vec3<u32>,
                                 @builtin(num_workgroups) nwg: vec3<u32>,
                                 @builtin(local_invocation_id) lid3: vec3<u32>) {
    let row = row_of(wid, nwg);
    if (row >= params.b) { return; }
    let lid = lid3.x;
    let base = row * params.c;
    let stats = row_stats(base, lid);
    for (var c = lid; c < params.c; c += WG) {
        probs[base + c] = exp(logits[base + c] - stats.x) / stats.y;
    }
    if (lid == 0u) {
        let label = labels[row];
        var l = params.bad_label_loss;
        // logsumexp - logit = log(sum) - (logit - max); logit - max <= 0.
        if (label < params.c) { l = log(stats.y) - (logits[base + label] - stats.x); }
        loss[row] = l;
    }
}

@compute @workgroup_size(256)
fn softmax_cross_entropy_backward(@builtin(workgroup_id) wid: vec3<u32>,
                                  @builtin(num_workgroups) nwg: vec3<u32>,
                                  @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = (wid.y * nwg.x + wid.x) * 256u + lid.x;
    if (i >= params.b * params.c) { return; }
    let r = i / params.c;
    // A label >= C matches no class: its row gets probs / B.
    let onehot = select(0.0, 1.0, saved_labels[r] == i - r * params.c);
    dlogits[i] += (saved_probs[i] - onehot) / f32(params.b);
}

@compute @workgroup_size(WG)
fn weighted_softmax_cross_entropy_forward(@builtin(workgroup_id) wid: vec3<u32>,
                                          @builtin(num_workgroups) nwg: vec3<u32>,
                                          @builtin(local_invocation_id) lid3: vec3<u32>) {
    let row = row_of(wid, nwg);
    if (row >= params.b) { return; }
    let lid = lid3.x;
    let base = row * params.c;
    let stats = row_stats(base, lid);
    for (var c = lid; c < params.c; c += WG) {
        probs[base + c] = exp(logits[base + c] - stats.x) / stats.y;
    }
    if (lid == 0u) {
        let label = labels[row];
        var l = params.bad_label_loss;
        if (label < params.c) {
            l = class_weights[label] * (log(stats.y) - (logits[base + label] - stats.x));
        }
        loss[row] = l;
    }
}

@compute @workgroup_size(256)
fn weighted_softmax_cross_entropy_backward(@builtin(workgroup_id) wid: vec3<u32>,
                                           @builtin(num_workgroups) nwg: vec3<u32>,
                                           @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = (wid.y * nwg.x + wid.x) * 256u + lid.x;
    if (i >= params.b * params.c) { return; }
    let r = i / params.c;
    let label = saved_labels[r];
    let onehot = select(0.0, 1.0, label == i - r * params.c);
    // A label >= C reads no weight (the index is clamped, the value unused).
    let w = select(1.0, saved_weights[min(label, params.c - 1u)], label < params.c);
    dlogits[i] += w * (saved_probs[i] - onehot) / f32(params.b);
}
