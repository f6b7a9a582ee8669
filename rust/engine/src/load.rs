//! Loading: GGUF files (llama / nanochat-ternary / nanochat-ternary-loop, mmap) and HF-style directories (config.json +
//! model.safetensors in the project's checkpoint format). Every shape, type and count is checked
//! against the config; a bad file is an [`EngineError`], never a panic.

use std::path::Path;
use std::sync::Arc;

use gguf::{GgmlType, GgufFile, Value};
use ternary::checkpoint::{self, SafetensorsDtype, Tensor};
use ternary::planar::PlanarMatrix;
use ternary::{Granularity, TernaryMatrix};

use crate::config::{FfnActivation, ModelConfig};
use crate::error::{tensor_err, EngineError, Result};
use crate::linear::Linear;
use crate::model::{Embedding, ExitThreshold, Layer, Model, Rope};
use crate::vocab::Vocab;

const ARCHITECTURES: [&str; 3] = ["llama", "nanochat-ternary", "nanochat-ternary-loop"];

/// A `.gguf` file or an HF-style directory.
pub fn load(path: impl AsRef<Path>) -> Result<Model> {
    let path = path.as_ref();
    let meta = std::fs::metadata(path).map_err(|source| EngineError::Io { path: path.into(), source })?;
    if meta.is_dir() {
        load_hf_dir(path)
    } else {
        load_gguf(path)
    }
}

// ---------------------------------------------------------------- GGUF

fn meta_usize(f: &GgufFile, key: &str) -> Result<Option<usize>> {
    match f.get(key) {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .map(|x| Some(x as usize))
            .ok_or_else(|| EngineError::Config(format!("metadata '{key}' must be a non-negative integer, got {v:?}"))),
    }
}

fn meta_f64(f: &GgufFile, key: &str) -> Result<Option<f64>> {
    match f.get(key) {
        None => Ok(None),
        Some(v) => v.as_f64().map(Some).ok_or_else(|| EngineError::Config(format!("metadata '{key}' must be a number"))),
    }
}

/// The config: `nct.config` when present (cross-checked against the llama keys), else the
/// llama-convention keys under the architecture prefix.
fn gguf_config(f: &GgufFile, arch: &str) -> Result<ModelConfig> {
    let key = |k: &str| format!("{arch}.{k}");
    let required = |k: &str| -> Result<usize> {
        meta_usize(f, &key(k))?.ok_or_else(|| EngineError::Config(format!("missing metadata '{}'", key(k))))
    };
    let embd_rows = f.tensor_info("token_embd.weight").ok().and_then(|t| t.dims.get(1).map(|&d| d as usize));
    let config = if let Some(json) = f.get_str("nct.config") {
        crate::config::parse(json)?
    } else if arch == "nanochat-ternary-loop" {
        return Err(EngineError::Config("a nanochat-ternary-loop file needs its nct.config (the loop settings)".into()));
    } else {
        let vocab_size = match meta_usize(f, &key("vocab_size"))? {
            Some(v) => v,
            None => embd_rows.ok_or_else(|| EngineError::Config("no vocab_size and no token_embd.weight".into()))?,
        };
        let n_heads = required("attention.head_count")?;
        let ffn_activation = match f.get_str(&key("ffn_activation")) {
            None | Some("swiglu") => FfnActivation::Swiglu,
            Some("relu2") => FfnActivation::Relu2,
            Some(other) => return Err(EngineError::Config(format!("unknown ffn_activation '{other}'"))),
        };
        let c = ModelConfig {
            name: f.get_str("general.name").unwrap_or("").to_string(),
            vocab_size,
            dim: required("embedding_length")?,
            n_layers: required("block_count")?,
            n_heads,
            n_kv_heads: meta_usize(f, &key("attention.head_count_kv"))?.unwrap_or(n_heads),
            ffn_hidden: required("feed_forward_length")?,
            ffn_activation,
            max_seq_len: required("context_length")?,
            rope_theta: meta_f64(f, &key("rope.freq_base"))?.unwrap_or(10_000.0),
            norm_eps: meta_f64(f, &key("attention.layer_norm_rms_epsilon"))?.unwrap_or(1e-5),
            tie_embeddings: f.tensor_info("output.weight").is_err(),
            mhc_streams: meta_usize(f, &key("mhc.streams"))?.unwrap_or(1),
            ternary: true,
            looping: None,
        };
        c.validate()?;
        c
    };
    // The llama keys are what other tools read: they must agree with nct.config.
    for (k, expected) in [
        ("embedding_length", config.dim),
        ("block_count", config.n_layers),
        ("attention.head_count", config.n_heads),
        ("attention.head_count_kv", config.n_kv_heads),
        ("feed_forward_length", config.ffn_hidden),
        ("context_length", config.max_seq_len),
        ("vocab_size", config.vocab_size),
        ("mhc.streams", config.mhc_streams),
        ("loop.count", config.loops()),
    ] {
        if let Some(v) = meta_usize(f, &key(k))? {
            if v != expected {
                return Err(EngineError::Config(format!("metadata '{}' = {v} disagrees with the config ({expected})", key(k))));
            }
        }
    }
    if let Some(rows) = embd_rows {
        if rows != config.vocab_size {
            return Err(tensor_err("token_embd.weight", format!("{rows} rows, vocab_size is {}", config.vocab_size)));
        }
    }
    if arch == "llama" && (config.mhc_streams != 1 || config.ffn_activation != FfnActivation::Swiglu) {
        return Err(EngineError::Config("architecture 'llama' needs mhc_streams = 1 and SwiGLU".into()));
    }
    // A loop model under another architecture name would run once in any loader that does not
    // know loops: silently wrong output. Both directions are refused.
    if (arch == "nanochat-ternary-loop") != (config.loops() > 1) {
        return Err(EngineError::Config(format!(
            "architecture '{arch}' does not match loop.loops = {} (LoopLM files are 'nanochat-ternary-loop')",
            config.loops()
        )));
    }
    Ok(config)
}

