//! Metrics on hand-computed cases, the files a run writes (CSV, JSON, SVG,
//! PNG, markdown) and atomic writes.

use std::path::{Path, PathBuf};

use crossmodal::experiment::atomic::{create_dir_all, write_atomic};
use crossmodal::experiment::metrics::{
    argmax_rows, majority_baseline, majority_class, mean_std, Classification, EpochMetrics,
};
use crossmodal::experiment::report::{
    self, curve_png, curve_svg, epochs_csv, render_markdown, write_run, Ablation, Curve, Report,
};
use crossmodal::Error;
use ndarray::array;

/// Exact for ratios of small integers, up to rounding in the last place.
fn close(what: &str, got: f64, want: f64) {
    assert!(
        (got - want).abs() <= 1e-12,
        "{what}: got {got}, want {want}"
    );
}

/// A fresh, empty directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!(
            "crossmodal-test-report-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn path(&self) -> &Path {
        &self.0
    }
    fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&self.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------------------
// Metrics

/// labels    0 0 0 1 1 2
/// predicted 0 0 1 1 1 0      (class 2 is never predicted)
///
/// confusion (rows true):  [2 1 0] [0 2 0] [1 0 0]
/// class 0: tp 2, predicted 3, support 3 -> P 2/3, R 2/3, F1 2/3
/// class 1: tp 2, predicted 3, support 2 -> P 2/3, R 1,   F1 4/5
/// class 2: tp 0, predicted 0, support 1 -> P 0 (0/0 defined as 0), R 0, F1 0
/// accuracy 4/6, macro-F1 (2/3 + 4/5 + 0) / 3
fn never_predicted() -> Classification {
    Classification::from_predictions(&[0, 0, 1, 1, 1, 0], &[0, 0, 0, 1, 1, 2], 3).unwrap()
}

#[test]
fn metrics_with_a_class_never_predicted() {
    let m = never_predicted();
    assert_eq!(m.classes, 3);
    assert_eq!(m.samples, 6);
    assert_eq!(
        m.confusion,
        vec![vec![2, 1, 0], vec![0, 2, 0], vec![1, 0, 0]]
    );
    close("accuracy", m.accuracy, 4.0 / 6.0);
    let want = [
        (2.0 / 3.0, 2.0 / 3.0, 2.0 / 3.0, 3, 3),
        (2.0 / 3.0, 1.0, 0.8, 2, 3),
        (0.0, 0.0, 0.0, 1, 0),
    ];
    for (c, (p, r, f1, support, predicted)) in want.into_iter().enumerate() {
        let got = &m.per_class[c];
        close(&format!("precision {c}"), got.precision, p);
        close(&format!("recall {c}"), got.recall, r);
        close(&format!("f1 {c}"), got.f1, f1);
        assert_eq!(got.support, support, "support {c}");
        assert_eq!(got.predicted, predicted, "predicted {c}");
    }
    close("macro-F1", m.macro_f1, (2.0 / 3.0 + 0.8) / 3.0);
}

/// labels    0 0 1 1
/// predicted 0 2 1 1          (class 2 is predicted but absent from the labels)
///
/// class 0: tp 1, predicted 1, support 2 -> P 1, R 1/2, F1 2/3
/// class 1: tp 2, predicted 2, support 2 -> P 1, R 1,   F1 1
/// class 2: tp 0, predicted 1, support 0 -> P 0, R 0 (0/0), F1 0, counted in macro-F1
/// class 3 (4-class case): in neither -> support 0, left out of macro-F1
#[test]
fn metrics_with_a_class_absent_from_labels() {
    for classes in [3, 4] {
        let m = Classification::from_predictions(&[0, 2, 1, 1], &[0, 0, 1, 1], classes).unwrap();
        close("accuracy", m.accuracy, 0.75);
        close("P0", m.per_class[0].precision, 1.0);
        close("R0", m.per_class[0].recall, 0.5);
        close("F1 0", m.per_class[0].f1, 2.0 / 3.0);
        close("F1 1", m.per_class[1].f1, 1.0);
        close("P2", m.per_class[2].precision, 0.0);
        close("R2", m.per_class[2].recall, 0.0);
        assert_eq!((m.per_class[2].support, m.per_class[2].predicted), (0, 1));
        close("macro-F1", m.macro_f1, (2.0 / 3.0 + 1.0) / 3.0);
        assert_eq!(m.confusion.len(), classes);
        if classes == 4 {
            assert_eq!((m.per_class[3].support, m.per_class[3].predicted), (0, 0));
            assert_eq!(m.confusion[3], vec![0; 4]);
        }
    }
}

