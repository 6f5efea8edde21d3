//! Runs an experiment: prepares the data ([`crate::experiment::prepare`]),
//! builds the model, trains on the chosen backend with the learning-rate
//! schedule and early stopping the experiment asks for, evaluates, and
//! writes everything under `runs/<name>/<timestamp>/`. A checkpoint is
//! saved after every epoch (and on Ctrl-C mid-epoch), so
//! [`resume_run`] continues a run exactly where it stopped. With
//! `evaluation.seeds > 1`, [`run_seeds`] repeats the run per seed and
//! reports mean ± std.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::{rngs::StdRng, seq::SliceRandom, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::data::synthetic::SyntheticConfig;
use crate::data::tokenizer::{Padding, Tokenizer, TokenizerConfig, Truncation};
use crate::data::ManifestConfig;
use crate::error::{Error, Result};
use crate::experiment::atomic::write_atomic_str;
use crate::experiment::checkpoint::{
    load_checkpoint, params_of, restore_params, save_checkpoint, CheckpointMeta, ParamValues,
};
use crate::experiment::metrics::{majority_baseline, mean_std, Classification, EpochMetrics};
use crate::experiment::model::build_model;
use crate::experiment::parse_ron;
use crate::experiment::prepare::{
    ablation, classification, device_name, evaluate, executor, gpu_for, make_batch, prepare,
    train_config, Prepared,
};
use crate::experiment::report::{write_curves, write_epochs, write_report, Report};
use crate::experiment::schema::{Backend, ModelSpec, Monitor, TrainingSpec};
use crate::graph::init::init_params;
use crate::graph::{Executor, OptimizerSnapshot};

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
    /// Repeat the whole run with seeds `seed, seed+1, …` and report
    /// mean ± std of the test metrics.
    pub seeds: usize,
}

impl Default for EvaluationSpec {
    fn default() -> Self {
        Self {
            test_split: 0.2,
            seeds: 1,
        }
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
    /// A relative manifest path is resolved against the file's folder.
    pub fn load(path: &Path) -> Result<Self> {
        let source = std::fs::read_to_string(path)
            .map_err(|e| Error::file(path, format!("cannot read the experiment: {e}")))?;
        let mut exp: Experiment = parse_ron(&path.display().to_string(), &source)?;
        if let DataSpec::Manifest(m) = &mut exp.data {
            if m.path.is_relative() {
                let joined = path.parent().unwrap_or(Path::new(".")).join(&m.path);
                // Absolute when it exists, so a run's saved experiment
                // reads the same data from any working directory.
                m.path = std::fs::canonicalize(&joined).unwrap_or(joined);
            }
        }
        exp.validate()?;
        Ok(exp)
    }

    /// Checks the settings serde cannot.
    pub fn validate(&self) -> Result<()> {
        let t = &self.training;
        let bad = |field: &str, why: String| Err(Error::setting(field, why));
        if t.batch_size == 0 {
            return bad("training.batch_size", "must be at least 1".into());
        }
        if !(0.0..1.0).contains(&t.validation_split) {
            return bad(
                "training.validation_split",
                format!("{} is not in [0, 1)", t.validation_split),
            );
        }
        if !(0.0..1.0).contains(&self.evaluation.test_split) {
            return bad(
                "evaluation.test_split",
                format!("{} is not in [0, 1)", self.evaluation.test_split),
            );
        }
        if self.evaluation.seeds == 0 {
            return bad("evaluation.seeds", "must be at least 1".into());
        }
        if let Some(es) = &t.early_stopping {
            if es.monitor.needs_validation() && t.validation_split == 0.0 {
                return bad(
                    "training.early_stopping",
                    format!(
                        "monitors {:?} but validation_split is 0 (no validation set)",
                        es.monitor
                    ),
                );
            }
        }
        Ok(())
    }

    /// The saved copy of an experiment in a run folder.
    pub fn load_saved(run_dir: &Path) -> Result<Self> {
        let path = run_dir.join(EXPERIMENT_FILE);
        if !path.is_file() {
            let hint = if has_seed_folders(run_dir) {
                " (this is a multi-seed run: name one of its seed-<n> folders)"
            } else {
                ""
            };
            return Err(Error::file(&path, format!("not a run folder{hint}")));
        }
        let source = std::fs::read_to_string(&path)
            .map_err(|e| Error::file(&path, format!("cannot read: {e}")))?;
        parse_ron(&path.display().to_string(), &source)
    }
}

fn has_seed_folders(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|mut d| {
        d.any(|e| e.is_ok_and(|e| e.file_name().to_string_lossy().starts_with("seed-")))
    })
}

