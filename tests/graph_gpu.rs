//! The GPU executor (`graph::gpu`) on its own; its agreement with the CPU
//! executor (loss, gradients, inspected values, probabilities, training
//! steps) is tests/graph_backends.rs.
//! - graphs the seed model does not cover (a sequence-returning LSTM into a
//!   masked RNN; two convolutions with tanh and average pooling; a value
//!   used three times): every parameter gradient against a directional
//!   finite difference of the GPU loss (f32, loose);
//! - values overwritten by buffer reuse are reported by name;
//! - determinism, learning, the memory plan (reuse, no allocation per
//!   step), dispatch and submit counts, timestamps, typed errors.

mod common;
mod graph_common;

use common::{gpu, random, random_u32};
use crossmodal::graph::gpu::GpuExecutor;
use crossmodal::graph::init::init_params;
use crossmodal::graph::{
    Batch, CpuExecutor, Executor, Graph, HostData, Init, Op, Optimizer, TrainConfig,
};
use crossmodal::nn::{seed_model, SeedConfig, SeedModel};
use crossmodal::ops::lstm::LstmState;
use crossmodal::ops::recurrent::{recurrent_persistent_support, RecurrentDims};
use crossmodal::ops::reduce::accuracy_count_cpu;
use crossmodal::optim::{adam::AdamConfig, sgd::SgdConfig};
use crossmodal::{Error, GpuContext};
use graph_common::{conv_stack_with_shared_value, sequence_lstm_into_masked_rnn, small, SeedData};
use ndarray::s;

#[test]
fn values_overwritten_by_reuse_are_reported_by_name() {
    let Some(ctx) = gpu() else { return };
    let c = small(true);
    let m = seed_model(&c).unwrap();
    let g = &m.graph;
    let mut ex =
        GpuExecutor::new(ctx, g, m.loss, &init_params(g, 3), TrainConfig::default()).unwrap();
    let data = SeedData::new(&c, 5);
    ex.gradients(&data.batch(&m)).unwrap();
    let mut overwritten = 0;
    for name in [
        "embedding",
        "lstm",
        "conv.linear",
        "conv",
        "pool",
        "concat",
        "dense",
    ] {
        if let Err(e) = ex.value(g.id(name).unwrap()) {
            let msg = e.to_string();
            assert!(
                msg.contains(name) && msg.contains("overwritten"),
                "{name}: {msg}"
            );
            overwritten += 1;
        }
    }
    assert!(overwritten > 0, "some forward buffer is reused in backward");
    // Parameters, inputs and the loss keep their own buffers.
    assert!(ex.value(g.params()[0]).is_ok());
    assert!(ex.value(m.images).is_ok());
    assert!(ex.value(m.loss).is_ok());
}

/// Checks every parameter gradient of `ex` against a directional central
/// difference of its loss: for a random unit direction v per parameter,
/// `(L(p + εv) - L(p - εv)) / 2ε` against `g·v`. f32 losses: loose
/// (observed agreement 2e-6 to 2e-3 relative; a missing or doubled
/// contribution is off by tens of percent).
fn check_directional(ex: &mut GpuExecutor, g: &Graph, batch: &Batch, eps: f32, rtol: f64) {
    let (_, grads) = ex.gradients(batch).unwrap();
    for (k, &p) in g.params().iter().enumerate() {
        let name = &g.node(p).name;
        let w = ex.param(p).unwrap();
        let v: Vec<f32> = random(&[w.len()], 100 + k as u64)
            .into_raw_vec_and_offset()
            .0;
        let norm = v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        let v: Vec<f32> = v.iter().map(|&x| (x as f64 / norm) as f32).collect();
        let shifted =
            |sign: f32| -> Vec<f32> { w.iter().zip(&v).map(|(a, b)| a + sign * eps * b).collect() };
        ex.set_param(p, &shifted(1.0)).unwrap();
        let plus = ex.loss(batch).unwrap() as f64;
        ex.set_param(p, &shifted(-1.0)).unwrap();
        let minus = ex.loss(batch).unwrap() as f64;
        ex.set_param(p, &w).unwrap();
        let fd = (plus - minus) / (2.0 * eps as f64);
        let analytic: f64 = grads[k]
            .iter()
            .zip(&v)
            .map(|(a, b)| *a as f64 * *b as f64)
            .sum();
        // f32 loss rounding over 2ε bounds the absolute error.
        let atol = 4.0 * f32::EPSILON as f64 * plus.abs().max(1.0) / (2.0 * eps as f64);
        assert!(
            (fd - analytic).abs() <= rtol * analytic.abs() + atol,
            "{name}: finite difference {fd} vs gradient·v {analytic}"
        );
        assert!(
            grads[k].iter().any(|&x| x != 0.0),
            "{name}: the gradient is all zero"
        );
    }
}

