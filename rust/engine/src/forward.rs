//! The forward pass over a run of tokens at positions `cache.len() ..`, appending their keys and
//! values to the KV cache. One token → GEMV kernels; several (a prompt) → GEMM kernels.
//!
//! Per block: RMSNorm → Q/K/V (ternary × int8) → adjacent-pair RoPE → causal GQA attention over
//! the cache (f32) → output projection → residual; RMSNorm → SwiGLU / ReLU² FFN → residual. With
//! mHC-lite the residual is n streams mixed by the `mhc` crate's maps (f64, exactly its math).

use crate::config::FfnActivation;
use crate::error::{invalid_arg, EngineError, Result};
use crate::model::{Layer, Model};
use crate::pool::for_each_chunk;

/// Keys and values of every layer for the positions processed so far (f32, `len × kv_dim`).
pub struct KvCache {
    keys: Vec<Vec<f32>>,
    values: Vec<Vec<f32>>,
    len: usize,
    capacity: usize,
}

impl KvCache {
    /// A cache for up to `capacity` positions (grown on demand, never past the context length).
    pub fn new(model: &Model, capacity: usize) -> Self {
        let n = model.config.n_layers;
        Self { keys: vec![Vec::new(); n], values: vec![Vec::new(); n], len: 0, capacity }
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
        self.keys.iter().chain(&self.values).map(|v| v.capacity() * 4).sum()
    }
}

fn rms_norm(x: &[f32], gain: &[f32], eps: f32, out: &mut Vec<f32>) {
    out.clear();
    for row in x.chunks_exact(gain.len()) {
        let ms = row.iter().map(|v| v * v).sum::<f32>() / row.len() as f32;
        let inv = 1.0 / (ms + eps).sqrt();
        out.extend(row.iter().zip(gain).map(|(v, g)| v * inv * g));
    }
}

/// Rotates adjacent pairs (2j, 2j+1) of every head of every token.
fn apply_rope(model: &Model, x: &mut [f32], width: usize, pos0: usize) {
    let (hd, half) = (model.config.head_dim(), model.rope.half);
    for (t, row) in x.chunks_exact_mut(width).enumerate() {
        let cos = &model.rope.cos[(pos0 + t) * half..][..half];
        let sin = &model.rope.sin[(pos0 + t) * half..][..half];
        for head in row.chunks_exact_mut(hd) {
            for j in 0..half {
                let (a, b) = (head[2 * j], head[2 * j + 1]);
                head[2 * j] = a * cos[j] - b * sin[j];
                head[2 * j + 1] = a * sin[j] + b * cos[j];
            }
        }
    }
}

/// Causal attention of `n` new tokens (queries `n × dim`) over the cache of one layer, which
/// already holds their keys/values at `pos0..pos0+n`. Heads of all tokens run in parallel.
fn attention(model: &Model, q: &[f32], keys: &[f32], values: &[f32], n: usize, pos0: usize) -> Vec<f32> {
    let c = &model.config;
    let (hd, kv_dim, group) = (c.head_dim(), c.kv_dim(), c.n_heads / c.n_kv_heads);
    let scale = 1.0 / (hd as f32).sqrt();
    let mut out = vec![0f32; n * c.dim];
    // A task is a run of (token, head) output slices. The (token, head) pairs are split into one
    // task per thread, and only when there is enough work to pay for the hand-off: a decode step
    // at a few hundred positions is ~100k multiply-adds per layer, a few microseconds.
    let pairs = n * c.n_heads;
    let work = (pos0 + n) * pairs * hd;
    let threads = kernels::num_threads().max(1);
    let heads_per_task = if work < 1 << 20 { pairs } else { pairs.div_ceil(threads) };
    for_each_chunk(&mut out, hd * heads_per_task, |task, block| {
        let mut scores = Vec::with_capacity(pos0 + n);
        for (i, o) in block.chunks_exact_mut(hd).enumerate() {
            let index = task * heads_per_task + i;
            let (t, head) = (index / c.n_heads, index % c.n_heads);
            let kv_head = head / group;
            let query = crate::simd::HeadQuery {
                q: &q[t * c.dim + head * hd..][..hd],
                keys,
                values,
                stride: kv_dim,
                offset: kv_head * hd,
                visible: pos0 + t + 1,
                scale,
            };
            crate::simd::attend(&query, &mut scores, o);
        }
    });
    out
}

fn attention_block(model: &Model, layer: &Layer, li: usize, h: &[f32], n: usize, cache: &mut KvCache) -> Result<Vec<f32>> {
    let c = &model.config;
    let pos0 = cache.len;
    let mut q = layer.wq.forward(h, n)?;
    let mut k = layer.wk.forward(h, n)?;
    let v = layer.wv.forward(h, n)?;
    apply_rope(model, &mut q, c.dim, pos0);
    apply_rope(model, &mut k, c.kv_dim(), pos0);
    let (keys, values) = (&mut cache.keys[li], &mut cache.values[li]);
    if keys.capacity() == 0 {
        keys.reserve_exact(cache.capacity * c.kv_dim());
        values.reserve_exact(cache.capacity * c.kv_dim());
    }
    keys.truncate(pos0 * c.kv_dim());
    values.truncate(pos0 * c.kv_dim());
    keys.extend_from_slice(&k);
    values.extend_from_slice(&v);
    let y = attention(model, &q, keys, values, n, pos0);
    layer.wo.forward(&y, n)
}

