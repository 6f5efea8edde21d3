//! Reductions for the loss and the metrics: CPU reference and GPU launchers.
//!
//! - `reduce_sum`: `out[0] (+)= scale · Σ x`, e.g. the batch loss as a mean
//!   (`scale = 1/n`: the sum is scaled once at the end, `Σx · (1/n)`, not
//!   divided). Deterministic: fixed-order lane sums and a fixed workgroup
//!   tree; inputs longer than one chunk (256 lanes × `items` elements) are
//!   reduced in passes over partial sums, so any n works (large grids are
//!   folded into 2-D). The launcher returns one dispatch per pass.
//! - `accuracy_count`: `count[0] += #{r : argmax(probs[r, :]) == labels[r]}`
//!   over `[B, C]` scores (probabilities or logits: the argmax is the same),
//!   always accumulating so it serves as an epoch counter (zero it once per
//!   epoch). Ties go to the first maximum; a NaN never becomes the maximum
//!   (a NaN in column 0 makes the argmax 0). Deterministic: integer counts
//!   added with a u32 atomic do not depend on order.
//!
//! Neither has a backward pass: the loss gradient comes from the fused
//! softmax cross-entropy, and a mean's gradient is the constant `scale`.

use ndarray::{ArrayView2, ArrayViewD, NdFloat};

use crate::error::{Error, Result};
use crate::gpu::{Access, Dispatch, GpuContext, GpuTensor, Grid, KernelSpec, Shader};
use crate::tensor::{expect_numel, DType};

/// Uniform parameters, mirrored by `Params` in `shaders/reduce.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct ReduceParams {
    /// `reduce_sum`: elements; `accuracy_count`: rows.
    pub n: u32,
    /// `reduce_sum`: chunks (workgroups); `accuracy_count`: classes.
    pub groups: u32,
    /// `reduce_sum`: elements per lane per chunk.
    pub items: u32,
    /// `reduce_sum`: 1 adds into the output, 0 overwrites it.
    pub accumulate: u32,
    pub scale: f32,
    pub _pad: [u32; 3],
}

/// Options of [`reduce_sum`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SumOptions {
    /// Multiplies the sum (1/n for a mean).
    pub scale: f32,
    /// Adds into `out[0]` instead of overwriting it.
    pub accumulate: bool,
    /// Elements each lane adds per pass (chunk = 256 × items); the default
    /// suits both lavapipe and GPUs, tests lower it to exercise many passes.
    pub items: u32,
}

impl Default for SumOptions {
    fn default() -> Self {
        Self {
            scale: 1.0,
            accumulate: false,
            items: 16,
        }
    }
}

impl SumOptions {
    /// `out = Σx / n` as `Σx · (1/n)`.
    pub fn mean(n: usize) -> Self {
        Self {
            scale: 1.0 / n.max(1) as f32,
            ..Self::default()
        }
    }

    pub fn scale(mut self, scale: f32) -> Self {
        self.scale = scale;
        self
    }

    pub fn accumulate(mut self) -> Self {
        self.accumulate = true;
        self
    }

    pub fn items(mut self, items: u32) -> Self {
        self.items = items;
        self
    }
}

// ---------------------------------------------------------------- CPU reference

/// `scale · Σ x`, summed in order.
pub fn reduce_sum_cpu<A: NdFloat>(x: &ArrayViewD<A>, scale: A) -> A {
    x.iter().fold(A::zero(), |s, &v| s + v) * scale
}

/// Rows whose first maximum is at the label's column.
pub fn accuracy_count_cpu<A: NdFloat>(probs: &ArrayView2<A>, labels: &[u32]) -> u32 {
    probs
        .rows()
        .into_iter()
        .zip(labels)
        .filter(|(row, &label)| {
            let mut arg = 0;
            for (j, &v) in row.iter().enumerate().skip(1) {
                if v > row[arg] {
                    arg = j;
                }
            }
            arg as u32 == label
        })
        .count() as u32
}

