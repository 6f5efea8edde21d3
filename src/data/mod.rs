//! Data: the built-in synthetic generator, manifest loading (CSV/TSV/JSONL
//! as multimodal sets ship), the word tokenizer, image decoding, and
//! batching into the graph's input layouts.
//!
//! Every source produces a [`Dataset`]: raw texts, images already decoded
//! to `f32` in `[0, 1]` at the configured size (NHWC, one sample after the
//! other), integer labels and the class names. Tokenisation happens later,
//! with a vocabulary built from the training split only.

pub mod manifest;
pub mod synthetic;
pub mod tokenizer;

pub use manifest::{load_manifest, Manifest, ManifestConfig};
pub use tokenizer::{Padding, TokenIds, Tokenizer, TokenizerConfig, Truncation};

/// Decoded samples of one set.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Dataset {
    pub texts: Vec<String>,
    /// `len × height × width × channels` values in `[0, 1]`, NHWC.
    pub images: Vec<f32>,
    /// Image size `[height, width, channels]`.
    pub image_shape: [usize; 3],
    pub labels: Vec<u32>,
    /// Class names; `labels` index into this list.
    pub classes: Vec<String>,
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Values of one image.
    pub fn image_len(&self) -> usize {
        self.image_shape.iter().product()
    }

    /// The image of sample `i`.
    pub fn image(&self, i: usize) -> &[f32] {
        let n = self.image_len();
        &self.images[i * n..(i + 1) * n]
    }

    /// The samples at `indices`, in that order.
    pub fn select(&self, indices: &[usize]) -> Dataset {
        let mut images = Vec::with_capacity(indices.len() * self.image_len());
        for &i in indices {
            images.extend_from_slice(self.image(i));
        }
        Dataset {
            texts: indices.iter().map(|&i| self.texts[i].clone()).collect(),
            images,
            image_shape: self.image_shape,
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
            classes: self.classes.clone(),
        }
    }
}
