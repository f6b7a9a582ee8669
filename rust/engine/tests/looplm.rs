//! LoopLM in the engine: the shared stack run T times equals the same blocks unrolled into a
//! plain n_layers·T model; exiting every token after the first loop equals the plain
//! n_layers model; prefill, token-by-token decode and batched decode follow the same per-token
//! exit rule (skipped loops' keys and values copied from the exit loop); and bad thresholds and
//! mismatched files are clear errors.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use engine::synthetic::{write_random_gguf, write_random_hf_dir, SyntheticOptions};
use engine::{FfnActivation, KvCache, KvPrecision, LoopConfig, Model, ModelConfig, Segment};
use ternary::checkpoint::{self, Checkpoint};

const K: usize = 2;
const T: usize = 3;

fn config(streams: usize, gate: bool) -> ModelConfig {
    ModelConfig {
        name: "loop-test".into(),
        vocab_size: 64,
        dim: 64,
        n_layers: K,
        n_heads: 4,
        n_kv_heads: 2,
        ffn_hidden: 96,
        ffn_activation: FfnActivation::Swiglu,
        max_seq_len: 40,
        rope_theta: 10_000.0,
        norm_eps: 1e-5,
        tie_embeddings: false,
        mhc_streams: streams,
        ternary: true,
        looping: Some(LoopConfig { loops: T, exit_gate: gate, entropy_weight: 0.0, exit_threshold: 1.0 }),
    }
}

fn load(dir: &Path) -> Model {
    let mut m = engine::load(dir).unwrap();
    m.kv_precision = KvPrecision::F32;
    m
}

