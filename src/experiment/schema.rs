//! The RON experiment schema: what a researcher writes. Every struct
//! rejects unknown fields, so a typo is an error with its line and column
//! rather than a silently ignored setting.

use serde::{Deserialize, Serialize};

use crate::ops::activation::Activation;
use crate::ops::conv2d::Padding;

/// Which backend runs the experiment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Backend {
    /// The GPU when an adapter exists, else the CPU backend with a loud notice.
    #[default]
    Auto,
    /// wgpu; no adapter is an error.
    Gpu,
    /// The ndarray reference backend.
    Cpu,
}

/// A data input of the model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum InputKind {
    /// Token ids of the sample's text, `seq_len` long (padded/truncated).
    Tokens { seq_len: usize },
    /// The sample's image, `[height, width, channels]`.
    Image {
        height: usize,
        width: usize,
        channels: usize,
    },
}

/// One layer: its kind and the names of the nodes it reads (model inputs
/// or earlier layers, in any order in the file).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerSpec {
    pub name: String,
    pub kind: LayerKind,
    #[serde(default)]
    pub inputs: Vec<String>,
}

/// The layers an experiment can use, with Keras' names and defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum LayerKind {
    /// `mask_zero`: token 0 is padding; downstream LSTM/RNN skip those steps.
    Embedding {
        vocab: usize,
        dim: usize,
        #[serde(default)]
        mask_zero: bool,
    },
    Lstm {
        units: usize,
        #[serde(default)]
        return_sequences: bool,
    },
    SimpleRnn {
        units: usize,
        #[serde(default)]
        return_sequences: bool,
    },
    Conv2d {
        filters: usize,
        kernel: (usize, usize),
        #[serde(default = "one_one")]
        strides: (usize, usize),
        #[serde(default = "valid")]
        padding: Padding,
        #[serde(default)]
        activation: Option<Activation>,
    },
    MaxPool2d {
        pool: (usize, usize),
        #[serde(default)]
        strides: Option<(usize, usize)>,
    },
    AvgPool2d {
        pool: (usize, usize),
        #[serde(default)]
        strides: Option<(usize, usize)>,
    },
    Flatten,
    Dense {
        units: usize,
        /// `Softmax` on the output layer is fused into the loss.
        #[serde(default)]
        activation: Option<OutputActivation>,
    },
    Concat,
    /// Keras `Average()`: the elementwise mean of two or more inputs of one
    /// shape (late fusion: the output averages the per-modality heads'
    /// logits, and the loss applies softmax to the average).
    Average,
    Dropout {
        rate: f32,
    },
}

/// A Dense layer's activation: the elementwise ones, or softmax (only on
/// the output layer, where it is fused with the cross-entropy).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OutputActivation {
    Relu,
    Sigmoid,
    Tanh,
    Softmax,
}

fn one_one() -> (usize, usize) {
    (1, 1)
}

fn valid() -> Padding {
    Padding::Valid
}

/// The model: named inputs, layers, and which layer gives the class logits.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    pub inputs: Vec<(String, InputKind)>,
    pub layers: Vec<LayerSpec>,
    /// The layer whose output is the class logits, `[batch, classes]`: a
    /// Dense with one unit per class (activation `Softmax` or none), an
    /// `Average` of per-modality heads' logits (late fusion), or any other
    /// layer of that shape. Softmax is never computed by the layer: the
    /// loss fuses it with the cross-entropy (and prediction applies it).
    /// Another shape, or an elementwise activation on a Dense output, is an
    /// error naming the layer.
    pub output: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum OptimizerSpec {
    Adam {
        #[serde(default = "adam_lr")]
        learning_rate: f64,
        #[serde(default = "beta_1")]
        beta_1: f64,
        #[serde(default = "beta_2")]
        beta_2: f64,
        #[serde(default = "epsilon")]
        epsilon: f64,
    },
    Sgd {
        #[serde(default = "sgd_lr")]
        learning_rate: f64,
        #[serde(default)]
        momentum: f64,
        #[serde(default)]
        nesterov: bool,
    },
}

fn adam_lr() -> f64 {
    0.001
}
fn beta_1() -> f64 {
    0.9
}
fn beta_2() -> f64 {
    0.999
}
fn epsilon() -> f64 {
    1e-7
}
fn sgd_lr() -> f64 {
    0.01
}

impl Default for OptimizerSpec {
    fn default() -> Self {
        OptimizerSpec::Adam {
            learning_rate: adam_lr(),
            beta_1: beta_1(),
            beta_2: beta_2(),
            epsilon: epsilon(),
        }
    }
}

/// How training runs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingSpec {
    pub epochs: usize,
    pub batch_size: usize,
    /// Fraction of the training samples held out for validation. As in
    /// Keras, the LAST fraction of the samples (before shuffling) is taken.
    #[serde(default)]
    pub validation_split: f64,
    #[serde(default = "yes")]
    pub shuffle: bool,
    #[serde(default)]
    pub optimizer: OptimizerSpec,
    /// Rescale gradients to at most this global L2 norm.
    #[serde(default)]
    pub clip_global_norm: Option<f32>,
}

fn yes() -> bool {
    true
}
