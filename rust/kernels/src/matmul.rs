//! GEMV / GEMM drivers: validate input, split row tiles over the thread pool, apply float scales.

use std::marker::PhantomData;
use std::ops::Range;

use ternary::planar::{PlanarMatrix, CHUNK_BYTES, CHUNK_COLS, TILE_ROWS};

use crate::panel::Panels;
use crate::pool::team;
use crate::quantize::QuantizedActivations;
use crate::tile::{gemm_tiles, gemm_tiles_per_call, gemv_tiles, gemv_tiles_per_call, panel_tokens, prefetch, MAX_GEMV_TILES};
use crate::variant::{Kernel, Variant};
use crate::KernelError;

/// Largest padded column count accepted. Accumulator bounds: the GEMM's SIMD lanes hold `Σ code·x`
/// with code ∈ {0,1,2} and x ∈ [-128, 127], so |acc| ≤ 2 · 128 · cols ≤ 2^30 < 2^31 for cols ≤ 2^22;
/// the AVX-512 GEMV's lanes hold up to 64 · that per block and are folded every 2^14 chunks (see
/// `avx512.rs`); the final `Σ trit·x` is bounded by 128 · cols ≤ 2^29. No i32 overflow is possible.
pub const MAX_COLS: usize = 1 << 22;

fn check(w: &PlanarMatrix, x: &QuantizedActivations) -> Result<(), KernelError> {
    if x.cols() != w.cols() {
        return Err(KernelError::ColsMismatch { expected: w.cols(), got: x.cols() });
    }
    if w.cols_padded() > MAX_COLS {
        return Err(KernelError::TooManyCols { cols: w.cols(), max: MAX_COLS });
    }
    Ok(())
}

/// Chunk range of each scale group of a row.
fn group_chunks(w: &PlanarMatrix) -> Vec<Range<usize>> {
    (0..w.groups_per_row())
        .map(|g| {
            let start = g * w.group_cols();
            let end = (start + w.group_cols()).min(w.cols());
            start / CHUNK_COLS..end.div_ceil(CHUNK_COLS)
        })
        .collect()
}

/// `Σ x` of every token over every chunk range: `n_tokens × ranges.len()`, row-major.
fn column_sums(x: &QuantizedActivations, ranges: &[Range<usize>]) -> Vec<i32> {
    let mut sums = Vec::with_capacity(x.n_tokens() * ranges.len());
    for token in x.values().chunks_exact(x.stride()) {
        for r in ranges {
            let cols = &token[r.start * CHUNK_COLS..r.end * CHUNK_COLS];
            sums.push(cols.iter().map(|&v| v as i32).sum());
        }
    }
    sums
}

/// Parallel tasks per thread of a GEMM: a few, so that whichever thread is free takes the next
/// one and the threads finish together (a prompt's products are compute-bound), few enough that
/// the hand-offs stay negligible.
const GEMM_TASKS_PER_THREAD: usize = 4;

/// Parallel tasks per thread of a GEMV: one, so each thread streams one contiguous run of the
/// matrix and its far prefetch stays ahead of it all the way. Measured on nano-125m decode at two
/// threads (interleaved runs, median of 8 pairs, twice): 1 task per thread 794 / 745 tokens/s
/// against 739 / 698 with 4; 2 tasks per thread were within noise of 4. A GEMV is memory-bound,
/// so equal halves take equal time.
const GEMV_TASKS_PER_THREAD: usize = 1;

/// Work blocks per parallel task, for `tasks_per_thread` tasks per thread.
fn blocks_per_task(blocks: usize, threads: usize, tasks_per_thread: usize) -> usize {
    blocks.div_ceil(threads * tasks_per_thread).max(1)
}

