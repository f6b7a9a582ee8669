"""CPU references of the CUDA kernels in ``csrc/`` (torch on the CPU, same arguments, same results).

Each function computes what the kernel of the same name computes, in the same arithmetic: integer
sums are exact (int64 here, int32 in the kernels, which cannot overflow below 8M columns), float
steps are the same IEEE float32 operations in the same order, so GEMV/GEMM outputs, activation
codes and scales, trits and packed words are equal bit for bit; only the float64 partial sums of
``absmean_partial`` depend on the summation order (the scale rounded to float32 from them almost
never does). The GPU tests compare every kernel with these; the CPU tests tie these to the
project's own semantics (codec, QAT fake quant, the CPU kernels' integer GEMV).

    q, d = ref.act_quant(x, mode=ref.MODE_QAT)          # int8 (T, padded_cols), float32 (T,)
    words, scale = ref.ternarize_pack(w)               # int32 (rows, words), float32 (1,)
    y = ref.ternary_gemm(words, q, d, scale, rows, cols)
"""

from __future__ import annotations

import torch

from . import layout

__all__ = [
    "MODE_QAT",
    "MODE_ENGINE",
    "ABSMEAN_EPS",
    "ACTIVATION_EPS",
    "ABS_THREADS",
    "act_quant",
    "absmean_partial",
    "ternarize_pack",
    "ternary_gemv",
    "ternary_gemm",
]

MODE_QAT = 0
"""Activation quantization of the QAT forward (rust/train/src/quant.rs): scale (1/max(m,1e-5))*127, clamp [-128, 127]."""
MODE_ENGINE = 1
"""Activation quantization of the inference kernels (rust/kernels quantize.rs): 127/m, clamp [-127, 127], zero token -> 0."""
ABSMEAN_EPS = 1e-5
ACTIVATION_EPS = 1e-5
ABS_THREADS = 256
"""Threads per block of absmean_partial (its element-to-partial assignment depends on it)."""


