//! Q8_0 matrices with 16 rows interleaved, for the AVX-512 VNNI LM head.
//!
//! Row-major Q8_0 (`simd::q8_dots`) puts 64 consecutive weights of one row in a register, so
//! every 64 products end in 16 lanes of partial sums that need a float conversion, a scale and
//! a horizontal reduction per (row, token). Here a register holds 4 consecutive weights of 16
//! rows: `vpdpbusd` against the token's 4 activations broadcast to every lane adds one 4-term
//! dot to each of 16 rows, 8 of them make a whole 32-weight block per row, exact in i32, and
//! one conversion + one FMA per block scale all 16 rows at once; nothing is reduced across
//! lanes. The weight register is loaded once for up to 8 tokens (the batched decode of the
//! server), so a batch costs ~8 `vpdpbusd` per 16 × 32 weights per token.
//!
//! Layout: rows padded to a multiple of 16 (zero weights and scales), then per group of 16
//! rows, per block b, per 4-byte step k: 16 × 4 bytes `w + 128` (as u8: VNNI multiplies
//! unsigned by signed; the `+128` is taken back by starting each block's sum at `−128 · Σx`
//! over its 32 activations), and per group and block the 16 rows' f16 scales.
//!
//! Every (row, token) result is the same sequence of operations whatever the number of tokens
//! and on every path: `acc ← fma(Σ_b w·x as f32, ws_b · xs_b, acc)` over the blocks in order.
//! The portable body does exactly that with `f32::mul_add`, so the VNNI kernel equals it bit
//! for bit (tested), and a batch's logits equal each sequence's own.
use half::f16;

use crate::linear::Q8_BLOCK;

/// Rows per group (lanes of a 512-bit i32 vector).
pub const LANES: usize = 16;
/// 4-byte steps per 32-weight block.
const STEPS: usize = Q8_BLOCK / 4;

/// A Q8_0 matrix in the interleaved layout (see the module documentation).
#[derive(Debug, Clone)]
pub struct Q8x16 {
    rows: usize,
    cols: usize,
    /// `w + 128` as u8: [group][block][step][row in group][byte in step].
    w: Vec<u8>,
    /// Weight scales: [group][block][row in group].
    d: Vec<f16>,
}

