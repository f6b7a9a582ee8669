"""Binary rewards from the Rust compiler and the task's tests, in the sandbox.

Reward 1 only when the program ``prompt + completion + "\\n}" + test`` compiles
and every ``assert_eq!`` passes; a parse or compile error, a panic, a timeout or
a completion that never closed its function (cut at max tokens) scores 0. A
crash of rustc or of the sandbox scores the affected candidates 0 and never
raises. A body that leaves its function (items the test would see, such as a
``macro_rules! assert_eq``) or reaches outside the program (process exit,
arguments: the run's nonce, environment, files, ``unsafe``, ``extern``, ...)
scores ``forbidden`` without compiling (``_core.rust_completion_escape``): the
batch shares one process, so a policy that could read the nonce could print
other candidates' success lines.

Throughput: candidates are batched. Each one is first parsed alone with syn
(a parse error costs no rustc call). The parsed ones go into one source file,
each wrapped in its own ``mod cN { ... }`` (its test's ``fn main`` renamed), and
are type-checked together (``--emit=metadata --error-format=json``): every
error's primary span falls in one candidate's line range, which fails that
candidate alone; the rest are re-checked until a check is clean. The clean set
is built into one binary, which runs every candidate's test under
``catch_unwind`` in one sandboxed process and prints a per-candidate result
line tagged with a random nonce. Whatever that cannot attribute (an error
outside every range, a failed link, a batch run that timed out, crashed or
lost lines) falls back to compiling and running that candidate alone, exactly
like :mod:`nanochat_ternary.eval.humaneval`.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .. import _core
from ..eval.rustc import BINARY_NAME, COMPILE_LIMITS, SOURCE_NAME, rustc_binary
from ..eval.sandbox import Limits, run_tool, run_untrusted, sandbox_dir
from .tasks import Task, truncate

OUTCOMES = ("pass", "parse_error", "compile_error", "runtime_error", "timeout", "truncated", "forbidden")
RUN_LIMITS = Limits(cpu_seconds=5, memory_bytes=1 << 30, processes=32, wall_seconds=10.0)
BATCH_RUN_LIMITS = Limits(cpu_seconds=20, memory_bytes=2 << 30, processes=32, wall_seconds=30.0)
MAX_CHECK_ROUNDS = 4


@dataclasses.dataclass(frozen=True)
class Check:
    outcome: str
    detail: str = ""

    @property
    def reward(self) -> float:
        return 1.0 if self.outcome == "pass" else 0.0

    @property
    def compiled(self) -> bool:
        return self.outcome in ("pass", "runtime_error", "timeout")


@dataclasses.dataclass
class ScoreStats:
    candidates: int = 0
    seconds: float = 0.0
    rustc_calls: int = 0
    fallbacks: int = 0

    @property
    def checks_per_second(self) -> float:
        return self.candidates / self.seconds if self.seconds > 0 else 0.0


def _rename_main(test: str, name: str) -> str:
    return test.replace("fn main()", f"pub fn {name}()", 1)


_PRELUDE = "#![allow(warnings)]\n"


def _batch_source(programs: Sequence[str]) -> tuple[str, list[tuple[int, int]]]:
    """One crate holding every candidate in its own module, a dispatcher main,
    and the 1-based line range of each module."""
    lines = [_PRELUDE]
    ranges = []
    line = _PRELUDE.count("\n") + 1
    for i, program in enumerate(programs):
        block = f"mod c{i} {{\n{program}\n}}\n"
        ranges.append((line, line + block.count("\n") - 1))
        line += block.count("\n")
        lines.append(block)
    calls = "".join(f"        {i} => c{i}::__nct_test,\n" for i in range(len(programs)))
    lines.append(
        "fn main() {\n"
        "    let args: Vec<String> = std::env::args().collect();\n"
        "    let nonce = args.get(1).cloned().unwrap_or_default();\n"
        "    let only: Option<usize> = args.get(2).and_then(|a| a.parse().ok());\n"
        "    let table = |i: usize| -> fn() { match i {\n" + calls + "        _ => std::process::exit(3),\n    } };\n"
        "    if let Some(i) = only { table(i)(); println!(\"{} {} ok\", nonce, i); return; }\n"
        "    std::panic::set_hook(Box::new(|_| {}));\n"
        f"    for i in 0..{len(programs)} {{\n"
        "        let ok = std::panic::catch_unwind(table(i)).is_ok();\n"
        "        println!(\"{} {} {}\", nonce, i, if ok { \"ok\" } else { \"panic\" });\n"
        "    }\n}\n"
    )
    return "".join(lines), ranges


def _error_lines(stderr: str) -> tuple[list[int], bool]:
    """Primary-span lines of rustc's JSON errors, and whether some error had none."""
    lines, unattributed = [], False
    for raw in stderr.splitlines():
        try:
            diag = json.loads(raw)
        except json.JSONDecodeError:
            continue
        if not isinstance(diag, dict) or diag.get("level") not in ("error", "error: internal compiler error"):
            continue
        spans = [s for s in diag.get("spans", []) if s.get("is_primary")]
        if not spans:
            msg = str(diag.get("message", ""))
            if not msg.startswith("aborting due to"):
                unattributed = True
            continue
        lines.extend(int(s["line_start"]) for s in spans)
    return lines, unattributed


