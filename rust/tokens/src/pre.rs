//! llama.cpp's pre-tokenizer splits for byte-level BPE (`tokenizer.ggml.model
//! = "gpt2"`), keyed by `tokenizer.ggml.pre`.
//!
//! llama.cpp (src/llama-vocab.cpp, the `llm_tokenizer_bpe` constructor) gives
//! each pre-tokenizer a list of regexes; `unicode_regex_split` applies them in
//! order, each one to every piece the previous ones left, keeping matched and
//! unmatched stretches as separate pieces. That is a `Sequence` of `Split`
//! pre-tokenizers with `SplitDelimiterBehavior::Isolated`, followed by the
//! GPT-2 byte mapping (`ByteLevel` without its own regex). The regex strings
//! below are llama.cpp's, character for character. Where llama.cpp runs a
//! hand-written fast path instead of the regex (the GPT-2, LLaMA 3 and Qwen2
//! patterns) the fast path implements the same pattern; the GPT-2 fast path
//! also takes a lone whitespace char that the pattern leaves unmatched as a
//! piece of its own, which is what `Isolated` does with unmatched text.
//!
//! Some pre-tokenizers also change the BPE itself: `ignore_merges` (LLaMA 3)
//! makes a pre-token that is in the vocabulary that one token.
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::SplitDelimiterBehavior;

use crate::error::{Result, TokensError};

/// GPT-2's pattern (llama.cpp's `LLAMA_VOCAB_PRE_TYPE_GPT2`; also the second
/// step of `default`, `starcoder` and `refact`).
pub const GPT2_REGEX: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";

/// LLaMA 3's pattern as llama.cpp writes it (the `(?i:...)` contractions
/// spelled out as case classes).
pub const LLAMA3_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Qwen2's pattern: LLaMA 3's with single digits.
pub const QWEN2_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// llama.cpp's `default` list (used for `pre = "default"` and when `pre` is
/// absent): punctuation runs, then GPT-2, then digit runs, then threes of
/// ASCII digits.
pub const DEFAULT_REGEXES: [&str; 4] = [r"[\p{P}\$\+<=>\^~\|]+", GPT2_REGEX, r"\p{N}+", r"[0-9][0-9][0-9]"];

/// StarCoder / Refact: single digits, then GPT-2.
pub const STARCODER_REGEXES: [&str; 2] = [r"\p{N}", GPT2_REGEX];

/// How one `tokenizer.ggml.pre` value tokenizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PreSplit {
    /// The name llama.cpp's pre type is known by (`pre` may be an alias).
    pub canonical: &'static str,
    /// Regexes applied in sequence.
    pub regexes: &'static [&'static str],
    /// A pre-token that is itself in the vocabulary becomes that token.
    pub ignore_merges: bool,
}

const GPT2: PreSplit = PreSplit { canonical: "gpt-2", regexes: &[GPT2_REGEX], ignore_merges: false };
const DEFAULT: PreSplit = PreSplit { canonical: "default", regexes: &DEFAULT_REGEXES, ignore_merges: false };
const LLAMA3: PreSplit = PreSplit { canonical: "llama-bpe", regexes: &[LLAMA3_REGEX], ignore_merges: true };
const QWEN2: PreSplit = PreSplit { canonical: "qwen2", regexes: &[QWEN2_REGEX], ignore_merges: false };
const STARCODER: PreSplit = PreSplit { canonical: "starcoder", regexes: &STARCODER_REGEXES, ignore_merges: false };

/// Every accepted `tokenizer.ggml.pre` value ("" stands for an absent key).
pub const SUPPORTED_PRE: [&str; 10] =
    ["gpt-2", "phi-2", "mpt", "default", "llama-bpe", "llama3", "llama-v3", "qwen2", "starcoder", "refact"];

/// The split for a `tokenizer.ggml.pre` value; "" (absent) is llama.cpp's
/// `default`, as in llama.cpp.
pub fn pre_split(pre: &str) -> Result<PreSplit> {
    Ok(match pre {
        "gpt-2" | "phi-2" | "mpt" => GPT2,
        "" | "default" => DEFAULT,
        "llama-bpe" | "llama3" | "llama-v3" => LLAMA3,
        "qwen2" => QWEN2,
        "starcoder" | "refact" => STARCODER,
        other => {
            return Err(TokensError::Unsupported(format!(
                "tokenizer.ggml.pre {other:?} (supported: {}, or absent for \"default\")",
                SUPPORTED_PRE.join(", ")
            )))
        }
    })
}

impl PreSplit {
    /// The `tokenizers` pre-tokenizer: one isolating `Split` per regex, then
    /// the byte mapping.
    pub fn pre_tokenizer(&self) -> Result<PreTokenizerWrapper> {
        let mut steps = Vec::with_capacity(self.regexes.len() + 1);
        for regex in self.regexes {
            let split = Split::new(SplitPattern::Regex(regex.to_string()), SplitDelimiterBehavior::Isolated, false)
                .map_err(|e| TokensError::Tokenizer(format!("pre-tokenizer regex {regex:?}: {e}")))?;
            steps.push(PreTokenizerWrapper::Split(split));
        }
        steps.push(PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, false)));
        Ok(PreTokenizerWrapper::Sequence(Sequence::new(steps)))
    }
}