/// Files of a run folder besides the report's.
pub const EXPERIMENT_FILE: &str = "experiment.ron";
pub const VOCABULARY_FILE: &str = "vocabulary.json";
pub const RUN_FILE: &str = "run.json";
/// The experiment of a multi-seed run, in the folder above its seeds.
pub const SEEDS_EXPERIMENT_FILE: &str = "experiment-all-seeds.ron";
pub const CHECKPOINT_DIR: &str = "checkpoint";
/// The best epoch's parameters, kept with `restore_best_weights`.
pub const BEST_DIR: &str = "checkpoint-best";

/// `run.json`: how the run was made (what `eval` defaults to).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// The backend that trained (`Gpu` or `Cpu`, never `Auto`).
    pub backend: Backend,
    pub device: String,
    pub seed: u64,
    pub epochs_completed: usize,
    /// Test figures, when the run got that far.
    pub test_accuracy: Option<f64>,
    pub test_macro_f1: Option<f64>,
}

/// How a run is driven (not part of the experiment).
#[derive(Clone, Copy, Debug, Default)]
pub struct RunOptions<'a> {
    /// Overrides the experiment's backend.
    pub backend: Option<Backend>,
    /// Draw a progress bar per epoch (on a terminal).
    pub progress: bool,
    /// Set (e.g. by a Ctrl-C handler) to stop after the current step: the
    /// run saves a checkpoint and returns with `interrupted`.
    pub interrupt: Option<&'a AtomicBool>,
}

/// What a finished run reports back.
#[derive(Clone, Debug)]
pub struct RunOutcome {
    /// The experiment's name.
    pub name: String,
    pub dir: PathBuf,
    pub epochs: Vec<EpochMetrics>,
    /// Test metrics; `None` when the run was interrupted.
    pub test: Option<Classification>,
    pub seconds: f64,
    /// Set when the run stopped on a non-finite loss.
    pub stopped: Option<String>,
    /// Set when early stopping ended training.
    pub early_stopped: Option<String>,
    /// The run was interrupted (Ctrl-C); its checkpoint can be resumed.
    pub interrupted: bool,
}

/// How often (in steps) the progress bar reads the running accuracy.
const PEEK_EVERY: usize = 10;

/// Where a resumed run stands.
struct Resume {
    params: ParamValues,
    optimizer: Option<OptimizerSnapshot>,
    epochs: Vec<EpochMetrics>,
    /// Steps already done of epoch `epochs.len() + 1`.
    epoch_step: usize,
    best_params: Option<ParamValues>,
}

/// Early stopping's bookkeeping (Keras `EarlyStopping`).
struct Stopper {
    monitor: Monitor,
    patience: usize,
    min_delta: f64,
    best: Option<(f64, usize)>,
    wait: usize,
}

impl Stopper {
    fn value(&self, e: &EpochMetrics) -> Option<f64> {
        match self.monitor {
            Monitor::ValLoss => e.val_loss,
            Monitor::ValAccuracy => e.val_accuracy,
            Monitor::TrainLoss => Some(e.train_loss),
            Monitor::TrainAccuracy => Some(e.train_accuracy),
        }
    }

    /// Takes one epoch's figures; returns whether it is the best so far.
    /// As in Keras, training stops once `wait` reaches `patience` on an
    /// epoch that did not improve.
    fn update(&mut self, e: &EpochMetrics) -> bool {
        let Some(v) = self.value(e) else { return false };
        let improved = match self.best {
            None => true,
            Some((best, _)) if self.monitor.higher_is_better() => v - self.min_delta > best,
            Some((best, _)) => v + self.min_delta < best,
        };
        if improved {
            self.best = Some((v, e.epoch));
            self.wait = 0;
        } else {
            self.wait += 1;
        }
        improved
    }
}

