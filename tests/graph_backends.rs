//! The two backends on the same graphs: the GPU executor (`graph::gpu`)
//! against the CPU executor (`graph::cpu`, the ndarray references).
//!
//! - The small seed model, with and without masking, pre-padded tokens:
//!   the loss, every parameter gradient, inspected values and gradients,
//!   and the probabilities of `predict` against `CpuExecutor<f64>`, whose
//!   gradients tests/graph_cpu.rs checks elementwise against central finite
//!   differences; here, on the very batch compared, a directional central
//!   difference of its f64 loss per parameter checks them again.
//! - Training: a few Adam and SGD-momentum steps on both backends from the
//!   same initial parameters; the loss curves and the final parameters
//!   against `CpuExecutor<f32>` (both f32 arithmetic, different summation
//!   orders: small drift).
//! - Graphs the seed model does not cover (a sequence-returning LSTM into a
//!   masked SimpleRNN; convolutions with tanh, average pooling and a value
//!   used three times): loss and every parameter gradient against
//!   `CpuExecutor<f64>`.
//! - Gradient clipping by global norm, with a clip small enough to act on
//!   every step: Adam and SGD steps on both backends, the clipped gradients
//!   and the norm the GPU computed.
//! - Dropout (on an input and on a hidden layer): gradients with the same
//!   masks, training steps with a new mask each step (the same bits on both
//!   backends), the identity at inference.
//!
//! Each comparison prints its largest errors (`--nocapture`) so the stated
//! tolerances can be checked against what is observed.

mod common;
mod graph_common;

use common::{assert_close, gpu, random};
use crossmodal::graph::gpu::{ExecOptions, GpuExecutor};
use crossmodal::graph::init::init_params;
use crossmodal::graph::{
    Batch, CpuExecutor, Executor, Graph, HostData, NodeId, Op, Optimizer, TrainConfig,
};
use crossmodal::nn::{self, seed_model, SeedConfig};
use crossmodal::ops::activation::Activation;
use crossmodal::ops::dropout::{dropout_mask_cpu, Dropout};
use crossmodal::ops::lstm::{persistent_form, PersistentForm};
use crossmodal::ops::recurrent::RecurrentDims;
use crossmodal::optim::{adam::AdamConfig, sgd::SgdConfig};
use crossmodal::DType;
use graph_common::{
    conv_stack_with_shared_value, input, late_fusion, sequence_lstm_into_masked_rnn, small, Case,
    SeedData,
};
use ndarray::ArrayD;

fn f32s(a: &ArrayD<f64>) -> Vec<f32> {
    a.iter().map(|&v| v as f32).collect()
}

fn max_abs(v: &[f32]) -> f32 {
    v.iter().fold(0.0f32, |m, x| m.max(x.abs()))
}

/// `assert_close` that also prints the largest absolute error and the
/// largest relative error (over entries above the absolute floor).
fn check(what: &str, got: &[f32], want: &[f32], rtol: f32, atol: f32) {
    let mut abs = 0.0f32;
    let mut rel = 0.0f32;
    for (&g, &w) in got.iter().zip(want) {
        let e = (g - w).abs();
        abs = abs.max(e);
        if w.abs() > atol {
            rel = rel.max(e / w.abs());
        }
    }
    eprintln!("{what}: max abs error {abs:.2e}, max rel error {rel:.2e} (rtol {rtol:.0e}, atol {atol:.1e})");
    assert_close(what, got, want, rtol, atol);
}

/// Gradients, f32 (GPU) against f64 (CPU): rtol 1e-4 with an absolute floor
/// of 1e-5 of the gradient's largest entry, for entries that cancel (seen on
/// lavapipe: relative errors up to 9e-5 above the floor; up to 5e-4 on tiny
/// entries of the recurrent kernel's gradient, all within the floor).
const GRAD_RTOL: f32 = 1e-4;
const GRAD_FLOOR: f32 = 1e-5;

/// Every parameter gradient of `got` (GPU, `Graph::params` order) against
/// the CPU executor's after its last backward.
fn check_gradients(what: &str, g: &Graph, got: &[Vec<f32>], cpu: &CpuExecutor<f64>) {
    for (k, &p) in g.params().iter().enumerate() {
        let name = &g.node(p).name;
        let want = f32s(cpu.grad(p).unwrap());
        assert!(
            want.iter().any(|&v| v != 0.0),
            "{what} {name}: the gradient is all zero, the check would prove nothing"
        );
        let floor = GRAD_FLOOR * max_abs(&want);
        check(&format!("{what} {name}"), &got[k], &want, GRAD_RTOL, floor);
    }
}

