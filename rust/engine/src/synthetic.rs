//! Random models written as GGUF files, for tests and benchmarks (random ternary weights are what
//! the benchmark needs: speed does not depend on the values).

use std::path::Path;

use gguf::{GgmlType, GgufWriter, Value};
use ternary::{Granularity, TernaryMatrix};

use crate::config::{FfnActivation, ModelConfig};
use crate::error::{EngineError, Result};
use crate::sampling::Rng;

/// What to write.
#[derive(Clone, Debug)]
pub struct SyntheticOptions {
    /// Type of the block matrices: TQ2_0, TQ1_0 (ternary), or Q8_0 / F16 / F32 (dense).
    pub matrix_type: GgmlType,
    /// Type of `output.weight`; `None` leaves it out (head tied to the embedding).
    pub head_type: Option<GgmlType>,
    /// Type of `token_embd.weight`: F32, F16 or Q8_0.
    pub embd_type: GgmlType,
    /// Write `nct.config` (else only the llama keys).
    pub nct_config: bool,
    /// Write a GPT-2 style tokenizer (needs `vocab_size >= 3`).
    pub tokenizer: bool,
    pub seed: u64,
}

impl Default for SyntheticOptions {
    fn default() -> Self {
        Self {
            matrix_type: GgmlType::TQ2_0,
            head_type: Some(GgmlType::Q8_0),
            embd_type: GgmlType::F32,
            nct_config: true,
            tokenizer: true,
            seed: 1,
        }
    }
}

/// The byte-level strings of a synthetic vocabulary: printable single characters, then
/// `<|endoftext|>` last (the EOS id is `vocab_size - 1`).
pub fn synthetic_tokens(vocab_size: usize) -> Vec<String> {
    let alphabet: Vec<char> = ('a'..='z').chain('A'..='Z').chain('0'..='9').chain(['Ġ', '.', ',', '!']).collect();
    (0..vocab_size)
        .map(|i| {
            if i + 1 == vocab_size {
                "<|endoftext|>".to_string()
            } else {
                // Base-|alphabet| digits of i: unique strings (single characters first).
                let (mut rest, mut s) = (i, Vec::new());
                loop {
                    s.push(alphabet[rest % alphabet.len()]);
                    rest /= alphabet.len();
                    if rest == 0 {
                        break;
                    }
                }
                s.iter().rev().collect()
            }
        })
        .collect()
}

struct Gen(Rng);

impl Gen {
    fn uniform(&mut self, n: usize, amp: f32) -> Vec<f32> {
        (0..n).map(|_| ((self.0.next_f64() * 2.0 - 1.0) as f32) * amp).collect()
    }
    fn trits(&mut self, n: usize) -> Vec<i8> {
        (0..n).map(|_| (self.0.next_u64() % 3) as i8 - 1).collect()
    }
}

fn f16_exact(x: f32) -> f32 {
    half::f16::from_f32(x).to_f32()
}

/// Encodes a rows × cols matrix as `ty`. Ternary types get random trits with one per-tensor
/// scale (f16-exact, so TQ2_0/TQ1_0 store it without rounding); dense types random floats.
fn matrix_bytes(g: &mut Gen, ty: GgmlType, rows: usize, cols: usize) -> Result<Vec<u8>> {
    let amp = (3.0 / cols as f32).sqrt();
    let err = |e: ternary::CodecError| EngineError::Config(format!("synthetic {ty}: {e}"));
    Ok(match ty {
        GgmlType::TQ2_0 | GgmlType::TQ1_0 => {
            let m = TernaryMatrix {
                rows,
                cols,
                trits: g.trits(rows * cols),
                scales: vec![f16_exact((1.5 / cols as f32).sqrt())],
                granularity: Granularity::PerTensor,
            };
            if ty == GgmlType::TQ2_0 {
                ternary::tq2::from_ternary(&m).map_err(err)?
            } else {
                ternary::tq1::from_ternary(&m).map_err(err)?
            }
        }
        _ => dense_bytes(ty, &g.uniform(rows * cols, amp))?,
    })
}

