//! 2-D convolution (Keras `Conv2D`): NHWC input `[N,H,W,Cin]`, HWIO weight
//! `[KH,KW,Cin,Cout]`, bias `[Cout]`, output `[N,OH,OW,Cout]`; strides and
//! Valid or Same padding with TensorFlow's rules. CPU reference and GPU
//! launchers, forward then backward. The forward adds the bias; the ReLU
//! stays a separate op (`ops::activation`).
//!
//! Autograd: forward saves x (for the weight gradient) and uses the weight
//! (for the input gradient); backward runs `conv2d_backward_weight`,
//! `conv2d_backward_bias` and, unless x is the network input,
//! `conv2d_backward_input`. All three accumulate (+=).
//!
//! Two kernel families (see `shaders/conv2d.wgsl`), picked per call by
//! [`Conv2dVariant::for_kernel`]: register-blocked `*_direct` kernels
//! (16 pixels x 16 channels, or 9 taps x 16 channels, per invocation, vec4
//! channel rows) when Cout is a multiple of 4 (and, for the input
//! gradient, the stride is 1); otherwise the general kernels. At stride 1
//! with Cin a multiple of 4 the input gradient is a forward conv of dy over
//! the flipped, channel-swapped weights (`conv2d_flip_weight`, then
//! `conv2d_forward_direct` accumulating into dx): the forward's blocking,
//! about 3x the gather kernel's speed at equal FLOPs.

use ndarray::linalg::general_mat_mul;
use ndarray::{
    Array1, Array2, Array4, ArrayView1, ArrayView2, ArrayView4, ArrayViewMut2, Axis, CowArray, Ix4,
    NdFloat,
};

use crate::error::{Error, Result};
use crate::gpu::{Access, Dispatch, GpuContext, GpuTensor, Grid, KernelSpec, Shader};
use crate::ops::threads::{on_batch_halves, CPU_SPLIT_MIN_BATCH};
use crate::tensor::{expect_numel, expect_shape, numel};

/// Uniform parameters, mirrored by `Params` in `shaders/conv2d.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Conv2dParams {
    pub batch: u32,
    pub in_h: u32,
    pub in_w: u32,
    pub in_c: u32,
    pub out_h: u32,
    pub out_w: u32,
    pub out_c: u32,
    pub k_h: u32,
    pub k_w: u32,
    pub stride_h: u32,
    pub stride_w: u32,
    pub pad_top: u32,
    pub pad_left: u32,
    pub _pad: [u32; 3],
}

/// Keras padding modes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Padding {
    /// No padding: `out = floor((in - k) / stride) + 1`.
    Valid,
    /// TensorFlow "SAME": `out = ceil(in / stride)`, zero padding
    /// `max((out-1)*stride + k - in, 0)` split with the smaller half before.
    Same,
}

/// Output size and padding before, along one spatial dimension.
fn out_and_pad(input: usize, k: usize, stride: usize, padding: Padding) -> (usize, usize) {
    match padding {
        Padding::Valid => ((input - k) / stride + 1, 0),
        Padding::Same => {
            let out = input.div_ceil(stride);
            let total = ((out - 1) * stride + k).saturating_sub(input);
            (out, total / 2)
        }
    }
}

/// Sizes of one convolution: input, kernel, stride and padding, from which
/// the output size and padding offsets follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Conv2dGeometry {
    pub batch: usize,
    pub in_h: usize,
    pub in_w: usize,
    pub in_c: usize,
    pub out_c: usize,
    /// `[KH, KW]`
    pub kernel: [usize; 2],
    /// `[SH, SW]`
    pub stride: [usize; 2],
    pub padding: Padding,
}

impl Conv2dGeometry {
    /// The same convolution over `batch` samples (a part of the batch).
    fn with_batch(&self, batch: usize) -> Self {
        Self { batch, ..*self }
    }

    /// Checks the sizes: non-zero kernel, stride and channels, a Valid
    /// kernel no larger than the input, and every tensor indexable in u32.
    pub fn new(
        input: [usize; 4],
        out_c: usize,
        kernel: [usize; 2],
        stride: [usize; 2],
        padding: Padding,
    ) -> Result<Self> {
        let [batch, in_h, in_w, in_c] = input;
        let g = Self {
            batch,
            in_h,
            in_w,
            in_c,
            out_c,
            kernel,
            stride,
            padding,
        };
        let describe = || {
            format!("input {input:?}, {out_c} filters, kernel {kernel:?}, stride {stride:?}, {padding:?}")
        };
        if kernel.contains(&0) || stride.contains(&0) || in_c == 0 || out_c == 0 {
            return Err(Error::shape(
                "conv2d",
                format!("zero kernel, stride or channel count: {}", describe()),
            ));
        }
        if in_h == 0
            || in_w == 0
            || (padding == Padding::Valid && (kernel[0] > in_h || kernel[1] > in_w))
        {
            return Err(Error::shape(
                "conv2d",
                format!("the kernel does not fit the input: {}", describe()),
            ));
        }
        let biggest = [g.input_shape(), g.weight_shape(), g.output_shape()]
            .iter()
            .map(|s| numel(s))
            .max()
            .unwrap_or(0);
        if biggest > u32::MAX as usize {
            return Err(Error::Unsupported {
                op: "conv2d".into(),
                what: format!("a tensor of {biggest} elements"),
                why: "the kernels index with u32".into(),
            });
        }
        Ok(g)
    }