/// Rewrites the HF directory `src` as another model: `blocks` maps each new block index to the
/// source block it copies; the exit gate is dropped and the config replaced.
fn rewrite(src: &Path, dst: &Path, config: &ModelConfig, blocks: &[usize]) -> PathBuf {
    let ck = checkpoint::load(src.join("model.safetensors")).unwrap();
    let mut out = Checkpoint::default();
    for (name, t) in &ck.tensors {
        if name.starts_with("exit_gate.") {
            continue;
        }
        if let Some(rest) = name.strip_prefix("blocks.") {
            let (i, tail) = rest.split_once('.').unwrap();
            let i: usize = i.parse().unwrap();
            for (new, &from) in blocks.iter().enumerate() {
                if from == i {
                    out.tensors.insert(format!("blocks.{new}.{tail}"), t.clone());
                }
            }
        } else {
            out.tensors.insert(name.clone(), t.clone());
        }
    }
    std::fs::create_dir_all(dst).unwrap();
    checkpoint::save(dst.join("model.safetensors"), &out).unwrap();
    std::fs::write(dst.join("config.json"), serde_json::to_string(config).unwrap()).unwrap();
    dst.to_path_buf()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

const IDS: [u32; 12] = [3, 17, 9, 44, 2, 61, 30, 30, 5, 12, 8, 1];

#[test]
fn full_depth_equals_the_unrolled_model_and_one_loop_the_plain_one() {
    for streams in [1, 2] {
        let dir = tempfile::tempdir().unwrap();
        let looped = config(streams, true);
        write_random_hf_dir(&dir.path().join("loop"), &looped, 7).unwrap();
        let unrolled = ModelConfig { n_layers: K * T, looping: None, ..looped.clone() };
        let order: Vec<usize> = (0..K * T).map(|j| j % K).collect();
        let unrolled_dir = rewrite(&dir.path().join("loop"), &dir.path().join("unrolled"), &unrolled, &order);
        let plain = ModelConfig { looping: None, ..looped.clone() };
        let plain_dir = rewrite(&dir.path().join("loop"), &dir.path().join("plain"), &plain, &[0, 1]);

        let model = load(&dir.path().join("loop"));
        assert_eq!(model.architecture, "nanochat-ternary-loop");
        assert_eq!(model.exit_threshold.get(), 1.0);
        let full = model.logits(&IDS).unwrap();
        let reference = load(&unrolled_dir).logits(&IDS).unwrap();
        assert!(max_diff(&full, &reference) < 1e-5, "streams {streams}: {}", max_diff(&full, &reference));
        assert_eq!(model.mean_depth(), (T as f64, IDS.len() as u64));

        // A threshold every token reaches after loop 1: the deeper loops never run and only see
        // copies, so the readout is the plain K-layer model's.
        model.reset_depth();
        model.set_exit_threshold(1e-6).unwrap();
        let shallow = model.logits(&IDS).unwrap();
        let reference = load(&plain_dir).logits(&IDS).unwrap();
        assert!(max_diff(&shallow, &reference) < 1e-5, "streams {streams}: {}", max_diff(&shallow, &reference));
        assert_eq!(model.mean_depth(), (1.0, IDS.len() as u64));
    }
}

/// Logits of every position, token by token through one cache (the decode path).
fn decode_each(model: &Model, ids: &[u32]) -> Vec<f32> {
    let mut cache = KvCache::new(model, ids.len());
    ids.iter().flat_map(|&id| model.forward(&mut cache, &[id], false).unwrap()).collect()
}

#[test]
fn prefill_decode_and_batch_follow_the_same_exit_rule() {
    let dir = tempfile::tempdir().unwrap();
    write_random_hf_dir(dir.path(), &config(1, true), 11).unwrap();
    let model = Arc::new(load(dir.path()));
    let full = model.logits(&IDS).unwrap();
    // A threshold that sends tokens out after different loops.
    let mut mixed = None;
    for threshold in [0.3, 0.5, 0.7, 0.85, 0.95] {
        model.set_exit_threshold(threshold).unwrap();
        model.reset_depth();
        let _ = model.logits(&IDS).unwrap();
        let (depth, _) = model.mean_depth();
        if depth > 1.05 && depth < T as f64 - 0.05 {
            mixed = Some(threshold);
            break;
        }
    }
    let threshold = mixed.expect("some threshold gives mixed exits with this gate");
    model.set_exit_threshold(threshold).unwrap();
    let prefill = model.logits(&IDS).unwrap();
    assert!(max_diff(&prefill, &full) > 1e-3, "early exit changes the logits");
    let decode = decode_each(&model, &IDS);
    assert!(max_diff(&prefill, &decode) < 1e-4, "{}", max_diff(&prefill, &decode));

    // Two sequences in one batched forward: a prompt chunk and a one-token decode step.
    let (a, b) = (&IDS[..7], &IDS[3..9]);
    let mut ca = KvCache::new(&model, 16);
    let mut cb = KvCache::new(&model, 16);
    model.forward(&mut cb, &b[..5], false).unwrap();
    let out = model
        .forward_batch(&mut [
            Segment { cache: &mut ca, ids: a, logits: true },
            Segment { cache: &mut cb, ids: &b[5..], logits: true },
        ])
        .unwrap();
    let v = model.config.vocab_size;
    let alone_a = &model.logits(a).unwrap()[(a.len() - 1) * v..];
    let alone_b = &model.logits(b).unwrap()[(b.len() - 1) * v..];
    assert!(max_diff(out[0].as_ref().unwrap(), alone_a) < 1e-4);
    assert!(max_diff(out[1].as_ref().unwrap(), alone_b) < 1e-4);

    // Greedy generation at this threshold: the same tokens as argmax over fresh prefills.
    let params = engine::SamplingParams { max_new_tokens: 8, ..Default::default() };
    let got = engine::generate(&model, &[IDS[..4].to_vec()], &params).unwrap().remove(0);
    let mut ids = IDS[..4].to_vec();
    for _ in 0..got.len() {
        let logits = model.logits(&ids).unwrap();
        ids.push(engine::argmax(&logits[(ids.len() - 1) * v..]));
    }
    assert_eq!(got, ids[4..]);
}

#[test]
fn thresholds_and_files_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    write_random_hf_dir(&dir.path().join("gate"), &config(1, true), 3).unwrap();
    write_random_hf_dir(&dir.path().join("nogate"), &config(1, false), 3).unwrap();
    let gate = load(&dir.path().join("gate"));
    for bad in [0.0, -0.5, 1.5, f64::NAN] {
        let msg = gate.set_exit_threshold(bad).unwrap_err().to_string();
        assert!(msg.contains("(0, 1]"), "{msg}");
    }
    let nogate = load(&dir.path().join("nogate"));
    let msg = nogate.set_exit_threshold(0.5).unwrap_err().to_string();
    assert!(msg.contains("exit gate"), "{msg}");
    nogate.set_exit_threshold(1.0).unwrap();
    // Without a gate the loops always run: T of them.
    let _ = nogate.logits(&IDS[..3]).unwrap();
    assert_eq!(nogate.mean_depth(), (T as f64, 3));

    // A config whose gate tensors are missing, and bad loop settings.
    std::fs::remove_file(dir.path().join("nogate/config.json")).unwrap();
    std::fs::write(dir.path().join("nogate/config.json"), serde_json::to_string(&config(1, true)).unwrap()).unwrap();
    let msg = engine::load(dir.path().join("nogate")).err().unwrap().to_string();
    assert!(msg.contains("exit_gate"), "{msg}");
    for (loop_json, needle) in [
        (r#"{"loops": 0}"#, "loop.loops"),
        (r#"{"loops": 1, "exit_gate": true}"#, "exit_gate"),
        (r#"{"loops": 2, "exit_gate": true, "exit_threshold": 2}"#, "(0, 1]"),
        (r#"{"loops": 2, "exit_threshold": 0.5}"#, "exit gate"),
    ] {
        let mut v = serde_json::to_value(config(1, false)).unwrap();
        v["loop"] = serde_json::from_str(loop_json).unwrap();
        let msg = ModelConfig::from_json(&v.to_string()).unwrap_err().to_string();
        assert!(msg.contains(needle), "{loop_json}: {msg}");
    }

    // GGUF: a loop file round-trips, and one without its nct.config (the loop settings) is
    // refused rather than run once.
    let path = dir.path().join("loop.gguf");
    let c = ModelConfig { dim: 256, ffn_hidden: 256, ..config(1, true) };
    write_random_gguf(&path, &c, &SyntheticOptions::default()).unwrap();
    let m = engine::load(&path).unwrap();
    assert_eq!((m.architecture.as_str(), m.config.loops()), ("nanochat-ternary-loop", T));
    assert!(m.exit_gate.is_some());
    let bare = dir.path().join("bare.gguf");
    write_random_gguf(&bare, &c, &SyntheticOptions { nct_config: false, ..Default::default() }).unwrap();
    let msg = engine::load(&bare).err().unwrap().to_string();
    assert!(msg.contains("nct.config"), "{msg}");
}
