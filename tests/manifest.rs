//! Manifest loader: each format reads its shipped fixture
//! (tests/fixtures/manifest) to the expected dataset, path templates, label
//! names vs integers, the bad-input corpus (each a clear error naming the
//! file, never a panic), skip-and-count, and the real MVSA dev set when
//! `shared/data` is present.

use std::path::{Path, PathBuf};
use std::time::Instant;

use crossmodal::data::manifest::{
    resize, LabelKind, ManifestConfig, ManifestFormat, OnMissing, ResizeFilter,
};
use crossmodal::Error;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/manifest")
        .join(name)
}

/// The rows of rows.csv / rows.tsv / rows.jsonl: images read at the
/// pattern's own size (2 high, 3 wide) so it is copied, not resampled.
fn rows_config(name: &str) -> ManifestConfig {
    ManifestConfig {
        image: Some("{image}".into()),
        id: Some("id".into()),
        image_size: [2, 3],
        channels: 3,
        ..ManifestConfig::new(fixture(name))
    }
}

/// The error message of a load that must fail.
fn load_err(cfg: &ManifestConfig) -> String {
    match cfg.load() {
        Ok(m) => panic!(
            "{} loaded ({} samples)",
            cfg.path.display(),
            m.dataset.len()
        ),
        Err(e) => {
            assert!(matches!(e, Error::Data { .. }), "not a data error: {e:?}");
            // Shown with --nocapture, to read the messages as a user would.
            eprintln!("{e}\n");
            e.to_string()
        }
    }
}

fn assert_contains(message: &str, parts: &[&str]) {
    for p in parts {
        assert!(message.contains(p), "message lacks {p:?}:\n{message}");
    }
}

fn close(got: &[f32], want: &[f32], atol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= atol,
            "{what}[{i}]: got {g}, want {w} (atol {atol})"
        );
    }
}

/// The images shared by the three formats, at 2×3 RGB.
fn check_row_images(images: &[f32]) {
    let n = 2 * 3 * 3;
    assert_eq!(images.len(), 4 * n);
    // pattern.png, pixel (x, y) = (40 + 50x, 60 + 100y, 10x + 20y): exact.
    let mut want = Vec::new();
    for y in 0..2 {
        for x in 0..3 {
            want.extend([40 + 50 * x, 60 + 100 * y, 10 * x + 20 * y].map(|v| v as f32 / 255.0));
        }
    }
    close(&images[..n], &want, 1e-6, "pattern.png");
    // gray.png: uniform 128, resized from 4×4: stays uniform.
    close(&images[n..2 * n], &[128.0 / 255.0; 18], 1e-6, "gray.png");
    // color.jpg: uniform (200, 100, 50), JPEG-coded: within 3/255.
    let want: Vec<f32> = [200.0f32, 100.0, 50.0]
        .iter()
        .cycle()
        .take(n)
        .map(|v| v / 255.0)
        .collect();
    close(&images[2 * n..3 * n], &want, 3.0 / 255.0, "color.jpg");
    // alpha.png: (0, 0, 255) with varying alpha; alpha is dropped.
    let want: Vec<f32> = [0.0f32, 0.0, 1.0].iter().cycle().take(n).copied().collect();
    close(&images[3 * n..], &want, 1e-6, "alpha.png");
}

#[test]
fn manifest_csv() {
    let cfg = ManifestConfig {
        text: Some("text".into()),
        ..rows_config("rows.csv")
    };
    let m = cfg.load().unwrap();
    let d = &m.dataset;
    assert_eq!(
        d.texts,
        [
            "Great day, love it!",
            "Terrible service.",
            "He said \"meh\"",
            "Whatever"
        ]
    );
    assert_eq!(d.classes, ["negative", "neutral", "positive"]);
    assert_eq!(d.labels, [2, 0, 1, 2]);
    assert_eq!(d.image_shape, [2, 3, 3]);
    assert_eq!(m.ids, ["a", "b", "c", "d"]);
    assert!(m.skipped.is_empty());
    check_row_images(&d.images);
}

