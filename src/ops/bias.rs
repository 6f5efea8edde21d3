//! Bias add and the bias gradient: CPU reference and GPU launchers. The
//! output is viewed as `[rows, cols]` with every leading dimension flattened
//! into rows (`[32, 26, 26, 32]` is 21632 rows of 32), the bias is `[cols]`.
//!
//! - `bias_add`: `y[r, c] += b[c]` in place, so a Dense or Conv2D layer adds
//!   its bias straight into the matmul/conv output without another buffer.
//! - `bias_backward`: `db[c] += Σ_r dy[r, c]`, deterministic (no atomics). A
//!   workgroup reduces a chunk of rows for a tile of columns; when one chunk
//!   does not cover all rows (conv bias: 21632 rows), a first pass writes one
//!   partial sum per chunk and a second pass of the same kernel adds the
//!   partials into `db`. The launcher therefore returns one or two dispatches.
//!
//! Autograd rule: `y = x + b` saves nothing; `dx += dy` is the identity
//! (the layer passes dy through) and `db += Σ_r dy` is `bias_backward`.

use ndarray::{Array1, ArrayD, ArrayView1, ArrayViewD, Axis, NdFloat};

use crate::error::{Error, Result};
use crate::gpu::{Access, Dispatch, GpuContext, GpuTensor, Grid, KernelSpec, Shader};

/// Uniform parameters, mirrored by `Params` in `shaders/bias.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BiasParams {
    pub rows: u32,
    pub cols: u32,
    /// `bias_backward`: rows reduced by one workgroup.
    pub rows_per_group: u32,
    /// `bias_backward`: 1 adds into the output, 0 overwrites it.
    pub accumulate: u32,
}

// ---------------------------------------------------------------- CPU reference

/// `y[.., c] += b[c]` over the last axis of `y`.
pub fn bias_add_cpu<A: NdFloat>(y: &mut ArrayD<A>, b: &ArrayView1<A>) {
    let last = Axis(y.ndim() - 1);
    for mut row in y.lanes_mut(last) {
        row += b;
    }
}

/// `db[c] += Σ_r dy[r, c]`, rows summed in order.
pub fn bias_backward_cpu<A: NdFloat>(db: &mut Array1<A>, dy: &ArrayViewD<A>) {
    let last = Axis(dy.ndim() - 1);
    for row in dy.lanes(last) {
        *db += &row;
    }
}

// ---------------------------------------------------------------- GPU

static SHADER: Shader = crate::shader!("bias");
static BIAS_ADD: KernelSpec = KernelSpec {
    shader: &SHADER,
    entry: "bias_add",
    bindings: &[Access::ReadWrite, Access::Read],
};
static BIAS_BACKWARD: KernelSpec = KernelSpec {
    shader: &SHADER,
    entry: "bias_backward",
    bindings: &[Access::ReadWrite, Access::Read],
};
/// Four columns per invocation, for a column count that is a multiple of 4.
static BIAS_BACKWARD_VEC4: KernelSpec = KernelSpec {
    shader: &SHADER,
    entry: "bias_backward_vec4",
    bindings: &[Access::ReadWrite, Access::Read],
};
const WORKGROUP: u32 = 256;
/// Rows each `bias_backward` lane adds before the workgroup tree: enough work
/// per invocation to hide the dispatch, few enough that the conv bias
/// (21632 rows) still spreads over many workgroups.
const ROWS_PER_LANE: u32 = 32;

/// Rows and columns of `y` viewed as `[rows, cols]` against a bias of `cols`.
fn rows_cols(op: &str, y: &GpuTensor, b: &GpuTensor) -> Result<(usize, usize)> {
    let cols = b.numel();
    if b.shape.len() != 1 || y.shape.last() != Some(&cols) || cols == 0 {
        return Err(Error::shape(
            op,
            format!(
                "bias {:?} must be 1-D and match the last dimension of {:?}",
                b.shape, y.shape
            ),
        ));
    }
    Ok((y.numel() / cols, cols))
}

/// `y[r, c] += b[c]` in place; `y`'s last dimension must equal `b`'s length.
pub fn bias_add(ctx: &GpuContext, y: &GpuTensor, b: &GpuTensor) -> Result<Dispatch> {
    let (rows, cols) = rows_cols(BIAS_ADD.entry, y, b)?;
    let p = BiasParams {
        rows: rows as u32,
        cols: cols as u32,
        ..BiasParams::default()
    };
    ctx.prepare(
        &BIAS_ADD,
        &[],
        &p,
        &[y, b],
        Grid::linear(rows * cols, WORKGROUP),
    )
}

/// Columns per `bias_backward` workgroup: the smallest power of two covering
/// `cols`, at most 32 (then 8 lanes per column share the rows).
fn cols_per_group(cols: usize) -> u32 {
    (cols.next_power_of_two() as u32).min(32)
}

/// `db[c] += Σ_r dy[r, c]`. Returns one dispatch when a single row chunk
/// covers `dy`, otherwise a chain (partial sums per chunk, then their sum);
/// record them in order. The partial-sum buffers are owned by the
/// dispatches' bind groups.
pub fn bias_backward(ctx: &GpuContext, db: &GpuTensor, dy: &GpuTensor) -> Result<Vec<Dispatch>> {
    let op = BIAS_BACKWARD.entry;
    let (rows, cols) = rows_cols(op, dy, db)?;
    // The vec4 kernel counts columns (and the partial sums' width) in vec4s.
    let (spec, units) = if cols.is_multiple_of(4) {
        (&BIAS_BACKWARD_VEC4, cols / 4)
    } else {
        (&BIAS_BACKWARD, cols)
    };
    let col_tile = cols_per_group(units);
    let rows_per_group = (WORKGROUP / col_tile) * ROWS_PER_LANE;
    let constants = [("COLS", col_tile as f64)];
    let col_groups = (units as u32).div_ceil(col_tile);

    let mut dispatches = Vec::new();
    let mut scratch: Option<GpuTensor> = None;
    let mut rows = rows;
    loop {
        let input = scratch.as_ref().unwrap_or(dy);
        let chunks = (rows as u32).div_ceil(rows_per_group).max(1);
        let last = chunks == 1;
        let next = if last {
            None
        } else {
            Some(ctx.zeros(&[chunks as usize, cols], crate::DType::F32)?)
        };
        let p = BiasParams {
            rows: rows as u32,
            cols: units as u32,
            rows_per_group,
            accumulate: last as u32,
        };
        let out = next.as_ref().unwrap_or(db);
        dispatches.push(ctx.prepare(
            spec,
            &constants,
            &p,
            &[out, input],
            Grid::Workgroups([col_groups, chunks, 1]),
        )?);
        if last {
            return Ok(dispatches);
        }
        rows = chunks as usize;
        scratch = next;
    }
}
