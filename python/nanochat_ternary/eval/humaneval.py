"""HumanEval-Rust (MultiPL-E's translation, 156 problems): sample, assemble,
compile, run in the sandbox, and report pass@k with every sample's outcome.

A program is ``prompt + truncate(completion) + "\\n}" + test``: the prompt ends
with the function's opening line, the completion is cut at its first stop
sequence (``"\\n}"``, the function's closing brace), the brace is put back, and
the test's ``fn main()`` of ``assert_eq!``s follows. Outcomes:

* ``compile_error`` — rustc rejected the program;
* ``runtime_error`` — it ran but exited non-zero (failed ``assert_eq!``, panic,
  abort such as a failed allocation, or another signal);
* ``timeout`` — wall-clock or CPU-time limit reached;
* ``forbidden`` — not compiled: the body leaves its function (adds items the
  test would see, e.g. a ``macro_rules! assert_eq`` that neuters the asserts) or
  reaches outside the program (``std::process::exit(0)`` before the asserts run
  would exit with status 0; also arguments, environment, files, ``unsafe``,
  ``extern``; ``_core.rust_completion_escape``);
* ``pass`` — exited with status 0.
"""

from __future__ import annotations

import dataclasses
import json
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import Any

from .. import _core
from .generate import Generator, generate
from .passk import mean_pass_at_k
from .rustc import BINARY_NAME, compile_rust
from .sandbox import Limits, run_untrusted, sandbox_dir, sandbox_report

OUTCOMES = ("pass", "compile_error", "runtime_error", "timeout", "forbidden")
RUN_LIMITS = Limits(cpu_seconds=5, memory_bytes=1 << 30, processes=32, wall_seconds=10.0)
_DETAIL_CHARS = 2000


@dataclasses.dataclass(frozen=True)
class Problem:
    name: str
    prompt: str
    test: str
    stop_tokens: tuple[str, ...]
    entry_point: str


@dataclasses.dataclass(frozen=True)
class SampleResult:
    name: str
    index: int
    outcome: str
    detail: str  # compiler or runtime stderr (head), empty on pass
    completion: str  # after truncation


def load_problems(path: str | Path | None = None) -> list[Problem]:
    """Problems from a MultiPL-E jsonl file (default: the vendored HumanEval-Rust)."""
    if path is None:
        text = resources.files(__package__).joinpath("data/humaneval-rs.jsonl").read_text("utf-8")
        source = "vendored humaneval-rs.jsonl"
    else:
        text = Path(path).read_text("utf-8")
        source = str(path)
    problems = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            problems.append(Problem(name=str(row["name"]), prompt=str(row["prompt"]), test=str(row["test"]),
                                    stop_tokens=tuple(row.get("stop_tokens", ["\n}"])),
                                    entry_point=str(row.get("entry_point", ""))))  # fmt: skip
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"{source}, line {number}: not a problem record ({exc})") from exc
    return problems


def truncate(completion: str, stop_tokens: Sequence[str]) -> str:
    """The completion up to (excluding) its earliest stop sequence."""
    cut = len(completion)
    for stop in stop_tokens:
        if stop:
            at = completion.find(stop)
            if at != -1:
                cut = min(cut, at)
    return completion[:cut]


def assemble(problem: Problem, completion: str) -> str:
    """The full program for one sample (see the module docstring)."""
    return problem.prompt + truncate(completion, problem.stop_tokens) + "\n}" + problem.test


def run_sample(problem: Problem, completion: str, index: int = 0, limits: Limits = RUN_LIMITS) -> SampleResult:
    """Compiles and runs one sample in a fresh sandbox directory."""
    body = truncate(completion, problem.stop_tokens)
    escape = _core.rust_completion_escape(problem.prompt, body, problem.test)
    if escape is not None:
        return SampleResult(problem.name, index, "forbidden", escape[:_DETAIL_CHARS], body)
    with sandbox_dir() as workdir:
        compiled = compile_rust(assemble(problem, completion), workdir, binary=True)
        if not compiled.ok:
            detail = "compiler timed out" if compiled.timed_out else compiled.stderr
            return SampleResult(problem.name, index, "compile_error", detail[:_DETAIL_CHARS], body)
        ran = run_untrusted([f"./{BINARY_NAME}"], workdir, limits)
    if ran.timed_out:
        outcome, detail = "timeout", f"stopped after {ran.wall_seconds:.1f} s"
    elif ran.returncode != 0:
        outcome, detail = "runtime_error", f"exit status {ran.returncode}\n{ran.stderr}"
    else:
        outcome, detail = "pass", ""
    return SampleResult(problem.name, index, outcome, detail[:_DETAIL_CHARS], body)