/// Runs `f(block, out_block)` for every work block (a GEMV block of row tiles), where `out` is cut
/// into pieces of `per_tile` items (the last may be shorter). Work is split into
/// [`GEMV_TASKS_PER_THREAD`] tasks per thread; with one thread it runs inline on the caller,
/// avoiding the pool hand-off.
fn for_each_block<T: Send>(
    parallel: bool,
    tiles: usize,
    per_tile: usize,
    out: &mut [T],
    f: impl Fn(usize, &mut [T]) + Sync,
) -> Result<(), KernelError> {
    let team = team()?;
    let threads = team.threads();
    let run_block = |task: usize, tiles_per_task: usize, block: &mut [T]| {
        for (i, dst) in block.chunks_mut(per_tile).enumerate() {
            f(task * tiles_per_task + i, dst);
        }
    };
    if !parallel || threads == 1 || tiles == 1 {
        run_block(0, tiles, out);
        return Ok(());
    }
    let tiles_per_task = blocks_per_task(tiles, threads, GEMV_TASKS_PER_THREAD);
    team.for_each_chunk(out, tiles_per_task * per_tile, |task, block| run_block(task, tiles_per_task, block));
    Ok(())
}

/// Smallest GEMV (bytes of packed weights) split across threads. The team's workers spin
/// between calls (see `team.rs`), so a split costs about a microsecond while they are warm: in
/// which one core streams ~64 KB.
pub const GEMV_MIN_PARALLEL_BYTES: usize = 1 << 16;

/// Whether a GEMV over `bytes` of packed weights is worth splitting over the team.
fn worth_threads(bytes: usize) -> bool {
    bytes >= GEMV_MIN_PARALLEL_BYTES
}

/// The checks every GEMV shares: matching shapes, one token, one output per row.
fn check_gemv(w: &PlanarMatrix, x: &QuantizedActivations, out_len: usize) -> Result<(), KernelError> {
    check(w, x)?;
    if x.n_tokens() != 1 {
        return Err(KernelError::ActivationLength { n_tokens: 1, cols: x.cols(), expected: x.cols(), got: x.n_tokens() * x.cols() });
    }
    if out_len != w.rows() {
        return Err(KernelError::OutputLength { expected: w.rows(), got: out_len });
    }
    Ok(())
}

/// The GEMV's unit of work: a block of consecutive row tiles that the variant's kernel streams
/// together in one call (4 for AVX-512, 1 otherwise).
struct GemvBlocks<'a> {
    kernel: Kernel,
    residency: Residency,
    bytes: &'a [u8],
    tile_stride: usize,
    per_block: usize,
    row_tiles: usize,
}

impl<'a> GemvBlocks<'a> {
    fn new(kernel: Kernel, residency: Residency, w: &'a PlanarMatrix) -> Self {
        let per_block = gemv_tiles_per_call(kernel);
        let (bytes, tile_stride, row_tiles) = (w.as_bytes(), w.chunks_per_tile() * CHUNK_BYTES, w.row_tiles());
        Self { kernel, residency, bytes, tile_stride, per_block, row_tiles }
    }

    fn count(&self) -> usize {
        self.row_tiles.div_ceil(self.per_block)
    }

    /// Output rows per block (the last block may have fewer).
    fn rows_per_block(&self) -> usize {
        self.per_block * TILE_ROWS
    }

    /// Integer dots of block `b` over `chunks` into `dots[..tiles in the block]`.
    fn dots(&self, b: usize, x: &[i8], chunks: Range<usize>, x_sum: i32, dots: &mut [[i32; TILE_ROWS]; MAX_GEMV_TILES]) {
        let first = b * self.per_block;
        let n = self.per_block.min(self.row_tiles - first);
        let tiles = &self.bytes[first * self.tile_stride..];
        gemv_tiles(self.kernel, self.residency, tiles, self.tile_stride, x, chunks, x_sum, &mut dots[..n]);
    }
}

/// Integer GEMV: `out[r] = Σ_k trit[r][k] · x[k]` for the single token of `x` (scales ignored).
pub fn gemv_i32_into(
    w: &PlanarMatrix,
    x: &QuantizedActivations,
    out: &mut [i32],
    variant: Option<Variant>,
) -> Result<(), KernelError> {
    let kernel = Kernel::resolve(variant)?;
    check_gemv(w, x, out.len())?;
    let all = 0..w.chunks_per_tile();
    let x_sum = column_sums(x, std::slice::from_ref(&all))[0];
    let blocks = GemvBlocks::new(kernel, Residency::Cached, w);
    for_each_block(worth_threads(w.as_bytes().len()), blocks.count(), blocks.rows_per_block(), out, |b, dst| {
        let mut dots = [[0; TILE_ROWS]; MAX_GEMV_TILES];
        blocks.dots(b, x.values(), all.clone(), x_sum, &mut dots);
        dst.copy_from_slice(&dots.as_flattened()[..dst.len()]);
    })
}

