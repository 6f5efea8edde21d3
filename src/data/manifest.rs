//! Manifest loading: a CSV, TSV or JSONL table of rows (text, image, label)
//! the way multimodal sentiment sets ship, turned into a [`Dataset`].
//!
//! A row's text is either inline (`text`: a column) or read from a file
//! (`text_file`: a path template); its image comes from a path template
//! (`image`). A template fills `{column}` from the row, so a column that
//! holds a whole path is written `"{path}"` and a set whose files are named
//! by id (MVSA: `labels.csv` with `guid,tag`, `data/{guid}.txt`,
//! `data/{guid}.jpg`) is written `"data/{guid}.jpg"`; `{{` and `}}` are
//! literal braces. File paths are relative to the manifest's folder.
//!
//! Texts are decoded as lossy UTF-8 (invalid bytes become U+FFFD, as some
//! MVSA files need), CRLF becomes LF, and surrounding whitespace is trimmed.
//! Images are decoded with the `image` crate (format guessed from the
//! content, not the extension), converted to the configured channels
//! (1 = luma with the Rec. 709 weights `image` uses, alpha dropped; 3 = RGB)
//! in `f32`, then resized to exactly the configured height × width
//! (aspect ratio not kept, like Keras `load_img(target_size=…)`) with a
//! stated filter: by default [`ResizeFilter::Area`], exact area averaging
//! when shrinking (no aliasing from 500×500 photos down to 28×28) and
//! bilinear when enlarging. Values are in `[0, 1]`, NHWC.
//! EXIF orientation is not applied (neither does PIL's `open`).
//!
//! Bad input never panics: a missing manifest, an empty one, a missing
//! column, a label outside the class list are errors naming the file and
//! line; missing or undecodable text/image files are all listed in one
//! error, or, with `on_missing: Skip`, their rows are skipped and returned
//! in [`Manifest::skipped`].

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use serde::{Deserialize, Serialize};

use super::Dataset;
use crate::error::{Error, Result};

/// The table's syntax.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ManifestFormat {
    /// Comma-separated, RFC 4180 quoting.
    Csv,
    /// Tab-separated, no quoting (a `"` is an ordinary character).
    Tsv,
    /// One JSON object per line; blank lines are ignored.
    Jsonl,
}

impl ManifestFormat {
    /// The format a file extension implies: `csv`; `tsv` or `tab`;
    /// `jsonl` or `ndjson` (case-insensitive).
    pub fn from_path(path: &Path) -> Option<Self> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "csv" => Some(Self::Csv),
            "tsv" | "tab" => Some(Self::Tsv),
            "jsonl" | "ndjson" => Some(Self::Jsonl),
            _ => None,
        }
    }
}

/// How the label column is read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum LabelKind {
    /// Class names (`positive`, …). Without `classes` the class list is the
    /// sorted set of names found in the manifest.
    #[default]
    Names,
    /// Class indices `0..K`. Without `classes` the classes are named `"0"`
    /// to the largest index found.
    Integers,
}

/// What to do with a row whose text or image file is missing or
/// undecodable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum OnMissing {
    /// One error listing every such file.
    #[default]
    Error,
    /// Drop the row; the dropped rows are returned in [`Manifest::skipped`].
    Skip,
}

/// The resampling filter of the resize.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ResizeFilter {
    /// Shrinking: each output pixel is the exact average of the source
    /// area it covers (OpenCV `INTER_AREA`, PIL `BOX`); enlarging:
    /// bilinear. Separable and cheap: the default.
    #[default]
    Area,
    /// The `image` crate's filters (`imageops::resize`, in `f32`).
    Nearest,
    /// Bilinear, widened by the shrink factor when downscaling.
    Triangle,
    CatmullRom,
    Gaussian,
    Lanczos3,
}

impl ResizeFilter {
    fn to_image(self) -> Option<image::imageops::FilterType> {
        use image::imageops::FilterType as F;
        match self {
            Self::Area => None,
            Self::Nearest => Some(F::Nearest),
            Self::Triangle => Some(F::Triangle),
            Self::CatmullRom => Some(F::CatmullRom),
            Self::Gaussian => Some(F::Gaussian),
            Self::Lanczos3 => Some(F::Lanczos3),
        }
    }
}

