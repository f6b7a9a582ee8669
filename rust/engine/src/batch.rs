//! Continuous batching: one forward over the tokens of many sequences, and a scheduler that
//! decodes every running sequence in one step.
//!
//! [`Model::forward_batch`] concatenates the new tokens of every sequence (one per decoding
//! sequence, a chunk of the prompt for a prefilling one) into one activation matrix, so every
//! block matrix is one GEMM over all of them: each weight is read once per step for the whole
//! batch. Attention runs per sequence against its own [`KvCache`] at its own position. Every
//! row goes through exactly the operations a single-sequence [`Model::forward`] gives it (the
//! kernels' GEMM and GEMV give bit-identical rows, and attention is per token and head), so a
//! batched greedy decode yields exactly the tokens of a single-sequence one.
//!
//! [`Scheduler`] holds waiting and running sequences. Each [`Scheduler::step`] admits waiting
//! requests (first come, first served) while the batch has room and their KV cache fits the
//! memory budget, feeds one token of every decoding sequence plus up to `prefill_chunk` prompt
//! tokens of prefilling ones (chunked prefill: a long prompt never stalls running streams for
//! more than one chunk), samples, and frees finished sequences at once. [`Scheduler::cancel`]
//! frees a sequence immediately.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::error::{invalid_arg, Result};
use crate::forward::{apply_rope, attention, copy_frozen, KvCache};
use crate::generate::check_request;
use crate::linear::{forward_many, Input};
use kernels::for_each_chunk;
use crate::model::{Layer, Model};
use crate::sampling::{restrict_to, sample, Rng, SamplingParams};

/// The new tokens of one sequence in a batched forward.
pub struct Segment<'a> {
    /// The sequence's cache; the tokens run at positions `cache.len()..`.
    pub cache: &'a mut KvCache,
    pub ids: &'a [u32],
    /// Whether to return the logits of the segment's last token.
    pub logits: bool,
}

fn attention_block_batch(model: &Model, layer: &Layer, li: usize, h: &[f32], segments: &mut [Segment<'_>], frozen: &[Option<usize>]) -> Result<Vec<f32>> {
    let c = &model.config;
    let (d, kvd) = (c.dim, c.kv_dim());
    if h.is_empty() {
        let mut row = 0;
        for seg in segments.iter_mut() {
            let (n, pos0) = (seg.ids.len(), seg.cache.len);
            seg.cache.reserve(pos0 + n);
            copy_frozen(seg.cache, li, pos0, &frozen[row..row + n]);
            row += n;
        }
        return Ok(Vec::new());
    }
    let total = h.len() / d;
    let input = Input::new(h, total);
    let [mut q, mut k, v]: [Vec<f32>; 3] = forward_many(&[&layer.wq, &layer.wk, &layer.wv], &input, model.residency)?
        .try_into()
        .expect("three products");
    let mut y = Vec::with_capacity(total * d);
    let mut row = 0;
    for seg in segments.iter_mut() {
        let (n, pos0) = (seg.ids.len(), seg.cache.len);
        let qs = &mut q[row * d..(row + n) * d];
        apply_rope(model, qs, d, pos0);
        let ks = &mut k[row * kvd..(row + n) * kvd];
        apply_rope(model, ks, kvd, pos0);
        seg.cache.reserve(pos0 + n);
        seg.cache.write(li, ks, &v[row * kvd..(row + n) * kvd], n);
        copy_frozen(seg.cache, li, pos0, &frozen[row..row + n]);
        y.extend(attention(model, qs, seg.cache, li, n, pos0));
        row += n;
    }
    layer.wo.forward(&y, total, model.residency)
}

impl Model {
    /// Logits of `n` final hidden states (row-major `n × dim`, after the output norm): the LM
    /// head as one product over all rows (a Q8_0 head, the largest matrix a decode step reads,
    /// reads each row once for all of them, each row's dots bit for bit those of one token).
    pub fn head_logits(&self, h: &[f32], n: usize) -> Result<Vec<f32>> {
        self.head.forward(h, n, self.residency)
    }

    /// Runs every segment's tokens as one batch (every block matrix one product over all of
    /// them); returns, per segment, the logits of its last token when it asked for them.
    pub fn forward_batch(&self, segments: &mut [Segment<'_>]) -> Result<Vec<Option<Vec<f32>>>> {
        if segments.is_empty() {
            return Err(invalid_arg("no sequences to run"));
        }
        for (i, seg) in segments.iter().enumerate() {
            self.check_tokens(seg.cache.len, seg.ids).map_err(|e| invalid_arg(format!("sequence {i}: {e}")))?;
        }
        let max_len = self.config.max_seq_len;
        for seg in segments.iter_mut() {
            seg.cache.capacity = seg.cache.capacity.max(seg.cache.len + seg.ids.len()).min(max_len);
        }
        let n_tok: usize = segments.iter().map(|s| s.ids.len()).sum();
        // The last row of every segment that wants logits, through the head as one product.
        let mut logit_rows = Vec::new();
        let mut end = 0;
        for seg in segments.iter() {
            end += seg.ids.len();
            if seg.logits {
                logit_rows.push(end - 1);
            }
        }
        let ids: Vec<u32> = segments.iter().flat_map(|s| s.ids.iter().copied()).collect();
        let logits = self.run(ids.into_iter(), n_tok, &logit_rows, |layer, li, h, frozen| attention_block_batch(self, layer, li, h, segments, frozen))?;
        for seg in segments.iter_mut() {
            seg.cache.len += seg.ids.len();
        }
        let mut chunks = logits.chunks_exact(self.config.vocab_size);
        Ok(segments.iter().map(|seg| if seg.logits { chunks.next().map(|l| l.to_vec()) } else { None }).collect())
    }
}

/// Scheduler limits.
#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    /// Most sequences running at once (decoding or prefilling).
    pub max_batch: usize,
    /// Most prompt tokens fed in one step (over all prefilling sequences).
    pub prefill_chunk: usize,
    /// Bytes of KV cache all running sequences may hold together. A sequence reserves its
    /// whole need (prompt + max_new_tokens positions) when it is admitted.
    pub kv_budget_bytes: usize,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self { max_batch: 16, prefill_chunk: 256, kv_budget_bytes: 1 << 30 }
    }
}