/// One gradient pass on both backends from their current parameters: the
/// GPU loss against the CPU's (rtol 1e-5) and every parameter gradient
/// ([`check_gradients`]). Returns the CPU loss, the GPU loss and the GPU
/// gradients.
fn check_gradient_pass(
    what: &str,
    g: &Graph,
    cpu: &mut CpuExecutor<f64>,
    ex: &mut GpuExecutor<'_>,
    batch: &Batch,
) -> (f64, f32, Vec<Vec<f32>>) {
    let want_loss = cpu.run_gradients(batch).unwrap();
    let (loss, grads) = ex.gradients(batch).unwrap();
    check(
        &format!("{what} loss"),
        &[loss],
        &[want_loss as f32],
        1e-5,
        0.0,
    );
    check_gradients(what, g, &grads, cpu);
    (want_loss, loss, grads)
}

/// Each parameter gradient of `cpu` (after its last backward) against a
/// directional central difference of its f64 loss: for a random unit
/// direction v, `(L(p + εv) - L(p - εv)) / 2ε` against `g·v`. ε = 1e-5:
/// truncation (~ε²) and rounding (~1e-16/ε) stay far below rtol 1e-6.
fn check_cpu_directional(what: &str, g: &Graph, cpu: &mut CpuExecutor<f64>, batch: &Batch) {
    check_cpu_directional_loss(what, g, cpu, batch, |cpu, b| cpu.run_loss(b).unwrap());
}

/// As [`check_cpu_directional`], differentiating `loss` (the training loss
/// where dropout masks matter).
fn check_cpu_directional_loss(
    what: &str,
    g: &Graph,
    cpu: &mut CpuExecutor<f64>,
    batch: &Batch,
    loss: impl Fn(&mut CpuExecutor<f64>, &Batch) -> f64,
) {
    let eps = 1e-5;
    for (k, &p) in g.params().iter().enumerate() {
        let name = &g.node(p).name;
        let grad = cpu.grad(p).unwrap().clone();
        let w = cpu.value_array(p).unwrap().clone();
        let v = random(&[w.len()], 300 + k as u64).mapv(|x| x as f64);
        let v = &v / v.iter().map(|x| x * x).sum::<f64>().sqrt();
        let at =
            |sign: f64| -> Vec<f64> { w.iter().zip(&v).map(|(a, b)| a + sign * eps * b).collect() };
        cpu.set_param_array(p, &at(1.0)).unwrap();
        let plus = loss(cpu, batch);
        cpu.set_param_array(p, &at(-1.0)).unwrap();
        let minus = loss(cpu, batch);
        cpu.set_param_array(p, w.as_slice().unwrap()).unwrap();
        let fd = (plus - minus) / (2.0 * eps);
        let analytic: f64 = grad.iter().zip(&v).map(|(a, b)| a * b).sum();
        assert!(
            (fd - analytic).abs() <= 1e-6 * analytic.abs() + 1e-10,
            "{what} {name}: finite difference {fd} vs gradient·v {analytic}"
        );
    }
    // Back to the state of the gradient pass (values for inspection).
    cpu.run_gradients(batch).unwrap();
}

