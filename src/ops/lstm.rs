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
//! GPU forward: one batched input projection `Z = X·W` over all `T*B` rows,
//! then the recurrence, in one of two ways:
//! - persistent ([`lstm_forward_persistent`]): [`lstm_sequence_forward`]
//!   runs every step in one dispatch (samples are independent, so
//!   workgroups never wait on each other), for H ≤ [`PERSISTENT_MAX_HIDDEN`]:
//!   2 dispatches in all. Its [`PersistentForm`] depends on H: for H a
//!   multiple of 4 up to [`BLOCKED_MAX_HIDDEN`] (the seed's 64) a workgroup
//!   carries 8 samples with the units split across its lanes and h shared in
//!   workgroup memory ("blocked", register-blocked like the matmul);
//!   otherwise each invocation carries two samples with their h and c in
//!   private arrays ("pair");
//! - per step ([`lstm_forward_stepwise`], any H, the readable reference):
//!   `z_t += h_{t-1}·U` (a matmul into the step's slice of Z) and the fused
//!   gate kernel [`lstm_gates_forward`] (adds b): 2T dispatches.
//!
//! Backward: the recurrence in one dispatch ([`lstm_sequence_backward`]) or
//! per step, last to first ([`lstm_gates_backward`] then
//! `dh_{t-1} += dz_t·Uᵀ`), writing dz of every step; then the weight
//! gradients as batched matmuls over all `T*B` rows: `dW += Xᵀ·dZ`,
//! `dU += H_{0..T-1}ᵀ·dZ`, `db += Σ dZ` (`ops::bias::bias_backward`),
//! `dx += dZ·Wᵀ`. Both paths save the same state (gates, c_all, h_all), so
//! either backward follows either forward. [`lstm_forward_sequence`] and
//! [`lstm_backward_sequence`] take the persistent path wherever
//! [`lstm_persistent_support`] allows it.
//!
//! CPU reference: [`lstm_forward_cpu`] and [`lstm_backward_cpu`] follow
//! the same plan (one input projection over all `T*B` rows; per step only
//! `h_{t-1}·U` or `dz_t·Uᵀ` and the gates, in place on contiguous rows;
//! the weight gradients as single products after the reverse loop), with
//! the two halves of a batch of at least [`CPU_SPLIT_MIN_BATCH`] samples
//! on two threads. [`lstm_forward_naive_cpu`] and
//! [`lstm_backward_naive_cpu`] spell the same computation step by step with
//! the cell functions; tests/lstm.rs holds the fast ones to them.
//!
//! The sizes, weight and gradient bundles, the weight-gradient plumbing and
//! the CPU helpers are shared with `ops::rnn`.

use ndarray::linalg::general_mat_mul;
use ndarray::{
    s, Array, Array1, Array2, Array3, ArrayRef2, ArrayRef3, ArrayView1, ArrayView2, ArrayView3,
    ArrayViewMut2, ArrayViewMut3, Axis, CowArray, Dimension, Ix2, NdFloat,
};

use crate::error::{Error, Result};
use crate::gpu::{Access, Dispatch, GpuContext, GpuTensor, Grid, KernelSpec, Shader};
use crate::ops::activation::{
    sigmoid_cpu as sigmoid, sigmoid_slice_cpu as sigmoid_slice, tanh_cpu as tanh,
    tanh_slice_cpu as tanh_slice,
};
use crate::ops::bias::bias_backward;
use crate::ops::matmul::{matmul, Layout, MatmulParams};
use crate::tensor::{expect_numel, DType};

/// Uniform parameters, mirrored by `Params` in `shaders/lstm.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct LstmParams {
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

/// Batches at least this large run their recurrence as two halves on two
/// threads (samples are independent); smaller ones are not worth a thread.
pub const CPU_SPLIT_MIN_BATCH: usize = 16;

/// Runs `run` on the two halves of a batch of `batch` samples at once (the
/// second half on a scoped thread), or on the whole batch when it is
/// smaller than [`CPU_SPLIT_MIN_BATCH`]. `split(part, at)` cuts `part` at
/// sample `at`. Samples are independent (each one's arithmetic is the same
/// in a half as in the whole batch; the tests check it bit for bit) and
/// the split depends only on `batch`, so results are bit-identical from run
/// to run.
pub(crate) fn on_batch_halves<P: Send>(
    batch: usize,
    part: P,
    split: impl FnOnce(P, usize) -> (P, P),
    run: impl Fn(P) + Sync,
) {
    if batch < CPU_SPLIT_MIN_BATCH {
        return run(part);
    }
    let (first, second) = split(part, batch / 2);
    std::thread::scope(|s| {
        s.spawn(|| run(second));
        run(first);
    });
}

