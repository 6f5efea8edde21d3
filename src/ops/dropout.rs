//! Dropout with Keras semantics: in training each element is dropped with
//! probability `rate` and the kept ones are scaled by `1 / (1 - rate)`; at
//! inference the layer is the identity. CPU reference and GPU launchers,
//! forward then backward.
//!
//! The mask is counter-based, so nothing random is stored or carried
//! between steps: element `i` of the mask of training step `step` is kept
//! when [`dropout_hash`]`(seed, step, i) >= threshold`, with the hash the
//! xxHash32 of the 12-byte message `(seed_hi, step, i)` (little-endian
//! words) under the seed `seed_lo`, and `threshold = round(rate · 2³²)`.
//! The test is on integers, so the kernel and the reference produce the
//! same mask bit for bit on any device, and the same `(seed, step)` always
//! gives the same mask. An executor passes its count of training steps, so
//! masks change every step and a run is reproducible from the seed.
//!
//! Forward does not save the mask: backward recomputes it from the same
//! `(seed, step)` (a few integer operations per element, no memory), so
//! `dropout_backward` must be given the step of the forward it follows.
//! `scale = 1 / (1 - rate)` is computed in f64 from the f32 rate and
//! rounded to the element type, as Keras computes it in Python then casts.
//! A dropped NaN becomes 0 (Keras selects, it does not multiply by 0).

use ndarray::{ArrayD, ArrayViewD, NdFloat, Zip};

use crate::error::{Error, Result};
use crate::gpu::{Access, Dispatch, GpuContext, GpuTensor, Grid, KernelSpec, Shader};
use crate::tensor::{expect_numel, DType};

/// Uniform parameters, mirrored by `Params` in `shaders/dropout.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct DropoutParams {
    pub n: u32,
    pub seed_lo: u32,
    pub seed_hi: u32,
    /// The training step whose mask is used.
    pub step: u32,
    /// Elements whose hash is below this are dropped.
    pub threshold: u32,
    pub scale: f32,
    /// Forward: 1 applies the mask, 0 copies (inference).
    pub training: u32,
    pub _pad: u32,
}

/// A dropout layer's settings: the drop probability and the mask's seed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Dropout {
    /// Probability of dropping an element, in `[0, 1)`.
    pub rate: f32,
    pub seed: u64,
}

// xxHash32 primes.
const P2: u32 = 2_246_822_519;
const P3: u32 = 3_266_489_917;
const P4: u32 = 668_265_263;
const P5: u32 = 374_761_393;

fn round_word(h: u32, w: u32) -> u32 {
    h.wrapping_add(w.wrapping_mul(P3))
        .rotate_left(17)
        .wrapping_mul(P4)
}

/// xxHash32 of the words `(seed >> 32, step, index)` (12 bytes) with the
/// seed `seed as u32`: the random bits behind mask element `index` of
/// training step `step`. `shaders/dropout.wgsl` computes the same.
pub fn dropout_hash(seed: u64, step: u32, index: u32) -> u32 {
    let mut h = (seed as u32).wrapping_add(P5).wrapping_add(12);
    h = round_word(h, (seed >> 32) as u32);
    h = round_word(h, step);
    h = round_word(h, index);
    h ^= h >> 15;
    h = h.wrapping_mul(P2);
    h ^= h >> 13;
    h = h.wrapping_mul(P3);
    h ^ (h >> 16)
}

impl Dropout {
    pub fn new(rate: f32, seed: u64) -> Result<Self> {
        let d = Self { rate, seed };
        d.validate()?;
        Ok(d)
    }

    /// The rate must lie in `[0, 1)` (1 would divide by zero).
    pub fn validate(&self) -> Result<()> {
        if !(0.0..1.0).contains(&self.rate) {
            return Err(Error::Unsupported {
                op: "dropout".into(),
                what: format!("rate {}", self.rate),
                why: "it must lie in [0, 1)".into(),
            });
        }
        Ok(())
    }

    /// `round(rate · 2³²)`, saturated: hashes below it are dropped.
    pub fn threshold(&self) -> u32 {
        (self.rate as f64 * 4_294_967_296.0)
            .round()
            .min(u32::MAX as f64) as u32
    }

    /// `1 / (1 - rate)` in f64 (round it to the element type).
    pub fn scale(&self) -> f64 {
        1.0 / (1.0 - self.rate as f64)
    }

    /// Whether element `index` is kept at training step `step`.
    pub fn keep(&self, step: u32, index: u32) -> bool {
        dropout_hash(self.seed, step, index) >= self.threshold()
    }