/// Where a manifest is and how to read it (the `data` section of an
/// experiment). Unknown fields are rejected.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestConfig {
    /// The table. A relative path is taken as given (from the current
    /// folder); the experiment runner resolves it against its RON file.
    pub path: PathBuf,
    /// `None`: inferred from the extension (see [`ManifestFormat::from_path`]).
    #[serde(default)]
    pub format: Option<ManifestFormat>,
    /// CSV/TSV only: whether the first line names the columns. Without a
    /// header the columns are named by their 0-based position: `"0"`, `"1"`, ….
    #[serde(default = "yes")]
    pub header: bool,
    /// Column holding the text inline.
    #[serde(default)]
    pub text: Option<String>,
    /// Path template of a text file (`"data/{guid}.txt"`, `"{text_path}"`).
    #[serde(default)]
    pub text_file: Option<String>,
    /// Path template of the image (`"data/{guid}.jpg"`, `"{image}"`).
    #[serde(default)]
    pub image: Option<String>,
    /// Column holding the label.
    #[serde(default = "default_label")]
    pub label: String,
    /// Column identifying a row in messages and in [`Manifest::ids`]
    /// (default: the row's line number).
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub labels: LabelKind,
    /// The class list, fixing the label indices (give it to evaluate on a
    /// checkpoint's classes). A label outside it is an error.
    #[serde(default)]
    pub classes: Option<Vec<String>>,
    /// Image `[height, width]` after resizing.
    #[serde(default = "default_size")]
    pub image_size: [usize; 2],
    /// 1 (luma) or 3 (RGB).
    #[serde(default = "default_channels")]
    pub channels: usize,
    #[serde(default)]
    pub filter: ResizeFilter,
    #[serde(default)]
    pub on_missing: OnMissing,
}

fn yes() -> bool {
    true
}
fn default_label() -> String {
    "label".into()
}
fn default_size() -> [usize; 2] {
    [28, 28]
}
fn default_channels() -> usize {
    1
}

impl ManifestConfig {
    /// Defaults: format from the extension, a header, label column
    /// `label` as names, 28×28 luma images, Area filter, errors on
    /// missing files; no text or image source yet.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            format: None,
            header: true,
            text: None,
            text_file: None,
            image: None,
            label: default_label(),
            id: None,
            labels: LabelKind::Names,
            classes: None,
            image_size: default_size(),
            channels: default_channels(),
            filter: ResizeFilter::Area,
            on_missing: OnMissing::Error,
        }
    }

    /// Reads the manifest and every file it names.
    pub fn load(&self) -> Result<Manifest> {
        load_manifest(self)
    }
}

/// A row dropped under [`OnMissing::Skip`].
#[derive(Clone, Debug, PartialEq)]
pub struct SkippedRow {
    /// 1-based line of the row in the manifest.
    pub line: u64,
    pub id: String,
    /// One entry per missing or undecodable file, each naming its path.
    pub problems: Vec<String>,
}

/// A loaded manifest.
#[derive(Clone, Debug, PartialEq)]
pub struct Manifest {
    pub dataset: Dataset,
    /// Per kept sample: the `id` column, or the line number.
    pub ids: Vec<String>,
    /// Rows dropped for missing or undecodable files (empty unless
    /// `on_missing: Skip`).
    pub skipped: Vec<SkippedRow>,
}

impl Manifest {
    /// One line for a log: samples, classes and the rows skipped.
    pub fn summary(&self) -> String {
        let d = &self.dataset;
        let mut counts = vec![0usize; d.classes.len()];
        for &l in &d.labels {
            counts[l as usize] += 1;
        }
        let per_class: Vec<String> = d
            .classes
            .iter()
            .zip(&counts)
            .map(|(c, n)| format!("{c} {n}"))
            .collect();
        format!(
            "{} samples ({}), {} rows skipped for missing or undecodable files",
            d.len(),
            per_class.join(", "),
            self.skipped.len()
        )
    }
}

/// One piece of a path template.
#[derive(Clone, Debug, PartialEq)]
enum Piece {
    Literal(String),
    /// A column name, then its index once bound to the table.
    Column(String, usize),
}

/// A parsed path template.
#[derive(Clone, Debug)]
struct Template {
    field: &'static str,
    source: String,
    pieces: Vec<Piece>,
}

