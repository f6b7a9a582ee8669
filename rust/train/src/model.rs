//! The ternary transformer: token embedding, blocks of pre-norm attention and
//! FFN with BitLinear projections, plain or mHC-lite residuals, final RMSNorm
//! and a full-precision LM head (tied to the embedding or not). With a `loop`
//! config (LoopLM) the blocks are one shared stack applied T times, and an
//! optional exit gate learns after which loop each position may stop.
use tch::nn::{Init, Path, VarStore};
use tch::{Device, Kind, Reduction, Tensor};

use crate::config::ModelConfig;
use crate::error::{Result, TrainError};
use crate::layers::{Attention, Mlp, RmsNorm, Rope};
use crate::mhc_layer::{collapse, expand, MhcConnection};

/// Std of the embedding (and untied head) at init, as in GPT-2.
const EMBED_INIT_STD: f64 = 0.02;

#[derive(Debug)]
struct Block {
    attn_norm: RmsNorm,
    attn: Attention,
    mlp_norm: RmsNorm,
    mlp: Mlp,
    /// (attention, FFN) connections when `mhc_streams > 1`.
    mhc: Option<(MhcConnection, MhcConnection)>,
}

impl Block {
    fn new(p: Path, config: &ModelConfig, index: usize) -> Result<Self> {
        // Output projections start smaller so the residual sum over 2L
        // sub-layers keeps unit scale (GPT-2's scaled init).
        // A LoopLM stack runs T times: its effective depth is n_layers·T.
        let depth = (config.n_layers * config.loops()) as f64;
        let out_std = (config.dim as f64).powf(-0.5) / (2.0 * depth).sqrt();
        let mhc = match config.mhc_streams {
            1 => None,
            n => Some((
                MhcConnection::new(p.sub("mhc_attn"), n, config.dim, 2 * index)?,
                MhcConnection::new(p.sub("mhc_mlp"), n, config.dim, 2 * index + 1)?,
            )),
        };
        let dim = config.dim as i64;
        Ok(Self {
            attn_norm: RmsNorm::new(p.sub("attn_norm"), dim, config.norm_eps),
            attn: Attention::new(p.sub("attn"), config, out_std),
            mlp_norm: RmsNorm::new(p.sub("mlp_norm"), dim, config.norm_eps),
            mlp: Mlp::new(p.sub("mlp"), config, out_std),
            mhc,
        })
    }

    /// Residual state in, residual state out: (B, T, C) for a plain block,
    /// (B, T, n, C) streams for mHC.
    fn forward(&self, x: &Tensor, rope: &Rope) -> Tensor {
        let attn = |h: &Tensor| self.attn.forward(h, &self.attn_norm, rope);
        let mlp = |h: &Tensor| self.mlp.forward(h, &self.mlp_norm);
        match &self.mhc {
            None => {
                let x = x + attn(x);
                &x + mlp(&x)
            }
            // The CPU integer path fuses the stream passes too (same values, another summation order).
            Some((c_attn, c_mlp)) if self.attn.integer_path(x) => {
                let x = c_attn.forward_fused(x, attn);
                c_mlp.forward_fused(&x, mlp)
            }
            Some((c_attn, c_mlp)) => {
                let x = c_attn.forward(x, attn);
                c_mlp.forward(&x, mlp)
            }
        }
    }
}

impl Block {
    /// [`Self::forward`] that also appends each mHC sub-layer's H_res (B, T, n, n) to `maps`.
    fn forward_recording(&self, x: &Tensor, rope: &Rope, maps: &mut Vec<Tensor>) -> Tensor {
        if let Some((c_attn, c_mlp)) = &self.mhc {
            maps.push(c_attn.maps(x).h_res);
            let attn = |h: &Tensor| self.attn.forward(h, &self.attn_norm, rope);
            let x = c_attn.forward(x, attn);
            maps.push(c_mlp.maps(&x).h_res);
            return c_mlp.forward(&x, |h: &Tensor| self.mlp.forward(h, &self.mlp_norm));
        }
        self.forward(x, rope)
    }
}

