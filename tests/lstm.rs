//! LSTM kernels against the CPU reference (the gate kernels one step at a
//! time, whole sequences forward and backward, with masks; the persistent
//! kernels in each form: pair (any H), pair4 (backward, H a multiple of 4
//! above 64) and blocked (H a multiple of 4 up to 64)), and the CPU
//! backward against finite differences in f64.
//!
//! GPU results are compared with the CPU reference computed in f64 from the
//! same f32 inputs, so the tolerance covers the GPU's f32 error only. The
//! checks shared with tests/rnn.rs live in tests/common/recurrent.rs; this
//! file states the LSTM's side ([`TestCell`]) and its own kernels' tests.

mod common;

use common::recurrent::*;
use common::*;
use crossmodal::ops::lstm::{self as op, *};
use crossmodal::ops::recurrent::*;
use crossmodal::{GpuContext, GpuTensor};
use ndarray::{s, Array2, Array3, ArrayView1, ArrayView2, ArrayView3, Axis, NdFloat};

type C = LstmState;

impl TestCell for LstmState {
    type States<A: NdFloat> = LstmStates<A>;
    const W_SCALE: f32 = 2.0;
    const U_SCALE: f32 = 2.0;

    fn forward_cpu<A: NdFloat>(
        x: &ArrayView3<A>,
        w: &ArrayView2<A>,
        u: &ArrayView2<A>,
        b: &ArrayView1<A>,
        mask: Option<&ArrayView2<bool>>,
    ) -> LstmStates<A> {
        lstm_forward_cpu(x, w, u, b, mask)
    }

    fn forward_naive_cpu<A: NdFloat>(
        x: &ArrayView3<A>,
        w: &ArrayView2<A>,
        u: &ArrayView2<A>,
        b: &ArrayView1<A>,
        mask: Option<&ArrayView2<bool>>,
    ) -> LstmStates<A> {
        lstm_forward_naive_cpu(x, w, u, b, mask)
    }

    fn backward_cpu<A: NdFloat>(
        grads: &mut RecurrentCpuGrads<A>,
        dh_seq: &ArrayView3<A>,
        states: &LstmStates<A>,
        x: &ArrayView3<A>,
        w: &ArrayView2<A>,
        u: &ArrayView2<A>,
        mask: Option<&ArrayView2<bool>>,
    ) {
        lstm_backward_cpu(grads, dh_seq, states, x, w, u, mask)
    }

    fn forward_shared_cpu<A: NdFloat>(
        x: &ArrayView3<A>,
        w: &ArrayView2<A>,
        u: &ArrayView2<A>,
        b: &ArrayView1<A>,
        mask: Option<&ArrayView2<bool>>,
        shared: usize,
    ) -> (LstmStates<A>, usize) {
        let states = lstm_forward_shared_cpu(x, w, u, b, mask, shared);
        let shared = states.shared;
        (states, shared)
    }

    fn backward_shared_cpu<A: NdFloat>(
        grads: &mut RecurrentCpuGrads<A>,
        dh_seq: &ArrayView3<A>,
        states: &LstmStates<A>,
        x: &ArrayView3<A>,
        w: &ArrayView2<A>,
        u: &ArrayView2<A>,
        mask: Option<&ArrayView2<bool>>,
        shared: usize,
    ) {
        assert_eq!(states.shared, shared, "the states record the shared steps");
        lstm_backward_cpu(grads, dh_seq, states, x, w, u, mask)
    }

    fn backward_naive_cpu<A: NdFloat>(
        grads: &mut RecurrentCpuGrads<A>,
        dh_seq: &ArrayView3<A>,
        states: &LstmStates<A>,
        x: &ArrayView3<A>,
        w: &ArrayView2<A>,
        u: &ArrayView2<A>,
        mask: Option<&ArrayView2<bool>>,
    ) {
        lstm_backward_naive_cpu(grads, dh_seq, states, x, w, u, mask)
    }

    fn saved_cpu<A: NdFloat>(s: &LstmStates<A>) -> Vec<(&'static str, &Array3<A>)> {
        vec![
            ("h_all", &s.h_all),
            ("c_all", &s.c_all),
            ("gates", &s.gates),
        ]
    }

    fn saved_gpu(bufs: &LstmBuffers) -> Vec<(&'static str, &GpuTensor)> {
        vec![
            ("h_all", &bufs.h_all),
            ("c_all", &bufs.cell.c_all),
            ("gates", &bufs.cell.gates),
        ]
    }

