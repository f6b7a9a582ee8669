"""Decontamination against the vendored HumanEval-Rust set.

Two rules, each drop counted by rule:

* **n-gram overlap**: a document is dropped when it shares a window of `window` (13)
  consecutive code tokens (`dedup.code_tokens`: identifiers, numbers, single punctuation
  characters; layout ignored) with any prompt or test of `eval/data/humaneval-rs.jsonl`.
  Benchmark windows with fewer than `min_words` (2) content words (identifiers or words of
  at least 3 characters outside `COMMON_WORDS`: Rust keywords, primitive and prelude types,
  `vec`, `new`, ...) are not used: they are number lists such as `1 , 2 , 3 , 4 , 5 , 6 , 7`
  or idioms such as `( x : f64 , y : f64 , z : f64 )` and `vec ! [ String : : from ( " a " )`
  from the tests, which carry nothing of a problem and, taken literally, matched about 5 %
  of all crate files. A copied prompt (prose) or test (`let candidate = largest_divisor ;`)
  still shares windows with two content words.
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
DEFAULT_MIN_WORDS = 2
WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]{2,}")
COMMON_WORDS = frozenset((
    # keywords
    "as async await break const continue crate dyn else enum extern false fn for if impl in let loop match mod "
    "move mut pub ref return self Self static struct super trait true type unsafe use where while "
    # primitive and prelude types, constructors
    "bool char str u8 u16 u32 u64 u128 usize i8 i16 i32 i64 i128 isize f32 f64 String Vec Option Some None "
    "Result Ok Err Box vec new from into to_string to_owned clone len iter collect unwrap assert assert_eq "
    "assert_ne HashMap HashSet std collections"
).split())
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
                 path_pattern: str = DEFAULT_PATH_PATTERN, min_words: int = DEFAULT_MIN_WORDS) -> None:
        if window < 1:
            raise ValueError(f"window must be positive, got {window}")
        if not 0 <= min_words <= window:
            raise ValueError(f"min_words must be in [0, window], got {min_words}")
        self.window = window
        self.min_words = min_words
        self.ignored_windows = 0
        self.path_re = re.compile(path_pattern, re.IGNORECASE)
        self._hasher = TokenHasher()
        texts = benchmark if benchmark is not None else benchmark_texts()
        grams = [self._benchmark_grams(t) for t in texts]
        self._grams_set = np.unique(np.concatenate(grams)) if grams else np.empty(0, dtype=np.uint64)
        self.counts: Counter = Counter()
        self.path_pattern = path_pattern

    def _benchmark_grams(self, text: str) -> np.ndarray:
        """The windows of a benchmark text that hold at least `min_words` identifiers."""
        tokens = code_tokens(text)
        if len(tokens) < self.window:
            return np.empty(0, dtype=np.uint64)
        hashes = window_hashes(self._hasher(tokens), self.window)
        words = np.concatenate([[0], np.cumsum([t not in COMMON_WORDS and bool(WORD.fullmatch(t))
                                                for t in tokens])])
        per_window = words[self.window:] - words[:-self.window]
        keep = per_window >= self.min_words
        self.ignored_windows += int((~keep).sum())
        return hashes[keep]

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
                "min_words": self.min_words, "benchmark_windows": int(self._grams_set.size),
                "benchmark_windows_ignored": self.ignored_windows, "path_pattern": self.path_pattern}