/// Integer GEMV, allocating the output (`rows` values).
pub fn gemv_i32(w: &PlanarMatrix, x: &QuantizedActivations, variant: Option<Variant>) -> Result<Vec<i32>, KernelError> {
    let mut out = vec![0; w.rows()];
    gemv_i32_into(w, x, &mut out, variant)?;
    Ok(out)
}

/// Where a GEMV's weights are expected to come from, which decides how far ahead it prefetches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Residency {
    /// In cache (a matrix used again and again, as in a benchmark of one matrix, or a model
    /// that fits in the last-level cache): prefetch a short way ahead of each row tile.
    #[default]
    Cached,
    /// From DRAM on every call (decode of a model larger than the last-level cache): prefetch
    /// far ahead, so one core keeps enough misses in flight to approach its bandwidth.
    Streamed,
}

/// Size of the largest CPU cache of cpu0 (`/sys/devices/system/cpu/cpu0/cache/index*/size`, e.g.
/// "32768K"); 32 MiB when it cannot be read.
pub fn last_level_cache_bytes() -> usize {
    let parse = |text: &str| -> Option<usize> {
        let t = text.trim();
        let (digits, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
        let n: usize = digits.parse().ok()?;
        Some(n * match unit {
            "K" => 1 << 10,
            "M" => 1 << 20,
            "" => 1,
            _ => return None,
        })
    };
    (0..8)
        .filter_map(|i| std::fs::read_to_string(format!("/sys/devices/system/cpu/cpu0/cache/index{i}/size")).ok())
        .filter_map(|t| parse(&t))
        .max()
        .unwrap_or(32 << 20)
}

/// Float GEMV on quantized activations: `out[r] = x_scale · Σ_g w_scale[r][g] · Σ_{k∈g} trit·x`.
pub fn gemv_quantized_into(
    w: &PlanarMatrix,
    x: &QuantizedActivations,
    out: &mut [f32],
    variant: Option<Variant>,
) -> Result<(), KernelError> {
    gemv_quantized_into_with(w, x, out, variant, Residency::Cached)
}

/// [`gemv_quantized_into`] with the weights' expected [`Residency`].
pub fn gemv_quantized_into_with(
    w: &PlanarMatrix,
    x: &QuantizedActivations,
    out: &mut [f32],
    variant: Option<Variant>,
    residency: Residency,
) -> Result<(), KernelError> {
    gemv_quantized_many_into_with(&mut [(w, out)], x, variant, residency)
}

/// Several float GEMVs of the same single-token activations, run as one parallel job: the
/// products of Q, K and V (or of a SwiGLU's gate and up) pay one hand-off to the kernel team and
/// one wait for its slowest thread instead of one each. `products`: `(matrix, out)` pairs, each
/// `out` with one value per row of its matrix. Results are those of one
/// [`gemv_quantized_into_with`] per matrix, bit for bit.
pub fn gemv_quantized_many_into_with(
    products: &mut [(&PlanarMatrix, &mut [f32])],
    x: &QuantizedActivations,
    variant: Option<Variant>,
    residency: Residency,
) -> Result<(), KernelError> {
    let kernel = Kernel::resolve(variant)?;
    let mut jobs = Vec::with_capacity(products.len());
    for (w, out) in products.iter_mut() {
        check_gemv(w, x, out.len())?;
        jobs.push(GemvJob::new(kernel, residency, w, x, out));
    }
    // Blocks of all matrices in one sequence; block `i` of the sequence is block
    // `i - first[m]` of matrix `m`.
    let first: Vec<usize> = jobs.iter().scan(0, |n, j| Some(std::mem::replace(n, *n + j.blocks.count()))).collect();
    let total = jobs.iter().map(|j| j.blocks.count()).sum::<usize>();
    let run = |i: usize| {
        let m = first.partition_point(|&f| f <= i) - 1;
        // SAFETY: every block index is run once, and blocks write disjoint rows of their `out`.
        unsafe { jobs[m].run_block(i - first[m], x) };
    };
    let bytes: usize = products.iter().map(|(w, _)| w.as_bytes().len()).sum();
    if !worth_threads(bytes) {
        (0..total).for_each(run);
        return Ok(());
    }
    for_each_range(total, GEMV_TASKS_PER_THREAD, |blocks| blocks.for_each(run))
}

/// One matrix of a GEMV job: what every block of it needs, and where its rows go.
struct GemvJob<'a> {
    blocks: GemvBlocks<'a>,
    groups: Vec<Range<usize>>,
    x_sums: Vec<i32>,
    scales: &'a [f32],
    out: *mut f32,
    rows: usize,
}

