//! From an experiment to what its model eats: the data loaded and split,
//! the tokenizer, token ids and images in batches, the backend chosen and
//! the executor built. `run`, `eval` and `predict` all start here, so a
//! saved run is re-created exactly as it was trained.
//!
//! Splits (all seeded by the experiment seed): the test set is the last
//! `evaluation.test_split` of a seeded permutation of the samples; the
//! validation set is, as in Keras, the LAST `training.validation_split` of
//! the remaining training samples, taken before any shuffling. The model
//! has a fixed batch size: training drops an epoch's last partial batch;
//! evaluation pads its last batch by repeating sample 0 and ignores the
//! extra predictions.

use rand::{rngs::StdRng, seq::SliceRandom, SeedableRng};

use crate::data::synthetic::generate;
use crate::data::tokenizer::{TokenIds, Tokenizer};
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::experiment::metrics::Classification;
use crate::experiment::model::BuiltModel;
use crate::experiment::report::Ablation;
use crate::experiment::run::{DataSpec, Experiment};
use crate::experiment::schema::{Backend, InputKind, OptimizerSpec, TrainingSpec};
use crate::gpu::GpuContext;
use crate::graph::cpu::CpuExecutor;
use crate::graph::gpu::GpuExecutor;
use crate::graph::{Batch, Executor, Graph, HostData, NodeId, Optimizer, TrainConfig};
use crate::optim::{adam::AdamConfig, sgd::SgdConfig};

/// Samples ready for the model: their token ids and the decoded set.
pub struct Encoded {
    pub tokens: TokenIds,
    pub data: Dataset,
}

impl Encoded {
    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

/// The samples of an experiment, split, with the tokenizer fitted on the
/// training split.
pub struct Prepared {
    pub classes: Vec<String>,
    pub tokenizer: Tokenizer,
    pub train: Encoded,
    pub val: Encoded,
    pub test: Encoded,
}

/// Loads the experiment's samples (synthetic ones are generated from the
/// experiment seed).
pub fn load_data(spec: &DataSpec, seed: u64) -> Result<Dataset> {
    let data = match spec {
        DataSpec::Synthetic(c) => {
            let mut c = c.clone();
            c.seed ^= seed;
            generate(&c)?
        }
        DataSpec::Manifest(c) => {
            let manifest = c.load()?;
            if !manifest.skipped.is_empty() {
                eprintln!("{}", manifest.summary());
            }
            manifest.dataset
        }
    };
    if data.is_empty() {
        return Err(Error::graph("data", "the data set is empty"));
    }
    Ok(data)
}

/// The token length of the model's text input (1 when it has none).
pub fn seq_len(exp: &Experiment) -> usize {
    exp.model
        .inputs
        .iter()
        .find_map(|(_, k)| match k {
            InputKind::Tokens { seq_len } => Some(*seq_len),
            _ => None,
        })
        .unwrap_or(1)
}

/// Token ids of `data` with the experiment's padding and truncation.
pub fn encode(exp: &Experiment, tokenizer: &Tokenizer, data: Dataset) -> Encoded {
    Encoded {
        tokens: tokenizer.encode(
            &data.texts,
            seq_len(exp),
            exp.text.padding,
            exp.text.truncation,
        ),
        data,
    }
}

/// Loads and splits the experiment's data; fits the tokenizer on the
/// training split unless a saved one is given.
pub fn prepare(exp: &Experiment, tokenizer: Option<Tokenizer>) -> Result<Prepared> {
    let all = load_data(&exp.data, exp.seed)?;
    let mut order: Vec<usize> = (0..all.len()).collect();
    order.shuffle(&mut StdRng::seed_from_u64(exp.seed));
    let n_test = ((all.len() as f64) * exp.evaluation.test_split).round() as usize;
    let (train_all, test_idx) = order.split_at(all.len() - n_test);
    let n_val = ((train_all.len() as f64) * exp.training.validation_split).round() as usize;
    let (train_idx, val_idx) = train_all.split_at(train_all.len() - n_val);
    let (train, val, test) = (
        all.select(train_idx),
        all.select(val_idx),
        all.select(test_idx),
    );
    let tokenizer = match tokenizer {
        Some(t) => t,
        None => Tokenizer::fit(exp.text.tokenizer, &train.texts)?,
    };
    Ok(Prepared {
        classes: all.classes.clone(),
        train: encode(exp, &tokenizer, train),
        val: encode(exp, &tokenizer, val),
        test: encode(exp, &tokenizer, test),
        tokenizer,
    })
}

/// The input a modality name refers to (`"text"` or `"image"`).
pub fn kind_name(kind: &InputKind) -> &'static str {
    match kind {
        InputKind::Tokens { .. } => "text",
        InputKind::Image { .. } => "image",
    }
}

