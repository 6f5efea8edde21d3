//! Embedding lookup: CPU reference and GPU launchers, forward (gather) and
//! backward (gradient of the table). Tokens are u32 of any shape with N
//! elements; the table is [V, D]; the output is [N, D] row-major (so
//! `[B, T, D]` for `[B, T]` tokens).
//!
//! A token >= V cannot be checked by the launcher (token values live on the
//! device): forward writes a zero row for it and backward ignores it, so the
//! kernels never read or write out of bounds. An optional padding token
//! (Keras' `mask_zero` uses 0) gets no gradient.
//!
//! Backward is deterministic without float atomics: the positions sorted by
//! token ([`token_order`], on the host) form one group per token, and the
//! group's first entry alone writes that token's row, adding the incoming
//! gradient of every position with the token in ascending position order.
//! The CPU reference adds in the same order, so f32 results agree bit for
//! bit.

use ndarray::{Array2, ArrayView2, NdFloat};

use crate::error::{Error, Result};
use crate::gpu::{Access, Dispatch, GpuContext, GpuTensor, Grid, KernelSpec, Shader};
use crate::tensor::{expect_numel, DType};

/// Uniform parameters, mirrored by `Params` in `shaders/embedding.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct EmbeddingParams {
    /// Positions (number of tokens).
    pub n: u32,
    /// Vocabulary size (table rows).
    pub v: u32,
    /// Embedding width (table columns).
    pub d: u32,
    /// 1 when `pad` is a padding token whose row gets no gradient.
    pub has_pad: u32,
    pub pad: u32,
    pub _pad: [u32; 3],
}

// ---------------------------------------------------------------- CPU reference

/// `out[n, :] = table[tokens[n], :]`; a token >= V gives a zero row.
pub fn embedding_forward_cpu<A: NdFloat>(table: &ArrayView2<A>, tokens: &[u32]) -> Array2<A> {
    let (v, d) = table.dim();
    let mut out = Array2::zeros((tokens.len(), d));
    for (mut row, &t) in out.rows_mut().into_iter().zip(tokens) {
        if (t as usize) < v {
            row.assign(&table.row(t as usize));
        }
    }
    out
}

/// `dtable[t, :] += dy[q, :]` for every position q with `tokens[q] = t`, in
/// ascending q; the padding token and tokens >= V get nothing.
pub fn embedding_backward_cpu<A: NdFloat>(
    dtable: &mut Array2<A>,
    dy: &ArrayView2<A>,
    tokens: &[u32],
    padding_idx: Option<u32>,
) {
    let v = dtable.nrows();
    for (q, &t) in tokens.iter().enumerate() {
        if (t as usize) < v && Some(t) != padding_idx {
            let mut row = dtable.row_mut(t as usize);
            row += &dy.row(q);
        }
    }
}

// ---------------------------------------------------------------- GPU

static SHADER: Shader = crate::shader!("embedding");
static FORWARD: KernelSpec = KernelSpec {
    shader: &SHADER,
    entry: "embedding_forward",
    bindings: &[Access::Read, Access::Read, Access::ReadWrite],
};
static BACKWARD: KernelSpec = KernelSpec {
    shader: &SHADER,
    entry: "embedding_backward",
    bindings: &[Access::ReadWrite, Access::Read, Access::Read, Access::Read],
};
static FORWARD_VEC4: KernelSpec = KernelSpec {
    shader: &SHADER,
    entry: "embedding_forward_vec4",
    bindings: FORWARD.bindings,
};
static BACKWARD_VEC4: KernelSpec = KernelSpec {
    shader: &SHADER,
    entry: "embedding_backward_vec4",
    bindings: BACKWARD.bindings,
};

/// The kernel and the row width it counts in: vec4s when `d` is a multiple
/// of 4, else floats.
fn pick(
    d: usize,
    scalar: &'static KernelSpec,
    vec4: &'static KernelSpec,
) -> (&'static KernelSpec, usize) {
    if d.is_multiple_of(4) {
        (vec4, d / 4)
    } else {
        (scalar, d)
    }
}

const WORKGROUP: u32 = 256;
/// Backward: sorted positions per workgroup.
const WG_POS: u32 = 64;

