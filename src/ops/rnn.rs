//! Vanilla RNN with Keras `SimpleRNN` semantics:
//! `h_t = tanh(x_t·W + h_{t-1}·U + b)`, `h_0 = 0`; W `[D,H]`, U `[H,H]`, b `[H]`.
//!
//! Layouts are those of `ops::lstm` (time-major): x `[T,B,D]`, mask `[T,B]`
//! (u32 or f32, nonzero = real step; a masked step carries h through
//! unchanged, forward and backward), z and dz `[T,B,H]`, h_all `[T+1,B,H]`
//! with slot 0 the zero initial state, h_last `[B,H]`.
//!
//! GPU forward: one batched input projection `Z = X·W`, then the
//! recurrence either in one dispatch ([`rnn_sequence_forward`], each
//! invocation carrying two samples with their h in private arrays, for
//! H ≤ `ops::lstm::PERSISTENT_MAX_HIDDEN`; [`rnn_forward_persistent`]) or
//! per step (`z_t += h_{t-1}·U` and [`rnn_cell_forward`], which adds b and
//! applies tanh; [`rnn_forward_stepwise`], any H). Backward: the recurrence
//! in one dispatch ([`rnn_sequence_backward`]) or per step, last to first
//! ([`rnn_cell_backward`] then `dh_{t-1} += dz_t·Uᵀ`), writing dz of every
//! step; then `dW += Xᵀ·dZ`, `dU += H_{0..T-1}ᵀ·dZ`, `db += Σ dZ`
//! (`ops::bias::bias_backward`), `dx += dZ·Wᵀ` over all `T*B` rows.
//! [`rnn_forward_sequence`] and [`rnn_backward_sequence`] take the
//! persistent path wherever [`rnn_persistent_support`] allows it.
//! CPU reference: [`rnn_forward_cpu`] and [`rnn_backward_cpu`] follow the
//! plan of `ops::lstm`'s (one input projection, per step only the
//! recurrent product and the cell in place, batched weight gradients, the
//! halves of a large batch on two threads); [`rnn_forward_naive_cpu`] and
//! [`rnn_backward_naive_cpu`] spell the same computation step by step.
//! The sizes, weight and gradient bundles and the CPU helpers come from
//! `ops::lstm`.

use ndarray::linalg::general_mat_mul;
use ndarray::{
    s, Array2, Array3, ArrayView1, ArrayView2, ArrayView3, ArrayViewMut3, Axis, NdFloat,
};

use crate::error::{Error, Result};
use crate::gpu::{Access, Dispatch, GpuContext, GpuTensor, Grid, KernelSpec, Shader};
use crate::ops::activation::tanh_cpu as tanh;
use crate::ops::lstm::{
    check_step, check_weights, input_projection, mask_kind, on_batch_halves, persistent_groups,
    persistent_support, recurrent_backward, recurrent_projection, row, row_mut, split_mask,
    step_rows, step_rows_mut, weight_gradients, HiddenGrad, RecurrentCpuGrads, RecurrentDims,
    RecurrentGrads, RecurrentWeights,
};
use crate::tensor::{expect_numel, DType};

/// Uniform parameters, mirrored by `Params` in `shaders/rnn.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct RnnParams {
    pub batch: u32,
    pub hidden: u32,
    /// The timestep this dispatch handles.
    pub step: u32,
    pub steps: u32,
    /// 0: no mask, 1: u32 mask, 2: f32 mask.
    pub mask_kind: u32,
    /// Backward: an incoming gradient for every h_t (`return_sequences`).
    pub has_seq: u32,
    /// Backward: an incoming gradient for h_T.
    pub has_last: u32,
    pub _pad: u32,
}

// ---------------------------------------------------------------- CPU reference

fn is_real(mask: Option<&ArrayView1<bool>>, n: usize) -> bool {
    mask.is_none_or(|m| m[n])
}

