//! The GGUF view of a tokenizer, as llama.cpp and gguf-py store it:
//!   tokenizer.ggml.model       str    "gpt2" (byte-level BPE) or "llama" (SentencePiece)
//!   tokenizer.ggml.tokens      [str]  token text by id (byte-level spelling for gpt2)
//!   tokenizer.ggml.merges      [str]  "left right", in rank order (gpt2 only)
//!   tokenizer.ggml.scores      [f32]  token scores (llama: the merge priorities)
//!   tokenizer.ggml.token_type  [i32]  TokenType by id
//!   tokenizer.ggml.pre         str    pre-tokenizer (split regexes) name, gpt2 only
//!   tokenizer.ggml.add_space_prefix bool  llama: prepend a space (default true)
//!   tokenizer.ggml.{bos,eos,padding}_token_id  u32
//! Export covers the GPT-2 pipeline this crate trains (gpt2 / gpt-2); import
//! builds that pipeline for `gpt-2`, llama.cpp's other splits for the `pre`
//! values in [`SUPPORTED_PRE`] (see `pre.rs`), and llama.cpp's SentencePiece
//! tokenization for `llama` (see `spm.rs`).
use ahash::AHashMap;
use serde_json::Value;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, ModelWrapper};

use crate::error::{Result, TokensError};
use crate::pre::{pre_split, PreSplit, GPT2_REGEX, SUPPORTED_PRE};
use crate::spm::spm_tokenizer;
use crate::train::gpt2_pipeline;
use crate::Tokenizer;

/// llama.cpp's token types (`tokenizer.ggml.token_type` values).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i32)]
pub enum TokenType {
    Normal = 1,
    Unknown = 2,
    Control = 3,
    UserDefined = 4,
    Unused = 5,
    Byte = 6,
}

/// The `tokenizer.ggml.model` value for byte-level BPE.
pub const GGUF_MODEL_GPT2: &str = "gpt2";
/// The `tokenizer.ggml.model` value for SentencePiece-style vocabularies.
pub const GGUF_MODEL_LLAMA: &str = "llama";
/// The `tokenizer.ggml.pre` value for the GPT-2 split regex (llama.cpp's name).
pub const GGUF_PRE_GPT2: &str = "gpt-2";

#[derive(Clone, Debug, PartialEq)]
pub struct GgufVocab {
    pub model: String,
    /// `tokenizer.ggml.pre`; "" when the key is absent (llama.cpp's "default").
    pub pre: String,
    pub tokens: Vec<String>,
    pub merges: Vec<String>,
    /// `TokenType as i32` by id.
    pub token_types: Vec<i32>,
    /// `tokenizer.ggml.scores` by id (needed for `llama`).
    pub scores: Option<Vec<f32>>,
    /// `tokenizer.ggml.add_space_prefix` (`llama`; None = llama.cpp's default, true).
    pub add_space_prefix: Option<bool>,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    pub pad_id: Option<u32>,
}

