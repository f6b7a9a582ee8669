"""Plain PyTorch eager reference of the Rust QAT model and its optimizers.

This is the yardstick of `benchmarks/bench_train.py`: the same model and math
as `rust/train` (`model.rs`, `layers.rs`, `quant.rs`, `mhc_layer.rs`,
`optim.rs`), written the way a competent PyTorch user would write it: an
`nn.Module` per layer, autograd, `F.scaled_dot_product_attention`, and
`torch.optim.Optimizer` subclasses for Muon and Lion. Nothing fancy: no
torch.compile, no custom kernels, weights re-quantized in every forward pass.

Parameter names equal `QatModel.named_parameters()` (`embed`,
`blocks.0.attn.wq`, `blocks.1.mhc_mlp.res.weight`, ...), so
`model.load_state_dict(qat.named_parameters())` copies a Rust model in
(`tests/test_bench_reference.py` checks logits, loss and optimizer steps).

Newton–Schulz iterates in the precision the Rust trainer picks
(`newton_schulz_dtype`: bf16 on CPUs with AVX512-BF16 and on CUDA, else f32),
as Keller Jordan's reference Muon does on GPUs.

Import it with `benchmarks/` on `sys.path`; it is not part of the package.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nanochat_ternary import mhc
from nanochat_ternary.model_config import ModelConfig

# ---- BitNet b1.58 fake quantization (rust/train/src/quant.rs) --------------

WEIGHT_EPS = 1e-5  # the codec's ABSMEAN_EPS
ACTIVATION_EPS = 1e-5
ACTIVATION_LEVELS = 127.0
EMBED_INIT_STD = 0.02


def ternarize(w: Tensor) -> Tensor:
    """Absmean ternary weights times their scale (the mean is accumulated in
    f64, as the codec does, so the trits match the exporter's)."""
    scale = w.abs().mean(dtype=torch.float64).to(w.dtype)
    return (w / (scale + WEIGHT_EPS)).round().clamp(-1, 1) * scale


def quantize_activations(x: Tensor) -> Tensor:
    """Per-token int8 absmax fake quantization over the last dimension."""
    scale = x.abs().amax(-1, keepdim=True).clamp_min(ACTIVATION_EPS).reciprocal() * ACTIVATION_LEVELS
    return (x * scale).round().clamp(-ACTIVATION_LEVELS - 1, ACTIVATION_LEVELS) / scale


def straight_through(x: Tensor, quantized: Tensor) -> Tensor:
    """Value of `quantized`, gradient of the identity."""
    return x + (quantized - x).detach()


def bit_linear(x: Tensor, weight: Tensor) -> Tensor:
    """q_int8(x) · ternary(W)ᵀ with straight-through gradients to x and W."""
    w = straight_through(weight, ternarize(weight))
    return straight_through(x, quantize_activations(x)) @ w.T


# ---- layers (rust/train/src/layers.rs) -------------------------------------


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(x.square().mean(-1, keepdim=True) + self.eps) * self.gain


class Rope(nn.Module):
    """Rotate-half rotary embeddings, tables precomputed for max_seq_len."""

    def __init__(self, c: ModelConfig) -> None:
        super().__init__()
        half = c.head_dim // 2
        inv_freq = (c.rope_theta ** (torch.arange(half, dtype=torch.float32) * (2.0 / c.head_dim))).reciprocal()
        angles = torch.outer(torch.arange(c.max_seq_len, dtype=torch.float32), inv_freq)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        """`x` is (B, T, heads, head_dim)."""
        t, half = x.shape[1], x.shape[3] // 2
        cos, sin = self.cos[:t, None, :], self.sin[:t, None, :]
        x1, x2 = x[..., :half], x[..., half:]
        return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1)


def _projection(out_dim: int, in_dim: int, std: float) -> nn.Parameter:
    return nn.Parameter(torch.randn(out_dim, in_dim) * std)


class Attention(nn.Module):
    def __init__(self, c: ModelConfig, out_std: float) -> None:
        super().__init__()
        d, kv = c.dim, c.n_kv_heads * c.head_dim
        std = d**-0.5
        self.wq, self.wk, self.wv = _projection(d, d, std), _projection(kv, d, std), _projection(kv, d, std)
        self.wo = _projection(d, d, out_std)
        self.n_heads, self.n_kv_heads, self.head_dim = c.n_heads, c.n_kv_heads, c.head_dim

    def forward(self, x: Tensor, rope: Rope) -> Tensor:
        b, t, _ = x.shape
        q = bit_linear(x, self.wq).view(b, t, self.n_heads, self.head_dim)
        k = bit_linear(x, self.wk).view(b, t, self.n_kv_heads, self.head_dim)
        v = bit_linear(x, self.wv).view(b, t, self.n_kv_heads, self.head_dim)
        q, k, v = rope(q).transpose(1, 2), rope(k).transpose(1, 2), v.transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=self.n_kv_heads != self.n_heads)
        return bit_linear(y.transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim), self.wo)


