"""Tokenizing a corpus into a token-shard data directory (format: `shards.py`).

    python -m nanochat_ternary.data build --input DIR --ext .rs --vocab-size 4096 --out data/
    (or from Python: build(BuildOptions(inputs=[...], out=..., vocab_size=4096)))

Steps: collect and filter documents (`corpus.py`); split train/val by whole
documents or whole groups (a seeded hash orders them, so the split does not
depend on input order); train a tokenizer on the train split unless one is
given; shuffle the train documents with the seed (so sequential reading mixes
crates); encode in parallel chunks (Rust, GIL released); write shards; copy
tokenizer.json; write meta.json last with the full recipe. The same inputs
and seed give byte-identical output.
"""

from __future__ import annotations

import hashlib
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from .. import _atomic
from ..tokenizer import DEFAULT_VOCAB_SIZE, Tokenizer
from .corpus import Corpus, CorpusOptions, DataError, Document
from .shards import FORMAT, ShardWriter, dtype_for_vocab, sha256_file, write_json_atomic

HOLDOUT_MODES = ("document", "group")
CHUNK_BYTES = 8 << 20  # text handed to one encode_batch call: big enough to keep every core busy


@dataclass
class BuildOptions:
    inputs: list[str]
    out: str
    tokenizer: str | None = None  # tokenizer.json to use; None: train one on the train split
    vocab_size: int = DEFAULT_VOCAB_SIZE
    min_frequency: int = 2
    val_fraction: float = 0.01
    holdout_by: str = "document"
    seed: int = 0
    shard_tokens: int = 1 << 26
    overwrite: bool = False
    progress: bool = True
    corpus: CorpusOptions = field(default_factory=CorpusOptions)
    mix: str | None = None  # a data-mix config (mix.py) instead of `inputs`
    mix_corpus: str | None = None  # overrides the mix config's "corpus"

    def validate(self) -> None:
        if self.mix is not None:
            if self.inputs:
                raise DataError("give either --input or --mix, not both")
            if self.holdout_by != "group":
                raise DataError("a data mix holds out whole crates: use --holdout-by group")
        if not 0.0 <= self.val_fraction < 1.0:
            raise DataError(f"--val-fraction must be in [0, 1), got {self.val_fraction}")
        if self.holdout_by not in HOLDOUT_MODES:
            raise DataError(f"--holdout-by must be one of {HOLDOUT_MODES}, got {self.holdout_by!r}")
        if self.shard_tokens <= 0:
            raise DataError(f"--shard-tokens must be positive, got {self.shard_tokens}")
        if self.tokenizer is not None and not Path(self.tokenizer).is_file():
            raise DataError(f"--tokenizer {self.tokenizer}: no such file")


def _score(seed: int, key: str) -> str:
    """A seeded, order-independent sort key."""
    return hashlib.sha256(f"{seed}\0{key}".encode()).hexdigest()


def split_documents(docs: list[Document], val_fraction: float, holdout_by: str, seed: int
                    ) -> tuple[list[Document], list[Document]]:
    """(train, val). By document: the `val_fraction` share of documents with the lowest seeded
    content hash. By group: whole groups in seeded-hash order until val holds `val_fraction` of
    the bytes. Either way at least one document/group goes to each side when val_fraction > 0."""
    if val_fraction == 0.0:
        return list(docs), []
    if holdout_by == "document":
        if len(docs) < 2:
            raise DataError(f"a train/val split needs at least 2 documents, the corpus has {len(docs)}")
        ranked = sorted(docs, key=lambda d: _score(seed, d.sha256))
        n_val = min(len(docs) - 1, max(1, round(val_fraction * len(docs))))
        val_ids = {id(d) for d in ranked[:n_val]}
    else:
        sizes: dict[str, int] = {}
        for d in docs:
            sizes[d.group] = sizes.get(d.group, 0) + d.n_bytes
        if len(sizes) < 2:
            raise DataError(f"--holdout-by group needs at least 2 groups, the corpus has {len(sizes)} "
                            "(lower --group-depth, or use --holdout-by document)")
        target = val_fraction * sum(sizes.values())
        val_groups, held = set(), 0
        for group in sorted(sizes, key=lambda g: _score(seed, g)):
            if held >= target or len(val_groups) == len(sizes) - 1:
                break
            val_groups.add(group)
            held += sizes[group]
        val_ids = {id(d) for d in docs if d.group in val_groups}
    train = [d for d in docs if id(d) not in val_ids]
    val = [d for d in docs if id(d) in val_ids]
    return train, val