/// One step of the cell kernel: `z` `[B,H]` holds `x_t·W + h_{t-1}·U`
/// (bias not yet added); `mask` `[B]`, true = real step. Returns h_t.
pub fn rnn_cell_forward_cpu<A: NdFloat>(
    z: &ArrayView2<A>,
    b: &ArrayView1<A>,
    h_prev: &ArrayView2<A>,
    mask: Option<&ArrayView1<bool>>,
) -> Array2<A> {
    Array2::from_shape_fn(h_prev.raw_dim(), |(n, j)| {
        if is_real(mask, n) {
            tanh(z[[n, j]] + b[j])
        } else {
            h_prev[[n, j]]
        }
    })
}

/// One step backward: `dz` `[B,H]` and the masked carry into dh_{t-1}
/// (0 on real steps; `dz·Uᵀ` is added separately).
#[derive(Clone, Debug)]
pub struct RnnCellGrads<A> {
    pub dz: Array2<A>,
    pub dh_prev: Array2<A>,
}

/// One step of the cell backward kernel from the total `dh` of h_t and the
/// saved h_t.
pub fn rnn_cell_backward_cpu<A: NdFloat>(
    dh: &ArrayView2<A>,
    h: &ArrayView2<A>,
    mask: Option<&ArrayView1<bool>>,
) -> RnnCellGrads<A> {
    let mut dz = Array2::zeros(h.raw_dim());
    let mut dh_prev = Array2::zeros(h.raw_dim());
    for ((n, j), &g) in dh.indexed_iter() {
        if is_real(mask, n) {
            dz[[n, j]] = g * (A::one() - h[[n, j]] * h[[n, j]]);
        } else {
            dh_prev[[n, j]] = g;
        }
    }
    RnnCellGrads { dz, dh_prev }
}

/// What the forward recurrence of a group of samples (`b` of the batch's
/// `B`) reads and writes: h_all `[T+1,b,H]` (slot t+1 holding `x_t·W` on
/// entry), mask `[T,b]`.
struct RnnForwardGroup<'a, A> {
    h_all: ArrayViewMut3<'a, A>,
    mask: Option<ArrayView2<'a, bool>>,
}

impl<A> RnnForwardGroup<'_, A> {
    fn split(self, at: usize) -> (Self, Self) {
        let (h0, h1) = self.h_all.split_at(Axis(1), at);
        let (m0, m1) = split_mask(self.mask, at);
        (
            Self {
                h_all: h0,
                mask: m0,
            },
            Self {
                h_all: h1,
                mask: m1,
            },
        )
    }
}

/// The whole sequence: x `[T,B,D]`, mask `[T,B]` (true = real step).
/// Returns h_all `[T+1,B,H]`, slot 0 the zero initial state.
///
/// As `ops::lstm::lstm_forward_cpu`: `X·W` of all `T·B` rows is one
/// product, written into slots 1.. of h_all; each step adds `h_{t-1}·U`
/// into its slot in place and applies the cell of [`rnn_cell_forward_cpu`]
/// on contiguous rows; the halves of a large batch run at once.
/// [`rnn_forward_naive_cpu`] is the same computation step by step.
pub fn rnn_forward_cpu<A: NdFloat>(
    x: &ArrayView3<A>,
    w: &ArrayView2<A>,
    u: &ArrayView2<A>,
    b: &ArrayView1<A>,
    mask: Option<&ArrayView2<bool>>,
) -> Array3<A> {
    let (steps, batch, _) = x.dim();
    let hidden = u.nrows();
    let mut h_all = Array3::zeros((steps + 1, batch, hidden));
    let mut z_rows = step_rows_mut(h_all.slice_mut(s![1.., .., ..]));
    general_mat_mul(A::one(), &step_rows(x), w, A::zero(), &mut z_rows);
    let b = b.as_standard_layout();
    let b = b.as_slice().expect("standard layout");
    let group = RnnForwardGroup {
        h_all: h_all.view_mut(),
        mask: mask.map(|m| m.view()),
    };
    on_batch_halves(batch, group, RnnForwardGroup::split, |g| {
        rnn_forward_group(g, u, b)
    });
    h_all
}

