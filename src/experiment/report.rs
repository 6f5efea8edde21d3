//! What a run leaves in its directory `runs/<name>/<timestamp>/` besides the
//! checkpoint: per-epoch metrics (CSV and JSON), loss and accuracy curves
//! (SVG and PNG, drawn with `plotters`) and a report (markdown for people,
//! JSON for tools). Every file is written atomically
//! ([`super::atomic::write_atomic`]).
//!
//! The runner can call [`write_epochs`] and [`write_curves`] after every
//! epoch (a killed run still leaves its curves so far) and [`write_report`]
//! once at the end, or [`write_run`] for all of it at once.
//!
//! Text in the figures uses DejaVu Sans embedded in the binary (the
//! `dejavu` crate) through plotters' `ab_glyph` feature, so the PNGs render
//! the same on a machine without any system font.

use std::path::Path;
use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use super::atomic::{write_atomic, write_atomic_str};
use super::metrics::{Classification, EpochMetrics, MajorityBaseline, MeanStd};
use crate::error::{Error, Result};

/// Per-epoch metrics, one row per epoch.
pub const METRICS_CSV: &str = "metrics.csv";
/// Per-epoch metrics, a JSON array of [`EpochMetrics`].
pub const METRICS_JSON: &str = "metrics.json";
pub const LOSS_SVG: &str = "loss.svg";
pub const LOSS_PNG: &str = "loss.png";
pub const ACCURACY_SVG: &str = "accuracy.svg";
pub const ACCURACY_PNG: &str = "accuracy.png";
/// The human-readable report.
pub const REPORT_MD: &str = "report.md";
/// The same [`Report`] as JSON, for tools (and for `eval` to compare with).
pub const REPORT_JSON: &str = "report.json";

/// Size of both figure formats, in pixels.
pub const FIGURE_SIZE: (u32, u32) = (800, 500);

/// Header of [`METRICS_CSV`], in the field order of [`EpochMetrics`].
pub const CSV_HEADER: &str =
    "epoch,train_loss,train_accuracy,val_loss,val_accuracy,learning_rate,samples_per_second,seconds";

// ---------------------------------------------------------------------------
// Per-epoch metrics

/// [`METRICS_CSV`]'s text: [`CSV_HEADER`], then one line per epoch. Numbers
/// are written in Rust's shortest round-trip form (they parse back to the
/// same `f64`); a missing validation value is an empty cell.
pub fn epochs_csv(epochs: &[EpochMetrics]) -> String {
    let mut s = String::with_capacity(64 * (epochs.len() + 1));
    s.push_str(CSV_HEADER);
    s.push('\n');
    let opt = |v: Option<f64>| v.map(|v| v.to_string()).unwrap_or_default();
    for e in epochs {
        s.push_str(&format!(
            "{},{},{},{},{},{},{},{}\n",
            e.epoch,
            e.train_loss,
            e.train_accuracy,
            opt(e.val_loss),
            opt(e.val_accuracy),
            e.learning_rate,
            e.samples_per_second,
            e.seconds
        ));
    }
    s
}

/// [`METRICS_JSON`]'s text: a pretty-printed array of [`EpochMetrics`].
/// JSON has no NaN or infinity: serde_json writes them as `null`, which
/// parses back only into the `Option` fields.
pub fn epochs_json(epochs: &[EpochMetrics]) -> Result<String> {
    serde_json::to_string_pretty(epochs)
        .map_err(|e| Error::file(METRICS_JSON, format!("cannot serialise: {e}")))
}

/// Writes [`METRICS_CSV`] and [`METRICS_JSON`] into `dir` (which must exist).
pub fn write_epochs(dir: impl AsRef<Path>, epochs: &[EpochMetrics]) -> Result<()> {
    let dir = dir.as_ref();
    write_atomic_str(dir.join(METRICS_CSV), &epochs_csv(epochs))?;
    let json = epochs_json(epochs).map_err(|e| retarget(e, &dir.join(METRICS_JSON)))?;
    write_atomic_str(dir.join(METRICS_JSON), &json)
}

// ---------------------------------------------------------------------------
// Curves