    pub fn out_h(&self) -> usize {
        out_and_pad(self.in_h, self.kernel[0], self.stride[0], self.padding).0
    }

    pub fn out_w(&self) -> usize {
        out_and_pad(self.in_w, self.kernel[1], self.stride[1], self.padding).0
    }

    /// Zero rows added above the input (Same padding; the odd one goes below).
    pub fn pad_top(&self) -> usize {
        out_and_pad(self.in_h, self.kernel[0], self.stride[0], self.padding).1
    }

    /// Zero columns added left of the input.
    pub fn pad_left(&self) -> usize {
        out_and_pad(self.in_w, self.kernel[1], self.stride[1], self.padding).1
    }

    pub fn input_shape(&self) -> [usize; 4] {
        [self.batch, self.in_h, self.in_w, self.in_c]
    }

    pub fn weight_shape(&self) -> [usize; 4] {
        [self.kernel[0], self.kernel[1], self.in_c, self.out_c]
    }

    pub fn bias_shape(&self) -> [usize; 1] {
        [self.out_c]
    }

    pub fn output_shape(&self) -> [usize; 4] {
        [self.batch, self.out_h(), self.out_w(), self.out_c]
    }

    pub fn params(&self) -> Conv2dParams {
        Conv2dParams {
            batch: self.batch as u32,
            in_h: self.in_h as u32,
            in_w: self.in_w as u32,
            in_c: self.in_c as u32,
            out_h: self.out_h() as u32,
            out_w: self.out_w() as u32,
            out_c: self.out_c as u32,
            k_h: self.kernel[0] as u32,
            k_w: self.kernel[1] as u32,
            stride_h: self.stride[0] as u32,
            stride_w: self.stride[1] as u32,
            pad_top: self.pad_top() as u32,
            pad_left: self.pad_left() as u32,
            _pad: [0; 3],
        }
    }

    /// Input row read by output row `oh` and kernel row `kh`, or `None` in the padding.
    pub fn input_row(&self, oh: usize, kh: usize) -> Option<usize> {
        tap(oh, kh, self.stride[0], self.pad_top(), self.in_h)
    }

    /// Input column read by output column `ow` and kernel column `kw`, or `None` in the padding.
    pub fn input_col(&self, ow: usize, kw: usize) -> Option<usize> {
        tap(ow, kw, self.stride[1], self.pad_left(), self.in_w)
    }
}

fn tap(out: usize, k: usize, stride: usize, pad: usize, size: usize) -> Option<usize> {
    (out * stride + k).checked_sub(pad).filter(|&i| i < size)
}

// ---------------------------------------------------------------- CPU reference
//
// The references are matrix products over the im2col matrix (one row per
// output pixel, one column per weight tap `(kh, kw, ci)`), so ndarray's
// `dot` (matrixmultiply for f32/f64) does the arithmetic. The
// `*_naive_cpu` functions below them are the plain-loop definitions; the
// tests hold the fast references to them.

fn check_cpu(what: &str, got: &[usize], want: &[usize]) {
    assert_eq!(got, want, "conv2d reference: {what} shape");
}

/// `a` (`[N,H,W,C]` in standard layout, from `as_standard_layout`) viewed
/// as the matrix `[N·H·W, C]`.
fn as_matrix<'a, A: NdFloat>(a: &'a CowArray<'_, A, Ix4>) -> ArrayView2<'a, A> {
    let (n, h, w, c) = a.dim();
    a.view()
        .into_shape_with_order((n * h * w, c))
        .expect("standard layout reshapes")
}

