//! The crate's one error type. The `tokenizers` crate reports errors as boxed
//! trait objects; they are flattened to messages here so callers (and the
//! Python bindings) see one descriptive type.
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum TokensError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a valid tokenizer file: {message}")]
    BadFile { path: PathBuf, message: String },
    #[error("not a valid tokenizer JSON: {0}")]
    BadJson(String),
    #[error("invalid vocabulary: {0}")]
    BadVocab(String),
    #[error("unknown token id {id} (vocabulary size {vocab_size})")]
    UnknownId { id: u32, vocab_size: usize },
    #[error("invalid training options: {0}")]
    BadOptions(String),
    #[error("unsupported tokenizer: {0}")]
    Unsupported(String),
    #[error("tokenizer error: {0}")]
    Tokenizer(String),
}

pub type Result<T> = std::result::Result<T, TokensError>;

impl TokensError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        TokensError::Io { path: path.into(), source }
    }
}

/// Errors coming out of the `tokenizers` crate while encoding/decoding.
pub(crate) fn tk(e: tokenizers::Error) -> TokensError {
    TokensError::Tokenizer(e.to_string())
}
