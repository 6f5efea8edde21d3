//! LSTM kernels against the CPU reference (the gate kernels one step at a
//! time, whole sequences forward and backward, with masks; the persistent
//! kernels in each form: pair (any H), pair4 (backward, H a multiple of 4
//! above 64) and blocked (H a multiple of 4 up to 64)), and the CPU
//! backward against finite differences in f64.
//!
//! GPU results are compared with the CPU reference computed in f64 from the
//! same f32 inputs, so the tolerance covers the GPU's f32 error only.

mod common;

use common::recurrent::*;
use common::*;
use crossmodal::ops::lstm::{self as op, *};
use crossmodal::{GpuContext, GpuTensor};
use ndarray::{s, Array1, Array2, Array3, Axis, ShapeBuilder};

// ---------------------------------------------------------------- helpers

// Shared with tests/rnn.rs: tests/common/recurrent.rs.

/// Inputs of one LSTM layer with weights of Keras-like scale.
struct Case {
    dims: RecurrentDims,
    x: Array3<f32>,
    w: Array2<f32>,
    u: Array2<f32>,
    b: Array1<f32>,
    mask: Vec<u32>,
}

impl Case {
    fn new(dims: RecurrentDims, seed: u64) -> Self {
        let RecurrentDims {
            steps,
            batch,
            input,
            hidden,
        } = dims;
        let g = 4 * hidden;
        Self {
            dims,
            x: arr3([steps, batch, input], seed, 1.0),
            w: arr2(
                [input, g],
                seed + 1,
                (6.0 / (input + g) as f32).sqrt() * 2.0,
            ),
            u: arr2([hidden, g], seed + 2, 2.0 / (hidden as f32).sqrt()),
            b: arr1(g, seed + 3, 0.5),
            mask: mask_pattern(steps, batch),
        }
    }

    fn mask_cpu(&self, kind: Mask) -> Option<Array2<bool>> {
        (kind != Mask::None).then(|| mask_bool(&self.mask, self.dims.steps, self.dims.batch))
    }

    fn forward_cpu(&self, kind: Mask) -> LstmStates<f64> {
        let mask = self.mask_cpu(kind);
        lstm_forward_cpu(
            &f64v(&self.x).view(),
            &f64v(&self.w).view(),
            &f64v(&self.u).view(),
            &f64v(&self.b).view(),
            mask.as_ref().map(|m| m.view()).as_ref(),
        )
    }
}

// ---------------------------------------------------------------- gate kernels

/// T=3, B=5, H=13: B*H = 65, one past the 64-lane workgroup.
const GATE_DIMS: RecurrentDims = RecurrentDims {
    steps: 3,
    batch: 5,
    input: 1,
    hidden: 13,
};

fn check_gates_forward(step: usize, kind: Mask) {
    let Some(ctx) = gpu() else { return };
    let dims = GATE_DIMS;
    let (t_n, b_n, h_n) = (dims.steps, dims.batch, dims.hidden);
    let bufs = LstmBuffers::new(ctx, dims).unwrap();
    let z = arr3([t_n, b_n, 4 * h_n], 20, 3.0);
    let bias = arr1(4 * h_n, 21, 1.0);
    let c_all = arr3([t_n + 1, b_n, h_n], 22, 2.0);
    let h_all = arr3([t_n + 1, b_n, h_n], 23, 1.0);
    let gates0 = arr3([t_n, b_n, 4 * h_n], 24, 1.0);
    let h_last0 = arr2([b_n, h_n], 25, 1.0);
    for (buf, val) in [
        (&bufs.z, flat32(&z)),
        (&bufs.c_all, flat32(&c_all)),
        (&bufs.h_all, flat32(&h_all)),
        (&bufs.gates, flat32(&gates0)),
        (&bufs.h_last, flat32(&h_last0)),
    ] {
        ctx.write_f32(buf, &val).unwrap();
    }
    let mask = mask_pattern(t_n, b_n);
    let gmask = upload_mask(ctx, kind, &mask, t_n, b_n);
    let gbias = up(ctx, &bias);
    run(
        ctx,
        &[op::lstm_gates_forward(ctx, &bufs, &gbias, gmask.as_ref(), step).unwrap()],
    );

    let mb = mask_bool(&mask, t_n, b_n);
    let mrow = mb.row(step);
    let cell = lstm_cell_forward_cpu(
        &f64v(&z).index_axis(Axis(0), step),
        &f64v(&bias).view(),
        &f64v(&c_all).index_axis(Axis(0), step),
        &f64v(&h_all).index_axis(Axis(0), step),
        (kind != Mask::None).then_some(&mrow),
    );
    // Only step t's slices change.
    let mut want_gates = f64v(&gates0);
    want_gates.index_axis_mut(Axis(0), step).assign(&cell.gates);
    let mut want_c = f64v(&c_all);
    want_c.index_axis_mut(Axis(0), step + 1).assign(&cell.c);
    let mut want_h = f64v(&h_all);
    want_h.index_axis_mut(Axis(0), step + 1).assign(&cell.h);
    let want_last = if step + 1 == t_n {
        cell.h
    } else {
        f64v(&h_last0)
    };
    let what = |s: &str| format!("lstm_gates_forward step {step} {kind:?}: {s}");
    // exp/tanh differ by a few ulps between implementations.
    let (rtol, atol) = (1e-5, 1e-6);
    let read = |t: &GpuTensor| ctx.read_f32(t).unwrap();
    assert_close(
        &what("gates"),
        &read(&bufs.gates),
        &flat(&want_gates),
        rtol,
        atol,
    );
    assert_close(
        &what("c_all"),
        &read(&bufs.c_all),
        &flat(&want_c),
        rtol,
        atol,
    );
    assert_close(
        &what("h_all"),
        &read(&bufs.h_all),
        &flat(&want_h),
        rtol,
        atol,
    );
    assert_close(
        &what("h_last"),
        &read(&bufs.h_last),
        &flat(&want_last),
        rtol,
        atol,
    );
}