#[test]
fn sequence_lstm_into_masked_rnn_gradients() {
    let Some(ctx) = gpu() else { return };
    let case = sequence_lstm_into_masked_rnn();
    let g = &case.graph;
    let mut ex = GpuExecutor::new(ctx, g, case.loss, &case.init, TrainConfig::default()).unwrap();
    check_directional(&mut ex, g, &case.batch, 1e-2, 5e-3);
}

#[test]
fn conv_stack_with_shared_value_gradients() {
    let Some(ctx) = gpu() else { return };
    let case = conv_stack_with_shared_value();
    let g = &case.graph;
    let mut ex = GpuExecutor::new(ctx, g, case.loss, &case.init, TrainConfig::default()).unwrap();
    check_directional(&mut ex, g, &case.batch, 1e-2, 5e-3);
}

fn train(ctx: &GpuContext, c: &SeedConfig, steps: usize) -> (Vec<u32>, Vec<Vec<f32>>) {
    let m = seed_model(c).unwrap();
    let g = &m.graph;
    let mut ex =
        GpuExecutor::new(ctx, g, m.loss, &init_params(g, 9), TrainConfig::default()).unwrap();
    let losses = (0..steps)
        .map(|s| {
            let data = SeedData::new(c, 100 + (s % 3) as u64);
            ex.train_step(&data.batch(&m)).unwrap().to_bits()
        })
        .collect();
    let params = g.params().iter().map(|&p| ex.param(p).unwrap()).collect();
    (losses, params)
}

#[test]
fn twenty_steps_are_bit_identical() {
    let Some(ctx) = gpu() else { return };
    let c = small(true);
    let (a, pa) = train(ctx, &c, 20);
    let (b, pb) = train(ctx, &c, 20);
    assert_eq!(a, b, "losses differ between two identical runs");
    assert_eq!(pa, pb, "parameters differ between two identical runs");
    assert_ne!(a[0], a[19], "the loss changes while training");
}

/// A separable problem on the seed model: the class decides the sign of a
/// bright square in the image and which half of the vocabulary the tokens
/// come from.
fn separable(c: &SeedConfig, m: &SeedModel, seed: u64) -> Batch {
    let (t, b) = (c.seq_len, c.batch);
    let labels = random_u32(b, 0, 2, seed);
    let half = c.vocab as u32 / 2;
    let noise = random_u32(t * b, 1, half, seed + 1);
    let tokens: Vec<u32> = (0..t * b)
        .map(|i| noise[i] + labels[i % b] * (half - 1))
        .collect();
    let [h, w, ch] = c.image;
    let mut images = random(&[b, h, w, ch], seed + 2);
    for (n, &label) in labels.iter().enumerate() {
        let sign = if label == 1 { 1.0 } else { -1.0 };
        images
            .slice_mut(s![n, 2..6, 2..6, ..])
            .mapv_inplace(|v| 0.3 * v + 2.0 * sign);
    }
    Batch::new()
        .with(m.tokens, HostData::U32(tokens))
        .with(m.images, HostData::F32(images.into_raw_vec_and_offset().0))
        .with(m.labels, HostData::U32(labels))
}

