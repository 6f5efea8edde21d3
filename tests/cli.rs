//! The `crossmodal` binary itself: its subcommands wired to the library,
//! exit codes, and errors that name what is wrong (run on a tiny synthetic
//! experiment, on the CPU backend unless a test says otherwise).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_crossmodal"));
    c.current_dir(env!("CARGO_MANIFEST_DIR"));
    // Errors as a user sees them, without backtraces.
    c.env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE");
    c
}

fn scratch(name: &str) -> PathBuf {
    common::experiments::scratch("cli", name)
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The tiny seed experiment as `--set` arguments.
const TINY: &[&str] = &[
    "--set",
    "data.Synthetic.samples=120",
    "--set",
    "training.batch_size=8",
    "--set",
    "model.inputs.0.1.Tokens.seq_len=10",
    "--set",
    "model.layers.lstm.kind.Lstm.units=8",
    "--set",
    "model.layers.conv.kind.Conv2d.filters=4",
];

/// The one run folder under `runs/seed_fusion/`.
fn run_dir(runs: &Path) -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(runs.join("seed_fusion"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    dirs.pop().unwrap()
}

#[test]
fn run_eval_predict_explain_and_resume() {
    let runs = scratch("flow");
    let o = bin()
        .args([
            "run",
            "experiments/seed_fusion.ron",
            "--backend",
            "cpu",
            "--epochs",
            "2",
        ])
        .args(TINY)
        .arg("--runs")
        .arg(&runs)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("test accuracy"), "{}", text(&o));
    let dir = run_dir(&runs);

    let o = bin().arg("eval").arg(&dir).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("the run's test split (24 samples)"),
        "{}",
        text(&o)
    );

    let png = runs.join("saliency.png");
    let o = bin()
        .arg("predict")
        .arg(&dir)
        .args([
            "--text",
            "a happy day",
            "--image",
            "tests/fixtures/manifest/images/gray.png",
        ])
        .args(["--explain", "--out"])
        .arg(&png)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let out = text(&o);
    assert!(
        out.contains("negative") && out.contains("positive"),
        "{out}"
    );
    assert_eq!(image::image_dimensions(&png).unwrap(), (28, 28));

    let o = bin()
        .args(["run", "--resume"])
        .arg(&dir)
        .args(["--epochs", "3", "--backend", "cpu"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("epoch 3/3"), "{}", text(&o));
}

#[test]
fn bad_input_exits_non_zero_with_a_clear_message() {
    let runs = scratch("bad");
    let cases: &[(&[&str], &str)] = &[
        (&["run", "nowhere.ron"], "nowhere.ron"),
        (
            &[
                "run",
                "experiments/seed_fusion.ron",
                "--set",
                "training.epoch=3",
            ],
            "unknown field `epoch`",
        ),
        (
            &["run", "experiments/seed_fusion.ron", "--backend", "tpu"],
            "tpu",
        ),
        (&["eval", "no/such/run"], "not a run folder"),
        (
            &["predict", "no/such/run", "--text", "hi"],
            "not a run folder",
        ),
        (&["predict", "no/such/run"], "--text, --image or both"),
    ];
    for (args, words) in cases {
        let o = bin().args(*args).arg("--runs").arg(&runs).output();
        // `eval`/`predict` take no --runs: retry without it.
        let o = match o {
            Ok(o)
                if String::from_utf8_lossy(&o.stderr).contains("unexpected argument '--runs'") =>
            {
                bin().args(*args).output().unwrap()
            }
            o => o.unwrap(),
        };
        assert!(!o.status.success(), "{args:?} succeeded");
        let out = text(&o);
        assert!(out.contains(words), "{args:?}: {out:?} lacks {words:?}");
        assert!(!out.contains("panicked"), "{args:?} panicked: {out}");
    }
}