#[test]
fn lstm_gates_forward() {
    check_gates_forward(0, Mask::None);
    check_gates_forward(1, Mask::U32);
    check_gates_forward(2, Mask::F32);
    check_gates_forward(2, Mask::None);
}

fn check_gates_backward(step: usize, kind: Mask, seq: bool, last: bool) {
    let Some(ctx) = gpu() else { return };
    let dims = GATE_DIMS;
    let (t_n, b_n, h_n) = (dims.steps, dims.batch, dims.hidden);
    let bufs = LstmBuffers::new(ctx, dims).unwrap();
    // Realistic saved gates: i, f, o in (0,1), g in (-1,1).
    let mut gates = arr3([t_n, b_n, 4 * h_n], 30, 0.5).mapv(|v| v + 0.5);
    let g_part = arr3([t_n, b_n, h_n], 31, 1.0);
    gates
        .slice_mut(s![.., .., 2 * h_n..3 * h_n])
        .assign(&g_part);
    let c_all = arr3([t_n + 1, b_n, h_n], 32, 2.0);
    let dz0 = arr3([t_n, b_n, 4 * h_n], 33, 1.0);
    let dh_carry = arr2([b_n, h_n], 34, 1.0);
    let dc_carry = arr2([b_n, h_n], 35, 1.0);
    let dh_seq = arr3([t_n, b_n, h_n], 36, 1.0);
    let dh_last = arr2([b_n, h_n], 37, 1.0);
    for (buf, val) in [
        (&bufs.gates, flat32(&gates)),
        (&bufs.c_all, flat32(&c_all)),
        (&bufs.dz, flat32(&dz0)),
        (&bufs.dh_carry, flat32(&dh_carry)),
        (&bufs.dc_carry, flat32(&dc_carry)),
    ] {
        ctx.write_f32(buf, &val).unwrap();
    }
    let mask = mask_pattern(t_n, b_n);
    let gmask = upload_mask(ctx, kind, &mask, t_n, b_n);
    let gseq = up(ctx, &dh_seq);
    let glast = up(ctx, &dh_last);
    let dh = HiddenGrad {
        seq: seq.then_some(&gseq),
        last: last.then_some(&glast),
    };
    run(
        ctx,
        &[op::lstm_gates_backward(ctx, &bufs, dh, gmask.as_ref(), step).unwrap()],
    );

    // The carries from step t+1 do not exist on the last step.
    let first = step + 1 == t_n;
    let mut dh_in = if first {
        Array2::zeros((b_n, h_n))
    } else {
        f64v(&dh_carry)
    };
    let dc_in = if first {
        Array2::zeros((b_n, h_n))
    } else {
        f64v(&dc_carry)
    };
    if seq {
        dh_in += &f64v(&dh_seq).index_axis(Axis(0), step);
    }
    if first && last {
        dh_in += &f64v(&dh_last);
    }
    let mb = mask_bool(&mask, t_n, b_n);
    let mrow = mb.row(step);
    let c64 = f64v(&c_all);
    let cell = lstm_cell_backward_cpu(
        &dh_in.view(),
        &dc_in.view(),
        &f64v(&gates).index_axis(Axis(0), step),
        &c64.index_axis(Axis(0), step),
        &c64.index_axis(Axis(0), step + 1),
        (kind != Mask::None).then_some(&mrow),
    );
    let mut want_dz = f64v(&dz0);
    want_dz.index_axis_mut(Axis(0), step).assign(&cell.dz);
    let what =
        |s: &str| format!("lstm_gates_backward step {step} {kind:?} seq {seq} last {last}: {s}");
    let (rtol, atol) = (1e-5, 1e-6);
    let read = |t: &GpuTensor| ctx.read_f32(t).unwrap();
    assert_close(&what("dz"), &read(&bufs.dz), &flat(&want_dz), rtol, atol);
    assert_close(
        &what("dh_carry"),
        &read(&bufs.dh_carry),
        &flat(&cell.dh_prev),
        rtol,
        atol,
    );
    assert_close(
        &what("dc_carry"),
        &read(&bufs.dc_carry),
        &flat(&cell.dc_prev),
        rtol,
        atol,
    );
}

#[test]
fn lstm_gates_backward() {
    check_gates_backward(2, Mask::U32, true, true);
    check_gates_backward(2, Mask::None, false, true);
    check_gates_backward(1, Mask::F32, true, false);
    check_gates_backward(0, Mask::U32, true, true);
    check_gates_backward(0, Mask::None, false, true);
}

// ---------------------------------------------------------------- sequences

