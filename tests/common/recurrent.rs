//! Helpers shared by the recurrent kernel tests (tests/lstm.rs,
//! tests/rnn.rs): seeded arrays, uploads, f64 views, and the mask patterns
//! (pre-padding, a gap, post-padding, an all-padding sample) in u32, f32 or
//! no mask.

use crossmodal::{GpuContext, GpuTensor};
use ndarray::{Array1, Array2, Array3, Ix1, Ix2, Ix3};

use super::*;

pub fn arr3(shape: [usize; 3], seed: u64, scale: f32) -> Array3<f32> {
    (random(&shape, seed) * scale)
        .into_dimensionality::<Ix3>()
        .unwrap()
}
pub fn arr2(shape: [usize; 2], seed: u64, scale: f32) -> Array2<f32> {
    (random(&shape, seed) * scale)
        .into_dimensionality::<Ix2>()
        .unwrap()
}
pub fn arr1(n: usize, seed: u64, scale: f32) -> Array1<f32> {
    (random(&[n], seed) * scale)
        .into_dimensionality::<Ix1>()
        .unwrap()
}

pub fn up<D: ndarray::Dimension>(ctx: &GpuContext, a: &ndarray::Array<f32, D>) -> GpuTensor {
    let a = a.as_standard_layout();
    ctx.upload_f32(a.as_slice().unwrap(), a.shape()).unwrap()
}

pub fn f64v<D: ndarray::Dimension>(a: &ndarray::Array<f32, D>) -> ndarray::Array<f64, D> {
    a.mapv(|v| v as f64)
}

pub fn flat<D: ndarray::Dimension>(a: &ndarray::Array<f64, D>) -> Vec<f32> {
    a.as_standard_layout().iter().map(|&v| v as f32).collect()
}

pub fn flat32<D: ndarray::Dimension>(a: &ndarray::Array<f32, D>) -> Vec<f32> {
    a.as_standard_layout().iter().copied().collect()
}

pub fn run(ctx: &GpuContext, d: &[crossmodal::gpu::Dispatch]) {
    let refs: Vec<_> = d.iter().collect();
    ctx.run(&refs).unwrap();
}

/// A time-major `[T,B]` mask (1 = real step) covering the cases Keras
/// meets: pre-padding (masked at the start), a gap in the middle, no
/// padding, post-padding, and an all-padding sample.
pub fn mask_pattern(steps: usize, batch: usize) -> Vec<u32> {
    let mut m = vec![0u32; steps * batch];
    for t in 0..steps {
        for b in 0..batch {
            let real = match b % 5 {
                0 => t > steps / 3,
                1 => !(t + 1 == steps / 2 || t == steps / 2),
                2 => true,
                3 => t + 2 < steps,
                _ => false,
            };
            m[t * batch + b] = real as u32;
        }
    }
    m
}

