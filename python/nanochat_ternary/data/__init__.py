"""Training data.

* `shards`: the token-shard format (`TokenShards` reader, `ShardWriter`, `read_meta`).
* `corpus`: finding documents (text files, .jsonl, directory trees) and dropping noise
  (`Corpus`, `CorpusOptions`, `DataError`).
* `build`: tokenizing a corpus into a data directory (`build`, `BuildOptions`,
  `split_documents`: train/val by whole document or whole group, e.g. crate).
* `rust_corpus`: the recipe of the shipped Rust model (cargo registry + std sources).
* The function-level Rust corpus: `fetch` (crates.io crates from the committed `crates.txt`,
  vendored by cargo, licence per crate), `functions` (whole-file and function views via syn),
  `verify` (rustc type-checks of standalone functions, resumable), `dedup` (exact + MinHash),
  `decontam` (HumanEval-Rust 13-token windows, benchmark paths) and `mix` (the data-mix config
  that `build --mix` turns into shards, tokens per view in meta.json).

Command line (`python -m nanochat_ternary.data --help`):

    python -m nanochat_ternary.data train-tokenizer --input DIR --ext .rs --vocab-size 4096 --out tokenizer.json
    python -m nanochat_ternary.data build --input DIR --ext .rs --vocab-size 4096 --out data/ --holdout-by group
    python -m nanochat_ternary.data rust-corpus --out /work/data/rust-corpus
    python -m nanochat_ternary.data fetch-crates --out /work/data/crates
    python -m nanochat_ternary.data functions --crates /work/data/crates --out /work/data/rust-fn
    python -m nanochat_ternary.data verify --functions /work/data/rust-fn --workers 1
    python -m nanochat_ternary.data build --mix MIX.json --corpus /work/data/rust-fn --out /work/data/rust-mix
"""

from .build import BuildOptions, build, split_documents
from .corpus import Corpus, CorpusOptions, DataError, Document
from .shards import ShardWriter, TokenShards, read_meta

__all__ = [
    "BuildOptions",
    "Corpus",
    "CorpusOptions",
    "DataError",
    "Document",
    "ShardWriter",
    "TokenShards",
    "build",
    "read_meta",
    "split_documents",
]
