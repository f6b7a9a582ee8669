//! Activation panels: the GEMM's repacked int8 activations.
//!
//! Tokens are grouped by `P` (the variant's register block). Inside a group, the 4 activations that
//! one `vpdpbusd` broadcast needs — columns `16c+4s .. 16c+4s+4` of token t — sit at byte
//! `((c*4 + s) * P + t) * 4`. A micro-kernel therefore walks its activations strictly sequentially
//! (`4·P` bytes per (chunk, shift)). Reading tokens straight from the row-major
//! matrix instead meant 16 concurrent streams 4 KiB apart (for 4096 columns) that all map to the
//! same L1 set: conflict misses cost 4x in GEMM throughput at batch ≥ 16.
//! The last group may hold fewer than `P` tokens; it then uses its own width as `P`.
//!
//! Column blocks: the GEMM walks the columns in blocks (see `matmul.rs`), and for each block sweeps
//! every panel. So the panels are stored block-major: all panels of column block 0, then all of
//! block 1, ... Each sweep is then one sequential stream that the hardware prefetcher follows,
//! instead of one short (≤ 4 KiB) stream per panel that starts cold each time (that cost 3x at
//! batch 512, where the activations live in L3).

use std::ops::Range;

use ternary::planar::CHUNK_COLS;

use crate::quantize::QuantizedActivations;

pub(crate) struct Panels {
    panel_tokens: usize,
    n_tokens: usize,
    /// Chunk ranges of the column blocks, in order, covering all chunks.
    blocks: Vec<Range<usize>>,
    data: Vec<i8>,
}

impl Panels {
    /// Repacks `x` for column blocks `blocks` (consecutive chunk ranges starting at chunk 0 and
    /// covering every chunk of a token).
    pub(crate) fn new(x: &QuantizedActivations, panel_tokens: usize, blocks: &[Range<usize>]) -> Self {
        let (n, stride) = (x.n_tokens(), x.stride());
        let mut data = vec![0i8; n * stride];
        for block in blocks {
            let cols = block.start * CHUNK_COLS..block.end * CHUNK_COLS;
            let region = &mut data[cols.start * n..cols.end * n];
            for first in (0..n).step_by(panel_tokens) {
                let width = panel_tokens.min(n - first);
                let panel = &mut region[first * cols.len()..(first + width) * cols.len()];
                for t in 0..width {
                    let token = &x.values()[(first + t) * stride..][cols.clone()];
                    // Group q of 4 activations = (chunk c, shift s) with q = 4c + s, c local.
                    for (q, four) in token.chunks_exact(4).enumerate() {
                        panel[(q * width + t) * 4..][..4].copy_from_slice(four);
                    }
                }
            }
        }
        Self { panel_tokens, n_tokens: n, blocks: blocks.to_vec(), data }
    }

    pub(crate) fn count(&self) -> usize {
        self.n_tokens.div_ceil(self.panel_tokens)
    }

    /// Panel `p` over column block `k`: its bytes (chunk indices local to the block), its width
    /// (tokens) and the index of its first token.
    pub(crate) fn panel(&self, k: usize, p: usize) -> (&[i8], usize, usize) {
        let first = p * self.panel_tokens;
        let width = self.panel_tokens.min(self.n_tokens - first);
        let block = &self.blocks[k];
        let len = (block.end - block.start) * CHUNK_COLS;
        let region = block.start * CHUNK_COLS * self.n_tokens;
        (&self.data[region + first * len..region + (first + width) * len], width, first)
    }
}
