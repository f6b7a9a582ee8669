//! The GGUF loader's tokenizer (`load.rs` `gguf_tokenizer`) for vocabularies other than our
//! own export: SentencePiece (`llama`, with `scores` and `add_space_prefix`), byte-level BPE with
//! llama.cpp's other splits (`pre` passed through; absent = llama.cpp's "default"), and metadata
//! of the wrong type or shape as clear errors. Expected ids are worked out by hand (the same
//! vocabularies are checked against llama.cpp in tests/test_gguf_tokenizers.py).
use std::path::{Path, PathBuf};

use engine::synthetic::{write_random_gguf, SyntheticOptions};
use engine::{FfnActivation, ModelConfig};
use gguf::{Array, GgmlType, GgufFile, GgufWriter, Value};

fn config(vocab_size: usize) -> ModelConfig {
    ModelConfig {
        name: "tok".into(),
        vocab_size,
        dim: 256,
        n_layers: 1,
        n_heads: 4,
        n_kv_heads: 4,
        ffn_hidden: 256,
        ffn_activation: FfnActivation::Swiglu,
        max_seq_len: 16,
        rope_theta: 10_000.0,
        norm_eps: 1e-5,
        tie_embeddings: false,
        mhc_streams: 1,
        ternary: true,
        looping: None,
    }
}

/// A random llama-shaped model without a tokenizer, plus the given `tokenizer.ggml.*` keys.
fn model_with(dir: &Path, name: &str, vocab_size: usize, keys: Vec<(&str, Value)>) -> PathBuf {
    let bare = dir.join(format!("{name}.bare.gguf"));
    let opts = SyntheticOptions {
        tokenizer: false,
        nct_config: false,
        matrix_type: GgmlType::F32,
        head_type: None,
        ..SyntheticOptions::default()
    };
    write_random_gguf(&bare, &config(vocab_size), &opts).unwrap();
    let f = GgufFile::open(&bare).unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in f.metadata() {
        if k != "general.alignment" {
            w.add(k.clone(), v.clone()).unwrap();
        }
    }
    for (k, v) in keys {
        w.add(k, v).unwrap();
    }
    for t in f.tensors() {
        w.add_tensor(t.name.clone(), &t.dims, t.ggml_type, f.tensor_bytes(&t.name).unwrap().to_vec()).unwrap();
    }
    let path = dir.join(format!("{name}.gguf"));
    w.write_to_path(&path).unwrap();
    path
}

fn tokenizer(path: &Path) -> tokens::Tokenizer {
    let model = engine::load(path).unwrap();
    tokens::Tokenizer::from_json(model.tokenizer_json.as_deref().expect("a tokenizer")).unwrap()
}

fn load_err(path: &Path) -> String {
    engine::load(path).err().map(|e| e.to_string()).unwrap_or_default()
}

fn strings(v: &[String]) -> Value {
    Value::Array(Array::String(v.to_vec()))
}

// <unk> <s> </s>, <0x00>..<0xFF> at 3..=258, then ▁ a b ab ▁a ▁ab ba aa at 259..=266.
const SP: u32 = 259;
const A: u32 = 260;
const B: u32 = 261;
const AB: u32 = 262;
const SP_A: u32 = 263;
const SP_AB: u32 = 264;
const BA: u32 = 265;
const AA: u32 = 266;

fn spm_keys() -> (Vec<String>, Vec<i32>, Vec<f32>) {
    let mut tokens: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
    tokens.extend((0..=255u32).map(|b| format!("<0x{b:02X}>")));
    tokens.extend(["▁", "a", "b", "ab", "▁a", "▁ab", "ba", "aa"].map(String::from));
    let mut types = vec![2, 3, 3];
    types.extend([6; 256]);
    types.extend([1; 8]);
    let mut scores = vec![0.0f32; 259];
    scores.extend([-12.0, -11.0, -10.5, -1.0, -2.0, -3.0, -0.5, -1.5]);
    (tokens, types, scores)
}

