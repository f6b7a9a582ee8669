//! Engine throughput: prefill and decode tokens/s of a `nano-125m`-shaped llama (dim 768,
//! 12 layers, 12 heads, FFN 2048, vocab 50257; TQ2_0 blocks, Q8_0 head, F16 embedding, random
//! weights in a temporary GGUF) and of `d20` (dim 512, 6 layers, 2 mHC streams; as an HF
//! directory, the training layout), at 1 and 2 threads.
//!
//! Per row: bytes read per decoded token (weights + the f16 KV cache at the mean decode
//! position); two streaming-read bandwidths measured in the same process with the same thread
//! count, interleaved with the decode runs (see `Probe`): from DRAM, and re-reading one token's
//! bytes as decode does (the last-level cache may keep part of them); two ratios = bytes/token ×
//! tok/s ÷ each of them (1.0 = at that roofline; the re-read one is the stricter wherever the
//! cache keeps part of the window). Peak RSS (VmHWM) is per model:
//! each model runs in its own child process.
//!
//!   cargo run --release -p engine --example bench_engine
//!
//! `-- --write-nano DIR` only writes the nano-125m GGUF into DIR and prints its path
//! (`benchmarks/bench_llama_cpp.py` runs llama.cpp and this engine on that file).
//!
//! Timings are the best of a few runs; on a shared machine (others compiling) they are noisy.

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use engine::synthetic::{nano_125m_config, write_random_gguf, write_random_hf_dir, SyntheticOptions};
use engine::{KvCache, Model, ModelConfig};
use gguf::GgmlType;

const PROMPT: usize = 128;
const DECODE: usize = 64;
const DECODE_ROUNDS: usize = 5;

fn d20() -> ModelConfig {
    let json = include_str!("../../../python/nanochat_ternary/configs/d20.json");
    ModelConfig::from_json(json).expect("d20 config")
}

fn best_time(min_runs: usize, budget: Duration, mut f: impl FnMut()) -> f64 {
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

fn read_xor(buf: &[u64]) -> u64 {
    let mut lanes = [0u64; 8];
    for c in buf.chunks_exact(8) {
        for i in 0..8 {
            lanes[i] ^= c[i];
        }
    }
    lanes.iter().fold(0, |a, &b| a ^ b)
}

/// [`read_xor`] with a software prefetch 16 KiB ahead, as the engine's streamed kernels do: on one
/// core of these machines it reads faster than the hardware prefetchers alone manage.
fn read_xor_prefetched(buf: &[u64]) -> u64 {
    let mut lanes = [0u64; 8];
    for (k, c) in buf.chunks_exact(8).enumerate() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: SSE is part of x86-64; a prefetch never faults, even past the buffer's end.
        unsafe {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            _mm_prefetch::<_MM_HINT_T0>(buf.as_ptr().wrapping_add(k * 8 + 2048).cast());
        }
        for i in 0..8 {
            lanes[i] ^= c[i];
        }
    }
    lanes.iter().fold(0, |a, &b| a ^ b)
}

/// The streaming-read references, read by the kernels' own team (the threads decode runs on),
/// each thread its share of a window of one token's bytes:
/// - DRAM: windows rotate over a buffer of max(256 MiB, 4 × LLC), so every read comes from DRAM;
/// - re-read: the same window read again and again, as decode re-reads its weights every token,
///   so whatever the last-level cache keeps of it counts. On two threads of these VMs this one
///   is bimodal from one process to the next (~63 or ~120 GB/s for nano-125m's 68.5 MB).
///
/// The benchmark prints decode's ratio to each.
struct Probe {
    buf: Vec<u64>,
    window: usize,
    next: std::cell::Cell<usize>,
    threads: usize,
}

impl Probe {
    fn new(bytes: usize, threads: usize) -> Self {
        let window = (bytes / 8).next_multiple_of(8 * threads);
        let total = (256usize << 20).max(4 * kernels::last_level_cache_bytes()) / 8;
        let buf: Vec<u64> = (0..total.next_multiple_of(window).max(3 * window)).map(|i| i as u64).collect();
        Self { buf, window, next: std::cell::Cell::new(window), threads }
    }

