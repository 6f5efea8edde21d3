//! LSTM with Keras semantics: gate order i, f, g (cell), o; recurrent
//! activation sigmoid, activation tanh; `z_t = x_t·W + h_{t-1}·U + b`,
//! `c_t = f*c_{t-1} + i*g`, `h_t = o*tanh(c_t)`, `h_0 = c_0 = 0`.
//! W is `[D,4H]`, U `[H,4H]`, b `[4H]`.
//!
//! Layouts (time-major, so each step is one contiguous slice):
//! - x `[T,B,D]` (an embedding gathered from time-major token ids `[T,B]`
//!   produces it directly),
//! - mask `[T,B]`, u32 or f32, nonzero = real step, 0 = masked (Keras
//!   `mask_zero`; time-major token ids can be bound as the mask as they are).
//!   A masked step carries h and c through unchanged, forward and backward,
//!   so h_all at a masked step repeats the previous h (Keras' default
//!   `zero_output_for_mask=False`) and h_T is the last real step's h.
//! - z, gates, dz `[T,B,4H]`; h_all, c_all `[T+1,B,H]` with slot 0 the zero
//!   initial state; h_last `[B,H]` = h_all slot T (Keras `return_sequences=False`).
//!
//! GPU: [`LstmBuffers`] (= `RecurrentBuffers<LstmState>`) run through the
//! drivers of `ops::recurrent`. Forward: one batched input projection
//! `Z = X·W` over all `T*B` rows, then the recurrence, in one of two ways:
//! - persistent (`recurrent_forward_persistent`): `lstm_sequence_forward`
//!   runs every step in one dispatch (samples are independent, so
//!   workgroups never wait on each other), for H ≤ `PERSISTENT_MAX_HIDDEN`:
//!   2 dispatches in all. Its [`PersistentForm`] depends on H: for H a
//!   multiple of 4 up to [`BLOCKED_MAX_HIDDEN`] (the seed's 64) a workgroup
//!   carries 8 samples with the units split across its lanes and h shared in
//!   workgroup memory ("blocked", register-blocked like the matmul);
//!   otherwise each invocation carries two samples with their h and c in
//!   private arrays ("pair");
//! - per step (`recurrent_forward_stepwise`, any H, the readable
//!   reference): `z_t += h_{t-1}·U` (a matmul into the step's slice of Z)
//!   and the fused gate kernel `lstm_gates_forward` (adds b): 2T dispatches.
//!
//! Backward: the recurrence in one dispatch (`lstm_sequence_backward`) or
//! per step, last to first (`lstm_gates_backward` then
//! `dh_{t-1} += dz_t·Uᵀ`), writing dz of every step; then the weight
//! gradients as batched matmuls over all `T*B` rows. Both paths save the
//! same state (gates, c_all, h_all), so either backward follows either
//! forward.
//!
//! CPU reference: [`lstm_forward_cpu`] and [`lstm_backward_cpu`] follow
//! the same plan (one input projection over all `T*B` rows; per step only
//! `h_{t-1}·U` or `dz_t·Uᵀ` and the gates, in place on contiguous rows;
//! the weight gradients as single products after the reverse loop), with
//! the two halves of a batch of at least `CPU_SPLIT_MIN_BATCH` samples
//! on two threads. [`lstm_forward_naive_cpu`] and
//! [`lstm_backward_naive_cpu`] spell the same computation step by step with
//! the cell functions; tests/lstm.rs holds the fast ones to them.

use ndarray::linalg::general_mat_mul;
use ndarray::{
    s, Array2, Array3, ArrayView1, ArrayView2, ArrayView3, ArrayViewMut3, Axis, NdFloat,
};

use crate::error::Result;
use crate::gpu::{Access, GpuContext, GpuTensor, KernelSpec, Shader};
use crate::ops::activation::{
    sigmoid_cpu as sigmoid, sigmoid_slice_cpu as sigmoid_slice, tanh_cpu as tanh,
    tanh_slice_cpu as tanh_slice,
};
use crate::ops::recurrent::{
    impl_split_batch, is_real, on_batch_halves, persistent_groups, row, row_mut, step_rows,
    PersistentKernel, RecurrentBuffers, RecurrentCell, RecurrentCpuGrads, RecurrentDims,
};
use crate::tensor::DType;