// SAFETY: `out` points into a `&mut [f32]` borrowed for the job's lifetime; blocks write disjoint
// rows of it (see `run_block`), everything else is shared read-only.
unsafe impl Sync for GemvJob<'_> {}

impl<'a> GemvJob<'a> {
    fn new(kernel: Kernel, residency: Residency, w: &'a PlanarMatrix, x: &QuantizedActivations, out: &mut [f32]) -> Self {
        let groups = group_chunks(w);
        let x_sums = column_sums(x, &groups);
        let blocks = GemvBlocks::new(kernel, residency, w);
        Self { blocks, groups, x_sums, scales: w.scales(), out: out.as_mut_ptr(), rows: out.len() }
    }

    /// Rows of block `b` into `out`.
    ///
    /// # Safety
    /// No other thread runs block `b` of this job at the same time.
    unsafe fn run_block(&self, b: usize, x: &QuantizedActivations) {
        let first_row = b * self.blocks.rows_per_block();
        let len = self.blocks.rows_per_block().min(self.rows - first_row);
        // SAFETY: rows first_row..first_row + len of `out` belong to block b alone.
        let dst = unsafe { std::slice::from_raw_parts_mut(self.out.add(first_row), len) };
        let (scales, n_groups, x_scale) = (self.scales, self.groups.len(), x.scales()[0]);
        let mut acc = [0f32; MAX_GEMV_TILES * TILE_ROWS];
        let mut dots = [[0; TILE_ROWS]; MAX_GEMV_TILES];
        // The block's row scales, requested before its weights stream past: they live apart from
        // the tiles, and from DRAM each block's first read of them stalled the epilogue.
        prefetch(&scales[first_row * n_groups..][..len * n_groups]);
        if n_groups == 1 {
            // One scale per row (the common case): straight slices that vectorize. Same
            // operations, same order as the general loop below (GEMV and GEMM agree bit for bit).
            self.blocks.dots(b, x.values(), self.groups[0].clone(), self.x_sums[0], &mut dots);
            let row_scales = &scales[first_row..][..len];
            for ((d, &s), &v) in dst.iter_mut().zip(row_scales).zip(dots.as_flattened()) {
                *d = (0.0 + s * v as f32) * x_scale;
            }
            return;
        }
        for (g, chunks) in self.groups.iter().enumerate() {
            self.blocks.dots(b, x.values(), chunks.clone(), self.x_sums[g], &mut dots);
            for ((i, a), &d) in acc.iter_mut().enumerate().zip(dots.as_flattened()).take(len) {
                *a += scales[(first_row + i) * n_groups + g] * d as f32;
            }
        }
        for (d, a) in dst.iter_mut().zip(acc) {
            *d = a * x_scale;
        }
    }
}

/// Quantizes one token of f32 activations to int8 and runs the float GEMV (`rows` outputs).
pub fn gemv(w: &PlanarMatrix, x: &[f32], variant: Option<Variant>) -> Result<Vec<f32>, KernelError> {
    let q = QuantizedActivations::quantize(x, 1, x.len().max(1))
        .map_err(|e| if x.is_empty() { KernelError::ColsMismatch { expected: w.cols(), got: 0 } } else { e })?;
    let mut out = vec![0.0; w.rows()];
    gemv_quantized_into(w, &q, &mut out, variant)?;
    Ok(out)
}

