//! GGUF vocabularies tokenize as llama.cpp does: the pre-token pieces of each
//! supported `tokenizer.ggml.pre` split, `ignore_merges`, and SentencePiece
//! (`llama`) merges by score with byte fallback. Every expected value below
//! was worked out by hand from llama.cpp's regexes (src/llama-vocab.cpp) and
//! its SPM algorithm, not printed from this implementation.
use tokenizers::{OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer};
use tokens::{byte_to_char, GgufVocab, TokenType, Tokenizer, TokensError, SUPPORTED_PRE};

// ---------------------------------------------------------------- byte-level BPE

/// A byte-level vocabulary: the 256 byte chars (id = byte), then a few merged
/// tokens, then a control token.
fn bpe_vocab(pre: &str) -> GgufVocab {
    let mut tokens: Vec<String> = (0..=255u8).map(|b| byte_to_char(b).to_string()).collect();
    // 256 "Ġm", 257 "ai", 258 "Ġmain" (no merge makes it), 259 "Ġmai"
    tokens.extend(["Ġm", "ai", "Ġmain", "Ġmai", "<|begin_of_text|>"].map(String::from));
    let mut token_types = vec![TokenType::Normal as i32; tokens.len()];
    *token_types.last_mut().unwrap() = TokenType::Control as i32;
    GgufVocab {
        model: "gpt2".into(),
        pre: pre.into(),
        tokens,
        merges: ["Ġ m", "a i", "Ġm ai"].map(String::from).to_vec(),
        token_types,
        scores: None,
        add_space_prefix: None,
        bos_id: None,
        eos_id: None,
        pad_id: None,
    }
}

/// The pieces the tokenizer's pre-tokenizer cuts `text` into, as slices of
/// the original text.
fn pieces(tok: &Tokenizer, text: &str) -> Vec<String> {
    let pre = tok.inner().get_pre_tokenizer().expect("a pre-tokenizer");
    let mut s = PreTokenizedString::from(text);
    pre.pre_tokenize(&mut s).unwrap();
    s.get_splits(OffsetReferential::Original, OffsetType::Byte)
        .into_iter()
        .map(|(_, (a, b), _)| text[a..b].to_string())
        .collect()
}

const CODE: &str = "fn main() {\n    let x = 12345;\n}";
const PROSE: &str = "I'M don't";
const SPACES: &str = "a  b\r\n\r\n  c\t\td   ";
const NON_LATIN: &str = "Привет мир 你好世界 مرحبا 🦀!";
const DIGITS: &str = "x 1234567 v2";

fn check(pre: &str, text: &str, want: &[&str]) {
    let tok = Tokenizer::from_gguf_vocab(&bpe_vocab(pre)).unwrap_or_else(|e| panic!("pre {pre:?}: {e}"));
    assert_eq!(pieces(&tok, text), want, "pre {pre:?}, text {text:?}");
    // Every piece is byte-mapped and encoded; the bytes come back exactly.
    let ids = tok.encode(text).unwrap();
    assert_eq!(tok.decode(&ids).unwrap(), text, "pre {pre:?}");
    let bytes: Vec<u8> = ids.iter().flat_map(|&id| tok.token_bytes(id).unwrap()).collect();
    assert_eq!(bytes, text.as_bytes());
    assert!(tok.is_byte_level());
}

#[test]
fn gpt2_split() {
    // 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S) (+ lone whitespace kept)
    for pre in ["gpt-2", "phi-2", "mpt"] {
        check(pre, CODE, &["fn", " main", "()", " {", "\n   ", " let", " x", " =", " 12345", ";", "\n", "}"]);
        // Contractions are case-sensitive: 'M is punctuation then a letter.
        check(pre, PROSE, &["I", "'", "M", " don", "'t"]);
        check(pre, SPACES, &["a", " ", " b", "\r\n\r\n ", " c", "\t", "\t", "d", "   "]);
        check(pre, NON_LATIN, &["Привет", " мир", " 你好世界", " مرحبا", " 🦀!"]);
        check(pre, DIGITS, &["x", " 1234567", " v", "2"]);
    }
}

#[test]
fn llama3_split() {
    // (?:'[sS]|...)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
    for pre in ["llama-bpe", "llama3", "llama-v3"] {
        check(pre, CODE, &["fn", " main", "()", " {\n", "   ", " let", " x", " =", " ", "123", "45", ";\n", "}"]);
        check(pre, PROSE, &["I", "'M", " don", "'t"]);
        // A tab is a valid one-char prefix of a letter run.
        check(pre, SPACES, &["a", " ", " b", "\r\n\r\n", " ", " c", "\t", "\td", "   "]);
        check(pre, NON_LATIN, &["Привет", " мир", " 你好世界", " مرحبا", " 🦀!"]);
        check(pre, DIGITS, &["x", " ", "123", "456", "7", " v", "2"]);
    }
}

