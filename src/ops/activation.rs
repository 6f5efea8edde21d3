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

fn spec(act: Activation, backward: bool) -> &'static KernelSpec {
    use Access::{Read, ReadWrite};
    static FWD: [KernelSpec; 3] = [
        KernelSpec {
            shader: &SHADER,
            entry: "relu_forward",
            bindings: &[Read, ReadWrite],
        },
        KernelSpec {
            shader: &SHADER,
            entry: "sigmoid_forward",
            bindings: &[Read, ReadWrite],
        },
        KernelSpec {
            shader: &SHADER,
            entry: "tanh_forward",
            bindings: &[Read, ReadWrite],
        },
    ];
    static BWD: [KernelSpec; 3] = [
        KernelSpec {
            shader: &SHADER,
            entry: "relu_backward",
            bindings: &[ReadWrite, Read, Read],
        },
        KernelSpec {
            shader: &SHADER,
            entry: "sigmoid_backward",
            bindings: &[ReadWrite, Read, Read],
        },
        KernelSpec {
            shader: &SHADER,
            entry: "tanh_backward",
            bindings: &[ReadWrite, Read, Read],
        },
    ];
    let table = if backward { &BWD } else { &FWD };
    &table[act as usize]
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
    let spec = spec(act, false);
    let n = x.numel();
    expect_numel(spec.entry, "y", &y.shape, n)?;
    ctx.prepare(spec, &[], &params(n), &[x, y], Grid::linear(n, WORKGROUP))
}

/// `dx += dy * f'`; `saved` is x for ReLU, y for sigmoid and tanh.
pub fn activation_backward(
    ctx: &GpuContext,
    act: Activation,
    dx: &GpuTensor,
    dy: &GpuTensor,
    saved: &GpuTensor,
) -> Result<Dispatch> {
    let spec = spec(act, true);
    let n = dx.numel();
    expect_numel(spec.entry, "dy", &dy.shape, n)?;
    expect_numel(spec.entry, "saved", &saved.shape, n)?;
    ctx.prepare(
        spec,
        &[],
        &params(n),
        &[dx, dy, saved],
        Grid::linear(n, WORKGROUP),
    )
}