def _prepare_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise DataError(f"--out {out} is not empty (pass --overwrite to replace a data directory)")
        # meta.json first: a directory without it reads as incomplete if we stop half-way.
        for name in ["meta.json", *sorted(os.listdir(out))]:
            path = out / name
            if path.is_file() and (name in ("meta.json", "tokenizer.json") or name.endswith((".bin", ".tmp"))):
                path.unlink()
    out.mkdir(parents=True, exist_ok=True)


def _write_split(docs: list[Document], tok: Tokenizer, out: Path, split: str, dtype: str,
                 opts: BuildOptions, per_view: dict | None = None) -> dict:
    """Tokenizes and writes one split; with `per_view`, also tallies documents, tokens (each
    document's tokens plus its separator) and bytes by the documents' view."""
    writer = ShardWriter(out, split, dtype, tok.bos_id, shard_tokens=opts.shard_tokens)
    total = sum(d.n_bytes for d in docs)
    with tqdm(total=total, unit="B", unit_scale=True, desc=f"tokenizing {split}", disable=not opts.progress) as bar:
        start = 0
        while start < len(docs):
            end, size = start, 0
            while end < len(docs) and (end == start or size < CHUNK_BYTES):
                size += docs[end].n_bytes
                end += 1
            chunk = docs[start:end]
            for doc, ids in zip(chunk, tok.encode_batch([d.text for d in chunk])):
                writer.add(ids, doc.n_bytes)
                if per_view is not None:
                    tally = per_view.setdefault(doc.view, {"documents": 0, "tokens": 0, "bytes": 0})
                    tally["documents"] += 1
                    tally["tokens"] += len(ids) + 1
                    tally["bytes"] += doc.n_bytes
            bar.update(size)
            start = end
    return writer.finish()