/// The batch of samples `idx` (exactly the model's batch size) in the
/// model's input layouts; `zero` blanks a modality (ablation).
pub fn make_batch(m: &BuiltModel, e: &Encoded, idx: &[usize], zero: Option<&str>) -> Batch {
    let mut batch = Batch::new();
    for (_, id, kind) in &m.inputs {
        let blank = zero == Some(kind_name(kind));
        let data = match kind {
            InputKind::Tokens { .. } => {
                let mut ids = e.tokens.time_major(idx);
                if blank {
                    ids.iter_mut().for_each(|t| *t = 0);
                }
                HostData::U32(ids)
            }
            InputKind::Image { .. } => {
                let mut v = Vec::with_capacity(idx.len() * e.data.image_len());
                for &i in idx {
                    v.extend_from_slice(e.data.image(i));
                }
                if blank {
                    v.iter_mut().for_each(|x| *x = 0.0);
                }
                HostData::F32(v)
            }
        };
        batch = batch.with(*id, data);
    }
    let labels = idx.iter().map(|&i| e.data.labels[i]).collect();
    batch.with(m.labels, HostData::U32(labels))
}

/// Class probabilities of every sample of `e` (`[n, classes]`, row-major)
/// and the mean cross-entropy.
pub fn evaluate(
    exec: &mut dyn Executor,
    m: &BuiltModel,
    e: &Encoded,
    batch: usize,
    classes: usize,
    zero: Option<&str>,
) -> Result<(Vec<f32>, f64)> {
    let n = e.len();
    let mut probs = Vec::with_capacity(n * classes);
    let mut loss = 0.0;
    for start in (0..n).step_by(batch) {
        let real = batch.min(n - start);
        let idx: Vec<usize> = (0..batch)
            .map(|j| if j < real { start + j } else { 0 })
            .collect();
        let p = exec.predict(&make_batch(m, e, &idx, zero), m.probs)?;
        probs.extend_from_slice(&p[..real * classes]);
        for (j, &i) in idx.iter().take(real).enumerate() {
            let label = e.data.labels[i] as usize;
            loss -= (p[j * classes + label].max(1e-12) as f64).ln();
        }
    }
    Ok((probs, loss / n.max(1) as f64))
}

/// Test accuracy with each modality zeroed in turn (none for a
/// single-input model): how much the model leans on each.
pub fn ablation(
    exec: &mut dyn Executor,
    m: &BuiltModel,
    e: &Encoded,
    batch: usize,
    classes: usize,
) -> Result<Vec<Ablation>> {
    if m.inputs.len() < 2 {
        return Ok(Vec::new());
    }
    m.inputs
        .iter()
        .map(|(_, _, kind)| {
            let zeroed = kind_name(kind);
            let (probs, _) = evaluate(exec, m, e, batch, classes, Some(zeroed))?;
            Ok(Ablation {
                zeroed: zeroed.to_string(),
                accuracy: classification(&probs, &e.data.labels, classes)?.accuracy,
            })
        })
        .collect()
}

/// Accuracy, macro-F1, per-class figures and the confusion matrix.
pub fn classification(probs: &[f32], labels: &[u32], classes: usize) -> Result<Classification> {
    let view = ndarray::ArrayView2::from_shape((labels.len(), classes), probs)
        .map_err(|e| Error::shape("metrics", e.to_string()))?;
    Classification::from_probabilities(view, labels)
}

/// The optimizer a training spec names.
pub fn optimizer(spec: &OptimizerSpec) -> Optimizer {
    match *spec {
        OptimizerSpec::Adam {
            learning_rate,
            beta_1,
            beta_2,
            epsilon,
        } => Optimizer::Adam(AdamConfig {
            learning_rate,
            beta_1,
            beta_2,
            epsilon,
        }),
        OptimizerSpec::Sgd {
            learning_rate,
            momentum,
            nesterov,
        } => Optimizer::Sgd(SgdConfig {
            learning_rate,
            momentum,
            nesterov,
        }),
    }
}

pub fn train_config(t: &TrainingSpec) -> TrainConfig {
    TrainConfig {
        optimizer: optimizer(&t.optimizer),
        clip_global_norm: t.clip_global_norm,
    }
}

/// The GPU context a backend choice asks for: none for `Cpu`; an error
/// for `Gpu` without an adapter; for `Auto`, the GPU when there is one,
/// else a loud notice and the CPU backend.
pub fn gpu_for(backend: Backend) -> Result<Option<GpuContext>> {
    Ok(match backend {
        Backend::Cpu => None,
        Backend::Gpu => Some(GpuContext::from_env()?),
        Backend::Auto => match GpuContext::from_env() {
            Ok(ctx) => Some(ctx),
            Err(e) => {
                eprintln!("NOTICE: no GPU adapter ({e}); running on the CPU reference backend");
                None
            }
        },
    })
}

/// An executor of `graph` on the GPU when a context is given, else on the
/// CPU reference backend.
pub fn executor<'a>(
    ctx: Option<&'a GpuContext>,
    graph: &Graph,
    loss: NodeId,
    params: &[(NodeId, Vec<f32>)],
    config: TrainConfig,
) -> Result<Box<dyn Executor + 'a>> {
    Ok(match ctx {
        Some(ctx) => Box::new(GpuExecutor::new(ctx, graph, loss, params, config)?),
        None => Box::new(CpuExecutor::<f32>::new(graph, loss, params, config)?),
    })
}

/// How a backend describes itself in reports.
pub fn device_name(ctx: Option<&GpuContext>) -> String {
    ctx.map_or("CPU reference backend (ndarray)".to_string(), |c| {
        c.describe()
    })
}
