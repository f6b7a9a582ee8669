//! The matrices of a model and their products with activations.
//!
//! - `Ternary`: the planar layout of the kernels crate, int8 per-token activations, GEMV for one
//!   token and GEMM for a prompt.
//! - `Q8`: Q8_0 rows (int8 + one f16 scale per 32 weights, as in GGUF). Activations are quantized
//!   the same way (int8 per 32 values, absmax), so every block product is an exact i32 dot, as
//!   llama.cpp's Q8_0 × Q8_0 path does; this is the fast LM head. On CPUs with AVX-512 VNNI
//!   the rows are held interleaved 16 at a time instead ([`Q8x16`], see `q8x16.rs`).
//! - `F32`: plain floats (F32/F16/BF16 tensors, and tied heads from an F32/F16 embedding).

use kernels::Residency;
use ternary::planar::PlanarMatrix;

use crate::error::{EngineError, Result};
use kernels::for_each_chunk;

/// Q8_0 block length.
pub const Q8_BLOCK: usize = 32;

#[derive(Debug)]
pub enum Linear {
    Ternary(PlanarMatrix),
    /// Scales stay f16 as GGUF stores them: the head is the largest read of a decode step, and
    /// f32 scales would add 6 % to it. With `x16` (AVX-512 VNNI) the values live there
    /// (interleaved) and `qs`/`scales` are empty.
    Q8 { rows: usize, cols: usize, qs: Vec<i8>, scales: Vec<half::f16>, x16: Option<Box<Q8x16>> },
    F32 { rows: usize, cols: usize, w: Vec<f32> },
    /// A block matrix of one of our ternary models stored in a dense type (e.g. rows not a
    /// multiple of 256 for TQ2_0): its input is int8-quantized per token first, as BitLinear
    /// does in training, so the numerics match the ternary path.
    BitLinear(Box<Linear>),
}

/// Fewest rows per parallel task of the Q8/F32 paths (enough work to amortize a hand-off).
const MIN_ROWS_PER_TASK: usize = 64;

impl Linear {
    pub fn rows(&self) -> usize {
        match self {
            Linear::Ternary(m) => m.rows(),
            Linear::Q8 { rows, .. } | Linear::F32 { rows, .. } => *rows,
            Linear::BitLinear(inner) => inner.rows(),
        }
    }
    pub fn cols(&self) -> usize {
        match self {
            Linear::Ternary(m) => m.cols(),
            Linear::Q8 { cols, .. } | Linear::F32 { cols, .. } => *cols,
            Linear::BitLinear(inner) => inner.cols(),
        }
    }

    /// Bytes of weight data one product streams (what a decode step reads from memory).
    pub fn weight_bytes(&self) -> usize {
        match self {
            Linear::Ternary(m) => m.as_bytes().len() + 4 * m.scales().len(),
            Linear::Q8 { qs, scales, x16, .. } => x16.as_ref().map_or(qs.len() + 2 * scales.len(), |m| m.bytes()),
            Linear::F32 { w, .. } => 4 * w.len(),
            Linear::BitLinear(inner) => inner.weight_bytes(),
        }
    }

    /// Q8_0 from GGUF blocks (f16 scale + 32 int8), row-major `rows × cols`.
    pub fn q8_from_gguf(name: &str, bytes: &[u8], rows: usize, cols: usize) -> Result<Self> {
        const BLOCK_BYTES: usize = 2 + Q8_BLOCK;
        let bad = |reason: String| EngineError::Tensor { name: name.into(), reason };
        if !cols.is_multiple_of(Q8_BLOCK) {
            return Err(bad(format!("Q8_0 row length {cols} is not a multiple of {Q8_BLOCK}")));
        }
        let n_blocks = rows * cols / Q8_BLOCK;
        if bytes.len() != n_blocks * BLOCK_BYTES {
            return Err(bad(format!("Q8_0 {rows}x{cols} needs {} bytes, got {}", n_blocks * BLOCK_BYTES, bytes.len())));
        }
        let mut qs = Vec::with_capacity(rows * cols);
        let mut scales = Vec::with_capacity(n_blocks);
        for block in bytes.chunks_exact(BLOCK_BYTES) {
            let d = half::f16::from_le_bytes([block[0], block[1]]);
            if !d.is_finite() {
                return Err(bad("Q8_0 block scale is not finite".into()));
            }
            scales.push(d);
            qs.extend(block[2..].iter().map(|&b| b as i8));
        }
        Ok(Linear::q8(rows, cols, qs, scales))
    }