impl Q8x16 {
    /// Whether this CPU runs the interleaved kernel (AVX-512 VNNI); elsewhere row-major Q8_0
    /// stays the faster layout.
    pub fn available() -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vnni")
                && is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }

    /// Interleaves row-major Q8_0 values `qs` (`rows × cols`) and scales (`rows × cols/32`).
    pub fn pack(qs: &[i8], scales: &[f16], rows: usize, cols: usize) -> Self {
        let blocks = cols / Q8_BLOCK;
        assert!(cols == blocks * Q8_BLOCK && qs.len() == rows * cols && scales.len() == rows * blocks);
        let groups = rows.div_ceil(LANES);
        let mut w = vec![128u8; groups * blocks * Q8_BLOCK * LANES];
        let mut d = vec![f16::ZERO; groups * blocks * LANES];
        for r in 0..rows {
            let (g, lane) = (r / LANES, r % LANES);
            for b in 0..blocks {
                d[(g * blocks + b) * LANES + lane] = scales[r * blocks + b];
                for k in 0..STEPS {
                    let dst = (((g * blocks + b) * STEPS + k) * LANES + lane) * 4;
                    for i in 0..4 {
                        w[dst + i] = (qs[r * cols + b * Q8_BLOCK + 4 * k + i] as i16 + 128) as u8;
                    }
                }
            }
        }
        Self { rows, cols, w, d }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes held (padding rows included).
    pub fn bytes(&self) -> usize {
        self.w.len() + 2 * self.d.len()
    }

    /// Dots of rows `first .. first + count` (`first` a multiple of 16) with `n` tokens of Q8
    /// activations (`x` row-major `n × cols`, `xd` `n × blocks`): `out[i·n + t]` for row
    /// `first + i` and token t. `streamed`: prefetch ahead (the rows come from DRAM).
    #[allow(clippy::too_many_arguments)]
    pub fn dots(&self, first: usize, count: usize, x: &[i8], xd: &[f32], n: usize, out: &mut [f32], streamed: bool) {
        let blocks = self.cols / Q8_BLOCK;
        assert!(first.is_multiple_of(LANES) && first + count <= self.rows && n > 0);
        assert!(x.len() == n * self.cols && xd.len() == n * blocks && out.len() == count * n);
        // A batch prefetches ahead as a streamed matrix does, even from cache: with several
        // tokens' work between weight loads the hardware prefetchers fall behind, and the loads
        // wait on the L3. `bench_batch -- 2` (idle, old/new alternating three times): the head at
        // 4 sequences 2.50 / 1.67 / 1.77 → 1.46 / 1.49 / 1.29 ms, at 8 sequences 3.46 / 3.03 /
        // 2.72 → 1.97 / 1.80 / 2.24 ms; one sequence unchanged (it keeps up without).
        let streamed = streamed || n > 1;
        // −128 · Σx per token and block: where each block's i32 sum starts.
        let corr: Vec<i32> = x.chunks_exact(Q8_BLOCK).map(|c| -128 * c.iter().map(|&v| v as i32).sum::<i32>()).collect();
        #[cfg(target_arch = "x86_64")]
        if Self::available() {
            // SAFETY: the features were detected; lengths were asserted.
            unsafe { x86::dots_vnni(self, first, count, x, xd, &corr, n, out, streamed) };
            return;
        }
        let _ = streamed;
        self.dots_portable(first, count, x, xd, &corr, n, out);
    }

    /// The reference: per (row, token) the kernel's operations in the kernel's order.
    #[allow(clippy::too_many_arguments)]
    fn dots_portable(&self, first: usize, count: usize, x: &[i8], xd: &[f32], corr: &[i32], n: usize, out: &mut [f32]) {
        let blocks = self.cols / Q8_BLOCK;
        for i in 0..count {
            let (g, lane) = ((first + i) / LANES, (first + i) % LANES);
            for t in 0..n {
                let mut acc = 0f32;
                for b in 0..blocks {
                    let mut sum = corr[t * blocks + b];
                    for k in 0..STEPS {
                        let at = (((g * blocks + b) * STEPS + k) * LANES + lane) * 4;
                        for j in 0..4 {
                            sum += self.w[at + j] as i32 * x[t * self.cols + b * Q8_BLOCK + 4 * k + j] as i32;
                        }
                    }
                    let scale = self.d[(g * blocks + b) * LANES + lane].to_f32() * xd[t * blocks + b];
                    acc = (sum as f32).mul_add(scale, acc);
                }
                out[i * n + t] = acc;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{Q8x16, LANES, STEPS};
    use crate::linear::Q8_BLOCK;

    /// How far ahead a streamed matrix is prefetched (as the row-major head: one core's
    /// prefetchers stop at 4 KiB pages; asking a few pages ahead keeps enough misses in flight).
    const PREFETCH_BYTES: usize = 16 << 10;

    /// One group of 16 rows with `G` tokens (≤ 8: 8 i32 + 8 f32 accumulators in registers).
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn group<const G: usize>(m: &Q8x16, g: usize, x: *const i8, xd: *const f32, corr: *const i32, out: &mut [[f32; LANES]; 8], streamed: bool) {
        let (cols, blocks) = (m.cols, m.cols / Q8_BLOCK);
        let mut acc = [_mm512_setzero_ps(); G];
        let wg = m.w.as_ptr().add(g * blocks * Q8_BLOCK * LANES);
        let dg = m.d.as_ptr().add(g * blocks * LANES);
        for b in 0..blocks {
            let wb = wg.add(b * Q8_BLOCK * LANES);
            if streamed {
                // Offsets, not pointers, until they are known to lie inside the matrix.
                let ahead = wb.offset_from(m.w.as_ptr()) as usize + PREFETCH_BYTES;
                let end = (ahead + Q8_BLOCK * LANES).min(m.w.len());
                let mut at = ahead;
                while at < end {
                    _mm_prefetch::<_MM_HINT_T0>(m.w.as_ptr().add(at).cast());
                    at += 64;
                }
            }
            let mut sums = [_mm512_setzero_si512(); G];
            for (t, s) in sums.iter_mut().enumerate() {
                *s = _mm512_set1_epi32(*corr.add(t * blocks + b));
            }
            for k in 0..STEPS {
                let wv = _mm512_loadu_si512(wb.add(k * 4 * LANES).cast());
                for (t, s) in sums.iter_mut().enumerate() {
                    let xv = _mm512_set1_epi32(x.add(t * cols + b * Q8_BLOCK + 4 * k).cast::<i32>().read_unaligned());
                    *s = _mm512_dpbusd_epi32(*s, wv, xv);
                }
            }
            let ws = _mm512_cvtph_ps(_mm256_loadu_si256(dg.add(b * LANES).cast()));
            for (t, a) in acc.iter_mut().enumerate() {
                let scale = _mm512_mul_ps(ws, _mm512_set1_ps(*xd.add(t * blocks + b)));
                *a = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums[t]), scale, *a);
            }
        }
        for (t, a) in acc.iter().enumerate() {
            _mm512_storeu_ps(out[t].as_mut_ptr(), *a);
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c,avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn dots_vnni(m: &Q8x16, first: usize, count: usize, x: &[i8], xd: &[f32], corr: &[i32], n: usize, out: &mut [f32], streamed: bool) {
        let (cols, blocks) = (m.cols, m.cols / Q8_BLOCK);
        let mut tile = [[0f32; LANES]; 8];
        let mut i = 0;
        while i < count {
            let g = (first + i) / LANES;
            let rows_here = LANES.min(count - i);
            let mut t0 = 0;
            while t0 < n {
                let tg = (n - t0).min(8);
                let (xp, dp, cp) = (x.as_ptr().add(t0 * cols), xd.as_ptr().add(t0 * blocks), corr.as_ptr().add(t0 * blocks));
                match tg {
                    8 => group::<8>(m, g, xp, dp, cp, &mut tile, streamed),
                    7 => group::<7>(m, g, xp, dp, cp, &mut tile, streamed),
                    6 => group::<6>(m, g, xp, dp, cp, &mut tile, streamed),
                    5 => group::<5>(m, g, xp, dp, cp, &mut tile, streamed),
                    4 => group::<4>(m, g, xp, dp, cp, &mut tile, streamed),
                    3 => group::<3>(m, g, xp, dp, cp, &mut tile, streamed),
                    2 => group::<2>(m, g, xp, dp, cp, &mut tile, streamed),
                    _ => group::<1>(m, g, xp, dp, cp, &mut tile, streamed),
                }
                for r in 0..rows_here {
                    for t in 0..tg {
                        out[(i + r) * n + t0 + t] = tile[t][r];
                    }
                }
                t0 += tg;
            }
            i += rows_here;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matrix(rows: usize, blocks: usize, seed: usize) -> (Vec<i8>, Vec<f16>) {
        let cols = blocks * Q8_BLOCK;
        let mut qs: Vec<i8> = (0..rows * cols).map(|i| ((i * 97 + seed * 13 + 3) % 256) as u8 as i8).collect();
        qs[0] = -128;
        qs[rows * cols - 1] = 127;
        let d = (0..rows * blocks).map(|b| f16::from_f32(0.001 * ((b * 7 + seed) % 23) as f32 - 0.01)).collect();
        (qs, d)
    }

    fn tokens(n: usize, blocks: usize, seed: usize) -> (Vec<i8>, Vec<f32>) {
        let cols = blocks * Q8_BLOCK;
        let x = (0..n * cols).map(|i| (((i * 31 + seed * 5 + 7) % 255) as i32 - 127) as i8).collect();
        let xd = (0..n * blocks).map(|b| 0.02 / (b % 9 + 1) as f32).collect();
        (x, xd)
    }

    /// The f64 sum of exact block products (what every path approximates) and the sum of their
    /// magnitudes (the scale of f32 rounding, since blocks of either sign cancel).
    fn exact(qs: &[i8], d: &[f16], x: &[i8], xd: &[f32], cols: usize, r: usize, t: usize) -> (f64, f64) {
        let blocks = cols / Q8_BLOCK;
        (0..blocks).fold((0.0, 0.0), |(sum, mag), b| {
            let s: i32 = (0..Q8_BLOCK).map(|j| qs[r * cols + b * Q8_BLOCK + j] as i32 * x[t * cols + b * Q8_BLOCK + j] as i32).sum();
            let v = s as f64 * d[r * blocks + b].to_f32() as f64 * xd[t * blocks + b] as f64;
            (sum + v, mag + v.abs())
        })
    }

    #[test]
    fn kernel_equals_portable_bit_for_bit_and_the_exact_sum_across_odd_shapes() {
        // Rows not a multiple of 16 (padding), 1..=19 tokens (groups of 8 plus remainders),
        // odd block counts, row ranges starting at later groups.
        for (rows, blocks) in [(1, 1), (17, 3), (40, 7), (50, 24)] {
            let cols = blocks * Q8_BLOCK;
            let (qs, d) = matrix(rows, blocks, rows);
            let m = Q8x16::pack(&qs, &d, rows, cols);
            assert_eq!(m.bytes(), rows.div_ceil(16) * 16 * (cols + 2 * blocks));
            for n in [1, 2, 7, 8, 9, 19] {
                let (x, xd) = tokens(n, blocks, n);
                for first in (0..rows).step_by(16) {
                    let count = rows - first;
                    let mut fast = vec![0f32; count * n];
                    m.dots(first, count, &x, &xd, n, &mut fast, n == 9);
                    let corr: Vec<i32> = x.chunks_exact(Q8_BLOCK).map(|c| -128 * c.iter().map(|&v| v as i32).sum::<i32>()).collect();
                    let mut slow = vec![0f32; count * n];
                    m.dots_portable(first, count, &x, &xd, &corr, n, &mut slow);
                    assert_eq!(fast.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), slow.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), "rows {rows} blocks {blocks} n {n} first {first}");
                    for i in 0..count {
                        for t in 0..n {
                            let (want, mag) = exact(&qs, &d, &x, &xd, cols, first + i, t);
                            assert!((fast[i * n + t] as f64 - want).abs() <= 1e-6 * mag.max(1e-6), "{} vs {want}", fast[i * n + t]);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn a_batch_gives_each_token_its_own_bits() {
        let (rows, blocks) = (35, 5);
        let cols = blocks * Q8_BLOCK;
        let (qs, d) = matrix(rows, blocks, 1);
        let m = Q8x16::pack(&qs, &d, rows, cols);
        let n = 11;
        let (x, xd) = tokens(n, blocks, 3);
        let mut batch = vec![0f32; rows * n];
        m.dots(0, rows, &x, &xd, n, &mut batch, false);
        for t in 0..n {
            let mut one = vec![0f32; rows];
            m.dots(0, rows, &x[t * cols..][..cols], &xd[t * blocks..][..blocks], 1, &mut one, false);
            for r in 0..rows {
                assert_eq!(batch[r * n + t].to_bits(), one[r].to_bits(), "row {r} token {t}");
            }
        }
    }
}
