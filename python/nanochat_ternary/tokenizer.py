"""Byte-level BPE tokenizer (Rust `tokens` crate over Hugging Face `tokenizers`).

    from nanochat_ternary.tokenizer import Tokenizer
    tok = Tokenizer.train(texts, vocab_size=4096)      # or Tokenizer.from_file("tokenizer.json")
    ids = tok.encode("fn main() {}")                   # no bos added; "<|endoftext|>" in text is one id
    tok.decode(ids); tok.save("tokenizer.json")

Trained tokenizers split text with the GPT-2 regex, spell every byte as one
base token (so any text encodes) and put the special tokens first:
`<|endoftext|>` = 0 (document separator, `bos_id`), `<|pad|>` = 1,
`<|fim_prefix|>` = 2, `<|fim_middle|>` = 3, `<|fim_suffix|>` = 4. Any Hugging
Face `tokenizer.json` (GPT-2's, say) loads too, and `from_gguf_vocab` rebuilds
the vocabularies GGUF files carry (byte-level BPE with llama.cpp's splits, and
SentencePiece), tokenizing as llama.cpp does. Encoding, decoding and
training release the GIL; `encode_batch` encodes in parallel.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

import numpy as np
import numpy.typing as npt

from . import _core

SPECIAL_TOKENS: tuple[str, ...] = ("<|endoftext|>", "<|pad|>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>")
BOS_TOKEN = "<|endoftext|>"
DEFAULT_VOCAB_SIZE = 4096


class Tokenizer:
    """A tokenizer; build one with `from_file`, `from_json`, `train`, `train_files` or `from_gguf_vocab`."""

    def __init__(self, raw: _core.BpeTokenizer) -> None:
        self._raw = raw

    # --- construction -------------------------------------------------------------------------
    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Tokenizer:
        """Loads a Hugging Face `tokenizer.json` (OSError if unreadable, ValueError if invalid)."""
        return cls(_core.BpeTokenizer.from_file(os.fspath(path)))

    @classmethod
    def from_json(cls, json: str) -> Tokenizer:
        return cls(_core.BpeTokenizer.from_json(json))

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = DEFAULT_VOCAB_SIZE, min_frequency: int = 2,
              special_tokens: Sequence[str] = SPECIAL_TOKENS, max_token_length: int | None = None) -> Tokenizer:
        """Trains a byte-level BPE on `texts` (one document each). Deterministic for the same texts."""
        texts = list(texts)
        if not all(isinstance(t, str) for t in texts):
            raise TypeError("train() takes an iterable of str")
        _check_train_args(vocab_size, min_frequency)
        return cls(_core.BpeTokenizer.train(texts, vocab_size, min_frequency, list(special_tokens), max_token_length))

    @classmethod
    def train_files(cls, paths: Iterable[str | os.PathLike[str]], vocab_size: int = DEFAULT_VOCAB_SIZE,
                    min_frequency: int = 2, special_tokens: Sequence[str] = SPECIAL_TOKENS,
                    max_token_length: int | None = None) -> Tokenizer:
        """Trains on whole UTF-8 files (each one document), read in Rust without holding them in Python."""
        _check_train_args(vocab_size, min_frequency)
        paths = [os.fspath(p) for p in paths]
        return cls(_core.BpeTokenizer.train_files(paths, vocab_size, min_frequency, list(special_tokens),
                                                  max_token_length))

    @classmethod
    def from_gguf_vocab(cls, tokens: Sequence[str], merges: Sequence[str], token_types: Sequence[int],
                        model: str = "gpt2", pre: str = "gpt-2", scores: Sequence[float] | None = None,
                        add_space_prefix: bool | None = None) -> Tokenizer:
        """Rebuilds a tokenizer from GGUF `tokenizer.ggml.{tokens,merges,token_type,model,pre,scores,add_space_prefix}`,
        tokenizing as llama.cpp does. `model="gpt2"`: byte-level BPE split as llama.cpp splits for `pre` (gpt-2,
        default, llama-bpe, qwen2, ...; "" means the key is absent, llama.cpp's "default"). `model="llama"`:
        SentencePiece (merges by `scores`, `<0xNN>` byte fallback, a space prepended unless
        `add_space_prefix` is False). ValueError on unsupported or invalid vocabularies."""
        return cls(_core.BpeTokenizer.from_gguf_vocab(
            model, pre, list(tokens), list(merges), [int(t) for t in token_types],
            None if scores is None else [float(s) for s in scores], add_space_prefix))

    # --- persistence --------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> None:
        """Writes `tokenizer.json` atomically (temp file, fsync, rename)."""
        self._raw.save(os.fspath(path))

    def to_json(self) -> str:
        return self._raw.to_json()

    def gguf_vocab(self) -> dict[str, object]:
        """`tokenizer.ggml.*` metadata: model ("gpt2"), pre ("gpt-2"), tokens, merges, token_types
        (llama.cpp: 1 normal, 3 control, 4 user-defined, 5 unused), bos_id, eos_id, pad_id."""
        return self._raw.gguf_vocab()

    # --- encoding -----------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; no special token is added."""
        return self._raw.encode(text)

    def encode_batch(self, texts: Sequence[str]) -> list[npt.NDArray[np.uint32]]:
        """`encode` of every text, in parallel with the GIL released; one uint32 array each."""
        return self._raw.encode_batch(list(texts))

    def decode(self, ids: Iterable[int] | npt.NDArray[np.integer]) -> str:
        """Text of `ids`, special tokens included (ValueError on unknown ids)."""
        return self._raw.decode([int(i) for i in ids])

    # --- vocabulary ---------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        """One more than the largest id: the embedding table size."""
        return self._raw.vocab_size

    @property
    def bos_id(self) -> int:
        """Id of `<|endoftext|>`, which starts every document in the token shards."""
        bos = self._raw.token_to_id(BOS_TOKEN)
        if bos is None:
            raise ValueError(f"this tokenizer has no {BOS_TOKEN} token")
        return bos

    def token_to_id(self, token: str) -> int | None:
        return self._raw.token_to_id(token)

    def id_to_token(self, id: int) -> str | None:
        return self._raw.id_to_token(id)

    def token_bytes(self, id: int) -> bytes:
        """The raw bytes token `id` stands for (a byte-level token may be part of a UTF-8 char; in a
        SentencePiece vocabulary `▁` is a space and `<0xNN>` is that byte)."""
        return self._raw.token_bytes(id)

    def special_tokens(self) -> list[tuple[int, str]]:
        """(id, token) of every special token, by id."""
        return self._raw.special_tokens()

    @property
    def is_byte_level(self) -> bool:
        """Whether tokens spell raw bytes through the GPT-2 byte table (False for SentencePiece vocabularies)."""
        return self._raw.is_byte_level

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size})"


def _check_train_args(vocab_size: int, min_frequency: int) -> None:
    if not isinstance(vocab_size, int) or vocab_size <= 0:
        raise ValueError(f"vocab_size must be a positive integer, got {vocab_size!r}")
    if not isinstance(min_frequency, int) or min_frequency < 0:
        raise ValueError(f"min_frequency must be a non-negative integer, got {min_frequency!r}")
