"""Vocabulary size by measurement: BPE tokenizers of several sizes trained on the same sample of the
mix's training text, scored on its validation text (bytes per token), and the training compute
one byte of text costs a model of the chosen shape at each size (6 x (block parameters +
vocab x dim) FLOPs per token / bytes per token; the tied embedding/head grows with the vocabulary).

    python examples/rust_coder/vocab_sweep.py --data data/rust-mix-full --config examples/rust_coder/config.json \
        --sizes 4096 8192 16384 --train-mb 40 --out runs/rust-coder/eval/vocab.json

The text is the mix's own documents, decoded from its shards (the validation split is whole held-out crates).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def documents(data: Path, split: str, max_bytes: int) -> list[str]:
    """The split's documents (decoded with the mix's tokenizer), up to about max_bytes of UTF-8."""
    from nanochat_ternary.data.shards import TokenShards
    from nanochat_ternary.tokenizer import Tokenizer

    tok = Tokenizer.from_file(data / "tokenizer.json")
    shards = TokenShards(data, split)
    bos = int(shards.meta["bos_id"])
    out, size, start, chunk = [], 0, 0, 1 << 20
    carry = np.zeros(0, dtype=np.int64)
    while start < shards.tokens and size < max_bytes:
        ids = np.concatenate([carry, shards.read(start, min(chunk, shards.tokens - start)).astype(np.int64)])
        start += chunk
        cuts = np.flatnonzero(ids == bos)
        for a, b in zip(cuts, cuts[1:]):
            text = tok.decode(ids[a + 1 : b].tolist())
            out.append(text)
            size += len(text.encode())
            if size >= max_bytes:
                return out
        carry = ids[cuts[-1]:] if len(cuts) else ids
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--config", type=Path, required=True, help="model config whose compute per byte is reported")
    p.add_argument("--sizes", type=int, nargs="+", default=[4096, 8192, 16384])
    p.add_argument("--train-mb", type=float, default=40.0)
    p.add_argument("--val-mb", type=float, default=4.0)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()

    from nanochat_ternary.model_config import ModelConfig
    from nanochat_ternary.tokenizer import Tokenizer

    config = ModelConfig.from_json(args.config.read_text())
    block_params = config.param_count - config.vocab_size * config.dim  # tied embedding/head excluded
    train = documents(args.data, "train", int(args.train_mb * 1e6))
    val = documents(args.data, "val", int(args.val_mb * 1e6))
    val_bytes = sum(len(t.encode()) for t in val)
    rows = []
    for size in args.sizes:
        start = time.perf_counter()
        tok = Tokenizer.train(train, vocab_size=size)
        seconds = time.perf_counter() - start
        tokens = sum(len(ids) for ids in tok.encode_batch(val))
        bpt = val_bytes / tokens
        flops_per_byte = 6 * (block_params + size * config.dim) / bpt
        rows.append({"vocab_size": size, "val_bytes_per_token": bpt, "train_seconds": seconds,
                     "embedding_params": size * config.dim, "train_flops_per_byte": flops_per_byte})
        print(f"vocab {size:6d}: {bpt:.3f} bytes/token on {val_bytes:,} val bytes, "
              f"{flops_per_byte / 1e6:.2f} MFLOP per byte for {config.name or 'the config'}", flush=True)
    best = min(rows, key=lambda r: r["train_flops_per_byte"])
    report = {"train_bytes": sum(len(t.encode()) for t in train), "val_bytes": val_bytes,
              "config": config.name, "rows": rows, "cheapest_per_byte": best["vocab_size"]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"cheapest training compute per byte: vocab {best['vocab_size']}")


if __name__ == "__main__":
    main()
