//! Checkpoints (`experiment::checkpoint`): bit-identical round trips of the
//! small seed model's parameters and of Adam state, a trained CPU executor
//! reloaded into a fresh one predicting bit for bit the same, atomic
//! replacement (no temp files, a refused save keeps the old checkpoint), and
//! each bad checkpoint's error naming the file and the tensor.

mod common;
mod graph_common;

use std::fs;
use std::path::{Path, PathBuf};

use common::random;
use crossmodal::experiment::checkpoint::{
    load_checkpoint, params_of, restore_params, save_checkpoint, write_atomic, CheckpointMeta,
    META_FILE, MODEL_FILE, OPTIMIZER_FILE,
};
use crossmodal::graph::gpu::GpuExecutor;
use crossmodal::graph::init::init_params;
use crossmodal::graph::{
    CpuExecutor, Executor, Graph, Init, NodeId, Op, OptimizerSnapshot, TrainConfig,
};
use crossmodal::nn::{seed_model, SeedConfig, SeedModel};
use crossmodal::optim::{adam::AdamConfig, sgd::SgdConfig};
use graph_common::{small, SeedData};

fn scratch(name: &str) -> PathBuf {
    common::experiments::scratch("checkpoint", name)
}

fn model(c: &SeedConfig) -> SeedModel {
    seed_model(c).unwrap()
}

