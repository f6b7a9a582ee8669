"""The GPU weight layout of the ternary CUDA kernels ("nct-u32x16") and its host-side packing.

    from nanochat_ternary.cuda import layout
    words = layout.pack(trits)                 # int8 (rows, cols) {-1,0,1} -> uint32 (rows, words)
    trits2 = layout.unpack(words, cols)        # back, exactly
    layout.padded_cols(cols)                   # int8 activation row length the kernels read

Layout: row-major ``(rows, words)`` uint32 with ``words = 4 * ceil(cols / 64)`` (rows start 16-byte
aligned, so a kernel reads 64 weights per 16-byte load and needs no tail code). Element ``k`` of a
row lives in word ``k // 16`` at bits ``8 * (k % 4) + 2 * ((k % 16) // 4)`` as the code
``trit + 1`` (0, 1, 2 for -1, 0, +1, as TQ2_0); columns past ``cols`` hold code 1 (trit 0).
Shifting a word right by ``2 * j`` and masking with ``0x03030303`` leaves in its four bytes the codes
of elements ``16g + 4j .. 16g + 4j + 3`` — four consecutive activations, one ``__dp4a``. The scale
is kept beside the words: one float32 per tensor (or one per row).

Activations for the kernels are int8 rows of ``padded_cols(cols) = 16 * words`` bytes, zero past
``cols`` (``act_quant`` writes them so).

Torch tensors carry the words as int32 (torch has no general uint32 arithmetic); the bits are the
same. :func:`pack_torch` / :func:`unpack_torch` run on any device.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch

__all__ = ["LAYOUT", "words_per_row", "padded_cols", "pack", "unpack", "pack_torch", "unpack_torch"]

LAYOUT = "nct-u32x16"
"""Name of this layout (recorded wherever packed words are stored)."""

_SHIFTS = np.array([[8 * b + 2 * j for b in range(4)] for j in range(4)], dtype=np.uint32)  # [j, b]


def words_per_row(cols: int) -> int:
    """uint32 words per packed row: 4 per 64 columns, rounded up."""
    if isinstance(cols, bool) or not isinstance(cols, (int, np.integer)) or cols <= 0:
        raise ValueError(f"cols must be a positive int, got {cols!r}")
    return 4 * ((int(cols) + 63) // 64)


def padded_cols(cols: int) -> int:
    """Length of an int8 activation row the kernels read (16 per word, zeros past ``cols``)."""
    return 16 * words_per_row(cols)


def pack(trits: npt.NDArray[np.int8]) -> npt.NDArray[np.uint32]:
    """int8 ``(rows, cols)`` trits -> uint32 ``(rows, words_per_row(cols))`` in this layout."""
    trits = _trits(trits)
    rows, cols = trits.shape
    words = words_per_row(cols)
    codes = np.ones((rows, words * 16), dtype=np.uint32)
    codes[:, :cols] = trits.astype(np.int32) + 1
    codes = codes.reshape(rows, words, 4, 4)  # [row, word, j, b]: element 16g + 4j + b
    return (codes << _SHIFTS).sum(axis=(2, 3), dtype=np.uint64).astype(np.uint32)


def unpack(words: npt.NDArray[np.uint32], cols: int) -> npt.NDArray[np.int8]:
    """uint32 ``(rows, words)`` -> int8 ``(rows, cols)`` trits. Raises ValueError on a word count
    that does not fit ``cols``, on code 3 (invalid) or on padding that is not code 1."""
    if not isinstance(words, np.ndarray) or words.dtype != np.uint32 or words.ndim != 2:
        raise TypeError("words must be a 2-D numpy.ndarray of uint32")
    expected = words_per_row(cols)
    if words.shape[1] != expected:
        raise ValueError(f"{cols} columns pack into {expected} words per row, got {words.shape[1]}")
    codes = ((words[:, :, None, None] >> _SHIFTS) & 3).reshape(words.shape[0], -1)
    if (codes == 3).any():
        raise ValueError("invalid ternary code 3 in packed words")
    if (codes[:, cols:] != 1).any():
        raise ValueError("padding past cols must hold code 1 (trit 0)")
    return (codes[:, :cols].astype(np.int8) - 1).astype(np.int8)


def pack_torch(trits: torch.Tensor) -> torch.Tensor:
    """:func:`pack` for an integer torch tensor on any device -> int32 ``(rows, words)``."""
    if trits.ndim != 2 or trits.dtype.is_floating_point or trits.dtype == torch.bool:
        raise ValueError(f"trits must be a 2-D integer tensor, got {tuple(trits.shape)} {trits.dtype}")
    rows, cols = trits.shape
    words = words_per_row(cols)
    codes = torch.ones(rows, words * 16, dtype=torch.int64, device=trits.device)
    codes[:, :cols] = trits.to(torch.int64) + 1
    shifts = torch.as_tensor(_SHIFTS.astype(np.int64), device=trits.device)
    packed = (codes.view(rows, words, 4, 4) << shifts).sum(dim=(2, 3))
    return torch.where(packed >= 2**31, packed - 2**32, packed).to(torch.int32)


def unpack_torch(words: torch.Tensor, cols: int) -> torch.Tensor:
    """int32 ``(rows, words)`` packed words -> int8 ``(rows, cols)`` trits, on their device."""
    if words.ndim != 2 or words.dtype != torch.int32:
        raise ValueError(f"words must be a 2-D int32 tensor, got {tuple(words.shape)} {words.dtype}")
    if words.shape[1] != words_per_row(cols):
        raise ValueError(f"{cols} columns pack into {words_per_row(cols)} words per row, got {words.shape[1]}")
    shifts = torch.as_tensor(_SHIFTS.astype(np.int32), device=words.device)
    codes = (words[:, :, None, None] >> shifts) & 3  # arithmetic shift; the mask drops the sign
    return (codes.reshape(words.shape[0], -1)[:, :cols] - 1).to(torch.int8)


def _trits(trits: object) -> np.ndarray:
    if not isinstance(trits, np.ndarray) or trits.dtype != np.int8:
        raise TypeError("trits must be a numpy.ndarray of int8 (values -1, 0, 1)")
    if trits.ndim != 2 or 0 in trits.shape:
        raise ValueError(f"trits must be a non-empty 2-D array, got shape {trits.shape}")
    if trits.size and (trits.min() < -1 or trits.max() > 1):
        raise ValueError("trits must hold only -1, 0 and 1")
    return trits
