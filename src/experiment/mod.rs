//! Experiments: the RON schema ([`schema`]), parsing with line:column
//! errors, the model builder ([`model`]), checkpoints ([`checkpoint`]),
//! classification metrics ([`metrics`]), a run's output files
//! ([`report`]) and atomic writes ([`atomic`]).

pub mod atomic;
pub mod checkpoint;
pub mod metrics;
pub mod model;
pub mod overrides;
pub mod prepare;
pub mod report;
pub mod run;
pub mod saved;
pub mod schema;

use crate::error::{Error, Result};

/// Parses one RON value of type `T`, turning errors into
/// [`Error::Experiment`] with `file:line:column`.
pub fn parse_ron<T: serde::de::DeserializeOwned>(file: &str, source: &str) -> Result<T> {
    ron::Options::default()
        .with_default_extension(ron::extensions::Extensions::IMPLICIT_SOME)
        .from_str(source)
        .map_err(|e| Error::Experiment {
            file: file.to_string(),
            line: e.span.start.line,
            column: e.span.start.col,
            message: e.code.to_string(),
        })
}
