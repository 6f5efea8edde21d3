//! 2-D max and average pooling (Keras `MaxPooling2D` / `AveragePooling2D`
//! with Valid padding): NHWC input `[N,H,W,C]`, output `[N,OH,OW,C]` with
//! `OH = floor((H - pool_h) / stride_h) + 1`; the stride is a parameter
//! (Keras defaults it to the pool size). CPU reference and GPU launchers,
//! forward then backward.
//!
//! Max pooling saves, per output element, the flat row-major (NHWC) index
//! into x of the window's maximum as a u32 (`argmax`); on ties the first
//! maximum in scan order (kh outer, kw inner) wins. Its backward gathers:
//! each dx element sums dy over the windows whose argmax it is, so
//! overlapping windows (stride < pool) are exact and deterministic. When
//! windows do not overlap (stride ≥ pool, Keras' default) each dx element
//! lies in at most one window, and the backward runs over windows instead,
//! adding dy into dx at argmax: one writer per element, a quarter of the
//! invocations at pool 2×2.
//! Comparisons are IEEE `>`: a NaN is never taken as a new maximum.
//!
//! Autograd: max pooling saves argmax (not x) and runs `maxpool_backward`;
//! average pooling saves nothing and runs `avgpool_backward`. Both accumulate.

use ndarray::{Array4, ArrayView4, NdFloat};

use crate::error::{Error, Result};
use crate::gpu::{Access, Dispatch, GpuContext, GpuTensor, Grid, KernelSpec, Shader};
use crate::tensor::{expect_numel, expect_shape, numel, DType};

/// Uniform parameters, mirrored by `Params` in `shaders/pool2d.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Pool2dParams {
    pub batch: u32,
    pub in_h: u32,
    pub in_w: u32,
    pub channels: u32,
    pub out_h: u32,
    pub out_w: u32,
    pub pool_h: u32,
    pub pool_w: u32,
    pub stride_h: u32,
    pub stride_w: u32,
    /// `ceil(pool / stride)`: the most windows one input row (column) lies in.
    pub win_h: u32,
    pub win_w: u32,
}

/// Sizes of one pooling: input, pool size and stride (Valid padding).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Pool2dGeometry {
    pub batch: usize,
    pub in_h: usize,
    pub in_w: usize,
    pub channels: usize,
    /// `[PH, PW]`
    pub pool: [usize; 2],
    /// `[SH, SW]`
    pub stride: [usize; 2],
}

impl Pool2dGeometry {
    /// Checks the sizes: non-zero pool, stride and channels, a pool no
    /// larger than the input, and every tensor indexable in u32.
    pub fn new(input: [usize; 4], pool: [usize; 2], stride: [usize; 2]) -> Result<Self> {
        let [batch, in_h, in_w, channels] = input;
        let describe = || format!("input {input:?}, pool {pool:?}, stride {stride:?}");
        if pool.contains(&0) || stride.contains(&0) || channels == 0 {
            return Err(Error::shape(
                "pool2d",
                format!("zero pool size, stride or channel count: {}", describe()),
            ));
        }
        if pool[0] > in_h || pool[1] > in_w {
            return Err(Error::shape(
                "pool2d",
                format!("the pool window does not fit the input: {}", describe()),
            ));
        }
        if numel(&input) > u32::MAX as usize {
            return Err(Error::Unsupported {
                op: "pool2d".into(),
                what: format!("an input of {} elements", numel(&input)),
                why: "argmax and the kernels index with u32".into(),
            });
        }
        Ok(Self {
            batch,
            in_h,
            in_w,
            channels,
            pool,
            stride,
        })
    }

    /// Keras' default: the stride equals the pool size.
    pub fn keras(input: [usize; 4], pool: [usize; 2]) -> Result<Self> {
        Self::new(input, pool, pool)
    }

    pub fn out_h(&self) -> usize {
        (self.in_h - self.pool[0]) / self.stride[0] + 1
    }

    pub fn out_w(&self) -> usize {
        (self.in_w - self.pool[1]) / self.stride[1] + 1
    }