/// `[T,B,K]` as its `T·B` rows `[T·B,K]` (copied only when not in
/// standard layout).
pub(crate) fn step_rows<A: NdFloat>(a: &ArrayRef3<A>) -> CowArray<'_, A, Ix2> {
    let (steps, batch, k) = a.dim();
    a.as_standard_layout()
        .into_shape_with_order((steps * batch, k))
        .expect("standard layout")
}

/// `[T,B,K]` in standard layout as its `T·B` rows, writable.
pub(crate) fn step_rows_mut<A: NdFloat>(a: ArrayViewMut3<'_, A>) -> ArrayViewMut2<'_, A> {
    let (steps, batch, k) = a.dim();
    a.into_shape_with_order((steps * batch, k))
        .expect("standard layout")
}

/// `a` itself, or a copy in standard layout when it is not.
pub(crate) fn standard<A: NdFloat, D: Dimension>(a: &mut Array<A, D>) {
    if !a.is_standard_layout() {
        *a = a.as_standard_layout().into_owned();
    }
}

/// A contiguous row of a standard-layout array.
pub(crate) fn row<A>(a: &ArrayRef2<A>, n: usize) -> &[A] {
    a.row(n)
        .to_slice()
        .expect("rows of standard-layout arrays are contiguous")
}

/// A contiguous row of a standard-layout array, writable.
pub(crate) fn row_mut<A>(a: &mut ArrayRef2<A>, n: usize) -> &mut [A] {
    a.row_mut(n)
        .into_slice()
        .expect("rows of standard-layout arrays are contiguous")
}

/// A `[T,B]` mask cut at sample `at`.
pub(crate) fn split_mask(
    mask: Option<ArrayView2<'_, bool>>,
    at: usize,
) -> (Option<ArrayView2<'_, bool>>, Option<ArrayView2<'_, bool>>) {
    match mask {
        Some(m) => {
            let (m0, m1) = m.split_at(Axis(1), at);
            (Some(m0), Some(m1))
        }
        None => (None, None),
    }
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

impl<A> LstmForwardGroup<'_, A> {
    fn split(self, at: usize) -> (Self, Self) {
        let (g0, g1) = self.gates.split_at(Axis(1), at);
        let (c0, c1) = self.c_all.split_at(Axis(1), at);
        let (h0, h1) = self.h_all.split_at(Axis(1), at);
        let (m0, m1) = split_mask(self.mask, at);
        (
            Self {
                gates: g0,
                c_all: c0,
                h_all: h0,
                mask: m0,
            },
            Self {
                gates: g1,
                c_all: c1,
                h_all: h1,
                mask: m1,
            },
        )
    }
}

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

/// Gradients of a recurrent layer (LSTM or RNN) on the host: dx `[T,B,D]`,
/// dW, dU, db.
#[derive(Clone, Debug)]
pub struct RecurrentCpuGrads<A> {
    pub dx: Array3<A>,
    pub dw: Array2<A>,
    pub du: Array2<A>,
    pub db: Array1<A>,
}

impl<A: NdFloat> RecurrentCpuGrads<A> {
    /// Zero gradients; `gates` is the width of z (4H for the LSTM, H for the RNN).
    pub fn zeros(dims: RecurrentDims, gates: usize) -> Self {
        let RecurrentDims {
            steps,
            batch,
            input,
            hidden,
        } = dims;
        Self {
            dx: Array3::zeros((steps, batch, input)),
            dw: Array2::zeros((input, gates)),
            du: Array2::zeros((hidden, gates)),
            db: Array1::zeros(gates),
        }
    }

    /// Accumulates the gradients that follow from dz of every step at once
    /// (`T·B` rows): `dW += Xᵀ·dZ`, `dU += H_{0..T-1}ᵀ·dZ`, `db += Σ dZ`,
    /// `dx += dZ·Wᵀ`; `h_prev` `[T,B,H]` holds h_{t-1} of every step. dU
    /// (the largest product) runs on a second thread; each product is
    /// computed whole by one thread, so the split changes no bits.
    pub(crate) fn add_from_dz(
        &mut self,
        dz: &ArrayView3<A>,
        x: &ArrayView3<A>,
        h_prev: &ArrayView3<A>,
        w: &ArrayView2<A>,
    ) {
        let one = A::one();
        let dz = step_rows(dz);
        standard(&mut self.dx);
        let Self { dx, dw, du, db } = self;
        std::thread::scope(|s| {
            s.spawn(|| general_mat_mul(one, &step_rows(h_prev).t(), &dz, one, du));
            general_mat_mul(one, &step_rows(x).t(), &dz, one, dw);
            // Σ over the rows in order, then added (as `sum_axis(Axis(0))`,
            // whose lane-by-lane walk was 10x slower than these row adds).
            let mut sum = Array1::zeros(db.len());
            for row in dz.rows() {
                sum += &row;
            }
            *db += &sum;
            general_mat_mul(one, &dz, &w.t(), one, &mut step_rows_mut(dx.view_mut()));
        });
    }
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

impl<A> LstmBackwardGroup<'_, A> {
    fn split(self, at: usize) -> (Self, Self) {
        let (dz0, dz1) = self.dz.split_at(Axis(1), at);
        let (s0, s1) = self.dh_seq.split_at(Axis(1), at);
        let (g0, g1) = self.gates.split_at(Axis(1), at);
        let (c0, c1) = self.c_all.split_at(Axis(1), at);
        let (m0, m1) = split_mask(self.mask, at);
        (
            Self {
                dz: dz0,
                dh_seq: s0,
                gates: g0,
                c_all: c0,
                mask: m0,
            },
            Self {
                dz: dz1,
                dh_seq: s1,
                gates: g1,
                c_all: c1,
                mask: m1,
            },
        )
    }
}

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
const WORKGROUP: u32 = 64;

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

/// Sizes of a recurrent layer: T, B, D (input features), H (units).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecurrentDims {
    pub steps: usize,
    pub batch: usize,
    pub input: usize,
    pub hidden: usize,
}

