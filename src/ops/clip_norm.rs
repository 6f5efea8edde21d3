//! Gradient clipping by global norm (`tf.clip_by_global_norm`): CPU
//! reference and GPU launchers.
//!
//! With `s = Σ_t Σ_i g_t[i]²` over every gradient `g_t` and `norm = √s`:
//! when `norm > clip` every gradient is multiplied by `clip / norm`, else it
//! is left untouched. [`crate::graph::CpuExecutor`] calls the reference,
//! [`crate::graph::gpu::GpuExecutor`] records the kernels in its training
//! step before the optimizer: the norm never leaves the device.
//!
//! - `clip_norm_sumsq`: `sumsq[0] = s`. One `clip_norm_partials` dispatch
//!   per gradient writes the sum of squares of each chunk (256 lanes ×
//!   `items` elements) into one buffer of partial sums, each gradient at
//!   its own offset; one `clip_norm_sumsq` dispatch (one workgroup) adds
//!   them. Deterministic: fixed-order lane sums and a fixed workgroup tree
//!   (the structure of [`crate::ops::reduce`]), no atomics.
//! - `clip_norm_scale`: one dispatch per gradient, `g *= clip / √sumsq[0]`
//!   when `√sumsq[0] > clip` (computed per invocation from the one-element
//!   buffer, a load uniform across the workgroup).
//! - [`clip_norm`]: both, in order, for a set of gradients.
//!
//! The reference sums in order (one accumulator), the kernels in a tree:
//! the sums agree to rounding, not bit for bit. The scale is the same
//! formula in both (`clip / norm`, then one multiply), and a gradient whose
//! norm is within the clip (or NaN) is not written at all. Clipping is part
//! of the update, not of the model: it has no backward pass.

use ndarray::{ArrayViewD, ArrayViewMutD, NdFloat};

use crate::error::{Error, Result};
use crate::gpu::{Access, Dispatch, GpuContext, GpuTensor, Grid, KernelSpec, Shader};
use crate::tensor::{expect_numel, DType};

/// Uniform parameters, mirrored by `Params` in `shaders/clip_norm.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct ClipNormParams {
    /// Partials: elements of the gradient; sumsq: partial sums; scale:
    /// elements of the gradient.
    pub n: u32,
    /// Partials: index of the gradient's first partial sum.
    pub offset: u32,
    /// Partials: elements per lane per chunk.
    pub items: u32,
    /// Partials: chunks of the gradient.
    pub groups: u32,
    /// Scale: the largest global norm left unscaled.
    pub clip: f32,
    pub _pad: [u32; 3],
}

/// Elements each lane adds per chunk in [`clip_norm`] (chunk = 256 × 16, as
/// [`crate::ops::reduce::SumOptions`]); tests lower it to get many partials.
pub const DEFAULT_ITEMS: u32 = 16;

// ---------------------------------------------------------------- CPU reference

/// `Σ_t Σ_i g_t[i]²`, in order with one accumulator.
pub fn clip_norm_sumsq_cpu<A: NdFloat>(grads: &[ArrayViewD<A>]) -> A {
    grads
        .iter()
        .fold(A::zero(), |s, g| g.iter().fold(s, |s, &v| s + v * v))
}

/// `g *= clip / √sumsq` when `√sumsq > clip`; otherwise `g` is untouched.
pub fn clip_norm_scale_cpu<A: NdFloat>(g: &mut ArrayViewMutD<A>, sumsq: A, clip: A) {
    let norm = sumsq.sqrt();
    if norm > clip {
        let scale = clip / norm;
        g.mapv_inplace(|v| v * scale);
    }
}

/// Clips `grads` by their global norm; returns the norm before clipping.
pub fn clip_norm_cpu<A: NdFloat>(grads: &mut [ArrayViewMutD<A>], clip: A) -> A {
    let views: Vec<ArrayViewD<A>> = grads.iter().map(|g| g.view()).collect();
    let sumsq = clip_norm_sumsq_cpu(&views);
    for g in grads.iter_mut() {
        clip_norm_scale_cpu(g, sumsq, clip);
    }
    sumsq.sqrt()
}

// ---------------------------------------------------------------- GPU

static SHADER: Shader = crate::shader!("clip_norm");
static CLIP_NORM_PARTIALS: KernelSpec = KernelSpec {
    shader: &SHADER,
    entry: "clip_norm_partials",
    bindings: &[Access::ReadWrite, Access::Read],
};
static CLIP_NORM_SUMSQ: KernelSpec = KernelSpec {
    shader: &SHADER,
    entry: "clip_norm_sumsq",
    bindings: &[Access::ReadWrite, Access::Read],
};
static CLIP_NORM_SCALE: KernelSpec = KernelSpec {
    shader: &SHADER,
    entry: "clip_norm_scale",
    bindings: &[Access::ReadWrite, Access::Read],
};
const WORKGROUP: u32 = 256;

