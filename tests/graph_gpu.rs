//! The GPU executor (`graph::gpu`):
//! - the small seed model: loss, probabilities, inspected values and every
//!   parameter gradient against a CPU computation built here from the ops'
//!   `*_cpu` references in f64, which is itself checked against central
//!   finite differences (f64);
//! - graphs the seed model does not cover (a sequence-returning LSTM into a
//!   masked RNN; two convolutions with tanh and average pooling; a value
//!   used three times): every parameter gradient against a directional
//!   finite difference of the GPU loss (f32, loose);
//! - determinism, learning, the memory plan (reuse, no allocation per
//!   step), dispatch and submit counts, timestamps, typed errors.

mod common;

use common::{assert_close, finite_difference, gpu, random, random_u32};
use crossmodal::graph::gpu::{ExecOptions, GpuExecutor};
use crossmodal::graph::init::init_params;
use crossmodal::graph::{
    Batch, Executor, Graph, HostData, Init, NodeId, Op, Optimizer, TrainConfig,
};
use crossmodal::nn::{self, seed_model, Conv2dLayer, SeedConfig, SeedModel};
use crossmodal::ops::activation::{activation_backward_cpu, activation_forward_cpu, Activation};
use crossmodal::ops::bias::{bias_add_cpu, bias_backward_cpu};
use crossmodal::ops::concat::concat_forward_cpu;
use crossmodal::ops::conv2d::{
    conv2d_backward_bias_cpu, conv2d_backward_weight_cpu, conv2d_forward_cpu, Conv2dGeometry,
    Padding,
};
use crossmodal::ops::embedding::{embedding_backward_cpu, embedding_forward_cpu};
use crossmodal::ops::lstm::{
    lstm_backward_cpu, lstm_forward_cpu, RecurrentCpuGrads, RecurrentDims,
};
use crossmodal::ops::matmul::{matmul_cpu, Layout};
use crossmodal::ops::pool2d::{maxpool_backward_cpu, maxpool_forward_cpu, Pool2dGeometry};
use crossmodal::ops::softmax_cross_entropy::{
    softmax_cross_entropy_backward_cpu, softmax_cross_entropy_forward_cpu,
};
use crossmodal::optim::{adam::AdamConfig, sgd::SgdConfig};
use crossmodal::{DType, Error, GpuContext};
use ndarray::{s, Array1, Array2, Array3, Array4, ArrayD, Axis, Ix1, Ix2, Ix4, IxDyn};