/// Chunks per GEMM column block: the weights of one block of row tiles over one column block
/// (4 tiles × 64 chunks × 64 B = 16 KiB) stay in L1 while every token panel streams past them.
const GEMM_BLOCK_CHUNKS: usize = 64;

/// Each scale group's chunk range cut into column blocks of at most [`GEMM_BLOCK_CHUNKS`]:
/// `(group, chunks)` in group order.
fn column_blocks(groups: &[Range<usize>]) -> Vec<(usize, Range<usize>)> {
    let mut blocks = Vec::new();
    for (g, r) in groups.iter().enumerate() {
        let mut start = r.start;
        while start < r.end {
            let end = r.end.min(start + GEMM_BLOCK_CHUNKS);
            blocks.push((g, start..end));
            start = end;
        }
    }
    blocks
}

/// Runs `f(items)` over `0..count` cut into `tasks_per_thread` contiguous ranges per thread; with
/// one thread it runs inline on the caller.
fn for_each_range(count: usize, tasks_per_thread: usize, f: impl Fn(Range<usize>) + Sync) -> Result<(), KernelError> {
    let team = team()?;
    let threads = team.threads();
    if threads == 1 || count <= 1 {
        f(0..count);
        return Ok(());
    }
    let per_task = blocks_per_task(count, threads, tasks_per_thread);
    team.run(count.div_ceil(per_task), &|task| f(task * per_task..count.min((task + 1) * per_task)));
    Ok(())
}

/// The GEMM's row-major `n_tokens × rows` output, written concurrently by tasks that each own the
/// rows of their row tiles. Writing in place (rather than into a tile-major buffer transposed at
/// the end) saved a second output-sized allocation, its page faults and a strided copy: together
/// about a third of the time at batch 512.
struct RowMajorOut<'a, T> {
    ptr: *mut T,
    n_tokens: usize,
    rows: usize,
    _out: PhantomData<&'a mut [T]>,
}

// SAFETY: tasks write disjoint elements (the contract of `write`), and `T: Send`.
unsafe impl<T: Send> Sync for RowMajorOut<'_, T> {}

impl<'a, T: Copy> RowMajorOut<'a, T> {
    fn new(out: &'a mut [T], n_tokens: usize, rows: usize) -> Self {
        assert_eq!(out.len(), n_tokens * rows);
        Self { ptr: out.as_mut_ptr(), n_tokens, rows, _out: PhantomData }
    }

    /// Writes `values` to rows `row0..row0 + values.len()` of `token`.
    ///
    /// # Safety
    /// No other thread accesses those elements during the call.
    unsafe fn write(&self, token: usize, row0: usize, values: &[T]) {
        assert!(token < self.n_tokens && row0 + values.len() <= self.rows);
        let dst = self.ptr.add(token * self.rows + row0);
        // SAFETY: in bounds (checked above); exclusive by the caller's contract. A whole tile is
        // one fixed-size store (a length-generic copy is a `memmove` call, ~6 % of a prefill).
        match <&[T; TILE_ROWS]>::try_from(values) {
            Ok(tile) => unsafe { dst.cast::<[T; TILE_ROWS]>().write_unaligned(*tile) },
            Err(_) => unsafe { std::ptr::copy_nonoverlapping(values.as_ptr(), dst, values.len()) },
        }
    }
}

