//! A finished run read back from its folder: `crossmodal eval` scores its
//! checkpoint on the run's own test split (re-created from the saved
//! experiment and vocabulary, so the figures match the run's exactly) or on
//! other data; `crossmodal predict` gives class probabilities for one text
//! and image.

use std::path::Path;

use crate::data::manifest::decode_image;
use crate::data::{Dataset, ManifestConfig, Tokenizer};
use crate::error::{Error, Result};
use crate::experiment::checkpoint::{load_checkpoint, CheckpointMeta, ParamValues};
use crate::experiment::metrics::Classification;
use crate::experiment::model::{build_model, BuiltModel};
use crate::experiment::prepare::{
    ablation, classification, encode, evaluate, executor, gpu_for, load_data, make_batch, prepare,
    train_config, Encoded,
};
use crate::experiment::report::Ablation;
use crate::experiment::run::{
    DataSpec, Experiment, RunRecord, CHECKPOINT_DIR, RUN_FILE, VOCABULARY_FILE,
};
use crate::experiment::schema::{Backend, InputKind};
use crate::gpu::GpuContext;
use crate::graph::Executor;

/// A run folder's experiment, vocabulary, model and trained parameters.
pub struct SavedRun {
    pub experiment: Experiment,
    pub tokenizer: Tokenizer,
    pub classes: Vec<String>,
    pub model: BuiltModel,
    pub params: ParamValues,
    pub meta: CheckpointMeta,
    /// The backend that trained it (from `run.json`; `Auto` if unknown).
    pub trained_on: Backend,
}

impl SavedRun {
    /// Reads `dir` (a folder `crossmodal run` wrote).
    pub fn open(dir: &Path) -> Result<Self> {
        let experiment = Experiment::load_saved(dir)?;
        let vocab_path = dir.join(VOCABULARY_FILE);
        let vocab = std::fs::read_to_string(&vocab_path)
            .map_err(|e| Error::file(&vocab_path, format!("cannot read: {e}")))?;
        let tokenizer = Tokenizer::from_json(&vocab, &vocab_path.display().to_string())?;
        let ckpt = dir.join(CHECKPOINT_DIR);
        let classes = crate::experiment::checkpoint::load_meta(&ckpt)?.classes;
        let model = build_model(
            &experiment.model,
            experiment.training.batch_size,
            classes.len(),
            experiment.seed,
            None,
        )?;
        let (params, meta) = load_checkpoint(&ckpt, &model.graph)?;
        let trained_on = std::fs::read_to_string(dir.join(RUN_FILE))
            .ok()
            .and_then(|t| serde_json::from_str::<RunRecord>(&t).ok())
            .map_or(Backend::Auto, |r| r.backend);
        Ok(Self {
            experiment,
            tokenizer,
            classes,
            model,
            params,
            meta,
            trained_on,
        })
    }

    /// The GPU context for `backend`, or for the backend that trained the
    /// run when none is given.
    pub fn context(&self, backend: Option<Backend>) -> Result<Option<GpuContext>> {
        gpu_for(backend.unwrap_or(self.trained_on))
    }

    /// An executor holding the trained parameters.
    pub fn executor<'a>(&self, ctx: Option<&'a GpuContext>) -> Result<Box<dyn Executor + 'a>> {
        executor(
            ctx,
            &self.model.graph,
            self.model.loss,
            &self.params,
            train_config(&self.experiment.training),
        )
    }
}

/// What `eval` reports.
#[derive(Clone, Debug)]
pub struct EvalOutcome {
    /// What was scored, e.g. "the run's test split (400 samples)".
    pub data: String,
    pub metrics: Classification,
    pub loss: f64,
    /// Accuracy with each modality zeroed (multi-input models).
    pub ablation: Vec<Ablation>,
    pub device: String,
}

/// Maps `data`'s labels onto the run's class list by name.
fn align_classes(mut data: Dataset, classes: &[String], source: &str) -> Result<Dataset> {
    let map = data
        .classes
        .iter()
        .map(|name| {
            classes.iter().position(|c| c == name).ok_or_else(|| {
                Error::data(
                    source,
                    format!("label {name:?} is not in the run's class list {classes:?}"),
                )
            })
        })
        .collect::<Result<Vec<_>>>()?;
    data.labels = data
        .labels
        .iter()
        .map(|&l| map[l as usize] as u32)
        .collect();
    data.classes = classes.to_vec();
    Ok(data)
}

