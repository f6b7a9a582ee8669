"""The forward pass of an exported ternary model on a torch device (the GPU path of ``TernaryModel``).

    from nanochat_ternary.cuda.model import TorchForward
    fwd = TorchForward.from_gguf("model.gguf", config, device="cuda")
    cache = fwd.new_cache()
    logits = fwd(torch.tensor(ids), cache)          # (len(ids), vocab) float32, on the device

The math is the Rust engine's (``rust/engine/src/forward.rs``): RMSNorm, adjacent-pair RoPE, GQA
causal attention over a KV cache, SwiGLU or ReLU² FFN, mHC-lite streams (maps in float64, as the
engine), final norm and head. Ternary block matrices (TQ2_0/TQ1_0) run as the int8 x ternary
kernels of :mod:`.ops` with the engine's activation quantizer; the embedding, the head and dense
block matrices are float32 (dense block matrices of our exports get int8 activations first, as in
the engine). Differences to the CPU engine: the KV cache is float32 (the engine's ``kv_cache="f32"``),
and float products are summed in another order, so logits agree closely, not bit for bit. On a CPU device the same code runs the kernels'
references, which is how it is tested without a GPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .. import codec, mhc
from ..gguf import GGUFReader
from ..model_config import ModelConfig
from . import ops

__all__ = ["TorchForward", "KvCache", "sample_next", "generate_tokens"]


@dataclass
class KvCache:
    """Keys and values per layer, ``(kv_heads, positions, head_dim)`` float32, grown as needed."""

    keys: list[torch.Tensor] = field(default_factory=list)
    values: list[torch.Tensor] = field(default_factory=list)
    length: int = 0


@dataclass
class _Mhc:
    weights: list[torch.Tensor]  # res, pre, post: (n * dim, outputs) float64
    alphas: list[float]
    biases: list[torch.Tensor]
    perms: torch.Tensor  # (n!, n, n) float64


@dataclass
class _Layer:
    attn_norm: torch.Tensor
    wq: Any
    wk: Any
    wv: Any
    wo: Any
    ffn_norm: torch.Tensor
    gate: Any
    up: Any
    down: Any
    mhc: tuple[_Mhc, _Mhc] | None


class TorchForward:
    """Weights on ``device`` and the forward pass over them; build with :meth:`from_gguf`."""

    def __init__(self, config: ModelConfig, device: torch.device, bitlinear: bool) -> None:
        self.config = config
        self.device = device
        self.bitlinear = bitlinear
        self.layers: list[_Layer] = []
        self.embedding = torch.empty(0)
        self.output_norm = torch.empty(0)
        self.head: Any = None
        hd = config.head_dim
        half = hd // 2
        pos = np.arange(config.max_seq_len, dtype=np.float64)[:, None]
        inv_freq = 1.0 / config.rope_theta ** (2.0 * np.arange(half, dtype=np.float64) / hd)
        angle = pos * inv_freq
        self.cos = torch.from_numpy(np.cos(angle).astype(np.float32)).to(device)
        self.sin = torch.from_numpy(np.sin(angle).astype(np.float32)).to(device)

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_gguf(cls, path: str | os.PathLike[str], config: ModelConfig, device: str | torch.device) -> TorchForward:
        """Loads a ``.gguf`` model (ours or a plain llama file) onto ``device``."""
        reader = GGUFReader(path)
        arch = reader.metadata.get("general.architecture")
        if arch == "nanochat-ternary-loop" or config.loop is not None and config.loop.get("loops", 1) > 1:
            raise ValueError(
                f"{path}: a LoopLM model (architecture {arch!r}, loop={config.loop}); this torch forward runs "
                "each block once and does not know loops: use the CPU engine (device='cpu')"
            )
        bitlinear = "nct.config" in reader.metadata or arch == "nanochat-ternary"
        self = cls(config, torch.device(device), bitlinear)
        c, d = config, config.dim
        kv, h, n = config.n_kv_heads * config.head_dim, config.ffn_hidden, config.mhc_streams
        for i in range(c.n_layers):
            b = f"blk.{i}."
            self.layers.append(
                _Layer(
                    attn_norm=self._vector(reader, b + "attn_norm.weight", d),
                    wq=self._matrix(reader, b + "attn_q.weight", d, d),
                    wk=self._matrix(reader, b + "attn_k.weight", kv, d),
                    wv=self._matrix(reader, b + "attn_v.weight", kv, d),
                    wo=self._matrix(reader, b + "attn_output.weight", d, d),
                    ffn_norm=self._vector(reader, b + "ffn_norm.weight", d),
                    gate=self._matrix(reader, b + "ffn_gate.weight", h, d) if c.ffn_activation == "swiglu" else None,
                    up=self._matrix(reader, b + "ffn_up.weight", h, d),
                    down=self._matrix(reader, b + "ffn_down.weight", d, h),
                    mhc=(self._mhc(reader, b + "mhc_attn", n, d), self._mhc(reader, b + "mhc_mlp", n, d)) if n > 1 else None,
                )
            )
        self.embedding = self._dense(reader, "token_embd.weight", c.vocab_size, d)
        self.output_norm = self._vector(reader, "output_norm.weight", d)
        names = {t.name for t in reader.tensors}
        head = "output.weight" if "output.weight" in names else "token_embd.weight"
        self.head = self._matrix(reader, head, c.vocab_size, d, block=False)
        if isinstance(self.head, torch.Tensor) and reader.tensor_info(head).ggml_type == "Q8_0":
            self.head = ("q8_0", self.head)  # activations quantized per 32 values, as the engine's Q8_0 x Q8_0 head
        return self

    def _vector(self, reader: GGUFReader, name: str, length: int) -> torch.Tensor:
        v = np.asarray(reader.tensor(name), dtype=np.float32).reshape(-1)
        if v.size != length or not np.isfinite(v).all():
            raise ValueError(f"{name}: expected {length} finite values, got {v.size}")
        return torch.from_numpy(v.copy()).to(self.device)

    def _dense(self, reader: GGUFReader, name: str, rows: int, cols: int) -> torch.Tensor:
        info = reader.tensor_info(name)
        if info.shape != (rows, cols):
            raise ValueError(f"{name}: shape {info.shape}, expected {(rows, cols)}")
        if info.ggml_type not in ("F32", "F16", "BF16", "Q8_0"):
            raise ValueError(f"{name}: unsupported type {info.ggml_type} for a dense matrix (F32, F16, BF16, Q8_0)")
        w = np.ascontiguousarray(reader.tensor(name), dtype=np.float32)
        if not np.isfinite(w).all():
            raise ValueError(f"{name}: non-finite values")
        return torch.from_numpy(w).to(self.device)

    def _matrix(self, reader: GGUFReader, name: str, rows: int, cols: int, block: bool = True) -> Any:
        """A ternary matrix as ``ops.PackedTernary``, else a float32 tensor."""
        info = reader.tensor_info(name)
        if info.ggml_type in ("TQ2_0", "TQ1_0"):
            if info.shape != (rows, cols):
                raise ValueError(f"{name}: shape {info.shape}, expected {(rows, cols)}")
            trits, scales = codec.unpack(reader.tensor_bytes(name), (rows, cols), info.ggml_type.lower())
            per_row = scales.reshape(rows, -1)
            if not (per_row == per_row[:, :1]).all():
                raise ValueError(
                    f"{name}: its 256-weight blocks have different scales within a row; the CUDA kernels take "
                    "one scale per row (our exports have one per tensor)"
                )
            return ops.PackedTernary.from_trits(trits, per_row[:, 0].copy(), self.device)
        w = self._dense(reader, name, rows, cols)
        return ("bitlinear", w) if block and self.bitlinear else w

    def _mhc(self, reader: GGUFReader, prefix: str, n: int, dim: int) -> _Mhc:
        k = mhc.permutations(n).shape[0]
        weights, alphas, biases = [], [], []
        for part, outputs in (("res", k), ("pre", n), ("post", n)):
            w = self._vector(reader, f"{prefix}.{part}.weight", n * dim * outputs)
            weights.append(w.double().reshape(n * dim, outputs))
            alphas.append(float(self._vector(reader, f"{prefix}.{part}.alpha", 1)[0]))
            biases.append(self._vector(reader, f"{prefix}.{part}.bias", outputs).double())
        perms = torch.from_numpy(mhc.permutations(n).astype(np.float64)).to(self.device)
        return _Mhc(weights, alphas, biases, perms)

    # ------------------------------------------------------------------ forward

    def new_cache(self) -> KvCache:
        return KvCache()

    def _linear(self, m: Any, x: torch.Tensor) -> torch.Tensor:
        if isinstance(m, ops.PackedTernary):
            return ops.linear(x, m, mode="engine")
        if isinstance(m, tuple) and m[0] == "bitlinear":  # a dense block matrix of a BitLinear model
            q, d = ops.quantize_activations(x, "engine")
            x = q[:, : x.shape[1]].float() * d[:, None]
            m = m[1]
        elif isinstance(m, tuple):  # a Q8_0 head: Q8_0 activations (absmax per 32 values)
            blocks = x.reshape(x.shape[0], -1, 32)
            amax = blocks.abs().amax(-1, keepdim=True)
            inv = torch.where(amax > 0, 127.0 / amax, torch.zeros_like(amax))
            x = (torch.round(blocks * inv) * (amax / 127.0)).reshape(x.shape)
            m = m[1]
        return x @ m.T

    def _linear_many(self, ms: list[Any], x: torch.Tensor) -> list[torch.Tensor]:
        """Several products of one input: ternary matrices share one activation quantization."""
        if all(isinstance(m, ops.PackedTernary) for m in ms):
            q, d = ops.quantize_activations(x, "engine")
            return [ops.matmul(q, d, m) for m in ms]
        return [self._linear(m, x) for m in ms]

    def _rms_norm(self, x: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
        ms = (x * x).sum(-1, keepdim=True) / x.shape[-1]
        return x * (1.0 / torch.sqrt(ms + self.config.norm_eps)) * gain

    def _rope(self, x: torch.Tensor, heads: int, pos0: int) -> torch.Tensor:
        t = x.shape[0]
        v = x.view(t, heads, -1, 2)
        cos = self.cos[pos0 : pos0 + t, None, :]
        sin = self.sin[pos0 : pos0 + t, None, :]
        a, b = v[..., 0], v[..., 1]
        return torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1).reshape(t, -1)

    def _attention(self, layer: _Layer, li: int, h: torch.Tensor, cache: KvCache) -> torch.Tensor:
        c = self.config
        t, hd, pos0 = h.shape[0], c.head_dim, cache.length
        q, k, v = self._linear_many([layer.wq, layer.wk, layer.wv], h)
        q = self._rope(q, c.n_heads, pos0)
        k = self._rope(k, c.n_kv_heads, pos0)
        k = k.view(t, c.n_kv_heads, hd).transpose(0, 1)
        v = v.view(t, c.n_kv_heads, hd).transpose(0, 1)
        if li == len(cache.keys):
            cache.keys.append(k.contiguous())
            cache.values.append(v.contiguous())
        else:
            cache.keys[li] = torch.cat((cache.keys[li], k), dim=1)
            cache.values[li] = torch.cat((cache.values[li], v), dim=1)
        keys, values = cache.keys[li], cache.values[li]
        group = c.n_heads // c.n_kv_heads
        keys = keys.repeat_interleave(group, dim=0)
        values = values.repeat_interleave(group, dim=0)
        qh = q.view(t, c.n_heads, hd).transpose(0, 1)
        scores = (qh @ keys.transpose(1, 2)) * (1.0 / float(np.sqrt(hd)))
        total = pos0 + t
        mask = torch.arange(total, device=h.device)[None, :] > (pos0 + torch.arange(t, device=h.device))[:, None]
        scores = scores.masked_fill(mask, float("-inf"))
        y = torch.softmax(scores, dim=-1) @ values
        return self._linear(layer.wo, y.transpose(0, 1).reshape(t, c.dim).contiguous())

    def _ffn(self, layer: _Layer, h: torch.Tensor) -> torch.Tensor:
        if layer.gate is not None:
            g, u = self._linear_many([layer.gate, layer.up], h)
            hidden = torch.nn.functional.silu(g) * u
        else:
            u = self._linear(layer.up, h).clamp_min(0)
            hidden = u * u
        return self._linear(layer.down, hidden.contiguous())

    @staticmethod
    def _mhc_step(p: _Mhc, streams: torch.Tensor, f: Any) -> torch.Tensor:
        """x' = H_res x + H_post^T F(H_pre x) per token, maps in float64 (the engine's mhc crate)."""
        t, n, d = streams.shape
        s = streams.double()
        flat = s.reshape(t, n * d)
        x_hat = flat / torch.sqrt((flat * flat).sum(-1, keepdim=True) / (n * d) + 1e-6)
        res, pre, post = (a * (x_hat @ w) + b for w, a, b in zip(p.weights, p.alphas, p.biases))
        h_res = torch.einsum("tk,kij->tij", torch.softmax(res, dim=-1), p.perms)
        h_pre, h_post = torch.sigmoid(pre), 2.0 * torch.sigmoid(post)
        inp = (h_pre[:, :, None] * s).sum(1).float()
        out = f(inp.contiguous()).double()
        return (h_res @ s + h_post[:, :, None] * out[:, None, :]).float()

    @torch.no_grad()
    def __call__(self, ids: torch.Tensor, cache: KvCache, all_logits: bool = True) -> torch.Tensor:
        """Runs ``ids`` (int64, ``(T,)``) at positions ``cache.length..``; logits ``(T, vocab)``
        (or ``(1, vocab)`` for the last token when ``all_logits`` is False)."""
        c = self.config
        t = int(ids.shape[0])
        if t == 0:
            raise ValueError("no tokens to run")
        if cache.length + t > c.max_seq_len:
            raise ValueError(f"{cache.length + t} positions exceed the context length {c.max_seq_len}")
        if int(ids.min()) < 0 or int(ids.max()) >= c.vocab_size:
            raise ValueError(f"token ids must lie in 0..{c.vocab_size - 1}")
        x = self.embedding[ids.to(self.device)]
        n = c.mhc_streams
        if n > 1:
            x = x[:, None, :].expand(t, n, c.dim).contiguous()
        for li, layer in enumerate(self.layers):
            if layer.mhc is None:
                x = x + self._attention(layer, li, self._rms_norm(x, layer.attn_norm), cache)
                x = x + self._ffn(layer, self._rms_norm(x, layer.ffn_norm))
            else:
                x = self._mhc_step(layer.mhc[0], x, lambda h, L=layer, i=li: self._attention(L, i, self._rms_norm(h, L.attn_norm), cache))
                x = self._mhc_step(layer.mhc[1], x, lambda h, L=layer: self._ffn(L, self._rms_norm(h, L.ffn_norm)))
        cache.length += t
        if n > 1:
            x = x.sum(1)
        if not all_logits:
            x = x[-1:]
        h = self._rms_norm(x, self.output_norm)
        logits = self._linear(self.head, h.contiguous())
        if not torch.isfinite(logits).all():
            raise ValueError("a logit is not finite (overflow in the weights?)")
        return logits


def sample_next(
    logits: torch.Tensor,
    history: list[int],
    temperature: float,
    top_k: int,
    top_p: float,
    min_p: float,
    repetition_penalty: float,
    generator: torch.Generator,
    no_repeat_ngram_size: int = 0,
) -> int:
    """The engine's rules (``rust/engine/src/sampling.rs``): ids that would repeat an n-gram of
    ``no_repeat_ngram_size`` tokens banned, repetition penalty on every id seen,
    then greedy (temperature 0, lowest id on ties) or temperature -> top-k -> top-p -> min-p -> a
    draw from ``generator`` (seeded; the draws differ from the CPU engine's SplitMix64)."""
    logits = logits.float().clone()
    n = no_repeat_ngram_size
    if n > 0 and len(history) + 1 >= n:
        key = history[len(history) + 1 - n :]
        banned = {history[i + n - 1] for i in range(len(history) + 1 - n) if history[i : i + n - 1] == key}
        if banned:
            logits[torch.tensor(sorted(banned), device=logits.device)] = float("-inf")
    if repetition_penalty != 1.0 and history:
        seen = torch.tensor(sorted(set(history)), device=logits.device)
        v = logits[seen]
        logits[seen] = torch.where(v > 0, v / repetition_penalty, v * repetition_penalty)
    if temperature == 0.0:
        return int(torch.argmax(logits))
    probs_logits = (logits / temperature).cpu().double()
    order = torch.argsort(probs_logits, descending=True, stable=True)
    ranked = probs_logits[order]
    if 0 < top_k < ranked.numel():
        ranked, order = ranked[:top_k], order[:top_k]
    p = torch.softmax(ranked, dim=0)
    if top_p < 1.0:
        keep = int((torch.cumsum(p, 0) < top_p).sum()) + 1
        p, order = p[:keep], order[:keep]
        p = p / p.sum()
    if min_p > 0.0:
        keep_mask = p >= min_p * p[0]
        p, order = p[keep_mask], order[keep_mask]
        p = p / p.sum()
    pick = int(torch.multinomial(p, 1, generator=generator))
    return int(order[pick])


def generate_tokens(
    fwd: TorchForward,
    ids: list[int],
    max_new_tokens: int,
    stop_ids: list[int],
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    min_p: float = 0.0,
    repetition_penalty: float = 1.0,
    seed: int = 0,
    first_token_ids: list[int] | None = None,
    no_repeat_ngram_size: int = 0,
) -> Any:
    """Yields up to ``max_new_tokens`` new ids after ``ids`` (a stop id is yielded, then it ends),
    prefilling the prompt in one pass and decoding one token per pass over the KV cache. The first
    new id is one of ``first_token_ids`` when given (token healing, as the CPU engine)."""
    cache = fwd.new_cache()
    generator = torch.Generator().manual_seed(seed)
    history = list(ids)
    logits = fwd(torch.tensor(ids, dtype=torch.int64), cache, all_logits=False)[0]
    if first_token_ids:
        allowed = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
        allowed[torch.tensor(first_token_ids, dtype=torch.int64, device=logits.device)] = True
        logits = logits.masked_fill(~allowed, float("-inf"))
    for _ in range(max_new_tokens):
        token = sample_next(logits, history, temperature, top_k, top_p, min_p, repetition_penalty, generator, no_repeat_ngram_size)
        yield token
        history.append(token)
        if token in stop_ids or cache.length >= fwd.config.max_seq_len:
            return
        logits = fwd(torch.tensor([token], dtype=torch.int64), cache, all_logits=False)[0]