    /// A Q8_0 matrix from row-major values and scales, interleaved where the CPU runs that.
    pub fn q8(rows: usize, cols: usize, qs: Vec<i8>, scales: Vec<half::f16>) -> Self {
        if Q8x16::available() {
            let x16 = Box::new(Q8x16::pack(&qs, &scales, rows, cols));
            return Linear::Q8 { rows, cols, qs: Vec::new(), scales: Vec::new(), x16: Some(x16) };
        }
        Linear::Q8 { rows, cols, qs, scales, x16: None }
    }

    /// Products of `n` tokens (row-major `n × cols`) → `n × rows`. `residency`: whether the
    /// weights are expected in cache or streamed from DRAM (it only changes prefetching).
    pub fn forward(&self, x: &[f32], n: usize, residency: Residency) -> Result<Vec<f32>> {
        self.forward_input(&Input::new(x, n), residency)
    }

    /// [`forward`](Self::forward) on an [`Input`], whose per-token int8 quantization is made at
    /// most once however many matrices read it (Q, K and V; gate and up).
    pub fn forward_input(&self, input: &Input<'_>, residency: Residency) -> Result<Vec<f32>> {
        let (rows, cols) = (self.rows(), self.cols());
        let (x, n) = (input.x, input.n);
        if x.len() != n * cols || n == 0 {
            return Err(EngineError::Numerical(format!("linear input has {} values, expected {n} x {cols}", x.len())));
        }
        match self {
            Linear::Ternary(m) => {
                let q = input.quantized()?;
                if n == 1 {
                    let mut out = vec![0.0; rows];
                    kernels::gemv_quantized_into_with(m, q, &mut out, None, residency)?;
                    Ok(out)
                } else if per_token_gemv(n, residency) {
                    let mut out = vec![0.0; n * rows];
                    for (t, dst) in out.chunks_exact_mut(rows).enumerate() {
                        kernels::gemv_quantized_into_with(m, &input.token(t)?, dst, None, residency)?;
                    }
                    Ok(out)
                } else {
                    Ok(kernels::gemm_quantized(m, q, None)?)
                }
            }
            Linear::Q8 { qs, scales, x16, .. } => {
                let (xq, xd) = quantize_q8(x)?;
                Ok(q8_product(qs, scales, x16.as_deref(), rows, cols, n, &xq, &xd, residency))
            }
            Linear::BitLinear(inner) => {
                let q = input.quantized()?;
                match &**inner {
                    // The per-token int8 values are already Q8 activations: one scale per
                    // token for every block, no second rounding.
                    Linear::Q8 { qs, scales, x16, .. } => {
                        let (xq, xd) = per_token_as_q8(q);
                        Ok(q8_product(qs, scales, x16.as_deref(), rows, cols, n, &xq, &xd, residency))
                    }
                    _ => {
                        let mut fake = Vec::with_capacity(x.len());
                        for (t, &scale) in q.scales().iter().enumerate() {
                            fake.extend(q.token(t).iter().map(|&v| v as f32 * scale));
                        }
                        inner.forward(&fake, n, residency)
                    }
                }
            }
            Linear::F32 { w, .. } => Ok(rows_product(rows, cols, n, 1, |first, by_row| {
                for (i, out) in by_row.chunks_exact_mut(n).enumerate() {
                    let row = &w[(first + i) * cols..][..cols];
                    for (t, o) in out.iter_mut().enumerate() {
                        *o = dot_f32(row, &x[t * cols..][..cols]);
                    }
                }
            })),
        }
    }
}

/// Most tokens a product of in-cache ternary weights runs as one GEMV per token rather than as a
/// GEMM. GEMV and GEMM give bit-identical rows, so this only changes speed. `bench_kernels --few`
/// (2 threads, nano-125m block shapes, AMX CPU): 2 tokens as GEMVs took 0.4–0.8× the GEMM's time,
/// 3 tokens 0.7–0.9×, 4 tokens 0.9–1.5×. Weights streamed from DRAM keep the GEMM, which reads
/// them once.
const PER_TOKEN_GEMV_MAX: usize = 3;

