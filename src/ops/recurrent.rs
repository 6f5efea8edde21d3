//! What the recurrent cells (`ops::lstm`, `ops::rnn`) share: sizes, the
//! weight and gradient bundles, the device buffers, the shape checks, the
//! launchers of the per-step and one-dispatch (persistent) kernels, the
//! forward and backward drivers (input projection, recurrence, weight
//! gradients as batched matmuls), and the CPU helpers of the references.
//!
//! A cell states only what differs ([`RecurrentCell`]): the width of z per
//! unit (4 gates or 1), its kernels, the state it keeps besides h and which
//! persistent kernel runs a shape. Both cells' kernels share one binding
//! layout: forward `[z, bias, (U), mask, <cell state>, h_all, h_last]`,
//! per-step backward `[dz, dh_carry, <carries>, dh_seq, dh_last, <saved>,
//! mask]`, persistent backward `[dz, dh_seq, dh_last, <saved>, U, mask]`,
//! and one `Params` (mirrored in `shaders/lstm.wgsl` and `shaders/rnn.wgsl`).

use ndarray::linalg::general_mat_mul;
use ndarray::{
    s, Array, Array1, Array2, Array3, ArrayRef2, ArrayRef3, ArrayView1, ArrayView2, ArrayView3,
    ArrayViewMut2, ArrayViewMut3, Axis, CowArray, Dimension, Ix2, NdFloat,
};

use crate::error::{Error, Result};
use crate::gpu::{Dispatch, GpuContext, GpuTensor, Grid, KernelSpec};
use crate::ops::bias::bias_backward;
use crate::ops::matmul::{matmul, Layout, MatmulParams};
use crate::ops::threads::on_batch_halves;
pub use crate::ops::threads::CPU_SPLIT_MIN_BATCH;
use crate::tensor::{expect_numel, DType};

/// Uniform parameters of every recurrent kernel, mirrored by `Params` in
/// `shaders/lstm.wgsl` and `shaders/rnn.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct RecurrentParams {
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
    /// The blocked LSTM kernels run steps `first..end` for samples
    /// `0..rows` (rows < batch: the run of the shared steps).
    pub first: u32,
    pub end: u32,
    pub rows: u32,
    pub _pad1: u32,
}

impl RecurrentParams {
    fn new(dims: RecurrentDims, step: usize, mask_kind: u32) -> Self {
        Self {
            batch: dims.batch as u32,
            hidden: dims.hidden as u32,
            step: step as u32,
            steps: dims.steps as u32,
            mask_kind,
            end: dims.steps as u32,
            rows: dims.batch as u32,
            ..Self::default()
        }
    }
}

/// The steps and samples a blocked LSTM kernel runs: the tail of
/// [`RecurrentParams`] (from `first`), rewritten per batch by
/// [`set_shared_steps`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
struct StepRange {
    first: u32,
    end: u32,
    rows: u32,
    _pad: u32,
}

impl StepRange {
    /// The two runs of a recurrence whose first `shared` steps (below T)
    /// are the same in every sample: those steps for sample 0, then the
    /// rest for every sample (see "shared steps" in `shaders/lstm.wgsl`).
    fn shared_runs(op: &str, dims: RecurrentDims, shared: usize) -> Result<[Self; 2]> {
        if shared >= dims.steps {
            return Err(Error::shape(
                op,
                format!("{shared} shared steps of {}: at most T - 1", dims.steps),
            ));
        }
        let shared = shared as u32;
        Ok([
            Self {
                first: 0,
                end: shared,
                rows: 1,
                _pad: 0,
            },
            Self {
                first: shared,
                end: dims.steps as u32,
                rows: dims.batch as u32,
                _pad: 0,
            },
        ])
    }

    fn into_params(self, p: RecurrentParams) -> RecurrentParams {
        RecurrentParams {
            first: self.first,
            end: self.end,
            rows: self.rows,
            ..p
        }
    }
}

/// Sets the shared steps of the two runs that
/// [`recurrent_sequence_forward_shared`] or
/// [`recurrent_sequence_backward_shared`] prepared (`runs`: the run of
/// the shared steps, then the other, whatever order they are recorded
/// in) to `shared` (below T), by rewriting the step range in their
/// uniforms: the graph executor does per batch.
pub fn set_shared_steps(
    ctx: &GpuContext,
    dims: RecurrentDims,
    runs: [&Dispatch; 2],
    shared: usize,
) -> Result<()> {
    let offset = std::mem::offset_of!(RecurrentParams, first) as u64;
    let ranges = StepRange::shared_runs("set_shared_steps", dims, shared)?;
    for (run, range) in runs.into_iter().zip(ranges) {
        run.set_params_at(ctx, offset, &range);
    }
    Ok(())
}

impl RecurrentParams {
    /// With the flags saying which incoming gradients exist.
    fn incoming(self, dh: HiddenGrad) -> Self {
        Self {
            has_seq: dh.seq.is_some() as u32,
            has_last: dh.last.is_some() as u32,
            ..self
        }
    }
}

// ---------------------------------------------------------------- CPU helpers

/// Whether step `t` of a `[T,B]` mask has a real sample (no mask: yes).
pub(crate) fn step_has_real(mask: Option<&ArrayView2<bool>>, t: usize) -> bool {
    mask.is_none_or(|m| m.row(t).iter().any(|&r| r))
}

/// Whether sample `n` of a step's `[B]` mask is real (no mask: all are).
pub(crate) fn is_real(mask: Option<&ArrayView1<bool>>, n: usize) -> bool {
    mask.is_none_or(|m| m[n])
}

/// A view of time-major arrays (`[T,B,..]`, mask `[T,B]`) that can be cut
/// at sample `at` (axis 1), so that a group of such views can be split for
/// [`on_batch_halves`] by [`impl_split_batch`].
pub(crate) trait SplitBatch: Sized {
    fn split_batch(self, at: usize) -> (Self, Self);
}

impl<A> SplitBatch for ArrayViewMut3<'_, A> {
    fn split_batch(self, at: usize) -> (Self, Self) {
        self.split_at(Axis(1), at)
    }
}

impl<A> SplitBatch for ArrayView3<'_, A> {
    fn split_batch(self, at: usize) -> (Self, Self) {
        self.split_at(Axis(1), at)
    }
}

impl SplitBatch for Option<ArrayView2<'_, bool>> {
    fn split_batch(self, at: usize) -> (Self, Self) {
        match self {
            Some(m) => {
                let (m0, m1) = m.split_at(Axis(1), at);
                (Some(m0), Some(m1))
            }
            None => (None, None),
        }
    }
}

/// Gives a struct of [`SplitBatch`] views (`Group<'a, A> { field, .. }`) a
/// `split(self, at)` that cuts every field at sample `at`: the recurrences'
/// groups of samples of the CPU drivers below.
macro_rules! impl_split_batch {
    ($group:ident { $($field:ident),+ $(,)? }) => {
        impl<A> $group<'_, A> {
            fn split(self, at: usize) -> (Self, Self) {
                $(let $field = $crate::ops::recurrent::SplitBatch::split_batch(self.$field, at);)+
                (Self { $($field: $field.0),+ }, Self { $($field: $field.1),+ })
            }
        }
    };
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
    /// `dx += dZ·Wᵀ`; `h_prev` `[T,B,H]` holds h_{t-1} of every step. The
    /// first `shared` steps count once, with sample 0's rows (see
    /// [`recurrent_backward_cpu`]): their other rows of dx stay as they are.
    pub(crate) fn add_from_dz(
        &mut self,
        dz: &ArrayView3<A>,
        x: &ArrayView3<A>,
        h_prev: &ArrayView3<A>,
        w: &ArrayView2<A>,
        shared: usize,
    ) {
        standard(&mut self.dx);
        let Self { dx, dw, du, db } = self;
        let rest = s![shared.., .., ..];
        let (dz_rest, x_rest, h_rest) = (dz.slice(rest), x.slice(rest), h_prev.slice(rest));
        add_rows(
            [dw, du],
            db,
            &step_rows(&dz_rest).view(),
            &step_rows(&x_rest).view(),
            &step_rows(&h_rest).view(),
            w,
            &mut step_rows_mut(dx.slice_mut(rest)),
        );
        if shared > 0 {
            let first = s![..shared, 0, ..];
            add_rows(
                [dw, du],
                db,
                &dz.slice(first),
                &x.slice(first),
                &h_prev.slice(first),
                w,
                &mut dx.slice_mut(first),
            );
        }
    }
}

