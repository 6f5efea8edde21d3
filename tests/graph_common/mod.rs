//! Models and batches shared by the executor tests (`graph_gpu`,
//! `graph_backends`): the small seed model with pre-padded tokens, and two
//! graphs the seed model does not cover (a sequence-returning LSTM into a
//! masked RNN; a convolution stack with tanh, average pooling and a value
//! used three times).
#![allow(dead_code)]

use crate::common::{random, random_u32};
use crossmodal::graph::init::init_params;
use crossmodal::graph::{Batch, Graph, HostData, NodeId, Op};
use crossmodal::nn::{self, Conv2dLayer, SeedConfig, SeedModel};
use crossmodal::ops::activation::Activation;
use crossmodal::ops::conv2d::Padding;
use crossmodal::DType;

/// The seed model at test size (vocab 50, seq 7, 8×8 images).
pub fn small(mask_padding: bool) -> SeedConfig {
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

/// One batch of the seed model's inputs: time-major tokens, pre-padded
/// (sample b starts with `[0, 2, 5][b % 3]` zeros, at least 2 real steps)
/// with one zero inside sample 0 (a masked middle step); images; labels.
pub struct SeedData {
    pub tokens: Vec<u32>,
    pub images: Vec<f32>,
    pub labels: Vec<u32>,
}

impl SeedData {
    pub fn new(c: &SeedConfig, seed: u64) -> Self {
        let (t, b) = (c.seq_len, c.batch);
        let ids = random_u32(t * b, 1, c.vocab as u32, seed);
        let mut tokens = vec![0; t * b];
        for j in 0..b {
            let pad = [0, 2, 5][j % 3].min(t.saturating_sub(2));
            for i in pad..t {
                tokens[i * b + j] = ids[i * b + j];
            }
        }
        tokens[(t / 2) * b] = 0;
        let [h, w, ch] = c.image;
        let images = random(&[b, h, w, ch], seed + 1).into_raw_vec_and_offset().0;
        let labels = random_u32(b, 0, c.classes as u32, seed + 2);
        Self {
            tokens,
            images,
            labels,
        }
    }

    pub fn batch(&self, m: &SeedModel) -> Batch {
        Batch::new()
            .with(m.tokens, HostData::U32(self.tokens.clone()))
            .with(m.images, HostData::F32(self.images.clone()))
            .with(m.labels, HostData::U32(self.labels.clone()))
    }
}

pub fn input(g: &mut Graph, name: &str, shape: &[usize], dtype: DType) -> NodeId {
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

/// A graph with its loss, initial parameters and one batch.
pub struct Case {
    pub graph: Graph,
    pub loss: NodeId,
    pub init: Vec<(NodeId, Vec<f32>)>,
    pub batch: Batch,
}

/// Embedding → LSTM (every step) → masked SimpleRNN (last step) → Dense →
/// loss; one masked final step and one masked middle step.
pub fn sequence_lstm_into_masked_rnn() -> Case {
    let (t, b, vocab, classes) = (6, 4, 20, 3);
    let mut g = Graph::new();
    let tokens = input(&mut g, "tokens", &[t, b], DType::U32);
    let labels = input(&mut g, "labels", &[b], DType::U32);
    let e = nn::embedding(&mut g, "embedding", tokens, vocab, 5, None).unwrap();
    let seq = nn::lstm(&mut g, "lstm", e, 4, true, None).unwrap();
    let last = nn::rnn(&mut g, "rnn", seq, 3, false, Some(tokens)).unwrap();
    let logits = nn::dense(&mut g, "dense", last, classes, None).unwrap();
    let loss = g
        .add(
            "loss",
            Op::SoftmaxCrossEntropy {
                class_weights: None,
            },
            &[logits, labels],
        )
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
    Case {
        graph: g,
        loss,
        init,
        batch,
    }
}

/// Conv (tanh, Same) → Conv (Same) → AvgPool → Flatten f; f feeds two
/// Dense layers and the concat [p, f, q] → Dense → loss, so its gradient is
/// the sum of three contributions. conv1 has 4 filters, so conv2's input
/// gradient runs as a flipped forward conv on the GPU (conv1's, into the
/// 2-channel images, as the gather kernel).
pub fn conv_stack_with_shared_value() -> Case {
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
    let c1 = nn::conv2d(&mut g, "conv1", images, layer(4, Some(Activation::Tanh))).unwrap();
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
    let p = nn::dense(&mut g, "p", f, 4, Some(Activation::Sigmoid)).unwrap();
    let q = nn::dense(&mut g, "q", f, 3, Some(Activation::Relu)).unwrap();
    let cat = g.add("concat", Op::Concat, &[p, f, q]).unwrap();
    let logits = nn::dense(&mut g, "out", cat, classes, None).unwrap();
    let loss = g
        .add(
            "loss",
            Op::SoftmaxCrossEntropy {
                class_weights: None,
            },
            &[logits, labels],
        )
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
    Case {
        graph: g,
        loss,
        init,
        batch,
    }
}

/// Late fusion, tiny: tokens → Embedding → LSTM → Dense(3) "text_head";
/// images → Conv(ReLU) → MaxPool → Flatten → Dense(3) "image_head";
/// Average of the two heads' logits → loss, with `class_weights` if given.
/// Every class appears among the labels.
pub fn late_fusion(class_weights: Option<Vec<f32>>) -> Case {
    let (t, b, vocab, classes) = (6, 4, 20, 3);
    let mut g = Graph::new();
    let tokens = input(&mut g, "tokens", &[t, b], DType::U32);
    let images = input(&mut g, "images", &[b, 6, 5, 1], DType::F32);
    let labels = input(&mut g, "labels", &[b], DType::U32);
    let e = nn::embedding(&mut g, "embedding", tokens, vocab, 4, None).unwrap();
    let h = nn::lstm(&mut g, "lstm", e, 5, false, None).unwrap();
    let text_head = nn::dense(&mut g, "text_head", h, classes, None).unwrap();
    let layer = Conv2dLayer {
        filters: 2,
        kernel: [3, 2],
        stride: [1, 1],
        padding: Padding::Valid,
        activation: Some(Activation::Relu),
    };
    let conv = nn::conv2d(&mut g, "conv", images, layer).unwrap();
    let pool = g
        .add(
            "pool",
            Op::MaxPool2d {
                pool: [2, 2],
                stride: [2, 2],
            },
            &[conv],
        )
        .unwrap();
    let flat = g.add("flatten", Op::Flatten, &[pool]).unwrap();
    let image_head = nn::dense(&mut g, "image_head", flat, classes, None).unwrap();
    let logits = nn::average(&mut g, "average", &[text_head, image_head]).unwrap();
    let loss = g
        .add(
            "loss",
            Op::SoftmaxCrossEntropy { class_weights },
            &[logits, labels],
        )
        .unwrap();
    let mut init = init_params(&g, 7);
    for (id, v) in init.iter_mut() {
        let name = &g.node(*id).name;
        if name == "embedding.embeddings" {
            // Larger embeddings so every path carries a visible gradient.
            v.iter_mut().for_each(|x| *x *= 20.0);
        } else if name.ends_with(".bias") {
            // Non-zero biases so no gradient vanishes by symmetry.
            v.iter_mut()
                .enumerate()
                .for_each(|(i, x)| *x = 0.1 * (i as f32 - 1.0));
        }
    }
    let batch = Batch::new()
        .with(tokens, HostData::U32(random_u32(t * b, 1, vocab as u32, 8)))
        .with(
            images,
            HostData::F32(random(&[b, 6, 5, 1], 9).into_raw_vec_and_offset().0),
        )
        .with(labels, HostData::U32(vec![0, 2, 1, 2]));
    Case {
        graph: g,
        loss,
        init,
        batch,
    }
}