/// A new folder `root/<name>/<unix seconds>[-k]`, never an existing one.
fn new_run_dir(root: &Path, name: &str) -> Result<PathBuf> {
    let parent = root.join(name);
    std::fs::create_dir_all(&parent)
        .map_err(|e| Error::file(&parent, format!("cannot create: {e}")))?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    for k in 0..1000 {
        let dir = match k {
            0 => parent.join(stamp.to_string()),
            k => parent.join(format!("{stamp}-{k}")),
        };
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(Error::file(&dir, format!("cannot create: {e}"))),
        }
    }
    Err(Error::file(&parent, "no free run folder name"))
}

/// The resolved experiment as RON (what the run really used).
fn write_experiment(path: &Path, exp: &Experiment) -> Result<()> {
    let text = ron::ser::to_string_pretty(exp, ron::ser::PrettyConfig::default())
        .map_err(|e| Error::file(path, e.to_string()))?;
    write_atomic_str(path, &text)
}

fn to_json<T: Serialize>(value: &T, path: &Path) -> Result<String> {
    serde_json::to_string_pretty(value).map_err(|e| Error::file(path, e.to_string()))
}

/// Runs `exp` once (its own seed) and writes its outputs under
/// `runs_root/<name>/<timestamp>/`.
pub fn run_experiment(
    exp: &Experiment,
    runs_root: &Path,
    options: RunOptions,
) -> Result<RunOutcome> {
    exp.validate()?;
    let dir = new_run_dir(runs_root, &exp.name)?;
    train_in(exp, &dir, None, options)
}

/// Runs `exp` with seeds `seed, seed+1, …` (`evaluation.seeds` of them),
/// each in `seed-<s>/` of one run folder, and writes a report there with
/// mean ± std of the test metrics. Returns the folder and every run.
pub fn run_seeds(
    exp: &Experiment,
    runs_root: &Path,
    options: RunOptions,
) -> Result<(PathBuf, Vec<RunOutcome>)> {
    exp.validate()?;
    let dir = new_run_dir(runs_root, &exp.name)?;
    let mut runs = Vec::new();
    for k in 0..exp.evaluation.seeds as u64 {
        let mut one = exp.clone();
        one.seed = exp.seed + k;
        one.evaluation.seeds = 1;
        let sub = dir.join(format!("seed-{}", one.seed));
        std::fs::create_dir(&sub).map_err(|e| Error::file(&sub, format!("cannot create: {e}")))?;
        eprintln!(
            "== seed {} ({} of {})",
            one.seed,
            k + 1,
            exp.evaluation.seeds
        );
        let out = train_in(&one, &sub, None, options)?;
        let done = out.test.is_some() && out.stopped.is_none();
        runs.push(out);
        if !done {
            break;
        }
    }
    write_seeds_report(&dir, exp, &runs)?;
    Ok((dir, runs))
}

fn write_seeds_report(dir: &Path, exp: &Experiment, runs: &[RunOutcome]) -> Result<()> {
    let finished: Vec<(&RunOutcome, &Classification)> = runs
        .iter()
        .filter_map(|r| r.test.as_ref().map(|t| (r, t)))
        .collect();
    let Some((first, _)) = finished.first() else {
        return Ok(());
    };
    let metric = |f: &dyn Fn(&Classification) -> f64| {
        mean_std(&finished.iter().map(|(_, t)| f(t)).collect::<Vec<_>>())
    };
    let seeds = vec![
        ("test accuracy".to_string(), metric(&|t| t.accuracy)?),
        ("test macro-F1".to_string(), metric(&|t| t.macro_f1)?),
    ];
    // The first seed's report, with the over-seeds table added.
    let first_json = first.dir.join(crate::experiment::report::REPORT_JSON);
    let text = std::fs::read_to_string(&first_json)
        .map_err(|e| Error::file(&first_json, format!("cannot read: {e}")))?;
    let mut report: Report = serde_json::from_str(&text)
        .map_err(|e| Error::file(&first_json, format!("cannot parse: {e}")))?;
    report.seeds = seeds;
    report.header.insert(
        0,
        format!(
            "{} seeds from {}: the tables below are seed {}'s; \"Over seeds\" gives mean ± std",
            finished.len(),
            exp.seed,
            exp.seed
        ),
    );
    for (r, t) in &finished {
        report.header.push(format!(
            "{}: test accuracy {:.4}, macro-F1 {:.4}",
            r.dir.file_name().unwrap_or_default().to_string_lossy(),
            t.accuracy,
            t.macro_f1
        ));
    }
    // Not `experiment.ron`: the folder is not one run (eval and resume
    // take a seed-<s> folder).
    write_experiment(&dir.join(SEEDS_EXPERIMENT_FILE), exp)?;
    write_report(dir, &report)
}