// ---------------------------------------------------------------- CPU reference

/// One step's outputs: activated gates `[B,4H]`, `c_t` and `h_t` `[B,H]`.
#[derive(Clone, Debug)]
pub struct LstmCell<A> {
    pub gates: Array2<A>,
    pub c: Array2<A>,
    pub h: Array2<A>,
}

/// One step of the gate kernel: `z` `[B,4H]` holds `x_t·W + h_{t-1}·U`
/// (bias not yet added); `mask` `[B]`, true = real step.
pub fn lstm_cell_forward_cpu<A: NdFloat>(
    z: &ArrayView2<A>,
    b: &ArrayView1<A>,
    c_prev: &ArrayView2<A>,
    h_prev: &ArrayView2<A>,
    mask: Option<&ArrayView1<bool>>,
) -> LstmCell<A> {
    let (batch, hidden) = c_prev.dim();
    let mut gates = Array2::zeros((batch, 4 * hidden));
    let mut c = Array2::zeros((batch, hidden));
    let mut h = Array2::zeros((batch, hidden));
    for n in 0..batch {
        for j in 0..hidden {
            let pre = |k: usize| z[[n, k * hidden + j]] + b[k * hidden + j];
            let (i, f, g, o) = (
                sigmoid(pre(0)),
                sigmoid(pre(1)),
                tanh(pre(2)),
                sigmoid(pre(3)),
            );
            for (k, v) in [i, f, g, o].into_iter().enumerate() {
                gates[[n, k * hidden + j]] = v;
            }
            if is_real(mask, n) {
                c[[n, j]] = f * c_prev[[n, j]] + i * g;
                h[[n, j]] = o * tanh(c[[n, j]]);
            } else {
                c[[n, j]] = c_prev[[n, j]];
                h[[n, j]] = h_prev[[n, j]];
            }
        }
    }
    LstmCell { gates, c, h }
}

/// One step backward: `dz` `[B,4H]`, and what flows to step t-1 besides
/// `dz·Uᵀ`: `dh_prev` (the masked carry; 0 on real steps) and `dc_prev`.
#[derive(Clone, Debug)]
pub struct LstmCellGrads<A> {
    pub dz: Array2<A>,
    pub dh_prev: Array2<A>,
    pub dc_prev: Array2<A>,
}

/// One step of the gate backward kernel from the total `dh`, `dc` of h_t,
/// c_t and the values forward saved (gates, c_{t-1}, c_t).
pub fn lstm_cell_backward_cpu<A: NdFloat>(
    dh: &ArrayView2<A>,
    dc: &ArrayView2<A>,
    gates: &ArrayView2<A>,
    c_prev: &ArrayView2<A>,
    c: &ArrayView2<A>,
    mask: Option<&ArrayView1<bool>>,
) -> LstmCellGrads<A> {
    let (batch, hidden) = c.dim();
    let one = A::one();
    let mut dz = Array2::zeros((batch, 4 * hidden));
    let mut dh_prev = Array2::zeros((batch, hidden));
    let mut dc_prev = Array2::zeros((batch, hidden));
    for n in 0..batch {
        for j in 0..hidden {
            let (dh, dc) = (dh[[n, j]], dc[[n, j]]);
            if !is_real(mask, n) {
                dh_prev[[n, j]] = dh;
                dc_prev[[n, j]] = dc;
                continue;
            }
            let gate = |k: usize| gates[[n, k * hidden + j]];
            let (i, f, g, o) = (gate(0), gate(1), gate(2), gate(3));
            let tc = tanh(c[[n, j]]);
            let dct = dc + dh * o * (one - tc * tc);
            dz[[n, j]] = dct * g * i * (one - i);
            dz[[n, hidden + j]] = dct * c_prev[[n, j]] * f * (one - f);
            dz[[n, 2 * hidden + j]] = dct * i * (one - g * g);
            dz[[n, 3 * hidden + j]] = dh * tc * o * (one - o);
            dc_prev[[n, j]] = dct * f;
        }
    }
    LstmCellGrads {
        dz,
        dh_prev,
        dc_prev,
    }
}

