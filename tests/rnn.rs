//! RNN kernels against the CPU reference (the cell kernels one step at a
//! time, whole sequences forward and backward, with masks), and the CPU
//! backward against finite differences in f64.
//!
//! GPU results are compared with the CPU reference computed in f64 from the
//! same f32 inputs, so the tolerance covers the GPU's f32 error only. The
//! checks shared with tests/lstm.rs live in tests/common/recurrent.rs; this
//! file states the RNN's side ([`TestCell`]; weights of Keras-like scale
//! with U's spectral radius below 1, so the f32 error does not grow along
//! 100 steps) and its cell kernels' tests.

mod common;

use common::recurrent::*;
use common::*;
use crossmodal::ops::recurrent::*;
use crossmodal::ops::rnn::*;
use crossmodal::GpuTensor;
use ndarray::{Array2, Array3, ArrayView1, ArrayView2, ArrayView3, Axis, NdFloat};

type C = RnnState;

impl TestCell for RnnState {
    /// h_all `[T+1,B,H]`.
    type States<A: NdFloat> = Array3<A>;
    const W_SCALE: f32 = 1.0;
    const U_SCALE: f32 = 1.0;

    fn forward_cpu<A: NdFloat>(
        x: &ArrayView3<A>,
        w: &ArrayView2<A>,
        u: &ArrayView2<A>,
        b: &ArrayView1<A>,
        mask: Option<&ArrayView2<bool>>,
    ) -> Array3<A> {
        rnn_forward_cpu(x, w, u, b, mask)
    }

    fn forward_naive_cpu<A: NdFloat>(
        x: &ArrayView3<A>,
        w: &ArrayView2<A>,
        u: &ArrayView2<A>,
        b: &ArrayView1<A>,
        mask: Option<&ArrayView2<bool>>,
    ) -> Array3<A> {
        rnn_forward_naive_cpu(x, w, u, b, mask)
    }

    fn backward_cpu<A: NdFloat>(
        grads: &mut RecurrentCpuGrads<A>,
        dh_seq: &ArrayView3<A>,
        h_all: &Array3<A>,
        x: &ArrayView3<A>,
        w: &ArrayView2<A>,
        u: &ArrayView2<A>,
        mask: Option<&ArrayView2<bool>>,
    ) {
        rnn_backward_cpu(grads, dh_seq, &h_all.view(), x, w, u, mask)
    }

    fn forward_shared_cpu<A: NdFloat>(
        x: &ArrayView3<A>,
        w: &ArrayView2<A>,
        u: &ArrayView2<A>,
        b: &ArrayView1<A>,
        mask: Option<&ArrayView2<bool>>,
        shared: usize,
    ) -> (Array3<A>, usize) {
        rnn_forward_shared_cpu(x, w, u, b, mask, shared)
    }

    fn backward_shared_cpu<A: NdFloat>(
        grads: &mut RecurrentCpuGrads<A>,
        dh_seq: &ArrayView3<A>,
        h_all: &Array3<A>,
        x: &ArrayView3<A>,
        w: &ArrayView2<A>,
        u: &ArrayView2<A>,
        mask: Option<&ArrayView2<bool>>,
        shared: usize,
    ) {
        rnn_backward_shared_cpu(grads, dh_seq, &h_all.view(), x, w, u, mask, shared)
    }

    fn backward_naive_cpu<A: NdFloat>(
        grads: &mut RecurrentCpuGrads<A>,
        dh_seq: &ArrayView3<A>,
        h_all: &Array3<A>,
        x: &ArrayView3<A>,
        w: &ArrayView2<A>,
        u: &ArrayView2<A>,
        mask: Option<&ArrayView2<bool>>,
    ) {
        rnn_backward_naive_cpu(grads, dh_seq, &h_all.view(), x, w, u, mask)
    }

    fn saved_cpu<A: NdFloat>(h_all: &Array3<A>) -> Vec<(&'static str, &Array3<A>)> {
        vec![("h_all", h_all)]
    }

    fn saved_gpu(bufs: &RnnBuffers) -> Vec<(&'static str, &GpuTensor)> {
        vec![("h_all", &bufs.h_all)]
    }

    fn map_states<A: NdFloat>(h_all: &Array3<A>, f: impl Fn(&Array3<A>) -> Array3<A>) -> Array3<A> {
        f(h_all)
    }
}

// ---------------------------------------------------------------- cell kernels

/// T=3, B=5, H=13: B*H = 65, one past the 64-lane workgroup.
const CELL_DIMS: RecurrentDims = RecurrentDims {
    steps: 3,
    batch: 5,
    input: 1,
    hidden: 13,
};