#[test]
fn qwen2_split() {
    // LLaMA 3's pattern with \p{N} single digits.
    let pre = "qwen2";
    check(pre, CODE, &["fn", " main", "()", " {\n", "   ", " let", " x", " =", " ", "1", "2", "3", "4", "5", ";\n", "}"]);
    check(pre, PROSE, &["I", "'M", " don", "'t"]);
    check(pre, SPACES, &["a", " ", " b", "\r\n\r\n", " ", " c", "\t", "\td", "   "]);
    check(pre, NON_LATIN, &["Привет", " мир", " 你好世界", " مرحبا", " 🦀!"]);
    check(pre, DIGITS, &["x", " ", "1", "2", "3", "4", "5", "6", "7", " v", "2"]);
}

#[test]
fn default_split_also_when_pre_is_absent() {
    // [\p{P}\$\+<=>\^~\|]+ , then GPT-2, then \p{N}+ , then [0-9][0-9][0-9]
    for pre in ["default", ""] {
        check(pre, CODE, &["fn", " main", "()", " ", "{", "\n   ", " let", " x", " ", "=", " ", "123", "45", ";", "\n", "}"]);
        check(pre, PROSE, &["I", "'", "M", " don", "'", "t"]);
        check(pre, SPACES, &["a", " ", " b", "\r\n\r\n ", " c", "\t", "\t", "d", "   "]);
        // The crab is a symbol (So), not in the punctuation class.
        check(pre, NON_LATIN, &["Привет", " мир", " 你好世界", " مرحبا", " 🦀", "!"]);
        check(pre, DIGITS, &["x", " ", "123", "456", "7", " v", "2"]);
    }
}

#[test]
fn starcoder_split() {
    // \p{N} , then GPT-2
    for pre in ["starcoder", "refact"] {
        check(pre, CODE, &["fn", " main", "()", " {", "\n   ", " let", " x", " =", " ", "1", "2", "3", "4", "5", ";", "\n", "}"]);
        check(pre, DIGITS, &["x", " ", "1", "2", "3", "4", "5", "6", "7", " v", "2"]);
        check(pre, PROSE, &["I", "'", "M", " don", "'t"]);
    }
}

#[test]
fn every_supported_pre_loads_and_round_trips_json() {
    for pre in SUPPORTED_PRE {
        let tok = Tokenizer::from_gguf_vocab(&bpe_vocab(pre)).unwrap();
        let back = Tokenizer::from_json(&tok.to_json().unwrap()).unwrap();
        for text in [CODE, PROSE, SPACES, NON_LATIN, DIGITS, " main main"] {
            assert_eq!(back.encode(text).unwrap(), tok.encode(text).unwrap(), "pre {pre:?}");
        }
        assert_eq!(pieces(&back, CODE), pieces(&tok, CODE));
    }
}

#[test]
fn ignore_merges_only_for_llama3() {
    // " main" -> "Ġmain". Merging: Ġ m (rank 0), a i (1), Ġm ai (2) gives
    // "Ġmai" (259) + "n" (110); "Ġmain" (258) is only reachable as a whole.
    let ids = |pre: &str| Tokenizer::from_gguf_vocab(&bpe_vocab(pre)).unwrap().encode("fn main").unwrap();
    assert_eq!(ids("gpt-2"), [b'f' as u32, b'n' as u32, 259, b'n' as u32]);
    assert_eq!(ids("qwen2"), [b'f' as u32, b'n' as u32, 259, b'n' as u32]);
    assert_eq!(ids("default"), [b'f' as u32, b'n' as u32, 259, b'n' as u32]);
    assert_eq!(ids("llama-bpe"), [b'f' as u32, b'n' as u32, 258]);
    // A piece not in the vocabulary still merges normally under llama3.
    let llama = Tokenizer::from_gguf_vocab(&bpe_vocab("llama3")).unwrap();
    assert_eq!(llama.encode(" mai").unwrap(), [259]);
    assert_eq!(llama.encode(" main").unwrap(), [258]);
    // The control token is one id when written in the text.
    assert_eq!(llama.encode("<|begin_of_text|> main").unwrap(), [260, 258]);
    assert!(llama.is_special(260));
}

