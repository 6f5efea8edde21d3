// 2-D convolution, NHWC activations and Keras HWIO weights:
//   x [N,H,W,Cin], w [KH,KW,Cin,Cout], b [Cout], y [N,OH,OW,Cout].
// Input row of output row oh and kernel row kh: ih = oh*stride_h + kh - pad_top
// (likewise for columns); taps outside the input read zero (Same padding).
// A "tap" is one weight row (kh, kw, ci), flattened as (kh*KW + kw)*Cin + ci,
// so that w[tap*Cout + co] is the weight.
//
// conv2d_forward         : y  = conv(x, w) + b       invocation = PT output pixels x CT output channels
//                          (RELU: y = max(conv(x, w) + b, 0), Keras' Conv2D(activation='relu')
//                          in one pass: the graph executor fuses a ReLU that is the conv's only reader)
// conv2d_backward_input  : dx += conv^T(dy, w)       invocation = PT input pixels x CT input channels (gather)
// conv2d_backward_weight : dw += sum_{n,oh,ow} x*dy  workgroup = TT taps x CT output channels
// conv2d_backward_bias   : db += sum_{n,oh,ow} dy    workgroup = one output channel
//
// Tuned for lavapipe (and fine on GPUs): a load whose address differs across
// lanes costs lavapipe one scalar load per lane, a load with a
// workgroup-uniform address costs one. So the channel block is fixed per
// workgroup (weight loads are uniform) and each invocation keeps a PT x CT
// (or TT x CT) tile of accumulators, so that each per-lane load feeds
// several multiply-adds. Loops run over one flattened index with uniform
// trip counts and carry the sub-indices along (no divisions inside loops,
// which lavapipe does lane by lane); taps in the padding are masked with
// `select` instead of branched around. Channels and taps past the end of the
// last block are clamped to the last one on load and skipped on store.
//
// The reductions split their sum over the workgroup's lanes (lane l takes
// rows l, l+RWG, ...) and combine the partial sums with a fixed tree in
// workgroup memory: deterministic, and no invocation runs the whole N*OH*OW
// loop alone.

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
// Pixels per invocation of the pixel kernels (written out as q0..q3).
const PT: u32 = 4u;
// Channels per invocation (two vec4 accumulators per pixel or tap).
const CT: u32 = 8u;
// Taps per workgroup of conv2d_backward_weight (t0..t2; 3 divides the
// 9*Cin taps of a 3x3 kernel).
const TT: u32 = 3u;
// Lanes of the reduction kernels (a power of two for the tree).
const RWG: u32 = 128u;

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

// Partial sums of the reductions: accumulator k of lane l at k * RWG + l.
var<workgroup> partial: array<vec4<f32>, RWG * TT * 2u>;

// ---------------------------------------------------------------- helpers

// Position (n, row, col) of a pixel in an [N, rows, cols] grid.
struct Pixel {
    n: u32,
    row: u32,
    col: u32,
    live: bool,
}

fn pixel(i: u32, rows: u32, cols: u32) -> Pixel {
    let t = i / cols;
    return Pixel(t / rows, t % rows, i % cols, i < params.batch * rows * cols);
}

// The pixel after q in row-major order (carries instead of divisions).
fn next_pixel(q: Pixel, rows: u32, cols: u32) -> Pixel {
    var r = q;
    r.col += 1u;
    if (r.col == cols) { r.col = 0u; r.row += 1u; }
    if (r.row == rows) { r.row = 0u; r.n += 1u; }
    r.live = r.n < params.batch;
    return r;
}

// x at kernel tap (kh, kw, ci) of output pixel q's window; 0 in the padding.
fn x_tap(q: Pixel, kh: u32, kw: u32, ci: u32) -> f32 {
    let p = params;
    let ih = i32(q.row * p.stride_h + kh) - i32(p.pad_top);
    let iw = i32(q.col * p.stride_w + kw) - i32(p.pad_left);
    let inside = q.live && ih >= 0 && ih < i32(p.in_h) && iw >= 0 && iw < i32(p.in_w);
    let i = select(0u, ((q.n * p.in_h + u32(ih)) * p.in_w + u32(iw)) * p.in_c + ci, inside);
    return select(0.0, x[i], inside);
}

// The same for conv2d_backward_weight, which binds x as x_saved.
fn x_saved_tap(q: Pixel, kh: u32, kw: u32, ci: u32) -> f32 {
    let p = params;
    let ih = i32(q.row * p.stride_h + kh) - i32(p.pad_top);
    let iw = i32(q.col * p.stride_w + kw) - i32(p.pad_left);
    let inside = q.live && ih >= 0 && ih < i32(p.in_h) && iw >= 0 && iw < i32(p.in_w);
    let i = select(0u, ((q.n * p.in_h + u32(ih)) * p.in_w + u32(iw)) * p.in_c + ci, inside);
    return select(0.0, x_saved[i], inside);
}

// w[base + c .. c+3] for output channels c.. (clamped to the last channel).
fn w_out4(base: u32, c: u32) -> vec4<f32> {
    let last = params.out_c - 1u;
    return vec4(w[base + min(c, last)], w[base + min(c + 1u, last)],
                w[base + min(c + 2u, last)], w[base + min(c + 3u, last)]);
}

// b[c .. c+3] (clamped).
fn b4(c: u32) -> vec4<f32> {
    let last = params.out_c - 1u;
    return vec4(b[min(c, last)], b[min(c + 1u, last)], b[min(c + 2u, last)], b[min(c + 3u, last)]);
}

// dy[base + c .. c+3] for output channels c.. (clamped).
fn dy4(base: u32, c: u32) -> vec4<f32> {
    let last = params.out_c - 1u;
    return vec4(dy[base + min(c, last)], dy[base + min(c + 1u, last)],
                dy[base + min(c + 2u, last)], dy[base + min(c + 3u, last)]);
}