/// Everything the forward pass keeps: gates `[T,B,4H]`, `c_all` and
/// `h_all` `[T+1,B,H]` (slot 0 the zero initial state).
#[derive(Clone, Debug)]
pub struct LstmStates<A> {
    pub gates: Array3<A>,
    pub c_all: Array3<A>,
    pub h_all: Array3<A>,
}

/// What the forward recurrence of a group of samples (`b` of the batch's
/// `B`) reads and writes: gates `[T,b,4H]` (X·W on entry), c_all and
/// h_all `[T+1,b,H]`, mask `[T,b]`.
struct LstmForwardGroup<'a, A> {
    gates: ArrayViewMut3<'a, A>,
    c_all: ArrayViewMut3<'a, A>,
    h_all: ArrayViewMut3<'a, A>,
    mask: Option<ArrayView2<'a, bool>>,
}

impl_split_batch!(LstmForwardGroup {
    gates,
    c_all,
    h_all,
    mask
});

/// The whole sequence: x `[T,B,D]`, mask `[T,B]` (true = real step).
///
/// The input projection `X·W` of all `T·B` rows is one product, written
/// straight into the gates array; each step then adds `h_{t-1}·U` into its
/// slice in place and runs the gate kernel of [`lstm_cell_forward_cpu`] on
/// contiguous rows, allocating nothing. The two halves of a large batch run
/// at once ([`on_batch_halves`]). [`lstm_forward_naive_cpu`] is the same
/// computation step by step, with the same arithmetic.
pub fn lstm_forward_cpu<A: NdFloat>(
    x: &ArrayView3<A>,
    w: &ArrayView2<A>,
    u: &ArrayView2<A>,
    b: &ArrayView1<A>,
    mask: Option<&ArrayView2<bool>>,
) -> LstmStates<A> {
    let (steps, batch, _) = x.dim();
    let hidden = u.nrows();
    let mut states = LstmStates {
        gates: step_rows(x)
            .dot(w)
            .into_shape_with_order((steps, batch, 4 * hidden))
            .expect("T·B rows"),
        c_all: Array3::zeros((steps + 1, batch, hidden)),
        h_all: Array3::zeros((steps + 1, batch, hidden)),
    };
    let b = b.as_standard_layout();
    let b = b.as_slice().expect("standard layout");
    let group = LstmForwardGroup {
        gates: states.gates.view_mut(),
        c_all: states.c_all.view_mut(),
        h_all: states.h_all.view_mut(),
        mask: mask.map(|m| m.view()),
    };
    on_batch_halves(batch, group, LstmForwardGroup::split, |g| {
        lstm_forward_group(g, u, b)
    });
    states
}

/// The recurrence of [`lstm_forward_cpu`] over one group of samples.
fn lstm_forward_group<A: NdFloat>(group: LstmForwardGroup<A>, u: &ArrayView2<A>, b: &[A]) {
    let LstmForwardGroup {
        mut gates,
        mut c_all,
        mut h_all,
        mask,
    } = group;
    let (steps, batch, _) = gates.dim();
    let hidden = u.nrows();
    for t in 0..steps {
        let mut gates_t = gates.index_axis_mut(Axis(0), t);
        let (h_prev, mut h) = h_all.multi_slice_mut((s![t, .., ..], s![t + 1, .., ..]));
        let (c_prev, mut c) = c_all.multi_slice_mut((s![t, .., ..], s![t + 1, .., ..]));
        // z_t = x_t·W + h_{t-1}·U, in place.
        general_mat_mul(A::one(), &h_prev, u, A::one(), &mut gates_t);
        for n in 0..batch {
            let z = row_mut(&mut gates_t, n);
            // Gate order i, f, g, o: g (the third quarter) is tanh. Whole
            // slices at a time, so that the activations vectorise.
            z.iter_mut().zip(b).for_each(|(v, &b)| *v += b);
            let (ifg, o) = z.split_at_mut(3 * hidden);
            let (if_, g) = ifg.split_at_mut(2 * hidden);
            sigmoid_slice(if_);
            tanh_slice(g);
            sigmoid_slice(o);
            let (c_prev, h_prev) = (row(&c_prev, n), row(&h_prev, n));
            let (c, h) = (row_mut(&mut c, n), row_mut(&mut h, n));
            if !mask.as_ref().is_none_or(|m| m[[t, n]]) {
                c.copy_from_slice(c_prev);
                h.copy_from_slice(h_prev);
                continue;
            }
            for j in 0..hidden {
                let (i, f, g) = (z[j], z[hidden + j], z[2 * hidden + j]);
                c[j] = f * c_prev[j] + i * g;
            }
            // h = o * tanh(c), the tanh over the whole row (vectorised).
            h.copy_from_slice(c);
            tanh_slice(h);
            h.iter_mut()
                .zip(&z[3 * hidden..])
                .for_each(|(h, &o)| *h *= o);
        }
    }
}

