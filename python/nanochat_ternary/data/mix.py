"""Data mixes: whole files, the function view and compiler-verified functions in one data directory.

    python -m nanochat_ternary.data build --mix mix.json --out /work/data/rust-mix --vocab-size 8192

A mix config is a JSON object (`mix_rust.json` next to this file is the default recipe):

    {
      "format": "nanochat-ternary-mix/1",
      "corpus": "/work/data/rust-fn",        # what the `functions` step wrote (relative: to the config
                                             # file); `--corpus` on the command line overrides it
      "verify_results": "verify.jsonl",      # the `verify` step's results (relative: to the corpus)
      "views": {
        "files":     {"weight": 1.0},
        "functions": {"weight": 1.0, "kinds": ["function", "impl"], "prompt_fraction": 0.25},
        "verified":  {"weight": 2.0}
      },
      "max_documents": null,                 # optional cap per view (a seeded choice), for small builds
      "dedup": {"threshold": 0.8, "shingle": 5, "num_perm": 64, "bands": 16},
      "decontaminate": {"window": 13, "min_words": 2}
    }

Views: `files` holds every kept .rs file whole; `functions` the function-level documents
(free functions and impl blocks by default; `"method"` may be added), of which the seeded
`prompt_fraction` of free functions is rendered in completion-prompt shape (`functions.py`);
`verified` the standalone functions that rustc accepted alone (as compiled: with the
`use std::...` lines they need). A view left out of "views" is
not used. Each view's documents are decontaminated against HumanEval-Rust (`decontam.py`:
13-token windows of its prompts and tests, benchmark-looking paths), then exact and
near-duplicates are removed within the view (`dedup.py`), every drop counted per view.
Documents carry their crate as group (`crate:<name>`), so `build` holds out whole crates: a
held-out crate's files, functions and verified functions are all in validation.
`weight` scales a view in the train split only: the integer part repeats every document,
the fraction adds a seeded share once more (0.5: half the documents once; 2: all twice).
Validation holds each document once. Tokens per view and split go into meta.json.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import Counter
from pathlib import Path

from .corpus import DataError, Document
from .decontam import DEFAULT_MIN_WORDS, DEFAULT_WINDOW, Decontaminator
from .dedup import DedupOptions, Deduplicator
from .functions import FILES_NAME, FUNCTIONS_NAME, iter_jsonl, render_completion_shape, standalone_source
from .verify import RESULTS_NAME, is_candidate, passed_hashes, source_sha256

FORMAT = "nanochat-ternary-mix/1"
VIEWS = ("files", "functions", "verified")
FUNCTION_KINDS = ("function", "impl", "method")
DEFAULT_MIX = Path(__file__).with_name("mix_rust.json")


def _fraction_score(seed: int, key: str, salt: str) -> float:
    digest = hashlib.sha256(f"{seed}\0{salt}\0{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def load_config(path: str | os.PathLike[str], corpus: str | None = None) -> dict:
    """The validated config with `corpus` and `verify_results` resolved to absolute paths."""
    path = Path(path)
    try:
        config = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        raise DataError(f"mix config {path}: not found") from None
    except (OSError, ValueError) as e:
        raise DataError(f"mix config {path}: unreadable ({e})") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise DataError(f"mix config {path}: expected a JSON object with \"format\": \"{FORMAT}\"")
    unknown = set(config) - {"format", "corpus", "verify_results", "views", "max_documents", "dedup",
                             "decontaminate", "comment"}
    if unknown:
        raise DataError(f"mix config {path}: unknown keys {sorted(unknown)}")
    views = config.get("views")
    if not isinstance(views, dict) or not views:
        raise DataError(f"mix config {path}: \"views\" must name at least one of {VIEWS}")
    for name, spec in views.items():
        if name not in VIEWS:
            raise DataError(f"mix config {path}: unknown view {name!r} (known: {VIEWS})")
        if not isinstance(spec, dict):
            raise DataError(f"mix config {path}: view {name!r} must be an object")
        weight = spec.get("weight", 1.0)
        if not isinstance(weight, (int, float)) or isinstance(weight, bool) or not weight > 0:
            raise DataError(f"mix config {path}: view {name!r} weight must be a positive number")
        kinds = spec.get("kinds", ["function", "impl"])
        if name == "functions" and (not isinstance(kinds, list) or not kinds
                                    or any(k not in FUNCTION_KINDS for k in kinds)):
            raise DataError(f"mix config {path}: functions.kinds must be a list drawn from {FUNCTION_KINDS}")
        fraction = spec.get("prompt_fraction", 0.0)
        if not isinstance(fraction, (int, float)) or not 0.0 <= fraction <= 1.0:
            raise DataError(f"mix config {path}: prompt_fraction must be in [0, 1]")
    cap = config.get("max_documents")
    if cap is not None and (not isinstance(cap, int) or cap < 1):
        raise DataError(f"mix config {path}: max_documents must be a positive integer or null")
    corpus = corpus or config.get("corpus")
    if not corpus:
        raise DataError(f"mix config {path} names no corpus: add \"corpus\" or pass --corpus")
    corpus_dir = (path.parent / corpus).resolve()
    if not (corpus_dir / FUNCTIONS_NAME).is_file() or not (corpus_dir / FILES_NAME).is_file():
        raise DataError(f"corpus {corpus_dir}: no {FILES_NAME} / {FUNCTIONS_NAME} (run the functions step)")
    results = (corpus_dir / config.get("verify_results", RESULTS_NAME)).resolve()
    if "verified" in views and not results.is_file():
        raise DataError(f"the verified view needs {results} (run the verify step)")
    try:
        dedup = DedupOptions(**config.get("dedup", {}))
        dedup.validate()
    except (TypeError, ValueError) as e:
        raise DataError(f"mix config {path}: dedup: {e}") from None
    decontam = config.get("decontaminate", {})
    if not isinstance(decontam, dict) or set(decontam) - {"window", "min_words", "path_pattern"}:
        raise DataError(f"mix config {path}: decontaminate takes window, min_words and path_pattern")
    return {**config, "corpus": str(corpus_dir), "verify_results": str(results), "_dedup": dedup,
            "_config_sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "_path": str(path.resolve())}


def _view_records(config: dict, view: str, counts: Counter, seed: int):
    """(text, source, group, path, completion-shaped?) of one view's documents, before
    decontamination and dedup."""
    corpus = Path(config["corpus"])
    spec = config["views"][view]
    if view == "files":
        for r in iter_jsonl(corpus / FILES_NAME, counts):
            if isinstance(r.get("text"), str):
                yield r["text"], f"{r.get('crate')}/{r.get('path')}", r.get("group", ""), str(r.get("path", "")), \
                    False
        return
    if view == "functions":
        kinds = set(spec.get("kinds", ["function", "impl"]))
        fraction = float(spec.get("prompt_fraction", 0.0))
        for r in iter_jsonl(corpus / FUNCTIONS_NAME, counts):
            if r.get("kind") not in kinds or not isinstance(r.get("text"), str):
                continue
            text = r["text"]
            shaped = r["kind"] == "function" and fraction > 0 and \
                _fraction_score(seed, r.get("sha256", text), "prompt") < fraction
            if shaped:
                text = render_completion_shape(r)
            source = f"{r.get('crate')}/{r.get('path')}:{r.get('start_line')}"
            yield text, source, r.get("group", ""), str(r.get("path", "")), shaped
        return
    passed = passed_hashes(config["verify_results"])
    seen: set[str] = set()
    for r in iter_jsonl(corpus / FUNCTIONS_NAME, counts):
        if not is_candidate(r):
            continue
        source = standalone_source(r)
        sha = source_sha256(source)
        if sha in passed and sha not in seen:
            seen.add(sha)
            yield source, f"{r.get('crate')}/{r.get('path')}:{r.get('start_line')}", r.get("group", ""), \
                str(r.get("path", "")), False


def mix_documents(config: dict, seed: int, progress=print) -> tuple[list[Document], dict]:
    """Every view's documents after decontamination and dedup, and the report for meta.json."""
    decontam_opts = config.get("decontaminate", {})
    try:
        decontaminator = Decontaminator(window=decontam_opts.get("window", DEFAULT_WINDOW),
                                        min_words=decontam_opts.get("min_words", DEFAULT_MIN_WORDS),
                                        **({"path_pattern": decontam_opts["path_pattern"]}
                                           if "path_pattern" in decontam_opts else {}))
    except (ValueError, TypeError, re.error) as e:
        raise DataError(f"mix config: decontaminate: {e}") from None
    cap = config.get("max_documents")
    docs: list[Document] = []
    report_views: dict[str, dict] = {}
    for view in VIEWS:
        if view not in config["views"]:
            continue
        counts: Counter = Counter({"decontaminated_path": 0, "decontaminated_ngram": 0, "exact_duplicate": 0,
                                   "near_duplicate": 0})
        if view == "functions":
            counts["prompt_shaped"] = 0  # among the kept documents
        dedup = Deduplicator(config["_dedup"])
        records = list(_view_records(config, view, counts, seed))
        counts["loaded"] = len(records)
        if cap is not None and len(records) > cap:
            records.sort(key=lambda r: _fraction_score(seed, r[1], view))
            records = records[:cap]
            records.sort(key=lambda r: (r[2], r[1]))
            counts["capped_out"] = counts["loaded"] - cap
        kept: list[Document] = []
        for text, source, group, path, shaped in records:
            reason = decontaminator.reason(text, path)
            if reason is not None:
                counts[f"decontaminated_{reason}"] += 1
                continue
            verdict = dedup.add(text)
            if verdict != "kept":
                counts[f"{verdict}_duplicate"] += 1
                continue
            digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
            counts["prompt_shaped"] += shaped
            kept.append(Document(text=text, source=source, group=group or source, sha256=digest, view=view))
        counts["kept"] = len(kept)
        if view != "functions":
            counts.pop("prompt_shaped", None)
        counts["bytes_kept"] = sum(d.n_bytes for d in kept)
        report_views[view] = {"weight": config["views"][view].get("weight", 1.0), **dict(sorted(counts.items()))}
        if progress is not None:
            progress(f"view {view}: {dict(sorted(counts.items()))}")
        docs.extend(kept)
    report = {
        "config": config["_path"],
        "config_sha256": config["_config_sha256"],
        "corpus": config["corpus"],
        "verify_results": config["verify_results"] if "verified" in config["views"] else None,
        "views": report_views,
        "dedup": config["_dedup"].describe(),
        "decontamination": {**decontaminator.describe(), "dropped": dict(decontaminator.counts)},
        "max_documents": cap,
    }
    return docs, report


def apply_weights(train: list[Document], weights: dict[str, float], seed: int) -> list[Document]:
    """Repeats or subsamples each view's train documents by its weight (see the module docs)."""
    out: list[Document] = []
    for doc in train:
        weight = weights.get(doc.view, 1.0)
        whole = int(weight)
        extra = 1 if _fraction_score(seed, doc.sha256 + doc.source, "weight") < weight - whole else 0
        out.extend([doc] * (whole + extra))
    return out
