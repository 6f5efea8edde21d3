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

pub fn activation_forward_cpu<A: NdFloat>(act: Activation, x: &ArrayViewD<A>) -> ArrayD<A> {
    x.mapv(|v| match act {
        Activation::Relu => v.max(A::zero()),
        Activation::Sigmoid => A::one() / (A::one() + (-v).exp()),
        Activation::Tanh => v.tanh(),
    })
}

/// `dx += dy * f'`, where `saved` is x for ReLU and y for sigmoid/tanh.
pub fn activation_backward_cpu<A: NdFloat>(
    act: Activation,
    dx: &mut ArrayD<A>,
    dy: &ArrayViewD<A>,
    saved: &ArrayViewD<A>,
) {
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