/// The model; its parameters live in the [`VarStore`] it was built in.
#[derive(Debug)]
pub struct Transformer {
    config: ModelConfig,
    embed: Tensor,
    head: Option<Tensor>,
    blocks: Vec<Block>,
    final_norm: RmsNorm,
    rope: Rope,
    /// LM head as a bf16 matmul (set by [`Self::with_prequantized`] on CPU
    /// with the int8 BitLinear path, see [`crate::cpu_bitlinear`]).
    bf16_head: std::cell::Cell<bool>,
    /// LoopLM exit gate: weight (1, dim) and bias (1), full precision.
    exit_gate: Option<(Tensor, Tensor)>,
}

/// The terms of a LoopLM objective (see [`Transformer::loop_objective`]).
pub struct LoopObjective {
    /// What is differentiated: Σ_t p(t)·CE_t − β·H(p) with a gate, else the last loop's CE.
    pub value: Tensor,
    /// Mean CE of the last loop (the full-depth model's loss).
    pub ce_last: Tensor,
    /// Mean CE of every loop's readout, loop by loop (detached).
    pub ce_per_loop: Vec<Tensor>,
    /// The last loop's log-probabilities (rows, vocab), f32.
    pub last_log_probs: Tensor,
    /// Mean exit probability of every loop (detached; empty without a gate).
    pub exit_probs: Vec<Tensor>,
}

impl Transformer {
    /// Builds the model's variables under `p` (names like `blocks.0.attn.wq`).
    pub fn new(p: &Path, config: &ModelConfig) -> Result<Self> {
        config.validate()?;
        let (v, d) = (config.vocab_size as i64, config.dim as i64);
        let embed_init = Init::Randn {
            mean: 0.0,
            stdev: EMBED_INIT_STD,
        };
        let embed = p.var("embed", &[v, d], embed_init);
        let head = (!config.tie_embeddings).then(|| p.var("head", &[v, d], embed_init));
        let blocks = (0..config.n_layers)
            .map(|i| Block::new(p.sub("blocks").sub(i), config, i))
            .collect::<Result<Vec<_>>>()?;
        // Zero gate weights and bias: λ = 1/2 after every loop at the start.
        let exit_gate = config.exit_gate().then(|| {
            let g = p.sub("exit_gate");
            (g.var("weight", &[1, d], Init::Const(0.0)), g.var("bias", &[1], Init::Const(0.0)))
        });
        Ok(Self {
            config: config.clone(),
            embed,
            head,
            blocks,
            final_norm: RmsNorm::new(p.sub("final_norm"), d, config.norm_eps),
            rope: Rope::new(config, p.device()),
            bf16_head: std::cell::Cell::new(false),
            exit_gate,
        })
    }

