//! Ternary transformer training on libtorch autograd (tch).
//!
//! - [`config`]: model hyper-parameters, JSON presets, validation, parameter count.
//! - [`quant`]: BitNet b1.58 fake quantization (absmean ternary weights, int8
//!   per-token activations) with straight-through gradients.
//! - [`cpu_bitlinear`]: BitLinear on CPU with an int8 forward (oneDNN) and a
//!   bf16 backward, as a libtorch autograd function (`csrc/bitlinear.cpp`);
//!   [`cpu_attention`]: rotary + causal attention fused the same way
//!   (`csrc/attention.cpp`).
//! - [`layers`], [`mhc_layer`], [`model`]: the transformer (RMSNorm, RoPE, GQA
//!   attention, SwiGLU/ReLU², BitLinear projections, plain or mHC-lite residual
//!   streams).
//! - [`optim`]: Muon, Lion and the warmup-stable-decay schedule.
//! - [`distill`]: knowledge distillation from a frozen teacher (α·CE + (1 − α)·T²·KL).
//! - [`rl`]: the policy-gradient update of RL from verifiable rewards (MaxRL / GRPO).
//! - [`trainer`]: one optimizer step (gradient accumulation, clipping, entropy
//!   regularization, weights ternarized once per step) and exact-resume
//!   checkpoints.
mod error;

pub mod config;
pub mod cpu_attention;
pub mod cpu_bitlinear;
pub mod distill;
pub mod layers;
pub mod mhc_layer;
pub mod model;
pub mod optim;
pub mod quant;
pub mod rl;
pub mod trainer;

pub use config::{FfnActivation, ModelConfig, PRESET_NAMES};
pub use error::{Result, TrainError};
pub use model::Transformer;
pub use distill::Teacher;
pub use trainer::{Gradients, StepMetrics, TrainHyper, Trainer};