impl Template {
    /// Parses the syntax (before the table is read): `{column}`, `{{`, `}}`.
    fn parse(source: &str, field: &'static str) -> std::result::Result<Self, String> {
        let mut pieces = Vec::new();
        let mut lit = String::new();
        let mut chars = source.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    lit.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    lit.push('}');
                }
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some(ch) => name.push(ch),
                            None => {
                                return Err(format!("{field} template {source:?}: unclosed '{{'"))
                            }
                        }
                    }
                    let name = name.trim();
                    if name.is_empty() {
                        return Err(format!("{field} template {source:?}: empty '{{}}'"));
                    }
                    if !lit.is_empty() {
                        pieces.push(Piece::Literal(std::mem::take(&mut lit)));
                    }
                    pieces.push(Piece::Column(name.to_string(), usize::MAX));
                }
                '}' => {
                    return Err(format!(
                        "{field} template {source:?}: unmatched '}}' (write '}}}}' for a brace)"
                    ))
                }
                c => lit.push(c),
            }
        }
        if !lit.is_empty() {
            pieces.push(Piece::Literal(lit));
        }
        Ok(Self {
            field,
            source: source.to_string(),
            pieces,
        })
    }

    /// Resolves the column names against the table.
    fn bind(&mut self, columns: &Columns) -> std::result::Result<(), String> {
        for p in &mut self.pieces {
            if let Piece::Column(name, index) = p {
                *index = columns.require(name, self.field)?;
            }
        }
        Ok(())
    }

    /// The path for one row, or why there is none.
    fn fill(&self, row: &Row) -> std::result::Result<String, String> {
        let mut out = String::new();
        for p in &self.pieces {
            match p {
                Piece::Literal(s) => out.push_str(s),
                Piece::Column(name, c) => match row.get(*c) {
                    Some(v) if !v.is_empty() => out.push_str(v),
                    _ => {
                        return Err(format!(
                            "column {name:?} is empty, so template {:?} names no file",
                            self.source
                        ))
                    }
                },
            }
        }
        Ok(out)
    }
}

/// Column names and, for CSV/TSV, whether they come from a fixed header.
struct Columns {
    names: Vec<String>,
    index: HashMap<String, usize>,
    /// CSV/TSV: the header is the whole truth, so an unknown name is an
    /// error at once. JSONL: keys vary per row, checked row by row.
    fixed: bool,
}

impl Columns {
    fn new(names: Vec<String>, fixed: bool) -> Self {
        let index = names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), i))
            .collect();
        Self {
            names,
            index,
            fixed,
        }
    }

    fn require(&self, name: &str, field: &str) -> std::result::Result<usize, String> {
        if let Some(&i) = self.index.get(name) {
            return Ok(i);
        }
        if self.fixed {
            return Err(format!(
                "no column {name:?} (named by {field}); the columns are: {}",
                self.names.join(", ")
            ));
        }
        if self.names.is_empty() {
            return Err(format!("no row has a field {name:?} (named by {field})"));
        }
        Err(format!(
            "no row has a field {name:?} (named by {field}); the fields are: {}",
            self.names.join(", ")
        ))
    }
}

/// One data row: its line and its values by column (None: absent).
struct Row {
    line: u64,
    values: Vec<Option<String>>,
}

impl Row {
    fn get(&self, c: usize) -> Option<&str> {
        self.values.get(c).and_then(|v| v.as_deref())
    }
}

/// Text decoding shared by inline and file texts: lossy UTF-8, CRLF → LF,
/// surrounding whitespace trimmed.
pub fn clean_text(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(bytes);
    let s = s.strip_prefix('\u{feff}').unwrap_or(&s);
    s.replace("\r\n", "\n").trim().to_string()
}

