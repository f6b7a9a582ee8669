//! Ternary × int8 kernels over the planar layout ([`ternary::planar`]).
//!
//! - [`QuantizedActivations`]: per-token int8 absmax quantization.
//! - [`gemv_i32`], [`gemm_i32`]: integer results (`Σ trit·x`), identical across variants.
//! - [`gemv`], [`gemm`] (f32 in, f32 out) and the `*_quantized` forms: integer result × scales.
//! - [`Variant`]: `scalar` (the reference), `avx2`, `avx512` (VNNI), `amx` (VNNI GEMV, AMX-INT8
//!   GEMM); picked at run time by CPU
//!   detection, forced by the `variant` argument or the `NCT_KERNEL` environment variable.
//! - [`set_num_threads`]: the crate's own thread team (default `NCT_NUM_THREADS` or all cores;
//!   its idle workers spin briefly between calls, see `team.rs`).
//!
//! Why Rust intrinsics rather than C in `csrc/`: `#[target_feature]` gives per-function ISA
//! selection in a generic x86-64 build (AVX-512 intrinsics are stable since Rust 1.89), with no C
//! toolchain in the build, no FFI boundary and bounds checked in one safe layer (`tile.rs`).

mod error;
mod matmul;
mod panel;
mod pool;
mod quantize;
mod scalar;
mod team;
mod tile;
mod variant;

#[cfg(target_arch = "x86_64")]
mod amx;
#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;

pub use error::KernelError;
pub use matmul::{gemm, gemm_i32, gemm_quantized, gemv, gemv_i32, gemv_i32_into, gemv_quantized_into, gemv_quantized_into_with, gemv_quantized_many_into_with, last_level_cache_bytes, Residency, GEMV_MIN_PARALLEL_BYTES, MAX_COLS};
pub use pool::{for_each_chunk, num_threads, set_num_threads, team, THREADS_ENV};
pub use team::Team;
pub use quantize::QuantizedActivations;
pub use variant::{Kernel, Variant, KERNEL_ENV};


