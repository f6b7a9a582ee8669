//! Model hyper-parameters as the engine needs them. Same fields and JSON names as the training
//! `ModelConfig` (`rust/train/src/config.rs`, which this pure-Rust crate cannot depend on because
//! it links libtorch), read from a GGUF file's metadata or an HF directory's `config.json`.

use serde::{Deserialize, Serialize};

use crate::error::{EngineError, Result};

/// The FFN non-linearity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum FfnActivation {
    /// down(silu(gate·x) ⊙ up·x)
    #[default]
    Swiglu,
    /// down(relu(up·x)²)
    Relu2,
}

fn default_rope_theta() -> f64 {
    10_000.0
}
fn default_norm_eps() -> f64 {
    1e-5
}
fn default_true() -> bool {
    true
}
fn default_streams() -> usize {
    1
}
fn default_threshold() -> f64 {
    1.0
}

/// LoopLM: the `n_layers` blocks applied `loops` times, with an optional exit gate (tensors
/// `exit_gate.weight`, `exit_gate.bias`) and the default early-exit threshold. Same JSON as the
/// training crate's `LoopConfig`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoopConfig {
    pub loops: usize,
    #[serde(default)]
    pub exit_gate: bool,
    /// A training setting (β of the exit entropy), carried through unchanged.
    #[serde(default)]
    pub entropy_weight: f64,
    #[serde(default = "default_threshold")]
    pub exit_threshold: f64,
}

/// An early-exit threshold must lie in (0, 1]; below 1 it needs an exit gate.
pub fn check_threshold(threshold: f64, exit_gate: bool) -> Result<()> {
    if !(threshold > 0.0 && threshold <= 1.0) {
        return Err(bad(format!("exit_threshold {threshold} must lie in (0, 1]")));
    }
    if threshold < 1.0 && !exit_gate {
        return Err(bad(format!("exit_threshold {threshold} < 1 needs a LoopLM model with an exit gate")));
    }
    Ok(())
}

/// Hyper-parameters; unknown JSON keys are ignored so HF `config.json` extras
/// (`architectures`, `quantization`, ...) pass through.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    #[serde(default)]
    pub name: String,
    pub vocab_size: usize,
    pub dim: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub ffn_hidden: usize,
    #[serde(default)]
    pub ffn_activation: FfnActivation,
    pub max_seq_len: usize,
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    #[serde(default = "default_norm_eps")]
    pub norm_eps: f64,
    #[serde(default = "default_true")]
    pub tie_embeddings: bool,
    #[serde(default = "default_streams")]
    pub mhc_streams: usize,
    /// LoopLM (absent: the blocks run once).
    #[serde(rename = "loop", default, skip_serializing_if = "Option::is_none")]
    pub looping: Option<LoopConfig>,
}

fn bad(msg: String) -> EngineError {
    EngineError::Config(msg)
}

impl ModelConfig {
    pub fn from_json(json: &str) -> Result<Self> {
        let config: Self = serde_json::from_str(json).map_err(|e| bad(format!("config JSON: {e}")))?;
        config.validate()?;
        Ok(config)
    }

    /// Every constraint the forward pass relies on.
    pub fn validate(&self) -> Result<()> {
        for (field, value) in [
            ("vocab_size", self.vocab_size),
            ("dim", self.dim),
            ("n_layers", self.n_layers),
            ("n_heads", self.n_heads),
            ("n_kv_heads", self.n_kv_heads),
            ("ffn_hidden", self.ffn_hidden),
            ("max_seq_len", self.max_seq_len),
        ] {
            if value == 0 {
                return Err(bad(format!("{field} must be at least 1")));
            }
            // Bounds far above any real model keep later size arithmetic overflow-free.
            if value > (1 << 24) {
                return Err(bad(format!("{field} = {value} is implausibly large")));
            }
        }
        if !self.dim.is_multiple_of(self.n_heads) || !self.head_dim().is_multiple_of(2) {
            return Err(bad(format!("n_heads {} must divide dim {} into an even head_dim", self.n_heads, self.dim)));
        }
        if !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return Err(bad(format!("n_kv_heads {} must divide n_heads {}", self.n_kv_heads, self.n_heads)));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 1.0) {
            return Err(bad(format!("rope_theta {} must be a finite number > 1", self.rope_theta)));
        }
        if !(self.norm_eps.is_finite() && self.norm_eps > 0.0) {
            return Err(bad(format!("norm_eps {} must be a finite number > 0", self.norm_eps)));
        }
        if ![1, 2, 4].contains(&self.mhc_streams) {
            return Err(bad(format!("mhc_streams {} must be 1, 2 or 4", self.mhc_streams)));
        }
        if let Some(l) = &self.looping {
            if l.loops < 1 || l.loops > 64 {
                return Err(bad(format!("loop.loops {} must lie in 1..=64", l.loops)));
            }
            if l.exit_gate && l.loops < 2 {
                return Err(bad("loop.exit_gate needs loops >= 2".into()));
            }
            check_threshold(l.exit_threshold, l.exit_gate)?;
        }
        Ok(())
    }

    pub fn head_dim(&self) -> usize {
        self.dim / self.n_heads
    }

    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim()
    }

    /// T, how many times the block stack runs.
    pub fn loops(&self) -> usize {
        self.looping.as_ref().map_or(1, |l| l.loops)
    }

    pub fn exit_gate(&self) -> bool {
        self.looping.as_ref().is_some_and(|l| l.exit_gate)
    }

    /// The model's own early-exit threshold (1.0 = full depth).
    pub fn exit_threshold(&self) -> f64 {
        self.looping.as_ref().map_or(1.0, |l| l.exit_threshold)
    }

    /// `nanochat-ternary-loop` for a LoopLM model (T > 1: no loader that does not know loops
    /// may open it), `llama` when llama.cpp can run it (one stream, SwiGLU), else
    /// `nanochat-ternary`.
    pub fn architecture(&self) -> &'static str {
        if self.loops() > 1 {
            "nanochat-ternary-loop"
        } else if self.mhc_streams == 1 && self.ffn_activation == FfnActivation::Swiglu {
            "llama"
        } else {
            "nanochat-ternary"
        }
    }

    /// The config JSON plus `"architecture"`.
    pub fn to_json_with_architecture(&self, architecture: &str) -> String {
        let mut value = serde_json::to_value(self).unwrap_or(serde_json::Value::Null);
        if let serde_json::Value::Object(map) = &mut value {
            map.insert("architecture".into(), serde_json::Value::String(architecture.into()));
        }
        serde_json::to_string_pretty(&value).unwrap_or_default()
    }
}
