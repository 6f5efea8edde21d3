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
//! CPU reference: [`rnn_forward_cpu`] and [`rnn_backward_cpu`] are the
//! LSTM's generic drivers (`ops::recurrent`) with this file's cell math
//! (`CpuCell`), so they follow the plan of `ops::lstm`'s (one input
//! projection, per step only the recurrent product and the cell in place,
//! batched weight gradients, the halves of a large batch on two threads);
//! [`rnn_forward_naive_cpu`] and [`rnn_backward_naive_cpu`] spell the same
//! computation step by step.

use ndarray::{s, Array2, Array3, ArrayView1, ArrayView2, ArrayView3, NdFloat};

use crate::error::Result;
use crate::gpu::{Access, GpuContext, GpuTensor, KernelSpec, Shader};
use crate::ops::activation::tanh_cpu as tanh;
use crate::ops::recurrent::{
    is_real, persistent_groups, recurrent_backward_cpu, recurrent_backward_naive_cpu,
    recurrent_forward_cpu, recurrent_forward_naive_cpu, CpuCell, PersistentKernel,
    RecurrentBuffers, RecurrentCell, RecurrentCpuGrads, RecurrentDims, RecurrentSaved,
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

/// The RNN's math for the CPU drivers of `ops::recurrent`: z is tanh'd in
/// place into h; the saved activations are h_1..h_T and there is no c.
impl CpuCell for RnnState {
    const CELL_STATE: usize = 0;

    #[inline(always)]
    fn forward_row<A: NdFloat>(
        z: &mut [A],
        b: &[A],
        _c_prev: &[A],
        h_prev: &[A],
        _c: &mut [A],
        h: &mut [A],
        real: bool,
    ) {
        if !real {
            h.copy_from_slice(h_prev);
            return;
        }
        for (v, &b) in z.iter_mut().zip(b) {
            *v = tanh(*v + b);
        }
        h.copy_from_slice(z);
    }

    #[inline(always)]
    fn backward_row<A: NdFloat>(
        dz: &mut [A],
        dh: &[A],
        _dc: &mut [A],
        h: &[A],
        _c_prev: &[A],
        _c: &[A],
        _scratch: &mut [A],
    ) {
        let one = A::one();
        for j in 0..dh.len() {
            dz[j] = dh[j] * (one - h[j] * h[j]);
        }
    }

    fn cell_forward<A: NdFloat>(
        z: &ArrayView2<A>,
        b: &ArrayView1<A>,
        c_prev: &ArrayView2<A>,
        h_prev: &ArrayView2<A>,
        mask: Option<&ArrayView1<bool>>,
    ) -> (Array2<A>, Array2<A>, Array2<A>) {
        let h = rnn_cell_forward_cpu(z, b, h_prev, mask);
        (h.clone(), c_prev.to_owned(), h)
    }

    fn cell_backward<A: NdFloat>(
        dh: &ArrayView2<A>,
        dc: &ArrayView2<A>,
        h: &ArrayView2<A>,
        _c_prev: &ArrayView2<A>,
        _c: &ArrayView2<A>,
        mask: Option<&ArrayView1<bool>>,
    ) -> (Array2<A>, Array2<A>, Array2<A>) {
        let g = rnn_cell_backward_cpu(dh, h, mask);
        (g.dz, g.dh_prev, dc.to_owned())
    }
}

/// The whole sequence: x `[T,B,D]`, mask `[T,B]` (true = real step).
/// Returns h_all `[T+1,B,H]`, slot 0 the zero initial state.
///
/// The fast reference (`recurrent_forward_cpu` of `ops::recurrent`, as
/// the LSTM's); [`rnn_forward_naive_cpu`] is the same computation step by
/// step.
pub fn rnn_forward_cpu<A: NdFloat>(
    x: &ArrayView3<A>,
    w: &ArrayView2<A>,
    u: &ArrayView2<A>,
    b: &ArrayView1<A>,
    mask: Option<&ArrayView2<bool>>,
) -> Array3<A> {
    rnn_forward_shared_cpu(x, w, u, b, mask, 0).0
}

/// [`rnn_forward_cpu`] with up to `shared` leading steps run once for the
/// whole batch, where every sample's input row (and mask) is the same
/// (pre-padded texts: `ops::recurrent::shared_steps` of the token ids).
/// Returns h_all and how many steps were shared, for
/// [`rnn_backward_shared_cpu`].
pub fn rnn_forward_shared_cpu<A: NdFloat>(
    x: &ArrayView3<A>,
    w: &ArrayView2<A>,
    u: &ArrayView2<A>,
    b: &ArrayView1<A>,
    mask: Option<&ArrayView2<bool>>,
    shared: usize,
) -> (Array3<A>, usize) {
    let states = recurrent_forward_cpu::<RnnState, A>(x, w, u, b, mask, shared);
    (states.h_all, states.shared)
}

/// [`rnn_forward_cpu`] spelled step by step with [`rnn_cell_forward_cpu`]:
/// the plain reference the fast version is tested against.
pub fn rnn_forward_naive_cpu<A: NdFloat>(
    x: &ArrayView3<A>,
    w: &ArrayView2<A>,
    u: &ArrayView2<A>,
    b: &ArrayView1<A>,
    mask: Option<&ArrayView2<bool>>,
) -> Array3<A> {
    recurrent_forward_naive_cpu::<RnnState, A>(x, w, u, b, mask).h_all
}

/// What the backward references read of forward: the activations are
/// h_1..h_T; the RNN has no c (an empty array).
fn saved<'a, A: NdFloat>(
    h_all: &'a ArrayView3<A>,
    no_c: &'a Array3<A>,
    shared: usize,
) -> RecurrentSaved<'a, A> {
    RecurrentSaved {
        gates: h_all.slice(s![1.., .., ..]),
        c_all: no_c.view(),
        h_all: h_all.view(),
        shared,
    }
}

