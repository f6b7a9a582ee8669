//! The sub-layers of a block: RMSNorm, rotary embeddings, grouped-query
//! attention and the FFN. Every projection is a BitLinear
//! ([`crate::quant::bit_linear`]); norms keep full-precision gains.
use std::cell::RefCell;

use tch::nn::{Init, Path};
use tch::{Device, Kind, Tensor};

use crate::config::{FfnActivation, ModelConfig};
use crate::cpu_bitlinear::{self, PackedTernary};
use crate::quant::{bit_linear, bit_linear_prequantized};

/// Ternarized values of a layer's projections, set for the duration of one
/// optimizer step (see `Transformer::with_prequantized`) so every
/// micro-batch reuses them instead of ternarizing again. `None`: ternarize
/// on the fly (the plain STE path). On CPU the values are also packed for
/// the integer forward of [`crate::cpu_bitlinear`] (once per step).
#[derive(Debug)]
struct Prequantized {
    weights: RefCell<Option<Vec<Tensor>>>,
    /// One entry per weight: its packed forms, or `None` for the fake-quant
    /// path (CUDA, values that are not t·s, `NCT_QAT_MATMUL=fp32`).
    packed: RefCell<Vec<Option<PackedTernary>>>,
    /// `false`: the full-precision baseline (`ModelConfig::ternary`).
    ternary: bool,
}

impl Prequantized {
    fn new(ternary: bool) -> Self {
        Self { weights: RefCell::new(None), packed: RefCell::new(Vec::new()), ternary }
    }

    fn set(&self, weights: Option<Vec<Tensor>>) {
        let int8 = self.ternary && cpu_bitlinear::enabled().unwrap_or(false);
        let packed = match (&weights, int8) {
            // A packing failure (e.g. a libtorch without oneDNN) keeps the fake-quant path.
            (Some(weights), true) => weights.iter().map(|w| PackedTernary::pack(w).ok().flatten()).collect(),
            _ => Vec::new(),
        };
        *self.packed.borrow_mut() = packed;
        *self.weights.borrow_mut() = weights;
    }

    /// Whether `x` goes through the CPU integer path (packed weights set, an f32 CPU input):
    /// there the rest of the sub-layer runs in bf16 as well, as under CPU bf16 autocast.
    fn int8_cpu(&self, x: &Tensor) -> bool {
        x.device() == Device::Cpu && x.kind() == Kind::Float && self.packed.borrow().iter().any(Option::is_some)
    }

    /// BitLinear of projection number `index`, whose latent weight is `latent`.
    fn linear(&self, x: &Tensor, index: usize, latent: &Tensor) -> Tensor {
        if let Some(Some(packed)) = self.packed.borrow().get(index) {
            if x.device() == Device::Cpu && x.kind() == Kind::Float {
                let weights = self.weights.borrow();
                let wq = &weights.as_ref().expect("packed weights come with their values")[index];
                return packed.linear(x, wq).unwrap_or_else(|e| panic!("{e}"));
            }
        }
        match (self.weights.borrow().as_ref(), self.ternary) {
            (Some(quantized), true) => bit_linear_prequantized(x, &quantized[index]),
            (None, true) => bit_linear(x, latent),
            (Some(weights), false) => x.matmul(&weights[index].tr()),
            (None, false) => x.matmul(&latent.tr()),
        }
    }
}

/// x · rsqrt(mean(x²) + ε) · g over the last dimension.
#[derive(Debug)]
pub struct RmsNorm {
    pub gain: Tensor,
    eps: f64,
}

impl RmsNorm {
    pub fn new(p: Path, dim: i64, eps: f64) -> Self {
        Self {
            gain: p.var("gain", &[dim], Init::Const(1.0)),
            eps,
        }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let mean_square = x.square().mean_dim([-1i64].as_slice(), true, x.kind());
        x * (mean_square + self.eps).rsqrt() * &self.gain
    }
}

/// A (out, in) BitLinear weight, N(0, std²) at init.
fn projection(p: &Path, name: &str, out_dim: i64, in_dim: i64, std: f64) -> Tensor {
    p.var(name, &[out_dim, in_dim], Init::Randn { mean: 0.0, stdev: std })
}

/// Rotary position embedding tables, in the "rotate half" layout (the first
/// and second halves of each head are the pairs), the layout of HF llama.
#[derive(Debug)]
pub struct Rope {
    cos: Tensor,
    sin: Tensor,
}

impl Rope {
    pub fn new(config: &ModelConfig, device: tch::Device) -> Self {
        let half = (config.head_dim() / 2) as i64;
        let options = (Kind::Float, device);
        let exponents = Tensor::arange(half, options) * (2.0 / config.head_dim() as f64);
        let inv_freq = Tensor::from(config.rope_theta)
            .to_device(device)
            .pow(&exponents)
            .reciprocal();
        let positions = Tensor::arange(config.max_seq_len as i64, options);
        let angles = positions.outer(&inv_freq); // (max_seq_len, half)
        Self {
            cos: angles.cos(),
            sin: angles.sin(),
        }
    }

