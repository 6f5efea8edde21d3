//! The CPU reference backend (`graph::cpu::CpuExecutor`): parameter
//! gradients of the small seed model against central finite differences in
//! f64, accumulation into a value used twice, bit-identical repeated runs,
//! learning a separable problem, the optimizer plumbing, dropout masks per
//! training step, and input errors.

mod common;

use common::{assert_close_f64, finite_difference, random, random_u32};
use crossmodal::graph::init::init_params;
use crossmodal::graph::{
    Batch, CpuExecutor, Executor, Graph, HostData, NodeId, Op, Optimizer, TrainConfig,
};
use crossmodal::nn::{dense, seed_model, SeedConfig, SeedModel};
use crossmodal::ops::activation::Activation;
use crossmodal::optim::adam::{adam_update_cpu, AdamConfig};
use crossmodal::optim::sgd::SgdConfig;
use crossmodal::{DType, Error};
use ndarray::{s, ArrayD, Axis, IxDyn};

/// Central differences: step 1e-5 in f64; the truncation error (~eps²) and
/// the rounding (~1e-16 / eps) are both far below these tolerances.
const EPS: f64 = 1e-5;
const RTOL: f64 = 1e-5;
const ATOL: f64 = 1e-8;

fn small_seed(mask_padding: bool) -> SeedConfig {
    SeedConfig {
        batch: 3,
        vocab: 50,
        seq_len: 7,
        image: [8, 8, 1],
        embed_dim: 4,
        lstm_units: 5,
        filters: 3,
        classes: 3,
        mask_padding,
    }
}

/// Time-major `[T,B]` token ids, pre-padded: sample b starts with
/// `pads[b % pads.len()]` zeros, the rest are ids in 1..vocab.
fn pre_padded_tokens(c: &SeedConfig, pads: &[usize], seed: u64) -> Vec<u32> {
    let ids = random_u32(c.seq_len * c.batch, 1, c.vocab as u32, seed);
    let mut tokens = vec![0; c.seq_len * c.batch];
    for t in 0..c.seq_len {
        for b in 0..c.batch {
            if t >= pads[b % pads.len()] {
                tokens[t * c.batch + b] = ids[t * c.batch + b];
            }
        }
    }
    tokens
}

fn seed_batch(m: &SeedModel, c: &SeedConfig, seed: u64) -> Batch {
    seed_batch_padded(m, c, seed, &[0, 2, 5])
}

/// [`seed_batch`] with sample b pre-padded by `pads[b % pads.len()]`.
fn seed_batch_padded(m: &SeedModel, c: &SeedConfig, seed: u64, pads: &[usize]) -> Batch {
    let [h, w, ch] = c.image;
    let images = random(&[c.batch, h, w, ch], seed)
        .into_raw_vec_and_offset()
        .0;
    Batch::new()
        .with(
            m.tokens,
            HostData::U32(pre_padded_tokens(c, pads, seed + 1)),
        )
        .with(m.images, HostData::F32(images))
        .with(
            m.labels,
            HostData::U32(random_u32(c.batch, 0, c.classes as u32, seed + 2)),
        )
}

/// Every parameter gradient of `exec` against central differences of its
/// own loss, parameter by parameter.
fn check_gradients(exec: &mut CpuExecutor<f64>, graph: &Graph, batch: &Batch) {
    exec.run_gradients(batch).unwrap();
    let analytic: Vec<ArrayD<f64>> = graph
        .params()
        .iter()
        .map(|&p| exec.grad(p).unwrap().clone())
        .collect();
    for (p, want_analytic) in graph.params().into_iter().zip(analytic) {
        let name = graph.node(p).name.clone();
        let w0 = exec.value_array(p).unwrap().clone();
        let numeric = finite_difference(&w0, EPS, |probe| {
            exec.set_param_array(p, probe.as_slice().unwrap()).unwrap();
            exec.run_loss(batch).unwrap()
        });
        exec.set_param_array(p, w0.as_slice().unwrap()).unwrap();
        assert!(
            want_analytic.iter().any(|&g| g != 0.0),
            "{name}: the gradient is all zero, the check would prove nothing"
        );
        assert_close_f64(&name, &want_analytic, &numeric, RTOL, ATOL);
    }
}