fn per_token_gemv(n: usize, residency: Residency) -> bool {
    n <= PER_TOKEN_GEMV_MAX && residency == Residency::Cached
}

/// The products of several matrices with the same input (Q, K and V; gate and up). One token
/// through ternary matrices runs as one parallel GEMV job (one hand-off to the kernel team
/// instead of one per matrix), and so does each of a few tokens (see [`PER_TOKEN_GEMV_MAX`]);
/// anything else runs the products one after another.
pub fn forward_many(linears: &[&Linear], input: &Input<'_>, residency: Residency) -> Result<Vec<Vec<f32>>> {
    let ternary: Option<Vec<&PlanarMatrix>> = linears.iter().map(|l| if let Linear::Ternary(m) = l { Some(m) } else { None }).collect();
    let n = input.n;
    match ternary {
        Some(mats) if n == 1 || per_token_gemv(n, residency) => {
            if let Some(m) = mats.iter().find(|m| n * m.cols() != input.x.len()) {
                return Err(EngineError::Numerical(format!("linear input has {} values, expected {n} x {}", input.x.len(), m.cols())));
            }
            let mut outs: Vec<Vec<f32>> = mats.iter().map(|m| vec![0.0; n * m.rows()]).collect();
            for t in 0..n {
                let single;
                let q = if n == 1 {
                    input.quantized()?
                } else {
                    single = input.token(t)?;
                    &single
                };
                let mut products: Vec<(&PlanarMatrix, &mut [f32])> =
                    mats.iter().copied().zip(outs.iter_mut()).map(|(m, o)| (m, &mut o[t * m.rows()..][..m.rows()])).collect();
                kernels::gemv_quantized_many_into_with(&mut products, q, None, residency)?;
            }
            Ok(outs)
        }
        _ => linears.iter().map(|l| l.forward_input(input, residency)).collect(),
    }
}

/// Activations of `n` tokens (row-major `n × cols`) and, made on first use, their per-token
/// int8 quantization.
pub struct Input<'a> {
    x: &'a [f32],
    n: usize,
    quantized: std::cell::OnceCell<kernels::QuantizedActivations>,
}

impl<'a> Input<'a> {
    pub fn new(x: &'a [f32], n: usize) -> Self {
        Self { x, n, quantized: std::cell::OnceCell::new() }
    }

    fn quantized(&self) -> Result<&kernels::QuantizedActivations> {
        if let Some(q) = self.quantized.get() {
            return Ok(q);
        }
        let cols = self.x.len().checked_div(self.n).unwrap_or(0);
        let q = kernels::QuantizedActivations::quantize(self.x, self.n, cols)?;
        Ok(self.quantized.get_or_init(|| q))
    }

    /// Token `t` of the quantized input on its own (the same int8 values and scale).
    fn token(&self, t: usize) -> Result<kernels::QuantizedActivations> {
        let q = self.quantized()?;
        Ok(kernels::QuantizedActivations::from_i8(q.token(t), 1, q.cols(), &q.scales()[t..t + 1])?)
    }
}

/// Q8_0 weights × Q8 activations (`n × cols` int8 with one scale per 32 values): through the
/// interleaved layout when there is one (any `n`: each token's bits are its own), else
/// row-major dots.
#[allow(clippy::too_many_arguments)]
fn q8_product(qs: &[i8], scales: &[half::f16], x16: Option<&Q8x16>, rows: usize, cols: usize, n: usize, xq: &[i8], xd: &[f32], residency: Residency) -> Vec<f32> {
    let blocks = cols / Q8_BLOCK;
    let streamed = residency == Residency::Streamed;
    if let Some(m) = x16 {
        return rows_product(rows, cols, n, q8x16::LANES, |first, by_row| m.dots(first, by_row.len() / n, xq, xd, n, by_row, streamed));
    }
    rows_product(rows, cols, n, 1, |first, by_row| {
        let count = by_row.len() / n;
        let (w, wd) = (&qs[first * cols..][..count * cols], &scales[first * blocks..][..count * blocks]);
        if n == 1 {
            return q8_dots(w, wd, xq, xd, by_row, streamed);
        }
        // Every row read once for all the tokens; each token's dots equal its own GEMV's.
        q8_dots_tokens(w, wd, xq, xd, n, by_row, streamed);
    })
}

