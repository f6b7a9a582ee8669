//! Byte-level BPE tokenizers for nanochat-ternary, over the `tokenizers` crate.
//!
//! * [`Tokenizer`] loads/saves Hugging Face `tokenizer.json` files, encodes
//!   (special tokens written in the text, like `<|endoftext|>`, are recognised;
//!   none are added automatically), decodes, and gives each token's raw bytes
//!   (for streaming decode of partial UTF-8 and for bits per byte).
//! * [`train_bpe`] / [`train_bpe_files`] train a GPT-2-style byte-level BPE
//!   with the project's special tokens at fixed ids ([`SPECIAL_TOKENS`]).
//! * [`GgufVocab`] is the `tokenizer.ggml.*` view of a tokenizer: export
//!   (model `gpt2`, pre `gpt-2`) with [`Tokenizer::to_gguf_vocab`], import
//!   with [`Tokenizer::from_gguf_vocab`] / [`Tokenizer::from_gpt2_vocab`].
//!   Import tokenizes as llama.cpp does: byte-level BPE (`gpt2`) with the
//!   split of each `pre` in [`SUPPORTED_PRE`], and SentencePiece (`llama`).
//!
//! Nothing here panics on bad files: every failure is a [`TokensError`].
mod bytes;
mod error;
mod gguf_vocab;
mod pre;
mod spm;
mod train;

use std::collections::HashSet;
use std::path::Path;

use rayon::prelude::*;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::Model;

pub use bytes::{byte_to_char, bytes_to_token, char_to_byte, token_to_bytes};
pub use error::{Result, TokensError};
pub use gguf_vocab::{GgufVocab, TokenType, GGUF_MODEL_GPT2, GGUF_MODEL_LLAMA, GGUF_PRE_GPT2};
pub use pre::{pre_split, PreSplit, DEFAULT_REGEXES, GPT2_REGEX, LLAMA3_REGEX, QWEN2_REGEX, SUPPORTED_PRE};
pub use spm::SPM_SPACE;
pub use train::{train_bpe, train_bpe_files, TrainOptions, DEFAULT_VOCAB_SIZE, SPECIAL_TOKENS};

use error::tk;

/// The document separator / beginning-of-sequence token.
pub const BOS_TOKEN: &str = "<|endoftext|>";

/// A loaded tokenizer plus an id-indexed table of its tokens.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// Token string of each id (None for holes in the id space).
    tokens: Vec<Option<String>>,
    /// Ids of added tokens flagged special (`<|endoftext|>`, ...).
    special: HashSet<u32>,
    /// Ids of all added tokens (special or not); their bytes are their text.
    added: HashSet<u32>,
    /// True when tokens spell bytes through the GPT-2 byte table.
    byte_level: bool,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("byte_level", &self.byte_level)
            .finish()
    }
}

impl Tokenizer {
    /// Wraps a `tokenizers` tokenizer, building the id table.
    pub(crate) fn from_inner(inner: tokenizers::Tokenizer) -> Result<Self> {
        let mut tokens: Vec<Option<String>> = Vec::new();
        let mut put = |id: u32, token: String| {
            let i = id as usize;
            if i >= tokens.len() {
                tokens.resize(i + 1, None);
            }
            tokens[i] = Some(token);
        };
        for (token, id) in inner.get_model().get_vocab() {
            put(id, token);
        }
        let mut special = HashSet::new();
        let mut added = HashSet::new();
        for (id, token) in inner.get_added_tokens_decoder() {
            if token.special {
                special.insert(id);
            }
            added.insert(id);
            put(id, token.content);
        }
        if tokens.is_empty() {
            return Err(TokensError::BadVocab("the tokenizer has no tokens".into()));
        }
        let byte_level = matches!(inner.get_decoder(), Some(DecoderWrapper::ByteLevel(_)));
        Ok(Tokenizer { inner, tokens, special, added, byte_level })
    }