#[test]
fn gpt2_import_keeps_exporting() {
    // The gpt-2 import is the pipeline train_bpe makes, so it exports again;
    // the other splits are not GPT-2's and refuse to export as "gpt-2".
    let v = bpe_vocab("gpt-2");
    let back = Tokenizer::from_gguf_vocab(&v).unwrap().to_gguf_vocab().unwrap();
    assert_eq!((back.tokens, back.merges), (v.tokens.clone(), v.merges.clone()));
    let err = Tokenizer::from_gguf_vocab(&bpe_vocab("llama-bpe")).unwrap().to_gguf_vocab().unwrap_err();
    assert!(matches!(err, TokensError::Unsupported(_)), "{err}");
}

#[test]
fn unknown_pre_and_model_are_clear_errors() {
    let err = Tokenizer::from_gguf_vocab(&bpe_vocab("chameleon")).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, TokensError::Unsupported(_)), "{msg}");
    assert!(msg.contains("\"chameleon\"") && msg.contains("llama-bpe") && msg.contains("qwen2"), "{msg}");
    let mut v = bpe_vocab("gpt-2");
    v.model = "bert".into();
    let msg = Tokenizer::from_gguf_vocab(&v).unwrap_err().to_string();
    assert!(msg.contains("\"bert\"") && msg.contains("llama"), "{msg}");
    let mut v = bpe_vocab("gpt-2");
    v.scores = Some(vec![0.0; 3]);
    assert!(matches!(Tokenizer::from_gguf_vocab(&v), Err(TokensError::BadVocab(_))));
    let mut v = bpe_vocab("qwen2");
    v.merges.push("Ġ zz".into());
    assert!(matches!(Tokenizer::from_gguf_vocab(&v), Err(TokensError::BadVocab(_))));
}

// ---------------------------------------------------------------- SentencePiece

const UNK: u32 = 0;
const BYTE0: u32 = 3; // <0x00> .. <0xFF> at 3 ..= 258
const SP: u32 = 259; // "▁"
const A: u32 = 260;
const B: u32 = 261;
const AB: u32 = 262;
const SP_A: u32 = 263;
const SP_AB: u32 = 264;
const BA: u32 = 265;
const AA: u32 = 266;

fn spm_vocab(with_bytes: bool) -> GgufVocab {
    let mut tokens: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
    let mut types = vec![TokenType::Unknown as i32, TokenType::Control as i32, TokenType::Control as i32];
    let mut scores = vec![0.0f32; 3];
    for b in 0..=255u32 {
        // Without byte tokens their ids are taken by never-matching fillers.
        tokens.push(if with_bytes { format!("<0x{b:02X}>") } else { format!("[UNUSED_{b}]") });
        types.push(if with_bytes { TokenType::Byte as i32 } else { TokenType::Unused as i32 });
        scores.push(0.0);
    }
    for (token, score) in
        [("▁", -12.0), ("a", -10.0), ("b", -11.0), ("ab", -1.0), ("▁a", -2.0), ("▁ab", -3.0), ("ba", -0.5), ("aa", -1.5)]
    {
        tokens.push(token.into());
        types.push(TokenType::Normal as i32);
        scores.push(score);
    }
    GgufVocab {
        model: "llama".into(),
        pre: String::new(),
        tokens,
        merges: Vec::new(),
        token_types: types,
        scores: Some(scores),
        add_space_prefix: None,
        bos_id: Some(1),
        eos_id: Some(2),
        pad_id: None,
    }
}

fn spm(vocab: &GgufVocab) -> Tokenizer {
    Tokenizer::from_gguf_vocab(vocab).unwrap()
}

#[test]
fn spm_merges_by_score() {
    let tok = spm(&spm_vocab(true));
    assert_eq!(tok.id_to_token(AA).as_deref(), Some("aa"));
    // "ab abab" -> "▁ab▁abab". Best first: "ba" (-0.5) at a-b-[a]; then the
    // leftmost "ab" (-1) (the other two "ab"s lost a symbol to "ba"); then
    // "▁a" (-2) at the second word ("▁ab" is now ▁+ab); then "▁ab" (-3).
    assert_eq!(tok.encode("ab abab").unwrap(), [SP_AB, SP_A, BA, B]);
    // Tie between the two "aa" of "▁aaa": the leftmost merges, leaving "a".
    assert_eq!(tok.encode("aaa").unwrap(), [SP, AA, A]);
    // A leading space: "▁▁a" -> "▁" + "▁a" ("▁▁" is no token).
    assert_eq!(tok.encode(" a").unwrap(), [SP, SP_A]);
    for text in ["ab abab", "aaa", " a", "ab é", "b  a\n"] {
        let ids = tok.encode(text).unwrap();
        assert_eq!(tok.decode(&ids).unwrap(), text, "{text:?}");
    }
    assert!(!tok.is_byte_level());
}