pub fn mask_bool(mask: &[u32], steps: usize, batch: usize) -> Array2<bool> {
    Array2::from_shape_fn((steps, batch), |(t, b)| mask[t * batch + b] != 0)
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mask {
    None,
    U32,
    F32,
}

pub fn upload_mask(
    ctx: &GpuContext,
    kind: Mask,
    m: &[u32],
    steps: usize,
    batch: usize,
) -> Option<GpuTensor> {
    match kind {
        Mask::None => None,
        Mask::U32 => {
            // Nonzero = real: token ids work as the mask as they are.
            let ids: Vec<u32> = (0..m.len())
                .map(|i| m[i] * (1 + (i as u32 * 7919) % 9999))
                .collect();
            Some(ctx.upload_u32(&ids, &[steps, batch]).unwrap())
        }
        Mask::F32 => {
            let f: Vec<f32> = m.iter().map(|&v| v as f32).collect();
            Some(ctx.upload_f32(&f, &[steps, batch]).unwrap())
        }
    }
}

// ---------------------------------------------------------------- the suite both cells run
//
// tests/lstm.rs and tests/rnn.rs state what differs per cell (a
// `TestCell`: the CPU references and the saved state) and their cell
// kernel tests; everything below runs the same checks on either cell.

use crossmodal::gpu::Dispatch;
use crossmodal::ops::recurrent::*;
use ndarray::{s, ArrayView2, ArrayView3, Axis, NdFloat, ShapeBuilder};

/// What the shared checks need of a cell besides its kernels: the CPU
/// references and the state forward saves, named.
pub trait TestCell: RecurrentCell {
    /// The forward pass's saved state on the host.
    type States<A: NdFloat>: Clone;
    /// W's scale over Glorot's and U's over `1/sqrt(H)`.
    const W_SCALE: f32;
    const U_SCALE: f32;

    fn forward_cpu<A: NdFloat>(
        x: &ArrayView3<A>,
        w: &ArrayView2<A>,
        u: &ArrayView2<A>,
        b: &ndarray::ArrayView1<A>,
        mask: Option<&ArrayView2<bool>>,
    ) -> Self::States<A>;
    fn forward_naive_cpu<A: NdFloat>(
        x: &ArrayView3<A>,
        w: &ArrayView2<A>,
        u: &ArrayView2<A>,
        b: &ndarray::ArrayView1<A>,
        mask: Option<&ArrayView2<bool>>,
    ) -> Self::States<A>;
    #[allow(clippy::too_many_arguments)]
    fn backward_cpu<A: NdFloat>(
        grads: &mut RecurrentCpuGrads<A>,
        dh_seq: &ArrayView3<A>,
        states: &Self::States<A>,
        x: &ArrayView3<A>,
        w: &ArrayView2<A>,
        u: &ArrayView2<A>,
        mask: Option<&ArrayView2<bool>>,
    );
    /// The fast forward sharing up to `shared` leading steps; returns the
    /// states and how many it shared.
    fn forward_shared_cpu<A: NdFloat>(
        x: &ArrayView3<A>,
        w: &ArrayView2<A>,
        u: &ArrayView2<A>,
        b: &ndarray::ArrayView1<A>,
        mask: Option<&ArrayView2<bool>>,
        shared: usize,
    ) -> (Self::States<A>, usize);
    /// The fast backward after [`TestCell::forward_shared_cpu`] shared
    /// `shared` steps.
    #[allow(clippy::too_many_arguments)]
    fn backward_shared_cpu<A: NdFloat>(
        grads: &mut RecurrentCpuGrads<A>,
        dh_seq: &ArrayView3<A>,
        states: &Self::States<A>,
        x: &ArrayView3<A>,
        w: &ArrayView2<A>,
        u: &ArrayView2<A>,
        mask: Option<&ArrayView2<bool>>,
        shared: usize,
    );
    #[allow(clippy::too_many_arguments)]
    fn backward_naive_cpu<A: NdFloat>(
        grads: &mut RecurrentCpuGrads<A>,
        dh_seq: &ArrayView3<A>,
        states: &Self::States<A>,
        x: &ArrayView3<A>,
        w: &ArrayView2<A>,
        u: &ArrayView2<A>,
        mask: Option<&ArrayView2<bool>>,
    );
    /// The saved arrays by name, h_all first.
    fn saved_cpu<A: NdFloat>(s: &Self::States<A>) -> Vec<(&'static str, &Array3<A>)>;
    /// The same on the device, in the same order.
    fn saved_gpu(bufs: &RecurrentBuffers<Self>) -> Vec<(&'static str, &GpuTensor)>;
    /// The state with every saved array replaced by `f` of it.
    fn map_states<A: NdFloat>(
        s: &Self::States<A>,
        f: impl Fn(&Array3<A>) -> Array3<A>,
    ) -> Self::States<A>;
}

fn h_all<C: TestCell, A: NdFloat>(s: &C::States<A>) -> &Array3<A> {
    C::saved_cpu(s)[0].1
}

/// Inputs of one layer with weights of Keras-like scale.
pub struct Case {
    pub dims: RecurrentDims,
    pub x: Array3<f32>,
    pub w: Array2<f32>,
    pub u: Array2<f32>,
    pub b: Array1<f32>,
    pub mask: Vec<u32>,
}

impl Case {
    pub fn new<C: TestCell>(dims: RecurrentDims, seed: u64) -> Self {
        let RecurrentDims {
            steps,
            batch,
            input,
            hidden,
        } = dims;
        let g = C::GATES * hidden;
        Self {
            dims,
            x: arr3([steps, batch, input], seed, 1.0),
            w: arr2(
                [input, g],
                seed + 1,
                (6.0 / (input + g) as f32).sqrt() * C::W_SCALE,
            ),
            u: arr2([hidden, g], seed + 2, C::U_SCALE / (hidden as f32).sqrt()),
            b: arr1(g, seed + 3, 0.5),
            mask: mask_pattern(steps, batch),
        }
    }

    pub fn mask_cpu(&self, kind: Mask) -> Option<Array2<bool>> {
        (kind != Mask::None).then(|| mask_bool(&self.mask, self.dims.steps, self.dims.batch))
    }

    pub fn forward_cpu<C: TestCell>(&self, kind: Mask) -> C::States<f64> {
        let mask = self.mask_cpu(kind);
        C::forward_cpu(
            &f64v(&self.x).view(),
            &f64v(&self.w).view(),
            &f64v(&self.u).view(),
            &f64v(&self.b).view(),
            mask.as_ref().map(|m| m.view()).as_ref(),
        )
    }
}

/// Tolerances for whole sequences: the recurrence compounds the f32 error.
/// On lavapipe the worst case needs about 5e-6 rel + 1e-6 abs (the abs
/// part for the RNN's dW entries that are sums over 3200 rows with
/// cancellation); the margin allows for other summation orders in the
/// matmul kernel and for other drivers' exp/tanh.
pub const SEQ_RTOL: f32 = 5e-5;
pub const SEQ_ATOL: f32 = 5e-6;

/// Which launchers run a sequence: the public default (the fewest
/// dispatches the device allows), one dispatch per step, or the whole
/// recurrence in one dispatch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Path {
    Default,
    Stepwise,
    Persistent,
}

pub fn forward<C: RecurrentCell>(
    ctx: &GpuContext,
    path: Path,
    bufs: &RecurrentBuffers<C>,
    g: &Uploaded,
) -> Vec<Dispatch> {
    let (x, w, m) = (&g.x, &g.weights(), g.mask.as_ref());
    match path {
        Path::Default => recurrent_forward_sequence(ctx, bufs, x, w, m),
        Path::Stepwise => recurrent_forward_stepwise(ctx, bufs, x, w, m),
        Path::Persistent => recurrent_forward_persistent(ctx, bufs, x, w, m),
    }
    .unwrap()
}

pub fn backward<C: RecurrentCell>(
    ctx: &GpuContext,
    path: Path,
    grads: &RecurrentGrads,
    dh: HiddenGrad,
    bufs: &RecurrentBuffers<C>,
    g: &Uploaded,
) -> Vec<Dispatch> {
    let (x, w, m) = (&g.x, &g.weights(), g.mask.as_ref());
    match path {
        Path::Default => recurrent_backward_sequence(ctx, grads, dh, bufs, x, w, m),
        Path::Stepwise => recurrent_backward_stepwise(ctx, grads, dh, bufs, x, w, m),
        Path::Persistent => recurrent_backward_persistent(ctx, grads, dh, bufs, x, w, m),
    }
    .unwrap()
}

/// Dispatches a path may take: the persistent forward is the input
/// projection plus one recurrence dispatch, its backward one recurrence
/// dispatch plus the weight-gradient matmuls and the bias reduction; the
/// default is the persistent path wherever it is supported.
fn check_dispatch_count<C: RecurrentCell>(
    ctx: &GpuContext,
    path: Path,
    dims: RecurrentDims,
    fwd: Option<usize>,
    bwd: Option<usize>,
) {
    let persistent = match path {
        Path::Default => recurrent_persistent_support::<C>(ctx, dims).is_ok(),
        p => p == Path::Persistent,
    };
    let (f, b) = if persistent {
        (3, 6)
    } else {
        (2 * dims.steps, 2 * dims.steps + 5)
    };
    if let Some(fwd) = fwd {
        assert!(
            fwd <= f,
            "{path:?} forward {dims:?}: {fwd} dispatches > {f}"
        );
        assert!(
            persistent || fwd >= dims.steps,
            "{path:?} forward: {fwd} dispatches"
        );
    }
    if let Some(bwd) = bwd {
        assert!(
            bwd <= b,
            "{path:?} backward {dims:?}: {bwd} dispatches > {b}"
        );
        assert!(
            persistent || bwd >= dims.steps,
            "{path:?} backward: {bwd} dispatches"
        );
    }
}

pub struct Uploaded {
    pub x: GpuTensor,
    pub w: GpuTensor,
    pub u: GpuTensor,
    pub b: GpuTensor,
    pub mask: Option<GpuTensor>,
}

impl Uploaded {
    pub fn new(ctx: &GpuContext, case: &Case, kind: Mask) -> Self {
        let d = case.dims;
        Self {
            x: up(ctx, &case.x),
            w: up(ctx, &case.w),
            u: up(ctx, &case.u),
            b: up(ctx, &case.b),
            mask: upload_mask(ctx, kind, &case.mask, d.steps, d.batch),
        }
    }

    pub fn weights(&self) -> RecurrentWeights<'_> {
        RecurrentWeights {
            w: &self.w,
            u: &self.u,
            b: &self.b,
        }
    }
}

/// Runs the forward pass of `path` and compares every saved tensor with
/// the CPU reference; the persistent path also with the per-step path.
pub fn check_forward_sequence<C: TestCell>(path: Path, dims: RecurrentDims, kind: Mask, seed: u64) {
    if let Some(ctx) = gpu() {
        check_forward_sequence_on::<C>(ctx, path, dims, kind, seed);
    }
}

pub fn check_forward_sequence_on<C: TestCell>(
    ctx: &GpuContext,
    path: Path,
    dims: RecurrentDims,
    kind: Mask,
    seed: u64,
) {
    let case = Case::new::<C>(dims, seed);
    let want = case.forward_cpu::<C>(kind);
    let gp = Uploaded::new(ctx, &case, kind);
    let bufs = RecurrentBuffers::<C>::new(ctx, dims).unwrap();
    let fwd = forward(ctx, path, &bufs, &gp);
    check_dispatch_count::<C>(ctx, path, dims, Some(fwd.len()), None);
    // Run twice: the dispatches are built once and recorded every step.
    run(ctx, &fwd);
    run(ctx, &fwd);
    let what = |s: &str| format!("{} forward {path:?} {dims:?} {kind:?}: {s}", C::NAME);
    let read = |t: &GpuTensor| ctx.read_f32(t).unwrap();
    let last = h_all::<C, _>(&want)
        .index_axis(Axis(0), dims.steps)
        .to_owned();
    let (rtol, atol) = (SEQ_RTOL, SEQ_ATOL);
    assert_close(
        &what("h_last"),
        &read(&bufs.h_last),
        &flat(&last),
        rtol,
        atol,
    );
    for ((name, got), (_, want)) in C::saved_gpu(&bufs).into_iter().zip(C::saved_cpu(&want)) {
        assert_close(&what(name), &read(got), &flat(want), rtol, atol);
    }
    if path == Path::Persistent {
        let step_bufs = RecurrentBuffers::<C>::new(ctx, dims).unwrap();
        let fwd = forward(ctx, Path::Stepwise, &step_bufs, &gp);
        run(ctx, &fwd);
        let mut pairs: Vec<_> = C::saved_gpu(&bufs)
            .into_iter()
            .zip(C::saved_gpu(&step_bufs))
            .map(|((name, got), (_, want))| (name, got, want))
            .collect();
        pairs.push(("h_last", &bufs.h_last, &step_bufs.h_last));
        for (name, got, want) in pairs {
            let name = format!("{name} vs stepwise");
            assert_close(&what(&name), &read(got), &read(want), rtol, atol);
        }
    }
}

/// Which incoming gradients the backward test feeds.
#[derive(Clone, Copy, Debug)]
pub struct Incoming {
    pub seq: bool,
    pub last: bool,
}

pub const BOTH: Incoming = Incoming {
    seq: true,
    last: true,
};
pub const LAST: Incoming = Incoming {
    seq: false,
    last: true,
};
pub const SEQ: Incoming = Incoming {
    seq: true,
    last: false,
};

/// Forward with `paths.0`, backward with `paths.1` in one submit; the
/// gradients (accumulated onto non-zero buffers) against the CPU reference.
pub fn check_backward_sequence<C: TestCell>(
    paths: (Path, Path),
    dims: RecurrentDims,
    kind: Mask,
    incoming: Incoming,
    with_dx: bool,
    seed: u64,
) {
    if let Some(ctx) = gpu() {
        check_backward_sequence_on::<C>(ctx, paths, dims, kind, incoming, with_dx, seed);
    }
}

pub fn check_backward_sequence_on<C: TestCell>(
    ctx: &GpuContext,
    paths: (Path, Path),
    dims: RecurrentDims,
    kind: Mask,
    incoming: Incoming,
    with_dx: bool,
    seed: u64,
) {
    let RecurrentDims {
        steps,
        batch,
        input,
        hidden,
    } = dims;
    let g = C::GATES * hidden;
    let case = Case::new::<C>(dims, seed);
    let states = case.forward_cpu::<C>(kind);
    let dh_seq = arr3([steps, batch, hidden], seed + 10, 1.0);
    let dh_last = arr2([batch, hidden], seed + 11, 1.0);
    // Accumulation: every gradient buffer starts non-zero.
    let dx0 = arr3([steps, batch, input], seed + 12, 1.0);
    let dw0 = arr2([input, g], seed + 13, 1.0);
    let du0 = arr2([hidden, g], seed + 14, 1.0);
    let db0 = arr1(g, seed + 15, 1.0);

    let mut total = Array3::<f64>::zeros((steps, batch, hidden));
    if incoming.seq {
        total += &f64v(&dh_seq);
    }
    if incoming.last {
        let mut l = total.index_axis_mut(Axis(0), steps - 1);
        l += &f64v(&dh_last);
    }
    let mut want = RecurrentCpuGrads {
        dx: f64v(&dx0),
        dw: f64v(&dw0),
        du: f64v(&du0),
        db: f64v(&db0),
    };
    let mask = case.mask_cpu(kind);
    C::backward_cpu(
        &mut want,
        &total.view(),
        &states,
        &f64v(&case.x).view(),
        &f64v(&case.w).view(),
        &f64v(&case.u).view(),
        mask.as_ref().map(|m| m.view()).as_ref(),
    );

    let bufs = RecurrentBuffers::<C>::new(ctx, dims).unwrap();
    let gp = Uploaded::new(ctx, &case, kind);
    let (gseq, glast) = (up(ctx, &dh_seq), up(ctx, &dh_last));
    let (gdx, gdw, gdu, gdb) = (up(ctx, &dx0), up(ctx, &dw0), up(ctx, &du0), up(ctx, &db0));
    let grads = RecurrentGrads {
        dx: with_dx.then_some(&gdx),
        dw: Some(&gdw),
        du: &gdu,
        db: &gdb,
    };
    let dh = HiddenGrad {
        seq: incoming.seq.then_some(&gseq),
        last: incoming.last.then_some(&glast),
    };
    let mut step = forward(ctx, paths.0, &bufs, &gp);
    let bwd = backward(ctx, paths.1, &grads, dh, &bufs, &gp);
    check_dispatch_count::<C>(ctx, paths.0, dims, Some(step.len()), None);
    check_dispatch_count::<C>(ctx, paths.1, dims, None, Some(bwd.len()));
    step.extend(bwd);
    // Forward and backward of a training step in one submit.
    run(ctx, &step);

    let what = |s: &str| {
        format!(
            "{} backward {paths:?} {dims:?} {kind:?} {incoming:?}: {s}",
            C::NAME
        )
    };
    let read = |t: &GpuTensor| ctx.read_f32(t).unwrap();
    let (rtol, atol) = (SEQ_RTOL, SEQ_ATOL);
    let want_dx = if with_dx {
        flat(&want.dx)
    } else {
        flat32(&dx0)
    };
    assert_close(&what("dx"), &read(&gdx), &want_dx, rtol, atol);
    assert_close(&what("dW"), &read(&gdw), &flat(&want.dw), rtol, atol);
    assert_close(&what("dU"), &read(&gdu), &flat(&want.du), rtol, atol);
    assert_close(&what("db"), &read(&gdb), &flat(&want.db), rtol, atol);
}

/// The persistent backward's dz against the per-step path's, from the same
/// forward state.
pub fn check_dz_against_stepwise<C: TestCell>(
    dims: RecurrentDims,
    kind: Mask,
    incoming: Incoming,
    seed: u64,
) {
    let Some(ctx) = gpu() else { return };
    let RecurrentDims {
        steps,
        batch,
        input,
        hidden,
    } = dims;
    let g = C::GATES * hidden;
    let case = Case::new::<C>(dims, seed);
    let gp = Uploaded::new(ctx, &case, kind);
    let dh_seq = up(ctx, &arr3([steps, batch, hidden], seed + 10, 1.0));
    let dh_last = up(ctx, &arr2([batch, hidden], seed + 11, 1.0));
    let dh = HiddenGrad {
        seq: incoming.seq.then_some(&dh_seq),
        last: incoming.last.then_some(&dh_last),
    };
    let f32 = crossmodal::DType::F32;
    let grads = [
        ctx.zeros(&[input, g], f32).unwrap(),
        ctx.zeros(&[hidden, g], f32).unwrap(),
        ctx.zeros(&[g], f32).unwrap(),
    ];
    let grads = RecurrentGrads {
        dx: None,
        dw: Some(&grads[0]),
        du: &grads[1],
        db: &grads[2],
    };
    let mut dz = Vec::new();
    for path in [Path::Stepwise, Path::Persistent] {
        let bufs = RecurrentBuffers::<C>::new(ctx, dims).unwrap();
        let mut d = forward(ctx, Path::Stepwise, &bufs, &gp);
        d.extend(backward(ctx, path, &grads, dh, &bufs, &gp));
        run(ctx, &d);
        dz.push(ctx.read_f32(&bufs.dz).unwrap());
    }
    assert_close(
        &format!(
            "{}_sequence_backward dz vs stepwise {dims:?} {kind:?} {incoming:?}",
            C::NAME
        ),
        &dz[1],
        &dz[0],
        SEQ_RTOL,
        SEQ_ATOL,
    );
}

/// T=7, B=5, D=6, H=13: no size a multiple of a workgroup or tile; B odd
/// (the persistent kernels' last pair has one sample), sample 4 all padding.
pub const AWKWARD: RecurrentDims = RecurrentDims {
    steps: 7,
    batch: 5,
    input: 6,
    hidden: 13,
};

/// B=17: the persistent kernels' 9 sample pairs span two workgroups of 8
/// lanes, the last pair has one sample. H=6. The shapes' H cover every
/// H mod 4 (13, 6, 7, 64: the RNN kernels' blocks of four units end short).
pub const TWO_GROUPS: RecurrentDims = RecurrentDims {
    steps: 4,
    batch: 17,
    input: 3,
    hidden: 6,
};

/// The seed model's text branch: tokens[32,100] -> Embedding(10000,32) ->
/// LSTM(64) (or SimpleRNN(64) in its place).
pub const SEED: RecurrentDims = RecurrentDims {
    steps: 100,
    batch: 32,
    input: 32,
    hidden: 64,
};

/// The default launchers over the three mask kinds.
pub fn forward_sequence_cases<C: TestCell>(path: Path) {
    check_forward_sequence::<C>(path, AWKWARD, Mask::None, 50);
    check_forward_sequence::<C>(path, AWKWARD, Mask::U32, 51);
    check_forward_sequence::<C>(path, AWKWARD, Mask::F32, 52);
}

/// The persistent forward (pair form for these H) beyond
/// [`forward_sequence_cases`].
pub fn sequence_forward_cases<C: TestCell>() {
    forward_sequence_cases::<C>(Path::Persistent);
    let p = Path::Persistent;
    check_forward_sequence::<C>(p, TWO_GROUPS, Mask::U32, 53);
    check_forward_sequence::<C>(p, RecurrentDims::new(3, 1, 2, 7), Mask::None, 54);
}

/// Forward with `paths.0`, backward with `paths.1`, over masks and
/// incoming gradients.
pub fn backward_sequence_cases<C: TestCell>(p: (Path, Path)) {
    check_backward_sequence::<C>(p, AWKWARD, Mask::None, LAST, true, 60);
    check_backward_sequence::<C>(p, AWKWARD, Mask::U32, LAST, true, 61);
    check_backward_sequence::<C>(p, AWKWARD, Mask::F32, SEQ, true, 62);
    check_backward_sequence::<C>(p, AWKWARD, Mask::U32, BOTH, false, 63);
}

/// The persistent backward beyond [`backward_sequence_cases`]: two
/// workgroups, one sample, either backward after either forward, dz
/// against the per-step path's.
pub fn sequence_backward_cases<C: TestCell>() {
    let p = (Path::Persistent, Path::Persistent);
    backward_sequence_cases::<C>(p);
    check_backward_sequence::<C>(p, TWO_GROUPS, Mask::F32, BOTH, true, 64);
    let one = RecurrentDims::new(3, 1, 2, 7);
    check_backward_sequence::<C>(p, one, Mask::None, SEQ, true, 65);
    // Either backward consumes either forward's saved state.
    let mixed = (Path::Stepwise, Path::Persistent);
    check_backward_sequence::<C>(mixed, AWKWARD, Mask::U32, BOTH, true, 66);
    let mixed = (Path::Persistent, Path::Stepwise);
    check_backward_sequence::<C>(mixed, AWKWARD, Mask::U32, BOTH, true, 67);
    check_dz_against_stepwise::<C>(AWKWARD, Mask::U32, BOTH, 68);
    check_dz_against_stepwise::<C>(TWO_GROUPS, Mask::None, SEQ, 69);
}

/// The persistent kernels on a context without subgroups (the blocked
/// LSTM kernels then read h and dz from workgroup memory lane by lane
/// instead of broadcasting them): the awkward and seed shapes.
pub fn without_subgroups_cases<C: TestCell>() {
    let Some(ctx) = gpu_without_subgroups() else {
        return;
    };
    let p = (Path::Persistent, Path::Persistent);
    // The seed shape with the last step's gradient only, as in
    // `seed_shape_cases` (the tolerances are sized for that).
    for (dims, incoming, seed) in [(AWKWARD, BOTH, 80), (SEED, LAST, 81)] {
        check_forward_sequence_on::<C>(ctx, Path::Persistent, dims, Mask::U32, seed);
        check_backward_sequence_on::<C>(ctx, p, dims, Mask::U32, incoming, true, seed);
    }
}

/// Both paths forward and backward on the seed model's shape.
pub fn seed_shape_cases<C: TestCell>() {
    check_forward_sequence::<C>(Path::Persistent, SEED, Mask::U32, 70);
    check_forward_sequence::<C>(Path::Stepwise, SEED, Mask::U32, 70);
    let p = (Path::Persistent, Path::Persistent);
    check_backward_sequence::<C>(p, SEED, Mask::U32, LAST, true, 71);
    let s = (Path::Stepwise, Path::Stepwise);
    check_backward_sequence::<C>(s, SEED, Mask::U32, LAST, true, 71);
    check_dz_against_stepwise::<C>(SEED, Mask::U32, BOTH, 72);
}

/// The persistent kernels hold H ≤ PERSISTENT_MAX_HIDDEN units; beyond,
/// they say so and the default launchers fall back to the per-step path.
pub fn persistent_unsupported_cases<C: TestCell>() {
    let Some(ctx) = gpu() else { return };
    let dims = RecurrentDims::new(2, 3, 2, PERSISTENT_MAX_HIDDEN + 1);
    let case = Case::new::<C>(dims, 75);
    let gp = Uploaded::new(ctx, &case, Mask::U32);
    let bufs = RecurrentBuffers::<C>::new(ctx, dims).unwrap();
    let is_unsupported =
        |r: crossmodal::Result<_>| matches!(r, Err(crossmodal::Error::Unsupported { .. }));
    assert!(is_unsupported(recurrent_persistent_support::<C>(ctx, dims)));
    assert!(is_unsupported(
        recurrent_sequence_forward(ctx, &bufs, &gp.weights(), gp.mask.as_ref()).map(|_| ())
    ));
    let dh = HiddenGrad {
        seq: None,
        last: Some(&bufs.h_last),
    };
    assert!(is_unsupported(
        recurrent_sequence_backward(ctx, &bufs, dh, &gp.u, gp.mask.as_ref()).map(|_| ())
    ));
    let max = RecurrentDims::new(2, 3, 2, PERSISTENT_MAX_HIDDEN);
    assert!(recurrent_persistent_support::<C>(ctx, max).is_ok());
    // The default launcher takes the per-step path and still matches the CPU.
    check_forward_sequence::<C>(Path::Default, dims, Mask::U32, 75);
    let fwd = forward(ctx, Path::Default, &bufs, &gp);
    assert_eq!(fwd.len(), 2 * dims.steps, "per-step fallback");
}

/// The CPU backward against central finite differences in f64, masked and
/// not: loss = Σ w_last·h_T + Σ w_all·h_{1..T}; its gradient wrt h_{1..T}
/// is w_all plus w_last on the last slice.
pub fn fd_check<C: TestCell>(masked: bool) {
    let dims = RecurrentDims::new(4, 3, 5, 4);
    let RecurrentDims {
        steps,
        batch,
        input,
        hidden,
    } = dims;
    let g = C::GATES * hidden;
    let x = f64v(&arr3([steps, batch, input], 80, 1.0));
    let w = f64v(&arr2([input, g], 81, 0.8));
    let u = f64v(&arr2([hidden, g], 82, 0.8));
    let b = f64v(&arr1(g, 83, 0.5));
    let w_all = f64v(&arr3([steps, batch, hidden], 84, 1.0));
    let w_last = f64v(&arr2([batch, hidden], 85, 1.0));
    let mask = masked.then(|| mask_bool(&mask_pattern(steps, batch), steps, batch));
    let mask_view = mask.as_ref().map(|m| m.view());
    let mask = mask_view.as_ref();

    let loss = |x: &Array3<f64>, w: &Array2<f64>, u: &Array2<f64>, b: &Array1<f64>| {
        let st = C::forward_cpu(&x.view(), &w.view(), &u.view(), &b.view(), mask);
        let h_all = h_all::<C, _>(&st);
        let hs = h_all.slice(s![1.., .., ..]);
        (&hs * &w_all).sum() + (&h_all.index_axis(Axis(0), steps) * &w_last).sum()
    };

    let states = C::forward_cpu(&x.view(), &w.view(), &u.view(), &b.view(), mask);
    let mut dh = w_all.clone();
    {
        let mut l = dh.index_axis_mut(Axis(0), steps - 1);
        l += &w_last;
    }
    let mut grads = RecurrentCpuGrads::zeros(dims, g);
    C::backward_cpu(
        &mut grads,
        &dh.view(),
        &states,
        &x.view(),
        &w.view(),
        &u.view(),
        mask,
    );

    let eps = 1e-6;
    let (rtol, atol) = (1e-6, 1e-8);
    let fd_x = finite_difference(&x.clone().into_dyn(), eps, |p| {
        loss(&p.clone().into_dimensionality().unwrap(), &w, &u, &b)
    });
    let fd_w = finite_difference(&w.clone().into_dyn(), eps, |p| {
        loss(&x, &p.clone().into_dimensionality().unwrap(), &u, &b)
    });
    let fd_u = finite_difference(&u.clone().into_dyn(), eps, |p| {
        loss(&x, &w, &p.clone().into_dimensionality().unwrap(), &b)
    });
    let fd_b = finite_difference(&b.clone().into_dyn(), eps, |p| {
        loss(&x, &w, &u, &p.clone().into_dimensionality().unwrap())
    });
    let tag = if masked { "masked" } else { "unmasked" };
    let name = C::NAME;
    for (what, got, want) in [
        ("dx", grads.dx.into_dyn(), fd_x),
        ("dW", grads.dw.into_dyn(), fd_w),
        ("dU", grads.du.into_dyn(), fd_u),
        ("db", grads.db.into_dyn(), fd_b),
    ] {
        assert_close_f64(&format!("{name} {what} ({tag})"), &got, &want, rtol, atol);
    }
}

/// Masked steps pass gradients straight through: a sample masked at every
/// step gets no gradient into x, and h stays at the initial 0.
pub fn fully_masked_sample_is_inert<C: TestCell>() {
    let dims = RecurrentDims::new(4, 5, 3, 2);
    let case = Case::new::<C>(dims, 90);
    let states = case.forward_cpu::<C>(Mask::U32);
    // Sample 4 is all padding in mask_pattern.
    let h_all = h_all::<C, _>(&states);
    assert!(h_all.slice(s![.., 4, ..]).iter().all(|&v| v == 0.0));
    let mut grads = RecurrentCpuGrads::zeros(dims, C::GATES * 2);
    let dh = Array3::<f64>::ones((4, 5, 2));
    let mask = case.mask_cpu(Mask::U32).unwrap();
    C::backward_cpu(
        &mut grads,
        &dh.view(),
        &states,
        &f64v(&case.x).view(),
        &f64v(&case.w).view(),
        &f64v(&case.u).view(),
        Some(&mask.view()),
    );
    assert!(grads.dx.slice(s![.., 4, ..]).iter().all(|&v| v == 0.0));
    assert!(grads.dx.slice(s![.., 2, ..]).iter().any(|&v| v != 0.0));
}

/// Nonzero gradients for the references to accumulate onto (they add, `+=`).
fn start_grads<C: TestCell>(dims: RecurrentDims, seed: u64) -> RecurrentCpuGrads<f64> {
    let RecurrentDims {
        steps,
        batch,
        input,
        hidden,
    } = dims;
    let g = C::GATES * hidden;
    RecurrentCpuGrads {
        dx: f64v(&arr3([steps, batch, input], seed, 1.0)),
        dw: f64v(&arr2([input, g], seed + 1, 1.0)),
        du: f64v(&arr2([hidden, g], seed + 2, 1.0)),
        db: f64v(&arr1(g, seed + 3, 1.0)),
    }
}

/// The fast CPU reference (one batched input projection, steps in place,
/// the halves of a batch of at least `CPU_SPLIT_MIN_BATCH` on two threads,
/// weight gradients as single products over all steps) against the
/// step-by-step `*_naive_cpu` spelling, in f64, with an incoming gradient
/// on every h_t and gradients accumulated onto non-zero values. The
/// forward does the same arithmetic; the gradients sum over steps in
/// another order: rtol and atol 1e-12 cover both.
pub fn check_fast_matches_naive<C: TestCell>(dims: RecurrentDims, kind: Mask, seed: u64) {
    let RecurrentDims {
        steps,
        batch,
        hidden,
        ..
    } = dims;
    let case = Case::new::<C>(dims, seed);
    let mask = case.mask_cpu(kind);
    let mask = mask.as_ref().map(|m| m.view());
    let mask = mask.as_ref();
    let (x, w, u, b) = (f64v(&case.x), f64v(&case.w), f64v(&case.u), f64v(&case.b));
    let tol = 1e-12;
    let close = |what: &str, got: ndarray::ArrayD<f64>, want: ndarray::ArrayD<f64>| {
        let what = format!("{} {what}, fast vs naive, {dims:?} mask {kind:?}", C::NAME);
        assert_close_f64(&what, &got, &want, tol, tol);
    };

    let fast = C::forward_cpu(&x.view(), &w.view(), &u.view(), &b.view(), mask);
    let naive = C::forward_naive_cpu(&x.view(), &w.view(), &u.view(), &b.view(), mask);
    // Saved state in reverse (h_all last), as the cells' own tests had it.
    for ((name, got), (_, want)) in C::saved_cpu(&fast)
        .into_iter()
        .zip(C::saved_cpu(&naive))
        .rev()
    {
        close(name, got.clone().into_dyn(), want.clone().into_dyn());
    }

    let dh = f64v(&arr3([steps, batch, hidden], seed + 4, 1.0));
    let mut got = start_grads::<C>(dims, seed + 5);
    let mut want = got.clone();
    let (xv, wv, uv) = (x.view(), w.view(), u.view());
    C::backward_cpu(&mut got, &dh.view(), &fast, &xv, &wv, &uv, mask);
    C::backward_naive_cpu(&mut want, &dh.view(), &naive, &xv, &wv, &uv, mask);
    close("dx", got.dx.into_dyn(), want.dx.into_dyn());
    close("dW", got.dw.into_dyn(), want.dw.into_dyn());
    close("dU", got.du.into_dyn(), want.du.into_dyn());
    close("db", got.db.into_dyn(), want.db.into_dyn());
}

/// Steps masked for every sample: pre-padding (the first steps) and a
/// gap after real steps (the second quarter), each sample resuming at its
/// own step. The fast CPU driver skips the product and the cell on steps
/// masked for its whole group (carrying the state through), and must
/// still give the naive driver's states and gradients (in f64, 1e-12).
/// Per-step saved arrays (the gates) are compared at real positions only:
/// a skipped step's are never read.
pub fn masked_steps_match_naive<C: TestCell>() {
    // Two groups of samples on two threads, 12 steps.
    let dims = RecurrentDims {
        steps: 12,
        ..TWO_GROUPS
    };
    let RecurrentDims {
        steps,
        batch,
        hidden,
        ..
    } = dims;
    let case = Case::new::<C>(dims, 140);
    let mask = Array2::from_shape_fn((steps, batch), |(t, b)| {
        (2..steps / 4).contains(&t) || t >= steps / 2 + b % 3
    });
    assert!(
        (0..steps).any(|t| !mask.row(t).iter().any(|&r| r)),
        "no step is masked for the whole batch"
    );
    let m = Some(mask.view());
    let m = m.as_ref();
    let (x, w, u, b) = (f64v(&case.x), f64v(&case.w), f64v(&case.u), f64v(&case.b));
    let fast = C::forward_cpu(&x.view(), &w.view(), &u.view(), &b.view(), m);
    let naive = C::forward_naive_cpu(&x.view(), &w.view(), &u.view(), &b.view(), m);
    for ((name, got), (_, want)) in C::saved_cpu(&fast).into_iter().zip(C::saved_cpu(&naive)) {
        let (mut got, mut want) = (got.clone(), want.clone());
        if got.dim().0 == steps {
            for ((t, b), &real) in mask.indexed_iter() {
                if !real {
                    got.slice_mut(ndarray::s![t, b, ..]).fill(0.0);
                    want.slice_mut(ndarray::s![t, b, ..]).fill(0.0);
                }
            }
        }
        let what = format!("{} {name}, masked steps, fast vs naive", C::NAME);
        assert_close_f64(&what, &got.into_dyn(), &want.into_dyn(), 1e-12, 1e-12);
    }
    let dh = f64v(&arr3([steps, batch, hidden], 141, 1.0));
    let mut got = start_grads::<C>(dims, 142);
    let mut want = got.clone();
    let (xv, wv, uv) = (x.view(), w.view(), u.view());
    C::backward_cpu(&mut got, &dh.view(), &fast, &xv, &wv, &uv, m);
    C::backward_naive_cpu(&mut want, &dh.view(), &naive, &xv, &wv, &uv, m);
    for (name, g, w) in [
        ("dx", got.dx.into_dyn(), want.dx.into_dyn()),
        ("dW", got.dw.into_dyn(), want.dw.into_dyn()),
        ("dU", got.du.into_dyn(), want.du.into_dyn()),
        ("db", got.db.into_dyn(), want.db.into_dyn()),
    ] {
        let what = format!("{} {name}, masked steps, fast vs naive", C::NAME);
        assert_close_f64(&what, &g, &w, 1e-12, 1e-12);
    }
}

/// Leading steps with the same input row (and mask) in every sample run
/// once for the whole batch (`shared`), on a batch split in halves: the
/// states are the step-by-step reference's (the activations of the shared
/// steps in sample 0's rows only), the weight gradients too, and dx of a
/// shared step is the samples' sum in sample 0's row (the other rows get
/// nothing). The claim is cut where the rows first differ, and a
/// mismatched row or mask ends the shared steps there. With an incoming
/// gradient for every h_t, so the shared h_t's gradients are summed too.
pub fn shared_steps_match_naive<C: TestCell>() {
    for (kind, claim, want_shared) in [(Mask::None, 9, 5), (Mask::U32, 3, 3), (Mask::U32, 9, 5)] {
        check_shared_steps::<C>(kind, claim, want_shared);
    }
    // Pre-padded token ids: the steps where every sample holds one token.
    let ids = [0, 0, 0, 7, 7, 7, 0, 2, 0, 5, 6, 8u32];
    assert_eq!(shared_steps(&ids, 4, 3), 2);
    assert_eq!(shared_steps(&ids, 1, 3), 1);
    assert_eq!(
        shared_steps(&[4, 4, 4], 3, 1),
        0,
        "a batch of one shares nothing"
    );
}

fn check_shared_steps<C: TestCell>(kind: Mask, claim: usize, want_shared: usize) {
    let dims = RecurrentDims {
        steps: 9,
        ..TWO_GROUPS
    };
    let RecurrentDims {
        steps,
        batch,
        hidden,
        ..
    } = dims;
    const SAME: usize = 5;
    let case = Case::new::<C>(dims, 150);
    let mut x = f64v(&case.x);
    for t in 0..SAME {
        let first = x.slice(s![t, 0, ..]).to_owned();
        for mut row in x.index_axis_mut(Axis(0), t).outer_iter_mut() {
            row.assign(&first);
        }
    }
    // Masked: the first step masked for every sample, then real; after the
    // shared steps, the pattern of mask_pattern.
    let mask = (kind != Mask::None).then(|| {
        Array2::from_shape_fn((steps, batch), |(t, b)| {
            if t < SAME {
                t > 0
            } else {
                b % 3 != 1 || t % 2 == 0
            }
        })
    });
    let m = mask.as_ref().map(|m| m.view());
    let m = m.as_ref();
    let (w, u, b) = (f64v(&case.w), f64v(&case.u), f64v(&case.b));
    let (xv, wv, uv) = (x.view(), w.view(), u.view());
    let (fast, shared) = C::forward_shared_cpu(&xv, &wv, &uv, &b.view(), m, claim);
    assert_eq!(
        shared,
        want_shared,
        "{} shared steps ({kind:?}, claim {claim})",
        C::NAME
    );
    let naive = C::forward_naive_cpu(&xv, &wv, &uv, &b.view(), m);
    for ((name, got), (_, want)) in C::saved_cpu(&fast).into_iter().zip(C::saved_cpu(&naive)) {
        let (mut got, mut want) = (got.clone(), want.clone());
        if want.dim().0 == steps {
            // The shared steps' activations are sample 0's only; those of
            // masked steps are never read (as in masked_steps_match_naive).
            want.slice_mut(s![..shared, 1.., ..]).fill(0.0);
            for ((t, b), &real) in mask.iter().flat_map(|m| m.indexed_iter()) {
                if !real {
                    got.slice_mut(s![t, b, ..]).fill(0.0);
                    want.slice_mut(s![t, b, ..]).fill(0.0);
                }
            }
        }
        let what = format!("{} {name}, {shared} shared steps, vs naive", C::NAME);
        assert_close_f64(&what, &got.into_dyn(), &want.into_dyn(), 1e-12, 1e-12);
    }
    let dh = f64v(&arr3([steps, batch, hidden], 151, 1.0));
    let start = start_grads::<C>(dims, 152);
    let (mut got, mut want) = (start.clone(), start.clone());
    C::backward_shared_cpu(&mut got, &dh.view(), &fast, &xv, &wv, &uv, m, shared);
    C::backward_naive_cpu(&mut want, &dh.view(), &naive, &xv, &wv, &uv, m);
    // dx of a shared step: the sum over the samples, in sample 0's row.
    let added = &want.dx - &start.dx;
    for t in 0..shared {
        let sum = added.index_axis(Axis(0), t).sum_axis(Axis(0));
        want.dx
            .slice_mut(s![t, .., ..])
            .assign(&start.dx.slice(s![t, .., ..]));
        let mut row0 = want.dx.slice_mut(s![t, 0, ..]);
        row0 += &sum;
    }
    for (name, g, w) in [
        ("dx", got.dx.into_dyn(), want.dx.into_dyn()),
        ("dW", got.dw.into_dyn(), want.dw.into_dyn()),
        ("dU", got.du.into_dyn(), want.du.into_dyn()),
        ("db", got.db.into_dyn(), want.db.into_dyn()),
    ] {
        let what = format!("{} {name}, {shared} shared steps, vs naive", C::NAME);
        assert_close_f64(&what, &g, &w, 1e-12, 1e-12);
    }
}

/// [`check_fast_matches_naive`] on awkward shapes, a batch split in halves
/// and the seed shape.
pub fn fast_matches_naive_cases<C: TestCell>() {
    check_fast_matches_naive::<C>(AWKWARD, Mask::None, 100);
    check_fast_matches_naive::<C>(AWKWARD, Mask::U32, 101);
    // B=17: halves of 8 and 9 samples on two threads.
    const { assert!(TWO_GROUPS.batch >= CPU_SPLIT_MIN_BATCH) };
    check_fast_matches_naive::<C>(TWO_GROUPS, Mask::None, 102);
    check_fast_matches_naive::<C>(TWO_GROUPS, Mask::U32, 103);
    check_fast_matches_naive::<C>(SEED, Mask::U32, 104);
}

/// Inputs, saved state and gradients in another layout than standard give
/// the same values, bit for bit (they are copied to standard layout where
/// a product needs rows).
pub fn cpu_any_layout<C: TestCell>() {
    let dims = TWO_GROUPS;
    let case = Case::new::<C>(dims, 110);
    let mask = case.mask_cpu(Mask::U32).unwrap();
    let mask = Some(&mask.view());
    let (x, w, u, b) = (f64v(&case.x), f64v(&case.w), f64v(&case.u), f64v(&case.b));
    let (wv, uv) = (w.view(), u.view());
    // x, dh and the saved state stored batch-major, viewed time-major.
    let odd = |a: &Array3<f64>| {
        a.view()
            .permuted_axes([1, 0, 2])
            .as_standard_layout()
            .into_owned()
            .permuted_axes([1, 0, 2])
    };
    let x_odd = odd(&x);
    assert!(!x_odd.is_standard_layout());
    let want = C::forward_cpu(&x.view(), &wv, &uv, &b.view(), mask);
    let got = C::forward_cpu(&x_odd.view(), &wv, &uv, &b.view(), mask);
    for ((name, got), (_, want)) in C::saved_cpu(&got).into_iter().zip(C::saved_cpu(&want)) {
        assert_eq!(got, want, "{name}");
    }

    let dh = f64v(&arr3([dims.steps, dims.batch, dims.hidden], 111, 1.0));
    let mut want_g = start_grads::<C>(dims, 112);
    let mut got_g = want_g.clone();
    // dx in column-major order.
    let mut dx_f = Array3::zeros(got_g.dx.raw_dim().f());
    dx_f.assign(&got_g.dx);
    got_g.dx = dx_f;
    let (dh_odd, got_odd) = (odd(&dh), C::map_states(&got, odd));
    C::backward_cpu(
        &mut got_g,
        &dh_odd.view(),
        &got_odd,
        &x_odd.view(),
        &wv,
        &uv,
        mask,
    );
    C::backward_cpu(&mut want_g, &dh.view(), &want, &x.view(), &wv, &uv, mask);
    assert_eq!(got_g.dx, want_g.dx);
    assert_eq!(got_g.dw, want_g.dw);
    assert_eq!(got_g.du, want_g.du);
    assert_eq!(got_g.db, want_g.db);
}

/// The fast CPU reference is bit-identical run to run (the two halves of
/// the batch on two threads included), in f32 on the seed shape.
pub fn cpu_deterministic<C: TestCell>() {
    let dims = SEED;
    let case = Case::new::<C>(dims, 120);
    let mask = case.mask_cpu(Mask::U32).unwrap();
    let mask = Some(&mask.view());
    let (x, w, u, b) = (case.x.view(), case.w.view(), case.u.view(), case.b.view());
    let dh = arr3([dims.steps, dims.batch, dims.hidden], 121, 1.0);
    let run = || {
        let states = C::forward_cpu(&x, &w, &u, &b, mask);
        let mut g = RecurrentCpuGrads::zeros(dims, C::GATES * dims.hidden);
        C::backward_cpu(&mut g, &dh.view(), &states, &x, &w, &u, mask);
        (h_all::<C, _>(&states).clone(), g.dx, g.dw, g.du, g.db)
    };
    let first = run();
    for _ in 0..3 {
        let again = run();
        assert_eq!(again.0, first.0, "h_all");
        assert_eq!(again.1, first.1, "dx");
        assert_eq!(again.2, first.2, "dW");
        assert_eq!(again.3, first.3, "dU");
        assert_eq!(again.4, first.4, "db");
    }
}

/// Splitting the batch across threads changes no bits: each half of a
/// B=17 batch (split at 8) gives, run alone (below `CPU_SPLIT_MIN_BATCH`,
/// one thread), exactly the saved state and dx of its samples in the whole
/// run (f32, masked).
pub fn cpu_split_changes_no_bits<C: TestCell>() {
    let dims = TWO_GROUPS;
    let case = Case::new::<C>(dims, 130);
    let mask = case.mask_cpu(Mask::U32).unwrap();
    let dh = arr3([dims.steps, dims.batch, dims.hidden], 131, 1.0);
    let (w, u, b) = (case.w.view(), case.u.view(), case.b.view());
    let run = |x: ArrayView3<f32>, dh: ArrayView3<f32>, mask: ArrayView2<bool>| {
        let (steps, batch, input) = x.dim();
        let states = C::forward_cpu(&x, &w, &u, &b, Some(&mask));
        let dims = RecurrentDims::new(steps, batch, input, dims.hidden);
        let mut g = RecurrentCpuGrads::zeros(dims, C::GATES * dims.hidden);
        C::backward_cpu(&mut g, &dh, &states, &x, &w, &u, Some(&mask));
        (states, g.dx)
    };
    let (whole, whole_dx) = run(case.x.view(), dh.view(), mask.view());
    let half = dims.batch / 2;
    for samples in [0..half, half..dims.batch] {
        let (lo, hi) = (samples.start, samples.end);
        assert!(hi - lo < CPU_SPLIT_MIN_BATCH);
        let (part, part_dx) = run(
            case.x.slice(s![.., lo..hi, ..]),
            dh.slice(s![.., lo..hi, ..]),
            mask.slice(s![.., lo..hi]),
        );
        // Saved state in reverse (h_all last), as the cells' own tests had it.
        for ((name, part), (_, whole)) in C::saved_cpu(&part)
            .into_iter()
            .zip(C::saved_cpu(&whole))
            .rev()
        {
            assert_eq!(part, whole.slice(s![.., lo..hi, ..]), "{name}");
        }
        assert_eq!(part_dx, whole_dx.slice(s![.., lo..hi, ..]));
    }
}
