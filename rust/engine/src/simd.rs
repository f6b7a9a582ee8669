//! The engine's own hot loops outside the ternary kernels: the Q8_0 × Q8_0 row dot (the LM
//! head where the CPU lacks AVX-512 VNNI; there `q8x16.rs` runs it) and the f32 dot / axpy of
//! attention. Each has a portable body; on x86-64 the CPU is checked once and AVX2 (+ FMA)
//! versions run instead. Every version computes the same exact i32 block sums; f32 results
//! differ only by summation order.

use std::sync::OnceLock;

use half::f16;

use crate::linear::Q8_BLOCK;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Level {
    Portable,
    Avx2,
}

fn level() -> Level {
    static LEVEL: OnceLock<Level> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
            let avx2 = avx2 && is_x86_feature_detected!("f16c");
            if avx2 {
                return Level::Avx2;
            }
        }
        Level::Portable
    })
}

/// Q8_0 row dots: `out[r] = Σ_b wd[r][b]·xd[b]·Σ_{i∈b} w[r][i]·x[i]` for the `out.len()` rows
/// of `w` (row-major, `x.len()` columns; `wd` row-major `rows × blocks`). One call covers many
/// rows so the per-call dispatch is not paid per row (a 50k-row head is 50k rows). `streamed`:
/// the rows come from DRAM, so prefetch far ahead (see `x86::PREFETCH_BYTES`).
pub fn q8_dots(w: &[i8], wd: &[f16], x: &[i8], xd: &[f32], out: &mut [f32], streamed: bool) {
    let (cols, blocks) = (x.len(), xd.len());
    assert!(cols == blocks * Q8_BLOCK && w.len() == out.len() * cols && wd.len() == out.len() * blocks);
    match level() {
        // SAFETY: the CPU features were detected above; lengths were asserted.
        #[cfg(target_arch = "x86_64")]
        Level::Avx2 => unsafe { x86::q8_dots_avx2(w, wd, x, xd, out, streamed) },
        _ => q8_dots_portable(w, wd, x, xd, out),
    }
}

/// [`q8_dots`] of `n` tokens (`x` row-major `n × cols`, `xd` `n × blocks`): `out[r·n + t]` is
/// exactly `q8_dots` of row r with token t. (On AVX-512 VNNI CPUs the engine holds Q8_0
/// matrices interleaved instead and never comes here: `q8x16.rs` reads each row once for all
/// tokens.)
pub fn q8_dots_tokens(w: &[i8], wd: &[f16], x: &[i8], xd: &[f32], n: usize, out: &mut [f32], streamed: bool) {
    assert!(n > 0 && x.len().is_multiple_of(n) && xd.len().is_multiple_of(n));
    let (cols, blocks) = (x.len() / n, xd.len() / n);
    let rows = out.len() / n;
    assert!(cols == blocks * Q8_BLOCK && out.len() == rows * n && w.len() == rows * cols && wd.len() == rows * blocks);
    let mut dots = vec![0f32; rows];
    for t in 0..n {
        q8_dots(w, wd, &x[t * cols..][..cols], &xd[t * blocks..][..blocks], &mut dots, streamed);
        for (r, &d) in dots.iter().enumerate() {
            out[r * n + t] = d;
        }
    }
}

fn q8_dots_portable(w: &[i8], wd: &[f16], x: &[i8], xd: &[f32], out: &mut [f32]) {
    let (cols, blocks) = (x.len(), xd.len());
    for (r, o) in out.iter_mut().enumerate() {
        let (row, row_d) = (&w[r * cols..][..cols], &wd[r * blocks..][..blocks]);
        let mut acc = 0f32;
        for (b, (wb, xb)) in row.chunks_exact(Q8_BLOCK).zip(x.chunks_exact(Q8_BLOCK)).enumerate() {
            let s: i32 = wb.iter().zip(xb).map(|(&a, &c)| a as i32 * c as i32).sum();
            acc += row_d[b].to_f32() * xd[b] * s as f32;
        }
        *o = acc;
    }
}

#[inline(always)]
fn dot_body(a: &[f32], b: &[f32]) -> f32 {
    // 32 independent partial sums, so the loop vectorizes without reassociation flags into four
    // vector accumulators (one would chain every step on the add latency).
    let mut lanes = [0f32; 32];
    let (ca, cb) = (a.chunks_exact(32), b.chunks_exact(32));
    let (ta, tb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..32 {
            lanes[i] += x[i] * y[i];
        }
    }
    let mut s: f32 = lanes.iter().sum();
    for (x, y) in ta.iter().zip(tb) {
        s += x * y;
    }
    s
}

/// Σ a·b.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    match level() {
        // SAFETY: AVX2 was detected.
        #[cfg(target_arch = "x86_64")]
        Level::Avx2 => unsafe { x86::dot_avx2(a, b) },
        _ => dot_body(a, b),
    }
}

/// SwiGLU's product in place: `g[i] = silu(g[i]) · u[i]`, silu(x) = x · sigmoid(x).
pub fn silu_mul(g: &mut [f32], u: &[f32]) {
    assert_eq!(g.len(), u.len());
    match level() {
        // SAFETY: AVX2 and FMA were detected; lengths were asserted.
        #[cfg(target_arch = "x86_64")]
        Level::Avx2 => unsafe { x86::silu_mul_avx2(g, u) },
        _ => silu_mul_body(g, u),
    }
}

fn silu_mul_body(g: &mut [f32], u: &[f32]) {
    for (g, &u) in g.iter_mut().zip(u) {
        *g = *g / (1.0 + (-*g).exp()) * u;
    }
}