class Mlp(nn.Module):
    def __init__(self, c: ModelConfig, out_std: float) -> None:
        super().__init__()
        std = c.dim**-0.5
        self.gate = _projection(c.ffn_hidden, c.dim, std) if c.ffn_activation == "swiglu" else None
        self.up = _projection(c.ffn_hidden, c.dim, std)
        self.down = _projection(c.dim, c.ffn_hidden, out_std)

    def forward(self, x: Tensor) -> Tensor:
        up = bit_linear(x, self.up)
        hidden = F.silu(bit_linear(x, self.gate)) * up if self.gate is not None else F.relu(up).square()
        return bit_linear(hidden, self.down)


# ---- mHC-lite residual connection (rust/train/src/mhc_layer.rs) ------------


class StreamMap(nn.Module):
    """α·x̂W + b with W of shape (n·C, outputs)."""

    def __init__(self, init: mhc.MapParams) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.tensor(init.weight, dtype=torch.float32))
        self.alpha = nn.Parameter(torch.tensor([init.alpha], dtype=torch.float32))
        self.bias = nn.Parameter(torch.tensor(init.bias, dtype=torch.float32))

    def forward(self, x_hat: Tensor) -> Tensor:
        return x_hat @ self.weight * self.alpha + self.bias


class MhcConnection(nn.Module):
    """x' = H_res·x + H_postᵀ ⊗ F(H_pre·x) on (B, T, n, C) streams."""

    def __init__(self, n: int, dim: int, sublayer_index: int) -> None:
        super().__init__()
        init = mhc.init_params(n, dim, sublayer_index)
        self.res, self.pre, self.post = StreamMap(init.res), StreamMap(init.pre), StreamMap(init.post)
        perms = torch.from_numpy(mhc.permutations(n)).float().reshape(-1, n * n)
        self.register_buffer("permutations", perms, persistent=False)
        self.n = n

    def forward(self, streams: Tensor, sublayer: Callable[[Tensor], Tensor]) -> Tensor:
        b, t, n, _ = streams.shape
        flat = streams.flatten(2)
        x_hat = flat * torch.rsqrt(flat.square().mean(-1, keepdim=True) + mhc.RMS_NORM_EPS)
        h_res = (self.res(x_hat).softmax(-1) @ self.permutations).view(b, t, n, n)
        h_pre, h_post = self.pre(x_hat).sigmoid(), self.post(x_hat).sigmoid() * 2.0
        out = sublayer((h_pre.unsqueeze(-1) * streams).sum(2))
        return h_res @ streams + h_post.unsqueeze(-1) * out.unsqueeze(2)


# ---- the transformer (rust/train/src/model.rs) ------------------------------


class Block(nn.Module):
    def __init__(self, c: ModelConfig, index: int) -> None:
        super().__init__()
        out_std = c.dim**-0.5 / math.sqrt(2 * c.n_layers)
        self.attn_norm, self.attn = RMSNorm(c.dim, c.norm_eps), Attention(c, out_std)
        self.mlp_norm, self.mlp = RMSNorm(c.dim, c.norm_eps), Mlp(c, out_std)
        if c.mhc_streams > 1:
            self.mhc_attn = MhcConnection(c.mhc_streams, c.dim, 2 * index)
            self.mhc_mlp = MhcConnection(c.mhc_streams, c.dim, 2 * index + 1)
        else:
            self.mhc_attn = self.mhc_mlp = None

    def forward(self, x: Tensor, rope: Rope) -> Tensor:
        def attn(h: Tensor) -> Tensor:
            return self.attn(self.attn_norm(h), rope)

        def mlp(h: Tensor) -> Tensor:
            return self.mlp(self.mlp_norm(h))

        if self.mhc_attn is None or self.mhc_mlp is None:
            x = x + attn(x)
            return x + mlp(x)
        return self.mhc_mlp(self.mhc_attn(x, attn), mlp)