/// Calls `f(row, col, at, len)` for every output pixel and kernel row
/// whose taps reach into the input: `row` is the pixel's im2col row
/// `(n, oh, ow)`, `col` the column of its first in-bounds tap
/// `(kh, kw0, 0)` and `at` the flat NHWC index of `x[n, ih, iw0, 0]`. The
/// in-bounds taps of a kernel row are consecutive, and so are their inputs,
/// so both runs are `len` contiguous values in the same order.
fn for_each_run(g: &Conv2dGeometry, mut f: impl FnMut(usize, usize, usize, usize)) {
    let [batch, out_h, out_w, _] = g.output_shape();
    let [k_h, k_w] = g.kernel;
    let c = g.in_c;
    // Per output column: the first in-bounds kw, its input column, and how many.
    let runs: Vec<Option<(usize, usize, usize)>> = (0..out_w)
        .map(|ow| {
            let mut taps = (0..k_w).filter_map(|kw| Some((kw, g.input_col(ow, kw)?)));
            let (kw0, iw0) = taps.next()?;
            Some((kw0, iw0, 1 + taps.count()))
        })
        .collect();
    let mut row = 0;
    for n in 0..batch {
        for oh in 0..out_h {
            for &run in &runs {
                for kh in 0..k_h {
                    let (Some(ih), Some((kw0, iw0, taps))) = (g.input_row(oh, kh), run) else {
                        continue;
                    };
                    let at = ((n * g.in_h + ih) * g.in_w + iw0) * c;
                    f(row, (kh * k_w + kw0) * c, at, taps * c);
                }
                row += 1;
            }
        }
    }
}

/// The im2col matrix `[N·OH·OW, KH·KW·Cin]`: each row holds the input
/// window its output pixel reads, zeros in the padding, so that the
/// convolution is `cols · w` with w viewed as `[KH·KW·Cin, Cout]`.
fn im2col<A: NdFloat>(x: &ArrayView4<A>, g: &Conv2dGeometry) -> Array2<A> {
    let x = x.as_standard_layout();
    let x = x.as_slice().expect("standard layout");
    let [batch, out_h, out_w, _] = g.output_shape();
    let taps = g.kernel[0] * g.kernel[1] * g.in_c;
    let mut cols = Array2::zeros((batch * out_h * out_w, taps));
    let dst = cols.as_slice_mut().expect("fresh array");
    for_each_run(g, |row, col, at, len| {
        copy_run(&mut dst[row * taps + col..][..len], &x[at..][..len]);
    });
    cols
}

/// Copies one run of im2col. Runs are a kernel row's taps times Cin (3
/// floats for the seed's 3x3 conv on one channel): a `memcpy` call per run
/// cost more than the copy itself, so short runs are copied in place by a
/// fixed-size copy per length.
fn copy_run<A: Copy>(dst: &mut [A], src: &[A]) {
    fn fixed<A: Copy, const N: usize>(dst: &mut [A], src: &[A]) {
        let src: &[A; N] = src.try_into().expect("run lengths agree");
        let dst: &mut [A; N] = dst.try_into().expect("run lengths agree");
        *dst = *src;
    }
    match dst.len() {
        1 => fixed::<A, 1>(dst, src),
        2 => fixed::<A, 2>(dst, src),
        3 => fixed::<A, 3>(dst, src),
        4 => fixed::<A, 4>(dst, src),
        5 => fixed::<A, 5>(dst, src),
        6 => fixed::<A, 6>(dst, src),
        7 => fixed::<A, 7>(dst, src),
        8 => fixed::<A, 8>(dst, src),
        _ => dst.copy_from_slice(src),
    }
}

/// The adjoint of `im2col`: adds each column entry to the input element it
/// was copied from (`dx` is NHWC in standard layout).
fn col2im<A: NdFloat>(dcols: &Array2<A>, dx: &mut [A], g: &Conv2dGeometry) {
    let taps = dcols.ncols();
    let src = dcols.as_slice().expect("standard layout");
    for_each_run(g, |row, col, at, len| {
        for (d, &s) in dx[at..][..len]
            .iter_mut()
            .zip(&src[row * taps + col..][..len])
        {
            *d += s;
        }
    });
}

/// `y[n,oh,ow,co] = b[co] + Σ_{kh,kw,ci} x[n,ih,iw,ci] · w[kh,kw,ci,co]`,
/// computed as `b + im2col(x) · w`, the halves of a large batch on two
/// threads (`ops::threads::on_batch_halves`, as the recurrent references;
/// each row's product is the same either way).
pub fn conv2d_forward_cpu<A: NdFloat>(
    x: &ArrayView4<A>,
    w: &ArrayView4<A>,
    b: &ArrayView1<A>,
    g: &Conv2dGeometry,
) -> Array4<A> {
    check_cpu("x", x.shape(), &g.input_shape());
    check_cpu("w", w.shape(), &g.weight_shape());
    check_cpu("b", b.shape(), &g.bias_shape());
    let w = w.as_standard_layout();
    let w = as_matrix(&w);
    // y starts as the bias in every row: one row, then the filled part
    // copied after itself until all rows are there (a broadcasting `assign`
    // over the zeroed output cost more than the product, and a copy per row
    // is one `memcpy` call per pixel).
    let [_, out_h, out_w, _] = g.output_shape();
    let pixels = out_h * out_w;
    let len = g.batch * pixels * g.out_c;
    let mut y = Vec::with_capacity(len);
    y.extend(b.iter().copied().take(len));
    while y.len() < len {
        y.extend_from_within(..y.len().min(len - y.len()));
    }
    let mut y = Array2::from_shape_vec((g.batch * pixels, g.out_c), y).expect("one row per pixel");
    // Each half of the batch: its im2col rows times w, into its rows of y.
    let run = |(x, mut y): (ArrayView4<A>, ArrayViewMut2<A>)| {
        let cols = im2col(&x, &g.with_batch(x.dim().0));
        general_mat_mul(A::one(), &cols, &w, A::one(), &mut y);
    };
    on_batch_halves(
        g.batch,
        (x.view(), y.view_mut()),
        |(x, y), at| {
            let (x0, x1) = x.split_at(Axis(0), at);
            let (y0, y1) = y.split_at(Axis(0), at * pixels);
            ((x0, y0), (x1, y1))
        },
        run,
    );
    y.into_shape_with_order(g.output_shape())
        .expect("standard layout reshapes")
}

