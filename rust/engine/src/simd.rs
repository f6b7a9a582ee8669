//! The engine's own hot loops outside the ternary kernels: the Q8_0 × Q8_0 row dot (the LM
//! head) and the f32 dot / axpy of attention. Each has a portable body; on x86-64 the CPU is
//! checked once and AVX2 (+ FMA) or AVX-512 VNNI versions run instead. Every version computes
//! the same exact i32 block sums; f32 results differ only by summation order.

use std::sync::OnceLock;

use crate::linear::Q8_BLOCK;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Level {
    Portable,
    Avx2,
    Vnni,
}

fn level() -> Level {
    static LEVEL: OnceLock<Level> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
            if avx2 && is_x86_feature_detected!("avx512vnni") && is_x86_feature_detected!("avx512vl") {
                return Level::Vnni;
            }
            if avx2 {
                return Level::Avx2;
            }
        }
        Level::Portable
    })
}

/// Σ_b wd[b]·xd[b]·Σ_{i∈b} w[i]·x[i] over Q8_0 blocks (`w.len() == x.len() == 32·wd.len()`).
pub fn q8_dot(w: &[i8], wd: &[f32], x: &[i8], xd: &[f32]) -> f32 {
    assert!(w.len() == x.len() && w.len() == wd.len() * Q8_BLOCK && xd.len() == wd.len());
    match level() {
        // SAFETY: the CPU features were detected above; lengths were asserted.
        #[cfg(target_arch = "x86_64")]
        Level::Vnni => unsafe { x86::q8_dot_vnni(w, wd, x, xd) },
        #[cfg(target_arch = "x86_64")]
        Level::Avx2 => unsafe { x86::q8_dot_avx2(w, wd, x, xd) },
        _ => q8_dot_portable(w, wd, x, xd),
    }
}

fn q8_dot_portable(w: &[i8], wd: &[f32], x: &[i8], xd: &[f32]) -> f32 {
    let mut acc = 0f32;
    for (b, (wb, xb)) in w.chunks_exact(Q8_BLOCK).zip(x.chunks_exact(Q8_BLOCK)).enumerate() {
        let s: i32 = wb.iter().zip(xb).map(|(&a, &c)| a as i32 * c as i32).sum();
        acc += wd[b] * xd[b] * s as f32;
    }
    acc
}

#[inline(always)]
fn dot_body(a: &[f32], b: &[f32]) -> f32 {
    // Eight independent partial sums so the loop vectorizes without reassociation flags.
    let mut lanes = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ta, tb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            lanes[i] += x[i] * y[i];
        }
    }
    let mut s: f32 = lanes.iter().sum();
    for (x, y) in ta.iter().zip(tb) {
        s += x * y;
    }
    s
}

#[inline(always)]
fn axpy_body(out: &mut [f32], w: f32, v: &[f32]) {
    for (o, &x) in out.iter_mut().zip(v) {
        *o += w * x;
    }
}

/// Σ a·b.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    match level() {
        // SAFETY: AVX2 was detected.
        #[cfg(target_arch = "x86_64")]
        Level::Avx2 | Level::Vnni => unsafe { x86::dot_avx2(a, b) },
        _ => dot_body(a, b),
    }
}

/// One attention head of one query: `out = softmax(q·K_p · scale) · V_p` over positions
/// `p < visible`, where K_p / V_p are `keys/values[p·stride + offset ..][..q.len()]`.
pub struct HeadQuery<'a> {
    pub q: &'a [f32],
    pub keys: &'a [f32],
    pub values: &'a [f32],
    pub stride: usize,
    pub offset: usize,
    pub visible: usize,
    pub scale: f32,
}

pub fn attend(h: &HeadQuery<'_>, scores: &mut Vec<f32>, out: &mut [f32]) {
    match level() {
        // SAFETY: AVX2 and FMA were detected.
        #[cfg(target_arch = "x86_64")]
        Level::Avx2 | Level::Vnni => unsafe { x86::attend_avx2(h, scores, out) },
        _ => attend_body(h, scores, out),
    }
}

