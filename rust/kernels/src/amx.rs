//! AMX-INT8 variant: the GEMM's integer dots as tile products (Intel Sapphire Rapids and later).
//!
//! One `tdpbsud` multiplies a 16 × 64 tile of signed int8 activations (16 tokens, 64 columns) by
//! a 64 × 16 tile of unsigned bytes (16 weight rows) into 16 × 16 i32 sums: 16K multiply-adds per
//! instruction, where a `vpdpbusd` does 64. The planar layout already has the B tile's shape: a
//! chunk (16 rows × 16 columns, 2-bit codes) masked at shift s gives, in 32-bit lane r, the codes of
//! row r for columns 4s..4s+4, which is one row of a B tile in the VNNI layout (N = 16 rows × 4
//! bytes of K). Four chunks × four shifts are the 16 rows of one B tile (K = 64 columns, in their
//! natural order), so the A tile is 16 tokens' activations at those 64 columns, loaded straight
//! from a zero-padded copy of the activations. As in the other variants the codes are `trit + 1`
//! and the sums are corrected by `− Σ x`; the i32 results are exact and equal to every other
//! variant's.
//!
//! Per K step (64 columns) and group of 16 tokens: the four row tiles of a work block are decoded
//! (16 shift-and pairs each, 1 KiB tiles in L1), the activations loaded once, and each row tile's
//! product accumulated in its own C tile (see [`group_dots`] for the schedule).
//!
//! Availability: the CPU's AMX-TILE and AMX-INT8 bits (CPUID 7.0 EDX 24, 25) and, on Linux, the
//! process's permission to use the tile data state (`arch_prctl(ARCH_REQ_XCOMP_PERM)`), asked once.
//! The instructions are written as inline assembly (their intrinsics are not stable Rust).
//!
//! Safety contract of [`group_dots`]: AMX is [`available`], AVX-512 F/BW are present, and the
//! bounds documented there hold (`tile.rs` and `matmul.rs` check them).

use std::arch::asm;
use std::arch::x86_64::*;
use std::ops::Range;
use std::sync::OnceLock;

use ternary::planar::{CHUNK_COLS, TILE_ROWS};

use crate::quantize::QuantizedActivations;

/// Tokens per A tile (tile rows).
const TOKENS: usize = 16;
/// Decoded K steps kept for one token group (4 KiB each for four row tiles: the ring stays in L1).
const RING: usize = 4;
/// How many K steps the decode runs ahead of the tile products (a tile load waits for the vector
/// stores that wrote its data to reach L1; this gives them time).
const DECODE_AHEAD: usize = 2;

/// Whether this CPU and OS run AMX-INT8 (see the module doc); checked once per process.
pub(crate) fn available() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        let leaf = __cpuid_count(7, 0);
        let cpu = leaf.edx & (1 << 24) != 0 && leaf.edx & (1 << 25) != 0;
        cpu && os_permits_tiles()
    })
}

#[cfg(target_os = "linux")]
fn os_permits_tiles() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: a plain syscall with integer arguments; it fails cleanly where unsupported.
    unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 }
}

#[cfg(not(target_os = "linux"))]
fn os_permits_tiles() -> bool {
    false
}

/// The 64-byte tile configuration (palette 1): tmm0–3 the C tiles (16 tokens × 16 i32), tmm4 the A
/// tile (16 tokens × 64 bytes), tmm5–7 B tiles (16 rows of 64 bytes).
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}

impl TileConfig {
    fn new() -> Self {
        let mut c = TileConfig { palette: 1, start_row: 0, reserved: [0; 14], colsb: [0; 16], rows: [0; 16] };
        for t in 0..8 {
            c.colsb[t] = 64;
            c.rows[t] = 16;
        }
        c
    }
}

/// The activations as A tiles: `rows` (tokens rounded up to 16) × `width` bytes, zero-padded, so
/// every tile load at a chunk start stays inside and reads zeros past the real columns and tokens.
pub(crate) struct TileActivations {
    n_tokens: usize,
    /// The source's stride: columns every token has (zero past the real ones).
    stride: usize,
    width: usize,
    data: Vec<i8>,
}

impl TileActivations {
    pub(crate) fn new(x: &QuantizedActivations) -> Self {
        let n = x.n_tokens();
        // A load at the last chunk reads 64 columns from its start: up to 48 past the stride.
        let width = (x.stride() + 64).next_multiple_of(64);
        let mut data = vec![0i8; n.next_multiple_of(TOKENS) * width];
        for (t, row) in data.chunks_exact_mut(width).take(n).enumerate() {
            row[..x.stride()].copy_from_slice(&x.values()[t * x.stride()..][..x.stride()]);
        }
        Self { n_tokens: n, stride: x.stride(), width, data }
    }

