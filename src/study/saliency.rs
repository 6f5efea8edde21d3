//! Saliency of one prediction (`crossmodal predict --explain`): which
//! pixels and which words the predicted class is most sensitive to.
//!
//! The score is the predicted class c's log-probability, `log p_c`. It is
//! computed as the model's own loss with every label set to c: the loss is
//! `−log p_c`, so its gradient is `−∂log p_c/∂x` — the same magnitude, and
//! the sign is flipped back here, so every gradient reported is that of
//! `log p_c` (positive: raising the value raises the class's probability).
//!
//! - Image: `|∂log p_c/∂pixel|`, the maximum over channels, from the input
//!   gradient of the image node (`with_input_gradients` on the CPU,
//!   [`ExecOptions::input_gradients`] on the GPU: the convolution's
//!   backward-input kernel). Written as a grayscale PNG at the model's
//!   input size, normalised so the largest value is 255, plus a copy
//!   upscaled by an integer factor (nearest neighbour, "hot" colours).
//! - Text: token ids have no gradient, so each position t is scored by
//!   gradient × input at the embedding's output `[T,B,D]`:
//!   `Σ_d ∂log p_c/∂e[t,0,d] · e[t,0,d]`; padding is skipped and the rest
//!   ranked by magnitude.
//!
//! The model's batch size is fixed, so the batch holds the sample in every
//! row (as `predict` does) and only row 0 is read. Rows do not interact, so
//! row 0's gradient is that of row 0's own loss divided by B (the loss is
//! the batch mean); it is multiplied back by B, which makes it exactly the
//! gradient of the one sample's `log p_c`.
//!
//! The gradient is taken at inference: dropout layers (the identity at
//! inference) are left out of the graph that is differentiated, whose
//! parameters are the checkpoint's, matched by name.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::data::tokenizer::{split_words, Padding, Truncation, OOV, PAD};
use crate::error::{Error, Result};
use crate::experiment::model::{build_model, BuiltModel};
use crate::experiment::prepare::{device_name, seq_len};
use crate::experiment::saved::{sample_batch, sample_dataset, Sample, SavedRun};
use crate::experiment::schema::{Backend, InputKind, LayerKind, ModelSpec};
use crate::gpu::GpuContext;
use crate::graph::exec::ParamValues;
use crate::graph::gpu::{ExecOptions, GpuExecutor};
use crate::graph::{Batch, CpuExecutor, Executor, HostData, NodeId, Op};

/// One text position's attribution.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenScore {
    /// Index in the model's `[T]` sequence (after padding and truncation).
    pub position: usize,
    pub id: u32,
    /// The vocabulary's word for `id` ([`crate::data::Tokenizer::word`];
    /// `<oov>` for an unknown word).
    pub word: String,
    /// The word as the text wrote it (after splitting and lowercasing).
    pub text_word: Option<String>,
    /// `Σ_d ∂log p_c/∂e_d · e_d` at this position: positive where the word
    /// supports the predicted class.
    pub score: f32,
}

/// The image's saliency at the model's input size.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageSaliency {
    pub height: usize,
    pub width: usize,
    pub channels: usize,
    /// `∂log p_c/∂x`, `[H,W,C]`.
    pub gradient: Vec<f32>,
    /// `max_c |∂log p_c/∂x[h,w,c]|`, `[H,W]`.
    pub map: Vec<f32>,
}

/// Where [`ImageSaliency::write_png`] wrote the heat maps.
#[derive(Clone, Debug, PartialEq)]
pub struct HeatmapFiles {
    /// Grayscale, the model's input size.
    pub map: PathBuf,
    /// Hot colours, `factor` times larger.
    pub upscaled: PathBuf,
    pub factor: u32,
}

/// The saliency of one prediction (see the module doc).
#[derive(Clone, Debug)]
pub struct Explanation {
    pub classes: Vec<String>,
    pub probabilities: Vec<f32>,
    /// The predicted class (highest probability), whose log-probability is
    /// the score.
    pub class: usize,
    /// `log p_c` from the gradient pass's loss (equals the log of
    /// `probabilities[class]` up to rounding).
    pub log_prob: f32,
    /// `None` without an image (or an image input in the model).
    pub image: Option<ImageSaliency>,
    /// `None` without a text (or a token input read by an embedding);
    /// ranked by |score|, largest first.
    pub tokens: Option<Vec<TokenScore>>,
    pub device: String,
}