#[test]
fn seed_model_matches_the_cpu_executor() {
    let Some(ctx) = gpu() else { return };
    // 5 LSTM units: the pair persistent kernels; 8: the blocked ones (the
    // seed's own 64 units take that form too).
    for (mask, units, form) in [
        (true, 5, PersistentForm::Pair),
        (false, 5, PersistentForm::Pair),
        (true, 8, PersistentForm::Blocked),
        (false, 8, PersistentForm::Blocked),
    ] {
        let c = SeedConfig {
            lstm_units: units,
            ..small(mask)
        };
        let dims = RecurrentDims::new(c.seq_len, c.batch, c.embed_dim, units);
        assert_eq!(persistent_form(ctx, dims), form);
        let m = seed_model(&c).unwrap();
        let g = &m.graph;
        let init = init_params(g, 3);
        let batch = SeedData::new(&c, 5).batch(&m);
        let what = |s: &str| format!("{s} (mask {mask}, {units} units)");

        let mut cpu = CpuExecutor::<f64>::new(g, m.loss, &init, TrainConfig::default()).unwrap();
        let inspect = ["lstm", "conv", "concat"].map(|n| g.expect_id(n).unwrap());
        let mut ex = GpuExecutor::with_options(
            ctx,
            g,
            m.loss,
            &init,
            TrainConfig::default(),
            ExecOptions {
                inspect: inspect.to_vec(),
                ..ExecOptions::default()
            },
        )
        .unwrap();

        let (_, loss, grads) = check_gradient_pass(&what("gradient"), g, &mut cpu, &mut ex, &batch);
        check_cpu_directional(&what("cpu"), g, &mut cpu, &batch);
        if mask {
            // Padding steps reach nothing: the padding row gets exactly 0.
            let dims = c.embed_dim;
            assert!(
                grads[0][..dims].iter().all(|&v| v == 0.0),
                "{}",
                what("the padding row of the table has a gradient")
            );
        }

        // Inspected values and gradients survive the backward pass.
        for node in inspect {
            let name = &g.node(node).name;
            let want = f32s(cpu.value_array(node).unwrap());
            check(
                &what(&format!("{name} value")),
                &ex.value(node).unwrap(),
                &want,
                1e-5,
                1e-6,
            );
            let want = f32s(cpu.grad(node).unwrap());
            let floor = GRAD_FLOOR * max_abs(&want);
            check(
                &what(&format!("{name} gradient")),
                &ex.gradient_of(node).unwrap(),
                &want,
                GRAD_RTOL,
                floor,
            );
        }
        // On the GPU d loss / d h_T is exactly the first block of
        // d loss / d concat (a copy, no arithmetic).
        let dcat = ex.gradient_of(g.expect_id("concat").unwrap()).unwrap();
        let dh = ex.gradient_of(g.expect_id("lstm").unwrap()).unwrap();
        let cols = dcat.len() / c.batch;
        let first: Vec<f32> = (0..c.batch)
            .flat_map(|r| dcat[r * cols..r * cols + c.lstm_units].to_vec())
            .collect();
        assert_eq!(
            dh, first,
            "the LSTM's gradient is its block of the concat's"
        );

        // A forward-only loss is the loss of the gradient pass, bit for bit.
        assert_eq!(ex.loss(&batch).unwrap().to_bits(), loss.to_bits());
        let probs = ex.predict(&batch, m.probs).unwrap();
        let want = cpu.predict(&batch, m.probs).unwrap();
        check(&what("probabilities"), &probs, &want, 1e-5, 1e-6);
        for row in probs.chunks(c.classes) {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5, "{row:?}");
        }
    }
}

/// The embedding feeding the LSTM alone: the GPU executor computes dW and
/// the table's gradient per chunk of equal tokens. With 360 positions over
/// 6 tokens the runs pass the 64-position chunk length (cut in several
/// chunks), padding included; widths 5 (scalar kernels) and 8 (vec4), with
/// and without the mask. Every gradient against the f64 CPU executor,
/// which sums per position.
#[test]
fn chunked_embedding_gradients_match_the_cpu_executor() {
    let Some(ctx) = gpu() else { return };
    for (mask, embed_dim) in [(true, 5), (false, 8)] {
        let c = SeedConfig {
            batch: 12,
            seq_len: 30,
            vocab: 6,
            embed_dim,
            ..small(mask)
        };
        let m = seed_model(&c).unwrap();
        let g = &m.graph;
        let init = init_params(g, 4);
        let data = SeedData::new(&c, 7);
        let longest = (0..c.vocab as u32)
            .map(|t| data.tokens.iter().filter(|&&v| v == t).count())
            .max()
            .unwrap();
        assert!(longest > 64, "no token fills a whole chunk: {longest}");
        let batch = data.batch(&m);
        let what = format!("chunked embedding (mask {mask}, width {embed_dim})");
        let mut cpu = CpuExecutor::<f64>::new(g, m.loss, &init, TrainConfig::default()).unwrap();
        let mut ex = GpuExecutor::new(ctx, g, m.loss, &init, TrainConfig::default()).unwrap();
        assert!(
            ex.train_schedule()
                .iter()
                .any(|d| d.entry.starts_with("segment_sum")),
            "{what}: the chunked path is not in the schedule"
        );
        check_gradient_pass(&what, g, &mut cpu, &mut ex, &batch);
        // A second batch with other chunk counts reuses the dispatches.
        let batch = SeedData::new(&c, 8).batch(&m);
        check_gradient_pass(&format!("{what}, batch 2"), g, &mut cpu, &mut ex, &batch);
    }
}