/// Scores the run in `dir`: on its own test split, or on all samples of
/// `data` (an experiment file whose `data` is used, or a manifest read
/// with the run's manifest settings).
pub fn eval_run(dir: &Path, data: Option<&Path>, backend: Option<Backend>) -> Result<EvalOutcome> {
    let run = SavedRun::open(dir)?;
    let exp = &run.experiment;
    let (set, what): (Encoded, String) = match data {
        None => {
            let p = prepare(exp, Some(run.tokenizer.clone()))?;
            if p.test.is_empty() {
                return Err(Error::setting(
                    "evaluation.test_split",
                    "the run has no test split; pass --data",
                ));
            }
            let n = p.test.len();
            (p.test, format!("the run's test split ({n} samples)"))
        }
        Some(path) => {
            let spec =
                match path.extension().and_then(|e| e.to_str()) {
                    Some("ron") => Experiment::load(path)?.data,
                    _ => match &exp.data {
                        DataSpec::Manifest(m) => DataSpec::Manifest(ManifestConfig {
                            path: path.to_path_buf(),
                            format: None,
                            ..m.clone()
                        }),
                        DataSpec::Synthetic(_) => return Err(Error::file(
                            path,
                            "the run trained on synthetic data, so it has no manifest settings \
                             to read this file with; pass an experiment (.ron) whose data section \
                             describes it",
                        )),
                    },
                };
            let all = load_data(&spec, exp.seed)?;
            let all = align_classes(all, &run.classes, &path.display().to_string())?;
            let n = all.len();
            (
                encode(exp, &run.tokenizer, all),
                format!("{} ({n} samples)", path.display()),
            )
        }
    };
    let ctx = run.context(backend)?;
    let mut exec = run.executor(ctx.as_ref())?;
    let batch = exp.training.batch_size;
    let classes = run.classes.len();
    let (probs, loss) = evaluate(exec.as_mut(), &run.model, &set, batch, classes, None)?;
    let metrics = classification(&probs, &set.data.labels, classes)?;
    let ablation = ablation(exec.as_mut(), &run.model, &set, batch, classes)?;
    Ok(EvalOutcome {
        data: what,
        metrics,
        loss,
        ablation,
        device: crate::experiment::prepare::device_name(ctx.as_ref()),
    })
}

/// One sample for `predict`: a text and/or an image file; a missing
/// modality is fed as zeros (all padding / a black image), as the
/// ablation does.
#[derive(Clone, Debug, Default)]
pub struct Sample<'a> {
    pub text: Option<&'a str>,
    pub image: Option<&'a Path>,
}

/// Class probabilities of one sample.
#[derive(Clone, Debug)]
pub struct Prediction {
    pub classes: Vec<String>,
    pub probabilities: Vec<f32>,
}

/// The sample as a one-sample data set shaped for `run`'s model.
pub fn sample_dataset(run: &SavedRun, sample: &Sample) -> Result<Encoded> {
    let mut shape = [1, 1, 1];
    for (_, _, kind) in &run.model.inputs {
        if let InputKind::Image {
            height,
            width,
            channels,
        } = kind
        {
            shape = [*height, *width, *channels];
        }
    }
    let images = match sample.image {
        Some(path) => {
            let bytes = std::fs::read(path)
                .map_err(|e| Error::file(path, format!("cannot read the image: {e}")))?;
            let mut cfg = match &run.experiment.data {
                DataSpec::Manifest(m) => m.clone(),
                DataSpec::Synthetic(_) => ManifestConfig::new(path),
            };
            cfg.image_size = [shape[0], shape[1]];
            cfg.channels = shape[2];
            decode_image(&bytes, &cfg)
                .map_err(|e| Error::file(path, format!("cannot decode the image: {e}")))?
        }
        None => vec![0.0; shape.iter().product()],
    };
    let data = Dataset {
        texts: vec![sample.text.unwrap_or("").to_string()],
        images,
        image_shape: shape,
        labels: vec![0],
        classes: run.classes.clone(),
    };
    Ok(encode(&run.experiment, &run.tokenizer, data))
}

/// The batch holding the sample in every row (the model's batch size is
/// fixed).
pub fn sample_batch(run: &SavedRun, one: &Encoded) -> crate::graph::Batch {
    let idx = vec![0; run.experiment.training.batch_size];
    make_batch(&run.model, one, &idx, None)
}

/// Class probabilities of `sample` under the run in `dir`.
pub fn predict_run(dir: &Path, sample: &Sample, backend: Option<Backend>) -> Result<Prediction> {
    let run = SavedRun::open(dir)?;
    let one = sample_dataset(&run, sample)?;
    let ctx = run.context(backend)?;
    let mut exec = run.executor(ctx.as_ref())?;
    let probs = exec.predict(&sample_batch(&run, &one), run.model.probs)?;
    let classes = run.classes.len();
    Ok(Prediction {
        classes: run.classes.clone(),
        probabilities: probs[..classes].to_vec(),
    })
}