/// `(rows, cols)` of a 2-D GGUF tensor (ggml dims are `[cols, rows]`).
fn matrix_shape(f: &GgufFile, name: &str, rows: usize, cols: usize) -> Result<GgmlType> {
    let info = f.tensor_info(name)?;
    if info.dims != [cols as u64, rows as u64] {
        return Err(tensor_err(name, format!("shape {:?} (numpy order), expected [{rows}, {cols}]", info.shape())));
    }
    Ok(info.ggml_type)
}

/// A block matrix: like [`gguf_matrix`], but in one of our ternary models (`bitlinear`) a dense
/// storage type still gets int8 per-token activations ([`Linear::BitLinear`]).
fn gguf_block_matrix(f: &GgufFile, name: &str, rows: usize, cols: usize, bitlinear: bool) -> Result<Linear> {
    let m = gguf_matrix(f, name, rows, cols)?;
    Ok(match m {
        Linear::Q8 { .. } | Linear::F32 { .. } if bitlinear => Linear::BitLinear(Box::new(m)),
        other => other,
    })
}

fn gguf_matrix(f: &GgufFile, name: &str, rows: usize, cols: usize) -> Result<Linear> {
    let ty = matrix_shape(f, name, rows, cols)?;
    let bytes = f.tensor_bytes(name)?;
    let planar_err = |e: ternary::planar::PlanarError| tensor_err(name, e.to_string());
    let matrix = match ty {
        GgmlType::TQ2_0 => Linear::Ternary(PlanarMatrix::from_tq2_0(bytes, rows, cols).map_err(planar_err)?),
        GgmlType::TQ1_0 => {
            let m = ternary::tq1::to_ternary(bytes, rows, cols).map_err(|e| tensor_err(name, e.to_string()))?;
            ternary_to_planar(name, &m)?
        }
        GgmlType::Q8_0 => Linear::q8_from_gguf(name, bytes, rows, cols)?,
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => {
            let w = f.tensor_f32(name)?;
            check_finite(name, &w)?;
            Linear::F32 { rows, cols, w }
        }
        other => return Err(tensor_err(name, format!("unsupported type {other} (TQ2_0, TQ1_0, Q8_0, F16, BF16, F32)"))),
    };
    // Every type above was converted into memory of our own: the file's pages of this tensor
    // would otherwise stay in the resident set too (nano-125m: 220 MB instead of ~150).
    f.release_tensor_pages(name)?;
    Ok(matrix)
}