#[test]
fn metrics_from_probabilities_take_the_argmax_lowest_on_ties() {
    let probs = array![[0.1f32, 0.9], [0.6, 0.4], [0.5, 0.5]];
    assert_eq!(argmax_rows(probs.view()).unwrap(), vec![1, 0, 0]);
    let m = Classification::from_probabilities(probs.view(), &[1, 0, 1]).unwrap();
    close("accuracy", m.accuracy, 2.0 / 3.0);
    assert_eq!(m.confusion, vec![vec![1, 0], vec![1, 1]]);

    let bad = array![[0.1f32, f32::NAN]];
    let e = argmax_rows(bad.view()).unwrap_err().to_string();
    assert!(e.contains("[0, 1]") && e.contains("NaN"), "{e}");
}

#[test]
fn metrics_reject_bad_input() {
    let e = Classification::from_predictions(&[0, 1], &[0], 2).unwrap_err();
    assert!(e.to_string().contains("2 predictions for 1 labels"), "{e}");
    let e = Classification::from_predictions(&[0, 1], &[0, 5], 2).unwrap_err();
    assert!(e.to_string().contains("label 5 at index 1"), "{e}");
    let e = Classification::from_predictions(&[2], &[0], 2).unwrap_err();
    assert!(e.to_string().contains("prediction 2 at index 0"), "{e}");
    assert!(Classification::from_predictions(&[], &[], 2).is_err());
    assert!(majority_class(&[], 2).is_err());
    assert!(mean_std(&[]).is_err());
}

/// Training majority: class 1 (3 of 5). On eval labels 0 1 2 2 the constant
/// answer 1 is right once: accuracy 1/4; class 1 P 1/4, R 1, F1 0.4; the
/// others F1 0; macro-F1 0.4 / 3.
#[test]
fn majority_baseline_uses_the_training_majority() {
    let b = majority_baseline(&[1, 1, 1, 0, 2], &[0, 1, 2, 2], 3).unwrap();
    assert_eq!(b.class, 1);
    close("accuracy", b.accuracy, 0.25);
    close("macro-F1", b.macro_f1, 0.4 / 3.0);
    // Ties go to the lowest id.
    assert_eq!(majority_class(&[1, 0, 1, 0], 2).unwrap(), 0);
}

#[test]
fn mean_std_over_seeds() {
    // mean 2.5; squared deviations 2.25 + 0.25 + 0.25 + 2.25 = 5, / (n - 1) = 5/3.
    let m = mean_std(&[1.0, 2.0, 3.0, 4.0]).unwrap();
    close("mean", m.mean, 2.5);
    close("std", m.std, (5.0f64 / 3.0).sqrt());
    assert_eq!(m.n, 4);
    assert_eq!(m.to_string(), "2.5000 ± 1.2910");
    assert_eq!(format!("{m:.2}"), "2.50 ± 1.29");
    let one = mean_std(&[0.7]).unwrap();
    assert_eq!((one.mean, one.std, one.n), (0.7, 0.0, 1));
}

// ---------------------------------------------------------------------------
// Files