fn check_f32(op: &str, what: &str, t: &GpuTensor) -> Result<()> {
    if t.dtype != DType::F32 {
        return Err(Error::shape(
            op,
            format!("{what} {:?} must be f32, got {:?}", t.shape, t.dtype),
        ));
    }
    Ok(())
}

/// `sumsq[0] = Σ_t Σ_i grads[t][i]²` over at least one f32 gradient.
/// Returns one dispatch per gradient, then the final sum; the buffer of
/// partial sums is owned by their bind groups. `items`: elements per lane
/// per chunk ([`DEFAULT_ITEMS`]).
pub fn clip_norm_sumsq(
    ctx: &GpuContext,
    sumsq: &GpuTensor,
    grads: &[&GpuTensor],
    items: u32,
) -> Result<Vec<Dispatch>> {
    let op = CLIP_NORM_SUMSQ.entry;
    expect_numel(op, "sumsq", &sumsq.shape, 1)?;
    check_f32(op, "sumsq", sumsq)?;
    if grads.is_empty() {
        return Err(Error::shape(op, "needs at least one gradient"));
    }
    if items == 0 {
        return Err(Error::shape(op, "items per lane must be at least 1"));
    }
    let chunk = items as u64 * WORKGROUP as u64;
    let groups: Vec<u64> = grads
        .iter()
        .map(|g| (g.numel() as u64).div_ceil(chunk).max(1))
        .collect();
    let total: u64 = groups.iter().sum();
    if total > u32::MAX as u64 {
        return Err(Error::shape(op, format!("{total} partial sums")));
    }
    let partials = ctx.zeros(&[total as usize], DType::F32)?;
    let mut dispatches = Vec::with_capacity(grads.len() + 1);
    let mut offset = 0u64;
    for (g, &n_groups) in grads.iter().zip(&groups) {
        check_f32(CLIP_NORM_PARTIALS.entry, "gradient", g)?;
        let p = ClipNormParams {
            n: g.numel() as u32,
            offset: offset as u32,
            items,
            groups: n_groups as u32,
            ..ClipNormParams::default()
        };
        dispatches.push(ctx.prepare(
            &CLIP_NORM_PARTIALS,
            &[],
            &p,
            &[&partials, g],
            Grid::linear(n_groups as usize * WORKGROUP as usize, WORKGROUP),
        )?);
        offset += n_groups;
    }
    let p = ClipNormParams {
        n: total as u32,
        ..ClipNormParams::default()
    };
    dispatches.push(ctx.prepare(
        &CLIP_NORM_SUMSQ,
        &[],
        &p,
        &[sumsq, &partials],
        Grid::Workgroups([1, 1, 1]),
    )?);
    Ok(dispatches)
}

/// `g *= clip / √sumsq[0]` when `√sumsq[0] > clip` (in place).
pub fn clip_norm_scale(
    ctx: &GpuContext,
    g: &GpuTensor,
    sumsq: &GpuTensor,
    clip: f32,
) -> Result<Dispatch> {
    let op = CLIP_NORM_SCALE.entry;
    expect_numel(op, "sumsq", &sumsq.shape, 1)?;
    check_f32(op, "sumsq", sumsq)?;
    check_f32(op, "gradient", g)?;
    check_clip(op, clip)?;
    let n = g.numel();
    let p = ClipNormParams {
        n: n as u32,
        clip,
        ..ClipNormParams::default()
    };
    ctx.prepare(
        &CLIP_NORM_SCALE,
        &[],
        &p,
        &[g, sumsq],
        Grid::linear(n, WORKGROUP),
    )
}

/// A clip norm must be finite and positive.
pub fn check_clip(op: &str, clip: f32) -> Result<()> {
    if !(clip > 0.0 && clip.is_finite()) {
        return Err(Error::Unsupported {
            op: op.into(),
            what: format!("a clip norm of {clip}"),
            why: "it must be finite and > 0".into(),
        });
    }
    Ok(())
}

/// Clips `grads` by their global norm in place, leaving the sum of squares
/// in `sumsq`: [`clip_norm_sumsq`] then one [`clip_norm_scale`] per
/// gradient, to record in this order.
pub fn clip_norm(
    ctx: &GpuContext,
    sumsq: &GpuTensor,
    grads: &[&GpuTensor],
    clip: f32,
) -> Result<Vec<Dispatch>> {
    check_clip("clip_norm", clip)?;
    let mut d = clip_norm_sumsq(ctx, sumsq, grads, DEFAULT_ITEMS)?;
    for g in grads {
        d.push(clip_norm_scale(ctx, g, sumsq, clip)?);
    }
    Ok(d)
}
