//! The planar (row-interleaved) layout that the CPU ternary kernels stream.
//!
//! # Byte layout
//!
//! A `rows × cols` ternary matrix is cut into **row tiles** of [`TILE_ROWS`] = 16 rows and, inside a tile,
//! into **chunks** of [`CHUNK_COLS`] = 16 columns. Rows are padded to a multiple of 16 and columns to a
//! multiple of 16 with trit 0, so the matrix has `row_tiles = ceil(rows/16)` tiles of
//! `chunks = ceil(cols/16)` chunks. Every chunk is exactly [`CHUNK_BYTES`] = 64 bytes (one cache line,
//! one AVX-512 register) and the buffer is 64-byte aligned, so every chunk is an aligned cache line.
//!
//! Chunks are stored tile-major: chunk `c` of tile `t` starts at byte `(t * chunks + c) * 64`; a whole
//! tile is one contiguous run of `chunks * 64` bytes, so a GEMV reads the buffer strictly sequentially.
//!
//! Inside a chunk, byte `j` (0..64) belongs to row `16 t + j / 4` and holds four 2-bit codes:
//!
//! ```text
//!   bits 2s..2s+1 of byte j  =  code of column 16 c + 4 s + (j % 4),      s = 0..4
//!   code = trit + 1  ∈ {0, 1, 2}  (0 → -1, 1 → 0, 2 → +1; 3 is invalid)
//! ```
//!
//! Why this order: `(chunk >> 2s) & 3` over all 64 bytes yields, in every 32-bit lane `r`, the four
//! codes of row `r` for columns `16c+4s .. 16c+4s+4` — exactly the operand shape of the x86
//! `vpdpbusd` (u8×i8 → i32, four products per lane) against a broadcast of four int8 activations.
//! One 64-byte load therefore feeds 16 output rows, with no horizontal reduction and no byte shuffles.
//! Codes are unsigned (`trit + 1`) because `vpdpbusd`/`pmaddubsw` need one unsigned operand; kernels
//! subtract `Σ x` once per token to undo the offset. The code for "0" (1) is also the padding code.
//!
//! Storage is 2 bits per weight plus padding (none for dimensions that are multiples of 16).
//!
//! # Scales
//!
//! Scales are f32, row-major `rows × groups`, where a group is `group_cols` consecutive columns of one
//! row (`group_cols == cols` means one scale per row; a per-tensor scale is repeated per row). For
//! kernels to apply a group scale at chunk boundaries, `group_cols` must be a multiple of 16 or equal
//! `cols`; the last group of a row may be shorter.

use thiserror::Error;

/// Rows per tile: the number of output rows one chunk (one SIMD load) feeds.
pub const TILE_ROWS: usize = 16;
/// Columns per chunk.
pub const CHUNK_COLS: usize = 16;
/// Bytes per chunk: 16 rows × 16 columns × 2 bits.
pub const CHUNK_BYTES: usize = 64;
/// Alignment of the packed buffer.
pub const ALIGN: usize = 64;
/// Code stored for trit 0 and for padding.
const ZERO_CODE: u8 = 1;

/// Errors building or reading a [`PlanarMatrix`].
#[derive(Debug, Error, PartialEq)]
pub enum PlanarError {
    #[error("matrix must have at least one row and one column, got {rows}x{cols}")]
    EmptyShape { rows: usize, cols: usize },
    #[error("shape {rows}x{cols} overflows usize")]
    ShapeOverflow { rows: usize, cols: usize },
    #[error("expected {expected} trits for a {rows}x{cols} matrix, got {got}")]
    TritCount { rows: usize, cols: usize, expected: usize, got: usize },
    #[error("trit at index {index} is {value}, expected -1, 0 or +1")]
    InvalidTrit { index: usize, value: i8 },
    #[error("group_cols must be >= 1, got 0")]
    ZeroGroup,
    #[error("group_cols {group_cols} must be a multiple of {CHUNK_COLS} or equal cols ({cols})")]
    GroupNotChunkAligned { group_cols: usize, cols: usize },
    #[error("expected {expected} scales ({rows} rows x {groups} groups), got {got}")]
    ScaleCount { rows: usize, groups: usize, expected: usize, got: usize },
    #[error("scale at index {index} is not finite ({value})")]
    NonFiniteScale { index: usize, value: f32 },
    #[error("expected {expected} packed bytes for a {rows}x{cols} planar matrix, got {got}")]
    ByteCount { rows: usize, cols: usize, expected: usize, got: usize },
    #[error("packed byte {index} holds the invalid code 3")]
    InvalidCode { index: usize },
    #[error("code in padding at byte {index} is not the zero code")]
    NonZeroPadding { index: usize },
    #[error("TQ2_0 matrix needs cols to be a multiple of 256, got {cols}")]
    Tq2Cols { cols: usize },
}

