//! Layers that add nodes and named parameters (`lstm.kernel`,
//! `conv.bias`, …) to a [`Graph`], with Keras' defaults so results compare
//! with the seed's Keras model (Dropout: seeded mask, off at inference);
//! and the seed model itself.

use crate::error::Result;
use crate::graph::{Graph, Init, NodeId, Op};
use crate::ops::activation::Activation;
use crate::ops::conv2d::Padding;
use crate::tensor::DType;

fn param(g: &mut Graph, layer: &str, what: &str, shape: &[usize], init: Init) -> Result<NodeId> {
    g.add(
        &format!("{layer}.{what}"),
        Op::Param {
            shape: shape.to_vec(),
            init,
        },
        &[],
    )
}

fn cols(g: &Graph, x: NodeId) -> usize {
    *g.node(x).value.shape.last().unwrap_or(&1)
}

/// Keras `Embedding(vocab, dim)` (uniform ±0.05). `tokens` are `[T,B]`.
pub fn embedding(
    g: &mut Graph,
    name: &str,
    tokens: NodeId,
    vocab: usize,
    dim: usize,
    padding_idx: Option<u32>,
) -> Result<NodeId> {
    let table = param(g, name, "embeddings", &[vocab, dim], Init::Uniform(0.05))?;
    g.add(name, Op::Embedding { padding_idx }, &[table, tokens])
}

/// Keras `LSTM(units)`: Glorot-uniform kernel, orthogonal recurrent kernel,
/// forget-gate bias 1. `mask`: the token ids (0 = padding step).
pub fn lstm(
    g: &mut Graph,
    name: &str,
    x: NodeId,
    units: usize,
    return_sequences: bool,
    mask: Option<NodeId>,
) -> Result<NodeId> {
    let d = cols(g, x);
    let w = param(g, name, "kernel", &[d, 4 * units], Init::GlorotUniform)?;
    let u = param(
        g,
        name,
        "recurrent_kernel",
        &[units, 4 * units],
        Init::Orthogonal,
    )?;
    let b = param(g, name, "bias", &[4 * units], Init::LstmBias)?;
    let mut inputs = vec![x, w, u, b];
    inputs.extend(mask);
    g.add(
        name,
        Op::Lstm {
            return_sequences,
            masked: mask.is_some(),
        },
        &inputs,
    )
}

/// Keras `SimpleRNN(units)` (tanh).
pub fn rnn(
    g: &mut Graph,
    name: &str,
    x: NodeId,
    units: usize,
    return_sequences: bool,
    mask: Option<NodeId>,
) -> Result<NodeId> {
    let d = cols(g, x);
    let w = param(g, name, "kernel", &[d, units], Init::GlorotUniform)?;
    let u = param(
        g,
        name,
        "recurrent_kernel",
        &[units, units],
        Init::Orthogonal,
    )?;
    let b = param(g, name, "bias", &[units], Init::Zeros)?;
    let mut inputs = vec![x, w, u, b];
    inputs.extend(mask);
    g.add(
        name,
        Op::Rnn {
            return_sequences,
            masked: mask.is_some(),
        },
        &inputs,
    )
}

/// Settings of a Keras `Conv2D` layer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Conv2dLayer {
    pub filters: usize,
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub padding: Padding,
    pub activation: Option<Activation>,
}

/// Keras `Conv2D`: Glorot-uniform kernel, zero bias.
pub fn conv2d(g: &mut Graph, name: &str, x: NodeId, layer: Conv2dLayer) -> Result<NodeId> {
    let cin = cols(g, x);
    let [kh, kw] = layer.kernel;
    let w = param(
        g,
        name,
        "kernel",
        &[kh, kw, cin, layer.filters],
        Init::GlorotUniform,
    )?;
    let b = param(g, name, "bias", &[layer.filters], Init::Zeros)?;
    let op = Op::Conv2d {
        stride: layer.stride,
        padding: layer.padding,
    };
    match layer.activation {
        Some(a) => {
            let y = g.add(&format!("{name}.linear"), op, &[x, w, b])?;
            g.add(name, Op::Activation(a), &[y])
        }
        None => g.add(name, op, &[x, w, b]),
    }
}

/// Keras `Dense(units, activation)`: Glorot-uniform kernel, zero bias.
/// A softmax activation is left to the loss (fused softmax-cross-entropy).
pub fn dense(
    g: &mut Graph,
    name: &str,
    x: NodeId,
    units: usize,
    activation: Option<Activation>,
) -> Result<NodeId> {
    let f = cols(g, x);
    let w = param(g, name, "kernel", &[f, units], Init::GlorotUniform)?;
    let b = param(g, name, "bias", &[units], Init::Zeros)?;
    let linear = if activation.is_some() {
        format!("{name}.linear")
    } else {
        name.to_string()
    };
    let y = g.add(&linear, Op::Dense, &[x, w, b])?;
    match activation {
        Some(a) => g.add(name, Op::Activation(a), &[y]),
        None => Ok(y),
    }
}