/// F32 / F16 / Q8_0 (ggml's Q8_0: d = max|x|/127 as f16, q = round(x/d)).
pub fn dense_bytes(ty: GgmlType, v: &[f32]) -> Result<Vec<u8>> {
    Ok(match ty {
        GgmlType::F32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        GgmlType::F16 => v.iter().flat_map(|x| half::f16::from_f32(*x).to_le_bytes()).collect(),
        GgmlType::Q8_0 => {
            let mut out = Vec::with_capacity(v.len() / 32 * 34);
            for block in v.chunks(32) {
                let amax = block.iter().fold(0f32, |m, x| m.max(x.abs()));
                let d = amax / 127.0;
                let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
                out.extend_from_slice(&half::f16::from_f32(d).to_le_bytes());
                out.extend(block.iter().map(|x| (x * inv).round() as i8 as u8));
            }
            out
        }
        other => return Err(EngineError::Config(format!("synthetic dense type {other} not supported"))),
    })
}

/// The `nano-125m` llama shape the engine benchmarks use (dim 768, 12 layers, 12 heads, FFN 2048,
/// vocab 50257, context 1024).
pub fn nano_125m_config() -> ModelConfig {
    ModelConfig {
        name: "nano-125m-llama".into(),
        vocab_size: 50257,
        dim: 768,
        n_layers: 12,
        n_heads: 12,
        n_kv_heads: 12,
        ffn_hidden: 2048,
        ffn_activation: FfnActivation::Swiglu,
        max_seq_len: 1024,
        rope_theta: 10_000.0,
        norm_eps: 1e-5,
        tie_embeddings: false,
        mhc_streams: 1,
        ternary: true,
        looping: None,
    }
}