fn read_table(path: &Path, format: ManifestFormat, header: bool) -> Result<(Columns, Vec<Row>)> {
    let bytes = std::fs::read(path)
        .map_err(|e| Error::data(path.display(), format!("cannot read the manifest: {e}")))?;
    if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(Error::data(
            path.display(),
            "the manifest is empty (no header, no rows)",
        ));
    }
    match format {
        ManifestFormat::Jsonl => read_jsonl(path, &bytes),
        ManifestFormat::Csv | ManifestFormat::Tsv => {
            let mut b = csv::ReaderBuilder::new();
            b.has_headers(false).flexible(true);
            if format == ManifestFormat::Tsv {
                b.delimiter(b'\t').quoting(false);
            }
            let mut reader = b.from_reader(bytes.as_slice());
            let mut names: Option<Vec<String>> = None;
            let mut rows = Vec::new();
            let mut record = csv::ByteRecord::new();
            loop {
                match reader.read_byte_record(&mut record) {
                    Ok(false) => break,
                    Ok(true) => {}
                    Err(e) => {
                        let line = e.position().map(|p| p.line()).unwrap_or(0);
                        return Err(Error::data(
                            format!("{}:{line}", path.display()),
                            format!("malformed {format:?}: {e}"),
                        ));
                    }
                }
                let line = record.position().map(|p| p.line()).unwrap_or(0);
                let values: Vec<String> = record.iter().map(clean_text).collect();
                // A blank line (possible in TSV) is not a row.
                if values.iter().all(|v| v.is_empty()) {
                    continue;
                }
                if header && names.is_none() {
                    names = Some(values);
                    continue;
                }
                rows.push(Row {
                    line,
                    values: values.into_iter().map(Some).collect(),
                });
            }
            let names = match names {
                Some(n) => n,
                None if header => {
                    return Err(Error::data(
                        path.display(),
                        "the manifest is empty (no header, no rows)",
                    ))
                }
                None => {
                    let width = rows.iter().map(|r| r.values.len()).max().unwrap_or(0);
                    (0..width).map(|i| i.to_string()).collect()
                }
            };
            Ok((Columns::new(names, true), rows))
        }
    }
}

fn read_jsonl(path: &Path, bytes: &[u8]) -> Result<(Columns, Vec<Row>)> {
    let text = String::from_utf8_lossy(bytes);
    let mut names: Vec<String> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i as u64 + 1;
        let line = line.trim().trim_start_matches('\u{feff}');
        if line.is_empty() {
            continue;
        }
        let at = || format!("{}:{line_no}", path.display());
        let value: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| Error::data(at(), format!("invalid JSON: {e}")))?;
        let serde_json::Value::Object(map) = value else {
            return Err(Error::data(at(), "a JSONL row must be a JSON object"));
        };
        let mut values = vec![None; names.len()];
        for (k, v) in map {
            let c = *index.entry(k.clone()).or_insert_with(|| {
                names.push(k);
                values.push(None);
                names.len() - 1
            });
            values[c] = match v {
                serde_json::Value::Null => None,
                serde_json::Value::String(s) => Some(clean_text(s.as_bytes())),
                other => Some(other.to_string()),
            };
        }
        rows.push(Row {
            line: line_no,
            values,
        });
    }
    Ok((Columns::new(names, false), rows))
}

/// What one row needs read from disk.
struct FileJob {
    text: Option<PathBuf>,
    image: Option<PathBuf>,
}

/// Reads one row's files: its text (if from a file) and decoded image, or
/// every problem found (each naming its path).
fn load_files(
    job: &FileJob,
    cfg: &ManifestConfig,
) -> std::result::Result<(Option<String>, Vec<f32>), Vec<String>> {
    let mut problems = Vec::new();
    let mut text = None;
    if let Some(p) = &job.text {
        match std::fs::read(p) {
            Ok(b) => text = Some(clean_text(&b)),
            Err(e) => problems.push(format!("{}: {}", p.display(), io_reason(&e))),
        }
    }
    let mut pixels = Vec::new();
    if let Some(p) = &job.image {
        match std::fs::read(p) {
            Err(e) => problems.push(format!("{}: {}", p.display(), io_reason(&e))),
            Ok(bytes) => match decode_image(&bytes, cfg) {
                Ok(v) => pixels = v,
                Err(e) => problems.push(format!("{}: cannot decode image: {e}", p.display())),
            },
        }
    }
    if problems.is_empty() {
        Ok((text, pixels))
    } else {
        Err(problems)
    }
}

fn io_reason(e: &std::io::Error) -> String {
    if e.kind() == std::io::ErrorKind::NotFound {
        "file not found".into()
    } else {
        format!("cannot read: {e}")
    }
}

