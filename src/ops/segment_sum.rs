//! Row sums over segments of a permutation: `out[c] = Σ x[order[p]]` for
//! `p` in `start[c]..start[c+1]`, in ascending `p`. CPU reference and GPU
//! launcher.
//!
//! The graph executor uses it for the gradient of an embedding feeding a
//! recurrent layer: the positions sorted by token, cut into chunks of at
//! most [`MAX_CHUNK`] positions of one token ([`token_chunks`]), are the
//! segments, and the gate gradients summed per chunk stand in for the
//! per-position rows in `dW = xᵀ·dz` and `dx = dz·Wᵀ` (every position of a
//! chunk has the same input row). It is linear and only ever runs inside a
//! backward pass, so it has no backward of its own.

use ndarray::{Array2, ArrayView2, NdFloat};

use crate::error::{Error, Result};
use crate::gpu::{Access, Dispatch, GpuContext, GpuTensor, Grid, KernelSpec, Shader};
use crate::ops::embedding::token_order;
use crate::tensor::{expect_numel, DType};

/// Uniform parameters, mirrored by `Params` in `shaders/segment_sum.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct SegmentSumParams {
    /// Segments this run (`start` holds one more entry).
    pub segments: u32,
    /// Columns (vec4 columns for the vec4 kernel).
    pub width: u32,
    /// Rows of x (entries of `order`).
    pub rows: u32,
    pub _pad: u32,
}

/// The longest run of positions one chunk of [`token_chunks`] holds: long
/// runs (padding) are cut so that their sums spread over many invocations.
pub const MAX_CHUNK: usize = 64;

/// The positions of a batch's tokens sorted by token and cut into chunks
/// of one token each, at most [`MAX_CHUNK`] positions long.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TokenChunks {
    /// [`token_order`] of the tokens.
    pub order: Vec<u32>,
    /// Chunk `c` is `order[start[c]..start[c+1]]`; `chunks() + 1` entries.
    pub start: Vec<u32>,
    /// The first position of each chunk (any position of it would do: all
    /// hold the same token).
    pub first: Vec<u32>,
    /// The token of each chunk, ascending.
    pub token: Vec<u32>,
    /// The chunk of each position.
    pub chunk_of: Vec<u32>,
}

impl TokenChunks {
    pub fn chunks(&self) -> usize {
        self.token.len()
    }
}

/// Sorts the positions by token and cuts them into chunks (see [`TokenChunks`]).
pub fn token_chunks(tokens: &[u32]) -> TokenChunks {
    let order = token_order(tokens);
    let mut c = TokenChunks {
        start: vec![0],
        chunk_of: vec![0; tokens.len()],
        ..Default::default()
    };
    let mut p = 0;
    while p < order.len() {
        let t = tokens[order[p] as usize];
        let mut end = p + 1;
        while end < order.len() && end - p < MAX_CHUNK && tokens[order[end] as usize] == t {
            end += 1;
        }
        for &q in &order[p..end] {
            c.chunk_of[q as usize] = c.token.len() as u32;
        }
        c.first.push(order[p]);
        c.token.push(t);
        c.start.push(end as u32);
        p = end;
    }
    c.order = order;
    c
}

// ---------------------------------------------------------------- CPU reference

/// `out[c] = Σ x[order[p]]` over `p` in `start[c]..start[c+1]`, ascending.
pub fn segment_sum_cpu<A: NdFloat>(x: &ArrayView2<A>, order: &[u32], start: &[u32]) -> Array2<A> {
    let segments = start.len().saturating_sub(1);
    let mut out = Array2::zeros((segments, x.ncols()));
    for (c, mut row) in out.rows_mut().into_iter().enumerate() {
        for &q in &order[start[c] as usize..start[c + 1] as usize] {
            row += &x.row(q as usize);
        }
    }
    out
}

// ---------------------------------------------------------------- GPU

static SHADER: Shader = crate::shader!("segment_sum");
static SCALAR: KernelSpec = KernelSpec {
    shader: &SHADER,
    entry: "segment_sum",
    bindings: &[Access::ReadWrite, Access::Read, Access::Read, Access::Read],
};
static VEC4: KernelSpec = KernelSpec {
    shader: &SHADER,
    entry: "segment_sum_vec4",
    bindings: SCALAR.bindings,
};

const WORKGROUP: u32 = 64;
/// Workgroup rows: each strides over the segments (the count changes per
/// batch; the grid does not).
const MAX_GROUP_ROWS: u32 = 128;

/// `out[c] = Σ x[order[p]]` for the first `segments` segments of `start`.
/// `x` is `[rows, width]`, `order` `rows` u32 positions, `start` at least
/// `segments + 1` u32 bounds, `out` at least `segments` rows of `width`.
/// The grid is sized for every segment `start` and `out` can hold, so
/// [`Dispatch::set_params`] with [`SegmentSumParams::new`] may lower the
/// count per run.
pub fn segment_sum(
    ctx: &GpuContext,
    out: &GpuTensor,
    x: &GpuTensor,
    order: &GpuTensor,
    start: &GpuTensor,
    segments: usize,
) -> Result<Dispatch> {
    let op = SCALAR.entry;
    let &[rows, width] = x.shape.as_slice() else {
        return Err(Error::shape(
            op,
            format!("x has shape {:?}, expected [rows, width]", x.shape),
        ));
    };
    if order.dtype != DType::U32 || start.dtype != DType::U32 {
        return Err(Error::shape(op, "order and start must hold u32 values"));
    }
    if x.dtype != DType::F32 || out.dtype != DType::F32 {
        return Err(Error::shape(op, "x and out must hold f32 values"));
    }
    expect_numel(op, "order", &order.shape, rows)?;
    let capacity = (start.numel().saturating_sub(1)).min(out.numel() / width.max(1));
    if segments > capacity {
        return Err(Error::shape(
            op,
            format!(
                "{segments} segments, but start {:?} and out {:?} hold {capacity}",
                start.shape, out.shape
            ),
        ));
    }
    let spec = if width.is_multiple_of(4) {
        &VEC4
    } else {
        &SCALAR
    };
    let p = SegmentSumParams::new(rows, width, segments);
    let groups_y = (capacity as u32).clamp(1, MAX_GROUP_ROWS);
    let grid = Grid::Workgroups([(p.width).div_ceil(WORKGROUP).max(1), groups_y, 1]);
    ctx.prepare(spec, &[], &p, &[out, x, order, start], grid)
}

impl SegmentSumParams {
    /// The params of a [`segment_sum`] over `rows` rows of `width` columns
    /// with `segments` segments (the width counted in vec4s where the kernel
    /// reads vec4).
    pub fn new(rows: usize, width: usize, segments: usize) -> Self {
        Self {
            segments: segments as u32,
            width: if width.is_multiple_of(4) {
                width / 4
            } else {
                width
            } as u32,
            rows: rows as u32,
            _pad: 0,
        }
    }
}