fn seed_gradients_match_finite_differences(mask_padding: bool) {
    let c = small_seed(mask_padding);
    let m = seed_model(&c).unwrap();
    let params = init_params(&m.graph, 11);
    let mut exec =
        CpuExecutor::<f64>::new(&m.graph, m.loss, &params, TrainConfig::default()).unwrap();
    let batch = seed_batch(&m, &c, 5);
    check_gradients(&mut exec, &m.graph, &batch);

    // With the mask, padding steps do not reach the loss: the padding row
    // of the table gets exactly nothing.
    if mask_padding {
        let table = m.graph.expect_id("embedding.embeddings").unwrap();
        let dtable = exec.grad(table).unwrap();
        assert!(dtable.index_axis(Axis(0), 0).iter().all(|&v| v == 0.0));
    }
}

/// Every sample padded by at least 3: the LSTM runs the first 3 steps once
/// for the batch (`ops::recurrent::shared_steps`), by default. The
/// parameter gradients still match finite differences, and match those of
/// `per_position_gradients` (every step for every sample), whose embedding
/// output gradient is per position where the default's sums the shared
/// steps into sample 0's row.
#[test]
fn shared_padding_steps_keep_the_gradients() {
    for mask_padding in [false, true] {
        let c = small_seed(mask_padding);
        let m = seed_model(&c).unwrap();
        let params = init_params(&m.graph, 12);
        let batch = seed_batch_padded(&m, &c, 6, &[3, 5, 4]);
        let new = || CpuExecutor::<f64>::new(&m.graph, m.loss, &params, TrainConfig::default());
        let mut shared = new().unwrap();
        check_gradients(&mut shared, &m.graph, &batch);
        let mut each = new().unwrap().per_position_gradients();
        let loss = each.run_gradients(&batch).unwrap();
        assert_close_f64(
            "loss",
            &ArrayD::from_elem(IxDyn(&[]), shared.run_gradients(&batch).unwrap()),
            &ArrayD::from_elem(IxDyn(&[]), loss),
            1e-14,
            0.0,
        );
        for p in m.graph.params() {
            let name = m.graph.node(p).name.clone();
            let (a, b) = (shared.grad(p).unwrap(), each.grad(p).unwrap());
            assert_close_f64(&name, a, b, 1e-12, 1e-15);
        }
        if mask_padding {
            // Masked padding passes no gradient either way.
            continue;
        }
        let embedded = m.graph.expect_id("embedding").unwrap();
        let (a, b) = (shared.grad(embedded).unwrap(), each.grad(embedded).unwrap());
        let step0 = |g: &ArrayD<f64>| g.index_axis(Axis(0), 0).to_owned();
        let (a0, b0) = (step0(a), step0(b));
        assert!(a0.slice(s![1.., ..]).iter().all(|&v| v == 0.0));
        assert!(b0.slice(s![1.., ..]).iter().any(|&v| v != 0.0));
        let sum = b0.sum_axis(Axis(0));
        assert_close_f64(
            "step 0 summed",
            &a0.index_axis(Axis(0), 0).to_owned().into_dyn(),
            &sum.into_dyn(),
            1e-12,
            1e-15,
        );
    }
}

#[test]
fn seed_gradients_match_finite_differences_masked() {
    seed_gradients_match_finite_differences(true);
}

#[test]
fn seed_gradients_match_finite_differences_unmasked() {
    seed_gradients_match_finite_differences(false);
}

fn input(g: &mut Graph, name: &str, shape: &[usize], dtype: DType) -> NodeId {
    g.add(
        name,
        Op::Input {
            shape: shape.to_vec(),
            dtype,
        },
        &[],
    )
    .unwrap()
}

/// x → Dense → h; h feeds tanh and (twice) the concat [h, tanh h, h] →
/// Dense → loss.
struct Branchy {
    graph: Graph,
    x: NodeId,
    labels: NodeId,
    h: NodeId,
    a: NodeId,
    concat: NodeId,
    loss: NodeId,
}