/// [`lstm_forward_cpu`] spelled step by step with the cell function: the
/// plain reference the fast version is tested against.
pub fn lstm_forward_naive_cpu<A: NdFloat>(
    x: &ArrayView3<A>,
    w: &ArrayView2<A>,
    u: &ArrayView2<A>,
    b: &ArrayView1<A>,
    mask: Option<&ArrayView2<bool>>,
) -> LstmStates<A> {
    let (steps, batch, _) = x.dim();
    let hidden = u.nrows();
    let mut states = LstmStates {
        gates: Array3::zeros((steps, batch, 4 * hidden)),
        c_all: Array3::zeros((steps + 1, batch, hidden)),
        h_all: Array3::zeros((steps + 1, batch, hidden)),
    };
    for t in 0..steps {
        let h_prev = states.h_all.index_axis(Axis(0), t).to_owned();
        let c_prev = states.c_all.index_axis(Axis(0), t).to_owned();
        let z = x.index_axis(Axis(0), t).dot(w) + h_prev.dot(u);
        let mask_t = mask.map(|m| m.row(t));
        let cell = lstm_cell_forward_cpu(
            &z.view(),
            b,
            &c_prev.view(),
            &h_prev.view(),
            mask_t.as_ref(),
        );
        states.gates.index_axis_mut(Axis(0), t).assign(&cell.gates);
        states.c_all.index_axis_mut(Axis(0), t + 1).assign(&cell.c);
        states.h_all.index_axis_mut(Axis(0), t + 1).assign(&cell.h);
    }
    states
}

/// What the backward recurrence of a group of samples reads and writes:
/// dz `[T,b,4H]` (written), dh_seq `[T,b,H]`, gates `[T,b,4H]`, c_all
/// `[T+1,b,H]`, mask `[T,b]`.
struct LstmBackwardGroup<'a, A> {
    dz: ArrayViewMut3<'a, A>,
    dh_seq: ArrayView3<'a, A>,
    gates: ArrayView3<'a, A>,
    c_all: ArrayView3<'a, A>,
    mask: Option<ArrayView2<'a, bool>>,
}

impl_split_batch!(LstmBackwardGroup {
    dz,
    dh_seq,
    gates,
    c_all,
    mask
});

/// Accumulates the gradients of the whole sequence into `grads`. `dh_seq`
/// `[T,B,H]` is the incoming gradient of h_1..h_T (for a loss on h_T only,
/// zero except its last slice).
///
/// The reverse recurrence (by halves of a large batch at once, as forward)
/// writes dz of every step, running the gate backward of
/// [`lstm_cell_backward_cpu`] on contiguous rows and `dh_{t-1} += dz_t·Uᵀ`
/// in place; the weight and input gradients then follow from all `T·B`
/// rows of dz in single products. [`lstm_backward_naive_cpu`] is the same
/// computation step by step (its sums over steps run in another order).
pub fn lstm_backward_cpu<A: NdFloat>(
    grads: &mut RecurrentCpuGrads<A>,
    dh_seq: &ArrayView3<A>,
    states: &LstmStates<A>,
    x: &ArrayView3<A>,
    w: &ArrayView2<A>,
    u: &ArrayView2<A>,
    mask: Option<&ArrayView2<bool>>,
) {
    let (steps, batch, _) = x.dim();
    let hidden = u.nrows();
    let mut dz = Array3::zeros((steps, batch, 4 * hidden));
    let dh_seq = dh_seq.as_standard_layout();
    let gates = states.gates.as_standard_layout();
    let c_all = states.c_all.as_standard_layout();
    let group = LstmBackwardGroup {
        dz: dz.view_mut(),
        dh_seq: dh_seq.view(),
        gates: gates.view(),
        c_all: c_all.view(),
        mask: mask.map(|m| m.view()),
    };
    on_batch_halves(batch, group, LstmBackwardGroup::split, |g| {
        lstm_backward_group(g, u)
    });
    let h_prev = states.h_all.slice(s![..steps, .., ..]);
    grads.add_from_dz(&dz.view(), x, &h_prev, w);
}