/// Accumulates the gradients of the whole sequence into `grads`. `dh_seq`
/// `[T,B,H]` is the incoming gradient of h_1..h_T (for a loss on h_T only,
/// zero except its last slice). The fast reference
/// (`recurrent_backward_cpu` of `ops::recurrent`);
/// [`rnn_backward_naive_cpu`] is the same computation step by step (its
/// sums over steps run in another order).
pub fn rnn_backward_cpu<A: NdFloat>(
    grads: &mut RecurrentCpuGrads<A>,
    dh_seq: &ArrayView3<A>,
    h_all: &ArrayView3<A>,
    x: &ArrayView3<A>,
    w: &ArrayView2<A>,
    u: &ArrayView2<A>,
    mask: Option<&ArrayView2<bool>>,
) {
    rnn_backward_shared_cpu(grads, dh_seq, h_all, x, w, u, mask, 0)
}

/// [`rnn_backward_cpu`] after [`rnn_forward_shared_cpu`] shared `shared`
/// leading steps (see `recurrent_backward_cpu` for what dx of those steps
/// then holds).
#[allow(clippy::too_many_arguments)]
pub fn rnn_backward_shared_cpu<A: NdFloat>(
    grads: &mut RecurrentCpuGrads<A>,
    dh_seq: &ArrayView3<A>,
    h_all: &ArrayView3<A>,
    x: &ArrayView3<A>,
    w: &ArrayView2<A>,
    u: &ArrayView2<A>,
    mask: Option<&ArrayView2<bool>>,
    shared: usize,
) {
    let (steps, batch, _) = x.dim();
    let no_c = Array3::zeros((steps + 1, batch, 0));
    let saved = saved(h_all, &no_c, shared);
    recurrent_backward_cpu::<RnnState, A>(grads, dh_seq, saved, x, w, u, mask)
}

/// [`rnn_backward_cpu`] spelled step by step with [`rnn_cell_backward_cpu`]:
/// the plain reference the fast version is tested against.
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
    let no_c = Array3::zeros((steps + 1, batch, 0));
    let saved = saved(h_all, &no_c, 0);
    recurrent_backward_naive_cpu::<RnnState, A>(grads, dh_seq, saved, x, w, u, mask)
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
            shares_steps: false,
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