/// One 64-byte, 64-byte-aligned chunk. Storing `Vec<Chunk>` gives aligned storage without a custom
/// allocator.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(C, align(64))]
struct Chunk([u8; CHUNK_BYTES]);

/// A ternary matrix packed in the planar layout (see the module docs), with f32 scales.
#[derive(Clone, PartialEq)]
pub struct PlanarMatrix {
    rows: usize,
    cols: usize,
    chunks_per_tile: usize,
    data: Vec<Chunk>,
    scales: Vec<f32>,
    group_cols: usize,
}

impl std::fmt::Debug for PlanarMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlanarMatrix")
            .field("rows", &self.rows)
            .field("cols", &self.cols)
            .field("group_cols", &self.group_cols)
            .field("bytes", &self.as_bytes().len())
            .finish()
    }
}

/// Number of scale groups per row.
fn groups_per_row(cols: usize, group_cols: usize) -> usize {
    cols.div_ceil(group_cols)
}

fn check_shape(rows: usize, cols: usize) -> Result<(), PlanarError> {
    if rows == 0 || cols == 0 {
        return Err(PlanarError::EmptyShape { rows, cols });
    }
    let padded_rows = rows.checked_next_multiple_of(TILE_ROWS);
    let padded_cols = cols.checked_next_multiple_of(CHUNK_COLS);
    match (padded_rows, padded_cols) {
        (Some(r), Some(c)) if r.checked_mul(c).and_then(|n| n.checked_div(4)).is_some() => Ok(()),
        _ => Err(PlanarError::ShapeOverflow { rows, cols }),
    }
}

fn check_scales(rows: usize, cols: usize, scales: &[f32], group_cols: usize) -> Result<(), PlanarError> {
    if group_cols == 0 {
        return Err(PlanarError::ZeroGroup);
    }
    // A group wider than the row is just "one scale per row".
    if group_cols < cols && !group_cols.is_multiple_of(CHUNK_COLS) {
        return Err(PlanarError::GroupNotChunkAligned { group_cols, cols });
    }
    let groups = groups_per_row(cols, group_cols);
    let expected = rows * groups;
    if scales.len() != expected {
        return Err(PlanarError::ScaleCount { rows, groups, expected, got: scales.len() });
    }
    if let Some((index, &value)) = scales.iter().enumerate().find(|(_, s)| !s.is_finite()) {
        return Err(PlanarError::NonFiniteScale { index, value });
    }
    Ok(())
}

/// Where the code of (row, col) lives: (byte index in the buffer, bit shift).
#[inline]
fn code_position(chunks_per_tile: usize, row: usize, col: usize) -> (usize, u32) {
    let (tile, row_in_tile) = (row / TILE_ROWS, row % TILE_ROWS);
    let (chunk, col_in_chunk) = (col / CHUNK_COLS, col % CHUNK_COLS);
    let byte = (tile * chunks_per_tile + chunk) * CHUNK_BYTES + row_in_tile * 4 + col_in_chunk % 4;
    (byte, 2 * (col_in_chunk / 4) as u32)
}