def evaluate_completions(
    problems: Sequence[Problem],
    completions: Mapping[str, Sequence[str]],
    *,
    ks: Iterable[int] = (1, 10),
    parallel: int = 2,
    limits: Limits = RUN_LIMITS,
) -> dict[str, Any]:
    """Runs every completion of every problem and builds the JSON report.

    pass@k is reported for each k no larger than the smallest per-problem sample
    count (others are listed under ``skipped_k``)."""
    if parallel < 1:
        raise ValueError(f"parallel must be >= 1, got {parallel}")
    by_name = {p.name: p for p in problems}
    unknown = sorted(set(completions) - set(by_name))
    if unknown:
        raise ValueError(f"completions for unknown problems: {unknown[:5]}")
    missing = [p.name for p in problems if not completions.get(p.name)]
    if missing:
        raise ValueError(f"no completions for {len(missing)} problems, e.g. {missing[:5]}")
    jobs = [(by_name[name], text, i) for name in by_name for i, text in enumerate(completions[name])]
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        results = list(pool.map(lambda job: run_sample(*job, limits=limits), jobs))
    return build_report(results, ks)


def build_report(results: Sequence[SampleResult], ks: Iterable[int]) -> dict[str, Any]:
    per_problem: dict[str, dict[str, int]] = defaultdict(lambda: {"n": 0, "c": 0})
    outcome_counts = dict.fromkeys(OUTCOMES, 0)
    for r in results:
        per_problem[r.name]["n"] += 1
        per_problem[r.name]["c"] += r.outcome == "pass"
        outcome_counts[r.outcome] += 1
    min_n = min((v["n"] for v in per_problem.values()), default=0)
    counts = [(v["n"], v["c"]) for v in per_problem.values()]
    ks = sorted(set(ks))
    return {
        "problems": len(per_problem),
        "samples": len(results),
        "pass_at_k": {f"pass@{k}": mean_pass_at_k(counts, k) for k in ks if 1 <= k <= min_n},
        "skipped_k": [k for k in ks if not 1 <= k <= min_n],
        "outcomes": outcome_counts,
        "per_problem": dict(per_problem),
        "results": [dataclasses.asdict(r) for r in results],
        "sandbox": sandbox_report(),
    }


def evaluate_model(
    model: Generator,
    problems: Sequence[Problem] | None = None,
    *,
    n: int = 1,
    ks: Iterable[int] = (1, 10),
    parallel: int = 2,
    **sampling: Any,
) -> dict[str, Any]:
    """Samples `n` completions per problem from `model` (a callable
    ``prompts -> completions`` or anything with ``.generate(prompts, ...)``,
    e.g. a TernaryModel) and evaluates them. Sampling kwargs are passed through."""
    problems = load_problems() if problems is None else list(problems)
    samples = generate(model, [p.prompt for p in problems], n=n, **sampling)
    completions = {p.name: samples[i] for i, p in enumerate(problems)}
    return evaluate_completions(problems, completions, ks=ks, parallel=parallel)


def read_completions(path: str | Path) -> dict[str, list[str]]:
    """Completions from jsonl: one ``{"name", "completion"}`` per sample, or
    ``{"name", "completions": [...]}`` per problem."""
    completions: dict[str, list[str]] = defaultdict(list)
    for number, line in enumerate(Path(path).read_text("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            name = str(row["name"])
            texts = row["completions"] if "completions" in row else [row["completion"]]
            if not all(isinstance(t, str) for t in texts):
                raise TypeError("completions must be strings")
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}, line {number}: expected {{'name', 'completion'}} ({exc})") from exc
        completions[name].extend(texts)
    return dict(completions)