fn epochs() -> Vec<EpochMetrics> {
    vec![
        EpochMetrics {
            epoch: 1,
            train_loss: 0.75,
            train_accuracy: 0.5,
            val_loss: Some(0.625),
            val_accuracy: Some(0.5625),
            learning_rate: 0.001,
            samples_per_second: 1000.0,
            seconds: 1.5,
        },
        EpochMetrics {
            epoch: 2,
            train_loss: 0.5,
            train_accuracy: 0.75,
            val_loss: None,
            val_accuracy: None,
            learning_rate: 0.0005,
            samples_per_second: 1250.5,
            seconds: 1.25,
        },
        EpochMetrics {
            epoch: 3,
            train_loss: 0.25,
            train_accuracy: 0.875,
            val_loss: Some(0.375),
            val_accuracy: Some(0.8125),
            learning_rate: 0.00025,
            samples_per_second: 1300.0,
            seconds: 1.0,
        },
    ]
}

fn sample_report() -> Report {
    Report {
        title: "seed_fusion".into(),
        header: vec![
            "backend: gpu".into(),
            "adapter: llvmpipe (LLVM 19)".into(),
            "wall time: 12.3 s".into(),
        ],
        class_names: vec!["neg|ative".into(), "neutral".into(), "positive".into()],
        test: never_predicted(),
        baseline: majority_baseline(&[0, 0, 1], &[0, 0, 0, 1, 1, 2], 3).unwrap(),
        ablation: vec![
            Ablation {
                zeroed: "text".into(),
                accuracy: 0.5,
            },
            Ablation {
                zeroed: "image".into(),
                accuracy: 0.75,
            },
        ],
        seeds: vec![("test accuracy".into(), mean_std(&[0.5, 0.75, 1.0]).unwrap())],
    }
}

#[test]
fn csv_has_the_header_and_one_row_per_epoch() {
    let csv = epochs_csv(&epochs());
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines,
        vec![
            "epoch,train_loss,train_accuracy,val_loss,val_accuracy,learning_rate,samples_per_second,seconds",
            "1,0.75,0.5,0.625,0.5625,0.001,1000,1.5",
            "2,0.5,0.75,,,0.0005,1250.5,1.25",
            "3,0.25,0.875,0.375,0.8125,0.00025,1300,1",
        ]
    );
    assert!(csv.ends_with('\n'));
}

#[test]
fn svg_and_png_figures_render_without_system_fonts() {
    for curve in [Curve::Loss, Curve::Accuracy] {
        let svg = curve_svg(curve, &epochs()).unwrap();
        assert!(svg.contains("<svg"), "{curve:?}");
        assert!(svg.contains("epoch"), "axis label missing in {curve:?}");
        assert!(svg.contains("validation"), "legend missing in {curve:?}");

        let png = curve_png(curve, &epochs()).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        let decoder = png::Decoder::new(std::io::Cursor::new(&png));
        let mut reader = decoder.read_info().unwrap();
        let mut rgb = vec![0u8; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut rgb).unwrap();
        assert_eq!((info.width, info.height), report::FIGURE_SIZE);
        // Both series are drawn in their colours.
        let has = |c: [u8; 3]| rgb.chunks(3).any(|p| p == c);
        assert!(has([31, 119, 180]), "train colour missing in {curve:?}");
        assert!(has([214, 39, 40]), "validation colour missing in {curve:?}");
    }
    // One epoch, no epochs, a non-finite loss: still a figure.
    let mut odd = epochs();
    odd.truncate(1);
    curve_png(Curve::Loss, &odd).unwrap();
    curve_svg(Curve::Loss, &[]).unwrap();
    odd[0].train_loss = f64::NAN;
    curve_png(Curve::Loss, &odd).unwrap();
}

