//! Where a batched decode step spends its time: a `nano-125m`-shaped GGUF (random TQ2_0 blocks,
//! Q8_0 head, as `bench_engine`), N sequences after a 32-token prompt each, one token per sequence
//! per step. Per N: the whole `forward_batch` step, the LM head alone (`Model::head_logits`), the
//! block matrices alone (every layer's seven products, "matrices", part of "rest"), and
//! sampling N rows of logits at temperature 0.8 (what the server's default settings cost), all
//! as ms per step and aggregate tokens/s, with N = 1 as the reference for the ratios.
//!
//!   cargo run --release -p engine --example bench_batch [-- THREADS]
//!
//! With one thread (`-- 1`) the times are the calling thread's time on the CPU
//! (CLOCK_THREAD_CPUTIME_ID), not wall time: on a shared, busy machine that is what stays
//! comparable between rows.

use std::time::Instant;

use engine::synthetic::{nano_125m_config, write_random_gguf, SyntheticOptions};
use engine::{KvCache, Rng, SamplingParams, Segment};
use gguf::GgmlType;

/// Nanoseconds this thread has run on a CPU, if the clock is there.
fn cpu_ns() -> Option<u64> {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid, writable timespec.
    let ok = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } == 0;
    ok.then(|| ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
}

/// Milliseconds `f` took: on-CPU time of this thread with one kernel thread, else wall time.
fn timed(on_cpu: bool, f: impl FnOnce()) -> f64 {
    let (t, c) = (Instant::now(), cpu_ns());
    f();
    match (on_cpu, c, cpu_ns()) {
        (true, Some(a), Some(b)) => (b - a) as f64 / 1e6,
        _ => t.elapsed().as_secs_f64() * 1e3,
    }
}

/// The fastest round: on a shared machine the least disturbed one.
fn median(v: Vec<f64>) -> f64 {
    v.into_iter().fold(f64::INFINITY, f64::min)
}

fn main() {
    let threads: usize = std::env::args().nth(1).map_or(2, |a| a.parse().expect("threads"));
    kernels::set_num_threads(threads).expect("threads");
    let on_cpu = threads == 1 && cpu_ns().is_some();
    let config = nano_125m_config();
    let dir = std::env::temp_dir().join(format!("nct-bench-batch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("nano.gguf");
    let opts = SyntheticOptions { matrix_type: GgmlType::TQ2_0, head_type: Some(GgmlType::Q8_0), embd_type: GgmlType::F16, ..Default::default() };
    write_random_gguf(&path, &config, &opts).expect("write gguf");
    let model = engine::load(&path).expect("load");
    let _ = std::fs::remove_dir_all(&dir);
    let params = SamplingParams { temperature: 0.8, ..Default::default() };
    println!("threads {threads}; ms per step ({}, best of 24 rounds); tok/s = N / step", if on_cpu { "on-CPU time" } else { "wall time" });
    println!("{:>3} {:>9} {:>9} {:>8} {:>9} {:>9} {:>10} {:>7}", "N", "step ms", "head ms", "rest ms", "matrices", "sample ms", "tok/s", "vs N=1");
    let mut base = 0.0;
    for n in [1usize, 2, 4, 8, 16] {
        let mut caches: Vec<KvCache> = (0..n).map(|_| KvCache::new(&model, 128)).collect();
        let prompts: Vec<Vec<u32>> = (0..n).map(|s| (0..32).map(|i| (1 + 97 * (s * 32 + i)) as u32 % 50000).collect()).collect();
        let mut segs: Vec<Segment> = caches.iter_mut().zip(&prompts).map(|(cache, ids)| Segment { cache, ids, logits: true }).collect();
        let mut last: Vec<Vec<f32>> = model.forward_batch(&mut segs).expect("prefill").into_iter().map(|l| l.expect("logits")).collect();
        drop(segs);
        let (mut steps, mut heads, mut samples, mut mats) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let hf: Vec<f32> = (0..n * 2048).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
        let h: Vec<f32> = (0..n * 768).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
        let mut rng = Rng::new(1);
        for _round in 0..24 {
            let ids: Vec<[u32; 1]> = (0..n).map(|s| [(last[s][..50000].iter().enumerate().fold((0, f32::MIN), |b, (i, &v)| if v > b.1 { (i, v) } else { b }).0) as u32]).collect();
            let mut segs: Vec<Segment> = caches.iter_mut().zip(&ids).map(|(cache, ids)| Segment { cache, ids, logits: true }).collect();
            steps.push(timed(on_cpu, || {
                last = model.forward_batch(&mut segs).expect("step").into_iter().map(|l| l.expect("logits")).collect();
            }));
            drop(segs);
            mats.push(timed(on_cpu, || {
                for layer in &model.layers {
                    for m in [&layer.wq, &layer.wk, &layer.wv, &layer.wo, &layer.up] {
                        std::hint::black_box(m.forward(&h, n, model.residency).expect("matrix"));
                    }
                    if let Some(g) = &layer.gate {
                        std::hint::black_box(g.forward(&h, n, model.residency).expect("gate"));
                    }
                    std::hint::black_box(layer.down.forward(&hf, n, model.residency).expect("down"));
                }
            }));
            heads.push(timed(on_cpu, || {
                std::hint::black_box(model.head_logits(&h, n).expect("head"));
            }));
            samples.push(timed(on_cpu, || {
                for l in &last {
                    std::hint::black_box(engine::sample(&mut l.clone(), &[], &params, &mut rng));
                }
            }));
        }
        let (step, head, sample, mat) = (median(steps), median(heads), median(samples), median(mats));
        let tps = n as f64 / (step / 1e3);
        if n == 1 {
            base = tps;
        }
        println!("{n:>3} {step:>9.2} {head:>9.2} {:>8.2} {mat:>9.2} {sample:>9.2} {tps:>10.1} {:>6.2}x", step - head, tps / base);
    }
}
