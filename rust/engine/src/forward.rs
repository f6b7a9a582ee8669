//! The forward pass over a run of tokens at positions `cache.len() ..`, appending their keys and
//! values to the KV cache. One token → GEMV kernels; several (a prompt) → GEMM kernels.
//!
//! Per block: RMSNorm → Q/K/V (ternary × int8) → adjacent-pair RoPE → causal GQA attention over
//! the cache (f16 by default) → output projection → residual; RMSNorm → SwiGLU / ReLU² FFN → residual. With
//! mHC-lite the residual is n streams mixed by the `mhc` crate's maps (f64, exactly its math).
//!
//! LoopLM: the blocks run T times; loop t's block i has its own KV slot `t·n_layers + i` (a
//! "virtual layer"). With an exit gate and a threshold below 1, a token leaves after the first
//! loop whose cumulative exit probability 1 − Π_{j≤t}(1 − λ_j) reaches the threshold; its logits
//! are that loop's readout. The loops it skips still need keys and values, since later tokens
//! attend to them at every depth: the cache holds, for each skipped slot, a copy of the token's
//! keys and values from the same block in its exit loop (Ouro's KV-sharing choice: the last
//! computed loop's state stands in for the deeper ones). Prefill and decode follow the same rule
//! per token, so a prompt run at once and one run token by token agree. [`crate::ExitKv::Compute`]
//! instead keeps exited tokens running for their keys and values (exact, no speed-up): the
//! reference that measures what the copy costs.

use crate::config::FfnActivation;
use crate::error::{invalid_arg, EngineError, Result};
use crate::linear::{forward_many, Input};
use crate::model::{ExitKv, Layer, Model};
use half::f16;

use kernels::for_each_chunk;
use crate::simd::KvElem;

/// Element type of the KV cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum KvPrecision {
    /// f16, as llama.cpp keeps it: half the bytes a decode step reads, and f16's 2⁻¹¹ rounding
    /// is well below the int8 activation rounding every projection already applies.
    #[default]
    F16,
    /// f32: what the training model computes, for exact parity checks.
    F32,
}

impl KvPrecision {
    /// Bytes per cached key or value.
    pub fn bytes(self) -> usize {
        match self {
            KvPrecision::F16 => 2,
            KvPrecision::F32 => 4,
        }
    }
}

/// One layer's keys and values, head-major (`kv_heads × room × head_dim`), so one head's keys
/// over all positions are one contiguous run that streams from memory.
type Layers<T> = Vec<(Vec<T>, Vec<T>)>;

enum Store {
    F16(Layers<f16>),
    F32(Layers<f32>),
}

/// Keys and values of every layer for the positions processed so far, in the model's
/// [`KvPrecision`].
pub struct KvCache {
    store: Store,
    pub(crate) len: usize,
    /// Positions the layers' buffers have room for.
    room: usize,
    /// Positions to make room for at the first write (grown on demand, never past the context).
    pub(crate) capacity: usize,
    /// The context length.
    max_len: usize,
    kv_heads: usize,
    head_dim: usize,
}