fn branchy() -> Branchy {
    let mut g = Graph::new();
    let x = input(&mut g, "x", &[4, 3], DType::F32);
    let labels = input(&mut g, "labels", &[4], DType::U32);
    let h = dense(&mut g, "d1", x, 5, None).unwrap();
    let a = g.add("a", Op::Activation(Activation::Tanh), &[h]).unwrap();
    let concat = g.add("concat", Op::Concat, &[h, a, h]).unwrap();
    let logits = dense(&mut g, "d2", concat, 3, None).unwrap();
    let loss = g
        .add(
            "loss",
            Op::SoftmaxCrossEntropy {
                class_weights: None,
            },
            &[logits, labels],
        )
        .unwrap();
    Branchy {
        graph: g,
        x,
        labels,
        h,
        a,
        concat,
        loss,
    }
}

#[test]
fn a_value_used_twice_gets_the_sum_of_its_gradients() {
    let b = branchy();
    let mut params = init_params(&b.graph, 3);
    // Non-zero biases so every parameter has a generic gradient.
    for (id, v) in &mut params {
        if b.graph.node(*id).name.ends_with("bias") {
            v.iter_mut()
                .enumerate()
                .for_each(|(i, x)| *x = 0.1 * i as f32 - 0.2);
        }
    }
    let mut exec =
        CpuExecutor::<f64>::new(&b.graph, b.loss, &params, TrainConfig::default()).unwrap();
    let batch = Batch::new()
        .with(
            b.x,
            HostData::F32(random(&[4, 3], 9).into_raw_vec_and_offset().0),
        )
        .with(b.labels, HostData::U32(vec![0, 2, 1, 2]));
    check_gradients(&mut exec, &b.graph, &batch);

    // h's gradient is the sum over its three uses: both concat blocks and
    // the tanh branch.
    exec.run_gradients(&batch).unwrap();
    let dc = exec.grad(b.concat).unwrap();
    let da = exec.grad(b.a).unwrap();
    let a = exec.value_array(b.a).unwrap();
    let want = &dc.slice(s![.., 0..5]) + &dc.slice(s![.., 10..15]) + da * &a.mapv(|v| 1.0 - v * v);
    assert_close_f64("h", exec.grad(b.h).unwrap(), &want.into_dyn(), 1e-12, 1e-15);
}

#[test]
fn twenty_steps_are_bit_identical() {
    let c = small_seed(true);
    let m = seed_model(&c).unwrap();
    let params = init_params(&m.graph, 21);
    let config = TrainConfig {
        optimizer: Optimizer::Adam(AdamConfig::default()),
        clip_global_norm: Some(1.0),
    };
    let run = || {
        let mut exec = CpuExecutor::<f32>::new(&m.graph, m.loss, &params, config.clone()).unwrap();
        let losses: Vec<u32> = (0..20)
            .map(|step| {
                let batch = seed_batch(&m, &c, 100 + step % 4);
                exec.train_step(&batch).unwrap().to_bits()
            })
            .collect();
        let last: Vec<Vec<f32>> = m
            .graph
            .params()
            .iter()
            .map(|&p| exec.param(p).unwrap())
            .collect();
        (losses, last)
    };
    let (losses_a, params_a) = run();
    let (losses_b, params_b) = run();
    assert_eq!(losses_a, losses_b);
    assert_eq!(params_a, params_b);
    // The run changed something: the parameters moved.
    assert_ne!(params_a[0], params[0].1);
}