/// Tolerances for whole sequences: the recurrence compounds the f32 error.
/// On lavapipe the worst case needs about 5e-6 rel + 5e-7 abs; the
/// margin allows for other summation orders in the matmul kernel and for
/// other drivers' exp/tanh.
const SEQ_RTOL: f32 = 5e-5;
const SEQ_ATOL: f32 = 5e-6;

/// Which launchers run a sequence: the public default (the fewest
/// dispatches the device allows), one dispatch per step, or the whole
/// recurrence in one dispatch.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Path {
    Default,
    Stepwise,
    Persistent,
}

fn forward(
    ctx: &GpuContext,
    path: Path,
    bufs: &LstmBuffers,
    g: &Uploaded,
) -> Vec<crossmodal::gpu::Dispatch> {
    let (x, w, m) = (&g.x, &g.weights(), g.mask.as_ref());
    match path {
        Path::Default => op::lstm_forward_sequence(ctx, bufs, x, w, m),
        Path::Stepwise => op::lstm_forward_stepwise(ctx, bufs, x, w, m),
        Path::Persistent => op::lstm_forward_persistent(ctx, bufs, x, w, m),
    }
    .unwrap()
}

fn backward(
    ctx: &GpuContext,
    path: Path,
    grads: &RecurrentGrads,
    dh: HiddenGrad,
    bufs: &LstmBuffers,
    g: &Uploaded,
) -> Vec<crossmodal::gpu::Dispatch> {
    let (x, w, m) = (&g.x, &g.weights(), g.mask.as_ref());
    match path {
        Path::Default => op::lstm_backward_sequence(ctx, grads, dh, bufs, x, w, m),
        Path::Stepwise => op::lstm_backward_stepwise(ctx, grads, dh, bufs, x, w, m),
        Path::Persistent => op::lstm_backward_persistent(ctx, grads, dh, bufs, x, w, m),
    }
    .unwrap()
}

