//! Safe entry points to the per-variant tile kernels: the one place that checks bounds and then
//! calls the `unsafe` SIMD code. A failed assertion here is a bug in the drivers, not bad input
//! (drivers validate user input and return errors before getting here).

use std::ops::Range;

use ternary::planar::{CHUNK_BYTES, CHUNK_COLS, TILE_ROWS};

use crate::variant::{Kernel, Variant};
use crate::Residency;

/// Most row tiles any variant streams in one GEMV call (drivers size stack buffers with it).
pub(crate) const MAX_GEMV_TILES: usize = 4;
#[cfg(target_arch = "x86_64")]
const _: () = assert!(crate::avx512::GEMV_TILES <= MAX_GEMV_TILES);

/// Row tiles per GEMV call (≤ [`MAX_GEMV_TILES`]): how many consecutive tiles a variant streams
/// together.
pub(crate) fn gemv_tiles_per_call(kernel: Kernel) -> usize {
    match kernel.variant() {
        #[cfg(target_arch = "x86_64")]
        Variant::Avx512 | Variant::Amx => crate::avx512::GEMV_TILES,
        _ => 1,
    }
}

/// `Σ trit·x` for the 16 rows of each of `out.len()` (≤ [`gemv_tiles_per_call`]) consecutive row
/// tiles over `chunks`: tile i starts at byte `i * tile_stride` of `tiles`; `x_sum` is Σ x over the
/// same columns. `residency` picks the prefetch (only the AVX-512 kernel prefetches).
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemv_tiles(
    kernel: Kernel,
    residency: Residency,
    tiles: &[u8],
    tile_stride: usize,
    x: &[i8],
    chunks: Range<usize>,
    x_sum: i32,
    out: &mut [[i32; TILE_ROWS]],
) {
    let n = out.len();
    if n == 0 {
        return;
    }
    assert!(n <= gemv_tiles_per_call(kernel));
    assert!(chunks.start <= chunks.end && chunks.end * CHUNK_BYTES <= tile_stride);
    assert!((n - 1) * tile_stride + chunks.end * CHUNK_BYTES <= tiles.len() && chunks.end * CHUNK_COLS <= x.len());
    let tile = |i: usize| &tiles[i * tile_stride..][..chunks.end * CHUNK_BYTES];
    match kernel.variant() {
        // SAFETY: `Kernel` guarantees CPU support; the asserts above keep every read inside `tiles`
        // and `x`, and `n ≤ GEMV_TILES` outputs are written.
        #[cfg(target_arch = "x86_64")]
        Variant::Avx512 | Variant::Amx => unsafe {
            let (t, xp, o) = (tiles.as_ptr(), x.as_ptr(), out.as_mut_ptr());
            crate::avx512::gemv_tiles(t, tile_stride, n, xp, chunks.start, chunks.end, x_sum, o, residency == Residency::Streamed)
        },
        // SAFETY: as above, one tile at a time.
        #[cfg(target_arch = "x86_64")]
        Variant::Avx2 => {
            for (i, dst) in out.iter_mut().enumerate() {
                let t = tile(i).as_ptr();
                *dst = unsafe { crate::avx2::gemv_tile(t, x.as_ptr(), chunks.start, chunks.end, x_sum) };
            }
        }
        // `Kernel::resolve` never yields a SIMD variant off x86-64.
        _ => {
            for (i, dst) in out.iter_mut().enumerate() {
                *dst = crate::scalar::gemv_tile(tile(i), x, chunks.clone());
            }
        }
    }
}

/// Asks for the cache lines of `data` ahead of use (no-op off x86-64).
#[inline(always)]
pub(crate) fn prefetch<T>(data: &[T]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let (start, bytes) = (data.as_ptr().cast::<i8>(), std::mem::size_of_val(data));
        for offset in (0..bytes).step_by(64) {
            // SAFETY: a prefetch never faults, and the address is inside `data`.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(start.add(offset)) };
        }
    }
}

/// Tokens per activation panel for a variant (what its GEMM micro-kernel holds in registers).
pub(crate) fn panel_tokens(kernel: Kernel) -> usize {
    match kernel.variant() {
        #[cfg(target_arch = "x86_64")]
        Variant::Avx2 => crate::avx2::PANEL_TOKENS,
        #[cfg(target_arch = "x86_64")]
        Variant::Avx512 | Variant::Amx => crate::avx512::PANEL_TOKENS,
        // The scalar reference has no register budget; it uses the widest panel.
        _ => MAX_PANEL_TOKENS,
    }
}

/// Row tiles per GEMM call (the variant's micro-kernel height in tiles).
pub(crate) fn gemm_tiles_per_call(kernel: Kernel) -> usize {
    match kernel.variant() {
        #[cfg(target_arch = "x86_64")]
        Variant::Avx512 | Variant::Amx => crate::avx512::GEMM_TILES,
        _ => 1,
    }
}