    /// A fresh [`VarStore`] on `device` with the model built at its root.
    pub fn with_var_store(config: &ModelConfig, device: Device) -> Result<(VarStore, Self)> {
        let vs = VarStore::new(device);
        let model = Self::new(&vs.root(), config)?;
        Ok((vs, model))
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Latent weights of every BitLinear projection (shallow handles), block
    /// by block in the order [`Self::with_prequantized`] expects.
    pub fn projection_weights(&self) -> Vec<Tensor> {
        self.blocks
            .iter()
            .flat_map(|b| b.attn.projections().into_iter().chain(b.mlp.projections()))
            .map(Tensor::shallow_clone)
            .collect()
    }

    /// The values the projections use for one optimizer step, detached: the
    /// ternarized latent weights, or copies of them for the full-precision
    /// baseline (`ModelConfig::ternary = false`).
    pub fn step_weights(&self) -> Vec<Tensor> {
        tch::no_grad(|| {
            let weights = self.projection_weights();
            if self.config.ternary {
                weights.iter().map(crate::quant::ternarize).collect()
            } else {
                weights.iter().map(|w| w.detach().copy()).collect()
            }
        })
    }

    /// Runs `f` with every projection using the given ternarized values (one
    /// per [`Self::projection_weights`] entry) instead of ternarizing its
    /// latent weight on each call: a trainer quantizes once per optimizer
    /// step and reuses the result for all micro-batches. The default path is
    /// restored afterwards, also when `f` panics.
    pub fn with_prequantized<T>(&self, quantized: &[Tensor], f: impl FnOnce() -> T) -> Result<T> {
        let int8 = crate::cpu_bitlinear::enabled()?;
        let expected = self.projection_weights().len();
        if quantized.len() != expected {
            return Err(TrainError::BadInput(format!(
                "with_prequantized: got {} weights, the model has {expected} projections",
                quantized.len()
            )));
        }
        struct Restore<'a>(&'a [Block], &'a std::cell::Cell<bool>);
        impl Drop for Restore<'_> {
            fn drop(&mut self) {
                self.1.set(false);
                for block in self.0 {
                    block.attn.set_prequantized(None);
                    block.mlp.set_prequantized(None);
                }
            }
        }
        let _restore = Restore(&self.blocks, &self.bf16_head);
        self.bf16_head.set(int8 && self.config.ternary && self.embed.device() == Device::Cpu);
        let mut rest = quantized;
        for block in &self.blocks {
            let (n_attn, n_mlp) = (block.attn.projections().len(), block.mlp.projections().len());
            let take = |rest: &mut &[Tensor], n: usize| {
                let (head, tail) = rest.split_at(n);
                *rest = tail;
                head.iter().map(Tensor::shallow_clone).collect::<Vec<_>>()
            };
            block.attn.set_prequantized(Some(take(&mut rest, n_attn)));
            block.mlp.set_prequantized(Some(take(&mut rest, n_mlp)));
        }
        Ok(f())
    }

    /// Checks that `tokens` is a (B, T) int64 tensor with 1 <= T <= max_seq_len
    /// and ids in [0, vocab_size).
    pub fn check_tokens(&self, tokens: &Tensor, what: &str) -> Result<()> {
        let size = tokens.size();
        let bad = |msg: String| Err(TrainError::BadInput(format!("{what}: {msg}")));
        if size.len() != 2 || size[0] == 0 || size[1] == 0 {
            return bad(format!("expected a non-empty (batch, seq) tensor, got shape {size:?}"));
        }
        if tokens.kind() != Kind::Int64 {
            return bad(format!("expected int64 token ids, got {:?}", tokens.kind()));
        }
        if size[1] > self.config.max_seq_len as i64 {
            return bad(format!(
                "sequence length {} exceeds max_seq_len {}",
                size[1], self.config.max_seq_len
            ));
        }
        let (lo, hi) = (tokens.min().int64_value(&[]), tokens.max().int64_value(&[]));
        if lo < 0 || hi >= self.config.vocab_size as i64 {
            return bad(format!(
                "token ids must lie in [0, {}), got range [{lo}, {hi}]",
                self.config.vocab_size
            ));
        }
        Ok(())
    }

    /// Residual state after each block (for tests and diagnostics): (B, T, C)
    /// for plain residuals, (B, T, n, C) streams for mHC.
    pub fn block_states(&self, tokens: &Tensor) -> Result<Vec<Tensor>> {
        self.check_tokens(tokens, "tokens")?;
        let mut states = Vec::with_capacity(self.blocks.len());
        let _final_hidden = self.hidden(tokens, Some(&mut states));
        Ok(states)
    }

