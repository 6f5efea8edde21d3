// 2-D convolution, NHWC activations and Keras HWIO weights:
//   x [N,H,W,Cin], w [KH,KW,Cin,Cout], b [Cout], y [N,OH,OW,Cout].
// Input row of output row oh and kernel row kh: ih = oh*stride_h + kh - pad_top
// (likewise for columns); taps outside the input read zero (Same padding).
//
// conv2d_forward         : y  = conv(x, w) + b       lane = output pixel, CT output channels
// conv2d_backward_input  : dx += conv^T(dy, w)       lane = input pixel, CT input channels (gather)
// conv2d_backward_weight : dw += sum_{n,oh,ow} x*dy  workgroup = (kh, kw, ci, CT output channels)
// conv2d_backward_bias   : db += sum_{n,oh,ow} dy    workgroup = one output channel
//
// Each invocation keeps CT channel accumulators and the channel block is
// fixed per workgroup: one activation load feeds CT multiply-adds, and the
// weight loads (conv2d_forward, conv2d_backward_input) have workgroup-uniform
// addresses, which lavapipe turns into a single scalar load instead of a
// per-lane gather. Loops have uniform trip counts and guard their bodies
// with `if` (no divergent `continue`) so the loop counters stay uniform.
// Channels past the last block's end are clamped to the last channel on
// load and skipped on store.
//
// The two reductions split their sum over the workgroup's lanes (lane l
// takes rows l, l+RWG, ...) and combine the partial sums with a fixed tree
// in workgroup memory: deterministic, and no invocation runs the whole
// N*OH*OW loop alone.

struct Params {
    batch: u32,
    in_h: u32,
    in_w: u32,
    in_c: u32,
    out_h: u32,
    out_w: u32,
    out_c: u32,
    k_h: u32,
    k_w: u32,
    stride_h: u32,
    stride_w: u32,
    pad_top: u32,
    pad_left: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

// Lanes of the pixel kernels.
const WG: u32 = 64u;
// Channels per invocation (two vec4 accumulators).
const CT: u32 = 8u;
// Lanes of the reduction kernels (a power of two for the tree).
const RWG: u32 = 256u;

@group(0) @binding(0) var<uniform> params: Params;

// forward bindings
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read> b: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

// backward bindings: gradient to write, incoming gradient, saved value
@group(0) @binding(1) var<storage, read_write> dx: array<f32>;
@group(0) @binding(1) var<storage, read_write> dw: array<f32>;
@group(0) @binding(1) var<storage, read_write> db: array<f32>;
@group(0) @binding(2) var<storage, read> dy: array<f32>;
@group(0) @binding(3) var<storage, read> w_saved: array<f32>;
@group(0) @binding(3) var<storage, read> x_saved: array<f32>;

// Partial sums of the reductions: channel t of lane l at t * RWG + l.
var<workgroup> partial: array<f32, RWG * CT>;

@compute @workgroup_size(WG)
fn conv2d_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_id) lid: vec3<u32>) {
    let p = params;
    // Grid: x (folded with z) over blocks of WG output pixels, y over blocks of CT channels.
    let pix = (wid.z * nwg.x + wid.x) * WG + lid.x;
    let co0 = wid.y * CT;
    let live = pix < p.batch * p.out_h * p.out_w;
    let ow = pix % p.out_w;
    let t = pix / p.out_w;
    let oh = t % p.out_h;
    let n = t / p.out_h;
    // Window corner in input coordinates; negative inside the Same padding.
    let ih0 = i32(oh * p.stride_h) - i32(p.pad_top);
    let iw0 = i32(ow * p.stride_w) - i32(p.pad_left);
    let last = p.out_c - 1u;
    var acc0 = vec4(b[min(co0, last)], b[min(co0 + 1u, last)], b[min(co0 + 2u, last)], b[min(co0 + 3u, last)]);
    var acc1 = vec4(b[min(co0 + 4u, last)], b[min(co0 + 5u, last)], b[min(co0 + 6u, last)], b[min(co0 + 7u, last)]);
    for (var kh = 0u; kh < p.k_h; kh++) {
        let ih = ih0 + i32(kh);
        for (var kw = 0u; kw < p.k_w; kw++) {
            let iw = iw0 + i32(kw);
            if (live && ih >= 0 && ih < i32(p.in_h) && iw >= 0 && iw < i32(p.in_w)) {
                let xb = ((n * p.in_h + u32(ih)) * p.in_w + u32(iw)) * p.in_c;
                for (var ci = 0u; ci < p.in_c; ci++) {
                    let xv = x[xb + ci];
                    let wb = ((kh * p.k_w + kw) * p.in_c + ci) * p.out_c;
                    acc0 += xv * vec4(w[wb + min(co0, last)], w[wb + min(co0 + 1u, last)],
                                      w[wb + min(co0 + 2u, last)], w[wb + min(co0 + 3u, last)]);
                    acc1 += xv * vec4(w[wb + min(co0 + 4u, last)], w[wb + min(co0 + 5u, last)],
                                      w[wb + min(co0 + 6u, last)], w[wb + min(co0 + 7u, last)]);
                }
            }
        }
    }
    if (!live) { return; }
    let yb = pix * p.out_c + co0;
    for (var j = 0u; j < 4u; j++) {
        if (co0 + j < p.out_c) { y[yb + j] = acc0[j]; }
        if (co0 + 4u + j < p.out_c) { y[yb + 4u + j] = acc1[j]; }
    }
}

