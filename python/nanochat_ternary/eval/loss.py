"""Held-out loss: mean negative log-likelihood, perplexity and bits per byte.

The model side is one function, ``nll_fn(token_ids) -> nll``: given a 1-D int
array of T token ids it returns T floats, ``nll[i] = -ln p(ids[i] | ids[:i])``
in nats (the first token is predicted from an empty context). Text is split
into windows of at most ``context`` tokens, scored independently.

    mean loss   L   = Σ nll / tokens                       (nats per token)
    perplexity      = exp(L)
    bits per byte   = Σ nll / ln 2 / UTF-8 bytes of the text

Bits per byte compares models with different tokenizers; for token shards it
needs the byte length of every token id (``token_bytes``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import numpy.typing as npt

NllFn = Callable[[np.ndarray], np.ndarray]
Encoder = Callable[[str], "list[int] | np.ndarray"]


@dataclasses.dataclass(frozen=True)
class LossResult:
    tokens: int
    bytes: int | None
    total_nll: float  # nats
    mean_loss: float
    perplexity: float
    bits_per_byte: float | None


def utf8_byte_ids(text: str) -> np.ndarray:
    """The byte-level "tokenizer": one id (0..255) per UTF-8 byte."""
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64)


def _score(nll_fn: NllFn, ids: np.ndarray, context: int) -> float:
    total = 0.0
    for start in range(0, len(ids), context):
        window = ids[start : start + context]
        nll = np.asarray(nll_fn(window), dtype=np.float64)
        if nll.shape != window.shape:
            raise ValueError(f"nll_fn returned shape {nll.shape} for {window.shape[0]} tokens")
        if not np.all(np.isfinite(nll)) or np.any(nll < 0):
            raise ValueError("nll_fn returned a negative, infinite or NaN loss")
        total += float(nll.sum())
    return total


def _result(tokens: int, n_bytes: int | None, total: float) -> LossResult:
    if tokens == 0:
        raise ValueError("no tokens to evaluate")
    mean = total / tokens
    return LossResult(
        tokens=tokens,
        bytes=n_bytes,
        total_nll=total,
        mean_loss=mean,
        perplexity=math.exp(mean) if mean < 700 else math.inf,
        bits_per_byte=total / math.log(2) / n_bytes if n_bytes else None,
    )


def evaluate_texts(
    nll_fn: NllFn, texts: Iterable[str], *, encode: Encoder = utf8_byte_ids, context: int = 1024
) -> LossResult:
    """Loss over raw texts, each tokenized with `encode` and scored separately."""
    if context < 1:
        raise ValueError(f"context must be >= 1, got {context}")
    tokens = n_bytes = 0
    total = 0.0
    for text in texts:
        ids = np.asarray(encode(text), dtype=np.int64)
        if ids.ndim != 1:
            raise ValueError("encode must return a flat sequence of token ids")
        total += _score(nll_fn, ids, context)
        tokens += len(ids)
        n_bytes += len(text.encode("utf-8"))
    return _result(tokens, n_bytes, total)


def evaluate_files(
    nll_fn: NllFn, paths: Iterable[str | Path], *, encode: Encoder = utf8_byte_ids, context: int = 1024
) -> LossResult:
    """Loss over raw UTF-8 text files."""
    return evaluate_texts(nll_fn, (Path(p).read_text("utf-8") for p in paths), encode=encode, context=context)


def evaluate_tokens(
    nll_fn: NllFn,
    tokens: npt.ArrayLike,
    *,
    token_bytes: npt.ArrayLike | None = None,
    context: int = 1024,
) -> LossResult:
    """Loss over a flat token stream (e.g. a memory-mapped validation shard).
    `token_bytes[id]` = byte length of token `id`, for bits per byte."""
    if context < 1:
        raise ValueError(f"context must be >= 1, got {context}")
    ids = np.asarray(tokens)
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"tokens must be a 1-D integer array, got {ids.dtype} with shape {ids.shape}")
    n_bytes = None
    if token_bytes is not None:
        table = np.asarray(token_bytes, dtype=np.int64)
        if len(ids) and (ids.min() < 0 or ids.max() >= len(table)):
            raise ValueError(f"token ids outside the token_bytes table (size {len(table)})")
        n_bytes = int(table[ids].sum())
    return _result(len(ids), n_bytes, _score(nll_fn, ids.astype(np.int64), context))


def evaluate_shards(
    nll_fn: NllFn,
    directory: str | Path,
    *,
    split: str = "val",
    context: int = 1024,
    max_tokens: int | None = None,
) -> LossResult:
    """Loss over one split of a token data directory (``python -m nanochat_ternary.data build``).
    Bits per byte use the split's byte count from ``meta.json``; with ``max_tokens`` only the
    first tokens are scored and the bytes are prorated (tokens / split tokens)."""
    from ..data.shards import TokenShards

    shards = TokenShards(directory, split)
    n = shards.tokens if max_tokens is None else min(int(max_tokens), shards.tokens)
    if n < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    total = _score(nll_fn, shards.read(0, n), context)
    n_bytes = round(shards.bytes * n / shards.tokens) if shards.bytes else None
    return _result(n, n_bytes, total)


def load_token_shard(path: str | Path, dtype: str = "uint16") -> np.ndarray:
    """A raw flat token file (``.npy`` or headerless ``dtype`` array), memory-mapped."""
    path = Path(path)
    if path.suffix == ".npy":
        return np.load(path, mmap_mode="r")
    if np.dtype(dtype) not in (np.dtype("uint16"), np.dtype("uint32")):
        raise ValueError(f"token shards are uint16 or uint32, got {dtype}")
    return np.memmap(path, dtype=dtype, mode="r")


class UnigramModel:
    """Context-free model with fixed token probabilities: the analytic baseline
    (and test oracle) — its loss on any text is Σ −ln p(token)."""

    def __init__(self, probs: npt.ArrayLike) -> None:
        p = np.asarray(probs, dtype=np.float64)
        if p.ndim != 1 or len(p) == 0 or np.any(p < 0) or not math.isclose(p.sum(), 1.0, rel_tol=1e-9):
            raise ValueError("probs must be a non-empty 1-D probability vector summing to 1")
        with np.errstate(divide="ignore"):
            self.neg_log_probs = -np.log(p)

    @classmethod
    def fit(cls, ids: npt.ArrayLike, vocab: int, smoothing: float = 1.0) -> UnigramModel:
        """Add-`smoothing` estimate from token counts."""
        counts = np.bincount(np.asarray(ids, dtype=np.int64), minlength=vocab)[:vocab] + smoothing
        return cls(counts / counts.sum())

    def __call__(self, token_ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(token_ids, dtype=np.int64)
        if len(ids) and (ids.min() < 0 or ids.max() >= len(self.neg_log_probs)):
            raise ValueError(f"token id outside the vocabulary of {len(self.neg_log_probs)}")
        return self.neg_log_probs[ids]