fn meta() -> CheckpointMeta {
    CheckpointMeta {
        experiment: "tiny".into(),
        epoch: 2,
        step: 17,
        epoch_step: 0,
        classes: vec!["negative".into(), "neutral".into(), "positive".into()],
        vocabulary: serde_json::json!({"<pad>": 0, "<oov>": 1, "good": 2, "bad": 3}),
        optimizer: None,
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn assert_same_params(got: &[(NodeId, Vec<f32>)], want: &[(NodeId, Vec<f32>)]) {
    assert_eq!(got.len(), want.len());
    for ((gi, gv), (wi, wv)) in got.iter().zip(want) {
        assert_eq!(gi, wi);
        assert_eq!(bits(gv), bits(wv), "parameter #{}", gi.0);
    }
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn error_of<T>(r: crossmodal::Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

fn assert_mentions(message: &str, parts: &[&str]) {
    for p in parts {
        assert!(message.contains(p), "{message:?} does not mention {p:?}");
    }
}

/// The seed graph plus one more parameter, `extra` `[2]`.
fn with_extra_param(c: &SeedConfig) -> Graph {
    let mut g = model(c).graph;
    g.add(
        "extra",
        Op::Param {
            shape: vec![2],
            init: Init::Ones,
        },
        &[],
    )
    .unwrap();
    g
}

#[test]
fn round_trip_restores_bit_identical_parameters() {
    let dir = scratch("round-trip");
    let m = model(&small(false));
    let params = init_params(&m.graph, 7);
    save_checkpoint(&dir, &m.graph, &params, &meta()).unwrap();
    assert_eq!(files_in(&dir), [META_FILE, MODEL_FILE]);

    let (loaded, got_meta) = load_checkpoint(&dir, &m.graph).unwrap();
    assert_same_params(&loaded, &params);
    assert_eq!(got_meta, meta());

    // Given in another order, saved and loaded in graph order.
    let mut shuffled = params.clone();
    shuffled.reverse();
    save_checkpoint(&dir, &m.graph, &shuffled, &meta()).unwrap();
    assert_same_params(&load_checkpoint(&dir, &m.graph).unwrap().0, &params);
}

#[test]
fn tensors_are_named_after_parameter_nodes_with_their_shapes() {
    let dir = scratch("names");
    let m = model(&small(false));
    save_checkpoint(&dir, &m.graph, &init_params(&m.graph, 1), &meta()).unwrap();
    let bytes = fs::read(dir.join(MODEL_FILE)).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names = st.names();
    names.sort_unstable();
    let mut want: Vec<&str> = m
        .graph
        .params()
        .into_iter()
        .map(|id| m.graph.node(id).name.as_str())
        .collect();
    want.sort_unstable();
    assert_eq!(names, want);
    for id in m.graph.params() {
        let node = m.graph.node(id);
        let t = st.tensor(&node.name).unwrap();
        assert_eq!(t.dtype(), safetensors::Dtype::F32);
        assert_eq!(t.shape(), node.value.shape.as_slice(), "{}", node.name);
    }
    let kernel = st.tensor("lstm.kernel").unwrap();
    assert_eq!(kernel.shape(), [4, 20]);
}

#[test]
fn trained_executor_reloads_into_a_fresh_one_with_identical_predictions() {
    let dir = scratch("trained");
    let c = small(false);
    let m = model(&c);
    let train = SeedData::new(&c, 11).batch(&m);
    let test = SeedData::new(&c, 23).batch(&m);
    let mut exec = CpuExecutor::<f32>::new(
        &m.graph,
        m.loss,
        &init_params(&m.graph, 3),
        TrainConfig::default(),
    )
    .unwrap();
    for _ in 0..4 {
        exec.train_step(&train).unwrap();
    }
    let want = exec.predict(&test, m.probs).unwrap();
    let params = params_of(&exec, &m.graph).unwrap();
    save_checkpoint(&dir, &m.graph, &params, &meta()).unwrap();

    let (loaded, _) = load_checkpoint(&dir, &m.graph).unwrap();
    let mut fresh = CpuExecutor::<f32>::new(
        &m.graph,
        m.loss,
        &init_params(&m.graph, 99),
        TrainConfig::default(),
    )
    .unwrap();
    let before = fresh.predict(&test, m.probs).unwrap();
    assert_ne!(
        bits(&before),
        bits(&want),
        "the fresh executor starts elsewhere"
    );
    restore_params(&mut fresh, &loaded).unwrap();
    assert_eq!(bits(&fresh.predict(&test, m.probs).unwrap()), bits(&want));
    assert_same_params(&params_of(&fresh, &m.graph).unwrap(), &params);
}

#[test]
fn adam_state_round_trips_and_is_dropped_by_a_save_without_it() {
    let dir = scratch("adam");
    let m = model(&small(false));
    let params = init_params(&m.graph, 5);
    let moments = |seed: u64| -> Vec<(NodeId, Vec<f32>)> {
        params
            .iter()
            .enumerate()
            .map(|(i, (id, v))| {
                let r = random(&[v.len()], seed + i as u64);
                (*id, r.iter().map(|x| x.abs()).collect())
            })
            .collect()
    };
    let with_adam = CheckpointMeta {
        optimizer: Some(OptimizerSnapshot {
            steps: 42,
            slots: vec![("m".into(), moments(100)), ("v".into(), moments(200))],
        }),
        ..meta()
    };
    save_checkpoint(&dir, &m.graph, &params, &with_adam).unwrap();
    assert_eq!(files_in(&dir), [META_FILE, MODEL_FILE, OPTIMIZER_FILE]);
    let (loaded, got) = load_checkpoint(&dir, &m.graph).unwrap();
    assert_same_params(&loaded, &params);
    let (got_adam, want_adam) = (got.optimizer.unwrap(), with_adam.optimizer.unwrap());
    assert_eq!(got_adam.steps, 42);
    assert_eq!(got_adam.slots.len(), 2);
    for ((gn, gv), (wn, wv)) in got_adam.slots.iter().zip(&want_adam.slots) {
        assert_eq!(gn, wn);
        assert_same_params(gv, wv);
    }

    // Plain SGD keeps a step count and no tensors.
    let sgd = CheckpointMeta {
        optimizer: Some(OptimizerSnapshot {
            steps: 7,
            slots: Vec::new(),
        }),
        ..meta()
    };
    save_checkpoint(&dir, &m.graph, &params, &sgd).unwrap();
    assert_eq!(files_in(&dir), [META_FILE, MODEL_FILE]);
    assert_eq!(load_checkpoint(&dir, &m.graph).unwrap().1, sgd);

    save_checkpoint(&dir, &m.graph, &params, &meta()).unwrap();
    assert_eq!(files_in(&dir), [META_FILE, MODEL_FILE]);
    assert_eq!(load_checkpoint(&dir, &m.graph).unwrap().1.optimizer, None);
}

#[test]
fn a_new_save_replaces_the_old_one_and_leaves_no_temp_files() {
    let dir = scratch("replace");
    let m = model(&small(false));
    let first = init_params(&m.graph, 1);
    let second = init_params(&m.graph, 2);
    save_checkpoint(&dir, &m.graph, &first, &meta()).unwrap();
    let later = CheckpointMeta {
        epoch: 3,
        step: 30,
        ..meta()
    };
    save_checkpoint(&dir, &m.graph, &second, &later).unwrap();
    assert_eq!(files_in(&dir), [META_FILE, MODEL_FILE]);
    let (loaded, got) = load_checkpoint(&dir, &m.graph).unwrap();
    assert_same_params(&loaded, &second);
    assert_eq!(got, later);
}

#[test]
fn non_finite_parameters_are_refused_and_the_last_good_checkpoint_kept() {
    let dir = scratch("nan");
    let m = model(&small(false));
    let good = init_params(&m.graph, 1);
    save_checkpoint(&dir, &m.graph, &good, &meta()).unwrap();
    let mut bad = init_params(&m.graph, 2);
    let conv = m.graph.id("conv.kernel").unwrap();
    bad.iter_mut().find(|(id, _)| *id == conv).unwrap().1[3] = f32::NAN;
    let e = error_of(save_checkpoint(&dir, &m.graph, &bad, &meta()));
    assert_mentions(&e, &["conv.kernel", "index 3", "not finite"]);
    assert_eq!(files_in(&dir), [META_FILE, MODEL_FILE]);
    assert_same_params(&load_checkpoint(&dir, &m.graph).unwrap().0, &good);
}

#[test]
fn save_checks_the_parameters_it_is_given() {
    let dir = scratch("save-checks");
    let m = model(&small(false));
    let mut params = init_params(&m.graph, 1);
    let dense = m.graph.id("dense.kernel").unwrap();
    let i = params.iter().position(|(id, _)| *id == dense).unwrap();
    params[i].1.pop();
    let e = error_of(save_checkpoint(&dir, &m.graph, &params, &meta()));
    assert_mentions(&e, &["dense.kernel", "values"]);
    params.remove(i);
    let e = error_of(save_checkpoint(&dir, &m.graph, &params, &meta()));
    assert_mentions(&e, &["dense.kernel", "missing"]);
    assert!(files_in(&dir).is_empty(), "nothing written");
}

#[test]
fn a_failed_write_removes_its_temp_file_and_names_the_path() {
    let dir = scratch("failed-write");
    // A directory where the file should go: the rename fails.
    fs::create_dir(dir.join(MODEL_FILE)).unwrap();
    let m = model(&small(false));
    let e = error_of(save_checkpoint(
        &dir,
        &m.graph,
        &init_params(&m.graph, 1),
        &meta(),
    ));
    assert_mentions(&e, &[&dir.join(MODEL_FILE).display().to_string()]);
    assert_eq!(files_in(&dir), [MODEL_FILE]);

    let nowhere = dir.join("no-such-dir").join("file.txt");
    let e = error_of(write_atomic(&nowhere, b"x"));
    assert_mentions(&e, &[&nowhere.display().to_string(), "cannot write"]);

    let ok = dir.join("plain.txt");
    write_atomic(&ok, b"one").unwrap();
    write_atomic(&ok, b"two").unwrap();
    assert_eq!(fs::read(&ok).unwrap(), b"two");
    assert_eq!(files_in(&dir), [MODEL_FILE, "plain.txt"]);
}

#[test]
fn missing_directory_or_file_names_the_path() {
    let dir = scratch("missing");
    let m = model(&small(false));
    let nowhere = dir.join("never-saved");
    let e = error_of(load_checkpoint(&nowhere, &m.graph));
    assert_mentions(
        &e,
        &[
            &nowhere.join(META_FILE).display().to_string(),
            "cannot read",
        ],
    );

    save_checkpoint(&dir, &m.graph, &init_params(&m.graph, 1), &meta()).unwrap();
    fs::remove_file(dir.join(MODEL_FILE)).unwrap();
    let e = error_of(load_checkpoint(&dir, &m.graph));
    assert_mentions(
        &e,
        &[&dir.join(MODEL_FILE).display().to_string(), "cannot read"],
    );
}

/// Saves the small seed model, applies `damage` to the model file and
/// returns the load error.
fn load_after(name: &str, damage: impl FnOnce(&mut Vec<u8>)) -> (PathBuf, String) {
    let dir = scratch(name);
    let m = model(&small(false));
    save_checkpoint(&dir, &m.graph, &init_params(&m.graph, 1), &meta()).unwrap();
    let path = dir.join(MODEL_FILE);
    let mut bytes = fs::read(&path).unwrap();
    damage(&mut bytes);
    fs::write(&path, &bytes).unwrap();
    (path.clone(), error_of(load_checkpoint(&dir, &m.graph)))
}

#[test]
fn truncated_model_file_is_reported() {
    let mut len = 0;
    let (path, e) = load_after("truncated", |b| {
        len = b.len();
        b.truncate(len - 10);
    });
    assert_mentions(
        &e,
        &[
            &path.display().to_string(),
            &format!("{} bytes", len - 10),
            &format!("records {len}"),
            "truncated",
        ],
    );
}

#[test]
fn corrupt_model_file_is_reported() {
    // A header length past the end of the file, the size unchanged.
    let (path, e) = load_after("bad-header", |b| b[..8].copy_from_slice(&[0xff; 8]));
    assert_mentions(
        &e,
        &[&path.display().to_string(), "not a valid safetensors file"],
    );
    // One flipped bit in the last value: still valid safetensors.
    let (path, e) = load_after("flipped", |b| *b.last_mut().unwrap() ^= 1);
    assert_mentions(&e, &[&path.display().to_string(), "does not match"]);
}

#[test]
fn corrupt_or_foreign_description_is_reported() {
    let dir = scratch("bad-json");
    let m = model(&small(false));
    save_checkpoint(&dir, &m.graph, &init_params(&m.graph, 1), &meta()).unwrap();
    let path = dir.join(META_FILE);
    let json = fs::read_to_string(&path).unwrap();

    fs::write(&path, &json[..json.len() / 2]).unwrap();
    let e = error_of(load_checkpoint(&dir, &m.graph));
    assert_mentions(&e, &[&path.display().to_string(), "line"]);

    let foreign = json.replace("\"version\": 2", "\"version\": 9");
    assert_ne!(foreign, json, "the version field moved");
    fs::write(&path, foreign).unwrap();
    let e = error_of(load_checkpoint(&dir, &m.graph));
    assert_mentions(&e, &[&path.display().to_string(), "version 9"]);

    fs::write(&path, json.replacen('{', "{\"surprise\": 1,", 1)).unwrap();
    let e = error_of(load_checkpoint(&dir, &m.graph));
    assert_mentions(&e, &[&path.display().to_string(), "surprise"]);
}

#[test]
fn wrong_shape_names_the_tensor_and_both_shapes() {
    let dir = scratch("shape");
    let saved = model(&small(false));
    save_checkpoint(&dir, &saved.graph, &init_params(&saved.graph, 1), &meta()).unwrap();
    let wider = model(&SeedConfig {
        lstm_units: 6,
        ..small(false)
    });
    let e = error_of(load_checkpoint(&dir, &wider.graph));
    assert_mentions(
        &e,
        &[
            &dir.join(MODEL_FILE).display().to_string(),
            "tensor `lstm.kernel` has shape [4, 20], the model expects [4, 24]",
            "tensor `lstm.recurrent_kernel` has shape [5, 20], the model expects [6, 24]",
        ],
    );
}

#[test]
fn missing_tensor_is_named() {
    let dir = scratch("missing-tensor");
    let m = model(&small(false));
    save_checkpoint(&dir, &m.graph, &init_params(&m.graph, 1), &meta()).unwrap();
    let e = error_of(load_checkpoint(&dir, &with_extra_param(&small(false))));
    assert_mentions(
        &e,
        &[
            &dir.join(MODEL_FILE).display().to_string(),
            "tensor `extra` (shape [2]) is missing",
        ],
    );
}

#[test]
fn extra_tensor_is_named() {
    let dir = scratch("extra-tensor");
    let g = with_extra_param(&small(false));
    save_checkpoint(&dir, &g, &init_params(&g, 1), &meta()).unwrap();
    let m = model(&small(false));
    let e = error_of(load_checkpoint(&dir, &m.graph));
    assert_mentions(
        &e,
        &[
            &dir.join(MODEL_FILE).display().to_string(),
            "tensor `extra` is not a parameter of the model",
        ],
    );
}

/// Trains `steps` steps on `exec` with batches from `data`, returning the losses' bits.
fn train(exec: &mut (dyn Executor + '_), m: &SeedModel, data: &[SeedData]) -> Vec<u32> {
    data.iter()
        .map(|d| exec.train_step(&d.batch(m)).unwrap().to_bits())
        .collect()
}

/// An optimizer snapshot moved into a fresh executor continues training
/// exactly as the uninterrupted one (the resume guarantee), on `make`'s backend.
/// Builds an executor of a model from parameters and a training config.
type MakeExecutor<'a> =
    dyn Fn(&SeedModel, &[(NodeId, Vec<f32>)], TrainConfig) -> Box<dyn Executor + 'a>;

fn resume_continues_exactly<'a>(optimizer: crossmodal::graph::Optimizer, make: &MakeExecutor<'a>) {
    let c = small(true);
    let m = model(&c);
    let data: Vec<SeedData> = (0..6).map(|s| SeedData::new(&c, 10 + s)).collect();
    let config = TrainConfig {
        optimizer,
        ..TrainConfig::default()
    };
    let mut a = make(&m, &init_params(&m.graph, 3), config.clone());
    let first = train(a.as_mut(), &m, &data[..3]);
    let snapshot = a.optimizer_snapshot().unwrap();
    assert_eq!(snapshot.steps, 3);
    let mut b = make(&m, &params_of(a.as_ref(), &m.graph).unwrap(), config);
    b.restore_optimizer(&snapshot).unwrap();
    assert_eq!(b.optimizer_snapshot().unwrap(), snapshot);
    let straight = train(a.as_mut(), &m, &data[3..]);
    let resumed = train(b.as_mut(), &m, &data[3..]);
    assert_eq!(straight, resumed);
    assert_ne!(first[..], straight[..], "training changed nothing");
}

fn adam() -> crossmodal::graph::Optimizer {
    crossmodal::graph::Optimizer::Adam(AdamConfig {
        learning_rate: 0.01,
        ..AdamConfig::default()
    })
}

fn sgd_momentum() -> crossmodal::graph::Optimizer {
    crossmodal::graph::Optimizer::Sgd(SgdConfig {
        learning_rate: 0.05,
        momentum: 0.9,
        nesterov: true,
    })
}

fn cpu(m: &SeedModel, p: &[(NodeId, Vec<f32>)], c: TrainConfig) -> Box<dyn Executor> {
    Box::new(CpuExecutor::<f32>::new(&m.graph, m.loss, p, c).unwrap())
}

#[test]
fn cpu_optimizer_snapshot_resumes_exactly() {
    resume_continues_exactly(adam(), &cpu);
    resume_continues_exactly(sgd_momentum(), &cpu);
}

#[test]
fn gpu_optimizer_snapshot_resumes_exactly() {
    let Some(ctx) = common::gpu() else { return };
    let gpu = |m: &SeedModel, p: &[(NodeId, Vec<f32>)], c: TrainConfig| {
        Box::new(GpuExecutor::new(ctx, &m.graph, m.loss, p, c).unwrap()) as Box<dyn Executor>
    };
    resume_continues_exactly(adam(), &gpu);
    resume_continues_exactly(sgd_momentum(), &gpu);
}

#[test]
fn a_snapshot_of_another_optimizer_is_refused() {
    let m = model(&small(false));
    let p = init_params(&m.graph, 1);
    let config = |optimizer| TrainConfig {
        optimizer,
        ..TrainConfig::default()
    };
    let a = cpu(&m, &p, config(adam()));
    let mut b = cpu(&m, &p, config(sgd_momentum()));
    let err = b
        .restore_optimizer(&a.optimizer_snapshot().unwrap())
        .unwrap_err()
        .to_string();
    assert!(err.contains("slots"), "{err}");
}