fn check_finite(name: &str, v: &[f32]) -> Result<()> {
    match v.iter().position(|x| !x.is_finite()) {
        Some(i) => Err(tensor_err(name, format!("value {i} is not finite"))),
        None => Ok(()),
    }
}

fn gguf_vector(f: &GgufFile, name: &str, len: usize) -> Result<Vec<f32>> {
    let info = f.tensor_info(name)?;
    if info.n_elements != len as u64 {
        return Err(tensor_err(name, format!("{} elements, expected {len}", info.n_elements)));
    }
    let v = f.tensor_f32(name)?;
    check_finite(name, &v)?;
    Ok(v)
}

fn map_params(f: &GgufFile, prefix: &str, inputs: usize, outputs: usize) -> Result<mhc::MapParams> {
    let to64 = |v: Vec<f32>| v.into_iter().map(f64::from).collect::<Vec<f64>>();
    Ok(mhc::MapParams {
        weight: to64(gguf_vector(f, &format!("{prefix}.weight"), inputs * outputs)?),
        alpha: gguf_vector(f, &format!("{prefix}.alpha"), 1)?[0] as f64,
        bias: to64(gguf_vector(f, &format!("{prefix}.bias"), outputs)?),
    })
}

fn gguf_mhc(f: &GgufFile, prefix: &str, n: usize, dim: usize) -> Result<mhc::MhcParams> {
    let k = mhc::permutation_count(n)?;
    let res = map_params(f, &format!("{prefix}.res"), n * dim, k)?;
    let pre = map_params(f, &format!("{prefix}.pre"), n * dim, n)?;
    let post = map_params(f, &format!("{prefix}.post"), n * dim, n)?;
    Ok(mhc::MhcParams::new(n, dim, res, pre, post)?)
}

fn string_array(f: &GgufFile, key: &str) -> Result<Option<Vec<String>>> {
    match f.get(key) {
        None => Ok(None),
        Some(Value::Array(gguf::Array::String(v))) => Ok(Some(v.clone())),
        Some(_) => Err(EngineError::Tokenizer(format!("'{key}' must be an array of strings"))),
    }
}

/// `tokenizer.ggml.*` through the `tokens` crate, tokenizing as llama.cpp does: byte-level BPE
/// (`gpt2`, with the split `tokenizer.ggml.pre` names; absent means llama.cpp's "default") or
/// SentencePiece (`llama`, with `scores` and `add_space_prefix`). The token count must equal the
/// model's vocabulary, as llama.cpp requires.
fn gguf_tokenizer(f: &GgufFile, vocab_size: usize) -> Result<(Option<Vocab>, Option<String>)> {
    let Some(model) = f.get("tokenizer.ggml.model") else { return Ok((None, None)) };
    let model = model.as_str().ok_or_else(|| EngineError::Tokenizer("tokenizer.ggml.model must be a string".into()))?;
    let tokens = string_array(f, "tokenizer.ggml.tokens")?
        .ok_or_else(|| EngineError::Tokenizer("tokenizer.ggml.tokens is missing".into()))?;
    if tokens.len() != vocab_size {
        return Err(EngineError::Tokenizer(format!(
            "tokenizer has {} tokens but the model's vocab_size is {vocab_size}",
            tokens.len()
        )));
    }
    let token_types: Vec<i32> = match f.get("tokenizer.ggml.token_type") {
        Some(Value::Array(gguf::Array::I32(v))) => v.clone(),
        Some(Value::Array(gguf::Array::U32(v))) => v.iter().map(|&x| x.min(i32::MAX as u32) as i32).collect(),
        None => vec![1; tokens.len()],
        Some(_) => return Err(EngineError::Tokenizer("tokenizer.ggml.token_type must be an int32 array".into())),
    };
    let scores = match f.get("tokenizer.ggml.scores") {
        None => None,
        Some(Value::Array(gguf::Array::F32(v))) => Some(v.clone()),
        Some(_) => return Err(EngineError::Tokenizer("tokenizer.ggml.scores must be a float32 array".into())),
    };
    let add_space_prefix = match f.get("tokenizer.ggml.add_space_prefix") {
        None => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(_) => return Err(EngineError::Tokenizer("tokenizer.ggml.add_space_prefix must be a bool".into())),
    };
    let pre = match f.get("tokenizer.ggml.pre") {
        // Absent: llama.cpp's "default" split, which the tokens crate reads "" as.
        None => String::new(),
        Some(v) => v.as_str().ok_or_else(|| EngineError::Tokenizer("tokenizer.ggml.pre must be a string".into()))?.to_string(),
    };
    let vocab = tokens::GgufVocab {
        model: model.to_string(),
        pre,
        tokens,
        merges: string_array(f, "tokenizer.ggml.merges")?.unwrap_or_default(),
        token_types,
        scores,
        add_space_prefix,
        bos_id: None,
        eos_id: None,
        pad_id: None,
    };
    let tok = tokens::Tokenizer::from_gguf_vocab(&vocab).map_err(|e| EngineError::Tokenizer(e.to_string()))?;
    let json = tok.to_json().map_err(|e| EngineError::Tokenizer(e.to_string()))?;
    Ok((Some(Vocab::from_tokenizer(&tok)?), Some(json)))
}

