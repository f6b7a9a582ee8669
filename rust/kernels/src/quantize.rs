//! Per-token int8 activation quantization (BitNet b1.58: absmax, `q = round(x · 127 / max|x|)`).
//!
//! Rounding is half-to-even (as `torch.round`), values land in [-127, 127]: the quantizer never
//! produces -128 (|x · 127/max| ≤ 127). Kernels nevertheless accept -128 from
//! [`QuantizedActivations::from_i8`], and the tests cover it.
//!
//! Speed: the same plain-Rust body is compiled twice, once for baseline x86-64 and once inside an
//! `#[target_feature(enable = "avx2")]` wrapper, so LLVM vectorizes it to `vroundps`/`vcvttps2dq`
//! without hand-written intrinsics. IEEE arithmetic makes both copies bit-identical.

use ternary::planar::CHUNK_COLS;

use crate::KernelError;

/// Int8 activations for `n_tokens` tokens, each padded with zeros to `stride` (a multiple of the
/// planar chunk width) so kernels can read whole chunks, plus one dequantization scale per token
/// (`x ≈ q · scale`).
#[derive(Clone, Debug, PartialEq)]
pub struct QuantizedActivations {
    n_tokens: usize,
    cols: usize,
    stride: usize,
    values: Vec<i8>,
    scales: Vec<f32>,
}

impl QuantizedActivations {
    /// Quantizes row-major f32 activations `n_tokens × cols`.
    /// Many tokens (a prompt) are split over the kernels' threads.
    pub fn quantize(x: &[f32], n_tokens: usize, cols: usize) -> Result<Self, KernelError> {
        use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering::Relaxed};
        let mut out = Self::zeros(n_tokens, cols)?;
        check_len(x.len(), n_tokens, cols)?;
        let use_avx2 = avx2_available();
        let stride = out.stride;
        let scales: Vec<AtomicU32> = (0..n_tokens).map(|_| AtomicU32::new(0)).collect();
        // The first bad (token, column), as token · cols + col; usize::MAX when none.
        let first_bad = AtomicUsize::new(usize::MAX);
        let quantize_rows = |first: usize, dst: &mut [i8]| {
            for (i, dst) in dst.chunks_exact_mut(stride).enumerate() {
                let token = first + i;
                let row = &x[token * cols..][..cols];
                let result = if use_avx2 {
                    // SAFETY: AVX2 presence was checked above.
                    #[cfg(target_arch = "x86_64")]
                    unsafe {
                        quantize_row_avx2(row, &mut dst[..cols])
                    }
                    #[cfg(not(target_arch = "x86_64"))]
                    quantize_row_body(row, &mut dst[..cols])
                } else {
                    quantize_row_body(row, &mut dst[..cols])
                };
                match result {
                    Ok(scale) => scales[token].store(scale.to_bits(), Relaxed),
                    Err(col) => {
                        first_bad.fetch_min(token * cols + col, Relaxed);
                    }
                }
            }
        };
        // Tokens per task: a prompt's rows are split over the threads; one token is one task,
        // which runs inline.
        const TOKENS_PER_TASK: usize = 8;
        crate::for_each_chunk(&mut out.values, TOKENS_PER_TASK * stride, |task, dst| quantize_rows(task * TOKENS_PER_TASK, dst));
        let bad = first_bad.into_inner();
        if bad != usize::MAX {
            let (token, col) = (bad / cols, bad % cols);
            return Err(KernelError::NonFiniteActivation { token, col, value: x[bad] });
        }
        for (dst, s) in out.scales.iter_mut().zip(&scales) {
            *dst = f32::from_bits(s.load(Relaxed));
        }
        Ok(out)
    }

    /// Wraps already-quantized int8 values (row-major `n_tokens × cols`) and their per-token scales.
    pub fn from_i8(values: &[i8], n_tokens: usize, cols: usize, scales: &[f32]) -> Result<Self, KernelError> {
        let mut out = Self::zeros(n_tokens, cols)?;
        check_len(values.len(), n_tokens, cols)?;
        if scales.len() != n_tokens {
            return Err(KernelError::ActivationScales { expected: n_tokens, got: scales.len() });
        }
        if let Some((index, &value)) = scales.iter().enumerate().find(|(_, s)| !(s.is_finite() && **s >= 0.0)) {
            return Err(KernelError::BadActivationScale { index, value });
        }
        for (src, dst) in values.chunks_exact(cols).zip(out.values.chunks_exact_mut(out.stride)) {
            dst[..cols].copy_from_slice(src);
        }
        out.scales.copy_from_slice(scales);
        Ok(out)
    }

    fn zeros(n_tokens: usize, cols: usize) -> Result<Self, KernelError> {
        if n_tokens == 0 || cols == 0 {
            return Err(KernelError::EmptyActivations { n_tokens, cols });
        }
        let stride = cols.next_multiple_of(CHUNK_COLS);
        let total = stride.checked_mul(n_tokens).ok_or(KernelError::ActivationLength {
            n_tokens,
            cols,
            expected: usize::MAX,
            got: 0,
        })?;
        Ok(Self { n_tokens, cols, stride, values: vec![0; total], scales: vec![0.0; n_tokens] })
    }

    pub fn n_tokens(&self) -> usize {
        self.n_tokens
    }
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// Distance between tokens in [`values`](Self::values), ≥ `cols`, multiple of 16.
    pub fn stride(&self) -> usize {
        self.stride
    }
    /// Padded values, `n_tokens × stride`, zeros past `cols`.
    pub fn values(&self) -> &[i8] {
        &self.values
    }
    /// The unpadded values of one token.
    pub fn token(&self, token: usize) -> &[i8] {
        &self.values[token * self.stride..][..self.cols]
    }
    /// Per-token dequantization scales (`max|x| / 127`, 0 for an all-zero token).
    pub fn scales(&self) -> &[f32] {
        &self.scales
    }
}