def _rustc(workdir: Path, source: str, *, binary: bool) -> tuple[int, str, bool]:
    (workdir / SOURCE_NAME).write_text(source, encoding="utf-8")
    argv = [rustc_binary(), "--edition", "2021", "-A", "warnings", "-C", "debuginfo=0", "--error-format=json"]
    if binary:
        argv += ["-o", BINARY_NAME, SOURCE_NAME]
    else:
        argv += ["--emit=metadata", "-o", "check.rmeta", SOURCE_NAME]
    result = run_tool(argv, workdir, COMPILE_LIMITS)
    return result.returncode, result.stderr, result.timed_out


def _single(program: str) -> Check:
    """Compile and run one program alone (the fallback path): a one-module batch
    run with the candidate's index, so success still needs the nonce line printed
    after the test returned (a body that calls ``exit(0)`` does not pass)."""
    try:
        with sandbox_dir() as workdir:
            source, _ = _batch_source([program])
            code, stderr, timed_out = _rustc(workdir, source, binary=True)
            if code != 0:
                return Check("timeout" if timed_out else "compile_error", _messages(stderr))
            (workdir / BINARY_NAME).chmod(0o755)
            return _run_one(workdir, secrets.token_hex(8), 0)
    except Exception as exc:  # a crash of rustc or the sandbox scores 0, never stops the run
        return Check("compile_error", f"harness error: {exc!r}")


def _run_one(workdir: Path, nonce: str, index: int) -> Check:
    run = run_untrusted([f"./{BINARY_NAME}", nonce, str(index)], workdir, RUN_LIMITS)
    if run.timed_out:
        return Check("timeout")
    if run.returncode == 0 and f"{nonce} {index} ok" in run.stdout.splitlines():
        return Check("pass")
    return Check("runtime_error", run.stderr[:2000] or f"exit status {run.returncode}")


def _messages(stderr: str) -> str:
    out = []
    for raw in stderr.splitlines():
        try:
            out.append(str(json.loads(raw).get("rendered") or ""))
        except (json.JSONDecodeError, AttributeError):
            out.append(raw)
    return "".join(out)[:2000]