impl KvCache {
    /// A cache for up to `capacity` positions (grown on demand, never past the context length),
    /// in `model.kv_precision`.
    pub fn new(model: &Model, capacity: usize) -> Self {
        let c = &model.config;
        let n = c.n_layers * c.loops();
        let store = match model.kv_precision {
            KvPrecision::F16 => Store::F16(vec![(Vec::new(), Vec::new()); n]),
            KvPrecision::F32 => Store::F32(vec![(Vec::new(), Vec::new()); n]),
        };
        Self {
            store,
            len: 0,
            room: 0,
            capacity: capacity.min(c.max_seq_len),
            max_len: c.max_seq_len,
            kv_heads: c.n_kv_heads,
            head_dim: c.head_dim(),
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forgets every position from `len` on (a no-op when `len >= self.len()`), so a decode can
    /// be rerun from the same prompt without prefilling it again.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Bytes held by the cache.
    pub fn bytes(&self) -> usize {
        fn held<T>(layers: &Layers<T>) -> usize {
            layers.iter().map(|(k, v)| (k.capacity() + v.capacity()) * std::mem::size_of::<T>()).sum()
        }
        match &self.store {
            Store::F16(l) => held(l),
            Store::F32(l) => held(l),
        }
    }

    /// Makes room for `needed` positions in every layer, keeping what is cached.
    pub(crate) fn reserve(&mut self, needed: usize) {
        if needed <= self.room {
            return;
        }
        // Doubling keeps a long decode past the planned capacity at amortized O(1) copies.
        let room = needed.max(self.capacity).max((2 * self.room).min(self.max_len));
        let shape = (self.kv_heads, self.head_dim, self.len, self.room);
        match &mut self.store {
            Store::F16(l) => grow(l, shape, room),
            Store::F32(l) => grow(l, shape, room),
        }
        self.room = room;
    }

    /// Stores `n` tokens' keys and values (`n × kv_dim` each) of layer `li` at `len..len + n`.
    pub(crate) fn write(&mut self, li: usize, k: &[f32], v: &[f32], n: usize) {
        let shape = (self.kv_heads, self.head_dim, self.room, self.len);
        match &mut self.store {
            Store::F16(l) => write(&mut l[li], shape, k, v, n),
            Store::F32(l) => write(&mut l[li], shape, k, v, n),
        }
    }
}

impl KvCache {
    /// Copies position `pos`'s keys and values from (virtual) layer `src` to layer `dst`.
    pub(crate) fn copy_position(&mut self, src: usize, dst: usize, pos: usize) {
        let (heads, hd, room) = (self.kv_heads, self.head_dim, self.room);
        fn copy<T: Copy>(layers: &mut Layers<T>, src: usize, dst: usize, at: impl Fn(usize) -> usize, heads: usize, hd: usize) {
            for g in 0..heads {
                let (k, v) = layers[src].clone_rows(at(g), hd);
                layers[dst].0[at(g)..][..hd].copy_from_slice(&k);
                layers[dst].1[at(g)..][..hd].copy_from_slice(&v);
            }
        }
        let at = |g: usize| (g * room + pos) * hd;
        match &mut self.store {
            Store::F16(l) => copy(l, src, dst, at, heads, hd),
            Store::F32(l) => copy(l, src, dst, at, heads, hd),
        }
    }
}

trait CloneRows<T> {
    fn clone_rows(&self, at: usize, len: usize) -> (Vec<T>, Vec<T>);
}

impl<T: Copy> CloneRows<T> for (Vec<T>, Vec<T>) {
    fn clone_rows(&self, at: usize, len: usize) -> (Vec<T>, Vec<T>) {
        (self.0[at..][..len].to_vec(), self.1[at..][..len].to_vec())
    }
}

/// Regrows every layer to `room` positions, copying the first `len` of each head.
fn grow<T: KvElem>(layers: &mut Layers<T>, (heads, hd, len, old_room): (usize, usize, usize, usize), room: usize) {
    for (keys, values) in layers.iter_mut() {
        for buf in [keys, values] {
            let mut grown = vec![T::ZERO; heads * room * hd];
            if old_room > 0 {
                for g in 0..heads {
                    grown[g * room * hd..][..len * hd].copy_from_slice(&buf[g * old_room * hd..][..len * hd]);
                }
            }
            *buf = grown;
        }
    }
}

fn write<T: KvElem>(layer: &mut (Vec<T>, Vec<T>), (heads, hd, room, pos0): (usize, usize, usize, usize), k: &[f32], v: &[f32], n: usize) {
    for (src, dst) in [(k, &mut layer.0), (v, &mut layer.1)] {
        for t in 0..n {
            for g in 0..heads {
                T::store(&mut dst[(g * room + pos0 + t) * hd..][..hd], &src[(t * heads + g) * hd..][..hd]);
            }
        }
    }
}

pub(crate) fn rms_norm(x: &[f32], gain: &[f32], eps: f32, out: &mut Vec<f32>) {
    out.clear();
    for row in x.chunks_exact(gain.len()) {
        let ms = crate::simd::dot(row, row) / row.len() as f32;
        let inv = 1.0 / (ms + eps).sqrt();
        out.extend(row.iter().zip(gain).map(|(v, g)| v * inv * g));
    }
}

/// Rotates adjacent pairs (2j, 2j+1) of every head of every token.
pub(crate) fn apply_rope(model: &Model, x: &mut [f32], width: usize, pos0: usize) {
    let (hd, half) = (model.config.head_dim(), model.rope.half);
    for (t, row) in x.chunks_exact_mut(width).enumerate() {
        let cos = &model.rope.cos[(pos0 + t) * half..][..half];
        let sin = &model.rope.sin[(pos0 + t) * half..][..half];
        for head in row.chunks_exact_mut(hd) {
            crate::simd::rope_pairs(head, cos, sin);
        }
    }
}

/// Causal attention of `n` new tokens (queries `n × dim`) over the cache of layer `li`, which
/// already holds their keys/values at `pos0..pos0+n`.
pub(crate) fn attention(model: &Model, q: &[f32], cache: &KvCache, li: usize, n: usize, pos0: usize) -> Vec<f32> {
    match &cache.store {
        Store::F16(l) => attention_over(model, q, &l[li], cache.room, n, pos0),
        Store::F32(l) => attention_over(model, q, &l[li], cache.room, n, pos0),
    }
}

/// [`attention`] over one layer's head-major keys and values (`room` positions per head).
/// Heads of all tokens run in parallel.
fn attention_over<T: KvElem>(model: &Model, q: &[f32], layer: &(Vec<T>, Vec<T>), room: usize, n: usize, pos0: usize) -> Vec<f32> {
    let c = &model.config;
    let (hd, group) = (c.head_dim(), c.n_heads / c.n_kv_heads);
    let scale = 1.0 / (hd as f32).sqrt();
    let mut out = vec![0f32; n * c.dim];
    // A task is a run of (token, head) output slices, split only when there is enough work to
    // pay for the hand-off (~1 µs to the team's spinning workers): 64k multiply-adds, a decode
    // step at ~80 positions of nano-125m. One token's heads cost the same: one task per thread.
    // A prompt's later tokens see more positions, so it is cut much finer, and whichever thread
    // is free takes the next task (two halves would leave one thread three quarters of the work).
    let pairs = n * c.n_heads;
    let work = (pos0 + n) * pairs * hd;
    let threads = kernels::num_threads().max(1);
    let tasks = if work < 1 << 16 { 1 } else if n == 1 { threads } else { 32 * threads };
    let heads_per_task = pairs.div_ceil(tasks);
    for_each_chunk(&mut out, hd * heads_per_task, |task, block| {
        let mut scores = Vec::with_capacity(pos0 + n);
        for (i, o) in block.chunks_exact_mut(hd).enumerate() {
            let index = task * heads_per_task + i;
            let (t, head) = (index / c.n_heads, index % c.n_heads);
            let (at, len) = ((head / group) * room * hd, (pos0 + t + 1) * hd);
            let (keys, values) = (&layer.0[at..][..len], &layer.1[at..][..len]);
            let query = crate::simd::HeadQuery { q: &q[t * c.dim + head * hd..][..hd], keys, values, scale };
            crate::simd::attend(&query, &mut scores, o);
        }
    });
    out
}

/// One sequence's attention sub-layer at (virtual) layer `li`. `frozen[t]` names, for a token
/// that already exited (LoopLM), the layer whose keys and values stand in for its skipped ones;
/// an empty `h` (every token exited) only copies those and returns nothing.
fn attention_block(model: &Model, layer: &Layer, li: usize, h: &[f32], n: usize, cache: &mut KvCache, frozen: &[Option<usize>]) -> Result<Vec<f32>> {
    let c = &model.config;
    let pos0 = cache.len;
    cache.reserve(pos0 + n);
    if h.is_empty() {
        copy_frozen(cache, li, pos0, frozen);
        return Ok(Vec::new());
    }
    let input = Input::new(h, n);
    let [mut q, mut k, v]: [Vec<f32>; 3] = forward_many(&[&layer.wq, &layer.wk, &layer.wv], &input, model.residency)?
        .try_into()
        .expect("three products");
    apply_rope(model, &mut q, c.dim, pos0);
    apply_rope(model, &mut k, c.kv_dim(), pos0);
    cache.write(li, &k, &v, n);
    copy_frozen(cache, li, pos0, frozen);
    let y = attention(model, &q, cache, li, n, pos0);
    layer.wo.forward(&y, n, model.residency)
}

/// Overwrites the keys and values of exited tokens (positions `pos0 + t`) at layer `li` with
/// those of the layer `frozen[t]` names.
pub(crate) fn copy_frozen(cache: &mut KvCache, li: usize, pos0: usize, frozen: &[Option<usize>]) {
    for (t, src) in frozen.iter().enumerate() {
        if let Some(src) = *src {
            cache.copy_position(src, li, pos0 + t);
        }
    }
}

pub(crate) fn ffn_block(model: &Model, layer: &Layer, h: &[f32], n: usize) -> Result<Vec<f32>> {
    let input = Input::new(h, n);
    let hidden: Vec<f32> = match (model.config.ffn_activation, &layer.gate) {
        (FfnActivation::Swiglu, Some(gate)) => {
            let [mut g, up]: [Vec<f32>; 2] = forward_many(&[gate, &layer.up], &input, model.residency)?.try_into().expect("two products");
            // 16 tokens' values per task: a prompt is split over the threads, a token is not.
            let per_task = 16 * model.config.ffn_hidden;
            for_each_chunk(&mut g, per_task, |i, part| crate::simd::silu_mul(part, &up[i * per_task..][..part.len()]));
            g
        }
        _ => layer.up.forward_input(&input, model.residency)?.iter().map(|&u| u.max(0.0) * u.max(0.0)).collect(),
    };
    layer.down.forward(&hidden, n, model.residency)
}

/// x' = H_res·x + H_postᵀ ⊗ F(H_pre·x) for every token; `streams` is `n_tok × n × C`.
pub(crate) fn mhc_sublayer(
    params: &mhc::MhcParams,
    streams: &[f32],
    n_tok: usize,
    f: impl FnOnce(&[f32]) -> Result<Vec<f32>>,
) -> Result<Vec<f32>> {
    let (n, dim) = (params.n(), params.dim());
    let mut maps = Vec::with_capacity(n_tok);
    let mut input = Vec::with_capacity(n_tok * dim);
    for s in streams.chunks_exact(n * dim) {
        let s64: Vec<f64> = s.iter().map(|&v| v as f64).collect();
        let m = params.maps(&s64)?;
        input.extend(mhc::pre_mix(&m.h_pre, &s64)?.into_iter().map(|v| v as f32));
        maps.push((m, s64));
    }
    let out = f(&input)?;
    let mut next = Vec::with_capacity(streams.len());
    for ((m, s64), f_out) in maps.iter().zip(out.chunks_exact(dim)) {
        let f64_out: Vec<f64> = f_out.iter().map(|&v| v as f64).collect();
        next.extend(mhc::post_update(&m.h_res, &m.h_post, s64, &f64_out)?.into_iter().map(|v| v as f32));
    }
    Ok(next)
}

impl Model {
    /// Checks one sequence's new tokens: some, within the context after `past` positions, and
    /// inside the vocabulary.
    pub(crate) fn check_tokens(&self, past: usize, ids: &[u32]) -> Result<()> {
        let c = &self.config;
        if ids.is_empty() {
            return Err(invalid_arg("no tokens to run"));
        }
        if past + ids.len() > c.max_seq_len {
            return Err(invalid_arg(format!("{} positions exceed the context length {}", past + ids.len(), c.max_seq_len)));
        }
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= c.vocab_size) {
            return Err(invalid_arg(format!("token id {bad} is outside the vocabulary (size {})", c.vocab_size)));
        }
        Ok(())
    }

    /// The embeddings of `ids`, every block, and the final norm of the rows `logit_rows` picks
    /// (indices of tokens; none: no head at all), through the LM head: the forward pass both [`Model::forward`] (one
    /// sequence) and [`Model::forward_batch`] (many, one product per matrix) run. `attention(layer,
    /// virtual layer index, normed input, frozen)` is the attention sub-layer, the only part that
    /// depends on which sequence a token belongs to; `frozen` names per token, for one that
    /// already exited (LoopLM), the KV layer to copy its keys and values from, and an empty input
    /// means every token exited (copy only).
    pub(crate) fn run(
        &self,
        ids: impl Iterator<Item = u32>,
        n_tok: usize,
        logit_rows: &[usize],
        mut attention: impl FnMut(&Layer, usize, &[f32], &[Option<usize>]) -> Result<Vec<f32>>,
    ) -> Result<Vec<f32>> {
        let c = &self.config;
        let d = c.dim;
        let eps = c.norm_eps as f32;
        let mut x = Vec::with_capacity(n_tok * d);
        for id in ids {
            self.embedding.row_into(id as usize, d, &mut x)?;
        }
        let n = c.mhc_streams;
        let mut h = Vec::with_capacity(n_tok * d);
        if n > 1 {
            // Expand: every stream starts as a copy of the embedding.
            x = x.chunks_exact(d).flat_map(|row| (0..n).flat_map(move |_| row.iter().copied())).collect();
        }
        let (k, loops) = (self.layers.len(), c.loops());
        let threshold = self.exit_threshold.get();
        let early = loops > 1 && threshold < 1.0;
        let gate = self.exit_gate.as_ref().filter(|_| early);
        // LoopLM early exit: the loop each token left after, the probability it has not yet
        // exited, and the final-normed readout of the rows that want logits. With
        // `ExitKv::Compute` an exited token keeps running (its deeper keys and values computed
        // exactly, no time saved): the reference the copy is measured against.
        let copy_kv = self.exit_kv() == ExitKv::Copy;
        let mut decided: Vec<Option<usize>> = vec![None; n_tok];
        let mut exited: Vec<Option<usize>> = vec![None; n_tok];
        let mut survive = vec![1f64; n_tok];
        let mut readout: Vec<Option<Vec<f32>>> = vec![None; n_tok];
        let mut wants = vec![false; n_tok];
        for &t in logit_rows {
            wants[t] = true;
        }
        let width = n * d;
        // The residual row of token t collapsed to `dim` (streams summed; the RMSNorm removes the scale).
        let collapse = |x: &[f32], t: usize, out: &mut Vec<f32>| {
            let s = &x[t * width..(t + 1) * width];
            if n == 1 {
                out.extend_from_slice(s);
            } else {
                out.extend((0..d).map(|j| (0..n).map(|i| s[i * d + j]).sum::<f32>()));
            }
        };
        let mut frozen: Vec<Option<usize>> = vec![None; n_tok];
        for t in 0..loops {
            let all_exited = exited.iter().all(Option::is_some);
            for (i, layer) in self.layers.iter().enumerate() {
                let li = t * k + i;
                for (f, e) in frozen.iter_mut().zip(&exited) {
                    *f = e.map(|e| e * k + i);
                }
                if all_exited {
                    attention(layer, li, &[], &frozen)?;
                    continue;
                }
                match &layer.mhc {
                    None => {
                        rms_norm(&x, &layer.attn_norm, eps, &mut h);
                        let a = attention(layer, li, &h, &frozen)?;
                        x.iter_mut().zip(&a).for_each(|(x, a)| *x += a);
                        rms_norm(&x, &layer.ffn_norm, eps, &mut h);
                        let m = ffn_block(self, layer, &h, n_tok)?;
                        x.iter_mut().zip(&m).for_each(|(x, m)| *x += m);
                    }
                    Some((c_attn, c_mlp)) => {
                        x = mhc_sublayer(c_attn, &x, n_tok, |inp| {
                            let mut hn = Vec::new();
                            rms_norm(inp, &layer.attn_norm, eps, &mut hn);
                            attention(layer, li, &hn, &frozen)
                        })?;
                        x = mhc_sublayer(c_mlp, &x, n_tok, |inp| {
                            let mut hn = Vec::new();
                            rms_norm(inp, &layer.ffn_norm, eps, &mut hn);
                            ffn_block(self, layer, &hn, n_tok)
                        })?;
                    }
                }
            }
            if all_exited {
                continue;
            }
            // Exit decisions after every loop but the last; a token still running at the end is
            // read out from the final state below, so a model without early exit does no extra work.
            let Some((w, b)) = gate.filter(|_| t + 1 < loops) else {
                continue;
            };
            let mut row = Vec::with_capacity(d);
            let mut normed = Vec::with_capacity(d);
            for tok in 0..n_tok {
                if decided[tok].is_some() {
                    continue;
                }
                row.clear();
                collapse(&x, tok, &mut row);
                rms_norm(&row, &self.output_norm, eps, &mut normed);
                let lambda = 1.0 / (1.0 + (-(crate::simd::dot(&normed, w) + b) as f64).exp());
                survive[tok] *= 1.0 - lambda;
                if 1.0 - survive[tok] >= threshold as f64 {
                    decided[tok] = Some(t);
                    if copy_kv {
                        exited[tok] = Some(t);
                    }
                    if wants[tok] {
                        readout[tok] = Some(row.clone());
                    }
                }
            }
        }
        if loops > 1 {
            let depth: usize = exited.iter().map(|e| e.map_or(loops, |e| e + 1)).sum();
            self.depth.tokens.fetch_add(n_tok as u64, std::sync::atomic::Ordering::Relaxed);
            self.depth.loops.fetch_add(depth as u64, std::sync::atomic::Ordering::Relaxed);
        }
        if logit_rows.is_empty() {
            return Ok(Vec::new());
        }
        // The rows asked for, each as its exit loop left it.
        let mut rows = Vec::with_capacity(logit_rows.len() * d);
        for &t in logit_rows {
            match &readout[t] {
                Some(r) => rows.extend_from_slice(r),
                None => collapse(&x, t, &mut rows),
            }
        }
        rms_norm(&rows, &self.output_norm, eps, &mut h);
        let logits = self.head_logits(&h, logit_rows.len())?;
        if !crate::simd::all_finite(&logits) {
            let i = logits.iter().position(|v| !v.is_finite()).unwrap_or(0);
            return Err(EngineError::Numerical(format!("logit {i} is not finite (overflow in the weights?)")));
        }
        Ok(logits)
    }

    /// Runs `ids` at positions `cache.len()..`; returns logits for every token (`all_logits`) or
    /// only the last one (`vocab` values).
    pub fn forward(&self, cache: &mut KvCache, ids: &[u32], all_logits: bool) -> Result<Vec<f32>> {
        self.check_tokens(cache.len, ids)?;
        let n_tok = ids.len();
        cache.capacity = cache.capacity.max(cache.len + n_tok).min(self.config.max_seq_len);
        let logit_rows: Vec<usize> = if all_logits { (0..n_tok).collect() } else { vec![n_tok - 1] };
        let logits = self.run(ids.iter().copied(), n_tok, &logit_rows, |layer, li, h, frozen| attention_block(self, layer, li, h, n_tok, cache, frozen));
        // The cache holds the new positions only once every layer has written them.
        if logits.is_ok() {
            cache.len += n_tok;
        }
        logits
    }

    /// Logits `T × vocab` of one causal forward from an empty cache.
    pub fn logits(&self, ids: &[u32]) -> Result<Vec<f32>> {
        let mut cache = KvCache::new(self, ids.len());
        self.forward(&mut cache, ids, true)
    }
}
