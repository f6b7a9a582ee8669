//! The sub-layers of a block: RMSNorm, rotary embeddings, grouped-query
//! attention and the FFN. Every projection is a BitLinear
//! ([`crate::quant::bit_linear`]); norms keep full-precision gains.
use std::cell::RefCell;

use tch::nn::{Init, Path};
use tch::{Device, Kind, Tensor};

use crate::config::{FfnActivation, ModelConfig};
use crate::cpu_attention;
use crate::cpu_bitlinear::{self, PackedTernary, Prologue};
use crate::quant::{bit_linear, bit_linear_prequantized};

/// Ternarized values of a layer's projections, set for the duration of one
/// optimizer step (see `Transformer::with_prequantized`) so every
/// micro-batch reuses them instead of ternarizing again. `None`: ternarize
/// on the fly (the plain STE path). On CPU the values are also packed for
/// the integer forward of [`crate::cpu_bitlinear`] (once per step), the
/// projections of one input stacked into one weight (`groups`).
#[derive(Debug)]
struct Prequantized {
    weights: RefCell<Option<Vec<Tensor>>>,
    /// Projection indices stacked by rows into one packed weight, in order (e.g. q, k, v).
    groups: Vec<Vec<usize>>,
    /// One entry per group, or empty for the fake-quant path (CUDA, values
    /// that are not t·s, `NCT_QAT_MATMUL=fp32`).
    packed: RefCell<Vec<PackedTernary>>,
    /// `false`: the full-precision baseline (`ModelConfig::ternary`).
    ternary: bool,
}

impl Prequantized {
    fn new(ternary: bool, groups: Vec<Vec<usize>>) -> Self {
        Self { weights: RefCell::new(None), groups, packed: RefCell::new(Vec::new()), ternary }
    }

    fn set(&self, weights: Option<Vec<Tensor>>) {
        let int8 = self.ternary && cpu_bitlinear::enabled().unwrap_or(false);
        let packed = match (&weights, int8) {
            // All groups or none; a packing failure (e.g. a libtorch without oneDNN) keeps the fake-quant path.
            (Some(weights), true) => self
                .groups
                .iter()
                .map(|group| {
                    let stacked = Tensor::cat(&group.iter().map(|&i| weights[i].detach()).collect::<Vec<_>>(), 0);
                    PackedTernary::pack(&stacked).ok().flatten()
                })
                .collect::<Option<Vec<_>>>()
                .unwrap_or_default(),
            _ => Vec::new(),
        };
        *self.packed.borrow_mut() = packed;
        *self.weights.borrow_mut() = weights;
    }

    /// Whether `x` goes through the CPU integer path (packed weights set, an f32 CPU input):
    /// there the rest of the sub-layer runs in bf16 as well, as under CPU bf16 autocast.
    fn int8_cpu(&self, x: &Tensor) -> bool {
        x.device() == Device::Cpu && x.kind() == Kind::Float && !self.packed.borrow().is_empty()
    }

    /// Group number `group` on the CPU integer path: `prologue(x)` times its stacked projections
    /// (their outputs side by side); `None` off that path.
    fn group(&self, x: &Tensor, group: usize, prologue: Prologue) -> Option<Tensor> {
        if !self.int8_cpu(x) {
            return None;
        }
        let weights = self.weights.borrow();
        let weights = weights.as_ref().expect("packed weights come with their values");
        let members = &self.groups[group];
        // The leaves themselves (a concatenation carries the gradient back to each).
        let stacked = match members.as_slice() {
            [only] => weights[*only].shallow_clone(),
            _ => Tensor::cat(&members.iter().map(|&i| &weights[i]).collect::<Vec<_>>(), 0),
        };
        Some(self.packed.borrow()[group].apply(x, prologue, &stacked).unwrap_or_else(|e| panic!("{e}")))
    }