// w_saved[base + c*Cout] for input channels c .. c+3 (clamped).
fn w_in4(base: u32, c: u32) -> vec4<f32> {
    let last = params.in_c - 1u;
    let s = params.out_c;
    return vec4(w_saved[base + min(c, last) * s], w_saved[base + min(c + 1u, last) * s],
                w_saved[base + min(c + 2u, last) * s], w_saved[base + min(c + 3u, last) * s]);
}

// The forward kernels' epilogue: the fused ReLU, when the pipeline has it.
override RELU: bool = false;
fn activate(v: vec4<f32>) -> vec4<f32> {
    return select(v, max(v, vec4<f32>(0.0)), RELU);
}

// Writes channels c0 .. c0+7 of one pixel's row of y.
fn store_y(q: Pixel, i: u32, c0: u32, lo_in: vec4<f32>, hi_in: vec4<f32>) {
    let base = i * params.out_c + c0;
    let lo = activate(lo_in);
    let hi = activate(hi_in);
    for (var j = 0u; j < 4u; j++) {
        if (q.live && c0 + j < params.out_c) { y[base + j] = lo[j]; }
        if (q.live && c0 + 4u + j < params.out_c) { y[base + 4u + j] = hi[j]; }
    }
}

// Adds into channels c0 .. c0+7 of one pixel's row of dx.
fn add_dx(q: Pixel, i: u32, c0: u32, lo: vec4<f32>, hi: vec4<f32>) {
    let base = i * params.in_c + c0;
    for (var j = 0u; j < 4u; j++) {
        if (q.live && c0 + j < params.in_c) { dx[base + j] += lo[j]; }
        if (q.live && c0 + 4u + j < params.in_c) { dx[base + 4u + j] += hi[j]; }
    }
}

// ---------------------------------------------------------------- forward

@compute @workgroup_size(WG)
fn conv2d_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_id) lid: vec3<u32>) {
    let p = params;
    // Grid: x (folded with z) over blocks of WG*PT output pixels, y over blocks of CT channels.
    let i0 = ((wid.z * nwg.x + wid.x) * WG + lid.x) * PT;
    let co0 = wid.y * CT;
    let q0 = pixel(i0, p.out_h, p.out_w);
    let q1 = next_pixel(q0, p.out_h, p.out_w);
    let q2 = next_pixel(q1, p.out_h, p.out_w);
    let q3 = next_pixel(q2, p.out_h, p.out_w);
    let bias_lo = b4(co0);
    let bias_hi = b4(co0 + 4u);
    var a0 = bias_lo; var a1 = bias_hi;
    var b0 = bias_lo; var b1 = bias_hi;
    var c0 = bias_lo; var c1 = bias_hi;
    var d0 = bias_lo; var d1 = bias_hi;
    var kh = 0u;
    var kw = 0u;
    var ci = 0u;
    for (var tap = 0u; tap < p.k_h * p.k_w * p.in_c; tap++) {
        let wlo = w_out4(tap * p.out_c, co0);
        let whi = w_out4(tap * p.out_c, co0 + 4u);
        let xa = x_tap(q0, kh, kw, ci);
        let xb = x_tap(q1, kh, kw, ci);
        let xc = x_tap(q2, kh, kw, ci);
        let xd = x_tap(q3, kh, kw, ci);
        a0 += xa * wlo; a1 += xa * whi;
        b0 += xb * wlo; b1 += xb * whi;
        c0 += xc * wlo; c1 += xc * whi;
        d0 += xd * wlo; d1 += xd * whi;
        ci += 1u;
        if (ci == p.in_c) { ci = 0u; kw += 1u; }
        if (kw == p.k_w) { kw = 0u; kh += 1u; }
    }
    store_y(q0, i0, co0, a0, a1);
    store_y(q1, i0 + 1u, co0, b0, b1);
    store_y(q2, i0 + 2u, co0, c0, c1);
    store_y(q3, i0 + 3u, co0, d0, d1);
}

// ---------------------------------------------------------------- input gradient

// An input pixel with ih + pad_top = base_h * stride_h + rem_h (likewise for
// columns). Output row oh reads it through kernel row kh exactly when
// kh % stride_h == rem_h and oh = base_h - kh / stride_h.
struct InPixel {
    q: Pixel,
    base_h: u32,
    rem_h: u32,
    base_w: u32,
    rem_w: u32,
}

fn in_pixel(q: Pixel) -> InPixel {
    let p = params;
    let ah = q.row + p.pad_top;
    let aw = q.col + p.pad_left;
    return InPixel(q, ah / p.stride_h, ah % p.stride_h, aw / p.stride_w, aw % p.stride_w);
}

// dy at output channel co of the output pixel that reads input pixel r
// through kernel tap (kh, kw) = (kq_h * stride_h + kr_h, kq_w * stride_w + kr_w);
// 0 when no output pixel does.
fn dy_tap(r: InPixel, kq_h: u32, kr_h: u32, kq_w: u32, kr_w: u32, co: u32) -> f32 {
    let p = params;
    // Wraps (and fails the range check) when kq > base.
    let oh = r.base_h - kq_h;
    let ow = r.base_w - kq_w;
    let ok = r.q.live && kr_h == r.rem_h && kr_w == r.rem_w && kq_h <= r.base_h && kq_w <= r.base_w
        && oh < p.out_h && ow < p.out_w;
    let i = select(0u, ((r.q.n * p.out_h + oh) * p.out_w + ow) * p.out_c + co, ok);
    return select(0.0, dy[i], ok);
}