/// [`RecurrentCpuGrads::add_from_dz`] over rows: dz `[N,G]`, x `[N,D]`,
/// h_prev `[N,H]`, dx `[N,D]`. dU (the largest product) runs on a second
/// thread; each product is computed whole by one thread, so the split
/// changes no bits.
fn add_rows<A: NdFloat>(
    [dw, du]: [&mut Array2<A>; 2],
    db: &mut Array1<A>,
    dz: &ArrayView2<A>,
    x: &ArrayView2<A>,
    h_prev: &ArrayView2<A>,
    w: &ArrayView2<A>,
    dx: &mut ArrayViewMut2<A>,
) {
    let one = A::one();
    std::thread::scope(|s| {
        s.spawn(|| general_mat_mul(one, &h_prev.t(), dz, one, du));
        general_mat_mul(one, &x.t(), dz, one, dw);
        // Σ over the rows in order, then added (as `sum_axis(Axis(0))`,
        // whose lane-by-lane walk was 10x slower than these row adds).
        let mut sum = Array1::zeros(db.len());
        for row in dz.rows() {
            sum += &row;
        }
        *db += &sum;
        general_mat_mul(one, dz, &w.t(), one, dx);
    });
}

// ---------------------------------------------------------------- CPU references

/// The host math of a cell, for the CPU references below (written once for
/// both cells): how one sample's z becomes its activations and states
/// forward, and how dz follows from dh backward. The fast drivers call the
/// row functions on contiguous rows; the step-by-step references call the
/// cell functions (`lstm_cell_forward_cpu`, ..), which spell the same
/// arithmetic on whole steps.
pub(crate) trait CpuCell: RecurrentCell {
    /// Columns of the carried cell state per unit: 1 (the LSTM's c) or 0
    /// (the RNN carries only h; its c arrays are empty).
    const CELL_STATE: usize;

    /// One sample at one step: `z` `[G·H]` holds `x_t·W + h_{t-1}·U` and
    /// becomes the activations backward reads; writes c_t and h_t (from
    /// c_{t-1}, h_{t-1} unchanged when the step is masked, `real` false).
    fn forward_row<A: NdFloat>(
        z: &mut [A],
        b: &[A],
        c_prev: &[A],
        h_prev: &[A],
        c: &mut [A],
        h: &mut [A],
        real: bool,
    );

    /// One real sample at one step backward: writes `dz` `[G·H]` from the
    /// total `dh` and `dc` of h_t, c_t, and turns `dc` into the carry into
    /// c_{t-1}; `act` are the saved activations, `scratch` H free elements.
    fn backward_row<A: NdFloat>(
        dz: &mut [A],
        dh: &[A],
        dc: &mut [A],
        act: &[A],
        c_prev: &[A],
        c: &[A],
        scratch: &mut [A],
    );

    /// One whole step forward (the step-by-step reference): the
    /// activations, c_t and h_t.
    fn cell_forward<A: NdFloat>(
        z: &ArrayView2<A>,
        b: &ArrayView1<A>,
        c_prev: &ArrayView2<A>,
        h_prev: &ArrayView2<A>,
        mask: Option<&ArrayView1<bool>>,
    ) -> (Array2<A>, Array2<A>, Array2<A>);

    /// One whole step backward: dz, and the masked carries into dh_{t-1}
    /// (besides `dz·Uᵀ`) and dc_{t-1}.
    fn cell_backward<A: NdFloat>(
        dh: &ArrayView2<A>,
        dc: &ArrayView2<A>,
        act: &ArrayView2<A>,
        c_prev: &ArrayView2<A>,
        c: &ArrayView2<A>,
        mask: Option<&ArrayView1<bool>>,
    ) -> (Array2<A>, Array2<A>, Array2<A>);
}

/// Everything the CPU forward keeps: the activations `[T,B,G·H]` (the
/// LSTM's gates; the RNN's h_1..h_T), `c_all` `[T+1,B,C·H]` (empty for the
/// RNN) and `h_all` `[T+1,B,H]` (slot 0 the zero initial state).
#[derive(Clone, Debug)]
pub struct RecurrentStates<A> {
    pub gates: Array3<A>,
    pub c_all: Array3<A>,
    pub h_all: Array3<A>,
    /// The leading steps every sample shared, run once for sample 0
    /// ([`recurrent_forward_cpu`]): their activations are in sample 0's rows
    /// only (the other rows are 0); h_all and c_all are complete.
    pub shared: usize,
}

/// What the CPU backward reads of forward's states (see
/// [`RecurrentStates`]).
pub(crate) struct RecurrentSaved<'a, A> {
    pub gates: ArrayView3<'a, A>,
    pub c_all: ArrayView3<'a, A>,
    pub h_all: ArrayView3<'a, A>,
    /// [`RecurrentStates::shared`].
    pub shared: usize,
}

impl<A> RecurrentStates<A> {
    pub(crate) fn saved(&self) -> RecurrentSaved<'_, A> {
        RecurrentSaved {
            gates: self.gates.view(),
            c_all: self.c_all.view(),
            h_all: self.h_all.view(),
            shared: self.shared,
        }
    }
}

/// What the forward recurrence of a group of samples (`b` of the batch's
/// `B`) reads and writes: gates `[T,b,G·H]` (X·W on entry), c_all and
/// h_all `[T+1,b,..]`, mask `[T,b]`.
struct ForwardGroup<'a, A> {
    gates: ArrayViewMut3<'a, A>,
    c_all: ArrayViewMut3<'a, A>,
    h_all: ArrayViewMut3<'a, A>,
    mask: Option<ArrayView2<'a, bool>>,
}

impl_split_batch!(ForwardGroup {
    gates,
    c_all,
    h_all,
    mask
});

/// The leading steps, at most `steps`, at which every sample of a
/// time-major `[T,B]` batch of token ids holds the same token (pre-padding:
/// the padding id until the longest text of the batch starts); 0 for a
/// batch of one.
pub fn shared_steps(ids: &[u32], steps: usize, batch: usize) -> usize {
    if batch < 2 {
        return 0;
    }
    ids.chunks_exact(batch)
        .take(steps)
        .take_while(|row| row.iter().all(|&v| v == row[0]))
        .count()
}

/// How many of the first `claimed` steps have the same input row and mask
/// for every sample of x `[T,B,D]` (0 for a batch of one).
fn identical_steps<A: NdFloat>(
    x: &ArrayView3<A>,
    mask: Option<&ArrayView2<bool>>,
    claimed: usize,
) -> usize {
    let (steps, batch, _) = x.dim();
    if batch < 2 {
        return 0;
    }
    (0..claimed.min(steps))
        .take_while(|&t| {
            let x_t = x.index_axis(Axis(0), t);
            let first = x_t.index_axis(Axis(0), 0);
            x_t.outer_iter().all(|row| row == first)
                && mask.is_none_or(|m| m.row(t).iter().all(|&v| v == m[[t, 0]]))
        })
        .count()
}