/// Dispatches a path may take: the persistent forward is the input
/// projection plus one recurrence dispatch, its backward one recurrence
/// dispatch plus the weight-gradient matmuls and the bias reduction; the
/// default is the persistent path wherever it is supported.
fn check_dispatch_count(
    ctx: &GpuContext,
    path: Path,
    dims: RecurrentDims,
    fwd: Option<usize>,
    bwd: Option<usize>,
) {
    let persistent = match path {
        Path::Default => op::lstm_persistent_support(ctx, dims).is_ok(),
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

struct Uploaded {
    x: GpuTensor,
    w: GpuTensor,
    u: GpuTensor,
    b: GpuTensor,
    mask: Option<GpuTensor>,
}

impl Uploaded {
    fn new(ctx: &GpuContext, case: &Case, kind: Mask) -> Self {
        let d = case.dims;
        Self {
            x: up(ctx, &case.x),
            w: up(ctx, &case.w),
            u: up(ctx, &case.u),
            b: up(ctx, &case.b),
            mask: upload_mask(ctx, kind, &case.mask, d.steps, d.batch),
        }
    }

    fn weights(&self) -> RecurrentWeights<'_> {
        RecurrentWeights {
            w: &self.w,
            u: &self.u,
            b: &self.b,
        }
    }
}

/// Runs the forward pass of `path` and compares every saved tensor with
/// the CPU reference; the persistent path also with the per-step path.
fn check_forward_sequence(path: Path, dims: RecurrentDims, kind: Mask, seed: u64) {
    let Some(ctx) = gpu() else { return };
    let case = Case::new(dims, seed);
    let want = case.forward_cpu(kind);
    let gp = Uploaded::new(ctx, &case, kind);
    let bufs = LstmBuffers::new(ctx, dims).unwrap();
    let fwd = forward(ctx, path, &bufs, &gp);
    check_dispatch_count(ctx, path, dims, Some(fwd.len()), None);
    // Run twice: the dispatches are built once and recorded every step.
    run(ctx, &fwd);
    run(ctx, &fwd);
    let what = |s: &str| format!("lstm forward {path:?} {dims:?} {kind:?}: {s}");
    let read = |t: &GpuTensor| ctx.read_f32(t).unwrap();
    let last = want.h_all.index_axis(Axis(0), dims.steps).to_owned();
    let (rtol, atol) = (SEQ_RTOL, SEQ_ATOL);
    assert_close(
        &what("h_last"),
        &read(&bufs.h_last),
        &flat(&last),
        rtol,
        atol,
    );
    assert_close(
        &what("h_all"),
        &read(&bufs.h_all),
        &flat(&want.h_all),
        rtol,
        atol,
    );
    assert_close(
        &what("c_all"),
        &read(&bufs.c_all),
        &flat(&want.c_all),
        rtol,
        atol,
    );
    assert_close(
        &what("gates"),
        &read(&bufs.gates),
        &flat(&want.gates),
        rtol,
        atol,
    );
    if path == Path::Persistent {
        let step_bufs = LstmBuffers::new(ctx, dims).unwrap();
        let fwd = forward(ctx, Path::Stepwise, &step_bufs, &gp);
        run(ctx, &fwd);
        for (name, got, want) in [
            ("h_all vs stepwise", &bufs.h_all, &step_bufs.h_all),
            ("c_all vs stepwise", &bufs.c_all, &step_bufs.c_all),
            ("gates vs stepwise", &bufs.gates, &step_bufs.gates),
            ("h_last vs stepwise", &bufs.h_last, &step_bufs.h_last),
        ] {
            assert_close(&what(name), &read(got), &read(want), rtol, atol);
        }
    }
}

/// Which incoming gradients the backward test feeds.
#[derive(Clone, Copy, Debug)]
struct Incoming {
    seq: bool,
    last: bool,
}

const BOTH: Incoming = Incoming {
    seq: true,
    last: true,
};
const LAST: Incoming = Incoming {
    seq: false,
    last: true,
};
const SEQ: Incoming = Incoming {
    seq: true,
    last: false,
};

/// Forward with `paths.0`, backward with `paths.1` in one submit; the
/// gradients (accumulated onto non-zero buffers) against the CPU reference.
fn check_backward_sequence(
    paths: (Path, Path),
    dims: RecurrentDims,
    kind: Mask,
    incoming: Incoming,
    with_dx: bool,
    seed: u64,
) {
    let Some(ctx) = gpu() else { return };
    let RecurrentDims {
        steps,
        batch,
        input,
        hidden,
    } = dims;
    let g = 4 * hidden;
    let case = Case::new(dims, seed);
    let states = case.forward_cpu(kind);
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
    lstm_backward_cpu(
        &mut want,
        &total.view(),
        &states,
        &f64v(&case.x).view(),
        &f64v(&case.w).view(),
        &f64v(&case.u).view(),
        mask.as_ref().map(|m| m.view()).as_ref(),
    );

    let bufs = LstmBuffers::new(ctx, dims).unwrap();
    let gp = Uploaded::new(ctx, &case, kind);
    let (gseq, glast) = (up(ctx, &dh_seq), up(ctx, &dh_last));
    let (gdx, gdw, gdu, gdb) = (up(ctx, &dx0), up(ctx, &dw0), up(ctx, &du0), up(ctx, &db0));
    let grads = RecurrentGrads {
        dx: with_dx.then_some(&gdx),
        dw: &gdw,
        du: &gdu,
        db: &gdb,
    };
    let dh = HiddenGrad {
        seq: incoming.seq.then_some(&gseq),
        last: incoming.last.then_some(&glast),
    };
    let mut step = forward(ctx, paths.0, &bufs, &gp);
    let bwd = backward(ctx, paths.1, &grads, dh, &bufs, &gp);
    check_dispatch_count(ctx, paths.0, dims, Some(step.len()), None);
    check_dispatch_count(ctx, paths.1, dims, None, Some(bwd.len()));
    step.extend(bwd);
    // Forward and backward of a training step in one submit.
    run(ctx, &step);

    let what = |s: &str| format!("lstm backward {paths:?} {dims:?} {kind:?} {incoming:?}: {s}");
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
fn check_dz_against_stepwise(dims: RecurrentDims, kind: Mask, incoming: Incoming, seed: u64) {
    let Some(ctx) = gpu() else { return };
    let RecurrentDims {
        steps,
        batch,
        input,
        hidden,
    } = dims;
    let case = Case::new(dims, seed);
    let gp = Uploaded::new(ctx, &case, kind);
    let dh_seq = up(ctx, &arr3([steps, batch, hidden], seed + 10, 1.0));
    let dh_last = up(ctx, &arr2([batch, hidden], seed + 11, 1.0));
    let dh = HiddenGrad {
        seq: incoming.seq.then_some(&dh_seq),
        last: incoming.last.then_some(&dh_last),
    };
    let f32 = crossmodal::DType::F32;
    let grads = [
        ctx.zeros(&[input, 4 * hidden], f32).unwrap(),
        ctx.zeros(&[hidden, 4 * hidden], f32).unwrap(),
        ctx.zeros(&[4 * hidden], f32).unwrap(),
    ];
    let grads = RecurrentGrads {
        dx: None,
        dw: &grads[0],
        du: &grads[1],
        db: &grads[2],
    };
    let mut dz = Vec::new();
    for path in [Path::Stepwise, Path::Persistent] {
        let bufs = LstmBuffers::new(ctx, dims).unwrap();
        let mut d = forward(ctx, Path::Stepwise, &bufs, &gp);
        d.extend(backward(ctx, path, &grads, dh, &bufs, &gp));
        run(ctx, &d);
        dz.push(ctx.read_f32(&bufs.dz).unwrap());
    }
    assert_close(
        &format!("lstm_sequence_backward dz vs stepwise {dims:?} {kind:?} {incoming:?}"),
        &dz[1],
        &dz[0],
        SEQ_RTOL,
        SEQ_ATOL,
    );
}

/// T=7, B=5, D=6, H=13: no size a multiple of a workgroup or tile; B odd
/// (the persistent kernels' last pair has one sample), sample 4 all padding.
const AWKWARD: RecurrentDims = RecurrentDims {
    steps: 7,
    batch: 5,
    input: 6,
    hidden: 13,
};

/// B=17: the persistent kernels' 9 sample pairs span two workgroups of 8
/// lanes, the last pair has one sample. H=6.
const TWO_GROUPS: RecurrentDims = RecurrentDims {
    steps: 4,
    batch: 17,
    input: 3,
    hidden: 6,
};

/// AWKWARD with H=8: the vec4 persistent kernels (two vec4 of units).
const AWKWARD4: RecurrentDims = RecurrentDims {
    steps: 7,
    batch: 5,
    input: 6,
    hidden: 8,
};

/// TWO_GROUPS with H=12 (three vec4 of units, an odd count).
const TWO_GROUPS4: RecurrentDims = RecurrentDims {
    steps: 4,
    batch: 17,
    input: 3,
    hidden: 12,
};

/// H=68: above the blocked kernels' 64, a multiple of 4 (the pair4
/// backward); B=17 spans two workgroups of sample pairs.
const PAIR4: RecurrentDims = RecurrentDims {
    steps: 3,
    batch: 17,
    input: 3,
    hidden: 68,
};

/// The seed model: tokens[32,100] -> Embedding(10000,32) -> LSTM(64).
const SEED: RecurrentDims = RecurrentDims {
    steps: 100,
    batch: 32,
    input: 32,
    hidden: 64,
};

#[test]
fn lstm_forward_sequence() {
    check_forward_sequence(Path::Default, AWKWARD, Mask::None, 50);
    check_forward_sequence(Path::Default, AWKWARD, Mask::U32, 51);
    check_forward_sequence(Path::Default, AWKWARD, Mask::F32, 52);
}

#[test]
fn lstm_forward_stepwise() {
    check_forward_sequence(Path::Stepwise, AWKWARD, Mask::None, 50);
    check_forward_sequence(Path::Stepwise, AWKWARD, Mask::U32, 51);
    check_forward_sequence(Path::Stepwise, AWKWARD, Mask::F32, 52);
}

#[test]
fn lstm_sequence_forward() {
    check_forward_sequence(Path::Persistent, AWKWARD, Mask::None, 50);
    check_forward_sequence(Path::Persistent, AWKWARD, Mask::U32, 51);
    check_forward_sequence(Path::Persistent, AWKWARD, Mask::F32, 52);
    check_forward_sequence(Path::Persistent, TWO_GROUPS, Mask::U32, 53);
    check_forward_sequence(
        Path::Persistent,
        RecurrentDims::new(3, 1, 2, 7),
        Mask::None,
        54,
    );
}

#[test]
fn lstm_persistent_forms() {
    let Some(ctx) = gpu() else { return };
    let form = |d| op::persistent_form(ctx, d);
    for d in [AWKWARD, TWO_GROUPS, RecurrentDims::new(3, 1, 2, 7)] {
        assert_eq!(form(d), PersistentForm::Pair, "{d:?}");
    }
    for d in [AWKWARD4, TWO_GROUPS4, SEED, RecurrentDims::new(3, 1, 2, 4)] {
        assert_eq!(form(d), PersistentForm::Blocked, "{d:?}");
    }
    for d in [PAIR4, RecurrentDims::new(2, 3, 2, PERSISTENT_MAX_HIDDEN)] {
        assert_eq!(form(d), PersistentForm::Pair4, "{d:?}");
    }
}

#[test]
fn lstm_sequence_forward_blocked() {
    let p = Path::Persistent;
    check_forward_sequence(p, AWKWARD4, Mask::None, 150);
    check_forward_sequence(p, AWKWARD4, Mask::U32, 151);
    check_forward_sequence(p, AWKWARD4, Mask::F32, 152);
    check_forward_sequence(p, TWO_GROUPS4, Mask::U32, 153);
    check_forward_sequence(p, RecurrentDims::new(3, 1, 2, 4), Mask::None, 154);
    // H = 64 with a partial last workgroup of samples.
    check_forward_sequence(p, RecurrentDims::new(3, 11, 5, 64), Mask::F32, 155);
}

#[test]
fn lstm_sequence_backward_blocked() {
    let p = (Path::Persistent, Path::Persistent);
    check_backward_sequence(p, AWKWARD4, Mask::None, LAST, true, 160);
    check_backward_sequence(p, AWKWARD4, Mask::U32, LAST, true, 161);
    check_backward_sequence(p, AWKWARD4, Mask::F32, SEQ, true, 162);
    check_backward_sequence(p, AWKWARD4, Mask::U32, BOTH, false, 163);
    check_backward_sequence(p, TWO_GROUPS4, Mask::F32, BOTH, true, 164);
    check_backward_sequence(
        p,
        RecurrentDims::new(3, 1, 2, 4),
        Mask::None,
        SEQ,
        true,
        165,
    );
    let h64 = RecurrentDims::new(3, 11, 5, 64);
    check_backward_sequence(p, h64, Mask::U32, BOTH, true, 166);
    let mixed = (Path::Stepwise, Path::Persistent);
    check_backward_sequence(mixed, AWKWARD4, Mask::U32, BOTH, true, 167);
    let mixed = (Path::Persistent, Path::Stepwise);
    check_backward_sequence(mixed, TWO_GROUPS4, Mask::U32, BOTH, true, 168);
    check_dz_against_stepwise(AWKWARD4, Mask::U32, BOTH, 169);
    check_dz_against_stepwise(TWO_GROUPS4, Mask::None, SEQ, 170);
}

#[test]
fn lstm_sequence_backward4() {
    // The pair4 backward (H a multiple of 4 above the blocked kernels' 64);
    // its forward is the scalar pair kernel.
    let p = (Path::Persistent, Path::Persistent);
    check_forward_sequence(Path::Persistent, PAIR4, Mask::U32, 180);
    check_backward_sequence(p, PAIR4, Mask::U32, BOTH, true, 181);
    check_backward_sequence(p, PAIR4, Mask::None, LAST, false, 182);
    check_dz_against_stepwise(PAIR4, Mask::F32, SEQ, 183);
    let max = RecurrentDims::new(2, 3, 2, PERSISTENT_MAX_HIDDEN);
    check_backward_sequence(p, max, Mask::U32, BOTH, true, 184);
}

#[test]
fn lstm_backward_sequence() {
    let d = (Path::Default, Path::Default);
    check_backward_sequence(d, AWKWARD, Mask::None, LAST, true, 60);
    check_backward_sequence(d, AWKWARD, Mask::U32, LAST, true, 61);
    check_backward_sequence(d, AWKWARD, Mask::F32, SEQ, true, 62);
    check_backward_sequence(d, AWKWARD, Mask::U32, BOTH, false, 63);
}

#[test]
fn lstm_backward_stepwise() {
    let s = (Path::Stepwise, Path::Stepwise);
    check_backward_sequence(s, AWKWARD, Mask::None, LAST, true, 60);
    check_backward_sequence(s, AWKWARD, Mask::U32, LAST, true, 61);
    check_backward_sequence(s, AWKWARD, Mask::F32, SEQ, true, 62);
    check_backward_sequence(s, AWKWARD, Mask::U32, BOTH, false, 63);
}

#[test]
fn lstm_sequence_backward() {
    let p = (Path::Persistent, Path::Persistent);
    check_backward_sequence(p, AWKWARD, Mask::None, LAST, true, 60);
    check_backward_sequence(p, AWKWARD, Mask::U32, LAST, true, 61);
    check_backward_sequence(p, AWKWARD, Mask::F32, SEQ, true, 62);
    check_backward_sequence(p, AWKWARD, Mask::U32, BOTH, false, 63);
    check_backward_sequence(p, TWO_GROUPS, Mask::F32, BOTH, true, 64);
    let one = RecurrentDims::new(3, 1, 2, 7);
    check_backward_sequence(p, one, Mask::None, SEQ, true, 65);
    // Either backward consumes either forward's saved state.
    let mixed = (Path::Stepwise, Path::Persistent);
    check_backward_sequence(mixed, AWKWARD, Mask::U32, BOTH, true, 66);
    let mixed = (Path::Persistent, Path::Stepwise);
    check_backward_sequence(mixed, AWKWARD, Mask::U32, BOTH, true, 67);
    check_dz_against_stepwise(AWKWARD, Mask::U32, BOTH, 68);
    check_dz_against_stepwise(TWO_GROUPS, Mask::None, SEQ, 69);
}

#[test]
fn lstm_seed_shape() {
    check_forward_sequence(Path::Persistent, SEED, Mask::U32, 70);
    check_forward_sequence(Path::Stepwise, SEED, Mask::U32, 70);
    let p = (Path::Persistent, Path::Persistent);
    check_backward_sequence(p, SEED, Mask::U32, LAST, true, 71);
    let s = (Path::Stepwise, Path::Stepwise);
    check_backward_sequence(s, SEED, Mask::U32, LAST, true, 71);
    check_dz_against_stepwise(SEED, Mask::U32, BOTH, 72);
}

/// The persistent kernels hold H ≤ PERSISTENT_MAX_HIDDEN units; beyond,
/// they say so and the default launchers fall back to the per-step path.
#[test]
fn lstm_persistent_unsupported() {
    let Some(ctx) = gpu() else { return };
    let dims = RecurrentDims::new(2, 3, 2, PERSISTENT_MAX_HIDDEN + 1);
    let case = Case::new(dims, 75);
    let gp = Uploaded::new(ctx, &case, Mask::U32);
    let bufs = LstmBuffers::new(ctx, dims).unwrap();
    let is_unsupported =
        |r: crossmodal::Result<_>| matches!(r, Err(crossmodal::Error::Unsupported { .. }));
    assert!(is_unsupported(op::lstm_persistent_support(ctx, dims)));
    assert!(is_unsupported(
        op::lstm_sequence_forward(ctx, &bufs, &gp.weights(), gp.mask.as_ref()).map(|_| ())
    ));
    let dh = HiddenGrad {
        seq: None,
        last: Some(&bufs.h_last),
    };
    assert!(is_unsupported(
        op::lstm_sequence_backward(ctx, &bufs, dh, &gp.u, gp.mask.as_ref()).map(|_| ())
    ));
    assert!(
        op::lstm_persistent_support(ctx, RecurrentDims::new(2, 3, 2, PERSISTENT_MAX_HIDDEN))
            .is_ok()
    );
    // The default launcher takes the per-step path and still matches the CPU.
    check_forward_sequence(Path::Default, dims, Mask::U32, 75);
    let fwd = forward(ctx, Path::Default, &bufs, &gp);
    assert_eq!(fwd.len(), 2 * dims.steps, "per-step fallback");
}

// ---------------------------------------------------------------- finite differences

/// loss = Σ w_last·h_T + Σ w_all·h_{1..T}; its gradient wrt h_{1..T} is
/// w_all plus w_last on the last slice.
fn fd_check(masked: bool) {
    let dims = RecurrentDims::new(4, 3, 5, 4);
    let RecurrentDims {
        steps,
        batch,
        input,
        hidden,
    } = dims;
    let g = 4 * hidden;
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
        let st = lstm_forward_cpu(&x.view(), &w.view(), &u.view(), &b.view(), mask);
        let hs = st.h_all.slice(s![1.., .., ..]);
        (&hs * &w_all).sum() + (&st.h_all.index_axis(Axis(0), steps) * &w_last).sum()
    };

    let states = lstm_forward_cpu(&x.view(), &w.view(), &u.view(), &b.view(), mask);
    let mut dh = w_all.clone();
    {
        let mut l = dh.index_axis_mut(Axis(0), steps - 1);
        l += &w_last;
    }
    let mut grads = RecurrentCpuGrads::zeros(dims, g);
    lstm_backward_cpu(
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
    assert_close_f64(
        &format!("lstm dx ({tag})"),
        &grads.dx.into_dyn(),
        &fd_x,
        rtol,
        atol,
    );
    assert_close_f64(
        &format!("lstm dW ({tag})"),
        &grads.dw.into_dyn(),
        &fd_w,
        rtol,
        atol,
    );
    assert_close_f64(
        &format!("lstm dU ({tag})"),
        &grads.du.into_dyn(),
        &fd_u,
        rtol,
        atol,
    );
    assert_close_f64(
        &format!("lstm db ({tag})"),
        &grads.db.into_dyn(),
        &fd_b,
        rtol,
        atol,
    );
}

#[test]
fn lstm_backward_matches_finite_differences() {
    fd_check(false);
    fd_check(true);
}

/// Masked steps pass gradients straight through: a sample masked at every
/// step gets no gradient into x, and h stays at the initial 0.
#[test]
fn lstm_fully_masked_sample_is_inert() {
    let dims = RecurrentDims::new(4, 5, 3, 2);
    let case = Case::new(dims, 90);
    let states = case.forward_cpu(Mask::U32);
    // Sample 4 is all padding in mask_pattern.
    assert!(states.h_all.slice(s![.., 4, ..]).iter().all(|&v| v == 0.0));
    let mut grads = RecurrentCpuGrads::zeros(dims, 8);
    let dh = Array3::<f64>::ones((4, 5, 2));
    let mask = case.mask_cpu(Mask::U32).unwrap();
    lstm_backward_cpu(
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

// ---------------------------------------------------------------- fast CPU reference

/// Nonzero gradients for the references to accumulate onto (they add, `+=`).
fn start_grads(dims: RecurrentDims, seed: u64) -> RecurrentCpuGrads<f64> {
    let RecurrentDims {
        steps,
        batch,
        input,
        hidden,
    } = dims;
    let g = 4 * hidden;
    RecurrentCpuGrads {
        dx: f64v(&arr3([steps, batch, input], seed, 1.0)),
        dw: f64v(&arr2([input, g], seed + 1, 1.0)),
        du: f64v(&arr2([hidden, g], seed + 2, 1.0)),
        db: f64v(&arr1(g, seed + 3, 1.0)),
    }
}

/// `lstm_forward_cpu` / `lstm_backward_cpu` (one batched input projection,
/// steps in place, the halves of a batch of at least `CPU_SPLIT_MIN_BATCH`
/// on two threads, weight gradients as single products over all steps)
/// against the step-by-step `*_naive_cpu` spelling, in f64, with an
/// incoming gradient on every h_t and gradients accumulated onto non-zero
/// values. The forward does the same arithmetic; the gradients sum over
/// steps in another order: rtol and atol 1e-12 cover both.
fn check_fast_matches_naive(dims: RecurrentDims, kind: Mask, seed: u64) {
    let RecurrentDims {
        steps,
        batch,
        hidden,
        ..
    } = dims;
    let case = Case::new(dims, seed);
    let mask = case.mask_cpu(kind);
    let mask = mask.as_ref().map(|m| m.view());
    let mask = mask.as_ref();
    let (x, w, u, b) = (f64v(&case.x), f64v(&case.w), f64v(&case.u), f64v(&case.b));
    let tol = 1e-12;
    let close = |what: &str, got: ndarray::ArrayD<f64>, want: ndarray::ArrayD<f64>| {
        let what = format!("lstm {what}, fast vs naive, {dims:?} mask {kind:?}");
        assert_close_f64(&what, &got, &want, tol, tol);
    };

    let fast = lstm_forward_cpu(&x.view(), &w.view(), &u.view(), &b.view(), mask);
    let naive = lstm_forward_naive_cpu(&x.view(), &w.view(), &u.view(), &b.view(), mask);
    close(
        "gates",
        fast.gates.clone().into_dyn(),
        naive.gates.clone().into_dyn(),
    );
    close(
        "c_all",
        fast.c_all.clone().into_dyn(),
        naive.c_all.clone().into_dyn(),
    );
    close(
        "h_all",
        fast.h_all.clone().into_dyn(),
        naive.h_all.clone().into_dyn(),
    );

    let dh = f64v(&arr3([steps, batch, hidden], seed + 4, 1.0));
    let mut got = start_grads(dims, seed + 5);
    let mut want = got.clone();
    let (xv, wv, uv) = (x.view(), w.view(), u.view());
    lstm_backward_cpu(&mut got, &dh.view(), &fast, &xv, &wv, &uv, mask);
    lstm_backward_naive_cpu(&mut want, &dh.view(), &naive, &xv, &wv, &uv, mask);
    close("dx", got.dx.into_dyn(), want.dx.into_dyn());
    close("dW", got.dw.into_dyn(), want.dw.into_dyn());
    close("dU", got.du.into_dyn(), want.du.into_dyn());
    close("db", got.db.into_dyn(), want.db.into_dyn());
}

#[test]
fn lstm_cpu_fast_matches_naive() {
    check_fast_matches_naive(AWKWARD, Mask::None, 100);
    check_fast_matches_naive(AWKWARD, Mask::U32, 101);
    // B=17: halves of 8 and 9 samples on two threads.
    const { assert!(TWO_GROUPS.batch >= CPU_SPLIT_MIN_BATCH) };
    check_fast_matches_naive(TWO_GROUPS, Mask::None, 102);
    check_fast_matches_naive(TWO_GROUPS, Mask::U32, 103);
    check_fast_matches_naive(SEED, Mask::U32, 104);
}

/// Inputs and gradients in another layout than standard give the same
/// values, bit for bit (they are copied to standard layout where a product
/// needs rows).
#[test]
fn lstm_cpu_any_layout() {
    let dims = TWO_GROUPS;
    let case = Case::new(dims, 110);
    let mask = case.mask_cpu(Mask::U32).unwrap();
    let mask = Some(&mask.view());
    let (x, w, u, b) = (f64v(&case.x), f64v(&case.w), f64v(&case.u), f64v(&case.b));
    let (wv, uv) = (w.view(), u.view());
    // x and dh stored batch-major, viewed time-major.
    let x_bt = x
        .view()
        .permuted_axes([1, 0, 2])
        .as_standard_layout()
        .into_owned();
    let x_odd = x_bt.view().permuted_axes([1, 0, 2]);
    assert!(!x_odd.is_standard_layout());
    let want = lstm_forward_cpu(&x.view(), &wv, &uv, &b.view(), mask);
    let got = lstm_forward_cpu(&x_odd, &wv, &uv, &b.view(), mask);
    assert_eq!(got.gates, want.gates);
    assert_eq!(got.c_all, want.c_all);
    assert_eq!(got.h_all, want.h_all);

    let dh = f64v(&arr3([dims.steps, dims.batch, dims.hidden], 111, 1.0));
    let dh_bt = dh
        .view()
        .permuted_axes([1, 0, 2])
        .as_standard_layout()
        .into_owned();
    let mut want_g = start_grads(dims, 112);
    let mut got_g = want_g.clone();
    // dx in column-major order.
    let mut dx_f = Array3::zeros(got_g.dx.raw_dim().f());
    dx_f.assign(&got_g.dx);
    got_g.dx = dx_f;
    let dh_odd = dh_bt.view().permuted_axes([1, 0, 2]);
    lstm_backward_cpu(&mut got_g, &dh_odd, &got, &x_odd, &wv, &uv, mask);
    lstm_backward_cpu(&mut want_g, &dh.view(), &want, &x.view(), &wv, &uv, mask);
    assert_eq!(got_g.dx, want_g.dx);
    assert_eq!(got_g.dw, want_g.dw);
    assert_eq!(got_g.du, want_g.du);
    assert_eq!(got_g.db, want_g.db);
}

/// The fast CPU reference is bit-identical run to run (the two halves of
/// the batch on two threads included), in f32 on the seed shape.
#[test]
fn lstm_cpu_deterministic() {
    let dims = SEED;
    let case = Case::new(dims, 120);
    let mask = case.mask_cpu(Mask::U32).unwrap();
    let mask = Some(&mask.view());
    let (x, w, u, b) = (case.x.view(), case.w.view(), case.u.view(), case.b.view());
    let dh = arr3([dims.steps, dims.batch, dims.hidden], 121, 1.0);
    let run = || {
        let states = lstm_forward_cpu(&x, &w, &u, &b, mask);
        let mut g = RecurrentCpuGrads::zeros(dims, 4 * dims.hidden);
        lstm_backward_cpu(&mut g, &dh.view(), &states, &x, &w, &u, mask);
        (states.h_all, g.dx, g.dw, g.du, g.db)
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
/// one thread), exactly the states and dx of its samples in the whole run
/// (f32, masked).
#[test]
fn lstm_cpu_split_changes_no_bits() {
    let dims = TWO_GROUPS;
    let case = Case::new(dims, 130);
    let mask = case.mask_cpu(Mask::U32).unwrap();
    let dh = arr3([dims.steps, dims.batch, dims.hidden], 131, 1.0);
    let (w, u, b) = (case.w.view(), case.u.view(), case.b.view());
    let run = |x: ndarray::ArrayView3<f32>,
               dh: ndarray::ArrayView3<f32>,
               mask: ndarray::ArrayView2<bool>| {
        let (steps, batch, input) = x.dim();
        let states = lstm_forward_cpu(&x, &w, &u, &b, Some(&mask));
        let dims = RecurrentDims::new(steps, batch, input, dims.hidden);
        let mut g = RecurrentCpuGrads::zeros(dims, 4 * dims.hidden);
        lstm_backward_cpu(&mut g, &dh, &states, &x, &w, &u, Some(&mask));
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
        assert_eq!(part.gates, whole.gates.slice(s![.., lo..hi, ..]));
        assert_eq!(part.c_all, whole.c_all.slice(s![.., lo..hi, ..]));
        assert_eq!(part.h_all, whole.h_all.slice(s![.., lo..hi, ..]));
        assert_eq!(part_dx, whole_dx.slice(s![.., lo..hi, ..]));
    }
}
