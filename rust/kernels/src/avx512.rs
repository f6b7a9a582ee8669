//! AVX-512 VNNI variant (F + BW + VNNI).
//!
//! One 64-byte chunk = 16 rows × 16 columns. Selecting bits 2s..2s+1 of every byte puts, in 32-bit
//! lane r, the codes of row r for columns 4s..4s+4; `vpdpbusd` against a broadcast of those 4
//! activations adds `Σ code·x` into lane r. So each load feeds all 16 rows and no horizontal sums
//! are needed. Codes are `trit + 1`, so the result is corrected by `− Σ x` (passed in by the driver).
//! VBMI is not used: the 2-bit decode needs only byte masks (and, in the GEMM, a 16-bit shift).
//!
//! GEMV ([`gemv_tiles`]): 4 row tiles per call sharing each broadcast, codes used in place
//! (`chunk & (3 << 2s)`, scaled back per accumulation block), software prefetch.
//! GEMM ([`gemm_tiles`]): 4 row tiles × 4 tokens per micro-kernel.
//!
//! Safety contract of every function here: the CPU supports avx512f/bw/vnni (guaranteed by
//! `Kernel::resolve`), each of the tiles is readable for `c1 * 64` bytes, `x`/each token for
//! `c1 * 16` bytes, `c0 <= c1`, outputs are writable. `tile.rs` checks the bounds before calling.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use ternary::planar::TILE_ROWS;

/// Broadcast of the 4 activations at `x` (unaligned read).
#[inline(always)]
unsafe fn broadcast4(x: *const i8) -> __m512i {
    _mm512_set1_epi32(x.cast::<i32>().read_unaligned())
}

#[inline(always)]
unsafe fn finish(acc: __m512i, x_sum: i32) -> [i32; TILE_ROWS] {
    let mut out = [0i32; TILE_ROWS];
    _mm512_storeu_si512(out.as_mut_ptr().cast(), _mm512_sub_epi32(acc, _mm512_set1_epi32(x_sum)));
    out
}

/// Row tiles one GEMV call streams together (see [`gemv_tiles`]).
pub(crate) const GEMV_TILES: usize = 4;

/// Chunks per accumulation block of [`gemv_tiles`]. The shift-s accumulators hold `4^s · Σ code·x`:
/// per chunk a lane gains at most 4 · 128 · 128 = 2^16 in magnitude (code byte ≤ 0x80 for s = 3,
/// |x| ≤ 128), so 2^14 chunks keep every lane below 2^30 before the block is scaled back and folded.
const BLOCK_CHUNKS: usize = 1 << 14;

/// How far ahead (in chunks, i.e. cache lines) each tile's stream is prefetched. The hardware
/// prefetcher alone leaves the loop waiting on L3 with four interleaved streams; about 12 lines
/// ahead measured best (8–16 within noise; 32+ and L2-only hints were slower).
const PREFETCH_CHUNKS: usize = 12;

/// Least distance of the prefetch sweep of a streamed GEMV (weights from DRAM: a model larger than
/// the last-level cache). One core's hardware prefetchers keep too few misses in flight and stop
/// at every 4 KiB page, so the kernel requests the next block of tiles, in address order, while it
/// reads the current one; blocks of short rows (768 columns: 12 KiB) are swept this far ahead.
/// Measured on Zen 5, one thread, over 256 MiB of matrix copies (`bench_kernels`, "from DRAM"):
/// a fixed 16 KiB sweep, which falls inside the current block when rows exceed 1024 columns,
/// gave 0.65 of a plain read for 4096 columns; the next block in address order 0.87–0.90;
/// the same chunk of each tile one or two blocks ahead 0.77–0.84 and 0.77–0.80.
const STREAM_PREFETCH_MIN_BYTES: usize = 16 << 10;