/// The reverse recurrence of [`lstm_backward_cpu`] over one group of
/// samples.
fn lstm_backward_group<A: NdFloat>(group: LstmBackwardGroup<A>, u: &ArrayView2<A>) {
    let LstmBackwardGroup {
        mut dz,
        dh_seq,
        gates,
        c_all,
        mask,
    } = group;
    let (steps, batch, _) = dz.dim();
    let hidden = u.nrows();
    let (zero, one) = (A::zero(), A::one());
    // The total gradient of h_t and c_t, carried from step t+1.
    let mut dh = Array2::<A>::zeros((batch, hidden));
    let mut dc = Array2::<A>::zeros((batch, hidden));
    let (mut dh_v, mut dc_v) = (dh.view_mut(), dc.view_mut());
    // tanh(c_t) of one sample, computed a row at a time (vectorised).
    let mut tanh_c = vec![zero; hidden];
    for t in (0..steps).rev() {
        dh_v += &dh_seq.index_axis(Axis(0), t);
        let mut dz_t = dz.index_axis_mut(Axis(0), t);
        let (gates_t, c_prev, c_t) = (
            gates.index_axis(Axis(0), t),
            c_all.index_axis(Axis(0), t),
            c_all.index_axis(Axis(0), t + 1),
        );
        for n in 0..batch {
            // A masked step carries dh and dc through; its dz stays 0.
            if !mask.as_ref().is_none_or(|m| m[[t, n]]) {
                continue;
            }
            let (gate, c_prev, c) = (row(&gates_t, n), row(&c_prev, n), row(&c_t, n));
            let (dh, dc, dz) = (
                row_mut(&mut dh_v, n),
                row_mut(&mut dc_v, n),
                row_mut(&mut dz_t, n),
            );
            tanh_c.copy_from_slice(c);
            tanh_slice(&mut tanh_c);
            for j in 0..hidden {
                let (i, f, g, o) = (
                    gate[j],
                    gate[hidden + j],
                    gate[2 * hidden + j],
                    gate[3 * hidden + j],
                );
                let tc = tanh_c[j];
                let dct = dc[j] + dh[j] * o * (one - tc * tc);
                dz[j] = dct * g * i * (one - i);
                dz[hidden + j] = dct * c_prev[j] * f * (one - f);
                dz[2 * hidden + j] = dct * i * (one - g * g);
                dz[3 * hidden + j] = dh[j] * tc * o * (one - o);
                dc[j] = dct * f;
                // A real step passes dh back only through dz·Uᵀ (added below).
                dh[j] = zero;
            }
        }
        // dh_{t-1} = (masked carry) + dz_t·Uᵀ, in place.
        general_mat_mul(one, &dz_t, &u.t(), one, &mut dh_v);
    }
}

/// [`lstm_backward_cpu`] spelled step by step with the cell function: the
/// plain reference the fast version is tested against.
pub fn lstm_backward_naive_cpu<A: NdFloat>(
    grads: &mut RecurrentCpuGrads<A>,
    dh_seq: &ArrayView3<A>,
    states: &LstmStates<A>,
    x: &ArrayView3<A>,
    w: &ArrayView2<A>,
    u: &ArrayView2<A>,
    mask: Option<&ArrayView2<bool>>,
) {
    let (steps, batch, _) = x.dim();
    let hidden = u.nrows();
    let mut dh = Array2::<A>::zeros((batch, hidden));
    let mut dc = Array2::<A>::zeros((batch, hidden));
    for t in (0..steps).rev() {
        dh += &dh_seq.index_axis(Axis(0), t);
        let mask_t = mask.map(|m| m.row(t));
        let cell = lstm_cell_backward_cpu(
            &dh.view(),
            &dc.view(),
            &states.gates.index_axis(Axis(0), t),
            &states.c_all.index_axis(Axis(0), t),
            &states.c_all.index_axis(Axis(0), t + 1),
            mask_t.as_ref(),
        );
        let dz = &cell.dz;
        grads.dw += &x.index_axis(Axis(0), t).t().dot(dz);
        grads.du += &states.h_all.index_axis(Axis(0), t).t().dot(dz);
        grads.db += &dz.sum_axis(Axis(0));
        let mut dx_t = grads.dx.slice_mut(s![t, .., ..]);
        dx_t += &dz.dot(&w.t());
        dh = cell.dh_prev + dz.dot(&u.t());
        dc = cell.dc_prev;
    }
}

