//! Continuous batching on small random models: batched decoding (chunked prefill, sequences
//! joining at different steps) gives exactly the tokens of single-sequence decoding; cancel
//! and finish free at once; the KV budget queues or refuses, never panics.

use std::collections::HashMap;
use std::sync::Arc;

use engine::synthetic::{write_random_gguf, SyntheticOptions};
use engine::{FfnActivation, Finish, Generation, KvPrecision, Model, ModelConfig, SamplingParams, Scheduler, SchedulerConfig};

fn config(streams: usize, act: FfnActivation, kv_heads: usize) -> ModelConfig {
    ModelConfig {
        name: "batch-test".into(),
        vocab_size: 72,
        dim: 256,
        n_layers: 2,
        n_heads: 4,
        n_kv_heads: kv_heads,
        ffn_hidden: 512,
        ffn_activation: act,
        max_seq_len: 64,
        rope_theta: 10_000.0,
        norm_eps: 1e-5,
        tie_embeddings: false,
        mhc_streams: streams,
        ternary: true,
        looping: None,
    }
}

fn model(c: &ModelConfig, kv: KvPrecision) -> (tempfile::TempDir, Arc<Model>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    write_random_gguf(&path, c, &SyntheticOptions::default()).unwrap();
    let mut m = engine::load(&path).unwrap();
    m.kv_precision = kv;
    (dir, Arc::new(m))
}

fn prompt(len: usize, salt: u32) -> Vec<u32> {
    (0..len as u32).map(|i| (i * 7 + salt * 13 + 1) % 70).collect()
}

fn single(model: &Arc<Model>, p: &[u32], params: &SamplingParams) -> Vec<u32> {
    Generation::new(model.clone(), p, params.clone()).unwrap().collect_all().unwrap()
}

/// Runs the scheduler until idle, adding `joins[i] = (step, prompt, params)` at their step;
/// returns every request's tokens and finish.
fn run_batched(
    model: &Arc<Model>,
    cfg: SchedulerConfig,
    joins: &[(usize, Vec<u32>, SamplingParams)],
) -> Vec<(Vec<u32>, Finish)> {
    let mut s = Scheduler::new(model.clone(), cfg).unwrap();
    let mut ids = vec![u64::MAX; joins.len()];
    let mut out: HashMap<u64, (Vec<u32>, Option<Finish>)> = HashMap::new();
    let mut step = 0;
    let mut max_running = 0;
    loop {
        for (i, (at, p, params)) in joins.iter().enumerate() {
            if *at == step {
                ids[i] = s.add(p, params.clone(), None).unwrap();
            }
        }
        let pending = joins.iter().any(|j| j.0 > step);
        if s.is_idle() && !pending {
            break;
        }
        for ev in s.step() {
            let entry = out.entry(ev.id).or_default();
            assert!(entry.1.is_none(), "event after finish");
            entry.0.extend(ev.tokens.iter().map(|t| t.id));
            entry.1 = ev.finish;
        }
        max_running = max_running.max(s.running());
        step += 1;
        assert!(step < 10_000, "scheduler does not finish");
    }
    assert!(max_running > 1, "the test never batched");
    assert_eq!(s.reserved_bytes(), 0);
    ids.iter().map(|id| {
        let (t, f) = out.remove(id).unwrap();
        (t, f.expect("every request finishes"))
    }).collect()
}

fn joins(params: &SamplingParams) -> Vec<(usize, Vec<u32>, SamplingParams)> {
    let mut v = Vec::new();
    for (i, (at, len, max_new)) in [(0, 3, 14), (0, 20, 9), (2, 11, 16), (5, 37, 12), (5, 1, 10), (9, 6, 20)].into_iter().enumerate() {
        let p = SamplingParams { max_new_tokens: max_new, seed: 100 + i as u64, ..params.clone() };
        v.push((at, prompt(len, i as u32), p));
    }
    v
}

