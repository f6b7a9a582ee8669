//! Torch-free inference for nanochat-ternary models (pure Rust).
//!
//! - Loading ([`load`]): GGUF files (architectures `llama` and `nanochat-ternary`; ternary
//!   weights TQ2_0 / TQ1_0 converted to the kernels' planar layout with their per-256 block
//!   scales; Q8_0 / F16 / BF16 / F32 for the rest; the embedding stays memory-mapped) or an
//!   HF-style directory (`config.json` + `model.safetensors` checkpoint + `tokenizer.json`).
//! - Forward ([`Model::forward`]): prefill through the ternary GEMM kernels, decode through the
//!   GEMV kernels (Q/K/V and gate/up of one token as one parallel job), f16 (or f32) KV cache,
//!   GQA attention split over heads, plain or mHC-lite residuals.
//! - Generation ([`Generation`], [`generate`]): greedy / temperature / top-k / top-p / min-p,
//!   repetition penalty, seed, stop ids, EOS, stop strings, streaming, several prompts.
//! - Continuous batching ([`Model::forward_batch`], [`Scheduler`]): many sequences decoded in
//!   one step (one GEMM per block matrix), chunked prefill, cancellation, a KV memory budget.

mod batch;
mod config;
mod error;
mod forward;
mod generate;
mod linear;
mod load;
mod model;
mod q8x16;
mod sampling;
mod simd;
pub mod synthetic;
mod vocab;

pub use batch::{Finish, Scheduler, SchedulerConfig, Segment, SeqEvent, TokenOut, MAX_TOP_LOGPROBS};
pub use config::{FfnActivation, LoopConfig, ModelConfig};
pub use error::{EngineError, Result};
pub use forward::{KvCache, KvPrecision};
pub use generate::{check_request, generate, Generation};
pub use linear::{Input, Linear};
pub use load::{load, load_gguf, load_hf_dir};
pub use model::{Embedding, ExitKv, Layer, Model};
pub use sampling::{apply_repetition_penalty, argmax, filtered_distribution, restrict_to, sample, Rng, SamplingParams};
pub use vocab::Vocab;
