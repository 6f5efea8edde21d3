//! Runs an experiment: loads and splits the data, fits the tokenizer on
//! the training split, builds the model, trains on the chosen backend,
//! evaluates, and writes everything under `runs/<name>/<timestamp>/`.
//!
//! Splits (all seeded by the experiment seed): the test set is the last
//! `evaluation.test_split` of a seeded permutation of the samples (or the
//! separate test data, when given); the validation set is, as in Keras,
//! the LAST `training.validation_split` of the remaining training samples,
//! taken before any shuffling. The model has a fixed batch size: training
//! drops an epoch's last partial batch; evaluation pads its last batch by
//! repeating sample 0 and ignores the extra predictions.

use std::path::{Path, PathBuf};
use std::time::Instant;

use rand::{rngs::StdRng, seq::SliceRandom, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::data::synthetic::{generate, SyntheticConfig};
use crate::data::tokenizer::{Padding, TokenIds, Tokenizer, TokenizerConfig, Truncation};
use crate::data::{Dataset, ManifestConfig};
use crate::error::{Error, Result};
use crate::experiment::atomic::{create_dir_all, write_atomic_str};
use crate::experiment::checkpoint::{params_of, save_checkpoint, CheckpointMeta};
use crate::experiment::metrics::{majority_baseline, Classification, EpochMetrics};
use crate::experiment::model::{build_model, BuiltModel};
use crate::experiment::parse_ron;
use crate::experiment::report::{write_curves, write_epochs, write_report, Ablation, Report};
use crate::experiment::schema::{Backend, InputKind, ModelSpec, OptimizerSpec, TrainingSpec};
use crate::gpu::GpuContext;
use crate::graph::cpu::CpuExecutor;
use crate::graph::gpu::GpuExecutor;
use crate::graph::init::init_params;
use crate::graph::{Batch, Executor, HostData, Optimizer, TrainConfig};
use crate::optim::{adam::AdamConfig, sgd::SgdConfig};

/// Where the samples come from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum DataSpec {
    /// The built-in generator (needs nothing downloaded).
    Synthetic(SyntheticConfig),
    /// A CSV/TSV/JSONL table of samples as a set ships; a relative path is
    /// taken from the experiment file's folder.
    Manifest(ManifestConfig),
}

impl Default for DataSpec {
    fn default() -> Self {
        DataSpec::Synthetic(SyntheticConfig::default())
    }
}

/// How texts become token ids.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TextSpec {
    pub tokenizer: TokenizerConfig,
    pub padding: Padding,
    pub truncation: Truncation,
}

impl Default for TextSpec {
    fn default() -> Self {
        Self {
            tokenizer: TokenizerConfig::default(),
            padding: Padding::Pre,
            truncation: Truncation::Pre,
        }
    }
}

/// How the trained model is scored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvaluationSpec {
    /// Fraction of all samples held out as the test set.
    pub test_split: f64,
}

impl Default for EvaluationSpec {
    fn default() -> Self {
        Self { test_split: 0.2 }
    }
}

/// A whole experiment file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Experiment {
    pub name: String,
    #[serde(default)]
    pub seed: u64,
    #[serde(default)]
    pub backend: Backend,
    #[serde(default)]
    pub data: DataSpec,
    #[serde(default)]
    pub text: TextSpec,
    pub model: ModelSpec,
    pub training: TrainingSpec,
    #[serde(default)]
    pub evaluation: EvaluationSpec,
}

impl Experiment {
    /// Reads and parses an experiment file; errors carry file:line:column.
    pub fn load(path: &Path) -> Result<Self> {
        let source = std::fs::read_to_string(path)
            .map_err(|e| Error::file(path, format!("cannot read the experiment: {e}")))?;
        let mut exp: Experiment = parse_ron(&path.display().to_string(), &source)?;
        if let DataSpec::Manifest(m) = &mut exp.data {
            if m.path.is_relative() {
                m.path = path.parent().unwrap_or(Path::new(".")).join(&m.path);
            }
        }
        Ok(exp)
    }
}

/// What a finished run reports back.
#[derive(Clone, Debug)]
pub struct RunOutcome {
    pub dir: PathBuf,
    pub epochs: Vec<EpochMetrics>,
    pub test: Classification,
    pub seconds: f64,
    /// Set when the run stopped early on a non-finite loss.
    pub stopped: Option<String>,
}

/// Samples ready for the model: token ids (sample-major), images, labels.
struct Encoded {
    tokens: TokenIds,
    data: Dataset,
}