class ReferenceModel(nn.Module):
    """The ternary transformer; `loss` is the training objective."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        c = self.config = config
        self.embed = nn.Parameter(torch.randn(c.vocab_size, c.dim) * EMBED_INIT_STD)
        self.head = None if c.tie_embeddings else nn.Parameter(torch.randn(c.vocab_size, c.dim) * EMBED_INIT_STD)
        self.blocks = nn.ModuleList(Block(c, i) for i in range(c.n_layers))
        self.final_norm = RMSNorm(c.dim, c.norm_eps)
        self.rope = Rope(c)

    def forward(self, tokens: Tensor) -> Tensor:
        """Logits (B, T, vocab) for (B, T) int64 ids."""
        n = self.config.mhc_streams
        x = F.embedding(tokens, self.embed)
        if n > 1:
            x = x.unsqueeze(2).expand(-1, -1, n, -1).contiguous()
        for block in self.blocks:
            x = block(x, self.rope)
        if n > 1:
            x = x.sum(2)  # collapse; the final RMSNorm removes the n× scale
        x = self.final_norm(x)
        return x @ (self.embed if self.head is None else self.head).T

    def loss(self, tokens: Tensor, targets: Tensor) -> Tensor:
        logits = self(tokens)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


# ---- optimizers and schedule (rust/train/src/optim.rs) ---------------------

NEWTON_SCHULZ_COEFFS = (3.4445, -4.7750, 2.0315)
NEWTON_SCHULZ_STEPS = 5


def newton_schulz_dtype(device: torch.device | str = "cpu") -> torch.dtype:
    """The precision of the iteration, chosen as the Rust trainer chooses it
    (`optim::newton_schulz_kind`): bf16 on CUDA and on CPUs with native bf16
    arithmetic (AVX512-BF16), f32 elsewhere."""
    if torch.device(device).type == "cuda":
        return torch.bfloat16
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            native_bf16 = any(line.startswith("flags") and "avx512_bf16" in line.split() for line in f)
    except OSError:  # no procfs: not Linux, assume no native bf16
        native_bf16 = False
    return torch.bfloat16 if native_bf16 else torch.float32


def newton_schulz(g: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """≈ U·Vᵀ of a 2-D matrix by the quintic iteration, on the wide
    orientation, normalized in f32 and iterated in `dtype`; each step as two
    scaled GEMMs (`torch.addmm` with beta / alpha), the form of PyTorch's own
    `torch.optim.Muon` and of the Rust trainer."""
    a, b, c = NEWTON_SCHULZ_COEFFS
    x = g.float()
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.T
    x = (x / (x.norm() + 1e-7)).to(dtype)
    for _ in range(NEWTON_SCHULZ_STEPS):
        gram = x @ x.T
        poly = torch.addmm(gram, gram, gram, beta=b, alpha=c)
        x = torch.addmm(x, poly, x, beta=a)
    return (x.T if tall else x).to(g.dtype)


class Muon(torch.optim.Optimizer):
    """Nesterov momentum, Newton–Schulz orthogonalized, scaled by max(1, rows/cols)^0.5."""

    def __init__(
        self,
        params: Iterable[Tensor],
        lr: float,
        weight_decay: float = 0.0,
        momentum: float = 0.95,
        ns_dtype: torch.dtype = torch.float32,
    ):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum, ns_dtype=ns_dtype))

    @torch.no_grad()
    def step(self, closure: None = None) -> None:  # type: ignore[override]
        for group in self.param_groups:
            lr, wd, beta, ns_dtype = group["lr"], group["weight_decay"], group["momentum"], group["ns_dtype"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                state = self.state[p]
                if "buffer" not in state:
                    state["buffer"] = torch.zeros_like(p)
                buf = state["buffer"]
                buf.mul_(beta).add_(g)
                scale = max(1.0, p.shape[0] / p.shape[1]) ** 0.5
                update = newton_schulz(g + buf * beta, ns_dtype) * scale
                p.sub_((update + p * wd) * lr)


class Lion(torch.optim.Optimizer):
    """θ ← θ − lr·(sign(β1·m + (1−β1)·g) + λ·θ); m ← β2·m + (1−β2)·g."""

    def __init__(self, params: Iterable[Tensor], lr: float, weight_decay: float = 0.0, betas=(0.9, 0.99)):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, betas=betas))

    @torch.no_grad()
    def step(self, closure: None = None) -> None:  # type: ignore[override]
        for group in self.param_groups:
            lr, wd, (beta1, beta2) = group["lr"], group["weight_decay"], group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                state = self.state[p]
                if "momentum" not in state:
                    state["momentum"] = torch.zeros_like(p)
                m = state["momentum"]
                direction = (m * beta1 + g * (1 - beta1)).sign()
                p.sub_((direction + p * wd) * lr)
                m.mul_(beta2).add_(g * (1 - beta2))


@dataclass(frozen=True)
class Wsd:
    """Warmup-stable-decay: linear warmup to `peak`, constant, then a linear or
    cosine decay to `floor` over the last round(decay_fraction·total) steps."""

    peak: float
    floor: float
    total: int
    warmup: int
    decay_fraction: float = 0.2
    cosine: bool = False

    @property
    def decay(self) -> int:
        return math.floor(self.decay_fraction * self.total + 0.5)  # Rust's f64::round (half away from 0)

    def lr(self, step: int) -> float:
        if step < self.warmup:
            return self.peak * (step + 1) / self.warmup
        decay_start = self.total - self.decay
        if step < decay_start:
            return self.peak
        progress = min((step - decay_start + 1) / self.decay, 1.0)
        factor = 0.5 * (1 + math.cos(math.pi * progress)) if self.cosine else 1 - progress
        return self.floor + (self.peak - self.floor) * factor


# ---- one optimizer step (rust/train/src/trainer.rs) -------------------------


@dataclass(frozen=True)
class TrainHyper:
    """The Rust `TrainHyper` (same names and defaults)."""

    total_steps: int = 1000
    lr_muon: float = 0.02
    lr_lion: float = 1e-3
    weight_decay: float = 0.0
    warmup: int = 10
    decay_frac: float = 0.2
    lr_floor: float = 0.0
    clip: float = 1.0
    entropy_weight: float = 0.0
    seed: int = 0


def is_projection(name: str) -> bool:
    """The 2-D block projections (BitLinear weights) that Muon updates."""
    parts = name.split(".")
    return len(parts) == 4 and parts[0] == "blocks" and parts[2] in ("attn", "mlp")


class ReferenceTrainer:
    """Gradient accumulation over micro-batches (each weighted by its share
    of the step's tokens), global-norm clipping, Muon on the projections
    (with weight decay), Lion on the rest, both scaled by one WSD factor.

    Two stronger variants of the same math for the benchmark: `autocast`
    runs each forward pass (model and loss) under CPU/CUDA bf16 autocast
    (backward outside it, as PyTorch recommends); `compile` runs the model
    through `torch.compile` (inductor), the optimizers stay eager."""

    def __init__(self, model: ReferenceModel, hyper: TrainHyper, autocast: bool = False, compile: bool = False) -> None:
        self.model, self.hyper = model, hyper
        self.autocast = autocast
        self.forward = torch.compile(model) if compile else model
        named = list(model.named_parameters())
        muon = [p for n, p in named if is_projection(n)]
        lion = [p for n, p in named if not is_projection(n)]
        device = next(model.parameters()).device
        self.muon = Muon(muon, lr=hyper.lr_muon, weight_decay=hyper.weight_decay, ns_dtype=newton_schulz_dtype(device))
        self.lion = Lion(lion, lr=hyper.lr_lion, weight_decay=0.0)
        self.schedule = Wsd(1.0, hyper.lr_floor, hyper.total_steps, hyper.warmup, hyper.decay_frac)
        self.steps_done = 0

    def objective(self, tokens: Tensor, targets: Tensor) -> Tensor:
        """CE − w·H (w = entropy_weight), H the mean predicted entropy."""
        logits = self.forward(tokens)
        log_probs = logits.reshape(-1, logits.shape[-1]).float().log_softmax(-1)
        ce = F.nll_loss(log_probs, targets.reshape(-1))
        if self.hyper.entropy_weight == 0.0:
            return ce
        entropy = -(log_probs.exp() * log_probs).sum(-1).mean()
        return ce - self.hyper.entropy_weight * entropy

    def step(self, micro_batches: Sequence[tuple[Tensor, Tensor]]) -> float:
        """One optimizer step; returns the objective (token-weighted mean)."""
        if not micro_batches:
            raise ValueError("a step needs at least one micro-batch")
        total_tokens = sum(tokens.numel() for tokens, _ in micro_batches)
        loss = 0.0
        for tokens, targets in micro_batches:
            share = tokens.numel() / total_tokens
            with torch.autocast(tokens.device.type, dtype=torch.bfloat16, enabled=self.autocast):
                micro_loss = self.objective(tokens, targets) * share
            micro_loss.backward()
            loss += micro_loss.item()
        if self.hyper.clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.hyper.clip)
        factor = self.schedule.lr(self.steps_done)
        for optimizer, peak in ((self.muon, self.hyper.lr_muon), (self.lion, self.hyper.lr_lion)):
            for group in optimizer.param_groups:
                group["lr"] = peak * factor
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        self.steps_done += 1
        return loss
