"""Token shards: the on-disk format of tokenized training and validation data.

A data directory holds

    tokenizer.json           the tokenizer that produced the ids (HF tokenizers format)
    meta.json                {"format": "nanochat-ternary-tokens/1", "dtype": "uint16" | "uint32",
                              "vocab_size": V, "bos_id": id of <|endoftext|>,
                              "tokenizer_sha256": sha256 of tokenizer.json,
                              "splits": {"train": {"shards": [...], "tokens": N, "documents": D,
                                                   "bytes": B}, "val": {...}},
                              "source": {...how the data was made...}}
    train-00000.bin, ...     flat little-endian token ids, no header
    val-00000.bin, ...

Every document is stored as [bos_id] + its tokens, so documents are separated
by <|endoftext|> and a window that crosses a boundary sees one. `bytes` is the
UTF-8 length of the split's documents: loss x tokens / (bytes x ln 2) is bits
per byte. dtype is uint16 when the vocabulary fits, else uint32. Splits are by
whole documents. Shards are written under temporary names and renamed; meta.json
is written last (atomically), so a directory with a meta.json is complete.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from .. import _atomic

FORMAT = "nanochat-ternary-tokens/1"
DTYPES = {"uint16": np.uint16, "uint32": np.uint32}


def dtype_for_vocab(vocab_size: int) -> str:
    """uint16 when every id fits in 16 bits, else uint32."""
    return "uint16" if vocab_size <= 65536 else "uint32"


def sha256_file(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_json_atomic(path: str | os.PathLike[str], value: object) -> None:
    """meta.json style: sorted keys, ASCII-escaped (byte-identical rebuilds)."""
    _atomic.write_json(path, value, sort_keys=True, ensure_ascii=True)


def read_meta(directory: str | os.PathLike[str]) -> dict:
    """meta.json of a data directory, checked for the fields readers rely on."""
    path = Path(directory) / "meta.json"
    if not path.is_file():
        raise FileNotFoundError(f"{directory}: no meta.json; is this a token data directory?")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{path}: expected format {FORMAT!r}, got {meta.get('format') if isinstance(meta, dict) else meta!r}")
    if meta.get("dtype") not in DTYPES:
        raise ValueError(f"{path}: dtype must be one of {sorted(DTYPES)}, got {meta.get('dtype')!r}")
    for key in ("vocab_size", "bos_id"):
        if not isinstance(meta.get(key), int) or meta[key] < 0:
            raise ValueError(f"{path}: {key} must be a non-negative integer")
    if not isinstance(meta.get("splits"), dict):
        raise ValueError(f"{path}: missing 'splits'")
    return meta


class TokenShards:
    """One split of a data directory as a single read-only token stream
    (memory-mapped; nothing is loaded until read)."""

    def __init__(self, directory: str | os.PathLike[str], split: str = "train") -> None:
        self.directory = Path(directory)
        self.meta = read_meta(directory)
        splits = self.meta["splits"]
        if split not in splits:
            raise ValueError(f"{directory}: no split {split!r} (has {sorted(splits)})")
        info = splits[split]
        self.split = split
        self.vocab_size: int = self.meta["vocab_size"]
        self.bos_id: int = self.meta["bos_id"]
        self.documents: int = int(info.get("documents", 0))
        self.bytes: int = int(info.get("bytes", 0))
        dtype = DTYPES[self.meta["dtype"]]
        self._arrays: list[np.ndarray] = []
        for name in info.get("shards", []):
            path = self.directory / name
            if Path(name).name != name or not path.is_file():
                raise FileNotFoundError(f"{directory}: shard {name!r} of split {split!r} is missing")
            size = path.stat().st_size
            if size % np.dtype(dtype).itemsize:
                raise ValueError(f"{path}: size {size} is not a multiple of the {self.meta['dtype']} item size")
            if size:
                self._arrays.append(np.memmap(path, dtype=dtype, mode="r"))
        self._starts = np.cumsum([0] + [len(a) for a in self._arrays])
        self.tokens = int(self._starts[-1])
        if self.tokens != int(info.get("tokens", -1)):
            raise ValueError(f"{directory}: split {split!r} has {self.tokens} tokens on disk, meta.json says {info.get('tokens')}")
        if self.tokens == 0:
            raise ValueError(f"{directory}: split {split!r} is empty")

    def __len__(self) -> int:
        return self.tokens

    def read(self, start: int, length: int) -> np.ndarray:
        """Tokens [start, start + length) as int64, across shard boundaries."""
        if start < 0 or length < 0 or start + length > self.tokens:
            raise IndexError(f"window [{start}, {start + length}) outside 0..{self.tokens}")
        out = np.empty(length, dtype=np.int64)
        filled = 0
        shard = int(np.searchsorted(self._starts, start, side="right")) - 1
        while filled < length:
            array, offset = self._arrays[shard], start + filled - int(self._starts[shard])
            take = min(length - filled, len(array) - offset)
            out[filled : filled + take] = array[offset : offset + take]
            filled += take
            shard += 1
        return out


class ShardWriter:
    """Appends documents to one split, cutting shards of `shard_tokens` ids.
    `finish()` renames the shards into place and returns the split's entry
    for meta.json."""

    def __init__(self, directory: str | os.PathLike[str], split: str, dtype: str, bos_id: int,
                 shard_tokens: int = 1 << 26) -> None:
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        if shard_tokens <= 0:
            raise ValueError("shard_tokens must be positive")
        self.directory, self.split, self.bos_id = Path(directory), split, bos_id
        self.dtype, self.shard_tokens = DTYPES[dtype], shard_tokens
        self.directory.mkdir(parents=True, exist_ok=True)
        self.names: list[str] = []
        self.tokens = self.documents = self.bytes = 0
        self._file = None
        self._in_shard = 0

    def _open_next(self) -> None:
        self._close_current()
        name = f"{self.split}-{len(self.names):05d}.bin"
        self.names.append(name)
        self._file = open(self.directory / (name + ".tmp"), "wb")
        self._in_shard = 0

    def _close_current(self) -> None:
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None

    def add(self, ids: "np.ndarray | list[int]", n_bytes: int) -> None:
        """One document's token ids (without the leading bos) and its UTF-8 length."""
        ids = np.asarray(ids, dtype=np.int64)
        if ids.ndim != 1:
            raise ValueError("a document is a 1-D sequence of token ids")
        if ids.size and (ids.min() < 0 or ids.max() > np.iinfo(self.dtype).max):
            raise ValueError(f"token id out of range for {np.dtype(self.dtype).name}")
        doc = np.concatenate([np.array([self.bos_id], dtype=np.int64), ids]).astype(self.dtype)
        pos = 0
        while pos < len(doc):
            if self._file is None or self._in_shard == self.shard_tokens:
                self._open_next()
            take = min(len(doc) - pos, self.shard_tokens - self._in_shard)
            self._file.write(doc[pos : pos + take].tobytes())
            self._in_shard += take
            pos += take
        self.tokens += len(doc)
        self.documents += 1
        self.bytes += int(n_bytes)

    def finish(self) -> dict:
        self._close_current()
        for name in self.names:
            os.replace(self.directory / (name + ".tmp"), self.directory / name)
        return {"shards": list(self.names), "tokens": self.tokens, "documents": self.documents, "bytes": self.bytes}