/// Decodes an encoded image (format from its content) to `[h, w, c]`
/// values in `[0, 1]` at `cfg.image_size` and `cfg.channels`.
pub fn decode_image(
    bytes: &[u8],
    cfg: &ManifestConfig,
) -> std::result::Result<Vec<f32>, image::ImageError> {
    use image::DynamicImage as D;
    let img = image::load_from_memory(bytes)?;
    let (w, h) = (img.width() as usize, img.height() as usize);
    let size = cfg.image_size;
    let c = cfg.channels;
    // The layouts JPEG decodes to (8-bit luma or RGB) are resized as bytes
    // and converted afterwards, on the small image: resizing is linear, so
    // luma(resize(rgb)) = resize(luma(rgb)), and `image`'s own conversion
    // of a full-size photo costs more than its decode.
    let (small, from) = match (&img, cfg.filter) {
        (D::ImageLuma8(b), ResizeFilter::Area) => {
            (resize(b.as_raw(), [h, w, 1], size, cfg.filter), 1)
        }
        (D::ImageRgb8(b), ResizeFilter::Area) => {
            (resize(b.as_raw(), [h, w, 3], size, cfg.filter), 3)
        }
        // Other layouts (16-bit, float, alpha: rare, PNG) and filters:
        // convert first (alpha is dropped), then resize.
        _ => {
            let v = if c == 1 {
                img.to_luma32f().into_raw()
            } else {
                img.to_rgb32f().into_raw()
            };
            return Ok(resize(&v, [h, w, c], size, cfg.filter));
        }
    };
    let k = 1.0 / 255.0;
    let out = match (from, c) {
        (1, 1) | (3, 3) => small.iter().map(|v| v * k).collect(),
        (1, _) => small.iter().flat_map(|&v| [v * k; 3]).collect(),
        _ => small
            .chunks_exact(3)
            .map(|p| (LUMA[0] * p[0] + LUMA[1] * p[1] + LUMA[2] * p[2]) * k)
            .collect(),
    };
    Ok(clamp01(out))
}

/// Rec. 709 luma weights (those `image` uses for its own conversion).
const LUMA: [f32; 3] = [0.2126, 0.7152, 0.0722];

fn clamp01(v: Vec<f32>) -> Vec<f32> {
    v.into_iter().map(|x| x.clamp(0.0, 1.0)).collect()
}

/// Resizes interleaved `[h, w, c]` values to `[size[0], size[1], c]` as
/// `f32`, in the input's own scale (bytes stay in `0..=255`). Only
/// [`ResizeFilter::Area`] takes any `c`; the `image` filters take `f32`
/// values in `[0, 1]` with 1 or 3 channels, and clamp to `[0, 1]`.
pub fn resize<T>(
    values: &[T],
    shape: [usize; 3],
    size: [usize; 2],
    filter: ResizeFilter,
) -> Vec<f32>
where
    T: Copy,
    f32: From<T>,
{
    let [h, w, c] = shape;
    let [nh, nw] = size;
    assert_eq!(
        values.len(),
        h * w * c,
        "resize: values do not match {shape:?}"
    );
    if [h, w] == [nh, nw] {
        return values.iter().map(|&v| f32::from(v)).collect();
    }
    if h == 0 || w == 0 {
        return vec![0.0; nh * nw * c];
    }
    let Some(f) = filter.to_image() else {
        return resize_area(values, shape, size);
    };
    assert!(
        c == 1 || c == 3,
        "resize: the image filters take 1 or 3 channels, not {c}"
    );
    let v: Vec<f32> = values.iter().map(|&v| f32::from(v)).collect();
    let (w32, h32, nw32, nh32) = (w as u32, h as u32, nw as u32, nh as u32);
    let out = if c == 1 {
        let b = image::ImageBuffer::<image::Luma<f32>, _>::from_raw(w32, h32, v)
            .expect("sizes checked above");
        image::imageops::resize(&b, nw32, nh32, f).into_raw()
    } else {
        let b = image::ImageBuffer::<image::Rgb<f32>, _>::from_raw(w32, h32, v)
            .expect("sizes checked above");
        image::imageops::resize(&b, nw32, nh32, f).into_raw()
    };
    // Filters with negative lobes overshoot.
    clamp01(out)
}