fn token_id(f: &GgufFile, key: &str) -> Result<Option<u32>> {
    Ok(meta_usize(f, key)?.map(|v| v.min(u32::MAX as usize) as u32))
}

fn meta_bool(f: &GgufFile, key: &str) -> Result<Option<bool>> {
    match f.get(key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(v) => Err(EngineError::Tokenizer(format!("metadata '{key}' must be a bool, got {v:?}"))),
    }
}

/// `tokenizer.ggml.pre` values for which llama.cpp adds a BOS token when the file does not say.
const PRE_ADDING_BOS: [&str; 11] = [
    "llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2", "jina-v5-nano", "tekken",
    "chameleon",
];

/// BOS/EOS ids and whether to add them, as llama.cpp reads them: the file's
/// `tokenizer.ggml.{bos,eos}_token_id` and `add_{bos,eos}_token`; when a key is absent, llama.cpp's
/// default for the tokenizer model (SentencePiece `llama`: BOS 1, EOS 2, add BOS; byte-level BPE:
/// add BOS only for the LLaMA-3 family of pre-tokenizers).
fn gguf_special_tokens(f: &GgufFile) -> Result<(Option<u32>, Option<u32>, bool, bool)> {
    let model = f.get_str("tokenizer.ggml.model");
    let spm = model == Some("llama");
    let mut bos = token_id(f, "tokenizer.ggml.bos_token_id")?;
    let mut eos = token_id(f, "tokenizer.ggml.eos_token_id")?;
    if spm {
        bos = bos.or(Some(1));
        eos = eos.or(Some(2));
    }
    let default_bos = spm || f.get_str("tokenizer.ggml.pre").is_some_and(|p| PRE_ADDING_BOS.contains(&p));
    let add_bos = meta_bool(f, "tokenizer.ggml.add_bos_token")?.unwrap_or(default_bos && bos.is_some());
    let add_eos = meta_bool(f, "tokenizer.ggml.add_eos_token")?.unwrap_or(false);
    Ok((bos, eos, add_bos, add_eos))
}

