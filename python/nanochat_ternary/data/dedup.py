"""Exact and near-duplicate removal over code tokens (MinHash + LSH).

A document is cut into code tokens (`code_tokens`: identifiers, numbers, and every other
non-space character on its own), so layout does not matter. Exact duplicates are documents
with the same token sequence. Near duplicates: each document's set of `shingle`-token windows
is summarized by a MinHash signature of `num_perm` 32-bit hashes; locality-sensitive hashing
(`bands` bands of `num_perm / bands` rows) finds candidate pairs, and a document is dropped when
its estimated Jaccard similarity with an earlier kept document is at least `threshold`.
Documents are examined in the order given, so the first of a group is the one kept. Every
hash is seeded and platform-independent: the same input gives the same drops.
"""

from __future__ import annotations

import hashlib
import re
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

TOKEN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|\d+|\S")
MERSENNE = (1 << 31) - 1


def code_tokens(text: str) -> list[str]:
    return TOKEN.findall(text)


class TokenHasher:
    """Stable 32-bit hashes of tokens (CRC-32, cached)."""

    def __init__(self) -> None:
        self._cache: dict[str, int] = {}

    def __call__(self, tokens: Sequence[str]) -> np.ndarray:
        cache = self._cache
        out = np.empty(len(tokens), dtype=np.uint64)
        for i, t in enumerate(tokens):
            h = cache.get(t)
            if h is None:
                h = zlib.crc32(t.encode("utf-8"))
                if len(cache) < 2_000_000:
                    cache[t] = h
            out[i] = h
        return out


def window_hashes(token_hashes: np.ndarray, width: int) -> np.ndarray:
    """One 64-bit hash per window of `width` consecutive tokens (a polynomial rolling hash with
    wrap-around arithmetic); a document shorter than `width` gives one hash of all its tokens."""
    n = len(token_hashes)
    if n == 0:
        return np.empty(0, dtype=np.uint64)
    width = min(width, n)
    acc = np.zeros(n - width + 1, dtype=np.uint64)
    mult = np.uint64(1099511628211)
    with np.errstate(over="ignore"):
        for k in range(width):
            acc = acc * mult + token_hashes[k:n - width + 1 + k] + np.uint64(k + 1)
    return acc


@dataclass
class DedupOptions:
    threshold: float = 0.8
    shingle: int = 5
    num_perm: int = 64
    bands: int = 16
    seed: int = 0

    def validate(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"near-duplicate threshold must be in (0, 1], got {self.threshold}")
        if self.shingle < 1 or self.num_perm < 1 or self.bands < 1 or self.num_perm % self.bands:
            raise ValueError("shingle, num_perm and bands must be positive and bands must divide num_perm")

    def describe(self) -> dict:
        return {"threshold": self.threshold, "shingle": self.shingle, "num_perm": self.num_perm,
                "bands": self.bands, "seed": self.seed, "tokens": TOKEN.pattern}


@dataclass
class Deduplicator:
    """Feed documents one by one with `add`; it answers "kept", "exact" or "near"."""

    options: DedupOptions = field(default_factory=DedupOptions)

    def __post_init__(self) -> None:
        self.options.validate()
        rng = np.random.default_rng(self.options.seed)
        self._a = rng.integers(1, MERSENNE, size=self.options.num_perm, dtype=np.uint64)
        self._b = rng.integers(0, MERSENNE, size=self.options.num_perm, dtype=np.uint64)
        self._hasher = TokenHasher()
        self._exact: set[bytes] = set()
        self._buckets: dict[tuple[int, bytes], list[int]] = {}
        self._signatures: list[np.ndarray] = []

    def signature(self, shingles: np.ndarray) -> np.ndarray:
        x = (shingles ^ (shingles >> np.uint64(32))) & np.uint64(0xFFFFFFFF)
        # (a x + b) mod p with a, b < 2^31 and x < 2^32: no uint64 overflow.
        values = (self._a[:, None] * (x[None, :] % np.uint64(MERSENNE)) + self._b[:, None]) % np.uint64(MERSENNE)
        return values.min(axis=1).astype(np.uint32)

    def add(self, text: str) -> str:
        tokens = code_tokens(text)
        exact_key = hashlib.blake2b("\x00".join(tokens).encode("utf-8"), digest_size=16).digest()
        if exact_key in self._exact:
            return "exact"
        self._exact.add(exact_key)
        if not tokens:
            return "kept"
        sig = self.signature(np.unique(window_hashes(self._hasher(tokens), self.options.shingle)))
        rows = self.options.num_perm // self.options.bands
        keys = [(band, sig[band * rows:(band + 1) * rows].tobytes()) for band in range(self.options.bands)]
        candidates: set[int] = set()
        for key in keys:
            candidates.update(self._buckets.get(key, ()))
        for other in candidates:
            if float(np.mean(self._signatures[other] == sig)) >= self.options.threshold:
                return "near"
        index = len(self._signatures)
        self._signatures.append(sig)
        for key in keys:
            self._buckets.setdefault(key, []).append(index)
        return "kept"


def deduplicate(texts: Iterable[str], options: DedupOptions | None = None) -> list[str]:
    """The verdict ("kept" / "exact" / "near") of each text, in order."""
    dedup = Deduplicator(options or DedupOptions())
    return [dedup.add(t) for t in texts]