#[test]
fn manifest_tsv_text_files_integer_labels() {
    let cfg = ManifestConfig {
        text_file: Some("{text_path}".into()),
        labels: LabelKind::Integers,
        ..rows_config("rows.tsv")
    };
    let m = cfg.load().unwrap();
    let d = &m.dataset;
    // CRLF → LF, invalid UTF-8 → U+FFFD, whitespace trimmed.
    assert_eq!(
        d.texts,
        ["Love it\nso much", "café was awful \u{fffd}", "", "ok"]
    );
    assert_eq!(d.classes, ["0", "1", "2"]);
    assert_eq!(d.labels, [2, 0, 1, 2]);
    check_row_images(&d.images);

    // Integers with an explicit class list name the classes.
    let named = ManifestConfig {
        classes: Some(vec!["neg".into(), "neu".into(), "pos".into()]),
        ..cfg.clone()
    };
    let d2 = named.load().unwrap().dataset;
    assert_eq!(d2.classes, ["neg", "neu", "pos"]);
    assert_eq!(d2.labels, d.labels);
}

#[test]
fn manifest_jsonl() {
    let cfg = ManifestConfig {
        text: Some("text".into()),
        labels: LabelKind::Integers,
        ..rows_config("rows.jsonl")
    };
    let m = cfg.load().unwrap();
    let d = &m.dataset;
    assert_eq!(
        d.texts,
        [
            "Great day, love it!",
            "Terrible\nservice.",
            "He said \"meh\"",
            "Whatever"
        ]
    );
    // Numbers and a numeric string both read as integers.
    assert_eq!(d.labels, [2, 0, 1, 2]);
    assert_eq!(d.classes, ["0", "1", "2"]);
    assert_eq!(m.ids, ["a", "b", "c", "d"]);
    check_row_images(&d.images);
}

#[test]
fn manifest_headerless_tsv_positional_columns() {
    let cfg = ManifestConfig {
        header: false,
        text: Some("2".into()),
        label: "1".into(),
        id: Some("0".into()),
        ..ManifestConfig::new(fixture("headerless.tsv"))
    };
    let m = cfg.load().unwrap();
    // TSV has no quoting: quotes stay in the text.
    assert_eq!(m.dataset.texts, ["nice one", "bad \"luck\""]);
    assert_eq!(m.dataset.classes, ["negative", "positive"]);
    assert_eq!(m.dataset.labels, [1, 0]);
    assert_eq!(m.ids, ["1", "2"]);
    assert_eq!(m.dataset.image_shape, [0, 0, 0]);
    assert!(m.dataset.images.is_empty());
}

#[test]
fn manifest_luma_conversion() {
    let cfg = ManifestConfig {
        channels: 1,
        ..rows_config("rows.csv")
    };
    let d = cfg.load().unwrap().dataset;
    assert_eq!(d.image_shape, [2, 3, 1]);
    // Rec. 709 luma of the pattern, within one 8-bit step.
    let mut want = Vec::new();
    for y in 0..2 {
        for x in 0..3 {
            let (r, g, b) = (40 + 50 * x, 60 + 100 * y, 10 * x + 20 * y);
            want.push((0.2126 * r as f32 + 0.7152 * g as f32 + 0.0722 * b as f32) / 255.0);
        }
    }
    close(d.image(0), &want, 1.0 / 255.0, "pattern.png luma");
    close(d.image(1), &[128.0 / 255.0; 6], 1e-6, "gray.png luma");
}

#[test]
fn manifest_path_templates_by_id() {
    // MVSA's layout: a label table plus data/{guid}.txt and data/{guid}.jpg.
    let cfg = ManifestConfig {
        text_file: Some("data/{guid}.txt".into()),
        image: Some("data/{guid}.jpg".into()),
        label: "tag".into(),
        id: Some("guid".into()),
        classes: Some(vec!["negative".into(), "neutral".into(), "positive".into()]),
        image_size: [3, 3],
        filter: ResizeFilter::Triangle,
        ..ManifestConfig::new(fixture("by_id/labels.csv"))
    };
    let m = cfg.load().unwrap();
    let d = &m.dataset;
    assert_eq!(m.ids, ["17", "42", "7"]);
    assert_eq!(
        d.texts,
        [
            "Sad news today \u{fffd} :(",
            "What a GREAT game!!",
            "just a bus stop"
        ]
    );
    assert_eq!(d.labels, [0, 2, 1]);
    // Uniform images stay uniform whatever the resize (6×4, 4×6 → 3×3).
    close(d.image(0), &[30.0 / 255.0; 9], 3.0 / 255.0, "17.jpg");
    close(d.image(1), &[220.0 / 255.0; 9], 3.0 / 255.0, "42.jpg");
    // 7.jpg holds a PNG: the format comes from the content.
    close(d.image(2), &[100.0 / 255.0; 9], 1e-6, "7.jpg (PNG inside)");
    assert!(d.images.iter().all(|v| (0.0..=1.0).contains(v)));
}