    pub(crate) fn n_tokens(&self) -> usize {
        self.n_tokens
    }

    pub(crate) fn stride(&self) -> usize {
        self.stride
    }
}

#[repr(C, align(64))]
struct Aligned<T>(T);

/// `tdpbsud` into C tile `i` (tmm0–3) of A (tmm4) and B tile `slot` (tmm5–7).
#[inline(always)]
unsafe fn dot_into(i: usize, slot: usize) {
    match (i, slot) {
        (0, 0) => asm!("tdpbsud tmm0, tmm4, tmm5", options(nostack, nomem)),
        (0, 1) => asm!("tdpbsud tmm0, tmm4, tmm6", options(nostack, nomem)),
        (0, _) => asm!("tdpbsud tmm0, tmm4, tmm7", options(nostack, nomem)),
        (1, 0) => asm!("tdpbsud tmm1, tmm4, tmm5", options(nostack, nomem)),
        (1, 1) => asm!("tdpbsud tmm1, tmm4, tmm6", options(nostack, nomem)),
        (1, _) => asm!("tdpbsud tmm1, tmm4, tmm7", options(nostack, nomem)),
        (2, 0) => asm!("tdpbsud tmm2, tmm4, tmm5", options(nostack, nomem)),
        (2, 1) => asm!("tdpbsud tmm2, tmm4, tmm6", options(nostack, nomem)),
        (2, _) => asm!("tdpbsud tmm2, tmm4, tmm7", options(nostack, nomem)),
        (_, 0) => asm!("tdpbsud tmm3, tmm4, tmm5", options(nostack, nomem)),
        (_, 1) => asm!("tdpbsud tmm3, tmm4, tmm6", options(nostack, nomem)),
        (_, _) => asm!("tdpbsud tmm3, tmm4, tmm7", options(nostack, nomem)),
    }
}

/// Loads B tile `slot` (tmm5–7) from 16 rows of 64 bytes at `src`.
#[inline(always)]
unsafe fn load_b(slot: usize, src: *const u8) {
    match slot {
        0 => asm!("tileloadd tmm5, [{0} + {1}*1]", in(reg) src, in(reg) 64usize, options(nostack, readonly)),
        1 => asm!("tileloadd tmm6, [{0} + {1}*1]", in(reg) src, in(reg) 64usize, options(nostack, readonly)),
        _ => asm!("tileloadd tmm7, [{0} + {1}*1]", in(reg) src, in(reg) 64usize, options(nostack, readonly)),
    }
}

/// Stores C tile `i` (tmm0–3) as 16 rows of 16 i32 at `dst`.
#[inline(always)]
unsafe fn store_c(i: usize, dst: *mut [i32; TILE_ROWS]) {
    match i {
        0 => asm!("tilestored [{0} + {1}*1], tmm0", in(reg) dst, in(reg) 64usize, options(nostack)),
        1 => asm!("tilestored [{0} + {1}*1], tmm1", in(reg) dst, in(reg) 64usize, options(nostack)),
        2 => asm!("tilestored [{0} + {1}*1], tmm2", in(reg) dst, in(reg) 64usize, options(nostack)),
        _ => asm!("tilestored [{0} + {1}*1], tmm3", in(reg) dst, in(reg) 64usize, options(nostack)),
    }
}

/// Decodes chunks `k..k + 4` (those below `end`) of the row tile at `tile` into one B tile at
/// `dst` (16 rows of 64 bytes: chunk j, shift s at row 4j + s); rows past `end` are zero.
#[inline(always)]
unsafe fn decode_b(tile: *const u8, k: usize, end: usize, dst: *mut u8) {
    let mask = _mm512_set1_epi8(3);
    for j in 0..4 {
        let dst = dst.add(j * 4 * 64);
        if k + j < end {
            let p = _mm512_loadu_si512(tile.add((k + j) * 64).cast());
            _mm512_store_si512(dst.cast(), _mm512_and_si512(p, mask));
            _mm512_store_si512(dst.add(64).cast(), _mm512_and_si512(_mm512_srli_epi16::<2>(p), mask));
            _mm512_store_si512(dst.add(128).cast(), _mm512_and_si512(_mm512_srli_epi16::<4>(p), mask));
            _mm512_store_si512(dst.add(192).cast(), _mm512_and_si512(_mm512_srli_epi16::<6>(p), mask));
        } else {
            for s in 0..4 {
                _mm512_store_si512(dst.add(s * 64).cast(), _mm512_setzero_si512());
            }
        }
    }
}