/// The whole sequence forward: x `[T,B,D]`, mask `[T,B]` (true = real
/// step).
///
/// The input projection `X·W` of all `T·B` rows is one product, written
/// straight into the gates array; each step then adds `h_{t-1}·U` into its
/// slice in place and runs the cell's [`CpuCell::forward_row`] on
/// contiguous rows, allocating nothing. The two halves of a large batch run
/// at once ([`on_batch_halves`]). [`recurrent_forward_naive_cpu`] is the
/// same computation step by step, with the same arithmetic.
///
/// `shared` (at most; the steps are checked, see [`identical_steps`])
/// leading steps whose input rows and mask are the same for every sample
/// (pre-padded texts without a mask: [`shared_steps`]) have the same state
/// in every sample, so they run once, for sample 0 (one row of the
/// projection, one-row products), and the state after them is copied into
/// every sample: the recurrence then costs `T - shared` batch steps.
pub(crate) fn recurrent_forward_cpu<C: CpuCell, A: NdFloat>(
    x: &ArrayView3<A>,
    w: &ArrayView2<A>,
    u: &ArrayView2<A>,
    b: &ArrayView1<A>,
    mask: Option<&ArrayView2<bool>>,
    shared: usize,
) -> RecurrentStates<A> {
    let (steps, batch, _) = x.dim();
    let hidden = u.nrows();
    let width = C::GATES * hidden;
    let shared = identical_steps(x, mask, shared);
    let gates = if shared == 0 {
        step_rows(x)
            .dot(w)
            .into_shape_with_order((steps, batch, width))
            .expect("T·B rows")
    } else {
        let mut gates = Array3::zeros((steps, batch, width));
        let rest = s![shared.., .., ..];
        general_mat_mul(
            A::one(),
            &step_rows(&x.slice(rest)),
            w,
            A::zero(),
            &mut step_rows_mut(gates.slice_mut(rest)),
        );
        let first = s![..shared, 0, ..];
        general_mat_mul(
            A::one(),
            &x.slice(first),
            w,
            A::zero(),
            &mut gates.slice_mut(first),
        );
        gates
    };
    let mut states = RecurrentStates {
        gates,
        c_all: Array3::zeros((steps + 1, batch, C::CELL_STATE * hidden)),
        h_all: Array3::zeros((steps + 1, batch, hidden)),
        shared,
    };
    let b = b.as_standard_layout();
    let b = b.as_slice().expect("standard layout");
    if shared > 0 {
        let sample0 = ForwardGroup {
            gates: states.gates.slice_mut(s![..shared, ..1, ..]),
            c_all: states.c_all.slice_mut(s![..=shared, ..1, ..]),
            h_all: states.h_all.slice_mut(s![..=shared, ..1, ..]),
            mask: mask.map(|m| m.slice(s![..shared, ..1])),
        };
        forward_group::<C, A>(sample0, u, b);
        for states in [&mut states.c_all, &mut states.h_all] {
            let (first, mut rest) = states
                .slice_mut(s![1..=shared, .., ..])
                .split_at(Axis(1), 1);
            let dim = rest.dim();
            rest.assign(&first.broadcast(dim).expect("one sample"));
        }
    }
    let group = ForwardGroup {
        gates: states.gates.slice_mut(s![shared.., .., ..]),
        c_all: states.c_all.slice_mut(s![shared.., .., ..]),
        h_all: states.h_all.slice_mut(s![shared.., .., ..]),
        mask: mask.map(|m| m.slice(s![shared.., ..])),
    };
    on_batch_halves(batch, group, ForwardGroup::split, |g| {
        forward_group::<C, A>(g, u, b)
    });
    states
}

/// The recurrence of [`recurrent_forward_cpu`] over one group of samples,
/// compiled for AVX2 and FMA where the CPU has them ([`has_avx2`]).
fn forward_group<C: CpuCell, A: NdFloat>(group: ForwardGroup<A>, u: &ArrayView2<A>, b: &[A]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        #[target_feature(enable = "avx2,fma")]
        fn avx2<C: CpuCell, A: NdFloat>(group: ForwardGroup<A>, u: &ArrayView2<A>, b: &[A]) {
            forward_steps::<C, A>(group, u, b)
        }
        // SAFETY: the CPU has the features `avx2` is compiled for.
        return unsafe { avx2::<C, A>(group, u, b) };
    }
    forward_steps::<C, A>(group, u, b)
}

/// Whether the CPU runs AVX2 and FMA: the recurrence loops then run a clone
/// compiled for them (8 floats per vector instead of SSE2's 4 in the cell
/// math). The same IEEE operations in the same order either way (Rust
/// fuses no multiply-add into an FMA), so results are bit-identical.
#[cfg(target_arch = "x86_64")]
fn has_avx2() -> bool {
    std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
}

#[inline(always)]
fn forward_steps<C: CpuCell, A: NdFloat>(group: ForwardGroup<A>, u: &ArrayView2<A>, b: &[A]) {
    let ForwardGroup {
        mut gates,
        mut c_all,
        mut h_all,
        mask,
    } = group;
    let (steps, batch, _) = gates.dim();
    for t in 0..steps {
        let mut z_t = gates.index_axis_mut(Axis(0), t);
        let (h_prev, mut h) = h_all.multi_slice_mut((s![t, .., ..], s![t + 1, .., ..]));
        let (c_prev, mut c) = c_all.multi_slice_mut((s![t, .., ..], s![t + 1, .., ..]));
        // A step masked for every sample of the group (pre-padding: the
        // first steps of a batch of short texts) only carries the state
        // through: no product, no cell (its gates are never read).
        if !step_has_real(mask.as_ref(), t) {
            h.assign(&h_prev);
            c.assign(&c_prev);
            continue;
        }
        // z_t = x_t·W + h_{t-1}·U, in place.
        add_products(&h_prev, u, &mut z_t);
        for n in 0..batch {
            let real = mask.as_ref().is_none_or(|m| m[[t, n]]);
            C::forward_row(
                row_mut(&mut z_t, n),
                b,
                row(&c_prev, n),
                row(&h_prev, n),
                row_mut(&mut c, n),
                row_mut(&mut h, n),
                real,
            );
        }
    }
}

/// `c += a·b`. A single row (the shared steps of
/// [`recurrent_forward_cpu`], run for sample 0) is a plain loop over the
/// rows of b: matrixmultiply would pack all of b for one row of output.
#[inline(always)]
fn add_products<A: NdFloat>(a: &ArrayRef2<A>, b: &ArrayRef2<A>, c: &mut ArrayRef2<A>) {
    if a.nrows() != 1 {
        return general_mat_mul(A::one(), a, b, A::one(), c);
    }
    let (a, mut c) = (a.row(0), c.row_mut(0));
    if b.strides()[1] == 1 {
        // Rows of b contiguous (h·U): c += a_k · b_k, row by row.
        for (&a, b) in a.iter().zip(b.rows()) {
            c.zip_mut_with(&b, |c, &b| *c += a * b);
        }
    } else {
        // Columns contiguous (dz·Uᵀ): one dot product per output.
        for (c, b) in c.iter_mut().zip(b.columns()) {
            *c += a.dot(&b);
        }
    }
}

/// [`recurrent_forward_cpu`] spelled step by step with the cell function:
/// the plain reference the fast version is tested against.
pub(crate) fn recurrent_forward_naive_cpu<C: CpuCell, A: NdFloat>(
    x: &ArrayView3<A>,
    w: &ArrayView2<A>,
    u: &ArrayView2<A>,
    b: &ArrayView1<A>,
    mask: Option<&ArrayView2<bool>>,
) -> RecurrentStates<A> {
    let (steps, batch, _) = x.dim();
    let hidden = u.nrows();
    let mut states = RecurrentStates {
        gates: Array3::zeros((steps, batch, C::GATES * hidden)),
        c_all: Array3::zeros((steps + 1, batch, C::CELL_STATE * hidden)),
        h_all: Array3::zeros((steps + 1, batch, hidden)),
        shared: 0,
    };
    for t in 0..steps {
        let h_prev = states.h_all.index_axis(Axis(0), t).to_owned();
        let c_prev = states.c_all.index_axis(Axis(0), t).to_owned();
        let z = x.index_axis(Axis(0), t).dot(w) + h_prev.dot(u);
        let mask_t = mask.map(|m| m.row(t));
        let (gates, c, h) = C::cell_forward(
            &z.view(),
            b,
            &c_prev.view(),
            &h_prev.view(),
            mask_t.as_ref(),
        );
        states.gates.index_axis_mut(Axis(0), t).assign(&gates);
        states.c_all.index_axis_mut(Axis(0), t + 1).assign(&c);
        states.h_all.index_axis_mut(Axis(0), t + 1).assign(&h);
    }
    states
}

/// What the backward recurrence of a group of samples reads and writes:
/// dz `[T,b,G·H]` (written), dh_seq `[T,b,H]`, gates `[T,b,G·H]`, c_all
/// `[T+1,b,C·H]`, mask `[T,b]`.
struct BackwardGroup<'a, A> {
    dz: ArrayViewMut3<'a, A>,
    dh_seq: ArrayView3<'a, A>,
    gates: ArrayView3<'a, A>,
    c_all: ArrayView3<'a, A>,
    mask: Option<ArrayView2<'a, bool>>,
    /// `[1,b,H]` and `[1,b,C·H]`: the gradient of the state after the last
    /// step on entry, of the initial state on return.
    dh: ArrayViewMut3<'a, A>,
    dc: ArrayViewMut3<'a, A>,
}

impl_split_batch!(BackwardGroup {
    dz,
    dh_seq,
    gates,
    c_all,
    mask,
    dh,
    dc
});