impl RecurrentDims {
    pub fn new(steps: usize, batch: usize, input: usize, hidden: usize) -> Self {
        Self {
            steps,
            batch,
            input,
            hidden,
        }
    }

    pub(crate) fn check(&self, op: &str) -> Result<()> {
        if self.steps == 0 || self.batch == 0 || self.input == 0 || self.hidden == 0 {
            return Err(Error::shape(
                op,
                format!("every size must be > 0: {self:?}"),
            ));
        }
        Ok(())
    }
}

/// The weights of a recurrent layer on the device: W `[D,G]`, U `[H,G]`,
/// b `[G]`, with G = 4H (LSTM) or H (RNN).
#[derive(Clone, Copy, Debug)]
pub struct RecurrentWeights<'a> {
    pub w: &'a GpuTensor,
    pub u: &'a GpuTensor,
    pub b: &'a GpuTensor,
}

/// Gradient buffers a recurrent backward accumulates into; `dx` `[T,B,D]`
/// may be left out when the input needs no gradient.
#[derive(Clone, Copy, Debug)]
pub struct RecurrentGrads<'a> {
    pub dx: Option<&'a GpuTensor>,
    pub dw: &'a GpuTensor,
    pub du: &'a GpuTensor,
    pub db: &'a GpuTensor,
}

/// The incoming gradient of a recurrent layer's output: of every h_t
/// (`seq`, `[T,B,H]`, `return_sequences`), of h_T (`last`, `[B,H]`), or both.
#[derive(Clone, Copy, Debug, Default)]
pub struct HiddenGrad<'a> {
    pub seq: Option<&'a GpuTensor>,
    pub last: Option<&'a GpuTensor>,
}

/// The mask's kind for the shaders (0 none, 1 u32, 2 f32), after checking
/// that it holds `steps * batch` values.
pub(crate) fn mask_kind(op: &str, mask: Option<&GpuTensor>, dims: RecurrentDims) -> Result<u32> {
    let Some(m) = mask else { return Ok(0) };
    expect_numel(op, "mask", &m.shape, dims.steps * dims.batch)?;
    Ok(match m.dtype {
        DType::U32 => 1,
        DType::F32 => 2,
    })
}

