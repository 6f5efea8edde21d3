//! ReLU, sigmoid and tanh: CPU reference and GPU launchers, forward and
//! backward. Backward accumulates `dx += dy * f'` and reads x (ReLU) or the
//! saved output y (sigmoid, tanh).

use ndarray::{ArrayD, ArrayViewD, NdFloat, Zip};

use crate::error::Result;
use crate::gpu::{Access, Dispatch, GpuContext, GpuTensor, Grid, KernelSpec, Shader};
use crate::tensor::expect_numel;

/// Uniform parameters, mirrored by `Params` in `shaders/activation.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct ActivationParams {
    pub n: u32,
    pub _pad: [u32; 3],
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Activation {
    Relu,
    Sigmoid,
    Tanh,
}

impl Activation {
    /// Whether backward needs the forward input (true) or output (false).
    pub fn backward_uses_input(self) -> bool {
        self == Activation::Relu
    }
}

// ---------------------------------------------------------------- CPU reference
//
// Sigmoid and tanh of the CPU references (here and in the recurrent ops).
// In f64 (gradient checks against finite differences) they are the exact
// formulas on libm. In f32 (the CPU training backend) libm's expf/tanhf
// were ~20% of a seed-model step: there they are branch-free Cephes-style
// approximations (exp by range reduction to [-ln2/2, ln2/2], a degree-6
// polynomial and 2^n built in the exponent bits; tanh by an odd polynomial
// below 0.625, else 1 - 2/(e^{2|x|}+1)) within a few ulp of the exact
// values (tests/activation.rs), written as plain arithmetic and selects so
// loops over slices vectorise. NaN passes through; the same bits come out
// on every machine (no FMA contraction in Rust).

fn is_f32<A: NdFloat>() -> bool {
    std::any::TypeId::of::<A>() == std::any::TypeId::of::<f32>()
}

/// `e^x` in f32, for x clamped to [-87, 88] (the clamp keeps 2^n normal;
/// e^-87 ≈ 1.6e-38 and e^88 ≈ 1.7e38 stand for anything beyond).
#[inline(always)]
fn exp_f32(x: f32) -> f32 {
    // (clamp keeps NaN.)
    let x = x.clamp(-87.0, 88.0);
    // Round x·log2(e) to the nearest integer n by adding 1.5·2^23: the
    // integer lands in the low mantissa bits (no float-to-int conversion).
    const MAGIC: f32 = 12_582_912.0;
    let shifted = x * std::f32::consts::LOG2_E + MAGIC;
    let n = shifted.to_bits().wrapping_sub(MAGIC.to_bits()) as i32;
    let nf = shifted - MAGIC;
    // r = x - n·ln2 in two parts (Cody-Waite) so r keeps its low bits.
    let r = x - nf * 0.693_359_4 - nf * -2.121_944_4e-4;
    let p = 1.987_569_1e-4;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 5e-1;
    let er = p * r * r + r + 1.0;
    er * f32::from_bits(((n + 127) as u32) << 23)
}

#[inline(always)]
fn sigmoid_f32(x: f32) -> f32 {
    1.0 / (1.0 + exp_f32(-x))
}

#[inline(always)]
fn tanh_f32(x: f32) -> f32 {
    let ax = x.abs();
    // Small |x|: odd minimax polynomial (1 - 2/(e+1) would cancel).
    let z = x * x;
    let p = -5.704_988_7e-3;
    let p = p * z + 2.063_909e-2;
    let p = p * z - 5.373_971_6e-2;
    let p = p * z + 1.333_144_2e-1;
    let p = p * z - 3.333_328e-1;
    let small = p * z * x + x;
    let large = (1.0 - 2.0 / (exp_f32(2.0 * ax) + 1.0)).copysign(x);
    if ax < 0.625 {
        small
    } else {
        large
    }
}

/// The logistic function `1 / (1 + e^-v)` (fast in f32, see above).
#[inline(always)]
pub fn sigmoid_cpu<A: NdFloat>(v: A) -> A {
    match v.to_f32() {
        Some(x) if is_f32::<A>() => A::from(sigmoid_f32(x)).expect("f32 to f32"),
        _ => A::one() / (A::one() + (-v).exp()),
    }
}

/// `tanh(v)` (fast in f32, see above).
#[inline(always)]
pub fn tanh_cpu<A: NdFloat>(v: A) -> A {
    match v.to_f32() {
        Some(x) if is_f32::<A>() => A::from(tanh_f32(x)).expect("f32 to f32"),
        _ => v.tanh(),
    }
}

/// Applies `fast` (f32) or `exact` (any other type) to every element, in
/// f32 through blocks of 8 held in an array, a shape LLVM vectorises once
/// `fast` is inlined (the conversions are no-ops for f32).
#[inline(always)]
fn map_slice<A: NdFloat>(v: &mut [A], fast: impl Fn(f32) -> f32, exact: impl Fn(A) -> A) {
    if !is_f32::<A>() {
        v.iter_mut().for_each(|x| *x = exact(*x));
        return;
    }
    let mut blocks = v.chunks_exact_mut(8);
    for block in &mut blocks {
        let mut t = [0.0f32; 8];
        for (t, x) in t.iter_mut().zip(block.iter()) {
            *t = x.to_f32().unwrap_or(f32::NAN);
        }
        for t in &mut t {
            *t = fast(*t);
        }
        for (x, &t) in block.iter_mut().zip(&t) {
            *x = A::from(t).unwrap_or_else(A::nan);
        }
    }
    for x in blocks.into_remainder() {
        *x = A::from(fast(x.to_f32().unwrap_or(f32::NAN))).unwrap_or_else(A::nan);
    }
}

