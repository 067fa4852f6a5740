//! The runner's error type: one enum for every failure a caller can act on, so the CLI,
//! the HTTP server and the SageMaker contract can all report a clear message.

use std::path::PathBuf;

/// Everything that can go wrong in the runner.
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    /// A libtorch operation failed (shape mismatch, out of memory, missing CUDA, …).
    #[error("torch: {0}")]
    Torch(#[from] tch::TchError),
    /// Reading, writing or transforming an image failed (the message names the file).
    #[error("image: {0}")]
    Image(#[from] medlabel_imaging::ImageError),
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A JSON document (model config, request, hyperparameters) was malformed.
    #[error("{what}: {source}")]
    Json {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    /// A request or configuration is inconsistent (bad sizes, unknown device, empty data).
    #[error("invalid input: {0}")]
    Invalid(String),
    /// The CUDA driver or NVRTC failed (only on machines that have them).
    #[error("cuda: {0}")]
    Cuda(String),
    /// Training was stopped on request before it finished.
    #[error("stopped on request")]
    Stopped,
}

/// Shorthand used across the crate.
pub type Result<T, E = RunnerError> = std::result::Result<T, E>;

impl RunnerError {
    /// An [`RunnerError::Invalid`] from anything printable.
    pub fn invalid(msg: impl Into<String>) -> Self {
        Self::Invalid(msg.into())
    }

    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    /// Wraps a JSON error with what was being parsed or written.
    pub fn json(what: impl Into<String>, source: serde_json::Error) -> Self {
        Self::Json {
            what: what.into(),
            source,
        }
    }
}
