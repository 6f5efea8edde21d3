//! Elementwise mean of k >= 2 same-shape tensors (late fusion: the average
//! of per-modality heads' logits): CPU reference and GPU launchers, forward
//! then backward. Forward `y = (1/k) Σ x_i`; backward `dx_i += dy / k` for
//! every input (accumulating).
//!
//! Dispatches: each kernel handles two tensors at once, so the usual k = 2
//! costs one forward and one backward dispatch (a binary op applied k-1
//! times would cost k-1 forward and k backward). For k > 2 the forward reads
//! pairs and accumulates into `y`; an odd input out, or a gradient without a
//! distinct partner, gets a dispatch of its own.

use ndarray::{ArrayD, ArrayViewD, NdFloat};

use crate::error::{Error, Result};
use crate::gpu::{Access, Dispatch, GpuContext, GpuTensor, Grid, KernelSpec, Shader};
use crate::tensor::DType;

/// Uniform parameters, mirrored by `Params` in `shaders/average.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct AverageParams {
    /// Elements per tensor.
    pub n: u32,
    /// `1/k`.
    pub scale: f32,
    /// 1 when the second input (forward) or gradient (backward) is bound.
    pub pair: u32,
    /// Forward only: 1 adds into `y` (every pair after the first).
    pub accumulate: u32,
}

// ---------------------------------------------------------------- CPU reference

/// `(1/k) Σ xs[i]`, summed in order then scaled.
///
/// # Panics
/// If `xs` is empty or the shapes differ.
pub fn average_forward_cpu<A: NdFloat>(xs: &[ArrayViewD<A>]) -> ArrayD<A> {
    let mut y = xs[0].to_owned();
    for x in &xs[1..] {
        assert_eq!(x.shape(), y.shape(), "average_forward_cpu: shapes differ");
        y += x;
    }
    let scale = A::one() / A::from(xs.len()).expect("k fits the element type");
    y.mapv_inplace(|v| v * scale);
    y
}

/// `dx += dy * (1/k)`: the gradient of one of the `k` averaged inputs.
pub fn average_backward_cpu<A: NdFloat>(dx: &mut ArrayD<A>, dy: &ArrayViewD<A>, k: usize) {
    let scale = A::one() / A::from(k).expect("k fits the element type");
    dx.zip_mut_with(dy, |d, &g| *d += g * scale);
}

// ---------------------------------------------------------------- GPU

static SHADER: Shader = crate::shader!("average");
static FORWARD: KernelSpec = KernelSpec {
    shader: &SHADER,
    entry: "average_forward",
    bindings: &[Access::Read, Access::Read, Access::ReadWrite],
};
static BACKWARD: KernelSpec = KernelSpec {
    shader: &SHADER,
    entry: "average_backward",
    bindings: &[Access::ReadWrite, Access::ReadWrite, Access::Read],
};
const WORKGROUP: u32 = 256;

/// Checks that every tensor of `ts` is f32 with the shape of `reference`
/// and that k >= 2; returns the element count.
fn check(
    op: &str,
    k: usize,
    ts: &[(&str, &GpuTensor)],
    reference: (&str, &GpuTensor),
) -> Result<usize> {
    if k < 2 {
        return Err(Error::shape(
            op,
            format!("averages at least 2 tensors, got k = {k}"),
        ));
    }
    let (ref_name, r) = reference;
    for &(name, t) in ts.iter().chain([&reference]) {
        if t.dtype != DType::F32 {
            return Err(Error::shape(op, format!("{name} must hold f32 values")));
        }
        if t.shape != r.shape {
            return Err(Error::shape(
                op,
                format!(
                    "{name} has shape {:?}, {ref_name} has shape {:?}: the averaged tensors must agree",
                    t.shape, r.shape
                ),
            ));
        }
    }
    let n = r.numel();
    if n > u32::MAX as usize {
        return Err(Error::Unsupported {
            op: op.into(),
            what: format!("{ref_name} of shape {:?}", r.shape),
            why: "indices are 32-bit".into(),
        });
    }
    Ok(n)
}

fn params(n: usize, k: usize, pair: bool, accumulate: bool) -> AverageParams {
    AverageParams {
        n: n as u32,
        scale: 1.0 / k as f32,
        pair: pair as u32,
        accumulate: accumulate as u32,
    }
}

/// `y = (1/k) Σ xs[i]` over the k = `xs.len()` >= 2 inputs, all of `y`'s
/// shape: one dispatch per pair of inputs (plus one for an odd input out);
/// the first overwrites `y`, the others add into it.
pub fn average_forward(
    ctx: &GpuContext,
    xs: &[&GpuTensor],
    y: &GpuTensor,
) -> Result<Vec<Dispatch>> {
    let op = FORWARD.entry;
    let names: Vec<String> = (0..xs.len()).map(|i| format!("input {i}")).collect();
    let named: Vec<(&str, &GpuTensor)> = names
        .iter()
        .map(String::as_str)
        .zip(xs.iter().copied())
        .collect();
    let n = check(op, xs.len(), &named, ("y", y))?;
    let k = xs.len();
    xs.chunks(2)
        .enumerate()
        .map(|(c, pair)| {
            // A single input is bound twice (both read-only) and read once.
            let (a, b) = (pair[0], *pair.last().unwrap());
            ctx.prepare(
                &FORWARD,
                &[],
                &params(n, k, pair.len() == 2, c > 0),
                &[a, b, y],
                Grid::linear(n, WORKGROUP),
            )
        })
        .collect()
}

/// `dxs[j] += dy / k` for each gradient to write (inputs of a k-input
/// average that need one; at most k, any order, the same tensor may appear
/// twice for an input listed twice): one dispatch per pair of distinct
/// buffers, one for a gradient left without a partner.
pub fn average_backward(
    ctx: &GpuContext,
    dxs: &[&GpuTensor],
    dy: &GpuTensor,
    k: usize,
) -> Result<Vec<Dispatch>> {
    let op = BACKWARD.entry;
    if dxs.len() > k {
        return Err(Error::shape(
            op,
            format!(
                "{} gradients to write for an average of {k} inputs",
                dxs.len()
            ),
        ));
    }
    let names: Vec<String> = (0..dxs.len()).map(|i| format!("dx {i}")).collect();
    let named: Vec<(&str, &GpuTensor)> = names
        .iter()
        .map(String::as_str)
        .zip(dxs.iter().copied())
        .collect();
    let n = check(op, k, &named, ("dy", dy))?;
    let mut out = Vec::with_capacity(dxs.len().div_ceil(2));
    let mut j = 0;
    while j < dxs.len() {
        // Two writable bindings of one buffer would alias: pair distinct ones.
        let partner = dxs.get(j + 1).filter(|b| b.buffer != dxs[j].buffer);
        // Unpaired: a one-element placeholder the kernel never touches.
        let placeholder;
        let b = match partner {
            Some(b) => *b,
            None => {
                placeholder = ctx.zeros(&[1], DType::F32)?;
                &placeholder
            }
        };
        out.push(ctx.prepare(
            &BACKWARD,
            &[],
            &params(n, k, partner.is_some(), false),
            &[dxs[j], b, dy],
            Grid::linear(n, WORKGROUP),
        )?);
        j += if partner.is_some() { 2 } else { 1 };
    }
    Ok(out)
}