#[test]
fn training_learns_a_separable_problem() {
    let Some(ctx) = gpu() else { return };
    let c = SeedConfig {
        batch: 16,
        classes: 2,
        ..small(false)
    };
    let m = seed_model(&c).unwrap();
    let g = &m.graph;
    let optimizers = [
        Optimizer::Adam(AdamConfig {
            learning_rate: 0.01,
            ..AdamConfig::default()
        }),
        Optimizer::Sgd(SgdConfig {
            learning_rate: 0.1,
            momentum: 0.9,
            nesterov: false,
        }),
    ];
    for opt in optimizers {
        let config = TrainConfig {
            optimizer: opt.clone(),
            clip_global_norm: None,
        };
        let mut ex = GpuExecutor::new(ctx, g, m.loss, &init_params(g, 1), config).unwrap();
        let test = separable(&c, &m, 999);
        let before = ex.loss(&test).unwrap();
        for step in 0..40 {
            ex.train_step(&separable(&c, &m, step)).unwrap();
        }
        let after = ex.loss(&test).unwrap();
        assert!(
            after < 0.1 && after < before / 5.0,
            "{opt:?}: held-out loss {before} -> {after} after 40 steps"
        );
        assert_eq!(ex.steps(), 40);
    }
}

#[test]
fn memory_plan_reuses_buffers_and_steps_allocate_nothing() {
    let Some(ctx) = gpu() else { return };
    let c = small(true);
    let m = seed_model(&c).unwrap();
    let g = &m.graph;
    let mut ex =
        GpuExecutor::new(ctx, g, m.loss, &init_params(g, 3), TrainConfig::default()).unwrap();
    let plan = ex.memory_plan().clone();
    assert!(
        plan.planned_bytes < plan.naive_bytes && plan.buffers < plan.tensors,
        "no reuse: {plan:?}"
    );
    // No two tensors sharing a buffer overlap in time (checked by the
    // executor while building); every tensor has a buffer.
    assert_eq!(plan.slot_of.len(), plan.tensors + plan.pinned_tensors);
    let built = ex.buffers_created();
    let batch = SeedData::new(&c, 1).batch(&m);
    for _ in 0..3 {
        ex.train_step(&batch).unwrap();
        assert_eq!(ex.buffers_created(), built, "a training step allocated");
    }
    ex.loss(&batch).unwrap();
    assert_eq!(ex.buffers_created(), built, "loss() allocated");
}

#[test]
fn the_default_seed_model_plans_less_than_the_naive_sum() {
    let Some(ctx) = gpu() else { return };
    let c = SeedConfig::default();
    let m = seed_model(&c).unwrap();
    let g = &m.graph;
    let ex = GpuExecutor::new(ctx, g, m.loss, &init_params(g, 3), TrainConfig::default()).unwrap();
    let plan = ex.memory_plan();
    eprintln!(
        "seed model plan: {} tensors in {} buffers, {} of {} bytes; pinned {} tensors, {} bytes; optimizer {} bytes",
        plan.tensors,
        plan.buffers,
        plan.planned_bytes,
        plan.naive_bytes,
        plan.pinned_tensors,
        plan.pinned_bytes,
        ex.optimizer_state_bytes()
    );
    for line in ex.describe_plan() {
        eprintln!("  {line}");
    }
    assert!(plan.planned_bytes < plan.naive_bytes, "{plan:?}");
}

