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
    /// Stop when a monitored metric stops improving (Keras `EarlyStopping`).
    #[serde(default)]
    pub early_stopping: Option<EarlyStopping>,
    /// The learning rate of each epoch (Keras `LearningRateScheduler`,
    /// applied at the start of every epoch).
    #[serde(default)]
    pub lr_schedule: LrSchedule,
    /// Per-class loss weights for imbalanced sets (Keras `class_weight`):
    /// each sample's loss is multiplied by its class's weight and the batch
    /// loss is the mean over the batch.
    #[serde(default)]
    pub class_weights: Option<ClassWeights>,
}

/// A metric an epoch reports, for early stopping.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Monitor {
    ValLoss,
    ValAccuracy,
    TrainLoss,
    TrainAccuracy,
}

impl Monitor {
    /// Whether a larger value is better.
    pub fn higher_is_better(self) -> bool {
        matches!(self, Monitor::ValAccuracy | Monitor::TrainAccuracy)
    }

    /// Whether it needs a validation set.
    pub fn needs_validation(self) -> bool {
        matches!(self, Monitor::ValLoss | Monitor::ValAccuracy)
    }
}

/// Keras `EarlyStopping(monitor, patience, min_delta, restore_best_weights)`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EarlyStopping {
    #[serde(default = "val_loss")]
    pub monitor: Monitor,
    /// Epochs without improvement before stopping.
    pub patience: usize,
    /// The least change that counts as an improvement.
    #[serde(default)]
    pub min_delta: f64,
    /// Put back the parameters of the best epoch when training ends (they
    /// are what the test set and the checkpoint then see).
    #[serde(default)]
    pub restore_best_weights: bool,
}

fn val_loss() -> Monitor {
    Monitor::ValLoss
}

/// How the learning rate changes over epochs; `lr0` is the optimizer's.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum LrSchedule {
    /// `lr0` throughout.
    #[default]
    Constant,
    /// `lr0 · factor^floor((epoch-1) / every)`.
    Step { every: usize, factor: f64 },
    /// `lr0 · rate^(epoch-1)`.
    Exponential { rate: f64 },
    /// Cosine from `lr0` at epoch 1 down to `min` at the last epoch.
    Cosine {
        #[serde(default)]
        min: f64,
    },
}

impl LrSchedule {
    /// The learning rate of 1-based `epoch` of `epochs`.
    pub fn rate(&self, lr0: f64, epoch: usize, epochs: usize) -> f64 {
        let e = epoch.saturating_sub(1) as f64;
        match *self {
            LrSchedule::Constant => lr0,
            LrSchedule::Step { every, factor } => {
                lr0 * factor.powi((epoch.saturating_sub(1) / every.max(1)) as i32)
            }
            LrSchedule::Exponential { rate } => lr0 * rate.powf(e),
            LrSchedule::Cosine { min } => {
                let span = epochs.saturating_sub(1).max(1) as f64;
                min + (lr0 - min) * 0.5 * (1.0 + (std::f64::consts::PI * e / span).cos())
            }
        }
    }
}

/// Per-class loss weights.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ClassWeights {
    /// `n / (classes · count_c)` over the training split (scikit-learn's
    /// "balanced"): every class contributes equally to the loss.
    Balanced,
    /// One weight per class, in class-id order.
    Explicit(Vec<f32>),
}

impl ClassWeights {
    /// The weight of every class given the training labels.
    pub fn resolve(&self, train_labels: &[u32], classes: usize) -> crate::error::Result<Vec<f32>> {
        match self {
            ClassWeights::Explicit(w) if w.len() == classes => Ok(w.clone()),
            ClassWeights::Explicit(w) => Err(crate::error::Error::setting(
                "training.class_weights",
                format!("{} weights given for {classes} classes", w.len()),
            )),
            ClassWeights::Balanced => {
                let mut counts = vec![0usize; classes];
                for &l in train_labels {
                    counts[l as usize] += 1;
                }
                let n = train_labels.len() as f64;
                Ok(counts
                    .iter()
                    .map(|&c| {
                        if c == 0 {
                            0.0
                        } else {
                            (n / (classes as f64 * c as f64)) as f32
                        }
                    })
                    .collect())
            }
        }
    }
}

fn yes() -> bool {
    true
}

impl OptimizerSpec {
    /// The initial learning rate.
    pub fn learning_rate(&self) -> f64 {
        match *self {
            OptimizerSpec::Adam { learning_rate, .. }
            | OptimizerSpec::Sgd { learning_rate, .. } => learning_rate,
        }
    }
}