/// Keras `Average()`: the elementwise mean of k >= 2 same-shape inputs
/// (late fusion: average the per-modality heads' logits, then the fused
/// softmax-cross-entropy applies to the average).
pub fn average(g: &mut Graph, name: &str, inputs: &[NodeId]) -> Result<NodeId> {
    g.add(name, Op::Average, inputs)
}

/// Keras `Dropout(rate, seed=seed)`: drops with probability `rate` and
/// scales the kept values by `1/(1-rate)` in training (a new mask every
/// training step, reproducible from `seed`); the identity at inference.
pub fn dropout(g: &mut Graph, name: &str, x: NodeId, rate: f32, seed: u64) -> Result<NodeId> {
    g.add(name, Op::Dropout { rate, seed }, &[x])
}

/// Sizes of the seed model (DESIGN.md): tokens[100] → Embedding(10000, 32)
/// → LSTM(64); 28×28×1 → Conv2D(32, 3×3, ReLU) → MaxPool 2×2 → Flatten;
/// Concat → Dense(2) → softmax.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SeedConfig {
    pub batch: usize,
    pub vocab: usize,
    pub seq_len: usize,
    pub embed_dim: usize,
    pub lstm_units: usize,
    pub image: [usize; 3],
    pub filters: usize,
    pub classes: usize,
    /// Mask padding steps (token 0) in the LSTM, as Keras `mask_zero`.
    pub mask_padding: bool,
}

impl Default for SeedConfig {
    fn default() -> Self {
        Self {
            batch: 32,
            vocab: 10000,
            seq_len: 100,
            embed_dim: 32,
            lstm_units: 64,
            image: [28, 28, 1],
            filters: 32,
            classes: 2,
            mask_padding: false,
        }
    }
}

/// The seed model's graph and its named ends.
#[derive(Clone, Debug)]
pub struct SeedModel {
    pub graph: Graph,
    /// `[T,B]` u32 token ids (time-major).
    pub tokens: NodeId,
    /// `[B,H,W,C]` f32 images.
    pub images: NodeId,
    /// `[B]` u32 class indices.
    pub labels: NodeId,
    pub logits: NodeId,
    pub probs: NodeId,
    pub loss: NodeId,
}

/// Builds the seed model.
pub fn seed_model(c: &SeedConfig) -> Result<SeedModel> {
    let mut g = Graph::new();
    let tokens = g.add(
        "tokens",
        Op::Input {
            shape: vec![c.seq_len, c.batch],
            dtype: DType::U32,
        },
        &[],
    )?;
    let [h, w, ch] = c.image;
    let images = g.add(
        "images",
        Op::Input {
            shape: vec![c.batch, h, w, ch],
            dtype: DType::F32,
        },
        &[],
    )?;
    let labels = g.add(
        "labels",
        Op::Input {
            shape: vec![c.batch],
            dtype: DType::U32,
        },
        &[],
    )?;
    let padding = c.mask_padding.then_some(0);
    let e = embedding(&mut g, "embedding", tokens, c.vocab, c.embed_dim, padding)?;
    let text = lstm(
        &mut g,
        "lstm",
        e,
        c.lstm_units,
        false,
        c.mask_padding.then_some(tokens),
    )?;
    let conv_layer = Conv2dLayer {
        filters: c.filters,
        kernel: [3, 3],
        stride: [1, 1],
        padding: Padding::Valid,
        activation: Some(Activation::Relu),
    };
    let conv = conv2d(&mut g, "conv", images, conv_layer)?;
    let pool = g.add(
        "pool",
        Op::MaxPool2d {
            pool: [2, 2],
            stride: [2, 2],
        },
        &[conv],
    )?;
    let flat = g.add("flatten", Op::Flatten, &[pool])?;
    let fused = g.add("concat", Op::Concat, &[text, flat])?;
    let logits = dense(&mut g, "dense", fused, c.classes, None)?;
    let probs = g.add("probs", Op::Softmax, &[logits])?;
    let loss = g.add(
        "loss",
        Op::SoftmaxCrossEntropy {
            class_weights: None,
        },
        &[logits, labels],
    )?;
    Ok(SeedModel {
        graph: g,
        tokens,
        images,
        labels,
        logits,
        probs,
        loss,
    })
}