/// `out[i] = exp((x[i] − shift) · scale)` (f32; 0 below e^−87): the unnormalized
/// probabilities of temperature sampling over a whole vocabulary in one vectorized pass.
pub fn exp_shifted(x: &[f32], shift: f32, scale: f32, out: &mut [f32]) {
    assert_eq!(x.len(), out.len());
    match level() {
        // SAFETY: AVX2 and FMA were detected; lengths were asserted.
        #[cfg(target_arch = "x86_64")]
        Level::Avx2 => unsafe { x86::exp_shifted_avx2(x, shift, scale, out) },
        _ => exp_shifted_body(x, shift, scale, out),
    }
}

fn exp_shifted_body(x: &[f32], shift: f32, scale: f32, out: &mut [f32]) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = ((v - shift) * scale).exp();
    }
}

/// Index of the largest value, the lowest index on ties; NaNs are skipped (0 when nothing
/// compares, as for an all-NaN slice).
pub fn argmax(x: &[f32]) -> usize {
    match level() {
        // SAFETY: AVX2 was detected.
        #[cfg(target_arch = "x86_64")]
        Level::Avx2 if x.len() >= 8 => unsafe { x86::argmax_avx2(x) },
        _ => argmax_body(x, 0, f32::NEG_INFINITY, 0),
    }
}

/// [`argmax`] of `x[from..]`, starting from the best so far (`best`, at `at`).
fn argmax_body(x: &[f32], from: usize, mut best: f32, mut at: usize) -> usize {
    for (i, &v) in x.iter().enumerate().skip(from) {
        if v > best {
            (best, at) = (v, i);
        }
    }
    at
}

/// Whether every value is finite (no NaN, no ±∞): the logits of every token go through it.
pub fn all_finite(x: &[f32]) -> bool {
    match level() {
        // SAFETY: AVX2 was detected.
        #[cfg(target_arch = "x86_64")]
        Level::Avx2 => unsafe { x86::all_finite_avx2(x) },
        _ => x.iter().all(|v| v.is_finite()),
    }
}

/// Q8_0 activations: int8 absmax quantization per 32 values (as llama.cpp's, rounding half to
/// even) into `q`, one scale per block into `d`. `None` when a value is not finite.
pub fn quantize_q8(x: &[f32], q: &mut [i8], d: &mut [f32]) -> Option<()> {
    assert!(x.len() == q.len() && x.len() == d.len() * Q8_BLOCK);
    match level() {
        // SAFETY: AVX2 was detected; lengths were asserted.
        #[cfg(target_arch = "x86_64")]
        Level::Avx2 => unsafe { x86::quantize_q8_avx2(x, q, d) },
        _ => quantize_q8_body(x, q, d),
    }
}

fn quantize_q8_body(x: &[f32], q: &mut [i8], d: &mut [f32]) -> Option<()> {
    for ((src, dst), scale) in x.chunks_exact(Q8_BLOCK).zip(q.chunks_exact_mut(Q8_BLOCK)).zip(d.iter_mut()) {
        if !src.iter().all(|v| v.is_finite()) {
            return None;
        }
        let max = src.iter().fold(0f32, |m, v| m.max(v.abs()));
        let inv = if max > 0.0 { 127.0 / max } else { 0.0 };
        for (o, &v) in dst.iter_mut().zip(src) {
            *o = (v * inv).round_ties_even() as i8;
        }
        *scale = max / 127.0;
    }
    Some(())
}

/// Rotates the adjacent pairs `(head[2j], head[2j+1])` by the angles whose cosines and sines
/// are `cos[j]`, `sin[j]` (RoPE on one head; `head.len() == 2 · cos.len()`).
pub fn rope_pairs(head: &mut [f32], cos: &[f32], sin: &[f32]) {
    assert!(head.len() == 2 * cos.len() && cos.len() == sin.len());
    match level() {
        // SAFETY: AVX2 was detected; lengths were asserted.
        #[cfg(target_arch = "x86_64")]
        Level::Avx2 => unsafe { x86::rope_pairs_avx2(head, cos, sin) },
        _ => rope_pairs_body(head, cos, sin, 0),
    }
}

/// [`rope_pairs`] from pair `first` on.
fn rope_pairs_body(head: &mut [f32], cos: &[f32], sin: &[f32], first: usize) {
    for j in first..cos.len() {
        let (a, b) = (head[2 * j], head[2 * j + 1]);
        head[2 * j] = a * cos[j] - b * sin[j];
        head[2 * j + 1] = a * sin[j] + b * cos[j];
    }
}

/// An element type of the KV cache: f16 (the default) or f32.
pub trait KvElem: Copy + Send + Sync + 'static {
    const ZERO: Self;
    fn to_f32(self) -> f32;
    /// Stores `src` into `dst` (same length), rounding to this type.
    fn store(dst: &mut [Self], src: &[f32]);
    /// Eight values at `p`, widened to f32 (callers have AVX2 and F16C enabled).
    #[cfg(target_arch = "x86_64")]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256;
}

impl KvElem for f16 {
    const ZERO: Self = f16::ZERO;
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    fn store(dst: &mut [Self], src: &[f32]) {
        assert_eq!(dst.len(), src.len());
        match level() {
            // SAFETY: F16C is part of every non-portable level; lengths were asserted.
            #[cfg(target_arch = "x86_64")]
            Level::Avx2 => unsafe { x86::store_f16(dst, src) },
            _ => {
                use half::slice::HalfFloatSliceExt;
                dst.convert_from_f32_slice(src);
            }
        }
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        _mm256_cvtph_ps(_mm_loadu_si128(p.cast()))
    }
}