/// The recurrence of [`rnn_forward_cpu`] over one group of samples.
fn rnn_forward_group<A: NdFloat>(group: RnnForwardGroup<A>, u: &ArrayView2<A>, b: &[A]) {
    let RnnForwardGroup { mut h_all, mask } = group;
    let (steps, batch) = (h_all.len_of(Axis(0)) - 1, h_all.len_of(Axis(1)));
    for t in 0..steps {
        let (h_prev, mut h) = h_all.multi_slice_mut((s![t, .., ..], s![t + 1, .., ..]));
        // z_t = x_t·W + h_{t-1}·U, in place in slot t+1.
        general_mat_mul(A::one(), &h_prev, u, A::one(), &mut h);
        for n in 0..batch {
            let (h_prev, h) = (row(&h_prev, n), row_mut(&mut h, n));
            if !mask.as_ref().is_none_or(|m| m[[t, n]]) {
                h.copy_from_slice(h_prev);
                continue;
            }
            for (v, &b) in h.iter_mut().zip(b) {
                *v = tanh(*v + b);
            }
        }
    }
}

/// [`rnn_forward_cpu`] spelled step by step with the cell function: the
/// plain reference the fast version is tested against.
pub fn rnn_forward_naive_cpu<A: NdFloat>(
    x: &ArrayView3<A>,
    w: &ArrayView2<A>,
    u: &ArrayView2<A>,
    b: &ArrayView1<A>,
    mask: Option<&ArrayView2<bool>>,
) -> Array3<A> {
    let (steps, batch, _) = x.dim();
    let hidden = u.nrows();
    let mut h_all = Array3::zeros((steps + 1, batch, hidden));
    for t in 0..steps {
        let h_prev = h_all.index_axis(Axis(0), t).to_owned();
        let z = x.index_axis(Axis(0), t).dot(w) + h_prev.dot(u);
        let mask_t = mask.map(|m| m.row(t));
        let h = rnn_cell_forward_cpu(&z.view(), b, &h_prev.view(), mask_t.as_ref());
        h_all.index_axis_mut(Axis(0), t + 1).assign(&h);
    }
    h_all
}

/// What the backward recurrence of a group of samples reads and writes:
/// dz `[T,b,H]` (written), dh_seq `[T,b,H]`, h_all `[T+1,b,H]`, mask `[T,b]`.
struct RnnBackwardGroup<'a, A> {
    dz: ArrayViewMut3<'a, A>,
    dh_seq: ArrayView3<'a, A>,
    h_all: ArrayView3<'a, A>,
    mask: Option<ArrayView2<'a, bool>>,
}

impl<A> RnnBackwardGroup<'_, A> {
    fn split(self, at: usize) -> (Self, Self) {
        let (dz0, dz1) = self.dz.split_at(Axis(1), at);
        let (s0, s1) = self.dh_seq.split_at(Axis(1), at);
        let (h0, h1) = self.h_all.split_at(Axis(1), at);
        let (m0, m1) = split_mask(self.mask, at);
        (
            Self {
                dz: dz0,
                dh_seq: s0,
                h_all: h0,
                mask: m0,
            },
            Self {
                dz: dz1,
                dh_seq: s1,
                h_all: h1,
                mask: m1,
            },
        )
    }
}

/// Accumulates the gradients of the whole sequence into `grads`. `dh_seq`
/// `[T,B,H]` is the incoming gradient of h_1..h_T (for a loss on h_T only,
/// zero except its last slice).
///
/// As `ops::lstm::lstm_backward_cpu`: the reverse recurrence (by halves of
/// a large batch at once) writes dz of every step with the cell backward
/// of [`rnn_cell_backward_cpu`] on contiguous rows and `dh_{t-1} += dz_t·Uᵀ`
/// in place; dW, dU, db and dx then follow from all `T·B` rows of dz in
/// single products. [`rnn_backward_naive_cpu`] is the same computation
/// step by step (its sums over steps run in another order).
pub fn rnn_backward_cpu<A: NdFloat>(
    grads: &mut RecurrentCpuGrads<A>,
    dh_seq: &ArrayView3<A>,
    h_all: &ArrayView3<A>,
    x: &ArrayView3<A>,
    w: &ArrayView2<A>,
    u: &ArrayView2<A>,
    mask: Option<&ArrayView2<bool>>,
) {
    let (steps, batch, _) = x.dim();
    let hidden = u.nrows();
    let mut dz = Array3::zeros((steps, batch, hidden));
    let dh_seq = dh_seq.as_standard_layout();
    let h_all_std = h_all.as_standard_layout();
    let group = RnnBackwardGroup {
        dz: dz.view_mut(),
        dh_seq: dh_seq.view(),
        h_all: h_all_std.view(),
        mask: mask.map(|m| m.view()),
    };
    on_batch_halves(batch, group, RnnBackwardGroup::split, |g| {
        rnn_backward_group(g, u)
    });
    grads.add_from_dz(&dz.view(), x, &h_all.slice(s![..steps, .., ..]), w);
}