/// Every sample padded by at least `pad` steps: an LSTM whose kernels
/// share steps (H = 8: the blocked kernels) runs them once on the GPU, as
/// the CPU executor does; every gradient against the f64 CPU executor, on
/// two batches in the same executor (4 shared steps, then none).
#[test]
fn shared_padding_steps_match_the_cpu_executor() {
    let Some(ctx) = gpu() else { return };
    for mask in [false, true] {
        let c = SeedConfig {
            batch: 12,
            seq_len: 30,
            vocab: 6,
            embed_dim: 8,
            lstm_units: 8,
            ..small(mask)
        };
        let m = seed_model(&c).unwrap();
        let g = &m.graph;
        let lstm = g.expect_id("lstm").unwrap();
        let init = init_params(g, 6);
        let mut cpu = CpuExecutor::<f64>::new(g, m.loss, &init, TrainConfig::default()).unwrap();
        let mut ex = GpuExecutor::new(ctx, g, m.loss, &init, TrainConfig::default()).unwrap();
        for (pads, shared) in [([4, 9, 6], 4), ([0, 9, 6], 0)] {
            let mut data = SeedData::new(&c, 13);
            for (i, t) in data.tokens.iter_mut().enumerate() {
                let (step, sample) = (i / c.batch, i % c.batch);
                if step < pads[sample % 3] {
                    *t = 0;
                } else if *t == 0 {
                    *t = 1;
                }
            }
            let what = format!("shared steps (mask {mask}, pads {pads:?})");
            check_gradient_pass(&what, g, &mut cpu, &mut ex, &data.batch(&m));
            assert_eq!(ex.shared_step_counts(), vec![(lstm, shared)], "{what}");
        }
    }
}

/// A batch with few repeated tokens (more chunks than half the positions)
/// runs the per-position dispatches instead of the chunked ones, and the
/// next batch with many repeats the chunked ones again, in the same
/// executor: every gradient against the f64 CPU executor each time.
#[test]
fn chunked_embedding_falls_back_per_position() {
    let Some(ctx) = gpu() else { return };
    let c = SeedConfig {
        batch: 12,
        seq_len: 30,
        vocab: 1000,
        embed_dim: 8,
        ..small(false)
    };
    let m = seed_model(&c).unwrap();
    let g = &m.graph;
    let init = init_params(g, 5);
    let mut cpu = CpuExecutor::<f64>::new(g, m.loss, &init, TrainConfig::default()).unwrap();
    let mut ex = GpuExecutor::new(ctx, g, m.loss, &init, TrainConfig::default()).unwrap();
    let lstm = g.expect_id("lstm").unwrap();
    let positions = c.batch * c.seq_len;
    let mut repeated = SeedData::new(&c, 12);
    repeated.tokens.iter_mut().for_each(|t| *t %= 3);
    for (what, data, chunked) in [
        ("distinct tokens", SeedData::new(&c, 11), false),
        ("repeated tokens", repeated, true),
    ] {
        let batch = data.batch(&m);
        check_gradient_pass(what, g, &mut cpu, &mut ex, &batch);
        let chunks = ex.chunk_counts();
        assert_eq!(chunks.len(), 1);
        assert_eq!(chunks[0].0, lstm);
        assert_eq!(chunks[0].1 * 2 <= positions, chunked, "{what}: {chunks:?}");
        let entries: Vec<&str> = ex.train_schedule().iter().map(|d| d.entry).collect();
        assert_eq!(
            entries.iter().any(|e| e.starts_with("segment_sum")),
            chunked,
            "{what}: {entries:?}"
        );
    }
}

/// Trains both backends for `steps` steps from the same parameters on the
/// same batches (f32 on both); compares the loss of every step (relative),
/// the final parameters and the probabilities after training (absolute).
fn train_both(optimizer: Optimizer, steps: usize, loss_rtol: f32, param_atol: f32) {
    train_both_clipped(optimizer, None, steps, loss_rtol, param_atol)
}

/// The global L2 norm of a set of gradients, in f64.
fn global_norm(grads: &[Vec<f32>]) -> f64 {
    grads
        .iter()
        .flatten()
        .map(|&v| (v as f64) * (v as f64))
        .sum::<f64>()
        .sqrt()
}