/// Continues the run in `run_dir` from its checkpoint: the same data,
/// splits, tokenizer, parameters, optimizer state, shuffling and dropout
/// masks as if it had never stopped. `epochs` raises the total epoch count.
pub fn resume_run(
    run_dir: &Path,
    epochs: Option<usize>,
    options: RunOptions,
) -> Result<RunOutcome> {
    let mut exp = Experiment::load_saved(run_dir)?;
    if let Some(e) = epochs {
        exp.training.epochs = e;
    }
    let vocab_path = run_dir.join(VOCABULARY_FILE);
    let vocab = std::fs::read_to_string(&vocab_path)
        .map_err(|e| Error::file(&vocab_path, format!("cannot read: {e}")))?;
    let tokenizer = Tokenizer::from_json(&vocab, &vocab_path.display().to_string())?;
    let prepared = prepare(&exp, Some(tokenizer))?;
    let m = build_model(
        &exp.model,
        exp.training.batch_size,
        prepared.classes.len(),
        exp.seed,
        None,
    )?;
    let ckpt = run_dir.join(CHECKPOINT_DIR);
    let (params, meta) = load_checkpoint(&ckpt, &m.graph)?;
    let metrics_path = run_dir.join(crate::experiment::report::METRICS_JSON);
    let mut history: Vec<EpochMetrics> = match std::fs::read_to_string(&metrics_path) {
        Ok(text) => serde_json::from_str(&text)
            .map_err(|e| Error::file(&metrics_path, format!("cannot parse: {e}")))?,
        Err(_) if meta.epoch == 0 => Vec::new(),
        Err(e) => return Err(Error::file(&metrics_path, format!("cannot read: {e}"))),
    };
    if history.len() < meta.epoch {
        return Err(Error::file(
            &metrics_path,
            format!(
                "holds {} epochs, the checkpoint {}",
                history.len(),
                meta.epoch
            ),
        ));
    }
    history.truncate(meta.epoch);
    if meta.epoch >= exp.training.epochs {
        return Err(Error::setting(
            "--resume",
            format!(
                "the run already trained {} of {} epochs; pass --epochs with a larger total to train on",
                meta.epoch, exp.training.epochs
            ),
        ));
    }
    let best_params = match exp.training.early_stopping.as_ref() {
        Some(es) if es.restore_best_weights && run_dir.join(BEST_DIR).is_dir() => {
            Some(load_checkpoint(&run_dir.join(BEST_DIR), &m.graph)?.0)
        }
        _ => None,
    };
    eprintln!(
        "resuming {} at epoch {}, step {}",
        run_dir.display(),
        meta.epoch + 1,
        meta.epoch_step
    );
    let resume = Resume {
        params,
        optimizer: meta.optimizer,
        epochs: history,
        epoch_step: meta.epoch_step as usize,
        best_params,
    };
    train_with(&exp, run_dir, prepared, Some(resume), options)
}

/// Trains `exp` in the (existing, empty) folder `dir`.
fn train_in(
    exp: &Experiment,
    dir: &Path,
    resume: Option<Resume>,
    options: RunOptions,
) -> Result<RunOutcome> {
    let prepared = prepare(exp, None)?;
    train_with(exp, dir, prepared, resume, options)
}

