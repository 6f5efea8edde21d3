// 2-D max and average pooling, NHWC, Valid padding (Keras MaxPooling2D /
// AveragePooling2D): x [N,H,W,C] -> y [N,OH,OW,C], OH = (H - pool_h) / stride_h + 1
// (floor; trailing rows no window covers are ignored), window (oh, ow)
// covering rows oh*stride_h .. oh*stride_h + pool_h - 1 (likewise columns).
//
// maxpool_forward  : y = max over the window; argmax = flat NHWC index into x
//                    of the first maximum in scan order (kh outer, kw inner)
// maxpool_backward : dx[i] += sum of dy over the windows whose argmax is i
// maxpool_backward_disjoint : the same when no two windows overlap
//                    (stride >= pool, e.g. Keras' default stride = pool):
//                    one invocation per window adds dy into dx[argmax]. A
//                    dx element lies in at most one window, so it has at
//                    most one writer: deterministic without atomics, and a
//                    quarter of the invocations at pool 2x2.
// maxpool_forward_vec4, maxpool_backward_disjoint_vec4 : the same for four
//                    channels per invocation when C is a multiple of 4 (on
//                    lavapipe a lane's load is a gather, so vec4 loads move
//                    four times the data per gather); argmax stays the flat
//                    scalar index.
// maxpool_relu_backward_disjoint(_vec4) : the disjoint backward of a pool
//                    over a ReLU's output, with the ReLU's backward in it:
//                    dx[argmax] += dy where the pooled maximum y > 0 (the
//                    ReLU's output there: > 0 exactly where its input is),
//                    so dx is the gradient of the ReLU's input (the graph
//                    executor's fusion; the ReLU records no backward).
// avgpool_forward  : y = mean over the window
// avgpool_backward : dx[i] += sum of dy / (pool_h*pool_w) over the windows containing i
//
// One invocation per output element (forward) or per dx element (backward,
// gather: no atomics; overlapping windows, stride < pool, are summed in a
// fixed order). An input row ih lies in the windows oh = ih/stride_h - a for
// a = 0 .. win_h-1 (win_h = ceil(pool_h/stride_h)) that exist and reach it.
// Loops have uniform trip counts, carry their indices instead of dividing,
// and mask invalid windows with `select`.

struct Params {
    batch: u32,
    in_h: u32,
    in_w: u32,
    channels: u32,
    out_h: u32,
    out_w: u32,
    pool_h: u32,
    pool_w: u32,
    stride_h: u32,
    stride_w: u32,
    // ceil(pool / stride): the most windows one input row (column) lies in.
    win_h: u32,
    win_w: u32,
}

const WG: u32 = 64u;

@group(0) @binding(0) var<uniform> params: Params;

// forward bindings
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<storage, read_write> argmax: array<u32>;

// backward bindings: gradient to write, incoming gradient, saved value
@group(0) @binding(1) var<storage, read_write> dx: array<f32>;
@group(0) @binding(2) var<storage, read> dy: array<f32>;
@group(0) @binding(3) var<storage, read> argmax_saved: array<u32>;

// vec4 forward bindings
@group(0) @binding(1) var<storage, read> x4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> y4: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> argmax4: array<vec4<u32>>;

// vec4 disjoint backward bindings (dx stays scalar: the four channels'
// maxima may sit at different window positions)
@group(0) @binding(2) var<storage, read> dy4: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> argmax_saved4: array<vec4<u32>>;

// the pool's saved output, for the ReLU-fused backward
@group(0) @binding(4) var<storage, read> y_saved: array<f32>;
@group(0) @binding(4) var<storage, read> y_saved4: array<vec4<f32>>;

fn index(wid: vec3<u32>, nwg: vec3<u32>, lid: vec3<u32>) -> u32 {
    return (wid.y * nwg.x + wid.x) * WG + lid.x;
}

// Flat index of the top-left element of output element i's window.
fn window_origin(i: u32) -> u32 {
    return window_origin_in(i, params.channels);
}