/// As [`train_both`], clipping the gradients by global norm at `clip` times
/// the first step's gradient norm, if given: small enough that every step
/// clips, which the test checks on both backends (the GPU's norm before
/// clipping above the clip, the clipped gradients' norm at the clip, the
/// clipped gradients against the CPU's).
fn train_both_clipped(
    optimizer: Optimizer,
    clip: Option<f64>,
    steps: usize,
    loss_rtol: f32,
    param_atol: f32,
) {
    let Some(ctx) = gpu() else { return };
    for mask in [true, false] {
        let c = small(mask);
        let m = seed_model(&c).unwrap();
        let g = &m.graph;
        let init = init_params(g, 9);
        let batches: Vec<_> = (0..3)
            .map(|s| SeedData::new(&c, 200 + 10 * s).batch(&m))
            .collect();
        let clip = clip.map(|factor| {
            let mut probe =
                CpuExecutor::<f32>::new(g, m.loss, &init, TrainConfig::default()).unwrap();
            (factor * global_norm(&probe.gradients(&batches[0]).unwrap().1)) as f32
        });
        let config = TrainConfig {
            optimizer: optimizer.clone(),
            clip_global_norm: clip,
        };
        let mut cpu = CpuExecutor::<f32>::new(g, m.loss, &init, config.clone()).unwrap();
        let mut ex = GpuExecutor::new(ctx, g, m.loss, &init, config).unwrap();
        let what = |s: &str| format!("{optimizer:?} clip {clip:?} {s} (mask {mask})");
        let mut cpu_losses = Vec::new();
        let mut gpu_losses = Vec::new();
        for s in 0..steps {
            let batch = &batches[s % batches.len()];
            cpu_losses.push(cpu.train_step(batch).unwrap());
            gpu_losses.push(ex.train_step(batch).unwrap());
            let Some(clip) = clip else { continue };
            // The parameter gradients after the step are the clipped ones.
            let params = g.params();
            let got: Vec<Vec<f32>> = params.iter().map(|&p| ex.gradient_of(p).unwrap()).collect();
            let want: Vec<Vec<f32>> = params
                .iter()
                .map(|&p| cpu.grad(p).unwrap().iter().copied().collect())
                .collect();
            let norm = ex.last_global_norm().unwrap().unwrap();
            assert!(
                norm > clip,
                "{}: norm {norm}",
                what(&format!("step {s} clips"))
            );
            for (name, grads) in [("GPU", &got), ("CPU", &want)] {
                let n = global_norm(grads) as f32;
                check(
                    &what(&format!("{name} clipped norm, step {s}")),
                    &[n],
                    &[clip],
                    1e-5,
                    0.0,
                );
            }
            for (k, &p) in params.iter().enumerate() {
                let name = &g.node(p).name;
                let floor = GRAD_FLOOR * max_abs(&want[k]);
                // Later steps start from parameters a few ulps apart, which
                // the recurrent kernel's gradient amplifies (seen on
                // lavapipe: relative errors up to 7e-4 above the floor).
                let rtol = if s == 0 { GRAD_RTOL } else { 2e-3 };
                check(
                    &what(&format!("{name} clipped gradient, step {s}")),
                    &got[k],
                    &want[k],
                    rtol,
                    floor.max(1e-6 * clip),
                );
            }
        }
        assert!(
            cpu_losses[steps - 1] < cpu_losses[0],
            "{}: {cpu_losses:?}",
            what("the loss falls")
        );
        check(&what("losses"), &gpu_losses, &cpu_losses, loss_rtol, 0.0);
        for &p in &g.params() {
            let name = &g.node(p).name;
            let (got, want) = (ex.param(p).unwrap(), cpu.param(p).unwrap());
            let start = &init.iter().find(|(id, _)| *id == p).unwrap().1;
            assert_ne!(&want, start, "{}", what(&format!("{name} moved")));
            check(&what(name), &got, &want, 0.0, param_atol);
        }
        let probs = ex.predict(&batches[0], m.probs).unwrap();
        let want = cpu.predict(&batches[0], m.probs).unwrap();
        check(&what("probabilities"), &probs, &want, 0.0, param_atol);
    }
}

#[test]
fn adam_steps_agree() {
    let adam = AdamConfig {
        learning_rate: 0.01,
        ..AdamConfig::default()
    };
    // Seen on lavapipe after 10 steps: losses 2.4e-7 relative, parameters
    // 1.2e-6 (the recurrent kernel; Adam turns small gradient differences
    // into steps of up to lr), probabilities 9e-8.
    train_both(Optimizer::Adam(adam), 10, 2e-6, 1e-5);
}

#[test]
fn clipped_adam_steps_agree() {
    let adam = AdamConfig {
        learning_rate: 0.01,
        ..AdamConfig::default()
    };
    train_both_clipped(Optimizer::Adam(adam), Some(0.2), 10, 2e-6, 1e-5);
}

#[test]
fn clipped_sgd_steps_agree() {
    let sgd = SgdConfig {
        learning_rate: 0.5,
        momentum: 0.9,
        nesterov: false,
    };
    train_both_clipped(Optimizer::Sgd(sgd), Some(0.2), 10, 2e-6, 2e-6);
}

#[test]
fn sgd_momentum_steps_agree() {
    let sgd = SgdConfig {
        learning_rate: 0.1,
        momentum: 0.9,
        nesterov: false,
    };
    // Seen on lavapipe after 10 steps: losses 2.4e-7 relative, parameters
    // and probabilities 1.5e-7.
    train_both(Optimizer::Sgd(sgd), 10, 2e-6, 2e-6);
}

/// Loss and every parameter gradient of `case` on both backends.
fn compare_case(what: &str, case: &Case) {
    let Some(ctx) = gpu() else { return };
    let g = &case.graph;
    let config = TrainConfig::default();
    let mut cpu = CpuExecutor::<f64>::new(g, case.loss, &case.init, config.clone()).unwrap();
    let mut ex = GpuExecutor::new(ctx, g, case.loss, &case.init, config).unwrap();
    check_gradient_pass(what, g, &mut cpu, &mut ex, &case.batch);
    check_cpu_directional(what, g, &mut cpu, &case.batch);
}

