"""Rust compile rate of generated code: a `syn` parse check and a real
``rustc --edition 2021 --crate-type lib --emit=metadata`` check per sample, plus
AST metrics (functions, lines, cyclomatic complexity as defined in
``rust/evalrs/src/metrics.rs``: 1 + ifs + (match arms − 1) + loops + ``&&`` +
``||`` + ``?``).

Beside the compile rate stands the **nontrivial compile rate**: the share of samples
that compile *and* whose function bodies are real work. A sample counts only when it
has at least one function or method with a body (found by the syn extraction,
``_core.rust_extract_functions``) and none of those bodies is empty or invokes
``todo!``, ``unimplemented!``, ``unreachable!`` or ``panic!`` (anywhere, including
inside other macros' arguments). Stubs compile, so they cannot game this number."""

from __future__ import annotations

import json
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .. import _core
from .generate import Generator, generate
from .humaneval import truncate
from .rustc import compile_rust
from .sandbox import sandbox_dir

STOP_TOKENS = ("\n}",)

# Openings of functions and types; a completion finishes the item. Items that
# open a `{` block are closed by the harness (stop at "\n}", brace re-added).
BUILTIN_PROMPTS: tuple[str, ...] = (
    "/// Returns the sum of the elements.\npub fn sum(values: &[i64]) -> i64 {\n",
    "/// Returns the largest element, or None when empty.\npub fn max_value(values: &[i32]) -> Option<i32> {\n",
    "/// Reverses a string by characters.\npub fn reverse(s: &str) -> String {\n",
    "/// True when `s` reads the same forwards and backwards.\npub fn is_palindrome(s: &str) -> bool {\n",
    "/// Greatest common divisor.\npub fn gcd(a: u64, b: u64) -> u64 {\n",
    "/// n-th Fibonacci number.\npub fn fibonacci(n: u32) -> u64 {\n",
    "/// Counts the words separated by whitespace.\npub fn word_count(text: &str) -> usize {\n",
    "/// True when n is prime.\npub fn is_prime(n: u64) -> bool {\n",
    "/// Sorts the vector in place with insertion sort.\npub fn insertion_sort(v: &mut Vec<i32>) {\n",
    "/// Binary search; the index of `target` if present.\npub fn binary_search(v: &[i32], target: i32) -> Option<usize> {\n",
    "/// Parses a comma-separated list of integers.\npub fn parse_list(s: &str) -> Result<Vec<i64>, std::num::ParseIntError> {\n",
    "/// Counts how often each character occurs.\n"
    "pub fn char_counts(s: &str) -> std::collections::HashMap<char, usize> {\n",
    "/// Removes duplicates, keeping the first occurrence.\npub fn dedup_stable(v: &[i32]) -> Vec<i32> {\n",
    "/// Transposes a rectangular matrix.\npub fn transpose(m: &[Vec<f64>]) -> Vec<Vec<f64>> {\n",
    "/// Mean of the values, None when empty.\npub fn mean(values: &[f64]) -> Option<f64> {\n",
    "/// Capitalizes the first letter of each word.\npub fn title_case(s: &str) -> String {\n",
    "/// Factorial, None on overflow.\npub fn checked_factorial(n: u32) -> Option<u64> {\n",
    "/// Merges two sorted slices into one sorted vector.\npub fn merge_sorted(a: &[i32], b: &[i32]) -> Vec<i32> {\n",
    "/// True when the brackets ()[]{} are balanced.\npub fn balanced(s: &str) -> bool {\n",
    "/// Run-length encodes a string: \"aaab\" -> \"a3b1\".\npub fn run_length(s: &str) -> String {\n",
    "/// A point in the plane.\n#[derive(Debug, Clone, Copy, PartialEq)]\npub struct Point {\n",
    "/// A shape with an area.\npub enum Shape {\n",
    "pub struct Stack<T> {\n    items: Vec<T>,\n}\n\nimpl<T> Stack<T> {\n",
    "/// Things that can be measured.\npub trait Area {\n",
    "pub struct Counter {\n    count: u32,\n}\n\nimpl Iterator for Counter {\n",
    "#[derive(Debug)]\npub enum ParseError {\n    Empty,\n    BadDigit(char),\n}\n\n"
    "impl std::fmt::Display for ParseError {\n",
    "pub struct Matrix {\n    rows: usize,\n    cols: usize,\n    data: Vec<f64>,\n}\n\nimpl Matrix {\n",
    "/// Splits a slice into chunks of at most `size` and sums each.\n"
    "pub fn chunk_sums(v: &[i32], size: usize) -> Vec<i32> {\n",
    "/// Returns the n-th line of the text, if any.\npub fn nth_line(text: &str, n: usize) -> Option<&str> {\n",
    "/// Finds two indices whose values add up to target.\n"
    "pub fn two_sum(v: &[i32], target: i32) -> Option<(usize, usize)> {\n",
)