    /// Every mHC sub-layer's residual map H_res (B, T, n, n) in the order the forward applies
    /// them (2 per block, all loops); empty for a plain residual. Their product is the
    /// composite residual map from the embedding to the last block.
    pub fn residual_maps(&self, tokens: &Tensor) -> Result<Vec<Tensor>> {
        self.check_tokens(tokens, "tokens")?;
        let n = self.config.mhc_streams as i64;
        if n == 1 {
            return Ok(Vec::new());
        }
        let mut state = expand(&Tensor::embedding(&self.embed, tokens, -1, false, false), n);
        let mut maps = Vec::with_capacity(2 * self.blocks.len() * self.config.loops());
        for _ in 0..self.config.loops() {
            for block in &self.blocks {
                state = block.forward_recording(&state, &self.rope, &mut maps);
            }
        }
        Ok(maps)
    }

    fn hidden(&self, tokens: &Tensor, trace: Option<&mut Vec<Tensor>>) -> Tensor {
        let mut states = self.loop_hidden(tokens, false, trace);
        states.pop().expect("at least one loop")
    }

    /// The final-normed hidden state after every loop (`all`) or only after the last; `trace`
    /// gets the residual state after each block of each loop.
    fn loop_hidden(&self, tokens: &Tensor, all: bool, mut trace: Option<&mut Vec<Tensor>>) -> Vec<Tensor> {
        let x = Tensor::embedding(&self.embed, tokens, -1, false, false);
        let n = self.config.mhc_streams as i64;
        let mut state = if n > 1 { expand(&x, n) } else { x };
        let loops = self.config.loops();
        let mut out = Vec::with_capacity(if all { loops } else { 1 });
        for t in 0..loops {
            for block in &self.blocks {
                state = block.forward(&state, &self.rope);
                if let Some(trace) = trace.as_deref_mut() {
                    trace.push(state.shallow_clone());
                }
            }
            if all || t + 1 == loops {
                // Collapse sums the streams; the final RMSNorm removes that scale.
                let x = if n > 1 { collapse(&state) } else { state.shallow_clone() };
                out.push(self.final_norm.forward(&x));
            }
        }
        out
    }

    /// LM head over final-normed hidden states (bf16 inside the CPU int8 path, see
    /// [`Self::forward_prechecked`]).
    fn head_logits(&self, x: &Tensor) -> Tensor {
        let head = self.head.as_ref().unwrap_or(&self.embed);
        if self.bf16_head.get() && x.kind() == Kind::Float {
            return x.to_kind(Kind::BFloat16).matmul(&head.to_kind(Kind::BFloat16).tr());
        }
        x.matmul(&head.tr())
    }

    /// Exit-gate probabilities λ_t = σ(w·h + b), shape (B, T), for a final-normed hidden state
    /// (None without a gate).
    pub fn exit_lambda(&self, hidden: &Tensor) -> Option<Tensor> {
        self.exit_gate.as_ref().map(|(w, b)| {
            let h = hidden.to_kind(Kind::Float);
            (h.matmul(&w.tr()) + b).squeeze_dim(-1).sigmoid()
        })
    }

    /// Logits of every loop's readout, (B, T, vocab) each, and the exit gate's λ per loop
    /// when the model has one: what the engine's early exit chooses between.
    pub fn loop_logits(&self, tokens: &Tensor) -> Result<(Vec<Tensor>, Vec<Tensor>)> {
        self.check_tokens(tokens, "tokens")?;
        let states = self.loop_hidden(tokens, true, None);
        let lambdas = states.iter().filter_map(|h| self.exit_lambda(h)).collect();
        Ok((states.iter().map(|h| self.head_logits(h)).collect(), lambdas))
    }

