"""RL tasks: a HumanEval-Rust-shaped record (prompt, test, entry point) plus the
reference body, the task family, its split (``train`` / ``heldout``, by whole
families) and provenance.

A task's program is ``prompt + completion + "\\n}\\n" + test`` where the prompt
ends with the function's opening line and the test is a ``fn main()`` of
``assert_eq!``s. :func:`load_tasks` reads a jsonl file, checks every record and,
with ``verify=True``, runs each reference through the same reward harness as
the rollouts: a task whose reference fails its own tests is rejected, counted.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

SPLITS = ("train", "heldout")
STOP = "\n}"
DEFAULT_TASKS = "data/tasks.jsonl"


@dataclasses.dataclass(frozen=True)
class Task:
    name: str
    family: str
    split: str
    prompt: str
    test: str
    entry_point: str
    reference: str
    provenance: dict[str, Any]

    def program(self, completion: str) -> str:
        """The whole program for a (truncated) completion of the body."""
        return self.prompt + completion + STOP + "\n" + self.test

    def to_json(self) -> str:
        record = dataclasses.asdict(self)
        record["stop_tokens"] = [STOP]
        return json.dumps(record, ensure_ascii=False, sort_keys=True)


def truncate(completion: str) -> tuple[str, bool]:
    """(completion up to its first ``"\\n}"``, whether the stop occurred)."""
    at = completion.find(STOP)
    return (completion, False) if at < 0 else (completion[:at], True)


def _task_from_record(row: Any, where: str) -> Task:
    if not isinstance(row, dict):
        raise ValueError(f"{where}: not a JSON object")
    fields = {}
    for field in ("name", "family", "split", "prompt", "test", "entry_point", "reference"):
        value = row.get(field)
        if not isinstance(value, str) or (field != "reference" and not value):
            raise ValueError(f"{where}: field {field!r} must be a non-empty string")
        fields[field] = value
    if fields["split"] not in SPLITS:
        raise ValueError(f"{where}: split must be one of {SPLITS}, got {fields['split']!r}")
    if "fn main()" not in fields["test"]:
        raise ValueError(f"{where}: the test has no fn main()")
    provenance = row.get("provenance")
    if not isinstance(provenance, dict) or "source" not in provenance:
        raise ValueError(f"{where}: provenance must be an object with a 'source'")
    return Task(provenance=provenance, **fields)


@dataclasses.dataclass
class TaskSet:
    tasks: list[Task]
    source: str
    sha256: str
    rejected: int = 0
    rejected_names: list[str] = dataclasses.field(default_factory=list)

    def split(self, name: str) -> list[Task]:
        return [t for t in self.tasks if t.split == name]

    def families(self, split: str | None = None) -> list[str]:
        return sorted({t.family for t in self.tasks if split is None or t.split == split})


def default_tasks_path() -> Path:
    return Path(str(resources.files(__package__).joinpath(DEFAULT_TASKS)))


def load_tasks(path: str | os.PathLike[str] | None = None, *, verify: bool = False, workers: int = 2) -> TaskSet:
    """Tasks of a jsonl file (default: the shipped task set). Malformed lines
    raise ValueError naming the line; duplicate names are an error. With
    ``verify``, each reference is compiled and run against its tests and the
    failures are dropped and counted (``rejected``)."""
    path = Path(path) if path is not None else default_tasks_path()
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 ({exc})") from None
    tasks: list[Task] = []
    seen: set[str] = set()
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}, line {number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}: not JSON ({exc})") from None
        task = _task_from_record(row, where)
        if task.name in seen:
            raise ValueError(f"{where}: duplicate task name {task.name!r}")
        seen.add(task.name)
        tasks.append(task)
    if not tasks:
        raise ValueError(f"{path}: no tasks")
    result = TaskSet(tasks, str(path), hashlib.sha256(data).hexdigest())
    if verify:
        result = verify_tasks(result, workers=workers)
    return result


def verify_tasks(task_set: TaskSet, workers: int = 2) -> TaskSet:
    """Drops (and counts) the tasks whose reference does not pass its own tests."""
    from .rewards import score

    checks = score([(t, t.reference) for t in task_set.tasks], workers=workers)
    kept = [t for t, c in zip(task_set.tasks, checks) if c.reward == 1.0]
    bad = [t.name for t, c in zip(task_set.tasks, checks) if c.reward != 1.0]
    return dataclasses.replace(task_set, tasks=kept, rejected=task_set.rejected + len(bad),
                               rejected_names=task_set.rejected_names + bad)  # fmt: skip


def write_tasks(tasks: Iterable[Task], path: str | os.PathLike[str]) -> int:
    from .. import _atomic

    lines = [t.to_json() for t in tasks]
    _atomic.write_text(path, "".join(line + "\n" for line in lines))
    return len(lines)


def split_counts(tasks: Sequence[Task]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {s: {} for s in SPLITS}
    for t in tasks:
        out[t.split][t.family] = out[t.split].get(t.family, 0) + 1
    return out