pub(crate) fn check_step(op: &str, step: usize, dims: RecurrentDims) -> Result<()> {
    if step >= dims.steps {
        return Err(Error::shape(
            op,
            format!("step {step} is outside a sequence of {} steps", dims.steps),
        ));
    }
    Ok(())
}

/// The device buffers of one LSTM layer, allocated once; the dispatches
/// built over them are recorded again every training step.
#[derive(Debug)]
pub struct LstmBuffers {
    pub dims: RecurrentDims,
    /// Pre-activations `[T,B,4H]`: `X·W`, then `+ h_{t-1}·U` per step.
    pub z: GpuTensor,
    /// Activated gates `[T,B,4H]` (i, f, g, o), saved for backward.
    pub gates: GpuTensor,
    /// `[T+1,B,H]`, slot 0 the zero initial state.
    pub h_all: GpuTensor,
    pub c_all: GpuTensor,
    /// h_T `[B,H]`, written by the last step's gate kernel.
    pub h_last: GpuTensor,
    /// Backward scratch: dz `[T,B,4H]` and the carries into step t-1 `[B,H]`.
    pub dz: GpuTensor,
    pub dh_carry: GpuTensor,
    pub dc_carry: GpuTensor,
}

impl LstmBuffers {
    pub fn new(ctx: &GpuContext, dims: RecurrentDims) -> Result<Self> {
        dims.check("lstm")?;
        let RecurrentDims {
            steps: t,
            batch: b,
            hidden: h,
            ..
        } = dims;
        let f32 = DType::F32;
        Ok(Self {
            dims,
            z: ctx.zeros(&[t, b, 4 * h], f32)?,
            gates: ctx.zeros(&[t, b, 4 * h], f32)?,
            h_all: ctx.zeros(&[t + 1, b, h], f32)?,
            c_all: ctx.zeros(&[t + 1, b, h], f32)?,
            h_last: ctx.zeros(&[b, h], f32)?,
            dz: ctx.zeros(&[t, b, 4 * h], f32)?,
            dh_carry: ctx.zeros(&[b, h], f32)?,
            dc_carry: ctx.zeros(&[b, h], f32)?,
        })
    }
}

fn params(dims: RecurrentDims, step: usize, mask_kind: u32) -> LstmParams {
    LstmParams {
        batch: dims.batch as u32,
        hidden: dims.hidden as u32,
        step: step as u32,
        steps: dims.steps as u32,
        mask_kind,
        ..LstmParams::default()
    }
}

/// The gate kernel of step `step`: reads `z_t` (projection and recurrent
/// part summed), adds `bias` `[4H]`, writes gates_t, c_t, h_t (slot t+1 of
/// c_all, h_all), and h_last on the final step. Reads slot t of c_all
/// (and of h_all on masked steps).
pub fn lstm_gates_forward(
    ctx: &GpuContext,
    bufs: &LstmBuffers,
    bias: &GpuTensor,
    mask: Option<&GpuTensor>,
    step: usize,
) -> Result<Dispatch> {
    let op = GATES_FORWARD.entry;
    let dims = bufs.dims;
    check_step(op, step, dims)?;
    expect_numel(op, "bias", &bias.shape, 4 * dims.hidden)?;
    let kind = mask_kind(op, mask, dims)?;
    // Without a mask the binding is never read; any read-only buffer fills it.
    let mask = mask.unwrap_or(bias);
    ctx.prepare(
        &GATES_FORWARD,
        &[],
        &params(dims, step, kind),
        &[
            &bufs.z,
            bias,
            mask,
            &bufs.gates,
            &bufs.c_all,
            &bufs.h_all,
            &bufs.h_last,
        ],
        Grid::linear(dims.batch * dims.hidden, WORKGROUP),
    )
}

/// The gate backward kernel of step `step`: from the incoming `dh` (plus
/// the carry from step t+1, except on the last step) and the dc carry,
/// writes dz_t into `bufs.dz` and the carries into step t-1
/// (`bufs.dh_carry` gets only the masked carry; `dz_t·Uᵀ` is added after).
pub fn lstm_gates_backward(
    ctx: &GpuContext,
    bufs: &LstmBuffers,
    dh: HiddenGrad,
    mask: Option<&GpuTensor>,
    step: usize,
) -> Result<Dispatch> {
    let op = GATES_BACKWARD.entry;
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
    // Absent inputs are never read; the read-only gates buffer fills them.
    let stand_in = &bufs.gates;
    ctx.prepare(
        &GATES_BACKWARD,
        &[],
        &p,
        &[
            &bufs.dz,
            &bufs.dh_carry,
            &bufs.dc_carry,
            dh.seq.unwrap_or(stand_in),
            dh.last.unwrap_or(stand_in),
            &bufs.gates,
            &bufs.c_all,
            mask.unwrap_or(stand_in),
        ],
        Grid::linear(b * h, WORKGROUP),
    )
}