    pub fn input_shape(&self) -> [usize; 4] {
        [self.batch, self.in_h, self.in_w, self.channels]
    }

    pub fn output_shape(&self) -> [usize; 4] {
        [self.batch, self.out_h(), self.out_w(), self.channels]
    }

    pub fn params(&self) -> Pool2dParams {
        Pool2dParams {
            batch: self.batch as u32,
            in_h: self.in_h as u32,
            in_w: self.in_w as u32,
            channels: self.channels as u32,
            out_h: self.out_h() as u32,
            out_w: self.out_w() as u32,
            pool_h: self.pool[0] as u32,
            pool_w: self.pool[1] as u32,
            stride_h: self.stride[0] as u32,
            stride_w: self.stride[1] as u32,
            win_h: self.pool[0].div_ceil(self.stride[0]) as u32,
            win_w: self.pool[1].div_ceil(self.stride[1]) as u32,
        }
    }
}

// ---------------------------------------------------------------- CPU reference

fn check_cpu(what: &str, got: &[usize], want: &[usize]) {
    assert_eq!(got, want, "pool2d reference: {what} shape");
}

/// Calls `f(out, input)` with the output position and each input position of
/// its window, in scan order (kh outer, kw inner).
fn for_each_window(g: &Pool2dGeometry, mut f: impl FnMut([usize; 4], [usize; 4])) {
    let [batch, out_h, out_w, channels] = g.output_shape();
    for n in 0..batch {
        for oh in 0..out_h {
            for ow in 0..out_w {
                for c in 0..channels {
                    for kh in 0..g.pool[0] {
                        for kw in 0..g.pool[1] {
                            let ih = oh * g.stride[0] + kh;
                            let iw = ow * g.stride[1] + kw;
                            f([n, oh, ow, c], [n, ih, iw, c]);
                        }
                    }
                }
            }
        }
    }
}

/// Flat row-major index of `at` in `shape`.
fn flat(shape: [usize; 4], at: [usize; 4]) -> usize {
    ((at[0] * shape[1] + at[1]) * shape[2] + at[2]) * shape[3] + at[3]
}

/// Position of flat index `i` in `shape`.
fn unflat(shape: [usize; 4], i: usize) -> [usize; 4] {
    let c = i % shape[3];
    let t = i / shape[3];
    let w = t % shape[2];
    let t = t / shape[2];
    [t / shape[1], t % shape[1], w, c]
}

/// `next = x > best ? x : best` and `next_tap = x > best ? tap : best_tap`
/// per element (IEEE `>`: a NaN in x never wins). In f32 the selects are
/// written as bit masks: the same result, but LLVM's cost model only
/// vectorises them in that form (SSE2 has no blend).
fn take_greater<A: NdFloat>(
    x: &[A],
    best: &[A],
    best_tap: &[u32],
    tap: u32,
    next: &mut [A],
    next_tap: &mut [u32],
) {
    let c = x.len();
    let (best, best_tap) = (&best[..c], &best_tap[..c]);
    let (next, next_tap) = (&mut next[..c], &mut next_tap[..c]);
    let f32_bits = |v: A| v.to_f32().unwrap_or(f32::NAN).to_bits();
    for ch in 0..c {
        let (v, b, bt) = (x[ch], best[ch], best_tap[ch]);
        let greater = v > b;
        if is_f32::<A>() {
            let m = (greater as u32).wrapping_neg();
            let bits = (f32_bits(v) & m) | (f32_bits(b) & !m);
            next[ch] = A::from(f32::from_bits(bits)).unwrap_or_else(A::nan);
            next_tap[ch] = (tap & m) | (bt & !m);
        } else {
            next[ch] = if greater { v } else { b };
            next_tap[ch] = if greater { tap } else { bt };
        }
    }
}

fn is_f32<A: 'static>() -> bool {
    std::any::TypeId::of::<A>() == std::any::TypeId::of::<f32>()
}