/// One 64-byte line, 64-byte aligned (B tiles are 16 of them).
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

thread_local! {
    /// Decoded B tiles of the current work block, reused across calls on this thread.
    static DECODED: std::cell::RefCell<Vec<Line>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `dots[i·n + t][r] = Σ trit·x` over `chunks` for rows r of the `m` (≤ 4) row tiles at `tiles`
/// (`tile_stride` bytes apart) and every token t of `x` (n of them); `x_sums[t]` = Σ x of token t
/// over the same chunks.
///
/// Schedule: B tiles are decoded into a thread-local buffer ahead of use (a tile load right after
/// the vector stores that wrote it waits for them to reach L1): for one token group (a decode
/// batch) in an L1-sized ring a few K steps ahead; for more (a prompt) all of them up front, so
/// every group reuses the decode. Then, per
/// group of 16 tokens, the `m` row tiles accumulate into their own C tiles (tmm0–3: `m`
/// independent chains, as tiles have no register renaming); per K step the A tile (tmm4) is
/// loaded once and the B tiles rotate over tmm5–7, so a load never waits on the product just
/// issued.
///
/// # Safety
/// [`available`] returned true and the CPU has AVX-512 F/BW; `1 ≤ m ≤ 4`; `tiles` is readable for
/// `(m − 1) · tile_stride + chunks.end · 64` bytes; `chunks.end · 16 ≤ x`'s stride;
/// `x_sums.len() ≥ n`, `dots.len() ≥ m · n`.
#[target_feature(enable = "avx512f,avx512bw")]
pub(crate) unsafe fn group_dots(
    tiles: *const u8,
    tile_stride: usize,
    m: usize,
    chunks: Range<usize>,
    x: &TileActivations,
    x_sums: &[i32],
    dots: &mut [[i32; TILE_ROWS]],
) {
    let n = x.n_tokens;
    let steps = (chunks.end - chunks.start).div_ceil(4);
    let groups = n.div_ceil(TOKENS);
    // One token group: decode in a ring of RING steps, DECODE_AHEAD steps ahead of the products
    // (it stays in L1). Several groups: decode every step once, up front, for all of them.
    let (slots, ahead) = if groups == 1 { (RING.min(steps), DECODE_AHEAD) } else { (steps, steps) };
    DECODED.with_borrow_mut(|decoded| {
        decoded.resize(slots * m * 16, Line([0; 64]));
        let base = decoded.as_mut_ptr();
        // B tile of step s, row tile i at lines ((s mod slots)·m + i)·16.
        let decode_step = |s: usize| {
            for i in 0..m {
                let dst = base.add(((s % slots) * m + i) * 16).cast::<u8>();
                decode_b(tiles.add(i * tile_stride), chunks.start + 4 * s, chunks.end, dst);
            }
        };
        for s in 0..ahead.min(steps) {
            decode_step(s);
        }
        let config = TileConfig::new();
        let mut c = Aligned([[0i32; TILE_ROWS]; TOKENS]);
        asm!("ldtilecfg [{0}]", in(reg) &config as *const TileConfig, options(nostack, readonly));
        let mut slot = 0;
        for group in 0..n.div_ceil(TOKENS) {
            asm!("tilezero tmm0", "tilezero tmm1", "tilezero tmm2", "tilezero tmm3", options(nostack, nomem));
            for s in 0..steps {
                if groups == 1 && s + ahead < steps {
                    decode_step(s + ahead);
                }
                let a = x.data.as_ptr().add(group * TOKENS * x.width + (chunks.start + 4 * s) * CHUNK_COLS);
                asm!("tileloadd tmm4, [{0} + {1}*1]", in(reg) a, in(reg) x.width, options(nostack, readonly));
                for i in 0..m {
                    load_b(slot, base.add(((s % slots) * m + i) * 16).cast());
                    dot_into(i, slot);
                    slot = (slot + 1) % 3;
                }
            }
            for i in 0..m {
                store_c(i, c.0.as_mut_ptr());
                for (t, sums) in c.0.iter().enumerate() {
                    let token = group * TOKENS + t;
                    if token < n {
                        let fix = x_sums[token];
                        dots[i * n + token] = sums.map(|v| v - fix);
                    }
                }
            }
        }
        asm!("tilerelease", options(nostack, nomem));
    });
}