/// Largest H of the persistent kernels (`MAX_H` in lstm.wgsl and rnn.wgsl:
/// the size of their per-invocation arrays).
pub const PERSISTENT_MAX_HIDDEN: usize = 256;
/// Lanes of a persistent workgroup (`PLANES`); each lane owns two samples.
const PERSISTENT_LANES: usize = 8;

/// Whether a persistent kernel (the whole recurrence in one dispatch) handles
/// `dims` on this device; checked for the pair form, which every `dims` that
/// passes can fall back to.
pub(crate) fn persistent_support(ctx: &GpuContext, op: &str, dims: RecurrentDims) -> Result<()> {
    dims.check(op)?;
    let unsupported = |why: String| Error::Unsupported {
        op: op.to_string(),
        what: format!("the one-dispatch recurrence for {dims:?}"),
        why,
    };
    if dims.hidden > PERSISTENT_MAX_HIDDEN {
        return Err(unsupported(format!(
            "H = {} exceeds the {PERSISTENT_MAX_HIDDEN} units its per-invocation state \
             holds (use the per-step path)",
            dims.hidden
        )));
    }
    let groups = persistent_groups(dims);
    let max = ctx.limits.max_compute_workgroups_per_dimension;
    if groups > max {
        return Err(unsupported(format!(
            "batch {} needs {groups} workgroups, the adapter allows {max}",
            dims.batch
        )));
    }
    Ok(())
}

/// Workgroups of a pair-form persistent kernel (LSTM and RNN): `PERSISTENT_LANES` lanes of two samples each.
pub(crate) fn persistent_groups(dims: RecurrentDims) -> u32 {
    dims.batch.div_ceil(2).div_ceil(PERSISTENT_LANES) as u32
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
/// [`lstm_persistent_support`] accepts it).
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

/// The persistent kernel of `form` among `[pair, pair4, blocked]` (forward
/// has no pair4 kernel: pass the pair one), its override constants and
/// workgroup count.
fn persistent_kernel(
    form: PersistentForm,
    kernels: [&'static KernelSpec; 3],
    dims: RecurrentDims,
) -> (&'static KernelSpec, [(&'static str, f64); 2], u32) {
    let h = dims.hidden;
    let constants = [("HIDDEN", h as f64), ("H4", (h / 4) as f64)];
    let [pair, pair4, blocked] = kernels;
    match form {
        PersistentForm::Pair => (pair, constants, persistent_groups(dims)),
        PersistentForm::Pair4 => (pair4, constants, persistent_groups(dims)),
        PersistentForm::Blocked => (
            blocked,
            constants,
            dims.batch.div_ceil(BLOCKED_SAMPLES) as u32,
        ),
    }
}

/// Whether [`lstm_sequence_forward`] and [`lstm_sequence_backward`] handle
/// `dims` on this device: H ≤ [`PERSISTENT_MAX_HIDDEN`], and
/// ceil(B/16) workgroups (the pair form's) within the adapter's limit.
pub fn lstm_persistent_support(ctx: &GpuContext, dims: RecurrentDims) -> Result<()> {
    persistent_support(ctx, "lstm_persistent", dims)
}

