//! Train / encode / decode / GGUF round trip / bad input for the `tokens` crate.
use tokens::{train_bpe, train_bpe_files, GgufVocab, TokenType, Tokenizer, TokensError, TrainOptions, SPECIAL_TOKENS};

const CODE: &str = r#"
use std::collections::HashMap;

/// Counts words.
pub fn count_words(text: &str) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for word in text.split_whitespace() {
        *counts.entry(word.to_string()).or_insert(0) += 1;
    }
    counts
}

fn main() {
    let counts = count_words("the quick brown fox jumps over the lazy dog");
    println!("{:?}", counts.get("the"));
}
"#;

fn corpus() -> Vec<String> {
    let mut docs = Vec::new();
    for i in 0..40 {
        docs.push(CODE.replace("count_words", &format!("count_words_{i}")));
        docs.push(format!("The quick brown fox number {i} jumps over the lazy dog. Ünïcödé façade — naïve café {i}!"));
    }
    docs
}

fn trained(vocab_size: usize) -> Tokenizer {
    let options = TrainOptions { vocab_size, ..TrainOptions::default() };
    train_bpe(corpus().into_iter(), &options).expect("training succeeds")
}

#[test]
fn special_tokens_have_fixed_ids() {
    let tok = trained(600);
    for (id, token) in SPECIAL_TOKENS.iter().enumerate() {
        assert_eq!(tok.token_to_id(token), Some(id as u32));
        assert_eq!(tok.id_to_token(id as u32).as_deref(), Some(*token));
        assert!(tok.is_special(id as u32));
    }
    assert_eq!(tok.bos_id(), Some(0));
    assert_eq!(tok.special_tokens().len(), SPECIAL_TOKENS.len());
    assert!(tok.vocab_size() <= 600 && tok.vocab_size() > 256 + SPECIAL_TOKENS.len());
    assert!(tok.is_byte_level());
}

#[test]
fn round_trips_ascii_unicode_code_and_empty() {
    let tok = trained(600);
    let texts = [
        "hello world",
        "Ünïcödé façade — naïve café 🦀 日本語 \u{0}\u{7f}",
        CODE,
        "",
        "   leading and trailing   \n\n\t",
        "text the corpus never saw: zxqj 42 ⊕ ∀x∃y",
    ];
    for text in texts {
        let ids = tok.encode(text).unwrap();
        assert_eq!(tok.decode(&ids).unwrap(), text, "round trip of {text:?}");
        // token_bytes concatenated is the UTF-8 of the text: the basis of bits per byte.
        let bytes: Vec<u8> = ids.iter().flat_map(|&id| tok.token_bytes(id).unwrap()).collect();
        assert_eq!(bytes, text.as_bytes());
    }
    assert!(tok.encode("").unwrap().is_empty());
    // Training merged something: code the corpus saw is shorter than its bytes.
    assert!(tok.encode(CODE).unwrap().len() * 3 < CODE.len());
}

#[test]
fn special_tokens_in_text_are_single_ids_and_never_added() {
    let tok = trained(600);
    let ids = tok.encode("fn a() {}<|endoftext|>fn b() {}").unwrap();
    assert_eq!(ids.iter().filter(|&&id| id == 0).count(), 1);
    assert_ne!(ids[0], 0, "no bos is added automatically");
    assert_eq!(tok.decode(&ids).unwrap(), "fn a() {}<|endoftext|>fn b() {}");
    assert_eq!(tok.token_bytes(0).unwrap(), b"<|endoftext|>");
    let fim = tok.encode("<|fim_prefix|>x<|fim_suffix|>y<|fim_middle|>").unwrap();
    assert_eq!(fim[0], 2);
    assert!(fim.contains(&4) && fim.contains(&3));
}

#[test]
fn token_bytes_splits_multibyte_chars() {
    let tok = trained(300); // almost no merges: multi-byte chars stay split
    let ids = tok.encode("é").unwrap();
    assert_eq!(ids.len(), 2);
    assert_eq!(tok.token_bytes(ids[0]).unwrap(), vec![0xC3]);
    assert_eq!(tok.token_bytes(ids[1]).unwrap(), vec![0xA9]);
    // A cut through a char decodes lossily instead of failing.
    assert_eq!(tok.decode(&ids[..1]).unwrap(), "\u{FFFD}");
}

#[test]
fn encode_batch_matches_encode() {
    let tok = trained(600);
    let docs = corpus();
    let batch = tok.encode_batch(&docs).unwrap();
    assert_eq!(batch.len(), docs.len());
    for (doc, ids) in docs.iter().zip(&batch) {
        assert_eq!(&tok.encode(doc).unwrap(), ids);
    }
    assert!(tok.encode_batch::<String>(&[]).unwrap().is_empty());
}

#[test]
fn training_is_deterministic() {
    assert_eq!(trained(500).to_json().unwrap(), trained(500).to_json().unwrap());
}