    /// The LoopLM training objective for checked `tokens`/`targets`: with an exit gate,
    /// p(t) = λ_t Π_{j<t}(1 − λ_j) for t < T and the remainder Π_{j<T}(1 − λ_j) on the last
    /// loop, per position; value = mean over positions of Σ_t p(t)·CE_t − β·H(p). Without a
    /// gate, the last loop's CE.
    pub fn loop_objective(&self, tokens: &Tensor, targets: &Tensor) -> LoopObjective {
        let vocab = self.config.vocab_size as i64;
        let flat_targets = targets.reshape([-1]);
        let gate = self.exit_gate.is_some();
        let states = self.loop_hidden(tokens, gate, None);
        let mut ces = Vec::with_capacity(states.len());
        let mut last_log_probs = None;
        for (t, h) in states.iter().enumerate() {
            let log_probs = self.head_logits(h).reshape([-1, vocab]).log_softmax(-1, Kind::Float);
            ces.push(log_probs.g_nll_loss::<Tensor>(&flat_targets, None, Reduction::None, -100));
            if t + 1 == states.len() {
                last_log_probs = Some(log_probs);
            }
        }
        let last_log_probs = last_log_probs.expect("at least one loop");
        let ce_last = ces.last().expect("at least one loop").mean(Kind::Float);
        let ce_per_loop = ces.iter().map(|c| c.mean(Kind::Float).detach()).collect();
        if !gate {
            return LoopObjective { value: ce_last.shallow_clone(), ce_last, ce_per_loop, last_log_probs, exit_probs: vec![] };
        }
        let loops = states.len();
        let mut survive = Tensor::ones_like(&ces[0]);
        let mut probs = Vec::with_capacity(loops);
        for (t, h) in states.iter().enumerate() {
            if t + 1 == loops {
                probs.push(survive.shallow_clone());
            } else {
                let lambda = self.exit_lambda(h).expect("gate").reshape([-1]);
                probs.push(&lambda * &survive);
                survive = &survive * (1.0 - &lambda);
            }
        }
        let mut expected = Tensor::zeros_like(&ces[0]);
        let mut entropy = Tensor::zeros_like(&ces[0]);
        for (p, ce) in probs.iter().zip(&ces) {
            expected = expected + p * ce;
            entropy = entropy - p * p.clamp_min(1e-12).log();
        }
        let beta = self.config.looping.as_ref().map_or(0.0, |l| l.entropy_weight);
        let value = (expected - entropy * beta).mean(Kind::Float);
        let exit_probs = probs.iter().map(|p| p.mean(Kind::Float).detach()).collect();
        LoopObjective { value, ce_last, ce_per_loop, last_log_probs, exit_probs }
    }

    /// Logits (B, T, vocab) for (B, T) int64 token ids.
    pub fn forward(&self, tokens: &Tensor) -> Result<Tensor> {
        self.check_tokens(tokens, "tokens")?;
        Ok(self.forward_prechecked(tokens))
    }

    /// [`Self::forward`] for tokens already validated with
    /// [`Self::check_tokens`] (e.g. on the host before the copy to a GPU,
    /// where each check would otherwise synchronize with the device).
    /// Inside [`Self::with_prequantized`] on CPU with the int8 BitLinear path
    /// ([`crate::cpu_bitlinear`]) the LM head is a bf16 matmul: bf16 logits,
    /// as under autocast (losses take their log-softmax in f32).
    pub fn forward_prechecked(&self, tokens: &Tensor) -> Tensor {
        let x = self.hidden(tokens, None);
        self.head_logits(&x)
    }

