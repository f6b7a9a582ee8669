//! Kernel benchmark: `cargo run --release -p kernels --example bench_kernels [-- --quick] [--gemv | --gemm |
//! --few] [--variant avx512]`.
//!
//! GEMV: GOPS (2·rows·cols per call), weight bytes/s, and the streaming-read bandwidth of a buffer of
//! the same size measured in this process with the same thread count, alternating with the kernel
//! runs so both see the same load, with their ratio; once with one matrix (in cache, also against
//! the VNNI peak) and once from DRAM (a new copy of the matrix on every call, as in decode).
//! GEMM: GOPS at batch 1/8/64/512 against the int8 dot-product peak of a tight `vpdpbusd` loop.
//! Few tokens (`--few`, the batched decode of a server): the float GEMM of 1–16 tokens on the
//! matrices of a nano-125m block, against as many one-token GEMVs.
//! Every figure is the best of several runs (the machine is shared; the best run is the least
//! disturbed one).

use std::hint::black_box;
use std::time::{Duration, Instant};

use kernels::{gemm_i32, gemm_quantized, gemv_i32_into, gemv_quantized_into_with, set_num_threads, QuantizedActivations, Residency, Variant};
use ternary::planar::PlanarMatrix;

const SHAPES: [(usize, usize); 4] = [(2048, 2048), (4096, 4096), (4096, 11008), (11008, 4096)];
const BATCHES: [usize; 4] = [1, 8, 64, 512];

/// Best wall time of `f` over runs lasting about `budget` in total (at least `min_runs`).
fn best_time(budget: Duration, min_runs: usize, mut f: impl FnMut()) -> f64 {
    f(); // warm caches, page in buffers, spin up the pool
    let start = Instant::now();
    let mut best = f64::INFINITY;
    let mut runs = 0;
    while runs < min_runs || start.elapsed() < budget {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed().as_secs_f64());
        runs += 1;
    }
    best
}

fn random_matrix(rows: usize, cols: usize, seed: u64) -> PlanarMatrix {
    let mut s = seed;
    let trits: Vec<i8> = (0..rows * cols)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 33) % 3) as i8 - 1
        })
        .collect();
    PlanarMatrix::from_trits_per_tensor(&trits, rows, cols, 1.0).expect("valid matrix")
}

fn activations(n: usize, cols: usize) -> QuantizedActivations {
    let x: Vec<i8> = (0..n * cols).map(|i| ((i * 7919) % 255) as i8).collect();
    QuantizedActivations::from_i8(&x, n, cols, &vec![1.0; n]).expect("valid activations")
}

