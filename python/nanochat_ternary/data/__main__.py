"""Command line for training data.

    python -m nanochat_ternary.data train-tokenizer --input corpus/ --ext .rs --vocab-size 4096 --out tokenizer.json
    python -m nanochat_ternary.data build --input corpus/ --ext .rs --vocab-size 4096 --out data/
    python -m nanochat_ternary.data build --input a.jsonl b.txt --tokenizer tokenizer.json --out data/
    python -m nanochat_ternary.data rust-corpus --out /work/data/rust-corpus
    python -m nanochat_ternary.data fetch-crates --out /work/data/crates
    python -m nanochat_ternary.data functions --crates /work/data/crates --out /work/data/rust-fn
    python -m nanochat_ternary.data verify --functions /work/data/rust-fn --workers 1
    python -m nanochat_ternary.data build --mix data/mix_rust.json --corpus /work/data/rust-fn --out data/

`rust-corpus` is the recipe of the shipped Rust model (see `rust_corpus.py`).
Errors in the inputs or options print one line and exit with status 1
(argparse usage errors: 2).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from ..tokenizer import DEFAULT_VOCAB_SIZE
from .corpus import DEFAULT_EXCLUDED_DIRS, CorpusOptions, DataError


def _add_corpus_args(p: argparse.ArgumentParser, inputs: bool = True) -> None:
    if inputs:
        p.add_argument("--input", nargs="+", required=True, metavar="PATH",
                       help="text files (one document each), .jsonl files, directory trees")
    p.add_argument("--ext", nargs="+", default=[], metavar="EXT",
                   help="extensions kept when walking directories, e.g. .rs (default: all files)")
    p.add_argument("--jsonl-field", default="text", help="field of a .jsonl record holding the text")
    p.add_argument("--max-file-bytes", type=int, default=200_000, help="drop larger documents")
    p.add_argument("--max-line-chars", type=int, default=1000, help="drop documents with a longer line")
    p.add_argument("--group-depth", type=int, default=1,
                   help="a group is the path this many components below a directory input")
    p.add_argument("--group-strip-version", action="store_true",
                   help="cut a -X.Y.Z version from group names, so every version of a crate is one group")
    p.add_argument("--exclude-dir", nargs="+", default=list(DEFAULT_EXCLUDED_DIRS), metavar="NAME",
                   help="directory names never walked")


def _add_build_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="data directory to create")
    p.add_argument("--tokenizer", help="tokenizer.json to use (default: train one on the train split)")
    p.add_argument("--vocab-size", type=int, default=DEFAULT_VOCAB_SIZE, help="size of a trained tokenizer")
    p.add_argument("--min-frequency", type=int, default=2, help="rarest pair a trained tokenizer merges")
    p.add_argument("--val-fraction", type=float, default=0.01, help="share held out for validation: of the documents, or of the bytes with --holdout-by group")
    p.add_argument("--holdout-by", choices=["document", "group"],
                   help="hold out whole documents or whole groups (default: document; group with --mix)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shard-tokens", type=int, default=1 << 26, help="tokens per shard file")
    p.add_argument("--workers", type=int, help="encoding threads (default: all cores)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing data directory")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _corpus_options(args: argparse.Namespace) -> CorpusOptions:
    return CorpusOptions(extensions=tuple(args.ext),
                         max_file_bytes=args.max_file_bytes, max_line_chars=args.max_line_chars,
                         jsonl_field=args.jsonl_field, group_depth=args.group_depth,
                         strip_versions=args.group_strip_version,
                         excluded_dirs=tuple(args.exclude_dir))


def _set_workers(workers: int | None) -> None:
    # The Rust side encodes on rayon's global pool, which reads this once when first used.
    if workers is not None:
        if workers < 1:
            raise DataError(f"--workers must be at least 1, got {workers}")
        os.environ["RAYON_NUM_THREADS"] = str(workers)


def _cmd_train_tokenizer(args: argparse.Namespace) -> None:
    from ..tokenizer import Tokenizer
    from .corpus import Corpus

    corpus = Corpus(args.input, _corpus_options(args))
    if not corpus.documents:
        raise DataError("no documents left after filtering; check --input and --ext")
    tok = Tokenizer.train((d.text for d in corpus.documents), vocab_size=args.vocab_size,
                          min_frequency=args.min_frequency)
    tok.save(args.out)
    print(f"trained a {tok.vocab_size}-token tokenizer on {len(corpus.documents)} documents "
          f"({corpus.stats.bytes_kept / 1e6:.1f} MB) -> {args.out}")


def _build_options(args: argparse.Namespace, inputs: list[str], corpus: CorpusOptions, holdout_by: str):
    """BuildOptions from the parsed flags (rust-corpus supplies its own inputs)."""
    from .build import BuildOptions

    mix = getattr(args, "mix", None)
    if holdout_by is None:
        holdout_by = "group" if mix else "document"
    return BuildOptions(inputs=inputs, out=args.out, tokenizer=args.tokenizer, vocab_size=args.vocab_size,
                        min_frequency=args.min_frequency, val_fraction=args.val_fraction, holdout_by=holdout_by,
                        seed=args.seed, shard_tokens=args.shard_tokens, overwrite=args.overwrite,
                        progress=not args.quiet, corpus=corpus, mix=mix, mix_corpus=getattr(args, "corpus", None))


def _run_build(options) -> None:
    from .build import build, summary

    start = time.perf_counter()
    meta = build(options)
    print(summary(meta))
    print(f"wrote {options.out} in {time.perf_counter() - start:.1f} s")


def _cmd_build(args: argparse.Namespace) -> None:
    if args.corpus and not args.mix:
        raise DataError("--corpus goes with --mix")
    _set_workers(args.workers)
    _run_build(_build_options(args, args.input or [], _corpus_options(args), args.holdout_by))


def _cmd_rust_corpus(args: argparse.Namespace) -> None:
    from .rust_corpus import rust_corpus_inputs

    _set_workers(args.workers)
    inputs, notes = rust_corpus_inputs(include_std=not args.no_std)
    for note in notes:
        print(note)
    print("inputs:\n  " + "\n  ".join(inputs))
    _run_build(_build_options(args, inputs, _corpus_options(args), args.holdout_by))


def _cmd_fetch_crates(args: argparse.Namespace) -> None:
    from .fetch import DEFAULT_LIST, fetch_crates, summary

    manifest = fetch_crates(args.out, args.list or DEFAULT_LIST, limit=args.limit, batch_size=args.batch_size,
                            timeout=args.timeout)
    print(summary(manifest))
    print(f"manifest: {os.path.join(args.out, 'crates.json')}")


def _cmd_functions(args: argparse.Namespace) -> None:
    from .functions import DEFAULT_EXCLUDE_CRATES, FunctionsOptions, build_functions, summary

    opts = FunctionsOptions(crates=args.crates, out=args.out, include_std=not args.no_std,
                            all_versions=args.all_versions,
                            exclude_crates=args.exclude_crates or DEFAULT_EXCLUDE_CRATES, workers=args.workers,
                            corpus=CorpusOptions(extensions=(".rs",), max_file_bytes=args.max_file_bytes,
                                                 max_line_chars=args.max_line_chars))
    start = time.perf_counter()
    result = build_functions(opts, progress=None if args.quiet else print)
    print(summary(result))
    print(f"wrote {args.out} in {time.perf_counter() - start:.1f} s")


def _cmd_verify(args: argparse.Namespace) -> None:
    from .verify import summary, verify

    report = verify(args.functions, results_path=args.results, workers=args.workers, limit=args.limit,
                    progress=None if args.quiet else print)
    print(summary(report))


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m nanochat_ternary.data", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train-tokenizer", help="train a byte-level BPE tokenizer")
    _add_corpus_args(p)
    p.add_argument("--vocab-size", type=int, default=DEFAULT_VOCAB_SIZE)
    p.add_argument("--min-frequency", type=int, default=2)
    p.add_argument("--out", required=True, help="tokenizer.json to write")
    p.set_defaults(run=_cmd_train_tokenizer)

    p = sub.add_parser("build", help="tokenize a corpus (or a data mix) into train/val token shards")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", nargs="+", metavar="PATH",
                        help="text files (one document each), .jsonl files, directory trees")
    source.add_argument("--mix", help="data-mix config (JSON, see data/mix.py): whole files, function view and "
                                      "verified functions; holds out whole crates")
    _add_corpus_args(p, inputs=False)
    _add_build_args(p)
    p.add_argument("--corpus", help="with --mix: the functions step's output directory (overrides the config)")
    p.set_defaults(run=_cmd_build)

    p = sub.add_parser("rust-corpus", help="build the Rust-code corpus: every .rs under the cargo registry "
                                           "(+ the standard library sources), whole crates held out")
    _add_corpus_args(p, inputs=False)
    _add_build_args(p)
    p.add_argument("--no-std", action="store_true", help="leave out the Rust standard library sources")
    # 2 % rather than 1 %: a handful more held-out crates makes the val loss less about one crate's style.
    p.set_defaults(run=_cmd_rust_corpus, ext=[".rs"], group_strip_version=True, val_fraction=0.02,
                   holdout_by="group")

    p = sub.add_parser("fetch-crates", help="vendor the listed crates.io crates with cargo and keep the "
                                            "permissively licensed ones (licence per crate in crates.json)")
    p.add_argument("--out", required=True, help="directory to vendor into (outside the repository)")
    p.add_argument("--list", help="crate list, one name per line (default: the package's crates.txt)")
    p.add_argument("--limit", type=int, help="only the first N crates of the list")
    p.add_argument("--batch-size", type=int, default=40, help="crates per generated manifest")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds allowed per cargo vendor call")
    p.set_defaults(run=_cmd_fetch_crates)

    p = sub.add_parser("functions", help="whole-file and function-level views (syn) of fetched crates "
                                         "and the std sources: files.jsonl, functions.jsonl, stats.json")
    p.add_argument("--crates", help="a fetch-crates directory (only its permissively licensed crates are read)")
    p.add_argument("--out", required=True, help="directory for files.jsonl, functions.jsonl, stats.json")
    p.add_argument("--no-std", action="store_true", help="leave out the Rust standard library sources")
    p.add_argument("--all-versions", action="store_true", help="read every vendored version of a crate, "
                                                               "not only the newest")
    p.add_argument("--exclude-crates", help="regex of crate names to skip (default: generated FFI bindings)")
    p.add_argument("--max-file-bytes", type=int, default=200_000, help="drop larger files")
    p.add_argument("--max-line-chars", type=int, default=1000, help="drop files with a longer line")
    p.add_argument("--workers", type=int, default=1, help="parser threads")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(run=_cmd_functions)

    p = sub.add_parser("verify", help="type-check standalone candidate functions alone with rustc "
                                      "(--emit=metadata, edition 2021) in the sandbox; resumable")
    p.add_argument("--functions", required=True, help="the directory the functions step wrote")
    p.add_argument("--results", help="results file (default: FUNCTIONS/verify.jsonl)")
    p.add_argument("--workers", type=int, default=1, help="rustc processes at a time")
    p.add_argument("--limit", type=int, help="check at most this many new candidates")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(run=_cmd_verify)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    try:
        args.run(args)
    except (DataError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