/// Accumulates the gradients of the whole sequence into `grads`. `dh_seq`
/// `[T,B,H]` is the incoming gradient of h_1..h_T (for a loss on h_T only,
/// zero except its last slice).
///
/// The reverse recurrence (by halves of a large batch at once, as forward)
/// writes dz of every step, running the cell's [`CpuCell::backward_row`]
/// on contiguous rows and `dh_{t-1} += dz_t·Uᵀ` in place; the weight and
/// input gradients then follow from all `T·B` rows of dz in single
/// products ([`RecurrentCpuGrads`]). [`recurrent_backward_naive_cpu`] is
/// the same computation step by step (its sums over steps run in another
/// order).
///
/// `saved.shared` is the forward's [`RecurrentStates::shared`]: those leading
/// steps run back once, for sample 0, from the sum over the samples of the
/// gradient of the state after them (and of each shared h_t), so their dz
/// is the samples' sum in sample 0's rows; the weight gradients are the
/// same, and dx of a shared step is the whole gradient of its one input
/// row, in sample 0's row (the other samples' rows get nothing): right for
/// an embedding whose shared steps hold one token ([`shared_steps`]), whose
/// table gradient sums the rows of each token.
pub(crate) fn recurrent_backward_cpu<C: CpuCell, A: NdFloat>(
    grads: &mut RecurrentCpuGrads<A>,
    dh_seq: &ArrayView3<A>,
    saved: RecurrentSaved<A>,
    x: &ArrayView3<A>,
    w: &ArrayView2<A>,
    u: &ArrayView2<A>,
    mask: Option<&ArrayView2<bool>>,
) {
    let (steps, batch, _) = x.dim();
    let hidden = u.nrows();
    let shared = saved.shared;
    let mut dz = Array3::zeros((steps, batch, C::GATES * hidden));
    let dh_seq = dh_seq.as_standard_layout();
    let gates = saved.gates.as_standard_layout();
    let c_all = saved.c_all.as_standard_layout();
    let mut dh = Array3::zeros((1, batch, hidden));
    let mut dc = Array3::zeros((1, batch, C::CELL_STATE * hidden));
    let rest = s![shared.., .., ..];
    let group = BackwardGroup {
        dz: dz.slice_mut(rest),
        dh_seq: dh_seq.slice(rest),
        gates: gates.slice(rest),
        c_all: c_all.slice(rest),
        mask: mask.map(|m| m.slice(s![shared.., ..])),
        dh: dh.view_mut(),
        dc: dc.view_mut(),
    };
    on_batch_halves(batch, group, BackwardGroup::split, |g| {
        backward_group::<C, A>(g, u)
    });
    if shared > 0 {
        // The shared steps' state is every sample's: its gradient is the
        // sum over the samples (backward is linear in it), and so is the
        // incoming gradient of each shared h_t.
        let sum = |a: ArrayView3<A>| a.sum_axis(Axis(1)).insert_axis(Axis(1));
        let (mut dh, mut dc) = (sum(dh.view()), sum(dc.view()));
        let dh_seq = sum(dh_seq.slice(s![..shared, .., ..]));
        let sample0 = BackwardGroup {
            dz: dz.slice_mut(s![..shared, ..1, ..]),
            dh_seq: dh_seq.view(),
            gates: gates.slice(s![..shared, ..1, ..]),
            c_all: c_all.slice(s![..=shared, ..1, ..]),
            mask: mask.map(|m| m.slice(s![..shared, ..1])),
            dh: dh.view_mut(),
            dc: dc.view_mut(),
        };
        backward_group::<C, A>(sample0, u);
    }
    let h_prev = saved.h_all.slice(s![..steps, .., ..]);
    grads.add_from_dz(&dz.view(), x, &h_prev, w, shared);
}

/// The reverse recurrence of [`recurrent_backward_cpu`] over one group of
/// samples.
fn backward_group<C: CpuCell, A: NdFloat>(group: BackwardGroup<A>, u: &ArrayView2<A>) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        #[target_feature(enable = "avx2,fma")]
        fn avx2<C: CpuCell, A: NdFloat>(group: BackwardGroup<A>, u: &ArrayView2<A>) {
            backward_steps::<C, A>(group, u)
        }
        // SAFETY: the CPU has the features `avx2` is compiled for.
        return unsafe { avx2::<C, A>(group, u) };
    }
    backward_steps::<C, A>(group, u)
}

#[inline(always)]
fn backward_steps<C: CpuCell, A: NdFloat>(group: BackwardGroup<A>, u: &ArrayView2<A>) {
    let BackwardGroup {
        mut dz,
        dh_seq,
        gates,
        c_all,
        mask,
        mut dh,
        mut dc,
    } = group;
    let (steps, batch, _) = dz.dim();
    let hidden = u.nrows();
    let zero = A::zero();
    // The total gradient of h_t and c_t, carried from step t+1.
    let mut dh = dh.index_axis_mut(Axis(0), 0);
    let mut dc = dc.index_axis_mut(Axis(0), 0);
    let mut scratch = vec![zero; hidden];
    for t in (0..steps).rev() {
        dh += &dh_seq.index_axis(Axis(0), t);
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
            let dh = row_mut(&mut dh, n);
            C::backward_row(
                row_mut(&mut dz_t, n),
                dh,
                row_mut(&mut dc, n),
                row(&gates_t, n),
                row(&c_prev, n),
                row(&c_t, n),
                &mut scratch,
            );
            // A real step passes dh back only through dz·Uᵀ (added below).
            dh.fill(zero);
        }
        // dh_{t-1} = (masked carry) + dz_t·Uᵀ, in place (dz_t is 0 where
        // every sample is masked: nothing to add).
        if step_has_real(mask.as_ref(), t) {
            add_products(&dz_t, &u.t(), &mut dh);
        }
    }
}

/// [`recurrent_backward_cpu`] spelled step by step with the cell function:
/// the plain reference the fast version is tested against.
pub(crate) fn recurrent_backward_naive_cpu<C: CpuCell, A: NdFloat>(
    grads: &mut RecurrentCpuGrads<A>,
    dh_seq: &ArrayView3<A>,
    saved: RecurrentSaved<A>,
    x: &ArrayView3<A>,
    w: &ArrayView2<A>,
    u: &ArrayView2<A>,
    mask: Option<&ArrayView2<bool>>,
) {
    let (steps, batch, _) = x.dim();
    let hidden = u.nrows();
    let mut dh = Array2::<A>::zeros((batch, hidden));
    let mut dc = Array2::<A>::zeros((batch, C::CELL_STATE * hidden));
    for t in (0..steps).rev() {
        dh += &dh_seq.index_axis(Axis(0), t);
        let mask_t = mask.map(|m| m.row(t));
        let (dz, dh_prev, dc_prev) = C::cell_backward(
            &dh.view(),
            &dc.view(),
            &saved.gates.index_axis(Axis(0), t),
            &saved.c_all.index_axis(Axis(0), t),
            &saved.c_all.index_axis(Axis(0), t + 1),
            mask_t.as_ref(),
        );
        grads.dw += &x.index_axis(Axis(0), t).t().dot(&dz);
        grads.du += &saved.h_all.index_axis(Axis(0), t).t().dot(&dz);
        grads.db += &dz.sum_axis(Axis(0));
        let mut dx_t = grads.dx.slice_mut(s![t, .., ..]);
        dx_t += &dz.dot(&w.t());
        dh = dh_prev + dz.dot(&u.t());
        dc = dc_prev;
    }
}

// ---------------------------------------------------------------- sizes and bundles

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
/// may be left out when the input needs no gradient. `dw: None` leaves the
/// input kernel's gradient to the caller, who computes it from `bufs.dz`
/// after the returned dispatches (the graph executor does, per chunk of
/// equal tokens when the input is an embedding; it leaves out dx then too).
#[derive(Clone, Copy, Debug)]
pub struct RecurrentGrads<'a> {
    pub dx: Option<&'a GpuTensor>,
    pub dw: Option<&'a GpuTensor>,
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

// ---------------------------------------------------------------- cells

/// What a recurrent cell adds to the shared plumbing; implemented by the
/// state the cell keeps on the device besides h (`RecurrentBuffers::cell`).
pub trait RecurrentCell: Sized {
    /// Names the cell's composite launches in errors (`lstm`, `rnn`).
    const NAME: &'static str;
    /// Columns of z per unit: 4 gates (LSTM) or 1 (RNN).
    const GATES: usize;
    /// The per-step kernels, forward and backward.
    const CELL_FORWARD: &'static KernelSpec;
    const CELL_BACKWARD: &'static KernelSpec;
    /// The persistent kernels' pair forms, which name them in errors.
    const SEQUENCE_FORWARD: &'static KernelSpec;
    const SEQUENCE_BACKWARD: &'static KernelSpec;

