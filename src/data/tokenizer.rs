//! Word-level tokenizer: lowercase, punctuation split from words, a
//! vocabulary built from the training split's texts only, and Keras-style
//! padding and truncation into fixed-length id sequences.
//!
//! Ids: 0 = PAD, 1 = OOV, words from 2 in order of decreasing frequency
//! (ties broken by the word's byte order, so the vocabulary does not
//! depend on the order of the texts). `vocab_size` counts PAD and OOV, so
//! it equals the embedding's row count: `vocab_size = 10000` keeps the
//! 9998 most frequent words, as Keras `Tokenizer(num_words=10000,
//! oov_token=…)` does.
//!
//! Splitting: runs of letters/digits (and `_`) form words; an apostrophe
//! (`'` or `’`) between two word characters stays inside the word
//! (`don't`); every other non-space character is a token of its own
//! (`!`, `#`, an emoji), since punctuation carries sentiment. Variation
//! selectors and zero-width joiners are dropped.
//!
//! Padding and truncation default to `Pre`, as Keras `pad_sequences`
//! (`padding='pre', truncating='pre'`): zeros first, and a long text keeps
//! its last `seq_len` tokens, so an LSTM's last state follows the last
//! real tokens.
//!
//! The tokenizer serializes to JSON (saved beside a checkpoint); loading
//! checks the word list.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Id of padding steps.
pub const PAD: u32 = 0;
/// Id of words outside the vocabulary.
pub const OOV: u32 = 1;
/// First word id.
pub const FIRST_WORD: u32 = 2;

/// Where padding zeros go.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Padding {
    /// Zeros first (Keras default).
    #[default]
    Pre,
    /// Zeros last.
    Post,
}

/// Which end of a long text is cut.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Truncation {
    /// Drop the first tokens, keep the last `seq_len` (Keras default).
    #[default]
    Pre,
    /// Drop the last tokens, keep the first `seq_len`.
    Post,
}

/// Vocabulary settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenizerConfig {
    /// Ids in all, PAD and OOV included (the embedding's rows); at least 2.
    pub vocab_size: usize,
    #[serde(default = "yes")]
    pub lowercase: bool,
}

fn yes() -> bool {
    true
}

impl Default for TokenizerConfig {
    fn default() -> Self {
        Self {
            vocab_size: 10000,
            lowercase: true,
        }
    }
}

/// Splits a text into tokens (lowercased when asked).
pub fn split_words(text: &str, lowercase: bool) -> Vec<String> {
    let is_word = |c: char| c.is_alphanumeric() || c == '_';
    let is_apostrophe = |c: char| c == '\'' || c == '\u{2019}';
    let chars: Vec<char> = text
        .chars()
        .filter(|&c| !matches!(c, '\u{fe0e}' | '\u{fe0f}' | '\u{200d}'))
        .collect();
    let mut out = Vec::new();
    let mut word = String::new();
    for (i, &c) in chars.iter().enumerate() {
        let inner_apostrophe =
            is_apostrophe(c) && !word.is_empty() && chars.get(i + 1).is_some_and(|&n| is_word(n));
        if is_word(c) || inner_apostrophe {
            word.push(c);
            continue;
        }
        if !word.is_empty() {
            out.push(std::mem::take(&mut word));
        }
        if !c.is_whitespace() {
            out.push(c.to_string());
        }
    }
    if !word.is_empty() {
        out.push(word);
    }
    if lowercase {
        for w in &mut out {
            *w = w.to_lowercase();
        }
    }
    out
}

/// Token ids of `n` texts, sample-major `[n, seq_len]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenIds {
    pub ids: Vec<u32>,
    pub seq_len: usize,
}

impl TokenIds {
    pub fn len(&self) -> usize {
        self.ids.len().checked_div(self.seq_len).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The ids of sample `i`.
    pub fn row(&self, i: usize) -> &[u32] {
        &self.ids[i * self.seq_len..(i + 1) * self.seq_len]
    }

    /// The samples at `indices` as a time-major `[T, B]` batch (the graph's
    /// token layout): element `t * B + b` is token `t` of sample
    /// `indices[b]`.
    pub fn time_major(&self, indices: &[usize]) -> Vec<u32> {
        let b = indices.len();
        let mut out = vec![PAD; self.seq_len * b];
        for (j, &i) in indices.iter().enumerate() {
            for (t, &id) in self.row(i).iter().enumerate() {
                out[t * b + j] = id;
            }
        }
        out
    }
}

/// A fitted word-level tokenizer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "TokenizerFile", into = "TokenizerFile")]
pub struct Tokenizer {
    config: TokenizerConfig,
    /// Word of id `FIRST_WORD + i`.
    words: Vec<String>,
    index: HashMap<String, u32>,
}

/// The serialized form: settings and the word list by id.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenizerFile {
    vocab_size: usize,
    lowercase: bool,
    pad_id: u32,
    oov_id: u32,
    /// Words of ids 2, 3, ….
    words: Vec<String>,
}

impl From<Tokenizer> for TokenizerFile {
    fn from(t: Tokenizer) -> Self {
        Self {
            vocab_size: t.config.vocab_size,
            lowercase: t.config.lowercase,
            pad_id: PAD,
            oov_id: OOV,
            words: t.words,
        }
    }
}

impl TryFrom<TokenizerFile> for Tokenizer {
    type Error = String;

