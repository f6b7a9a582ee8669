//! Generation: prefill the prompt (GEMM), then one decode step (GEMV) per new token, as a
//! streaming iterator. Stop ids and the model's EOS end it (excluded from the output); stop
//! strings are matched on the bytes of the generated tokens and stripped: the output is the
//! longest run of whole tokens whose text ends before the match. While a stop string may still
//! be forming, the tokens that could belong to it are held back, so a stream never yields ids
//! it would have to take back.

use std::sync::Arc;

use crate::error::{invalid_arg, EngineError, Result};
use crate::forward::KvCache;
use crate::model::Model;
use crate::sampling::{restrict_to, sample, Rng, SamplingParams};

pub struct Generation {
    model: Arc<Model>,
    params: SamplingParams,
    cache: KvCache,
    rng: Rng,
    prompt: Vec<u32>,
    /// Prompt + generated ids (the repetition-penalty window).
    history: Vec<u32>,
    generated: Vec<u32>,
    /// Byte length of the text of `generated[..k]` for every k (stop strings only).
    text_ends: Vec<usize>,
    text: Vec<u8>,
    /// Ids of `generated` that may be yielded (the rest might belong to a stop string).
    releasable: usize,
    emitted: usize,
    done: bool,
}

/// Checks a prompt and the settings against the model before any work.
pub fn check_request(model: &Model, prompt: &[u32], params: &SamplingParams) -> Result<()> {
    params.validate()?;
    let c = &model.config;
    if prompt.is_empty() {
        return Err(invalid_arg("the prompt is empty"));
    }
    if let Some(&bad) = prompt.iter().find(|&&id| id as usize >= c.vocab_size) {
        return Err(invalid_arg(format!("prompt token id {bad} is outside the vocabulary (size {})", c.vocab_size)));
    }
    if prompt.len() + params.max_new_tokens > c.max_seq_len {
        return Err(invalid_arg(format!(
            "prompt ({} tokens) + max_new_tokens ({}) exceeds the context length {}",
            prompt.len(),
            params.max_new_tokens,
            c.max_seq_len
        )));
    }
    if let Some(&bad) = params.first_token_ids.iter().find(|&&id| id as usize >= c.vocab_size) {
        return Err(invalid_arg(format!("first_token_ids: id {bad} is outside the vocabulary (size {})", c.vocab_size)));
    }
    if !params.stop_strings.is_empty() && model.vocab.is_none() {
        return Err(invalid_arg("stop_strings need a tokenizer, and this model has none"));
    }
    Ok(())
}

impl Generation {
    pub fn new(model: Arc<Model>, prompt: &[u32], params: SamplingParams) -> Result<Self> {
        check_request(&model, prompt, &params)?;
        let cache = KvCache::new(&model, prompt.len() + params.max_new_tokens);
        Ok(Self {
            rng: Rng::new(params.seed),
            model,
            cache,
            prompt: prompt.to_vec(),
            history: prompt.to_vec(),
            generated: Vec::new(),
            text_ends: vec![0],
            text: Vec::new(),
            releasable: 0,
            emitted: 0,
            done: false,
            params,
        })
    }

    /// The KV cache (for its size).
    pub fn cache(&self) -> &KvCache {
        &self.cache
    }

    /// Samples one more token; updates `releasable` and `done`.
    fn step(&mut self) -> Result<()> {
        if self.generated.len() >= self.params.max_new_tokens {
            self.finish(self.generated.len());
            return Ok(());
        }
        let mut logits = if self.cache.is_empty() {
            self.model.forward(&mut self.cache, &self.prompt, false)?
        } else {
            let last = *self.generated.last().ok_or_else(|| EngineError::Numerical("empty generation state".into()))?;
            self.model.forward(&mut self.cache, &[last], false)?
        };
        if self.generated.is_empty() {
            restrict_to(&mut logits, &self.params.first_token_ids);
        }
        let token = sample(&mut logits, &self.history, &self.params, &mut self.rng);
        let is_eos = !self.params.ignore_eos && self.model.eos_id == Some(token);
        if is_eos || self.params.stop_ids.contains(&token) {
            self.finish(self.generated.len());
            return Ok(());
        }
        self.generated.push(token);
        self.history.push(token);
        if self.params.stop_strings.is_empty() {
            self.releasable = self.generated.len();
            return Ok(());
        }
        let vocab = self.model.vocab.as_ref().ok_or_else(|| invalid_arg("stop_strings need a tokenizer"))?;
        self.text.extend_from_slice(vocab.token_bytes(token));
        self.text_ends.push(self.text.len());
        let stops = &self.params.stop_strings;
        if let Some(at) = stops.iter().filter_map(|s| find(&self.text, s.as_bytes())).min() {
            let keep = self.tokens_within(at);
            self.generated.truncate(keep);
            self.finish(keep);
            return Ok(());
        }
        // Hold back the longest tail that is a proper prefix of some stop string.
        let hold = stops.iter().map(|s| partial_suffix(&self.text, s.as_bytes())).max().unwrap_or(0);
        self.releasable = self.tokens_within(self.text.len() - hold);
        Ok(())
    }

    /// Number of leading generated tokens whose text fits in the first `bytes` bytes.
    fn tokens_within(&self, bytes: usize) -> usize {
        self.text_ends.iter().rposition(|&e| e <= bytes).unwrap_or(0)
    }

    fn finish(&mut self, releasable: usize) {
        self.releasable = releasable;
        self.done = true;
    }

    /// Every remaining id (the whole generation when nothing was streamed yet).
    pub fn collect_all(mut self) -> Result<Vec<u32>> {
        let mut out = Vec::new();
        for id in &mut self {
            out.push(id?);
        }
        Ok(out)
    }
}

impl Iterator for Generation {
    type Item = Result<u32>;

    fn next(&mut self) -> Option<Result<u32>> {
        loop {
            if self.emitted < self.releasable {
                self.emitted += 1;
                return Some(Ok(self.generated[self.emitted - 1]));
            }
            if self.done {
                return None;
            }
            if let Err(e) = self.step() {
                self.done = true;
                self.releasable = self.emitted;
                return Some(Err(e));
            }
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Length of the longest suffix of `text` that is a proper prefix of `stop`.
fn partial_suffix(text: &[u8], stop: &[u8]) -> usize {
    (1..stop.len().min(text.len() + 1)).rev().find(|&k| text.ends_with(&stop[..k])).unwrap_or(0)
}

/// New ids for each prompt (run one after another; each uses all kernel threads).
pub fn generate(model: &Arc<Model>, prompts: &[Vec<u32>], params: &SamplingParams) -> Result<Vec<Vec<u32>>> {
    if prompts.is_empty() {
        return Err(invalid_arg("no prompts given"));
    }
    for (i, p) in prompts.iter().enumerate() {
        check_request(model, p, params).map_err(|e| invalid_arg(format!("prompt {i}: {e}")))?;
    }
    prompts.iter().map(|p| Generation::new(model.clone(), p, params.clone())?.collect_all()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_suffix_finds_the_forming_stop_string() {
        assert_eq!(partial_suffix(b"hello wo", b"world"), 2);
        assert_eq!(partial_suffix(b"hello", b"world"), 0);
        assert_eq!(partial_suffix(b"w", b"world"), 1);
        assert_eq!(find(b"abcabd", b"abd"), Some(3));
    }
}