@compute @workgroup_size(WG)
fn conv2d_backward_input(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                         @builtin(local_invocation_id) lid: vec3<u32>) {
    let p = params;
    // Grid: x (folded with z) over blocks of WG input pixels, y over blocks of CT channels.
    let pix = (wid.z * nwg.x + wid.x) * WG + lid.x;
    let ci0 = wid.y * CT;
    let live = pix < p.batch * p.in_h * p.in_w;
    let iw = pix % p.in_w;
    let t = pix / p.in_w;
    let ih = t % p.in_h;
    let n = t / p.in_h;
    // Output row oh reads ih through kernel row kh when
    // oh * stride_h = ih + pad_top - kh, a non-negative multiple of the stride.
    let ah = i32(ih + p.pad_top);
    let aw = i32(iw + p.pad_left);
    let last = p.in_c - 1u;
    // Element offsets of input channels ci0..ci0+7 in a weight row.
    let c0 = vec4(min(ci0, last), min(ci0 + 1u, last), min(ci0 + 2u, last), min(ci0 + 3u, last)) * p.out_c;
    let c1 = vec4(min(ci0 + 4u, last), min(ci0 + 5u, last), min(ci0 + 6u, last), min(ci0 + 7u, last)) * p.out_c;
    var acc0 = vec4(0.0);
    var acc1 = vec4(0.0);
    for (var kh = 0u; kh < p.k_h; kh++) {
        let th = ah - i32(kh);
        let oh = u32(th) / p.stride_h;
        let row_ok = th >= 0 && u32(th) % p.stride_h == 0u && oh < p.out_h;
        for (var kw = 0u; kw < p.k_w; kw++) {
            let tw = aw - i32(kw);
            let ow = u32(tw) / p.stride_w;
            if (live && row_ok && tw >= 0 && u32(tw) % p.stride_w == 0u && ow < p.out_w) {
                let gb = ((n * p.out_h + oh) * p.out_w + ow) * p.out_c;
                for (var co = 0u; co < p.out_c; co++) {
                    let g = dy[gb + co];
                    let wb = (kh * p.k_w + kw) * p.in_c * p.out_c + co;
                    acc0 += g * vec4(w_saved[wb + c0.x], w_saved[wb + c0.y], w_saved[wb + c0.z], w_saved[wb + c0.w]);
                    acc1 += g * vec4(w_saved[wb + c1.x], w_saved[wb + c1.y], w_saved[wb + c1.z], w_saved[wb + c1.w]);
                }
            }
        }
    }
    if (!live) { return; }
    let xb = pix * p.in_c + ci0;
    for (var j = 0u; j < 4u; j++) {
        if (ci0 + j < p.in_c) { dx[xb + j] += acc0[j]; }
        if (ci0 + 4u + j < p.in_c) { dx[xb + 4u + j] += acc1[j]; }
    }
}