// ---------------------------------------------------------------- GPU

static SHADER: Shader = crate::shader!("lstm");

static GATES_FORWARD: KernelSpec = KernelSpec {
    shader: &SHADER,
    entry: "lstm_gates_forward",
    bindings: &[
        Access::Read,      // z
        Access::Read,      // bias
        Access::Read,      // mask
        Access::ReadWrite, // gates
        Access::ReadWrite, // c_all
        Access::ReadWrite, // h_all
        Access::ReadWrite, // h_last
    ],
};
static GATES_BACKWARD: KernelSpec = KernelSpec {
    shader: &SHADER,
    entry: "lstm_gates_backward",
    bindings: &[
        Access::ReadWrite, // dz
        Access::ReadWrite, // dh_carry
        Access::ReadWrite, // dc_carry
        Access::Read,      // dh_seq
        Access::Read,      // dh_last
        Access::Read,      // gates
        Access::Read,      // c_all
        Access::Read,      // mask
    ],
};

static SEQUENCE_FORWARD: KernelSpec = KernelSpec {
    shader: &SHADER,
    entry: "lstm_sequence_forward",
    bindings: &[
        Access::Read,      // z (= X·W)
        Access::Read,      // bias
        Access::Read,      // U
        Access::Read,      // mask
        Access::ReadWrite, // gates
        Access::ReadWrite, // c_all
        Access::ReadWrite, // h_all
        Access::ReadWrite, // h_last
    ],
};
static SEQUENCE_BACKWARD: KernelSpec = KernelSpec {
    shader: &SHADER,
    entry: "lstm_sequence_backward",
    bindings: &[
        Access::ReadWrite, // dz
        Access::Read,      // dh_seq
        Access::Read,      // dh_last
        Access::Read,      // gates
        Access::Read,      // c_all
        Access::Read,      // U
        Access::Read,      // mask
    ],
};
static SEQUENCE_BACKWARD4: KernelSpec = KernelSpec {
    entry: "lstm_sequence_backward4",
    ..SEQUENCE_BACKWARD
};
static SEQUENCE_FORWARD_BLOCKED: KernelSpec = KernelSpec {
    entry: "lstm_sequence_forward_blocked",
    ..SEQUENCE_FORWARD
};
static SEQUENCE_BACKWARD_BLOCKED: KernelSpec = KernelSpec {
    entry: "lstm_sequence_backward_blocked",
    ..SEQUENCE_BACKWARD
};

/// What an LSTM layer keeps on the device besides h (see
/// `RecurrentBuffers`).
#[derive(Debug)]
pub struct LstmState {
    /// Activated gates `[T,B,4H]` (i, f, g, o), saved for backward.
    pub gates: GpuTensor,
    /// `[T+1,B,H]`, slot 0 the zero initial state.
    pub c_all: GpuTensor,
    /// Backward scratch: the dc carry into step t-1 `[B,H]`.
    pub dc_carry: GpuTensor,
}

/// The device buffers of one LSTM layer.
pub type LstmBuffers = RecurrentBuffers<LstmState>;

impl RecurrentCell for LstmState {
    const NAME: &'static str = "lstm";
    const GATES: usize = 4;
    const CELL_FORWARD: &'static KernelSpec = &GATES_FORWARD;
    const CELL_BACKWARD: &'static KernelSpec = &GATES_BACKWARD;
    const SEQUENCE_FORWARD: &'static KernelSpec = &SEQUENCE_FORWARD;
    const SEQUENCE_BACKWARD: &'static KernelSpec = &SEQUENCE_BACKWARD;