/// `(y, argmax)`: the window maxima and the flat index into x of each
/// (first maximum in scan order). Works on whole pixels: the first tap of a
/// window initialises all C channels, each later tap (in scan order)
/// replaces those it strictly exceeds.
///
/// Shaped to vectorise (after a ReLU, branches would be unpredictable):
/// per channel the running maximum and the number of its tap ping-pong
/// between two scratch rows through [`take_greater`] (a select stored back
/// where it was loaded becomes a conditional store, which LLVM scalarises);
/// the flat index is formed once from the winning tap.
pub fn maxpool_forward_cpu<A: NdFloat>(
    x: &ArrayView4<A>,
    g: &Pool2dGeometry,
) -> (Array4<A>, Array4<u32>) {
    check_cpu("x", x.shape(), &g.input_shape());
    let x = x.as_standard_layout();
    let x = x.as_slice().expect("standard layout");
    let shape = g.output_shape();
    let [batch, out_h, out_w, c] = shape;
    let mut ys = Vec::with_capacity(numel(&shape));
    let mut args = Vec::with_capacity(numel(&shape));
    let (mut best, mut next) = (vec![A::zero(); c], vec![A::zero(); c]);
    let (mut best_tap, mut next_tap) = (vec![0u32; c], vec![0u32; c]);
    // The flat index of channel 0 of each tap of the current window.
    let mut tap_at = Vec::with_capacity(g.pool[0] * g.pool[1]);
    for n in 0..batch {
        for oh in 0..out_h {
            for ow in 0..out_w {
                tap_at.clear();
                for kh in 0..g.pool[0] {
                    for kw in 0..g.pool[1] {
                        let (ih, iw) = (oh * g.stride[0] + kh, ow * g.stride[1] + kw);
                        tap_at.push(flat(g.input_shape(), [n, ih, iw, 0]));
                    }
                }
                best.copy_from_slice(&x[tap_at[0]..][..c]);
                best_tap.fill(0);
                for (tap, &at) in tap_at.iter().enumerate().skip(1) {
                    let xi = &x[at..][..c];
                    take_greater(xi, &best, &best_tap, tap as u32, &mut next, &mut next_tap);
                    std::mem::swap(&mut best, &mut next);
                    std::mem::swap(&mut best_tap, &mut next_tap);
                }
                ys.extend_from_slice(&best);
                args.extend(
                    best_tap
                        .iter()
                        .enumerate()
                        .map(|(ch, &tap)| (tap_at[tap as usize] + ch) as u32),
                );
            }
        }
    }
    (
        Array4::from_shape_vec(shape, ys).expect("one value per output"),
        Array4::from_shape_vec(shape, args).expect("one index per output"),
    )
}

/// `dx[argmax[o]] += dy[o]` for every output element o.
pub fn maxpool_backward_cpu<A: NdFloat>(
    dx: &mut Array4<A>,
    dy: &ArrayView4<A>,
    argmax: &ArrayView4<u32>,
    g: &Pool2dGeometry,
) {
    check_cpu("dx", dx.shape(), &g.input_shape());
    check_cpu("dy", dy.shape(), &g.output_shape());
    check_cpu("argmax", argmax.shape(), &g.output_shape());
    // Both iterators run in logical (row-major) order whatever the layouts.
    let pairs = argmax.iter().zip(dy.iter());
    match dx.as_slice_mut() {
        Some(dx) => pairs.for_each(|(&a, &d)| dx[a as usize] += d),
        None => pairs.for_each(|(&a, &d)| dx[unflat(g.input_shape(), a as usize)] += d),
    }
}

/// The max-pool forward by definition, one bounds-checked element at a
/// time: the obviously-correct version `maxpool_forward_cpu` is tested
/// against.
pub fn maxpool_forward_naive_cpu<A: NdFloat>(
    x: &ArrayView4<A>,
    g: &Pool2dGeometry,
) -> (Array4<A>, Array4<u32>) {
    check_cpu("x", x.shape(), &g.input_shape());
    let shape = g.output_shape();
    let mut y = Array4::<A>::zeros(shape);
    let mut argmax = Array4::<u32>::zeros(shape);
    let mut first = Array4::from_elem(shape, true);
    for_each_window(g, |o, i| {
        let v = x[i];
        if first[o] || v > y[o] {
            first[o] = false;
            y[o] = v;
            argmax[o] = flat(g.input_shape(), i) as u32;
        }
    });
    (y, argmax)
}

