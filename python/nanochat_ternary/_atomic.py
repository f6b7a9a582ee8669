"""Atomic file writes: a temp file beside the target, fsync, rename. Readers see the old
file or the new one, never part of one, and a failed write leaves no temp file behind."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any


def _replace_with(path: str | os.PathLike[str], fill: Any) -> None:
    """Calls ``fill(f)`` on a binary temp file next to ``path``, then moves it into place."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            fill(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    _replace_with(path, lambda f: f.write(data))


def write_text(path: str | os.PathLike[str], text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike[str], value: Any, *, sort_keys: bool = False, ensure_ascii: bool = False) -> None:
    """``value`` as indented JSON with a final newline."""
    write_text(path, json.dumps(value, indent=2, sort_keys=sort_keys, ensure_ascii=ensure_ascii) + "\n")


def copy_file(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    with open(src, "rb") as fin:
        _replace_with(dst, lambda f: shutil.copyfileobj(fin, f, 1 << 20))
