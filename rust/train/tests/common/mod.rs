//! What the train crate's integration tests share: one-at-a-time execution (libtorch's RNG is
//! global, so seeded inits must not interleave), a small model config and a short schedule.
#![allow(dead_code)]

use std::sync::{Mutex, MutexGuard};

use tch::{Device, Kind, Tensor};
use train::{FfnActivation, ModelConfig, TrainHyper};

static SERIAL: Mutex<()> = Mutex::new(());

/// Holds the test lock (and sets one libtorch thread) for the caller's scope.
pub fn serial() -> MutexGuard<'static, ()> {
    tch::set_num_threads(1);
    SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// dim 32, 2 layers, 4 heads / 2 KV heads, FFN 48, context 16, untied head.
pub fn small_config(vocab_size: usize, mhc_streams: usize, ternary: bool) -> ModelConfig {
    ModelConfig {
        name: "test".into(),
        vocab_size,
        dim: 32,
        n_layers: 2,
        n_heads: 4,
        n_kv_heads: 2,
        ffn_hidden: 48,
        ffn_activation: FfnActivation::Swiglu,
        max_seq_len: 16,
        rope_theta: 10_000.0,
        norm_eps: 1e-5,
        tie_embeddings: false,
        mhc_streams,
        ternary,
        looping: None,
    }
}

/// 20 steps, 2 of warmup, defaults otherwise.
pub fn hyper() -> TrainHyper {
    TrainHyper { total_steps: 20, warmup: 2, ..TrainHyper::default() }
}

/// A seeded (B, T) batch of random ids below 64 and its next-token targets.
pub fn batch(seed: i64, b: i64, t: i64) -> (Tensor, Tensor) {
    tch::manual_seed(seed);
    let seq = Tensor::randint(64, [b, t + 1], (Kind::Int64, Device::Cpu));
    (seq.narrow(1, 0, t).contiguous(), seq.narrow(1, 1, t).contiguous())
}

/// Sets `NCT_QAT_MATMUL` (the CPU BitLinear path, see `train::cpu_bitlinear`) for the caller's
/// scope; take [`serial`] first. `fp32` pins the fake-quant f32 matmuls where a test compares
/// against the plain STE path to float rounding (the default int8/bf16 path differs by bf16
/// roundings of the gradients).
pub struct MatmulPath;

impl MatmulPath {
    pub fn set(mode: &str) -> Self {
        std::env::set_var(train::cpu_bitlinear::MATMUL_ENV, mode);
        MatmulPath
    }
}

impl Drop for MatmulPath {
    fn drop(&mut self) {
        std::env::remove_var(train::cpu_bitlinear::MATMUL_ENV);
    }
}