/// Adds `Σ trit·x` over `chunks` for `m` consecutive row tiles (tile i at byte `i * tile_stride` of
/// `tiles`) × the first `n` tokens of an activation panel of `panel_tokens` tokens (see `panel.rs`)
/// into `out[i * out_stride + t]`; token t has column sum `x_sums[t]` over `chunks`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_tiles(
    kernel: Kernel,
    tiles: &[u8],
    tile_stride: usize,
    m: usize,
    panel: &[i8],
    panel_tokens: usize,
    n: usize,
    chunks: Range<usize>,
    x_sums: &[i32],
    out: &mut [[i32; TILE_ROWS]],
    out_stride: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(m <= gemm_tiles_per_call(kernel));
    assert!(chunks.start <= chunks.end && chunks.end * CHUNK_BYTES <= tile_stride);
    assert!((m - 1) * tile_stride + chunks.end * CHUNK_BYTES <= tiles.len());
    assert!(x_sums.len() >= n && n <= panel_tokens && n <= out_stride);
    assert!(chunks.end * CHUNK_COLS * panel_tokens <= panel.len());
    assert!((m - 1) * out_stride + n <= out.len());
    match kernel.variant() {
        // SAFETY: `Kernel` guarantees CPU support; the asserts above bound the tile reads, the panel
        // reads (the highest address read is below `chunks.end * 16 * panel_tokens`) and the outputs.
        #[cfg(target_arch = "x86_64")]
        Variant::Avx512 | Variant::Amx => unsafe {
            let (t, x, s, o) = (tiles.as_ptr(), panel.as_ptr(), x_sums.as_ptr(), out.as_mut_ptr());
            crate::avx512::gemm_tiles(t, tile_stride, m, x, panel_tokens, n, chunks.start, chunks.end, s, o, out_stride)
        },
        // The one-tile variants (`m == 1`).
        _ => {
            for i in 0..m {
                let tile = &tiles[i * tile_stride..][..chunks.end * CHUNK_BYTES];
                let mut dots = [[0; TILE_ROWS]; MAX_PANEL_TOKENS];
                gemm_tile(kernel, tile, panel, panel_tokens, chunks.clone(), x_sums, &mut dots[..n]);
                for (dst, d) in out[i * out_stride..][..n].iter_mut().zip(&dots) {
                    for (a, b) in dst.iter_mut().zip(d) {
                        *a += b;
                    }
                }
            }
        }
    }
}

/// Widest activation panel of any variant.
const MAX_PANEL_TOKENS: usize = 16;

/// `Σ trit·x` for one tile × the first `out.len()` tokens of a panel (the one-tile variants).
fn gemm_tile(
    kernel: Kernel,
    tile: &[u8],
    panel: &[i8],
    panel_tokens: usize,
    chunks: Range<usize>,
    x_sums: &[i32],
    out: &mut [[i32; TILE_ROWS]],
) {
    match kernel.variant() {
        // SAFETY: as in `gemm_tiles` (its asserts cover this tile, panel and output).
        #[cfg(target_arch = "x86_64")]
        Variant::Avx2 => unsafe {
            let (t, x, s, o) = (tile.as_ptr(), panel.as_ptr(), x_sums.as_ptr(), out.as_mut_ptr());
            crate::avx2::gemm_tile(t, x, panel_tokens, out.len(), chunks.start, chunks.end, s, o)
        },
        _ => crate::scalar::gemm_tile(tile, panel, panel_tokens, chunks, out),
    }
}

/// The AMX GEMM's integer dots (see `amx.rs`): `dots[i·n + t] = Σ trit·x` over `chunks` for the
/// `m` row tiles at `tiles` (`tile_stride` bytes apart) and every token of `x`.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
pub(crate) fn amx_group_dots(
    kernel: Kernel,
    tiles: &[u8],
    tile_stride: usize,
    m: usize,
    chunks: Range<usize>,
    x: &crate::amx::TileActivations,
    x_sums: &[i32],
    dots: &mut [[i32; TILE_ROWS]],
) {
    assert_eq!(kernel.variant(), Variant::Amx);
    assert!(m >= 1 && chunks.start <= chunks.end && chunks.end * CHUNK_BYTES <= tile_stride);
    assert!((m - 1) * tile_stride + chunks.end * CHUNK_BYTES <= tiles.len());
    assert!(chunks.end * CHUNK_COLS <= x.stride() && x_sums.len() >= x.n_tokens() && dots.len() >= m * x.n_tokens());
    // SAFETY: `Kernel` guarantees AMX (and AVX-512) support; the asserts above are the function's
    // bounds contract.
    unsafe { crate::amx::group_dots(tiles.as_ptr(), tile_stride, m, chunks, x, x_sums, dots) }
}