def act_quant(x: torch.Tensor, mode: int, padded_cols: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token int8 absmax quantization of float32/bfloat16 ``(tokens, cols)``.

    Returns ``q`` int8 ``(tokens, padded_cols)`` (zeros past cols; default ``layout.padded_cols``)
    and ``d`` float32 ``(tokens,)`` with ``x ~= q * d``; a token holding NaN/Inf gets q = 0, d = NaN.
    """
    if x.ndim != 2 or x.dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"x must be 2-D float32 or bfloat16, got {tuple(x.shape)} {x.dtype}")
    if mode not in (MODE_QAT, MODE_ENGINE):
        raise ValueError(f"mode must be {MODE_QAT} (QAT) or {MODE_ENGINE} (engine), got {mode!r}")
    x = x.float()
    tokens, cols = x.shape
    padded = layout.padded_cols(cols) if padded_cols is None else padded_cols
    if padded < cols:
        raise ValueError(f"padded_cols {padded} < cols {cols}")
    a = x.abs()
    m = a.amax(-1)
    m = torch.where(a.isnan().any(-1), torch.full_like(m, float("nan")), m)
    finite = m.isfinite()
    if mode == MODE_QAT:
        mul = torch.reciprocal(m.clamp_min(ACTIVATION_EPS)) * 127.0
        d = torch.reciprocal(mul)
        lo = -128.0
    else:
        # A true division (torch computes ``127.0 / m`` as ``m.reciprocal() * 127``, which rounds differently).
        mul = torch.where(m > 0, torch.div(torch.full_like(m, 127.0), m), torch.zeros_like(m))
        d = m / 127.0
        lo = -127.0
    mul = torch.where(finite, mul, torch.zeros_like(mul))
    d = torch.where(finite, d, torch.full_like(d, float("nan")))
    q = torch.round(x * mul[:, None]).clamp(lo, 127.0)
    q = torch.where(finite[:, None], q, torch.zeros_like(q))
    out = torch.zeros(tokens, padded, dtype=torch.int8)
    out[:, :cols] = q.to(torch.int8)
    return out, d.to(torch.float32)


def absmean_partial(w: torch.Tensor, n_partials: int) -> torch.Tensor:
    """float64 ``(n_partials,)``, in the kernel's order: thread ``t`` of block ``b`` adds
    ``|w[i]|`` for ``i = b * 256 + t + k * n_partials * 256`` (k = 0, 1, ...) in turn, then the
    block adds its 256 sums in a halving tree (strides 128, ..., 1)."""
    flat = w.detach().reshape(-1).float().abs().double()
    stride = n_partials * ABS_THREADS
    steps = -(-flat.numel() // stride)
    padded = torch.zeros(steps * stride, dtype=torch.float64)
    padded[: flat.numel()] = flat
    chunks = padded.view(steps, n_partials, ABS_THREADS)
    red = torch.zeros(n_partials, ABS_THREADS, dtype=torch.float64)
    for k in range(steps):  # one add per step, as each thread does
        red = red + chunks[k]
    step = ABS_THREADS // 2
    while step > 0:
        red[:, :step] = red[:, :step] + red[:, step : 2 * step]
        step //= 2
    return red[:, 0].clone()


def ternarize_pack(w: torch.Tensor, partials: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Absmean ternarization of float32/bfloat16 ``(rows, cols)`` packed in the GPU layout:
    ``(words int32 (rows, words), scale float32 (1,))`` with ``s = (float)(sum|w| / n)`` (float64
    sum; ``partials`` reduced in the kernel's order when given) and ``trit = clamp(rint(w / (s + 1e-5)), -1, 1)``."""
    if w.ndim != 2 or w.dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"w must be 2-D float32 or bfloat16, got {tuple(w.shape)} {w.dtype}")
    w = w.detach().float()
    rows, cols = w.shape
    if partials is None:
        partials = w.abs().double().sum().reshape(1)
    total = _fixed_order_sum(partials.tolist())
    s = torch.tensor(total / (rows * cols), dtype=torch.float64).float()
    if not torch.isfinite(s):
        s = torch.tensor(float("nan"))
    r = torch.round(w / (s + torch.tensor(ABSMEAN_EPS, dtype=torch.float32)))
    trits = torch.where(r >= 1, 1, torch.where(r <= -1, -1, 0)).to(torch.int8)  # NaN -> 0, as the kernel
    return layout.pack_torch(trits), s.reshape(1)


def ternary_gemv(
    words: torch.Tensor, q: torch.Tensor, d: torch.Tensor, w_scale: torch.Tensor, rows: int, cols: int
) -> torch.Tensor:
    """``y[n] = (float)(sum_k trit[n,k] q[k]) * w_scale[n or 0] * d[0]`` for one token ``q``."""
    return ternary_gemm(words, q.reshape(1, -1), d.reshape(1), w_scale, rows, cols).reshape(rows)


def ternary_gemm(
    words: torch.Tensor,
    q: torch.Tensor,
    d: torch.Tensor,
    w_scale: torch.Tensor,
    rows: int,
    cols: int,
    trits: torch.Tensor | None = None,
) -> torch.Tensor:
    """``y[m, n] = (float)(sum_k trit[n,k] q[m,k]) * w_scale[n or 0] * d[m]``, float32 ``(tokens, rows)``.
    ``trits``: the words already unpacked (float64 ``(rows, cols)``), to skip unpacking."""
    # float64 products of integers below 2^53 are exact, and BLAS runs them far faster than int64.
    if trits is None:
        trits = layout.unpack_torch(words.cpu(), cols).to(torch.float64)
    acc = q.cpu()[:, :cols].to(torch.float64) @ trits.T
    ws = w_scale.cpu().float().reshape(-1)
    ws = ws.expand(rows) if ws.numel() == 1 else ws
    return (acc.to(torch.float32) * ws[None, :]) * d.cpu().float().reshape(-1, 1)


def _fixed_order_sum(partials: list[float], threads: int = 256) -> float:
    """ternarize_pack's float64 reduction order: strided per-thread sums, then a halving tree."""
    red = [0.0] * threads
    for t in range(threads):
        for i in range(t, len(partials), threads):
            red[t] += partials[i]
    step = threads // 2
    while step > 0:
        for t in range(step):
            red[t] += red[t + step]
        step //= 2
    return red[0]