fn progress_bar(show: bool, steps: usize, epoch: usize, epochs: usize) -> ProgressBar {
    let target = if show {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let bar = ProgressBar::with_draw_target(Some(steps as u64), target);
    if let Ok(style) = ProgressStyle::with_template(
        "epoch {prefix} [{bar:30}] {pos}/{len} steps {msg} ({elapsed})",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(format!("{epoch}/{epochs}"));
    bar
}

fn train_with(
    exp: &Experiment,
    dir: &Path,
    p: Prepared,
    resume: Option<Resume>,
    options: RunOptions,
) -> Result<RunOutcome> {
    let start = Instant::now();
    let classes = p.classes.len();
    let batch = exp.training.batch_size;
    if p.train.len() < batch {
        return Err(Error::graph(
            "training",
            format!(
                "{} training samples are fewer than one batch of {batch}",
                p.train.len()
            ),
        ));
    }
    let class_weights = match &exp.training.class_weights {
        Some(w) => Some(w.resolve(&p.train.data.labels, classes)?),
        None => None,
    };
    let m = build_model(
        &exp.model,
        batch,
        classes,
        exp.seed,
        class_weights.as_deref(),
    )?;
    let backend = options.backend.unwrap_or(exp.backend);
    let ctx = gpu_for(backend)?;
    let params = match &resume {
        Some(r) => r.params.clone(),
        None => init_params(&m.graph, exp.seed),
    };
    let mut exec = executor(
        ctx.as_ref(),
        &m.graph,
        m.loss,
        &params,
        train_config(&exp.training),
    )?;
    if let Some(snapshot) = resume.as_ref().and_then(|r| r.optimizer.as_ref()) {
        exec.restore_optimizer(snapshot)?;
    }
    let device = device_name(ctx.as_ref());
    let used = if ctx.is_some() {
        Backend::Gpu
    } else {
        Backend::Cpu
    };

    write_experiment(&dir.join(EXPERIMENT_FILE), exp)?;
    write_atomic_str(dir.join(VOCABULARY_FILE), &p.tokenizer.to_json())?;
    let vocabulary = serde_json::to_value(&p.tokenizer)
        .map_err(|e| Error::file(dir.join(VOCABULARY_FILE), e.to_string()))?;
    // With the optimizer state for the resumable checkpoint; without it
    // (no readback of the moments) for the best epoch's parameters.
    let meta = |epoch: usize,
                epoch_step: usize,
                exec: &dyn Executor,
                with_optimizer: bool|
     -> Result<CheckpointMeta> {
        Ok(CheckpointMeta {
            experiment: exp.name.clone(),
            epoch,
            step: exec.steps_applied() as u64,
            epoch_step: epoch_step as u64,
            classes: p.classes.clone(),
            vocabulary: vocabulary.clone(),
            optimizer: with_optimizer
                .then(|| exec.optimizer_snapshot())
                .transpose()?,
        })
    };

    let (mut epochs, skip_first, mut best_params) = match resume {
        Some(r) => (r.epochs, r.epoch_step, r.best_params),
        None => (Vec::new(), 0, None),
    };
    let done = epochs.len();
    // The shuffles of the epochs already trained, replayed so the next
    // epoch sees the order it would have seen.
    let mut rng = StdRng::seed_from_u64(exp.seed.wrapping_add(1));
    let mut order: Vec<usize> = (0..p.train.len()).collect();
    if exp.training.shuffle {
        for _ in 0..done {
            order.shuffle(&mut rng);
        }
    }
    let mut stopper = exp.training.early_stopping.as_ref().map(|es| Stopper {
        monitor: es.monitor,
        patience: es.patience,
        min_delta: es.min_delta,
        best: None,
        wait: 0,
    });
    if let Some(s) = &mut stopper {
        for e in &epochs {
            s.update(e);
        }
    }
    let restore_best = exp
        .training
        .early_stopping
        .as_ref()
        .is_some_and(|es| es.restore_best_weights);
    let lr0 = exp.training.optimizer.learning_rate();
    let total = exp.training.epochs;
    let steps_per_epoch = p.train.len() / batch;

    let mut stopped = None;
    let mut early_stopped = None;
    let mut interrupted = false;
    'epochs: for epoch in done + 1..=total {
        let t0 = Instant::now();
        let learning_rate = exp.training.lr_schedule.rate(lr0, epoch, total);
        exec.set_learning_rate(learning_rate)?;
        if exp.training.shuffle {
            order.shuffle(&mut rng);
        }
        let skip = if epoch == done + 1 { skip_first } else { 0 };
        exec.take_correct_count()?;
        let bar = progress_bar(options.progress, steps_per_epoch, epoch, total);
        bar.set_position(skip as u64);
        let (mut loss_sum, mut steps) = (0.0, 0);
        // Correct predictions so far, and the steps they cover (the GPU
        // count is read every PEEK_EVERY steps: a readback is a sync).
        let (mut correct, mut counted) = (0u64, 0usize);
        for (k, chunk) in order.chunks_exact(batch).enumerate().skip(skip) {
            let loss = exec.train_step(&make_batch(&m, &p.train, chunk, None))?;
            if !loss.is_finite() {
                stopped = Some(format!(
                    "loss became {loss} at epoch {epoch}, step {}",
                    k + 1
                ));
                bar.abandon();
                break 'epochs;
            }
            loss_sum += loss as f64;
            steps += 1;
            if options.progress && steps % PEEK_EVERY == 0 {
                correct += exec.take_correct_count()?;
                counted = steps;
            }
            let accuracy = if counted > 0 {
                format!(
                    ", accuracy {:.4}",
                    correct as f64 / (counted * batch) as f64
                )
            } else {
                String::new()
            };
            bar.set_message(format!(
                "loss {:.4}{accuracy}, {:.0} samples/s",
                loss_sum / steps as f64,
                (steps * batch) as f64 / t0.elapsed().as_secs_f64()
            ));
            bar.inc(1);
            if options.interrupt.is_some_and(|f| f.load(Ordering::SeqCst)) {
                bar.abandon();
                save_checkpoint(
                    &dir.join(CHECKPOINT_DIR),
                    &m.graph,
                    &params_of(exec.as_ref(), &m.graph)?,
                    &meta(epoch - 1, k + 1, exec.as_ref(), true)?,
                )?;
                eprintln!(
                    "INTERRUPTED at epoch {epoch}, step {}: checkpoint saved; continue with \
                     `crossmodal run --resume {}`",
                    k + 1,
                    dir.display()
                );
                interrupted = true;
                break 'epochs;
            }
        }
        bar.finish_and_clear();
        let seconds_train = t0.elapsed().as_secs_f64();
        // Keras' running accuracy: the training steps' own predictions.
        correct += exec.take_correct_count()?;
        let train_accuracy = correct as f64 / (steps * batch).max(1) as f64;
        let (val_loss, val_accuracy) = if p.val.is_empty() {
            (None, None)
        } else {
            let (probs, loss) = evaluate(exec.as_mut(), &m, &p.val, batch, classes, None)?;
            let acc = classification(&probs, &p.val.data.labels, classes)?.accuracy;
            (Some(loss), Some(acc))
        };
        let row = EpochMetrics {
            epoch,
            train_loss: loss_sum / steps.max(1) as f64,
            train_accuracy,
            val_loss,
            val_accuracy,
            learning_rate,
            samples_per_second: (steps * batch) as f64 / seconds_train,
            seconds: t0.elapsed().as_secs_f64(),
        };
        eprintln!(
            "epoch {epoch}/{total}: loss {:.4}, accuracy {:.4}{}, {:.0} samples/s",
            row.train_loss,
            row.train_accuracy,
            row.val_accuracy
                .map_or(String::new(), |a| format!(", val accuracy {a:.4}")),
            row.samples_per_second
        );
        epochs.push(row);
        write_epochs(dir, &epochs)?;
        // Saved after every finite epoch: a later NaN keeps this one.
        let current = params_of(exec.as_ref(), &m.graph)?;
        save_checkpoint(
            &dir.join(CHECKPOINT_DIR),
            &m.graph,
            &current,
            &meta(epoch, 0, exec.as_ref(), true)?,
        )?;
        if let Some(s) = &mut stopper {
            let last = epochs.last().expect("pushed above");
            let improved = s.update(last);
            if improved && restore_best {
                save_checkpoint(
                    &dir.join(BEST_DIR),
                    &m.graph,
                    &current,
                    &meta(epoch, 0, exec.as_ref(), false)?,
                )?;
                best_params = Some(current);
            }
            if !improved && s.wait >= s.patience && epoch < total {
                let (best, at) = s.best.unwrap_or((f64::NAN, 0));
                early_stopped = Some(format!(
                    "{:?} did not improve for {} epochs (best {best:.4} at epoch {at}); stopped after epoch {epoch}",
                    s.monitor, s.patience
                ));
                eprintln!("EARLY STOP: {}", early_stopped.as_deref().unwrap_or(""));
                break;
            }
        }
    }
    let record = |test: Option<&Classification>, epochs: usize| RunRecord {
        backend: used,
        device: device.clone(),
        seed: exp.seed,
        epochs_completed: epochs,
        test_accuracy: test.map(|t| t.accuracy),
        test_macro_f1: test.map(|t| t.macro_f1),
    };
    let no_checkpoint = !dir
        .join(CHECKPOINT_DIR)
        .join(crate::experiment::checkpoint::META_FILE)
        .is_file();
    if interrupted || (stopped.is_some() && no_checkpoint) {
        if let Some(why) = &stopped {
            eprintln!("STOPPED: {why}; no epoch completed, so there is no checkpoint and no test");
        }
        let path = dir.join(RUN_FILE);
        write_atomic_str(&path, &to_json(&record(None, epochs.len()), &path)?)?;
        write_curves(dir, &epochs)?;
        return Ok(RunOutcome {
            name: exp.name.clone(),
            dir: dir.to_path_buf(),
            epochs,
            test: None,
            seconds: start.elapsed().as_secs_f64(),
            stopped,
            early_stopped: None,
            interrupted,
        });
    }
    if let Some(why) = &stopped {
        eprintln!("STOPPED: {why}; the outputs of the last complete epoch are kept");
        // The parameters that went non-finite are not the checkpoint's.
        let (good, _) = load_checkpoint(&dir.join(CHECKPOINT_DIR), &m.graph)?;
        restore_params(exec.as_mut(), &good)?;
    }
    let mut restored = None;
    if let (Some(best), Some(s)) = (&best_params, &stopper) {
        if let Some((_, at)) = s.best {
            if at != epochs.len() {
                restore_params(exec.as_mut(), best)?;
                save_checkpoint(
                    &dir.join(CHECKPOINT_DIR),
                    &m.graph,
                    best,
                    &meta(epochs.len(), 0, exec.as_ref(), true)?,
                )?;
                restored = Some(format!(
                    "parameters of the best epoch ({at}) restored for the test set and the checkpoint"
                ));
            }
        }
    }

    let (probs, _) = evaluate(exec.as_mut(), &m, &p.test, batch, classes, None)?;
    let test = classification(&probs, &p.test.data.labels, classes)?;
    let ablation = ablation(exec.as_mut(), &m, &p.test, batch, classes)?;
    let seconds = start.elapsed().as_secs_f64();
    let header = [
        format!("backend: {device}"),
        format!("seed: {}", exp.seed),
        format!(
            "samples: {} train, {} validation, {} test",
            p.train.len(),
            p.val.len(),
            p.test.len()
        ),
        format!("wall time: {seconds:.1} s"),
    ]
    .into_iter()
    .chain(class_weights.map(|w| format!("class weights (loss): {w:?}")))
    .chain(stopped.iter().map(|s| format!("stopped early: {s}")))
    .chain(early_stopped.iter().map(|s| format!("early stopping: {s}")))
    .chain(restored)
    .collect();
    let report = Report {
        title: exp.name.clone(),
        header,
        class_names: p.classes.clone(),
        test: test.clone(),
        baseline: majority_baseline(&p.train.data.labels, &p.test.data.labels, classes)?,
        ablation,
        seeds: Vec::new(),
    };
    write_curves(dir, &epochs)?;
    write_report(dir, &report)?;
    let path = dir.join(RUN_FILE);
    write_atomic_str(&path, &to_json(&record(Some(&test), epochs.len()), &path)?)?;
    Ok(RunOutcome {
        name: exp.name.clone(),
        dir: dir.to_path_buf(),
        epochs,
        test: Some(test),
        seconds,
        stopped,
        early_stopped,
        interrupted,
    })
}
