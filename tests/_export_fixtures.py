"""Shared fixtures for the export / model-API / parity tests: a small byte-level
BPE tokenizer.json built by hand (no tokenizer library needed) and small model
configs whose projection widths are multiples of 256 (TQ2_0 blocks)."""

from __future__ import annotations

import json
import re
from collections import Counter

from nanochat_ternary import ModelConfig, QatModel

EOS = "<|endoftext|>"
SPECIALS = [EOS, "<|pad|>"]

SAMPLE_TEXT = """fn main() {
    let mut total = 0;
    for i in 0..10 {
        total += i;
    }
    println!("total = {}", total);
}
The quick brown fox jumps over the lazy dog. Ünïcödé ✓ 日本語 text too.
pub fn add(a: i32, b: i32) -> i32 { a + b }
"""

_SPLIT = re.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?[^\W\d_]+| ?\d+| ?[^\s\w]+|\s+(?!\S)|\s+""")


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table (the ByteLevel alphabet)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = keep[:]
    n = 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + n)
            n += 1
    return dict(zip(keep, map(chr, chars)))


def tokenizer_json(n_merges: int = 48, text: str = SAMPLE_TEXT) -> str:
    """A GPT-2-style tokenizer.json: specials first (``<|endoftext|>`` = 0), the 256
    byte symbols, then ``n_merges`` merges learned greedily on ``text``."""
    table = bytes_to_unicode()
    vocab: dict[str, int] = {s: i for i, s in enumerate(SPECIALS)}
    for b in range(256):
        vocab[table[b]] = len(vocab)
    words = Counter("".join(table[b] for b in piece.encode("utf-8")) for piece in _SPLIT.findall(text))
    seqs = {w: list(w) for w in words}
    merges: list[str] = []
    while len(merges) < n_merges:
        pairs: Counter[tuple[str, str]] = Counter()
        for w, count in words.items():
            s = seqs[w]
            for a, b in zip(s, s[1:]):
                pairs[(a, b)] += count
        if not pairs:
            break
        (a, b), _ = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))
        merges.append(f"{a} {b}")
        vocab.setdefault(a + b, len(vocab))
        for w in seqs:
            s, out, i = seqs[w], [], 0
            while i < len(s):
                if i + 1 < len(s) and s[i] == a and s[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            seqs[w] = out
    added = [
        {"id": vocab[s], "content": s, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False, "special": True}
        for s in SPECIALS
    ]
    spec = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": vocab,
            "merges": merges,
        },
    }
    return json.dumps(spec, ensure_ascii=False)


def small_config(mhc_streams: int = 1, ffn_activation: str = "swiglu", tie_embeddings: bool = True, vocab_size: int = 320, **over) -> ModelConfig:
    values = dict(
        name="test-small",
        vocab_size=vocab_size,
        dim=256,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        ffn_hidden=512,
        max_seq_len=128,
        mhc_streams=mhc_streams,
        ffn_activation=ffn_activation,
        tie_embeddings=tie_embeddings,
    )
    values.update(over)
    return ModelConfig.from_dict(values)


def small_model(seed: int = 0, **kw) -> QatModel:
    return QatModel(small_config(**kw), seed=seed)


def train_small(config: ModelConfig, out_dir, steps: int = 30, seed: int = 0):
    """Overfits ``config`` on SAMPLE_TEXT for ``steps`` optimizer steps (a few seconds) so its
    greedy predictions are decisive, saves a trainer checkpoint in ``out_dir`` and returns its path."""
    import numpy as np
    import torch

    from nanochat_ternary.tokenizer import Tokenizer
    from nanochat_ternary.train import Trainer

    tok = Tokenizer.from_json(tokenizer_json())
    ids = np.array(tok.encode(SAMPLE_TEXT * 8), dtype=np.int64)
    trainer = Trainer(
        config, None, out_dir, steps=steps, progress=False, batch_size=4, seq_len=64,
        lr_lion=0.005, lr_muon=0.04, warmup=2, seed=seed,
    )
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        starts = rng.integers(0, len(ids) - 65, 4)
        x = torch.tensor(np.stack([ids[a : a + 64] for a in starts]))
        y = torch.tensor(np.stack([ids[a + 1 : a + 65] for a in starts]))
        trainer.step(x, y)
    return trainer.save()


_TRAINED: dict[str, object] = {}


def trained_checkpoint(name: str, **config_overrides):
    """``train_small`` once per process and config (shared by the test files that need a
    trained model); returns the checkpoint path. Removed at interpreter exit."""
    if name not in _TRAINED:
        import atexit
        import shutil
        import tempfile
        from pathlib import Path

        root = Path(tempfile.mkdtemp(prefix=f"nct-trained-{name}-"))
        atexit.register(shutil.rmtree, root, True)
        _TRAINED[name] = train_small(small_config(**config_overrides), root / "run", seed=3)
    return _TRAINED[name]