/// 4 classes: label = 2·[token 7 occurs] + [the image is bright]. The
/// token's presence is only visible through the LSTM, the brightness only
/// through the conv branch.
fn separable_batch(m: &SeedModel, c: &SeedConfig, seed: u64) -> (Batch, Vec<u32>) {
    let tokens = pre_padded_tokens(c, &[0, 1, 3], seed);
    let mut tokens: Vec<u32> = tokens
        .into_iter()
        .map(|t| if t == 7 { 8 } else { t })
        .collect();
    let has = random_u32(c.batch, 0, 2, seed + 1);
    let bright = random_u32(c.batch, 0, 2, seed + 2);
    let at = random_u32(c.batch, 3, c.seq_len as u32, seed + 3);
    for b in 0..c.batch {
        if has[b] == 1 {
            tokens[at[b] as usize * c.batch + b] = 7;
        }
    }
    let [h, w, ch] = c.image;
    let noise = random(&[c.batch, h, w, ch], seed + 4);
    let per = h * w * ch;
    let images: Vec<f32> = noise
        .iter()
        .enumerate()
        .map(|(i, &v)| 0.25 * v + if bright[i / per] == 1 { 0.75 } else { -0.75 })
        .collect();
    let labels: Vec<u32> = (0..c.batch).map(|b| 2 * has[b] + bright[b]).collect();
    let batch = Batch::new()
        .with(m.tokens, HostData::U32(tokens))
        .with(m.images, HostData::F32(images))
        .with(m.labels, HostData::U32(labels.clone()));
    (batch, labels)
}

#[test]
fn adam_learns_a_separable_problem() {
    const STEPS: usize = 100;
    const THRESHOLD: f32 = 0.1;
    let c = SeedConfig {
        batch: 16,
        vocab: 20,
        seq_len: 6,
        image: [6, 6, 1],
        embed_dim: 8,
        lstm_units: 8,
        filters: 4,
        classes: 4,
        mask_padding: true,
    };
    let m = seed_model(&c).unwrap();
    let params = init_params(&m.graph, 1);
    let config = TrainConfig {
        optimizer: Optimizer::Adam(AdamConfig {
            learning_rate: 0.02,
            ..AdamConfig::default()
        }),
        clip_global_norm: None,
    };
    let mut exec = CpuExecutor::<f32>::new(&m.graph, m.loss, &params, config).unwrap();
    let batches: Vec<(Batch, Vec<u32>)> = (0..8)
        .map(|i| separable_batch(&m, &c, 1000 + 10 * i))
        .collect();
    let first = exec.loss(&batches[0].0).unwrap();
    let mut reached = None;
    for step in 0..STEPS {
        exec.train_step(&batches[step % batches.len()].0).unwrap();
        let worst = batches
            .iter()
            .map(|(b, _)| exec.loss(b).unwrap())
            .fold(0f32, f32::max);
        if worst < THRESHOLD {
            reached = Some(step + 1);
            break;
        }
    }
    let steps = reached.unwrap_or_else(|| {
        panic!("the loss (first {first}) did not fall below {THRESHOLD} in {STEPS} steps")
    });
    eprintln!("loss {first} -> below {THRESHOLD} after {steps} steps");
    // And it generalises: an unseen batch is (nearly) all classified right
    // (over 8 other seeds: ~30 steps, at most 1 of 16 wrong).
    let (fresh, labels) = separable_batch(&m, &c, 77);
    let probs = exec.predict(&fresh, m.probs).unwrap();
    let mut wrong = 0;
    for (b, &label) in labels.iter().enumerate() {
        let row = &probs[b * c.classes..(b + 1) * c.classes];
        let best = (0..c.classes)
            .max_by(|&i, &j| row[i].total_cmp(&row[j]))
            .unwrap();
        if best as u32 != label {
            wrong += 1;
            eprintln!("sample {b}: label {label}, probabilities {row:?}");
        }
    }
    assert!(
        wrong <= 2,
        "{wrong} of {} unseen samples misclassified",
        c.batch
    );
}

