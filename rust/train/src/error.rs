//! The one error type of the training crate. Messages name the offending field
//! or shape and what would be accepted, so a user can fix a config file or a
//! call without reading the code.
use thiserror::Error;

#[derive(Debug, Error)]
pub enum TrainError {
    #[error("invalid config: {field} = {value}: {reason}")]
    InvalidConfig {
        field: &'static str,
        value: String,
        reason: String,
    },

    #[error("unknown preset {name:?}; available presets: {available}")]
    UnknownPreset { name: String, available: String },

    #[error("cannot parse model config JSON: {0}")]
    ConfigParse(#[from] serde_json::Error),

    #[error("cannot read config file {path}: {source}")]
    ConfigRead { path: String, source: std::io::Error },

    #[error("bad input: {0}")]
    BadInput(String),

    #[error("mHC: {0}")]
    Mhc(#[from] mhc::MhcError),

    #[error("checkpoint: {0}")]
    Checkpoint(#[from] ternary::checkpoint::CheckpointError),

    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

pub type Result<T> = std::result::Result<T, TrainError>;

impl From<nct_config::ConfigError> for TrainError {
    fn from(e: nct_config::ConfigError) -> Self {
        use nct_config::ConfigError as C;
        match e {
            C::Invalid { field, value, reason } => TrainError::InvalidConfig { field, value, reason },
            C::UnknownPreset { name, available } => TrainError::UnknownPreset { name, available },
            C::Parse(e) => TrainError::ConfigParse(e),
            C::Read { path, source } => TrainError::ConfigRead { path, source },
        }
    }
}
