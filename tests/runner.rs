//! The experiment runner end to end, on tiny synthetic runs: `eval`
//! reproduces a run's test figures exactly, a resumed run (after Ctrl-C
//! mid-epoch, or extended past its last epoch) ends bit-identical to an
//! uninterrupted one, `--set` overrides, early stopping, learning-rate
//! schedules, multi-seed reports, and a corpus of bad inputs that each give
//! a clear error and never a panic.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use crossmodal::experiment::checkpoint::{load_checkpoint, MODEL_FILE};
use crossmodal::experiment::model::build_model;
use crossmodal::experiment::overrides::apply_overrides;
use crossmodal::experiment::run::{
    resume_run, run_experiment, run_seeds, Experiment, RunOptions, RunOutcome,
};
use crossmodal::experiment::saved::{eval_run, predict_run, Sample};
use crossmodal::experiment::schema::{Backend, ClassWeights, EarlyStopping, LrSchedule, Monitor};

fn root() -> &'static Path {
    common::experiments::root()
}

/// A fresh folder for one test's runs.
fn scratch(name: &str) -> PathBuf {
    common::experiments::scratch("runner", name)
}

/// The seed experiment at test size, 3 epochs (see `common::experiments`).
fn tiny() -> Experiment {
    common::experiments::tiny_seed(3)
}

