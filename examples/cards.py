"""Helpers the model-card scripts share: training logs, checkpoints, the CPU's name and a
decode-speed measurement of a shipped file."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any


def read_log(run: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    steps, evals = [], []
    for line in (run / "log.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "val_loss" in record:
            evals.append(record)
        elif "loss" in record:
            steps.append(record)
    return steps, evals


def newest_checkpoint(run: Path) -> Path:
    return run / (run / "latest").read_text().strip()


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def decode_speed(model_path: Path, threads: int, tokens: int = 256) -> float:
    """Greedy decode tokens/s of the shipped file, best of 3."""
    from nanochat_ternary import kernels
    from nanochat_ternary.model import TernaryModel

    kernels.set_num_threads(threads)
    model = TernaryModel.from_pretrained(model_path)
    best = 0.0
    for _ in range(3):
        start, n = time.perf_counter(), 0
        for _piece in model.stream("fn main() {", max_new_tokens=tokens):
            n += 1
        best = max(best, n / (time.perf_counter() - start))
    return best


def write_card(out: Path, card: str) -> None:
    """Writes the card atomically and prints it."""
    import os

    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    tmp.write_text(card)
    os.replace(tmp, out)
    print(card)