    /// Kernel params for `n` elements; `training = None` is inference.
    pub fn params(&self, n: usize, training: Option<u32>) -> DropoutParams {
        DropoutParams {
            n: n as u32,
            seed_lo: self.seed as u32,
            seed_hi: (self.seed >> 32) as u32,
            step: training.unwrap_or(0),
            threshold: self.threshold(),
            scale: self.scale() as f32,
            training: training.is_some() as u32,
            _pad: 0,
        }
    }
}

// ---------------------------------------------------------------- CPU reference

/// The mask of training step `step` as `0` (dropped) or `scale` (kept), in
/// `x`'s shape: forward is `x * mask`, backward `dx += dy * mask`.
pub fn dropout_mask_cpu<A: NdFloat>(d: &Dropout, shape: &[usize], step: u32) -> ArrayD<A> {
    let scale = A::from(d.scale()).expect("a finite scale");
    let mut i = 0u32;
    ArrayD::from_shape_simple_fn(shape, || {
        let m = if d.keep(step, i) { scale } else { A::zero() };
        i = i.wrapping_add(1);
        m
    })
}

/// `y = kept ? x * scale : 0` at training step `step`, or `y = x` at
/// inference (`training = None`).
pub fn dropout_forward_cpu<A: NdFloat>(
    d: &Dropout,
    x: &ArrayViewD<A>,
    training: Option<u32>,
) -> ArrayD<A> {
    let Some(step) = training else {
        return x.to_owned();
    };
    let scale = A::from(d.scale()).expect("a finite scale");
    let mut y = ArrayD::zeros(x.raw_dim());
    // Row-major index order: the kernel's flat index.
    for (i, (y, &x)) in y.iter_mut().zip(x.iter()).enumerate() {
        if d.keep(step, i as u32) {
            *y = x * scale;
        }
    }
    y
}

/// `dx += kept ? dy * scale : 0` with the mask of training step `step`.
pub fn dropout_backward_cpu<A: NdFloat>(
    d: &Dropout,
    dx: &mut ArrayD<A>,
    dy: &ArrayViewD<A>,
    step: u32,
) {
    let mask = dropout_mask_cpu::<A>(d, dx.shape(), step);
    Zip::from(dx).and(dy).and(&mask).for_each(|dx, &g, &m| {
        if m != A::zero() {
            *dx += g * m;
        }
    });
}

// ---------------------------------------------------------------- GPU

static SHADER: Shader = crate::shader!("dropout");
static DROPOUT_FORWARD: KernelSpec = KernelSpec {
    shader: &SHADER,
    entry: "dropout_forward",
    bindings: &[Access::Read, Access::ReadWrite],
};
static DROPOUT_BACKWARD: KernelSpec = KernelSpec {
    shader: &SHADER,
    entry: "dropout_backward",
    bindings: &[Access::ReadWrite, Access::Read],
};
const WORKGROUP: u32 = 256;

fn check(op: &str, d: &Dropout, a: (&str, &GpuTensor), b: (&str, &GpuTensor)) -> Result<usize> {
    d.validate()?;
    let n = a.1.numel();
    expect_numel(op, b.0, &b.1.shape, n)?;
    if a.1.dtype != DType::F32 || b.1.dtype != DType::F32 {
        return Err(Error::shape(
            op,
            format!(
                "{} {:?} and {} {:?} must be f32",
                a.0, a.1.shape, b.0, b.1.shape
            ),
        ));
    }
    if n > u32::MAX as usize {
        return Err(Error::shape(op, format!("{n} elements exceed u32 indices")));
    }
    Ok(n)
}

/// `y = kept ? x * scale : 0` with the mask of training step `step`, or the
/// copy `y = x` when `training` is `None`. The mode and step live in the
/// uniforms: an executor rewrites them per run with
/// `dispatch.set_params(ctx, &d.params(n, training))`.
pub fn dropout_forward(
    ctx: &GpuContext,
    d: &Dropout,
    x: &GpuTensor,
    y: &GpuTensor,
    training: Option<u32>,
) -> Result<Dispatch> {
    let n = check(DROPOUT_FORWARD.entry, d, ("x", x), ("y", y))?;
    ctx.prepare(
        &DROPOUT_FORWARD,
        &[],
        &d.params(n, training),
        &[x, y],
        Grid::linear(n, WORKGROUP),
    )
}

/// `dx += kept ? dy * scale : 0` with the mask of training step `step`
/// (that of the forward it follows).
pub fn dropout_backward(
    ctx: &GpuContext,
    d: &Dropout,
    dx: &GpuTensor,
    dy: &GpuTensor,
    step: u32,
) -> Result<Dispatch> {
    let n = check(DROPOUT_BACKWARD.entry, d, ("dx", dx), ("dy", dy))?;
    ctx.prepare(
        &DROPOUT_BACKWARD,
        &[],
        &d.params(n, Some(step)),
        &[dx, dy],
        Grid::linear(n, WORKGROUP),
    )
}