fn options(backend: Backend) -> RunOptions<'static> {
    RunOptions {
        backend: Some(backend),
        ..RunOptions::default()
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// The run's final parameters, bit for bit.
fn final_params(exp: &Experiment, out: &RunOutcome) -> Vec<Vec<u32>> {
    let m = build_model(&exp.model, exp.training.batch_size, 2, exp.seed, None).unwrap();
    let (params, _) = load_checkpoint(&out.dir.join("checkpoint"), &m.graph).unwrap();
    params.iter().map(|(_, v)| bits(v)).collect()
}

fn eval_reproduces(backend: Backend) {
    let runs = scratch(&format!("eval-{backend:?}"));
    let exp = tiny();
    let out = run_experiment(&exp, &runs, options(backend)).unwrap();
    let test = out.test.clone().unwrap();
    let ev = eval_run(&out.dir, None, None).unwrap();
    assert_eq!(ev.metrics.samples, test.samples);
    assert_eq!(ev.metrics.accuracy.to_bits(), test.accuracy.to_bits());
    assert_eq!(ev.metrics.macro_f1.to_bits(), test.macro_f1.to_bits());
    assert_eq!(ev.metrics.confusion, test.confusion);
    assert!(ev.data.contains("test split"), "{}", ev.data);

    // predict: one probability per class, summing to 1.
    let p = predict_run(
        &out.dir,
        &Sample {
            text: Some("a wonderful happy day"),
            image: None,
        },
        None,
    )
    .unwrap();
    assert_eq!(p.classes, ["negative", "positive"]);
    let sum: f32 = p.probabilities.iter().sum();
    assert!((sum - 1.0).abs() < 1e-5, "{:?}", p.probabilities);
}

#[test]
fn eval_reproduces_the_test_figures_exactly_on_the_cpu() {
    eval_reproduces(Backend::Cpu);
}

#[test]
fn eval_reproduces_the_test_figures_exactly_on_the_gpu() {
    if common::gpu().is_none() {
        return;
    }
    eval_reproduces(Backend::Gpu);
}

#[test]
fn eval_on_other_data_and_predict_with_an_image() {
    let runs = scratch("eval-other");
    let exp = tiny();
    let out = run_experiment(&exp, &runs, options(Backend::Cpu)).unwrap();
    // Another synthetic set, described by an experiment file.
    let other = apply_overrides(&exp, &["data.Synthetic.samples=40".into()]).unwrap();
    let path = runs.join("other.ron");
    std::fs::write(
        &path,
        ron::ser::to_string_pretty(&other, Default::default()).unwrap(),
    )
    .unwrap();
    let ev = eval_run(&out.dir, Some(&path), None).unwrap();
    assert_eq!(ev.metrics.samples, 40);
    assert_eq!(ev.ablation.len(), 2);

    let image = root().join("tests/fixtures/manifest/images/gray.png");
    let p = predict_run(
        &out.dir,
        &Sample {
            text: None,
            image: Some(&image),
        },
        None,
    )
    .unwrap();
    assert_eq!(p.probabilities.len(), 2);
    let e = predict_run(
        &out.dir,
        &Sample {
            text: None,
            image: Some(&root().join("tests/fixtures/manifest/images/corrupt.jpg")),
        },
        None,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("corrupt.jpg") && e.contains("cannot decode"),
        "{e}"
    );
}

fn resume_after_interrupt(backend: Backend) {
    let runs = scratch(&format!("resume-{backend:?}"));
    let exp = tiny();
    let straight = run_experiment(&exp, &runs, options(backend)).unwrap();

    // Ctrl-C already pressed: the run stops after its first step.
    let stop = AtomicBool::new(true);
    let cut = run_experiment(
        &exp,
        &runs,
        RunOptions {
            interrupt: Some(&stop),
            ..options(backend)
        },
    )
    .unwrap();
    assert!(cut.interrupted && cut.test.is_none() && cut.epochs.is_empty());
    assert!(cut.dir.join("checkpoint").join(MODEL_FILE).is_file());
    let resumed = resume_run(&cut.dir, None, options(backend)).unwrap();
    assert_eq!(resumed.dir, cut.dir);
    assert_eq!(final_params(&exp, &resumed), final_params(&exp, &straight));
    let (a, b) = (resumed.test.unwrap(), straight.test.unwrap());
    assert_eq!(a.accuracy.to_bits(), b.accuracy.to_bits());
    assert_eq!(resumed.epochs.len(), 3);
    // Epochs after the interrupted one match exactly (the first one's mean
    // loss covers only the steps run after resuming).
    for (x, y) in resumed.epochs[1..].iter().zip(&straight.epochs[1..]) {
        assert_eq!(x.train_loss.to_bits(), y.train_loss.to_bits());
        assert_eq!(x.val_loss, y.val_loss);
    }
}

#[test]
fn resume_after_ctrl_c_matches_an_uninterrupted_run_on_the_cpu() {
    resume_after_interrupt(Backend::Cpu);
}

#[test]
fn resume_after_ctrl_c_matches_an_uninterrupted_run_on_the_gpu() {
    if common::gpu().is_none() {
        return;
    }
    resume_after_interrupt(Backend::Gpu);
}

#[test]
fn resume_extends_a_finished_run_exactly() {
    let runs = scratch("extend");
    let exp = tiny();
    let straight = run_experiment(&exp, &runs, options(Backend::Cpu)).unwrap();
    let mut two = exp.clone();
    two.training.epochs = 2;
    let short = run_experiment(&two, &runs, options(Backend::Cpu)).unwrap();
    let e = resume_run(&short.dir, None, options(Backend::Cpu))
        .unwrap_err()
        .to_string();
    assert!(e.contains("already trained 2 of 2 epochs"), "{e}");
    let extended = resume_run(&short.dir, Some(3), options(Backend::Cpu)).unwrap();
    assert_eq!(final_params(&exp, &extended), final_params(&exp, &straight));
    for (x, y) in extended.epochs.iter().zip(&straight.epochs) {
        assert_eq!(x.train_loss.to_bits(), y.train_loss.to_bits());
    }
}

#[test]
fn overrides_change_fields_and_name_bad_keys() {
    let exp = tiny();
    let e = apply_overrides(
        &exp,
        &[
            "seed=7".into(),
            "backend=Cpu".into(),
            "training.optimizer.Adam.learning_rate=0.01".into(),
            "model.layers.conv.kind.Conv2d.kernel=[5, 5]".into(),
            "training.early_stopping.patience=2".into(),
        ],
    )
    .unwrap();
    assert_eq!(e.seed, 7);
    assert_eq!(e.backend, Backend::Cpu);
    assert_eq!(e.training.optimizer.learning_rate(), 0.01);
    assert_eq!(e.training.early_stopping.as_ref().unwrap().patience, 2);
    assert_eq!(
        e.training.early_stopping.as_ref().unwrap().monitor,
        Monitor::ValLoss
    );
    for (set, words) in [
        ("training.epoch=3", &["training.epoch", "unknown field"][..]),
        ("training.epochs=many", &["training.epochs", "many"]),
        ("model.layers.nosuch.kind=Flatten", &["nosuch"]),
        ("training.batch_size=0", &["batch_size", "at least 1"]),
        ("epochs", &["key=value"]),
    ] {
        let err = apply_overrides(&exp, &[set.into()])
            .unwrap_err()
            .to_string();
        for w in words {
            assert!(err.contains(w), "--set {set}: {err:?} lacks {w:?}");
        }
    }
}

#[test]
fn early_stopping_stops_and_keeps_the_best_epoch() {
    let runs = scratch("early");
    let mut exp = tiny();
    exp.training.epochs = 5;
    // Nothing improves by 10: the first epoch stays best, the second one
    // uses up the patience of 1.
    exp.training.early_stopping = Some(EarlyStopping {
        monitor: Monitor::TrainLoss,
        patience: 1,
        min_delta: 10.0,
        restore_best_weights: true,
    });
    let out = run_experiment(&exp, &runs, options(Backend::Cpu)).unwrap();
    assert_eq!(out.epochs.len(), 2);
    assert!(out.early_stopped.as_deref().unwrap().contains("TrainLoss"));
    let m = build_model(&exp.model, exp.training.batch_size, 2, exp.seed, None).unwrap();
    let (best, _) = load_checkpoint(&out.dir.join("checkpoint-best"), &m.graph).unwrap();
    assert_eq!(
        final_params(&exp, &out),
        best.iter().map(|(_, v)| bits(v)).collect::<Vec<_>>()
    );
    let report = std::fs::read_to_string(out.dir.join("report.md")).unwrap();
    assert!(
        report.contains("early stopping") && report.contains("best epoch (1) restored"),
        "{report}"
    );
}

#[test]
fn learning_rate_schedules() {
    let s = LrSchedule::Step {
        every: 2,
        factor: 0.5,
    };
    let rates: Vec<f64> = (1..=5).map(|e| s.rate(0.1, e, 5)).collect();
    assert_eq!(rates, [0.1, 0.1, 0.05, 0.05, 0.025]);
    let c = LrSchedule::Cosine { min: 0.01 };
    assert_eq!(c.rate(0.1, 1, 5), 0.1);
    assert!((c.rate(0.1, 3, 5) - 0.055).abs() < 1e-12);
    assert!((c.rate(0.1, 5, 5) - 0.01).abs() < 1e-12);
    let x = LrSchedule::Exponential { rate: 0.9 };
    assert!((x.rate(1.0, 3, 5) - 0.81).abs() < 1e-12);

    // A run records the rate of each epoch, and the rate changes training.
    let runs = scratch("lr");
    let mut exp = tiny();
    exp.training.epochs = 2;
    let plain = run_experiment(&exp, &runs, options(Backend::Cpu)).unwrap();
    exp.training.lr_schedule = LrSchedule::Step {
        every: 1,
        factor: 0.1,
    };
    let decayed = run_experiment(&exp, &runs, options(Backend::Cpu)).unwrap();
    assert_eq!(decayed.epochs[0].learning_rate, 0.001);
    assert!((decayed.epochs[1].learning_rate - 0.0001).abs() < 1e-15);
    assert_eq!(plain.epochs[0].train_loss, decayed.epochs[0].train_loss);
    assert_ne!(plain.epochs[1].train_loss, decayed.epochs[1].train_loss);
}

#[test]
fn several_seeds_report_mean_and_std() {
    let runs = scratch("seeds");
    let mut exp = tiny();
    exp.training.epochs = 1;
    exp.evaluation.seeds = 2;
    let (dir, outs) = run_seeds(&exp, &runs, options(Backend::Cpu)).unwrap();
    assert_eq!(outs.len(), 2);
    assert!(dir.join("seed-1/report.md").is_file() && dir.join("seed-2/report.md").is_file());
    let report = std::fs::read_to_string(dir.join("report.md")).unwrap();
    assert!(
        report.contains("Over seeds") && report.contains("test macro-F1"),
        "{report}"
    );
    let e = eval_run(&dir, None, None).unwrap_err().to_string();
    assert!(e.contains("seed-"), "{e}");
    assert!(eval_run(&dir.join("seed-2"), None, None).is_ok());
}

/// Writes `text` as an experiment file and runs it on the CPU; returns the
/// error message (the run must fail, and must not panic).
fn run_error(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(format!("{name}.ron"));
    std::fs::write(&path, text).unwrap();
    let result = std::panic::catch_unwind(|| {
        Experiment::load(&path).and_then(|exp| {
            run_experiment(&exp, &dir.join("runs"), options(Backend::Cpu)).map(|_| ())
        })
    });
    match result {
        Ok(Ok(())) => panic!("{name}: the run succeeded"),
        Ok(Err(e)) => e.to_string(),
        Err(_) => panic!("{name}: panicked"),
    }
}

#[test]
fn bad_inputs_give_clear_errors_and_never_panic() {
    let dir = scratch("bad");
    let seed = std::fs::read_to_string(root().join("experiments/seed_fusion.ron")).unwrap();
    let small = seed.replace("Synthetic((samples: 2000))", "Synthetic((samples: 100))");
    let fixtures = root().join("tests/fixtures/manifest");
    let manifest = |file: &str, extra: &str| {
        let data = format!(
            "Manifest((path: {:?}, id: \"id\", text: \"text\", image: \"{{image}}\", label: \"label\", image_size: (28, 28), channels: 1{extra}))",
            fixtures.join(file).display().to_string()
        );
        small.replace("Synthetic((samples: 100))", &data)
    };
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        (
            "broken_ron",
            small.replace("epochs: 10,", "epochs: 10"),
            vec!["broken_ron.ron:", "Expected"],
        ),
        (
            "unknown_field",
            small.replace("epochs: 10,", "epochs: 10, learning_rate: 0.1,"),
            vec!["unknown_field.ron:", "learning_rate"],
        ),
        (
            "unknown_layer_kind",
            small.replace("kind: Flatten", "kind: Flattenn"),
            vec!["unknown_layer_kind.ron:", "Flattenn"],
        ),
        (
            "dangling_input",
            small.replace("inputs: [\"pool\"]", "inputs: [\"poool\"]"),
            vec!["flatten", "poool"],
        ),
        (
            "wrong_shape",
            small.replace("Dense(units: 2,", "Dense(units: 3,"),
            vec!["dense", "3", "2"],
        ),
        (
            "missing_image",
            manifest("bad/missing_image.csv", ""),
            vec!["missing_image.csv", "nope1.png", "file not found"],
        ),
        (
            "corrupt_jpeg",
            manifest("bad/corrupt.csv", ""),
            vec!["corrupt.csv", "corrupt.jpg", "cannot decode"],
        ),
        (
            "empty_manifest",
            manifest("bad/empty.csv", ""),
            vec!["empty.csv", "no rows"],
        ),
        (
            "label_not_in_class_list",
            manifest(
                "bad/unknown_label.csv",
                ", classes: [\"negative\", \"neutral\", \"positive\"]",
            ),
            vec!["unknown_label.csv", "happy", "not in the class list"],
        ),
        (
            "missing_manifest",
            manifest("nowhere.csv", ""),
            vec!["nowhere.csv"],
        ),
        (
            "too_few_samples",
            seed.replace("Synthetic((samples: 2000))", "Synthetic((samples: 20))"),
            vec!["fewer than one batch"],
        ),
    ];
    for (name, text, words) in cases {
        let e = run_error(&dir, name, &text);
        for w in words {
            assert!(e.contains(w), "{name}: {e:?} lacks {w:?}");
        }
    }
}