/// [`sigmoid_cpu`] of every element, in place.
#[inline(always)]
pub fn sigmoid_slice_cpu<A: NdFloat>(v: &mut [A]) {
    map_slice(v, sigmoid_f32, |x| A::one() / (A::one() + (-x).exp()));
}

/// [`tanh_cpu`] of every element, in place.
#[inline(always)]
pub fn tanh_slice_cpu<A: NdFloat>(v: &mut [A]) {
    map_slice(v, tanh_f32, |x| x.tanh());
}

pub fn activation_forward_cpu<A: NdFloat>(act: Activation, x: &ArrayViewD<A>) -> ArrayD<A> {
    let mut y = x.as_standard_layout().into_owned();
    // One plain loop per activation over the contiguous values (vectorises).
    let v = y.as_slice_mut().expect("standard layout");
    match act {
        Activation::Relu => v.iter_mut().for_each(|v| *v = v.max(A::zero())),
        Activation::Sigmoid => sigmoid_slice_cpu(v),
        Activation::Tanh => tanh_slice_cpu(v),
    }
    y
}

/// `dx += dy * f'`, where `saved` is x for ReLU and y for sigmoid/tanh.
pub fn activation_backward_cpu<A: NdFloat>(
    act: Activation,
    dx: &mut ArrayD<A>,
    dy: &ArrayViewD<A>,
    saved: &ArrayViewD<A>,
) {
    // Contiguous operands (the usual case) as slices: a plain loop that
    // vectorises; the same arithmetic as the Zip.
    if let (Some(dx), Some(dy), Some(saved)) = (dx.as_slice_mut(), dy.as_slice(), saved.as_slice())
    {
        let n = dx.len();
        let (dy, saved) = (&dy[..n], &saved[..n]);
        match act {
            Activation::Relu => (0..n).for_each(|i| {
                dx[i] += dy[i]
                    * if saved[i] > A::zero() {
                        A::one()
                    } else {
                        A::zero()
                    }
            }),
            Activation::Sigmoid => {
                (0..n).for_each(|i| dx[i] += dy[i] * (saved[i] * (A::one() - saved[i])))
            }
            Activation::Tanh => {
                (0..n).for_each(|i| dx[i] += dy[i] * (A::one() - saved[i] * saved[i]))
            }
        }
        return;
    }
    Zip::from(dx).and(dy).and(saved).for_each(|dx, &g, &s| {
        *dx += g * match act {
            Activation::Relu => {
                if s > A::zero() {
                    A::one()
                } else {
                    A::zero()
                }
            }
            Activation::Sigmoid => s * (A::one() - s),
            Activation::Tanh => A::one() - s * s,
        }
    });
}

// ---------------------------------------------------------------- GPU

static SHADER: Shader = crate::shader!("activation");
const WORKGROUP: u32 = 256;

/// The kernel of `act`, forward or backward, scalar or four elements per
/// invocation (`vec4`, for lengths that are a multiple of 4).
fn spec(act: Activation, backward: bool, vec4: bool) -> &'static KernelSpec {
    use Access::{Read, ReadWrite};
    macro_rules! specs {
        ($bindings:expr; $($entry:literal),*) => {
            [$(KernelSpec { shader: &SHADER, entry: $entry, bindings: $bindings }),*]
        };
    }
    // [relu, sigmoid, tanh] × [scalar, vec4]
    static FWD: [KernelSpec; 6] = specs!(&[Read, ReadWrite];
        "relu_forward", "sigmoid_forward", "tanh_forward",
        "relu_forward_vec4", "sigmoid_forward_vec4", "tanh_forward_vec4");
    static BWD: [KernelSpec; 6] = specs!(&[ReadWrite, Read, Read];
        "relu_backward", "sigmoid_backward", "tanh_backward",
        "relu_backward_vec4", "sigmoid_backward_vec4", "tanh_backward_vec4");
    let table = if backward { &BWD } else { &FWD };
    &table[act as usize + if vec4 { 3 } else { 0 }]
}

/// The parameters and grid for `n` elements: vec4s when `n` is a multiple
/// of 4 (the flag says which kernel to take).
fn launch(n: usize) -> (ActivationParams, Grid, bool) {
    let vec4 = n.is_multiple_of(4);
    let items = if vec4 { n / 4 } else { n };
    (params(items), Grid::linear(items, WORKGROUP), vec4)
}

fn params(n: usize) -> ActivationParams {
    ActivationParams {
        n: n as u32,
        _pad: [0; 3],
    }
}

/// `y = f(x)` elementwise.
pub fn activation_forward(
    ctx: &GpuContext,
    act: Activation,
    x: &GpuTensor,
    y: &GpuTensor,
) -> Result<Dispatch> {
    let n = x.numel();
    let (params, grid, vec4) = launch(n);
    let spec = spec(act, false, vec4);
    expect_numel(spec.entry, "y", &y.shape, n)?;
    ctx.prepare(spec, &[], &params, &[x, y], grid)
}

/// `dx += dy * f'`; `saved` is x for ReLU, y for sigmoid and tanh.
pub fn activation_backward(
    ctx: &GpuContext,
    act: Activation,
    dx: &GpuTensor,
    dy: &GpuTensor,
    saved: &GpuTensor,
) -> Result<Dispatch> {
    let n = dx.numel();
    let (params, grid, vec4) = launch(n);
    let spec = spec(act, true, vec4);
    expect_numel(spec.entry, "dy", &dy.shape, n)?;
    expect_numel(spec.entry, "saved", &saved.shape, n)?;
    ctx.prepare(spec, &[], &params, &[dx, dy, saved], grid)
}