/// Why a sequence ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Finish {
    /// EOS or a stop id (not emitted).
    Stop,
    /// max_new_tokens reached.
    Length,
    /// The batch's forward failed; the sequence was dropped.
    Error(String),
}

/// One generated token, with its log-probability under the model (log-softmax of the raw
/// logits) and the most likely alternatives when they were asked for.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenOut {
    pub id: u32,
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

/// What one step did to one sequence.
#[derive(Clone, Debug, PartialEq)]
pub struct SeqEvent {
    pub id: u64,
    /// New tokens (at most one per step).
    pub tokens: Vec<TokenOut>,
    /// Set when the sequence ended in this step (it is already freed).
    pub finish: Option<Finish>,
}

struct Seq {
    id: u64,
    params: SamplingParams,
    /// Alternatives per token to report (`None`: no log-probabilities at all).
    logprobs: Option<usize>,
    cache: Option<KvCache>,
    rng: Rng,
    prompt_len: usize,
    /// Prompt + generated ids.
    history: Vec<u32>,
    /// Ids of `history` already in the cache.
    fed: usize,
    generated: usize,
    /// KV bytes reserved for this sequence.
    need: usize,
}

/// Continuous-batching scheduler over one model.
pub struct Scheduler {
    model: Arc<Model>,
    config: SchedulerConfig,
    running: Vec<Seq>,
    waiting: VecDeque<Seq>,
    next_id: u64,
    reserved: usize,
}

/// Most alternatives per token [`Scheduler::add`] accepts (OpenAI's limit for completions).
pub const MAX_TOP_LOGPROBS: usize = 20;

impl Scheduler {
    pub fn new(model: Arc<Model>, config: SchedulerConfig) -> Result<Self> {
        if config.max_batch < 1 {
            return Err(invalid_arg("max_batch must be at least 1"));
        }
        if config.prefill_chunk < 1 {
            return Err(invalid_arg("prefill_chunk must be at least 1"));
        }
        Ok(Self { model, config, running: Vec::new(), waiting: VecDeque::new(), next_id: 0, reserved: 0 })
    }

    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    /// KV-cache bytes of one position (keys and values of every layer).
    pub fn kv_bytes_per_position(&self) -> usize {
        let c = &self.model.config;
        2 * c.n_layers * c.loops() * c.kv_dim() * self.model.kv_precision.bytes()
    }

