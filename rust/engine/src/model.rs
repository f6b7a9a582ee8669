//! The loaded model: weights in kernel-ready form plus config and tokenizer. Built by
//! [`crate::load_gguf`] or [`crate::load_hf_dir`].

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use gguf::{GgmlType, GgufFile};

use crate::config::ModelConfig;
use crate::error::{tensor_err, EngineError, Result};
use crate::linear::Linear;
use crate::vocab::Vocab;

/// Token embedding rows: either owned floats or rows decoded on demand from the mapped GGUF file
/// (so a 50k × 768 table costs no resident memory beyond the pages touched).
pub enum Embedding {
    Owned(Vec<f32>),
    Mapped { file: Arc<GgufFile>, name: String, ggml_type: GgmlType, row_bytes: usize },
}

impl Embedding {
    /// Appends row `id` (length `dim`) to `out`.
    pub fn row_into(&self, id: usize, dim: usize, out: &mut Vec<f32>) -> Result<()> {
        match self {
            Embedding::Owned(table) => {
                let row = table.get(id * dim..(id + 1) * dim).ok_or_else(|| tensor_err("token_embd", "row out of range"))?;
                out.extend_from_slice(row);
            }
            Embedding::Mapped { file, name, ggml_type, row_bytes } => {
                let bytes = file.tensor_bytes(name)?;
                let row = bytes.get(id * row_bytes..(id + 1) * row_bytes).ok_or_else(|| tensor_err(name, "row out of range"))?;
                let values = match ggml_type {
                    GgmlType::F32 => gguf::dequant::f32_from_le(row),
                    GgmlType::F16 => gguf::dequant::f16_to_f32(row),
                    GgmlType::BF16 => gguf::dequant::bf16_to_f32(row),
                    GgmlType::Q8_0 => gguf::dequant::q8_0_to_f32(row),
                    other => return Err(tensor_err(name, format!("unsupported embedding type {other}"))),
                };
                out.extend_from_slice(&values);
            }
        }
        Ok(())
    }
}

/// One transformer block.
pub struct Layer {
    pub attn_norm: Vec<f32>,
    pub wq: Linear,
    pub wk: Linear,
    pub wv: Linear,
    pub wo: Linear,
    pub ffn_norm: Vec<f32>,
    /// SwiGLU gate (absent for ReLU²).
    pub gate: Option<Linear>,
    pub up: Linear,
    pub down: Linear,
    /// mHC-lite connections (attention, FFN) when `mhc_streams > 1`.
    pub mhc: Option<(mhc::MhcParams, mhc::MhcParams)>,
}

/// Rotary tables for adjacent-pair RoPE: `cos/sin[pos * half + j]`, θ_j = base^(−2j/head_dim).
pub struct Rope {
    pub half: usize,
    pub cos: Vec<f32>,
    pub sin: Vec<f32>,
}

