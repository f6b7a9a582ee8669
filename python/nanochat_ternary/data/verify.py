"""Compiler-verified functions: type-check each standalone candidate alone with rustc.

    python -m nanochat_ternary.data verify --functions /work/data/rust-fn [--workers 1] [--limit N]

Candidates are the records of `functions.jsonl` (see `functions.py`) that are free functions
flagged `standalone` and `nontrivial`, one per distinct source (SHA-256 of what is compiled:
the module's needed `use std::...` lines, if any, then the function; `standalone_source`). Each
is written alone to a fresh sandbox directory and checked with `rustc --edition 2021
--crate-type lib --emit=metadata` (`eval/rustc.py`: rlimits, own process group, wall-clock
timeout).

Results are appended to `verify.jsonl` (next to functions.jsonl unless `--results`), one line
per checked text: {"sha256", "ok", "status": "pass" | "fail" | "timeout" | "crash", "seconds",
"error" (first error line), "rustc" (version)}. A rerun skips every hash already in the file
for the same rustc version, so a stopped run resumes and a finished one re-checks nothing; a
torn last line (the process was killed mid-write) is ignored and counted. Timeouts and rustc
crashes (killed by a signal, or an internal compiler error) are recorded and counted, never fatal.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from .corpus import DataError
from .functions import FUNCTIONS_NAME, iter_jsonl, standalone_source

RESULTS_NAME = "verify.jsonl"


@dataclass(frozen=True)
class Candidate:
    sha256: str
    text: str


def is_candidate(record: dict) -> bool:
    return (record.get("kind") == "function" and record.get("standalone") is True
            and record.get("nontrivial") is True and isinstance(record.get("text"), str))


def iter_candidates(functions_path: str | os.PathLike[str], counts: Counter) -> Iterator[Candidate]:
    """Distinct candidates in file order."""
    seen: set[str] = set()
    for record in iter_jsonl(functions_path, counts):
        if not is_candidate(record):
            continue
        counts["candidate_records"] += 1
        source = standalone_source(record)
        sha = source_sha256(source)
        if sha in seen:
            counts["duplicate_candidates"] += 1
            continue
        seen.add(sha)
        yield Candidate(sha, source)


def source_sha256(source: str) -> str:
    return hashlib.sha256(source.encode("utf-8")).hexdigest()


def rustc_version() -> str:
    from ..eval.rustc import rustc_binary

    try:
        out = subprocess.run([rustc_binary(), "--version"], capture_output=True, text=True, timeout=60, check=True)
    except (OSError, subprocess.SubprocessError, RuntimeError) as e:
        raise DataError(f"rustc is needed to verify functions: {e}") from None
    return out.stdout.strip()


def load_results(path: Path, version: str, counts: Counter) -> dict[str, dict]:
    """Results already in `path` for this rustc version, by sha256."""
    results: dict[str, dict] = {}
    if not path.is_file():
        return results
    for record in iter_jsonl(path, counts):
        if isinstance(record.get("sha256"), str) and isinstance(record.get("ok"), bool):
            if record.get("rustc") == version:
                results[record["sha256"]] = record
            else:
                counts["results_other_rustc"] += 1
    return results


def check_candidate(candidate: Candidate, version: str) -> dict:
    from ..eval.rustc import compile_rust
    from ..eval.sandbox import sandbox_dir

    start = time.perf_counter()
    with sandbox_dir() as workdir:
        result = compile_rust(candidate.text, workdir, binary=False)
    if result.timed_out:
        status = "timeout"
    elif result.returncode < 0 or "internal compiler error" in result.stderr:
        status = "crash"
    else:
        status = "pass" if result.ok else "fail"
    error = next((line for line in result.stderr.splitlines() if line.startswith("error")), "")
    return {"sha256": candidate.sha256, "ok": status == "pass", "status": status,
            "seconds": round(time.perf_counter() - start, 3), "error": error[:300], "rustc": version}


def verify(functions_dir: str | os.PathLike[str], *, results_path: str | os.PathLike[str] | None = None,
           workers: int = 1, limit: int | None = None, progress=print) -> dict:
    """Checks the candidates not yet in the results file; returns the counts."""
    if workers < 1:
        raise DataError(f"--workers must be at least 1, got {workers}")
    if limit is not None and limit < 0:
        raise DataError(f"--limit must be >= 0, got {limit}")
    functions_path = Path(functions_dir) / FUNCTIONS_NAME
    if not functions_path.is_file():
        raise DataError(f"{functions_path}: not found (run the functions step first)")
    results_file = Path(results_path) if results_path else Path(functions_dir) / RESULTS_NAME
    version = rustc_version()
    counts: Counter = Counter()
    previous = load_results(results_file, version, counts)
    todo: list[Candidate] = []
    n_candidates = 0
    reused = {}  # results of earlier runs for today's candidates (others may be for texts since changed)
    for candidate in iter_candidates(functions_path, counts):
        n_candidates += 1
        if candidate.sha256 in previous:
            reused[candidate.sha256] = previous[candidate.sha256]
            continue
        if limit is None or len(todo) < limit:
            todo.append(candidate)
    if results_file.is_file() and results_file.stat().st_size > 0:
        with open(results_file, "rb") as f:
            f.seek(-1, os.SEEK_END)
            torn = f.read(1) != b"\n"
        if torn:  # a killed run left half a line: end it so the next record starts on its own line
            with open(results_file, "a", encoding="utf-8") as f:
                f.write("\n")
    lock = threading.Lock()
    new = Counter()
    start = time.perf_counter()
    with open(results_file, "a", encoding="utf-8") as out, ThreadPoolExecutor(max_workers=workers) as pool:
        for i, record in enumerate(pool.map(lambda c: check_candidate(c, version), todo), start=1):
            with lock:
                out.write(json.dumps(record) + "\n")
                out.flush()
            new[record["status"]] += 1
            if progress is not None and (i % 200 == 0 or i == len(todo)):
                elapsed = time.perf_counter() - start
                progress(f"  {i}/{len(todo)} checked, {new['pass']} pass, {i / max(elapsed, 1e-9):.2f} checks/s")
    elapsed = time.perf_counter() - start
    passes_before = sum(r["ok"] for r in reused.values())
    checked = sum(new.values())
    return {
        "rustc": version,
        "results": str(results_file),
        "candidates": n_candidates,
        "already_checked": len(reused),
        "checked_now": checked,
        "passed_now": new["pass"],
        "failed_now": new["fail"],
        "timeouts_now": new["timeout"],
        "crashes_now": new["crash"],
        "passes_total": passes_before + new["pass"],  # of today's candidates
        "checked_total": len(reused) + checked,
        "left_unchecked": n_candidates - len(reused) - checked,
        "results_not_candidates": len(previous) - len(reused),
        "seconds": round(elapsed, 1),
        "checks_per_second": round(checked / elapsed, 3) if checked and elapsed > 0 else None,
        "workers": workers,
        "skipped_lines": counts["bad_line"],  # unreadable lines of functions.jsonl and the results file
        "results_other_rustc": counts["results_other_rustc"],
    }


def passed_hashes(results_path: str | os.PathLike[str]) -> set[str]:
    """Hashes of every text that compiled, whatever the rustc version."""
    return {r["sha256"] for r in iter_jsonl(results_path) if r.get("ok") is True and isinstance(r.get("sha256"), str)}


def summary(report: dict) -> str:
    rate = report["checks_per_second"]
    return (f"{report['candidates']} candidates; checked {report['checked_now']} now "
            f"({report['passed_now']} pass, {report['failed_now']} fail, {report['timeouts_now']} timeout, "
            f"{report['crashes_now']} crash) at {rate if rate is not None else '-'} checks/s with "
            f"{report['workers']} worker(s); {report['already_checked']} already checked; "
            f"passes in total {report['passes_total']} of {report['checked_total']}; "
            f"{report['left_unchecked']} left; results {report['results']}")
