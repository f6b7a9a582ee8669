"""`TernaryModel`: load an exported ternary model and generate text (the Rust engine on the CPU, or `device="cuda"`).

    from nanochat_ternary import TernaryModel
    model = TernaryModel.from_pretrained("model.gguf")        # or a directory, a zoo name, "org/repo"
    model.generate("fn main() {", max_new_tokens=64)           # greedy -> str
    model.generate(["a", "b"], do_sample=True, temperature=0.8, top_p=0.9, seed=1)   # -> list[str]
    for piece in model.stream("fn add(", stop="\\n}"):
        print(piece, end="", flush=True)
    model.save_pretrained("copy/")

The forward pass, sampling and KV cache run in the Rust engine (`_core.Engine`)
with the GIL released, so a notebook stays responsive and other Python threads
run. With ``device="cuda"`` (``.gguf`` models) they run on the GPU instead:
``nanochat_ternary.cuda.model`` with the CUDA ternary kernels. Prompts are encoded as the file says, as llama.cpp encodes them: the BOS token first when
the file's ``add_bos_token`` is set (our exports: ``<|endoftext|>``, the document start of the
training shards), the EOS token last when ``add_eos_token`` is. Streaming decodes incrementally and never yields a broken
UTF-8 sequence; stop strings are cut before they are yielded.
"""

from __future__ import annotations

import codecs
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Union

import numpy as np
import numpy.typing as npt

from . import _atomic, _core, hub, zoo
from .export import DEFAULT_GENERATION_CONFIG
from .model_config import ModelConfig

__all__ = ["TernaryModel", "Streamer", "SamplingParams"]


class _StreamerObject(Protocol):
    def put(self, text: str) -> Any: ...
    def end(self) -> Any: ...


Streamer = Union[Callable[[str], Any], _StreamerObject]
"""A callable receiving each text piece, or an object with ``put(text)`` and ``end()``."""


@dataclass(frozen=True)
class SamplingParams:
    """Validated sampling settings (temperature 0 = greedy)."""

    max_new_tokens: int
    temperature: float
    top_k: int
    top_p: float
    min_p: float
    repetition_penalty: float
    seed: int
    no_repeat_ngram_size: int = 0
    # Token healing (see ``TernaryModel.generate``): the ids the first new token must be one of,
    # and how many bytes of its text repeat the end of the prompt (dropped from the output).
    first_token_ids: tuple[int, ...] = ()
    healed_bytes: int = 0

    def engine_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "temperature": self.temperature,
            "top_k": self.top_k,
            "top_p": self.top_p,
            "min_p": self.min_p,
            "repetition_penalty": self.repetition_penalty,
            "seed": self.seed,
        }
        if self.first_token_ids:
            kwargs["first_token_ids"] = list(self.first_token_ids)
        if self.no_repeat_ngram_size:
            kwargs["no_repeat_ngram_size"] = self.no_repeat_ngram_size
        return kwargs


# --------------------------------------------------------------------------- tokenizer access


class _Tokens:
    """Encode/decode over ``nanochat_ternary.tokenizer.Tokenizer`` built from tokenizer.json text,
    with the model file's BOS/EOS ids and whether encoding adds them."""

    def __init__(
        self, json_text: str, bos_id: int | None, eos_id: int | None, add_bos: bool, add_eos: bool
    ) -> None:
        from .tokenizer import Tokenizer

        self.tokenizer = Tokenizer.from_json(json_text)
        self.json_text = json_text
        self.bos_id: int | None = bos_id
        self.eos_id: int | None = eos_id
        self.add_bos: bool = add_bos
        self.add_eos: bool = add_eos
        # Models may have more ids than the tokenizer (vocab padded to a round size);
        # those ids have no text and decode to nothing.
        self.n_tokens: int = int(self.tokenizer.vocab_size)
        # Every id's text, special tokens as b"" (built on the first token-healed prompt).
        self._texts: list[bytes] | None = None

    def encode(self, text: str) -> list[int]:
        return [int(i) for i in self.tokenizer.encode(text)]

    def decode(self, ids: Sequence[int]) -> str:
        return str(self.tokenizer.decode([int(i) for i in ids if 0 <= int(i) < self.n_tokens]))

    def token_bytes(self, token_id: int) -> bytes:
        if not 0 <= token_id < self.n_tokens:
            return b""
        return bytes(self.tokenizer.token_bytes(int(token_id)))

    def heal(self, ids: list[int]) -> tuple[list[int], tuple[int, ...], int]:
        """Token healing of a prompt: ``(ids without their last token, the ids whose text starts
        with that token's text, its length in bytes)``; the ids unchanged, ``()`` and 0 when
        the last token is special or the only one (besides BOS)."""
        if self._texts is None:
            special = {i for i, _ in self.tokenizer.special_tokens()}
            self._texts = [b"" if i in special else self.token_bytes(i) for i in range(self.n_tokens)]
        texts = self._texts
        body = ids[1:] if ids and ids[0] == self.bos_id else ids
        last = ids[-1] if len(body) >= 2 else -1
        prefix = texts[last] if 0 <= last < self.n_tokens else b""
        if not prefix:
            return ids, (), 0
        allowed = tuple(i for i, t in enumerate(texts) if t.startswith(prefix))
        return ids[:-1], allowed, len(prefix)