/// The reverse recurrence of [`rnn_backward_cpu`] over one group of samples.
fn rnn_backward_group<A: NdFloat>(group: RnnBackwardGroup<A>, u: &ArrayView2<A>) {
    let RnnBackwardGroup {
        mut dz,
        dh_seq,
        h_all,
        mask,
    } = group;
    let (steps, batch, hidden) = dz.dim();
    let (zero, one) = (A::zero(), A::one());
    // The total gradient of h_t, carried from step t+1.
    let mut dh = Array2::<A>::zeros((batch, hidden));
    for t in (0..steps).rev() {
        dh += &dh_seq.index_axis(Axis(0), t);
        let mut dz_t = dz.index_axis_mut(Axis(0), t);
        let h_t = h_all.index_axis(Axis(0), t + 1);
        for n in 0..batch {
            // A masked step carries dh through; its dz stays 0.
            if !mask.as_ref().is_none_or(|m| m[[t, n]]) {
                continue;
            }
            let (h, dh, dz) = (row(&h_t, n), row_mut(&mut dh, n), row_mut(&mut dz_t, n));
            for j in 0..hidden {
                dz[j] = dh[j] * (one - h[j] * h[j]);
                // A real step passes dh back only through dz·Uᵀ (added below).
                dh[j] = zero;
            }
        }
        // dh_{t-1} = (masked carry) + dz_t·Uᵀ, in place.
        general_mat_mul(one, &dz_t, &u.t(), one, &mut dh);
    }
}

/// [`rnn_backward_cpu`] spelled step by step with the cell function: the
/// plain reference the fast version is tested against.
pub fn rnn_backward_naive_cpu<A: NdFloat>(
    grads: &mut RecurrentCpuGrads<A>,
    dh_seq: &ArrayView3<A>,
    h_all: &ArrayView3<A>,
    x: &ArrayView3<A>,
    w: &ArrayView2<A>,
    u: &ArrayView2<A>,
    mask: Option<&ArrayView2<bool>>,
) {
    let (steps, batch, _) = x.dim();
    let hidden = u.nrows();
    let mut dh = Array2::<A>::zeros((batch, hidden));
    for t in (0..steps).rev() {
        dh += &dh_seq.index_axis(Axis(0), t);
        let mask_t = mask.map(|m| m.row(t));
        let cell = rnn_cell_backward_cpu(
            &dh.view(),
            &h_all.index_axis(Axis(0), t + 1),
            mask_t.as_ref(),
        );
        let dz = &cell.dz;
        grads.dw += &x.index_axis(Axis(0), t).t().dot(dz);
        grads.du += &h_all.index_axis(Axis(0), t).t().dot(dz);
        grads.db += &dz.sum_axis(Axis(0));
        let mut dx_t = grads.dx.slice_mut(s![t, .., ..]);
        dx_t += &dz.dot(&w.t());
        dh = cell.dh_prev + dz.dot(&u.t());
    }
}

// ---------------------------------------------------------------- GPU

static SHADER: Shader = crate::shader!("rnn");
const WORKGROUP: u32 = 64;

static CELL_FORWARD: KernelSpec = KernelSpec {
    shader: &SHADER,
    entry: "rnn_cell_forward",
    bindings: &[
        Access::Read,      // z
        Access::Read,      // bias
        Access::Read,      // mask
        Access::ReadWrite, // h_all
        Access::ReadWrite, // h_last
    ],
};
static CELL_BACKWARD: KernelSpec = KernelSpec {
    shader: &SHADER,
    entry: "rnn_cell_backward",
    bindings: &[
        Access::ReadWrite, // dz
        Access::ReadWrite, // dh_carry
        Access::Read,      // dh_seq
        Access::Read,      // dh_last
        Access::Read,      // h_all
        Access::Read,      // mask
    ],
};