#[test]
fn markdown_report_has_the_tables() {
    let md = render_markdown(&sample_report());
    for want in [
        "# seed_fusion",
        "- adapter: llvmpipe (LLVM 19)",
        "| metric | model | majority-class baseline |",
        // baseline: training majority class 0 answers right 3 of 6 times.
        "| accuracy | 0.6667 | 0.5000 |",
        "| macro-F1 | 0.4889 |",
        "| class | precision | recall | F1 | support | predicted |",
        "| neg\\|ative | 0.6667 | 0.6667 | 0.6667 | 3 | 3 |",
        "| neutral | 0.6667 | 1.0000 | 0.8000 | 2 | 3 |",
        "| positive | 0.0000 | 0.0000 | 0.0000 | 1 | 0 |",
        "| true \\ predicted | neg\\|ative | neutral | positive |",
        "| neg\\|ative | 2 | 1 | 0 |",
        "| neutral | 0 | 2 | 0 |",
        "| positive | 1 | 0 | 0 |",
        "| all modalities | 0.6667 | |",
        "| text zeroed | 0.5000 | -0.1667 |",
        "| image zeroed | 0.7500 | +0.0833 |",
        "| test accuracy | 0.7500 ± 0.2500 | 3 |",
    ] {
        assert!(md.contains(want), "missing {want:?} in:\n{md}");
    }
    // Optional sections disappear when empty.
    let mut r = sample_report();
    r.ablation.clear();
    r.seeds.clear();
    let md = render_markdown(&r);
    assert!(!md.contains("ablation") && !md.contains("seeds"), "{md}");
}

#[test]
fn a_run_directory_gets_every_file() {
    let dir = TempDir::new("run");
    write_run(dir.path(), &epochs(), &sample_report()).unwrap();
    assert_eq!(
        dir.names(),
        vec![
            "accuracy.png",
            "accuracy.svg",
            "loss.png",
            "loss.svg",
            "metrics.csv",
            "metrics.json",
            "report.json",
            "report.md",
        ]
    );
    let read = |name: &str| std::fs::read(dir.path().join(name)).unwrap();
    assert_eq!(
        read(report::METRICS_CSV),
        epochs_csv(&epochs()).into_bytes()
    );
    let back: Vec<EpochMetrics> = serde_json::from_slice(&read(report::METRICS_JSON)).unwrap();
    assert_eq!(back, epochs());
    let back: Report = serde_json::from_slice(&read(report::REPORT_JSON)).unwrap();
    assert_eq!(back, sample_report());
    assert!(String::from_utf8(read(report::LOSS_SVG))
        .unwrap()
        .contains("<svg"));
    assert!(read(report::ACCURACY_PNG).starts_with(b"\x89PNG\r\n\x1a\n"));
    let md = String::from_utf8(read(report::REPORT_MD)).unwrap();
    assert!(md.contains("| positive | 1 | 0 | 0 |"), "{md}");
    assert!(md.contains("![loss](loss.svg)"), "{md}");
}

// ---------------------------------------------------------------------------
// Atomic writes

#[test]
fn atomic_write_replaces_and_leaves_no_temp_file() {
    let dir = TempDir::new("atomic");
    let path = dir.path().join("out.txt");
    write_atomic(&path, b"first version, longer than the second").unwrap();
    assert_eq!(
        std::fs::read(&path).unwrap(),
        b"first version, longer than the second"
    );
    write_atomic(&path, b"second").unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"second");
    assert_eq!(dir.names(), vec!["out.txt"]);
}

#[test]
fn atomic_write_into_a_missing_directory_names_the_path() {
    let dir = TempDir::new("missing");
    let path = dir.path().join("no-such-dir").join("metrics.csv");
    let e = write_atomic(&path, b"x").unwrap_err();
    match &e {
        Error::File { path: p, .. } => assert_eq!(p, &path.display().to_string()),
        other => panic!("expected Error::File, got {other:?}"),
    }
    assert!(e.to_string().contains(&path.display().to_string()), "{e}");
    assert!(e.to_string().contains("does not exist"), "{e}");
    assert!(dir.names().is_empty());

    // A run-level writer passes the same error on.
    let e = write_run(dir.path().join("gone"), &epochs(), &sample_report()).unwrap_err();
    assert!(e.to_string().contains("metrics.csv"), "{e}");

    // create_dir_all makes it writable.
    create_dir_all(path.parent().unwrap()).unwrap();
    write_atomic(&path, b"x").unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"x");
}