#[test]
fn manifest_resize_area() {
    // 4×4 → 2×2: each output is the mean of its 2×2 block (two channels
    // kept apart).
    let src: Vec<f32> = (0..16)
        .flat_map(|i| [i as f32 / 16.0, 1.0 - i as f32 / 16.0])
        .collect();
    let got = resize(&src, [4, 4, 2], [2, 2], ResizeFilter::Area);
    let block = |y: usize, x: usize| {
        let idx = [
            (2 * y) * 4 + 2 * x,
            (2 * y) * 4 + 2 * x + 1,
            (2 * y + 1) * 4 + 2 * x,
            (2 * y + 1) * 4 + 2 * x + 1,
        ];
        idx.iter().map(|&i| i as f32 / 16.0).sum::<f32>() / 4.0
    };
    let want: Vec<f32> = (0..2)
        .flat_map(|y| (0..2).flat_map(move |x| [block(y, x), 1.0 - block(y, x)]))
        .collect();
    close(&got, &want, 1e-6, "4x4 -> 2x2");
    // 1×3 → 1×2: output 0 covers pixel 0 and half of pixel 1.
    let got = resize(&[0.0, 0.6, 0.9], [1, 3, 1], [1, 2], ResizeFilter::Area);
    let want = [(0.0 + 0.5 * 0.6) / 1.5, (0.5 * 0.6 + 0.9) / 1.5];
    close(&got, &want, 1e-6, "1x3 -> 1x2");
    // 1×2 → 1×4 enlarges bilinearly, edges clamped.
    let got = resize(&[0.2, 0.6], [1, 2, 1], [1, 4], ResizeFilter::Area);
    close(&got, &[0.2, 0.3, 0.5, 0.6], 1e-6, "1x2 -> 1x4");
    // A uniform image stays uniform under every filter.
    for f in [
        ResizeFilter::Area,
        ResizeFilter::Nearest,
        ResizeFilter::Triangle,
        ResizeFilter::CatmullRom,
        ResizeFilter::Gaussian,
        ResizeFilter::Lanczos3,
    ] {
        let got = resize(&[0.7; 5 * 7 * 3], [5, 7, 3], [3, 9], f);
        close(&got, &[0.7; 3 * 9 * 3], 1e-5, &format!("{f:?} uniform"));
    }
}

#[test]
fn manifest_format_inferred_or_explicit() {
    assert_eq!(
        ManifestFormat::from_path(Path::new("x/Labels.CSV")),
        Some(ManifestFormat::Csv)
    );
    assert_eq!(
        ManifestFormat::from_path(Path::new("a.ndjson")),
        Some(ManifestFormat::Jsonl)
    );
    assert_eq!(ManifestFormat::from_path(Path::new("a.txt")), None);
    // An explicit format overrides the extension.
    let cfg = ManifestConfig {
        format: Some(ManifestFormat::Csv),
        text: Some("tag".into()),
        label: "tag".into(),
        ..ManifestConfig::new(fixture("by_id/labels.csv"))
    };
    assert_eq!(cfg.load().unwrap().dataset.len(), 3);
}

#[test]
fn manifest_label_names_vs_integers() {
    // Names read as integers: each bad row named by line.
    let cfg = ManifestConfig {
        text: Some("text".into()),
        labels: LabelKind::Integers,
        ..rows_config("rows.csv")
    };
    let e = load_err(&cfg);
    assert_contains(
        &e,
        &[
            "rows.csv",
            "line 2",
            "line 5",
            "\"positive\"",
            "not a non-negative integer",
        ],
    );
    // An integer outside an explicit class list.
    let cfg = ManifestConfig {
        text_file: Some("{text_path}".into()),
        labels: LabelKind::Integers,
        classes: Some(vec!["neg".into(), "pos".into()]),
        ..rows_config("rows.tsv")
    };
    let e = load_err(&cfg);
    assert_contains(
        &e,
        &[
            "rows.tsv",
            "line 2",
            "line 5",
            "\"2\"",
            "not in the class list",
        ],
    );
}