/// The max-pool backward by definition (4-D indexing).
pub fn maxpool_backward_naive_cpu<A: NdFloat>(
    dx: &mut Array4<A>,
    dy: &ArrayView4<A>,
    argmax: &ArrayView4<u32>,
    g: &Pool2dGeometry,
) {
    check_cpu("dx", dx.shape(), &g.input_shape());
    check_cpu("dy", dy.shape(), &g.output_shape());
    check_cpu("argmax", argmax.shape(), &g.output_shape());
    for (o, &a) in argmax.indexed_iter() {
        let o = [o.0, o.1, o.2, o.3];
        dx[unflat(g.input_shape(), a as usize)] += dy[o];
    }
}

/// The window means.
pub fn avgpool_forward_cpu<A: NdFloat>(x: &ArrayView4<A>, g: &Pool2dGeometry) -> Array4<A> {
    check_cpu("x", x.shape(), &g.input_shape());
    let mut y = Array4::<A>::zeros(g.output_shape());
    for_each_window(g, |o, i| y[o] += x[i]);
    let area = A::from(g.pool[0] * g.pool[1]).unwrap();
    y.mapv_inplace(|v| v / area);
    y
}

/// `dx[i] += dy[o] / (PH*PW)` for every window o containing i.
pub fn avgpool_backward_cpu<A: NdFloat>(
    dx: &mut Array4<A>,
    dy: &ArrayView4<A>,
    g: &Pool2dGeometry,
) {
    check_cpu("dx", dx.shape(), &g.input_shape());
    check_cpu("dy", dy.shape(), &g.output_shape());
    let area = A::from(g.pool[0] * g.pool[1]).unwrap();
    for_each_window(g, |o, i| dx[i] += dy[o] / area);
}

// ---------------------------------------------------------------- GPU

static SHADER: Shader = crate::shader!("pool2d");
/// Lanes per workgroup (`WG` in the shader).
const WORKGROUP: u32 = 64;

use Access::{Read, ReadWrite};
static MAX_FORWARD: KernelSpec = KernelSpec {
    shader: &SHADER,
    entry: "maxpool_forward",
    bindings: &[Read, ReadWrite, ReadWrite],
};
static MAX_FORWARD_VEC4: KernelSpec = KernelSpec {
    shader: &SHADER,
    entry: "maxpool_forward_vec4",
    bindings: &[Read, ReadWrite, ReadWrite],
};
static MAX_BACKWARD_DISJOINT_VEC4: KernelSpec = KernelSpec {
    shader: &SHADER,
    entry: "maxpool_backward_disjoint_vec4",
    bindings: &[ReadWrite, Read, Read],
};
static MAX_RELU_BACKWARD_DISJOINT: KernelSpec = KernelSpec {
    shader: &SHADER,
    entry: "maxpool_relu_backward_disjoint",
    bindings: &[ReadWrite, Read, Read, Read],
};
static MAX_RELU_BACKWARD_DISJOINT_VEC4: KernelSpec = KernelSpec {
    shader: &SHADER,
    entry: "maxpool_relu_backward_disjoint_vec4",
    bindings: &[ReadWrite, Read, Read, Read],
};
static MAX_BACKWARD: KernelSpec = KernelSpec {
    shader: &SHADER,
    entry: "maxpool_backward",
    bindings: &[ReadWrite, Read, Read],
};
static MAX_BACKWARD_DISJOINT: KernelSpec = KernelSpec {
    shader: &SHADER,
    entry: "maxpool_backward_disjoint",
    bindings: &[ReadWrite, Read, Read],
};
static AVG_FORWARD: KernelSpec = KernelSpec {
    shader: &SHADER,
    entry: "avgpool_forward",
    bindings: &[Read, ReadWrite],
};
static AVG_BACKWARD: KernelSpec = KernelSpec {
    shader: &SHADER,
    entry: "avgpool_backward",
    bindings: &[ReadWrite, Read],
};