/// The whole forward recurrence in one dispatch (in the
/// [`persistent_form`] for `dims`): from `bufs.z` holding `X·W` (left as it
/// is), writes gates, c_all, h_all (slots 1..=T; slot 0 is the initial
/// state, read here) and h_last as the per-step [`lstm_gates_forward`]
/// sequence does.
pub fn lstm_sequence_forward(
    ctx: &GpuContext,
    bufs: &LstmBuffers,
    weights: &RecurrentWeights,
    mask: Option<&GpuTensor>,
) -> Result<Dispatch> {
    let op = SEQUENCE_FORWARD.entry;
    let dims = bufs.dims;
    persistent_support(ctx, op, dims)?;
    let h = dims.hidden;
    expect_numel(op, "U", &weights.u.shape, h * 4 * h)?;
    expect_numel(op, "bias", &weights.b.shape, 4 * h)?;
    let kind = mask_kind(op, mask, dims)?;
    let (spec, constants, groups) = persistent_kernel(
        persistent_form(ctx, dims),
        [
            &SEQUENCE_FORWARD,
            &SEQUENCE_FORWARD,
            &SEQUENCE_FORWARD_BLOCKED,
        ],
        dims,
    );
    ctx.prepare(
        spec,
        &constants,
        &params(dims, 0, kind),
        &[
            &bufs.z,
            weights.b,
            weights.u,
            // Without a mask the binding is never read.
            mask.unwrap_or(weights.b),
            &bufs.gates,
            &bufs.c_all,
            &bufs.h_all,
            &bufs.h_last,
        ],
        Grid::Workgroups([groups, 1, 1]),
    )
}

/// The whole backward recurrence in one dispatch (in the [`persistent_form`]
/// for `dims`, last step to first): writes dz of every step into
/// `bufs.dz` from the incoming `dh` and the gates and c_all forward saved.
/// The weight gradients follow as matmuls over dz.
pub fn lstm_sequence_backward(
    ctx: &GpuContext,
    bufs: &LstmBuffers,
    dh: HiddenGrad,
    u: &GpuTensor,
    mask: Option<&GpuTensor>,
) -> Result<Dispatch> {
    let op = SEQUENCE_BACKWARD.entry;
    let dims = bufs.dims;
    persistent_support(ctx, op, dims)?;
    let (b, h) = (dims.batch, dims.hidden);
    expect_numel(op, "U", &u.shape, h * 4 * h)?;
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
    // Absent inputs are never read; the read-only gates buffer fills them.
    let stand_in = &bufs.gates;
    let (spec, constants, groups) = persistent_kernel(
        persistent_form(ctx, dims),
        [
            &SEQUENCE_BACKWARD,
            &SEQUENCE_BACKWARD4,
            &SEQUENCE_BACKWARD_BLOCKED,
        ],
        dims,
    );
    ctx.prepare(
        spec,
        &constants,
        &p,
        &[
            &bufs.dz,
            dh.seq.unwrap_or(stand_in),
            dh.last.unwrap_or(stand_in),
            &bufs.gates,
            &bufs.c_all,
            u,
            mask.unwrap_or(stand_in),
        ],
        Grid::Workgroups([groups, 1, 1]),
    )
}

/// Checks x, W, U, b for a recurrent layer whose z is `gates` wide.
pub(crate) fn check_weights(
    op: &str,
    x: &GpuTensor,
    weights: &RecurrentWeights,
    dims: RecurrentDims,
    gates: usize,
) -> Result<()> {
    let RecurrentDims {
        steps,
        batch,
        input,
        hidden,
    } = dims;
    expect_numel(op, "x", &x.shape, steps * batch * input)?;
    expect_numel(op, "W", &weights.w.shape, input * gates)?;
    expect_numel(op, "U", &weights.u.shape, hidden * gates)?;
    expect_numel(op, "b", &weights.b.shape, gates)
}

/// `Z = X·W` over all `T*B` rows at once (overwrites z).
pub(crate) fn input_projection(
    ctx: &GpuContext,
    z: &GpuTensor,
    x: &GpuTensor,
    w: &GpuTensor,
    dims: RecurrentDims,
    gates: usize,
) -> Result<Dispatch> {
    let rows = dims.steps * dims.batch;
    matmul(
        ctx,
        Layout::AB,
        z,
        x,
        w,
        MatmulParams::new(rows, gates, dims.input),
    )
}

/// `z_t += h_{t-1}·U` into step t's slice of z; `h_all` slot t is h_{t-1}.
pub(crate) fn recurrent_projection(
    ctx: &GpuContext,
    z: &GpuTensor,
    h_all: &GpuTensor,
    u: &GpuTensor,
    dims: RecurrentDims,
    gates: usize,
    step: usize,
) -> Result<Dispatch> {
    let (b, h) = (dims.batch, dims.hidden);
    matmul(
        ctx,
        Layout::AB,
        z,
        h_all,
        u,
        MatmulParams::new(b, gates, h)
            .accumulate()
            .offsets(step * b * h, 0, step * b * gates),
    )
}