pub fn load_gguf(path: &Path) -> Result<Model> {
    let file = Arc::new(GgufFile::open(path)?);
    let f = &*file;
    let arch = f.get_str("general.architecture").ok_or_else(|| EngineError::Config("missing general.architecture".into()))?;
    if !ARCHITECTURES.contains(&arch) {
        return Err(EngineError::UnknownArchitecture(arch.to_string()));
    }
    let arch = arch.to_string();
    let config = gguf_config(f, &arch)?;
    // Our exports (nct.config, or the nanochat-ternary arch) were trained with BitLinear: int8
    // activations for every block matrix, whatever its storage type. Other llama files are
    // ordinary float models.
    let bitlinear = f.get("nct.config").is_some() || arch == "nanochat-ternary";
    let (d, kv, h, n) = (config.dim, config.kv_dim(), config.ffn_hidden, config.mhc_streams);
    let mut layers = Vec::with_capacity(config.n_layers);
    for i in 0..config.n_layers {
        let b = |s: &str| format!("blk.{i}.{s}");
        let gate = match config.ffn_activation {
            FfnActivation::Swiglu => Some(gguf_block_matrix(f, &b("ffn_gate.weight"), h, d, bitlinear)?),
            FfnActivation::Relu2 => None,
        };
        let mhc = if n > 1 { Some((gguf_mhc(f, &b("mhc_attn"), n, d)?, gguf_mhc(f, &b("mhc_mlp"), n, d)?)) } else { None };
        layers.push(Layer {
            attn_norm: gguf_vector(f, &b("attn_norm.weight"), d)?,
            wq: gguf_block_matrix(f, &b("attn_q.weight"), d, d, bitlinear)?,
            wk: gguf_block_matrix(f, &b("attn_k.weight"), kv, d, bitlinear)?,
            wv: gguf_block_matrix(f, &b("attn_v.weight"), kv, d, bitlinear)?,
            wo: gguf_block_matrix(f, &b("attn_output.weight"), d, d, bitlinear)?,
            ffn_norm: gguf_vector(f, &b("ffn_norm.weight"), d)?,
            gate,
            up: gguf_block_matrix(f, &b("ffn_up.weight"), h, d, bitlinear)?,
            down: gguf_block_matrix(f, &b("ffn_down.weight"), d, h, bitlinear)?,
            mhc,
        });
    }
    let embd_type = matrix_shape(f, "token_embd.weight", config.vocab_size, d)?;
    if !matches!(embd_type, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 | GgmlType::Q8_0) {
        return Err(tensor_err("token_embd.weight", format!("unsupported type {embd_type} (F32, F16, BF16, Q8_0)")));
    }
    let row_bytes = embd_type.bytes_for(d as u64).ok_or_else(|| tensor_err("token_embd.weight", "bad row size"))? as usize;
    // An absent output.weight means the head is tied to the embedding (llama.cpp's rule).
    let head_name = if f.tensor_info("output.weight").is_ok() { "output.weight" } else { "token_embd.weight" };
    let head = gguf_matrix(f, head_name, config.vocab_size, d)?;
    let (vocab, tokenizer_json) = gguf_tokenizer(f, config.vocab_size)?;
    let (bos_id, eos_id, add_bos, add_eos) = gguf_special_tokens(f)?;
    let exit_gate = if config.exit_gate() {
        let bias = gguf_vector(f, "exit_gate.bias", 1)?;
        Some((gguf_vector(f, "exit_gate.weight", d)?, bias[0]))
    } else {
        None
    };
    let model = Model {
        exit_gate,
        exit_threshold: ExitThreshold::new(config.exit_threshold()),
        exit_kv_compute: Default::default(),
        depth: Default::default(),
        rope: Rope::new(&config),
        output_norm: gguf_vector(f, "output_norm.weight", d)?,
        embedding: Embedding::Mapped { file: file.clone(), name: "token_embd.weight".into(), ggml_type: embd_type, row_bytes },
        layers,
        head,
        vocab,
        tokenizer_json,
        bos_id,
        eos_id,
        add_bos,
        add_eos,
        architecture: arch,
        config,
        residency: kernels::Residency::Cached,
        kv_precision: Default::default(),
    };
    model.validate()?;
    Ok(Model { residency: model.default_residency(), ..model })
}

// ---------------------------------------------------------------- HF directory

fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| EngineError::Io { path: path.into(), source })
}

/// Packs a ternary matrix for the kernels: per-tensor scales become one scale per row; groups
/// must be a multiple of 16 columns (or cover the row).
fn ternary_to_planar(name: &str, m: &TernaryMatrix) -> Result<Linear> {
    m.validate().map_err(|e| tensor_err(name, e.to_string()))?;
    let err = |e: ternary::planar::PlanarError| tensor_err(name, e.to_string());
    let p = match m.granularity {
        Granularity::PerTensor => PlanarMatrix::from_trits_per_tensor(&m.trits, m.rows, m.cols, m.scales[0]).map_err(err)?,
        Granularity::PerGroup(g) => {
            let mut p = PlanarMatrix::from_trits(&m.trits, m.rows, m.cols, &m.scales, g).map_err(err)?;
            p.merge_equal_groups();
            p
        }
    };
    Ok(Linear::Ternary(p))
}