#[test]
fn json_and_file_round_trip() {
    let tok = trained(500);
    let again = Tokenizer::from_json(&tok.to_json().unwrap()).unwrap();
    assert_eq!(again.to_json().unwrap(), tok.to_json().unwrap());
    let dir = std::env::temp_dir().join(format!("tokens-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tokenizer.json");
    tok.save(&path).unwrap();
    assert!(!dir.join("tokenizer.json.tmp").exists());
    let loaded = Tokenizer::from_file(&path).unwrap();
    assert_eq!(loaded.encode(CODE).unwrap(), tok.encode(CODE).unwrap());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn gguf_vocab_round_trip_encodes_identically() {
    let tok = trained(600);
    let vocab = tok.to_gguf_vocab().unwrap();
    assert_eq!(vocab.model, "gpt2");
    assert_eq!(vocab.pre, "gpt-2");
    assert_eq!(vocab.tokens.len(), tok.vocab_size());
    assert_eq!(vocab.token_types.len(), tok.vocab_size());
    assert_eq!(vocab.token_types[0], TokenType::Control as i32);
    assert_eq!(vocab.token_types[10], TokenType::Normal as i32);
    assert_eq!((vocab.bos_id, vocab.eos_id, vocab.pad_id), (Some(0), Some(0), Some(1)));
    assert_eq!(vocab.merges.len(), tok.vocab_size() - 256 - SPECIAL_TOKENS.len());
    assert!(vocab.merges.iter().all(|m| m.split(' ').count() == 2));

    let back = Tokenizer::from_gguf_vocab(&vocab).unwrap();
    let back_plain = Tokenizer::from_gpt2_vocab(vocab.tokens.clone(), vocab.merges.clone(), Some(&vocab.token_types)).unwrap();
    let mut texts = corpus();
    texts.push("unseen 🦀 text<|endoftext|>with <|pad|> specials".into());
    for text in &texts {
        let want = tok.encode(text).unwrap();
        assert_eq!(back.encode(text).unwrap(), want);
        assert_eq!(back_plain.encode(text).unwrap(), want);
        assert_eq!(back.decode(&want).unwrap(), *text);
    }
    for id in 0..tok.vocab_size() as u32 {
        assert_eq!(back.token_bytes(id).unwrap(), tok.token_bytes(id).unwrap());
    }
    assert_eq!(back.to_gguf_vocab().unwrap(), vocab);
}

#[test]
fn bad_gguf_vocabs_are_errors() {
    let vocab = trained(400).to_gguf_vocab().unwrap();
    let bad = |f: &dyn Fn(&mut GgufVocab)| {
        let mut v = vocab.clone();
        f(&mut v);
        Tokenizer::from_gguf_vocab(&v).unwrap_err()
    };
    assert!(matches!(bad(&|v| v.model = "bert".into()), TokensError::Unsupported(_)));
    assert!(matches!(bad(&|v| v.pre = "no-such-split".into()), TokensError::Unsupported(_)));
    assert!(matches!(bad(&|v| { v.token_types.pop(); }), TokensError::BadVocab(_)));
    assert!(matches!(bad(&|v| v.merges.push("nospace".into())), TokensError::BadVocab(_)));
    assert!(matches!(bad(&|v| v.merges.push("zzzq qqqz".into())), TokensError::BadVocab(_)));
    assert!(matches!(bad(&|v| v.tokens[20] = v.tokens[21].clone()), TokensError::BadVocab(_)));
    assert!(matches!(bad(&|v| { v.tokens.clear(); v.token_types.clear(); v.merges.clear(); }), TokensError::BadVocab(_)));
}

#[test]
fn bad_json_and_files_are_errors() {
    for text in ["", "{", "[]", "{\"model\": 3}", "{\"version\":\"1.0\",\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[[\"a\",\"zz\"]]}}"] {
        assert!(matches!(Tokenizer::from_json(text), Err(TokensError::BadJson(_))), "{text:?}");
    }
    let missing = Tokenizer::from_file("/nonexistent/tokenizer.json").unwrap_err();
    assert!(matches!(missing, TokensError::Io { .. }));
    let dir = std::env::temp_dir().join(format!("tokens-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let binary = dir.join("binary.json");
    std::fs::write(&binary, [0xFFu8, 0xFE, 0x00]).unwrap();
    let err = Tokenizer::from_file(&binary).unwrap_err();
    assert!(matches!(err, TokensError::BadFile { .. }), "{err}");
    assert!(err.to_string().contains("binary.json"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn unknown_ids_are_errors() {
    let tok = trained(400);
    let n = tok.vocab_size() as u32;
    assert!(matches!(tok.decode(&[1, n]), Err(TokensError::UnknownId { .. })));
    assert!(matches!(tok.token_bytes(n + 7), Err(TokensError::UnknownId { .. })));
    assert_eq!(tok.id_to_token(n), None);
}

#[test]
fn bad_training_options_are_errors() {
    let docs = || corpus().into_iter();
    let small = TrainOptions { vocab_size: 100, ..TrainOptions::default() };
    assert!(matches!(train_bpe(docs(), &small), Err(TokensError::BadOptions(_))));
    let dup = TrainOptions { special_tokens: vec!["<a>".into(), "<a>".into()], ..TrainOptions::default() };
    assert!(matches!(train_bpe(docs(), &dup), Err(TokensError::BadOptions(_))));
}

#[test]
fn trains_from_files_and_reports_bad_ones() {
    let dir = std::env::temp_dir().join(format!("tokens-files-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut paths = Vec::new();
    for (i, doc) in corpus().iter().enumerate() {
        let p = dir.join(format!("{i}.txt"));
        std::fs::write(&p, doc).unwrap();
        paths.push(p);
    }
    let options = TrainOptions { vocab_size: 500, ..TrainOptions::default() };
    let from_files = train_bpe_files(&paths, &options).unwrap();
    assert_eq!(from_files.to_json().unwrap(), trained(500).to_json().unwrap());
    paths.push(dir.join("missing.txt"));
    assert!(matches!(train_bpe_files(&paths, &options), Err(TokensError::Io { .. })));
    std::fs::remove_dir_all(&dir).unwrap();
}
