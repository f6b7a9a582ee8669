//! The GGUF view of a byte-level BPE tokenizer, as llama.cpp and gguf-py
//! store it for `tokenizer.ggml.model = "gpt2"`:
//!   tokenizer.ggml.tokens      [str]  token text by id (byte-level spelling)
//!   tokenizer.ggml.merges      [str]  "left right", in rank order
//!   tokenizer.ggml.token_type  [i32]  TokenType by id
//!   tokenizer.ggml.pre         str    pre-tokenizer (split regex) name
//!   tokenizer.ggml.{bos,eos,padding}_token_id  u32
//! Export needs the GPT-2 pipeline this crate trains; import builds exactly
//! that pipeline, so a round trip encodes identically.
use ahash::AHashMap;
use serde_json::Value;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, ModelWrapper};

use crate::error::{Result, TokensError};
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
/// The `tokenizer.ggml.pre` value for the GPT-2 split regex (llama.cpp's name).
pub const GGUF_PRE_GPT2: &str = "gpt-2";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GgufVocab {
    pub model: String,
    pub pre: String,
    pub tokens: Vec<String>,
    pub merges: Vec<String>,
    /// `TokenType as i32` by id.
    pub token_types: Vec<i32>,
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
            bos_id: bos,
            eos_id: bos,
            pad_id: self.token_to_id("<|pad|>"),
        })
    }

    /// Rebuilds a tokenizer from GGUF metadata (see the module docs).
    pub fn from_gguf_vocab(vocab: &GgufVocab) -> Result<Tokenizer> {
        if vocab.model != GGUF_MODEL_GPT2 {
            return Err(TokensError::Unsupported(format!(
                "tokenizer.ggml.model {:?} (only {GGUF_MODEL_GPT2:?} is supported)",
                vocab.model
            )));
        }
        if vocab.pre != GGUF_PRE_GPT2 {
            return Err(TokensError::Unsupported(format!(
                "tokenizer.ggml.pre {:?} (only {GGUF_PRE_GPT2:?}, the GPT-2 split, is supported)",
                vocab.pre
            )));
        }
        Self::from_gpt2_vocab(vocab.tokens.clone(), vocab.merges.clone(), Some(&vocab.token_types))
    }

    /// Byte-level BPE from a GGUF-style token list (id order) and "left right"
    /// merges, with the GPT-2 split. Tokens typed Control become special added
    /// tokens (recognised in text), UserDefined become plain added tokens;
    /// without types every token is normal.
    pub fn from_gpt2_vocab(tokens: Vec<String>, merges: Vec<String>, token_types: Option<&[i32]>) -> Result<Tokenizer> {
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
        let model = BPE::builder()
            .vocab_and_merges(vocab, pairs)
            .build()
            .map_err(|e| TokensError::BadVocab(e.to_string()))?;
        let mut tok = gpt2_pipeline(model);
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