/// Training's rotate-half RoPE pairs (j, j + hd/2); the engine's adjacent pairs (2j, 2j+1):
/// new row 2j ← old row j, new row 2j+1 ← old row j + hd/2, per head (convert_hf_to_gguf's rule).
fn permute_rope_rows(m: &TernaryMatrix, head_dim: usize) -> TernaryMatrix {
    let groups = match m.granularity {
        Granularity::PerTensor => 0,
        Granularity::PerGroup(g) => m.cols.div_ceil(g),
    };
    let half = head_dim / 2;
    let mut out = m.clone();
    for new in 0..m.rows {
        let (head, r) = (new / head_dim, new % head_dim);
        let old = head * head_dim + if r % 2 == 0 { r / 2 } else { r / 2 + half };
        out.trits[new * m.cols..][..m.cols].copy_from_slice(&m.trits[old * m.cols..][..m.cols]);
        if groups > 0 {
            out.scales[new * groups..][..groups].copy_from_slice(&m.scales[old * groups..][..groups]);
        }
    }
    out
}

struct Checkpoint(checkpoint::Checkpoint);

impl Checkpoint {
    fn get(&self, name: &str) -> Result<&Tensor> {
        self.0.tensors.get(name).ok_or_else(|| tensor_err(name, "missing from model.safetensors"))
    }

    fn ternary(&self, name: &str, rows: usize, cols: usize, rope_head_dim: Option<usize>) -> Result<Linear> {
        let Tensor::Ternary(m) = self.get(name)? else {
            return Err(tensor_err(name, "expected a ternary tensor (codes + scales)"));
        };
        if (m.rows, m.cols) != (rows, cols) {
            return Err(tensor_err(name, format!("shape {}x{}, expected {rows}x{cols}", m.rows, m.cols)));
        }
        match rope_head_dim {
            Some(hd) => {
                m.validate().map_err(|e| tensor_err(name, e.to_string()))?;
                ternary_to_planar(name, &permute_rope_rows(m, hd))
            }
            None => ternary_to_planar(name, m),
        }
    }

    /// A dense tensor as f32 with `len` elements (shape checked by count and, for 2-D, by the caller).
    fn dense(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let Tensor::Dense { dtype, shape: got, data } = self.get(name)? else {
            return Err(tensor_err(name, "expected a dense tensor"));
        };
        let len: usize = shape.iter().product();
        if got.iter().product::<usize>() != len || (shape.len() > 1 && got.as_slice() != shape) {
            return Err(tensor_err(name, format!("shape {got:?}, expected {shape:?}")));
        }
        let v = match dtype {
            SafetensorsDtype::F32 => gguf::dequant::f32_from_le(data),
            SafetensorsDtype::F16 => gguf::dequant::f16_to_f32(data),
            SafetensorsDtype::BF16 => gguf::dequant::bf16_to_f32(data),
            other => return Err(tensor_err(name, format!("unsupported dtype {other:?}"))),
        };
        if v.len() != len {
            return Err(tensor_err(name, format!("{} values, expected {len}", v.len())));
        }
        check_finite(name, &v)?;
        Ok(v)
    }

    fn map(&self, prefix: &str, inputs: usize, outputs: usize) -> Result<mhc::MapParams> {
        let to64 = |v: Vec<f32>| v.into_iter().map(f64::from).collect::<Vec<f64>>();
        Ok(mhc::MapParams {
            weight: to64(self.dense(&format!("{prefix}.weight"), &[inputs * outputs])?),
            alpha: self.dense(&format!("{prefix}.alpha"), &[1])?[0] as f64,
            bias: to64(self.dense(&format!("{prefix}.bias"), &[outputs])?),
        })
    }

    fn mhc(&self, prefix: &str, n: usize, dim: usize) -> Result<mhc::MhcParams> {
        let k = mhc::permutation_count(n)?;
        Ok(mhc::MhcParams::new(
            n,
            dim,
            self.map(&format!("{prefix}.res"), n * dim, k)?,
            self.map(&format!("{prefix}.pre"), n * dim, n)?,
            self.map(&format!("{prefix}.post"), n * dim, n)?,
        )?)
    }
}