fn check_len(got: usize, n_tokens: usize, cols: usize) -> Result<(), KernelError> {
    let expected = n_tokens * cols; // cannot overflow: zeros() allocated a larger buffer already
    if got != expected {
        return Err(KernelError::ActivationLength { n_tokens, cols, expected, got });
    }
    Ok(())
}

fn avx2_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn quantize_row_avx2(x: &[f32], q: &mut [i8]) -> Result<f32, usize> {
    quantize_row_body(x, q)
}

/// Quantizes one token; returns its dequantization scale, or the index of a non-finite value.
// `!(a <= f32::MAX)` on purpose: NaN compares false, so one comparison flags NaN and ±inf alike
// and the lane loop still vectorizes.
#[allow(clippy::neg_cmp_op_on_partial_ord)]
#[inline(always)]
fn quantize_row_body(x: &[f32], q: &mut [i8]) -> Result<f32, usize> {
    const LANES: usize = 16;
    // Lane-wise max and "non-finite seen" flags so the loop vectorizes (a scalar f32 max
    // reduction does not, because of NaN ordering).
    let mut lane_max = [0f32; LANES];
    let mut lane_bad = [false; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for i in 0..LANES {
            let a = chunk[i].abs();
            lane_bad[i] |= !(a <= f32::MAX);
            lane_max[i] = lane_max[i].max(a);
        }
    }
    let mut max = lane_max.iter().fold(0f32, |m, &v| m.max(v));
    let mut bad = lane_bad.iter().any(|&b| b);
    for &v in tail {
        bad |= !(v.abs() <= f32::MAX);
        max = max.max(v.abs());
    }
    if bad {
        return Err(x.iter().position(|v| !v.is_finite()).unwrap_or(0));
    }
    if max == 0.0 {
        q.fill(0);
        return Ok(0.0);
    }
    let inv = 127.0 / max;
    for (dst, &v) in q.iter_mut().zip(x) {
        let r = (v * inv).round_ties_even().clamp(-127.0, 127.0);
        // SAFETY: r is finite (non-finite inputs returned above) and within [-127, 127]. The
        // unchecked cast vectorizes (`vcvttps2dq` + packs); a saturating `as i8` does not (LLVM
        // emits one scalar conversion and byte insert per value, 5x slower).
        *dst = unsafe { r.to_int_unchecked::<i32>() } as i8;
    }
    Ok(max / 127.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absmax_quantization() {
        let q = QuantizedActivations::quantize(&[0.5, -1.0, 0.25, 0.0, 2.0, -2.0, 0.0, 0.0], 2, 4).unwrap();
        assert_eq!(q.stride(), 16);
        // 0.25 * 127 = 31.75 -> 32; 0.5 * 127 = 63.5 -> 64 (ties to even)
        assert_eq!(q.token(0), &[64, -127, 32, 0]);
        assert_eq!(q.token(1), &[127, -127, 0, 0]);
        assert_eq!(q.scales(), &[1.0 / 127.0, 2.0 / 127.0]);
        assert!(q.values()[4..16].iter().all(|&v| v == 0));
    }

    #[test]
    fn zero_token_has_zero_scale() {
        let q = QuantizedActivations::quantize(&[0.0; 5], 1, 5).unwrap();
        assert_eq!((q.token(0), q.scales()), (&[0i8; 5][..], &[0.0f32][..]));
    }

    #[test]
    fn simd_and_baseline_copies_agree() {
        let x: Vec<f32> = (0..1000).map(|i| ((i * 7919) % 2001) as f32 / 37.0 - 27.0).collect();
        let mut a = vec![0i8; x.len()];
        let mut b = vec![0i8; x.len()];
        let sa = quantize_row_body(&x, &mut a).unwrap();
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") {
            let sb = unsafe { quantize_row_avx2(&x, &mut b) }.unwrap();
            assert_eq!((sa, &a), (sb, &b));
        }
        assert!(a.iter().all(|&v| v >= -127));
    }

    #[test]
    fn bad_activations_are_errors() {
        assert!(matches!(
            QuantizedActivations::quantize(&[1.0, f32::NAN, 0.0], 1, 3),
            Err(KernelError::NonFiniteActivation { token: 0, col: 1, .. })
        ));
        let inf = QuantizedActivations::quantize(&[0.0; 17].iter().chain(&[f32::INFINITY]).copied().collect::<Vec<_>>(), 1, 18);
        assert!(matches!(inf, Err(KernelError::NonFiniteActivation { col: 17, .. })));
        assert!(matches!(QuantizedActivations::quantize(&[1.0; 5], 2, 3), Err(KernelError::ActivationLength { .. })));
        assert!(matches!(QuantizedActivations::quantize(&[], 0, 3), Err(KernelError::EmptyActivations { .. })));
        assert!(matches!(
            QuantizedActivations::from_i8(&[1; 6], 2, 3, &[1.0]),
            Err(KernelError::ActivationScales { .. })
        ));
        assert!(matches!(
            QuantizedActivations::from_i8(&[1; 6], 2, 3, &[1.0, -1.0]),
            Err(KernelError::BadActivationScale { index: 1, .. })
        ));
    }

    #[test]
    fn many_tokens_split_over_threads_match_one_at_a_time() {
        crate::set_num_threads(2).unwrap();
        let (n, cols) = (37, 50);
        let mut x: Vec<f32> = (0..n * cols).map(|i| ((i * 7919) % 201) as f32 - 100.0).collect();
        let all = QuantizedActivations::quantize(&x, n, cols).unwrap();
        for t in 0..n {
            let one = QuantizedActivations::quantize(&x[t * cols..][..cols], 1, cols).unwrap();
            assert_eq!((all.token(t), all.scales()[t]), (one.token(0), one.scales()[0]), "token {t}");
        }
        // The first bad value is reported, whichever thread met it.
        x[30 * cols + 4] = f32::NAN;
        x[21 * cols + 9] = f32::INFINITY;
        let err = QuantizedActivations::quantize(&x, n, cols);
        assert!(matches!(err, Err(KernelError::NonFiniteActivation { token: 21, col: 9, .. })), "{err:?}");
    }
}