#[test]
fn adam_steps_count_from_one_and_keep_their_moments() {
    let b = branchy();
    let params = init_params(&b.graph, 4);
    let adam = AdamConfig {
        learning_rate: 0.05,
        ..AdamConfig::default()
    };
    let config = TrainConfig {
        optimizer: Optimizer::Adam(adam),
        clip_global_norm: None,
    };
    let batch = Batch::new()
        .with(
            b.x,
            HostData::F32(random(&[4, 3], 2).into_raw_vec_and_offset().0),
        )
        .with(b.labels, HostData::U32(vec![1, 0, 2, 1]));
    let mut trained = CpuExecutor::<f64>::new(&b.graph, b.loss, &params, config.clone()).unwrap();
    let mut manual = CpuExecutor::<f64>::new(&b.graph, b.loss, &params, config).unwrap();
    let ids = b.graph.params();
    let mut state: Vec<(ArrayD<f64>, ArrayD<f64>)> = ids
        .iter()
        .map(|&p| {
            let z = ArrayD::zeros(IxDyn(&b.graph.node(p).value.shape));
            (z.clone(), z)
        })
        .collect();
    for step in 1..=3 {
        assert_eq!(trained.adam_step(), step);
        trained.run_train_step(&batch).unwrap();
        manual.run_gradients(&batch).unwrap();
        for (&p, (m, v)) in ids.iter().zip(&mut state) {
            let g = manual.grad(p).unwrap().clone();
            let mut w = manual.value_array(p).unwrap().clone();
            adam_update_cpu(&mut w, &g.view(), m, v, &adam, step);
            manual.set_param_array(p, w.as_slice().unwrap()).unwrap();
        }
    }
    for &p in &ids {
        assert_eq!(
            trained.value_array(p).unwrap(),
            manual.value_array(p).unwrap(),
            "{}",
            b.graph.node(p).name
        );
    }
}

#[test]
fn sgd_with_global_norm_clipping() {
    let b = branchy();
    let params = init_params(&b.graph, 5);
    let batch = Batch::new()
        .with(
            b.x,
            HostData::F32(random(&[4, 3], 6).into_raw_vec_and_offset().0),
        )
        .with(b.labels, HostData::U32(vec![2, 2, 0, 1]));
    // The clip is exact in f32, as the config stores it.
    let (lr, clip) = (0.5, 1.0 / 128.0);
    let config = TrainConfig {
        optimizer: Optimizer::Sgd(SgdConfig {
            learning_rate: lr,
            ..SgdConfig::default()
        }),
        clip_global_norm: Some(clip as f32),
    };
    let mut exec = CpuExecutor::<f64>::new(&b.graph, b.loss, &params, config).unwrap();
    exec.run_gradients(&batch).unwrap();
    let ids = b.graph.params();
    let grads: Vec<ArrayD<f64>> = ids.iter().map(|&p| exec.grad(p).unwrap().clone()).collect();
    let before: Vec<ArrayD<f64>> = ids
        .iter()
        .map(|&p| exec.value_array(p).unwrap().clone())
        .collect();
    let norm = grads
        .iter()
        .map(|g| g.iter().map(|v| v * v).sum::<f64>())
        .sum::<f64>()
        .sqrt();
    assert!(
        norm > clip,
        "the test needs a gradient norm ({norm}) above the clip"
    );
    exec.run_train_step(&batch).unwrap();
    let mut clipped = 0.0;
    for (k, &p) in ids.iter().enumerate() {
        let g = exec.grad(p).unwrap();
        clipped += g.iter().map(|v| v * v).sum::<f64>();
        let want_g = &grads[k] * (clip / norm);
        assert_close_f64("clipped gradient", g, &want_g, 1e-12, 1e-15);
        let want_w = &before[k] - &(&want_g * lr);
        assert_close_f64(
            "updated weight",
            exec.value_array(p).unwrap(),
            &want_w,
            1e-12,
            1e-15,
        );
    }
    assert!((clipped.sqrt() - clip).abs() < 1e-12);
}

#[test]
fn predict_needs_only_what_the_output_needs() {
    let c = small_seed(true);
    let m = seed_model(&c).unwrap();
    let params = init_params(&m.graph, 2);
    let mut exec =
        CpuExecutor::<f32>::new(&m.graph, m.loss, &params, TrainConfig::default()).unwrap();
    let full = seed_batch(&m, &c, 3);
    let no_labels = Batch {
        inputs: full
            .inputs
            .iter()
            .filter(|(id, _)| *id != m.labels)
            .cloned()
            .collect(),
    };
    let probs = exec.predict(&no_labels, m.probs).unwrap();
    for row in probs.chunks(c.classes) {
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6, "{row:?}");
    }
    // The loss was not computed by that forward pass.
    let err = exec.value(m.loss).unwrap_err();
    assert!(
        matches!(&err, Error::Graph { node, .. } if node == "loss"),
        "{err}"
    );
    // Inspection of intermediate values after a loss pass.
    exec.loss(&full).unwrap();
    let lstm = exec.value(m.graph.expect_id("lstm").unwrap()).unwrap();
    assert_eq!(lstm.len(), c.batch * c.lstm_units);
}