#[test]
fn class_weights_reach_the_loss() {
    let runs = scratch("weights");
    let mut exp = tiny();
    exp.training.epochs = 1;
    let plain = run_experiment(&exp, &runs, options(Backend::Cpu)).unwrap();
    exp.training.class_weights = Some(ClassWeights::Explicit(vec![0.25, 3.0]));
    let weighted = run_experiment(&exp, &runs, options(Backend::Cpu)).unwrap();
    assert_ne!(
        plain.epochs[0].train_loss, weighted.epochs[0].train_loss,
        "the weights changed nothing"
    );
    let report = std::fs::read_to_string(weighted.dir.join("report.md")).unwrap();
    assert!(
        report.contains("class weights (loss): [0.25, 3.0]"),
        "{report}"
    );

    exp.training.class_weights = Some(ClassWeights::Balanced);
    let balanced = run_experiment(&exp, &runs, options(Backend::Cpu)).unwrap();
    let report = std::fs::read_to_string(balanced.dir.join("report.md")).unwrap();
    assert!(report.contains("class weights (loss)"), "{report}");

    exp.training.class_weights = Some(ClassWeights::Explicit(vec![1.0, 2.0, 3.0]));
    let e = run_experiment(&exp, &runs, options(Backend::Cpu))
        .unwrap_err()
        .to_string();
    assert!(e.contains("3 weights given for 2 classes"), "{e}");
    // Balanced: n / (classes · count), so a class twice as frequent weighs half.
    let w = ClassWeights::Balanced
        .resolve(&[0, 0, 1, 0, 0, 1], 2)
        .unwrap();
    assert_eq!(w, [0.75, 1.5]);
}