static SEQUENCE_FORWARD: KernelSpec = KernelSpec {
    shader: &SHADER,
    entry: "rnn_sequence_forward",
    bindings: &[
        Access::Read,      // z (= X·W)
        Access::Read,      // bias
        Access::Read,      // U
        Access::Read,      // mask
        Access::ReadWrite, // h_all
        Access::ReadWrite, // h_last
    ],
};
static SEQUENCE_BACKWARD: KernelSpec = KernelSpec {
    shader: &SHADER,
    entry: "rnn_sequence_backward",
    bindings: &[
        Access::ReadWrite, // dz
        Access::Read,      // dh_seq
        Access::Read,      // dh_last
        Access::Read,      // h_all
        Access::Read,      // U
        Access::Read,      // mask
    ],
};

/// The device buffers of one RNN layer, allocated once; the dispatches
/// built over them are recorded again every training step.
#[derive(Debug)]
pub struct RnnBuffers {
    pub dims: RecurrentDims,
    /// Pre-activations `[T,B,H]`: `X·W`, then `+ h_{t-1}·U` per step.
    pub z: GpuTensor,
    /// `[T+1,B,H]`, slot 0 the zero initial state; saved for backward.
    pub h_all: GpuTensor,
    /// h_T `[B,H]`, written by the last step's cell kernel.
    pub h_last: GpuTensor,
    /// Backward scratch: dz `[T,B,H]` and the carry into step t-1 `[B,H]`.
    pub dz: GpuTensor,
    pub dh_carry: GpuTensor,
}

impl RnnBuffers {
    pub fn new(ctx: &GpuContext, dims: RecurrentDims) -> Result<Self> {
        dims.check("rnn")?;
        let RecurrentDims {
            steps: t,
            batch: b,
            hidden: h,
            ..
        } = dims;
        let f32 = DType::F32;
        Ok(Self {
            dims,
            z: ctx.zeros(&[t, b, h], f32)?,
            h_all: ctx.zeros(&[t + 1, b, h], f32)?,
            h_last: ctx.zeros(&[b, h], f32)?,
            dz: ctx.zeros(&[t, b, h], f32)?,
            dh_carry: ctx.zeros(&[b, h], f32)?,
        })
    }
}

fn params(dims: RecurrentDims, step: usize, mask_kind: u32) -> RnnParams {
    RnnParams {
        batch: dims.batch as u32,
        hidden: dims.hidden as u32,
        step: step as u32,
        steps: dims.steps as u32,
        mask_kind,
        ..RnnParams::default()
    }
}

/// The cell kernel of step `step`: `h_t = tanh(z_t + bias)` into slot t+1 of
/// h_all (slot t carried on masked steps), and h_last on the final step.
pub fn rnn_cell_forward(
    ctx: &GpuContext,
    bufs: &RnnBuffers,
    bias: &GpuTensor,
    mask: Option<&GpuTensor>,
    step: usize,
) -> Result<Dispatch> {
    let op = CELL_FORWARD.entry;
    let dims = bufs.dims;
    check_step(op, step, dims)?;
    expect_numel(op, "bias", &bias.shape, dims.hidden)?;
    let kind = mask_kind(op, mask, dims)?;
    // Without a mask the binding is never read; any read-only buffer fills it.
    let mask = mask.unwrap_or(bias);
    ctx.prepare(
        &CELL_FORWARD,
        &[],
        &params(dims, step, kind),
        &[&bufs.z, bias, mask, &bufs.h_all, &bufs.h_last],
        Grid::linear(dims.batch * dims.hidden, WORKGROUP),
    )
}

