//! Checkpoints: a model's parameters, its vocabulary and class list, and
//! where training stood, in one directory that `eval`, `predict` and
//! `--resume` read back.
//!
//! Layout of a checkpoint directory:
//!
//! - `model.safetensors`: one f32 tensor per parameter, named after its
//!   graph node (`lstm.kernel`), with the node's shape.
//! - `optimizer.safetensors` (only when optimizer state with slots is
//!   given): the state tensors of every parameter, named `<slot>/<node>`
//!   (`m/lstm.kernel`, `v/lstm.kernel` for Adam, `velocity/…` for SGD with
//!   momentum).
//! - `checkpoint.json`: format and version, experiment name, epoch, step,
//!   class list, the optimizer's step count and slot names, the byte count
//!   and FNV-1a 64 digest of each tensor file, and the vocabulary (opaque
//!   JSON).
//!
//! Every file is written with [`write_atomic`] (temp file, fsync, rename),
//! tensor files first and `checkpoint.json` last: the JSON is the commit
//! point, and its digests make a tensor file from an interrupted or later
//! save an error on load rather than a silent mix. Parameters that are not
//! finite are refused before anything is written, so a run whose loss went
//! NaN keeps its last good checkpoint.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::Path;

use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::graph::{Executor, Graph, NodeId, OptimizerSnapshot};

/// File names inside a checkpoint directory.
pub const MODEL_FILE: &str = "model.safetensors";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
pub const META_FILE: &str = "checkpoint.json";

const FORMAT: &str = "crossmodal-checkpoint";
const VERSION: u32 = 2;

pub use crate::graph::exec::ParamValues;

/// Everything saved besides the parameters.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CheckpointMeta {
    /// The experiment's name.
    pub experiment: String,
    /// Epochs completed.
    pub epoch: usize,
    /// Training steps (batches) completed.
    pub step: u64,
    /// Steps completed of the unfinished epoch `epoch + 1` (a run stopped
    /// by Ctrl-C mid-epoch); 0 at an epoch boundary.
    pub epoch_step: u64,
    /// Class names, index = label id.
    pub classes: Vec<String>,
    /// The tokenizer's vocabulary, stored as given.
    pub vocabulary: serde_json::Value,
    /// The optimizer's state, so that a resumed run continues exactly.
    pub optimizer: Option<OptimizerSnapshot>,
}

/// Byte count and digest of one tensor file, as recorded in the JSON.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDigest {
    bytes: u64,
    fnv1a64: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct OptimizerRecord {
    steps: u32,
    slots: Vec<String>,
    /// The tensor file; absent when there are no slots (plain SGD).
    file: Option<FileDigest>,
}

/// `checkpoint.json`, field for field (vocabulary last: it is the long one).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct MetaFile {
    format: String,
    version: u32,
    experiment: String,
    epoch: usize,
    step: u64,
    epoch_step: u64,
    classes: Vec<String>,
    model: FileDigest,
    optimizer: Option<OptimizerRecord>,
    vocabulary: serde_json::Value,
}

/// Atomic writes (temp file, fsync, rename, directory fsync), shared with
/// every other output of a run.
pub use crate::experiment::atomic::write_atomic;

/// FNV-1a 64: enough to tell a tensor file from another save's, with no
/// dependency (this is a consistency check, not a security one).
fn fnv1a64(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

fn digest(bytes: &[u8]) -> FileDigest {
    FileDigest {
        bytes: bytes.len() as u64,
        fnv1a64: fnv1a64(bytes),
    }
}

/// Checks that `values` gives every parameter of `graph` exactly once with
/// its element count, all finite; returns them in [`Graph::params`] order.
fn check_values<'a>(
    graph: &Graph,
    values: &'a [(NodeId, Vec<f32>)],
    what: &str,
) -> Result<Vec<&'a [f32]>> {
    let params = graph.params();
    let mut by_id: HashMap<NodeId, &'a [f32]> = HashMap::new();
    for (id, v) in values {
        let node = params
            .contains(id)
            .then(|| graph.node(*id))
            .ok_or_else(|| {
                Error::graph(format!("#{}", id.0), format!("{what}: not a parameter"))
            })?;
        if by_id.insert(*id, v).is_some() {
            return Err(Error::graph(&node.name, format!("{what}: given twice")));
        }
        if v.len() != node.value.numel() {
            return Err(Error::graph(
                &node.name,
                format!(
                    "{what}: {} values, the parameter has shape {:?} ({} values)",
                    v.len(),
                    node.value.shape,
                    node.value.numel()
                ),
            ));
        }
        if let Some(i) = v.iter().position(|x| !x.is_finite()) {
            return Err(Error::graph(
                &node.name,
                format!(
                    "{what}: value {} at index {i} is not finite; nothing was saved",
                    v[i]
                ),
            ));
        }
    }
    params
        .iter()
        .map(|id| {
            by_id
                .get(id)
                .copied()
                .ok_or_else(|| Error::graph(&graph.node(*id).name, format!("{what}: missing")))
        })
        .collect()
}