    fn new(ctx: &GpuContext, dims: RecurrentDims) -> Result<Self> {
        let RecurrentDims {
            steps: t,
            batch: b,
            hidden: h,
            ..
        } = dims;
        let f32 = DType::F32;
        Ok(Self {
            gates: ctx.zeros(&[t, b, 4 * h], f32)?,
            c_all: ctx.zeros(&[t + 1, b, h], f32)?,
            dc_carry: ctx.zeros(&[b, h], f32)?,
        })
    }

    fn forward_state(&self) -> Vec<&GpuTensor> {
        vec![&self.gates, &self.c_all]
    }

    fn carries(&self) -> Vec<&GpuTensor> {
        vec![&self.dc_carry]
    }

    fn saved(bufs: &LstmBuffers) -> Vec<&GpuTensor> {
        vec![&bufs.cell.gates, &bufs.cell.c_all]
    }

    /// The kernel of the [`persistent_form`] for `dims`.
    fn sequence_kernel(ctx: &GpuContext, dims: RecurrentDims, backward: bool) -> PersistentKernel {
        let h = dims.hidden;
        // Forward has no pair4 kernel: it runs the pair one.
        let [pair, pair4, blocked] = if backward {
            [
                &SEQUENCE_BACKWARD,
                &SEQUENCE_BACKWARD4,
                &SEQUENCE_BACKWARD_BLOCKED,
            ]
        } else {
            [
                &SEQUENCE_FORWARD,
                &SEQUENCE_FORWARD,
                &SEQUENCE_FORWARD_BLOCKED,
            ]
        };
        let (spec, groups) = match persistent_form(ctx, dims) {
            PersistentForm::Pair => (pair, persistent_groups(dims)),
            PersistentForm::Pair4 => (pair4, persistent_groups(dims)),
            PersistentForm::Blocked => (blocked, dims.batch.div_ceil(BLOCKED_SAMPLES) as u32),
        };
        PersistentKernel {
            spec,
            constants: vec![("HIDDEN", h as f64), ("H4", (h / 4) as f64)],
            groups,
        }
    }
}

/// Samples per workgroup of the blocked persistent kernels (`SB`).
const BLOCKED_SAMPLES: usize = 8;
/// Largest H of the blocked persistent kernels (`BH`).
pub const BLOCKED_MAX_HIDDEN: usize = 64;

/// Which form of the persistent kernels runs `dims` (see the "persistent,
/// vec4" notes in `shaders/lstm.wgsl`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PersistentForm {
    /// Two samples per lane, scalar state: any H.
    Pair,
    /// Two samples per lane, vec4 state (backward only; forward runs `Pair`):
    /// H a multiple of 4.
    Pair4,
    /// 8 samples per workgroup, units across lanes, register-blocked: H a
    /// multiple of 4 up to [`BLOCKED_MAX_HIDDEN`].
    Blocked,
}

/// The persistent form for `dims` on this device (given that
/// `recurrent_persistent_support` accepts it).
pub fn persistent_form(ctx: &GpuContext, dims: RecurrentDims) -> PersistentForm {
    let h = dims.hidden;
    let groups = dims.batch.div_ceil(BLOCKED_SAMPLES) as u32;
    if !h.is_multiple_of(4) {
        PersistentForm::Pair
    } else if h <= BLOCKED_MAX_HIDDEN && groups <= ctx.limits.max_compute_workgroups_per_dimension {
        PersistentForm::Blocked
    } else {
        PersistentForm::Pair4
    }
}

// ---------------------------------------------------------------- autograd rule
//
// Saves: x (the layer's input), and in `LstmBuffers` the gates, c_all and
// h_all of the forward pass. Backward: `recurrent_backward_sequence`, i.e.
// `lstm_sequence_backward` (or per step `lstm_gates_backward` +
// `matmul_abt` for the dh carry), then `matmul_atb` (dW, dU),
// `bias_backward` (db) and `matmul_abt` (dx). Outputs: `h_last`
// (`return_sequences=False`) or h_all slots 1..=T.