/// `dh_{t-1} += dz_t·Uᵀ` into the dh carry.
pub(crate) fn recurrent_backward(
    ctx: &GpuContext,
    dh_carry: &GpuTensor,
    dz: &GpuTensor,
    u: &GpuTensor,
    dims: RecurrentDims,
    gates: usize,
    step: usize,
) -> Result<Dispatch> {
    let (b, h) = (dims.batch, dims.hidden);
    matmul(
        ctx,
        Layout::ABt,
        dh_carry,
        dz,
        u,
        MatmulParams::new(b, h, gates)
            .accumulate()
            .offsets(step * b * gates, 0, 0),
    )
}

/// The weight and input gradients of a recurrent layer from dz of every
/// step at once (K = T*B rows): `dW += Xᵀ·dZ`, `dU += H_{0..T-1}ᵀ·dZ`,
/// `db += Σ dZ`, `dx += dZ·Wᵀ`. dz is `[T,B,gates]` with gates = b's length;
/// `bias_backward` sums every row of it, i.e. exactly the T*B rows.
pub(crate) fn weight_gradients(
    ctx: &GpuContext,
    grads: &RecurrentGrads,
    dz: &GpuTensor,
    x: &GpuTensor,
    h_all: &GpuTensor,
    w: &GpuTensor,
    dims: RecurrentDims,
) -> Result<Vec<Dispatch>> {
    let op = "recurrent_weight_gradients";
    let rows = dims.steps * dims.batch;
    let gates = dz.numel() / rows;
    expect_numel(op, "dz", &dz.shape, rows * gates)?;
    expect_numel(op, "dW", &grads.dw.shape, dims.input * gates)?;
    expect_numel(op, "dU", &grads.du.shape, dims.hidden * gates)?;
    let mut d = vec![
        matmul(
            ctx,
            Layout::AtB,
            grads.dw,
            x,
            dz,
            MatmulParams::new(dims.input, gates, rows).accumulate(),
        )?,
        matmul(
            ctx,
            Layout::AtB,
            grads.du,
            h_all,
            dz,
            MatmulParams::new(dims.hidden, gates, rows).accumulate(),
        )?,
    ];
    d.extend(bias_backward(ctx, grads.db, dz)?);
    if let Some(dx) = grads.dx {
        expect_numel(op, "dx", &dx.shape, rows * dims.input)?;
        d.push(matmul(
            ctx,
            Layout::ABt,
            dx,
            dz,
            w,
            MatmulParams::new(rows, dims.input, gates).accumulate(),
        )?);
    }
    Ok(d)
}

/// The whole forward pass over x `[T,B,D]`: fills `bufs.gates`, `c_all`,
/// `h_all` and `h_last` (and `bufs.z`, see below) in the fewest dispatches
/// the device allows: [`lstm_forward_persistent`] (2 dispatches) when
/// [`lstm_persistent_support`] says it fits, else [`lstm_forward_stepwise`]
/// (2T). Record the returned dispatches in order, in one `ctx.run`. Slot 0
/// of h_all and c_all must hold the zero initial state (as
/// [`LstmBuffers::new`] leaves it; nothing writes it).
pub fn lstm_forward_sequence(
    ctx: &GpuContext,
    bufs: &LstmBuffers,
    x: &GpuTensor,
    weights: &RecurrentWeights,
    mask: Option<&GpuTensor>,
) -> Result<Vec<Dispatch>> {
    if lstm_persistent_support(ctx, bufs.dims).is_ok() {
        lstm_forward_persistent(ctx, bufs, x, weights, mask)
    } else {
        lstm_forward_stepwise(ctx, bufs, x, weights, mask)
    }
}

/// The forward pass in two dispatches: `Z = X·W` (bufs.z keeps it), then
/// [`lstm_sequence_forward`].
pub fn lstm_forward_persistent(
    ctx: &GpuContext,
    bufs: &LstmBuffers,
    x: &GpuTensor,
    weights: &RecurrentWeights,
    mask: Option<&GpuTensor>,
) -> Result<Vec<Dispatch>> {
    let op = "lstm_forward_persistent";
    let dims = bufs.dims;
    let gates = 4 * dims.hidden;
    check_weights(op, x, weights, dims, gates)?;
    Ok(vec![
        input_projection(ctx, &bufs.z, x, weights.w, dims, gates)?,
        lstm_sequence_forward(ctx, bufs, weights, mask)?,
    ])
}