@compute @workgroup_size(WG)
fn conv2d_backward_input(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                         @builtin(local_invocation_id) lid: vec3<u32>) {
    let p = params;
    // Grid: x (folded with z) over blocks of WG*PT input pixels, y over blocks of CT channels.
    let i0 = ((wid.z * nwg.x + wid.x) * WG + lid.x) * PT;
    let ci0 = wid.y * CT;
    let q0 = pixel(i0, p.in_h, p.in_w);
    let q1 = next_pixel(q0, p.in_h, p.in_w);
    let q2 = next_pixel(q1, p.in_h, p.in_w);
    let q3 = next_pixel(q2, p.in_h, p.in_w);
    let r0 = in_pixel(q0);
    let r1 = in_pixel(q1);
    let r2 = in_pixel(q2);
    let r3 = in_pixel(q3);
    var a0 = vec4(0.0); var a1 = vec4(0.0);
    var b0 = vec4(0.0); var b1 = vec4(0.0);
    var c0 = vec4(0.0); var c1 = vec4(0.0);
    var d0 = vec4(0.0); var d1 = vec4(0.0);
    // Loop over (kh, kw, co), co fastest, carrying kh and kw as quotient and
    // remainder by the stride.
    var kq_h = 0u; var kr_h = 0u; var kh = 0u;
    var kq_w = 0u; var kr_w = 0u; var kw = 0u;
    var co = 0u;
    for (var k = 0u; k < p.k_h * p.k_w * p.out_c; k++) {
        // w[kh, kw, ci, co] for ci = ci0.. is at ((kh*KW + kw)*Cin + ci)*Cout + co.
        let base = (kh * p.k_w + kw) * p.in_c * p.out_c + co;
        let wlo = w_in4(base, ci0);
        let whi = w_in4(base, ci0 + 4u);
        let ga = dy_tap(r0, kq_h, kr_h, kq_w, kr_w, co);
        let gb = dy_tap(r1, kq_h, kr_h, kq_w, kr_w, co);
        let gc = dy_tap(r2, kq_h, kr_h, kq_w, kr_w, co);
        let gd = dy_tap(r3, kq_h, kr_h, kq_w, kr_w, co);
        a0 += ga * wlo; a1 += ga * whi;
        b0 += gb * wlo; b1 += gb * whi;
        c0 += gc * wlo; c1 += gc * whi;
        d0 += gd * wlo; d1 += gd * whi;
        co += 1u;
        if (co == p.out_c) {
            co = 0u;
            kw += 1u;
            kr_w += 1u;
            if (kr_w == p.stride_w) { kr_w = 0u; kq_w += 1u; }
        }
        if (kw == p.k_w) {
            kw = 0u; kr_w = 0u; kq_w = 0u;
            kh += 1u;
            kr_h += 1u;
            if (kr_h == p.stride_h) { kr_h = 0u; kq_h += 1u; }
        }
    }
    add_dx(q0, i0, ci0, a0, a1);
    add_dx(q1, i0 + 1u, ci0, b0, b1);
    add_dx(q2, i0 + 2u, ci0, c0, c1);
    add_dx(q3, i0 + 3u, ci0, d0, d1);
}

// ---------------------------------------------------------------- reductions

// Sums partial[k * RWG + 0..RWG) into partial[k * RWG] for k < count, in a
// fixed order. Every lane calls it (the barriers need uniform control flow).
fn reduce_partials(lane: u32, count: u32) {
    for (var s = RWG / 2u; s > 0u; s = s / 2u) {
        workgroupBarrier();
        if (lane < s) {
            for (var k = 0u; k < count; k++) {
                partial[k * RWG + lane] += partial[k * RWG + lane + s];
            }
        }
    }
    workgroupBarrier();
}

// (kh, kw, ci) of a flattened tap.
fn tap_index(t: u32) -> vec3<u32> {
    let p = params;
    let r = t / p.in_c;
    return vec3(r / p.k_w, r % p.k_w, t % p.in_c);
}

@compute @workgroup_size(RWG)
fn conv2d_backward_weight(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                          @builtin(local_invocation_index) lane: u32) {
    let p = params;
    // One workgroup per (block of TT taps, block of CT output channels); the
    // grid may be folded into 2-D.
    let g = wid.y * nwg.x + wid.x;
    let taps = p.k_h * p.k_w * p.in_c;
    let cblocks = (p.out_c + CT - 1u) / CT;
    if (g >= cblocks * ((taps + TT - 1u) / TT)) { return; }
    let co0 = (g % cblocks) * CT;
    let tap0 = (g / cblocks) * TT;
    let t0 = tap_index(min(tap0, taps - 1u));
    let t1 = tap_index(min(tap0 + 1u, taps - 1u));
    let t2 = tap_index(min(tap0 + 2u, taps - 1u));
    var a0 = vec4(0.0); var a1 = vec4(0.0);
    var b0 = vec4(0.0); var b1 = vec4(0.0);
    var c0 = vec4(0.0); var c1 = vec4(0.0);
    // Lane `lane` visits output pixels j = lane, lane + RWG, ...; the
    // position of j is advanced by the fixed step RWG with carries.
    var q = pixel(lane, p.out_h, p.out_w);
    let step = pixel(RWG, p.out_h, p.out_w);
    for (var j = lane; j < p.batch * p.out_h * p.out_w; j += RWG) {
        let glo = dy4(j * p.out_c, co0);
        let ghi = dy4(j * p.out_c, co0 + 4u);
        let xa = x_saved_tap(q, t0.x, t0.y, t0.z);
        let xb = x_saved_tap(q, t1.x, t1.y, t1.z);
        let xc = x_saved_tap(q, t2.x, t2.y, t2.z);
        a0 += xa * glo; a1 += xa * ghi;
        b0 += xb * glo; b1 += xb * ghi;
        c0 += xc * glo; c1 += xc * ghi;
        q.col += step.col;
        q.row += step.row;
        q.n += step.n;
        if (q.col >= p.out_w) { q.col -= p.out_w; q.row += 1u; }
        if (q.row >= p.out_h) { q.row -= p.out_h; q.n += 1u; }
        q.live = q.n < p.batch;
    }
    partial[lane] = a0;
    partial[RWG + lane] = a1;
    partial[2u * RWG + lane] = b0;
    partial[3u * RWG + lane] = b1;
    partial[4u * RWG + lane] = c0;
    partial[5u * RWG + lane] = c1;
    reduce_partials(lane, TT * 2u);
    // Lane t*CT + c writes tap tap0 + t, channel co0 + c.
    let t = lane / CT;
    let c = lane % CT;
    if (t < TT && tap0 + t < taps && co0 + c < p.out_c) {
        dw[(tap0 + t) * p.out_c + co0 + c] += partial[(t * 2u + c / 4u) * RWG][c % 4u];
    }
}