fn check_cell_forward(step: usize, kind: Mask) {
    let Some(ctx) = gpu() else { return };
    let dims = CELL_DIMS;
    let (t_n, b_n, h_n) = (dims.steps, dims.batch, dims.hidden);
    let bufs = RnnBuffers::new(ctx, dims).unwrap();
    let z = arr3([t_n, b_n, h_n], 20, 3.0);
    let bias = arr1(h_n, 21, 1.0);
    let h_all = arr3([t_n + 1, b_n, h_n], 23, 1.0);
    let h_last0 = arr2([b_n, h_n], 25, 1.0);
    for (buf, val) in [
        (&bufs.z, flat32(&z)),
        (&bufs.h_all, flat32(&h_all)),
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
    let h = rnn_cell_forward_cpu(
        &f64v(&z).index_axis(Axis(0), step),
        &f64v(&bias).view(),
        &f64v(&h_all).index_axis(Axis(0), step),
        (kind != Mask::None).then_some(&mrow),
    );
    // Only step t's slot changes.
    let mut want_h = f64v(&h_all);
    want_h.index_axis_mut(Axis(0), step + 1).assign(&h);
    let want_last = if step + 1 == t_n { h } else { f64v(&h_last0) };
    let what = |s: &str| format!("rnn_cell_forward step {step} {kind:?}: {s}");
    // tanh differs by a few ulps between implementations.
    let (rtol, atol) = (1e-5, 1e-6);
    let read = |t: &GpuTensor| ctx.read_f32(t).unwrap();
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
fn rnn_cell_forward() {
    check_cell_forward(0, Mask::None);
    check_cell_forward(1, Mask::U32);
    check_cell_forward(2, Mask::F32);
    check_cell_forward(2, Mask::None);
}

fn check_cell_backward(step: usize, kind: Mask, seq: bool, last: bool) {
    let Some(ctx) = gpu() else { return };
    let dims = CELL_DIMS;
    let (t_n, b_n, h_n) = (dims.steps, dims.batch, dims.hidden);
    let bufs = RnnBuffers::new(ctx, dims).unwrap();
    // Saved h in (-1,1), as tanh leaves it.
    let h_all = arr3([t_n + 1, b_n, h_n], 32, 1.0);
    let dz0 = arr3([t_n, b_n, h_n], 33, 1.0);
    let dh_carry = arr2([b_n, h_n], 34, 1.0);
    let dh_seq = arr3([t_n, b_n, h_n], 36, 1.0);
    let dh_last = arr2([b_n, h_n], 37, 1.0);
    for (buf, val) in [
        (&bufs.h_all, flat32(&h_all)),
        (&bufs.dz, flat32(&dz0)),
        (&bufs.dh_carry, flat32(&dh_carry)),
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

    // The carry from step t+1 does not exist on the last step.
    let first = step + 1 == t_n;
    let mut dh_in = if first {
        Array2::zeros((b_n, h_n))
    } else {
        f64v(&dh_carry)
    };
    if seq {
        dh_in += &f64v(&dh_seq).index_axis(Axis(0), step);
    }
    if first && last {
        dh_in += &f64v(&dh_last);
    }
    let mb = mask_bool(&mask, t_n, b_n);
    let mrow = mb.row(step);
    let cell = rnn_cell_backward_cpu(
        &dh_in.view(),
        &f64v(&h_all).index_axis(Axis(0), step + 1),
        (kind != Mask::None).then_some(&mrow),
    );
    let mut want_dz = f64v(&dz0);
    want_dz.index_axis_mut(Axis(0), step).assign(&cell.dz);
    let what =
        |s: &str| format!("rnn_cell_backward step {step} {kind:?} seq {seq} last {last}: {s}");
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
}

#[test]
fn rnn_cell_backward() {
    check_cell_backward(2, Mask::U32, true, true);
    check_cell_backward(2, Mask::None, false, true);
    check_cell_backward(1, Mask::F32, true, false);
    check_cell_backward(0, Mask::U32, true, true);
    check_cell_backward(0, Mask::None, false, true);
}

// ---------------------------------------------------------------- sequences

#[test]
fn rnn_forward_sequence() {
    forward_sequence_cases::<C>(Path::Default);
}

#[test]
fn rnn_forward_stepwise() {
    forward_sequence_cases::<C>(Path::Stepwise);
}

#[test]
fn rnn_sequence_forward() {
    sequence_forward_cases::<C>();
}

#[test]
fn rnn_backward_sequence() {
    backward_sequence_cases::<C>((Path::Default, Path::Default));
}

#[test]
fn rnn_backward_stepwise() {
    backward_sequence_cases::<C>((Path::Stepwise, Path::Stepwise));
}

#[test]
fn rnn_sequence_backward() {
    sequence_backward_cases::<C>();
}

#[test]
fn rnn_seed_shape() {
    seed_shape_cases::<C>();
}

#[test]
fn rnn_persistent_unsupported() {
    persistent_unsupported_cases::<C>();
}

// ---------------------------------------------------------------- CPU reference

#[test]
fn rnn_backward_matches_finite_differences() {
    fd_check::<C>(false);
    fd_check::<C>(true);
}

#[test]
fn rnn_fully_masked_sample_is_inert() {
    fully_masked_sample_is_inert::<C>();
}

#[test]
fn rnn_cpu_masked_steps_match_naive() {
    masked_steps_match_naive::<C>();
}

#[test]
fn rnn_cpu_fast_matches_naive() {
    fast_matches_naive_cases::<C>();
}

#[test]
fn rnn_cpu_shared_steps_match_naive() {
    shared_steps_match_naive::<C>();
}

#[test]
fn rnn_cpu_any_layout() {
    cpu_any_layout::<C>();
}

#[test]
fn rnn_cpu_deterministic() {
    cpu_deterministic::<C>();
}

#[test]
fn rnn_cpu_split_changes_no_bits() {
    cpu_split_changes_no_bits::<C>();
}