// Sums partial[t * RWG + 0..RWG) into partial[t * RWG] for t < channels, in
// a fixed order. Every lane calls it (the barriers need uniform control flow).
fn reduce_partials(lane: u32, channels: u32) {
    for (var s = RWG / 2u; s > 0u; s = s / 2u) {
        workgroupBarrier();
        if (lane < s) {
            for (var t = 0u; t < channels; t++) {
                partial[t * RWG + lane] += partial[t * RWG + lane + s];
            }
        }
    }
    workgroupBarrier();
}

@compute @workgroup_size(RWG)
fn conv2d_backward_weight(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                          @builtin(local_invocation_index) lane: u32) {
    let p = params;
    // One workgroup per (kh, kw, ci, block of CT output channels); the grid
    // may be folded into 2-D.
    let g = wid.y * nwg.x + wid.x;
    let blocks = (p.out_c + CT - 1u) / CT;
    if (g >= p.k_h * p.k_w * p.in_c * blocks) { return; }
    let co0 = (g % blocks) * CT;
    var r = g / blocks;
    let ci = r % p.in_c;
    r = r / p.in_c;
    let kw = r % p.k_w;
    let kh = r / p.k_w;
    let rows = p.batch * p.out_h * p.out_w;
    // Lane `lane` visits rows j = lane, lane + RWG, ...; (n, oh, ow) of j is
    // advanced by the fixed step RWG with carries instead of re-divided.
    var ow = lane % p.out_w;
    var oh = (lane / p.out_w) % p.out_h;
    var n = lane / (p.out_w * p.out_h);
    let step_ow = RWG % p.out_w;
    let step_oh = (RWG / p.out_w) % p.out_h;
    let step_n = RWG / (p.out_w * p.out_h);
    let last = p.out_c - 1u;
    let c0 = vec4(min(co0, last), min(co0 + 1u, last), min(co0 + 2u, last), min(co0 + 3u, last));
    let c1 = vec4(min(co0 + 4u, last), min(co0 + 5u, last), min(co0 + 6u, last), min(co0 + 7u, last));
    var acc0 = vec4(0.0);
    var acc1 = vec4(0.0);
    for (var j = lane; j < rows; j += RWG) {
        let ih = i32(oh * p.stride_h + kh) - i32(p.pad_top);
        let iw = i32(ow * p.stride_w + kw) - i32(p.pad_left);
        if (ih >= 0 && ih < i32(p.in_h) && iw >= 0 && iw < i32(p.in_w)) {
            let xv = x_saved[((n * p.in_h + u32(ih)) * p.in_w + u32(iw)) * p.in_c + ci];
            let gb = j * p.out_c;
            acc0 += xv * vec4(dy[gb + c0.x], dy[gb + c0.y], dy[gb + c0.z], dy[gb + c0.w]);
            acc1 += xv * vec4(dy[gb + c1.x], dy[gb + c1.y], dy[gb + c1.z], dy[gb + c1.w]);
        }
        ow += step_ow;
        oh += step_oh;
        n += step_n;
        if (ow >= p.out_w) { ow -= p.out_w; oh += 1u; }
        if (oh >= p.out_h) { oh -= p.out_h; n += 1u; }
    }
    for (var t = 0u; t < 4u; t++) {
        partial[t * RWG + lane] = acc0[t];
        partial[(t + 4u) * RWG + lane] = acc1[t];
    }
    reduce_partials(lane, CT);
    if (lane < CT && co0 + lane < p.out_c) {
        dw[((kh * p.k_w + kw) * p.in_c + ci) * p.out_c + co0 + lane] += partial[lane * RWG];
    }
}

@compute @workgroup_size(RWG)
fn conv2d_backward_bias(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                        @builtin(local_invocation_index) lane: u32) {
    let p = params;
    // One workgroup per db element.
    let co = wid.y * nwg.x + wid.x;
    if (co >= p.out_c) { return; }
    let rows = p.batch * p.out_h * p.out_w;
    var acc = 0.0;
    for (var j = lane; j < rows; j += RWG) {
        acc += dy[j * p.out_c + co];
    }
    partial[lane] = acc;
    reduce_partials(lane, 1u);
    if (lane == 0u) { db[co] += partial[0]; }
}