/// [`ResizeFilter::Area`], separable: columns first (a contiguous
/// weighted sum of whole source rows, which vectorizes), then rows on the
/// short intermediate.
fn resize_area<T>(values: &[T], shape: [usize; 3], size: [usize; 2]) -> Vec<f32>
where
    T: Copy,
    f32: From<T>,
{
    let [h, w, c] = shape;
    let [nh, nw] = size;
    let vertical = axis_weights(h, nh);
    let horizontal = axis_weights(w, nw);
    let row = w * c;
    let mut tmp = vec![0.0f32; nh * row];
    for ((start, ws), dst) in vertical.iter().zip(tmp.chunks_exact_mut(row)) {
        for (j, &wt) in ws.iter().enumerate() {
            let src = &values[(start + j) * row..(start + j + 1) * row];
            for (d, &s) in dst.iter_mut().zip(src) {
                *d += wt * f32::from(s);
            }
        }
    }
    let mut out = vec![0.0f32; nh * nw * c];
    for (src, dst) in tmp.chunks_exact(row).zip(out.chunks_exact_mut(nw * c)) {
        for ((start, ws), px_out) in horizontal.iter().zip(dst.chunks_exact_mut(c)) {
            let taps = src[start * c..(start + ws.len()) * c].chunks_exact(c);
            for (&wt, px) in ws.iter().zip(taps) {
                for (o, &v) in px_out.iter_mut().zip(px) {
                    *o += wt * v;
                }
            }
        }
    }
    out
}

/// Per output index along one axis: the first source index and the
/// weights of the source pixels from there (they sum to 1). Shrinking:
/// each source pixel weighted by how much of it the output pixel's
/// footprint covers (exact area averaging). Enlarging: bilinear between
/// the two nearest pixel centres (centres aligned, edges clamped).
fn axis_weights(src: usize, dst: usize) -> Vec<(usize, Vec<f32>)> {
    let scale = src as f64 / dst as f64;
    (0..dst)
        .map(|i| {
            if scale >= 1.0 {
                let (lo, hi) = (i as f64 * scale, (i + 1) as f64 * scale);
                let first = lo.floor() as usize;
                let last = (hi.ceil() as usize).min(src);
                let ws = (first..last)
                    .map(|j| {
                        let overlap = (hi.min(j as f64 + 1.0) - lo.max(j as f64)).max(0.0);
                        (overlap / scale) as f32
                    })
                    .collect();
                (first, ws)
            } else {
                let centre = ((i as f64 + 0.5) * scale - 0.5).clamp(0.0, (src - 1) as f64);
                let j = (centre.floor() as usize).min(src.saturating_sub(2));
                let f = (centre - j as f64) as f32;
                if src == 1 {
                    (0, vec![1.0])
                } else {
                    (j, vec![1.0 - f, f])
                }
            }
        })
        .collect()
}

/// Runs `f` over `0..n` on a few threads; results in index order, so the
/// output does not depend on scheduling.
fn parallel_map<T: Send>(n: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let threads = std::thread::available_parallelism()
        .map(|t| t.get())
        .unwrap_or(1)
        .min(8)
        .min(n.max(1));
    if threads <= 1 {
        return (0..n).map(f).collect();
    }
    let next = AtomicUsize::new(0);
    let mut parts: Vec<Vec<(usize, T)>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut out = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= n {
                            break;
                        }
                        out.push((i, f(i)));
                    }
                    out
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a manifest worker panicked"))
            .collect()
    });
    let mut all: Vec<(usize, T)> = parts.iter_mut().flat_map(std::mem::take).collect();
    all.sort_by_key(|(i, _)| *i);
    all.into_iter().map(|(_, t)| t).collect()
}

/// How many row-level problems (labels, empty cells) one error lists; the
/// rest are counted. Missing files are always listed in full.
const MAX_LISTED: usize = 20;