def check_source(source: str, *, use_rustc: bool = True) -> dict[str, Any]:
    """Parse check, AST metrics and (optionally) a rustc metadata build of one source."""
    record: dict[str, Any] = {"parses": False, "parse_error": None, "metrics": None,
                              "compiles": None, "rustc_error": None, "nontrivial": False}  # fmt: skip
    try:
        error = _core.rust_parse_error(source)
    except ValueError as exc:  # too large or too deep: not analysable
        error = (0, 0, str(exc))
    if error is None:
        record["parses"] = True
        record["metrics"] = _core.rust_ast_metrics(source)
        record["nontrivial"] = has_nontrivial_bodies(source)
    else:
        line, column, message = error
        record["parse_error"] = f"line {line}, column {column}: {message}"
    if use_rustc:
        with sandbox_dir() as workdir:
            result = compile_rust(source, workdir, binary=False)
        record["compiles"] = result.ok
        if not result.ok:
            record["rustc_error"] = "compiler timed out" if result.timed_out else result.stderr[:2000]
    return record


def has_nontrivial_bodies(source: str) -> bool:
    """True when `source` has at least one function or method with a body and every such
    body is nonempty and free of todo!/unimplemented!/unreachable!/panic! (syn extraction)."""
    try:
        items = _core.rust_extract_functions(source)
    except (ValueError, RuntimeError):
        return False
    bodies = [item for item in items if item["kind"] in ("function", "method")]
    return bool(bodies) and all(bool(item["nontrivial"]) for item in bodies)


def complete_source(prompt: str, completion: str) -> str:
    """Prompt + completion cut at the first "\\n}" with the brace re-added; a
    completion without a stop sequence is kept whole (it closes itself)."""
    body = truncate(completion, STOP_TOKENS)
    return prompt + body + ("\n}\n" if len(body) < len(completion) else "")


def evaluate_sources(sources: Sequence[str], *, use_rustc: bool = True, parallel: int = 2) -> dict[str, Any]:
    """Checks every source (in parallel) and aggregates rates and mean metrics."""
    if parallel < 1:
        raise ValueError(f"parallel must be >= 1, got {parallel}")
    if not sources:
        raise ValueError("no sources to check")
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        records = [{**record, "source": source}
                   for source, record in zip(sources, pool.map(lambda s: check_source(s, use_rustc=use_rustc), sources))]
    parsed = [r["metrics"] for r in records if r["metrics"] is not None]
    summary: dict[str, Any] = {
        "samples": len(records),
        "parse_rate": sum(r["parses"] for r in records) / len(records),
        "compile_rate": (sum(bool(r["compiles"]) for r in records) / len(records)) if use_rustc else None,
        # Compiles and every function body does real work (see the module docs).
        "nontrivial_compile_rate": (sum(bool(r["compiles"]) and r["nontrivial"] for r in records) / len(records))
        if use_rustc else None,
        "nontrivial_rate": sum(r["nontrivial"] for r in records) / len(records),
    }
    for key in ("functions", "lines", "code_lines", "cyclomatic_max"):
        summary[f"mean_{key}"] = sum(m[key] for m in parsed) / len(parsed) if parsed else None
    return {"summary": summary, "results": records}


def evaluate_model(model: Generator, prompts: Sequence[str] | None = None, *, n: int = 1,
                   use_rustc: bool = True, parallel: int = 2, **sampling: Any) -> dict[str, Any]:  # fmt: skip
    """Completes each prompt `n` times with `model` and measures the programs."""
    prompts = list(BUILTIN_PROMPTS if prompts is None else prompts)
    samples = generate(model, prompts, n=n, **sampling)
    sources = [complete_source(p, c) for p, outs in zip(prompts, samples) for c in outs]
    return evaluate_sources(sources, use_rustc=use_rustc, parallel=parallel)


def read_prompts(path: str | Path) -> list[str]:
    """Prompts from jsonl (``{"prompt": ...}`` per line) or, for any other file,
    the whole file as one prompt."""
    path = Path(path)
    text = path.read_text("utf-8")
    if path.suffix != ".jsonl":
        return [text]
    prompts = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                prompts.append(str(json.loads(line)["prompt"]))
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}, line {number}: expected {{'prompt': ...}} ({exc})") from exc
    return prompts
