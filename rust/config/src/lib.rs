//! The model config shared by the trainer (`train`) and the engine (`engine`): one definition,
//! one validation. A JSON file per preset (shipped in the Python package under
//! `nanochat_ternary/configs/`, embedded here at compile time so Rust and Python read the very
//! same files), validation with messages that name the field, the exact parameter count, and
//! the GGUF architecture a config exports as. Pure Rust (serde only): the engine does not link
//! libtorch.
use serde::{Deserialize, Serialize};

/// What is wrong with a config.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid config: {field} = {value}: {reason}")]
    Invalid { field: &'static str, value: String, reason: String },

    #[error("unknown preset {name:?}; available presets: {available}")]
    UnknownPreset { name: String, available: String },

    #[error("cannot parse model config JSON: {0}")]
    Parse(#[from] serde_json::Error),

    #[error("cannot read config file {path}: {source}")]
    Read { path: String, source: std::io::Error },
}

pub type Result<T> = std::result::Result<T, ConfigError>;

/// The FFN non-linearity.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FfnActivation {
    /// down(silu(gate(x)) * up(x)): three matrices.
    #[default]
    Swiglu,
    /// down(relu(up(x))²): two matrices.
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

/// LoopLM (Ouro, arXiv 2510.25741): the `n_layers` blocks are one shared stack applied `loops`
/// times. With `exit_gate` a gate λ_t = σ(w·h_t + b) on every loop's final-normed state gives
/// the exit distribution p(t) = λ_t Π_{j<t}(1 − λ_j) (the remainder on the last loop), trained
/// with Σ_t p(t)·CE_t − β·H(p); at inference a token leaves after the first loop whose
/// cumulative exit probability reaches `exit_threshold` (1.0: always the full depth).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoopConfig {
    /// T: how many times the block stack is applied (1 = a plain model).
    pub loops: usize,
    /// A learned exit gate (needs loops > 1); without it the loss is the last loop's CE.
    #[serde(default)]
    pub exit_gate: bool,
    /// β of the entropy bonus on the exit distribution.
    #[serde(default)]
    pub entropy_weight: f64,
    /// The engine's default early-exit threshold, in (0, 1].
    #[serde(default = "default_threshold")]
    pub exit_threshold: f64,
}

/// Most loops a config may ask for (a bound far above any use keeps cache sizes sane).
pub const MAX_LOOPS: usize = 64;

/// An early-exit threshold lies in (0, 1]; below 1 it needs an exit gate.
pub fn check_exit_threshold(field: &'static str, threshold: f64, exit_gate: bool) -> Result<()> {
    if !(threshold > 0.0 && threshold <= 1.0) {
        return Err(invalid(field, threshold, "must lie in (0, 1]"));
    }
    if threshold < 1.0 && !exit_gate {
        return Err(invalid(
            field,
            threshold,
            "below 1 (early exit) needs a LoopLM model with an exit gate (exit_gate = true)",
        ));
    }
    Ok(())
}

impl LoopConfig {
    pub fn validate(&self) -> Result<()> {
        if self.loops < 1 {
            return Err(invalid("loop.loops", self.loops, "must be at least 1"));
        }
        if self.exit_gate && self.loops < 2 {
            return Err(invalid("loop.exit_gate", true, "an exit gate needs loops >= 2 (there is nothing to exit from)"));
        }
        if !(self.entropy_weight.is_finite() && self.entropy_weight >= 0.0) {
            return Err(invalid("loop.entropy_weight", self.entropy_weight, "must be a finite number >= 0"));
        }
        if self.loops > MAX_LOOPS {
            return Err(invalid("loop.loops", self.loops, format!("at most {MAX_LOOPS}")));
        }
        check_exit_threshold("loop.exit_threshold", self.exit_threshold, self.exit_gate)?;
        if self.entropy_weight > 0.0 && !self.exit_gate {
            return Err(invalid("loop.entropy_weight", self.entropy_weight, "the exit entropy needs exit_gate = true"));
        }
        Ok(())
    }
}