fn small(mask_padding: bool) -> SeedConfig {
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

/// One batch of the seed model's inputs: time-major tokens with padding
/// (zeros) at the end of two sequences and a few random zeros, images,
/// labels.
struct SeedData {
    tokens: Vec<u32>,
    images: Vec<f32>,
    labels: Vec<u32>,
}

impl SeedData {
    fn new(c: &SeedConfig, seed: u64) -> Self {
        let (t, b) = (c.seq_len, c.batch);
        let mut tokens = random_u32(t * b, 0, c.vocab as u32, seed);
        for j in 0..b {
            // Sequence j has t - 2j real steps (at least 2).
            let len = t.saturating_sub(2 * j).max(2);
            for i in len..t {
                tokens[i * b + j] = 0;
            }
        }
        let [h, w, ch] = c.image;
        let images = random(&[b, h, w, ch], seed + 1).into_raw_vec_and_offset().0;
        let labels = random_u32(b, 0, c.classes as u32, seed + 2);
        Self {
            tokens,
            images,
            labels,
        }
    }

    fn batch(&self, m: &SeedModel) -> Batch {
        Batch::new()
            .with(m.tokens, HostData::U32(self.tokens.clone()))
            .with(m.images, HostData::F32(self.images.clone()))
            .with(m.labels, HostData::U32(self.labels.clone()))
    }
}

/// The seed model on the CPU, from the ops' references, in f64.
struct Reference {
    loss: f64,
    probs: Array2<f64>,
    h_last: Array2<f64>,
    conv_relu: ArrayD<f64>,
    /// In `Graph::params` order.
    grads: Vec<ArrayD<f64>>,
}

fn reference(c: &SeedConfig, params: &[ArrayD<f64>], d: &SeedData) -> Reference {
    let (t, b, dim, h) = (c.seq_len, c.batch, c.embed_dim, c.lstm_units);
    let p2 = |i: usize| params[i].view().into_dimensionality::<Ix2>().unwrap();
    let p1 = |i: usize| params[i].view().into_dimensionality::<Ix1>().unwrap();
    let p4 = |i: usize| params[i].view().into_dimensionality::<Ix4>().unwrap();
    let (table, w, u, bias) = (p2(0), p2(1), p2(2), p1(3));
    let (ck, cb, dk, db) = (p4(4), p1(5), p2(6), p1(7));

    // Text: embedding (time-major) and LSTM.
    let x = embedding_forward_cpu(&table, &d.tokens)
        .into_shape_with_order((t, b, dim))
        .unwrap();
    let mask = c
        .mask_padding
        .then(|| Array2::from_shape_fn((t, b), |(i, j)| d.tokens[i * b + j] != 0));
    let mask_view = mask.as_ref().map(|m| m.view());
    let states = lstm_forward_cpu(&x.view(), &w, &u, &bias, mask_view.as_ref());
    let h_last = states.h_all.index_axis(Axis(0), t).to_owned();

    // Image: conv, ReLU, max pool, flatten.
    let [ih, iw, ic] = c.image;
    let images = ArrayD::from_shape_vec(IxDyn(&[b, ih, iw, ic]), d.images.clone())
        .unwrap()
        .mapv(|v| v as f64)
        .into_dimensionality::<Ix4>()
        .unwrap();
    let g =
        Conv2dGeometry::new([b, ih, iw, ic], c.filters, [3, 3], [1, 1], Padding::Valid).unwrap();
    let conv = conv2d_forward_cpu(&images.view(), &ck, &cb, &g).into_dyn();
    let relu = activation_forward_cpu(Activation::Relu, &conv.view())
        .into_dimensionality::<Ix4>()
        .unwrap();
    let pg = Pool2dGeometry::new(g.output_shape(), [2, 2], [2, 2]).unwrap();
    let (pool, argmax) = maxpool_forward_cpu(&relu.view(), &pg);
    let flat_len = pool.len() / b;
    let flat = pool.into_shape_with_order((b, flat_len)).unwrap();

    // Fusion, dense, loss.
    let fused = concat_forward_cpu(&[h_last.view().into_dyn(), flat.view().into_dyn()])
        .into_dimensionality::<Ix2>()
        .unwrap();
    let mut logits = matmul_cpu(Layout::AB, &fused.view(), &dk).into_dyn();
    bias_add_cpu(&mut logits, &db);
    let logits = logits.into_dimensionality::<Ix2>().unwrap();
    let (probs, rows) = softmax_cross_entropy_forward_cpu(&logits.view(), &d.labels);
    let loss = rows.sum() / b as f64;

    // Backward, in reverse.
    let mut dlogits = Array2::zeros(logits.raw_dim());
    softmax_cross_entropy_backward_cpu(&mut dlogits, &probs.view(), &d.labels);
    let dfused = matmul_cpu(Layout::ABt, &dlogits.view(), &dk);
    let ddk = matmul_cpu(Layout::AtB, &fused.view(), &dlogits.view());
    let mut ddb = Array1::zeros(db.len());
    bias_backward_cpu(&mut ddb, &dlogits.view().into_dyn());
    let dh_last = dfused.slice(s![.., ..h]).to_owned();
    let dpool = dfused
        .slice(s![.., h..])
        .to_owned()
        .into_shape_with_order(pg.output_shape())
        .unwrap();
    let mut drelu = Array4::zeros(relu.raw_dim());
    maxpool_backward_cpu(&mut drelu, &dpool.view(), &argmax.view(), &pg);
    let mut dconv = ArrayD::zeros(conv.raw_dim());
    activation_backward_cpu(
        Activation::Relu,
        &mut dconv,
        &drelu.view().into_dyn(),
        &conv.view(),
    );
    let dconv = dconv.into_dimensionality::<Ix4>().unwrap();
    let mut dck = Array4::zeros(ck.raw_dim());
    conv2d_backward_weight_cpu(&mut dck, &dconv.view(), &images.view(), &g);
    let mut dcb = Array1::zeros(cb.len());
    conv2d_backward_bias_cpu(&mut dcb, &dconv.view(), &g);

    let mut dh_seq = Array3::zeros((t, b, h));
    dh_seq.index_axis_mut(Axis(0), t - 1).assign(&dh_last);
    let mut rg = RecurrentCpuGrads::zeros(RecurrentDims::new(t, b, dim, h), 4 * h);
    lstm_backward_cpu(
        &mut rg,
        &dh_seq.view(),
        &states,
        &x.view(),
        &w,
        &u,
        mask_view.as_ref(),
    );
    let mut dtable = Array2::zeros(table.raw_dim());
    let dx = rg.dx.into_shape_with_order((t * b, dim)).unwrap();
    embedding_backward_cpu(
        &mut dtable,
        &dx.view(),
        &d.tokens,
        c.mask_padding.then_some(0),
    );
    Reference {
        loss,
        probs,
        h_last,
        conv_relu: relu.into_dyn(),
        grads: vec![
            dtable.into_dyn(),
            rg.dw.into_dyn(),
            rg.du.into_dyn(),
            rg.db.into_dyn(),
            dck.into_dyn(),
            dcb.into_dyn(),
            ddk.into_dyn(),
            ddb.into_dyn(),
        ],
    }
}

fn f64_params(g: &Graph, params: &[(NodeId, Vec<f32>)]) -> Vec<ArrayD<f64>> {
    params
        .iter()
        .map(|(id, v)| {
            ArrayD::from_shape_vec(
                IxDyn(&g.node(*id).value.shape),
                v.iter().map(|&x| x as f64).collect(),
            )
            .unwrap()
        })
        .collect()
}

fn f32s(a: &ArrayD<f64>) -> Vec<f32> {
    a.iter().map(|&v| v as f32).collect()
}

#[test]
fn cpu_reference_matches_finite_differences() {
    // The reference the GPU is compared with is itself checked (f64).
    for mask in [true, false] {
        let c = small(mask);
        let m = seed_model(&c).unwrap();
        let params = f64_params(&m.graph, &init_params(&m.graph, 7));
        let data = SeedData::new(&c, 11);
        let r = reference(&c, &params, &data);
        for (i, p) in params.iter().enumerate() {
            let fd = finite_difference(p, 1e-6, |probe| {
                let mut q = params.clone();
                q[i] = probe.clone();
                reference(&c, &q, &data).loss
            });
            common::assert_close_f64(
                &format!("reference gradient {i} (mask {mask})"),
                &r.grads[i],
                &fd,
                1e-5,
                1e-8,
            );
        }
    }
}

#[test]
fn seed_model_matches_cpu_reference() {
    let Some(ctx) = gpu() else { return };
    for mask in [true, false] {
        let c = small(mask);
        let m = seed_model(&c).unwrap();
        let g = &m.graph;
        let init = init_params(g, 3);
        let data = SeedData::new(&c, 5);
        let r = reference(&c, &f64_params(g, &init), &data);
        let inspect = ["lstm", "conv", "concat"].map(|n| g.id(n).unwrap());
        let mut ex = GpuExecutor::with_options(
            ctx,
            g,
            m.loss,
            &init,
            TrainConfig::default(),
            ExecOptions {
                inspect: inspect.to_vec(),
            },
        )
        .unwrap();
        let batch = data.batch(&m);
        let what = |s: &str| format!("{s} (mask {mask})");

        let (loss, grads) = ex.gradients(&batch).unwrap();
        assert_close(&what("loss"), &[loss], &[r.loss as f32], 1e-5, 0.0);
        for (k, (got, want)) in grads.iter().zip(&r.grads).enumerate() {
            let name = &g.node(g.params()[k]).name;
            // f32 against f64: rtol 1e-4 with an absolute floor of 1e-5 of
            // the gradient's largest entry (observed: below 2e-4 and 4e-6).
            let want = f32s(want);
            let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            assert_close(&what(name), got, &want, 1e-4, 1e-5 * scale);
        }
        // Inspected values survive the backward pass.
        let h = ex.value(g.id("lstm").unwrap()).unwrap();
        assert_close(
            &what("lstm h_T"),
            &h,
            &f32s(&r.h_last.into_dyn()),
            1e-5,
            1e-6,
        );
        let relu = ex.value(g.id("conv").unwrap()).unwrap();
        assert_close(&what("conv relu"), &relu, &f32s(&r.conv_relu), 1e-5, 1e-6);
        // Gradients of inspected nodes: d loss / d h_T is the first block
        // of d loss / d concat.
        let dcat = ex.gradient_of(g.id("concat").unwrap()).unwrap();
        let dh = ex.gradient_of(g.id("lstm").unwrap()).unwrap();
        let cols = dcat.len() / c.batch;
        let first: Vec<f32> = (0..c.batch)
            .flat_map(|r| dcat[r * cols..r * cols + c.lstm_units].to_vec())
            .collect();
        assert_eq!(
            dh, first,
            "the LSTM's gradient is its block of the concat's"
        );

        assert_close(
            &what("loss()"),
            &[ex.loss(&batch).unwrap()],
            &[loss],
            0.0,
            0.0,
        );
        let probs = ex.predict(&batch, m.probs).unwrap();
        assert_close(
            &what("probs"),
            &probs,
            &f32s(&r.probs.into_dyn()),
            1e-5,
            1e-6,
        );
    }
}

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

#[test]
fn sequence_lstm_into_masked_rnn_gradients() {
    let Some(ctx) = gpu() else { return };
    let (t, b, vocab, classes) = (6, 4, 20, 3);
    let mut g = Graph::new();
    let tokens = input(&mut g, "tokens", &[t, b], DType::U32);
    let labels = input(&mut g, "labels", &[b], DType::U32);
    let e = nn::embedding(&mut g, "embedding", tokens, vocab, 5, None).unwrap();
    let seq = nn::lstm(&mut g, "lstm", e, 4, true, None).unwrap();
    let last = nn::rnn(&mut g, "rnn", seq, 3, false, Some(tokens)).unwrap();
    let logits = nn::dense(&mut g, "dense", last, classes, None).unwrap();
    let loss = g
        .add("loss", Op::SoftmaxCrossEntropy, &[logits, labels])
        .unwrap();
    let mut init = init_params(&g, 1);
    // Larger embeddings so every path carries a visible gradient.
    init[0].1.iter_mut().for_each(|v| *v *= 20.0);
    let mut toks = random_u32(t * b, 1, vocab as u32, 2);
    toks[(t - 1) * b + 1] = 0; // a masked final step
    toks[2 * b + 2] = 0; // a masked middle step
    let batch = Batch::new()
        .with(tokens, HostData::U32(toks))
        .with(labels, HostData::U32(random_u32(b, 0, classes as u32, 3)));
    let mut ex = GpuExecutor::new(ctx, &g, loss, &init, TrainConfig::default()).unwrap();
    check_directional(&mut ex, &g, &batch, 1e-2, 5e-3);
}

#[test]
fn conv_stack_with_shared_value_gradients() {
    let Some(ctx) = gpu() else { return };
    let (b, classes) = (3, 2);
    let mut g = Graph::new();
    let images = input(&mut g, "images", &[b, 9, 7, 2], DType::F32);
    let labels = input(&mut g, "labels", &[b], DType::U32);
    let layer = |filters, activation| Conv2dLayer {
        filters,
        kernel: [3, 2],
        stride: [1, 1],
        padding: Padding::Same,
        activation,
    };
    let c1 = nn::conv2d(&mut g, "conv1", images, layer(3, Some(Activation::Tanh))).unwrap();
    let c2 = nn::conv2d(&mut g, "conv2", c1, layer(4, None)).unwrap();
    let pool = g
        .add(
            "pool",
            Op::AvgPool2d {
                pool: [2, 2],
                stride: [2, 2],
            },
            &[c2],
        )
        .unwrap();
    let f = g.add("flatten", Op::Flatten, &[pool]).unwrap();
    // f feeds three nodes: its gradient is the sum of three contributions.
    let p = nn::dense(&mut g, "p", f, 4, Some(Activation::Sigmoid)).unwrap();
    let q = nn::dense(&mut g, "q", f, 3, Some(Activation::Relu)).unwrap();
    let cat = g.add("concat", Op::Concat, &[p, f, q]).unwrap();
    let logits = nn::dense(&mut g, "out", cat, classes, None).unwrap();
    let loss = g
        .add("loss", Op::SoftmaxCrossEntropy, &[logits, labels])
        .unwrap();
    let mut init = init_params(&g, 4);
    // Non-zero biases so no gradient vanishes by symmetry.
    for (id, v) in init.iter_mut() {
        if g.node(*id).name.ends_with(".bias") {
            v.iter_mut()
                .enumerate()
                .for_each(|(i, x)| *x = 0.1 * (i as f32 - 1.0));
        }
    }
    let batch = Batch::new()
        .with(
            images,
            HostData::F32(random(&[b, 9, 7, 2], 5).into_raw_vec_and_offset().0),
        )
        .with(labels, HostData::U32(random_u32(b, 0, classes as u32, 6)));
    let mut ex = GpuExecutor::new(ctx, &g, loss, &init, TrainConfig::default()).unwrap();
    check_directional(&mut ex, &g, &batch, 1e-2, 5e-3);
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
    let batch = SeedData::new(&c, 1).batch(&m);
    ex.train_step(&batch).unwrap();
    let s = ex.step_stats();
    assert_eq!(s.submits, 1);
    assert_eq!(s.readback_bytes, 4, "only the loss is read back");
    // Forward: embedding 1; LSTM input projection + T gate steps + T-1
    // recurrent matmuls = 2T; conv 1, ReLU 1, pool 1, concat 2 (one per
    // input), dense 2 (matmul, bias), loss 2 (softmax-CE, mean).
    assert_eq!(s.forward_dispatches, 1 + 2 * t + 1 + 1 + 1 + 2 + 2 + 2);
    // Backward: loss 1; dense 3 (dx, dW, db); concat 2; pool 1; ReLU 1;
    // conv 2 (weight, bias: the images need no gradient); LSTM T gate
    // steps + T-1 carries + dW, dU, db, dx = 2T + 3; embedding 1.
    assert_eq!(
        s.backward_dispatches,
        1 + 3 + 2 + 1 + 1 + 2 + (2 * t + 3) + 1
    );
    assert_eq!(
        s.update_dispatches,
        g.params().len(),
        "one Adam update each"
    );
    // Every gradient buffer is cleared once: 8 parameters and the
    // gradients of dense, concat, lstm, pool (= flatten), conv, conv.linear
    // and embedding; plus h_all/c_all slot 0 when their buffers are shared.
    assert!(s.clears >= 8 + 7 && s.clears <= 8 + 7 + 2, "{s:?}");

    ex.predict(&batch, m.probs).unwrap();
    let p = ex.step_stats();
    assert_eq!(p.submits, 1);
    assert_eq!(p.backward_dispatches + p.update_dispatches, 0);
    // The forward minus the loss (2), plus the softmax (1).
    assert_eq!(p.forward_dispatches, s.forward_dispatches - 2 + 1);
    assert_eq!(p.writes, 2, "tokens and images; labels are not needed");
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
    let clip = TrainConfig {
        clip_global_norm: Some(1.0),
        ..TrainConfig::default()
    };
    let e = GpuExecutor::new(ctx, g, m.loss, &init, clip).err().unwrap();
    assert!(matches!(e, Error::Unsupported { .. }), "{e}");
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