/// `dx[n,ih,iw,ci] += Σ dy[n,oh,ow,co] · w[kh,kw,ci,co]` over the terms
/// that read it, computed as `col2im(dy · wᵀ)`.
pub fn conv2d_backward_input_cpu<A: NdFloat>(
    dx: &mut Array4<A>,
    dy: &ArrayView4<A>,
    w: &ArrayView4<A>,
    g: &Conv2dGeometry,
) {
    check_cpu("dx", dx.shape(), &g.input_shape());
    check_cpu("dy", dy.shape(), &g.output_shape());
    check_cpu("w", w.shape(), &g.weight_shape());
    let (dy, w) = (dy.as_standard_layout(), w.as_standard_layout());
    let dcols = as_matrix(&dy).dot(&as_matrix(&w).t());
    match dx.as_slice_mut() {
        Some(dx) => col2im(&dcols, dx, g),
        None => {
            let mut grad = Array4::zeros(g.input_shape());
            col2im(&dcols, grad.as_slice_mut().expect("fresh array"), g);
            *dx += &grad;
        }
    }
}

/// `dw[kh,kw,ci,co] += Σ_{n,oh,ow} x[n,ih,iw,ci] · dy[n,oh,ow,co]`,
/// computed as `im2col(x)ᵀ · dy`, per half of a large batch on two threads.
pub fn conv2d_backward_weight_cpu<A: NdFloat>(
    dw: &mut Array4<A>,
    dy: &ArrayView4<A>,
    x: &ArrayView4<A>,
    g: &Conv2dGeometry,
) {
    check_cpu("dw", dw.shape(), &g.weight_shape());
    check_cpu("dy", dy.shape(), &g.output_shape());
    check_cpu("x", x.shape(), &g.input_shape());
    let dy = dy.as_standard_layout();
    // Each half of the batch: its im2col rows' product into a sum of its
    // own; the halves' sums are added in order (deterministic).
    let half = |x: &ArrayView4<A>, dy: &ArrayView4<A>| {
        im2col(x, &g.with_batch(x.dim().0))
            .t()
            .dot(&as_matrix(&dy.as_standard_layout()))
    };
    let grad = if g.batch < CPU_SPLIT_MIN_BATCH {
        half(x, &dy.view())
    } else {
        let at = g.batch / 2;
        let (x0, x1) = x.view().split_at(Axis(0), at);
        let (dy0, dy1) = dy.view().split_at(Axis(0), at);
        let (g0, g1) = std::thread::scope(|s| {
            let second = s.spawn(|| half(&x1, &dy1));
            (half(&x0, &dy0), second.join().expect("no panic"))
        });
        g0 + g1
    };
    *dw += &grad
        .into_shape_with_order(g.weight_shape())
        .expect("standard layout reshapes");
}

/// `db[co] += Σ_{n,oh,ow} dy[n,oh,ow,co]`.
pub fn conv2d_backward_bias_cpu<A: NdFloat>(
    db: &mut Array1<A>,
    dy: &ArrayView4<A>,
    g: &Conv2dGeometry,
) {
    check_cpu("db", db.shape(), &g.bias_shape());
    check_cpu("dy", dy.shape(), &g.output_shape());
    let dy = dy.as_standard_layout();
    let dy = dy.as_slice().expect("standard layout");
    // Rows summed in order, as `sum_axis(Axis(0))` does, on contiguous
    // rows (ndarray's lane-by-lane version was 10x slower).
    let mut sum = vec![A::zero(); g.out_c];
    for row in dy.chunks_exact(g.out_c) {
        sum.iter_mut().zip(row).for_each(|(s, &v)| *s += v);
    }
    db.iter_mut().zip(&sum).for_each(|(d, &s)| *d += s);
}