#[inline(always)]
fn attend_body(h: &HeadQuery<'_>, scores: &mut Vec<f32>, out: &mut [f32]) {
    let hd = h.q.len();
    // Plain loops, not iterator adaptors: those compile as separate generic functions that
    // would not inherit the caller's target features.
    scores.clear();
    scores.resize(h.visible, 0.0);
    let mut max = f32::NEG_INFINITY;
    for (p, s) in scores.iter_mut().enumerate() {
        *s = dot_body(h.q, &h.keys[p * h.stride + h.offset..][..hd]) * h.scale;
        max = max.max(*s);
    }
    let mut sum = 0f32;
    for s in scores.iter_mut() {
        *s = (*s - max).exp();
        sum += *s;
    }
    out.fill(0.0);
    let inv = 1.0 / sum;
    for (p, &w) in scores.iter().enumerate() {
        axpy_body(out, w * inv, &h.values[p * h.stride + h.offset..][..hd]);
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{attend_body, dot_body, HeadQuery};
    use crate::linear::Q8_BLOCK;

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
        dot_body(a, b)
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn attend_avx2(h: &HeadQuery<'_>, scores: &mut Vec<f32>, out: &mut [f32]) {
        attend_body(h, scores, out)
    }

    #[inline(always)]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    /// Unsigned × signed products need one unsigned operand: |w| and x·sign(w). |w| of −128 is
    /// 0x80 = 128 as u8, so Q8_0's full int8 range is exact; x ∈ [−127, 127] never overflows.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn q8_dot_avx2(w: &[i8], wd: &[f32], x: &[i8], xd: &[f32]) -> f32 {
        let ones = _mm256_set1_epi16(1);
        let mut acc = _mm256_setzero_ps();
        for b in 0..wd.len() {
            let wv = _mm256_loadu_si256(w.as_ptr().add(b * Q8_BLOCK).cast());
            let xv = _mm256_loadu_si256(x.as_ptr().add(b * Q8_BLOCK).cast());
            let pairs = _mm256_maddubs_epi16(_mm256_sign_epi8(wv, wv), _mm256_sign_epi8(xv, wv));
            let sums = _mm256_madd_epi16(pairs, ones);
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), _mm256_set1_ps(wd[b] * xd[b]), acc);
        }
        hsum(acc)
    }

    #[target_feature(enable = "avx2,fma,avx512f,avx512vl,avx512vnni")]
    pub unsafe fn q8_dot_vnni(w: &[i8], wd: &[f32], x: &[i8], xd: &[f32]) -> f32 {
        let mut acc = _mm256_setzero_ps();
        for b in 0..wd.len() {
            let wv = _mm256_loadu_si256(w.as_ptr().add(b * Q8_BLOCK).cast());
            let xv = _mm256_loadu_si256(x.as_ptr().add(b * Q8_BLOCK).cast());
            let sums = _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_sign_epi8(wv, wv), _mm256_sign_epi8(xv, wv));
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), _mm256_set1_ps(wd[b] * xd[b]), acc);
        }
        hsum(acc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q8_dot_matches_the_portable_body_including_minus_128() {
        let n = 32 * 7;
        let w: Vec<i8> = (0..n).map(|i| ((i * 97 + 3) % 256) as u8 as i8).collect(); // includes -128
        let x: Vec<i8> = (0..n).map(|i| ((i * 31 + 7) % 255 - 127) as i8).collect();
        let wd: Vec<f32> = (0..7).map(|b| 0.01 * (b + 1) as f32).collect();
        let xd: Vec<f32> = (0..7).map(|b| 0.02 / (b + 1) as f32).collect();
        let (fast, slow) = (q8_dot(&w, &wd, &x, &xd), q8_dot_portable(&w, &wd, &x, &xd));
        assert!((fast - slow).abs() <= 1e-5 * slow.abs().max(1.0), "{fast} vs {slow}");
        assert!(w.contains(&-128));
    }

    #[test]
    fn dot_and_attend() {
        let a: Vec<f32> = (0..67).map(|i| i as f32 * 0.5).collect();
        let b: Vec<f32> = (0..67).map(|i| 1.0 - i as f32 * 0.25).collect();
        let expected: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((dot(&a, &b) - expected).abs() < 1e-3 * expected.abs());
        // Two positions, head_dim 2 at offset 1 of a stride-3 cache.
        let keys = [9.0, 1.0, 0.0, 9.0, 0.0, 1.0];
        let values = [9.0, 1.0, 2.0, 9.0, 3.0, 4.0];
        let h = HeadQuery { q: &[2.0, 0.0], keys: &keys, values: &values, stride: 3, offset: 1, visible: 2, scale: 0.5 };
        let mut out = [0.0; 2];
        attend(&h, &mut Vec::new(), &mut out);
        let w0 = 1f32.exp() / (1f32.exp() + 1.0);
        assert!((out[0] - (w0 * 1.0 + (1.0 - w0) * 3.0)).abs() < 1e-6);
        assert!((out[1] - (w0 * 2.0 + (1.0 - w0) * 4.0)).abs() < 1e-6);
    }
}