    /// Allocates the state (zeroed, as the initial state must be).
    fn new(ctx: &GpuContext, dims: RecurrentDims) -> Result<Self>;
    /// What the forward kernels write besides h, bound between the mask
    /// and h_all.
    fn forward_state(&self) -> Vec<&GpuTensor>;
    /// Backward carries into step t-1 besides dh's, bound after dh_carry.
    fn carries(&self) -> Vec<&GpuTensor>;
    /// What the backward kernels read of forward's saved state, bound after
    /// the incoming gradients; the first one (read-only there) fills the
    /// bindings of absent inputs.
    fn saved(bufs: &RecurrentBuffers<Self>) -> Vec<&GpuTensor>;
    /// The persistent kernel that runs `dims` on this device.
    fn sequence_kernel(ctx: &GpuContext, dims: RecurrentDims, backward: bool) -> PersistentKernel;
}

/// A persistent kernel chosen for a shape: the entry point, its override
/// constants and the workgroup count.
#[derive(Clone, Debug)]
pub struct PersistentKernel {
    pub spec: &'static KernelSpec,
    pub constants: Vec<(&'static str, f64)>,
    pub groups: u32,
    /// Whether it runs shared leading steps (`RecurrentParams::shared_runs`;
    /// the blocked LSTM kernels); its backward then binds a carry last.
    pub shares_steps: bool,
}

/// The device buffers of one recurrent layer, allocated once; the
/// dispatches built over them are recorded again every training step.
#[derive(Debug)]
pub struct RecurrentBuffers<C> {
    pub dims: RecurrentDims,
    /// Pre-activations `[T,B,G]`: `X·W`, then `+ h_{t-1}·U` per step.
    pub z: GpuTensor,
    /// `[T+1,B,H]`, slot 0 the zero initial state; saved for backward.
    pub h_all: GpuTensor,
    /// h_T `[B,H]`, written by the last step's cell kernel.
    pub h_last: GpuTensor,
    /// Backward scratch: dz `[T,B,G]` and the dh carry into step t-1 `[B,H]`.
    pub dz: GpuTensor,
    pub dh_carry: GpuTensor,
    /// What the cell keeps besides h (the LSTM's gates, c_all, dc carry).
    pub cell: C,
}

impl<C: RecurrentCell> RecurrentBuffers<C> {
    pub fn new(ctx: &GpuContext, dims: RecurrentDims) -> Result<Self> {
        dims.check(C::NAME)?;
        let RecurrentDims {
            steps: t,
            batch: b,
            hidden: h,
            ..
        } = dims;
        let (g, f32) = (C::GATES * h, DType::F32);
        Ok(Self {
            dims,
            z: ctx.zeros(&[t, b, g], f32)?,
            h_all: ctx.zeros(&[t + 1, b, h], f32)?,
            h_last: ctx.zeros(&[b, h], f32)?,
            dz: ctx.zeros(&[t, b, g], f32)?,
            dh_carry: ctx.zeros(&[b, h], f32)?,
            cell: C::new(ctx, dims)?,
        })
    }
}

impl<C> RecurrentBuffers<C> {
    /// The same shared buffers with `cell`'s state: callers that bind
    /// buffers they allocated themselves fill the shared part once.
    pub fn with_cell<D>(self, cell: D) -> RecurrentBuffers<D> {
        let Self {
            dims,
            z,
            h_all,
            h_last,
            dz,
            dh_carry,
            ..
        } = self;
        RecurrentBuffers {
            dims,
            z,
            h_all,
            h_last,
            dz,
            dh_carry,
            cell,
        }
    }
}

// ---------------------------------------------------------------- checks

/// The mask's kind for the shaders (0 none, 1 u32, 2 f32), after checking
/// that it holds `steps * batch` values.
fn mask_kind(op: &str, mask: Option<&GpuTensor>, dims: RecurrentDims) -> Result<u32> {
    let Some(m) = mask else { return Ok(0) };
    expect_numel(op, "mask", &m.shape, dims.steps * dims.batch)?;
    Ok(match m.dtype {
        DType::U32 => 1,
        DType::F32 => 2,
    })
}

fn check_step(op: &str, step: usize, dims: RecurrentDims) -> Result<()> {
    if step >= dims.steps {
        return Err(Error::shape(
            op,
            format!("step {step} is outside a sequence of {} steps", dims.steps),
        ));
    }
    Ok(())
}

/// Checks the incoming gradients that are given.
fn check_hidden_grad(op: &str, dh: HiddenGrad, dims: RecurrentDims) -> Result<()> {
    let (b, h) = (dims.batch, dims.hidden);
    if let Some(seq) = dh.seq {
        expect_numel(op, "dh_seq", &seq.shape, dims.steps * b * h)?;
    }
    if let Some(last) = dh.last {
        expect_numel(op, "dh_last", &last.shape, b * h)?;
    }
    Ok(())
}

/// Checks x, W, U, b for a recurrent layer whose z is `gates` wide.
fn check_weights(
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

/// The checks of a whole backward pass: the weights, and an incoming
/// gradient to start from.
fn check_backward(
    op: &str,
    x: &GpuTensor,
    weights: &RecurrentWeights,
    dims: RecurrentDims,
    gates: usize,
    dh: HiddenGrad,
) -> Result<()> {
    check_weights(op, x, weights, dims, gates)?;
    if dh.seq.is_none() && dh.last.is_none() {
        return Err(Error::shape(op, "no incoming gradient (seq or last)"));
    }
    Ok(())
}

// ---------------------------------------------------------------- kernels

const WORKGROUP: u32 = 64;

/// The cell kernel of step `step`: reads `z_t` (projection and recurrent
/// part summed), adds `bias` `[G]`, writes h_t (slot t+1 of h_all; slot t
/// carried on masked steps), the cell's state of step t, and h_last on
/// the final step (`lstm_gates_forward`, `rnn_cell_forward`).
pub fn recurrent_cell_forward<C: RecurrentCell>(
    ctx: &GpuContext,
    bufs: &RecurrentBuffers<C>,
    bias: &GpuTensor,
    mask: Option<&GpuTensor>,
    step: usize,
) -> Result<Dispatch> {
    let op = C::CELL_FORWARD.entry;
    let dims = bufs.dims;
    check_step(op, step, dims)?;
    expect_numel(op, "bias", &bias.shape, C::GATES * dims.hidden)?;
    let kind = mask_kind(op, mask, dims)?;
    // Without a mask the binding is never read; any read-only buffer fills it.
    let mut bind = vec![&bufs.z, bias, mask.unwrap_or(bias)];
    bind.extend(bufs.cell.forward_state());
    bind.extend([&bufs.h_all, &bufs.h_last]);
    ctx.prepare(
        C::CELL_FORWARD,
        &[],
        &RecurrentParams::new(dims, step, kind),
        &bind,
        Grid::linear(dims.batch * dims.hidden, WORKGROUP),
    )
}

/// The cell backward kernel of step `step`: from the incoming `dh` (plus
/// the carries from step t+1, except on the last step) writes dz_t into
/// `bufs.dz` and the carries into step t-1 (`bufs.dh_carry` gets only the
/// masked carry; `dz_t·Uᵀ` is added after) (`lstm_gates_backward`,
/// `rnn_cell_backward`).
pub fn recurrent_cell_backward<C: RecurrentCell>(
    ctx: &GpuContext,
    bufs: &RecurrentBuffers<C>,
    dh: HiddenGrad,
    mask: Option<&GpuTensor>,
    step: usize,
) -> Result<Dispatch> {
    let op = C::CELL_BACKWARD.entry;
    let dims = bufs.dims;
    check_step(op, step, dims)?;
    check_hidden_grad(op, dh, dims)?;
    let kind = mask_kind(op, mask, dims)?;
    let saved = C::saved(bufs);
    // Absent inputs are never read; a read-only saved buffer fills them.
    let stand_in = saved[0];
    let mut bind = vec![&bufs.dz, &bufs.dh_carry];
    bind.extend(bufs.cell.carries());
    bind.extend([dh.seq.unwrap_or(stand_in), dh.last.unwrap_or(stand_in)]);
    bind.extend(saved);
    bind.push(mask.unwrap_or(stand_in));
    ctx.prepare(
        C::CELL_BACKWARD,
        &[],
        &RecurrentParams::new(dims, step, kind).incoming(dh),
        &bind,
        Grid::linear(dims.batch * dims.hidden, WORKGROUP),
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
fn persistent_support_for(ctx: &GpuContext, op: &str, dims: RecurrentDims) -> Result<()> {
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

/// Whether [`recurrent_sequence_forward`] and [`recurrent_sequence_backward`]
/// handle `dims` for cell `C` on this device: H ≤ [`PERSISTENT_MAX_HIDDEN`],
/// and ceil(B/16) workgroups (the pair form's) within the adapter's limit.
pub fn recurrent_persistent_support<C: RecurrentCell>(
    ctx: &GpuContext,
    dims: RecurrentDims,
) -> Result<()> {
    persistent_support_for(ctx, &format!("{}_persistent", C::NAME), dims)
}

/// Workgroups of a pair-form persistent kernel: `PERSISTENT_LANES` lanes of
/// two samples each.
pub(crate) fn persistent_groups(dims: RecurrentDims) -> u32 {
    dims.batch.div_ceil(2).div_ceil(PERSISTENT_LANES) as u32
}

/// Whether the persistent kernels of cell `C` for `dims` on this device
/// run shared leading steps ([`recurrent_sequence_forward_shared`]): the
/// blocked LSTM kernels do.
pub fn recurrent_shares_steps<C: RecurrentCell>(ctx: &GpuContext, dims: RecurrentDims) -> bool {
    recurrent_persistent_support::<C>(ctx, dims).is_ok()
        && C::sequence_kernel(ctx, dims, false).shares_steps
}

/// The forward recurrence as two runs of the persistent kernel (see
/// "shared steps" in `shaders/lstm.wgsl`): the first `shared` steps for
/// sample 0 (one workgroup; nothing when `shared` is 0), then the rest for
/// every sample. `shared` (below T) must be steps whose z rows are the same
/// in every sample; a caller may set it per batch ([`set_shared_steps`]).
pub fn recurrent_sequence_forward_shared<C: RecurrentCell>(
    ctx: &GpuContext,
    bufs: &RecurrentBuffers<C>,
    weights: &RecurrentWeights,
    mask: Option<&GpuTensor>,
    shared: usize,
) -> Result<[Dispatch; 2]> {
    let op = C::SEQUENCE_FORWARD.entry;
    let (k, bind, params) = sequence_forward_parts(ctx, bufs, weights, mask)?;
    shared_runs(ctx, op, &k, &bind, params, bufs.dims, shared)
}

/// Prepares the two runs of [`StepRange::shared_runs`].
fn shared_runs(
    ctx: &GpuContext,
    op: &str,
    k: &PersistentKernel,
    bind: &[&GpuTensor],
    params: RecurrentParams,
    dims: RecurrentDims,
    shared: usize,
) -> Result<[Dispatch; 2]> {
    if !k.shares_steps {
        return Err(Error::Unsupported {
            op: op.to_string(),
            what: format!("shared steps for {dims:?}"),
            why: "only the blocked LSTM kernels run them (H a multiple of 4, at most 64)".into(),
        });
    }
    let [first, rest] = StepRange::shared_runs(op, dims, shared)?.map(|r| r.into_params(params));
    // The run of the shared steps computes one sample per workgroup.
    let mut one = k.constants.clone();
    one.push(("SAMPLES", 1.0));
    Ok([
        ctx.prepare(k.spec, &one, &first, bind, Grid::Workgroups([1, 1, 1]))?,
        ctx.prepare(
            k.spec,
            &k.constants,
            &rest,
            bind,
            Grid::Workgroups([k.groups, 1, 1]),
        )?,
    ])
}

/// The kernel, bindings and params of a forward persistent dispatch.
fn sequence_forward_parts<'a, C: RecurrentCell>(
    ctx: &GpuContext,
    bufs: &'a RecurrentBuffers<C>,
    weights: &RecurrentWeights<'a>,
    mask: Option<&'a GpuTensor>,
) -> Result<(PersistentKernel, Vec<&'a GpuTensor>, RecurrentParams)> {
    let op = C::SEQUENCE_FORWARD.entry;
    let dims = bufs.dims;
    persistent_support_for(ctx, op, dims)?;
    let (h, g) = (dims.hidden, C::GATES * dims.hidden);
    expect_numel(op, "U", &weights.u.shape, h * g)?;
    expect_numel(op, "bias", &weights.b.shape, g)?;
    let kind = mask_kind(op, mask, dims)?;
    let k = C::sequence_kernel(ctx, dims, false);
    // Without a mask the binding is never read.
    let mut bind = vec![&bufs.z, weights.b, weights.u, mask.unwrap_or(weights.b)];
    bind.extend(bufs.cell.forward_state());
    bind.extend([&bufs.h_all, &bufs.h_last]);
    Ok((k, bind, RecurrentParams::new(dims, 0, kind)))
}

/// The kernel, bindings and params of a backward persistent dispatch;
/// `carry` `[2,B,H]` for a kernel that shares steps (its stand-in: the dh
/// carry, never written when no step is shared).
fn sequence_backward_parts<'a, C: RecurrentCell>(
    ctx: &GpuContext,
    bufs: &'a RecurrentBuffers<C>,
    dh: HiddenGrad<'a>,
    u: &'a GpuTensor,
    mask: Option<&'a GpuTensor>,
    carry: Option<&'a GpuTensor>,
) -> Result<(PersistentKernel, Vec<&'a GpuTensor>, RecurrentParams)> {
    let op = C::SEQUENCE_BACKWARD.entry;
    let dims = bufs.dims;
    persistent_support_for(ctx, op, dims)?;
    let h = dims.hidden;
    expect_numel(op, "U", &u.shape, h * C::GATES * h)?;
    check_hidden_grad(op, dh, dims)?;
    let kind = mask_kind(op, mask, dims)?;
    let k = C::sequence_kernel(ctx, dims, true);
    let saved = C::saved(bufs);
    // Absent inputs are never read; a read-only saved buffer fills them.
    let stand_in = saved[0];
    let mut bind = vec![
        &bufs.dz,
        dh.seq.unwrap_or(stand_in),
        dh.last.unwrap_or(stand_in),
    ];
    bind.extend(saved);
    bind.extend([u, mask.unwrap_or(stand_in)]);
    if k.shares_steps {
        bind.push(carry.unwrap_or(&bufs.dh_carry));
    }
    Ok((k, bind, RecurrentParams::new(dims, 0, kind).incoming(dh)))
}

/// The whole forward recurrence in one dispatch (in the form
/// [`RecurrentCell::sequence_kernel`] picks): from `bufs.z` holding `X·W`
/// (left as it is), writes h_all (slots 1..=T; slot 0 is the initial
/// state, read here), the cell's state and h_last as the per-step
/// [`recurrent_cell_forward`] sequence does (`lstm_sequence_forward`,
/// `rnn_sequence_forward`).
pub fn recurrent_sequence_forward<C: RecurrentCell>(
    ctx: &GpuContext,
    bufs: &RecurrentBuffers<C>,
    weights: &RecurrentWeights,
    mask: Option<&GpuTensor>,
) -> Result<Dispatch> {
    let (k, bind, params) = sequence_forward_parts(ctx, bufs, weights, mask)?;
    ctx.prepare(
        k.spec,
        &k.constants,
        &params,
        &bind,
        Grid::Workgroups([k.groups, 1, 1]),
    )
}

/// Elements of the carry of [`recurrent_sequence_backward_shared`] for a
/// cell of `gates` gates per unit: the gradient of h and c after the shared
/// steps `[2,B,H]`, then sample 0's h_{t-1} `[T,H]` and dz_t `[T,G·H]` of
/// each shared step t (compact rows for dU, see
/// [`recurrent_backward_shared`]).
pub fn shared_carry_len(dims: RecurrentDims, gates: usize) -> usize {
    let RecurrentDims {
        steps: t,
        batch: b,
        hidden: h,
        ..
    } = dims;
    2 * b * h + t * h + t * gates * h
}

/// dU after shared steps, in two products (see
/// [`recurrent_backward_shared`]): over the rows of the steps after them
/// (all rows with a mask), and over the compact rows of the shared steps in
/// the carry (none with a mask: a masked step carries h, which the compact
/// rows do not).
fn shared_du_params(
    dims: RecurrentDims,
    gates: usize,
    shared: usize,
    masked: bool,
) -> [MatmulParams; 2] {
    let RecurrentDims {
        steps: t,
        batch: b,
        hidden: h,
        ..
    } = dims;
    let g = gates * h;
    let (rest, compact) = if masked { (0, 0) } else { (shared, shared) };
    [
        MatmulParams::new(h, g, (t - rest) * b)
            .accumulate()
            .offsets(rest * b * h, rest * b * g, 0),
        MatmulParams::new(h, g, compact)
            .accumulate()
            .offsets(2 * b * h, 2 * b * h + t * h, 0),
    ]
}

/// Sets `shared` steps in the backward [`recurrent_backward_shared`]
/// prepared, given its dispatches `d` (the two runs and the two dU
/// products first), as the graph executor does per batch.
pub fn set_shared_backward(
    ctx: &GpuContext,
    dims: RecurrentDims,
    d: &[Dispatch],
    shared: usize,
    masked: bool,
) -> Result<()> {
    let [main, first, du_rest, du_compact, ..] = d else {
        return Err(Error::shape(
            "set_shared_backward",
            format!(
                "{} dispatches: the two runs and two dU products come first",
                d.len()
            ),
        ));
    };
    set_shared_steps(ctx, dims, [first, main], shared)?;
    // The LSTM's four gates: the only cell with shared steps.
    let [rest, compact] = shared_du_params(dims, 4, shared, masked);
    du_rest.set_params(ctx, &rest);
    du_compact.set_params(ctx, &compact);
    Ok(())
}

/// The whole backward recurrence in one dispatch (last step to first):
/// writes dz of every step into `bufs.dz` from the incoming `dh` and the
/// state forward saved. The weight gradients follow as matmuls over dz
/// (`lstm_sequence_backward`, `rnn_sequence_backward`).
pub fn recurrent_sequence_backward<C: RecurrentCell>(
    ctx: &GpuContext,
    bufs: &RecurrentBuffers<C>,
    dh: HiddenGrad,
    u: &GpuTensor,
    mask: Option<&GpuTensor>,
) -> Result<Dispatch> {
    let (k, bind, params) = sequence_backward_parts(ctx, bufs, dh, u, mask, None)?;
    ctx.prepare(
        k.spec,
        &k.constants,
        &params,
        &bind,
        Grid::Workgroups([k.groups, 1, 1]),
    )
}

/// The backward recurrence after [`recurrent_sequence_forward_shared`]:
/// the steps after the shared ones for every sample (leaving the gradient
/// of the state they start from in `carry`, see [`shared_carry_len`]), then the shared
/// steps for sample 0 from its sum over the samples, their dz the samples'
/// sum in sample 0's row (0 in the others): the weight gradients over all
/// rows of dz are the same, and dx of a shared step is the whole gradient
/// of its one input row, in sample 0's. Returns the two runs in that order
/// ([`set_shared_steps`] sets another count per batch).
pub fn recurrent_sequence_backward_shared<C: RecurrentCell>(
    ctx: &GpuContext,
    bufs: &RecurrentBuffers<C>,
    dh: HiddenGrad,
    u: &GpuTensor,
    mask: Option<&GpuTensor>,
    carry: &GpuTensor,
    shared: usize,
) -> Result<[Dispatch; 2]> {
    let op = C::SEQUENCE_BACKWARD.entry;
    let len = shared_carry_len(bufs.dims, C::GATES);
    expect_numel(op, "carry", &carry.shape, len)?;
    let (k, bind, params) = sequence_backward_parts(ctx, bufs, dh, u, mask, Some(carry))?;
    let [first, rest] = shared_runs(ctx, op, &k, &bind, params, bufs.dims, shared)?;
    Ok([rest, first])
}

// ---------------------------------------------------------------- matmuls

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
fn recurrent_projection(
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
fn recurrent_backward(
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
/// step at once (K = T*B rows): `dU += H_{0..T-1}ᵀ·dZ`, `db += Σ dZ`, then
/// [`input_gradients`]. dz is `[T,B,gates]` with gates = b's length;
/// `bias_backward` sums every row of it, i.e. exactly the T*B rows.
fn weight_gradients(
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
    expect_numel(op, "dU", &grads.du.shape, dims.hidden * gates)?;
    let mut d = vec![matmul(
        ctx,
        Layout::AtB,
        grads.du,
        h_all,
        dz,
        MatmulParams::new(dims.hidden, gates, rows).accumulate(),
    )?];
    d.extend(bias_and_input_gradients(ctx, grads, dz, x, w, dims)?);
    Ok(d)
}

/// What follows dU in [`weight_gradients`]: `db += Σ dZ` over every row,
/// then [`input_gradients`].
fn bias_and_input_gradients(
    ctx: &GpuContext,
    grads: &RecurrentGrads,
    dz: &GpuTensor,
    x: &GpuTensor,
    w: &GpuTensor,
    dims: RecurrentDims,
) -> Result<Vec<Dispatch>> {
    let mut d = bias_backward(ctx, grads.db, dz)?;
    d.extend(input_gradients(ctx, grads.dw, grads.dx, dz, x, w, dims)?);
    Ok(d)
}

/// `dW += Xᵀ·dZ` and `dx += dZ·Wᵀ` over all `T*B` rows of dz, each when
/// given (the graph executor's per-position path for an embedding input
/// records them too).
pub(crate) fn input_gradients(
    ctx: &GpuContext,
    dw: Option<&GpuTensor>,
    dx: Option<&GpuTensor>,
    dz: &GpuTensor,
    x: &GpuTensor,
    w: &GpuTensor,
    dims: RecurrentDims,
) -> Result<Vec<Dispatch>> {
    let op = "recurrent_input_gradients";
    let rows = dims.steps * dims.batch;
    let gates = dz.numel() / rows.max(1);
    let mut d = Vec::with_capacity(2);
    if let Some(dw) = dw {
        expect_numel(op, "dW", &dw.shape, dims.input * gates)?;
        d.push(matmul(
            ctx,
            Layout::AtB,
            dw,
            x,
            dz,
            MatmulParams::new(dims.input, gates, rows).accumulate(),
        )?);
    }
    if let Some(dx) = dx {
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

// ---------------------------------------------------------------- drivers

/// The whole forward pass over x `[T,B,D]`: fills `bufs.h_all`, `h_last`
/// and the cell's state (and `bufs.z`, see below) in the fewest dispatches
/// the device allows: [`recurrent_forward_persistent`] (2 dispatches) when
/// [`recurrent_persistent_support`] says it fits, else
/// [`recurrent_forward_stepwise`] (2T). Record the returned dispatches in
/// order, in one `ctx.run`. Slot 0 of h_all (and the LSTM's c_all) must
/// hold the zero initial state (as [`RecurrentBuffers::new`] leaves it;
/// nothing writes it).
pub fn recurrent_forward_sequence<C: RecurrentCell>(
    ctx: &GpuContext,
    bufs: &RecurrentBuffers<C>,
    x: &GpuTensor,
    weights: &RecurrentWeights,
    mask: Option<&GpuTensor>,
) -> Result<Vec<Dispatch>> {
    if recurrent_persistent_support::<C>(ctx, bufs.dims).is_ok() {
        recurrent_forward_persistent(ctx, bufs, x, weights, mask)
    } else {
        recurrent_forward_stepwise(ctx, bufs, x, weights, mask)
    }
}

/// The forward pass in two dispatches: `Z = X·W` (bufs.z keeps it), then
/// [`recurrent_sequence_forward`].
pub fn recurrent_forward_persistent<C: RecurrentCell>(
    ctx: &GpuContext,
    bufs: &RecurrentBuffers<C>,
    x: &GpuTensor,
    weights: &RecurrentWeights,
    mask: Option<&GpuTensor>,
) -> Result<Vec<Dispatch>> {
    let op = format!("{}_forward_persistent", C::NAME);
    let dims = bufs.dims;
    let gates = C::GATES * dims.hidden;
    check_weights(&op, x, weights, dims, gates)?;
    Ok(vec![
        input_projection(ctx, &bufs.z, x, weights.w, dims, gates)?,
        recurrent_sequence_forward(ctx, bufs, weights, mask)?,
    ])
}

/// The forward pass with `shared` leading steps run once
/// ([`recurrent_sequence_forward_shared`]): `Z = X·W`, then the two runs
/// (3 dispatches; the last two are the runs for [`set_shared_steps`]).
pub fn recurrent_forward_shared<C: RecurrentCell>(
    ctx: &GpuContext,
    bufs: &RecurrentBuffers<C>,
    x: &GpuTensor,
    weights: &RecurrentWeights,
    mask: Option<&GpuTensor>,
    shared: usize,
) -> Result<Vec<Dispatch>> {
    let op = format!("{}_forward_shared", C::NAME);
    let dims = bufs.dims;
    let gates = C::GATES * dims.hidden;
    check_weights(&op, x, weights, dims, gates)?;
    let runs = recurrent_sequence_forward_shared(ctx, bufs, weights, mask, shared)?;
    let mut d = vec![input_projection(ctx, &bufs.z, x, weights.w, dims, gates)?];
    d.extend(runs);
    Ok(d)
}

/// The backward pass after [`recurrent_forward_shared`] (or
/// [`recurrent_sequence_forward_shared`]) with the same `shared` steps: the
/// two runs of [`recurrent_sequence_backward_shared`] (`carry` of
/// [`shared_carry_len`]), then the weight gradients as
/// [`recurrent_backward_persistent`], but dU in two products: over the rows
/// of the steps after the shared ones, and over the compact rows of the
/// shared steps (sample 0's h_{t-1} and dz_t, which the run of the shared
/// steps leaves in the carry) instead of all T·B rows (with a mask, over
/// all rows: a masked step carries h). db, dW and dx sum every row of dz
/// (those of a shared step are 0 but sample 0's). dx of a shared step is
/// the whole gradient of its one input row, in sample 0's row.
/// [`set_shared_backward`] sets another count per batch.
#[allow(clippy::too_many_arguments)]
pub fn recurrent_backward_shared<C: RecurrentCell>(
    ctx: &GpuContext,
    grads: &RecurrentGrads,
    dh: HiddenGrad,
    bufs: &RecurrentBuffers<C>,
    x: &GpuTensor,
    weights: &RecurrentWeights,
    mask: Option<&GpuTensor>,
    carry: &GpuTensor,
    shared: usize,
) -> Result<Vec<Dispatch>> {
    let op = format!("{}_backward_shared", C::NAME);
    let dims = bufs.dims;
    let gates = C::GATES * dims.hidden;
    check_backward(&op, x, weights, dims, gates, dh)?;
    expect_numel(&op, "dU", &grads.du.shape, dims.hidden * gates)?;
    let runs = recurrent_sequence_backward_shared(ctx, bufs, dh, weights.u, mask, carry, shared)?;
    let mut d = Vec::from(runs);
    let [rest, compact] = shared_du_params(dims, C::GATES, shared, mask.is_some());
    d.push(matmul(
        ctx,
        Layout::AtB,
        grads.du,
        &bufs.h_all,
        &bufs.dz,
        rest,
    )?);
    d.push(matmul(ctx, Layout::AtB, grads.du, carry, carry, compact)?);
    d.extend(bias_and_input_gradients(
        ctx, grads, &bufs.dz, x, weights.w, dims,
    )?);
    Ok(d)
}

/// The forward pass after the input projection, for a caller that has
/// written `Z = X·W` into `bufs.z` itself (the graph executor does, per
/// chunk of equal tokens, for an embedding input): the persistent
/// recurrence (1 dispatch) where [`recurrent_persistent_support`] allows,
/// else per step `z_t += h_{t-1}·U` and the cell (2T - 1).
pub fn recurrent_forward_recurrence<C: RecurrentCell>(
    ctx: &GpuContext,
    bufs: &RecurrentBuffers<C>,
    weights: &RecurrentWeights,
    mask: Option<&GpuTensor>,
) -> Result<Vec<Dispatch>> {
    let dims = bufs.dims;
    let gates = C::GATES * dims.hidden;
    let op = format!("{}_forward_recurrence", C::NAME);
    expect_numel(&op, "U", &weights.u.shape, dims.hidden * gates)?;
    expect_numel(&op, "b", &weights.b.shape, gates)?;
    if recurrent_persistent_support::<C>(ctx, dims).is_ok() {
        Ok(vec![recurrent_sequence_forward(ctx, bufs, weights, mask)?])
    } else {
        stepwise_recurrence(ctx, bufs, weights, mask)
    }
}

/// Per step `z_t += h_{t-1}·U` (from the second step) and the cell.
fn stepwise_recurrence<C: RecurrentCell>(
    ctx: &GpuContext,
    bufs: &RecurrentBuffers<C>,
    weights: &RecurrentWeights,
    mask: Option<&GpuTensor>,
) -> Result<Vec<Dispatch>> {
    let dims = bufs.dims;
    let gates = C::GATES * dims.hidden;
    let mut d = Vec::with_capacity(2 * dims.steps);
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
        d.push(recurrent_cell_forward(ctx, bufs, weights.b, mask, t)?);
    }
    Ok(d)
}

/// The forward pass one step at a time (any H; the readable reference):
/// `Z = X·W`, then per step `z_t += h_{t-1}·U` and
/// [`recurrent_cell_forward`]. bufs.z ends up holding the full
/// pre-activations.
pub fn recurrent_forward_stepwise<C: RecurrentCell>(
    ctx: &GpuContext,
    bufs: &RecurrentBuffers<C>,
    x: &GpuTensor,
    weights: &RecurrentWeights,
    mask: Option<&GpuTensor>,
) -> Result<Vec<Dispatch>> {
    let op = format!("{}_forward_stepwise", C::NAME);
    let dims = bufs.dims;
    let gates = C::GATES * dims.hidden;
    check_weights(&op, x, weights, dims, gates)?;
    let mut d = vec![input_projection(ctx, &bufs.z, x, weights.w, dims, gates)?];
    d.extend(stepwise_recurrence(ctx, bufs, weights, mask)?);
    Ok(d)
}

/// The whole backward pass: accumulates dx (if given), dW, dU and db from
/// the incoming gradient of the hidden states and what forward left in
/// `bufs` (either forward path), in the fewest dispatches the device
/// allows: [`recurrent_backward_persistent`] when
/// [`recurrent_persistent_support`] says it fits, else
/// [`recurrent_backward_stepwise`]. Record the returned dispatches in
/// order, in one `ctx.run`, after the forward ones.
pub fn recurrent_backward_sequence<C: RecurrentCell>(
    ctx: &GpuContext,
    grads: &RecurrentGrads,
    dh: HiddenGrad,
    bufs: &RecurrentBuffers<C>,
    x: &GpuTensor,
    weights: &RecurrentWeights,
    mask: Option<&GpuTensor>,
) -> Result<Vec<Dispatch>> {
    if recurrent_persistent_support::<C>(ctx, bufs.dims).is_ok() {
        recurrent_backward_persistent(ctx, grads, dh, bufs, x, weights, mask)
    } else {
        recurrent_backward_stepwise(ctx, grads, dh, bufs, x, weights, mask)
    }
}

/// The backward pass with the recurrence in one dispatch:
/// [`recurrent_sequence_backward`] (dz of every step), then the weight
/// gradients as matmuls over all `T*B` rows (4 or 5 dispatches).
pub fn recurrent_backward_persistent<C: RecurrentCell>(
    ctx: &GpuContext,
    grads: &RecurrentGrads,
    dh: HiddenGrad,
    bufs: &RecurrentBuffers<C>,
    x: &GpuTensor,
    weights: &RecurrentWeights,
    mask: Option<&GpuTensor>,
) -> Result<Vec<Dispatch>> {
    let op = format!("{}_backward_persistent", C::NAME);
    let dims = bufs.dims;
    check_backward(&op, x, weights, dims, C::GATES * dims.hidden, dh)?;
    let mut d = vec![recurrent_sequence_backward(ctx, bufs, dh, weights.u, mask)?];
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
/// per step, last to first, [`recurrent_cell_backward`] then
/// `dh_{t-1} += dz_t·Uᵀ`; then the weight gradients.
pub fn recurrent_backward_stepwise<C: RecurrentCell>(
    ctx: &GpuContext,
    grads: &RecurrentGrads,
    dh: HiddenGrad,
    bufs: &RecurrentBuffers<C>,
    x: &GpuTensor,
    weights: &RecurrentWeights,
    mask: Option<&GpuTensor>,
) -> Result<Vec<Dispatch>> {
    let op = format!("{}_backward_stepwise", C::NAME);
    let dims = bufs.dims;
    let gates = C::GATES * dims.hidden;
    check_backward(&op, x, weights, dims, gates, dh)?;
    let mut d = Vec::with_capacity(2 * dims.steps + 4);
    for t in (0..dims.steps).rev() {
        d.push(recurrent_cell_backward(ctx, bufs, dh, mask, t)?);
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