    /// Loads a Hugging Face `tokenizer.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read(path).map_err(|e| TokensError::io(path, e))?;
        let text = String::from_utf8(text).map_err(|_| TokensError::BadFile {
            path: path.into(),
            message: "not UTF-8 text".into(),
        })?;
        Self::from_json(&text).map_err(|e| match e {
            TokensError::BadJson(message) => TokensError::BadFile { path: path.into(), message },
            other => other,
        })
    }

    /// Parses the contents of a `tokenizer.json`.
    pub fn from_json(json: &str) -> Result<Self> {
        // The `tokenizers` deserialisers validate what they read, but a few
        // components compile user patterns with `unwrap`; a hostile file must
        // still come back as an error, not a crash.
        let parsed = std::panic::catch_unwind(|| json.parse::<tokenizers::Tokenizer>());
        match parsed {
            Ok(Ok(inner)) => Self::from_inner(inner),
            Ok(Err(e)) => Err(TokensError::BadJson(e.to_string())),
            Err(_) => Err(TokensError::BadJson("the tokenizer definition is malformed".into())),
        }
    }

    /// The `tokenizer.json` text (pretty-printed).
    pub fn to_json(&self) -> Result<String> {
        self.inner.to_string(true).map_err(tk)
    }

    /// Writes `tokenizer.json` atomically (temp file, fsync, rename).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let json = self.to_json()?;
        let name = path
            .file_name()
            .ok_or_else(|| TokensError::io(path, std::io::Error::other("not a file path")))?;
        let tmp = path.with_file_name(format!("{}.tmp", name.to_string_lossy()));
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(json.as_bytes())?;
            f.write_all(b"\n")?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            TokensError::io(path, e)
        })
    }

    /// Token ids of `text`. No special tokens are added; special tokens
    /// written in the text are recognised as single ids.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self.inner.encode_fast(text, false).map_err(tk)?;
        Ok(encoding.get_ids().to_vec())
    }

    /// [`Tokenizer::encode`] of every text, in parallel (rayon's pool).
    pub fn encode_batch<S: AsRef<str> + Sync>(&self, texts: &[S]) -> Result<Vec<Vec<u32>>> {
        texts.par_iter().map(|t| self.encode(t.as_ref())).collect()
    }

    /// Text of `ids` (special tokens included). Invalid UTF-8 that a cut
    /// through a multi-byte char leaves becomes U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        for &id in ids {
            self.check_id(id)?;
        }
        self.inner.decode(ids, false).map_err(tk)
    }

    /// One more than the largest id (the embedding table size).
    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.tokens.get(id as usize).cloned().flatten()
    }

    /// Id of `<|endoftext|>`, the document separator, if the vocabulary has it.
    pub fn bos_id(&self) -> Option<u32> {
        self.token_to_id(BOS_TOKEN)
    }

    /// Whether `id` is an added token flagged special.
    pub fn is_special(&self, id: u32) -> bool {
        self.special.contains(&id)
    }

    /// Special tokens and their ids, by id.
    pub fn special_tokens(&self) -> Vec<(u32, String)> {
        let mut out: Vec<(u32, String)> =
            self.special.iter().filter_map(|&id| Some((id, self.id_to_token(id)?))).collect();
        out.sort();
        out
    }

    /// Whether tokens spell raw bytes through the GPT-2 byte table.
    pub fn is_byte_level(&self) -> bool {
        self.byte_level
    }

    /// The raw bytes token `id` stands for. Byte-level tokens map through the
    /// GPT-2 table; added tokens are their own UTF-8 text; for other models a
    /// `<0xNN>` byte-fallback token is that byte and `▁` (SentencePiece's
    /// word marker) is a space.
    pub fn token_bytes(&self, id: u32) -> Result<Vec<u8>> {
        let token = self.check_id(id)?;
        if self.added.contains(&id) {
            return Ok(token.as_bytes().to_vec());
        }
        if self.byte_level {
            if let Some(bytes) = bytes::token_to_bytes(token) {
                return Ok(bytes);
            }
        }
        if let Some(hex) = token.strip_prefix("<0x").and_then(|t| t.strip_suffix('>')) {
            if hex.len() == 2 {
                if let Ok(b) = u8::from_str_radix(hex, 16) {
                    return Ok(vec![b]);
                }
            }
        }
        Ok(token.replace('\u{2581}', " ").into_bytes())
    }

    fn check_id(&self, id: u32) -> Result<&str> {
        match self.tokens.get(id as usize) {
            Some(Some(token)) => Ok(token),
            _ => Err(TokensError::UnknownId { id, vocab_size: self.vocab_size() }),
        }
    }

    /// The wrapped `tokenizers` tokenizer, for anything not covered here.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}