/// `Σ trit·x` for the 16 rows of each of `NT` consecutive row tiles over chunks `c0..c1`.
///
/// Why this shape (measured on Zen 5, where it lifted one-thread GEMV from 0.65 to ~0.9 of the
/// streaming-read bandwidth):
/// - Decode without shifts: the code of shift s is used in place, `chunk & (3 << 2s)` = `4^s · code`,
///   so the shift-s accumulators hold `4^s · Σ code·x` and one exact arithmetic shift per block
///   undoes the factor: 4 ANDs + 4 `vpdpbusd` per chunk instead of 3 shifts + 4 ANDs + 4 `vpdpbusd`.
/// - `NT` tiles at once share each activation broadcast. With one tile, the four broadcast loads per
///   chunk (folded into `vpdpbusd` as `{1to16}`) were the bottleneck; with four tiles there is one
///   broadcast per four `vpdpbusd`, and 4 × 4 accumulators are enough independent chains.
/// - Software prefetch of every tile's stream (see [`PREFETCH_CHUNKS`]), or with `STREAMED`
///   one linear sweep over the next block (see [`STREAM_PREFETCH_MIN_BYTES`]).
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn gemv_tiles_nt<const NT: usize, const STREAMED: bool>(
    tiles: *const u8,
    tile_stride: usize,
    x: *const i8,
    c0: usize,
    c1: usize,
    x_sum: i32,
    out: *mut [i32; TILE_ROWS],
) {
    let masks = [
        _mm512_set1_epi8(0x03),
        _mm512_set1_epi8(0x0c),
        _mm512_set1_epi8(0x30),
        _mm512_set1_epi8(0xc0u8 as i8),
    ];
    let stream_ahead = (NT * tile_stride).max(STREAM_PREFETCH_MIN_BYTES);
    let mut total = [_mm512_setzero_si512(); NT];
    let mut start = c0;
    while start < c1 {
        let end = c1.min(start + BLOCK_CHUNKS);
        let mut acc = [[_mm512_setzero_si512(); NT]; 4];
        for c in start..end {
            let mut packed = [_mm512_setzero_si512(); NT];
            for (t, p) in packed.iter_mut().enumerate() {
                let chunk = tiles.add(t * tile_stride + c * 64);
                *p = _mm512_loadu_si512(chunk.cast());
                // A prefetch never faults; `wrapping_add` keeps the address computation defined past
                // the end of the buffer.
                if STREAMED {
                    // One linear sweep at least a block of NT tiles ahead (NT lines per step, as
                    // fast as they are consumed): over a block, the next one is requested in order.
                    let line = (c - c0) * NT + t;
                    _mm_prefetch::<_MM_HINT_T0>(tiles.wrapping_add(stream_ahead + line * 64).cast());
                } else {
                    _mm_prefetch::<_MM_HINT_T0>(chunk.wrapping_add(PREFETCH_CHUNKS * 64).cast());
                }
            }
            for s in 0..4 {
                let xb = broadcast4(x.add(c * 16 + 4 * s));
                for t in 0..NT {
                    acc[s][t] = _mm512_dpbusd_epi32(acc[s][t], _mm512_and_si512(packed[t], masks[s]), xb);
                }
            }
        }
        for t in 0..NT {
            // Exact: every lane of the shift-s sums is a multiple of 4^s.
            let lo = _mm512_add_epi32(acc[0][t], _mm512_srai_epi32::<2>(acc[1][t]));
            let hi = _mm512_add_epi32(_mm512_srai_epi32::<4>(acc[2][t]), _mm512_srai_epi32::<6>(acc[3][t]));
            total[t] = _mm512_add_epi32(total[t], _mm512_add_epi32(lo, hi));
        }
        start = end;
    }
    for (t, &sum) in total.iter().enumerate() {
        *out.add(t) = finish(sum, x_sum);
    }
}

/// [`gemv_tiles_nt`] for `n` (1..=[`GEMV_TILES`]) consecutive row tiles `tile_stride` bytes apart,
/// writing `n` outputs; `x_sum` = Σ x over chunks `c0..c1`; `streamed`: the weights come from DRAM.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemv_tiles(
    tiles: *const u8,
    tile_stride: usize,
    n: usize,
    x: *const i8,
    c0: usize,
    c1: usize,
    x_sum: i32,
    out: *mut [i32; TILE_ROWS],
    streamed: bool,
) {
    match (n, streamed) {
        (4, false) => gemv_tiles_nt::<4, false>(tiles, tile_stride, x, c0, c1, x_sum, out),
        (3, false) => gemv_tiles_nt::<3, false>(tiles, tile_stride, x, c0, c1, x_sum, out),
        (2, false) => gemv_tiles_nt::<2, false>(tiles, tile_stride, x, c0, c1, x_sum, out),
        (1, false) => gemv_tiles_nt::<1, false>(tiles, tile_stride, x, c0, c1, x_sum, out),
        (4, true) => gemv_tiles_nt::<4, true>(tiles, tile_stride, x, c0, c1, x_sum, out),
        (3, true) => gemv_tiles_nt::<3, true>(tiles, tile_stride, x, c0, c1, x_sum, out),
        (2, true) => gemv_tiles_nt::<2, true>(tiles, tile_stride, x, c0, c1, x_sum, out),
        (1, true) => gemv_tiles_nt::<1, true>(tiles, tile_stride, x, c0, c1, x_sum, out),
        _ => {}
    }
}

/// Row tiles and tokens of the GEMM micro-kernel: 4 tiles × 4 tokens = 16 accumulators, plus 4
/// packed chunks, 4 decoded code vectors and a broadcast, fit the 32 zmm registers. Each broadcast
/// feeds 4 `vpdpbusd` (one per tile) and each decoded code vector 4 (one per token): broadcast
/// loads, not the decode, were what held the earlier 1 tile × 16 tokens kernel below peak.
pub(crate) const GEMM_TILES: usize = 4;
/// Tokens per activation panel (see `panel.rs`): the micro-kernel's token count.
pub(crate) const PANEL_TOKENS: usize = 4;

