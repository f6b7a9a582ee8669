"""Ternary ops on torch tensors: the CUDA kernels on a GPU, their references (:mod:`.ref`) on the CPU.

    from nanochat_ternary.cuda import ops
    w = ops.ternarize(weight)                       # PackedTernary: int32 words + float32 scale
    y = ops.linear(x, w)                            # x (..., cols) -> (..., rows): int8 activations, one launch each
    y = ops.bit_linear(x, weight)                   # QAT forward with straight-through gradients

Every op takes contiguous tensors on one device and checks dtypes and shapes first (TypeError /
ValueError with the argument's name); CUDA tensors run the NVRTC-compiled kernels on torch's current
stream, CPU tensors the references, with the same results bit for bit. ``mode`` picks the
activation quantizer: ``"qat"`` (the QAT forward, rust/train/src/quant.rs) or ``"engine"`` (the
inference kernels, rust/kernels). :func:`bit_linear` is a BitLinear whose forward never
materializes fake-quantized float tensors: weights become packed trits + scale, activations int8
+ scales, and the product is an integer GEMM.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from . import driver, layout, ref

__all__ = [
    "PackedTernary",
    "quantize_activations",
    "ternarize",
    "matmul",
    "linear",
    "bit_linear",
    "N_PARTIALS_MAX",
    "absmean_partials",
    "gemv_launch",
    "gemm_launch",
    "pack_launch",
]

N_PARTIALS_MAX = 1024
"""At most this many float64 partial sums in the absmean reduction (a fixed count per shape, not
per GPU, so the scale does not depend on the device)."""

_MODES = {"qat": ref.MODE_QAT, "engine": ref.MODE_ENGINE}
GEMV_WARPS = 8
"""Warps per block of the GEMV."""

Launch = tuple[tuple[int, int, int], tuple[int, int, int]]


def absmean_partials(n: int) -> int:
    """Blocks (= float64 partial sums) of ``absmean_partial`` for ``n`` weights: 8+ weights per
    thread, at most :data:`N_PARTIALS_MAX` (fixed per shape, so the scale is the same on every GPU)."""
    return max(1, min(N_PARTIALS_MAX, -(-n // (ref.ABS_THREADS * 8))))


def gemv_launch(rows: int, rows_per_warp: int) -> Launch:
    """(grid, block) of ``ternary_gemv``: 8 warps per block, ``rows_per_warp`` rows per warp."""
    return (-(-rows // (rows_per_warp * GEMV_WARPS)), 1, 1), (32 * GEMV_WARPS, 1, 1)


def gemm_launch(rows: int, tokens: int) -> Launch:
    """(grid, block) of ``ternary_gemm``: 64 x 64 output tiles, 256 threads."""
    return (-(-rows // 64), -(-tokens // 64), 1), (256, 1, 1)


def pack_launch(rows: int, words: int) -> Launch:
    """(grid, block) of ``ternarize_pack``: one thread per packed word, 256 per block."""
    return (-(-(rows * words) // 256), 1, 1), (256, 1, 1)
_FLOATS = (torch.float32, torch.bfloat16)


@dataclass(frozen=True)
class PackedTernary:
    """A ternary matrix in the GPU layout: ``words`` int32 ``(rows, words_per_row(cols))`` and
    ``scale`` float32 ``(1,)`` (per tensor) or ``(rows,)`` (per row), on one device."""

    words: torch.Tensor
    scale: torch.Tensor
    rows: int
    cols: int

    def __post_init__(self) -> None:
        _tensor(self.words, "words", (torch.int32,))
        _tensor(self.scale, "scale", (torch.float32,), device=self.words.device)
        if tuple(self.words.shape) != (self.rows, layout.words_per_row(self.cols)):
            raise ValueError(
                f"words of a {self.rows}x{self.cols} matrix must have shape "
                f"{(self.rows, layout.words_per_row(self.cols))}, got {tuple(self.words.shape)}"
            )
        if self.scale.numel() not in (1, self.rows) or self.scale.ndim != 1:
            raise ValueError(f"scale must have shape (1,) or ({self.rows},), got {tuple(self.scale.shape)}")

    @classmethod
    def from_trits(
        cls, trits: np.ndarray | torch.Tensor, scale: float | np.ndarray | torch.Tensor, device: str | torch.device = "cpu"
    ) -> PackedTernary:
        """Packs int8 ``(rows, cols)`` trits with one scale (or one per row) onto ``device``."""
        t = torch.as_tensor(trits)
        if t.dtype != torch.int8 or t.ndim != 2:
            raise TypeError(f"trits must be a 2-D int8 array, got {tuple(t.shape)} {t.dtype}")
        if t.numel() and (int(t.min()) < -1 or int(t.max()) > 1):
            raise ValueError("trits must hold only -1, 0 and 1")
        s = torch.as_tensor(scale, dtype=torch.float32).reshape(-1)
        words = layout.pack_torch(t.cpu())
        return cls(words.to(device), s.to(device).contiguous(), t.shape[0], t.shape[1])

    @property
    def device(self) -> torch.device:
        return self.words.device

    def trits(self) -> torch.Tensor:
        """int8 ``(rows, cols)`` trits on this matrix's device."""
        return layout.unpack_torch(self.words, self.cols)

    def reference_trits(self) -> torch.Tensor:
        """The trits as float64 on the CPU, unpacked once (what the CPU references multiply)."""
        cached = self.__dict__.get("_reference_trits")
        if cached is None:
            cached = layout.unpack_torch(self.words.cpu(), self.cols).to(torch.float64)
            object.__setattr__(self, "_reference_trits", cached)
        return cached

    def int8_weights(self) -> torch.Tensor:
        """The trits as int8 ``(rows rounded up to 8, padded_cols)`` on this matrix's device (zeros
        in the padding), unpacked once: the operand of the ``int_mm`` GEMM backend."""
        cached = self.__dict__.get("_int8_weights")
        if cached is None:
            rows8 = -(-self.rows // 8) * 8
            cached = torch.zeros(rows8, layout.padded_cols(self.cols), dtype=torch.int8, device=self.device)
            cached[: self.rows, : self.cols] = self.trits()
            object.__setattr__(self, "_int8_weights", cached)
        return cached

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``trits * scale`` as ``dtype``."""
        s = self.scale if self.scale.numel() == 1 else self.scale[:, None]
        return (self.trits().to(torch.float32) * s).to(dtype)


def quantize_activations(x: torch.Tensor, mode: str = "qat") -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token int8 absmax quantization of float32/bfloat16 ``(tokens, cols)``: ``(q, d)`` with
    ``q`` int8 ``(tokens, layout.padded_cols(cols))`` (zero padded) and ``d`` float32 ``(tokens,)``,
    ``x ~= q[:, :cols] * d[:, None]``. A token holding NaN/Inf gets ``d = NaN``."""
    _tensor(x, "x", _FLOATS, ndim=2)
    code = _mode(mode)
    tokens, cols = x.shape
    if tokens == 0 or cols == 0:
        raise ValueError(f"x must be non-empty, got shape {tuple(x.shape)}")
    if not _on_gpu(x):
        return ref.act_quant(x, code)
    padded = layout.padded_cols(cols)
    q = torch.empty(tokens, padded, dtype=torch.int8, device=x.device)
    d = torch.empty(tokens, dtype=torch.float32, device=x.device)
    entry = "act_quant_f32" if x.dtype == torch.float32 else "act_quant_bf16"
    _launch("act_quant", entry, (tokens, 1, 1), (256, 1, 1), [x, q, d, cols, padded, code], x.device)
    return q, d


def ternarize(w: torch.Tensor) -> PackedTernary:
    """Absmean ternarization (per tensor, the codec's rule) of float32/bfloat16 ``(rows, cols)``,
    packed: two launches (float64 partial sums of |w|; scale + trits + packing), no float copy."""
    _tensor(w, "w", _FLOATS, ndim=2)
    rows, cols = w.shape
    if rows == 0 or cols == 0:
        raise ValueError(f"w must be non-empty, got shape {tuple(w.shape)}")
    n = rows * cols
    partials = absmean_partials(n)
    if not _on_gpu(w):
        words, scale = ref.ternarize_pack(w, ref.absmean_partial(w, partials))
        return PackedTernary(words, scale, rows, cols)
    n_words = layout.words_per_row(cols)
    sums = torch.empty(partials, dtype=torch.float64, device=w.device)
    words = torch.empty(rows, n_words, dtype=torch.int32, device=w.device)
    scale = torch.empty(1, dtype=torch.float32, device=w.device)
    suffix = "f32" if w.dtype == torch.float32 else "bf16"
    _launch("absmean_partial", f"absmean_partial_{suffix}", (partials, 1, 1), (256, 1, 1),
            [w, driver.Long(n), sums], w.device)
    _launch("ternarize_pack", f"ternarize_pack_{suffix}", *pack_launch(rows, n_words),
            [w, sums, partials, words, scale, rows, cols, n_words], w.device)
    return PackedTernary(words, scale, rows, cols)


def matmul(
    q: torch.Tensor, d: torch.Tensor, w: PackedTernary, gemv_rows: int | None = None, backend: str = "kernel"
) -> torch.Tensor:
    """``(q * d) @ (trits * scale).T`` as float32 ``(tokens, rows)`` from int8 activations ``q``
    ``(tokens, padded_cols)`` and scales ``d`` (as :func:`quantize_activations` returns them): the
    integer GEMV for one token, the GEMM otherwise. ``gemv_rows`` (rows per warp, 1/2/4/8) tunes the
    GEMV. ``backend="int_mm"`` runs the product as ``torch._int_mm`` (cuBLASLt int8 tensor cores on a
    GPU) over the trits unpacked once to int8 (:meth:`PackedTernary.int8_weights`, 4x the memory of
    the packed words): the same integers, the same float steps, so the same result bit for bit."""
    if not isinstance(w, PackedTernary):
        raise TypeError(f"w must be a PackedTernary, got {type(w).__name__}")
    _tensor(q, "q", (torch.int8,), ndim=2, device=w.device)
    _tensor(d, "d", (torch.float32,), ndim=1, device=w.device)
    tokens = q.shape[0]
    if q.shape[1] != layout.padded_cols(w.cols):
        raise ValueError(f"q must have {layout.padded_cols(w.cols)} columns (padded {w.cols}), got {q.shape[1]}")
    if d.shape[0] != tokens or tokens == 0:
        raise ValueError(f"d must have one scale per token ({tokens}), got {d.shape[0]}")
    for name, t in (("q", q), ("words", w.words)):
        if t.data_ptr() % 16:
            raise ValueError(f"{name} must start on a 16-byte boundary (the kernels load 16 bytes at a time); pass a fresh tensor or .clone()")
    if backend == "int_mm":
        return _int_mm(q, d, w)
    if backend != "kernel":
        raise ValueError(f"backend must be 'kernel' or 'int_mm', got {backend!r}")
    if not _on_gpu(w):
        return ref.ternary_gemm(w.words, q, d, w.scale, w.rows, w.cols, w.reference_trits())
    y = torch.empty(tokens, w.rows, dtype=torch.float32, device=w.device)
    per_row = int(w.scale.numel() != 1)
    n_words = w.words.shape[1]
    if tokens == 1:
        rows_per_warp = gemv_rows or int(os.environ.get("NCT_GEMV_ROWS", "2"))
        if rows_per_warp not in (1, 2, 4, 8):
            raise ValueError(f"gemv_rows must be 1, 2, 4 or 8, got {rows_per_warp}")
        _launch("ternary_gemv", "ternary_gemv", *gemv_launch(w.rows, rows_per_warp),
                [w.words, q, d, w.scale, per_row, y, w.rows, n_words], w.device, {"GEMV_ROWS": rows_per_warp})
    else:
        _launch("ternary_gemm", "ternary_gemm", *gemm_launch(w.rows, tokens),
                [w.words, q, d, w.scale, per_row, y, tokens, w.rows, n_words], w.device)
    return y


def _int_mm(q: torch.Tensor, d: torch.Tensor, w: PackedTernary) -> torch.Tensor:
    tokens = q.shape[0]
    a = q if tokens > 16 else torch.cat((q, q.new_zeros(32 - tokens, q.shape[1])))  # cuBLASLt needs M > 16
    acc = torch._int_mm(a, w.int8_weights().t())[:tokens, : w.rows]
    ws = w.scale if w.scale.numel() == w.rows else w.scale.expand(w.rows)
    return (acc.to(torch.float32) * ws[None, :]) * d[:, None]


def linear(x: torch.Tensor, w: PackedTernary, mode: str = "engine", backend: str = "kernel") -> torch.Tensor:
    """``x @ W.T`` with int8 per-token activations: float32/bfloat16 ``(..., cols)`` -> float32 ``(..., rows)``
    (``backend`` as in :func:`matmul`)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim == 0 or x.shape[-1] != w.cols:
        raise ValueError(f"x must end in {w.cols} columns, got shape {tuple(x.shape)}")
    q, d = quantize_activations(x.reshape(-1, w.cols), mode)
    return matmul(q, d, w, backend=backend).reshape(*x.shape[:-1], w.rows)


class _BitLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, backend: str) -> torch.Tensor:  # type: ignore[override]
        cols = weight.shape[1]
        packed = ternarize(weight.detach())
        q, d = quantize_activations(x.detach().reshape(-1, cols), "qat")
        y = matmul(q, d, packed, backend=backend)
        ctx.save_for_backward(q, d, packed.words, packed.scale)
        ctx.shapes = (tuple(x.shape), x.dtype, tuple(weight.shape), weight.dtype)
        return y.reshape(*x.shape[:-1], weight.shape[0]).to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:  # type: ignore[override]
        # Straight-through: the gradients of x @ W.T evaluated at the quantized operands.
        q, d, words, scale = ctx.saved_tensors
        x_shape, x_dtype, (rows, cols), w_dtype = ctx.shapes
        g = grad.reshape(-1, rows).float()
        w_hat = PackedTernary(words, scale, rows, cols).dequantize()
        x_hat = q[:, :cols].float() * d[:, None]
        return (g @ w_hat).reshape(x_shape).to(x_dtype), (g.T @ x_hat).to(w_dtype), None


def bit_linear(x: torch.Tensor, weight: torch.Tensor, backend: str = "kernel") -> torch.Tensor:
    """BitLinear forward ``q_int8(x) @ ternary(W).T`` (QAT quantizers) with straight-through
    gradients to ``x`` and ``weight``; ``x`` (..., in), ``weight`` (out, in), same device;
    ``backend`` of the integer product as in :func:`matmul`."""
    _tensor(weight, "weight", _FLOATS, ndim=2)
    _tensor(x, "x", _FLOATS, device=weight.device)
    if x.ndim == 0 or x.shape[-1] != weight.shape[1]:
        raise ValueError(f"x must end in {weight.shape[1]} columns, got shape {tuple(x.shape)}")
    return _BitLinear.apply(x, weight, backend)


# ----------------------------------------------------------------------------- checks


def _on_gpu(t: torch.Tensor) -> bool:
    """Whether ``t`` goes to the kernels (CUDA) rather than the references (CPU)."""
    return t.device.type == "cuda"


def _mode(mode: str) -> int:
    if mode not in _MODES:
        raise ValueError(f"mode must be 'qat' or 'engine', got {mode!r}")
    return _MODES[mode]


def _tensor(
    t: object,
    name: str,
    dtypes: tuple[torch.dtype, ...],
    ndim: int | None = None,
    device: torch.device | None = None,
) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in dtypes:
        names = " or ".join(str(d).removeprefix("torch.") for d in dtypes)
        raise TypeError(f"{name} must have dtype {names}, got {str(t.dtype).removeprefix('torch.')}")
    if ndim is not None and t.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(t.shape)}")
    if not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous (the kernels read raw memory); call .contiguous()")
    if device is not None and t.device != device:
        raise ValueError(f"{name} is on {t.device}, the other operands on {device}")
    if t.device.type not in ("cpu", "cuda"):
        raise ValueError(f"{name} is on {t.device}; the ternary ops run on cpu (reference) or cuda")


def _launch(
    kernel: str,
    entry: str,
    grid: tuple[int, int, int],
    block: tuple[int, int, int],
    args: list[Any],
    device: torch.device,
    defines: dict[str, int] | None = None,
) -> None:
    if not driver.available():
        raise driver.CudaError(
            "CUDA tensors need a CUDA GPU and NVRTC (the CUDA-enabled torch wheel ships it); "
            f"torch.cuda.is_available()={torch.cuda.is_available()}"
        )
    fn = driver.function(kernel, entry, device, defines)
    driver.launch(fn, grid, block, args, device, name=entry)
