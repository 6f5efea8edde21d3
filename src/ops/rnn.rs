//! Vanilla RNN with Keras `SimpleRNN` semantics:
//! `h_t = tanh(x_t·W + h_{t-1}·U + b)`, `h_0 = 0`; W `[D,H]`, U `[H,H]`, b `[H]`.
//!
//! Layouts are those of `ops::lstm` (time-major): x `[T,B,D]`, mask `[T,B]`
//! (u32 or f32, nonzero = real step; a masked step carries h through
//! unchanged, forward and backward), z and dz `[T,B,H]`, h_all `[T+1,B,H]`
//! with slot 0 the zero initial state, h_last `[B,H]`.
//!
//! GPU: [`RnnBuffers`] (= `RecurrentBuffers<RnnState>`) run through the
//! drivers of `ops::recurrent`: one batched input projection `Z = X·W`,
//! then the recurrence either in one dispatch (`rnn_sequence_forward`, each
//! invocation carrying two samples with their h in private arrays, for
//! H ≤ `PERSISTENT_MAX_HIDDEN`) or per step (`z_t += h_{t-1}·U` and
//! `rnn_cell_forward`, which adds b and applies tanh; any H). Backward: the
//! recurrence in one dispatch (`rnn_sequence_backward`) or per step, last
//! to first (`rnn_cell_backward` then `dh_{t-1} += dz_t·Uᵀ`), writing dz of
//! every step; then `dW += Xᵀ·dZ`, `dU += H_{0..T-1}ᵀ·dZ`, `db += Σ dZ`,
//! `dx += dZ·Wᵀ` over all `T*B` rows.
//! CPU reference: [`rnn_forward_cpu`] and [`rnn_backward_cpu`] follow the
//! plan of `ops::lstm`'s (one input projection, per step only the
//! recurrent product and the cell in place, batched weight gradients, the
//! halves of a large batch on two threads); [`rnn_forward_naive_cpu`] and
//! [`rnn_backward_naive_cpu`] spell the same computation step by step.

use ndarray::linalg::general_mat_mul;
use ndarray::{
    s, Array2, Array3, ArrayView1, ArrayView2, ArrayView3, ArrayViewMut3, Axis, NdFloat,
};

use crate::error::Result;
use crate::gpu::{Access, GpuContext, GpuTensor, KernelSpec, Shader};
use crate::ops::activation::tanh_cpu as tanh;
use crate::ops::recurrent::{
    impl_split_batch, is_real, on_batch_halves, persistent_groups, row, row_mut, step_rows,
    step_rows_mut, PersistentKernel, RecurrentBuffers, RecurrentCell, RecurrentCpuGrads,
    RecurrentDims,
};

// ---------------------------------------------------------------- CPU reference

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

impl_split_batch!(RnnForwardGroup { h_all, mask });

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

impl_split_batch!(RnnBackwardGroup {
    dz,
    dh_seq,
    h_all,
    mask
});

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

/// The RNN keeps nothing on the device besides h: its backward reads h_all.
#[derive(Clone, Copy, Debug)]
pub struct RnnState;

/// The device buffers of one RNN layer.
pub type RnnBuffers = RecurrentBuffers<RnnState>;

impl RecurrentCell for RnnState {
    const NAME: &'static str = "rnn";
    const GATES: usize = 1;
    const CELL_FORWARD: &'static KernelSpec = &CELL_FORWARD;
    const CELL_BACKWARD: &'static KernelSpec = &CELL_BACKWARD;
    const SEQUENCE_FORWARD: &'static KernelSpec = &SEQUENCE_FORWARD;
    const SEQUENCE_BACKWARD: &'static KernelSpec = &SEQUENCE_BACKWARD;

    fn new(_: &GpuContext, _: RecurrentDims) -> Result<Self> {
        Ok(Self)
    }

    fn forward_state(&self) -> Vec<&GpuTensor> {
        Vec::new()
    }

    fn carries(&self) -> Vec<&GpuTensor> {
        Vec::new()
    }

    fn saved(bufs: &RnnBuffers) -> Vec<&GpuTensor> {
        vec![&bufs.h_all]
    }

    /// The pair form only (each invocation two samples, any H).
    fn sequence_kernel(_: &GpuContext, dims: RecurrentDims, backward: bool) -> PersistentKernel {
        PersistentKernel {
            spec: if backward {
                &SEQUENCE_BACKWARD
            } else {
                &SEQUENCE_FORWARD
            },
            constants: vec![("HIDDEN", dims.hidden as f64)],
            groups: persistent_groups(dims),
        }
    }
}

// ---------------------------------------------------------------- autograd rule
//
// Saves: x (the layer's input) and, in `RnnBuffers`, h_all. Backward:
// `recurrent_backward_sequence`, i.e. `rnn_sequence_backward` (or per step
// `rnn_cell_backward` + `matmul_abt` for the dh carry), then `matmul_atb`
// (dW, dU), `bias_backward` (db) and `matmul_abt` (dx). Outputs: `h_last`
// (`return_sequences=False`) or h_all slots 1..=T.