// The same with `channels` elements per pixel (C, or C / 4 for vec4 groups).
fn window_origin_in(i: u32, channels: u32) -> u32 {
    let p = params;
    let c = i % channels;
    let t = i / channels;
    let ow = t % p.out_w;
    let t2 = t / p.out_w;
    let oh = t2 % p.out_h;
    let n = t2 / p.out_h;
    return ((n * p.in_h + oh * p.stride_h) * p.in_w + ow * p.stride_w) * channels + c;
}

@compute @workgroup_size(WG)
fn maxpool_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_id) lid: vec3<u32>) {
    let p = params;
    let i = index(wid, nwg, lid);
    if (i >= p.batch * p.out_h * p.out_w * p.channels) { return; }
    let origin = window_origin(i);
    var best = x[origin];
    var best_at = origin;
    var kh = 0u;
    var kw = 0u;
    for (var k = 1u; k < p.pool_h * p.pool_w; k++) {
        kw += 1u;
        if (kw == p.pool_w) { kw = 0u; kh += 1u; }
        let at = origin + (kh * p.in_w + kw) * p.channels;
        let v = x[at];
        // Strictly greater: ties keep the first maximum in scan order.
        let better = v > best;
        best = select(best, v, better);
        best_at = select(best_at, at, better);
    }
    y[i] = best;
    argmax[i] = best_at;
}

@compute @workgroup_size(WG)
fn maxpool_forward_vec4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                        @builtin(local_invocation_id) lid: vec3<u32>) {
    let p = params;
    let c4 = p.channels / 4u;
    let i = index(wid, nwg, lid);
    if (i >= p.batch * p.out_h * p.out_w * c4) { return; }
    let origin = window_origin_in(i, c4);
    var best = x4[origin];
    var best_at = vec4<u32>(4u * origin) + vec4<u32>(0u, 1u, 2u, 3u);
    var kh = 0u;
    var kw = 0u;
    for (var k = 1u; k < p.pool_h * p.pool_w; k++) {
        kw += 1u;
        if (kw == p.pool_w) { kw = 0u; kh += 1u; }
        let at = origin + (kh * p.in_w + kw) * c4;
        let v = x4[at];
        // Strictly greater: ties keep the first maximum in scan order.
        let better = v > best;
        best = select(best, v, better);
        best_at = select(best_at, vec4<u32>(4u * at) + vec4<u32>(0u, 1u, 2u, 3u), better);
    }
    y4[i] = best;
    argmax4[i] = best_at;
}

@compute @workgroup_size(WG)
fn avgpool_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_id) lid: vec3<u32>) {
    let p = params;
    let i = index(wid, nwg, lid);
    if (i >= p.batch * p.out_h * p.out_w * p.channels) { return; }
    let origin = window_origin(i);
    var sum = 0.0;
    var kh = 0u;
    var kw = 0u;
    for (var k = 0u; k < p.pool_h * p.pool_w; k++) {
        sum += x[origin + (kh * p.in_w + kw) * p.channels];
        kw += 1u;
        if (kw == p.pool_w) { kw = 0u; kh += 1u; }
    }
    y[i] = sum / f32(p.pool_h * p.pool_w);
}

// The windows containing input element i: loops over (a, b) in
// [0, win_h) x [0, win_w) visit windows (qh - a, qw - b); `valid` says
// whether that window exists and covers i.
struct InputElement {
    n: u32,
    c: u32,
    ih: u32,
    iw: u32,
    qh: u32,
    qw: u32,
}

fn input_element(i: u32) -> InputElement {
    let p = params;
    let c = i % p.channels;
    let t = i / p.channels;
    let iw = t % p.in_w;
    let t2 = t / p.in_w;
    let ih = t2 % p.in_h;
    return InputElement(t2 / p.in_h, c, ih, iw, ih / p.stride_h, iw / p.stride_w);
}

// Flat index into y/dy of window (qh - a, qw - b) of e, or 0 with valid = false.
struct Window {
    at: u32,
    valid: bool,
}

