//! Training a byte-level BPE: GPT-2 split regex, all 256 byte tokens in the
//! base alphabet (so any text encodes), the project's special tokens first at
//! fixed ids. Training is deterministic: the trainer breaks count ties by
//! token ids, and the ids of the base alphabet are assigned in sorted order.
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::AddedToken;

use crate::error::{Result, TokensError};
use crate::Tokenizer;

/// Special tokens, in id order: `<|endoftext|>` = 0 separates documents
/// (and starts each one), then padding and the three fill-in-the-middle markers.
pub const SPECIAL_TOKENS: [&str; 5] =
    ["<|endoftext|>", "<|pad|>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>"];

/// Suits the `tiny` model; bigger models want 16k-64k.
pub const DEFAULT_VOCAB_SIZE: usize = 4096;

#[derive(Clone, Debug)]
pub struct TrainOptions {
    /// Final vocabulary size, special tokens and the 256 byte tokens included.
    pub vocab_size: usize,
    /// A pair seen fewer times than this is never merged.
    pub min_frequency: u64,
    /// Added first, in order, at ids 0..len.
    pub special_tokens: Vec<String>,
    /// Longest token in chars (None: unlimited).
    pub max_token_length: Option<usize>,
    /// Print the trainer's progress bars to stderr.
    pub show_progress: bool,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            vocab_size: DEFAULT_VOCAB_SIZE,
            min_frequency: 2,
            special_tokens: SPECIAL_TOKENS.iter().map(|s| s.to_string()).collect(),
            max_token_length: None,
            show_progress: false,
        }
    }
}

impl TrainOptions {
    fn validate(&self) -> Result<()> {
        let mut seen = std::collections::HashSet::new();
        for token in &self.special_tokens {
            if token.is_empty() {
                return Err(TokensError::BadOptions("a special token is empty".into()));
            }
            if !seen.insert(token) {
                return Err(TokensError::BadOptions(format!("special token {token:?} given twice")));
            }
        }
        let floor = 256 + self.special_tokens.len();
        if self.vocab_size < floor {
            return Err(TokensError::BadOptions(format!(
                "vocab_size {} is below the 256 byte tokens + {} special tokens = {floor}",
                self.vocab_size,
                self.special_tokens.len()
            )));
        }
        if self.vocab_size > u32::MAX as usize {
            return Err(TokensError::BadOptions(format!("vocab_size {} does not fit u32 ids", self.vocab_size)));
        }
        if self.max_token_length == Some(0) {
            return Err(TokensError::BadOptions("max_token_length must be positive".into()));
        }
        Ok(())
    }
}

/// The untrained pipeline: GPT-2 regex split + byte mapping, byte-level decode.
/// Shared with the GGUF import so both build identical tokenizers.
pub(crate) fn gpt2_pipeline(model: BPE) -> tokenizers::Tokenizer {
    let mut tok = tokenizers::Tokenizer::new(model);
    // add_prefix_space=false: a leading space would change the first token of
    // every document; trim_offsets only affects offsets; use_regex=true is the
    // GPT-2 split (contractions, letters, digits, punctuation, whitespace runs).
    let byte_level = ByteLevel::new(false, true, true);
    tok.with_pre_tokenizer(Some(byte_level));
    tok.with_decoder(Some(byte_level));
    tok
}

/// Trains a byte-level BPE on `texts` (one document each).
pub fn train_bpe<I, S>(texts: I, options: &TrainOptions) -> Result<Tokenizer>
where
    I: Iterator<Item = S> + Send,
    S: AsRef<str> + Send,
{
    options.validate()?;
    let special: Vec<AddedToken> =
        options.special_tokens.iter().map(|t| AddedToken::from(t.clone(), true)).collect();
    let trainer = BpeTrainerBuilder::new()
        .vocab_size(options.vocab_size)
        .min_frequency(options.min_frequency)
        .show_progress(options.show_progress)
        .special_tokens(special)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .max_token_length(options.max_token_length)
        .build();
    let mut trainer = TrainerWrapper::BpeTrainer(trainer);
    let mut tok = gpt2_pipeline(BPE::default());
    tok.train(&mut trainer, texts).map_err(|e| TokensError::Tokenizer(format!("training failed: {e}")))?;
    let tok = Tokenizer::from_inner(tok)?;
    // The trainer puts special tokens first; a tokenizer whose ids moved would
    // silently break every data directory built with the expected ids.
    for (want, token) in options.special_tokens.iter().enumerate() {
        if tok.token_to_id(token) != Some(want as u32) {
            return Err(TokensError::Tokenizer(format!("special token {token:?} did not get id {want}")));
        }
    }
    Ok(tok)
}

/// Trains on whole files, each one document. A file that cannot be read or
/// is not UTF-8 is an error (filter the corpus first).
pub fn train_bpe_files<P: AsRef<Path> + Sync>(paths: &[P], options: &TrainOptions) -> Result<Tokenizer> {
    let failure: Mutex<Option<TokensError>> = Mutex::new(None);
    let texts = paths.iter().map_while(|p| {
        let path: PathBuf = p.as_ref().into();
        let read = std::fs::read(&path).map_err(|e| TokensError::io(&path, e)).and_then(|bytes| {
            String::from_utf8(bytes)
                .map_err(|_| TokensError::BadFile { path: path.clone(), message: "not UTF-8 text".into() })
        });
        match read {
            Ok(text) => Some(text),
            Err(e) => {
                *failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                None
            }
        }
    });
    let tok = train_bpe(texts, options);
    if let Some(e) = failure.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    tok
}