@compute @workgroup_size(RWG)
fn conv2d_backward_bias(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                        @builtin(local_invocation_index) lane: u32) {
    let p = params;
    // One workgroup per db element.
    let co = wid.y * nwg.x + wid.x;
    if (co >= p.out_c) { return; }
    var acc = 0.0;
    for (var j = lane; j < p.batch * p.out_h * p.out_w; j += RWG) {
        acc += dy[j * p.out_c + co];
    }
    partial[lane] = vec4(acc, 0.0, 0.0, 0.0);
    reduce_partials(lane, 1u);
    if (lane == 0u) { db[co] += partial[0].x; }
}

// ================================================================ direct
//
// Register-blocked variants for software adapters (lavapipe), after
// matmul_direct: lavapipe runs 8 invocations as one SIMD chunk and turns
// every storage load into a loop over the lanes, so what counts is
// multiply-adds per loaded element. Each invocation keeps a block of
// accumulators (16 rows x 16 channels as 4 vec4 per row) and reads storage
// directly; channel loads are vec4, which needs Cout % 4 == 0 (the launchers
// fall back to the kernels above otherwise). `PADDED` = false (Valid
// padding) drops the bounds masks: every tap of a live pixel is inside.
//
// conv2d_forward_direct         : 16 output pixels x 16 output channels per
//                                 invocation; 8 lanes along pixels, so the
//                                 weight loads are workgroup-uniform.
// conv2d_backward_weight_direct : 9 taps x 16 output channels per invocation,
//                                 DWL lanes each summing a contiguous chunk of
//                                 the N*OH*OW pixels; the lanes' blocks meet
//                                 in workgroup memory and each output is
//                                 summed over the lanes in lane order
//                                 (deterministic, one writer per element).
// conv2d_backward_input_direct  : stride 1 only. 16 input pixels x CIB (1 or
//                                 4) input channels per invocation, a gather
//                                 over (kh, kw, co): dy read as vec4 along co
//                                 and reduced with dot() against the
//                                 (uniform) weights. For Cin = 1 (an image
//                                 input); with Cin % 4 == 0 the launcher
//                                 runs the input gradient as a forward conv
//                                 instead (below).
//
// The input gradient at stride 1 is itself a convolution: dx = conv(dy, w')
// with w'[kh, kw, co, ci] = w[KH-1-kh, KW-1-kw, ci, co] (kernel flipped, in
// and out channels swapped) and padding KH-1-pad_top above, KW-1-pad_left
// left. conv2d_flip_weight writes w'; conv2d_forward_direct with ACCUMULATE
// (no bias, dx += instead of y =) then runs it with the matmul-like
// blocking of the forward, where conv2d_backward_input_direct's dot
// products against four input channels at a time reach a third of that.

override PADDED: bool = true;
// conv2d_forward_direct: add into y (an input gradient) instead of storing
// bias + sum; the bias binding is not read.
override ACCUMULATE: bool = false;
// Input channels per invocation of conv2d_backward_input_direct (1 or 4).
override CIB: u32 = 4u;

const DL: u32 = 8u;   // invocations per workgroup (lavapipe's SIMD width)
const DP: u32 = 16u;  // pixels per invocation
const DCH: u32 = 16u; // output channels per invocation (4 vec4)
const DWT: u32 = 9u;  // taps per invocation of conv2d_backward_weight_direct
const DWL: u32 = 16u; // lanes of conv2d_backward_weight_direct

// vec4 views (Cout % 4 == 0).
@group(0) @binding(2) var<storage, read> w_v4: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> b_v4: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> y_v4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> dy_v4: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> w_saved_v4: array<vec4<f32>>;

alias Row = array<vec4<f32>, 4>; // DCH channels
alias Block = array<Row, 16>;    // DP pixels
alias Block9 = array<Row, 9>;    // DWT taps

fn fma_row(acc: Row, s: f32, v: Row) -> Row {
    return Row(acc[0] + s * v[0], acc[1] + s * v[1], acc[2] + s * v[2], acc[3] + s * v[3]);
}

fn fma_block(acc: ptr<function, Block>, s: array<f32, 16>, v: Row) {
    (*acc)[0] = fma_row((*acc)[0], s[0], v);
    (*acc)[1] = fma_row((*acc)[1], s[1], v);
    (*acc)[2] = fma_row((*acc)[2], s[2], v);
    (*acc)[3] = fma_row((*acc)[3], s[3], v);
    (*acc)[4] = fma_row((*acc)[4], s[4], v);
    (*acc)[5] = fma_row((*acc)[5], s[5], v);
    (*acc)[6] = fma_row((*acc)[6], s[6], v);
    (*acc)[7] = fma_row((*acc)[7], s[7], v);
    (*acc)[8] = fma_row((*acc)[8], s[8], v);
    (*acc)[9] = fma_row((*acc)[9], s[9], v);
    (*acc)[10] = fma_row((*acc)[10], s[10], v);
    (*acc)[11] = fma_row((*acc)[11], s[11], v);
    (*acc)[12] = fma_row((*acc)[12], s[12], v);
    (*acc)[13] = fma_row((*acc)[13], s[13], v);
    (*acc)[14] = fma_row((*acc)[14], s[14], v);
    (*acc)[15] = fma_row((*acc)[15], s[15], v);
}