#[test]
fn manifest_missing_images_listed() {
    let cfg = ManifestConfig {
        text: Some("text".into()),
        ..rows_config("bad/missing_image.csv")
    };
    let e = load_err(&cfg);
    // Every missing file, not only the first.
    assert_contains(
        &e,
        &[
            "missing_image.csv",
            "2 of 3 rows",
            "line 3:",
            "nope1.png: file not found",
            "line 4:",
            "nope2.jpg: file not found",
            "on_missing: Skip",
        ],
    );
}

#[test]
fn manifest_missing_images_skipped_and_counted() {
    let cfg = ManifestConfig {
        text: Some("text".into()),
        on_missing: OnMissing::Skip,
        ..rows_config("bad/missing_image.csv")
    };
    let m = cfg.load().unwrap();
    assert_eq!(m.dataset.len(), 1);
    assert_eq!(m.dataset.texts, ["fine"]);
    assert_eq!(m.ids, ["a"]);
    assert_eq!(m.dataset.images.len(), m.dataset.image_len());
    // Classes come from every row, skipped or not.
    assert_eq!(m.dataset.classes, ["negative", "positive"]);
    assert_eq!(m.dataset.labels, [1]);
    assert_eq!(m.skipped.len(), 2);
    assert_eq!((m.skipped[0].line, m.skipped[0].id.as_str()), (3, "b"));
    assert_eq!((m.skipped[1].line, m.skipped[1].id.as_str()), (4, "c"));
    assert!(m.skipped[1].problems[0].contains("nope2.jpg"));
    assert!(m.summary().contains("2 rows skipped"), "{}", m.summary());
}

#[test]
fn manifest_corrupt_jpeg() {
    let cfg = ManifestConfig {
        text: Some("text".into()),
        ..rows_config("bad/corrupt.csv")
    };
    let e = load_err(&cfg);
    assert_contains(
        &e,
        &["corrupt.csv", "line 3:", "corrupt.jpg: cannot decode image"],
    );
    let skip = ManifestConfig {
        on_missing: OnMissing::Skip,
        ..cfg
    };
    let m = skip.load().unwrap();
    assert_eq!((m.dataset.len(), m.skipped.len()), (1, 1));
}

#[test]
fn manifest_empty() {
    let e = load_err(&ManifestConfig {
        text: Some("text".into()),
        ..ManifestConfig::new(fixture("bad/empty.csv"))
    });
    assert_contains(&e, &["empty.csv", "no rows"]);
    let e = load_err(&ManifestConfig {
        text: Some("text".into()),
        ..ManifestConfig::new(fixture("bad/blank.csv"))
    });
    assert_contains(&e, &["blank.csv", "empty"]);
}

#[test]
fn manifest_label_not_in_class_list() {
    let cfg = ManifestConfig {
        text: Some("text".into()),
        classes: Some(vec!["negative".into(), "neutral".into(), "positive".into()]),
        ..rows_config("bad/unknown_label.csv")
    };
    let e = load_err(&cfg);
    assert_contains(
        &e,
        &[
            "unknown_label.csv",
            "line 3",
            "\"happy\"",
            "not in the class list",
        ],
    );
}

#[test]
fn manifest_missing_column() {
    let e = load_err(&ManifestConfig {
        text: Some("text".into()),
        ..rows_config("bad/missing_column.csv")
    });
    assert_contains(
        &e,
        &[
            "missing_column.csv:1",
            "no column \"image\"",
            "id, text, img, label",
        ],
    );
    let e = load_err(&ManifestConfig {
        text: Some("text".into()),
        label: "tag".into(),
        ..rows_config("rows.csv")
    });
    assert_contains(&e, &["rows.csv:1", "no column \"tag\""]);
    // JSONL: a field no row has.
    let e = load_err(&ManifestConfig {
        text: Some("caption".into()),
        ..rows_config("rows.jsonl")
    });
    assert_contains(&e, &["rows.jsonl", "no row has a field \"caption\""]);
}