/// Writes a random model with `config`'s shape to `path` (atomically).
pub fn write_random_gguf(path: &Path, config: &ModelConfig, opts: &SyntheticOptions) -> Result<()> {
    config.validate()?;
    let arch = config.architecture();
    let mut g = Gen(Rng::new(opts.seed));
    let mut w = GgufWriter::new();
    let (d, kv, h, v) = (config.dim, config.kv_dim(), config.ffn_hidden, config.vocab_size);
    let key = |k: &str| format!("{arch}.{k}");
    let u32v = |x: usize| Value::U32(x as u32);
    w.add("general.architecture", arch)?;
    w.add("general.name", "synthetic")?;
    if opts.nct_config {
        w.add("nct.config", config.to_json_with_architecture(arch).as_str())?;
    }
    w.add(key("context_length"), u32v(config.max_seq_len))?;
    w.add(key("embedding_length"), u32v(d))?;
    w.add(key("block_count"), u32v(config.n_layers))?;
    w.add(key("feed_forward_length"), u32v(h))?;
    w.add(key("attention.head_count"), u32v(config.n_heads))?;
    w.add(key("attention.head_count_kv"), u32v(config.n_kv_heads))?;
    w.add(key("attention.layer_norm_rms_epsilon"), Value::F32(config.norm_eps as f32))?;
    w.add(key("rope.freq_base"), Value::F32(config.rope_theta as f32))?;
    w.add(key("vocab_size"), u32v(v))?;
    if arch != "llama" {
        w.add(key("mhc.streams"), u32v(config.mhc_streams))?;
        let act = if config.ffn_activation == FfnActivation::Swiglu { "swiglu" } else { "relu2" };
        w.add(key("ffn_activation"), act)?;
    }
    if config.loops() > 1 {
        w.add(key("loop.count"), u32v(config.loops()))?;
    }
    if opts.tokenizer {
        let tokens = synthetic_tokens(v);
        let mut types = vec![1i32; v];
        types[v - 1] = 3;
        w.add("tokenizer.ggml.model", "gpt2")?;
        w.add("tokenizer.ggml.pre", "gpt-2")?;
        w.add("tokenizer.ggml.tokens", Value::Array(gguf::Array::String(tokens)))?;
        w.add("tokenizer.ggml.token_type", Value::Array(gguf::Array::I32(types)))?;
        w.add("tokenizer.ggml.merges", Value::Array(gguf::Array::String(Vec::new())))?;
        w.add("tokenizer.ggml.bos_token_id", u32v(v - 1))?;
        w.add("tokenizer.ggml.eos_token_id", u32v(v - 1))?;
    }
    let add_matrix = |w: &mut GgufWriter, g: &mut Gen, name: String, ty: GgmlType, rows: usize, cols: usize| {
        let bytes = matrix_bytes(g, ty, rows, cols)?;
        w.add_tensor(name, &[cols as u64, rows as u64], ty, bytes).map_err(EngineError::from)
    };
    let add_vector = |w: &mut GgufWriter, name: String, values: Vec<f32>| {
        let n = values.len() as u64;
        w.add_tensor(name, &[n], GgmlType::F32, dense_bytes(GgmlType::F32, &values)?).map_err(EngineError::from)
    };
    let embd = g.uniform(v * d, 1.0);
    w.add_tensor("token_embd.weight", &[d as u64, v as u64], opts.embd_type, dense_bytes(opts.embd_type, &embd)?)?;
    for i in 0..config.n_layers {
        let b = |s: &str| format!("blk.{i}.{s}");
        let t = opts.matrix_type;
        add_vector(&mut w, b("attn_norm.weight"), g.uniform(d, 0.5).iter().map(|x| 1.0 + x).collect())?;
        add_matrix(&mut w, &mut g, b("attn_q.weight"), t, d, d)?;
        add_matrix(&mut w, &mut g, b("attn_k.weight"), t, kv, d)?;
        add_matrix(&mut w, &mut g, b("attn_v.weight"), t, kv, d)?;
        add_matrix(&mut w, &mut g, b("attn_output.weight"), t, d, d)?;
        add_vector(&mut w, b("ffn_norm.weight"), g.uniform(d, 0.5).iter().map(|x| 1.0 + x).collect())?;
        if config.ffn_activation == FfnActivation::Swiglu {
            add_matrix(&mut w, &mut g, b("ffn_gate.weight"), t, h, d)?;
        }
        add_matrix(&mut w, &mut g, b("ffn_up.weight"), t, h, d)?;
        add_matrix(&mut w, &mut g, b("ffn_down.weight"), t, d, h)?;
        let n = config.mhc_streams;
        if n > 1 {
            let k = mhc::permutation_count(n)?;
            for sub in ["mhc_attn", "mhc_mlp"] {
                for (map, outputs) in [("res", k), ("pre", n), ("post", n)] {
                    let p = |s: &str| b(&format!("{sub}.{map}.{s}"));
                    let weight = g.uniform(n * d * outputs, 0.3);
                    w.add_tensor(p("weight"), &[outputs as u64, (n * d) as u64], GgmlType::F32, dense_bytes(GgmlType::F32, &weight)?)?;
                    add_vector(&mut w, p("alpha"), vec![0.5 + g.uniform(1, 0.25)[0]])?;
                    add_vector(&mut w, p("bias"), g.uniform(outputs, 1.0))?;
                }
            }
        }
    }
    if config.exit_gate() {
        add_vector(&mut w, "exit_gate.weight".into(), g.uniform(d, 2.0 / (d as f32).sqrt()))?;
        add_vector(&mut w, "exit_gate.bias".into(), g.uniform(1, 0.5))?;
    }
    add_vector(&mut w, "output_norm.weight".into(), g.uniform(d, 0.5).iter().map(|x| 1.0 + x).collect())?;
    if let Some(ty) = opts.head_type {
        let head = g.uniform(v * d, (3.0 / d as f32).sqrt());
        w.add_tensor("output.weight", &[d as u64, v as u64], ty, dense_bytes(ty, &head)?)?;
    }
    w.write_to_path(path)?;
    Ok(())
}

