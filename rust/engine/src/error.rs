//! The engine's one error type: every failure names the file, tensor or argument involved.

use std::path::PathBuf;

pub type Result<T, E = EngineError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("I/O error on {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("GGUF: {0}")]
    Gguf(#[from] gguf::GgufError),
    #[error("checkpoint: {0}")]
    Checkpoint(#[from] ternary::checkpoint::CheckpointError),
    #[error("unsupported architecture '{0}' (supported: llama, nanochat-ternary, nanochat-ternary-loop)")]
    UnknownArchitecture(String),
    #[error("invalid model config: {0}")]
    Config(String),
    #[error("tensor '{name}': {reason}")]
    Tensor { name: String, reason: String },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("kernel: {0}")]
    Kernel(#[from] kernels::KernelError),
    #[error("mHC: {0}")]
    Mhc(#[from] mhc::MhcError),
    #[error("numerical failure: {0}")]
    Numerical(String),
}

impl From<nct_config::ConfigError> for EngineError {
    fn from(e: nct_config::ConfigError) -> Self {
        crate::config::config_err(e)
    }
}

pub(crate) fn tensor_err(name: &str, reason: impl Into<String>) -> EngineError {
    EngineError::Tensor { name: name.to_string(), reason: reason.into() }
}

pub(crate) fn invalid_arg(msg: impl Into<String>) -> EngineError {
    EngineError::InvalidArgument(msg.into())
}