fn fma_block9(acc: ptr<function, Block9>, s: array<f32, 9>, v: Row) {
    (*acc)[0] = fma_row((*acc)[0], s[0], v);
    (*acc)[1] = fma_row((*acc)[1], s[1], v);
    (*acc)[2] = fma_row((*acc)[2], s[2], v);
    (*acc)[3] = fma_row((*acc)[3], s[3], v);
    (*acc)[4] = fma_row((*acc)[4], s[4], v);
    (*acc)[5] = fma_row((*acc)[5], s[5], v);
    (*acc)[6] = fma_row((*acc)[6], s[6], v);
    (*acc)[7] = fma_row((*acc)[7], s[7], v);
    (*acc)[8] = fma_row((*acc)[8], s[8], v);
}

// The window origin of one output pixel: the flat index of x[n, ih0, iw0, 0]
// and (ih0, iw0), which lie above / left of the input in the padding.
struct Origin {
    base: i32,
    ih0: i32,
    iw0: i32,
}

// Origin of output pixel i (clamped to the last pixel: dead lanes load valid data).
fn origin(i: u32) -> Origin {
    let p = params;
    let q = pixel(min(i, p.batch * p.out_h * p.out_w - 1u), p.out_h, p.out_w);
    let ih0 = i32(q.row * p.stride_h) - i32(p.pad_top);
    let iw0 = i32(q.col * p.stride_w) - i32(p.pad_left);
    return Origin((i32(q.n * p.in_h) + ih0) * i32(p.in_w * p.in_c) + iw0 * i32(p.in_c), ih0, iw0);
}

// x at tap offset `off` = (kh*W + kw)*Cin + ci of the window at o; 0 in the padding.
fn x_at(o: Origin, kh: i32, kw: i32, off: i32) -> f32 {
    if (!PADDED) {
        return x[u32(o.base + off)];
    }
    let inside = u32(o.ih0 + kh) < params.in_h && u32(o.iw0 + kw) < params.in_w;
    return select(0.0, x[u32(select(0, o.base + off, inside))], inside);
}

fn x_saved_at(o: Origin, kh: i32, kw: i32, off: i32) -> f32 {
    if (!PADDED) {
        return x_saved[u32(o.base + off)];
    }
    let inside = u32(o.ih0 + kh) < params.in_h && u32(o.iw0 + kw) < params.in_w;
    return select(0.0, x_saved[u32(select(0, o.base + off, inside))], inside);
}

// The weights of tap row `wb` for channel groups c4 .. c4+3 (clamped to
// the last group): the same for every lane of conv2d_forward_direct, so
// where the device has subgroups (`gpu::pipeline::shader_source`) lane l
// loads group l mod 4 and subgroupBroadcast hands the four to all lanes,
// one load per lane instead of four (as in matmul.wgsl).
// #if subgroups
fn w_row(wb: u32, c4: u32, last4: u32, lane: u32) -> Row {
    let v = w_v4[wb + min(c4 + lane % 4u, last4)];
    return Row(subgroupBroadcast(v, 0u), subgroupBroadcast(v, 1u),
               subgroupBroadcast(v, 2u), subgroupBroadcast(v, 3u));
}
// #else
fn w_row(wb: u32, c4: u32, last4: u32, lane: u32) -> Row {
    return Row(w_v4[wb + min(c4, last4)], w_v4[wb + min(c4 + 1u, last4)],
               w_v4[wb + min(c4 + 2u, last4)], w_v4[wb + min(c4 + 3u, last4)]);
}
// #endif

// Stores one pixel's row of y (channels c4*4 ..), skipping dead pixels and
// channel groups past Cout. Shifts instead of indexing (see matmul_direct).
fn store_y_row(i: u32, c4: u32, r: Row) {
    let p = params;
    if (i >= p.batch * p.out_h * p.out_w) { return; }
    var q = r;
    let n4 = p.out_c / 4u;
    for (var t = 0u; t < 4u; t++) {
        if (c4 + t < n4) {
            let at = i * n4 + c4 + t;
            if (ACCUMULATE) { y_v4[at] += q[0]; } else { y_v4[at] = activate(q[0]); }
        }
        q[0] = q[1]; q[1] = q[2]; q[2] = q[3];
    }
}

