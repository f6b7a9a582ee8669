"""CPU ternary x int8 kernels over the planar weight layout.

Weights are packed once into a :class:`PlanarMatrix` (2 bits per weight, rows interleaved in tiles
of 16, 64-byte aligned). Activations are quantized to int8 per token (absmax, ``127 / max|x|``,
round half to even, values in [-127, 127]); the kernels accumulate ``sum(trit * x)`` exactly in
int32 and then apply the weight and activation scales in float32.

``variant`` forces an implementation (``"scalar"``, ``"avx2"``, ``"avx512"``, ``"amx"``); by default the
``NCT_KERNEL`` environment variable, else the fastest one this CPU supports, is used. All calls
release the GIL and share one thread pool (:func:`set_num_threads`), so calling from several
Python threads never runs more kernel threads than configured.

Inputs must have the exact dtype (``TypeError`` otherwise) and be C-contiguous (``ValueError``).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from ._core import PlanarMatrix
from ._core import kernels_default_variant as _default_variant
from ._core import kernels_gemm as _gemm
from ._core import kernels_gemm_i32 as _gemm_i32
from ._core import kernels_gemv as _gemv
from ._core import kernels_num_threads as _num_threads
from ._core import kernels_quantize_activations as _quantize
from ._core import kernels_set_num_threads as _set_num_threads
from ._core import kernels_supported_variants as _supported_variants

__all__ = [
    "PlanarMatrix",
    "pack",
    "quantize_activations",
    "gemv",
    "gemm",
    "gemm_i32",
    "supported_variants",
    "default_variant",
    "set_num_threads",
    "num_threads",
]


def pack(
    trits: npt.NDArray[np.int8],
    scales: npt.NDArray[np.float32] | float = 1.0,
    group_cols: int | None = None,
) -> PlanarMatrix:
    """Packs a rows x cols int8 trit matrix (values -1/0/+1) into the planar layout.

    ``scales`` is one float (per tensor), ``rows`` floats (per row) or ``rows x groups`` floats
    where a group is ``group_cols`` consecutive columns (a multiple of 16).
    """
    trits = np.asarray(trits)
    if trits.ndim != 2:
        raise ValueError(f"trits must be 2-D, got shape {trits.shape}")
    rows = trits.shape[0]
    scale_array = np.asarray(scales, dtype=np.float32)
    if scale_array.ndim == 0:
        if group_cols is not None:
            raise ValueError("a single scale cannot be combined with group_cols")
        scale_array = np.full(rows, scale_array, dtype=np.float32)
    return PlanarMatrix.from_trits(trits, np.ascontiguousarray(scale_array.reshape(-1)), group_cols)


def quantize_activations(
    x: npt.NDArray[np.float32],
) -> tuple[npt.NDArray[np.int8], npt.NDArray[np.float32]]:
    """Per-token int8 quantization of float32 ``(n, cols)`` activations: ``(q, scales)`` with
    ``x ~= q * scales[:, None]``."""
    return _quantize(x)


def gemv(w: PlanarMatrix, x: npt.NDArray[np.float32], variant: str | None = None) -> npt.NDArray[np.float32]:
    """``W @ x`` for one float32 token ``(cols,)`` -> float32 ``(rows,)``, with int8 activations."""
    return _gemv(w, x, variant)


def gemm(w: PlanarMatrix, x: npt.NDArray[np.float32], variant: str | None = None) -> npt.NDArray[np.float32]:
    """``x @ W.T`` for float32 ``(n, cols)`` tokens -> float32 ``(n, rows)``, with int8 activations."""
    return _gemm(w, x, variant)


def gemm_i32(w: PlanarMatrix, x: npt.NDArray[np.int8], variant: str | None = None) -> npt.NDArray[np.int32]:
    """Exact integer ``x @ trits.T`` for int8 ``(n, cols)`` activations -> int32 ``(n, rows)``.

    Scales are ignored; every variant returns the same integers (|result| <= 128 * cols).
    """
    return _gemm_i32(w, x, variant)


def supported_variants() -> list[str]:
    """Kernel variants this CPU supports, slowest first."""
    return _supported_variants()


def default_variant() -> str:
    """The variant used when none is forced (honours ``NCT_KERNEL``)."""
    return _default_variant()


def set_num_threads(threads: int) -> None:
    """Sets the size of the kernels' shared thread pool."""
    _set_num_threads(threads)


def num_threads() -> int:
    """The size of the kernels' shared thread pool."""
    return _num_threads()