pub fn load_hf_dir(dir: &Path) -> Result<Model> {
    let config = crate::config::parse(&read_text(&dir.join("config.json"))?)?;
    let ckpt = Checkpoint(checkpoint::load(dir.join("model.safetensors"))?);
    let (d, kv, h, n, hd) = (config.dim, config.kv_dim(), config.ffn_hidden, config.mhc_streams, config.head_dim());
    let mut layers = Vec::with_capacity(config.n_layers);
    for i in 0..config.n_layers {
        let b = |s: &str| format!("blocks.{i}.{s}");
        let gate = match config.ffn_activation {
            FfnActivation::Swiglu => Some(ckpt.ternary(&b("mlp.gate"), h, d, None)?),
            FfnActivation::Relu2 => None,
        };
        let mhc = if n > 1 { Some((ckpt.mhc(&b("mhc_attn"), n, d)?, ckpt.mhc(&b("mhc_mlp"), n, d)?)) } else { None };
        layers.push(Layer {
            attn_norm: ckpt.dense(&b("attn_norm.gain"), &[d])?,
            wq: ckpt.ternary(&b("attn.wq"), d, d, Some(hd))?,
            wk: ckpt.ternary(&b("attn.wk"), kv, d, Some(hd))?,
            wv: ckpt.ternary(&b("attn.wv"), kv, d, None)?,
            wo: ckpt.ternary(&b("attn.wo"), d, d, None)?,
            ffn_norm: ckpt.dense(&b("mlp_norm.gain"), &[d])?,
            gate,
            up: ckpt.ternary(&b("mlp.up"), h, d, None)?,
            down: ckpt.ternary(&b("mlp.down"), d, h, None)?,
            mhc,
        });
    }
    let embed = ckpt.dense("embed", &[config.vocab_size, d])?;
    let head = if config.tie_embeddings {
        Linear::F32 { rows: config.vocab_size, cols: d, w: embed.clone() }
    } else {
        Linear::F32 { rows: config.vocab_size, cols: d, w: ckpt.dense("head", &[config.vocab_size, d])? }
    };
    let tok_path = dir.join("tokenizer.json");
    let (vocab, tokenizer_json) = if tok_path.exists() {
        let json = read_text(&tok_path)?;
        let tok = tokens::Tokenizer::from_json(&json).map_err(|e| EngineError::Tokenizer(format!("tokenizer.json: {e}")))?;
        (Some(Vocab::from_tokenizer(&tok)?), Some(json))
    } else {
        (None, None)
    };
    let (mut bos_id, mut eos_id) = (None, None);
    let gen_path = dir.join("generation_config.json");
    if gen_path.exists() {
        let v: serde_json::Value = serde_json::from_str(&read_text(&gen_path)?)
            .map_err(|e| EngineError::Config(format!("generation_config.json: {e}")))?;
        bos_id = v["bos_token_id"].as_u64().map(|x| x.min(u32::MAX as u64) as u32);
        eos_id = v["eos_token_id"].as_u64().map(|x| x.min(u32::MAX as u64) as u32);
    }
    // HF's tokenizer_config.json says whether encoding adds BOS/EOS. Without it (exports made
    // before it was written), a BOS id means what our training does: every document starts with it.
    let (mut add_bos, mut add_eos) = (bos_id.is_some(), false);
    let tc_path = dir.join("tokenizer_config.json");
    if tc_path.exists() {
        let v: serde_json::Value = serde_json::from_str(&read_text(&tc_path)?)
            .map_err(|e| EngineError::Config(format!("tokenizer_config.json: {e}")))?;
        for (key, slot) in [("add_bos_token", &mut add_bos), ("add_eos_token", &mut add_eos)] {
            match &v[key] {
                serde_json::Value::Null => {}
                serde_json::Value::Bool(b) => *slot = *b,
                other => return Err(EngineError::Config(format!("tokenizer_config.json: '{key}' must be a bool, got {other}"))),
            }
        }
    }
    let exit_gate = if config.exit_gate() {
        let bias = ckpt.dense("exit_gate.bias", &[1])?;
        Some((ckpt.dense("exit_gate.weight", &[1, d])?, bias[0]))
    } else {
        None
    };
    let model = Model {
        exit_gate,
        exit_threshold: ExitThreshold::new(config.exit_threshold()),
        exit_kv_compute: Default::default(),
        depth: Default::default(),
        architecture: config.architecture().to_string(),
        rope: Rope::new(&config),
        output_norm: ckpt.dense("final_norm.gain", &[d])?,
        embedding: Embedding::Owned(embed),
        layers,
        head,
        vocab,
        tokenizer_json,
        bos_id,
        eos_id,
        add_bos,
        add_eos,
        config,
        residency: kernels::Residency::Cached,
        kv_precision: Default::default(),
    };
    model.validate()?;
    Ok(Model { residency: model.default_residency(), ..model })
}