#[test]
fn one_submit_and_the_expected_dispatches_per_step() {
    let Some(ctx) = gpu() else { return };
    let c = small(true);
    let t = c.seq_len;
    let m = seed_model(&c).unwrap();
    let g = &m.graph;
    let mut ex =
        GpuExecutor::new(ctx, g, m.loss, &init_params(g, 3), TrainConfig::default()).unwrap();
    // The LSTM runs its whole recurrence in one dispatch where the adapter
    // allows (ops::lstm), else one gate kernel and one matmul per step.
    let dims = RecurrentDims::new(t, c.batch, c.embed_dim, c.lstm_units);
    let persistent = recurrent_persistent_support::<LstmState>(ctx, dims).is_ok();
    let recurrence = if persistent { 1 } else { 2 * t - 1 };
    // The LSTM's input is the embedding alone reads: a batch with many
    // repeated tokens runs its input projection and gradients per chunk of
    // equal tokens; this one (21 positions, vocab 50) has few repeats and
    // runs them per position. One batch of each.
    let distinct = SeedData::new(&c, 1);
    let mut repeated = SeedData::new(&c, 1);
    repeated.tokens.iter_mut().for_each(|v| *v %= 2);
    for (data, chunked) in [(distinct, false), (repeated, true)] {
        let batch = data.batch(&m);
        ex.train_step(&batch).unwrap();
        let s = ex.step_stats();
        let chunks = ex.chunk_counts()[0].1;
        assert_eq!(chunks * 2 <= c.batch * t, chunked, "{chunks} chunks");
        assert_eq!(s.submits, 1);
        assert_eq!(s.readback_bytes, 4, "only the loss is read back");
        // Forward LSTM: the input projection (chunked: the chunks' input
        // rows, their projection, z gathered from it), the recurrence.
        let lstm_forward = if chunked { 3 } else { 1 } + recurrence;
        // Backward LSTM: the recurrence, dU, db, then dW and dx (chunked:
        // the chunk sums of dz first).
        let lstm_backward = recurrence + 2 + if chunked { 3 } else { 2 };
        // Forward: embedding 1; LSTM; conv 1 (the ReLU fused into it: the
        // conv's only reader), pool 1, concat 2 (one per input), dense 2
        // (matmul, bias), loss 3 (softmax-CE, mean, the correct-prediction
        // count).
        assert_eq!(s.forward_dispatches, 1 + lstm_forward + 1 + 1 + 2 + 2 + 3);
        let entries: Vec<&str> = ex.train_schedule().iter().map(|d| d.entry).collect();
        assert!(
            !entries.iter().any(|e| e.starts_with("relu_forward")),
            "{entries:?}"
        );
        assert_eq!(
            entries.iter().any(|e| e.starts_with("segment_sum")),
            chunked,
            "{entries:?}"
        );
        // Backward: loss 1; dense 3 (dx, dW, db); concat 2; pool 1 (the
        // ReLU's mask in it: the ReLU is the pool's only input and has no
        // backward of its own); conv 2 (weight, bias: the images need no
        // gradient); LSTM; embedding 1.
        assert_eq!(s.backward_dispatches, 1 + 3 + 2 + 1 + 2 + lstm_backward + 1);
        assert!(
            entries
                .iter()
                .any(|e| e.starts_with("maxpool_relu_backward"))
                && !entries.iter().any(|e| e.starts_with("relu_backward")),
            "{entries:?}"
        );
        assert_eq!(
            s.update_dispatches,
            g.params().len(),
            "one Adam update each"
        );
        // Every gradient buffer is cleared once: 8 parameters and the
        // gradients of dense, concat, lstm, pool (= flatten), conv.linear
        // (= the ReLU's, which the pool's backward writes) and embedding;
        // plus h_all/c_all slot 0 when their buffers are shared.
        assert!(s.clears >= 8 + 6 && s.clears <= 8 + 6 + 2, "{s:?}");

        ex.predict(&batch, m.probs).unwrap();
        let p = ex.step_stats();
        assert_eq!(p.submits, 1);
        assert_eq!(p.backward_dispatches + p.update_dispatches, 0);
        // The forward minus the loss (3), plus the softmax (1).
        assert_eq!(p.forward_dispatches, s.forward_dispatches - 3 + 1);
        // Tokens and images (labels are not needed); the chunks: order,
        // bounds, first positions, tokens, chunk of each position, and
        // their count in 6 dispatches' params (2 forward, 3 in the LSTM's
        // backward, 1 in the embedding's).
        assert_eq!(p.writes, 2 + 5 + 6);
    }
}