fn check_equal(model: &Arc<Model>, params: &SamplingParams, chunk: usize) {
    let joins = joins(params);
    let cfg = SchedulerConfig { max_batch: 4, prefill_chunk: chunk, kv_budget_bytes: 1 << 30 };
    let got = run_batched(model, cfg, &joins);
    for ((_, p, params), (tokens, finish)) in joins.iter().zip(&got) {
        let want = single(model, p, params);
        assert_eq!(tokens, &want, "prompt of {} tokens", p.len());
        let expected = if want.len() == params.max_new_tokens { Finish::Length } else { Finish::Stop };
        assert_eq!(finish, &expected);
    }
}

#[test]
fn batched_greedy_equals_single_sequence_greedy() {
    let greedy = SamplingParams { ignore_eos: true, ..Default::default() };
    for (c, kv) in [
        (config(1, FfnActivation::Swiglu, 2), KvPrecision::F16),
        (config(1, FfnActivation::Relu2, 4), KvPrecision::F32),
        (config(2, FfnActivation::Swiglu, 4), KvPrecision::F16),
    ] {
        let (_dir, m) = model(&c, kv);
        for chunk in [5, 256] {
            check_equal(&m, &greedy, chunk);
        }
        // With EOS honoured: sequences may end early, at different steps.
        check_equal(&m, &SamplingParams::default(), 7);
    }
}

#[test]
fn batched_sampling_equals_single_sequence_sampling() {
    let (_dir, m) = model(&config(1, FfnActivation::Swiglu, 2), KvPrecision::F16);
    let p = SamplingParams { temperature: 0.9, top_k: 20, top_p: 0.95, repetition_penalty: 1.1, ignore_eos: true, ..Default::default() };
    check_equal(&m, &p, 6);
}

#[test]
fn cancel_and_finish_free_at_once() {
    let (_dir, m) = model(&config(1, FfnActivation::Swiglu, 2), KvPrecision::F16);
    let mut s = Scheduler::new(m.clone(), SchedulerConfig::default()).unwrap();
    let per = s.kv_bytes_per_position();
    let params = SamplingParams { max_new_tokens: 30, ignore_eos: true, ..Default::default() };
    let a = s.add(&prompt(5, 1), params.clone(), None).unwrap();
    let b = s.add(&prompt(8, 2), params.clone(), None).unwrap();
    assert_eq!((s.running(), s.waiting()), (0, 2));
    s.step();
    s.step();
    assert_eq!(s.running(), 2);
    assert_eq!(s.reserved_bytes(), (5 + 30 + 8 + 30) * per);
    let held = s.kv_bytes();
    assert!(held > 0);
    assert!(s.cancel(a));
    assert!(!s.cancel(a), "a second cancel finds nothing");
    assert_eq!(s.running(), 1);
    assert_eq!(s.reserved_bytes(), (8 + 30) * per);
    assert!(s.kv_bytes() < held);
    for ev in s.step() {
        assert_eq!(ev.id, b, "a cancelled sequence gets no more tokens");
    }
    // A waiting request can be cancelled too.
    let c = s.add(&prompt(3, 3), params.clone(), None).unwrap();
    assert_eq!(s.waiting(), 1);
    assert!(s.cancel(c));
    assert_eq!(s.waiting(), 0);
    // Finishing frees in the step that finishes.
    let short = SamplingParams { max_new_tokens: 2, ..params };
    let d = s.add(&prompt(4, 4), short, None).unwrap();
    let mut finished = false;
    for _ in 0..5 {
        for ev in s.step() {
            if ev.id == d && ev.finish.is_some() {
                assert_eq!(ev.finish, Some(Finish::Length));
                finished = true;
            }
        }
        if finished {
            break;
        }
    }
    assert!(finished);
    assert_eq!(s.running(), 1);
    assert_eq!(s.reserved_bytes(), (8 + 30) * per);
    assert!(s.cancel(b));
    assert!(s.is_idle());
    assert_eq!((s.reserved_bytes(), s.kv_bytes()), (0, 0));
    assert!(s.step().is_empty());
}