/// GEMM core, writing the row-major `n_tokens × rows` result. Work unit: a block of row tiles (the
/// variant's micro-kernel height); for each scale group, the integer dots of every token, from the
/// variant's micro-kernels over the column blocks and token panels, or from AMX tile products.
/// `fold(tile, group, dots, acc)` folds the integer dots of one tile and group (one `[i32; 16]` per
/// token) into the tile's accumulators; `finish(token, value)` maps an accumulator to the output.
fn gemm_driver<T: Send + Copy + Default>(
    kernel: Kernel,
    w: &PlanarMatrix,
    x: &QuantizedActivations,
    groups: &[Range<usize>],
    fold: impl Fn(usize, usize, &[[i32; TILE_ROWS]], &mut [[T; TILE_ROWS]]) + Sync,
    finish: impl Fn(usize, T) -> T + Sync,
) -> Result<Vec<T>, KernelError> {
    let n = x.n_tokens();
    let (bytes, stride) = (w.as_bytes(), w.chunks_per_tile() * CHUNK_BYTES);
    #[cfg(target_arch = "x86_64")]
    if kernel.variant() == Variant::Amx && n > 1 {
        // One token keeps the VNNI micro-kernel: the decode of the B tiles costs more than it saves.
        let x_sums = column_sums(x, groups);
        // Group-major: the n sums of group g are contiguous.
        let n_groups = groups.len();
        let group_sums: Vec<i32> = (0..n_groups * n).map(|i| x_sums[(i % n) * n_groups + i / n]).collect();
        let tiles_x = crate::amx::TileActivations::new(x);
        let group_dots = |first_tile: usize, m: usize, g: usize, dots: &mut [[i32; TILE_ROWS]]| {
            let (tiles, sums) = (&bytes[first_tile * stride..], &group_sums[g * n..][..n]);
            crate::tile::amx_group_dots(kernel, tiles, stride, m, groups[g].clone(), &tiles_x, sums, dots);
        };
        return run_blocks(kernel, w, n, groups.len(), group_dots, fold, finish);
    }
    let blocks = column_blocks(groups);
    let ranges: Vec<Range<usize>> = blocks.iter().map(|(_, r)| r.clone()).collect();
    let x_sums = column_sums(x, &ranges);
    let panels = Panels::new(x, panel_tokens(kernel), &ranges);
    let group_dots = |first_tile: usize, m: usize, g: usize, dots: &mut [[i32; TILE_ROWS]]| {
        dots.fill([0; TILE_ROWS]);
        let mut sums = vec![0i32; n];
        for (k, (_, chunks)) in blocks.iter().enumerate().filter(|(_, (bg, _))| *bg == g) {
            for (t, s) in sums.iter_mut().enumerate() {
                *s = x_sums[t * ranges.len() + k];
            }
            // Panels index chunks from the block start; so do these tile bytes.
            let tiles = &bytes[first_tile * stride + chunks.start * CHUNK_BYTES..];
            let local = 0..chunks.len();
            for p in 0..panels.count() {
                let (panel, width, first) = panels.panel(k, p);
                let (s, out) = (&sums[first..], &mut dots[first..]);
                gemm_tiles(kernel, tiles, stride, m, panel, width, width, local.clone(), s, out, n);
            }
        }
    };
    run_blocks(kernel, w, n, groups.len(), group_dots, fold, finish)
}

/// The parallel loop of [`gemm_driver`]: blocks of row tiles over the team; per block and scale
/// group, `group_dots(first_tile, m, group, dots)` gives `dots[i·n + t]` for its `m` tiles, which
/// `fold` accumulates; `finish` maps the accumulators into the row-major output. `fold` of group 0
/// must overwrite the accumulators (they hold the previous block's values): zeroing them first
/// was ~15 % of a 16-token AMX product.
fn run_blocks<T: Send + Copy + Default>(
    kernel: Kernel,
    w: &PlanarMatrix,
    n: usize,
    n_groups: usize,
    group_dots: impl Fn(usize, usize, usize, &mut [[i32; TILE_ROWS]]) + Sync,
    fold: impl Fn(usize, usize, &[[i32; TILE_ROWS]], &mut [[T; TILE_ROWS]]) + Sync,
    finish: impl Fn(usize, T) -> T + Sync,
) -> Result<Vec<T>, KernelError> {
    let (rows, row_tiles) = (w.rows(), w.row_tiles());
    let per_call = gemm_tiles_per_call(kernel);
    let mut out = vec![T::default(); n * rows];
    let shared = RowMajorOut::new(&mut out, n, rows);
    let wide = matches!(kernel.variant(), Variant::Avx512 | Variant::Amx);
    let task = Task { per_call, n, n_groups, rows, row_tiles, group_dots: &group_dots, fold: &fold, finish: &finish, out: &shared };
    for_each_range(row_tiles.div_ceil(per_call), GEMM_TASKS_PER_THREAD, |blocks| {
        if wide {
            // SAFETY: `Kernel` guarantees AVX-512 F/BW for these variants.
            unsafe { task.run_avx512(blocks) }
        } else {
            task.run(blocks)
        }
    })?;
    Ok(out)
}