/// (epoch, value) pairs of one series.
type Points = Vec<(u32, f64)>;

/// Which figure: training and validation curves of one quantity vs epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Curve {
    Loss,
    Accuracy,
}

impl Curve {
    fn title(self) -> &'static str {
        match self {
            Curve::Loss => "Loss",
            Curve::Accuracy => "Accuracy",
        }
    }

    fn svg_name(self) -> &'static str {
        match self {
            Curve::Loss => LOSS_SVG,
            Curve::Accuracy => ACCURACY_SVG,
        }
    }

    fn png_name(self) -> &'static str {
        match self {
            Curve::Loss => LOSS_PNG,
            Curve::Accuracy => ACCURACY_PNG,
        }
    }

    /// (epoch, train, validation) points; non-finite values are dropped (a
    /// diverged last epoch must not break the figure of the good ones).
    fn points(self, epochs: &[EpochMetrics]) -> (Points, Points) {
        let pick = |f: &dyn Fn(&EpochMetrics) -> Option<f64>| {
            epochs
                .iter()
                .filter_map(|e| f(e).filter(|v| v.is_finite()).map(|v| (e.epoch as u32, v)))
                .collect::<Vec<_>>()
        };
        match self {
            Curve::Loss => (pick(&|e| Some(e.train_loss)), pick(&|e| e.val_loss)),
            Curve::Accuracy => (pick(&|e| Some(e.train_accuracy)), pick(&|e| e.val_accuracy)),
        }
    }
}

/// Registers the embedded font under the family name plotters asks for
/// (also used by the bench's figure, `study::bench`).
pub(crate) fn register_fonts() {
    static FONTS: Once = Once::new();
    FONTS.call_once(|| {
        // The bytes are a font that ships inside the `dejavu` crate, so a
        // failure here is a broken build, not bad input; text would then be
        // missing and plotting reports the font error.
        let _ = plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            dejavu::sans::regular(),
        );
    });
}

const TRAIN_COLOR: RGBColor = RGBColor(31, 119, 180);
const VAL_COLOR: RGBColor = RGBColor(214, 39, 40);

fn draw_curve<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    curve: Curve,
    epochs: &[EpochMetrics],
) -> std::result::Result<(), String>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    let (train, val) = curve.points(epochs);
    let last = epochs.iter().map(|e| e.epoch as u32).max().unwrap_or(1);
    // At least two ticks wide, so one epoch still gives a valid axis.
    let x = 1u32..last.max(2);
    let y = match curve {
        Curve::Accuracy => 0.0..1.0,
        Curve::Loss => {
            let top = train.iter().chain(&val).map(|p| p.1).fold(0.0, f64::max);
            0.0..if top > 0.0 { top * 1.1 } else { 1.0 }
        }
    };

    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(root)
        .caption(curve.title(), ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(x, y)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .y_desc(curve.title().to_lowercase())
        .x_labels(10)
        .y_labels(8)
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(err)?;

    for (points, color, label) in [
        (&train, TRAIN_COLOR, "train"),
        (&val, VAL_COLOR, "validation"),
    ] {
        if points.is_empty() {
            continue;
        }
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(err)?
            .label(label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        // Markers, so a single epoch is visible too.
        chart
            .draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))
            .map_err(err)?;
    }
    chart
        .configure_series_labels()
        // Away from where the curves usually end: loss falls, accuracy rises.
        .position(match curve {
            Curve::Loss => SeriesLabelPosition::UpperRight,
            Curve::Accuracy => SeriesLabelPosition::LowerRight,
        })
        .label_font(("sans-serif", 14))
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)
}

/// The SVG figure of `curve` (train and validation vs epoch).
pub fn curve_svg(curve: Curve, epochs: &[EpochMetrics]) -> Result<String> {
    register_fonts();
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, FIGURE_SIZE).into_drawing_area();
        draw_curve(&root, curve, epochs)
            .map_err(|e| Error::file(curve.svg_name(), format!("plotting failed: {e}")))?;
    }
    Ok(svg)
}