impl Rope {
    pub fn new(config: &ModelConfig) -> Self {
        let (half, hd) = (config.head_dim() / 2, config.head_dim() as f64);
        let mut cos = Vec::with_capacity(config.max_seq_len * half);
        let mut sin = Vec::with_capacity(config.max_seq_len * half);
        for pos in 0..config.max_seq_len {
            for j in 0..half {
                let inv_freq = 1.0 / config.rope_theta.powf(2.0 * j as f64 / hd);
                let angle = pos as f64 * inv_freq;
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
        Self { half, cos, sin }
    }
}

/// The early-exit threshold of a LoopLM model, changeable while the model is shared (an `f32`
/// in an atomic): a token leaves after the first loop whose cumulative exit probability reaches
/// it; 1.0 runs every loop.
pub struct ExitThreshold(AtomicU32);

impl ExitThreshold {
    pub fn new(value: f64) -> Self {
        Self(AtomicU32::new((value as f32).to_bits()))
    }

    pub fn get(&self) -> f32 {
        f32::from_bits(self.0.load(Ordering::Relaxed))
    }
}

/// What a LoopLM cache holds for the loops an early-exited token skips.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitKv {
    /// Copies of the token's keys and values from its exit loop (the default; the deeper loops
    /// do not run, which is the speed-up).
    Copy,
    /// The token keeps running every loop for its keys and values; only its logits come from the
    /// exit loop. No speed-up: the exact reference the copy is measured against.
    Compute,
}

/// Tokens run and loops they ran (LoopLM): the mean depth early exit achieved.
#[derive(Default)]
pub struct DepthStats {
    pub tokens: AtomicU64,
    pub loops: AtomicU64,
}

pub struct Model {
    pub config: ModelConfig,
    /// `llama` or `nanochat-ternary`.
    pub architecture: String,
    pub embedding: Embedding,
    pub layers: Vec<Layer>,
    pub output_norm: Vec<f32>,
    pub head: Linear,
    pub rope: Rope,
    pub vocab: Option<Vocab>,
    pub tokenizer_json: Option<String>,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    /// Whether a prompt starts with `bos_id` (GGUF `tokenizer.ggml.add_bos_token`; HF
    /// `tokenizer_config.json`), resolved at load with llama.cpp's defaults when the file is silent.
    pub add_bos: bool,
    /// Whether an encoded text ends with `eos_id` (`tokenizer.ggml.add_eos_token`).
    pub add_eos: bool,
    /// Whether decode streams the weights from DRAM (they exceed the last-level cache), which
    /// makes the kernels prefetch far ahead. Set at load; see [`Model::default_residency`].
    pub residency: kernels::Residency,
    /// Element type of the KV caches made for this model (f16 unless set otherwise).
    pub kv_precision: crate::forward::KvPrecision,
    /// LoopLM exit gate: weight (`dim`) and bias.
    pub exit_gate: Option<(Vec<f32>, f32)>,
    /// LoopLM early-exit threshold (see [`Model::set_exit_threshold`]).
    pub exit_threshold: ExitThreshold,
    /// `true`: [`ExitKv::Compute`] (see [`Model::set_exit_kv`]).
    pub exit_kv_compute: AtomicBool,
    pub depth: DepthStats,
}

impl Model {
    /// Checks that every matrix and vector has the shape the config implies.
    pub(crate) fn validate(&self) -> Result<()> {
        let c = &self.config;
        let (d, kv, h) = (c.dim, c.kv_dim(), c.ffn_hidden);
        let check = |name: String, m: &Linear, rows: usize, cols: usize| {
            if (m.rows(), m.cols()) != (rows, cols) {
                return Err(tensor_err(&name, format!("shape {}x{}, expected {rows}x{cols}", m.rows(), m.cols())));
            }
            Ok(())
        };
        for (i, l) in self.layers.iter().enumerate() {
            check(format!("blk.{i}.attn_q"), &l.wq, d, d)?;
            check(format!("blk.{i}.attn_k"), &l.wk, kv, d)?;
            check(format!("blk.{i}.attn_v"), &l.wv, kv, d)?;
            check(format!("blk.{i}.attn_output"), &l.wo, d, d)?;
            if let Some(g) = &l.gate {
                check(format!("blk.{i}.ffn_gate"), g, h, d)?;
            }
            check(format!("blk.{i}.ffn_up"), &l.up, h, d)?;
            check(format!("blk.{i}.ffn_down"), &l.down, d, h)?;
            for (name, v) in [("attn_norm", &l.attn_norm), ("ffn_norm", &l.ffn_norm)] {
                if v.len() != d {
                    return Err(tensor_err(&format!("blk.{i}.{name}"), format!("length {}, expected {d}", v.len())));
                }
            }
            if l.gate.is_some() != (c.ffn_activation == crate::config::FfnActivation::Swiglu) {
                return Err(tensor_err(&format!("blk.{i}.ffn_gate"), "present/absent does not match ffn_activation"));
            }
            if l.mhc.is_some() != (c.mhc_streams > 1) {
                return Err(tensor_err(&format!("blk.{i}.mhc"), "mHC parameters do not match mhc_streams"));
            }
        }
        if self.layers.len() != c.n_layers {
            return Err(EngineError::Config(format!("{} blocks, config says {}", self.layers.len(), c.n_layers)));
        }
        if self.exit_gate.is_some() != c.exit_gate() {
            return Err(tensor_err("exit_gate", "present/absent does not match loop.exit_gate"));
        }
        if let Some((w, b)) = &self.exit_gate {
            if w.len() != d || !b.is_finite() || w.iter().any(|v| !v.is_finite()) {
                return Err(tensor_err("exit_gate", format!("expected {d} finite weights and a finite bias")));
            }
        }
        check("output".into(), &self.head, c.vocab_size, d)?;
        if self.output_norm.len() != d {
            return Err(tensor_err("output_norm", format!("length {}, expected {d}", self.output_norm.len())));
        }
        if let Some(v) = &self.vocab {
            if v.len() > c.vocab_size {
                return Err(EngineError::Tokenizer(format!(
                    "tokenizer has {} tokens but the model's vocab_size is {}",
                    v.len(),
                    c.vocab_size
                )));
            }
        }
        for (what, id) in [("bos", self.bos_id), ("eos", self.eos_id)] {
            if let Some(id) = id {
                if id as usize >= c.vocab_size {
                    return Err(EngineError::Tokenizer(format!("{what} token id {id} >= vocab_size {}", c.vocab_size)));
                }
            }
        }
        for (what, wanted, id) in [("bos", self.add_bos, self.bos_id), ("eos", self.add_eos, self.eos_id)] {
            if wanted && id.is_none() {
                return Err(EngineError::Tokenizer(format!("the file asks to add a {what} token but names no {what} token id")));
            }
        }
        Ok(())
    }