impl Tokenizer {
    /// The `tokenizer.ggml.*` metadata of this tokenizer. Only byte-level BPE
    /// with the GPT-2 split (what [`crate::train_bpe`] makes, and GPT-2's own
    /// tokenizer.json) can be expressed; anything else is `Unsupported`.
    pub fn to_gguf_vocab(&self) -> Result<GgufVocab> {
        let inner = self.inner();
        if !matches!(inner.get_model(), ModelWrapper::BPE(_)) {
            return Err(TokensError::Unsupported("GGUF gpt2 export needs a BPE model".into()));
        }
        let gpt2_split = matches!(inner.get_pre_tokenizer(),
            Some(PreTokenizerWrapper::ByteLevel(b)) if b.use_regex && !b.add_prefix_space);
        if !gpt2_split || !self.is_byte_level() || inner.get_normalizer().is_some() {
            return Err(TokensError::Unsupported(
                "GGUF gpt2 export needs the plain byte-level pipeline (ByteLevel pre-tokenizer with the GPT-2 \
                 regex and no prefix space, ByteLevel decoder, no normalizer)"
                    .into(),
            ));
        }
        let mut tokens = Vec::with_capacity(self.vocab_size());
        let mut token_types = Vec::with_capacity(self.vocab_size());
        for id in 0..self.vocab_size() as u32 {
            match self.id_to_token(id) {
                Some(token) => {
                    let kind = if self.is_special(id) {
                        TokenType::Control
                    } else if self.added.contains(&id) {
                        TokenType::UserDefined
                    } else {
                        TokenType::Normal
                    };
                    tokens.push(token);
                    token_types.push(kind as i32);
                }
                None => {
                    // GGUF has no holes: fill with a token no text can produce.
                    tokens.push(format!("[UNUSED_{id}]"));
                    token_types.push(TokenType::Unused as i32);
                }
            }
        }
        let merges = bpe_merges(inner)?
            .into_iter()
            .map(|(a, b)| {
                if a.contains(' ') || b.contains(' ') {
                    Err(TokensError::Unsupported(format!("merge ({a:?}, {b:?}) contains a space")))
                } else {
                    Ok(format!("{a} {b}"))
                }
            })
            .collect::<Result<Vec<_>>>()?;
        let bos = self.bos_id();
        Ok(GgufVocab {
            model: GGUF_MODEL_GPT2.into(),
            pre: GGUF_PRE_GPT2.into(),
            tokens,
            merges,
            token_types,
            scores: None,
            add_space_prefix: None,
            bos_id: bos,
            eos_id: bos,
            pad_id: self.token_to_id("<|pad|>"),
        })
    }

    /// Rebuilds a tokenizer from GGUF metadata (see the module docs).
    pub fn from_gguf_vocab(vocab: &GgufVocab) -> Result<Tokenizer> {
        match vocab.model.as_str() {
            GGUF_MODEL_GPT2 => {
                let split = pre_split(&vocab.pre)?;
                if let Some(scores) = &vocab.scores {
                    if scores.len() != vocab.tokens.len() {
                        return Err(TokensError::BadVocab(format!(
                            "{} scores for {} tokens",
                            scores.len(),
                            vocab.tokens.len()
                        )));
                    }
                }
                bpe_tokenizer(vocab.tokens.clone(), vocab.merges.clone(), Some(&vocab.token_types), split)
            }
            GGUF_MODEL_LLAMA => {
                if !vocab.pre.is_empty() && vocab.pre != "default" {
                    return Err(TokensError::Unsupported(format!(
                        "tokenizer.ggml.pre {:?} with model \"llama\" (llama.cpp has no pre-tokenizer for it)",
                        vocab.pre
                    )));
                }
                spm_tokenizer(vocab)
            }
            other => Err(TokensError::Unsupported(format!(
                "tokenizer.ggml.model {other:?} (supported: \"{GGUF_MODEL_GPT2}\" byte-level BPE with pre {}; \
                 \"{GGUF_MODEL_LLAMA}\" SentencePiece)",
                SUPPORTED_PRE.join(", ")
            ))),
        }
    }

    /// Byte-level BPE from a GGUF-style token list (id order) and "left right"
    /// merges, with the GPT-2 split. Tokens typed Control become special added
    /// tokens (recognised in text), UserDefined become plain added tokens;
    /// without types every token is normal.
    pub fn from_gpt2_vocab(tokens: Vec<String>, merges: Vec<String>, token_types: Option<&[i32]>) -> Result<Tokenizer> {
        bpe_tokenizer(tokens, merges, token_types, pre_split(GGUF_PRE_GPT2)?)
    }
}