/// The PNG figure of `curve` (8-bit RGB), the same drawing as [`curve_svg`].
pub fn curve_png(curve: Curve, epochs: &[EpochMetrics]) -> Result<Vec<u8>> {
    register_fonts();
    let (w, h) = FIGURE_SIZE;
    let mut rgb = vec![0u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (w, h)).into_drawing_area();
        draw_curve(&root, curve, epochs)
            .map_err(|e| Error::file(curve.png_name(), format!("plotting failed: {e}")))?;
    }
    let encode = || -> std::result::Result<Vec<u8>, png::EncodingError> {
        let mut out = Vec::new();
        let mut encoder = png::Encoder::new(&mut out, w, h);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header()?;
        writer.write_image_data(&rgb)?;
        writer.finish()?;
        Ok(out)
    };
    encode().map_err(|e| Error::file(curve.png_name(), format!("PNG encoding failed: {e}")))
}

/// Writes the loss and accuracy figures, SVG and PNG, into `dir`.
pub fn write_curves(dir: impl AsRef<Path>, epochs: &[EpochMetrics]) -> Result<()> {
    let dir = dir.as_ref();
    for curve in [Curve::Loss, Curve::Accuracy] {
        let svg_path = dir.join(curve.svg_name());
        let svg = curve_svg(curve, epochs).map_err(|e| retarget(e, &svg_path))?;
        write_atomic_str(&svg_path, &svg)?;
        let png_path = dir.join(curve.png_name());
        let png = curve_png(curve, epochs).map_err(|e| retarget(e, &png_path))?;
        write_atomic(&png_path, &png)?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Report

/// Test accuracy with one modality's input replaced by zeros (the rest of
/// the model unchanged): how much the model leans on that modality.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Ablation {
    /// The modality that was zeroed, e.g. `"text"` or `"image"`.
    pub zeroed: String,
    pub accuracy: f64,
}

/// Everything the report says; the runner fills it in.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The first heading, e.g. the experiment name.
    pub title: String,
    /// Free-form lines shown as a list under the title: experiment file,
    /// backend, adapter, wall time, seed, ...
    pub header: Vec<String>,
    /// Class names by id; where a name is missing the id is shown.
    pub class_names: Vec<String>,
    /// Metrics on the test set.
    pub test: Classification,
    /// The training set's majority class scored on the test set.
    pub baseline: MajorityBaseline,
    /// One row per zeroed modality; the section is left out when empty
    /// (e.g. a single-modality model).
    pub ablation: Vec<Ablation>,
    /// Mean ± std over seeds, by metric name (e.g. `"test accuracy"`); the
    /// section is left out when empty (a single-seed run).
    pub seeds: Vec<(String, MeanStd)>,
}

impl Report {
    fn class_name(&self, id: usize) -> String {
        match self.class_names.get(id) {
            Some(name) => cell(name),
            None => id.to_string(),
        }
    }
}

/// Escapes text for a markdown table cell.
fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace(['\n', '\r'], " ")
}

fn f4(v: f64) -> String {
    format!("{v:.4}")
}