    /// Sets the early-exit threshold: in (0, 1]; below 1 only for a model with an exit gate.
    pub fn set_exit_threshold(&self, threshold: f64) -> Result<()> {
        crate::config::check_threshold(threshold, self.exit_gate.is_some())?;
        self.exit_threshold.0.store((threshold as f32).to_bits(), Ordering::Relaxed);
        Ok(())
    }

    pub fn exit_kv(&self) -> ExitKv {
        if self.exit_kv_compute.load(Ordering::Relaxed) {
            ExitKv::Compute
        } else {
            ExitKv::Copy
        }
    }

    pub fn set_exit_kv(&self, mode: ExitKv) {
        self.exit_kv_compute.store(mode == ExitKv::Compute, Ordering::Relaxed);
    }

    /// Mean loops per token run since load (or the last reset), and the tokens counted.
    pub fn mean_depth(&self) -> (f64, u64) {
        let (t, l) = (self.depth.tokens.load(Ordering::Relaxed), self.depth.loops.load(Ordering::Relaxed));
        (if t == 0 { 0.0 } else { l as f64 / t as f64 }, t)
    }

    pub fn reset_depth(&self) {
        self.depth.tokens.store(0, Ordering::Relaxed);
        self.depth.loops.store(0, Ordering::Relaxed);
    }

    /// `Streamed` when the weights one decode step reads exceed the last-level cache (whose
    /// size Linux reports in sysfs; 32 MiB when it is unknown), else `Cached`.
    pub fn default_residency(&self) -> kernels::Residency {
        if self.bytes_per_token() > kernels::last_level_cache_bytes() {
            kernels::Residency::Streamed
        } else {
            kernels::Residency::Cached
        }
    }

    /// Weight bytes one decode step streams: every block matrix, the head, one embedding row.
    pub fn bytes_per_token(&self) -> usize {
        let blocks: usize = self
            .layers
            .iter()
            .map(|l| {
                [&l.wq, &l.wk, &l.wv, &l.wo, &l.up, &l.down].iter().map(|m| m.weight_bytes()).sum::<usize>()
                    + l.gate.as_ref().map_or(0, |g| g.weight_bytes())
            })
            .sum();
        blocks + self.head.weight_bytes()
    }
}