    fn try_from(f: TokenizerFile) -> std::result::Result<Self, String> {
        if f.pad_id != PAD || f.oov_id != OOV {
            return Err(format!(
                "pad_id {} / oov_id {} differ from this version's {PAD} / {OOV}",
                f.pad_id, f.oov_id
            ));
        }
        let config = TokenizerConfig {
            vocab_size: f.vocab_size,
            lowercase: f.lowercase,
        };
        Tokenizer::from_words(config, f.words).map_err(|e| e.to_string())
    }
}

impl Tokenizer {
    /// Builds the vocabulary from `texts` (the training split only).
    pub fn fit<S: AsRef<str>>(config: TokenizerConfig, texts: &[S]) -> Result<Self> {
        check_config(&config)?;
        let mut counts: HashMap<String, u64> = HashMap::new();
        for t in texts {
            for w in split_words(t.as_ref(), config.lowercase) {
                *counts.entry(w).or_insert(0) += 1;
            }
        }
        let mut by_freq: Vec<(String, u64)> = counts.into_iter().collect();
        by_freq.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        by_freq.truncate(config.vocab_size - FIRST_WORD as usize);
        Self::from_words(config, by_freq.into_iter().map(|(w, _)| w).collect())
    }

    /// A tokenizer with a given word list (ids from 2, in order).
    pub fn from_words(config: TokenizerConfig, words: Vec<String>) -> Result<Self> {
        check_config(&config)?;
        if words.len() + FIRST_WORD as usize > config.vocab_size {
            return Err(Error::data(
                "tokenizer",
                format!(
                    "{} words do not fit vocab_size {} (2 ids are PAD and OOV)",
                    words.len(),
                    config.vocab_size
                ),
            ));
        }
        let mut index = HashMap::with_capacity(words.len());
        for (i, w) in words.iter().enumerate() {
            if w.is_empty() {
                return Err(Error::data("tokenizer", format!("word {i} is empty")));
            }
            if index.insert(w.clone(), FIRST_WORD + i as u32).is_some() {
                return Err(Error::data(
                    "tokenizer",
                    format!("the word {w:?} appears twice"),
                ));
            }
        }
        Ok(Self {
            config,
            words,
            index,
        })
    }

    pub fn config(&self) -> &TokenizerConfig {
        &self.config
    }

    /// Ids in use: PAD, OOV and the words (at most `vocab_size`).
    pub fn len(&self) -> usize {
        self.words.len() + FIRST_WORD as usize
    }

    /// Never true: PAD and OOV always exist.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Words by id minus 2.
    pub fn words(&self) -> &[String] {
        &self.words
    }

    /// The id of one token (already split and lowercased), OOV if unknown.
    pub fn id(&self, word: &str) -> u32 {
        self.index.get(word).copied().unwrap_or(OOV)
    }

    /// The word of an id: `<pad>` and `<oov>` for the two reserved ids.
    pub fn word(&self, id: u32) -> Option<&str> {
        match id {
            PAD => Some("<pad>"),
            OOV => Some("<oov>"),
            _ => self
                .words
                .get((id - FIRST_WORD) as usize)
                .map(String::as_str),
        }
    }

    /// All ids of a text, no padding or truncation.
    pub fn ids(&self, text: &str) -> Vec<u32> {
        split_words(text, self.config.lowercase)
            .iter()
            .map(|w| self.id(w))
            .collect()
    }

    /// One text as exactly `seq_len` ids.
    pub fn encode_one(
        &self,
        text: &str,
        seq_len: usize,
        padding: Padding,
        truncation: Truncation,
    ) -> Vec<u32> {
        let ids = self.ids(text);
        let kept = if ids.len() > seq_len {
            match truncation {
                Truncation::Pre => &ids[ids.len() - seq_len..],
                Truncation::Post => &ids[..seq_len],
            }
        } else {
            &ids[..]
        };
        let mut out = vec![PAD; seq_len];
        match padding {
            Padding::Pre => out[seq_len - kept.len()..].copy_from_slice(kept),
            Padding::Post => out[..kept.len()].copy_from_slice(kept),
        }
        out
    }

    /// Texts as sample-major `[n, seq_len]` ids.
    pub fn encode<S: AsRef<str>>(
        &self,
        texts: &[S],
        seq_len: usize,
        padding: Padding,
        truncation: Truncation,
    ) -> TokenIds {
        let mut ids = Vec::with_capacity(texts.len() * seq_len);
        for t in texts {
            ids.extend(self.encode_one(t.as_ref(), seq_len, padding, truncation));
        }
        TokenIds { ids, seq_len }
    }

    /// Pretty JSON (saved beside a checkpoint).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a tokenizer always serializes")
    }

    /// Parses [`Tokenizer::to_json`] output; `source` names the file in
    /// errors.
    pub fn from_json(json: &str, source: &str) -> Result<Self> {
        serde_json::from_str(json)
            .map_err(|e| Error::data(source, format!("not a tokenizer vocabulary: {e}")))
    }
}

fn check_config(config: &TokenizerConfig) -> Result<()> {
    if config.vocab_size < FIRST_WORD as usize || config.vocab_size > u32::MAX as usize {
        return Err(Error::data(
            "tokenizer",
            format!(
                "vocab_size {} must be at least 2 (PAD and OOV)",
                config.vocab_size
            ),
        ));
    }
    Ok(())
}