/// Reads `buf` with wide loads and returns a checksum (so the reads cannot be optimised away).
fn read_sum(buf: &[u64]) -> u64 {
    #[cfg(target_arch = "x86_64")]
    if Variant::Avx512.is_supported() {
        // SAFETY: AVX-512 F was just detected.
        return unsafe { read_sum_avx512(buf) };
    }
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 was just detected.
        return unsafe { read_sum_avx2(buf) };
    }
    buf.iter().fold(0, |a, &v| a ^ v)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn read_sum_avx2(buf: &[u64]) -> u64 {
    use std::arch::x86_64::*;
    let mut acc = [_mm256_setzero_si256(); 4];
    let blocks = buf.chunks_exact(16);
    let tail = blocks.remainder().iter().fold(0, |a, &v| a ^ v);
    for block in blocks {
        for (i, a) in acc.iter_mut().enumerate() {
            *a = _mm256_xor_si256(*a, _mm256_loadu_si256(block.as_ptr().add(4 * i).cast()));
        }
    }
    let mut out = [0u64; 4];
    let all = _mm256_xor_si256(_mm256_xor_si256(acc[0], acc[1]), _mm256_xor_si256(acc[2], acc[3]));
    _mm256_storeu_si256(out.as_mut_ptr().cast(), all);
    out.iter().fold(tail, |a, &v| a ^ v)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn read_sum_avx512(buf: &[u64]) -> u64 {
    use std::arch::x86_64::*;
    let mut acc = [_mm512_setzero_si512(); 4];
    let blocks = buf.chunks_exact(32);
    let tail = blocks.remainder().iter().fold(0, |a, &v| a ^ v);
    for block in blocks {
        for (i, a) in acc.iter_mut().enumerate() {
            *a = _mm512_xor_si512(*a, _mm512_loadu_si512(block.as_ptr().add(8 * i).cast()));
        }
    }
    let all = _mm512_xor_si512(_mm512_xor_si512(acc[0], acc[1]), _mm512_xor_si512(acc[2], acc[3]));
    let mut out = [0u64; 8];
    _mm512_storeu_si512(out.as_mut_ptr().cast(), all);
    out.iter().fold(tail, |a, &v| a ^ v)
}

/// The streaming-read reference: `windows` same-size buffers read in turn (one per call) with
/// AVX-512 loads (read-only, so no write-allocate traffic) by `threads` threads, each reading its
/// share. The threads are the kernels' own team (set to the same count before this is built), so
/// the reference and the kernel pay the same hand-off and no spawn cost is timed.
struct Stream {
    buf: Vec<u64>,
    window: usize,
    windows: usize,
    next: std::cell::Cell<usize>,
    team: std::sync::Arc<kernels::Team>,
}

impl Stream {
    fn new(bytes: usize, windows: usize, threads: usize) -> Self {
        let window = bytes / 8;
        let buf: Vec<u64> = (0..window * windows).map(|i| i as u64).collect();
        let team = kernels::team().expect("kernel threads");
        assert_eq!(team.threads(), threads, "set_num_threads first");
        Self { buf, window, windows, next: 0.into(), team }
    }

    fn read(&self) {
        let w = self.next.replace((self.next.get() + 1) % self.windows);
        let window = &self.buf[w * self.window..][..self.window];
        let parts: Vec<&[u64]> = window.chunks(self.window.div_ceil(self.team.threads())).collect();
        let sums: Vec<std::sync::atomic::AtomicU64> = parts.iter().map(|_| Default::default()).collect();
        self.team.run(parts.len(), &|i| sums[i].store(read_sum(parts[i]), std::sync::atomic::Ordering::Relaxed));
        black_box(&sums);
    }
}

/// Best wall times of `f` and `g`, run in alternating rounds for about `budget` in total, so both see
/// the same machine conditions (the 2 cores are shared; measuring them minutes apart skewed the ratio).
/// Each round starts with an untimed call: the two working sets together can exceed what the shared
/// L3 keeps, and each would otherwise be timed right after the other evicted it.
fn best_time_pair(budget: Duration, mut f: impl FnMut(), mut g: impl FnMut()) -> (f64, f64) {
    const TIMED_PER_ROUND: usize = 3;
    let start = Instant::now();
    let (mut best_f, mut best_g, mut rounds) = (f64::INFINITY, f64::INFINITY, 0);
    while rounds < 3 || start.elapsed() < budget {
        for (run, best) in [(&mut f as &mut dyn FnMut(), &mut best_f), (&mut g, &mut best_g)] {
            run();
            for _ in 0..TIMED_PER_ROUND {
                let t = Instant::now();
                run();
                *best = best.min(t.elapsed().as_secs_f64());
            }
        }
        rounds += 1;
    }
    (best_f, best_g)
}

/// Peak int8 dot-product rate (ops/s, 2 per multiply-add) of one core: independent `vpdpbusd` chains.
#[cfg(target_arch = "x86_64")]
fn vnni_peak_one_core() -> Option<f64> {
    if !Variant::Avx512.is_supported() {
        return None;
    }
    const ITERS: usize = 2_000_000;
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn run() -> i32 {
        use std::arch::x86_64::*;
        let a = _mm512_set1_epi8(black_box(1));
        let b = _mm512_set1_epi8(black_box(-1));
        let mut acc = [_mm512_setzero_si512(); 12];
        for _ in 0..ITERS {
            for x in acc.iter_mut() {
                *x = _mm512_dpbusd_epi32(*x, a, b);
            }
        }
        let mut s = _mm512_setzero_si512();
        for x in acc {
            s = _mm512_add_epi32(s, x);
        }
        _mm512_reduce_add_epi32(s)
    }
    // SAFETY: AVX-512 VNNI was detected above.
    let t = best_time(Duration::from_millis(200), 3, || {
        black_box(unsafe { run() });
    });
    Some((ITERS * 12 * 64 * 2) as f64 / t)
}

#[cfg(not(target_arch = "x86_64"))]
fn vnni_peak_one_core() -> Option<f64> {
    None
}

/// Command-line options: `--quick` (shorter runs, one GEMM shape), `--gemv` / `--gemm` / `--few` (one
/// section only), `--variant NAME` (one variant instead of every supported one).
struct Options {
    quick: bool,
    gemv: bool,
    gemm: bool,
    few: bool,
    variants: Vec<Variant>,
}

fn options() -> Options {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let has = |flag: &str| args.iter().any(|a| a == flag);
    let variants = match args.iter().position(|a| a == "--variant").and_then(|i| args.get(i + 1)) {
        Some(name) => match Variant::parse(name) {
            Ok(Some(v)) if v.is_supported() => vec![v],
            _ => {
                eprintln!("--variant {name}: not a variant this CPU supports (scalar, avx2, avx512, amx)");
                std::process::exit(2);
            }
        },
        None => Variant::supported(),
    };
    let (gemv, gemm, few) = (has("--gemv"), has("--gemm"), has("--few"));
    let all = !(gemv || gemm || few);
    Options { quick: has("--quick"), gemv: gemv || all, gemm: gemm || all, few: few || all, variants }
}

fn main() {
    let opts = options();
    let all_threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut thread_counts = vec![1];
    if all_threads > 1 {
        thread_counts.push(all_threads);
    }
    let budget = Duration::from_millis(if opts.quick { 100 } else { 400 });
    let names: Vec<_> = opts.variants.iter().map(|v| v.name()).collect();
    println!("variants: {names:?}; threads: {all_threads}");
    if opts.gemv {
        bench_gemv(&opts.variants, &thread_counts, budget);
    }
    if opts.gemv {
        bench_gemv_dram(&opts.variants, &thread_counts, budget);
    }
    if opts.gemm {
        let shapes: &[(usize, usize)] = if opts.quick { &SHAPES[1..2] } else { &SHAPES };
        bench_gemm(&opts.variants, &thread_counts, budget, shapes);
    }
    if opts.few {
        bench_few(&opts.variants, &thread_counts, budget);
    }
}

/// The float GEMM of a few tokens (what one batched decode step runs per matrix) on the three
/// matrix shapes of a nano-125m block (attention 768×768, up/gate 3072×768, down 768×3072), in
/// cache as in the engine; against the same tokens as one-token GEMVs, same variant, same run.
fn bench_few(variants: &[Variant], thread_counts: &[usize], budget: Duration) {
    println!("\n## Few tokens (batched decode): float GEMM vs one GEMV per token, weights in cache\n");
    println!("| shape | tokens | variant | threads | GEMM µs | µs per token | GEMVs µs | GEMM vs GEMVs |");
    println!("|---|---|---|---|---|---|---|---|");
    for &(rows, cols) in &[(768, 768), (3072, 768), (768, 3072)] {
        let w = random_matrix(rows, cols, 3);
        for &threads in thread_counts {
            set_num_threads(threads).expect("pool");
            for &v in variants.iter().filter(|&&v| v != Variant::Scalar) {
                for n in [1usize, 2, 3, 4, 6, 8, 12, 16] {
                    let x = activations(n, cols);
                    let singles: Vec<QuantizedActivations> = (0..n).map(|t| QuantizedActivations::from_i8(x.token(t), 1, cols, &[1.0]).expect("token")).collect();
                    let mut out = vec![0f32; rows];
                    let t_gemm = best_time(budget, 5, || {
                        black_box(gemm_quantized(&w, &x, Some(v)).expect("gemm"));
                    });
                    let t_gemv = best_time(budget, 5, || {
                        for s in &singles {
                            gemv_quantized_into_with(&w, s, &mut out, Some(v), Residency::Cached).expect("gemv");
                        }
                    });
                    let us = |t: f64| t * 1e6;
                    println!("| {rows}x{cols} | {n} | {v} | {threads} | {:.1} | {:.1} | {:.1} | {:.2}x |", us(t_gemm), us(t_gemm) / n as f64, us(t_gemv), t_gemv / t_gemm);
                }
            }
        }
    }
}

/// A GEMV table row: shape, variant, threads, µs, GOPS, weight GB/s, stream GB/s, ratio.
fn gemv_row((rows, cols): (usize, usize), v: Variant, threads: usize, bytes: usize, t: f64, t_stream: f64) -> String {
    let gops = 2.0 * (rows * cols) as f64 / t / 1e9;
    let (wbw, sbw) = (bytes as f64 / t, bytes as f64 / t_stream);
    format!("| {rows}x{cols} | {v} | {threads} | {:.1} | {gops:.1} | {:.1} | {:.1} | {:.2} |", t * 1e6, wbw / 1e9, sbw / 1e9, wbw / sbw)
}

/// GEMV on one matrix used again and again, so it sits in cache (these shapes fit in the L3 of
/// the machines we measure on; the reference reads a buffer of the same size, so "stream" is
/// cache bandwidth there). There the kernel is bound by `vpdpbusd` throughput, hence the last
/// column: GOPS ÷ (the VNNI peak of one core × threads).
fn bench_gemv(variants: &[Variant], thread_counts: &[usize], budget: Duration) {
    let peak1 = vnni_peak_one_core();
    println!("\n## GEMV (one token, int8 activations, i32 out), weights in cache\n");
    println!("| shape | variant | threads | µs | GOPS | weight GB/s | stream GB/s | ratio | % of VNNI peak |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for &(rows, cols) in &SHAPES {
        let w = random_matrix(rows, cols, 1);
        let x = activations(1, cols);
        let mut out = vec![0i32; rows];
        let bytes = w.as_bytes().len();
        for &threads in thread_counts {
            set_num_threads(threads).expect("pool");
            let stream = Stream::new(bytes, 1, threads);
            for &v in variants {
                let kernel = || gemv_i32_into(&w, &x, &mut out, Some(v)).expect("gemv");
                let (t, t_stream) = best_time_pair(budget, kernel, || stream.read());
                let gops = 2.0 * (rows * cols) as f64 / t / 1e9;
                let pct = peak1.map_or("-".into(), |p| format!("{:.0}%", 100.0 * gops * 1e9 / (p * threads as f64)));
                println!("{} {pct} |", gemv_row((rows, cols), v, threads, bytes, t, t_stream));
            }
        }
    }
}

/// GEMV with the weights coming from DRAM, as in the decode of a model larger than the
/// last-level cache: copies of the matrix (together at least 4× the LLC and 256 MiB) are used in
/// turn, so every call finds its matrix evicted, and the kernel runs with
/// `Residency::Streamed` as the engine does then. The reference reads same-size windows of a
/// buffer as large, in turn. The scalar variant is left out: it computes at ~1 GB/s, far below
/// any memory.
fn bench_gemv_dram(variants: &[Variant], thread_counts: &[usize], budget: Duration) {
    let total = (4 * kernels::last_level_cache_bytes()).max(256 << 20);
    println!("\n## GEMV from DRAM (each call on another copy; copies total {} MiB)\n", total >> 20);
    println!("| shape | variant | threads | µs | GOPS | weight GB/s | stream GB/s | ratio |");
    println!("|---|---|---|---|---|---|---|---|");
    for &(rows, cols) in &SHAPES {
        let first = random_matrix(rows, cols, 1);
        let bytes = first.as_bytes().len();
        let copies = total.div_ceil(bytes);
        let ws: Vec<PlanarMatrix> = (0..copies).map(|_| first.clone()).collect();
        let x = activations(1, cols);
        let mut out = vec![0f32; rows];
        for &threads in thread_counts {
            set_num_threads(threads).expect("pool");
            let stream = Stream::new(bytes, copies, threads);
            for &v in variants.iter().filter(|&&v| v != Variant::Scalar) {
                let mut next = 0;
                let kernel = || {
                    gemv_quantized_into_with(&ws[next], &x, &mut out, Some(v), Residency::Streamed).expect("gemv");
                    next = (next + 1) % copies;
                };
                let (t, t_stream) = best_time_pair(budget, kernel, || stream.read());
                println!("{}", gemv_row((rows, cols), v, threads, bytes, t, t_stream));
            }
        }
    }
}

fn bench_gemm(variants: &[Variant], thread_counts: &[usize], budget: Duration, shapes: &[(usize, usize)]) {
    let peak1 = vnni_peak_one_core();
    println!("\n## GEMM (int8 activations, i32 out)\n");
    match peak1 {
        Some(p) => println!("VNNI int8 peak (tight vpdpbusd loop): {:.1} GOPS per core\n", p / 1e9),
        None => println!("VNNI peak: not available on this CPU\n"),
    }
    println!("| shape | batch | variant | threads | ms | GOPS | % of VNNI peak |");
    println!("|---|---|---|---|---|---|---|");
    for &(rows, cols) in shapes {
        let w = random_matrix(rows, cols, 2);
        for &batch in &BATCHES {
            let x = activations(batch, cols);
            for &threads in thread_counts {
                set_num_threads(threads).expect("pool");
                for &v in variants.iter().filter(|&&v| v != Variant::Scalar || batch <= 8) {
                    let t = best_time(budget, 2, || {
                        black_box(gemm_i32(&w, &x, Some(v)).expect("gemm"));
                    });
                    let ops = 2.0 * (rows * cols * batch) as f64 / t;
                    let pct = peak1.map_or("-".into(), |p| format!("{:.0}%", 100.0 * ops / (p * threads as f64)));
                    println!("| {rows}x{cols} | {batch} | {v} | {threads} | {:.2} | {:.1} | {pct} |", t * 1e3, ops / 1e9);
                }
            }
        }
    }
}