#[test]
fn kv_budget_queues_or_refuses_without_panicking() {
    let (_dir, m) = model(&config(1, FfnActivation::Swiglu, 2), KvPrecision::F16);
    let per = {
        let s = Scheduler::new(m.clone(), SchedulerConfig::default()).unwrap();
        s.kv_bytes_per_position()
    };
    let cfg = SchedulerConfig { max_batch: 8, prefill_chunk: 64, kv_budget_bytes: 30 * per };
    let mut s = Scheduler::new(m.clone(), cfg).unwrap();
    let params = SamplingParams { max_new_tokens: 10, ignore_eos: true, ..Default::default() };
    // 31 positions can never fit: refused with an error, nothing queued.
    let err = s.add(&prompt(21, 1), params.clone(), None).unwrap_err();
    assert!(err.to_string().contains("budget"), "{err}");
    assert!(s.is_idle());
    // Two requests of 20 positions: the second waits until the first frees its cache.
    let a = s.add(&prompt(10, 1), params.clone(), None).unwrap();
    let b = s.add(&prompt(10, 2), params.clone(), None).unwrap();
    s.step();
    assert_eq!((s.running(), s.waiting()), (1, 1));
    let mut order = Vec::new();
    for _ in 0..100 {
        for ev in s.step() {
            if ev.finish.is_some() {
                order.push(ev.id);
            }
        }
        assert!(s.reserved_bytes() <= 30 * per);
        if s.is_idle() {
            break;
        }
    }
    assert_eq!(order, vec![a, b]);
    // Invalid settings are errors too.
    assert!(s.add(&[], params.clone(), None).is_err());
    assert!(s.add(&[1000], params.clone(), None).is_err());
    assert!(s.add(&prompt(3, 1), SamplingParams { max_new_tokens: 0, ..params.clone() }, None).is_err());
    assert!(s.add(&prompt(3, 1), params.clone(), Some(engine::MAX_TOP_LOGPROBS + 1)).is_err());
    assert!(Scheduler::new(m.clone(), SchedulerConfig { max_batch: 0, ..Default::default() }).is_err());
}

#[test]
fn max_batch_caps_the_running_set() {
    let (_dir, m) = model(&config(1, FfnActivation::Swiglu, 2), KvPrecision::F16);
    let cfg = SchedulerConfig { max_batch: 2, prefill_chunk: 64, kv_budget_bytes: 1 << 30 };
    let mut s = Scheduler::new(m, cfg).unwrap();
    let params = SamplingParams { max_new_tokens: 4, ignore_eos: true, ..Default::default() };
    for i in 0..5 {
        s.add(&prompt(3, i), params.clone(), None).unwrap();
    }
    let mut finished = 0;
    while !s.is_idle() {
        finished += s.step().iter().filter(|e| e.finish.is_some()).count();
        assert!(s.running() <= 2);
    }
    assert_eq!(finished, 5);
}

#[test]
fn logprobs_rank_the_alternatives() {
    let (_dir, m) = model(&config(1, FfnActivation::Swiglu, 2), KvPrecision::F16);
    let mut s = Scheduler::new(m, SchedulerConfig::default()).unwrap();
    let params = SamplingParams { max_new_tokens: 5, ignore_eos: true, ..Default::default() };
    s.add(&prompt(4, 1), params, Some(3)).unwrap();
    let mut n = 0;
    while !s.is_idle() {
        for ev in s.step() {
            for t in ev.tokens {
                n += 1;
                assert_eq!(t.top.len(), 3);
                // Greedy: the sampled token is the most likely one.
                assert_eq!(t.top[0].0, t.id);
                assert!((t.top[0].1 - t.logprob).abs() < 1e-6);
                assert!(t.top[0].1 >= t.top[1].1 && t.top[1].1 >= t.top[2].1);
                assert!(t.logprob <= 0.0);
            }
        }
    }
    assert_eq!(n, 5);
}