    fn map_states<A: NdFloat>(
        s: &LstmStates<A>,
        f: impl Fn(&Array3<A>) -> Array3<A>,
    ) -> LstmStates<A> {
        LstmStates {
            gates: f(&s.gates),
            c_all: f(&s.c_all),
            h_all: f(&s.h_all),
            shared: s.shared,
        }
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
        (&bufs.cell.c_all, flat32(&c_all)),
        (&bufs.h_all, flat32(&h_all)),
        (&bufs.cell.gates, flat32(&gates0)),
        (&bufs.h_last, flat32(&h_last0)),
    ] {
        ctx.write_f32(buf, &val).unwrap();
    }
    let mask = mask_pattern(t_n, b_n);
    let gmask = upload_mask(ctx, kind, &mask, t_n, b_n);
    let gbias = up(ctx, &bias);
    run(
        ctx,
        &[recurrent_cell_forward(ctx, &bufs, &gbias, gmask.as_ref(), step).unwrap()],
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
        &read(&bufs.cell.gates),
        &flat(&want_gates),
        rtol,
        atol,
    );
    assert_close(
        &what("c_all"),
        &read(&bufs.cell.c_all),
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
        (&bufs.cell.gates, flat32(&gates)),
        (&bufs.cell.c_all, flat32(&c_all)),
        (&bufs.dz, flat32(&dz0)),
        (&bufs.dh_carry, flat32(&dh_carry)),
        (&bufs.cell.dc_carry, flat32(&dc_carry)),
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
        &[recurrent_cell_backward(ctx, &bufs, dh, gmask.as_ref(), step).unwrap()],
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
        &read(&bufs.cell.dc_carry),
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

#[test]
fn lstm_forward_sequence() {
    forward_sequence_cases::<C>(Path::Default);
}

#[test]
fn lstm_forward_stepwise() {
    forward_sequence_cases::<C>(Path::Stepwise);
}

#[test]
fn lstm_sequence_forward() {
    sequence_forward_cases::<C>();
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
    check_forward_sequence::<C>(p, AWKWARD4, Mask::None, 150);
    check_forward_sequence::<C>(p, AWKWARD4, Mask::U32, 151);
    check_forward_sequence::<C>(p, AWKWARD4, Mask::F32, 152);
    check_forward_sequence::<C>(p, TWO_GROUPS4, Mask::U32, 153);
    check_forward_sequence::<C>(p, RecurrentDims::new(3, 1, 2, 4), Mask::None, 154);
    // H = 64 with a partial last workgroup of samples.
    check_forward_sequence::<C>(p, RecurrentDims::new(3, 11, 5, 64), Mask::F32, 155);
}

#[test]
fn lstm_sequence_backward_blocked() {
    let p = (Path::Persistent, Path::Persistent);
    check_backward_sequence::<C>(p, AWKWARD4, Mask::None, LAST, true, 160);
    check_backward_sequence::<C>(p, AWKWARD4, Mask::U32, LAST, true, 161);
    check_backward_sequence::<C>(p, AWKWARD4, Mask::F32, SEQ, true, 162);
    check_backward_sequence::<C>(p, AWKWARD4, Mask::U32, BOTH, false, 163);
    check_backward_sequence::<C>(p, TWO_GROUPS4, Mask::F32, BOTH, true, 164);
    check_backward_sequence::<C>(
        p,
        RecurrentDims::new(3, 1, 2, 4),
        Mask::None,
        SEQ,
        true,
        165,
    );
    let h64 = RecurrentDims::new(3, 11, 5, 64);
    check_backward_sequence::<C>(p, h64, Mask::U32, BOTH, true, 166);
    let mixed = (Path::Stepwise, Path::Persistent);
    check_backward_sequence::<C>(mixed, AWKWARD4, Mask::U32, BOTH, true, 167);
    let mixed = (Path::Persistent, Path::Stepwise);
    check_backward_sequence::<C>(mixed, TWO_GROUPS4, Mask::U32, BOTH, true, 168);
    check_dz_against_stepwise::<C>(AWKWARD4, Mask::U32, BOTH, 169);
    check_dz_against_stepwise::<C>(TWO_GROUPS4, Mask::None, SEQ, 170);
}

#[test]
fn lstm_sequence_backward4() {
    // The pair4 backward (H a multiple of 4 above the blocked kernels' 64);
    // its forward is the scalar pair kernel.
    let p = (Path::Persistent, Path::Persistent);
    check_forward_sequence::<C>(Path::Persistent, PAIR4, Mask::U32, 180);
    check_backward_sequence::<C>(p, PAIR4, Mask::U32, BOTH, true, 181);
    check_backward_sequence::<C>(p, PAIR4, Mask::None, LAST, false, 182);
    check_dz_against_stepwise::<C>(PAIR4, Mask::F32, SEQ, 183);
    let max = RecurrentDims::new(2, 3, 2, PERSISTENT_MAX_HIDDEN);
    check_backward_sequence::<C>(p, max, Mask::U32, BOTH, true, 184);
}

#[test]
fn lstm_backward_sequence() {
    backward_sequence_cases::<C>((Path::Default, Path::Default));
}

#[test]
fn lstm_backward_stepwise() {
    backward_sequence_cases::<C>((Path::Stepwise, Path::Stepwise));
}

#[test]
fn lstm_sequence_backward() {
    sequence_backward_cases::<C>();
}

#[test]
fn lstm_seed_shape() {
    seed_shape_cases::<C>();
}

#[test]
fn lstm_without_subgroups() {
    without_subgroups_cases::<C>();
}

#[test]
fn lstm_persistent_unsupported() {
    persistent_unsupported_cases::<C>();
}

// ---------------------------------------------------------------- CPU reference

#[test]
fn lstm_backward_matches_finite_differences() {
    fd_check::<C>(false);
    fd_check::<C>(true);
}

#[test]
fn lstm_fully_masked_sample_is_inert() {
    fully_masked_sample_is_inert::<C>();
}

#[test]
fn lstm_cpu_masked_steps_match_naive() {
    masked_steps_match_naive::<C>();
}

#[test]
fn lstm_cpu_fast_matches_naive() {
    fast_matches_naive_cases::<C>();
}

#[test]
fn lstm_cpu_shared_steps_match_naive() {
    shared_steps_match_naive::<C>();
}

#[test]
fn lstm_cpu_any_layout() {
    cpu_any_layout::<C>();
}

#[test]
fn lstm_cpu_deterministic() {
    cpu_deterministic::<C>();
}

#[test]
fn lstm_cpu_split_changes_no_bits() {
    cpu_split_changes_no_bits::<C>();
}

// ---------------------------------------------------------------- shared steps

/// The blocked kernels' shared steps (`recurrent_forward_shared`,
/// `recurrent_backward_shared`: the first `shared` steps for sample 0, then
/// the rest for every sample) against the CPU reference's shared steps in
/// f64: every state, and the gradients with dx of a shared step summed in
/// sample 0's row. Then the same dispatches with their params rewritten to
/// share nothing (as the graph executor does per batch) against the plain
/// reference.
fn check_shared_steps(
    ctx: &GpuContext,
    dims: RecurrentDims,
    kind: Mask,
    inc: Incoming,
    shared: usize,
) {
    let RecurrentDims {
        steps,
        batch,
        input,
        hidden,
    } = dims;
    let g = 4 * hidden;
    let mut case = Case::new::<C>(dims, 160);
    for t in 0..shared {
        let first = case.x.slice(s![t, 0, ..]).to_owned();
        for mut row in case.x.index_axis_mut(Axis(0), t).outer_iter_mut() {
            row.assign(&first);
        }
        // Real in every sample, but the second step masked in every one.
        for b in 0..batch {
            case.mask[t * batch + b] = (t != 1) as u32;
        }
    }
    let (x, w, u, b) = (f64v(&case.x), f64v(&case.w), f64v(&case.u), f64v(&case.b));
    let mask = case.mask_cpu(kind);
    let m = mask.as_ref().map(|m| m.view());
    let m = m.as_ref();
    let dh_seq = arr3([steps, batch, hidden], 161, 1.0);
    let dh_last = arr2([batch, hidden], 162, 1.0);
    let mut total = Array3::<f64>::zeros((steps, batch, hidden));
    if inc.seq {
        total += &f64v(&dh_seq);
    }
    if inc.last {
        let mut l = total.index_axis_mut(Axis(0), steps - 1);
        l += &f64v(&dh_last);
    }
    let start = RecurrentCpuGrads {
        dx: f64v(&arr3([steps, batch, input], 163, 1.0)),
        dw: f64v(&arr2([input, g], 164, 1.0)),
        du: f64v(&arr2([hidden, g], 165, 1.0)),
        db: f64v(&arr1(g, 166, 1.0)),
    };

    let bufs = LstmBuffers::new(ctx, dims).unwrap();
    let gp = Uploaded::new(ctx, &case, kind);
    let (gseq, glast) = (up(ctx, &dh_seq), up(ctx, &dh_last));
    let upf = |a: &ndarray::ArrayD<f64>| up(ctx, &a.mapv(|v| v as f32));
    let gdx = upf(&start.dx.clone().into_dyn());
    let gdw = upf(&start.dw.clone().into_dyn());
    let gdu = upf(&start.du.clone().into_dyn());
    let gdb = upf(&start.db.clone().into_dyn());
    let carry = ctx
        .zeros(&[shared_carry_len(dims, 4)], crossmodal::DType::F32)
        .unwrap();
    let grads = RecurrentGrads {
        dx: Some(&gdx),
        dw: Some(&gdw),
        du: &gdu,
        db: &gdb,
    };
    let dh = HiddenGrad {
        seq: inc.seq.then_some(&gseq),
        last: inc.last.then_some(&glast),
    };
    let weights = gp.weights();
    let fwd =
        recurrent_forward_shared(ctx, &bufs, &gp.x, &weights, gp.mask.as_ref(), shared).unwrap();
    let bwd = recurrent_backward_shared(
        ctx,
        &grads,
        dh,
        &bufs,
        &gp.x,
        &weights,
        gp.mask.as_ref(),
        &carry,
        shared,
    )
    .unwrap();
    let read = |t: &GpuTensor| ctx.read_f32(t).unwrap();
    let (rtol, atol) = (SEQ_RTOL, SEQ_ATOL);
    let mut before = start.clone();
    for share in [shared, 0] {
        set_shared_steps(ctx, dims, [&fwd[1], &fwd[2]], share).unwrap();
        set_shared_backward(ctx, dims, &bwd, share, kind != Mask::None).unwrap();
        let refs: Vec<_> = fwd.iter().chain(&bwd).collect();
        ctx.run(&refs).unwrap();

        let states = lstm_forward_shared_cpu(&x.view(), &w.view(), &u.view(), &b.view(), m, share);
        assert_eq!(states.shared, share);
        let mut want = before.clone();
        lstm_backward_cpu(
            &mut want,
            &total.view(),
            &states,
            &x.view(),
            &w.view(),
            &u.view(),
            m,
        );
        let what = |q: &str| format!("lstm {dims:?} {kind:?} {inc:?}, {share} shared steps: {q}");
        assert_close(
            &what("h_all"),
            &read(&bufs.h_all),
            &flat(&states.h_all),
            rtol,
            atol,
        );
        assert_close(
            &what("c_all"),
            &read(&bufs.cell.c_all),
            &flat(&states.c_all),
            rtol,
            atol,
        );
        assert_close(&what("dx"), &read(&gdx), &flat(&want.dx), rtol, atol);
        assert_close(&what("dW"), &read(&gdw), &flat(&want.dw), rtol, atol);
        assert_close(&what("dU"), &read(&gdu), &flat(&want.du), rtol, atol);
        assert_close(&what("db"), &read(&gdb), &flat(&want.db), rtol, atol);
        // The next run accumulates onto what this one left.
        let back = |t: &GpuTensor, shape: &[usize]| {
            ndarray::ArrayD::from_shape_vec(shape, read(t))
                .unwrap()
                .mapv(|v| v as f64)
        };
        before = RecurrentCpuGrads {
            dx: back(&gdx, &[steps, batch, input])
                .into_dimensionality()
                .unwrap(),
            dw: back(&gdw, &[input, g]).into_dimensionality().unwrap(),
            du: back(&gdu, &[hidden, g]).into_dimensionality().unwrap(),
            db: back(&gdb, &[g]).into_dimensionality().unwrap(),
        };
    }
}

#[test]
fn lstm_shared_steps() {
    let last = Incoming {
        seq: false,
        last: true,
    };
    let Some(ctx) = gpu() else { return };
    // 13 samples: two workgroups of 8, the second partly empty; H = 8.
    let awkward = RecurrentDims {
        steps: 9,
        batch: 13,
        input: 3,
        hidden: 8,
    };
    assert!(recurrent_shares_steps::<C>(ctx, awkward));
    check_shared_steps(ctx, awkward, Mask::None, BOTH, 5);
    check_shared_steps(ctx, awkward, Mask::U32, last, 3);
    check_shared_steps(ctx, SEED, Mask::None, last, 70);
    // Forms that do not share steps say so.
    let pair = RecurrentDims {
        hidden: 5,
        ..awkward
    };
    assert!(!recurrent_shares_steps::<C>(ctx, pair));
    let bufs = LstmBuffers::new(ctx, pair).unwrap();
    let case = Case::new::<C>(pair, 1);
    let gp = Uploaded::new(ctx, &case, Mask::None);
    let err = recurrent_forward_shared(ctx, &bufs, &gp.x, &gp.weights(), None, 2).unwrap_err();
    assert!(err.to_string().contains("blocked"), "{err}");
    let bufs = LstmBuffers::new(ctx, awkward).unwrap();
    let case = Case::new::<C>(awkward, 1);
    let gp = Uploaded::new(ctx, &case, Mask::None);
    let err = recurrent_forward_shared(ctx, &bufs, &gp.x, &gp.weights(), None, 9).unwrap_err();
    assert!(err.to_string().contains("T - 1"), "{err}");
}