fn le_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Serializes named f32 tensors (names with their node's shape).
fn serialize(graph: &Graph, tensors: &[(String, NodeId, Vec<u8>)]) -> Result<Vec<u8>> {
    let views = tensors
        .iter()
        .map(|(name, id, bytes)| {
            let shape = graph.node(*id).value.shape.clone();
            TensorView::new(Dtype::F32, shape, bytes)
                .map(|v| (name.clone(), v))
                .map_err(|e| Error::graph(name, format!("checkpoint tensor: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    safetensors::serialize(views, None)
        .map_err(|e| Error::graph("checkpoint", format!("serializing tensors: {e}")))
}

/// Saves a checkpoint into `dir` (created if needed), replacing the one
/// there. `params` holds every parameter of `graph` (in any order), e.g.
/// from [`params_of`]. Nothing is written when a value is missing, has the
/// wrong size or is not finite.
pub fn save_checkpoint(
    dir: &Path,
    graph: &Graph,
    params: &[(NodeId, Vec<f32>)],
    meta: &CheckpointMeta,
) -> Result<()> {
    let names = |id: NodeId| graph.node(id).name.clone();
    let values = check_values(graph, params, "checkpoint parameter")?;
    let model: Vec<_> = graph
        .params()
        .into_iter()
        .zip(&values)
        .map(|(id, v)| (names(id), id, le_bytes(v)))
        .collect();
    let model = serialize(graph, &model)?;
    let optimizer = match &meta.optimizer {
        Some(snapshot) => {
            let mut tensors = Vec::new();
            for (slot, values) in &snapshot.slots {
                let values = check_values(graph, values, &format!("optimizer slot {slot}"))?;
                for (id, v) in graph.params().into_iter().zip(&values) {
                    tensors.push((format!("{slot}/{}", names(id)), id, le_bytes(v)));
                }
            }
            let bytes = (!tensors.is_empty())
                .then(|| serialize(graph, &tensors))
                .transpose()?;
            Some((snapshot, bytes))
        }
        None => None,
    };
    let file = MetaFile {
        format: FORMAT.into(),
        version: VERSION,
        experiment: meta.experiment.clone(),
        epoch: meta.epoch,
        step: meta.step,
        epoch_step: meta.epoch_step,
        classes: meta.classes.clone(),
        model: digest(&model),
        optimizer: optimizer.as_ref().map(|(snapshot, bytes)| OptimizerRecord {
            steps: snapshot.steps,
            slots: snapshot.slots.iter().map(|(n, _)| n.clone()).collect(),
            file: bytes.as_deref().map(digest),
        }),
        vocabulary: meta.vocabulary.clone(),
    };
    let json = serde_json::to_vec_pretty(&file)
        .map_err(|e| Error::file(dir.join(META_FILE), format!("cannot encode: {e}")))?;

    fs::create_dir_all(dir)
        .map_err(|e| Error::file(dir, format!("cannot create the checkpoint directory: {e}")))?;
    write_atomic(dir.join(MODEL_FILE), &model)?;
    let tensor_file = optimizer.as_ref().and_then(|(_, bytes)| bytes.as_ref());
    if let Some(bytes) = tensor_file {
        write_atomic(dir.join(OPTIMIZER_FILE), bytes)?;
    }
    write_atomic(dir.join(META_FILE), &json)?;
    if tensor_file.is_none() {
        // A moments file from an earlier save no longer matches; the JSON
        // already says there is none, so a failure here loses nothing.
        let _ = fs::remove_file(dir.join(OPTIMIZER_FILE));
    }
    Ok(())
}

fn read(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).map_err(|e| Error::file(path, format!("cannot read: {e}")))
}

/// Reads a tensor file, checks it against its digest and returns the f32
/// tensors named `prefix<node name>` for every parameter of `graph`;
/// anything missing, extra, of another dtype or shape is an error naming
/// the file and the tensors.
fn read_tensors(
    path: &Path,
    want: &FileDigest,
    graph: &Graph,
    prefixes: &[&str],
) -> Result<Vec<ParamValues>> {
    let bytes = read(path)?;
    if bytes.len() as u64 != want.bytes {
        return Err(Error::file(
            path,
            format!(
                "the file has {} bytes, {META_FILE} records {} (truncated, or left by an interrupted save)",
                bytes.len(),
                want.bytes
            ),
        ));
    }
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| Error::file(path, format!("not a valid safetensors file: {e}")))?;
    let got = fnv1a64(&bytes);
    if got != want.fnv1a64 {
        return Err(Error::file(
            path,
            format!(
                "the content does not match {META_FILE} (FNV-1a {got}, recorded {}): \
                 the file was changed or comes from another save",
                want.fnv1a64
            ),
        ));
    }
    let mut problems = Vec::new();
    let mut expected = HashSet::new();
    let mut out = Vec::new();
    for prefix in prefixes {
        let mut tensors = Vec::new();
        for id in graph.params() {
            let node = graph.node(id);
            let name = format!("{prefix}{}", node.name);
            match st.tensor(&name) {
                Err(_) => problems.push(format!(
                    "tensor `{name}` (shape {:?}) is missing",
                    node.value.shape
                )),
                Ok(t) if t.dtype() != Dtype::F32 => {
                    problems.push(format!("tensor `{name}` is {:?}, expected F32", t.dtype()))
                }
                Ok(t) if t.shape() != node.value.shape.as_slice() => problems.push(format!(
                    "tensor `{name}` has shape {:?}, the model expects {:?}",
                    t.shape(),
                    node.value.shape
                )),
                Ok(t) => tensors.push((
                    id,
                    t.data()
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect(),
                )),
            }
            expected.insert(name);
        }
        out.push(tensors);
    }
    let mut extra: Vec<&str> = st
        .names()
        .into_iter()
        .filter(|n| !expected.contains(*n))
        .collect();
    extra.sort_unstable();
    for name in extra {
        problems.push(format!("tensor `{name}` is not a parameter of the model"));
    }
    if !problems.is_empty() {
        return Err(Error::file(path, problems.join("; ")));
    }
    Ok(out)
}

/// Reads and checks `checkpoint.json` of `dir`.
fn read_meta_file(dir: &Path) -> Result<(MetaFile, std::path::PathBuf)> {
    let meta_path = dir.join(META_FILE);
    let json = read(&meta_path)?;
    let file: MetaFile = serde_json::from_slice(&json).map_err(|e| {
        Error::file(
            &meta_path,
            format!("not a valid checkpoint description: {e}"),
        )
    })?;
    if file.format != FORMAT || file.version != VERSION {
        return Err(Error::file(
            &meta_path,
            format!(
                "format {:?} version {}, this build reads {FORMAT:?} version {VERSION}",
                file.format, file.version
            ),
        ));
    }
    Ok((file, meta_path))
}

/// The metadata of the checkpoint in `dir` without its tensors (and so
/// without the optimizer state): enough to rebuild the model it fits.
pub fn load_meta(dir: &Path) -> Result<CheckpointMeta> {
    read_meta_file(dir).map(|(file, _)| file.into())
}

impl From<MetaFile> for CheckpointMeta {
    /// Everything but the optimizer state (which lives in a tensor file).
    fn from(file: MetaFile) -> Self {
        CheckpointMeta {
            experiment: file.experiment,
            epoch: file.epoch,
            step: file.step,
            epoch_step: file.epoch_step,
            classes: file.classes,
            vocabulary: file.vocabulary,
            optimizer: None,
        }
    }
}

/// Loads the checkpoint in `dir` for `graph`: the parameters in
/// [`Graph::params`] order and the metadata (with the optimizer state when
/// the checkpoint has it). Every parameter must be present with its shape
/// and no other tensor may be.
pub fn load_checkpoint(dir: &Path, graph: &Graph) -> Result<(ParamValues, CheckpointMeta)> {
    let (file, meta_path) = read_meta_file(dir)?;
    let params = read_tensors(&dir.join(MODEL_FILE), &file.model, graph, &[""])?
        .pop()
        .unwrap_or_default();
    let optimizer = match &file.optimizer {
        Some(rec) => {
            let slots = match &rec.file {
                Some(digest) => {
                    let prefixes: Vec<String> = rec.slots.iter().map(|s| format!("{s}/")).collect();
                    let prefixes: Vec<&str> = prefixes.iter().map(String::as_str).collect();
                    let values = read_tensors(&dir.join(OPTIMIZER_FILE), digest, graph, &prefixes)?;
                    rec.slots.iter().cloned().zip(values).collect()
                }
                None if rec.slots.is_empty() => Vec::new(),
                None => {
                    return Err(Error::file(
                        &meta_path,
                        format!(
                            "optimizer slots {:?} are named but no tensor file is recorded",
                            rec.slots
                        ),
                    ))
                }
            };
            Some(OptimizerSnapshot {
                steps: rec.steps,
                slots,
            })
        }
        None => None,
    };
    let meta = CheckpointMeta {
        optimizer,
        ..file.into()
    };
    Ok((params, meta))
}

/// The current value of every parameter of `graph` held by `exec`, in
/// [`Graph::params`] order (what [`save_checkpoint`] takes).
pub fn params_of<E: Executor + ?Sized>(exec: &E, graph: &Graph) -> Result<ParamValues> {
    graph
        .params()
        .into_iter()
        .map(|id| exec.param(id).map(|v| (id, v)))
        .collect()
}

/// Overwrites every parameter of `exec` with loaded values.
pub fn restore_params<E: Executor + ?Sized>(
    exec: &mut E,
    params: &[(NodeId, Vec<f32>)],
) -> Result<()> {
    params.iter().try_for_each(|(id, v)| exec.set_param(*id, v))
}