fn expect_u32(op: &str, operand: &str, t: &GpuTensor) -> Result<()> {
    if t.dtype == DType::U32 {
        Ok(())
    } else {
        Err(Error::shape(
            op,
            format!("{operand} holds {:?} values, expected U32 indices", t.dtype),
        ))
    }
}

/// `y` = window maxima, `argmax` = flat index into x of each (u32). `y` and
/// `argmax` may be flattened views (same element count).
pub fn maxpool_forward(
    ctx: &GpuContext,
    x: &GpuTensor,
    y: &GpuTensor,
    argmax: &GpuTensor,
    g: &Pool2dGeometry,
) -> Result<Dispatch> {
    let op = MAX_FORWARD.entry;
    let n = numel(&g.output_shape());
    expect_shape(op, "x", &x.shape, &g.input_shape())?;
    expect_numel(op, "y", &y.shape, n)?;
    expect_numel(op, "argmax", &argmax.shape, n)?;
    expect_u32(op, "argmax", argmax)?;
    let (spec, items) = vec4_or_scalar(g, n, &MAX_FORWARD_VEC4, &MAX_FORWARD);
    ctx.prepare(
        spec,
        &[],
        &g.params(),
        &[x, y, argmax],
        Grid::linear(items, WORKGROUP),
    )
}

/// The kernel and its invocation count for `n` output elements: four
/// channels per invocation when the channel count is a multiple of 4.
fn vec4_or_scalar(
    g: &Pool2dGeometry,
    n: usize,
    vec4: &'static KernelSpec,
    scalar: &'static KernelSpec,
) -> (&'static KernelSpec, usize) {
    if g.channels.is_multiple_of(4) {
        (vec4, n / 4)
    } else {
        (scalar, n)
    }
}

/// `dx[i] += Σ dy[o]` over the windows o whose argmax is i. `dy` and
/// `argmax` may be flattened views. Runs [`maxpool_backward_disjoint`] when
/// no two windows overlap (stride ≥ pool), else [`maxpool_backward_gather`].
pub fn maxpool_backward(
    ctx: &GpuContext,
    dx: &GpuTensor,
    dy: &GpuTensor,
    argmax: &GpuTensor,
    g: &Pool2dGeometry,
) -> Result<Dispatch> {
    if windows_disjoint(g) {
        maxpool_backward_disjoint(ctx, dx, dy, argmax, g)
    } else {
        maxpool_backward_gather(ctx, dx, dy, argmax, g)
    }
}

/// Whether no input element lies in two pooling windows.
pub fn windows_disjoint(g: &Pool2dGeometry) -> bool {
    g.stride[0] >= g.pool[0] && g.stride[1] >= g.pool[1]
}

fn check_maxpool_backward(
    op: &str,
    dx: &GpuTensor,
    dy: &GpuTensor,
    argmax: &GpuTensor,
    g: &Pool2dGeometry,
) -> Result<()> {
    let n = numel(&g.output_shape());
    expect_shape(op, "dx", &dx.shape, &g.input_shape())?;
    expect_numel(op, "dy", &dy.shape, n)?;
    expect_numel(op, "argmax", &argmax.shape, n)?;
    expect_u32(op, "argmax", argmax)
}

/// [`maxpool_backward`] for any stride: gathers, one invocation per dx
/// element (shader entry `maxpool_backward`).
pub fn maxpool_backward_gather(
    ctx: &GpuContext,
    dx: &GpuTensor,
    dy: &GpuTensor,
    argmax: &GpuTensor,
    g: &Pool2dGeometry,
) -> Result<Dispatch> {
    check_maxpool_backward(MAX_BACKWARD.entry, dx, dy, argmax, g)?;
    ctx.prepare(
        &MAX_BACKWARD,
        &[],
        &g.params(),
        &[dx, dy, argmax],
        Grid::linear(numel(&g.input_shape()), WORKGROUP),
    )
}