    /// Seconds `read` takes over the window at `at`.
    fn read_window(&self, at: usize, read: fn(&[u64]) -> u64) -> f64 {
        let team = kernels::team().expect("kernel threads");
        let parts: Vec<&[u64]> = self.buf[at..][..self.window].chunks(self.window / self.threads).collect();
        let start = Instant::now();
        team.run(parts.len(), &|i| {
            black_box(read(parts[i]));
        });
        start.elapsed().as_secs_f64()
    }

    /// (DRAM, re-read) bandwidths in bytes/s, each the faster of a plain and a prefetching read:
    /// DRAM from the next two windows after the first (one per read, so neither finds the other's
    /// bytes in the cache), re-read from the first window.
    fn measure(&self) -> (f64, f64) {
        let mut dram = f64::INFINITY;
        for read in [read_xor as fn(&[u64]) -> u64, read_xor_prefetched] {
            let at = self.next.get();
            let next = at + self.window;
            self.next.set(if next + self.window > self.buf.len() { self.window } else { next });
            dram = dram.min(self.read_window(at, read));
        }
        let reread = self.read_window(0, read_xor).min(self.read_window(0, read_xor_prefetched));
        let bytes = (self.window * 8) as f64;
        (bytes / dram, bytes / reread)
    }
}

/// A `/proc/self/status` memory field (VmHWM = peak RSS, VmRSS = current) in KiB.
fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn dir_size(path: &Path) -> u64 {
    if path.is_dir() {
        std::fs::read_dir(path).map(|rd| rd.flatten().map(|e| dir_size(&e.path())).sum()).unwrap_or(0)
    } else {
        std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
    }
}

/// KV-cache bytes one decode step reads at position `pos` (keys and values of every layer).
fn kv_bytes_at(c: &ModelConfig, pos: usize) -> usize {
    c.n_layers * 2 * pos * c.kv_dim() * engine::KvPrecision::default().bytes()
}

fn bench_model(name: &str, model: &Model, file_bytes: u64) {
    let loaded_rss = status_kib("VmHWM:");
    let c = &model.config;
    let prompt: Vec<u32> = (0..PROMPT).map(|i| ((i * 7919 + 13) % c.vocab_size) as u32).collect();
    let weight_bytes = model.bytes_per_token();
    let kv_mean = kv_bytes_at(c, PROMPT + DECODE / 2);
    let bytes_per_token = weight_bytes + kv_mean;
    let (mut kv_total, mut running_rss) = (0, 0);
    for threads in [1, 2] {
        kernels::set_num_threads(threads).expect("threads");
        let prefill = best_time(2, Duration::from_secs(2), || {
            let mut cache = KvCache::new(model, PROMPT);
            black_box(model.forward(&mut cache, &prompt, false).expect("prefill"));
        });
        let mut cache = KvCache::new(model, PROMPT + DECODE);
        let logits = model.forward(&mut cache, &prompt, false).expect("prefill");
        let first = engine::argmax(&logits);
        // Rounds of the same 64 steps (the cache cut back to the prompt), each followed by three
        // reads of the probe, so decode and bandwidth are measured under the same machine load
        // (the memory bandwidth of these VMs drifts by tens of percent over minutes); best of each.
        if running_rss == 0 {
            running_rss = status_kib("VmHWM:"); // before any probe buffer existed
        }
        let probe = Probe::new(bytes_per_token, threads);
        let (mut decode, mut dram, mut reread) = (f64::INFINITY, 0f64, 0f64);
        for _ in 0..DECODE_ROUNDS {
            cache.truncate(PROMPT);
            let mut next = first;
            let start = Instant::now();
            for _ in 0..DECODE {
                let logits = model.forward(&mut cache, &[next], false).expect("decode");
                next = engine::argmax(&logits);
            }
            decode = decode.min(start.elapsed().as_secs_f64() / DECODE as f64);
            for _ in 0..3 {
                let (d, r) = probe.measure();
                (dram, reread) = (dram.max(d), reread.max(r));
            }
        }
        kv_total = cache.bytes();
        let decode_tps = 1.0 / decode;
        let used = bytes_per_token as f64 * decode_tps;
        println!(
            "{name:<16} {threads:>2} {:>12.1} {:>11.1} {:>10.1} {:>9.1} {:>10.1} {:>9.1} {:>7.2} {:>9.2}",
            PROMPT as f64 / prefill,
            decode_tps,
            bytes_per_token as f64 / 1e6,
            dram / 1e9,
            reread / 1e9,
            used / 1e9,
            used / dram,
            used / reread,
        );
    }
    println!(
        "{name:<16} weights/token {:.1} MB + KV {:.1} MB (mean decode position {}); file {:.1} MB; KV cache {:.1} MB; \
         peak RSS after load {:.1} MB, after prefill and decode {:.1} MB (before the bandwidth probe's buffer)",
        weight_bytes as f64 / 1e6,
        kv_mean as f64 / 1e6,
        PROMPT + DECODE / 2,
        file_bytes as f64 / 1e6,
        kv_total as f64 / 1e6,
        loaded_rss as f64 / 1024.0,
        running_rss as f64 / 1024.0
    );
}

