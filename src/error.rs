//! One error type for the whole engine. The bindings map each variant to a Python
//! exception class once (`src/bindings/errors.rs`); nothing in the engine panics on
//! user input.

use std::path::PathBuf;

/// Everything that can go wrong in steerlab's engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file that was asked for does not exist.
    #[error("{path}: file not found ({what})")]
    NotFound { path: PathBuf, what: String },

    /// An I/O failure other than "not found".
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A model, tokenizer or vector file is truncated, corrupt or not what it claims.
    #[error("{0}")]
    Format(String),

    /// The file is valid but describes something steerlab does not implement.
    #[error("{0}")]
    Unsupported(String),

    /// An argument has a bad value (negative count, NaN, unknown option...).
    #[error("{0}")]
    InvalidArgument(String),

    /// An index (layer, position, token id) is out of range.
    #[error("{0}")]
    OutOfRange(String),

    /// Array shapes / widths do not match what the model expects.
    #[error("{0}")]
    Shape(String),

    /// Prompt plus requested tokens exceed the model's context.
    #[error("{0}")]
    ContextLength(String),

    /// Tokenizer construction or encoding failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),

    /// A failure inside the tensor library (should not happen on valid input).
    #[error("tensor backend: {0}")]
    Backend(#[from] candle_core::Error),

    /// The call was stopped before it finished: its [`crate::cancel::Cancel`] was set
    /// (in Python, by Ctrl-C or a Jupyter interrupt).
    #[error("interrupted before the call finished")]
    Interrupted,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn format(msg: impl Into<String>) -> Self {
        Error::Format(msg.into())
    }
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::InvalidArgument(msg.into())
    }
    pub fn out_of_range(msg: impl Into<String>) -> Self {
        Error::OutOfRange(msg.into())
    }
    pub fn shape(msg: impl Into<String>) -> Self {
        Error::Shape(msg.into())
    }
    pub fn unsupported(msg: impl Into<String>) -> Self {
        Error::Unsupported(msg.into())
    }
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        let path = path.into();
        if source.kind() == std::io::ErrorKind::NotFound {
            Error::NotFound {
                path,
                what: source.to_string(),
            }
        } else {
            Error::Io { path, source }
        }
    }
}