#[test]
fn sequence_lstm_into_masked_rnn_matches_the_cpu_executor() {
    compare_case("lstm-rnn", &sequence_lstm_into_masked_rnn());
}

#[test]
fn conv_stack_with_shared_value_matches_the_cpu_executor() {
    compare_case("conv-stack", &conv_stack_with_shared_value());
}

/// x `[5,6]` → Dropout(0.25) → Dense(7, tanh) "h" → Dropout(0.4) "drop" →
/// Dense(3) → loss. The first dropout needs no gradient (its input is
/// data); the second passes one back.
struct DropoutCase {
    graph: Graph,
    loss: NodeId,
    drop_in: NodeId,
    h: NodeId,
    drop: NodeId,
    init: Vec<(NodeId, Vec<f32>)>,
    batches: Vec<Batch>,
}

fn dropout_case() -> DropoutCase {
    let (b, f, classes) = (5, 6, 3);
    let mut g = Graph::new();
    let x = input(&mut g, "x", &[b, f], DType::F32);
    let labels = input(&mut g, "labels", &[b], DType::U32);
    let drop_in = nn::dropout(&mut g, "drop_in", x, 0.25, 11).unwrap();
    let h = nn::dense(&mut g, "h", drop_in, 7, Some(Activation::Tanh)).unwrap();
    let drop = nn::dropout(&mut g, "drop", h, 0.4, 12).unwrap();
    let logits = nn::dense(&mut g, "out", drop, classes, None).unwrap();
    let loss = g
        .add(
            "loss",
            Op::SoftmaxCrossEntropy {
                class_weights: None,
            },
            &[logits, labels],
        )
        .unwrap();
    let mut init = init_params(&g, 8);
    for (id, v) in init.iter_mut() {
        if g.node(*id).name.ends_with(".bias") {
            v.iter_mut()
                .enumerate()
                .for_each(|(i, x)| *x = 0.1 * (i as f32 - 1.0));
        }
    }
    let batches = (0..3)
        .map(|s| {
            Batch::new()
                .with(
                    x,
                    HostData::F32((random(&[b, f], 40 + s) * 2.0).into_raw_vec_and_offset().0),
                )
                .with(
                    labels,
                    HostData::U32(common::random_u32(b, 0, classes as u32, 50 + s)),
                )
        })
        .collect();
    DropoutCase {
        graph: g,
        loss,
        drop_in,
        h,
        drop,
        init,
        batches,
    }
}

fn dropout_layer(g: &Graph, n: NodeId) -> Dropout {
    let Op::Dropout { rate, seed } = g.node(n).op else {
        unreachable!("a dropout node")
    };
    Dropout::new(rate, seed).unwrap()
}

/// Which elements are zero (dropped: the inputs are never exactly 0).
fn zeros(v: &[f32]) -> Vec<bool> {
    v.iter().map(|&x| x == 0.0).collect()
}

#[test]
fn dropout_gradients_match_the_cpu_executor() {
    let Some(ctx) = gpu() else { return };
    let c = dropout_case();
    let g = &c.graph;
    let config = TrainConfig::default();
    let mut cpu = CpuExecutor::<f64>::new(g, c.loss, &c.init, config.clone()).unwrap();
    let mut ex = GpuExecutor::new(ctx, g, c.loss, &c.init, config).unwrap();
    let batch = &c.batches[0];
    // Both use the masks of training step 0.
    let (want_loss, _, _) = check_gradient_pass("dropout", g, &mut cpu, &mut ex, batch);
    // The gradient is that of the training loss (the same masks) ...
    check_cpu_directional_loss("dropout cpu", g, &mut cpu, batch, |cpu, b| {
        cpu.run_training_loss(b).unwrap()
    });
    // ... while the loss at inference has no dropout, and differs.
    let eval = cpu.run_loss(batch).unwrap();
    check(
        "inference loss",
        &[ex.loss(batch).unwrap()],
        &[eval as f32],
        1e-5,
        0.0,
    );
    assert!((eval - want_loss).abs() > 1e-3, "{eval} vs {want_loss}");
}