/// Hyper-parameters of the ternary transformer. Unknown JSON keys are errors,
/// so a typo in a config file cannot silently fall back to a default.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    #[serde(default)]
    pub name: String,
    pub vocab_size: usize,
    pub dim: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    /// Key/value heads (grouped-query attention); must divide `n_heads`.
    pub n_kv_heads: usize,
    pub ffn_hidden: usize,
    #[serde(default)]
    pub ffn_activation: FfnActivation,
    pub max_seq_len: usize,
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    #[serde(default = "default_norm_eps")]
    pub norm_eps: f64,
    /// LM head shares the token embedding matrix.
    #[serde(default = "default_true")]
    pub tie_embeddings: bool,
    /// 1 = plain residual; 2 or 4 = mHC-lite residual streams.
    #[serde(default = "default_streams")]
    pub mhc_streams: usize,
    /// `true`: every projection is a BitLinear (ternary weights, int8
    /// activations). `false`: plain full-precision linear layers, the
    /// baseline that measures what ternary quantization costs; such a model
    /// trains and evaluates but cannot be exported to the ternary formats.
    #[serde(default = "default_true")]
    pub ternary: bool,
    /// LoopLM: the blocks applied several times with learned exits (absent: once).
    #[serde(rename = "loop", default, skip_serializing_if = "Option::is_none")]
    pub looping: Option<LoopConfig>,
}

/// Preset names, in increasing size.
pub const PRESET_NAMES: [&str; 4] = ["tiny", "d20", "nano-125m", "nano-1b"];

fn preset_json(name: &str) -> Option<&'static str> {
    Some(match name {
        "tiny" => include_str!("../../../python/nanochat_ternary/configs/tiny.json"),
        "d20" => include_str!("../../../python/nanochat_ternary/configs/d20.json"),
        "nano-125m" => include_str!("../../../python/nanochat_ternary/configs/nano-125m.json"),
        "nano-1b" => include_str!("../../../python/nanochat_ternary/configs/nano-1b.json"),
        _ => return None,
    })
}

fn invalid(field: &'static str, value: impl ToString, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field,
        value: value.to_string(),
        reason: reason.into(),
    }
}

impl ModelConfig {
    /// A shipped preset (see [`PRESET_NAMES`]).
    pub fn preset(name: &str) -> Result<Self> {
        let json = preset_json(name).ok_or_else(|| ConfigError::UnknownPreset {
            name: name.to_string(),
            available: PRESET_NAMES.join(", "),
        })?;
        Self::from_json(json)
    }

    /// Parses and validates a JSON config.
    pub fn from_json(json: &str) -> Result<Self> {
        let config: Self = serde_json::from_str(json)?;
        config.validate()?;
        Ok(config)
    }

    /// Reads, parses and validates a JSON config file.
    pub fn from_file(path: &std::path::Path) -> Result<Self> {
        let json = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_json(&json)
    }