/// The forward pass one step at a time (any H; the readable reference):
/// `Z = X·W`, then per step `z_t += h_{t-1}·U` and [`lstm_gates_forward`].
/// bufs.z ends up holding the full pre-activations.
pub fn lstm_forward_stepwise(
    ctx: &GpuContext,
    bufs: &LstmBuffers,
    x: &GpuTensor,
    weights: &RecurrentWeights,
    mask: Option<&GpuTensor>,
) -> Result<Vec<Dispatch>> {
    let op = "lstm_forward_stepwise";
    let dims = bufs.dims;
    let gates = 4 * dims.hidden;
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
        d.push(lstm_gates_forward(ctx, bufs, weights.b, mask, t)?);
    }
    Ok(d)
}

/// The whole backward pass: accumulates dx (if given), dW, dU and db from
/// the incoming gradient of the hidden states and what forward left in
/// `bufs` (either forward path), in the fewest dispatches the device
/// allows: [`lstm_backward_persistent`] when [`lstm_persistent_support`]
/// says it fits, else [`lstm_backward_stepwise`]. Record the returned
/// dispatches in order, in one `ctx.run`, after the forward ones.
pub fn lstm_backward_sequence(
    ctx: &GpuContext,
    grads: &RecurrentGrads,
    dh: HiddenGrad,
    bufs: &LstmBuffers,
    x: &GpuTensor,
    weights: &RecurrentWeights,
    mask: Option<&GpuTensor>,
) -> Result<Vec<Dispatch>> {
    if lstm_persistent_support(ctx, bufs.dims).is_ok() {
        lstm_backward_persistent(ctx, grads, dh, bufs, x, weights, mask)
    } else {
        lstm_backward_stepwise(ctx, grads, dh, bufs, x, weights, mask)
    }
}

/// The backward pass with the recurrence in one dispatch:
/// [`lstm_sequence_backward`] (dz of every step), then the weight gradients
/// as matmuls over all `T*B` rows (4 or 5 dispatches).
pub fn lstm_backward_persistent(
    ctx: &GpuContext,
    grads: &RecurrentGrads,
    dh: HiddenGrad,
    bufs: &LstmBuffers,
    x: &GpuTensor,
    weights: &RecurrentWeights,
    mask: Option<&GpuTensor>,
) -> Result<Vec<Dispatch>> {
    let op = "lstm_backward_persistent";
    let dims = bufs.dims;
    let gates = 4 * dims.hidden;
    check_weights(op, x, weights, dims, gates)?;
    if dh.seq.is_none() && dh.last.is_none() {
        return Err(Error::shape(op, "no incoming gradient (seq or last)"));
    }
    let mut d = vec![lstm_sequence_backward(ctx, bufs, dh, weights.u, mask)?];
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
/// per step, last to first, [`lstm_gates_backward`] then
/// `dh_{t-1} += dz_t·Uᵀ`; then the weight gradients.
pub fn lstm_backward_stepwise(
    ctx: &GpuContext,
    grads: &RecurrentGrads,
    dh: HiddenGrad,
    bufs: &LstmBuffers,
    x: &GpuTensor,
    weights: &RecurrentWeights,
    mask: Option<&GpuTensor>,
) -> Result<Vec<Dispatch>> {
    let op = "lstm_backward_stepwise";
    let dims = bufs.dims;
    let gates = 4 * dims.hidden;
    check_weights(op, x, weights, dims, gates)?;
    if dh.seq.is_none() && dh.last.is_none() {
        return Err(Error::shape(op, "no incoming gradient (seq or last)"));
    }
    let mut d = Vec::with_capacity(2 * dims.steps + 4);
    for t in (0..dims.steps).rev() {
        d.push(lstm_gates_backward(ctx, bufs, dh, mask, t)?);
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
// Saves: x (the layer's input), and in `LstmBuffers` the gates, c_all and
// h_all of the forward pass. Backward: `lstm_backward_sequence`, i.e.
// `lstm_sequence_backward` (or per step `lstm_gates_backward` +
// `matmul_abt` for the dh carry), then `matmul_atb` (dW, dU),
// `bias_backward` (db) and `matmul_abt` (dx). Outputs: `h_last`
// (`return_sequences=False`) or h_all slots 1..=T.