@compute @workgroup_size(DL)
fn conv2d_forward_direct(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                         @builtin(local_invocation_id) lid: vec3<u32>) {
    let p = params;
    // Grid: x (folded with z) over blocks of DL*DP pixels, y over blocks of DCH channels.
    let i0 = ((wid.z * nwg.x + wid.x) * DL + lid.x) * DP;
    let n4 = p.out_c / 4u;
    let c4 = wid.y * (DCH / 4u);
    let last4 = n4 - 1u;
    let o = array<Origin, 16>(
        origin(i0), origin(i0 + 1u), origin(i0 + 2u), origin(i0 + 3u),
        origin(i0 + 4u), origin(i0 + 5u), origin(i0 + 6u), origin(i0 + 7u),
        origin(i0 + 8u), origin(i0 + 9u), origin(i0 + 10u), origin(i0 + 11u),
        origin(i0 + 12u), origin(i0 + 13u), origin(i0 + 14u), origin(i0 + 15u));
    var acc: Block;
    if (!ACCUMULATE) {
        let bias = Row(b_v4[min(c4, last4)], b_v4[min(c4 + 1u, last4)],
                       b_v4[min(c4 + 2u, last4)], b_v4[min(c4 + 3u, last4)]);
        acc = Block(bias, bias, bias, bias, bias, bias, bias, bias,
                    bias, bias, bias, bias, bias, bias, bias, bias);
    }
    var kh = 0i;
    var kw = 0i;
    var ci = 0u;
    let taps = p.k_h * p.k_w * p.in_c;
    for (var t = 0u; t < taps; t++) {
        let off = (kh * i32(p.in_w) + kw) * i32(p.in_c) + i32(ci);
        let s = array<f32, 16>(
            x_at(o[0], kh, kw, off), x_at(o[1], kh, kw, off), x_at(o[2], kh, kw, off), x_at(o[3], kh, kw, off),
            x_at(o[4], kh, kw, off), x_at(o[5], kh, kw, off), x_at(o[6], kh, kw, off), x_at(o[7], kh, kw, off),
            x_at(o[8], kh, kw, off), x_at(o[9], kh, kw, off), x_at(o[10], kh, kw, off), x_at(o[11], kh, kw, off),
            x_at(o[12], kh, kw, off), x_at(o[13], kh, kw, off), x_at(o[14], kh, kw, off), x_at(o[15], kh, kw, off));
        fma_block(&acc, s, w_row(t * n4, c4, last4, lid.x));
        ci += 1u;
        if (ci == p.in_c) { ci = 0u; kw += 1; }
        if (kw == i32(p.k_w)) { kw = 0; kh += 1; }
    }
    for (var i = 0u; i < DP; i++) {
        store_y_row(i0 + i, c4, acc[0]);
        acc[0] = acc[1]; acc[1] = acc[2]; acc[2] = acc[3]; acc[3] = acc[4];
        acc[4] = acc[5]; acc[5] = acc[6]; acc[6] = acc[7]; acc[7] = acc[8];
        acc[8] = acc[9]; acc[9] = acc[10]; acc[10] = acc[11]; acc[11] = acc[12];
        acc[12] = acc[13]; acc[13] = acc[14]; acc[14] = acc[15];
    }
}

// (kh, kw, offset) of tap t (clamped to the last tap) for x_saved_at.
fn tap_of(t: u32) -> vec3<i32> {
    let p = params;
    let tt = min(t, p.k_h * p.k_w * p.in_c - 1u);
    let r = tt / p.in_c;
    let kh = r / p.k_w;
    let kw = r % p.k_w;
    return vec3(i32(kh), i32(kw), i32((kh * p.in_w + kw) * p.in_c + tt % p.in_c));
}

fn x_tap9(o: Origin, k: array<vec3<i32>, 9>) -> array<f32, 9> {
    return array<f32, 9>(
        x_saved_at(o, k[0].x, k[0].y, k[0].z), x_saved_at(o, k[1].x, k[1].y, k[1].z),
        x_saved_at(o, k[2].x, k[2].y, k[2].z), x_saved_at(o, k[3].x, k[3].y, k[3].z),
        x_saved_at(o, k[4].x, k[4].y, k[4].z), x_saved_at(o, k[5].x, k[5].y, k[5].z),
        x_saved_at(o, k[6].x, k[6].y, k[6].z), x_saved_at(o, k[7].x, k[7].y, k[7].z),
        x_saved_at(o, k[8].x, k[8].y, k[8].z));
}

@compute @workgroup_size(DWL)
fn conv2d_backward_weight_direct(@builtin(workgroup_id) wid: vec3<u32>,
                                 @builtin(local_invocation_index) lane: u32) {
    let p = params;
    // Grid: x over blocks of DWT taps, y over blocks of DCH channels.
    let tap0 = wid.x * DWT;
    let n4 = p.out_c / 4u;
    let c4 = wid.y * (DCH / 4u);
    let last4 = n4 - 1u;
    let k = array<vec3<i32>, 9>(tap_of(tap0), tap_of(tap0 + 1u), tap_of(tap0 + 2u), tap_of(tap0 + 3u),
                                tap_of(tap0 + 4u), tap_of(tap0 + 5u), tap_of(tap0 + 6u), tap_of(tap0 + 7u),
                                tap_of(tap0 + 8u));
    let pixels = p.batch * p.out_h * p.out_w;
    let chunk = (pixels + DWL - 1u) / DWL;
    let j0 = min(lane * chunk, pixels);
    let j1 = min(j0 + chunk, pixels);
    // Walk the chunk carrying (n, oh, ow) and the window origin.
    var q = pixel(min(j0, pixels - 1u), p.out_h, p.out_w);
    var acc: Block9;
    let col_step = i32(p.stride_w * p.in_c);
    for (var j = j0; j < j1; j++) {
        let ih0 = i32(q.row * p.stride_h) - i32(p.pad_top);
        let iw0 = i32(q.col * p.stride_w) - i32(p.pad_left);
        let o = Origin((i32(q.n * p.in_h) + ih0) * i32(p.in_w * p.in_c) + iw0 * i32(p.in_c), ih0, iw0);
        let gb = j * n4;
        let v = Row(dy_v4[gb + min(c4, last4)], dy_v4[gb + min(c4 + 1u, last4)],
                    dy_v4[gb + min(c4 + 2u, last4)], dy_v4[gb + min(c4 + 3u, last4)]);
        fma_block9(&acc, x_tap9(o, k), v);
        q.col += 1u;
        if (q.col == p.out_w) { q.col = 0u; q.row += 1u; }
        if (q.row == p.out_h) { q.row = 0u; q.n += 1u; }
    }
    // Park the block: lane l's tap t at partial[(l * DWT + t) * 4 + g].
    for (var t = 0u; t < DWT; t++) {
        let at = (lane * DWT + t) * 4u;
        partial[at] = acc[0][0];
        partial[at + 1u] = acc[0][1];
        partial[at + 2u] = acc[0][2];
        partial[at + 3u] = acc[0][3];
        acc[0] = acc[1]; acc[1] = acc[2]; acc[2] = acc[3]; acc[3] = acc[4];
        acc[4] = acc[5]; acc[5] = acc[6]; acc[6] = acc[7]; acc[7] = acc[8];
    }
    workgroupBarrier();
    // Output e = t * DCH + c: lane l sums e = l, l + DWL, ... over the lanes in order.
    for (var e = lane; e < DWT * DCH; e += DWL) {
        let t = e / DCH;
        let c = e % DCH;
        var s = 0.0;
        for (var l = 0u; l < DWL; l++) {
            s += partial[(l * DWT + t) * 4u + c / 4u][c % 4u];
        }
        let co = c4 * 4u + c;
        if (tap0 + t < p.k_h * p.k_w * p.in_c && co < p.out_c) {
            dw[(tap0 + t) * p.out_c + co] += s;
        }
    }
}