#[test]
fn dropout_training_steps_agree() {
    let Some(ctx) = gpu() else { return };
    let c = dropout_case();
    let g = &c.graph;
    let config = TrainConfig {
        optimizer: Optimizer::Adam(AdamConfig {
            learning_rate: 0.01,
            ..AdamConfig::default()
        }),
        clip_global_norm: None,
    };
    let mut cpu = CpuExecutor::<f32>::new(g, c.loss, &c.init, config.clone()).unwrap();
    let mut ex = GpuExecutor::with_options(
        ctx,
        g,
        c.loss,
        &c.init,
        config,
        ExecOptions {
            inspect: vec![c.drop_in, c.h, c.drop],
            ..ExecOptions::default()
        },
    )
    .unwrap();
    let (mut cpu_losses, mut gpu_losses) = (Vec::new(), Vec::new());
    let mut previous: Option<Vec<bool>> = None;
    for s in 0..6u32 {
        let batch = &c.batches[s as usize % c.batches.len()];
        cpu_losses.push(cpu.train_step(batch).unwrap());
        gpu_losses.push(ex.train_step(batch).unwrap());
        let mut masks = Vec::new();
        for node in [c.drop_in, c.drop] {
            let name = &g.node(node).name;
            let (got, want) = (ex.value(node).unwrap(), cpu.value(node).unwrap());
            // The same mask bit for bit: that of this step.
            let mask =
                dropout_mask_cpu::<f32>(&dropout_layer(g, node), &g.node(node).value.shape, s);
            let dropped: Vec<bool> = mask.iter().map(|&m| m == 0.0).collect();
            assert_eq!(zeros(&got), dropped, "{name} step {s}: GPU mask");
            assert_eq!(zeros(&want), dropped, "{name} step {s}: CPU mask");
            assert!(dropped.contains(&true) && dropped.contains(&false));
            check(&format!("{name} value, step {s}"), &got, &want, 1e-5, 1e-6);
            masks.extend(dropped);
        }
        if let Some(p) = &previous {
            assert_ne!(p, &masks, "step {s} reused the previous step's masks");
        }
        previous = Some(masks);
    }
    assert_eq!((ex.steps(), cpu.steps()), (6, 6));
    // Seen on lavapipe: f32 on both sides, different summation orders.
    check("dropout losses", &gpu_losses, &cpu_losses, 2e-6, 0.0);
    for &p in &g.params() {
        let name = &g.node(p).name;
        check(
            name,
            &ex.param(p).unwrap(),
            &cpu.param(p).unwrap(),
            0.0,
            1e-5,
        );
    }
    // At inference dropout is the identity, on both backends.
    for (what, exec) in [
        ("GPU", &mut ex as &mut dyn Executor),
        ("CPU", &mut cpu as &mut dyn Executor),
    ] {
        let batch = &c.batches[0];
        let h = exec.predict(batch, c.h).unwrap();
        assert_eq!(exec.predict(batch, c.drop).unwrap(), h, "{what}");
        assert!(!zeros(&h).contains(&true));
    }
    assert_eq!(ex.steps(), 6, "predict is not a training step");
}

#[test]
fn dropout_runs_are_reproducible_from_the_seed() {
    let Some(ctx) = gpu() else { return };
    let c = dropout_case();
    let g = &c.graph;
    let run = || {
        let mut ex = GpuExecutor::new(ctx, g, c.loss, &c.init, TrainConfig::default()).unwrap();
        (0..4)
            .map(|s| ex.train_step(&c.batches[s % 3]).unwrap().to_bits())
            .collect::<Vec<_>>()
    };
    assert_eq!(run(), run());
}

// ---------------------------------------------------------------- late fusion, class weights

/// Every parameter gradient of the f64 CPU executor against central
/// differences of its loss, element by element (step 1e-5: truncation ~eps²
/// and rounding ~1e-16/eps stay far below rtol 1e-5, atol 1e-8).
fn check_cpu_elementwise(what: &str, case: &Case) {
    let g = &case.graph;
    let mut cpu =
        CpuExecutor::<f64>::new(g, case.loss, &case.init, TrainConfig::default()).unwrap();
    cpu.run_gradients(&case.batch).unwrap();
    for p in g.params() {
        let name = &g.node(p).name;
        let grad = cpu.grad(p).unwrap().clone();
        assert!(
            grad.iter().any(|&v| v != 0.0),
            "{what} {name}: the gradient is all zero, the check would prove nothing"
        );
        let w0 = cpu.value_array(p).unwrap().clone();
        let fd = common::finite_difference(&w0, 1e-5, |probe| {
            cpu.set_param_array(p, probe.as_slice().unwrap()).unwrap();
            cpu.run_loss(&case.batch).unwrap()
        });
        cpu.set_param_array(p, w0.as_slice().unwrap()).unwrap();
        common::assert_close_f64(&format!("{what} {name}"), &grad, &fd, 1e-5, 1e-8);
    }
}