/// One shift `s = SHIFT / 2` of one chunk for the `MT × NT` block: decode each tile's codes once,
/// then one broadcast per token shared by the `MT` tiles.
#[inline(always)]
unsafe fn gemm_shift<const MT: usize, const NT: usize, const SHIFT: u32>(
    packed: &[__m512i; MT],
    xs: *const i8,
    acc: &mut [[__m512i; NT]; MT],
) {
    let mask = _mm512_set1_epi8(3);
    let mut codes = [_mm512_setzero_si512(); MT];
    for (code, &p) in codes.iter_mut().zip(packed) {
        *code = _mm512_and_si512(_mm512_srli_epi16::<SHIFT>(p), mask);
    }
    for t in 0..NT {
        let xb = broadcast4(xs.add(4 * t));
        for (row, &code) in acc.iter_mut().zip(&codes) {
            row[t] = _mm512_dpbusd_epi32(row[t], code, xb);
        }
    }
}

/// Adds `Σ trit·x` over chunks `c0..c1` for `MT` tiles (`tile_stride` bytes apart) × `NT` tokens of
/// a panel (`panel` offset to the first of them, `panel_tokens` per panel row) into
/// `out[m * out_stride + t]`; `x_sums[t]` = Σ x of token t over those chunks.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_block<const MT: usize, const NT: usize>(
    tiles: *const u8,
    tile_stride: usize,
    panel: *const i8,
    panel_tokens: usize,
    c0: usize,
    c1: usize,
    x_sums: *const i32,
    out: *mut [i32; TILE_ROWS],
    out_stride: usize,
) {
    let mut acc = [[_mm512_setzero_si512(); NT]; MT];
    let step = panel_tokens * 4;
    for c in c0..c1 {
        let mut packed = [_mm512_setzero_si512(); MT];
        for (m, p) in packed.iter_mut().enumerate() {
            *p = _mm512_loadu_si512(tiles.add(m * tile_stride + c * 64).cast());
        }
        let xs = panel.add(c * 4 * step);
        gemm_shift::<MT, NT, 0>(&packed, xs, &mut acc);
        gemm_shift::<MT, NT, 2>(&packed, xs.add(step), &mut acc);
        gemm_shift::<MT, NT, 4>(&packed, xs.add(2 * step), &mut acc);
        gemm_shift::<MT, NT, 6>(&packed, xs.add(3 * step), &mut acc);
    }
    for (m, row) in acc.iter().enumerate() {
        for (t, &a) in row.iter().enumerate() {
            let dst = out.add(m * out_stride + t);
            let dots = _mm512_sub_epi32(a, _mm512_set1_epi32(*x_sums.add(t)));
            let sum = _mm512_add_epi32(_mm512_loadu_si512(dst.cast()), dots);
            _mm512_storeu_si512(dst.cast(), sum);
        }
    }
}

/// [`gemm_block`] with `NT` fixed, for `m` (1..=[`GEMM_TILES`]) tiles.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_block_tiles<const NT: usize>(
    tiles: *const u8,
    tile_stride: usize,
    m: usize,
    panel: *const i8,
    panel_tokens: usize,
    c0: usize,
    c1: usize,
    x_sums: *const i32,
    out: *mut [i32; TILE_ROWS],
    out_stride: usize,
) {
    let (t, ts, p, pt, s, o, os) = (tiles, tile_stride, panel, panel_tokens, x_sums, out, out_stride);
    match m {
        4 => gemm_block::<4, NT>(t, ts, p, pt, c0, c1, s, o, os),
        3 => gemm_block::<3, NT>(t, ts, p, pt, c0, c1, s, o, os),
        2 => gemm_block::<2, NT>(t, ts, p, pt, c0, c1, s, o, os),
        1 => gemm_block::<1, NT>(t, ts, p, pt, c0, c1, s, o, os),
        _ => {}
    }
}

/// Adds `Σ trit·x` over chunks `c0..c1` of `m ≤ GEMM_TILES` tiles × `n ≤ panel_tokens` tokens of one
/// panel into `out[i * out_stride + t]`: blocks of 4 tokens, then 2/1 for the remainder.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_tiles(
    tiles: *const u8,
    tile_stride: usize,
    m: usize,
    panel: *const i8,
    panel_tokens: usize,
    n: usize,
    c0: usize,
    c1: usize,
    x_sums: *const i32,
    out: *mut [i32; TILE_ROWS],
    out_stride: usize,
) {
    let mut t = 0;
    while t < n {
        let (xt, st, ot) = (panel.add(4 * t), x_sums.add(t), out.add(t));
        let (ts, pt, os) = (tile_stride, panel_tokens, out_stride);
        t += match n - t {
            4.. => {
                gemm_block_tiles::<4>(tiles, ts, m, xt, pt, c0, c1, st, ot, os);
                4
            }
            2.. => {
                gemm_block_tiles::<2>(tiles, ts, m, xt, pt, c0, c1, st, ot, os);
                2
            }
            _ => {
                gemm_block_tiles::<1>(tiles, ts, m, xt, pt, c0, c1, st, ot, os);
                1
            }
        };
    }
}