def build(opts: BuildOptions) -> dict:
    """Builds the data directory `opts.out`; returns its meta.json contents."""
    opts.validate()
    mix_report = None
    if opts.mix is not None:
        from .mix import apply_weights, load_config, mix_documents

        config = load_config(opts.mix, opts.mix_corpus)
        documents, mix_report = mix_documents(config, opts.seed, progress=print if opts.progress else None)
        if not documents:
            raise DataError("the data mix has no documents left after decontamination and dedup")
        counts = {"files_seen": 0, "candidates": sum(v["loaded"] for v in mix_report["views"].values()),
                  "kept": len(documents), "bytes_kept": sum(d.n_bytes for d in documents), "dropped": {}}
    else:
        corpus = Corpus(opts.inputs, opts.corpus)
        if not corpus.documents:
            raise DataError(f"no documents left after filtering ({_drops(corpus)}); check --input and --ext")
        documents, counts = corpus.documents, corpus.stats.describe()
    train, val = split_documents(documents, opts.val_fraction, opts.holdout_by, opts.seed)
    if mix_report is not None:
        weights = {name: float(v["weight"]) for name, v in mix_report["views"].items()}
        train = apply_weights(train, weights, opts.seed)
    random.Random(opts.seed).shuffle(train)

    out = Path(opts.out)
    _prepare_out(out, opts.overwrite)
    if opts.tokenizer is not None:
        tok = Tokenizer.from_file(opts.tokenizer)
        _atomic.copy_file(opts.tokenizer, out / "tokenizer.json")
        tokenizer_recipe: dict = {"from": str(Path(opts.tokenizer).resolve())}
    else:
        if opts.progress:
            print(f"training a {opts.vocab_size}-token BPE on {len(train)} train documents", flush=True)
        tok = Tokenizer.train((d.text for d in train), vocab_size=opts.vocab_size, min_frequency=opts.min_frequency)
        tok.save(out / "tokenizer.json")
        tokenizer_recipe = {"trained_on": "train split", "vocab_size": opts.vocab_size,
                            "min_frequency": opts.min_frequency}
    try:
        bos = tok.bos_id
    except ValueError as e:
        raise DataError(str(e)) from None
    dtype = dtype_for_vocab(tok.vocab_size)

    per_view: dict[str, dict] | None = {"train": {}, "val": {}} if mix_report is not None else None
    splits = {"train": _write_split(train, tok, out, "train", dtype, opts, per_view and per_view["train"]),
              "val": _write_split(val, tok, out, "val", dtype, opts, per_view and per_view["val"])}
    val_groups = sorted({d.group for d in val})
    meta = {
        "format": FORMAT,
        "dtype": dtype,
        "vocab_size": tok.vocab_size,
        "bos_id": bos,
        "tokenizer_sha256": sha256_file(out / "tokenizer.json"),
        "splits": splits,
        "source": {
            "recipe": "python -m nanochat_ternary.data build",
            "inputs": [str(Path(p).resolve()) for p in opts.inputs],
            "filters": opts.corpus.describe() if mix_report is None else {},
            "counts": counts,
            "holdout_by": opts.holdout_by,
            "val_fraction": opts.val_fraction,
            "seed": opts.seed,
            "groups": {"train": len({d.group for d in train}), "val": len(val_groups)},
            "val_groups": val_groups if opts.holdout_by == "group" else [],
            "tokenizer": tokenizer_recipe,
        },
    }
    if mix_report is not None:
        meta["source"]["recipe"] = "python -m nanochat_ternary.data build --mix"
        meta["source"]["mix"] = {**mix_report, "tokens_per_view": per_view}
    write_json_atomic(out / "meta.json", meta)
    return meta


def _drops(corpus: Corpus) -> str:
    dropped = {r: n for r, n in corpus.stats.dropped.items() if n}
    return f"{corpus.stats.files_seen} files seen, dropped {dropped or 'none'}"


def summary(meta: dict) -> str:
    """Human-readable lines about a built directory."""
    src = meta["source"]
    counts = src["counts"]
    lines = [f"files seen {counts['files_seen']}, documents kept {counts['kept']} "
             f"({counts['bytes_kept'] / 1e6:.1f} MB)"]
    dropped = {r: n for r, n in counts["dropped"].items() if n}
    lines.append(f"dropped: {', '.join(f'{r} {n}' for r, n in dropped.items()) or 'none'}")
    for name, info in meta["splits"].items():
        bpt = info["bytes"] / max(1, info["tokens"] - info["documents"])
        lines.append(f"{name}: {info['documents']} documents, {info['bytes'] / 1e6:.1f} MB, {info['tokens']} tokens "
                     f"({bpt:.2f} bytes/token), {len(info['shards'])} shard(s), groups {src['groups'][name]}")
    lines.append(f"vocab {meta['vocab_size']} ({meta['dtype']}), bos {meta['bos_id']}, seed {src['seed']}, "
                 f"holdout by {src['holdout_by']}")
    mix = src.get("mix")
    if mix:
        for view, info in mix["views"].items():
            drops = {k: v for k, v in info.items() if k.endswith("_duplicate") or k.startswith("decontaminated")}
            lines.append(f"view {view} (weight {info['weight']}): loaded {info['loaded']}, kept {info['kept']}, "
                         f"dropped {drops or 'none'}")
        for split, views in mix["tokens_per_view"].items():
            lines.append(f"{split} tokens per view: " + ", ".join(
                f"{v} {t['tokens']} ({t['documents']} docs)" for v, t in sorted(views.items())))
    return "\n".join(lines)

