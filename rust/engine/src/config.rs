//! The model config: one definition shared with the trainer, in the `nct-config` crate
//! (`rust/config`), read from a GGUF file's `nct.config` / llama keys or an HF directory's
//! `config.json` (whose extra keys, such as `architectures`, are ignored).
pub use nct_config::{FfnActivation, LoopConfig, ModelConfig};

use crate::error::{EngineError, Result};

/// Parses and validates a config, ignoring keys that are not config fields.
pub fn parse(json: &str) -> Result<ModelConfig> {
    ModelConfig::from_json_lenient(json).map_err(config_err)
}

/// A config error as an [`EngineError::Config`].
pub fn config_err(e: nct_config::ConfigError) -> EngineError {
    EngineError::Config(match e {
        nct_config::ConfigError::Parse(e) => format!("config JSON: {e}"),
        nct_config::ConfigError::Invalid { field, value, reason } => format!("{field} = {value}: {reason}"),
        other => other.to_string(),
    })
}

/// An early-exit threshold must lie in (0, 1]; below 1 it needs an exit gate.
pub fn check_threshold(threshold: f64, exit_gate: bool) -> Result<()> {
    nct_config::check_exit_threshold("exit_threshold", threshold, exit_gate).map_err(config_err)
}
