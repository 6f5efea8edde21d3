//! Every experiment file parses and builds its model; a tiny end-to-end run
//! on synthetic data writes every artifact, on both backends.

mod common;

use std::path::Path;

use crossmodal::experiment::model::build_model;
use crossmodal::experiment::run::{run_experiment, DataSpec, Experiment, RunOptions};
use crossmodal::experiment::schema::Backend;
use crossmodal::graph::Op;

fn experiments() -> Vec<std::path::PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "ron"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_experiment_file_parses_and_builds() {
    let files = experiments();
    assert!(files.len() >= 4, "{files:?}");
    for path in files {
        let exp = Experiment::load(&path).unwrap_or_else(|e| panic!("{e}"));
        let classes = match &exp.data {
            DataSpec::Synthetic(_) => 2,
            DataSpec::Manifest(m) => m.classes.as_ref().map_or(3, |c| c.len()),
        };
        build_model(&exp.model, exp.training.batch_size, classes, exp.seed, None)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
}

/// Late fusion: the output averages the two heads' logits.
#[test]
fn late_fusion_averages_the_heads_logits() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments/late_fusion.ron");
    assert!(experiments().contains(&path), "{}", path.display());
    let exp = Experiment::load(&path).unwrap();
    let m = build_model(&exp.model, exp.training.batch_size, 2, exp.seed, None).unwrap();
    let g = &m.graph;
    let out = g.node(m.logits);
    assert_eq!(out.name, "average");
    assert!(matches!(out.op, Op::Average), "{:?}", out.op);
    let heads: Vec<&str> = out
        .inputs
        .iter()
        .map(|&i| g.node(i).name.as_str())
        .collect();
    assert_eq!(heads, ["text_head", "image_head"]);
    assert_eq!(out.value.shape, vec![32, 2]);
    assert_eq!(g.node(m.loss).inputs[0], m.logits);
}

fn tiny(backend: Backend) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments/seed_fusion.ron");
    let mut exp = Experiment::load(&path).unwrap();
    exp.training.epochs = 2;
    exp.training.batch_size = 8;
    if let DataSpec::Synthetic(c) = &mut exp.data {
        c.samples = 120;
    }
    let runs = std::env::temp_dir().join(format!(
        "crossmodal-test-runs-{backend:?}-{}",
        std::process::id()
    ));
    let options = RunOptions {
        backend: Some(backend),
        ..RunOptions::default()
    };
    let out = run_experiment(&exp, &runs, options).unwrap();
    for file in [
        "experiment.ron",
        "vocabulary.json",
        "run.json",
        "metrics.csv",
        "metrics.json",
        "loss.svg",
        "loss.png",
        "accuracy.svg",
        "accuracy.png",
        "report.md",
        "report.json",
        "checkpoint/model.safetensors",
        "checkpoint/checkpoint.json",
    ] {
        assert!(
            out.dir.join(file).is_file(),
            "{file} missing in {}",
            out.dir.display()
        );
    }
    assert_eq!(out.epochs.len(), 2);
    assert!(out.epochs.iter().all(|e| e.train_loss.is_finite()));
    assert_eq!(out.test.as_ref().unwrap().samples, 24);
    let report = std::fs::read_to_string(out.dir.join("report.md")).unwrap();
    assert!(
        report.contains("majority-class baseline") && report.contains("image"),
        "{report}"
    );
    // The saved experiment is the resolved one and loads back as it was.
    assert_eq!(Experiment::load_saved(&out.dir).unwrap(), exp);
    std::fs::remove_dir_all(&runs).unwrap();
}

#[test]
fn tiny_run_on_the_cpu_backend_writes_every_artifact() {
    tiny(Backend::Cpu);
}

#[test]
fn tiny_run_on_the_gpu_backend_writes_every_artifact() {
    if common::gpu().is_none() {
        return;
    }
    tiny(Backend::Gpu);
}