/// Byte-level BPE with the given llama.cpp split (see [`Tokenizer::from_gpt2_vocab`]).
fn bpe_tokenizer(tokens: Vec<String>, merges: Vec<String>, token_types: Option<&[i32]>, split: PreSplit) -> Result<Tokenizer> {
    if tokens.is_empty() {
        return Err(TokensError::BadVocab("the token list is empty".into()));
    }
    if tokens.len() > u32::MAX as usize {
        return Err(TokensError::BadVocab("more tokens than u32 ids".into()));
    }
    if let Some(types) = token_types {
        if types.len() != tokens.len() {
            return Err(TokensError::BadVocab(format!(
                "{} token types for {} tokens",
                types.len(),
                tokens.len()
            )));
        }
    }
    let mut vocab: AHashMap<String, u32> = AHashMap::with_capacity(tokens.len());
    for (id, token) in tokens.iter().enumerate() {
        if vocab.insert(token.clone(), id as u32).is_some() {
            return Err(TokensError::BadVocab(format!("token {token:?} appears twice (again at id {id})")));
        }
    }
    let pairs = merges
        .iter()
        .enumerate()
        .map(|(rank, m)| match m.split_once(' ') {
            Some((a, b)) if !a.is_empty() && !b.is_empty() && !b.contains(' ') => Ok((a.to_string(), b.to_string())),
            _ => Err(TokensError::BadVocab(format!("merge {rank} {m:?} is not \"left right\""))),
        })
        .collect::<Result<Vec<_>>>()?;
    for (rank, (a, b)) in pairs.iter().enumerate() {
        for part in [a, b] {
            if !vocab.contains_key(part) {
                return Err(TokensError::BadVocab(format!("merge {rank} \"{a} {b}\": {part:?} is not a token")));
            }
        }
        if !vocab.contains_key(&format!("{a}{b}")) {
            return Err(TokensError::BadVocab(format!(
                "merge {rank} \"{a} {b}\": the merged token {:?} is not in the vocabulary",
                format!("{a}{b}")
            )));
        }
    }
    let model = BPE::builder()
        .vocab_and_merges(vocab, pairs)
        .ignore_merges(split.ignore_merges)
        .build()
        .map_err(|e| TokensError::BadVocab(e.to_string()))?;
    // The GPT-2 split keeps the pipeline `train_bpe` makes (ByteLevel with
    // its built-in GPT-2 regex), so `to_gguf_vocab` round-trips it.
    let mut tok = gpt2_pipeline(model);
    if split.regexes != [GPT2_REGEX] {
        tok.with_pre_tokenizer(Some(split.pre_tokenizer()?));
    }
    if let Some(types) = token_types {
        let mut special = Vec::new();
        let mut user = Vec::new();
        for (token, &kind) in tokens.iter().zip(types) {
            if kind == TokenType::Control as i32 {
                special.push(AddedToken::from(token.clone(), true));
            } else if kind == TokenType::UserDefined as i32 {
                user.push(AddedToken::from(token.clone(), false));
            }
        }
        // Added tokens already in the model vocabulary keep their ids.
        tok.add_special_tokens(&special);
        tok.add_tokens(&user);
    }
    Tokenizer::from_inner(tok)
}

/// The BPE merges in rank order, read from the serialised model (the crate
/// keeps them private). Accepts both the current `[[a, b], ...]` form and
/// the legacy `["a b", ...]` form.
fn bpe_merges(inner: &tokenizers::Tokenizer) -> Result<Vec<(String, String)>> {
    let json = inner.to_string(false).map_err(crate::error::tk)?;
    let value: Value = serde_json::from_str(&json).map_err(|e| TokensError::BadJson(e.to_string()))?;
    let merges = value
        .pointer("/model/merges")
        .and_then(Value::as_array)
        .ok_or_else(|| TokensError::BadJson("model.merges is missing".into()))?;
    merges
        .iter()
        .map(|m| match m {
            Value::Array(pair) if pair.len() == 2 => match (&pair[0], &pair[1]) {
                (Value::String(a), Value::String(b)) => Ok((a.clone(), b.clone())),
                _ => Err(TokensError::BadJson(format!("merge {m} is not two strings"))),
            },
            Value::String(s) => s
                .split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| TokensError::BadJson(format!("merge {s:?} has no space"))),
            _ => Err(TokensError::BadJson(format!("merge {m} is neither a pair nor a string"))),
        })
        .collect()
}