/// The cell backward kernel of step `step`: from the incoming `dh` (plus the
/// carry from step t+1, except on the last step) writes dz_t into `bufs.dz`
/// and the masked carry into `bufs.dh_carry` (`dz_t·Uᵀ` is added after).
pub fn rnn_cell_backward(
    ctx: &GpuContext,
    bufs: &RnnBuffers,
    dh: HiddenGrad,
    mask: Option<&GpuTensor>,
    step: usize,
) -> Result<Dispatch> {
    let op = CELL_BACKWARD.entry;
    let dims = bufs.dims;
    check_step(op, step, dims)?;
    let (b, h) = (dims.batch, dims.hidden);
    if let Some(seq) = dh.seq {
        expect_numel(op, "dh_seq", &seq.shape, dims.steps * b * h)?;
    }
    if let Some(last) = dh.last {
        expect_numel(op, "dh_last", &last.shape, b * h)?;
    }
    let kind = mask_kind(op, mask, dims)?;
    let mut p = params(dims, step, kind);
    p.has_seq = dh.seq.is_some() as u32;
    p.has_last = dh.last.is_some() as u32;
    // Absent inputs are never read; the read-only h_all fills them.
    let stand_in = &bufs.h_all;
    ctx.prepare(
        &CELL_BACKWARD,
        &[],
        &p,
        &[
            &bufs.dz,
            &bufs.dh_carry,
            dh.seq.unwrap_or(stand_in),
            dh.last.unwrap_or(stand_in),
            &bufs.h_all,
            mask.unwrap_or(stand_in),
        ],
        Grid::linear(b * h, WORKGROUP),
    )
}

/// Whether [`rnn_sequence_forward`] and [`rnn_sequence_backward`] handle
/// `dims` on this device: H ≤ [`PERSISTENT_MAX_HIDDEN`], and ceil(B/16)
/// workgroups within the adapter's limit.
///
/// [`PERSISTENT_MAX_HIDDEN`]: crate::ops::lstm::PERSISTENT_MAX_HIDDEN
pub fn rnn_persistent_support(ctx: &GpuContext, dims: RecurrentDims) -> Result<()> {
    persistent_support(ctx, "rnn_persistent", dims)
}

/// The whole forward recurrence in one dispatch (each invocation runs two
/// samples through every step): from `bufs.z` holding `X·W` (left as it
/// is), writes h_all (slots 1..=T; slot 0 is the initial state, read here)
/// and h_last as the per-step [`rnn_cell_forward`] sequence does.
pub fn rnn_sequence_forward(
    ctx: &GpuContext,
    bufs: &RnnBuffers,
    weights: &RecurrentWeights,
    mask: Option<&GpuTensor>,
) -> Result<Dispatch> {
    let op = SEQUENCE_FORWARD.entry;
    let dims = bufs.dims;
    persistent_support(ctx, op, dims)?;
    let h = dims.hidden;
    expect_numel(op, "U", &weights.u.shape, h * h)?;
    expect_numel(op, "bias", &weights.b.shape, h)?;
    let kind = mask_kind(op, mask, dims)?;
    ctx.prepare(
        &SEQUENCE_FORWARD,
        &[("HIDDEN", h as f64)],
        &params(dims, 0, kind),
        &[
            &bufs.z,
            weights.b,
            weights.u,
            // Without a mask the binding is never read.
            mask.unwrap_or(weights.b),
            &bufs.h_all,
            &bufs.h_last,
        ],
        Grid::Workgroups([persistent_groups(dims), 1, 1]),
    )
}

