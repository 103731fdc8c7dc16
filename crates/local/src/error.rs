//! [`LocalError`]: why the local model could not be loaded.
//!
//! Errors while an answer is generated are [`providers::ProviderError`]s, as for every
//! other provider; this type covers start-up only, where the fix is usually on the
//! operator's side (fetch the model, point at the right file).

use std::path::PathBuf;

/// The local model could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// The model file does not exist (it is never committed: it is downloaded).
    #[error("local model not found at {}: run scripts/fetch-model to download it", path.display())]
    MissingModel {
        /// Where the file was expected.
        path: PathBuf,
    },
    /// The file exists but could not be read.
    #[error("cannot read local model {}: {source}", path.display())]
    Io {
        /// The model file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is not a GGUF model this provider understands (wrong architecture,
    /// missing tensor or metadata, unsupported quantisation).
    #[error("unsupported local model file: {0}")]
    Format(String),
    /// The tokenizer could not be built from the file's metadata.
    #[error("cannot build the tokenizer from the model's metadata: {0}")]
    Tokenizer(String),
    /// The options are inconsistent (for example zero threads).
    #[error("invalid local model options: {0}")]
    Options(String),
}

impl From<candle_core::Error> for LocalError {
    fn from(error: candle_core::Error) -> Self {
        LocalError::Format(error.to_string())
    }
}