impl PlanarMatrix {
    /// Packs row-major trits (-1/0/+1) with scales (`rows × ceil(cols/group_cols)`, row-major).
    ///
    /// Use `group_cols = cols` for one scale per row.
    pub fn from_trits(
        trits: &[i8],
        rows: usize,
        cols: usize,
        scales: &[f32],
        group_cols: usize,
    ) -> Result<Self, PlanarError> {
        check_shape(rows, cols)?;
        let expected = rows * cols;
        if trits.len() != expected {
            return Err(PlanarError::TritCount { rows, cols, expected, got: trits.len() });
        }
        check_scales(rows, cols, scales, group_cols)?;
        let mut matrix = Self::zeros(rows, cols, scales.to_vec(), group_cols.min(cols));
        let bytes = matrix.bytes_mut();
        // Start from all-zero codes (0b01 in every slot) and clear/set each slot.
        bytes.fill(0b0101_0101);
        for (index, &trit) in trits.iter().enumerate() {
            if !(-1..=1).contains(&trit) {
                return Err(PlanarError::InvalidTrit { index, value: trit });
            }
        }
        let chunks_per_tile = cols.div_ceil(CHUNK_COLS);
        for row in 0..rows {
            for col in 0..cols {
                let code = (trits[row * cols + col] + 1) as u8;
                let (byte, shift) = code_position(chunks_per_tile, row, col);
                bytes[byte] = (bytes[byte] & !(3 << shift)) | (code << shift);
            }
        }
        Ok(matrix)
    }

    /// Same as [`from_trits`](Self::from_trits) with one scale for the whole tensor.
    pub fn from_trits_per_tensor(trits: &[i8], rows: usize, cols: usize, scale: f32) -> Result<Self, PlanarError> {
        check_shape(rows, cols)?;
        let expected = rows * cols;
        if trits.len() != expected {
            return Err(PlanarError::TritCount { rows, cols, expected, got: trits.len() });
        }
        Self::from_trits(trits, rows, cols, &vec![scale; rows], cols)
    }

    /// Rebuilds a matrix from its packed bytes (e.g. read from a file), validating length, codes and
    /// padding. The bytes are copied into aligned storage, so `bytes` itself may have any alignment.
    pub fn from_packed_bytes(
        bytes: &[u8],
        rows: usize,
        cols: usize,
        scales: &[f32],
        group_cols: usize,
    ) -> Result<Self, PlanarError> {
        check_shape(rows, cols)?;
        check_scales(rows, cols, scales, group_cols)?;
        let mut matrix = Self::zeros(rows, cols, scales.to_vec(), group_cols.min(cols));
        let expected = matrix.as_bytes().len();
        if bytes.len() != expected {
            return Err(PlanarError::ByteCount { rows, cols, expected, got: bytes.len() });
        }
        matrix.bytes_mut().copy_from_slice(bytes);
        matrix.validate_codes()?;
        Ok(matrix)
    }

    /// Converts GGUF TQ2_0 blocks (256 weights = 64 code bytes + f16 scale, row-major, `cols % 256 == 0`)
    /// into a planar matrix with one scale per 256-column group. Lossless: codes and scales carry over.
    pub fn from_tq2_0(blocks: &[u8], rows: usize, cols: usize) -> Result<Self, PlanarError> {
        const BLOCK_WEIGHTS: usize = 256;
        const BLOCK_BYTES: usize = 66;
        check_shape(rows, cols)?;
        if !cols.is_multiple_of(BLOCK_WEIGHTS) {
            return Err(PlanarError::Tq2Cols { cols });
        }
        let n_blocks = rows * cols / BLOCK_WEIGHTS;
        let expected = n_blocks * BLOCK_BYTES;
        if blocks.len() != expected {
            return Err(PlanarError::ByteCount { rows, cols, expected, got: blocks.len() });
        }
        let mut trits = vec![0i8; rows * cols];
        let mut scales = Vec::with_capacity(n_blocks);
        for (block_index, block) in blocks.chunks_exact(BLOCK_BYTES).enumerate() {
            let weights = &mut trits[block_index * BLOCK_WEIGHTS..][..BLOCK_WEIGHTS];
            // ggml's TQ2_0: byte 32h+m, bits 2n, is weight 128h + 32n + m.
            for (byte_index, &byte) in block[..64].iter().enumerate() {
                let (half, m) = (byte_index / 32, byte_index % 32);
                for n in 0..4 {
                    let code = (byte >> (2 * n)) & 3;
                    if code == 3 {
                        return Err(PlanarError::InvalidCode { index: block_index * BLOCK_BYTES + byte_index });
                    }
                    weights[128 * half + 32 * n + m] = code as i8 - 1;
                }
            }
            let scale = half::f16::from_le_bytes([block[64], block[65]]).to_f32();
            scales.push(scale);
        }
        let mut matrix = Self::from_trits(&trits, rows, cols, &scales, BLOCK_WEIGHTS)?;
        matrix.merge_equal_groups();
        Ok(matrix)
    }