/// The forward by definition, one bounds-checked term at a time: the
/// obviously-correct version `conv2d_forward_cpu` is tested against.
pub fn conv2d_forward_naive_cpu<A: NdFloat>(
    x: &ArrayView4<A>,
    w: &ArrayView4<A>,
    b: &ArrayView1<A>,
    g: &Conv2dGeometry,
) -> Array4<A> {
    check_cpu("x", x.shape(), &g.input_shape());
    check_cpu("w", w.shape(), &g.weight_shape());
    check_cpu("b", b.shape(), &g.bias_shape());
    let [batch, out_h, out_w, out_c] = g.output_shape();
    let mut y = Array4::zeros((batch, out_h, out_w, out_c));
    for n in 0..batch {
        for oh in 0..out_h {
            for ow in 0..out_w {
                for co in 0..out_c {
                    let mut acc = b[co];
                    for kh in 0..g.kernel[0] {
                        let Some(ih) = g.input_row(oh, kh) else {
                            continue;
                        };
                        for kw in 0..g.kernel[1] {
                            let Some(iw) = g.input_col(ow, kw) else {
                                continue;
                            };
                            for ci in 0..g.in_c {
                                acc += x[[n, ih, iw, ci]] * w[[kh, kw, ci, co]];
                            }
                        }
                    }
                    y[[n, oh, ow, co]] = acc;
                }
            }
        }
    }
    y
}