/// The progress bar reads the running accuracy every few steps; the
/// epoch's figures are the same with or without it, on both backends.
#[test]
fn the_progress_bar_does_not_change_the_figures() {
    let backends: &[Backend] = if common::gpu().is_some() {
        &[Backend::Cpu, Backend::Gpu]
    } else {
        &[Backend::Cpu]
    };
    for &backend in backends {
        let runs = scratch(&format!("progress-{backend:?}"));
        let mut exp = tiny();
        exp.training.epochs = 1;
        exp = apply_overrides(&exp, &["data.Synthetic.samples=300".into()]).unwrap();
        let quiet = run_experiment(&exp, &runs, options(backend)).unwrap();
        let shown = run_experiment(
            &exp,
            &runs,
            RunOptions {
                progress: true,
                ..options(backend)
            },
        )
        .unwrap();
        let (a, b) = (&quiet.epochs[0], &shown.epochs[0]);
        assert_eq!(a.train_accuracy, b.train_accuracy, "{backend:?}");
        assert_eq!(a.train_loss, b.train_loss, "{backend:?}");
        // Over the epoch's own predictions: 300 samples - 60 test - 48
        // validation = 192 = 24 steps of 8, so a multiple of 1/192.
        let hits = a.train_accuracy * 192.0;
        assert!((hits - hits.round()).abs() < 1e-9, "{hits}");
    }
}
