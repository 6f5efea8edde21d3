//! Classification metrics for a run's report: accuracy, per-class
//! precision / recall / F1, macro-F1, the confusion matrix, the
//! majority-class baseline, per-epoch training figures and mean ± std over
//! seeds.
//!
//! Class ids are `u32`, as in [`crate::data::Dataset::labels`].
//!
//! Conventions for ratios whose denominator is zero (the same as
//! scikit-learn's `zero_division=0`):
//! - a class never predicted has precision 0 (0 true positives out of 0
//!   predictions; "undefined" is reported as 0, so a model that never
//!   answers a class is not rewarded for it);
//! - a class absent from the labels has recall 0;
//! - F1 is 0 when precision + recall is 0.
//!
//! Macro-F1 averages F1 over the classes that occur in the labels OR the
//! predictions (scikit-learn's default label set). A class that occurs in
//! neither has no evidence either way and is left out of the average; it
//! still appears, with support 0, in [`Classification::per_class`].

use ndarray::ArrayView2;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

const OP: &str = "metrics";

/// Figures of one training epoch, one row of `metrics.csv` / `metrics.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    /// 1-based epoch number.
    pub epoch: usize,
    /// Mean training loss over the epoch's batches.
    pub train_loss: f64,
    /// Accuracy of the training steps' own predictions over the epoch (as
    /// Keras reports it: dropout active, the parameters moving during the
    /// epoch), not a separate pass over the training set.
    pub train_accuracy: f64,
    /// `None` when the run holds out no validation set
    /// (`validation_split: 0.0`).
    pub val_loss: Option<f64>,
    pub val_accuracy: Option<f64>,
    /// The learning rate the epoch trained with (schedules change it).
    #[serde(default)]
    pub learning_rate: f64,
    /// Training samples per second of wall time over the epoch.
    pub samples_per_second: f64,
    /// Wall time of the epoch in seconds (training and validation).
    pub seconds: f64,
}

/// Precision, recall and F1 of one class (see the module notes for the
/// zero-denominator conventions).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassMetrics {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    /// Samples whose label is this class.
    pub support: u64,
    /// Samples predicted as this class.
    pub predicted: u64,
}

/// Metrics of predictions against labels over `classes` classes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Classification {
    pub classes: usize,
    pub samples: u64,
    pub accuracy: f64,
    pub macro_f1: f64,
    /// Indexed by class id.
    pub per_class: Vec<ClassMetrics>,
    /// `confusion[true][predicted]`: rows are the true class, columns the
    /// predicted one.
    pub confusion: Vec<Vec<u64>>,
}

impl Classification {
    /// Metrics from predicted class ids and labels (same length, non-empty,
    /// every id `< classes`).
    pub fn from_predictions(predicted: &[u32], labels: &[u32], classes: usize) -> Result<Self> {
        if predicted.len() != labels.len() {
            return Err(Error::shape(
                OP,
                format!(
                    "{} predictions for {} labels",
                    predicted.len(),
                    labels.len()
                ),
            ));
        }
        if labels.is_empty() {
            return Err(Error::shape(OP, "no samples to evaluate"));
        }
        if classes == 0 {
            return Err(Error::shape(OP, "zero classes"));
        }
        check_ids("label", labels, classes)?;
        check_ids("prediction", predicted, classes)?;

        let mut confusion = vec![vec![0u64; classes]; classes];
        for (&p, &t) in predicted.iter().zip(labels) {
            confusion[t as usize][p as usize] += 1;
        }
        let samples = labels.len() as u64;
        let correct: u64 = (0..classes).map(|c| confusion[c][c]).sum();

        let per_class: Vec<ClassMetrics> = (0..classes)
            .map(|c| {
                let tp = confusion[c][c];
                let support: u64 = confusion[c].iter().sum();
                let predicted: u64 = confusion.iter().map(|row| row[c]).sum();
                let precision = ratio(tp, predicted);
                let recall = ratio(tp, support);
                let f1 = if precision + recall > 0.0 {
                    2.0 * precision * recall / (precision + recall)
                } else {
                    0.0
                };
                ClassMetrics {
                    precision,
                    recall,
                    f1,
                    support,
                    predicted,
                }
            })
            .collect();

        let seen: Vec<&ClassMetrics> = per_class
            .iter()
            .filter(|m| m.support > 0 || m.predicted > 0)
            .collect();
        // Non-empty input guarantees at least one class is seen.
        let macro_f1 = seen.iter().map(|m| m.f1).sum::<f64>() / seen.len() as f64;

        Ok(Classification {
            classes,
            samples,
            accuracy: correct as f64 / samples as f64,
            macro_f1,
            per_class,
            confusion,
        })
    }