def _score_group(programs: list[str], stats: ScoreStats) -> list[Check]:
    """Checks of parse-clean programs, batched as described in the module doc."""
    results: list[Check | None] = [None] * len(programs)
    alive = list(range(len(programs)))
    try:
        with sandbox_dir() as workdir:
            for _ in range(MAX_CHECK_ROUNDS):
                if not alive:
                    break
                source, ranges = _batch_source([programs[i] for i in alive])
                stats.rustc_calls += 1
                code, stderr, timed_out = _rustc(workdir, source, binary=False)
                if code == 0:
                    break
                lines, unattributed = _error_lines(stderr)
                failed = {k for line in lines for k, (a, b) in enumerate(ranges) if a <= line <= b}
                if timed_out or unattributed or not failed:
                    alive_fallback = alive
                    alive = []
                    for i in alive_fallback:
                        stats.fallbacks += 1
                        results[i] = _single(programs[i])
                    break
                for k in sorted(failed):
                    results[alive[k]] = Check("compile_error", "type check failed in the batch")
                alive = [i for k, i in enumerate(alive) if k not in failed]
            else:
                for i in alive:
                    stats.fallbacks += 1
                    results[i] = _single(programs[i])
                alive = []
            if alive:
                source, _ = _batch_source([programs[i] for i in alive])
                stats.rustc_calls += 1
                code, _, _ = _rustc(workdir, source, binary=True)
                if code != 0:
                    for i in alive:
                        stats.fallbacks += 1
                        results[i] = _single(programs[i])
                else:
                    (workdir / BINARY_NAME).chmod(0o755)
                    nonce = secrets.token_hex(8)
                    run = run_untrusted([f"./{BINARY_NAME}", nonce], workdir, BATCH_RUN_LIMITS)
                    seen: dict[int, str] = {}
                    if not run.timed_out:
                        for line in run.stdout.splitlines():
                            parts = line.split(" ")
                            if len(parts) == 3 and parts[0] == nonce and parts[1].isdigit():
                                seen.setdefault(int(parts[1]), parts[2])
                    for k, i in enumerate(alive):
                        if seen.get(k) == "ok":
                            results[i] = Check("pass")
                        elif seen.get(k) == "panic":
                            results[i] = Check("runtime_error", "panicked")
                        else:  # lost to a timeout, abort or exit: run it alone
                            stats.fallbacks += 1
                            results[i] = _run_one(workdir, nonce, k)
    except Exception as exc:  # harness failure: never stop the run
        for i, r in enumerate(results):
            if r is None:
                results[i] = Check("compile_error", f"harness error: {exc!r}")
    return [r if r is not None else Check("compile_error", "not checked") for r in results]


def score(
    candidates: Sequence[tuple[Task, str]],
    *,
    finished: Sequence[bool] | None = None,
    workers: int = 2,
    group_size: int = 64,
    stats: ScoreStats | None = None,
) -> list[Check]:
    """Checks of (task, completion) pairs; ``completion`` is cut at its first
    ``"\\n}"``. ``finished[i]`` False (generation hit max tokens without
    closing the function) scores ``truncated`` without compiling."""
    start = time.monotonic()
    stats = stats if stats is not None else ScoreStats()
    results: list[Check | None] = [None] * len(candidates)
    modules: list[tuple[int, str]] = []
    for i, (task, completion) in enumerate(candidates):
        body, stopped = truncate(completion)
        if finished is not None and not finished[i] and not stopped:
            results[i] = Check("truncated")
            continue
        program = task.prompt + body + "\n}\n" + _rename_main(task.test, "__nct_test")
        try:
            error = _core.rust_parse_error(f"mod c {{\n{program}\n}}\n")
            escape = _core.rust_completion_escape(task.prompt, body, task.test) if error is None else None
        except ValueError as exc:  # too large or deep to check, or a broken task: never compiled
            results[i] = Check("parse_error", str(exc)[:500])
            continue
        if error is not None:
            results[i] = Check("parse_error", str(error[2])[:500])
            continue
        if escape is not None:
            results[i] = Check("forbidden", escape[:500])
            continue
        modules.append((i, program))
    groups = [modules[k : k + group_size] for k in range(0, len(modules), group_size)]
    # Spread the groups over the workers evenly.
    if groups and len(groups) < workers and len(modules) >= 2 * workers:
        size = -(-len(modules) // workers)
        groups = [modules[k : k + size] for k in range(0, len(modules), size)]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        outs = list(pool.map(lambda g: _score_group([p for _, p in g], stats), groups))
    for group, checks in zip(groups, outs):
        for (i, _), check in zip(group, checks):
            results[i] = check
    stats.candidates += len(candidates)
    stats.seconds += time.monotonic() - start
    return [r if r is not None else Check("compile_error") for r in results]