    pub fn to_json(&self) -> String {
        // Serializing plain numbers, strings and bools cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Checks every constraint the model relies on.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("dim", self.dim),
            ("n_layers", self.n_layers),
            ("n_heads", self.n_heads),
            ("n_kv_heads", self.n_kv_heads),
            ("ffn_hidden", self.ffn_hidden),
            ("max_seq_len", self.max_seq_len),
        ];
        for (field, value) in positive {
            if value == 0 {
                return Err(invalid(field, value, "must be at least 1"));
            }
            // Bounds far above any real model keep later size arithmetic overflow-free.
            if value > 1 << 24 {
                return Err(invalid(field, value, "is implausibly large (> 2^24)"));
            }
        }
        if self.vocab_size < 2 {
            return Err(invalid(
                "vocab_size",
                self.vocab_size,
                "a vocabulary needs at least 2 tokens",
            ));
        }
        if !self.dim.is_multiple_of(self.n_heads) {
            return Err(invalid(
                "n_heads",
                self.n_heads,
                format!("must divide dim = {} (head_dim = dim / n_heads)", self.dim),
            ));
        }
        if !self.head_dim().is_multiple_of(2) {
            return Err(invalid(
                "n_heads",
                self.n_heads,
                format!("head_dim = dim / n_heads = {} must be even for RoPE", self.head_dim()),
            ));
        }
        if !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return Err(invalid(
                "n_kv_heads",
                self.n_kv_heads,
                format!("must divide n_heads = {} (grouped-query attention)", self.n_heads),
            ));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 1.0) {
            return Err(invalid("rope_theta", self.rope_theta, "must be a finite number > 1"));
        }
        if !(self.norm_eps.is_finite() && self.norm_eps > 0.0) {
            return Err(invalid("norm_eps", self.norm_eps, "must be a finite number > 0"));
        }
        if ![1, 2, 4].contains(&self.mhc_streams) {
            return Err(invalid(
                "mhc_streams",
                self.mhc_streams,
                "must be 1 (plain residual), 2 or 4 (mHC-lite streams)",
            ));
        }
        if let Some(l) = &self.looping {
            l.validate()?;
        }
        if self.vocab_size > i64::MAX as usize || self.max_seq_len > i64::MAX as usize {
            return Err(invalid(
                "vocab_size/max_seq_len",
                self.vocab_size,
                "too large for libtorch indices",
            ));
        }
        Ok(())
    }

    /// The JSON keys a config may have (readers of files with extra keys, such as an HF
    /// `config.json`, keep only these).
    pub const FIELDS: [&'static str; 15] = [
        "name", "vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "ffn_hidden", "ffn_activation",
        "max_seq_len", "rope_theta", "norm_eps", "tie_embeddings", "mhc_streams", "ternary", "loop",
    ];

    /// Parses `json` keeping only [`Self::FIELDS`] (an HF `config.json` also holds
    /// `architectures`, `quantization`, ...), then validates.
    pub fn from_json_lenient(json: &str) -> Result<Self> {
        let mut value: serde_json::Value = serde_json::from_str(json)?;
        if let serde_json::Value::Object(map) = &mut value {
            map.retain(|k, _| Self::FIELDS.contains(&k.as_str()));
        }
        let config: Self = serde_json::from_value(value)?;
        config.validate()?;
        Ok(config)
    }

    /// The GGUF architecture this config is written as: `nanochat-ternary-loop` for a LoopLM
    /// model (T > 1: no loader that does not know loops may open it), `llama` when llama.cpp can
    /// run it (one stream, SwiGLU), else `nanochat-ternary`.
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

    /// The model's own early-exit threshold (1.0 = full depth).
    pub fn exit_threshold(&self) -> f64 {
        self.looping.as_ref().map_or(1.0, |l| l.exit_threshold)
    }

    pub fn head_dim(&self) -> usize {
        self.dim / self.n_heads
    }

    /// T, how many times the block stack runs (1 without a `loop` block).
    pub fn loops(&self) -> usize {
        self.looping.as_ref().map_or(1, |l| l.loops)
    }

    /// Whether the model has a LoopLM exit gate.
    pub fn exit_gate(&self) -> bool {
        self.looping.as_ref().is_some_and(|l| l.exit_gate)
    }

    /// Width of the key and value projections.
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim()
    }

    /// Parameters of the ternary (BitLinear) projections of all blocks.
    pub fn ternary_param_count(&self) -> u64 {
        let (d, kv, h) = (self.dim as u64, self.kv_dim() as u64, self.ffn_hidden as u64);
        let attention = 2 * d * d + 2 * d * kv; // q, o + k, v
        let ffn_matrices = match self.ffn_activation {
            FfnActivation::Swiglu => 3,
            FfnActivation::Relu2 => 2,
        };
        self.n_layers as u64 * (attention + ffn_matrices * d * h)
    }

    /// Parameters of one sub-layer's mHC-lite connection (0 for a plain
    /// residual): W_res (nC x n!), W_pre and W_post (nC x n), three α, biases.
    pub fn mhc_params_per_sublayer(&self) -> u64 {
        let n = self.mhc_streams as u64;
        if n == 1 {
            return 0;
        }
        let perms: u64 = (1..=n).product();
        let inputs = n * self.dim as u64;
        (inputs * perms + 1 + perms) + 2 * (inputs * n + 1 + n)
    }

    /// Every trainable parameter: embeddings, head (if untied), ternary
    /// projections, RMSNorm gains (2 per block + final) and mHC parameters
    /// (2 sub-layers per block).
    pub fn param_count(&self) -> u64 {
        let (v, d) = (self.vocab_size as u64, self.dim as u64);
        let embeddings = if self.tie_embeddings { v * d } else { 2 * v * d };
        let norms = (2 * self.n_layers as u64 + 1) * d;
        let mhc = 2 * self.n_layers as u64 * self.mhc_params_per_sublayer();
        let gate = if self.exit_gate() { d + 1 } else { 0 };
        embeddings + self.ternary_param_count() + norms + mhc + gate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> ModelConfig {
        ModelConfig::preset("tiny").unwrap()
    }

    #[test]
    fn presets_load_and_have_the_documented_sizes() {
        let expect = [
            ("tiny", 3.5e6, 4.5e6),
            ("d20", 18e6, 22e6),
            ("nano-125m", 115e6, 135e6),
            ("nano-1b", 0.9e9, 1.1e9),
        ];
        for (name, lo, hi) in expect {
            let c = ModelConfig::preset(name).unwrap();
            assert_eq!(c.name, name);
            let n = c.param_count() as f64;
            println!(
                "{name}: {} parameters ({} ternary)",
                c.param_count(),
                c.ternary_param_count()
            );
            assert!(n > lo && n < hi, "{name}: {n} parameters, expected {lo}..{hi}");
        }
        let c = ModelConfig::preset("nano-125m").unwrap();
        assert_eq!((c.dim, c.n_layers, c.n_heads, c.ffn_hidden), (768, 12, 12, 2048));
        let c = ModelConfig::preset("nano-1b").unwrap();
        assert_eq!((c.dim, c.n_layers), (2048, 20));
    }

    #[test]
    fn param_count_by_hand_for_a_small_config() {
        let c = ModelConfig {
            name: String::new(),
            vocab_size: 10,
            dim: 8,
            n_layers: 2,
            n_heads: 2,
            n_kv_heads: 1,
            ffn_hidden: 6,
            ffn_activation: FfnActivation::Relu2,
            max_seq_len: 4,
            rope_theta: 10_000.0,
            norm_eps: 1e-5,
            tie_embeddings: false,
            mhc_streams: 2,
            ternary: true,
            looping: None,
        };
        // head_dim 4, kv_dim 4: q 64 + o 64 + k 32 + v 32 + up 48 + down 48 = 288 per block.
        assert_eq!(c.ternary_param_count(), 2 * 288);
        // mHC n=2: W_res 16x2 + α + 2 biases = 35; W_pre/W_post 16x2 + α + 2 = 35 each.
        assert_eq!(c.mhc_params_per_sublayer(), 105);
        // embed 80 + head 80 + 576 + norms 5*8 + mHC 4*105.
        assert_eq!(c.param_count(), 80 + 80 + 576 + 40 + 420);
    }

    type Mutation = fn(&mut ModelConfig);

    #[test]
    fn bad_configs_name_the_field() {
        let cases: Vec<(Mutation, &str)> = vec![
            (|c| c.n_heads = 3, "n_heads"),
            (|c| c.n_kv_heads = 3, "n_kv_heads"),
            (|c| c.mhc_streams = 3, "mhc_streams"),
            (|c| c.dim = 0, "dim"),
            (|c| c.vocab_size = 1, "vocab_size"),
            (|c| c.norm_eps = f64::NAN, "norm_eps"),
            (|c| c.rope_theta = -1.0, "rope_theta"),
            (
                |c| {
                    c.dim = 12;
                    c.n_heads = 4;
                    c.n_kv_heads = 4
                },
                "RoPE",
            ),
        ];
        for (mutate, needle) in cases {
            let mut c = tiny();
            mutate(&mut c);
            let msg = c.validate().unwrap_err().to_string();
            assert!(msg.contains(needle), "{msg:?} should mention {needle:?}");
        }
    }

    #[test]
    fn json_errors_are_clear() {
        let err = ModelConfig::preset("huge").unwrap_err().to_string();
        assert!(err.contains("tiny, d20, nano-125m, nano-1b"), "{err}");
        let mut v: serde_json::Value = serde_json::from_str(&tiny().to_json()).unwrap();
        v["dimm"] = 3.into();
        let err = ModelConfig::from_json(&v.to_string()).unwrap_err().to_string();
        assert!(err.contains("dimm"), "{err}");
        let err = ModelConfig::from_json(r#"{"dim": 8}"#).unwrap_err().to_string();
        assert!(err.contains("missing field"), "{err}");
        let err = ModelConfig::from_file(std::path::Path::new("/nonexistent/x.json"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/x.json"), "{err}");
    }

    #[test]
    fn loop_configs_are_checked() {
        let with = |l: &str| {
            let mut v: serde_json::Value = serde_json::from_str(&tiny().to_json()).unwrap();
            v["loop"] = serde_json::from_str(l).unwrap();
            ModelConfig::from_json(&v.to_string())
        };
        let c = with(r#"{"loops": 3, "exit_gate": true, "entropy_weight": 0.05}"#).unwrap();
        assert_eq!((c.loops(), c.exit_gate()), (3, true));
        assert_eq!(c.looping.as_ref().unwrap().exit_threshold, 1.0);
        assert_eq!(c.param_count(), tiny().param_count() + c.dim as u64 + 1);
        assert_eq!(ModelConfig::from_json(&c.to_json()).unwrap(), c);
        let plain = with(r#"{"loops": 2}"#).unwrap();
        assert_eq!((plain.loops(), plain.exit_gate(), plain.param_count()), (2, false, tiny().param_count()));
        for (bad, needle) in [
            (r#"{"loops": 0}"#, "loop.loops"),
            (r#"{"loops": 1, "exit_gate": true}"#, "loop.exit_gate"),
            (r#"{"loops": 2, "exit_gate": true, "exit_threshold": 0}"#, "(0, 1]"),
            (r#"{"loops": 2, "exit_gate": true, "exit_threshold": 1.5}"#, "(0, 1]"),
            (r#"{"loops": 2, "exit_threshold": 0.5}"#, "exit_gate"),
            (r#"{"loops": 2, "exit_gate": true, "entropy_weight": -1}"#, "entropy_weight"),
            (r#"{"loops": 2, "exit": true}"#, "exit"),
        ] {
            let msg = with(bad).unwrap_err().to_string();
            assert!(msg.contains(needle), "{bad}: {msg:?} should mention {needle:?}");
        }
        // Configs without a loop block serialize as before (no "loop" key).
        assert!(!tiny().to_json().contains("loop"));
    }

    #[test]
    fn lenient_parsing_keeps_only_config_fields() {
        let mut v: serde_json::Value = serde_json::from_str(&tiny().to_json()).unwrap();
        v["architectures"] = serde_json::json!(["NanochatTernaryForCausalLM"]);
        v["quantization"] = serde_json::json!({"format": "x"});
        assert_eq!(ModelConfig::from_json_lenient(&v.to_string()).unwrap(), tiny());
        assert!(ModelConfig::from_json(&v.to_string()).is_err());
        v["dim"] = 0.into();
        assert!(ModelConfig::from_json_lenient(&v.to_string()).unwrap_err().to_string().contains("dim"));
        assert_eq!(tiny().architecture(), "llama");
        let mut c = tiny();
        c.mhc_streams = 2;
        assert_eq!(c.architecture(), "nanochat-ternary");
        c.looping = Some(LoopConfig { loops: 2, exit_gate: false, entropy_weight: 0.0, exit_threshold: 1.0 });
        assert_eq!(c.architecture(), "nanochat-ternary-loop");
        let json: serde_json::Value = serde_json::from_str(&c.to_json_with_architecture("x")).unwrap();
        assert_eq!(json["architecture"], "x");
    }

    #[test]
    fn json_round_trips() {
        for name in PRESET_NAMES {
            let c = ModelConfig::preset(name).unwrap();
            assert_eq!(ModelConfig::from_json(&c.to_json()).unwrap(), c);
        }
    }
}