class _TextAssembler:
    """Turns token ids into text pieces that are always whole UTF-8 characters.

    Token bytes go through an incremental UTF-8 decoder, which holds back an
    incomplete multi-byte sequence until the next token completes it (invalid
    bytes become U+FFFD).
    """

    def __init__(self, tokens: _Tokens, skip: int = 0) -> None:
        self._tokens = tokens
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        # Leading bytes not to output: what a healed first token repeats of the prompt.
        self._skip = skip

    def add(self, token_id: int) -> str:
        data = self._tokens.token_bytes(token_id)
        if self._skip:
            data, self._skip = data[self._skip :], max(0, self._skip - len(data))
        return self._decoder.decode(data)

    def finish(self) -> str:
        return self._decoder.decode(b"", final=True)


class _StopFilter:
    """Holds back text that might be the start of a stop string; reports when one is found."""

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = list(stops)
        self._pending = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        self._pending += text
        if not self._stops:
            out, self._pending = self._pending, ""
            return out
        hits = [i for i in (self._pending.find(s) for s in self._stops) if i >= 0]
        if hits:
            self.stopped = True
            out, self._pending = self._pending[: min(hits)], ""
            return out
        keep = 0
        for s in self._stops:
            for k in range(min(len(s) - 1, len(self._pending)), keep, -1):
                if self._pending.endswith(s[:k]):
                    keep = k
                    break
        out = self._pending[: len(self._pending) - keep]
        self._pending = self._pending[len(self._pending) - keep :]
        return out

    def flush(self) -> str:
        out, self._pending = self._pending, ""
        return out


def _emit(streamer: Streamer | None, text: str) -> None:
    if streamer is None or not text:
        return
    put = getattr(streamer, "put", None)
    if callable(put):
        put(text)
    elif callable(streamer):
        streamer(text)
    else:
        raise TypeError("streamer must be a callable or an object with put(text) and end()")


def _end(streamer: Streamer | None) -> None:
    end = getattr(streamer, "end", None)
    if streamer is not None and callable(end):
        end()


# --------------------------------------------------------------------------- the model