    /// Queues a request; returns its id. Refused (an error, nothing queued) when the request is
    /// invalid or its KV cache alone exceeds the budget.
    pub fn add(&mut self, prompt: &[u32], params: SamplingParams, logprobs: Option<usize>) -> Result<u64> {
        check_request(&self.model, prompt, &params)?;
        if !params.stop_strings.is_empty() {
            return Err(invalid_arg("the scheduler matches no stop strings (match them on the decoded text)"));
        }
        if let Some(k) = logprobs {
            if k > MAX_TOP_LOGPROBS {
                return Err(invalid_arg(format!("at most {MAX_TOP_LOGPROBS} top log-probabilities per token, got {k}")));
            }
        }
        let need = (prompt.len() + params.max_new_tokens) * self.kv_bytes_per_position();
        if need > self.config.kv_budget_bytes {
            return Err(invalid_arg(format!(
                "the request needs {need} bytes of KV cache ({} positions), more than the budget of {} bytes",
                prompt.len() + params.max_new_tokens,
                self.config.kv_budget_bytes
            )));
        }
        let id = self.next_id;
        self.next_id += 1;
        self.waiting.push_back(Seq {
            id,
            rng: Rng::new(params.seed),
            params,
            logprobs,
            cache: None,
            prompt_len: prompt.len(),
            history: prompt.to_vec(),
            fed: 0,
            generated: 0,
            need,
        });
        Ok(id)
    }

    /// Drops a waiting or running sequence and frees its cache now; false when it is unknown
    /// (finished or never added).
    pub fn cancel(&mut self, id: u64) -> bool {
        if let Some(i) = self.running.iter().position(|s| s.id == id) {
            let seq = self.running.remove(i);
            self.reserved -= seq.need;
            return true;
        }
        if let Some(i) = self.waiting.iter().position(|s| s.id == id) {
            self.waiting.remove(i);
            return true;
        }
        false
    }

    pub fn running(&self) -> usize {
        self.running.len()
    }

    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    pub fn is_idle(&self) -> bool {
        self.running.is_empty() && self.waiting.is_empty()
    }

    /// KV bytes reserved by the running sequences.
    pub fn reserved_bytes(&self) -> usize {
        self.reserved
    }

    /// KV bytes the running sequences' caches hold now.
    pub fn kv_bytes(&self) -> usize {
        self.running.iter().filter_map(|s| s.cache.as_ref()).map(|c| c.bytes()).sum()
    }

    fn admit(&mut self) {
        while self.running.len() < self.config.max_batch {
            let Some(front) = self.waiting.front() else { break };
            if self.reserved + front.need > self.config.kv_budget_bytes {
                break; // first come, first served: wait for memory to free up
            }
            let mut seq = self.waiting.pop_front().expect("front exists");
            seq.cache = Some(KvCache::new(&self.model, seq.prompt_len + seq.params.max_new_tokens));
            self.reserved += seq.need;
            self.running.push(seq);
        }
    }

