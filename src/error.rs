//! The library's typed errors. Every failure names the op, layer or file it
//! concerns, so a user can tell what to fix without reading a backtrace.

use thiserror::Error;

/// Result alias used throughout the library.
pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug, Error)]
pub enum Error {
    #[error(
        "no GPU adapter found{detail}. Install Mesa's Vulkan drivers \
         (`apt-get install mesa-vulkan-drivers`, from bookworm-backports on Debian 12) \
         for the lavapipe software GPU, or run with `--backend cpu`"
    )]
    NoAdapter { detail: String },

    #[error("unknown GPU backend {0:?} in CROSSMODAL_GPU_BACKEND (expected auto, vulkan, gl, metal, dx12 or cpu)")]
    UnknownBackend(String),

    #[error("could not open the GPU device on {adapter}: {message}")]
    RequestDevice { adapter: String, message: String },

    #[error("{op}: {limit} exceeded: requested {requested}, the adapter allows {max}")]
    LimitExceeded {
        op: String,
        limit: &'static str,
        requested: u64,
        max: u64,
    },

    #[error("{op}: wgpu validation failed: {message}")]
    Validation { op: String, message: String },

    #[error("{op}: shape mismatch: {message}")]
    Shape { op: String, message: String },

    #[error("{op}: {what} is not supported: {why}")]
    Unsupported {
        op: String,
        what: String,
        why: String,
    },

    #[error("graph node {node:?}: {message}")]
    Graph { node: String, message: String },

    #[error("graph node {node:?} names an unknown input {input:?}")]
    UnknownInput { node: String, input: String },

    #[error("{file}:{line}:{column}: {message}")]
    Experiment {
        file: String,
        line: usize,
        column: usize,
        message: String,
    },

    /// An experiment or run setting that is out of range or inconsistent,
    /// named by its path (`training.batch_size`, `--set training.epochs`).
    #[error("{field}: {message}")]
    Setting { field: String, message: String },

    #[error("the graph has a cycle through {0}")]
    Cycle(String),

    #[error("reading a buffer back from the GPU failed: {0}")]
    Readback(String),

    /// A file that could not be read, written or understood (a checkpoint,
    /// a report); the message says what is wrong with it.
    #[error("{path}: {message}")]
    File { path: String, message: String },

    /// A data file (manifest, text, image, vocabulary) that is missing,
    /// undecodable or inconsistent; `path` names the file (with `:line`
    /// where one row is at fault).
    #[error("{path}: {message}")]
    Data { path: String, message: String },
}

impl Error {
    /// Shorthand for a graph error naming the node.
    pub fn graph(node: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Graph {
            node: node.into(),
            message: message.into(),
        }
    }

    /// Shorthand for a setting error naming the field.
    pub fn setting(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Setting {
            field: field.into(),
            message: message.into(),
        }
    }

    /// Shorthand for a file error naming the path.
    pub fn file(path: impl AsRef<std::path::Path>, message: impl Into<String>) -> Self {
        Error::File {
            path: path.as_ref().display().to_string(),
            message: message.into(),
        }
    }

    /// Shorthand for a data error naming the file.
    pub fn data(path: impl std::fmt::Display, message: impl Into<String>) -> Self {
        Error::Data {
            path: path.to_string(),
            message: message.into(),
        }
    }

    /// Shorthand for a shape error naming the op.
    pub fn shape(op: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Shape {
            op: op.into(),
            message: message.into(),
        }
    }
}