    /// Mean next-token cross-entropy of `targets` (same shape as `tokens`).
    pub fn loss(&self, tokens: &Tensor, targets: &Tensor) -> Result<Tensor> {
        if tokens.size() != targets.size() {
            return Err(TrainError::BadInput(format!(
                "targets shape {:?} differs from tokens shape {:?}",
                targets.size(),
                tokens.size()
            )));
        }
        self.check_tokens(targets, "targets")?;
        let logits = self.forward(tokens)?;
        // Cross-entropy in f32 at least (bf16 logits lose too much in log-softmax).
        let logits = match logits.kind() {
            Kind::Double => logits,
            _ => logits.to_kind(Kind::Float),
        };
        let vocab = self.config.vocab_size as i64;
        Ok(logits
            .reshape([-1, vocab])
            .cross_entropy_for_logits(&targets.reshape([-1])))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::FfnActivation;

    pub(crate) fn small_config(streams: usize, activation: FfnActivation, tied: bool) -> ModelConfig {
        ModelConfig {
            name: "test".into(),
            vocab_size: 64,
            dim: 32,
            n_layers: 2,
            n_heads: 4,
            n_kv_heads: 2,
            ffn_hidden: 48,
            ffn_activation: activation,
            max_seq_len: 16,
            rope_theta: 10_000.0,
            norm_eps: 1e-5,
            tie_embeddings: tied,
            mhc_streams: streams,
            ternary: true,
            looping: None,
        }
    }

    fn random_tokens(seed: i64, b: i64, t: i64, vocab: i64) -> Tensor {
        tch::manual_seed(seed);
        Tensor::randint(vocab, [b, t], (Kind::Int64, Device::Cpu))
    }

    #[test]
    fn variable_count_equals_param_count() {
        for streams in [1, 2, 4] {
            for activation in [FfnActivation::Swiglu, FfnActivation::Relu2] {
                for tied in [true, false] {
                    let config = small_config(streams, activation, tied);
                    let (vs, _) = Transformer::with_var_store(&config, Device::Cpu).unwrap();
                    let numel: i64 = vs.trainable_variables().iter().map(|t| t.numel() as i64).sum();
                    assert_eq!(numel as u64, config.param_count(), "{streams} {activation:?} {tied}");
                }
            }
        }
        // The tiny preset too (builds ~4M parameters in a few ms).
        let config = ModelConfig::preset("tiny").unwrap();
        let (vs, _) = Transformer::with_var_store(&config, Device::Cpu).unwrap();
        let numel: usize = vs.trainable_variables().iter().map(|t| t.numel()).sum();
        assert_eq!(numel as u64, config.param_count());
    }

    #[test]
    fn forward_shapes_and_initial_loss() {
        let config = small_config(2, FfnActivation::Swiglu, true);
        let (_vs, model) = Transformer::with_var_store(&config, Device::Cpu).unwrap();
        let tokens = random_tokens(1, 3, 10, 64);
        assert_eq!(model.forward(&tokens).unwrap().size(), vec![3, 10, 64]);
        let loss = model.loss(&tokens, &tokens).unwrap().double_value(&[]);
        // Small init: the model starts close to uniform over 64 tokens.
        assert!((loss - 64f64.ln()).abs() < 0.5, "initial loss {loss}");
    }

    #[test]
    fn attention_is_causal() {
        let config = small_config(4, FfnActivation::Relu2, false);
        let (_vs, model) = Transformer::with_var_store(&config, Device::Cpu).unwrap();
        let a = random_tokens(2, 1, 12, 64);
        let b = a.copy();
        let _ = b.narrow(1, 8, 4).fill_(5);
        let (la, lb) = (model.forward(&a).unwrap(), model.forward(&b).unwrap());
        assert!(la.narrow(1, 0, 8).allclose(&lb.narrow(1, 0, 8), 1e-5, 1e-6, false));
        assert!(!la.narrow(1, 8, 4).allclose(&lb.narrow(1, 8, 4), 1e-5, 1e-6, false));
    }

    #[test]
    fn prequantized_forward_equals_the_default_forward() {
        let config = small_config(2, FfnActivation::Swiglu, false);
        let (_vs, model) = Transformer::with_var_store(&config, Device::Cpu).unwrap();
        let tokens = random_tokens(3, 2, 9, 64);
        let plain = model.forward(&tokens).unwrap();
        let quantized: Vec<Tensor> = model
            .projection_weights()
            .iter()
            .map(crate::quant::ternarize)
            .collect();
        assert_eq!(quantized.len(), 2 * 7);
        let cached = model
            .with_prequantized(&quantized, || model.forward(&tokens).unwrap())
            .unwrap();
        // On CPU the prequantized path is the int8 BitLinear with bf16
        // attention and a bf16 LM head: equal up to bf16 rounding (8
        // significant bits) of q, k, v and the logits, which moves a few int8
        // activation roundings downstream (measured: 1.4 % relative L2, under
        // 2 % of the largest logit; 0.3 % / 0.4 % with f32 attention).
        let int8 = crate::cpu_bitlinear::enabled().unwrap();
        assert_eq!(cached.kind(), if int8 { Kind::BFloat16 } else { Kind::Float });
        let cached = cached.to_kind(Kind::Float);
        if int8 {
            let rel = (&plain - &cached).norm().double_value(&[]) / plain.norm().double_value(&[]);
            assert!(rel < 0.03, "relative L2 distance {rel}");
        }
        let tolerance = if int8 { 3e-2 * plain.abs().max().double_value(&[]) } else { 1e-6 };
        assert!(plain.allclose(&cached, 1e-6, tolerance, false));
        // Cleared afterwards: zero "quantized" weights would change the output.
        let zeros: Vec<Tensor> = quantized.iter().map(Tensor::zeros_like).collect();
        let zeroed = model.with_prequantized(&zeros, || model.forward(&tokens).unwrap()).unwrap();
        let zeroed = zeroed.to_kind(Kind::Float);
        assert!(!plain.allclose(&zeroed, 1e-3, 1e-3, false));
        assert!(plain.allclose(&model.forward(&tokens).unwrap(), 0.0, 0.0, false));
        assert!(model.with_prequantized(&quantized[1..], || ()).is_err());
    }

    #[test]
    fn full_precision_baseline_uses_the_latent_weights() {
        let mut config = small_config(1, FfnActivation::Swiglu, true);
        config.ternary = false;
        let (_vs, model) = Transformer::with_var_store(&config, Device::Cpu).unwrap();
        // Step weights are exact copies, not ternarized values.
        for (step, latent) in model.step_weights().iter().zip(model.projection_weights()) {
            assert!(step.equal(&latent));
            assert!(!step.equal(&crate::quant::ternarize(&latent)));
        }
        // The forward differs from the ternary model's on the same weights, and
        // the prequantized path (the trainer's) equals the default one.
        let tokens = random_tokens(4, 2, 9, 64);
        let full = model.forward(&tokens).unwrap();
        let cached = model.with_prequantized(&model.step_weights(), || model.forward(&tokens).unwrap()).unwrap();
        assert!(full.allclose(&cached, 1e-6, 1e-6, false));
        let ternary = model
            .with_prequantized(
                &model.projection_weights().iter().map(crate::quant::ternarize).collect::<Vec<_>>(),
                || model.forward(&tokens).unwrap(),
            )
            .unwrap();
        assert!(!full.allclose(&ternary, 1e-3, 1e-3, false));
    }

    #[test]
    fn bad_tokens_are_clear_errors() {
        let config = small_config(1, FfnActivation::Swiglu, true);
        let (_vs, model) = Transformer::with_var_store(&config, Device::Cpu).unwrap();
        let msg = |r: Result<Tensor>| r.unwrap_err().to_string();
        assert!(msg(model.forward(&Tensor::from_slice(&[1i64, 2]))).contains("(batch, seq)"));
        assert!(msg(model.forward(&Tensor::zeros([1, 4], (Kind::Float, Device::Cpu)))).contains("int64"));
        assert!(msg(model.forward(&Tensor::zeros([1, 17], (Kind::Int64, Device::Cpu)))).contains("max_seq_len"));
        assert!(msg(model.forward(&Tensor::from_slice(&[0i64, 64]).view([1, 2]))).contains("[0, 64]"));
        let t = Tensor::zeros([2, 4], (Kind::Int64, Device::Cpu));
        assert!(msg(model.loss(&t, &t.narrow(1, 0, 3))).contains("differs"));
    }
}