fn ffn_block(model: &Model, layer: &Layer, h: &[f32], n: usize) -> Result<Vec<f32>> {
    let up = layer.up.forward(h, n)?;
    let hidden: Vec<f32> = match (model.config.ffn_activation, &layer.gate) {
        (FfnActivation::Swiglu, Some(gate)) => {
            let g = gate.forward(h, n)?;
            g.iter().zip(&up).map(|(&g, &u)| g / (1.0 + (-g).exp()) * u).collect()
        }
        _ => up.iter().map(|&u| u.max(0.0) * u.max(0.0)).collect(),
    };
    layer.down.forward(&hidden, n)
}

/// x' = H_res·x + H_postᵀ ⊗ F(H_pre·x) for every token; `streams` is `n_tok × n × C`.
fn mhc_sublayer(
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
    /// Runs `ids` at positions `cache.len()..`; returns logits for every token (`all_logits`) or
    /// only the last one (`vocab` values).
    pub fn forward(&self, cache: &mut KvCache, ids: &[u32], all_logits: bool) -> Result<Vec<f32>> {
        let c = &self.config;
        let n_tok = ids.len();
        if n_tok == 0 {
            return Err(invalid_arg("no tokens to run"));
        }
        if cache.len + n_tok > c.max_seq_len {
            return Err(invalid_arg(format!(
                "{} positions exceed the context length {}",
                cache.len + n_tok,
                c.max_seq_len
            )));
        }
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= c.vocab_size) {
            return Err(invalid_arg(format!("token id {bad} is outside the vocabulary (size {})", c.vocab_size)));
        }
        cache.capacity = cache.capacity.max(cache.len + n_tok).min(c.max_seq_len);
        let d = c.dim;
        let eps = c.norm_eps as f32;
        let mut x = Vec::with_capacity(n_tok * d);
        for &id in ids {
            self.embedding.row_into(id as usize, d, &mut x)?;
        }
        let n = c.mhc_streams;
        let mut h = Vec::with_capacity(n_tok * d);
        if n > 1 {
            // Expand: every stream starts as a copy of the embedding.
            x = x.chunks_exact(d).flat_map(|row| (0..n).flat_map(move |_| row.iter().copied())).collect();
        }
        for (li, layer) in self.layers.iter().enumerate() {
            match &layer.mhc {
                None => {
                    rms_norm(&x, &layer.attn_norm, eps, &mut h);
                    let a = attention_block(self, layer, li, &h, n_tok, cache)?;
                    x.iter_mut().zip(&a).for_each(|(x, a)| *x += a);
                    rms_norm(&x, &layer.ffn_norm, eps, &mut h);
                    let m = ffn_block(self, layer, &h, n_tok)?;
                    x.iter_mut().zip(&m).for_each(|(x, m)| *x += m);
                }
                Some((c_attn, c_mlp)) => {
                    x = mhc_sublayer(c_attn, &x, n_tok, |inp| {
                        let mut hn = Vec::new();
                        rms_norm(inp, &layer.attn_norm, eps, &mut hn);
                        attention_block(self, layer, li, &hn, n_tok, cache)
                    })?;
                    x = mhc_sublayer(c_mlp, &x, n_tok, |inp| {
                        let mut hn = Vec::new();
                        rms_norm(inp, &layer.ffn_norm, eps, &mut hn);
                        ffn_block(self, layer, &hn, n_tok)
                    })?;
                }
            }
        }
        cache.len += n_tok;
        if n > 1 {
            // Collapse: the sum of the streams (the final RMSNorm removes the scale).
            x = x.chunks_exact(n * d).flat_map(|s| (0..d).map(move |j| (0..n).map(|i| s[i * d + j]).sum::<f32>())).collect();
        }
        let rows = if all_logits { &x[..] } else { &x[(n_tok - 1) * d..] };
        rms_norm(rows, &self.output_norm, eps, &mut h);
        let logits = self.head.forward(&h, rows.len() / d)?;
        if let Some(i) = logits.iter().position(|v| !v.is_finite()) {
            return Err(EngineError::Numerical(format!("logit {i} is not finite (overflow in the weights?)")));
        }
        Ok(logits)
    }

    /// Logits `T × vocab` of one causal forward from an empty cache.
    pub fn logits(&self, ids: &[u32]) -> Result<Vec<f32>> {
        let mut cache = KvCache::new(self, ids.len());
        self.forward(&mut cache, ids, true)
    }
}
