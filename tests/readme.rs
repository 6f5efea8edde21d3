//! The README stays true: its RON tutorial parses as an experiment and
//! builds its model, and its set-up block holds exactly the two commands a
//! newcomer runs (the second is what CI runs).

use std::path::Path;

use crossmodal::experiment::model::build_model;
use crossmodal::experiment::parse_ron;
use crossmodal::experiment::run::Experiment;
use crossmodal::experiment::schema::{EarlyStopping, LrSchedule, Monitor};

fn readme() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap()
}

/// The body of the first fenced block of `lang`.
fn block(text: &str, lang: &str) -> String {
    let open = format!("```{lang}\n");
    let start = text
        .find(&open)
        .unwrap_or_else(|| panic!("no {lang} block"))
        + open.len();
    let len = text[start..].find("```").unwrap();
    text[start..start + len].to_string()
}

#[test]
fn the_ron_tutorial_parses_and_builds() {
    let exp: Experiment = parse_ron("README.md", &block(&readme(), "ron")).unwrap();
    exp.validate().unwrap();
    assert_eq!(exp.name, "my_fusion");
    assert_eq!(exp.model.layers.len(), 8);
    assert_eq!(
        exp.training.early_stopping,
        Some(EarlyStopping {
            monitor: Monitor::ValLoss,
            patience: 3,
            min_delta: 0.0,
            restore_best_weights: true,
        })
    );
    assert_eq!(exp.training.lr_schedule, LrSchedule::Constant);
    build_model(&exp.model, exp.training.batch_size, 2, exp.seed, None).unwrap();
}

#[test]
fn the_set_up_block_has_the_two_commands() {
    let commands: Vec<String> = block(&readme(), "sh")
        .lines()
        .map(|l| l.split('#').next().unwrap().trim().to_string())
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(
        commands,
        [
            "cargo run --release -- run experiments/seed_fusion.ron",
            "cargo test --release"
        ]
    );
    let ci =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(".ci/run")).unwrap();
    assert!(
        ci.contains("cargo test --release"),
        ".ci/run must run the README's test command"
    );
}