#[test]
fn manifest_other_bad_inputs() {
    // Invalid JSON names its line.
    let e = load_err(&ManifestConfig {
        text: Some("text".into()),
        ..ManifestConfig::new(fixture("bad/invalid.jsonl"))
    });
    assert_contains(&e, &["invalid.jsonl:3", "invalid JSON"]);
    // A manifest that does not exist.
    let e = load_err(&ManifestConfig {
        text: Some("text".into()),
        ..ManifestConfig::new(fixture("bad/nowhere.csv"))
    });
    assert_contains(&e, &["nowhere.csv", "cannot read the manifest"]);
    // An extension that names no format.
    let e = load_err(&ManifestConfig {
        text: Some("text".into()),
        ..ManifestConfig::new(fixture("texts/a.txt"))
    });
    assert_contains(&e, &["a.txt", "format"]);
    // A broken template.
    let e = load_err(&ManifestConfig {
        image: Some("images/{image".into()),
        ..ManifestConfig::new(fixture("rows.csv"))
    });
    assert_contains(&e, &["rows.csv", "unclosed"]);
    // Neither text nor image; unsupported channels.
    let e = load_err(&ManifestConfig::new(fixture("rows.csv")));
    assert_contains(&e, &["rows.csv", "no text"]);
    let e = load_err(&ManifestConfig {
        channels: 4,
        ..rows_config("rows.csv")
    });
    assert_contains(&e, &["rows.csv", "channels"]);
}

#[test]
fn manifest_config_deserializes() {
    let ron_text = r#"(
        path: "data/labels.csv",
        text_file: Some("data/{guid}.txt"),
        image: Some("data/{guid}.jpg"),
        label: "tag",
        id: Some("guid"),
        image_size: (28, 28),
        channels: 1,
        on_missing: Skip,
    )"#;
    let cfg: ManifestConfig = ron::from_str(ron_text).unwrap();
    assert_eq!(cfg.on_missing, OnMissing::Skip);
    assert_eq!(cfg.labels, LabelKind::Names);
    assert_eq!(cfg.filter, ResizeFilter::Area);
    assert_eq!(cfg.image.as_deref(), Some("data/{guid}.jpg"));
    // Unknown fields are rejected.
    let bad = r#"(path: "x.csv", colour: true)"#;
    let e = ron::from_str::<ManifestConfig>(bad)
        .unwrap_err()
        .to_string();
    assert!(e.contains("colour"), "{e}");
}

/// The shared real-data folder, or None (with a message) when absent.
/// `CROSSMODAL_DATA` overrides; otherwise `../shared/data` from the
/// repository (or from a worktree one level deeper).
fn shared_data() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let candidates: Vec<PathBuf> = match std::env::var_os("CROSSMODAL_DATA") {
        Some(p) => vec![PathBuf::from(p)],
        None => vec![root.join("../shared/data"), root.join("../../shared/data")],
    };
    candidates.into_iter().find(|p| p.is_dir())
}

#[test]
fn manifest_mvsa_single_dev() {
    let Some(data) = shared_data() else {
        eprintln!("skipping manifest_mvsa_single_dev: shared/data not found (set CROSSMODAL_DATA)");
        return;
    };
    let dir = data.join("mvsa_single_dev");
    if !dir.is_dir() {
        eprintln!(
            "skipping manifest_mvsa_single_dev: {} not found",
            dir.display()
        );
        return;
    }
    let cfg = ManifestConfig {
        text_file: Some("data/{guid}.txt".into()),
        image: Some("data/{guid}.jpg".into()),
        label: "tag".into(),
        id: Some("guid".into()),
        image_size: [28, 28],
        channels: 1,
        ..ManifestConfig::new(dir.join("labels.csv"))
    };
    let start = Instant::now();
    let m = cfg.load().unwrap();
    let elapsed = start.elapsed();
    eprintln!("MVSA dev: {} in {:.2?}", m.summary(), elapsed);
    let d = &m.dataset;
    assert_eq!(d.len(), 790);
    assert_eq!(d.classes, ["negative", "neutral", "positive"]);
    let count = |c: u32| d.labels.iter().filter(|&&l| l == c).count();
    assert_eq!((count(2), count(0), count(1)), (452, 243, 95));
    assert_eq!(d.images.len(), 790 * 28 * 28);
    assert!(d.images.iter().all(|v| (0.0..=1.0).contains(v)));
    // Real photos: not blank.
    let mean = d.images.iter().sum::<f32>() / d.images.len() as f32;
    assert!((0.1..0.9).contains(&mean), "mean pixel {mean}");
    assert!(m.skipped.is_empty());
    assert!(d.texts.iter().all(|t| t == t.trim() && !t.contains('\r')));
    assert!(d.texts.iter().filter(|t| !t.is_empty()).count() > 780);
    let tokens: usize = d
        .texts
        .iter()
        .map(|t| crossmodal::data::tokenizer::split_words(t, true).len())
        .sum();
    eprintln!(
        "MVSA dev: {:.1} tokens per text",
        tokens as f64 / d.len() as f64
    );
}
