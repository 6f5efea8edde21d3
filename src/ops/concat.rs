//! Concatenation along the last (feature) axis and its backward (split):
//! CPU reference and GPU launchers. All leading axes are rows and must
//! agree: `[B, F1] + [B, F2] + ... -> [B, ΣF]` (the fusion layer of the
//! seed model: 64 + 5408). Each input is one dispatch that copies its column
//! block (forward) or accumulates that block of the incoming gradient into
//! its gradient (backward); [`concat_forward_all`] and
//! [`concat_backward_all`] build the dispatches for all inputs.

use ndarray::{ArrayD, ArrayViewD, Axis, NdFloat, Slice};

use crate::error::{Error, Result};
use crate::gpu::{Access, Dispatch, GpuContext, GpuTensor, Grid, KernelSpec, Shader};
use crate::tensor::DType;

/// Uniform parameters, mirrored by `Params` in `shaders/concat.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct ConcatParams {
    /// Product of the leading axes.
    pub rows: u32,
    /// Width of this input.
    pub f: u32,
    /// Width of the concatenated tensor.
    pub total: u32,
    /// First column of this input's block.
    pub offset: u32,
}

// ---------------------------------------------------------------- CPU reference

/// Concatenates `inputs` along their last axis.
///
/// # Panics
/// If `inputs` is empty or the leading axes differ.
pub fn concat_forward_cpu<A: NdFloat>(inputs: &[ArrayViewD<A>]) -> ArrayD<A> {
    let lead = &inputs[0].shape()[..inputs[0].ndim() - 1];
    assert!(
        inputs.iter().all(|x| &x.shape()[..x.ndim() - 1] == lead),
        "concat_forward_cpu: leading axes differ"
    );
    // Row by row, each input's row copied in turn, straight into the
    // row-major result (ndarray's concatenate may pick a column-major
    // layout, which then cost a second copy).
    let rows: usize = lead.iter().product();
    let parts: Vec<_> = inputs.iter().map(|x| x.as_standard_layout()).collect();
    let widths: Vec<usize> = inputs.iter().map(|x| x.shape()[x.ndim() - 1]).collect();
    let mut out = Vec::with_capacity(rows * widths.iter().sum::<usize>());
    for r in 0..rows {
        for (x, &f) in parts.iter().zip(&widths) {
            out.extend_from_slice(&x.as_slice().expect("standard layout")[r * f..][..f]);
        }
    }
    let mut shape = lead.to_vec();
    shape.push(widths.iter().sum());
    ArrayD::from_shape_vec(shape, out).expect("rows of ΣF values")
}

/// `dxs[i] += dy[..., block i]`, the blocks in order along the last axis.
pub fn concat_backward_cpu<A: NdFloat>(dxs: &mut [&mut ArrayD<A>], dy: &ArrayViewD<A>) {
    let axis = Axis(dy.ndim() - 1);
    let mut offset = 0;
    for dx in dxs.iter_mut() {
        let f = dx.len_of(axis);
        **dx += &dy.slice_axis(axis, Slice::from(offset..offset + f));
        offset += f;
    }
}

// ---------------------------------------------------------------- GPU

static SHADER: Shader = crate::shader!("concat");
static FORWARD: KernelSpec = KernelSpec {
    shader: &SHADER,
    entry: "concat_forward",
    bindings: &[Access::Read, Access::ReadWrite],
};
static BACKWARD: KernelSpec = KernelSpec {
    shader: &SHADER,
    entry: "concat_backward",
    bindings: &[Access::ReadWrite, Access::Read],
};
static FORWARD_VEC4: KernelSpec = KernelSpec {
    shader: &SHADER,
    entry: "concat_forward_vec4",
    bindings: &[Access::Read, Access::ReadWrite],
};
static BACKWARD_VEC4: KernelSpec = KernelSpec {
    shader: &SHADER,
    entry: "concat_backward_vec4",
    bindings: &[Access::ReadWrite, Access::Read],
};
const WORKGROUP: u32 = 256;

/// The kernel, params and grid: four columns per invocation (params in
/// vec4s) when the block's width, the total width and the offset are all
/// multiples of 4.
fn launch(
    p: ConcatParams,
    scalar: &'static KernelSpec,
    vec4: &'static KernelSpec,
) -> (&'static KernelSpec, ConcatParams, Grid) {
    let items = (p.rows * p.f) as usize;
    if [p.f, p.total, p.offset].iter().all(|v| v.is_multiple_of(4)) {
        let p4 = ConcatParams {
            f: p.f / 4,
            total: p.total / 4,
            offset: p.offset / 4,
            ..p
        };
        (vec4, p4, Grid::linear(items / 4, WORKGROUP))
    } else {
        (scalar, p, Grid::linear(items, WORKGROUP))
    }
}