#[test]
fn missing_and_misshapen_inputs_are_named() {
    let c = small_seed(false);
    let m = seed_model(&c).unwrap();
    let params = init_params(&m.graph, 2);
    let mut exec =
        CpuExecutor::<f32>::new(&m.graph, m.loss, &params, TrainConfig::default()).unwrap();
    let full = seed_batch(&m, &c, 3);
    let without = |drop: NodeId| Batch {
        inputs: full
            .inputs
            .iter()
            .filter(|(id, _)| *id != drop)
            .cloned()
            .collect(),
    };

    let err = exec.train_step(&without(m.labels)).unwrap_err();
    assert!(
        matches!(&err, Error::Graph { node, .. } if node == "labels"),
        "{err}"
    );
    let err = exec.gradients(&without(m.tokens)).unwrap_err();
    assert!(
        matches!(&err, Error::Graph { node, .. } if node == "tokens"),
        "{err}"
    );

    let short_images = without(m.images).with(m.images, HostData::F32(vec![0.0; 10]));
    let err = exec.loss(&short_images).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::Shape { .. }), "{msg}");
    assert!(
        msg.contains("images") && msg.contains("[3, 8, 8, 1]") && msg.contains("10"),
        "{msg}"
    );

    let float_tokens = without(m.tokens).with(m.tokens, HostData::F32(vec![0.0; 21]));
    let err = exec.loss(&float_tokens).unwrap_err();
    assert!(
        matches!(&err, Error::Graph { node, .. } if node == "tokens"),
        "{err}"
    );

    let twice = full.clone().with(m.labels, HostData::U32(vec![0; 3]));
    let err = exec.loss(&twice).unwrap_err();
    assert!(
        matches!(&err, Error::Graph { node, .. } if node == "labels"),
        "{err}"
    );

    let bad_label = without(m.labels).with(m.labels, HostData::U32(vec![0, 3, 1]));
    let err = exec.loss(&bad_label).unwrap_err();
    assert!(
        matches!(&err, Error::Graph { node, .. } if node == "loss"),
        "{err}"
    );

    // A failed call changes nothing: the next good one runs.
    assert!(exec.train_step(&full).unwrap().is_finite());
}

#[test]
fn bad_executor_setups_are_rejected() {
    let c = small_seed(false);
    let m = seed_model(&c).unwrap();
    let params = init_params(&m.graph, 2);

    let err = CpuExecutor::<f32>::new(&m.graph, m.loss, &params[1..], TrainConfig::default())
        .unwrap_err();
    assert!(
        matches!(&err, Error::Graph { node, .. } if node == "embedding.embeddings"),
        "{err}"
    );

    let mut short = params.clone();
    short[2].1.pop();
    let err =
        CpuExecutor::<f32>::new(&m.graph, m.loss, &short, TrainConfig::default()).unwrap_err();
    assert!(
        matches!(&err, Error::Shape { op, .. } if op == "lstm.recurrent_kernel"),
        "{err}"
    );

    let err =
        CpuExecutor::<f32>::new(&m.graph, m.logits, &params, TrainConfig::default()).unwrap_err();
    assert!(
        matches!(&err, Error::Graph { node, .. } if node == "dense"),
        "{err}"
    );

    // A loss through Softmax has no backward here.
    let mut g = Graph::new();
    let x = input(&mut g, "x", &[2, 3], DType::F32);
    let labels = input(&mut g, "labels", &[2], DType::U32);
    let h = dense(&mut g, "d", x, 3, None).unwrap();
    let p = g.add("p", Op::Softmax, &[h]).unwrap();
    let loss = g
        .add(
            "loss",
            Op::SoftmaxCrossEntropy {
                class_weights: None,
            },
            &[p, labels],
        )
        .unwrap();
    let params = init_params(&g, 1);
    let err = CpuExecutor::<f32>::new(&g, loss, &params, TrainConfig::default()).unwrap_err();
    assert!(
        matches!(&err, Error::Unsupported { op, .. } if op == "p"),
        "{err}"
    );

    let mut exec = CpuExecutor::<f32>::new(
        &m.graph,
        m.loss,
        &init_params(&m.graph, 2),
        TrainConfig::default(),
    )
    .unwrap();
    let err = exec.set_param(m.images, &[0.0]).unwrap_err();
    assert!(
        matches!(&err, Error::Graph { node, .. } if node == "images"),
        "{err}"
    );
}

