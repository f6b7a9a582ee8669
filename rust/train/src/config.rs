//! The model config: one definition shared with the engine, in the `nct-config` crate
//! (`rust/config`). Its errors convert into [`crate::TrainError`].
pub use nct_config::{check_exit_threshold, ConfigError, FfnActivation, LoopConfig, ModelConfig, MAX_LOOPS, PRESET_NAMES};