/// One parallel task of [`run_blocks`]: its blocks of row tiles, start to finish.
struct Task<'a, T, D, F, G> {
    per_call: usize,
    n: usize,
    n_groups: usize,
    rows: usize,
    row_tiles: usize,
    group_dots: &'a D,
    fold: &'a F,
    finish: &'a G,
    out: &'a RowMajorOut<'a, T>,
}

impl<T, D, F, G> Task<'_, T, D, F, G>
where
    T: Send + Copy + Default,
    D: Fn(usize, usize, usize, &mut [[i32; TILE_ROWS]]) + Sync,
    F: Fn(usize, usize, &[[i32; TILE_ROWS]], &mut [[T; TILE_ROWS]]) + Sync,
    G: Fn(usize, T) -> T + Sync,
{
    #[inline(always)]
    fn run(&self, blocks: Range<usize>) {
        let (per_call, n, rows, row_tiles) = (self.per_call, self.n, self.rows, self.row_tiles);
        // [i * n + t]: tile i of the block, token t.
        let mut dots = vec![[0i32; TILE_ROWS]; per_call * n];
        let mut acc = vec![[T::default(); TILE_ROWS]; per_call * n];
        for b in blocks {
            let first_tile = b * per_call;
            let m = per_call.min(row_tiles - first_tile);
            let (dots, acc) = (&mut dots[..m * n], &mut acc[..m * n]);
            for g in 0..self.n_groups {
                (self.group_dots)(first_tile, m, g, dots);
                for i in 0..m {
                    (self.fold)(first_tile + i, g, &dots[i * n..(i + 1) * n], &mut acc[i * n..(i + 1) * n]);
                }
            }
            for i in 0..m {
                let row0 = (first_tile + i) * TILE_ROWS;
                let valid = (rows - row0).min(TILE_ROWS);
                for (t, a) in acc[i * n..(i + 1) * n].iter().enumerate() {
                    let mut values = [T::default(); TILE_ROWS];
                    for r in 0..TILE_ROWS {
                        values[r] = (self.finish)(t, a[r]);
                    }
                    // SAFETY: row blocks are disjoint across tasks, so only this task touches these rows.
                    unsafe { self.out.write(t, row0, &values[..valid]) };
                }
            }
        }
    }

    /// [`Task::run`] compiled for AVX-512: the per-token epilogue (fold, scale, store of each
    /// tile's 16 values) is generic code, which the baseline build compiles to SSE.
    ///
    /// # Safety
    /// The CPU supports AVX-512 F and BW.
    #[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx512f,avx512bw"))]
    unsafe fn run_avx512(&self, blocks: Range<usize>) {
        self.run(blocks)
    }
}

/// Integer GEMM: `out[t][r] = Σ_k trit[r][k] · x[t][k]`, row-major `n_tokens × rows`.
pub fn gemm_i32(w: &PlanarMatrix, x: &QuantizedActivations, variant: Option<Variant>) -> Result<Vec<i32>, KernelError> {
    let kernel = Kernel::resolve(variant)?;
    check(w, x)?;
    // One "group" spanning the row: the integer result ignores scales.
    let all = 0..w.chunks_per_tile();
    let copy = |_, _, dots: &[[i32; TILE_ROWS]], acc: &mut [[i32; TILE_ROWS]]| acc.copy_from_slice(dots);
    gemm_driver(kernel, w, x, std::slice::from_ref(&all), copy, |_, v| v)
}