    /// BitLinear of projection number `index`, whose latent weight is `latent` (the
    /// fake-quant and full-precision paths).
    fn linear(&self, x: &Tensor, index: usize, latent: &Tensor) -> Tensor {
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

    /// The norm as the prologue of the CPU integer BitLinear (fused into its quantization).
    fn prologue(&self) -> Prologue<'_> {
        Prologue::Norm { gain: &self.gain, eps: self.eps }
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
            // q, k and v read one input: one stacked weight on the CPU integer path.
            prequantized: Prequantized::new(config.ternary, vec![vec![0, 1, 2], vec![3]]),
        }
    }

    /// The projection weights in the order [`Self::set_prequantized`] expects.
    pub fn projections(&self) -> Vec<&Tensor> {
        vec![&self.wq, &self.wk, &self.wv, &self.wo]
    }

    /// Whether `x` (any f32 CPU activations of this layer's block) takes the CPU integer path.
    pub fn integer_path(&self, x: &Tensor) -> bool {
        self.prequantized.int8_cpu(x)
    }

    /// Use these ternarized values (one per [`Self::projections`] entry)
    /// instead of ternarizing in the forward pass; `None` restores the default.
    pub fn set_prequantized(&self, weights: Option<Vec<Tensor>>) {
        self.prequantized.set(weights)
    }

    /// Attention of `norm(x)`; `x` is (B, T, dim). On the CPU integer path (see
    /// `Prequantized::int8_cpu`) the norm is fused into the quantization of one stacked q/k/v
    /// projection, and rotary + attention are one autograd function ([`cpu_attention`]: q, k
    /// and v rounded once to bf16, flash attention with f32 accumulation, as CPU bf16 autocast
    /// runs it); the output projection gets f32 back.
    pub fn forward(&self, x: &Tensor, norm: &RmsNorm, rope: &Rope) -> Tensor {
        let (b, t) = (x.size()[0], x.size()[1]);
        let pq = &self.prequantized;
        if let Some(qkv) = pq.group(x, 0, norm.prologue()) {
            let y = cpu_attention::attention(&qkv, &rope.cos, &rope.sin, self.n_heads, self.n_kv_heads)
                .unwrap_or_else(|e| panic!("{e}"));
            return pq.group(&y, 1, Prologue::Plain).expect("the integer path packs every group");
        }
        let h = norm.forward(x);
        let q = pq.linear(&h, 0, &self.wq).view([b, t, self.n_heads, self.head_dim]);
        let k = pq.linear(&h, 1, &self.wk).view([b, t, self.n_kv_heads, self.head_dim]);
        let v = pq.linear(&h, 2, &self.wv).view([b, t, self.n_kv_heads, self.head_dim]);
        let (q, k, v) = (rope.apply(&q).transpose(1, 2), rope.apply(&k).transpose(1, 2), v.transpose(1, 2));
        let grouped = self.n_kv_heads != self.n_heads;
        let y = Tensor::scaled_dot_product_attention(&q, &k, &v, None::<Tensor>, 0.0, true, None, grouped);
        pq.linear(&y.transpose(1, 2).reshape([b, t, self.n_heads * self.head_dim]), 3, &self.wo)
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
            // gate and up read one input: one stacked weight (gate | up) on the CPU integer path,
            // whose output the down projection's SwiGLU prologue reads.
            prequantized: Prequantized::new(
                config.ternary,
                match config.ffn_activation {
                    FfnActivation::Swiglu => vec![vec![2, 0], vec![1]],
                    FfnActivation::Relu2 => vec![vec![0], vec![1]],
                },
            ),
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

    /// The FFN of `norm(x)`. On the CPU integer path the norm is fused into the quantization of
    /// the stacked gate/up projection and SwiGLU into the down projection's.
    pub fn forward(&self, x: &Tensor, norm: &RmsNorm) -> Tensor {
        let pq = &self.prequantized;
        if let Some(y) = pq.group(x, 0, norm.prologue()) {
            let down = match self.gate {
                Some(_) => pq.group(&y, 1, Prologue::Swiglu),
                None => pq.group(&y.relu().square(), 1, Prologue::Plain),
            };
            return down.expect("the integer path packs every group");
        }
        let x = &norm.forward(x);
        let up = pq.linear(x, 0, &self.up);
        let hidden = match &self.gate {
            Some(gate) => pq.linear(x, 2, gate).silu() * up,
            None => up.relu().square(),
        };
        pq.linear(&hidden, 1, &self.down)
    }
}