/// The markdown report: header lines, test accuracy and macro-F1 beside
/// the majority-class baseline, per-class precision / recall / F1, the
/// confusion matrix, and (when given) the per-modality ablation and the
/// mean ± std over seeds.
pub fn render_markdown(report: &Report) -> String {
    let t = &report.test;
    let mut md = String::new();
    let mut line = |s: String| {
        md.push_str(&s);
        md.push('\n');
    };

    line(format!("# {}", report.title));
    line(String::new());
    for h in &report.header {
        line(format!("- {h}"));
    }
    if !report.header.is_empty() {
        line(String::new());
    }

    line("## Test set".into());
    line(String::new());
    line("| metric | model | majority-class baseline |".into());
    line("| --- | ---: | ---: |".into());
    line(format!(
        "| accuracy | {} | {} |",
        f4(t.accuracy),
        f4(report.baseline.accuracy)
    ));
    line(format!(
        "| macro-F1 | {} | {} |",
        f4(t.macro_f1),
        f4(report.baseline.macro_f1)
    ));
    line(String::new());
    line(format!(
        "{} test samples. The baseline always answers the training set's majority \
         class, `{}`; a model is only useful where it beats it.",
        t.samples,
        report.class_name(report.baseline.class as usize)
    ));
    line(String::new());

    line("## Per class".into());
    line(String::new());
    line("| class | precision | recall | F1 | support | predicted |".into());
    line("| --- | ---: | ---: | ---: | ---: | ---: |".into());
    for (c, m) in t.per_class.iter().enumerate() {
        line(format!(
            "| {} | {} | {} | {} | {} | {} |",
            report.class_name(c),
            f4(m.precision),
            f4(m.recall),
            f4(m.f1),
            m.support,
            m.predicted
        ));
    }
    line(String::new());
    line(
        "Precision of a class never predicted, and recall of a class absent from the \
         test labels, are 0 (0/0 counted as 0). Macro-F1 averages F1 over the classes \
         that occur in the labels or the predictions."
            .into(),
    );
    line(String::new());

    line("## Confusion matrix".into());
    line(String::new());
    line("Rows: true class; columns: predicted class.".into());
    line(String::new());
    let names: Vec<String> = (0..t.classes).map(|c| report.class_name(c)).collect();
    line(format!("| true \\ predicted | {} |", names.join(" | ")));
    line(format!("| --- |{}", " ---: |".repeat(t.classes)));
    for (c, row) in t.confusion.iter().enumerate() {
        let counts: Vec<String> = row.iter().map(u64::to_string).collect();
        line(format!("| {} | {} |", names[c], counts.join(" | ")));
    }
    line(String::new());

    if !report.ablation.is_empty() {
        line("## Per-modality ablation".into());
        line(String::new());
        line("Test accuracy with one modality's input set to zeros.".into());
        line(String::new());
        line("| input | accuracy | change |".into());
        line("| --- | ---: | ---: |".into());
        line(format!("| all modalities | {} | |", f4(t.accuracy)));
        for a in &report.ablation {
            line(format!(
                "| {} zeroed | {} | {:+.4} |",
                cell(&a.zeroed),
                f4(a.accuracy),
                a.accuracy - t.accuracy
            ));
        }
        line(String::new());
    }

    if !report.seeds.is_empty() {
        line("## Over seeds".into());
        line(String::new());
        line("Mean ± sample standard deviation.".into());
        line(String::new());
        line("| metric | mean ± std | seeds |".into());
        line("| --- | ---: | ---: |".into());
        for (name, ms) in &report.seeds {
            line(format!("| {} | {} | {} |", cell(name), ms, ms.n));
        }
        line(String::new());
    }
    md
}

/// Writes [`REPORT_MD`] and [`REPORT_JSON`] into `dir`. The markdown links
/// the loss and accuracy SVGs when they are already in `dir` (write them
/// first with [`write_curves`]).
pub fn write_report(dir: impl AsRef<Path>, report: &Report) -> Result<()> {
    let dir = dir.as_ref();
    let mut md = render_markdown(report);
    if dir.join(LOSS_SVG).is_file() && dir.join(ACCURACY_SVG).is_file() {
        md.push_str(&format!(
            "## Curves\n\n![loss]({LOSS_SVG})\n\n![accuracy]({ACCURACY_SVG})\n"
        ));
    }
    write_atomic_str(dir.join(REPORT_MD), &md)?;
    let json_path = dir.join(REPORT_JSON);
    let json = serde_json::to_string_pretty(report)
        .map_err(|e| Error::file(&json_path, format!("cannot serialise: {e}")))?;
    write_atomic_str(&json_path, &json)
}

/// Writes every file of this module into `dir` (which must exist): the
/// per-epoch metrics, the curves, then the report.
pub fn write_run(dir: impl AsRef<Path>, epochs: &[EpochMetrics], report: &Report) -> Result<()> {
    let dir = dir.as_ref();
    write_epochs(dir, epochs)?;
    write_curves(dir, epochs)?;
    write_report(dir, report)
}

/// Replaces the file name an in-memory render error carries with the full
/// path it was meant for.
fn retarget(e: Error, path: &Path) -> Error {
    match e {
        Error::File { message, .. } => Error::file(path, message),
        other => other,
    }
}
