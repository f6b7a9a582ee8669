//! AVX2 variant (256-bit, no VNNI).
//!
//! Same decode as the AVX-512 file, on 32-byte halves of a chunk (rows 0..8 and 8..16). Without
//! `vpdpbusd`, the dot product is `vpmaddubsw` (u8×i8 pairs → i16) then `vpmaddwd` with ones
//! (i16 pairs → i32). `vpmaddubsw` saturates, but here it cannot: codes are ≤ 2 and |x| ≤ 128, so a
//! pair is ≤ 2·2·128 = 512 in magnitude and the sum of the four shifts' pairs ≤ 2048 < 32767.
//!
//! Safety contract: as in `avx512.rs`, with AVX2 instead of AVX-512.

use std::arch::x86_64::*;

use ternary::planar::TILE_ROWS;

#[inline(always)]
unsafe fn decode(half: *const u8) -> [__m256i; 4] {
    let mask = _mm256_set1_epi8(3);
    let packed = _mm256_loadu_si256(half.cast());
    [
        _mm256_and_si256(packed, mask),
        _mm256_and_si256(_mm256_srli_epi16::<2>(packed), mask),
        _mm256_and_si256(_mm256_srli_epi16::<4>(packed), mask),
        _mm256_and_si256(_mm256_srli_epi16::<6>(packed), mask),
    ]
}

#[inline(always)]
unsafe fn broadcast4(x: *const i8) -> __m256i {
    _mm256_set1_epi32(x.cast::<i32>().read_unaligned())
}

/// Σ code·x of one chunk half for one token, as 8 i32 lanes (one per row).
#[inline(always)]
unsafe fn dot_half(codes: &[__m256i; 4], x: &[__m256i; 4]) -> __m256i {
    let p0 = _mm256_maddubs_epi16(codes[0], x[0]);
    let p1 = _mm256_maddubs_epi16(codes[1], x[1]);
    let p2 = _mm256_maddubs_epi16(codes[2], x[2]);
    let p3 = _mm256_maddubs_epi16(codes[3], x[3]);
    let sum16 = _mm256_add_epi16(_mm256_add_epi16(p0, p1), _mm256_add_epi16(p2, p3));
    _mm256_madd_epi16(sum16, _mm256_set1_epi16(1))
}

#[inline(always)]
unsafe fn broadcasts(x: *const i8) -> [__m256i; 4] {
    [broadcast4(x), broadcast4(x.add(4)), broadcast4(x.add(8)), broadcast4(x.add(12))]
}

#[inline(always)]
unsafe fn finish(lo: __m256i, hi: __m256i, x_sum: i32) -> [i32; TILE_ROWS] {
    let sum = _mm256_set1_epi32(x_sum);
    let mut out = [0i32; TILE_ROWS];
    _mm256_storeu_si256(out.as_mut_ptr().cast(), _mm256_sub_epi32(lo, sum));
    _mm256_storeu_si256(out.as_mut_ptr().add(8).cast(), _mm256_sub_epi32(hi, sum));
    out
}

/// `Σ trit·x` for the 16 rows of a tile over chunks `c0..c1`; `x_sum` = Σ x over those columns.
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn gemv_tile(tile: *const u8, x: *const i8, c0: usize, c1: usize, x_sum: i32) -> [i32; TILE_ROWS] {
    let (mut lo, mut hi) = (_mm256_setzero_si256(), _mm256_setzero_si256());
    for c in c0..c1 {
        let xb = broadcasts(x.add(c * 16));
        lo = _mm256_add_epi32(lo, dot_half(&decode(tile.add(c * 64)), &xb));
        hi = _mm256_add_epi32(hi, dot_half(&decode(tile.add(c * 64 + 32)), &xb));
    }
    finish(lo, hi, x_sum)
}

/// Broadcasts of the 4 activations of each shift s = 0..3, token t, chunk c of a panel.
#[inline(always)]
unsafe fn panel_broadcasts(panel: *const i8, panel_tokens: usize, c: usize, t: usize) -> [__m256i; 4] {
    let base = panel.add((c * 4 * panel_tokens + t) * 4);
    let step = panel_tokens * 4;
    [broadcast4(base), broadcast4(base.add(step)), broadcast4(base.add(2 * step)), broadcast4(base.add(3 * step))]
}

/// Tokens per activation panel: 2 × 4 accumulators + 4 code vectors + broadcasts fit in 16 ymm.
pub(crate) const PANEL_TOKENS: usize = 4;

/// [`gemv_tile`] for `NT` tokens of a panel (see `avx512::gemm_tile_nt`), each decoded half reused
/// by all of them.
#[target_feature(enable = "avx2")]
#[allow(clippy::needless_range_loop)] // t indexes two accumulator arrays and picks the token
unsafe fn gemm_tile_nt<const NT: usize>(
    tile: *const u8,
    panel: *const i8,
    panel_tokens: usize,
    c0: usize,
    c1: usize,
    x_sums: *const i32,
    out: *mut [i32; TILE_ROWS],
) {
    let mut lo = [_mm256_setzero_si256(); NT];
    let mut hi = [_mm256_setzero_si256(); NT];
    for c in c0..c1 {
        let codes_lo = decode(tile.add(c * 64));
        for t in 0..NT {
            lo[t] = _mm256_add_epi32(lo[t], dot_half(&codes_lo, &panel_broadcasts(panel, panel_tokens, c, t)));
        }
        let codes_hi = decode(tile.add(c * 64 + 32));
        for t in 0..NT {
            hi[t] = _mm256_add_epi32(hi[t], dot_half(&codes_hi, &panel_broadcasts(panel, panel_tokens, c, t)));
        }
    }
    for t in 0..NT {
        *out.add(t) = finish(lo[t], hi[t], *x_sums.add(t));
    }
}

/// `n ≤ panel_tokens` tokens of one panel: blocks of 4, then 2/1.
#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments)] // the raw-pointer signature shared by every variant's tile kernel
pub(crate) unsafe fn gemm_tile(
    tile: *const u8,
    panel: *const i8,
    panel_tokens: usize,
    n: usize,
    c0: usize,
    c1: usize,
    x_sums: *const i32,
    out: *mut [i32; TILE_ROWS],
) {
    let mut t = 0;
    while t < n {
        let (xt, st, ot) = (panel.add(4 * t), x_sums.add(t), out.add(t));
        let p = panel_tokens;
        let step = match n - t {
            4.. => {
                gemm_tile_nt::<4>(tile, xt, p, c0, c1, st, ot);
                4
            }
            2.. => {
                gemm_tile_nt::<2>(tile, xt, p, c0, c1, st, ot);
                2
            }
            _ => {
                gemm_tile_nt::<1>(tile, xt, p, c0, c1, st, ot);
                1
            }
        };
        t += step;
    }
}
