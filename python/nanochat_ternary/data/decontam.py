"""Decontamination against the vendored HumanEval-Rust set.

Two rules, each drop counted by rule:

* **n-gram overlap**: a document is dropped when it shares a window of `window` (13)
  consecutive code tokens (`dedup.code_tokens`: identifiers, numbers, single punctuation
  characters; layout ignored) with any prompt or test of `eval/data/humaneval-rs.jsonl`.
* **paths**: a document whose path looks like a benchmark or exercise collection
  (humaneval, mbpp, multipl-e, exercism, leetcode, advent of code, project euler, rosetta code,
  codewars, hackerrank, codeforces, ...; `DEFAULT_PATH_PATTERN`) is dropped whatever it holds.

The benchmark is used for nothing else: not for training, not for tuning.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from pathlib import Path

import numpy as np

from .dedup import TokenHasher, code_tokens, window_hashes

DEFAULT_WINDOW = 13
HUMANEVAL_RS = Path(__file__).resolve().parent.parent / "eval" / "data" / "humaneval-rs.jsonl"
DEFAULT_PATH_PATTERN = (r"human[-_ ]?eval|\bmbpp\b|multipl[-_]e|exercism|leetcode|advent[-_ ]?of[-_ ]?code"
                        r"|project[-_ ]?euler|rosetta[-_ ]?code|codewars|hackerrank|codeforces|\bkattis\b")


def benchmark_texts(path: str | os.PathLike[str] = HUMANEVAL_RS) -> list[str]:
    """Every prompt and test of a MultiPL-E style .jsonl file."""
    texts = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                record = json.loads(line)
                texts.extend(str(record[k]) for k in ("prompt", "test") if record.get(k))
    if not texts:
        raise ValueError(f"{path}: no prompts or tests")
    return texts


class Decontaminator:
    def __init__(self, benchmark: list[str] | None = None, window: int = DEFAULT_WINDOW,
                 path_pattern: str = DEFAULT_PATH_PATTERN) -> None:
        if window < 1:
            raise ValueError(f"window must be positive, got {window}")
        self.window = window
        self.path_re = re.compile(path_pattern, re.IGNORECASE)
        self._hasher = TokenHasher()
        texts = benchmark if benchmark is not None else benchmark_texts()
        grams = [self._grams(t) for t in texts]
        self._grams_set = np.unique(np.concatenate(grams)) if grams else np.empty(0, dtype=np.uint64)
        self.counts: Counter = Counter()
        self.path_pattern = path_pattern

    def _grams(self, text: str) -> np.ndarray:
        tokens = code_tokens(text)
        if len(tokens) < self.window:
            return np.empty(0, dtype=np.uint64)
        return window_hashes(self._hasher(tokens), self.window)

    def reason(self, text: str, path: str = "") -> str | None:
        """"path" or "ngram" when the document must go (and counts it), else None."""
        if path and self.path_re.search(path):
            self.counts["path"] += 1
            return "path"
        grams = self._grams(text)
        known = self._grams_set
        if grams.size and known.size and (known[np.minimum(np.searchsorted(known, grams), known.size - 1)]
                                          == grams).any():
            self.counts["ngram"] += 1
            return "ngram"
        return None

    def describe(self) -> dict:
        return {"benchmark": "humaneval-rs (prompts and tests)", "window": self.window,
                "benchmark_windows": int(self._grams_set.size), "path_pattern": self.path_pattern}
