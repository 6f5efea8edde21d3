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
//! CPU reference: [`lstm_forward_cpu`] and [`lstm_backward_cpu`] (the
//! generic drivers of `ops::recurrent` with the gate math of this file's
//! `CpuCell` impl) follow the same plan (one input projection over all
//! `T*B` rows; per step only `h_{t-1}·U` or `dz_t·Uᵀ` and the gates, in
//! place on contiguous rows; the weight gradients as single products after
//! the reverse loop), with the two halves of a batch of at least
//! `CPU_SPLIT_MIN_BATCH` samples on two threads, and the leading steps every
//! sample shares (pre-padding) run once ([`lstm_forward_shared_cpu`]). [`lstm_forward_naive_cpu`] and
//! [`lstm_backward_naive_cpu`] spell the same computation step by step with
//! the cell functions; tests/lstm.rs holds the fast ones to them.

use ndarray::{Array2, ArrayView1, ArrayView2, ArrayView3, NdFloat};

use crate::error::Result;
use crate::gpu::{Access, GpuContext, GpuTensor, KernelSpec, Shader};
use crate::ops::activation::{
    sigmoid_cpu as sigmoid, sigmoid_slice_cpu as sigmoid_slice, tanh_cpu as tanh,
    tanh_slice_cpu as tanh_slice,
};
use crate::ops::recurrent::{
    is_real, persistent_groups, recurrent_backward_cpu, recurrent_backward_naive_cpu,
    recurrent_forward_cpu, recurrent_forward_naive_cpu, CpuCell, PersistentKernel,
    RecurrentBuffers, RecurrentCell, RecurrentCpuGrads, RecurrentDims, RecurrentStates,
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
pub type LstmStates<A> = RecurrentStates<A>;

/// The LSTM's math for the CPU drivers of `ops::recurrent`: the gates and
/// the cell state c.
impl CpuCell for LstmState {
    const CELL_STATE: usize = 1;

    #[inline(always)]
    fn forward_row<A: NdFloat>(
        z: &mut [A],
        b: &[A],
        c_prev: &[A],
        h_prev: &[A],
        c: &mut [A],
        h: &mut [A],
        real: bool,
    ) {
        let hidden = h.len();
        // Gate order i, f, g, o: g (the third quarter) is tanh. Whole
        // slices at a time, so that the activations vectorise.
        z.iter_mut().zip(b).for_each(|(v, &b)| *v += b);
        let (ifg, o) = z.split_at_mut(3 * hidden);
        let (if_, g) = ifg.split_at_mut(2 * hidden);
        sigmoid_slice(if_);
        tanh_slice(g);
        sigmoid_slice(o);
        if !real {
            c.copy_from_slice(c_prev);
            h.copy_from_slice(h_prev);
            return;
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

    #[inline(always)]
    fn backward_row<A: NdFloat>(
        dz: &mut [A],
        dh: &[A],
        dc: &mut [A],
        gate: &[A],
        c_prev: &[A],
        c: &[A],
        tanh_c: &mut [A],
    ) {
        let hidden = dh.len();
        let one = A::one();
        // tanh(c_t) a row at a time (vectorised).
        tanh_c.copy_from_slice(c);
        tanh_slice(tanh_c);
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
        }
    }

    fn cell_forward<A: NdFloat>(
        z: &ArrayView2<A>,
        b: &ArrayView1<A>,
        c_prev: &ArrayView2<A>,
        h_prev: &ArrayView2<A>,
        mask: Option<&ArrayView1<bool>>,
    ) -> (Array2<A>, Array2<A>, Array2<A>) {
        let LstmCell { gates, c, h } = lstm_cell_forward_cpu(z, b, c_prev, h_prev, mask);
        (gates, c, h)
    }

    fn cell_backward<A: NdFloat>(
        dh: &ArrayView2<A>,
        dc: &ArrayView2<A>,
        gates: &ArrayView2<A>,
        c_prev: &ArrayView2<A>,
        c: &ArrayView2<A>,
        mask: Option<&ArrayView1<bool>>,
    ) -> (Array2<A>, Array2<A>, Array2<A>) {
        let g = lstm_cell_backward_cpu(dh, dc, gates, c_prev, c, mask);
        (g.dz, g.dh_prev, g.dc_prev)
    }
}

/// The whole sequence: x `[T,B,D]`, mask `[T,B]` (true = real step); the
/// fast reference (`recurrent_forward_cpu` of `ops::recurrent`: one input
/// projection, the gates in place on contiguous rows, the halves of a
/// large batch on two threads). [`lstm_forward_naive_cpu`] is the same
/// computation step by step, with the same arithmetic.
pub fn lstm_forward_cpu<A: NdFloat>(
    x: &ArrayView3<A>,
    w: &ArrayView2<A>,
    u: &ArrayView2<A>,
    b: &ArrayView1<A>,
    mask: Option<&ArrayView2<bool>>,
) -> LstmStates<A> {
    lstm_forward_shared_cpu(x, w, u, b, mask, 0)
}

/// [`lstm_forward_cpu`] with up to `shared` leading steps run once for the
/// whole batch, where every sample's input row (and mask) is the same
/// (pre-padded texts: `ops::recurrent::shared_steps` of the token ids);
/// the states record how many ([`LstmStates::shared`]) and
/// [`lstm_backward_cpu`] follows them (see `recurrent_backward_cpu` for
/// what dx of those steps then holds).
pub fn lstm_forward_shared_cpu<A: NdFloat>(
    x: &ArrayView3<A>,
    w: &ArrayView2<A>,
    u: &ArrayView2<A>,
    b: &ArrayView1<A>,
    mask: Option<&ArrayView2<bool>>,
    shared: usize,
) -> LstmStates<A> {
    recurrent_forward_cpu::<LstmState, A>(x, w, u, b, mask, shared)
}

/// [`lstm_forward_cpu`] spelled step by step with [`lstm_cell_forward_cpu`]:
/// the plain reference the fast version is tested against.
pub fn lstm_forward_naive_cpu<A: NdFloat>(
    x: &ArrayView3<A>,
    w: &ArrayView2<A>,
    u: &ArrayView2<A>,
    b: &ArrayView1<A>,
    mask: Option<&ArrayView2<bool>>,
) -> LstmStates<A> {
    recurrent_forward_naive_cpu::<LstmState, A>(x, w, u, b, mask)
}

/// Accumulates the gradients of the whole sequence into `grads`. `dh_seq`
/// `[T,B,H]` is the incoming gradient of h_1..h_T (for a loss on h_T only,
/// zero except its last slice). The fast reference
/// (`recurrent_backward_cpu` of `ops::recurrent`);
/// [`lstm_backward_naive_cpu`] is the same computation step by step (its
/// sums over steps run in another order).
pub fn lstm_backward_cpu<A: NdFloat>(
    grads: &mut RecurrentCpuGrads<A>,
    dh_seq: &ArrayView3<A>,
    states: &LstmStates<A>,
    x: &ArrayView3<A>,
    w: &ArrayView2<A>,
    u: &ArrayView2<A>,
    mask: Option<&ArrayView2<bool>>,
) {
    recurrent_backward_cpu::<LstmState, A>(grads, dh_seq, states.saved(), x, w, u, mask)
}

/// [`lstm_backward_cpu`] spelled step by step with
/// [`lstm_cell_backward_cpu`]: the plain reference the fast version is
/// tested against.
pub fn lstm_backward_naive_cpu<A: NdFloat>(
    grads: &mut RecurrentCpuGrads<A>,
    dh_seq: &ArrayView3<A>,
    states: &LstmStates<A>,
    x: &ArrayView3<A>,
    w: &ArrayView2<A>,
    u: &ArrayView2<A>,
    mask: Option<&ArrayView2<bool>>,
) {
    recurrent_backward_naive_cpu::<LstmState, A>(grads, dh_seq, states.saved(), x, w, u, mask)
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
    shader: &SHADER,
    entry: "lstm_sequence_backward_blocked",
    bindings: &[
        Access::ReadWrite, // dz
        Access::Read,      // dh_seq
        Access::Read,      // dh_last
        Access::Read,      // gates
        Access::Read,      // c_all
        Access::Read,      // U
        Access::Read,      // mask
        Access::ReadWrite, // carry: the gradient of the state after the shared steps
    ],
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
        let form = persistent_form(ctx, dims);
        let (spec, groups) = match form {
            PersistentForm::Pair => (pair, persistent_groups(dims)),
            PersistentForm::Pair4 => (pair4, persistent_groups(dims)),
            PersistentForm::Blocked => (blocked, dims.batch.div_ceil(BLOCKED_SAMPLES) as u32),
        };
        PersistentKernel {
            spec,
            constants: vec![("HIDDEN", h as f64), ("H4", (h / 4) as f64)],
            groups,
            shares_steps: form == PersistentForm::Blocked,
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