#[test]
fn dropout_masks_follow_the_training_step() {
    // x → Dense(6, tanh) h → Dropout(0.5) → Dense(3) → loss.
    let mut g = Graph::new();
    let x = input(&mut g, "x", &[4, 5], DType::F32);
    let labels = input(&mut g, "labels", &[4], DType::U32);
    let h = dense(&mut g, "h", x, 6, Some(Activation::Tanh)).unwrap();
    let drop = crossmodal::nn::dropout(&mut g, "drop", h, 0.5, 3).unwrap();
    let logits = dense(&mut g, "out", drop, 3, None).unwrap();
    let loss = g
        .add(
            "loss",
            Op::SoftmaxCrossEntropy {
                class_weights: None,
            },
            &[logits, labels],
        )
        .unwrap();
    let params = init_params(&g, 2);
    let batch = Batch::new()
        .with(
            x,
            HostData::F32(random(&[4, 5], 3).into_raw_vec_and_offset().0),
        )
        .with(labels, HostData::U32(vec![0, 2, 1, 2]));
    let config = TrainConfig {
        optimizer: Optimizer::Sgd(SgdConfig::default()),
        clip_global_norm: None,
    };
    let mut exec = CpuExecutor::<f64>::new(&g, loss, &params, config).unwrap();

    // The gradient is that of the training loss, with step 0's mask, which
    // every gradient pass before the first step uses.
    exec.run_gradients(&batch).unwrap();
    let first = exec.value_array(drop).unwrap().clone();
    for p in g.params() {
        let name = g.node(p).name.clone();
        let analytic = exec.grad(p).unwrap().clone();
        let w0 = exec.value_array(p).unwrap().clone();
        let numeric = finite_difference(&w0, EPS, |probe| {
            exec.set_param_array(p, probe.as_slice().unwrap()).unwrap();
            exec.run_training_loss(&batch).unwrap()
        });
        exec.set_param_array(p, w0.as_slice().unwrap()).unwrap();
        assert!(analytic.iter().any(|&v| v != 0.0), "{name}");
        assert_close_f64(&name, &analytic, &numeric, RTOL, ATOL);
    }
    exec.run_gradients(&batch).unwrap();
    assert_eq!(
        exec.value_array(drop).unwrap(),
        &first,
        "same step, same mask"
    );
    let dropped = |v: &ArrayD<f64>| v.iter().map(|&x| x == 0.0).collect::<Vec<_>>();
    assert!(dropped(&first).contains(&true) && dropped(&first).contains(&false));

    // At inference the layer is the identity, and the loss differs.
    let train_loss = exec.run_training_loss(&batch).unwrap();
    let eval_loss = exec.run_loss(&batch).unwrap();
    assert_ne!(train_loss, eval_loss);
    assert_eq!(
        exec.predict(&batch, drop).unwrap(),
        exec.predict(&batch, h).unwrap()
    );

    // Each training step draws a new mask; the step counter says which.
    assert_eq!(exec.steps(), 0);
    exec.run_train_step(&batch).unwrap();
    assert_eq!(
        exec.value_array(drop).unwrap(),
        &first,
        "step 0 trains with mask 0"
    );
    exec.run_train_step(&batch).unwrap();
    assert_eq!(exec.steps(), 2);
    assert_ne!(dropped(exec.value_array(drop).unwrap()), dropped(&first));
}