/// The whole backward recurrence in one dispatch (each invocation runs two
/// samples from the last step to the first): writes dz of every step into
/// `bufs.dz` from the incoming `dh` and h_all forward saved. The weight
/// gradients follow as matmuls over dz.
pub fn rnn_sequence_backward(
    ctx: &GpuContext,
    bufs: &RnnBuffers,
    dh: HiddenGrad,
    u: &GpuTensor,
    mask: Option<&GpuTensor>,
) -> Result<Dispatch> {
    let op = SEQUENCE_BACKWARD.entry;
    let dims = bufs.dims;
    persistent_support(ctx, op, dims)?;
    let (b, h) = (dims.batch, dims.hidden);
    expect_numel(op, "U", &u.shape, h * h)?;
    if let Some(seq) = dh.seq {
        expect_numel(op, "dh_seq", &seq.shape, dims.steps * b * h)?;
    }
    if let Some(last) = dh.last {
        expect_numel(op, "dh_last", &last.shape, b * h)?;
    }
    let kind = mask_kind(op, mask, dims)?;
    let mut p = params(dims, 0, kind);
    p.has_seq = dh.seq.is_some() as u32;
    p.has_last = dh.last.is_some() as u32;
    // Absent inputs are never read; the read-only h_all fills them.
    let stand_in = &bufs.h_all;
    ctx.prepare(
        &SEQUENCE_BACKWARD,
        &[("HIDDEN", h as f64)],
        &p,
        &[
            &bufs.dz,
            dh.seq.unwrap_or(stand_in),
            dh.last.unwrap_or(stand_in),
            &bufs.h_all,
            u,
            mask.unwrap_or(stand_in),
        ],
        Grid::Workgroups([persistent_groups(dims), 1, 1]),
    )
}

/// The whole forward pass over x `[T,B,D]`: fills `bufs.h_all` and
/// `h_last` (and `bufs.z`, see below) in the fewest dispatches the device
/// allows: [`rnn_forward_persistent`] (2 dispatches) when
/// [`rnn_persistent_support`] says it fits, else [`rnn_forward_stepwise`]
/// (2T). Record the returned dispatches in order, in one `ctx.run`. Slot 0
/// of h_all must hold the zero initial state (as [`RnnBuffers::new`]
/// leaves it; nothing writes it).
pub fn rnn_forward_sequence(
    ctx: &GpuContext,
    bufs: &RnnBuffers,
    x: &GpuTensor,
    weights: &RecurrentWeights,
    mask: Option<&GpuTensor>,
) -> Result<Vec<Dispatch>> {
    if rnn_persistent_support(ctx, bufs.dims).is_ok() {
        rnn_forward_persistent(ctx, bufs, x, weights, mask)
    } else {
        rnn_forward_stepwise(ctx, bufs, x, weights, mask)
    }
}

/// The forward pass in two dispatches: `Z = X·W` (bufs.z keeps it), then
/// [`rnn_sequence_forward`].
pub fn rnn_forward_persistent(
    ctx: &GpuContext,
    bufs: &RnnBuffers,
    x: &GpuTensor,
    weights: &RecurrentWeights,
    mask: Option<&GpuTensor>,
) -> Result<Vec<Dispatch>> {
    let op = "rnn_forward_persistent";
    let dims = bufs.dims;
    let gates = dims.hidden;
    check_weights(op, x, weights, dims, gates)?;
    Ok(vec![
        input_projection(ctx, &bufs.z, x, weights.w, dims, gates)?,
        rnn_sequence_forward(ctx, bufs, weights, mask)?,
    ])
}

/// The forward pass one step at a time (any H; the readable reference):
/// `Z = X·W`, then per step `z_t += h_{t-1}·U` and [`rnn_cell_forward`].
/// bufs.z ends up holding the full pre-activations.
pub fn rnn_forward_stepwise(
    ctx: &GpuContext,
    bufs: &RnnBuffers,
    x: &GpuTensor,
    weights: &RecurrentWeights,
    mask: Option<&GpuTensor>,
) -> Result<Vec<Dispatch>> {
    let op = "rnn_forward_stepwise";
    let dims = bufs.dims;
    let gates = dims.hidden;
    check_weights(op, x, weights, dims, gates)?;
    let mut d = Vec::with_capacity(2 * dims.steps + 1);
    d.push(input_projection(ctx, &bufs.z, x, weights.w, dims, gates)?);
    for t in 0..dims.steps {
        // h_0 = 0: the first step has no recurrent term.
        if t > 0 {
            d.push(recurrent_projection(
                ctx,
                &bufs.z,
                &bufs.h_all,
                weights.u,
                dims,
                gates,
                t,
            )?);
        }
        d.push(rnn_cell_forward(ctx, bufs, weights.b, mask, t)?);
    }
    Ok(d)
}