/// Checks that `part` is the block [offset, offset + F) of `whole` and
/// returns the params.
fn params(
    op: &str,
    part_name: &str,
    part: &GpuTensor,
    whole_name: &str,
    whole: &GpuTensor,
    offset: usize,
) -> Result<ConcatParams> {
    if part.dtype != DType::F32 || whole.dtype != DType::F32 {
        return Err(Error::shape(
            op,
            format!("{part_name} and {whole_name} must hold f32 values"),
        ));
    }
    let (Some((&f, lead)), Some((&total, whole_lead))) =
        (part.shape.split_last(), whole.shape.split_last())
    else {
        return Err(Error::shape(
            op,
            format!(
                "{part_name} {:?} and {whole_name} {:?} need at least one axis",
                part.shape, whole.shape
            ),
        ));
    };
    if lead != whole_lead || offset + f > total {
        return Err(Error::shape(
            op,
            format!(
                "{part_name} {:?} is not a block of {whole_name} {:?} at column {offset}: \
                 the leading axes must agree and {offset} + {f} must not exceed {total}",
                part.shape, whole.shape
            ),
        ));
    }
    if whole.numel() > u32::MAX as usize {
        return Err(Error::Unsupported {
            op: op.into(),
            what: format!("{whole_name} of shape {:?}", whole.shape),
            why: "indices are 32-bit".into(),
        });
    }
    Ok(ConcatParams {
        rows: lead.iter().product::<usize>() as u32,
        f: f as u32,
        total: total as u32,
        offset: offset as u32,
    })
}

/// `out[..., offset..offset + F] = x`, for `x` [..., F] and `out` [..., F_total].
pub fn concat_forward(
    ctx: &GpuContext,
    x: &GpuTensor,
    out: &GpuTensor,
    offset: usize,
) -> Result<Dispatch> {
    let p = params(FORWARD.entry, "x", x, "out", out, offset)?;
    let (spec, p, grid) = launch(p, &FORWARD, &FORWARD_VEC4);
    ctx.prepare(spec, &[], &p, &[x, out], grid)
}

/// `dx += dy[..., offset..offset + F]`, for `dx` [..., F] and `dy` [..., F_total].
pub fn concat_backward(
    ctx: &GpuContext,
    dx: &GpuTensor,
    dy: &GpuTensor,
    offset: usize,
) -> Result<Dispatch> {
    let p = params(BACKWARD.entry, "dx", dx, "dy", dy, offset)?;
    let (spec, p, grid) = launch(p, &BACKWARD, &BACKWARD_VEC4);
    ctx.prepare(spec, &[], &p, &[dx, dy], grid)
}

/// Checks that the widths of `parts` add up to the last axis of `whole`.
fn check_total(op: &str, parts: &[&GpuTensor], whole: &GpuTensor) -> Result<()> {
    let sum: usize = parts
        .iter()
        .map(|t| t.shape.last().copied().unwrap_or(0))
        .sum();
    if whole.shape.last() != Some(&sum) {
        let shapes: Vec<&Vec<usize>> = parts.iter().map(|t| &t.shape).collect();
        return Err(Error::shape(
            op,
            format!(
                "inputs {shapes:?} have {sum} columns together, the concatenation {:?} has {:?}",
                whole.shape,
                whole.shape.last()
            ),
        ));
    }
    Ok(())
}

/// The forward dispatches for all inputs, in order: `out = [x1, x2, ...]`
/// along the last axis.
pub fn concat_forward_all(
    ctx: &GpuContext,
    xs: &[&GpuTensor],
    out: &GpuTensor,
) -> Result<Vec<Dispatch>> {
    check_total(FORWARD.entry, xs, out)?;
    let mut offset = 0;
    xs.iter()
        .map(|x| {
            let d = concat_forward(ctx, x, out, offset);
            offset += x.shape.last().copied().unwrap_or(0);
            d
        })
        .collect()
}

/// The backward dispatches for all inputs: `dxs[i] += dy[..., block i]`.
pub fn concat_backward_all(
    ctx: &GpuContext,
    dxs: &[&GpuTensor],
    dy: &GpuTensor,
) -> Result<Vec<Dispatch>> {
    check_total(BACKWARD.entry, dxs, dy)?;
    let mut offset = 0;
    dxs.iter()
        .map(|dx| {
            let d = concat_backward(ctx, dx, dy, offset);
            offset += dx.shape.last().copied().unwrap_or(0);
            d
        })
        .collect()
}