// The output pixel that reads input pixel i at kernel tap (0, 0), in
// stride-1 geometry: ohw = (ih + pad_top, iw + pad_left) and the flat index
// of that (possibly out-of-range) output position; tap (kh, kw) reads the
// output pixel at (oh - kh, ow - kw), flat index `base - kh*OW - kw`.
struct OutOrigin {
    base: i32,
    oh: i32,
    ow: i32,
}

fn out_origin(i: u32) -> OutOrigin {
    let p = params;
    let q = pixel(min(i, p.batch * p.in_h * p.in_w - 1u), p.in_h, p.in_w);
    let oh = i32(q.row + p.pad_top);
    let ow = i32(q.col + p.pad_left);
    return OutOrigin((i32(q.n * p.out_h) + oh) * i32(p.out_w) + ow, oh, ow);
}

// dy[.., co4*4 .. +3] at the output pixel o reads through tap (kh, kw); 0 when none does.
fn dy_at(o: OutOrigin, kh: i32, kw: i32, back: i32, co4: u32) -> vec4<f32> {
    let p = params;
    let inside = u32(o.oh - kh) < p.out_h && u32(o.ow - kw) < p.out_w;
    let at = u32(select(0, o.base - back, inside)) * (p.out_c / 4u) + co4;
    return select(vec4(0.0), dy_v4[at], inside);
}

// The weights of input channels ci0 .. ci0+3 (clamped to the last) for
// output channels co4*4 .. at tap row wb: the same for every lane of
// conv2d_backward_input_direct, shared as in w_row.
// #if subgroups
fn w_in_row(wb: u32, ci0: u32, lastc: u32, n4: u32, co4: u32, lane: u32) -> array<vec4<f32>, 4> {
    let v = w_saved_v4[(wb + min(ci0 + lane % 4u, lastc)) * n4 + co4];
    return array<vec4<f32>, 4>(subgroupBroadcast(v, 0u), subgroupBroadcast(v, 1u),
                               subgroupBroadcast(v, 2u), subgroupBroadcast(v, 3u));
}
// #else
fn w_in_row(wb: u32, ci0: u32, lastc: u32, n4: u32, co4: u32, lane: u32) -> array<vec4<f32>, 4> {
    return array<vec4<f32>, 4>(
        w_saved_v4[(wb + min(ci0, lastc)) * n4 + co4],
        w_saved_v4[(wb + min(ci0 + 1u, lastc)) * n4 + co4],
        w_saved_v4[(wb + min(ci0 + 2u, lastc)) * n4 + co4],
        w_saved_v4[(wb + min(ci0 + 3u, lastc)) * n4 + co4]);
}
// #endif

// acc + (dot(d, w[c]))_c for the CIB live channels.
fn dot_acc(acc: vec4<f32>, d: vec4<f32>, w: array<vec4<f32>, 4>) -> vec4<f32> {
    if (CIB == 1u) {
        return acc + vec4(dot(d, w[0]), 0.0, 0.0, 0.0);
    }
    return acc + vec4(dot(d, w[0]), dot(d, w[1]), dot(d, w[2]), dot(d, w[3]));
}

// Adds one pixel's CIB channels into dx.
fn add_dx_row(i: u32, ci0: u32, v: vec4<f32>) {
    let p = params;
    if (i >= p.batch * p.in_h * p.in_w) { return; }
    var q = v;
    for (var c = 0u; c < CIB; c++) {
        if (ci0 + c < p.in_c) { dx[i * p.in_c + ci0 + c] += q.x; }
        q = q.yzwx;
    }
}