#[test]
fn profile_step_times_every_dispatch() {
    let Some(ctx) = gpu() else { return };
    let c = small(false);
    let m = seed_model(&c).unwrap();
    let g = &m.graph;
    let mut ex =
        GpuExecutor::new(ctx, g, m.loss, &init_params(g, 3), TrainConfig::default()).unwrap();
    let batch = SeedData::new(&c, 1).batch(&m);
    let result = ex.profile_step(&batch);
    if !ctx.has_timestamps() {
        assert!(matches!(result, Err(Error::Unsupported { .. })));
        return;
    }
    let timings = result.unwrap();
    assert_eq!(timings.len(), ex.step_stats().dispatches());
    assert!(timings.iter().all(|k| k.nanoseconds >= 0.0));
    assert!(timings.iter().map(|k| k.nanoseconds).sum::<f64>() > 0.0);
    assert_eq!(ex.steps(), 1, "a profiled step is a training step");
}

#[test]
fn bad_configurations_and_batches_are_typed_errors() {
    let Some(ctx) = gpu() else { return };
    let c = small(true);
    let m = seed_model(&c).unwrap();
    let g = &m.graph;
    let init = init_params(g, 3);
    for bad in [0.0, -1.0, f32::NAN, f32::INFINITY] {
        let clip = TrainConfig {
            clip_global_norm: Some(bad),
            ..TrainConfig::default()
        };
        let e = GpuExecutor::new(ctx, g, m.loss, &init, clip).err().unwrap();
        assert!(matches!(e, Error::Unsupported { .. }), "clip {bad}: {e}");
    }
    let e = GpuExecutor::new(ctx, g, m.probs, &init, TrainConfig::default())
        .err()
        .unwrap();
    assert!(matches!(e, Error::Unsupported { .. }), "{e}");
    let e = GpuExecutor::new(ctx, g, m.loss, &init[1..], TrainConfig::default())
        .err()
        .unwrap();
    assert!(e.to_string().contains("embedding.embeddings"), "{e}");

    let mut ex = GpuExecutor::new(ctx, g, m.loss, &init, TrainConfig::default()).unwrap();
    let data = SeedData::new(&c, 1);
    let missing = Batch::new()
        .with(m.tokens, HostData::U32(data.tokens.clone()))
        .with(m.images, HostData::F32(data.images.clone()));
    let e = ex.train_step(&missing).unwrap_err();
    assert!(e.to_string().contains("labels"), "{e}");
    let short = missing
        .clone()
        .with(m.labels, HostData::U32(vec![0; c.batch - 1]));
    let e = ex.train_step(&short).unwrap_err();
    assert!(e.to_string().contains("labels"), "{e}");
    let wrong_type = missing.with(m.labels, HostData::F32(vec![0.0; c.batch]));
    assert!(ex.train_step(&wrong_type).is_err());
    assert_eq!(ex.steps(), 0, "failed steps apply nothing");
    // Unused params are an error too.
    let mut g2 = g.clone();
    g2.add(
        "stray",
        Op::Param {
            shape: vec![2],
            init: Init::Zeros,
        },
        &[],
    )
    .unwrap();
    let e = GpuExecutor::new(ctx, &g2, m.loss, &init, TrainConfig::default())
        .err()
        .unwrap();
    assert!(e.to_string().contains("stray"), "{e}");
}