/// Late fusion (two heads' logits averaged): CPU gradients against finite
/// differences for every parameter element; GPU loss and gradients against
/// the CPU executor; the average's value, and each head's gradient exactly
/// half the average's.
#[test]
fn late_fusion_matches_the_cpu_executor_and_finite_differences() {
    let case = late_fusion(None);
    check_cpu_elementwise("late fusion", &case);
    compare_case("late fusion", &case);
    let Some(ctx) = gpu() else { return };
    let g = &case.graph;
    let average = g.expect_id("average").unwrap();
    let heads = ["text_head", "image_head"].map(|n| g.expect_id(n).unwrap());
    let mut cpu =
        CpuExecutor::<f64>::new(g, case.loss, &case.init, TrainConfig::default()).unwrap();
    let mut ex = GpuExecutor::with_options(
        ctx,
        g,
        case.loss,
        &case.init,
        TrainConfig::default(),
        ExecOptions {
            inspect: vec![average, heads[0], heads[1]],
            ..ExecOptions::default()
        },
    )
    .unwrap();
    cpu.run_gradients(&case.batch).unwrap();
    ex.gradients(&case.batch).unwrap();
    // The average of the heads' logits, and its gradient split in halves.
    let want = f32s(cpu.value_array(average).unwrap());
    check(
        "average value",
        &ex.value(average).unwrap(),
        &want,
        1e-5,
        1e-6,
    );
    let dy = ex.gradient_of(average).unwrap();
    for h in heads {
        let half: Vec<f32> = dy.iter().map(|v| v * 0.5).collect();
        assert_eq!(ex.gradient_of(h).unwrap(), half, "{}", g.node(h).name);
    }
}

/// Class weights (Keras `class_weight`) on the late-fusion model: CPU
/// gradients against finite differences for every parameter element, GPU
/// loss and gradients against the CPU executor.
#[test]
fn class_weighted_loss_matches_the_cpu_executor_and_finite_differences() {
    let case = late_fusion(Some(vec![0.5, 2.0, 1.25]));
    check_cpu_elementwise("weighted", &case);
    compare_case("weighted", &case);
}

/// Loss and gradients of `case` on the f32 CPU executor and, when there is
/// one, the GPU executor (with its dispatches per training step).
fn both_backends(case: &Case) -> Vec<(f32, Vec<Vec<f32>>, Option<usize>)> {
    let g = &case.graph;
    let config = TrainConfig::default();
    let mut out = Vec::new();
    let mut cpu = CpuExecutor::<f32>::new(g, case.loss, &case.init, config.clone()).unwrap();
    let (l, grads) = cpu.gradients(&case.batch).unwrap();
    out.push((l, grads, None));
    if let Some(ctx) = gpu() {
        let mut ex = GpuExecutor::new(ctx, g, case.loss, &case.init, config).unwrap();
        let (l, grads) = ex.gradients(&case.batch).unwrap();
        ex.train_step(&case.batch).unwrap();
        out.push((l, grads, Some(ex.step_stats().dispatches())));
    }
    out
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Weights all 1.0 give the unweighted loss and gradients bit for bit on
/// both backends, with the same number of dispatches per training step;
/// non-unit weights cost no extra dispatch either. Weights all 2.0 double
/// the loss and gradients (a mean over the batch, not over the weights).
#[test]
fn class_weights_keep_the_unweighted_path_and_the_dispatch_count() {
    let none = both_backends(&late_fusion(None));
    let ones = both_backends(&late_fusion(Some(vec![1.0; 3])));
    let twos = both_backends(&late_fusion(Some(vec![2.0; 3])));
    let mixed = both_backends(&late_fusion(Some(vec![0.5, 2.0, 1.25])));
    for (k, backend) in ["CPU", "GPU"].iter().enumerate().take(none.len()) {
        let (l0, g0, d0) = &none[k];
        let (l1, g1, d1) = &ones[k];
        assert_eq!(l0.to_bits(), l1.to_bits(), "{backend} loss");
        for (a, b) in g0.iter().zip(g1) {
            assert_eq!(bits(a), bits(b), "{backend} gradients");
        }
        assert_eq!(d0, d1, "{backend} dispatches per step");
        assert_eq!(d0, &mixed[k].2, "{backend} dispatches per step");
        // Scaling every weight by 2 scales the loss and gradients by 2
        // exactly (a power of two).
        let (l2, g2, _) = &twos[k];
        assert_eq!(l2.to_bits(), (2.0 * l0).to_bits(), "{backend} doubled loss");
        for (a, b) in g0.iter().zip(g2) {
            let doubled: Vec<f32> = a.iter().map(|v| 2.0 * v).collect();
            assert_eq!(bits(&doubled), bits(b), "{backend} doubled gradients");
        }
        assert_ne!(
            l0.to_bits(),
            mixed[k].0.to_bits(),
            "{backend} weights matter"
        );
    }
}