    /// Keeps one scale per row when every group of every row repeats its row's scale (what a
    /// per-tensor or per-row scale looks like after TQ2_0/TQ1_0 wrote it once per 256-weight
    /// block). The product is the same, but kernels then run each row in one pass instead of one
    /// pass per group. Codes are untouched (their layout does not depend on the groups).
    pub fn merge_equal_groups(&mut self) {
        let groups = self.groups_per_row();
        if groups <= 1 {
            return;
        }
        let uniform = self.scales.chunks_exact(groups).all(|row| row.iter().all(|s| s.to_bits() == row[0].to_bits()));
        if uniform {
            self.scales = self.scales.chunks_exact(groups).map(|row| row[0]).collect();
            self.group_cols = self.cols;
        }
    }

    /// Unpacks to row-major trits. Exact inverse of [`from_trits`](Self::from_trits).
    pub fn to_trits(&self) -> Vec<i8> {
        let bytes = self.as_bytes();
        let mut trits = Vec::with_capacity(self.rows * self.cols);
        for row in 0..self.rows {
            for col in 0..self.cols {
                let (byte, shift) = code_position(self.chunks_per_tile, row, col);
                trits.push(((bytes[byte] >> shift) & 3) as i8 - 1);
            }
        }
        trits
    }

    fn zeros(rows: usize, cols: usize, scales: Vec<f32>, group_cols: usize) -> Self {
        let chunks_per_tile = cols.div_ceil(CHUNK_COLS);
        let n_chunks = rows.div_ceil(TILE_ROWS) * chunks_per_tile;
        Self {
            rows,
            cols,
            chunks_per_tile,
            data: vec![Chunk([0; CHUNK_BYTES]); n_chunks],
            scales,
            group_cols,
        }
    }

    /// Checks every slot: no code 3 anywhere, and padding slots hold the zero code.
    fn validate_codes(&self) -> Result<(), PlanarError> {
        let bytes = self.as_bytes();
        for (index, &byte) in bytes.iter().enumerate() {
            for shift in (0..8).step_by(2) {
                if (byte >> shift) & 3 == 3 {
                    return Err(PlanarError::InvalidCode { index });
                }
            }
        }
        let cols_padded = self.cols_padded();
        for row in 0..self.rows_padded() {
            for col in 0..cols_padded {
                if row < self.rows && col < self.cols {
                    continue;
                }
                let (byte, shift) = code_position(self.chunks_per_tile, row, col);
                if (bytes[byte] >> shift) & 3 != ZERO_CODE {
                    return Err(PlanarError::NonZeroPadding { index: byte });
                }
            }
        }
        Ok(())
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: `Chunk` is `repr(C)` around `[u8; 64]` with no padding, so the Vec's storage is
        // `data.len() * 64` initialised bytes, exclusively borrowed through `&mut self`.
        unsafe { std::slice::from_raw_parts_mut(self.data.as_mut_ptr().cast::<u8>(), self.data.len() * CHUNK_BYTES) }
    }

    /// The packed buffer (64-byte aligned, `row_tiles × chunks_per_tile × 64` bytes).
    pub fn as_bytes(&self) -> &[u8] {
        // SAFETY: see `bytes_mut`; shared borrow of initialised bytes.
        unsafe { std::slice::from_raw_parts(self.data.as_ptr().cast::<u8>(), self.data.len() * CHUNK_BYTES) }
    }