/// The disjoint max-pool backward of a pool over a ReLU's output `y =
/// maxpool(relu(z))`, with the ReLU's backward in it: `dz[argmax] += dy`
/// where the pooled `y > 0` (ReLU's output at the argmax, positive exactly
/// where z is). `dz` is z's gradient, `y` the pool's saved output. The
/// graph executor uses it when the ReLU's only reader is the pool (one
/// pass over the ReLU's output gradient fewer); the same values as
/// [`maxpool_backward_disjoint`] then [`crate::ops::activation`]'s ReLU
/// backward.
pub fn maxpool_relu_backward(
    ctx: &GpuContext,
    dz: &GpuTensor,
    dy: &GpuTensor,
    argmax: &GpuTensor,
    y: &GpuTensor,
    g: &Pool2dGeometry,
) -> Result<Dispatch> {
    let op = MAX_RELU_BACKWARD_DISJOINT.entry;
    if !windows_disjoint(g) {
        return Err(Error::Unsupported {
            op: op.into(),
            what: format!("pool {:?} with stride {:?}", g.pool, g.stride),
            why: "the fused ReLU backward needs disjoint windows (stride >= pool)".into(),
        });
    }
    check_maxpool_backward(op, dz, dy, argmax, g)?;
    let n = numel(&g.output_shape());
    expect_numel(op, "y", &y.shape, n)?;
    let (spec, items) = vec4_or_scalar(
        g,
        n,
        &MAX_RELU_BACKWARD_DISJOINT_VEC4,
        &MAX_RELU_BACKWARD_DISJOINT,
    );
    ctx.prepare(
        spec,
        &[],
        &g.params(),
        &[dz, dy, argmax, y],
        Grid::linear(items, WORKGROUP),
    )
}

/// [`maxpool_backward`] for windows that do not overlap: one invocation
/// per window adds dy into dx at argmax (at most one writer per dx element,
/// given argmax from [`maxpool_forward`]). Overlapping windows are an error.
pub fn maxpool_backward_disjoint(
    ctx: &GpuContext,
    dx: &GpuTensor,
    dy: &GpuTensor,
    argmax: &GpuTensor,
    g: &Pool2dGeometry,
) -> Result<Dispatch> {
    let op = MAX_BACKWARD_DISJOINT.entry;
    if !windows_disjoint(g) {
        return Err(Error::shape(
            op,
            format!(
                "pool {:?} with stride {:?} overlaps windows (needs stride >= pool)",
                g.pool, g.stride
            ),
        ));
    }
    check_maxpool_backward(op, dx, dy, argmax, g)?;
    let n = numel(&g.output_shape());
    let (spec, items) = vec4_or_scalar(g, n, &MAX_BACKWARD_DISJOINT_VEC4, &MAX_BACKWARD_DISJOINT);
    ctx.prepare(
        spec,
        &[],
        &g.params(),
        &[dx, dy, argmax],
        Grid::linear(items, WORKGROUP),
    )
}

/// `y` = window means. `y` may be a flattened view.
pub fn avgpool_forward(
    ctx: &GpuContext,
    x: &GpuTensor,
    y: &GpuTensor,
    g: &Pool2dGeometry,
) -> Result<Dispatch> {
    let op = AVG_FORWARD.entry;
    let n = numel(&g.output_shape());
    expect_shape(op, "x", &x.shape, &g.input_shape())?;
    expect_numel(op, "y", &y.shape, n)?;
    ctx.prepare(
        &AVG_FORWARD,
        &[],
        &g.params(),
        &[x, y],
        Grid::linear(n, WORKGROUP),
    )
}

/// `dx[i] += Σ dy[o] / (PH*PW)` over the windows o containing i (gather).
/// `dy` may be a flattened view.
pub fn avgpool_backward(
    ctx: &GpuContext,
    dx: &GpuTensor,
    dy: &GpuTensor,
    g: &Pool2dGeometry,
) -> Result<Dispatch> {
    let op = AVG_BACKWARD.entry;
    expect_shape(op, "dx", &dx.shape, &g.input_shape())?;
    expect_numel(op, "dy", &dy.shape, numel(&g.output_shape()))?;
    ctx.prepare(
        &AVG_BACKWARD,
        &[],
        &g.params(),
        &[dx, dy],
        Grid::linear(numel(&g.input_shape()), WORKGROUP),
    )
}