/// Checks dtypes and shapes; returns (N, V, D).
fn sizes(
    op: &str,
    table_name: &str,
    table: &GpuTensor,
    tokens: &GpuTensor,
    rows_name: &str,
    rows: &GpuTensor,
) -> Result<(usize, usize, usize)> {
    if tokens.dtype != DType::U32 {
        return Err(Error::shape(op, "tokens must hold u32 values, not f32"));
    }
    if table.dtype != DType::F32 || rows.dtype != DType::F32 {
        return Err(Error::shape(
            op,
            format!("{table_name} and {rows_name} must hold f32 values"),
        ));
    }
    let &[v, d] = table.shape.as_slice() else {
        return Err(Error::shape(
            op,
            format!(
                "{table_name} has shape {:?}, expected [vocabulary, width]",
                table.shape
            ),
        ));
    };
    let n = tokens.numel();
    expect_numel(op, rows_name, &rows.shape, n * d)?;
    if rows.shape.last() != Some(&d) && n * d > 0 {
        return Err(Error::shape(
            op,
            format!(
                "{rows_name} has shape {:?}, its last axis must be the width {d} of {table_name} {:?}",
                rows.shape, table.shape
            ),
        ));
    }
    if n * d > u32::MAX as usize || v > u32::MAX as usize {
        return Err(Error::Unsupported {
            op: op.into(),
            what: format!("{n} positions of width {d}"),
            why: "indices are 32-bit".into(),
        });
    }
    Ok((n, v, d))
}

/// `out = table[tokens]`: `table` [V, D], `tokens` u32 with N elements,
/// `out` with N·D elements and last axis D. Tokens >= V give zero rows.
pub fn embedding_forward(
    ctx: &GpuContext,
    table: &GpuTensor,
    tokens: &GpuTensor,
    out: &GpuTensor,
) -> Result<Dispatch> {
    let (n, v, d) = sizes(FORWARD.entry, "table", table, tokens, "out", out)?;
    let (spec, width) = pick(d, &FORWARD, &FORWARD_VEC4);
    let p = embedding_params(n, v, d, None);
    ctx.prepare(
        spec,
        &[],
        &p,
        &[table, tokens, out],
        Grid::linear(n * width, WORKGROUP),
    )
}

/// The params [`embedding_forward`] (with `padding_idx: None`) and
/// [`embedding_backward`] prepare for `n` positions of a `[v, d]` table (d
/// counted in vec4s where the kernels read vec4). A dispatch may be given
/// a smaller `n` per run through `Dispatch::set_params` (its grid covers
/// the prepared positions; the rest return at once).
pub fn embedding_params(n: usize, v: usize, d: usize, padding_idx: Option<u32>) -> EmbeddingParams {
    EmbeddingParams {
        n: n as u32,
        v: v as u32,
        d: if d.is_multiple_of(4) { d / 4 } else { d } as u32,
        has_pad: padding_idx.is_some() as u32,
        pad: padding_idx.unwrap_or(0),
        ..Default::default()
    }
}

/// The positions `0..N` sorted by token, ties in ascending position: the
/// order [`embedding_backward`] reads. Computed on the host, where the ids
/// come from (the graph executor does it when it uploads a batch).
pub fn token_order(tokens: &[u32]) -> Vec<u32> {
    let mut order: Vec<u32> = (0..tokens.len() as u32).collect();
    // Stable: equal tokens keep ascending positions.
    order.sort_by_key(|&q| tokens[q as usize]);
    order
}

/// `dtable[t] += Σ dy[q]` over positions q with `tokens[q] = t`, in
/// ascending q; the row of `padding_idx` and tokens >= V get nothing.
/// `order` is [`token_order`] of the tokens. Deterministic (one writer per
/// row, a fixed order) and O(N·D).
pub fn embedding_backward(
    ctx: &GpuContext,
    dtable: &GpuTensor,
    dy: &GpuTensor,
    tokens: &GpuTensor,
    order: &GpuTensor,
    padding_idx: Option<u32>,
) -> Result<Dispatch> {
    let (n, v, d) = sizes(BACKWARD.entry, "dtable", dtable, tokens, "dy", dy)?;
    if order.dtype != DType::U32 || order.numel() != n {
        return Err(Error::shape(
            BACKWARD.entry,
            format!(
                "order must be {n} u32 positions (token_order of the tokens), got {:?} {:?}",
                order.dtype, order.shape
            ),
        ));
    }
    let (spec, width) = pick(d, &BACKWARD, &BACKWARD_VEC4);
    let p = embedding_params(n, v, d, padding_idx);
    let grid = Grid::Workgroups([(n as u32).div_ceil(WG_POS), width as u32, 1]);
    ctx.prepare(spec, &[], &p, &[dtable, dy, tokens, order], grid)
}