/// Writes a random model as an HF-style directory (`config.json` + `model.safetensors` in the
/// checkpoint format, training names, per-tensor ternary scales). Works for any dims (no
/// 256-column blocks).
pub fn write_random_hf_dir(dir: &Path, config: &ModelConfig, seed: u64) -> Result<()> {
    use ternary::checkpoint::{Checkpoint, SafetensorsDtype, Tensor};
    config.validate()?;
    let mut g = Gen(Rng::new(seed));
    let (d, kv, h, v, n) = (config.dim, config.kv_dim(), config.ffn_hidden, config.vocab_size, config.mhc_streams);
    let dense = |values: Vec<f32>, shape: Vec<usize>| Tensor::Dense {
        dtype: SafetensorsDtype::F32,
        shape,
        data: values.iter().flat_map(|x| x.to_le_bytes()).collect(),
    };
    let mut ck = Checkpoint::default();
    let ternary = |g: &mut Gen, rows: usize, cols: usize| {
        Tensor::Ternary(TernaryMatrix {
            rows,
            cols,
            trits: g.trits(rows * cols),
            scales: vec![(1.5 / cols as f32).sqrt()],
            granularity: Granularity::PerTensor,
        })
    };
    let t = &mut ck.tensors;
    t.insert("embed".into(), dense(g.uniform(v * d, 1.0), vec![v, d]));
    if !config.tie_embeddings {
        t.insert("head".into(), dense(g.uniform(v * d, (3.0 / d as f32).sqrt()), vec![v, d]));
    }
    t.insert("final_norm.gain".into(), dense(vec![1.0; d], vec![d]));
    for i in 0..config.n_layers {
        let b = |s: &str| format!("blocks.{i}.{s}");
        t.insert(b("attn_norm.gain"), dense(vec![1.0; d], vec![d]));
        t.insert(b("mlp_norm.gain"), dense(vec![1.0; d], vec![d]));
        for (name, rows, cols) in [("attn.wq", d, d), ("attn.wk", kv, d), ("attn.wv", kv, d), ("attn.wo", d, d), ("mlp.up", h, d), ("mlp.down", d, h)] {
            t.insert(b(name), ternary(&mut g, rows, cols));
        }
        if config.ffn_activation == FfnActivation::Swiglu {
            t.insert(b("mlp.gate"), ternary(&mut g, h, d));
        }
        if n > 1 {
            let k = mhc::permutation_count(n)?;
            for sub in ["mhc_attn", "mhc_mlp"] {
                for (map, outputs) in [("res", k), ("pre", n), ("post", n)] {
                    let p = |s: &str| b(&format!("{sub}.{map}.{s}"));
                    t.insert(p("weight"), dense(g.uniform(n * d * outputs, 0.3), vec![n * d, outputs]));
                    t.insert(p("alpha"), dense(vec![0.5], vec![1]));
                    t.insert(p("bias"), dense(g.uniform(outputs, 1.0), vec![outputs]));
                }
            }
        }
    }
    if config.exit_gate() {
        // Weights of the size a trained gate has (λ spread over (0, 1) across tokens).
        t.insert("exit_gate.weight".into(), dense(g.uniform(d, 2.0 / (d as f32).sqrt()), vec![1, d]));
        t.insert("exit_gate.bias".into(), dense(g.uniform(1, 0.5), vec![1]));
    }
    std::fs::create_dir_all(dir).map_err(|source| EngineError::Io { path: dir.into(), source })?;
    ternary::checkpoint::save(dir.join("model.safetensors"), &ck)?;
    let json = serde_json::to_string_pretty(config).map_err(|e| EngineError::Config(e.to_string()))?;
    ternary::checkpoint::write_atomic(&dir.join("config.json"), json.as_bytes())?;
    Ok(())
}