#[test]
fn clipping_runs_in_the_same_submit_and_an_inactive_clip_changes_nothing() {
    let Some(ctx) = gpu() else { return };
    let c = small(true);
    let m = seed_model(&c).unwrap();
    let g = &m.graph;
    let init = init_params(g, 3);
    let batches: Vec<Batch> = (0..3)
        .map(|s| SeedData::new(&c, 60 + s).batch(&m))
        .collect();
    let config = |clip| TrainConfig {
        clip_global_norm: clip,
        ..TrainConfig::default()
    };
    let run = |clip: Option<f32>| {
        let mut ex = GpuExecutor::new(ctx, g, m.loss, &init, config(clip)).unwrap();
        let built = ex.buffers_created();
        let mut losses = Vec::new();
        let mut norms = Vec::new();
        for b in &batches {
            losses.push(ex.train_step(b).unwrap().to_bits());
            norms.push(ex.last_global_norm().unwrap());
            let s = ex.step_stats();
            assert_eq!((s.submits, s.readback_bytes), (1, 4), "{s:?}");
            let p = g.params().len();
            // Clipping: one partial sum per gradient, the total, one scale
            // per gradient; then one optimizer update per parameter.
            let clipping = if clip.is_some() { 2 * p + 1 } else { 0 };
            assert_eq!(s.update_dispatches, clipping + p, "{s:?}");
            assert_eq!(ex.buffers_created(), built, "a clipped step allocated");
        }
        let params: Vec<Vec<u32>> = g
            .params()
            .iter()
            .map(|&p| ex.param(p).unwrap().iter().map(|v| v.to_bits()).collect())
            .collect();
        (losses, params, norms)
    };
    let (losses, params, norms) = run(None);
    assert!(norms.iter().all(Option::is_none));
    // Within the clip no gradient is written: the same bits as no clip.
    let (clipped_losses, clipped_params, norms) = run(Some(1e30));
    assert_eq!(losses, clipped_losses);
    assert_eq!(params, clipped_params);
    let norms: Vec<f32> = norms.into_iter().map(Option::unwrap).collect();
    assert!(norms.iter().all(|&n| n > 0.0 && n < 1e30), "{norms:?}");
    // An active clip changes the steps after the first (the first loss is
    // computed before any update).
    let (active, _, _) = run(Some(norms[0] / 4.0));
    assert_eq!(active[0], losses[0]);
    assert_ne!(active[1..], losses[1..]);
}

/// The loss counts the rows it scores right on both backends alike, over
/// training steps, until taken (then it starts again from zero).
#[test]
fn correct_counts_match_the_cpu_executor() {
    let Some(ctx) = gpu() else { return };
    let c = small(false);
    let m = seed_model(&c).unwrap();
    let g = &m.graph;
    let init = init_params(g, 4);
    let mut gpu_ex = GpuExecutor::new(ctx, g, m.loss, &init, TrainConfig::default()).unwrap();
    let mut cpu_ex = CpuExecutor::<f32>::new(g, m.loss, &init, TrainConfig::default()).unwrap();
    let batches: Vec<_> = (0..4)
        .map(|s| SeedData::new(&c, 40 + s).batch(&m))
        .collect();
    // What the count should be: the probabilities each step's forward saw.
    let mut want = 0;
    let mut reference = CpuExecutor::<f32>::new(g, m.loss, &init, TrainConfig::default()).unwrap();
    for b in &batches {
        let probs = reference.predict(b, m.probs).unwrap();
        let HostData::U32(labels) = &b.inputs.iter().find(|(id, _)| *id == m.labels).unwrap().1
        else {
            panic!("labels are u32")
        };
        let probs = ndarray::Array2::from_shape_vec((c.batch, c.classes), probs).unwrap();
        want += accuracy_count_cpu(&probs.view(), labels) as u64;
        reference.train_step(b).unwrap();
    }
    for b in &batches {
        gpu_ex.train_step(b).unwrap();
        cpu_ex.train_step(b).unwrap();
    }
    assert_eq!(cpu_ex.take_correct_count().unwrap(), want);
    assert_eq!(gpu_ex.take_correct_count().unwrap(), want);
    assert_eq!(gpu_ex.take_correct_count().unwrap(), 0, "taking resets");
    assert_eq!(cpu_ex.take_correct_count().unwrap(), 0, "taking resets");
    // Predictions do not pass through the loss and count nothing.
    gpu_ex.predict(&batches[0], m.probs).unwrap();
    assert_eq!(gpu_ex.take_correct_count().unwrap(), 0);
}