    /// Metrics from class probabilities (or logits) `[N, C]`: each row's
    /// prediction is its arg-max, the lowest id on ties.
    pub fn from_probabilities(probs: ArrayView2<f32>, labels: &[u32]) -> Result<Self> {
        let predicted = argmax_rows(probs)?;
        Classification::from_predictions(&predicted, labels, probs.ncols())
    }
}

/// Arg-max of each row of `[N, C]` scores, the lowest id on ties. Errors on
/// a non-finite score (a diverged model should not get a silent class 0).
pub fn argmax_rows(scores: ArrayView2<f32>) -> Result<Vec<u32>> {
    if scores.ncols() == 0 {
        return Err(Error::shape(
            OP,
            format!("scores of shape {:?} have no classes", scores.shape()),
        ));
    }
    scores
        .rows()
        .into_iter()
        .enumerate()
        .map(|(i, row)| {
            let mut best = 0usize;
            for (c, &v) in row.iter().enumerate() {
                if !v.is_finite() {
                    return Err(Error::shape(
                        OP,
                        format!("score [{i}, {c}] is {v}, not a finite number"),
                    ));
                }
                if v > row[best] {
                    best = c;
                }
            }
            Ok(best as u32)
        })
        .collect()
}

/// The majority class of `labels`: the most frequent id, the lowest on ties.
pub fn majority_class(labels: &[u32], classes: usize) -> Result<u32> {
    if labels.is_empty() {
        return Err(Error::shape(OP, "no labels to find a majority class in"));
    }
    check_ids("label", labels, classes)?;
    let mut counts = vec![0u64; classes];
    for &l in labels {
        counts[l as usize] += 1;
    }
    let mut best = 0usize;
    for (c, &n) in counts.iter().enumerate() {
        if n > counts[best] {
            best = c;
        }
    }
    Ok(best as u32)
}

/// The baseline a model must beat: always answer the TRAINING set's
/// majority class, scored on the evaluated set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MajorityBaseline {
    /// The majority class of the training labels.
    pub class: u32,
    pub accuracy: f64,
    pub macro_f1: f64,
}

/// Scores the constant answer "the majority class of `train_labels`" on
/// `eval_labels`. The class comes from the training labels (what a model
/// could learn without looking at any input), not from the evaluated set.
pub fn majority_baseline(
    train_labels: &[u32],
    eval_labels: &[u32],
    classes: usize,
) -> Result<MajorityBaseline> {
    let class = majority_class(train_labels, classes)?;
    let constant = vec![class; eval_labels.len()];
    let m = Classification::from_predictions(&constant, eval_labels, classes)?;
    Ok(MajorityBaseline {
        class,
        accuracy: m.accuracy,
        macro_f1: m.macro_f1,
    })
}

/// Mean and standard deviation of one metric over repeated runs (seeds).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct MeanStd {
    pub mean: f64,
    /// Sample standard deviation (divides by n − 1, the usual choice for a
    /// handful of seeds); 0 for a single value.
    pub std: f64,
    /// Number of values.
    pub n: usize,
}

impl std::fmt::Display for MeanStd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let p = f.precision().unwrap_or(4);
        write!(f, "{:.p$} ± {:.p$}", self.mean, self.std)
    }
}

/// Mean ± sample standard deviation of `values` (e.g. one metric's test
/// values over seeds). Errors on an empty slice.
pub fn mean_std(values: &[f64]) -> Result<MeanStd> {
    if values.is_empty() {
        return Err(Error::shape(OP, "mean ± std of no values"));
    }
    let n = values.len();
    let mean = values.iter().sum::<f64>() / n as f64;
    let std = if n > 1 {
        let ss: f64 = values.iter().map(|v| (v - mean) * (v - mean)).sum();
        (ss / (n - 1) as f64).sqrt()
    } else {
        0.0
    };
    Ok(MeanStd { mean, std, n })
}

fn ratio(num: u64, den: u64) -> f64 {
    if den == 0 {
        0.0
    } else {
        num as f64 / den as f64
    }
}

fn check_ids(what: &str, ids: &[u32], classes: usize) -> Result<()> {
    match ids.iter().position(|&id| id as usize >= classes) {
        Some(i) => Err(Error::shape(
            OP,
            format!(
                "{what} {} at index {i} is out of range for {classes} classes",
                ids[i]
            ),
        )),
        None => Ok(()),
    }
}