@compute @workgroup_size(DL)
fn conv2d_backward_input_direct(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                                @builtin(local_invocation_id) lid: vec3<u32>) {
    let p = params;
    // Grid: x (folded with z) over blocks of DL*DP input pixels, y over blocks of CIB channels.
    let i0 = ((wid.z * nwg.x + wid.x) * DL + lid.x) * DP;
    let ci0 = wid.y * CIB;
    let n4 = p.out_c / 4u;
    let lastc = p.in_c - 1u;
    let o = array<OutOrigin, 16>(
        out_origin(i0), out_origin(i0 + 1u), out_origin(i0 + 2u), out_origin(i0 + 3u),
        out_origin(i0 + 4u), out_origin(i0 + 5u), out_origin(i0 + 6u), out_origin(i0 + 7u),
        out_origin(i0 + 8u), out_origin(i0 + 9u), out_origin(i0 + 10u), out_origin(i0 + 11u),
        out_origin(i0 + 12u), out_origin(i0 + 13u), out_origin(i0 + 14u), out_origin(i0 + 15u));
    var acc: array<vec4<f32>, 16>;
    var kh = 0i;
    var kw = 0i;
    var co4 = 0u;
    for (var k = 0u; k < p.k_h * p.k_w * n4; k++) {
        let back = kh * i32(p.out_w) + kw;
        // w[kh, kw, ci, co4*4 ..] as vec4 at ((kh*KW + kw)*Cin + ci)*n4 + co4.
        let wb = u32(kh * i32(p.k_w) + kw) * p.in_c;
        let wv = w_in_row(wb, ci0, lastc, n4, co4, lid.x);
        acc[0] = dot_acc(acc[0], dy_at(o[0], kh, kw, back, co4), wv);
        acc[1] = dot_acc(acc[1], dy_at(o[1], kh, kw, back, co4), wv);
        acc[2] = dot_acc(acc[2], dy_at(o[2], kh, kw, back, co4), wv);
        acc[3] = dot_acc(acc[3], dy_at(o[3], kh, kw, back, co4), wv);
        acc[4] = dot_acc(acc[4], dy_at(o[4], kh, kw, back, co4), wv);
        acc[5] = dot_acc(acc[5], dy_at(o[5], kh, kw, back, co4), wv);
        acc[6] = dot_acc(acc[6], dy_at(o[6], kh, kw, back, co4), wv);
        acc[7] = dot_acc(acc[7], dy_at(o[7], kh, kw, back, co4), wv);
        acc[8] = dot_acc(acc[8], dy_at(o[8], kh, kw, back, co4), wv);
        acc[9] = dot_acc(acc[9], dy_at(o[9], kh, kw, back, co4), wv);
        acc[10] = dot_acc(acc[10], dy_at(o[10], kh, kw, back, co4), wv);
        acc[11] = dot_acc(acc[11], dy_at(o[11], kh, kw, back, co4), wv);
        acc[12] = dot_acc(acc[12], dy_at(o[12], kh, kw, back, co4), wv);
        acc[13] = dot_acc(acc[13], dy_at(o[13], kh, kw, back, co4), wv);
        acc[14] = dot_acc(acc[14], dy_at(o[14], kh, kw, back, co4), wv);
        acc[15] = dot_acc(acc[15], dy_at(o[15], kh, kw, back, co4), wv);
        co4 += 1u;
        if (co4 == n4) { co4 = 0u; kw += 1; }
        if (kw == i32(p.k_w)) { kw = 0; kh += 1; }
    }
    for (var i = 0u; i < DP; i++) {
        add_dx_row(i0 + i, ci0, acc[0]);
        acc[0] = acc[1]; acc[1] = acc[2]; acc[2] = acc[3]; acc[3] = acc[4];
        acc[4] = acc[5]; acc[5] = acc[6]; acc[6] = acc[7]; acc[7] = acc[8];
        acc[8] = acc[9]; acc[9] = acc[10]; acc[10] = acc[11]; acc[11] = acc[12];
        acc[12] = acc[13]; acc[13] = acc[14]; acc[14] = acc[15];
    }
}

// db for DCH channels per workgroup: lane l sums a contiguous chunk of the
// pixels with vec4 loads, the lanes' sums meet in workgroup memory and are
// added in lane order (as in conv2d_backward_weight_direct).
@compute @workgroup_size(DWL)
fn conv2d_backward_bias_direct(@builtin(workgroup_id) wid: vec3<u32>,
                               @builtin(local_invocation_index) lane: u32) {
    let p = params;
    let n4 = p.out_c / 4u;
    let c4 = wid.x * (DCH / 4u);
    let last4 = n4 - 1u;
    let pixels = p.batch * p.out_h * p.out_w;
    let chunk = (pixels + DWL - 1u) / DWL;
    let j0 = min(lane * chunk, pixels);
    let j1 = min(j0 + chunk, pixels);
    var acc: Row;
    for (var j = j0; j < j1; j++) {
        let gb = j * n4;
        acc[0] += dy_v4[gb + min(c4, last4)];
        acc[1] += dy_v4[gb + min(c4 + 1u, last4)];
        acc[2] += dy_v4[gb + min(c4 + 2u, last4)];
        acc[3] += dy_v4[gb + min(c4 + 3u, last4)];
    }
    partial[lane * 4u] = acc[0];
    partial[lane * 4u + 1u] = acc[1];
    partial[lane * 4u + 2u] = acc[2];
    partial[lane * 4u + 3u] = acc[3];
    workgroupBarrier();
    if (lane < DCH) {
        var s = 0.0;
        for (var l = 0u; l < DWL; l++) {
            s += partial[l * 4u + lane / 4u][lane % 4u];
        }
        let co = c4 * 4u + lane;
        if (co < p.out_c) { db[co] += s; }
    }
}

// w'[kh, kw, co, ci] = w[KH-1-kh, KW-1-kw, ci, co]: the weights of the input
// gradient as a forward conv (see ACCUMULATE). One invocation per element
// of w', in w' order (linear grid).
@group(0) @binding(1) var<storage, read_write> w_flipped: array<f32>;
@group(0) @binding(2) var<storage, read> w_unflipped: array<f32>;

@compute @workgroup_size(WG)
fn conv2d_flip_weight(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_index) lane: u32) {
    let p = params;
    let e = (wid.y * nwg.x + wid.x) * WG + lane;
    if (e >= p.k_h * p.k_w * p.in_c * p.out_c) { return; }
    let ci = e % p.in_c;
    let r = e / p.in_c;
    let co = r % p.out_c;
    let t = r / p.out_c; // kh * KW + kw of w'
    let src_tap = p.k_h * p.k_w - 1u - t; // (KH-1-kh) * KW + (KW-1-kw)
    w_flipped[e] = w_unflipped[(src_tap * p.in_c + ci) * p.out_c + co];
}