    /// `x` is (B, T, heads, head_dim); positions are 0..T.
    pub fn apply(&self, x: &Tensor) -> Tensor {
        let (t, half) = (x.size()[1], x.size()[3] / 2);
        let cos = self.cos.narrow(0, 0, t).unsqueeze(1).to_kind(x.kind());
        let sin = self.sin.narrow(0, 0, t).unsqueeze(1).to_kind(x.kind());
        let (x1, x2) = (x.narrow(-1, 0, half), x.narrow(-1, half, half));
        Tensor::cat(&[&x1 * &cos - &x2 * &sin, &x1 * &sin + &x2 * &cos], -1)
    }
}

/// Causal grouped-query self-attention through libtorch's fused SDPA.
#[derive(Debug)]
pub struct Attention {
    pub wq: Tensor,
    pub wk: Tensor,
    pub wv: Tensor,
    pub wo: Tensor,
    n_heads: i64,
    n_kv_heads: i64,
    head_dim: i64,
    prequantized: Prequantized,
}

impl Attention {
    pub fn new(p: Path, config: &ModelConfig, out_std: f64) -> Self {
        let (d, kv) = (config.dim as i64, config.kv_dim() as i64);
        let std = (d as f64).powf(-0.5);
        Self {
            wq: projection(&p, "wq", d, d, std),
            wk: projection(&p, "wk", kv, d, std),
            wv: projection(&p, "wv", kv, d, std),
            wo: projection(&p, "wo", d, d, out_std),
            n_heads: config.n_heads as i64,
            n_kv_heads: config.n_kv_heads as i64,
            head_dim: config.head_dim() as i64,
            prequantized: Prequantized::new(config.ternary),
        }
    }

    /// The projection weights in the order [`Self::set_prequantized`] expects.
    pub fn projections(&self) -> Vec<&Tensor> {
        vec![&self.wq, &self.wk, &self.wv, &self.wo]
    }

    /// Use these ternarized values (one per [`Self::projections`] entry)
    /// instead of ternarizing in the forward pass; `None` restores the default.
    pub fn set_prequantized(&self, weights: Option<Vec<Tensor>>) {
        self.prequantized.set(weights)
    }

    /// `x` is (B, T, dim). On the CPU integer path (see `Prequantized::int8_cpu`) the fused
    /// attention runs in bf16 (rotated q, k and v rounded once, f32 accumulation inside SDPA),
    /// as CPU bf16 autocast runs it; the output projection gets f32 back.
    pub fn forward(&self, x: &Tensor, rope: &Rope) -> Tensor {
        let (b, t) = (x.size()[0], x.size()[1]);
        let pq = &self.prequantized;
        let bf16 = pq.int8_cpu(x);
        let half = |y: Tensor| if bf16 { y.to_kind(Kind::BFloat16) } else { y };
        let q = pq.linear(x, 0, &self.wq).view([b, t, self.n_heads, self.head_dim]);
        let k = pq.linear(x, 1, &self.wk).view([b, t, self.n_kv_heads, self.head_dim]);
        let v = pq.linear(x, 2, &self.wv).view([b, t, self.n_kv_heads, self.head_dim]);
        let (q, k) = (half(rope.apply(&q)).transpose(1, 2), half(rope.apply(&k)).transpose(1, 2));
        let v = half(v).transpose(1, 2);
        let grouped = self.n_kv_heads != self.n_heads;
        let y = Tensor::scaled_dot_product_attention(&q, &k, &v, None::<Tensor>, 0.0, true, None, grouped);
        let y = y.transpose(1, 2).reshape([b, t, self.n_heads * self.head_dim]);
        let y = if bf16 { y.to_kind(Kind::Float) } else { y };
        pq.linear(&y, 3, &self.wo)
    }
}

/// SwiGLU (gate, up, down) or ReLU² (up, down) feed-forward.
#[derive(Debug)]
pub struct Mlp {
    pub gate: Option<Tensor>,
    pub up: Tensor,
    pub down: Tensor,
    prequantized: Prequantized,
}

impl Mlp {
    pub fn new(p: Path, config: &ModelConfig, out_std: f64) -> Self {
        let (d, h) = (config.dim as i64, config.ffn_hidden as i64);
        let std = (d as f64).powf(-0.5);
        let gate = match config.ffn_activation {
            FfnActivation::Swiglu => Some(projection(&p, "gate", h, d, std)),
            FfnActivation::Relu2 => None,
        };
        Self {
            gate,
            up: projection(&p, "up", h, d, std),
            down: projection(&p, "down", d, h, out_std),
            prequantized: Prequantized::new(config.ternary),
        }
    }

    /// The projection weights in the order [`Self::set_prequantized`] expects
    /// (up, down, then gate for SwiGLU).
    pub fn projections(&self) -> Vec<&Tensor> {
        let mut weights = vec![&self.up, &self.down];
        weights.extend(self.gate.as_ref());
        weights
    }

    /// See [`Attention::set_prequantized`].
    pub fn set_prequantized(&self, weights: Option<Vec<Tensor>>) {
        self.prequantized.set(weights)
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let pq = &self.prequantized;
        let up = pq.linear(x, 0, &self.up);
        let hidden = match &self.gate {
            Some(gate) => pq.linear(x, 2, gate).silu() * up,
            None => up.relu().square(),
        };
        pq.linear(&hidden, 1, &self.down)
    }
}
