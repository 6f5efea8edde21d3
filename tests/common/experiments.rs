//! Helpers shared by the tests that run experiments (and the binary): the
//! repository root, a fresh scratch folder per test, and the experiments at
//! test size.

use std::path::{Path, PathBuf};

use crossmodal::experiment::overrides::apply_overrides;
use crossmodal::experiment::run::Experiment;
use crossmodal::experiment::schema::{LayerKind, LayerSpec};

pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A fresh, empty folder `<suite>-<name>` under Cargo's test temp dir.
pub fn scratch(suite: &str, name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{suite}-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `tests/fixtures/tiny_fusion.ron`: the seed architecture at toy sizes.
pub fn tiny_fixture() -> Experiment {
    Experiment::load(&root().join("tests/fixtures/tiny_fusion.ron")).unwrap()
}

/// The seed experiment at test size (160 synthetic samples, batch 8,
/// sequences of 12, LSTM(8), 4 filters) trained `epochs` epochs, with a
/// dropout layer before the dense head (so resuming must continue the masks
/// and an explanation must leave it out).
pub fn tiny_seed(epochs: usize) -> Experiment {
    let mut exp = Experiment::load(&root().join("experiments/seed_fusion.ron")).unwrap();
    exp = apply_overrides(
        &exp,
        &[
            "data.Synthetic.samples=160".into(),
            format!("training.epochs={epochs}"),
            "training.batch_size=8".into(),
            "model.inputs.0.1.Tokens.seq_len=12".into(),
            "model.layers.lstm.kind.Lstm.units=8".into(),
            "model.layers.conv.kind.Conv2d.filters=4".into(),
        ],
    )
    .unwrap();
    exp.model.layers.push(LayerSpec {
        name: "drop".into(),
        kind: LayerKind::Dropout { rate: 0.3 },
        inputs: vec!["concat".into()],
    });
    let dense = exp
        .model
        .layers
        .iter_mut()
        .find(|l| l.name == "dense")
        .unwrap();
    dense.inputs = vec!["drop".into()];
    exp
}