/// Per-token int8 activations as Q8 blocks: the same values, the token's scale on every block.
fn per_token_as_q8(q: &kernels::QuantizedActivations) -> (Vec<i8>, Vec<f32>) {
    let blocks = q.cols() / Q8_BLOCK;
    let mut xq = Vec::with_capacity(q.n_tokens() * q.cols());
    let mut xd = Vec::with_capacity(q.n_tokens() * blocks);
    for (t, &scale) in q.scales().iter().enumerate() {
        xq.extend_from_slice(q.token(t));
        xd.extend(std::iter::repeat_n(scale, blocks));
    }
    (xq, xd)
}

/// `out[t][r]` for `n` tokens: `f(first_row, by_row)` fills a block of consecutive rows,
/// `by_row[i·n + t]` for row `first_row + i` (all tokens of a row together, so a row block is
/// read from memory once); blocks run in parallel, then the result is transposed to token-major.
/// Blocks start at multiples of `align` rows.
fn rows_product(rows: usize, cols: usize, n: usize, align: usize, f: impl Fn(usize, &mut [f32]) + Sync) -> Vec<f32> {
    // A few tasks per thread: enough to balance, few enough that hand-offs stay negligible.
    let mut per_task = rows.div_ceil(4 * kernels::num_threads().max(1)).max(MIN_ROWS_PER_TASK).next_multiple_of(align);
    if rows * cols * n < kernels::GEMV_MIN_PARALLEL_BYTES {
        per_task = rows; // too little work to pay for waking another thread
    }
    let mut by_row = vec![0f32; rows * n];
    for_each_chunk(&mut by_row, per_task * n, |task, block| f(task * per_task, block));
    if n == 1 {
        return by_row;
    }
    let mut out = vec![0f32; rows * n];
    for r in 0..rows {
        for t in 0..n {
            out[t * rows + r] = by_row[r * n + t];
        }
    }
    out
}

/// int8 absmax quantization per 32 values (llama.cpp's Q8_0 activations, round half to even).
fn quantize_q8(x: &[f32]) -> Result<(Vec<i8>, Vec<f32>)> {
    let mut q = vec![0i8; x.len()];
    let mut d = vec![0f32; x.len() / Q8_BLOCK];
    crate::simd::quantize_q8(x, &mut q, &mut d).ok_or_else(|| EngineError::Numerical("non-finite activation before the output head".into()))?;
    Ok((q, d))
}

pub(crate) use crate::simd::dot as dot_f32;
use crate::q8x16::{self, Q8x16};
use crate::simd::{q8_dots, q8_dots_tokens};

#[cfg(test)]
mod tests {
    use super::*;

    fn ternary(rows: usize, cols: usize, seed: usize) -> Linear {
        let trits: Vec<i8> = (0..rows * cols).map(|i| ((i * 7919 + seed * 104729) / 13 % 3) as i8 - 1).collect();
        Linear::Ternary(PlanarMatrix::from_trits_per_tensor(&trits, rows, cols, 0.37).expect("matrix"))
    }

    #[test]
    fn a_few_tokens_as_gemvs_equal_the_gemm_bit_for_bit() {
        // 40 rows: a partial last row tile; 96 columns: not a multiple of 64.
        let (a, b) = (ternary(40, 96, 1), ternary(24, 96, 2));
        for n in 1..=PER_TOKEN_GEMV_MAX + 2 {
            let x: Vec<f32> = (0..n * 96).map(|i| ((i * 7919) % 201) as f32 / 50.0 - 2.0).collect();
            let input = Input::new(&x, n);
            let Linear::Ternary(m) = &a else { unreachable!() };
            let gemm = kernels::gemm_quantized(m, input.quantized().unwrap(), None).unwrap();
            for residency in [Residency::Cached, Residency::Streamed] {
                assert_eq!(a.forward(&x, n, residency).unwrap(), gemm, "n = {n}");
                let both = forward_many(&[&a, &b], &Input::new(&x, n), residency).unwrap();
                assert_eq!(both[0], gemm, "n = {n}");
                assert_eq!(both[1], b.forward(&x, n, residency).unwrap());
            }
        }
        // A wrong input length is an error on the per-token path too.
        assert!(forward_many(&[&a, &b], &Input::new(&[0.0; 95 * 2], 2), Residency::Cached).is_err());
    }
}
