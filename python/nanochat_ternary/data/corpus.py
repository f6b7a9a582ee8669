"""Finding and filtering training documents.

Inputs are text files (one document each), `.jsonl` files (one document per
line, text in a field) and directory trees (walked in sorted order, filtered
by extension). Every candidate goes through the same filters, and each drop
is counted by reason so the recipe in meta.json says exactly what was kept:

    excluded_dir   under a `target/` or `vendor/` (build output, vendored copies) or `.git/` directory
    extension      a file in a walked tree whose extension is not wanted
    too_large      more than `max_file_bytes` bytes (data dumps, generated tables)
    unreadable     could not be read (permissions, vanished)
    not_utf8       not valid UTF-8 (binary files)
    empty          nothing but whitespace
    generated      a `@generated` / `DO NOT EDIT` / "auto-generated" marker in the first lines
    long_line      a line longer than `max_line_chars` (minified code, embedded data)
    bad_json       a .jsonl line that is not a JSON object with a string `jsonl_field`
    duplicate      same content (SHA-256) as a document kept earlier

Each document has a group: for a file found under a directory input, the
path `group_depth` components below that input (the directory it sits in at
that depth), so `--group-depth 1` on `~/.cargo/registry/src/<index>/` makes
each crate one group and a group holdout keeps whole crates out of training.
With `strip_versions` a trailing `-MAJOR.MINOR.PATCH[-pre][+build]` is cut from
the group's last component, so `syn-2.0.119` and `syn-1.0.109` are one group
and no version of a held-out crate is trained on. A file named directly, or a
.jsonl line, is its own group.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

DROP_REASONS = ("excluded_dir", "extension", "too_large", "unreadable", "not_utf8", "empty", "generated",
                "long_line", "bad_json", "duplicate")
DEFAULT_EXCLUDED_DIRS = ("target", "vendor", ".git")
GENERATED_MARKER = re.compile(r"@generated|do not edit|auto-?generated|automatically generated", re.IGNORECASE)
GENERATED_SCAN_LINES = 10
VERSION_SUFFIX = re.compile(r"-\d+\.\d+\.\d+(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?$")


class DataError(Exception):
    """A problem with the inputs or options that the user must fix (reported without a traceback)."""


@dataclass(frozen=True)
class Document:
    text: str
    source: str  # file path, or "file.jsonl:LINE"
    group: str
    sha256: str
    view: str = ""  # which view of a data mix it belongs to (mix.py); "" outside mixes

    @property
    def n_bytes(self) -> int:
        return len(self.text.encode("utf-8"))


@dataclass(frozen=True)
class CorpusOptions:
    extensions: tuple[str, ...] = ()  # wanted in walked trees, e.g. (".rs",); empty: every file
    max_file_bytes: int = 200_000
    max_line_chars: int = 1000
    jsonl_field: str = "text"
    group_depth: int = 1
    strip_versions: bool = False  # "syn-2.0.119" -> group "syn"
    excluded_dirs: tuple[str, ...] = DEFAULT_EXCLUDED_DIRS

    def __post_init__(self) -> None:
        if self.max_file_bytes <= 0:
            raise DataError(f"--max-file-bytes must be positive, got {self.max_file_bytes}")
        if self.max_line_chars <= 0:
            raise DataError(f"--max-line-chars must be positive, got {self.max_line_chars}")
        if self.group_depth < 1:
            raise DataError(f"--group-depth must be at least 1, got {self.group_depth}")
        bad = [e for e in self.extensions if not e.startswith(".") or len(e) < 2]
        if bad:
            raise DataError(f"extensions must look like '.rs', got {bad}")

    def describe(self) -> dict:
        return {"extensions": list(self.extensions), "max_file_bytes": self.max_file_bytes,
                "max_line_chars": self.max_line_chars, "jsonl_field": self.jsonl_field,
                "group_depth": self.group_depth, "strip_versions": self.strip_versions,
                "excluded_dirs": list(self.excluded_dirs),
                "generated_marker": GENERATED_MARKER.pattern, "generated_scan_lines": GENERATED_SCAN_LINES}


@dataclass
class CorpusStats:
    files_seen: int = 0  # files found (a .jsonl file counts once)
    candidates: int = 0  # documents that reached the filters (files and .jsonl lines)
    kept: int = 0
    bytes_kept: int = 0
    dropped: Counter = field(default_factory=Counter)

    def describe(self) -> dict:
        return {"files_seen": self.files_seen, "candidates": self.candidates, "kept": self.kept,
                "bytes_kept": self.bytes_kept, "dropped": {r: self.dropped.get(r, 0) for r in DROP_REASONS}}


def _reject_reason(text: str, opts: CorpusOptions) -> str | None:
    """Why a decoded document is noise, or None to keep it (size and encoding checked before)."""
    if not text.strip():
        return "empty"
    head = text.split("\n", GENERATED_SCAN_LINES)[:GENERATED_SCAN_LINES]
    if any(GENERATED_MARKER.search(line) for line in head):
        return "generated"
    if any(len(line) > opts.max_line_chars for line in text.splitlines()):
        return "long_line"
    return None


class Corpus:
    """Collects documents from `inputs` once; `documents` in input order, walk order sorted."""

    def __init__(self, inputs: Sequence[str | os.PathLike[str]], options: CorpusOptions = CorpusOptions()) -> None:
        if not inputs:
            raise DataError("no --input given")
        self.inputs = [Path(p) for p in inputs]
        missing = [str(p) for p in self.inputs if not p.exists()]
        if missing:
            raise DataError(f"input not found: {', '.join(missing)}")
        self.options = options
        self.stats = CorpusStats()
        self._seen_hashes: set[str] = set()
        self.documents: list[Document] = []
        for root in self.inputs:
            self.documents.extend(self._collect(root))

    # --- walking --------------------------------------------------------------------------------
    def _collect(self, root: Path) -> Iterator[Document]:
        if root.is_dir():
            for path in self._walk(root):
                rel = path.relative_to(root).parts
                group = "/".join(rel[: min(self.options.group_depth, len(rel) - 1)] or rel)
                if self.options.strip_versions:
                    group = VERSION_SUFFIX.sub("", group)
                yield from self._from_file(path, group=f"{root}/{group}", walked=True)
        else:
            yield from self._from_file(root, group=str(root), walked=False)

    def _walk(self, root: Path) -> Iterator[Path]:
        excluded = set(self.options.excluded_dirs)
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            kept_dirs = []
            for d in dirnames:
                if d in excluded:
                    # Counted, not read: a crate's target/ can hold gigabytes.
                    self.stats.dropped["excluded_dir"] += self._count_files(Path(dirpath) / d)
                else:
                    kept_dirs.append(d)
            dirnames[:] = kept_dirs
            for name in sorted(filenames):
                yield Path(dirpath) / name

    def _count_files(self, directory: Path) -> int:
        n = sum(len(files) for _, _, files in os.walk(directory))
        self.stats.files_seen += n
        return n

    # --- reading and filtering ------------------------------------------------------------------
    def _from_file(self, path: Path, group: str, walked: bool) -> Iterator[Document]:
        self.stats.files_seen += 1
        if walked and self.options.extensions and path.suffix not in self.options.extensions:
            self.stats.dropped["extension"] += 1
            return
        if path.suffix == ".jsonl":
            yield from self._from_jsonl(path)
            return
        self.stats.candidates += 1
        try:
            if path.stat().st_size > self.options.max_file_bytes:
                self.stats.dropped["too_large"] += 1
                return
            data = path.read_bytes()
        except OSError:
            self.stats.dropped["unreadable"] += 1
            return
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            self.stats.dropped["not_utf8"] += 1
            return
        doc = self._accept(text, str(path), group)
        if doc is not None:
            yield doc

    def _from_jsonl(self, path: Path) -> Iterator[Document]:
        key = self.options.jsonl_field
        try:
            f = open(path, "rb")
        except OSError as e:
            raise DataError(f"{path}: cannot read ({e.strerror})") from None
        with f:
            for number, raw in enumerate(f, start=1):
                if not raw.strip():
                    continue
                self.stats.candidates += 1
                if len(raw) > self.options.max_file_bytes * 2 + 64:
                    # JSON escapes at most double a document's size; cheaper than parsing it.
                    self.stats.dropped["too_large"] += 1
                    continue
                try:
                    record = json.loads(raw)
                except UnicodeDecodeError:
                    self.stats.dropped["not_utf8"] += 1
                    continue
                except json.JSONDecodeError:
                    self.stats.dropped["bad_json"] += 1
                    continue
                if not isinstance(record, dict) or not isinstance(record.get(key), str):
                    self.stats.dropped["bad_json"] += 1
                    continue
                text = record[key]
                if len(text.encode("utf-8", "surrogatepass")) > self.options.max_file_bytes:
                    self.stats.dropped["too_large"] += 1
                    continue
                try:
                    text.encode("utf-8")
                except UnicodeEncodeError:  # lone surrogates from \ud800-style escapes
                    self.stats.dropped["not_utf8"] += 1
                    continue
                source = f"{path}:{number}"
                doc = self._accept(text, source, group=source)
                if doc is not None:
                    yield doc

    def _accept(self, text: str, source: str, group: str) -> Document | None:
        reason = _reject_reason(text, self.options)
        if reason is not None:
            self.stats.dropped[reason] += 1
            return None
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
        if digest in self._seen_hashes:
            self.stats.dropped["duplicate"] += 1
            return None
        self._seen_hashes.add(digest)
        doc = Document(text=text, source=source, group=group, sha256=digest)
        self.stats.kept += 1
        self.stats.bytes_kept += doc.n_bytes
        return doc