/// `spec` with its dropout layers left out (consumers read the dropout's
/// input instead): the same function at inference, where dropout is the
/// identity, with the same parameter names.
pub fn inference_model(spec: &ModelSpec) -> ModelSpec {
    let skip: HashMap<&str, &str> = spec
        .layers
        .iter()
        .filter(|l| matches!(l.kind, LayerKind::Dropout { .. }) && l.inputs.len() == 1)
        .map(|l| (l.name.as_str(), l.inputs[0].as_str()))
        .collect();
    let resolve = |name: &str| {
        let mut n = name;
        // Bounded: a cycle of dropouts is reported by build_model.
        for _ in 0..=skip.len() {
            match skip.get(n) {
                Some(&up) => n = up,
                None => break,
            }
        }
        n.to_string()
    };
    let mut out = spec.clone();
    out.layers.retain(|l| !skip.contains_key(l.name.as_str()));
    for l in &mut out.layers {
        l.inputs = l.inputs.iter().map(|i| resolve(i)).collect();
    }
    out.output = resolve(&spec.output);
    out
}

/// The inference model of `run` and its checkpoint's parameters (by name).
fn inference_graph(run: &SavedRun) -> Result<(BuiltModel, ParamValues)> {
    let exp = &run.experiment;
    let model = build_model(
        &inference_model(&exp.model),
        exp.training.batch_size,
        run.classes.len(),
        exp.seed,
        None,
    )?;
    let saved: HashMap<&str, &Vec<f32>> = run
        .params
        .iter()
        .map(|(id, v)| (run.model.graph.node(*id).name.as_str(), v))
        .collect();
    let params = model
        .graph
        .params()
        .into_iter()
        .map(|p| {
            let name = &model.graph.node(p).name;
            saved
                .get(name.as_str())
                .map(|v| (p, (*v).clone()))
                .ok_or_else(|| Error::graph(name, "the checkpoint has no value for this parameter"))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((model, params))
}

/// The executor of the gradient pass.
enum Runner<'a> {
    Cpu(Box<CpuExecutor<f32>>),
    Gpu(Box<GpuExecutor<'a>>),
}

impl Runner<'_> {
    fn exec(&mut self) -> &mut dyn Executor {
        match self {
            Runner::Cpu(e) => e.as_mut(),
            Runner::Gpu(e) => e.as_mut(),
        }
    }

    /// Forward and backward of the loss, no update; returns the loss.
    fn backward(&mut self, batch: &Batch) -> Result<f32> {
        match self {
            Runner::Cpu(e) => e.run_gradients(batch),
            Runner::Gpu(e) => e.run_gradients(batch),
        }
    }

    /// The gradient of the loss w.r.t. a node after the last backward.
    fn gradient(&mut self, id: NodeId) -> Result<Vec<f32>> {
        match self {
            Runner::Cpu(e) => Ok(e.grad(id)?.iter().copied().collect()),
            Runner::Gpu(e) => e.gradient_of(id),
        }
    }
}

/// The sample's position `t` → its word in the text, with the tokenizer's
/// padding and truncation (as [`crate::data::Tokenizer::encode_one`]).
fn aligned_words(
    words: Vec<String>,
    seq_len: usize,
    padding: Padding,
    truncation: Truncation,
) -> Vec<Option<String>> {
    let n = words.len();
    let kept: Vec<String> = if n > seq_len {
        match truncation {
            Truncation::Pre => words[n - seq_len..].to_vec(),
            Truncation::Post => words[..seq_len].to_vec(),
        }
    } else {
        words
    };
    let mut out = vec![None; seq_len];
    let start = match padding {
        Padding::Pre => seq_len - kept.len(),
        Padding::Post => 0,
    };
    for (i, w) in kept.into_iter().enumerate() {
        out[start + i] = Some(w);
    }
    out
}

/// Explains `sample` under `run` on the GPU `ctx`, or on the CPU reference
/// backend when `None` (see the module doc).
pub fn explain(run: &SavedRun, sample: &Sample, ctx: Option<&GpuContext>) -> Result<Explanation> {
    let (model, params) = inference_graph(run)?;
    let exp = &run.experiment;
    let rows = exp.training.batch_size;
    let image = model.inputs.iter().find_map(|(_, id, k)| match k {
        InputKind::Image {
            height,
            width,
            channels,
        } if sample.image.is_some() => Some((*id, [*height, *width, *channels])),
        _ => None,
    });
    let tokens = model
        .inputs
        .iter()
        .find(|(_, _, k)| matches!(k, InputKind::Tokens { .. }) && sample.text.is_some())
        .map(|(_, id, _)| *id);
    // The embedding that reads the tokens: its output is scored.
    let embedding = tokens.and_then(|t| {
        model
            .graph
            .ids()
            .find(|&i| {
                let n = model.graph.node(i);
                matches!(n.op, Op::Embedding { .. }) && n.inputs[1] == t
            })
            .map(|e| (t, e))
    });
    let sources: Vec<NodeId> = image.iter().map(|(id, _)| *id).collect();
    let config = crate::experiment::prepare::train_config(&exp.training);
    let mut backend = match ctx {
        None => Runner::Cpu(Box::new(
            CpuExecutor::<f32>::new(&model.graph, model.loss, &params, config)?
                .per_position_gradients()
                .with_input_gradients(&sources)?,
        )),
        Some(ctx) => {
            let options = ExecOptions {
                inspect: embedding.iter().map(|&(_, e)| e).collect(),
                input_gradients: sources.clone(),
            };
            Runner::Gpu(Box::new(GpuExecutor::with_options(
                ctx,
                &model.graph,
                model.loss,
                &params,
                config,
                options,
            )?))
        }
    };

    let one = sample_dataset(run, sample)?;
    // sample_batch builds the batch for the saved model; its inputs carry
    // the same names here.
    let mut batch = Batch::new();
    for (id, data) in sample_batch(run, &one).inputs {
        let name = &run.model.graph.node(id).name;
        batch = batch.with(model.graph.expect_id(name)?, data);
    }
    let classes = run.classes.len();
    let probs = backend.exec().predict(&batch, model.probs)?;
    let probabilities = probs[..classes].to_vec();
    let class =
        probabilities.iter().enumerate().fold(
            0,
            |best, (i, &p)| if p > probabilities[best] { i } else { best },
        );

    // The loss with every label c is −log p_c; its gradient is −∂log p_c/∂x / B
    // at row 0 (see the module doc).
    for (id, data) in &mut batch.inputs {
        if *id == model.labels {
            *data = HostData::U32(vec![class as u32; rows]);
        }
    }
    let loss = backend.backward(&batch)?;
    let scale = -(rows as f32);

    let image = match image {
        Some((id, [h, w, c])) => {
            let g = backend.gradient(id)?;
            let gradient: Vec<f32> = g[..h * w * c].iter().map(|&v| v * scale).collect();
            let map = gradient
                .chunks_exact(c)
                .map(|px| px.iter().fold(0f32, |m, v| m.max(v.abs())))
                .collect();
            Some(ImageSaliency {
                height: h,
                width: w,
                channels: c,
                gradient,
                map,
            })
        }
        None => None,
    };

    let tokens = match embedding {
        Some((t, e)) => {
            let ids = batch
                .inputs
                .iter()
                .find_map(|(id, d)| match d {
                    HostData::U32(v) if *id == t => Some(v.clone()),
                    _ => None,
                })
                .ok_or_else(|| Error::graph(&model.graph.node(t).name, "not in the batch"))?;
            let dim = *model.graph.node(e).value.shape.last().unwrap_or(&1);
            let grad = backend.gradient(e)?;
            let value = backend.exec().value(e)?;
            let steps = ids.len() / rows;
            let words = aligned_words(
                split_words(sample.text.unwrap_or(""), exp.text.tokenizer.lowercase),
                seq_len(exp),
                exp.text.padding,
                exp.text.truncation,
            );
            let mut scored: Vec<TokenScore> = (0..steps)
                .filter(|&s| ids[s * rows] != PAD)
                .map(|s| {
                    let id = ids[s * rows];
                    let at = s * rows * dim;
                    let dot: f32 = (0..dim).map(|d| grad[at + d] * value[at + d]).sum();
                    TokenScore {
                        position: s,
                        id,
                        word: run.tokenizer.word(id).unwrap_or("<unknown id>").to_string(),
                        text_word: words.get(s).cloned().flatten(),
                        score: dot * scale,
                    }
                })
                .collect();
            scored.sort_by(|a, b| {
                b.score
                    .abs()
                    .total_cmp(&a.score.abs())
                    .then(a.position.cmp(&b.position))
            });
            Some(scored)
        }
        None => None,
    };

    Ok(Explanation {
        classes: run.classes.clone(),
        probabilities,
        class,
        log_prob: -loss,
        image,
        tokens,
        device: device_name(ctx),
    })
}

/// Explains `sample` under the run in `dir` on `backend` (default: the one
/// that trained it).
pub fn explain_run(dir: &Path, sample: &Sample, backend: Option<Backend>) -> Result<Explanation> {
    let run = SavedRun::open(dir)?;
    let ctx = run.context(backend)?;
    explain(&run, sample, ctx.as_ref())
}

/// The "hot" colour map: black → red → yellow → white.
fn hot(v: u8) -> [u8; 3] {
    let x = v as f32 / 255.0;
    let ch = |lo: f32| (((x - lo) * 3.0).clamp(0.0, 1.0) * 255.0).round() as u8;
    [ch(0.0), ch(1.0 / 3.0), ch(2.0 / 3.0)]
}

impl ImageSaliency {
    /// The map scaled so its maximum is 255 (all zeros if it is 0).
    pub fn normalized(&self) -> Vec<u8> {
        let max = self.map.iter().fold(0f32, |m, &v| m.max(v));
        self.map
            .iter()
            .map(|&v| {
                if max > 0.0 {
                    (v / max * 255.0).round() as u8
                } else {
                    0
                }
            })
            .collect()
    }

    /// The upscaling factor of the coloured copy: the largest integer that
    /// keeps its longer side at most 256 pixels (at least 1).
    pub fn upscale_factor(&self) -> u32 {
        (256 / self.height.max(self.width).max(1)).max(1) as u32
    }

    /// Writes the grayscale map to `path` (PNG, the model's input size) and
    /// the coloured, upscaled copy beside it as `<stem>_x<factor>.png`.
    pub fn write_png(&self, path: &Path) -> Result<HeatmapFiles> {
        let (w, h) = (self.width as u32, self.height as u32);
        let gray = image::GrayImage::from_raw(w, h, self.normalized())
            .expect("one byte per pixel of the map");
        gray.save_with_format(path, image::ImageFormat::Png)
            .map_err(|e| Error::file(path, format!("cannot write the heat map: {e}")))?;
        let k = self.upscale_factor();
        let big = image::RgbImage::from_fn(w * k, h * k, |x, y| {
            image::Rgb(hot(gray.get_pixel(x / k, y / k).0[0]))
        });
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("saliency");
        let upscaled = path.with_file_name(format!("{stem}_x{k}.png"));
        big.save_with_format(&upscaled, image::ImageFormat::Png)
            .map_err(|e| Error::file(&upscaled, format!("cannot write the heat map: {e}")))?;
        Ok(HeatmapFiles {
            map: path.to_path_buf(),
            upscaled,
            factor: k,
        })
    }
}

impl Explanation {
    /// A plain-text report: the probabilities, the image's heat map files
    /// (when written) and the `top` tokens (all when `None`).
    pub fn report(&self, files: Option<&HeatmapFiles>, top: Option<usize>) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        for (class, prob) in self.classes.iter().zip(&self.probabilities) {
            let _ = writeln!(s, "{class:>12}  {prob:.4}");
        }
        let name = &self.classes[self.class];
        let _ = writeln!(
            s,
            "explaining {name}: score log p({name}) = {:.4}, on {}",
            self.log_prob, self.device
        );
        match &self.image {
            Some(img) => {
                let max = img.map.iter().fold(0f32, |m, &v| m.max(v));
                let _ = writeln!(
                    s,
                    "image: |d log p / d pixel| (max over {} channel(s)), {}x{}, max {max:.3e}",
                    img.channels, img.width, img.height
                );
                if let Some(f) = files {
                    let _ = writeln!(
                        s,
                        "  heat map  {} ({}x{}, 255 = max)",
                        f.map.display(),
                        img.width,
                        img.height
                    );
                    let k = f.factor as usize;
                    let _ = writeln!(
                        s,
                        "  upscaled  {} ({}x{}, x{k}, hot colours)",
                        f.upscaled.display(),
                        img.width * k,
                        img.height * k
                    );
                }
            }
            None => {
                let _ = writeln!(
                    s,
                    "image: not explained (no image given, or the model reads none)"
                );
            }
        }
        match &self.tokens {
            Some(tokens) if tokens.is_empty() => {
                let _ = writeln!(s, "text: no known token (all padding)");
            }
            Some(tokens) => {
                let _ = writeln!(
                    s,
                    "tokens by |gradient x embedding| (+ supports {name}, - opposes):"
                );
                let shown = top.unwrap_or(tokens.len()).min(tokens.len());
                for (rank, t) in tokens[..shown].iter().enumerate() {
                    let word = match (&t.text_word, t.id) {
                        (Some(w), OOV) => format!("{} ({w})", t.word),
                        _ => t.word.clone(),
                    };
                    let _ = writeln!(
                        s,
                        "  {:>3}. {word:<24} {:>+11.4e}  (position {})",
                        rank + 1,
                        t.score,
                        t.position
                    );
                }
                if shown < tokens.len() {
                    let _ = writeln!(s, "  ... {} more", tokens.len() - shown);
                }
            }
            None => {
                let _ = writeln!(
                    s,
                    "text: not explained (no text given, or the model reads none)"
                );
            }
        }
        s
    }
}

/// `predict --explain`: explains `sample` under the run in `dir`, writes
/// the image's heat maps to `out` (and its upscaled copy beside it) and
/// returns the report.
pub fn explain_to_files(
    dir: &Path,
    sample: &Sample,
    backend: Option<Backend>,
    out: &Path,
) -> Result<String> {
    let e = explain_run(dir, sample, backend)?;
    let files = e.image.as_ref().map(|i| i.write_png(out)).transpose()?;
    Ok(e.report(files.as_ref(), Some(20)))
}
