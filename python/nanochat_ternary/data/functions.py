"""The whole-file and function-level views of a fetched crate corpus.

    python -m nanochat_ternary.data functions --crates /work/data/crates --out /work/data/rust-fn

reads the permissively licensed crates of a `fetch-crates` directory (its `crates.json`),
plus the Rust standard library sources unless `--no-std`, and writes into `--out`:

    files.jsonl       one record per kept .rs file: {"text", "crate", "group", "path", "sha256"}
    functions.jsonl   one record per free function, impl block and method (`_core.rust_extract_functions`,
                      syn): {"kind", "name", "text", "signature", "doc", "body", "impl_header",
                      "standalone", "nontrivial", "std_uses", "start_line", "end_line", "crate", "group",
                      "path", "sha256" (of "text")}
    stats.json        counts: crates read / excluded, files seen / kept / dropped by reason, files that did
                      not parse, items by kind, standalone candidates

Files go through the corpus filters (`corpus.py`: too large, not UTF-8, generated, minified, ...),
each drop counted. Only the newest version of each crate is read unless `--all-versions` (older
copies are near-duplicates). Crates whose names match `--exclude-crates` (machine-generated
platform bindings by default) are skipped and counted. `group` is `crate:<name>` (`std:<name>`
for the standard library), the same for every view, so a holdout by group keeps whole crates out.
A file that does not parse is counted and skipped, never fatal. Outputs are written under
temporary names and renamed when complete.

`render_completion_shape` turns a function record into the shape of a completion prompt: a `///`
doc comment (or a `//` comment made from the name when there is none), the signature, the body.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from .. import _atomic
from .corpus import Corpus, CorpusOptions, DataError
from .fetch import VERSIONED_DIR, kept_crate_dirs
from .rust_corpus import rust_std_library

FILES_NAME = "files.jsonl"
FUNCTIONS_NAME = "functions.jsonl"
STATS_NAME = "stats.json"
# Machine-generated FFI bindings: huge, repetitive, and not how people write Rust.
DEFAULT_EXCLUDE_CRATES = r"^(windows([-_].*)?|winapi([-_].*)?|web-sys|js-sys|linux-raw-sys)$"


@dataclass(frozen=True)
class FunctionsOptions:
    crates: str | None  # a fetch-crates directory
    out: str
    include_std: bool = True
    all_versions: bool = False
    exclude_crates: str = DEFAULT_EXCLUDE_CRATES
    workers: int = 1
    corpus: CorpusOptions = CorpusOptions(extensions=(".rs",))

    def validate(self) -> None:
        if self.workers < 1:
            raise DataError(f"--workers must be at least 1, got {self.workers}")
        try:
            re.compile(self.exclude_crates)
        except re.error as e:
            raise DataError(f"--exclude-crates {self.exclude_crates!r}: {e}") from None
        if self.crates is None and not self.include_std:
            raise DataError("nothing to read: give --crates or leave the std sources in")


def _version_key(version: str) -> tuple:
    core = re.split(r"[-+]", version, maxsplit=1)[0]
    parts = tuple(int(p) if p.isdigit() else 0 for p in core.split("."))
    return parts, "-" not in version  # a release sorts after its pre-releases


def crate_sources(opts: FunctionsOptions, stats: Counter) -> list[tuple[str, str, Path]]:
    """(crate name, group, directory) to read, sorted by group."""
    sources: list[tuple[str, str, Path]] = []
    exclude = re.compile(opts.exclude_crates)
    if opts.crates is not None:
        newest: dict[str, tuple[tuple, Path]] = {}
        for name, directory in kept_crate_dirs(opts.crates):
            if exclude.search(name):
                stats["crates_excluded_by_name"] += 1
                continue
            m = VERSIONED_DIR.match(directory.name)
            key = _version_key(m.group("version")) if m else ((0,), True)
            if opts.all_versions:
                sources.append((name, f"crate:{name}", directory))
            elif name not in newest or key > newest[name][0]:
                if name in newest:
                    stats["crates_older_versions_skipped"] += 1
                newest[name] = (key, directory)
            else:
                stats["crates_older_versions_skipped"] += 1
        sources.extend((name, f"crate:{name}", d) for name, (_, d) in newest.items())
    if opts.include_std:
        library = rust_std_library()
        if library is None:
            raise DataError("Rust standard library sources not found (`rustup component add rust-src`), "
                            "or pass --no-std")
        for d in sorted(library.iterdir()):
            if d.is_dir() and not d.name.startswith("."):
                sources.append((d.name, f"std:{d.name}", d))
    sources.sort(key=lambda s: (s[1], str(s[2])))
    return sources


def _extract(text: str) -> list[dict] | str:
    """The items of one file, or why it could not be read ("parse_error" / "internal_error")."""
    from .. import _core

    try:
        return _core.rust_extract_functions(text)
    except ValueError:
        return "parse_error"
    except RuntimeError:
        return "internal_error"


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def build_functions(opts: FunctionsOptions, progress=print) -> dict:
    """Writes files.jsonl, functions.jsonl and stats.json into opts.out; returns the stats."""
    opts.validate()
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    stats: Counter = Counter()
    file_drops: Counter = Counter()
    kinds: Counter = Counter()
    sources = crate_sources(opts, stats)
    if not sources:
        raise DataError("no crates to read (all excluded or none kept)")
    files_tmp = out / (FILES_NAME + ".tmp")
    functions_tmp = out / (FUNCTIONS_NAME + ".tmp")
    with open(files_tmp, "w", encoding="utf-8") as files_f, open(functions_tmp, "w", encoding="utf-8") as fn_f, \
            ThreadPoolExecutor(max_workers=opts.workers) as pool:
        for number, (name, group, directory) in enumerate(sources, start=1):
            corpus = Corpus([directory], opts.corpus)
            stats["crates_read"] += 1
            stats["files_seen"] += corpus.stats.files_seen
            file_drops.update(corpus.stats.dropped)
            docs = corpus.documents
            for doc, items in zip(docs, pool.map(_extract, (d.text for d in docs))):
                rel = os.path.relpath(doc.source, directory.parent)
                if isinstance(items, str):
                    stats[f"files_{items}"] += 1
                    # A file the parser refuses is still a whole-file document.
                    items = []
                stats["files_kept"] += 1
                stats["bytes_kept"] += doc.n_bytes
                files_f.write(json.dumps({"text": doc.text, "crate": name, "group": group, "path": rel,
                                          "sha256": doc.sha256}, ensure_ascii=False) + "\n")
                for item in items:
                    kinds[item["kind"]] += 1
                    if item["kind"] == "function" and item["standalone"]:
                        stats["standalone_functions"] += 1
                        if item["nontrivial"]:
                            stats["standalone_nontrivial"] += 1
                            if item.get("std_uses"):
                                stats["standalone_nontrivial_with_std_uses"] += 1
                    if item["kind"] == "impl":
                        item["body"] = ""  # the impl's text holds it; no need to store it twice
                    record = {**item, "crate": name, "group": group, "path": rel, "sha256": _sha(item["text"])}
                    fn_f.write(json.dumps(record, ensure_ascii=False) + "\n")
            if progress is not None and (number % 50 == 0 or number == len(sources)):
                progress(f"  {number}/{len(sources)} crates, {stats['files_kept']} files, "
                         f"{sum(kinds.values())} items")
    os.replace(files_tmp, out / FILES_NAME)
    os.replace(functions_tmp, out / FUNCTIONS_NAME)
    result = {
        "crates": str(Path(opts.crates).resolve()) if opts.crates else None,
        "include_std": opts.include_std,
        # The standard library's own licence (rust-lang/rust COPYRIGHT): permissive like the kept crates.
        "std_license": "MIT OR Apache-2.0" if opts.include_std else None,
        "all_versions": opts.all_versions,
        "exclude_crates": opts.exclude_crates,
        "filters": opts.corpus.describe(),
        "counts": {**dict(sorted(stats.items())), "files_dropped": dict(sorted((k, v) for k, v in file_drops.items()
                                                                               if v)),
                   "items": dict(sorted(kinds.items()))},
    }
    _atomic.write_json(out / STATS_NAME, result, sort_keys=True, ensure_ascii=True)
    return result


def iter_jsonl(path: str | os.PathLike[str], counts: Counter | None = None) -> Iterator[dict]:
    """Records of a .jsonl file; a line that is not a JSON object is counted as `bad_line` and skipped."""
    with open(path, "rb") as f:
        for raw in f:
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except ValueError:
                record = None
            if not isinstance(record, dict):
                if counts is not None:
                    counts["bad_line"] += 1
                continue
            yield record


def _name_comment(name: str) -> str:
    words = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", name.lstrip("_")).replace("_", " ").strip().lower()
    return f"// {words or name}"


def standalone_source(record: dict) -> str:
    """What a standalone function compiles as, alone: its module's needed `use std::...` lines
    (`std_uses`, may be empty), a blank line, then the function."""
    uses = record.get("std_uses") or ""
    return f"{uses}\n\n{record['text']}" if uses else record["text"]


def render_completion_shape(record: dict) -> str:
    """A function in the shape of a completion prompt plus its completion: `///` doc lines (or a
    `//` comment made from the name), the signature, then the body. Attributes are left out."""
    doc = record.get("doc") or ""
    if doc.strip():
        comment = "\n".join(f"/// {line}".rstrip() for line in doc.split("\n"))
    else:
        comment = _name_comment(str(record.get("name", "")))
    body = record.get("body") or ""
    return f"{comment}\n{record['signature']} {{{body}}}\n"


def summary(result: dict) -> str:
    c = result["counts"]
    items = c.get("items", {})
    return (f"crates read {c.get('crates_read', 0)} (excluded by name {c.get('crates_excluded_by_name', 0)}, "
            f"older versions skipped {c.get('crates_older_versions_skipped', 0)}); files seen {c.get('files_seen', 0)}, "
            f"kept {c.get('files_kept', 0)} ({c.get('bytes_kept', 0) / 1e6:.1f} MB), dropped {c['files_dropped']}, "
            f"unparseable {c.get('files_parse_error', 0)}; items {items}; standalone functions "
            f"{c.get('standalone_functions', 0)} (nontrivial {c.get('standalone_nontrivial', 0)})")