/// Float GEMM on quantized activations, row-major `n_tokens × rows`.
pub fn gemm_quantized(w: &PlanarMatrix, x: &QuantizedActivations, variant: Option<Variant>) -> Result<Vec<f32>, KernelError> {
    let kernel = Kernel::resolve(variant)?;
    check(w, x)?;
    let groups = group_chunks(w);
    let (scales, n_groups, rows) = (w.scales(), groups.len(), w.rows());
    let wide = matches!(kernel.variant(), Variant::Avx512 | Variant::Amx);
    let fold = |tile: usize, g: usize, dots: &[[i32; TILE_ROWS]], acc: &mut [[f32; TILE_ROWS]]| {
        let valid_rows = (rows - tile * TILE_ROWS).min(TILE_ROWS);
        if n_groups == 1 && valid_rows == TILE_ROWS {
            // One scale per row (the common case) over a whole tile: a fixed-size loop that
            // vectorizes. Same operations, same order as below (group 0: 0.0 + s·d).
            let s: &[f32; TILE_ROWS] = scales[tile * TILE_ROWS..][..TILE_ROWS].try_into().expect("one tile of scales");
            if wide {
                // SAFETY: `Kernel` guarantees AVX-512 F for these variants.
                unsafe { fold_row_scales_avx512(s, dots, acc) }
            } else {
                fold_row_scales(s, dots, acc)
            }
            return;
        }
        for (d, a) in dots.iter().zip(acc) {
            for i in 0..valid_rows {
                let before = if g == 0 { 0.0 } else { a[i] };
                a[i] = before + scales[(tile * TILE_ROWS + i) * n_groups + g] * d[i] as f32;
            }
        }
    };
    // The token scale is applied last, in the same order of operations as the GEMV, so a GEMM
    // token and a GEMV of that token give bit-identical results.
    let x_scales = x.scales();
    gemm_driver(kernel, w, x, &groups, fold, |t, v| v * x_scales[t])
}

/// `acc[t][i] = 0.0 + s[i] · dots[t][i]` for every token t of one tile (one scale per row, so
/// one group: the `0.0 +` is the GEMV's, which keeps the results bit for bit equal).
#[inline(always)]
fn fold_row_scales(s: &[f32; TILE_ROWS], dots: &[[i32; TILE_ROWS]], acc: &mut [[f32; TILE_ROWS]]) {
    for (d, a) in dots.iter().zip(acc) {
        for i in 0..TILE_ROWS {
            a[i] = 0.0 + s[i] * d[i] as f32;
        }
    }
}

/// [`fold_row_scales`] compiled for AVX-512 (one conversion, multiply and add per token, where the
/// baseline build scalarized the loop: a fifth of a 16-token AMX product). Same operations, same
/// order, so the results are bit for bit those of the GEMV.
///
/// # Safety
/// The CPU supports AVX-512 F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn fold_row_scales_avx512(s: &[f32; TILE_ROWS], dots: &[[i32; TILE_ROWS]], acc: &mut [[f32; TILE_ROWS]]) {
    use std::arch::x86_64::*;
    // Written out: left to itself the compiler vectorized across tokens with broadcasts.
    let scale = _mm512_loadu_ps(s.as_ptr());
    for (d, a) in dots.iter().zip(acc) {
        let product = _mm512_mul_ps(scale, _mm512_cvtepi32_ps(_mm512_loadu_si512(d.as_ptr().cast())));
        _mm512_storeu_ps(a.as_mut_ptr(), _mm512_add_ps(_mm512_setzero_ps(), product));
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn fold_row_scales_avx512(s: &[f32; TILE_ROWS], dots: &[[i32; TILE_ROWS]], acc: &mut [[f32; TILE_ROWS]]) {
    fold_row_scales(s, dots, acc)
}

/// Quantizes `n_tokens × cols` f32 activations per token and runs the float GEMM.
pub fn gemm(w: &PlanarMatrix, x: &[f32], n_tokens: usize, variant: Option<Variant>) -> Result<Vec<f32>, KernelError> {
    let q = QuantizedActivations::quantize(x, n_tokens, w.cols())?;
    gemm_quantized(w, &q, variant)
}