/// Reads a manifest and every file it names into a [`Dataset`].
pub fn load_manifest(cfg: &ManifestConfig) -> Result<Manifest> {
    let path = cfg.path.as_path();
    let shown = path.display();
    let format = match cfg.format {
        Some(f) => f,
        None => ManifestFormat::from_path(path).ok_or_else(|| {
            Error::data(
                &shown,
                "cannot tell the format from the extension (expected .csv, .tsv, .jsonl); \
                 set format: Csv, Tsv or Jsonl",
            )
        })?,
    };
    if cfg.text.is_some() && cfg.text_file.is_some() {
        return Err(Error::data(
            &shown,
            "both text (a column) and text_file (a template) are set; choose one",
        ));
    }
    if cfg.text.is_none() && cfg.text_file.is_none() && cfg.image.is_none() {
        return Err(Error::data(
            &shown,
            "the manifest config names no text (text or text_file) and no image",
        ));
    }
    if cfg.image.is_some() {
        if cfg.channels != 1 && cfg.channels != 3 {
            return Err(Error::data(
                &shown,
                format!("channels must be 1 (luma) or 3 (RGB), not {}", cfg.channels),
            ));
        }
        let [h, w] = cfg.image_size;
        if h == 0 || w == 0 || h > 1 << 16 || w > 1 << 16 {
            return Err(Error::data(
                &shown,
                format!("image_size {h}x{w} must be between 1 and 65536"),
            ));
        }
    }
    if let Some(classes) = &cfg.classes {
        let unique: BTreeSet<&String> = classes.iter().collect();
        if classes.is_empty() || unique.len() != classes.len() {
            return Err(Error::data(
                &shown,
                format!("classes must be non-empty and distinct, got {classes:?}"),
            ));
        }
    }

    let template = |t: &Option<String>, field| match t {
        Some(t) => Template::parse(t, field)
            .map(Some)
            .map_err(|m| Error::data(&shown, m)),
        None => Ok(None),
    };
    let mut text_tpl = template(&cfg.text_file, "text_file")?;
    let mut image_tpl = template(&cfg.image, "image")?;

    let (columns, rows) = read_table(path, format, cfg.header)?;
    if rows.is_empty() {
        return Err(Error::data(
            &shown,
            "the manifest has no rows (a header at most)",
        ));
    }
    let header_err = |m: String| {
        let at = if columns_fixed(format) {
            format!("{shown}:1")
        } else {
            shown.to_string()
        };
        Error::data(at, m)
    };
    let label_col = columns.require(&cfg.label, "label").map_err(header_err)?;
    let text_col = match &cfg.text {
        Some(c) => Some(columns.require(c, "text").map_err(header_err)?),
        None => None,
    };
    let id_col = match &cfg.id {
        Some(c) => Some(columns.require(c, "id").map_err(header_err)?),
        None => None,
    };
    for t in [&mut text_tpl, &mut image_tpl].into_iter().flatten() {
        t.bind(&columns).map_err(header_err)?;
    }
    let base = path.parent().unwrap_or(Path::new("")).to_path_buf();

    // Pass 1: the row contents (labels, ids, inline texts, file paths).
    // Content problems are always errors; file problems follow on_missing.
    let mut content_problems: Vec<String> = Vec::new();
    let mut raw_labels: Vec<String> = Vec::with_capacity(rows.len());
    let mut ids = Vec::with_capacity(rows.len());
    let mut inline_texts = Vec::with_capacity(rows.len());
    let mut jobs = Vec::with_capacity(rows.len());
    let mut path_problems: Vec<Vec<String>> = Vec::with_capacity(rows.len());
    for row in &rows {
        let line = row.line;
        let label = match row.get(label_col) {
            Some(l) if !l.is_empty() => l.to_string(),
            _ => {
                content_problems.push(format!("line {line}: no label in column {:?}", cfg.label));
                String::new()
            }
        };
        raw_labels.push(label);
        ids.push(match id_col.and_then(|c| row.get(c)) {
            Some(id) if !id.is_empty() => id.to_string(),
            _ => format!("line {line}"),
        });
        inline_texts.push(match text_col {
            Some(c) => match row.get(c) {
                Some(t) => t.to_string(),
                None => {
                    content_problems.push(format!(
                        "line {line}: no value in text column {:?}",
                        columns.names[c]
                    ));
                    String::new()
                }
            },
            None => String::new(),
        });
        let mut problems = Vec::new();
        let mut resolve = |tpl: &Option<Template>| match tpl {
            None => None,
            Some(t) => match t.fill(row) {
                Ok(rel) => Some(base.join(rel)),
                Err(m) => {
                    problems.push(m);
                    None
                }
            },
        };
        let job = FileJob {
            text: resolve(&text_tpl),
            image: resolve(&image_tpl),
        };
        jobs.push(job);
        path_problems.push(problems);
    }

    // The class list and label indices.
    let classes: Vec<String> = match (&cfg.classes, cfg.labels) {
        (Some(c), _) => c.clone(),
        (None, LabelKind::Names) => raw_labels
            .iter()
            .filter(|l| !l.is_empty())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .cloned()
            .collect(),
        (None, LabelKind::Integers) => {
            let max = raw_labels
                .iter()
                .filter_map(|l| l.parse::<u32>().ok())
                .max();
            (0..=max.unwrap_or(0)).map(|i| i.to_string()).collect()
        }
    };
    let class_index: HashMap<&str, u32> = classes
        .iter()
        .enumerate()
        .map(|(i, c)| (c.as_str(), i as u32))
        .collect();
    let mut labels = Vec::with_capacity(rows.len());
    for (row, raw) in rows.iter().zip(&raw_labels) {
        if raw.is_empty() {
            labels.push(0);
            continue;
        }
        let found = match cfg.labels {
            LabelKind::Names => class_index.get(raw.as_str()).copied(),
            LabelKind::Integers => match raw.parse::<u32>() {
                Ok(i) if (i as usize) < classes.len() => Some(i),
                Ok(_) => None,
                Err(_) => {
                    content_problems.push(format!(
                        "line {}: label {raw:?} is not a non-negative integer (labels: Integers)",
                        row.line
                    ));
                    labels.push(0);
                    continue;
                }
            },
        };
        match found {
            Some(i) => labels.push(i),
            None => {
                content_problems.push(format!(
                    "line {}: label {raw:?} is not in the class list {classes:?}",
                    row.line
                ));
                labels.push(0);
            }
        }
    }
    if !content_problems.is_empty() {
        return Err(Error::data(
            &shown,
            list_problems(&content_problems, "rows"),
        ));
    }

    // Pass 2: the files, in parallel (JPEG decoding dominates).
    let loaded = parallel_map(jobs.len(), |i| {
        if path_problems[i].is_empty() {
            load_files(&jobs[i], cfg)
        } else {
            Err(Vec::new())
        }
    });

    let (h, w) = (cfg.image_size[0], cfg.image_size[1]);
    let c = cfg.channels;
    let with_images = image_tpl.is_some();
    let mut ds = Dataset {
        texts: Vec::new(),
        images: Vec::new(),
        image_shape: if with_images { [h, w, c] } else { [0, 0, 0] },
        labels: Vec::new(),
        classes,
    };
    let mut kept_ids = Vec::new();
    let mut skipped = Vec::new();
    let mut file_problems: Vec<String> = Vec::new();
    for (i, result) in loaded.into_iter().enumerate() {
        let line = rows[i].line;
        let mut problems = std::mem::take(&mut path_problems[i]);
        match result {
            Ok((text, pixels)) if problems.is_empty() => {
                ds.texts
                    .push(text.unwrap_or_else(|| std::mem::take(&mut inline_texts[i])));
                ds.images.extend_from_slice(&pixels);
                ds.labels.push(labels[i]);
                kept_ids.push(std::mem::take(&mut ids[i]));
            }
            Ok(_) => {}
            Err(p) => problems.extend(p),
        }
        if !problems.is_empty() {
            file_problems.extend(problems.iter().map(|p| format!("line {line}: {p}")));
            skipped.push(SkippedRow {
                line,
                id: std::mem::take(&mut ids[i]),
                problems,
            });
        }
    }
    if !skipped.is_empty() && cfg.on_missing == OnMissing::Error {
        let mut m = format!(
            "{} of {} rows name missing or undecodable files (set on_missing: Skip to skip them):",
            skipped.len(),
            rows.len()
        );
        for p in &file_problems {
            let _ = write!(m, "\n  {p}");
        }
        return Err(Error::data(&shown, m));
    }
    if ds.is_empty() {
        return Err(Error::data(
            &shown,
            format!(
                "every one of the {} rows was skipped for missing or undecodable files, e.g. {}",
                rows.len(),
                file_problems.first().map(String::as_str).unwrap_or("")
            ),
        ));
    }
    Ok(Manifest {
        dataset: ds,
        ids: kept_ids,
        skipped,
    })
}

fn columns_fixed(format: ManifestFormat) -> bool {
    format != ManifestFormat::Jsonl
}

fn list_problems(problems: &[String], what: &str) -> String {
    let mut m = format!("{} problems in the {what}:", problems.len());
    for p in problems.iter().take(MAX_LISTED) {
        let _ = write!(m, "\n  {p}");
    }
    if problems.len() > MAX_LISTED {
        let _ = write!(m, "\n  … and {} more", problems.len() - MAX_LISTED);
    }
    m
}