#[test]
fn spm_byte_fallback_and_unknown() {
    let tok = spm(&spm_vocab(true));
    // "é" (C3 A9) is no token: its bytes. "▁" before it stays alone.
    assert_eq!(tok.encode("ab é").unwrap(), [SP_AB, SP, BYTE0 + 0xC3, BYTE0 + 0xA9]);
    // A newline is a byte too.
    assert_eq!(tok.encode("a\n").unwrap(), [SP_A, BYTE0 + 0x0A]);
    assert_eq!(tok.token_bytes(BYTE0 + 0xC3).unwrap(), [0xC3]);
    assert_eq!(tok.token_bytes(SP_AB).unwrap(), b" ab");
    assert_eq!(tok.token_bytes(1).unwrap(), b"<s>");
    // Without byte tokens an unknown char is the unknown token.
    let tok = spm(&spm_vocab(false));
    assert_eq!(tok.encode("ab é").unwrap(), [SP_AB, SP, UNK]);
}

#[test]
fn spm_without_space_prefix() {
    let mut v = spm_vocab(true);
    v.add_space_prefix = Some(false);
    let tok = spm(&v);
    // "ab▁abab": "ba" first, then the leading "ab", then "▁a".
    assert_eq!(tok.encode("ab abab").unwrap(), [AB, SP_A, BA, B]);
    assert_eq!(tok.decode(&[AB, SP_A, BA, B]).unwrap(), "ab abab");
    // The prefix is also dropped when decoding with it on.
    let on = spm(&spm_vocab(true));
    assert_eq!(on.decode(&[SP_AB, SP_A, BA, B]).unwrap(), "ab abab");
}

#[test]
fn spm_ignores_merges_like_llama_cpp() {
    // llama.cpp never reads tokenizer.ggml.merges for "llama"; a merge list that would
    // change the result under BPE rules changes nothing here.
    let mut v = spm_vocab(true);
    v.merges = vec!["a b".into(), "▁ a".into()];
    assert_eq!(spm(&v).encode("ab abab").unwrap(), [SP_AB, SP_A, BA, B]);
}

#[test]
fn spm_control_tokens_and_json_round_trip() {
    let tok = spm(&spm_vocab(true));
    assert!(tok.is_special(1) && tok.is_special(2));
    // Text after an added token gets the space prefix again, as in llama.cpp.
    assert_eq!(tok.encode("<s>ab").unwrap(), [1, SP_AB]);
    let back = Tokenizer::from_json(&tok.to_json().unwrap()).unwrap();
    for text in ["ab abab", "aaa", "ab é", " a\t"] {
        assert_eq!(back.encode(text).unwrap(), tok.encode(text).unwrap());
        assert_eq!(back.decode(&tok.encode(text).unwrap()).unwrap(), text);
    }
}

#[test]
fn bad_spm_vocabs_are_errors() {
    let bad = |f: &dyn Fn(&mut GgufVocab)| {
        let mut v = spm_vocab(true);
        f(&mut v);
        Tokenizer::from_gguf_vocab(&v).unwrap_err()
    };
    assert!(matches!(bad(&|v| v.scores = None), TokensError::Unsupported(_)));
    assert!(matches!(bad(&|v| { v.scores.as_mut().unwrap().pop(); }), TokensError::BadVocab(_)));
    assert!(matches!(bad(&|v| v.scores.as_mut().unwrap()[262] = f32::NAN), TokensError::BadVocab(_)));
    assert!(matches!(bad(&|v| v.scores.as_mut().unwrap()[5] = f32::INFINITY), TokensError::BadVocab(_)));
    assert!(matches!(bad(&|v| v.tokens[AA as usize] = "ab".into()), TokensError::BadVocab(_)));
    assert!(matches!(bad(&|v| v.tokens[AA as usize] = String::new()), TokensError::BadVocab(_)));
    assert!(matches!(bad(&|v| { v.token_types.pop(); }), TokensError::BadVocab(_)));
    assert!(matches!(bad(&|v| v.pre = "llama-bpe".into()), TokensError::Unsupported(_)));
    let msg = bad(&|v| { v.scores.as_mut().unwrap().pop(); }).to_string();
    assert!(msg.contains("scores"), "{msg}");
}