    /// The packed bytes of row tile `tile` (`chunks_per_tile × 64` bytes). Panics if out of range.
    pub fn tile_bytes(&self, tile: usize) -> &[u8] {
        let len = self.chunks_per_tile * CHUNK_BYTES;
        &self.as_bytes()[tile * len..(tile + 1) * len]
    }

    pub fn rows(&self) -> usize {
        self.rows
    }
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// Rows rounded up to a multiple of [`TILE_ROWS`].
    pub fn rows_padded(&self) -> usize {
        self.row_tiles() * TILE_ROWS
    }
    /// Columns rounded up to a multiple of [`CHUNK_COLS`]; kernels read activations of this length.
    pub fn cols_padded(&self) -> usize {
        self.chunks_per_tile * CHUNK_COLS
    }
    pub fn row_tiles(&self) -> usize {
        self.rows.div_ceil(TILE_ROWS)
    }
    pub fn chunks_per_tile(&self) -> usize {
        self.chunks_per_tile
    }
    /// Scales, row-major `rows × groups_per_row()`.
    pub fn scales(&self) -> &[f32] {
        &self.scales
    }
    /// Columns per scale group (`cols` when there is one scale per row).
    pub fn group_cols(&self) -> usize {
        self.group_cols
    }
    pub fn groups_per_row(&self) -> usize {
        groups_per_row(self.cols, self.group_cols)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn trits_strategy() -> impl Strategy<Value = (usize, usize, Vec<i8>)> {
        (1usize..40, 1usize..70).prop_flat_map(|(rows, cols)| {
            (Just(rows), Just(cols), proptest::collection::vec(-1i8..=1, rows * cols))
        })
    }

    proptest! {
        #[test]
        fn round_trip_is_lossless((rows, cols, trits) in trits_strategy()) {
            let m = PlanarMatrix::from_trits(&trits, rows, cols, &vec![0.5; rows], cols).unwrap();
            prop_assert_eq!(m.to_trits(), trits.clone());
            prop_assert_eq!(m.as_bytes().as_ptr() as usize % ALIGN, 0);
            let again = PlanarMatrix::from_packed_bytes(m.as_bytes(), rows, cols, m.scales(), cols).unwrap();
            prop_assert_eq!(again, m);
        }
    }

    #[test]
    fn byte_layout_matches_the_docs() {
        // 16x16: a single chunk. Put +1 at (row 5, col 9): byte 5*4 + 9%4 = 21, shift 2*(9/4) = 4.
        let mut trits = vec![0i8; 256];
        trits[5 * 16 + 9] = 1;
        trits[15 * 16 + 15] = -1; // byte 63, shift 6, code 0
        let m = PlanarMatrix::from_trits_per_tensor(&trits, 16, 16, 1.0).unwrap();
        let bytes = m.as_bytes();
        assert_eq!(bytes.len(), 64);
        assert_eq!(bytes[21], 0b0110_0101);
        assert_eq!(bytes[63], 0b0001_0101);
        assert!(bytes.iter().enumerate().all(|(i, &b)| i == 21 || i == 63 || b == 0x55));
    }

    #[test]
    fn two_bits_per_weight() {
        let m = PlanarMatrix::from_trits_per_tensor(&vec![1; 64 * 256], 64, 256, 1.0).unwrap();
        assert_eq!(m.as_bytes().len(), 64 * 256 / 4);
    }

    #[test]
    fn bad_inputs_are_errors() {
        assert!(matches!(PlanarMatrix::from_trits(&[], 0, 3, &[], 3), Err(PlanarError::EmptyShape { .. })));
        assert!(matches!(PlanarMatrix::from_trits(&[0; 5], 2, 3, &[1.0; 2], 3), Err(PlanarError::TritCount { .. })));
        assert_eq!(
            PlanarMatrix::from_trits(&[0, 2, 0], 1, 3, &[1.0], 3),
            Err(PlanarError::InvalidTrit { index: 1, value: 2 })
        );
        assert!(matches!(PlanarMatrix::from_trits(&[0; 6], 2, 3, &[1.0], 3), Err(PlanarError::ScaleCount { .. })));
        assert!(matches!(
            PlanarMatrix::from_trits(&[0; 40], 1, 40, &[1.0; 4], 10),
            Err(PlanarError::GroupNotChunkAligned { .. })
        ));
        assert!(matches!(
            PlanarMatrix::from_trits(&[0; 3], 1, 3, &[f32::NAN], 3),
            Err(PlanarError::NonFiniteScale { .. })
        ));
        assert!(matches!(
            PlanarMatrix::from_trits(&[0; 3], 1, 3, &[1.0], 0),
            Err(PlanarError::ZeroGroup)
        ));
        assert!(matches!(
            PlanarMatrix::from_trits(&[0; 3], usize::MAX, 3, &[1.0], 3),
            Err(PlanarError::ShapeOverflow { .. })
        ));
    }

    #[test]
    fn packed_bytes_are_validated() {
        let m = PlanarMatrix::from_trits_per_tensor(&[1, -1, 0], 1, 3, 1.0).unwrap();
        let mut bytes = m.as_bytes().to_vec();
        assert!(matches!(
            PlanarMatrix::from_packed_bytes(&bytes[1..], 1, 3, &[1.0], 3),
            Err(PlanarError::ByteCount { .. })
        ));
        bytes[0] |= 0b11; // code 3 in column 0
        assert_eq!(PlanarMatrix::from_packed_bytes(&bytes, 1, 3, &[1.0], 3), Err(PlanarError::InvalidCode { index: 0 }));
        let mut bytes = m.as_bytes().to_vec();
        bytes[4] = 0b0101_0110; // row 1 is padding: +1 there must be rejected
        assert_eq!(
            PlanarMatrix::from_packed_bytes(&bytes, 1, 3, &[1.0], 3),
            Err(PlanarError::NonZeroPadding { index: 4 })
        );
    }

    #[test]
    fn per_group_scales() {
        let m = PlanarMatrix::from_trits(&[0; 2 * 40], 2, 40, &[1.0; 6], 16).unwrap();
        assert_eq!(m.groups_per_row(), 3);
        let m = PlanarMatrix::from_trits(&[0; 2 * 40], 2, 40, &[1.0; 2], 100).unwrap();
        assert_eq!((m.groups_per_row(), m.group_cols()), (1, 40));
    }

    #[test]
    fn tq2_0_conversion_preserves_codes_and_scales() {
        // Build one row of 512 weights in TQ2_0 by hand, following ggml's packing.
        let trits: Vec<i8> = (0..512).map(|i| ((i * 7 + i / 3) % 3) as i8 - 1).collect();
        let mut blocks = Vec::new();
        for (b, block) in trits.chunks(256).enumerate() {
            for half in 0..2 {
                for m in 0..32 {
                    let mut q = 0u8;
                    for n in 0..4 {
                        q |= ((block[128 * half + 32 * n + m] + 1) as u8) << (2 * n);
                    }
                    blocks.push(q);
                }
            }
            blocks.extend_from_slice(&half::f16::from_f32(0.25 * (b + 1) as f32).to_le_bytes());
        }
        let m = PlanarMatrix::from_tq2_0(&blocks, 1, 512).unwrap();
        assert_eq!(m.to_trits(), trits);
        assert_eq!(m.scales(), &[0.25, 0.5]);
        assert_eq!(m.group_cols(), 256);
        assert!(matches!(PlanarMatrix::from_tq2_0(&blocks, 1, 500), Err(PlanarError::Tq2Cols { .. })));
        // Equal block scales (a per-tensor scale written per block) become one scale per row.
        let mut same = blocks.clone();
        same[66 + 64..66 + 66].copy_from_slice(&blocks[64..66]);
        let merged = PlanarMatrix::from_tq2_0(&same, 1, 512).unwrap();
        assert_eq!((merged.scales(), merged.group_cols(), merged.groups_per_row()), (&[0.25][..], 512, 1));
        assert_eq!(merged.to_trits(), trits);
        assert!(matches!(PlanarMatrix::from_tq2_0(&blocks[1..], 1, 512), Err(PlanarError::ByteCount { .. })));
    }
}