    /// Admits waiting requests, runs one batched forward and samples; returns what happened to
    /// every sequence that got a token or ended. Empty when there is nothing to do.
    pub fn step(&mut self) -> Vec<SeqEvent> {
        self.admit();
        if self.running.is_empty() {
            return Vec::new();
        }
        let model = self.model.clone();
        let mut chunk_left = self.config.prefill_chunk;
        let mut members = Vec::new();
        let mut segments = Vec::new();
        for (i, seq) in self.running.iter_mut().enumerate() {
            let left = seq.history.len() - seq.fed;
            let take = if seq.fed >= seq.prompt_len {
                1 // decoding: the last sampled token
            } else {
                let take = left.min(chunk_left);
                chunk_left -= take;
                take
            };
            if take == 0 {
                continue;
            }
            let ids = &seq.history[seq.fed..seq.fed + take];
            let cache = seq.cache.as_mut().expect("running sequences have a cache");
            members.push((i, take));
            segments.push(Segment { cache, ids, logits: take == left });
        }
        let result = model.forward_batch(&mut segments);
        drop(segments);
        let mut events = Vec::new();
        let mut done = vec![false; self.running.len()];
        match result {
            Err(e) => {
                for &(i, _) in &members {
                    let seq = &self.running[i];
                    events.push(SeqEvent { id: seq.id, tokens: Vec::new(), finish: Some(Finish::Error(e.to_string())) });
                    done[i] = true;
                }
            }
            Ok(logits) => {
                let mut pending = Vec::new();
                for (&(i, take), logits) in members.iter().zip(logits) {
                    self.running[i].fed += take;
                    if let Some(logits) = logits {
                        pending.push((i, logits));
                    }
                }
                // Sampling (and log-probabilities) of every sequence in parallel on the kernel
                // team: with a 50k vocabulary it is a real part of a batched step.
                let mut pending = pending.into_iter().peekable();
                let mut draws = Vec::new();
                for (i, seq) in self.running.iter_mut().enumerate() {
                    if pending.peek().is_some_and(|p| p.0 == i) {
                        let (_, logits) = pending.next().expect("peeked");
                        draws.push(Draw { index: i, seq, logits, token: 0, report: None });
                    }
                }
                for_each_chunk(&mut draws, 1, |_, d| {
                    let d = &mut d[0];
                    if d.seq.generated == 0 {
                        restrict_to(&mut d.logits, &d.seq.params.first_token_ids);
                    }
                    d.report = d.seq.logprobs.map(|k| log_probs(&d.logits, k));
                    d.token = sample(&mut d.logits, &d.seq.history, &d.seq.params, &mut d.seq.rng);
                });
                for Draw { index: i, seq, token, report, .. } in draws {
                    let is_eos = !seq.params.ignore_eos && model.eos_id == Some(token);
                    if is_eos || seq.params.stop_ids.contains(&token) {
                        events.push(SeqEvent { id: seq.id, tokens: Vec::new(), finish: Some(Finish::Stop) });
                        done[i] = true;
                        continue;
                    }
                    seq.history.push(token);
                    seq.generated += 1;
                    let out = match report {
                        Some((lse, top)) => TokenOut { id: token, logprob: logits_raw_at(&lse, token) as f32, top },
                        None => TokenOut { id: token, logprob: f32::NAN, top: Vec::new() },
                    };
                    let finish = (seq.generated >= seq.params.max_new_tokens).then_some(Finish::Length);
                    done[i] = finish.is_some();
                    events.push(SeqEvent { id: seq.id, tokens: vec![out], finish });
                }
            }
        }
        let mut i = 0;
        let mut freed = 0;
        self.running.retain(|s| {
            let keep = !done[i];
            if !keep {
                freed += s.need;
            }
            i += 1;
            keep
        });
        self.reserved -= freed;
        events
    }
}

/// One sequence's sampling in a step: its logits in, its token (and log-probabilities) out.
struct Draw<'a> {
    index: usize,
    seq: &'a mut Seq,
    logits: Vec<f32>,
    token: u32,
    report: Option<(LogSoftmax, Vec<(u32, f32)>)>,
}

/// Log-softmax of the raw logits: the whole vector (for the sampled token) and its `k` largest
/// entries, highest first (lowest id on ties).
struct LogSoftmax {
    logits: Vec<f32>,
    lse: f64,
}

fn logits_raw_at(ls: &LogSoftmax, id: u32) -> f64 {
    ls.logits[id as usize] as f64 - ls.lse
}

fn log_probs(logits: &[f32], k: usize) -> (LogSoftmax, Vec<(u32, f32)>) {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
    let sum: f64 = logits.iter().map(|&v| (v as f64 - max).exp()).sum();
    let lse = max + sum.ln();
    let mut top: Vec<(u32, f32)> = Vec::new();
    if k > 0 {
        let mut idx: Vec<u32> = (0..logits.len() as u32).collect();
        let desc = |a: &u32, b: &u32| logits[*b as usize].total_cmp(&logits[*a as usize]).then(a.cmp(b));
        let k = k.min(idx.len());
        if k < idx.len() {
            idx.select_nth_unstable_by(k - 1, desc);
            idx.truncate(k);
        }
        idx.sort_by(desc);
        top = idx.iter().map(|&i| (i, (logits[i as usize] as f64 - lse) as f32)).collect();
    }
    (LogSoftmax { logits: logits.to_vec(), lse }, top)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_probs_normalize_and_rank() {
        let l = vec![1.0f32, 3.0, 2.0, 3.0];
        let (ls, top) = log_probs(&l, 3);
        let total: f64 = (0..4).map(|i| logits_raw_at(&ls, i).exp()).sum();
        assert!((total - 1.0).abs() < 1e-9);
        assert_eq!(top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![1, 3, 2]);
        assert!((top[0].1 as f64 - logits_raw_at(&ls, 1)).abs() < 1e-6);
    }
}