/// Writes the random model for `which` under `tmp`; returns its path.
fn write_model(which: &str, tmp: &Path) -> std::path::PathBuf {
    if which == "nano" {
        let path = tmp.join("nano-125m.gguf");
        // With a (GPT-2 style) tokenizer, so llama.cpp loads the very same file
        // (benchmarks/bench_llama_cpp.py).
        let opts = SyntheticOptions {
            matrix_type: GgmlType::TQ2_0,
            head_type: Some(GgmlType::Q8_0),
            embd_type: GgmlType::F16,
            tokenizer: true,
            ..Default::default()
        };
        write_random_gguf(&path, &nano_125m_config(), &opts).expect("write gguf");
        path
    } else {
        let path = tmp.join("d20");
        write_random_hf_dir(&path, &d20(), 1).expect("write hf dir");
        path
    }
}

/// Child process: load and benchmark one model (so VmHWM is this model's peak alone).
fn run_one(which: &str, path: &Path) {
    let name = if which == "nano" { "nano-125m (gguf)" } else { "d20 (hf dir)" };
    let model = engine::load(path).expect("load");
    bench_model(name, &model, dir_size(path));
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() == 4 && args[1] == "--one" {
        run_one(&args[2], Path::new(&args[3]));
        return;
    }
    if args.len() == 3 && args[1] == "--write-nano" {
        // Only write the nano-125m GGUF into the directory given (for bench_llama_cpp.py).
        println!("{}", write_model("nano", Path::new(&args[2])).display());
        return;
    }
    let tmp = std::env::temp_dir().join(format!("nct-bench-engine-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).expect("temp dir");
    println!("prefill: {PROMPT}-token prompt; decode: {DECODE} tokens after it; best-of timings");
    println!(
        "{:<16} {:>2} {:>12} {:>11} {:>10} {:>9} {:>10} {:>9} {:>7} {:>9}",
        "model", "th", "prefill t/s", "decode t/s", "MB/token", "DRAM GB/s", "reread GB/s", "used GB/s", "÷DRAM", "÷reread"
    );
    let exe = std::env::current_exe().expect("current exe");
    for which in ["nano", "d20"] {
        let path = write_model(which, &tmp);
        let status = std::process::Command::new(&exe).arg("--one").arg(which).arg(&path).status().expect("run child");
        if !status.success() {
            eprintln!("{which}: child failed with {status}");
        }
    }
    let _ = std::fs::remove_dir_all(&tmp);
}