impl KvElem for f32 {
    const ZERO: Self = 0.0;
    fn to_f32(self) -> f32 {
        self
    }
    fn store(dst: &mut [Self], src: &[f32]) {
        dst.copy_from_slice(src);
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256 {
        std::arch::x86_64::_mm256_loadu_ps(p)
    }
}

/// One attention head of one query: `out = softmax(q·K_p · scale) · V_p` over the positions
/// `p` of `keys` / `values` (`visible × q.len()`, row p at `p · q.len()`).
pub struct HeadQuery<'a, T> {
    pub q: &'a [f32],
    pub keys: &'a [T],
    pub values: &'a [T],
    pub scale: f32,
}

pub fn attend<T: KvElem>(h: &HeadQuery<'_, T>, scores: &mut Vec<f32>, out: &mut [f32]) {
    assert!(h.keys.len() == h.values.len() && h.keys.len().is_multiple_of(h.q.len().max(1)) && out.len() == h.q.len());
    match level() {
        // SAFETY: AVX2, FMA and F16C were detected; lengths were asserted.
        #[cfg(target_arch = "x86_64")]
        Level::Avx2 => unsafe { x86::attend_avx2(h, scores, out) },
        _ => attend_body(h, scores, out),
    }
}

fn attend_body<T: KvElem>(h: &HeadQuery<'_, T>, scores: &mut Vec<f32>, out: &mut [f32]) {
    let hd = h.q.len();
    scores.clear();
    let mut max = f32::NEG_INFINITY;
    for key in h.keys.chunks_exact(hd) {
        let s = h.q.iter().zip(key).map(|(q, k)| q * k.to_f32()).sum::<f32>() * h.scale;
        scores.push(s);
        max = max.max(s);
    }
    let mut sum = 0f32;
    for s in scores.iter_mut() {
        *s = (*s - max).exp();
        sum += *s;
    }
    out.fill(0.0);
    let inv = 1.0 / sum;
    for (value, &w) in h.values.chunks_exact(hd).zip(scores.iter()) {
        for (o, v) in out.iter_mut().zip(value) {
            *o += w * inv * v.to_f32();
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{attend_body, dot_body, HeadQuery, KvElem};
    use half::f16;
    use crate::linear::Q8_BLOCK;

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
        dot_body(a, b)
    }

    /// One head's attention with AVX2: eight positions' scores at a time (eight independent
    /// FMA chains, reduced together by a transposing add tree), a vector exp, and the value sum
    /// four positions per pass over the output. Head sizes that are not a multiple of 8 take
    /// the portable body.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[allow(clippy::needless_range_loop)] // p indexes the cache rows and `scores` alike
    pub unsafe fn attend_avx2<T: KvElem>(h: &HeadQuery<'_, T>, scores: &mut Vec<f32>, out: &mut [f32]) {
        let hd = h.q.len();
        if !hd.is_multiple_of(8) || h.keys.is_empty() {
            return attend_body(h, scores, out);
        }
        let n = h.keys.len() / hd;
        scores.clear();
        scores.resize(n.next_multiple_of(8), f32::NEG_INFINITY);
        let (q, k0, v0) = (h.q.as_ptr(), h.keys.as_ptr(), h.values.as_ptr());
        // Eight values of row p from column l, widened (the caller asserted n·hd elements).
        let load = |base: *const T, p: usize, l: usize| T::load8(base.add(p * hd + l));
        let scale = _mm256_set1_ps(h.scale);
        let mut maxv = _mm256_set1_ps(f32::NEG_INFINITY);
        let mut p = 0;
        // The cache of a layer was written a whole layer ago and has left the caches since:
        // prefetch the keys ATTEND_PREFETCH positions ahead, and the values of the positions
        // being scored, so the weighted sum below finds them in cache.
        let row_bytes = hd * std::mem::size_of::<T>();
        while p + 8 <= n {
            for line in (0..8 * row_bytes).step_by(64) {
                _mm_prefetch::<_MM_HINT_T0>(k0.cast::<i8>().wrapping_add((p + ATTEND_PREFETCH) * row_bytes + line));
                _mm_prefetch::<_MM_HINT_T0>(v0.cast::<i8>().wrapping_add(p * row_bytes + line));
            }
            let mut acc = [_mm256_setzero_ps(); 8];
            for l in (0..hd).step_by(8) {
                let qv = _mm256_loadu_ps(q.add(l));
                for (j, a) in acc.iter_mut().enumerate() {
                    *a = _mm256_fmadd_ps(load(k0, p + j, l), qv, *a);
                }
            }
            let s = _mm256_mul_ps(transpose_sum8(&acc), scale);
            maxv = _mm256_max_ps(maxv, s);
            _mm256_storeu_ps(scores.as_mut_ptr().add(p), s);
            p += 8;
        }
        let mut max = hmax(maxv);
        for p in p..n {
            let mut acc = _mm256_setzero_ps();
            for l in (0..hd).step_by(8) {
                acc = _mm256_fmadd_ps(load(k0, p, l), _mm256_loadu_ps(q.add(l)), acc);
            }
            let s = hsum(acc) * h.scale;
            scores[p] = s;
            max = max.max(s);
        }
        // exp(s − max) in place; the −∞ padding past n becomes 0.
        let (maxb, mut sumv) = (_mm256_set1_ps(max), _mm256_setzero_ps());
        for c in scores.chunks_exact_mut(8) {
            let e = exp_avx2(_mm256_sub_ps(_mm256_loadu_ps(c.as_ptr()), maxb));
            sumv = _mm256_add_ps(sumv, e);
            _mm256_storeu_ps(c.as_mut_ptr(), e);
        }
        let inv = 1.0 / hsum(sumv);
        out.fill(0.0);
        let o = out.as_mut_ptr();
        let mut p = 0;
        while p + 4 <= n {
            let w = [0, 1, 2, 3].map(|j| _mm256_set1_ps(scores[p + j] * inv));
            for l in (0..hd).step_by(8) {
                let mut a = _mm256_loadu_ps(o.add(l));
                for (j, wj) in w.iter().enumerate() {
                    a = _mm256_fmadd_ps(*wj, load(v0, p + j, l), a);
                }
                _mm256_storeu_ps(o.add(l), a);
            }
            p += 4;
        }
        for p in p..n {
            let w = _mm256_set1_ps(scores[p] * inv);
            for l in (0..hd).step_by(8) {
                _mm256_storeu_ps(o.add(l), _mm256_fmadd_ps(w, load(v0, p, l), _mm256_loadu_ps(o.add(l))));
            }
        }
    }

    /// [`super::argmax`] eight lanes at a time: each lane keeps its largest value and the first
    /// index holding it (a strict `>`, so NaNs never enter); the lanes are then merged on the
    /// value, lowest index first, and the tail continues from there.
    #[target_feature(enable = "avx2")]
    pub unsafe fn argmax_avx2(x: &[f32]) -> usize {
        let n8 = x.len() / 8 * 8;
        let (mut best, mut at) = (_mm256_set1_ps(f32::NEG_INFINITY), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
        let (mut index, eight) = (at, _mm256_set1_epi32(8));
        for i in (0..n8).step_by(8) {
            let v = _mm256_loadu_ps(x.as_ptr().add(i));
            let greater = _mm256_cmp_ps(v, best, _CMP_GT_OQ);
            best = _mm256_blendv_ps(best, v, greater);
            at = _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(at), _mm256_castsi256_ps(index), greater));
            index = _mm256_add_epi32(index, eight);
        }
        let (mut values, mut indices) = ([0f32; 8], [0i32; 8]);
        _mm256_storeu_ps(values.as_mut_ptr(), best);
        _mm256_storeu_si256(indices.as_mut_ptr().cast(), at);
        let (mut top, mut first) = (values[0], indices[0]);
        for (&v, &i) in values.iter().zip(&indices).skip(1) {
            if v > top || (v == top && i < first) {
                (top, first) = (v, i);
            }
        }
        super::argmax_body(x, n8, top, first as usize)
    }

    /// [`super::KvElem::store`] for f16: eight values per F16C conversion (round to nearest
    /// even, as `half` does), the rest one by one.
    #[target_feature(enable = "avx2,f16c")]
    pub unsafe fn store_f16(dst: &mut [f16], src: &[f32]) {
        let n8 = src.len() / 8 * 8;
        for i in (0..n8).step_by(8) {
            let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_loadu_ps(src.as_ptr().add(i)));
            _mm_storeu_si128(dst.as_mut_ptr().add(i).cast(), h);
        }
        for (d, &s) in dst[n8..].iter_mut().zip(&src[n8..]) {
            *d = f16::from_f32(s);
        }
    }

    /// [`super::rope_pairs`] four pairs per step: `x·cos ∓ swap(x)·sin` with each cosine and
    /// sine repeated for both members of its pair; `addsub` subtracts in the even lanes and adds
    /// in the odd ones, with the same roundings as the portable body (no fused multiply-add).
    #[target_feature(enable = "avx2")]
    pub unsafe fn rope_pairs_avx2(head: &mut [f32], cos: &[f32], sin: &[f32]) {
        let twice = _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3);
        let n4 = cos.len() / 4 * 4;
        for j in (0..n4).step_by(4) {
            let x = _mm256_loadu_ps(head.as_ptr().add(2 * j));
            let c = _mm256_permutevar8x32_ps(_mm256_castps128_ps256(_mm_loadu_ps(cos.as_ptr().add(j))), twice);
            let s = _mm256_permutevar8x32_ps(_mm256_castps128_ps256(_mm_loadu_ps(sin.as_ptr().add(j))), twice);
            let swapped = _mm256_permute_ps::<0b10_11_00_01>(x);
            _mm256_storeu_ps(head.as_mut_ptr().add(2 * j), _mm256_addsub_ps(_mm256_mul_ps(x, c), _mm256_mul_ps(swapped, s)));
        }
        super::rope_pairs_body(head, cos, sin, n4);
    }

    /// [`super::all_finite`] 32 values per step: a value is not finite when its exponent bits
    /// are all ones; the flags of all steps are OR-ed and looked at once at the end.
    #[target_feature(enable = "avx2")]
    pub unsafe fn all_finite_avx2(x: &[f32]) -> bool {
        let exponent = _mm256_set1_epi32(0x7f80_0000);
        let mut bad = _mm256_setzero_si256();
        let n32 = x.len() / 32 * 32;
        for i in (0..n32).step_by(32) {
            for k in 0..4 {
                let bits = _mm256_and_si256(_mm256_loadu_si256(x.as_ptr().add(i + 8 * k).cast()), exponent);
                bad = _mm256_or_si256(bad, _mm256_cmpeq_epi32(bits, exponent));
            }
        }
        _mm256_testz_si256(bad, bad) == 1 && x[n32..].iter().all(|v| v.is_finite())
    }

    /// [`super::quantize_q8`] one 32-value block per step: the absmax and a non-finite flag
    /// from one pass, `_mm256_cvtps_epi32` rounding half to even (the default MXCSR mode), two
    /// saturating packs and a lane fix-up to restore the order.
    #[target_feature(enable = "avx2")]
    pub unsafe fn quantize_q8_avx2(x: &[f32], q: &mut [i8], d: &mut [f32]) -> Option<()> {
        let (sign, inf) = (_mm256_set1_ps(-0.0), _mm256_set1_ps(f32::INFINITY));
        let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        for (b, scale) in d.iter_mut().enumerate() {
            let src = x.as_ptr().add(b * super::Q8_BLOCK);
            let v = [0, 8, 16, 24].map(|o| _mm256_loadu_ps(src.add(o)));
            let abs = v.map(|v| _mm256_andnot_ps(sign, v));
            let max = _mm256_max_ps(_mm256_max_ps(abs[0], abs[1]), _mm256_max_ps(abs[2], abs[3]));
            // Not-less-than-∞, unordered: true for ±∞ and NaN.
            let bad = abs.map(|a| _mm256_cmp_ps(a, inf, _CMP_NLT_UQ));
            if _mm256_movemask_ps(_mm256_or_ps(_mm256_or_ps(bad[0], bad[1]), _mm256_or_ps(bad[2], bad[3]))) != 0 {
                return None;
            }
            let max = hmax(max);
            let inv = _mm256_set1_ps(if max > 0.0 { 127.0 / max } else { 0.0 });
            let i = v.map(|v| _mm256_cvtps_epi32(_mm256_mul_ps(v, inv)));
            let packed = _mm256_packs_epi16(_mm256_packs_epi32(i[0], i[1]), _mm256_packs_epi32(i[2], i[3]));
            _mm256_storeu_si256(q.as_mut_ptr().add(b * super::Q8_BLOCK).cast(), _mm256_permutevar8x32_epi32(packed, order));
            *scale = max / 127.0;
        }
        Some(())
    }

    /// Positions ahead at which [`attend_avx2`] prefetches keys.
    const ATTEND_PREFETCH: usize = 32;

    /// [`super::silu_mul`] eight at a time: with e = exp(−|x|) ≤ 1 (no overflow),
    /// sigmoid(x) = 1/(1+e) for x ≥ 0 and e/(1+e) below.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn silu_mul_avx2(g: &mut [f32], u: &[f32]) {
        let (n8, one) = (g.len() / 8 * 8, _mm256_set1_ps(1.0));
        let sign = _mm256_set1_ps(-0.0);
        for i in (0..n8).step_by(8) {
            let x = _mm256_loadu_ps(g.as_ptr().add(i));
            let e = exp_avx2(_mm256_or_ps(x, sign)); // exp(−|x|)
            let negative = _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_LT_OQ);
            let sigmoid = _mm256_div_ps(_mm256_blendv_ps(one, e, negative), _mm256_add_ps(one, e));
            let y = _mm256_mul_ps(_mm256_mul_ps(x, sigmoid), _mm256_loadu_ps(u.as_ptr().add(i)));
            _mm256_storeu_ps(g.as_mut_ptr().add(i), y);
        }
        super::silu_mul_body(&mut g[n8..], &u[n8..]);
    }

    /// Lane j of the result is the sum of the eight lanes of `a[j]`.
    #[inline(always)]
    unsafe fn transpose_sum8(a: &[__m256; 8]) -> __m256 {
        let (t0, t1) = (_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
        let (t2, t3) = (_mm256_hadd_ps(a[4], a[5]), _mm256_hadd_ps(a[6], a[7]));
        let (u0, u1) = (_mm256_hadd_ps(t0, t1), _mm256_hadd_ps(t2, t3));
        _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31))
    }

    /// The eight lanes of `v` folded with `op` (an element-wise add or max).
    #[inline(always)]
    unsafe fn fold8(v: __m256, op: impl Fn(__m128, __m128) -> __m128) -> f32 {
        let m = op(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let m = op(m, _mm_movehl_ps(m, m));
        _mm_cvtss_f32(op(m, _mm_shuffle_ps(m, m, 1)))
    }

    #[inline(always)]
    unsafe fn hmax(v: __m256) -> f32 {
        fold8(v, |a, b| _mm_max_ps(a, b))
    }

    /// e^x for x ≤ 0 (softmax arguments; −∞ gives 0): x = n·ln2 + r with |r| ≤ ln2/2, e^r by
    /// a degree-6 Taylor polynomial (relative error < 2e-7 on that interval), times 2^n built in
    /// the exponent bits. Below −87.3 the result would be subnormal and is flushed to 0.
    #[inline(always)]
    unsafe fn exp_avx2(x: __m256) -> __m256 {
        let underflow = _mm256_cmp_ps(x, _mm256_set1_ps(-87.3), _CMP_LT_OQ);
        let x = _mm256_max_ps(x, _mm256_set1_ps(-87.3));
        let n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        // ln2 split into a part exact in f32 and the rest (Cody–Waite), so r keeps its bits.
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_145_75), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.428_606_8e-6), r);
        let mut poly = _mm256_set1_ps(1.0 / 720.0);
        for c in [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
            poly = _mm256_fmadd_ps(poly, r, _mm256_set1_ps(c));
        }
        let pow2n = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23));
        _mm256_andnot_ps(underflow, _mm256_mul_ps(poly, pow2n))
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn exp_shifted_avx2(x: &[f32], shift: f32, scale: f32, out: &mut [f32]) {
        let n8 = x.len() / 8 * 8;
        let (sh, sc) = (_mm256_set1_ps(shift), _mm256_set1_ps(scale));
        for i in (0..n8).step_by(8) {
            let v = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x.as_ptr().add(i)), sh), sc);
            _mm256_storeu_ps(out.as_mut_ptr().add(i), exp_avx2(v));
        }
        super::exp_shifted_body(&x[n8..], shift, scale, &mut out[n8..]);
    }

    #[inline(always)]
    unsafe fn hsum(v: __m256) -> f32 {
        fold8(v, |a, b| _mm_add_ps(a, b))
    }

    /// Unsigned × signed products need one unsigned operand: |w| and x·sign(w). |w| of −128 is
    /// 0x80 = 128 as u8, so Q8_0's full int8 range is exact; x ∈ [−127, 127] never overflows.
    /// One block's float sum goes to one of four accumulators in turn: a single accumulator
    /// would chain every block on the FMA latency (4 cycles per 32 bytes, ~24 GB/s), which is
    /// below what memory delivers.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn q8_dots_avx2(w: &[i8], wd: &[f16], x: &[i8], xd: &[f32], out: &mut [f32], streamed: bool) {
        let (cols, blocks) = (x.len(), xd.len());
        let ones = _mm256_set1_epi16(1);
        let mut scales = [0f32; SCALE_RUN];
        for (r, o) in out.iter_mut().enumerate() {
            let (row, row_d) = (w.as_ptr().add(r * cols), wd.as_ptr().add(r * blocks));
            if streamed {
                prefetch_ahead(w, r * cols, cols);
            }
            let mut acc = [_mm256_setzero_ps(); 4];
            for run in (0..blocks).step_by(SCALE_RUN) {
                let len = SCALE_RUN.min(blocks - run);
                row_scales(row_d.add(run), &xd[run..][..len], &mut scales);
                let block = |b: usize| {
                    let wv = _mm256_loadu_si256(row.add((run + b) * Q8_BLOCK).cast());
                    let xv = _mm256_loadu_si256(x.as_ptr().add((run + b) * Q8_BLOCK).cast());
                    let pairs = _mm256_maddubs_epi16(_mm256_sign_epi8(wv, wv), _mm256_sign_epi8(xv, wv));
                    (_mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, ones)), _mm256_broadcast_ss(&scales[b]))
                };
                q8_blocks(len, &mut acc, block);
            }
            *o = hsum(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
        }
    }

    /// Blocks of a row whose combined scales `wd·xd` are made together, eight per F16C
    /// conversion, before the block loop reads them back one broadcast at a time.
    const SCALE_RUN: usize = 64;

    /// `out[b] = wd[b]·xd[b]` for the `xd.len()` (≤ SCALE_RUN) blocks of a run.
    #[inline(always)]
    unsafe fn row_scales(wd: *const f16, xd: &[f32], out: &mut [f32; SCALE_RUN]) {
        let n8 = xd.len() / 8 * 8;
        for b in (0..n8).step_by(8) {
            let w = _mm256_cvtph_ps(_mm_loadu_si128(wd.add(b).cast()));
            _mm256_storeu_ps(out.as_mut_ptr().add(b), _mm256_mul_ps(w, _mm256_loadu_ps(xd.as_ptr().add(b))));
        }
        for b in n8..xd.len() {
            out[b] = (*wd.add(b)).to_f32() * xd[b];
        }
    }

    /// Distance of the software prefetch of a streamed head, in bytes. One core's hardware
    /// prefetchers stop at 4 KiB pages and ramp up again after each; asking for the lines a few
    /// pages ahead keeps enough misses in flight to stream near the core's bandwidth (one
    /// thread over a 41 MB Q8_0 head: 29 GB/s without, 33 at 4 KiB, ~43 at 16 KiB).
    pub const PREFETCH_BYTES: usize = 16 << 10;

    /// Prefetches the `len` bytes that lie `PREFETCH_BYTES` after `data[at..]` (within `data`).
    #[inline(always)]
    pub unsafe fn prefetch_ahead<T>(data: &[T], at: usize, len: usize) {
        let bytes = std::mem::size_of_val(data);
        let size = std::mem::size_of::<T>();
        let (start, end) = ((at * size + PREFETCH_BYTES).min(bytes), ((at + len) * size + PREFETCH_BYTES).min(bytes));
        let base = data.as_ptr().cast::<i8>();
        let mut off = start & !63;
        while off < end {
            _mm_prefetch::<_MM_HINT_T0>(base.add(off));
            off += 64;
        }
    }

    /// Adds Σ over `blocks` of sums(b)·scale(b), where `block(b)` gives both, to four
    /// accumulators in turn.
    #[inline(always)]
    unsafe fn q8_blocks(blocks: usize, acc: &mut [__m256; 4], block: impl Fn(usize) -> (__m256, __m256)) {
        let mut b = 0;
        while b + 4 <= blocks {
            for (i, a) in acc.iter_mut().enumerate() {
                let (sums, scale) = block(b + i);
                *a = _mm256_fmadd_ps(sums, scale, *a);
            }
            b += 4;
        }
        while b < blocks {
            let (sums, scale) = block(b);
            acc[0] = _mm256_fmadd_ps(sums, scale, acc[0]);
            b += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q8_dots_match_the_portable_body_including_minus_128() {
        // 7 and 9 blocks: the four-accumulator loop plus a remainder; 70: two runs of scales,
        // the second with a 6-block tail past the 8-wide conversion; 3 rows.
        for blocks in [1, 7, 9, 70] {
            let (rows, n) = (3, 32 * blocks);
            let mut w: Vec<i8> = (0..rows * n).map(|i| ((i * 97 + 3) % 256) as u8 as i8).collect();
            w[5] = -128;
            let x: Vec<i8> = (0..n).map(|i| ((i * 31 + 7) % 255) as i32 - 127).map(|v| v as i8).collect();
            let wd: Vec<f16> = (0..rows * blocks).map(|b| f16::from_f32(0.01 * (b + 1) as f32)).collect();
            let xd: Vec<f32> = (0..blocks).map(|b| 0.02 / (b + 1) as f32).collect();
            let (mut fast, mut slow) = (vec![0.0; rows], vec![0.0; rows]);
            q8_dots(&w, &wd, &x, &xd, &mut fast, blocks == 7);
            q8_dots_portable(&w, &wd, &x, &xd, &mut slow);
            for (f, s) in fast.iter().zip(&slow) {
                assert!((f - s).abs() <= 1e-5 * s.abs().max(1.0), "{f} vs {s}");
            }
        }
    }

    #[test]
    fn q8_dots_tokens_equal_per_token_dots_bit_for_bit() {
        // Odd and even block counts, 1..=19 tokens, rows with −128 weights.
        for blocks in [1, 2, 3, 7, 24] {
            let cols = 32 * blocks;
            let rows = 5;
            let mut w: Vec<i8> = (0..rows * cols).map(|i| ((i * 97 + 3) % 256) as u8 as i8).collect();
            w[3] = -128;
            w[cols + 1] = -128;
            let wd: Vec<f16> = (0..rows * blocks).map(|b| f16::from_f32(0.01 * ((b % 13) + 1) as f32)).collect();
            for n in [1usize, 2, 5, 8, 9, 16, 19] {
                let x: Vec<i8> = (0..n * cols).map(|i| ((i * 31 + 7) % 255) as i32 - 127).map(|v| v as i8).collect();
                let xd: Vec<f32> = (0..n * blocks).map(|b| 0.02 / ((b % 11) + 1) as f32).collect();
                let mut many = vec![0f32; rows * n];
                q8_dots_tokens(&w, &wd, &x, &xd, n, &mut many, n % 2 == 1);
                for t in 0..n {
                    let mut one = vec![0f32; rows];
                    q8_dots(&w, &wd, &x[t * cols..][..cols], &xd[t * blocks..][..blocks], &mut one, false);
                    for r in 0..rows {
                        assert_eq!(many[r * n + t].to_bits(), one[r].to_bits(), "blocks {blocks} n {n} row {r} token {t}");
                    }
                }
            }
        }
    }

    #[test]
    fn exp_shifted_matches_the_portable_body() {
        let x: Vec<f32> = (0..1003).map(|i| ((i * 37) % 400) as f32 * 0.25 - 90.0).collect();
        let (mut fast, mut slow) = (vec![0f32; x.len()], vec![0f32; x.len()]);
        exp_shifted(&x, 9.5, 1.25, &mut fast);
        exp_shifted_body(&x, 9.5, 1.25, &mut slow);
        for (i, (f, s)) in fast.iter().zip(&slow).enumerate() {
            assert!((f - s).abs() <= 2e-6 * s.abs() + 1e-37, "{i}: {f} vs {s}");
        }
        assert_eq!(fast[x.iter().position(|&v| v == 9.5).unwrap()], 1.0);
    }

    #[test]
    fn dot_and_attend() {
        let a: Vec<f32> = (0..67).map(|i| i as f32 * 0.5).collect();
        let b: Vec<f32> = (0..67).map(|i| 1.0 - i as f32 * 0.25).collect();
        let expected: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((dot(&a, &b) - expected).abs() < 1e-3 * expected.abs());
        // Two positions of head_dim 2.
        let f = |v: [f32; 4]| v.map(f16::from_f32);
        let (keys, values) = (f([1.0, 0.0, 0.0, 1.0]), f([1.0, 2.0, 3.0, 4.0]));
        let h = HeadQuery { q: &[2.0, 0.0], keys: &keys, values: &values, scale: 0.5 };
        let mut out = [0.0; 2];
        attend(&h, &mut Vec::new(), &mut out);
        let w0 = 1f32.exp() / (1f32.exp() + 1.0);
        assert!((out[0] - (w0 * 1.0 + (1.0 - w0) * 3.0)).abs() < 1e-6);
        assert!((out[1] - (w0 * 2.0 + (1.0 - w0) * 4.0)).abs() < 1e-6);
    }

    #[test]
    fn argmax_matches_the_portable_body() {
        let mut rng = crate::sampling::Rng::new(3);
        for n in [1, 7, 8, 9, 16, 17, 1000, 50257] {
            let mut x: Vec<f32> = (0..n).map(|_| (rng.next_f64() * 8.0) as f32 - 4.0).collect();
            assert_eq!(argmax(&x), argmax_body(&x, 0, f32::NEG_INFINITY, 0), "n {n}");
            // Ties take the lowest index, wherever the copies fall among the lanes and the tail.
            let top = x.iter().cloned().fold(f32::NEG_INFINITY, f32::max) + 1.0;
            for at in [n - 1, n / 2, n / 3] {
                x[at] = top;
            }
            assert_eq!(argmax(&x), n / 3, "n {n}");
            x[0] = f32::NAN;
            assert_eq!(argmax(&x), n / 3 * (n > 1) as usize, "n {n}");
        }
        assert_eq!(argmax(&[f32::NEG_INFINITY; 20]), 0);
        assert_eq!(argmax(&[f32::NAN; 20]), 0);
        assert!(all_finite(&[1.0; 37]) && !all_finite(&[1.0, f32::NAN]) && !all_finite(&[0.0, 1.0, f32::INFINITY]));
        // In the 32-wide steps and in the tail, every kind of non-finite value; f32::MAX is finite.
        for at in [0, 31, 32, 77, 99] {
            for bad in [f32::NAN, -f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                let mut v = vec![f32::MAX; 100];
                assert!(all_finite(&v));
                v[at] = bad;
                assert!(!all_finite(&v), "{bad} at {at}");
            }
        }
    }

    #[test]
    fn rope_and_f16_store_match_the_portable_bodies() {
        // 4-wide steps plus a 3-pair tail; large and tiny values.
        let half = 11;
        let x: Vec<f32> = (0..2 * half).map(|i| ((i * 37 % 23) as f32 - 11.0) * 7.3e3_f32.powi(i % 3 - 1)).collect();
        let cos: Vec<f32> = (0..half).map(|j| (j as f32 * 0.7).cos()).collect();
        let sin: Vec<f32> = (0..half).map(|j| (j as f32 * 0.7).sin()).collect();
        let (mut fast, mut slow) = (x.clone(), x.clone());
        rope_pairs(&mut fast, &cos, &sin);
        rope_pairs_body(&mut slow, &cos, &sin, 0);
        assert_eq!(fast, slow);
        // f16 stores round to nearest even, overflow to ±∞ and keep subnormals, as `half` does.
        let src: Vec<f32> = x.iter().map(|v| v * 1e-3).chain([65520.0, -1e6, 3e-7, 1.0 + 1.0 / 2048.0]).collect();
        let mut stored = vec![f16::ZERO; src.len()];
        f16::store(&mut stored, &src);
        let expected: Vec<f16> = src.iter().map(|&v| f16::from_f32(v)).collect();
        assert_eq!(stored.iter().map(|h| h.to_bits()).collect::<Vec<_>>(), expected.iter().map(|h| h.to_bits()).collect::<Vec<_>>());
    }

    #[test]
    fn quantize_q8_matches_the_portable_body() {
        // Halves that round to even, ±127 ends, an all-zero block, and a large spread.
        let mut x: Vec<f32> = (0..96).map(|i| ((i * 37 % 64) as f32 - 31.5) * 0.25).collect();
        x[..32].iter_mut().enumerate().for_each(|(i, v)| *v = if i % 2 == 0 { 63.5 } else { -127.0 });
        x[32..64].fill(0.0);
        x[70] = 1e6;
        let (mut qf, mut qs) = (vec![0i8; 96], vec![0i8; 96]);
        let (mut df, mut ds) = (vec![0f32; 3], vec![0f32; 3]);
        assert!(quantize_q8(&x, &mut qf, &mut df).is_some());
        assert!(quantize_q8_body(&x, &mut qs, &mut ds).is_some());
        assert_eq!((qf, df), (qs, ds));
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            x[50] = bad;
            assert!(quantize_q8(&x, &mut [0; 96], &mut [0.0; 3]).is_none());
            assert!(quantize_q8_body(&x, &mut [0; 96], &mut [0.0; 3]).is_none());
        }
    }

    #[test]
    fn silu_mul_matches_the_portable_body() {
        // Both signs, zero, large magnitudes (exp underflow on one side), and a 3-value tail.
        let g: Vec<f32> = (0..43).map(|i| (i as f32 - 21.0) * 4.7).chain([0.0, -0.0, 1e-3, -1e-3]).collect();
        let u: Vec<f32> = (0..g.len()).map(|i| 1.0 - i as f32 * 0.05).collect();
        let (mut fast, mut slow) = (g.clone(), g.clone());
        silu_mul(&mut fast, &u);
        silu_mul_body(&mut slow, &u);
        for (i, (f, s)) in fast.iter().zip(&slow).enumerate() {
            assert!((f - s).abs() <= 1e-6 * s.abs().max(1e-3), "{i}: g {} -> {f} vs {s}", g[i]);
        }
    }

    #[test]
    fn attend_matches_the_portable_body_over_odd_lengths() {
        let mut rng = crate::sampling::Rng::new(7);
        let mut uniform = |n: usize, amp: f32| -> Vec<f32> { (0..n).map(|_| (rng.next_f64() as f32 * 2.0 - 1.0) * amp).collect() };
        // Head sizes 8 and 64 run the SIMD body, 6 the portable one; positions around the
        // 8-wide and 4-wide steps; a large score spread makes some exponents underflow.
        for (hd, amp) in [(8, 1.0), (64, 1.0), (64, 30.0), (6, 1.0)] {
            for visible in [1, 3, 4, 7, 8, 9, 12, 33, 200] {
                let keys = uniform(visible * hd, amp);
                let values = uniform(visible * hd, 1.0);
                let q = uniform(hd, 1.0);
                let half = |v: &[f32]| -> Vec<f16> { v.iter().map(|&x| f16::from_f32(x)).collect() };
                let (keys16, values16) = (half(&keys), half(&values));
                let h32 = HeadQuery { q: &q, keys: &keys, values: &values, scale: 0.125 };
                let h16 = HeadQuery { q: &q, keys: &keys16, values: &values16, scale: 0.125 };
                let (mut fast, mut slow) = (vec![0.0; hd], vec![0.0; hd]);
                for pass in 0..2 {
                    if pass == 0 {
                        attend(&h32, &mut Vec::new(), &mut fast);
                        attend_body(&h32, &mut Vec::new(), &mut slow);
                    } else {
                        attend(&h16, &mut Vec::new(), &mut fast);
                        attend_body(&h16, &mut Vec::new(), &mut slow);
                    }
                    for (f, s) in fast.iter().zip(&slow) {
                        // Summation order differs (eight lanes vs one running sum): f32 rounding only.
                        assert!((f - s).abs() <= 2e-5 * s.abs().max(1.0), "hd {hd} visible {visible} pass {pass}: {f} vs {s}");
                    }
                }
            }
        }
    }
}