/// Calls `f(n, oh, ow, co, kh, kw, ci, ih, iw)` for every product term of
/// the forward sum; the naive backward references scatter along the same
/// loops (a formulation independent of the GPU's gathers and of im2col).
fn for_each_term(g: &Conv2dGeometry, mut f: impl FnMut([usize; 9])) {
    let [batch, out_h, out_w, out_c] = g.output_shape();
    for n in 0..batch {
        for oh in 0..out_h {
            for ow in 0..out_w {
                for co in 0..out_c {
                    for kh in 0..g.kernel[0] {
                        let Some(ih) = g.input_row(oh, kh) else {
                            continue;
                        };
                        for kw in 0..g.kernel[1] {
                            let Some(iw) = g.input_col(ow, kw) else {
                                continue;
                            };
                            for ci in 0..g.in_c {
                                f([n, oh, ow, co, kh, kw, ci, ih, iw]);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The input gradient by definition (scatter over the forward's terms).
pub fn conv2d_backward_input_naive_cpu<A: NdFloat>(
    dx: &mut Array4<A>,
    dy: &ArrayView4<A>,
    w: &ArrayView4<A>,
    g: &Conv2dGeometry,
) {
    check_cpu("dx", dx.shape(), &g.input_shape());
    check_cpu("dy", dy.shape(), &g.output_shape());
    check_cpu("w", w.shape(), &g.weight_shape());
    for_each_term(g, |[n, oh, ow, co, kh, kw, ci, ih, iw]| {
        dx[[n, ih, iw, ci]] += dy[[n, oh, ow, co]] * w[[kh, kw, ci, co]];
    });
}

/// The weight gradient by definition (scatter over the forward's terms).
pub fn conv2d_backward_weight_naive_cpu<A: NdFloat>(
    dw: &mut Array4<A>,
    dy: &ArrayView4<A>,
    x: &ArrayView4<A>,
    g: &Conv2dGeometry,
) {
    check_cpu("dw", dw.shape(), &g.weight_shape());
    check_cpu("dy", dy.shape(), &g.output_shape());
    check_cpu("x", x.shape(), &g.input_shape());
    for_each_term(g, |[n, oh, ow, co, kh, kw, ci, ih, iw]| {
        dw[[kh, kw, ci, co]] += x[[n, ih, iw, ci]] * dy[[n, oh, ow, co]];
    });
}

/// The bias gradient by definition, one element at a time.
pub fn conv2d_backward_bias_naive_cpu<A: NdFloat>(
    db: &mut Array1<A>,
    dy: &ArrayView4<A>,
    g: &Conv2dGeometry,
) {
    check_cpu("db", db.shape(), &g.bias_shape());
    check_cpu("dy", dy.shape(), &g.output_shape());
    for ((_, _, _, co), &v) in dy.indexed_iter() {
        db[co] += v;
    }
}

// ---------------------------------------------------------------- GPU

static SHADER: Shader = crate::shader!("conv2d");
/// Lanes of the pixel kernels (`WG` in the shader).
const WORKGROUP: usize = 64;
/// Pixels per invocation of the pixel kernels (`PT`).
const PIXEL_TILE: usize = 4;
/// Channels per invocation of every kernel but the bias gradient (`CT`).
const CHANNEL_TILE: usize = 8;
/// Taps per workgroup of the weight gradient (`TT`).
const TAP_TILE: usize = 3;

use Access::{Read, ReadWrite};
static FORWARD: KernelSpec = KernelSpec {
    shader: &SHADER,
    entry: "conv2d_forward",
    bindings: &[Read, Read, Read, ReadWrite],
};
static BACKWARD_INPUT: KernelSpec = KernelSpec {
    shader: &SHADER,
    entry: "conv2d_backward_input",
    bindings: &[ReadWrite, Read, Read],
};
static BACKWARD_WEIGHT: KernelSpec = KernelSpec {
    shader: &SHADER,
    entry: "conv2d_backward_weight",
    bindings: &[ReadWrite, Read, Read],
};
static FORWARD_DIRECT: KernelSpec = KernelSpec {
    shader: &SHADER,
    entry: "conv2d_forward_direct",
    bindings: &[Read, Read, Read, ReadWrite],
};
static BACKWARD_INPUT_DIRECT: KernelSpec = KernelSpec {
    shader: &SHADER,
    entry: "conv2d_backward_input_direct",
    bindings: &[ReadWrite, Read, Read],
};
static BACKWARD_WEIGHT_DIRECT: KernelSpec = KernelSpec {
    shader: &SHADER,
    entry: "conv2d_backward_weight_direct",
    bindings: &[ReadWrite, Read, Read],
};
static BACKWARD_BIAS_DIRECT: KernelSpec = KernelSpec {
    shader: &SHADER,
    entry: "conv2d_backward_bias_direct",
    bindings: &[ReadWrite, Read],
};
static FLIP_WEIGHT: KernelSpec = KernelSpec {
    shader: &SHADER,
    entry: "conv2d_flip_weight",
    bindings: &[ReadWrite, Read],
};
static BACKWARD_BIAS: KernelSpec = KernelSpec {
    shader: &SHADER,
    entry: "conv2d_backward_bias",
    bindings: &[ReadWrite, Read],
};

/// Invocations per workgroup of the direct forward and input gradient (`DL`).
const DIRECT_LANES: usize = 8;
/// Pixels per invocation of the direct kernels (`DP`).
const DIRECT_PIXELS: usize = 16;
/// Output channels per invocation of the direct forward and weight gradient (`DCH`).
const DIRECT_CHANNELS: usize = 16;
/// Taps per invocation of the direct weight gradient (`DWT`).
const DIRECT_TAPS: usize = 9;

/// Which kernel family a call uses: the register-blocked `*_direct`
/// kernels need vec4 channel rows (`Cout % 4 == 0`; the input gradient
/// also stride 1); the others take any geometry. The input gradient at
/// stride 1 with vec4 input-channel rows (`Cin % 4 == 0`) is `Flipped`:
/// a forward conv of dy over the flipped weights (before the others).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Conv2dVariant {
    Direct,
    General,
    Flipped,
}

impl Conv2dVariant {
    /// The variant the launchers pick for `kernel` (`"forward"`,
    /// `"backward_input"`, `"backward_weight"` or `"backward_bias"`) at
    /// geometry `g`.
    pub fn for_kernel(kernel: &str, g: &Conv2dGeometry) -> Self {
        let aligned = g.out_c.is_multiple_of(4);
        if kernel == "backward_input" && g.stride == [1, 1] && g.in_c.is_multiple_of(4) {
            return Self::Flipped;
        }
        let ok = match kernel {
            "backward_input" => aligned && g.stride == [1, 1],
            _ => aligned,
        };
        if ok {
            Self::Direct
        } else {
            Self::General
        }
    }
}

/// The `PADDED` override constant: Valid windows never leave the input.
fn padded(g: &Conv2dGeometry) -> f64 {
    f64::from(u8::from(g.padding == Padding::Same))
}

/// Folds `groups` workgroups into `[x, z]` with `x` within the per-dimension
/// limit (the shader recovers the index as `wid.z * nwg.x + wid.x`, or with
/// `y` in place of `z`). Too many is reported by `prepare` as `LimitExceeded`.
fn fold(ctx: &GpuContext, groups: usize) -> (u32, u32) {
    let max = ctx.limits.max_compute_workgroups_per_dimension.max(1) as usize;
    let x = groups.clamp(1, max);
    let rest = groups.div_ceil(x).min(u32::MAX as usize);
    (x as u32, rest as u32)
}

/// The pixel kernels' grid: x (folded with z) over blocks of
/// `WORKGROUP * PIXEL_TILE` pixels, y over blocks of `CHANNEL_TILE` channels.
fn pixel_grid(ctx: &GpuContext, pixels: usize, channels: usize) -> Grid {
    let (x, z) = fold(ctx, pixels.div_ceil(WORKGROUP * PIXEL_TILE));
    let y = channels.div_ceil(CHANNEL_TILE).min(u32::MAX as usize) as u32;
    Grid::Workgroups([x, y, z])
}

/// The reduction kernels' grid: one workgroup per output (block), folded
/// into 2-D (the shader recovers it as `wid.y * nwg.x + wid.x`).
fn reduction_grid(ctx: &GpuContext, outputs: usize) -> Grid {
    let (x, y) = fold(ctx, outputs);
    Grid::Workgroups([x, y, 1])
}

/// `y = conv(x, w) + b`: one invocation per 4 output pixels x 8 channels.
/// `y` may be a flattened view (same element count).
pub fn conv2d_forward(
    ctx: &GpuContext,
    x: &GpuTensor,
    w: &GpuTensor,
    b: &GpuTensor,
    y: &GpuTensor,
    g: &Conv2dGeometry,
) -> Result<Dispatch> {
    conv2d_forward_with(ctx, x, w, b, y, g, false)
}

/// `y = max(conv(x, w) + b, 0)` in one pass (Keras' `Conv2D(activation=
/// 'relu')`): [`conv2d_forward`] with the ReLU in its store.
pub fn conv2d_forward_relu(
    ctx: &GpuContext,
    x: &GpuTensor,
    w: &GpuTensor,
    b: &GpuTensor,
    y: &GpuTensor,
    g: &Conv2dGeometry,
) -> Result<Dispatch> {
    conv2d_forward_with(ctx, x, w, b, y, g, true)
}

fn conv2d_forward_with(
    ctx: &GpuContext,
    x: &GpuTensor,
    w: &GpuTensor,
    b: &GpuTensor,
    y: &GpuTensor,
    g: &Conv2dGeometry,
    relu: bool,
) -> Result<Dispatch> {
    let op = FORWARD.entry;
    let relu = ("RELU", f64::from(u8::from(relu)));
    expect_shape(op, "x", &x.shape, &g.input_shape())?;
    expect_shape(op, "w", &w.shape, &g.weight_shape())?;
    expect_shape(op, "b", &b.shape, &g.bias_shape())?;
    expect_numel(op, "y", &y.shape, numel(&g.output_shape()))?;
    if Conv2dVariant::for_kernel("forward", g) == Conv2dVariant::Direct {
        let pixels = g.batch * g.out_h() * g.out_w();
        let (gx, gz) = fold(ctx, pixels.div_ceil(DIRECT_LANES * DIRECT_PIXELS));
        let gy = g.out_c.div_ceil(DIRECT_CHANNELS) as u32;
        return ctx.prepare(
            &FORWARD_DIRECT,
            &[("PADDED", padded(g)), relu],
            &g.params(),
            &[x, w, b, y],
            Grid::Workgroups([gx, gy, gz]),
        );
    }
    ctx.prepare(
        &FORWARD,
        &[relu],
        &g.params(),
        &[x, w, b, y],
        pixel_grid(ctx, g.batch * g.out_h() * g.out_w(), g.out_c),
    )
}

/// `dx += ∂(Σ dy·y)/∂x`. `dy` may be a flattened view.
///
/// [`Conv2dVariant::Flipped`] (stride 1, `Cin % 4 == 0`): two
/// dispatches, `conv2d_flip_weight` (w' = w flipped, channels swapped, into
/// a buffer this call allocates) and `conv2d_forward_direct` accumulating
/// `conv(dy, w')` into dx. Otherwise one gather kernel: each dx element is
/// owned by one invocation, which sums over the (kh, kw, co) whose windows
/// read it.
pub fn conv2d_backward_input(
    ctx: &GpuContext,
    dx: &GpuTensor,
    dy: &GpuTensor,
    w: &GpuTensor,
    g: &Conv2dGeometry,
) -> Result<Vec<Dispatch>> {
    let op = BACKWARD_INPUT.entry;
    expect_shape(op, "dx", &dx.shape, &g.input_shape())?;
    expect_numel(op, "dy", &dy.shape, numel(&g.output_shape()))?;
    expect_shape(op, "w", &w.shape, &g.weight_shape())?;
    let variant = Conv2dVariant::for_kernel("backward_input", g);
    if variant == Conv2dVariant::Flipped {
        let [kh, kw, cin, cout] = g.weight_shape();
        let flipped = ctx.zeros(&[kh, kw, cout, cin], crate::tensor::DType::F32)?;
        let flip = ctx.prepare(
            &FLIP_WEIGHT,
            &[],
            &g.params(),
            &[&flipped, w],
            Grid::linear(flipped.numel(), WORKGROUP as u32),
        )?;
        let t = transposed_params(g);
        let pixels = g.batch * g.in_h * g.in_w;
        let (gx, gz) = fold(ctx, pixels.div_ceil(DIRECT_LANES * DIRECT_PIXELS));
        let gy = g.in_c.div_ceil(DIRECT_CHANNELS) as u32;
        // Bindings x, w, b, y: the bias binding is not read under ACCUMULATE.
        let conv = ctx.prepare(
            &FORWARD_DIRECT,
            &[("PADDED", 1.0), ("RELU", 0.0), ("ACCUMULATE", 1.0)],
            &t,
            &[dy, &flipped, &flipped, dx],
            Grid::Workgroups([gx, gy, gz]),
        )?;
        return Ok(vec![flip, conv]);
    }
    if variant == Conv2dVariant::Direct {
        let pixels = g.batch * g.in_h * g.in_w;
        let (gx, gz) = fold(ctx, pixels.div_ceil(DIRECT_LANES * DIRECT_PIXELS));
        let cib = if g.in_c == 1 { 1 } else { 4 };
        let gy = g.in_c.div_ceil(cib) as u32;
        return Ok(vec![ctx.prepare(
            &BACKWARD_INPUT_DIRECT,
            &[("CIB", cib as f64)],
            &g.params(),
            &[dx, dy, w],
            Grid::Workgroups([gx, gy, gz]),
        )?]);
    }
    Ok(vec![ctx.prepare(
        &BACKWARD_INPUT,
        &[],
        &g.params(),
        &[dx, dy, w],
        pixel_grid(ctx, g.batch * g.in_h * g.in_w, g.in_c),
    )?])
}

/// The input gradient's geometry as a forward conv (stride 1): input dy
/// `[N,OH,OW,Cout]`, output dx `[N,H,W,Cin]`, padding `K-1-pad` above and
/// left (the padding below and right follows from the sizes).
pub fn transposed_params(g: &Conv2dGeometry) -> Conv2dParams {
    let p = g.params();
    Conv2dParams {
        batch: p.batch,
        in_h: p.out_h,
        in_w: p.out_w,
        in_c: p.out_c,
        out_h: p.in_h,
        out_w: p.in_w,
        out_c: p.in_c,
        k_h: p.k_h,
        k_w: p.k_w,
        stride_h: 1,
        stride_w: 1,
        pad_top: p.k_h - 1 - p.pad_top,
        pad_left: p.k_w - 1 - p.pad_left,
        _pad: [0; 3],
    }
}

/// `dw += Σ_{n,oh,ow} x ⊗ dy`: one workgroup per block of 3 taps (kh, kw, ci)
/// x 8 output channels, its lanes splitting the sum over n, oh, ow and
/// combining it with a fixed tree (deterministic).
pub fn conv2d_backward_weight(
    ctx: &GpuContext,
    dw: &GpuTensor,
    dy: &GpuTensor,
    x: &GpuTensor,
    g: &Conv2dGeometry,
) -> Result<Dispatch> {
    let op = BACKWARD_WEIGHT.entry;
    expect_shape(op, "dw", &dw.shape, &g.weight_shape())?;
    expect_numel(op, "dy", &dy.shape, numel(&g.output_shape()))?;
    expect_shape(op, "x", &x.shape, &g.input_shape())?;
    if Conv2dVariant::for_kernel("backward_weight", g) == Conv2dVariant::Direct {
        let taps = g.kernel[0] * g.kernel[1] * g.in_c;
        let gx = taps.div_ceil(DIRECT_TAPS).min(u32::MAX as usize) as u32;
        let gy = g.out_c.div_ceil(DIRECT_CHANNELS).min(u32::MAX as usize) as u32;
        return ctx.prepare(
            &BACKWARD_WEIGHT_DIRECT,
            &[("PADDED", padded(g))],
            &g.params(),
            &[dw, dy, x],
            Grid::Workgroups([gx, gy, 1]),
        );
    }
    ctx.prepare(
        &BACKWARD_WEIGHT,
        &[],
        &g.params(),
        &[dw, dy, x],
        reduction_grid(
            ctx,
            (g.kernel[0] * g.kernel[1] * g.in_c).div_ceil(TAP_TILE)
                * g.out_c.div_ceil(CHANNEL_TILE),
        ),
    )
}

/// `db += Σ_{n,oh,ow} dy`: one workgroup per db element, reduced like the
/// weight gradient.
pub fn conv2d_backward_bias(
    ctx: &GpuContext,
    db: &GpuTensor,
    dy: &GpuTensor,
    g: &Conv2dGeometry,
) -> Result<Dispatch> {
    let op = BACKWARD_BIAS.entry;
    expect_shape(op, "db", &db.shape, &g.bias_shape())?;
    expect_numel(op, "dy", &dy.shape, numel(&g.output_shape()))?;
    if Conv2dVariant::for_kernel("backward_bias", g) == Conv2dVariant::Direct {
        let gx = g.out_c.div_ceil(DIRECT_CHANNELS).min(u32::MAX as usize) as u32;
        return ctx.prepare(
            &BACKWARD_BIAS_DIRECT,
            &[],
            &g.params(),
            &[db, dy],
            Grid::Workgroups([gx, 1, 1]),
        );
    }
    ctx.prepare(
        &BACKWARD_BIAS,
        &[],
        &g.params(),
        &[db, dy],
        reduction_grid(ctx, g.out_c),
    )
}
