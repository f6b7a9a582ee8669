//! Conversions of tensor bytes to `f32`. Inputs are whole tensors whose sizes
//! the reader has validated; a trailing partial element/block is ignored
//! rather than read out of bounds.
//!
//! Bytes are decoded with `from_le_bytes` per element because tensor data in
//! a GGUF file is only guaranteed `general.alignment`-aligned, which may be 1.

use half::{bf16, f16};

/// Q8_0: blocks of 32 weights = f16 scale `d` + 32 × int8; w = d × q.
pub const Q8_0_BLOCK: usize = 32;
pub const Q8_0_BLOCK_BYTES: usize = 2 + Q8_0_BLOCK;

pub fn f32_from_le(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
}

pub fn f16_to_f32(bytes: &[u8]) -> Vec<f32> {
    // Widen as one slice (F16C, eight at a time, where the CPU has it): one `to_f32` per value
    // checks the CPU each time and is ~10x slower (an embedding row per decoded token).
    use half::slice::HalfFloatSliceExt;
    let halves: Vec<f16> = bytes.chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]])).collect();
    let mut out = vec![0f32; halves.len()];
    halves.convert_to_f32_slice(&mut out);
    out
}

pub fn bf16_to_f32(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(2).map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect()
}

pub fn q8_0_to_f32(bytes: &[u8]) -> Vec<f32> {
    let mut out = Vec::with_capacity(bytes.len() / Q8_0_BLOCK_BYTES * Q8_0_BLOCK);
    for block in bytes.chunks_exact(Q8_0_BLOCK_BYTES) {
        let d = f16::from_le_bytes([block[0], block[1]]).to_f32();
        out.extend(block[2..].iter().map(|&q| d * f32::from(q as i8)));
    }
    out
}
