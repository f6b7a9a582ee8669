//! SentencePiece-style vocabularies (`tokenizer.ggml.model = "llama"`), built
//! to tokenize like llama.cpp's `llm_tokenizer_spm`:
//!
//! * spaces become U+2581 `▁`, and a `▁` is prepended to the text (and to the
//!   text after each added token) when `add_space_prefix` (llama.cpp's default
//!   for this model);
//! * starting from single chars, the adjacent pair whose concatenation is the
//!   highest-scoring vocabulary token is merged, leftmost first on ties, until
//!   no pair forms a token;
//! * a char that is not a token becomes its UTF-8 bytes as `<0xNN>` tokens
//!   (the unknown token where the vocabulary has no byte tokens).
//!
//! Expressed with `tokenizers` components, as Hugging Face's `SpmConverter`
//! does, so the result serialises to `tokenizer.json`: normalizer
//! `Prepend("▁")` + `Replace(" ", "▁")`; no pre-tokenizer; BPE with
//! `byte_fallback` whose merges are every split `left + right = token` with
//! both halves in the vocabulary, ranked by the token's score (highest
//! first); decoder `Replace("▁", " ")`, `ByteFallback`, `Fuse` and, with the
//! prefix, `Strip` of one leading space.
//!
//! Equivalence with llama.cpp: BPE merges the lowest-ranked pair first and
//! breaks rank ties leftmost, so two occurrences of one pair (or two pairs
//! with different scores) go exactly as in llama.cpp. The one case that can
//! differ is two *overlapping* candidate pairs that form *different* tokens
//! with *exactly equal* scores: llama.cpp takes the leftmost, the ranks here
//! take the token with the lower id. (Also: llama.cpp lets a char that is not
//! itself a token merge with a neighbour into a token; here such a char goes
//! to bytes at once.) SentencePiece-trained vocabularies give every piece its
//! own score and contain every char of every piece, so either needs a
//! hand-made vocabulary. A missing
//! `tokenizer.ggml.scores` (llama.cpp reads it as all zeros, making every
//! merge such a tie) is therefore refused rather than approximated.
use ahash::AHashMap;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::{Prepend, Replace, Sequence as NormalizerSequence};
use tokenizers::{AddedToken, NormalizerWrapper};

use crate::error::{Result, TokensError};
use crate::gguf_vocab::{GgufVocab, TokenType};
use crate::Tokenizer;

/// SentencePiece's word-boundary marker, which stands for a space.
pub const SPM_SPACE: &str = "\u{2581}";

fn bad(message: String) -> TokensError {
    TokensError::BadVocab(message)
}

/// Builds the tokenizer of an SPM (`llama`) GGUF vocabulary.
pub(crate) fn spm_tokenizer(vocab: &GgufVocab) -> Result<Tokenizer> {
    let tokens = &vocab.tokens;
    if tokens.is_empty() {
        return Err(bad("the token list is empty".into()));
    }
    if tokens.len() > u32::MAX as usize {
        return Err(bad("more tokens than u32 ids".into()));
    }
    // `tokenizer.ggml.merges`, if a converter wrote any, is ignored, as llama.cpp ignores it for
    // this model: the merges come from the scores.
    let scores = vocab.scores.as_deref().ok_or_else(|| {
        TokensError::Unsupported(
            "a \"llama\" (SentencePiece) vocabulary needs tokenizer.ggml.scores: the merge order comes from them"
                .into(),
        )
    })?;
    if scores.len() != tokens.len() {
        return Err(bad(format!("{} scores for {} tokens", scores.len(), tokens.len())));
    }
    if let Some(id) = scores.iter().position(|s| !s.is_finite()) {
        return Err(bad(format!("score of token {id} ({:?}) is {}", tokens[id], scores[id])));
    }
    let types = &vocab.token_types;
    if types.len() != tokens.len() {
        return Err(bad(format!("{} token types for {} tokens", types.len(), tokens.len())));
    }
    let mut ids: AHashMap<String, u32> = AHashMap::with_capacity(tokens.len());
    for (id, token) in tokens.iter().enumerate() {
        if token.is_empty() {
            return Err(bad(format!("token {id} is empty")));
        }
        if ids.insert(token.clone(), id as u32).is_some() {
            return Err(bad(format!("token {token:?} appears twice (again at id {id})")));
        }
    }

    // Every way to form a token from two tokens, highest token score first;
    // among equal scores the lower token id, then the lower left and right ids
    // (the order `SpmConverter` gives).
    let mut candidates: Vec<(f32, u32, u32, u32, usize)> = Vec::new();
    for (id, token) in tokens.iter().enumerate() {
        for (cut, _) in token.char_indices().skip(1) {
            if let (Some(&l), Some(&r)) = (ids.get(&token[..cut]), ids.get(&token[cut..])) {
                candidates.push((scores[id], id as u32, l, r, cut));
            }
        }
    }
    candidates.sort_by(|a, b| b.0.total_cmp(&a.0).then((a.1, a.2, a.3).cmp(&(b.1, b.2, b.3))));
    let merges: Vec<(String, String)> = candidates
        .iter()
        .map(|&(_, id, _, _, cut)| {
            let token = &tokens[id as usize];
            (token[..cut].to_string(), token[cut..].to_string())
        })
        .collect();

    let unk = types.iter().position(|&t| t == TokenType::Unknown as i32).map(|i| tokens[i].clone());
    let mut builder = BPE::builder().vocab_and_merges(ids, merges).byte_fallback(true).fuse_unk(true);
    if let Some(unk) = unk {
        builder = builder.unk_token(unk);
    }
    let model = builder.build().map_err(|e| bad(e.to_string()))?;

    let prefix = vocab.add_space_prefix.unwrap_or(true);
    let escape = NormalizerWrapper::Replace(Replace::new(" ", SPM_SPACE).map_err(crate::error::tk)?);
    let normalizer = if prefix {
        NormalizerWrapper::Sequence(NormalizerSequence::new(vec![
            NormalizerWrapper::Prepend(Prepend::new(SPM_SPACE.into())),
            escape,
        ]))
    } else {
        escape
    };
    let mut decoders = vec![
        DecoderWrapper::Replace(Replace::new(SPM_SPACE, " ").map_err(crate::error::tk)?),
        DecoderWrapper::ByteFallback(ByteFallback::new()),
        DecoderWrapper::Fuse(Fuse::new()),
    ];
    if prefix {
        decoders.push(DecoderWrapper::Strip(Strip::new(' ', 1, 0)));
    }

    let mut tok = tokenizers::Tokenizer::new(model);
    tok.with_normalizer(Some(normalizer));
    tok.with_decoder(Some(DecoderWrapper::Sequence(DecoderSequence::new(decoders))));
    // llama.cpp matches control and user-defined tokens in the raw text (before
    // the space escaping), so they are not normalized.
    let mut special = Vec::new();
    let mut user = Vec::new();
    for (token, &kind) in tokens.iter().zip(types) {
        if kind == TokenType::Control as i32 {
            special.push(AddedToken::from(token.clone(), true).normalized(false));
        } else if kind == TokenType::UserDefined as i32 {
            user.push(AddedToken::from(token.clone(), false).normalized(false));
        }
    }
    tok.add_special_tokens(&special);
    tok.add_tokens(&user);
    Tokenizer::from_inner(tok)
}