fn optimizer(spec: &OptimizerSpec) -> Optimizer {
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

fn train_config(t: &TrainingSpec) -> TrainConfig {
    TrainConfig {
        optimizer: optimizer(&t.optimizer),
        clip_global_norm: t.clip_global_norm,
    }
}

/// The batch of samples `idx` (exactly the model's batch size) in the
/// model's input layouts; `zero` blanks a modality (ablation).
fn make_batch(m: &BuiltModel, e: &Encoded, idx: &[usize], zero: Option<&str>) -> Batch {
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

fn kind_name(kind: &InputKind) -> &'static str {
    match kind {
        InputKind::Tokens { .. } => "text",
        InputKind::Image { .. } => "image",
    }
}

/// Class probabilities of every sample of `e`, and the mean loss.
fn evaluate(
    exec: &mut dyn Executor,
    m: &BuiltModel,
    e: &Encoded,
    batch: usize,
    zero: Option<&str>,
) -> Result<(Vec<f32>, f64)> {
    let n = e.data.len();
    let classes = e.data.classes.len();
    let mut probs = Vec::with_capacity(n * classes);
    let mut loss = 0.0;
    for start in (0..n).step_by(batch) {
        let real = batch.min(n - start);
        let idx: Vec<usize> = (0..batch)
            .map(|j| if j < real { start + j } else { 0 })
            .collect();
        let b = make_batch(m, e, &idx, zero);
        let p = exec.predict(&b, m.probs)?;
        probs.extend_from_slice(&p[..real * classes]);
        for (j, &i) in idx.iter().take(real).enumerate() {
            let label = e.data.labels[i] as usize;
            loss -= (p[j * classes + label].max(1e-12) as f64).ln();
        }
    }
    Ok((probs, loss / n.max(1) as f64))
}

fn classification(probs: &[f32], labels: &[u32], classes: usize) -> Result<Classification> {
    let view = ndarray::ArrayView2::from_shape((labels.len(), classes), probs)
        .map_err(|e| Error::shape("metrics", e.to_string()))?;
    Classification::from_probabilities(view, labels)
}

fn load_data(spec: &DataSpec, seed: u64) -> Result<Dataset> {
    match spec {
        DataSpec::Synthetic(c) => {
            let mut c = c.clone();
            c.seed ^= seed;
            generate(&c)
        }
        DataSpec::Manifest(c) => {
            let manifest = c.load()?;
            if !manifest.skipped.is_empty() {
                eprintln!("{}", manifest.summary());
            }
            Ok(manifest.dataset)
        }
    }
}

/// Runs `exp` and writes its outputs under `runs_root/<name>/<timestamp>/`.
pub fn run_experiment(
    exp: &Experiment,
    runs_root: &Path,
    backend: Option<Backend>,
) -> Result<RunOutcome> {
    let start = Instant::now();
    let all = load_data(&exp.data, exp.seed)?;
    if all.is_empty() {
        return Err(Error::graph("data", "the data set is empty"));
    }
    let classes = all.classes.len();

    // Splits: a seeded permutation, test = its last fraction; validation =
    // the last fraction of the rest, before shuffling (Keras).
    let mut order: Vec<usize> = (0..all.len()).collect();
    order.shuffle(&mut StdRng::seed_from_u64(exp.seed));
    let n_test = ((all.len() as f64) * exp.evaluation.test_split).round() as usize;
    let (train_all, test_idx) = order.split_at(all.len() - n_test);
    let n_val = ((train_all.len() as f64) * exp.training.validation_split).round() as usize;
    let (train_idx, val_idx) = train_all.split_at(train_all.len() - n_val);
    let train = all.select(train_idx);
    let val = all.select(val_idx);
    let test = all.select(test_idx);

    let seq_len = exp
        .model
        .inputs
        .iter()
        .find_map(|(_, k)| match k {
            InputKind::Tokens { seq_len } => Some(*seq_len),
            _ => None,
        })
        .unwrap_or(1);
    let tokenizer = Tokenizer::fit(exp.text.tokenizer, &train.texts)?;
    let encode = |d: Dataset| Encoded {
        tokens: tokenizer.encode(&d.texts, seq_len, exp.text.padding, exp.text.truncation),
        data: d,
    };
    let (train, val, test) = (encode(train), encode(val), encode(test));

    let batch = exp.training.batch_size;
    if train.data.len() < batch {
        return Err(Error::graph(
            "training",
            format!(
                "{} training samples are fewer than one batch of {batch}",
                train.data.len()
            ),
        ));
    }
    let m = build_model(&exp.model, batch, classes, exp.seed, None)?;
    let params = init_params(&m.graph, exp.seed);
    let config = train_config(&exp.training);

    let backend = backend.unwrap_or(exp.backend);
    let ctx = match backend {
        Backend::Cpu => None,
        Backend::Gpu => Some(GpuContext::from_env()?),
        Backend::Auto => match GpuContext::from_env() {
            Ok(ctx) => Some(ctx),
            Err(e) => {
                eprintln!("NOTICE: no GPU adapter ({e}); running on the CPU reference backend");
                None
            }
        },
    };
    let mut exec: Box<dyn Executor + '_> = match &ctx {
        Some(ctx) => Box::new(GpuExecutor::new(ctx, &m.graph, m.loss, &params, config)?),
        None => Box::new(CpuExecutor::<f32>::new(&m.graph, m.loss, &params, config)?),
    };
    let device = ctx
        .as_ref()
        .map_or("CPU reference backend (ndarray)".to_string(), |c| {
            c.describe()
        });

    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let dir = runs_root.join(&exp.name).join(stamp.to_string());
    create_dir_all(&dir)?;
    let resolved = ron::ser::to_string_pretty(exp, ron::ser::PrettyConfig::default())
        .map_err(|e| Error::file(&dir, e.to_string()))?;
    write_atomic_str(dir.join("experiment.ron"), &resolved)?;
    write_atomic_str(dir.join("vocabulary.json"), &tokenizer.to_json())?;

    let mut epochs = Vec::new();
    let mut stopped = None;
    let mut rng = StdRng::seed_from_u64(exp.seed.wrapping_add(1));
    let mut order: Vec<usize> = (0..train.data.len()).collect();
    'epochs: for epoch in 1..=exp.training.epochs {
        let t0 = Instant::now();
        if exp.training.shuffle {
            order.shuffle(&mut rng);
        }
        let mut loss_sum = 0.0;
        let mut steps = 0;
        for chunk in order.chunks_exact(batch) {
            let loss = exec.train_step(&make_batch(&m, &train, chunk, None))?;
            if !loss.is_finite() {
                stopped = Some(format!(
                    "loss became {loss} at epoch {epoch}, step {}",
                    steps + 1
                ));
                break 'epochs;
            }
            loss_sum += loss as f64;
            steps += 1;
        }
        let seconds_train = t0.elapsed().as_secs_f64();
        let (train_probs, _) = evaluate(exec.as_mut(), &m, &train, batch, None)?;
        let train_acc = classification(&train_probs, &train.data.labels, classes)?.accuracy;
        let (val_loss, val_accuracy) = if val.data.is_empty() {
            (None, None)
        } else {
            let (p, l) = evaluate(exec.as_mut(), &m, &val, batch, None)?;
            (
                Some(l),
                Some(classification(&p, &val.data.labels, classes)?.accuracy),
            )
        };
        let row = EpochMetrics {
            epoch,
            train_loss: loss_sum / steps.max(1) as f64,
            train_accuracy: train_acc,
            val_loss,
            val_accuracy,
            samples_per_second: (steps * batch) as f64 / seconds_train,
            seconds: t0.elapsed().as_secs_f64(),
        };
        eprintln!(
            "epoch {epoch}/{}: loss {:.4}, accuracy {:.4}{}, {:.0} samples/s",
            exp.training.epochs,
            row.train_loss,
            row.train_accuracy,
            row.val_accuracy
                .map_or(String::new(), |a| format!(", val accuracy {a:.4}")),
            row.samples_per_second
        );
        epochs.push(row);
        write_epochs(&dir, &epochs)?;
        // Saved after every finite epoch: a later NaN keeps this one.
        let meta = CheckpointMeta {
            experiment: exp.name.clone(),
            epoch,
            step: (epoch * steps) as u64,
            classes: all.classes.clone(),
            vocabulary: serde_json::to_value(&tokenizer)
                .map_err(|e| Error::file(&dir, e.to_string()))?,
            adam: None,
        };
        save_checkpoint(
            &dir.join("checkpoint"),
            &m.graph,
            &params_of(exec.as_ref(), &m.graph)?,
            &meta,
        )?;
    }
    if let Some(why) = &stopped {
        eprintln!("STOPPED: {why}; the outputs of the last complete epoch are kept");
    }

    let (probs, _) = evaluate(exec.as_mut(), &m, &test, batch, None)?;
    let test_metrics = classification(&probs, &test.data.labels, classes)?;
    let mut ablation = Vec::new();
    if m.inputs.len() > 1 {
        for (_, _, kind) in &m.inputs {
            let zeroed = kind_name(kind);
            let (p, _) = evaluate(exec.as_mut(), &m, &test, batch, Some(zeroed))?;
            let accuracy = classification(&p, &test.data.labels, classes)?.accuracy;
            ablation.push(Ablation {
                zeroed: zeroed.to_string(),
                accuracy,
            });
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    let report = Report {
        title: exp.name.clone(),
        header: vec![
            format!("backend: {device}"),
            format!("seed: {}", exp.seed),
            format!(
                "samples: {} train, {} validation, {} test",
                train.data.len(),
                val.data.len(),
                test.data.len()
            ),
            format!("wall time: {seconds:.1} s"),
        ]
        .into_iter()
        .chain(stopped.iter().map(|s| format!("stopped early: {s}")))
        .collect(),
        class_names: all.classes.clone(),
        test: test_metrics.clone(),
        baseline: majority_baseline(&train.data.labels, &test.data.labels, classes)?,
        ablation,
        seeds: Vec::new(),
    };
    write_curves(&dir, &epochs)?;
    write_report(&dir, &report)?;
    Ok(RunOutcome {
        dir,
        epochs,
        test: test_metrics,
        seconds,
        stopped,
    })
}