fn window(e: InputElement, a: u32, b: u32) -> Window {
    let p = params;
    let oh = e.qh - a; // wraps when a > qh, and then fails the checks below
    let ow = e.qw - b;
    let valid = a <= e.qh && b <= e.qw && oh < p.out_h && ow < p.out_w
        && e.ih < oh * p.stride_h + p.pool_h && e.iw < ow * p.stride_w + p.pool_w;
    let at = ((e.n * p.out_h + oh) * p.out_w + ow) * p.channels + e.c;
    return Window(select(0u, at, valid), valid);
}

@compute @workgroup_size(WG)
fn maxpool_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_id) lid: vec3<u32>) {
    let p = params;
    let i = index(wid, nwg, lid);
    if (i >= p.batch * p.in_h * p.in_w * p.channels) { return; }
    let e = input_element(i);
    var acc = 0.0;
    var a = 0u;
    var b = 0u;
    for (var k = 0u; k < p.win_h * p.win_w; k++) {
        let win = window(e, a, b);
        let hit = win.valid && argmax_saved[win.at] == i;
        acc += select(0.0, dy[win.at], hit);
        b += 1u;
        if (b == p.win_w) { b = 0u; a += 1u; }
    }
    dx[i] += acc;
}

@compute @workgroup_size(WG)
fn maxpool_backward_disjoint(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                             @builtin(local_invocation_id) lid: vec3<u32>) {
    let p = params;
    let i = index(wid, nwg, lid);
    if (i >= p.batch * p.out_h * p.out_w * p.channels) { return; }
    let at = argmax_saved[i];
    dx[at] += dy[i];
}

@compute @workgroup_size(WG)
fn maxpool_backward_disjoint_vec4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                                  @builtin(local_invocation_id) lid: vec3<u32>) {
    let p = params;
    let i = index(wid, nwg, lid);
    if (i >= p.batch * p.out_h * p.out_w * (p.channels / 4u)) { return; }
    let at = argmax_saved4[i];
    let d = dy4[i];
    dx[at.x] += d.x;
    dx[at.y] += d.y;
    dx[at.z] += d.z;
    dx[at.w] += d.w;
}

@compute @workgroup_size(WG)
fn maxpool_relu_backward_disjoint(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                                  @builtin(local_invocation_id) lid: vec3<u32>) {
    let p = params;
    let i = index(wid, nwg, lid);
    if (i >= p.batch * p.out_h * p.out_w * p.channels) { return; }
    let at = argmax_saved[i];
    // The derivative of ReLU at 0 is taken as 0, as in Keras.
    dx[at] += select(0.0, dy[i], y_saved[i] > 0.0);
}

@compute @workgroup_size(WG)
fn maxpool_relu_backward_disjoint_vec4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                                       @builtin(local_invocation_id) lid: vec3<u32>) {
    let p = params;
    let i = index(wid, nwg, lid);
    if (i >= p.batch * p.out_h * p.out_w * (p.channels / 4u)) { return; }
    let at = argmax_saved4[i];
    let d = select(vec4<f32>(0.0), dy4[i], y_saved4[i] > vec4<f32>(0.0));
    dx[at.x] += d.x;
    dx[at.y] += d.y;
    dx[at.z] += d.z;
    dx[at.w] += d.w;
}

@compute @workgroup_size(WG)
fn avgpool_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_id) lid: vec3<u32>) {
    let p = params;
    let i = index(wid, nwg, lid);
    if (i >= p.batch * p.in_h * p.in_w * p.channels) { return; }
    let e = input_element(i);
    var acc = 0.0;
    var a = 0u;
    var b = 0u;
    for (var k = 0u; k < p.win_h * p.win_w; k++) {
        let win = window(e, a, b);
        acc += select(0.0, dy[win.at], win.valid);
        b += 1u;
        if (b == p.win_w) { b = 0u; a += 1u; }
    }
    dx[i] += acc / f32(p.pool_h * p.pool_w);
}