class TernaryModel:
    """A ternary language model running in the Rust inference engine.

    Build it with :meth:`from_pretrained`. ``config`` is the model's
    :class:`ModelConfig`, ``architecture`` ``"llama"``, ``"nanochat-ternary"`` or
    ``"nanochat-ternary-loop"`` (LoopLM: see :attr:`exit_threshold`),
    ``generation_config`` the defaults :meth:`generate` uses.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        name: str | None = None,
        source: str = "local",
        kv_cache: str = "f16",
        device: str = "cpu",
    ) -> None:
        """Loads a ``.gguf`` file or an HF-style directory directly (see :meth:`from_pretrained`)."""
        device = _check_device(device)
        path = Path(path)
        self.path: Path = path
        self.name: str = name or (path.stem if path.is_file() else path.name)
        self.source: str = source
        self._engine = _core.Engine(os.fspath(path), kv_cache=kv_cache)
        values = json.loads(self._engine.config_json())
        self.architecture: str = str(values.pop("architecture", "nanochat-ternary"))
        known = set(ModelConfig.__dataclass_fields__)
        self.config: ModelConfig = ModelConfig.from_dict({k: v for k, v in values.items() if k in known})
        tokenizer_json = self._tokenizer_json()
        if tokenizer_json is None:
            raise ValueError(f"{path} has no tokenizer (GGUF tokenizer.ggml.* metadata or tokenizer.json)")
        e = self._engine
        self._tokens = _Tokens(tokenizer_json, e.bos_token_id, e.eos_token_id, e.add_bos_token, e.add_eos_token)
        self.generation_config: dict[str, Any] = self._read_generation_config()
        self.device: str = device
        self._torch: Any = None
        if device != "cpu":
            self._use_torch_forward(device)

    def _use_torch_forward(self, device: str) -> None:
        """Runs logits and generation through ``cuda.model.TorchForward`` on ``device`` (the GPU
        path; on ``"cpu"`` it runs the CUDA kernels' references, which is how it is tested)."""
        if not (self.path.is_file() and self.path.suffix == ".gguf"):
            raise ValueError(f"device={device!r} loads .gguf files; {self.path} is not one (export it with nanochat_ternary.export)")
        from .cuda.model import TorchForward

        self._torch = TorchForward.from_gguf(self.path, self.config, device)

    # ----------------------------------------------------------------------- loading and saving

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike[str] | None = None,
        revision: str | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        local_files_only: bool = False,
        kv_cache: str = "f16",
        device: str = "cpu",
    ) -> TernaryModel:
        """Load a model from a local ``.gguf`` file or directory, a zoo name, or a Hugging Face
        Hub id (``org/name``; ``revision`` a branch, tag or commit). ``local_files_only=True`` (or
        ``HF_HUB_OFFLINE=1``) reads only the hub cache (``cache_dir`` or the default). Without a
        name, loads the zoo's default model. ``kv_cache``: ``"f16"`` (default, half the memory
        traffic per generated token) or ``"f32"`` (exactly what the training model computes).
        ``device``: ``"cpu"`` (the Rust engine) or ``"cuda"`` / ``"cuda:N"`` (a ``.gguf`` model on
        the GPU: the CUDA ternary kernels, a float32 KV cache, torch-seeded sampling); a CUDA
        device without a GPU raises ValueError.

        Raises FileNotFoundError (nothing there / not cached), ValueError (corrupt or foreign
        files, unknown architecture, mismatched tokenizer), ``zoo.ZooChecksumError`` (a zoo file
        differs from its pinned sha256).
        """
        if name_or_path is None:
            default = zoo.default_name()
            if default is None:
                raise ValueError(
                    "no default model is registered in the zoo yet; pass a path, zoo name or hub id "
                    f"(zoo names: {', '.join(zoo.names()) or 'none'})"
                )
            name_or_path = default
        found = hub.resolve(name_or_path, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only)
        return cls(found.path, name=found.name, source=found.source, kv_cache=kv_cache, device=device)

    def save_pretrained(self, directory: str | os.PathLike[str]) -> Path:
        """Copy this model's files into ``directory`` so ``from_pretrained(directory)`` loads it:
        the ``.gguf`` file, or the HF-style files. A new directory appears complete or not at all."""
        target = Path(directory)
        if target.exists() and not target.is_dir():
            raise ValueError(f"{target} exists and is not a directory")
        if self.path.is_file():
            files = [(self.path, "model.gguf" if not self.path.name.endswith(".gguf") else self.path.name)]
        else:
            names = ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json"]
            files = [(self.path / n, n) for n in names if (self.path / n).is_file()]
        target.parent.mkdir(parents=True, exist_ok=True)
        fresh = not target.exists()
        work = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent)) if fresh else target
        try:
            if fresh:
                os.chmod(work, 0o755)
            for src, name in files:
                _atomic.copy_file(src, work / name)
            if fresh:
                os.replace(work, target)
        finally:
            if fresh and work.exists():
                shutil.rmtree(work, ignore_errors=True)
        return target

    # ----------------------------------------------------------------------- properties

    @property
    def context_length(self) -> int:
        return int(self._engine.context_length)

    @property
    def vocab_size(self) -> int:
        return int(self._engine.vocab_size)

    @property
    def bos_token_id(self) -> int | None:
        """The file's BOS token id (None when it names none)."""
        return self._tokens.bos_id

    @property
    def eos_token_id(self) -> int | None:
        """The file's EOS token id, where generation stops (None when it names none)."""
        return self._tokens.eos_id

    @property
    def add_bos_token(self) -> bool:
        """Whether prompts start with the BOS token (the file's ``add_bos_token``, else llama.cpp's default)."""
        return self._tokens.add_bos

    @property
    def add_eos_token(self) -> bool:
        """Whether :meth:`encode` ends a text with the EOS token (the file's ``add_eos_token``)."""
        return self._tokens.add_eos

    @property
    def param_count(self) -> int:
        return self.config.param_count

    @property
    def exit_threshold(self) -> float:
        """LoopLM early exit: a token leaves after the first loop whose cumulative exit
        probability reaches this (1.0: every loop; the model's own default at load). Set it in
        (0, 1]; below 1 only for a LoopLM model with an exit gate."""
        return float(self._engine.exit_threshold)

    @exit_threshold.setter
    def exit_threshold(self, value: float) -> None:
        if self._torch is not None:
            raise ValueError("early exit runs in the CPU engine; this model runs on " + self.device)
        self._engine.exit_threshold = _number("exit_threshold", value)

    @property
    def tokenizer(self) -> Any:
        """The ``nanochat_ternary.tokenizer.Tokenizer`` of this model."""
        return self._tokens.tokenizer

    def __repr__(self) -> str:
        return (
            f"TernaryModel(name={self.name!r}, params={_human(self.param_count)}, arch={self.architecture!r}, "
            f"layers={self.config.n_layers}{f' x {self.config.loops} loops' if self.config.loops > 1 else ''}, "
            f"dim={self.config.dim}, mhc_streams={self.config.mhc_streams}, "
            f"context={self.context_length}, vocab={self.vocab_size}, source={self.source!r})"
        )

    # ----------------------------------------------------------------------- tokens and logits

    def encode(self, text: str, add_bos: bool | None = None, add_eos: bool | None = None) -> list[int]:
        """Token ids of ``text``. ``add_bos`` / ``add_eos`` (None: as the model file says, see
        :attr:`add_bos_token`) put the BOS token first / the EOS token last, as llama.cpp does."""
        if not isinstance(text, str):
            raise TypeError(f"prompt must be a str, got {type(text).__name__}")
        ids = self._tokens.encode(text)
        if self._flag("bos", add_bos, self._tokens.add_bos, self._tokens.bos_id):
            ids = [int(self._tokens.bos_id), *ids]  # type: ignore[arg-type]
        if self._flag("eos", add_eos, self._tokens.add_eos, self._tokens.eos_id):
            ids = [*ids, int(self._tokens.eos_id)]  # type: ignore[arg-type]
        return ids

    @staticmethod
    def _flag(what: str, asked: bool | None, default: bool, token: int | None) -> bool:
        if asked is None:
            return default
        if asked and token is None:
            raise ValueError(f"add_{what}=True, but the model names no {what.upper()} token")
        return bool(asked)

    def decode(self, ids: Sequence[int]) -> str:
        return self._tokens.decode(ids)

    def logits(self, ids: Sequence[int]) -> npt.NDArray[np.float32]:
        """(len(ids), vocab) float32 next-token logits of one causal forward pass."""
        if self._torch is not None:
            import torch

            fwd = self._torch
            return fwd(torch.tensor([int(i) for i in ids], dtype=torch.int64), fwd.new_cache()).cpu().numpy()
        return self._engine.logits([int(i) for i in ids])

    def nll(self, ids: Sequence[int]) -> npt.NDArray[np.float64]:
        """Per-token negative log-likelihood (nats) of ``ids``, each given the ones before it and
        a leading BOS token (how training sees a document start). At most
        ``context_length`` ids; the evaluation harness scores longer streams window by window."""
        ids = [int(i) for i in ids]
        if not ids:
            raise ValueError("nll needs at least one token")
        bos = self._tokens.bos_id
        if bos is None:
            raise ValueError("nll scores the first token after a BOS token, and this model names none")
        if len(ids) > self.context_length:
            raise ValueError(f"{len(ids)} tokens exceed the context of {self.context_length}; score them in windows")
        if min(ids) < 0 or max(ids) >= self.vocab_size:
            raise ValueError(f"token ids must lie in 0..{self.vocab_size - 1}")
        logits = self.logits([bos, *ids[:-1]]).astype(np.float64)
        top = logits.max(axis=1, keepdims=True)
        log_z = np.log(np.exp(logits - top).sum(axis=1)) + top[:, 0]
        return log_z - logits[np.arange(len(ids)), ids]

    # ----------------------------------------------------------------------- generation

    def generate(
        self,
        prompt: str | Sequence[str],
        max_new_tokens: int | None = None,
        do_sample: bool | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        min_p: float | None = None,
        repetition_penalty: float | None = None,
        stop: str | Sequence[str] | None = None,
        seed: int = 0,
        streamer: Streamer | None = None,
        truncate: bool = False,
        add_bos: bool | None = None,
        token_healing: bool | None = None,
        no_repeat_ngram_size: int | None = None,
    ) -> str | list[str]:
        """Continue ``prompt`` (a str -> str, a list of str -> list of str; the prompt is not repeated).

        ``do_sample=False`` (the default unless ``generation_config`` says otherwise, or a
        ``temperature`` > 0 is given without ``do_sample``) decodes greedily. The prompt starts
        with the BOS token when ``add_bos`` (None: the model file's ``add_bos_token``). Generation
        ends at the model's EOS token, at a ``stop`` string (cut from the text) or after ``max_new_tokens``
        (default: ``generation_config["max_new_tokens"]``, capped by the room left in the context).
        ``streamer`` receives text pieces as they are made (single prompts only). A prompt longer
        than the context raises ValueError unless ``truncate=True``, which keeps its tail.
        ``seed`` makes sampling reproducible. ``no_repeat_ngram_size`` (None: ``generation_config``'s,
        else 0 = off) bans every token that would repeat an n-gram of that many tokens of prompt and
        output, as in transformers. ``token_healing`` (None: ``generation_config``'s
        ``token_healing``, else off) drops the prompt's last token and lets the model pick the
        first token among those whose text starts with it, so a prompt cut at an unusual token
        boundary (code prompts ending in ``"{\\n"``, which training text tokenizes as ``" {"``
        + ``"\\n   "``) does not push the model off its training distribution; the returned text
        still continues the prompt as given.
        """
        single = isinstance(prompt, str)
        prompts = [prompt] if single else list(prompt)  # type: ignore[list-item]
        if not prompts:
            raise ValueError("prompt list is empty")
        if streamer is not None and not single:
            raise ValueError("streamer= works with a single prompt, not a list")
        stops = _stop_list(stop)
        batches = [
            self._prepare(
                p, max_new_tokens, do_sample, temperature, top_k, top_p, min_p, repetition_penalty, seed, truncate, add_bos,
                token_healing, no_repeat_ngram_size,
            )
            for p in prompts
        ]
        if streamer is not None or stops:
            texts = ["".join(self._stream_ids(ids, params, stops, streamer)) for ids, params in batches]
            _end(streamer)
            return texts[0] if single else texts
        # One engine call per distinct sampling setting keeps whole batches together.
        groups: dict[SamplingParams, list[int]] = {}
        for index, (_, params) in enumerate(batches):
            groups.setdefault(params, []).append(index)
        out: list[str] = [""] * len(batches)
        if self._torch is not None:
            for index, (ids, params) in enumerate(batches):
                out[index] = self._text(list(self._token_stream(ids, params)), params.healed_bytes)
            return out[0] if single else out
        for params, indices in groups.items():
            new_ids = self._engine.generate(
                [batches[i][0] for i in indices],
                params.max_new_tokens,
                stop_ids=self._stop_ids(),
                **params.engine_kwargs(),
            )
            for i, ids in zip(indices, new_ids):
                out[i] = self._text(ids, params.healed_bytes)
        return out[0] if single else out

    def stream(
        self,
        prompt: str,
        max_new_tokens: int | None = None,
        do_sample: bool | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        min_p: float | None = None,
        repetition_penalty: float | None = None,
        stop: str | Sequence[str] | None = None,
        seed: int = 0,
        truncate: bool = False,
        add_bos: bool | None = None,
        token_healing: bool | None = None,
        no_repeat_ngram_size: int | None = None,
    ) -> Iterator[str]:
        """Like :meth:`generate` for one prompt, but yields text pieces as they are produced.
        Arguments are validated when called, before the first piece."""
        if not isinstance(prompt, str):
            raise TypeError(f"stream() takes one str prompt, got {type(prompt).__name__}")
        ids, params = self._prepare(
            prompt, max_new_tokens, do_sample, temperature, top_k, top_p, min_p, repetition_penalty, seed, truncate, add_bos,
            token_healing, no_repeat_ngram_size,
        )
        return self._stream_ids(ids, params, _stop_list(stop), None)

    # ----------------------------------------------------------------------- internals

    def _stream_ids(
        self, ids: list[int], params: SamplingParams, stops: list[str], streamer: Streamer | None
    ) -> Iterator[str]:
        # Stop strings are matched here on the text, not in the engine, so that text
        # held back as a possible stop prefix is released exactly when it isn't one.
        tokens = self._token_stream(ids, params)
        text = _TextAssembler(self._tokens, params.healed_bytes)
        stop_filter = _StopFilter(stops)
        for token in tokens:
            if token == self._tokens.eos_id:
                break
            piece = stop_filter.feed(text.add(token))
            _emit(streamer, piece)
            if piece:
                yield piece
            if stop_filter.stopped:
                return
        piece = stop_filter.feed(text.finish())
        if not stop_filter.stopped:
            piece += stop_filter.flush()
        _emit(streamer, piece)
        if piece:
            yield piece

    def _token_stream(self, ids: list[int], params: SamplingParams) -> Iterator[int]:
        if self._torch is not None:
            from .cuda.model import generate_tokens

            return generate_tokens(self._torch, ids, params.max_new_tokens, self._stop_ids(), **params.engine_kwargs())
        return self._engine.stream(ids, params.max_new_tokens, stop_ids=self._stop_ids(), **params.engine_kwargs())

    def _stop_ids(self) -> list[int]:
        return [] if self._tokens.eos_id is None else [self._tokens.eos_id]

    def _text(self, ids: Sequence[int], skip: int = 0) -> str:
        ids = [i for i in ids if i != self._tokens.eos_id]
        text = _TextAssembler(self._tokens, skip)
        return "".join(text.add(i) for i in ids) + text.finish()

    def _prepare(
        self,
        prompt: Any,
        max_new_tokens: int | None,
        do_sample: bool | None,
        temperature: float | None,
        top_k: int | None,
        top_p: float | None,
        min_p: float | None,
        repetition_penalty: float | None,
        seed: int,
        truncate: bool,
        add_bos: bool | None,
        token_healing: bool | None = None,
        no_repeat_ngram_size: int | None = None,
    ) -> tuple[list[int], SamplingParams]:
        if not isinstance(prompt, str):
            raise TypeError(f"prompts must be str, got {type(prompt).__name__}")
        if prompt == "":
            raise ValueError("prompt is empty")
        gen = self.generation_config
        if do_sample is None:
            do_sample = bool(gen.get("do_sample", False)) or (temperature is not None and temperature > 0)
        temperature = _number("temperature", gen.get("temperature", 1.0) if temperature is None else temperature)
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if do_sample and temperature == 0:
            raise ValueError("do_sample=True needs temperature > 0 (use do_sample=False for greedy decoding)")
        top_k = _integer("top_k", gen.get("top_k", 0) if top_k is None else top_k)
        if top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {top_k}")
        top_p = _number("top_p", gen.get("top_p", 1.0) if top_p is None else top_p)
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        min_p = _number("min_p", gen.get("min_p", 0.0) if min_p is None else min_p)
        if not 0 <= min_p < 1:
            raise ValueError(f"min_p must be in [0, 1), got {min_p}")
        penalty = _number("repetition_penalty", gen.get("repetition_penalty", 1.0) if repetition_penalty is None else repetition_penalty)
        if penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {penalty}")
        seed = _integer("seed", seed)
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        ngram = _integer(
            "no_repeat_ngram_size", gen.get("no_repeat_ngram_size", 0) if no_repeat_ngram_size is None else no_repeat_ngram_size
        )
        if ngram < 0:
            raise ValueError(f"no_repeat_ngram_size must be >= 0 (0 = off), got {ngram}")

        ids = self.encode(prompt, add_bos=add_bos, add_eos=False)
        context = self.context_length
        if max_new_tokens is not None:
            max_new_tokens = _integer("max_new_tokens", max_new_tokens)
            if max_new_tokens < 1:
                raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
            if max_new_tokens >= context:
                raise ValueError(f"max_new_tokens={max_new_tokens} leaves no room for a prompt in a context of {context}")
            budget = context - max_new_tokens
        else:
            budget = context - 1
        if len(ids) > budget:
            if not truncate:
                raise ValueError(
                    f"prompt is {len(ids)} tokens but only {budget} fit in the context of {context}"
                    + (f" with max_new_tokens={max_new_tokens}" if max_new_tokens is not None else "")
                    + "; pass truncate=True to keep its tail"
                )
            ids = ids[len(ids) - budget :]
        if max_new_tokens is None:
            max_new_tokens = max(1, min(int(gen.get("max_new_tokens", 256)), context - len(ids)))
        heal = gen.get("token_healing", False) if token_healing is None else token_healing
        if not isinstance(heal, bool):
            raise ValueError(f"token_healing must be True or False, got {heal!r}")
        first_ids: tuple[int, ...] = ()
        healed = 0
        if heal:
            ids, first_ids, healed = self._tokens.heal(ids)
        params = SamplingParams(
            max_new_tokens=max_new_tokens,
            temperature=temperature if do_sample else 0.0,
            top_k=top_k,
            top_p=top_p,
            min_p=min_p,
            repetition_penalty=penalty,
            seed=seed,
            no_repeat_ngram_size=ngram,
            first_token_ids=first_ids,
            healed_bytes=healed,
        )
        return ids, params

    def _tokenizer_json(self) -> str | None:
        if self.path.is_dir() and (self.path / "tokenizer.json").is_file():
            return (self.path / "tokenizer.json").read_text(encoding="utf-8")
        if self.path.is_file():
            # Our exports embed the exact tokenizer.json; other GGUF files get the engine's rebuild.
            from .gguf import GGUFReader

            try:
                text = GGUFReader(self.path).metadata.get("tokenizer.huggingface.json")
            except ValueError:
                text = None
            if isinstance(text, str):
                return text
        return self._engine.tokenizer_json()

    def _read_generation_config(self) -> dict[str, Any]:
        values = dict(DEFAULT_GENERATION_CONFIG)
        text: str | None = None
        if self.path.is_dir() and (self.path / "generation_config.json").is_file():
            text = (self.path / "generation_config.json").read_text(encoding="utf-8")
        elif self.path.is_file():
            from .gguf import GGUFReader

            stored = GGUFReader(self.path).metadata.get("nct.generation_config")
            text = stored if isinstance(stored, str) else None
        if text:
            try:
                loaded = json.loads(text)
            except json.JSONDecodeError as e:
                raise ValueError(f"generation config of {self.path} is not valid JSON: {e}") from None
            if isinstance(loaded, dict):
                values.update(loaded)
        return values


def _check_device(device: Any) -> str:
    """``"cpu"``, ``"cuda"`` or ``"cuda:N"``; a CUDA device needs a GPU and NVRTC (clear ValueError otherwise)."""
    if not isinstance(device, str) or not (device == "cpu" or device == "cuda" or (device.startswith("cuda:") and device[5:].isdigit())):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if device == "cpu":
        return device
    import torch

    from .cuda import driver, nvrtc

    if not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but no CUDA GPU is available (torch.cuda.is_available() is False)")
    if device != "cuda" and int(device[5:]) >= torch.cuda.device_count():
        raise ValueError(f"device {device!r} requested but there are {torch.cuda.device_count()} CUDA devices")
    if not nvrtc.available() or not driver.available():
        raise ValueError(f"device {device!r} needs NVRTC to compile the ternary kernels (the CUDA-enabled torch wheel ships it)")
    return device


def _stop_list(stop: str | Sequence[str] | None) -> list[str]:
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else list(stop)
    for s in stops:
        if not isinstance(s, str) or not s:
            raise ValueError(f"stop strings must be non-empty str, got {s!r}")
    return stops


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def _integer(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an int, got {value!r}")
    return int(value)


def _human(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)