/// The whole backward pass: accumulates dx (if given), dW, dU and db from
/// the incoming gradient of the hidden states and what forward left in
/// `bufs` (either forward path), in the fewest dispatches the device
/// allows: [`rnn_backward_persistent`] when [`rnn_persistent_support`]
/// says it fits, else [`rnn_backward_stepwise`]. Record the returned
/// dispatches in order, in one `ctx.run`, after the forward ones.
pub fn rnn_backward_sequence(
    ctx: &GpuContext,
    grads: &RecurrentGrads,
    dh: HiddenGrad,
    bufs: &RnnBuffers,
    x: &GpuTensor,
    weights: &RecurrentWeights,
    mask: Option<&GpuTensor>,
) -> Result<Vec<Dispatch>> {
    if rnn_persistent_support(ctx, bufs.dims).is_ok() {
        rnn_backward_persistent(ctx, grads, dh, bufs, x, weights, mask)
    } else {
        rnn_backward_stepwise(ctx, grads, dh, bufs, x, weights, mask)
    }
}

/// The backward pass with the recurrence in one dispatch:
/// [`rnn_sequence_backward`] (dz of every step), then the weight gradients
/// as matmuls over all `T*B` rows (4 or 5 dispatches).
pub fn rnn_backward_persistent(
    ctx: &GpuContext,
    grads: &RecurrentGrads,
    dh: HiddenGrad,
    bufs: &RnnBuffers,
    x: &GpuTensor,
    weights: &RecurrentWeights,
    mask: Option<&GpuTensor>,
) -> Result<Vec<Dispatch>> {
    let op = "rnn_backward_persistent";
    let dims = bufs.dims;
    let gates = dims.hidden;
    check_weights(op, x, weights, dims, gates)?;
    if dh.seq.is_none() && dh.last.is_none() {
        return Err(Error::shape(op, "no incoming gradient (seq or last)"));
    }
    let mut d = vec![rnn_sequence_backward(ctx, bufs, dh, weights.u, mask)?];
    d.extend(weight_gradients(
        ctx,
        grads,
        &bufs.dz,
        x,
        &bufs.h_all,
        weights.w,
        dims,
    )?);
    Ok(d)
}

/// The backward pass one step at a time (any H; the readable reference):
/// per step, last to first, [`rnn_cell_backward`] then
/// `dh_{t-1} += dz_t·Uᵀ`; then the weight gradients.
pub fn rnn_backward_stepwise(
    ctx: &GpuContext,
    grads: &RecurrentGrads,
    dh: HiddenGrad,
    bufs: &RnnBuffers,
    x: &GpuTensor,
    weights: &RecurrentWeights,
    mask: Option<&GpuTensor>,
) -> Result<Vec<Dispatch>> {
    let op = "rnn_backward_stepwise";
    let dims = bufs.dims;
    let gates = dims.hidden;
    check_weights(op, x, weights, dims, gates)?;
    if dh.seq.is_none() && dh.last.is_none() {
        return Err(Error::shape(op, "no incoming gradient (seq or last)"));
    }
    let mut d = Vec::with_capacity(2 * dims.steps + 4);
    for t in (0..dims.steps).rev() {
        d.push(rnn_cell_backward(ctx, bufs, dh, mask, t)?);
        // dh_0 is not needed: h_0 is the constant initial state.
        if t > 0 {
            d.push(recurrent_backward(
                ctx,
                &bufs.dh_carry,
                &bufs.dz,
                weights.u,
                dims,
                gates,
                t,
            )?);
        }
    }
    d.extend(weight_gradients(
        ctx,
        grads,
        &bufs.dz,
        x,
        &bufs.h_all,
        weights.w,
        dims,
    )?);
    Ok(d)
}

// ---------------------------------------------------------------- autograd rule
//
// Saves: x (the layer's input) and, in `RnnBuffers`, h_all. Backward:
// `rnn_backward_sequence`, i.e. `rnn_sequence_backward` (or per step
// `rnn_cell_backward` + `matmul_abt` for the dh carry), then `matmul_atb`
// (dW, dU), `bias_backward` (db) and `matmul_abt` (dx). Outputs: `h_last` (`return_sequences=False`) or h_all
// slots 1..=T.