fn spm_model(dir: &Path, name: &str, scores: Value, extra: Vec<(&'static str, Value)>) -> PathBuf {
    let (tokens, types, _) = spm_keys();
    let mut keys = vec![
        ("tokenizer.ggml.model", Value::from("llama")),
        ("tokenizer.ggml.tokens", strings(&tokens)),
        ("tokenizer.ggml.token_type", Value::Array(Array::I32(types))),
        ("tokenizer.ggml.scores", scores),
    ];
    keys.extend(extra);
    model_with(dir, name, tokens.len(), keys)
}

#[test]
fn sentencepiece_vocabulary_tokenizes_by_score() {
    let dir = tempfile::tempdir().unwrap();
    let (_, _, scores) = spm_keys();
    let tok = tokenizer(&spm_model(dir.path(), "spm", Value::Array(Array::F32(scores.clone())), vec![]));
    // "▁ab▁abab": "ba" (-0.5) first, then the first "ab" (-1), "▁a" (-2) on the second word,
    // then "▁ab" (-3).
    assert_eq!(tok.encode("ab abab").unwrap(), [SP_AB, SP_A, BA, B]);
    // "▁aaa": the two "aa" tie and the leftmost wins.
    assert_eq!(tok.encode("aaa").unwrap(), [SP, AA, A]);
    // "é" is no piece: its two UTF-8 bytes as <0xC3> <0xA9>.
    assert_eq!(tok.encode("ab é").unwrap(), [SP_AB, SP, 3 + 0xC3, 3 + 0xA9]);
    assert_eq!(tok.decode(&[SP_AB, SP, 3 + 0xC3, 3 + 0xA9]).unwrap(), "ab é");
    assert!(!tok.is_byte_level());

    let off = vec![("tokenizer.ggml.add_space_prefix", Value::Bool(false))];
    let tok = tokenizer(&spm_model(dir.path(), "spm0", Value::Array(Array::F32(scores)), off));
    assert_eq!(tok.encode("ab abab").unwrap(), [AB, SP_A, BA, B]);
    assert_eq!(tok.decode(&[AB, SP_A, BA, B]).unwrap(), "ab abab");
}

/// 256 byte chars (id = byte), then whole pre-token pieces, "qz", and two control tokens.
fn piece_model(dir: &Path, name: &str, pre: Option<&str>) -> PathBuf {
    let mut tokens: Vec<String> = (0..=255u8).map(|b| tokens::byte_to_char(b).to_string()).collect();
    for piece in ["fn", " main", "()", " {\n", "   ", " let", " x", " =", "123", "45", ";\n"] {
        tokens.push(tokens::bytes_to_token(piece.as_bytes()));
    }
    tokens.extend(["qz", "<|begin_of_text|>", "<|end_of_text|>"].map(String::from));
    let mut types = vec![1i32; tokens.len()];
    let n = types.len();
    types[n - 2..].fill(3);
    let mut keys = vec![
        ("tokenizer.ggml.model", Value::from("gpt2")),
        ("tokenizer.ggml.tokens", strings(&tokens)),
        ("tokenizer.ggml.token_type", Value::Array(Array::I32(types))),
        ("tokenizer.ggml.merges", strings(&["q z".to_string()])),
    ];
    if let Some(pre) = pre {
        keys.push(("tokenizer.ggml.pre", Value::from(pre)));
    }
    model_with(dir, name, tokens.len(), keys)
}

#[test]
fn byte_level_pre_is_passed_through() {
    let dir = tempfile::tempdir().unwrap();
    let code = "fn main() {\n    let x = 12345;\n}";
    // LLaMA 3 split (by hand): fn| main|()| {\n|   | let| x| =| |123|45|;\n|} and, with
    // ignore_merges, each piece that is a token is that one id.
    let tok = tokenizer(&piece_model(dir.path(), "l3", Some("llama-bpe")));
    assert_eq!(tok.encode(code).unwrap(), [256, 257, 258, 259, 260, 261, 262, 263, 32, 264, 265, 266, 125]);
    assert!(tok.is_byte_level());
    assert_eq!(tok.decode(&tok.encode(code).unwrap()).unwrap(), code);
    // Without ignore_merges (gpt-2, and the default split when `pre` is absent) the same
    // merge-less vocabulary gives one id per byte.
    for (name, pre) in [("g2", Some("gpt-2")), ("absent", None)] {
        let tok = tokenizer(&piece_model(dir.path(), name, pre));
        assert_eq!(tok.encode(code).unwrap(), code.bytes().map(u32::from).collect::<Vec<_>>(), "{name}");
    }
    let e = load_err(&piece_model(dir.path(), "unknown", Some("tekken-9")));
    assert!(e.contains("\"tekken-9\"") && e.contains("llama-bpe"), "{e}");
}

/// (file name, `tokenizer.ggml.scores`, more keys, what the error must say)
type BadCase = (&'static str, Value, Vec<(&'static str, Value)>, &'static str);

#[test]
fn bad_tokenizer_metadata_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let (tokens, _, scores) = spm_keys();
    let cases: Vec<BadCase> = vec![
        ("int_scores", Value::Array(Array::I32(vec![0; tokens.len()])), vec![], "scores must be a float32 array"),
        ("short_scores", Value::Array(Array::F32(scores[1..].to_vec())), vec![], "scores"),
        ("nan_scores", Value::Array(Array::F32({
            let mut s = scores.clone();
            s[262] = f32::NAN;
            s
        })), vec![], "NaN"),
        (
            "str_prefix",
            Value::Array(Array::F32(scores.clone())),
            vec![("tokenizer.ggml.add_space_prefix", Value::from("yes"))],
            "add_space_prefix must be a bool",
        ),
        (
            "int_pre",
            Value::Array(Array::F32(scores.clone())),
            vec![("tokenizer.ggml.pre", Value::U32(3))],
            "pre must be a string",
        ),
        (
            "spm_with_pre",
            Value::Array(Array::F32(scores.clone())),
            vec![("tokenizer.ggml.pre", Value::from("llama-bpe"))],
            "llama-bpe",
        ),
    ];
    for (name, score_value, extra, want) in cases {
        let e = load_err(&spm_model(dir.path(), name, score_value, extra));
        assert!(e.contains(want), "{name}: {e}");
    }
    // No scores at all: refused rather than guessed.
    let (tokens, types, _) = spm_keys();
    let path = model_with(
        dir.path(),
        "no_scores",
        tokens.len(),
        vec![
            ("tokenizer.ggml.model", Value::from("llama")),
            ("tokenizer.ggml.tokens", strings(&tokens)),
            ("tokenizer.ggml.token_type", Value::Array(Array::I32(types))),
        ],
    );
    assert!(load_err(&path).contains("scores"), "{}", load_err(&path));
}