// ---------------------------------------------------------------- GPU

static SHADER: Shader = crate::shader!("reduce");
static REDUCE_SUM: KernelSpec = KernelSpec {
    shader: &SHADER,
    entry: "reduce_sum",
    bindings: &[Access::ReadWrite, Access::Read],
};
static ACCURACY_COUNT: KernelSpec = KernelSpec {
    shader: &SHADER,
    entry: "accuracy_count",
    bindings: &[Access::ReadWrite, Access::Read, Access::Read],
};
const WORKGROUP: u32 = 256;

/// `out[0] (+)= scale · Σ x` over all of `x`. Returns the passes to record
/// in order (one while `x` fits one chunk); the partial-sum buffers are
/// owned by the dispatches' bind groups.
pub fn reduce_sum(
    ctx: &GpuContext,
    out: &GpuTensor,
    x: &GpuTensor,
    options: SumOptions,
) -> Result<Vec<Dispatch>> {
    let op = REDUCE_SUM.entry;
    if out.numel() != 1 || out.dtype != DType::F32 || x.dtype != DType::F32 {
        return Err(Error::shape(
            op,
            format!(
                "out {:?} must hold one f32 and x {:?} must be f32",
                out.shape, x.shape
            ),
        ));
    }
    if options.items == 0 {
        return Err(Error::shape(op, "items per lane must be at least 1"));
    }
    let chunk = options.items as u64 * WORKGROUP as u64;
    let mut dispatches = Vec::new();
    let mut scratch: Option<GpuTensor> = None;
    let mut n = x.numel() as u64;
    loop {
        let input = scratch.as_ref().unwrap_or(x);
        let groups = n.div_ceil(chunk).max(1);
        let last = groups == 1;
        let next = if last {
            None
        } else {
            Some(ctx.zeros(&[groups as usize], DType::F32)?)
        };
        let p = ReduceParams {
            n: n as u32,
            groups: groups as u32,
            items: options.items,
            accumulate: (last && options.accumulate) as u32,
            scale: if last { options.scale } else { 1.0 },
            _pad: [0; 3],
        };
        dispatches.push(ctx.prepare(
            &REDUCE_SUM,
            &[],
            &p,
            &[next.as_ref().unwrap_or(out), input],
            Grid::linear(groups as usize * WORKGROUP as usize, WORKGROUP),
        )?);
        if last {
            return Ok(dispatches);
        }
        n = groups;
        scratch = next;
    }
}

/// `count[0] += #{r : argmax(probs[r, :]) == labels[r]}` for `probs [B, C]`,
/// `labels [B]` (u32) and a one-element u32 `count`.
pub fn accuracy_count(
    ctx: &GpuContext,
    count: &GpuTensor,
    probs: &GpuTensor,
    labels: &GpuTensor,
) -> Result<Dispatch> {
    let op = ACCURACY_COUNT.entry;
    let &[rows, cols] = probs.shape.as_slice() else {
        return Err(Error::shape(
            op,
            format!("probs must be [batch, classes], got {:?}", probs.shape),
        ));
    };
    if cols == 0 || probs.dtype != DType::F32 {
        return Err(Error::shape(
            op,
            format!(
                "probs {:?} must be f32 with at least one class",
                probs.shape
            ),
        ));
    }
    expect_numel(op, "labels", &labels.shape, rows)?;
    expect_numel(op, "count", &count.shape, 1)?;
    if labels.dtype != DType::U32 || count.dtype != DType::U32 {
        return Err(Error::shape(op, "labels and count must be u32"));
    }
    let p = ReduceParams {
        n: rows as u32,
        groups: cols as u32,
        ..ReduceParams::default()
    };
    ctx.prepare(
        &ACCURACY_COUNT,
        &[],
        &p,
        &[count, probs, labels],
        Grid::linear(rows, WORKGROUP),
    )
}
