"""Export a trained ternary model to GGUF v3 or to an HF-style directory.

    from nanochat_ternary import QatModel, export
    export.export_gguf(model, "tokenizer.json", "model.gguf")          # TQ2_0 weights, Q8_0 head
    export.export_gguf(model, tok, "model-tq1.gguf", weight_type="TQ1_0", head_type="F16")
    export.export_hf(model, tok, "my-model/")                           # config.json, model.safetensors, ...
    export.export_checkpoint("runs/tiny", "data/tokenizer.json", "tiny.gguf")   # a trainer checkpoint (or run dir)

Command line:

    python -m nanochat_ternary.export runs/tiny --out tiny.gguf [--weight-type TQ1_0]   # the run's tokenizer
    python -m nanochat_ternary.export runs/tiny/ckpt-00000300.safetensors --tokenizer tok.json --out tiny-hf --format hf

Both are lossless for the ternary projections: the trits written are exactly
the ones the training forward pass uses (absmean per tensor, the codec's rule)
and the one per-tensor scale is stored as f16 in every TQ2_0/TQ1_0 block (GGUF)
or as float32 (HF directory). The GGUF file follows llama.cpp's conventions
(tensor names, ``{arch}.*`` hyperparameters, ``tokenizer.ggml.*``), and a plain
llama-shaped model (no mHC, SwiGLU) gets ``general.architecture = llama`` so
llama.cpp can run it; mHC or ReLU² models use ``nanochat-ternary``.

RoPE layout: training rotates halves ("rotate-half", as HF llama). llama.cpp's
llama architecture rotates adjacent pairs, so the rows of ``attn_q``/``attn_k``
are permuted per head in the GGUF file, as ``convert_hf_to_gguf.py`` does. The
HF directory keeps the training layout and names.

A tokenizer is given as a ``tokenizer.json`` path, its JSON text, or an object
with ``to_json()`` (e.g. ``nanochat_ternary.tokenizer.Tokenizer``). It must be a
byte-level BPE with no more tokens than the model's vocabulary. Training starts
every document with one token (the data's ``bos_id``, ``<|endoftext|>`` in our
tokenizers), which is also where a document ends: exports record it as BOS and
EOS with ``add_bos_token = true`` (GGUF ``tokenizer.ggml.*``, HF
``tokenizer_config.json``), so llama.cpp and ``TernaryModel`` encode a text prompt
exactly as training saw it. Exporting a trainer run finds its tokenizer and BOS id
in the run's data directory.

GGUF's ternary types pack 256 weights per block along a row, so every projection's
input dimension (``dim`` and ``ffn_hidden``) must be a multiple of 256
(:func:`gguf_export_problems`); every shipped preset is.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch

from . import _atomic, checkpoint, codec
from .gguf import GGUFValueType, GGUFWriter
from .model_config import ModelConfig

__all__ = [
    "EOS_TOKEN",
    "HF_ARCHITECTURE",
    "HF_MODEL_TYPE",
    "LOOP_ARCHITECTURE",
    "CHECKPOINT_FORMAT",
    "DEFAULT_GENERATION_CONFIG",
    "export_gguf",
    "export_hf",
    "export_checkpoint",
    "gguf_architecture",
    "gguf_tensor_name",
    "rope_permutation",
    "quantize_q8_0",
    "tokenizer_json_text",
    "gguf_tokenizer_metadata",
    "gguf_export_problems",
    "run_tokenizer",
]

EOS_TOKEN = "<|endoftext|>"
"""Our tokenizers' document token: documents are stored as ``[bos] + ids`` with it as BOS and EOS.
Used when an export is not told the data's ``bos_id``."""

HF_ARCHITECTURE = "NanochatTernaryForCausalLM"
HF_MODEL_TYPE = "nanochat-ternary"
CHECKPOINT_FORMAT = "nanochat-ternary-checkpoint/1"
NCT_ARCHITECTURE = "nanochat-ternary"
# LoopLM models (loop.loops > 1) get their own name: a loader that does not know loops (llama.cpp,
# older engines) refuses the file instead of running every block once.
LOOP_ARCHITECTURE = "nanochat-ternary-loop"
HF_LOOP_ARCHITECTURE = "NanochatTernaryLoopForCausalLM"

DEFAULT_GENERATION_CONFIG: dict[str, Any] = {
    "max_new_tokens": 256,
    "do_sample": False,
    "temperature": 1.0,
    "top_k": 0,
    "top_p": 1.0,
    "repetition_penalty": 1.0,
}
"""Sampling defaults written to ``generation_config.json`` (greedy)."""


def check_generation_config(config: Any) -> dict[str, Any]:
    """The sampling defaults a model may carry (``max_new_tokens``, ``do_sample``, ``temperature``,
    ``top_k``, ``top_p``, ``min_p``, ``repetition_penalty``, ``no_repeat_ngram_size``, ``token_healing``), checked like ``generate`` checks its
    arguments; anything else is a ValueError naming the key."""
    if not isinstance(config, Mapping):
        raise ValueError(f"generation config must be a JSON object, got {type(config).__name__}")
    checks: dict[str, tuple[type | tuple[type, ...], Any, str]] = {
        "max_new_tokens": (int, lambda v: v >= 1, ">= 1"),
        "do_sample": (bool, lambda v: True, "true or false"),
        "temperature": ((int, float), lambda v: math.isfinite(v) and v >= 0, "finite and >= 0"),
        "top_k": (int, lambda v: v >= 0, ">= 0 (0 = off)"),
        "top_p": ((int, float), lambda v: 0 < v <= 1, "in (0, 1]"),
        "min_p": ((int, float), lambda v: 0 <= v < 1, "in [0, 1)"),
        "repetition_penalty": ((int, float), lambda v: math.isfinite(v) and v > 0, "finite and > 0"),
        "no_repeat_ngram_size": (int, lambda v: v >= 0, ">= 0 (0 = off)"),
        "token_healing": (bool, lambda v: True, "true or false"),
    }
    out: dict[str, Any] = {}
    for key, value in config.items():
        if key not in checks:
            raise ValueError(f"generation config: unknown key {key!r} (known: {', '.join(checks)})")
        kind, ok, what = checks[key]
        if isinstance(value, bool) != (kind is bool) or not isinstance(value, kind) or not ok(value):
            raise ValueError(f"generation config: {key} must be {what}, got {value!r}")
        out[key] = value
    if out.get("do_sample") and out.get("temperature", 1.0) == 0:
        raise ValueError("generation config: do_sample needs temperature > 0")
    return out

WeightType = Literal["TQ2_0", "TQ1_0"]
HeadType = Literal["Q8_0", "F16", "F32"]
EmbedType = Literal["F32", "F16"]

# llama.cpp's LLAMA_FTYPE_MOSTLY_* for the ternary types ("except 1d tensors").
_FILE_TYPE = {"TQ1_0": 36, "TQ2_0": 37}
# gguf TokenType values.
_TOKEN_NORMAL, _TOKEN_CONTROL, _TOKEN_USER_DEFINED, _TOKEN_UNUSED = 1, 3, 4, 5
_Q8_BLOCK = 32
# Ternary projections of a block, by training name suffix -> llama.cpp name.
_PROJECTIONS = {
    "attn.wq": "attn_q",
    "attn.wk": "attn_k",
    "attn.wv": "attn_v",
    "attn.wo": "attn_output",
    "mlp.gate": "ffn_gate",
    "mlp.up": "ffn_up",
    "mlp.down": "ffn_down",
}
_NORMS = {"attn_norm.gain": "attn_norm", "mlp_norm.gain": "ffn_norm"}


class ExportableModel(Protocol):
    """What export needs: a config and the float (latent) parameters by training name."""

    config: ModelConfig

    def named_parameters(self) -> Mapping[str, torch.Tensor]: ...


# --------------------------------------------------------------------------- names and layout


def gguf_architecture(config: ModelConfig) -> str:
    """``nanochat-ternary-loop`` for a LoopLM model, ``llama`` for a llama-shaped model (one
    residual stream, SwiGLU), else ``nanochat-ternary``."""
    if config.loops > 1:
        return LOOP_ARCHITECTURE
    if config.mhc_streams == 1 and config.ffn_activation == "swiglu":
        return "llama"
    return NCT_ARCHITECTURE


def is_ternary_parameter(name: str) -> bool:
    """True for the BitLinear projections inside the blocks (the only ternarized weights)."""
    parts = name.split(".")
    return len(parts) == 4 and parts[0] == "blocks" and ".".join(parts[2:]) in _PROJECTIONS


def gguf_tensor_name(name: str) -> str:
    """The llama.cpp tensor name of a training parameter (``blocks.3.attn.wq`` -> ``blk.3.attn_q.weight``)."""
    if name == "embed":
        return "token_embd.weight"
    if name == "head":
        return "output.weight"
    if name == "final_norm.gain":
        return "output_norm.weight"
    if name in ("exit_gate.weight", "exit_gate.bias"):
        return name
    parts = name.split(".")
    if len(parts) >= 3 and parts[0] == "blocks" and parts[1].isdigit():
        layer, rest = parts[1], ".".join(parts[2:])
        if rest in _PROJECTIONS:
            return f"blk.{layer}.{_PROJECTIONS[rest]}.weight"
        if rest in _NORMS:
            return f"blk.{layer}.{_NORMS[rest]}.weight"
        if parts[2] in ("mhc_attn", "mhc_mlp") and len(parts) == 5:
            return f"blk.{layer}.{rest}"
    raise ValueError(f"parameter {name!r} has no GGUF name (unknown architecture?)")


def rope_permutation(n_heads: int, head_dim: int) -> np.ndarray:
    """Row order taking rotate-half Q/K rows to llama.cpp's adjacent-pair layout.

    ``new_rows = old_rows[perm]``: per head, new row ``2j`` is old row ``j`` and
    new row ``2j+1`` is old row ``j + head_dim/2``.
    """
    half = head_dim // 2
    within = np.stack([np.arange(half), np.arange(half) + half], axis=1).reshape(-1)
    return (np.arange(n_heads)[:, None] * head_dim + within[None, :]).reshape(-1)


# --------------------------------------------------------------------------- quantizers


def quantize_q8_0(w: np.ndarray) -> np.ndarray:
    """ggml's Q8_0 (blocks of 32: f16 scale max|x|/127, int8 round-half-away), byte-identical
    to ``gguf.quants.quantize``: ``(rows, cols)`` float32 -> ``(rows, cols/32*34)`` uint8."""
    w = np.ascontiguousarray(w, dtype=np.float32)
    if w.ndim != 2 or w.shape[1] % _Q8_BLOCK:
        raise ValueError(f"Q8_0 needs a 2-D array with a multiple of {_Q8_BLOCK} columns, got shape {w.shape}")
    blocks = w.reshape(-1, _Q8_BLOCK)
    d = np.abs(blocks).max(axis=1, keepdims=True) / np.float32(127)
    with np.errstate(divide="ignore"):
        inv = np.where(d == 0, np.float32(0), np.float32(1) / d)
    scaled = blocks * inv
    q = (np.sign(scaled) * np.floor(np.abs(scaled) + np.float32(0.5))).astype(np.int8)
    out = np.concatenate([d.astype(np.float16).view(np.uint8), q.view(np.uint8)], axis=1)
    return out.reshape(w.shape[0], -1)


def _ternarize(name: str, w: np.ndarray) -> tuple[np.ndarray, float]:
    """The training forward's trits and per-tensor scale (absmean, the codec's rule)."""
    trits, scales = codec.quantize(w, group_size=None)
    return trits, float(scales[0])


# --------------------------------------------------------------------------- tokenizer


def tokenizer_json_text(tokenizer: Any) -> str:
    """The HF ``tokenizer.json`` text of ``tokenizer``: a path, JSON text, or an object with
    ``to_json()`` (or ``save(path)``)."""
    if isinstance(tokenizer, (str, os.PathLike)):
        text = os.fspath(tokenizer)
        if text.lstrip().startswith("{"):
            return text
        try:
            with open(text, encoding="utf-8") as f:
                return f.read()
        except FileNotFoundError:
            raise FileNotFoundError(f"tokenizer file not found: {text}") from None
    to_json = getattr(tokenizer, "to_json", None)
    if callable(to_json):
        return str(to_json())
    save = getattr(tokenizer, "save", None)
    if callable(save):
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "tokenizer.json")
            save(path)
            with open(path, encoding="utf-8") as f:
                return f.read()
    raise TypeError(
        f"tokenizer must be a tokenizer.json path, its JSON text, or an object with to_json(); got {type(tokenizer).__name__}"
    )


def _parse_tokenizer(text: str) -> dict[str, Any]:
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"tokenizer JSON is not valid JSON: {e}") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("model"), dict):
        raise ValueError("tokenizer JSON has no 'model' object (not an HF tokenizer.json)")
    return spec


def _mentions_byte_level(node: Any) -> bool:
    if isinstance(node, dict):
        return node.get("type") == "ByteLevel" or any(_mentions_byte_level(v) for v in node.values())
    if isinstance(node, list):
        return any(_mentions_byte_level(v) for v in node)
    return False


def gguf_tokenizer_metadata(text: str, vocab_size: int, bos_token_id: int | None = None) -> dict[str, Any]:
    """``tokenizer.ggml.*`` values for a byte-level BPE ``tokenizer.json``, as llama.cpp reads them.

    Returns ``tokens`` (padded with ``[PAD{i}]`` UNUSED entries up to the model's
    ``vocab_size``, as ``convert_hf_to_gguf`` does), ``merges``, ``token_type``
    (special added tokens CONTROL, other added tokens USER_DEFINED, the rest
    NORMAL) and ``eos_id`` (``bos_token_id``, else ``<|endoftext|>``: the document token, BOS and
    EOS at once). ValueError for a tokenizer that isn't byte-level BPE, has no document token or
    has more tokens than the model.
    """
    spec = _parse_tokenizer(text)
    model = spec["model"]
    if model.get("type") != "BPE":
        raise ValueError(f"only BPE tokenizers can be written to GGUF, got model type {model.get('type')!r}")
    if not _mentions_byte_level(spec.get("decoder")) and not _mentions_byte_level(spec.get("pre_tokenizer")):
        raise ValueError("only byte-level BPE tokenizers (GPT-2 style, ByteLevel decoder) can be written to GGUF")
    by_id: dict[int, str] = {}
    for token, index in dict(model.get("vocab") or {}).items():
        by_id[int(index)] = token
    types: dict[int, int] = {}
    for added in spec.get("added_tokens") or []:
        index = int(added["id"])
        by_id[index] = added["content"]
        types[index] = _TOKEN_CONTROL if added.get("special", False) else _TOKEN_USER_DEFINED
    if not by_id:
        raise ValueError("tokenizer has an empty vocabulary")
    n_tokens = max(by_id) + 1
    if n_tokens > vocab_size:
        raise ValueError(f"tokenizer has {n_tokens} tokens but the model's vocab_size is {vocab_size} (mismatched tokenizer)")
    tokens, token_type = [], []
    for index in range(vocab_size):
        if index in by_id:
            tokens.append(by_id[index])
            token_type.append(types.get(index, _TOKEN_NORMAL))
        else:
            tokens.append(f"[PAD{index}]")
            token_type.append(_TOKEN_UNUSED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    return {"tokens": tokens, "merges": merges, "token_type": token_type, "eos_id": _document_token(text, bos_token_id, vocab_size)}


def _document_token(text: str, bos_id: int | None, vocab_size: int) -> int:
    """The id that starts (and ends) every training document: ``bos_id`` when the caller knows it
    (the data's meta.json), else the tokenizer's ``<|endoftext|>``."""
    if bos_id is not None:
        if isinstance(bos_id, bool) or not isinstance(bos_id, (int, np.integer)) or not 0 <= int(bos_id) < vocab_size:
            raise ValueError(f"bos_token_id must be a token id in 0..{vocab_size - 1}, got {bos_id!r}")
        return int(bos_id)
    spec = _parse_tokenizer(text)
    for added in spec.get("added_tokens") or []:
        if added.get("content") == EOS_TOKEN:
            return int(added["id"])
    vocab = spec["model"].get("vocab") or {}
    if EOS_TOKEN in vocab:
        return int(vocab[EOS_TOKEN])
    raise ValueError(
        f"tokenizer has no {EOS_TOKEN!r} token; pass the id every training document starts with as bos_token_id"
    )


def _check_tokenizer_fits(text: str, vocab_size: int, bos_id: int | None = None) -> int:
    """Checks the tokenizer against the model's vocab; returns the BOS (= EOS) id."""
    spec = _parse_tokenizer(text)
    ids = [int(i) for i in (spec["model"].get("vocab") or {}).values()]
    ids += [int(a["id"]) for a in spec.get("added_tokens") or []]
    if ids and max(ids) >= vocab_size:
        raise ValueError(f"tokenizer has ids up to {max(ids)} but the model's vocab_size is {vocab_size} (mismatched tokenizer)")
    return _document_token(text, bos_id, vocab_size)


def _token_text(text: str, token_id: int) -> str | None:
    spec = _parse_tokenizer(text)
    for added in spec.get("added_tokens") or []:
        if int(added["id"]) == token_id:
            return str(added["content"])
    for token, index in (spec["model"].get("vocab") or {}).items():
        if int(index) == token_id:
            return str(token)
    return None


def gguf_export_problems(config: ModelConfig) -> list[str]:
    """Why ``config`` can't be written as GGUF TQ2_0/TQ1_0 (empty when it can): the input
    dimension of every ternary projection must be a multiple of 256, and the model ternary."""
    problems = []
    if not config.ternary:
        problems.append("it was trained without ternary quantization (ternary=false)")
    for name, value in (("dim", config.dim), ("ffn_hidden", config.ffn_hidden)):
        if value % codec.BLOCK:
            problems.append(f"{name}={value} is not a multiple of {codec.BLOCK}")
    return problems


# --------------------------------------------------------------------------- parameters


def _float_parameters(model: ExportableModel) -> dict[str, np.ndarray]:
    params = model.named_parameters()
    return {name: t.detach().to("cpu", torch.float32).contiguous().numpy() for name, t in params.items()}


def _check_parameters(config: ModelConfig, params: Mapping[str, np.ndarray]) -> None:
    if not config.ternary:
        raise ValueError(
            "this model was trained without ternary quantization (config ternary=false): its "
            "full-precision projections have no lossless ternary export"
        )
    expected = {"embed", "final_norm.gain"} | ({"head"} if not config.tie_embeddings else set())
    if config.loop and config.loop.get("exit_gate"):
        expected |= {"exit_gate.weight", "exit_gate.bias"}
    for i in range(config.n_layers):
        names = ["attn.wq", "attn.wk", "attn.wv", "attn.wo", "mlp.up", "mlp.down", "attn_norm.gain", "mlp_norm.gain"]
        names += ["mlp.gate"] if config.ffn_activation == "swiglu" else []
        if config.mhc_streams > 1:
            names += [f"{c}.{m}.{p}" for c in ("mhc_attn", "mhc_mlp") for m in ("res", "pre", "post") for p in ("weight", "alpha", "bias")]
        expected |= {f"blocks.{i}.{n}" for n in names}
    missing, extra = sorted(expected - set(params)), sorted(set(params) - expected)
    if missing or extra:
        raise ValueError(f"model parameters don't match its config: missing {missing[:5]}, unexpected {extra[:5]}")
    for name, value in params.items():
        if not np.all(np.isfinite(value)):
            raise ValueError(f"parameter {name!r} has NaN or Inf values")


# --------------------------------------------------------------------------- GGUF


def export_gguf(
    model: ExportableModel,
    tokenizer: Any,
    path: str | os.PathLike[str],
    weight_type: WeightType = "TQ2_0",
    head_type: HeadType = "Q8_0",
    embed_type: EmbedType = "F32",
    arch: str | None = None,
    generation_config: Mapping[str, Any] | None = None,
    bos_token_id: int | None = None,
) -> Path:
    """Write ``model`` + ``tokenizer`` as a GGUF v3 file (atomically); returns the path.

    ``bos_token_id``: the token every training document starts with (the data's ``bos_id``;
    default: the tokenizer's ``<|endoftext|>``), written as BOS and EOS with
    ``add_bos_token = true``.

    ``weight_type``: TQ2_0 (default, 2.0625 bits/weight) or TQ1_0 (1.6875) for
    the ternary projections; their input dimension must be a multiple of 256.
    ``head_type``: Q8_0 (default, int8 blocks of 32), F16 or F32 for
    ``output.weight`` (written even for tied embeddings). ``arch``: None picks
    ``llama`` for llama-shaped models, else ``nanochat-ternary``; asking for
    ``llama`` on a model with mHC or ReLU² raises ValueError.
    """
    config = model.config
    weight_type = str(weight_type).upper()  # type: ignore[assignment]
    head_type = str(head_type).upper()  # type: ignore[assignment]
    embed_type = str(embed_type).upper()  # type: ignore[assignment]
    if weight_type not in _FILE_TYPE:
        raise ValueError(f"weight_type must be 'TQ2_0' or 'TQ1_0', got {weight_type!r}")
    if head_type not in ("Q8_0", "F16", "F32"):
        raise ValueError(f"head_type must be 'Q8_0', 'F16' or 'F32', got {head_type!r}")
    if embed_type not in ("F32", "F16"):
        raise ValueError(f"embed_type must be 'F32' or 'F16', got {embed_type!r}")
    natural = gguf_architecture(config)
    arch = natural if arch is None else arch
    if arch not in ("llama", NCT_ARCHITECTURE, LOOP_ARCHITECTURE):
        raise ValueError(f"unknown architecture {arch!r}; expected 'llama', {NCT_ARCHITECTURE!r} or {LOOP_ARCHITECTURE!r}")
    if (arch == LOOP_ARCHITECTURE) != (natural == LOOP_ARCHITECTURE):
        raise ValueError(
            f"arch={arch!r} does not fit this model (loops={config.loops}): a LoopLM model is written as "
            f"{LOOP_ARCHITECTURE!r} and only a LoopLM model is"
        )
    if arch == "llama" and natural != "llama":
        raise ValueError(
            f"arch='llama' needs a llama-shaped model (mhc_streams=1, swiglu); this one has "
            f"mhc_streams={config.mhc_streams}, ffn_activation={config.ffn_activation!r}"
        )
    problems = [p for p in gguf_export_problems(config) if "ternary" not in p]
    if problems:
        raise ValueError(
            f"{config.name or 'this model'} can't be stored as {weight_type}: {'; '.join(problems)} (GGUF's "
            f"ternary blocks hold 256 weights of a row). Export an HF directory instead: --format hf on the "
            f"command line, export_hf() in Python"
        )
    text = tokenizer_json_text(tokenizer)
    tok = gguf_tokenizer_metadata(text, config.vocab_size, bos_token_id)
    bos = tok["eos_id"]
    params = _float_parameters(model)
    _check_parameters(config, params)

    w = GGUFWriter(path, arch=arch)
    w.add_string("general.name", config.name or "nanochat-ternary")
    w.add_uint32("general.file_type", _FILE_TYPE[weight_type])
    w.add_uint32("general.quantization_version", 2)
    w.add_string("nct.config", config.to_json())
    gen = {**DEFAULT_GENERATION_CONFIG, **check_generation_config(generation_config or {})}
    w.add_string("nct.generation_config", json.dumps(gen))
    w.add_uint32(f"{arch}.context_length", config.max_seq_len)
    w.add_uint32(f"{arch}.embedding_length", config.dim)
    w.add_uint32(f"{arch}.block_count", config.n_layers)
    w.add_uint32(f"{arch}.feed_forward_length", config.ffn_hidden)
    w.add_uint32(f"{arch}.attention.head_count", config.n_heads)
    w.add_uint32(f"{arch}.attention.head_count_kv", config.n_kv_heads)
    w.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", config.norm_eps)
    w.add_float32(f"{arch}.rope.freq_base", config.rope_theta)
    w.add_uint32(f"{arch}.rope.dimension_count", config.head_dim)
    w.add_uint32(f"{arch}.vocab_size", config.vocab_size)
    if arch != "llama":
        w.add_uint32(f"{arch}.mhc.streams", config.mhc_streams)
        w.add_string(f"{arch}.ffn_activation", config.ffn_activation)
    if arch == LOOP_ARCHITECTURE and config.loop is not None:
        w.add_uint32(f"{arch}.loop.count", config.loops)
        w.add_bool(f"{arch}.loop.exit_gate", bool(config.loop.get("exit_gate", False)))
        w.add_float32(f"{arch}.loop.exit_threshold", float(config.loop.get("exit_threshold", 1.0)))
    w.add_string("tokenizer.ggml.model", "gpt2")
    w.add_string("tokenizer.ggml.pre", "gpt-2")
    w.add_array("tokenizer.ggml.tokens", tok["tokens"], GGUFValueType.STRING)
    w.add_array("tokenizer.ggml.token_type", tok["token_type"], GGUFValueType.INT32)
    w.add_array("tokenizer.ggml.merges", tok["merges"], GGUFValueType.STRING)
    # Training saw [bos] + document: llama.cpp must put the BOS token before a text prompt too.
    w.add_uint32("tokenizer.ggml.bos_token_id", bos)
    w.add_uint32("tokenizer.ggml.eos_token_id", bos)
    w.add_bool("tokenizer.ggml.add_bos_token", True)
    w.add_bool("tokenizer.ggml.add_eos_token", False)
    w.add_string("tokenizer.huggingface.json", text)

    embed = params["embed"]
    w.add_tensor("token_embd.weight", embed.astype(np.float16) if embed_type == "F16" else embed, embed_type)
    head = params["embed"] if config.tie_embeddings else params["head"]
    if head_type == "Q8_0":
        if head.shape[1] % _Q8_BLOCK:
            raise ValueError(f"Q8_0 head needs dim to be a multiple of {_Q8_BLOCK} (dim={head.shape[1]}); use head_type='F16'")
        w.add_tensor("output.weight", quantize_q8_0(head), "Q8_0", shape=head.shape)
    else:
        w.add_tensor("output.weight", head.astype(np.float16) if head_type == "F16" else head, head_type)
    w.add_tensor("output_norm.weight", params["final_norm.gain"], "F32")
    q_perm = rope_permutation(config.n_heads, config.head_dim)
    k_perm = rope_permutation(config.n_kv_heads, config.head_dim)
    for name in sorted(params, key=_block_order):
        if name in ("embed", "head", "final_norm.gain"):
            continue
        value = params[name]
        gguf_name = gguf_tensor_name(name)
        if not is_ternary_parameter(name):
            w.add_tensor(gguf_name, value, "F32")
            continue
        trits, scale = _ternarize(name, value)
        if name.endswith("attn.wq"):
            trits = trits[q_perm]
        elif name.endswith("attn.wk"):
            trits = trits[k_perm]
        trits = np.ascontiguousarray(trits)
        blocks = codec.pack(trits, weight_type.lower(), scales=np.array([scale], np.float32), group_size=None)  # type: ignore[arg-type]
        w.add_tensor(gguf_name, blocks, weight_type, shape=trits.shape)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    w.write()
    return out


def _block_order(name: str) -> tuple[int, str]:
    parts = name.split(".")
    return (int(parts[1]), name) if parts[0] == "blocks" else (-1, name)


# --------------------------------------------------------------------------- HF directory


def hf_config(config: ModelConfig) -> dict[str, Any]:
    """``config.json``: the ModelConfig plus the HF architecture and quantization records."""
    values = json.loads(config.to_json())
    values["architectures"] = [HF_LOOP_ARCHITECTURE if config.loops > 1 else HF_ARCHITECTURE]
    values["model_type"] = HF_MODEL_TYPE
    values["quantization"] = {"format": CHECKPOINT_FORMAT, "weights": "ternary-absmean", "packing": "packed2"}
    return values


def gguf_model_config(path: str | os.PathLike[str]) -> ModelConfig:
    """The model config one of our GGUF exports carries (``nct.config``)."""
    from .gguf import GGUFReader

    try:
        reader = GGUFReader(path)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e
    if "nct.config" not in reader.metadata:
        raise ValueError(f"{path}: no nct.config metadata; only this package's GGUF exports can start training")
    return ModelConfig.from_dict(json.loads(reader.metadata["nct.config"]))


def load_gguf_weights(trainer: Any, path: str | os.PathLike[str]) -> None:
    """Sets a ``_core.QatTrainer``'s latent weights to the model of one of our GGUF exports, so
    training (RL, fine-tuning, continued pretraining) can start from a model that ships without its
    trainer checkpoint. Each projection's latent weights are its trits times s / f, s its stored
    scale and f its fraction of nonzero trits, so absmean ternarization gives back exactly those
    trits and that scale (the export of the untouched trainer is the same model); the Q/K row
    permutation of the export is undone; embeddings, norms and an untied head are read as float
    (a Q8_0 head dequantized). Optimizer moments are not in the file: they start at zero."""
    import torch

    from . import codec
    from .gguf import GGUFReader

    reader = GGUFReader(path)
    model = gguf_model_config(path)
    q_perm = rope_permutation(model.n_heads, model.head_dim)
    k_perm = rope_permutation(model.n_kv_heads, model.head_dim)
    with torch.no_grad():
        for name, target in trainer.named_parameters():
            gname = "token_embd.weight" if name == "embed" else gguf_tensor_name(name)
            try:
                info = reader.tensor_info(gname)
            except KeyError as e:
                raise ValueError(f"{path}: no tensor {gname}: not an export of this model shape") from e
            if is_ternary_parameter(name):
                trits, scales = codec.unpack(reader.tensor_bytes(gname), info.shape, info.ggml_type.lower())
                if scales is None or not np.all(scales == scales[0]):
                    raise ValueError(f"{path}: {gname} has per-block scales; the trainer ternarizes per tensor")
                value = np.empty_like(trits)
                perm = q_perm if name.endswith("attn.wq") else k_perm if name.endswith("attn.wk") else None
                if perm is not None:
                    value[perm] = trits
                else:
                    value = trits
                nonzero = float(np.count_nonzero(value)) / value.size
                latent = value.astype(np.float32) * np.float32(scales[0] / max(nonzero, 1e-12))
            else:
                latent = np.asarray(reader.tensor(gname), dtype=np.float32)
            if tuple(latent.shape) != tuple(target.shape):
                raise ValueError(f"{path}: {gname} has shape {latent.shape}, the model expects {tuple(target.shape)}")
            target.copy_(torch.from_numpy(np.ascontiguousarray(latent)).to(target.device))


def export_hf(
    model: ExportableModel,
    tokenizer: Any,
    directory: str | os.PathLike[str],
    generation_config: Mapping[str, Any] | None = None,
    bos_token_id: int | None = None,
) -> Path:
    """Write an HF-style directory: ``config.json``, ``model.safetensors`` (ternary projections as
    packed 2-bit codes + float32 scale, training names and layout; everything else F32),
    ``tokenizer.json``, ``tokenizer_config.json`` (BOS/EOS and ``add_bos_token``, as HF
    tokenizers record them) and ``generation_config.json``. Returns the directory.
    ``bos_token_id`` as in :func:`export_gguf`.

    A new directory is built in a temporary sibling and renamed into place, so
    it appears complete or not at all; into an existing directory each file is
    replaced atomically.
    """
    config = model.config
    text = tokenizer_json_text(tokenizer)
    _parse_tokenizer(text)
    eos = _check_tokenizer_fits(text, config.vocab_size, bos_token_id)
    params = _float_parameters(model)
    _check_parameters(config, params)
    tensors: dict[str, Any] = {}
    for name, value in params.items():
        if is_ternary_parameter(name):
            trits, scale = _ternarize(name, value)
            tensors[name] = checkpoint.TernaryTensor(trits, np.array([scale], np.float32), None)
        else:
            tensors[name] = value
    generation = {"bos_token_id": eos, "eos_token_id": eos, **DEFAULT_GENERATION_CONFIG,
                  **check_generation_config(generation_config or {})}
    token = _token_text(text, eos)
    tokenizer_config = {"add_bos_token": True, "add_eos_token": False, "bos_token": token, "eos_token": token}

    target = Path(directory)
    if target.exists() and not target.is_dir():
        raise ValueError(f"{target} exists and is not a directory")
    target.parent.mkdir(parents=True, exist_ok=True)
    fresh = not target.exists()
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent)) if fresh else target
    try:
        if fresh:
            os.chmod(work, 0o755)  # mkdtemp makes it private; the export is an ordinary directory
        checkpoint.save(work / "model.safetensors", tensors, {"format": CHECKPOINT_FORMAT, "config": config.to_json()})
        _atomic.write_text(work / "tokenizer.json", text)
        _atomic.write_json(work / "tokenizer_config.json", tokenizer_config)
        _atomic.write_json(work / "generation_config.json", generation)
        _atomic.write_json(work / "config.json", hf_config(config))  # last: its presence marks a complete export
        if fresh:
            os.replace(work, target)
    finally:
        if fresh and work.exists():
            shutil.rmtree(work, ignore_errors=True)
    return target


# --------------------------------------------------------------------------- checkpoints and CLI


def _checkpoint_path(checkpoint_path: str | os.PathLike[str]) -> Path:
    from .train import resolve_checkpoint

    return resolve_checkpoint(checkpoint_path)


def _trainer_state(path: Path) -> dict[str, Any]:
    """The trainer's state record in a checkpoint's safetensors header (no tensor is read)."""
    try:
        with open(path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            if not 0 < size <= 100_000_000:
                raise ValueError
            header = json.loads(f.read(size))
        return json.loads(header["__metadata__"]["trainer"])
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise ValueError(f"{path} is not a trainer checkpoint (no readable trainer state in its header)") from None


def run_tokenizer(checkpoint_path: str | os.PathLike[str]) -> tuple[Path, int]:
    """The ``tokenizer.json`` and BOS id a trainer run was trained with: from the data directory
    its checkpoint records (``checkpoint_path``: a ``ckpt-*.safetensors`` file or a run directory).
    FileNotFoundError when the run recorded no data directory or it is gone; ValueError when the
    directory's tokenizer is not the one its shards were made with."""
    from .data.shards import read_meta, sha256_file

    path = _checkpoint_path(checkpoint_path)
    state = _trainer_state(path)
    try:
        data_dir = json.loads(state["data_state"]).get("data_dir")
    except (KeyError, TypeError, ValueError, AttributeError):
        data_dir = None
    if not data_dir:
        raise FileNotFoundError(f"{path}: the run recorded no data directory; name the tokenizer with --tokenizer")
    data = Path(data_dir)
    tokenizer = data / "tokenizer.json"
    if not tokenizer.is_file():
        raise FileNotFoundError(f"{path} was trained on {data}, which has no tokenizer.json any more; name it with --tokenizer")
    meta = read_meta(data)
    expected = meta.get("tokenizer_sha256")
    if expected and sha256_file(tokenizer) != expected:
        raise ValueError(f"{tokenizer} is not the tokenizer {data}'s shards were made with (sha256 differs)")
    return tokenizer, int(meta["bos_id"])


def export_checkpoint(
    checkpoint_path: str | os.PathLike[str],
    tokenizer: Any = None,
    out: str | os.PathLike[str] | None = None,
    format: Literal["gguf", "hf"] = "gguf",
    **options: Any,
) -> Path:
    """Export a trainer checkpoint (``ckpt-*.safetensors``, or a run directory: its newest
    checkpoint) to a GGUF file (``format="gguf"``; ``options`` as :func:`export_gguf`) or an HF
    directory (``format="hf"``). ``tokenizer`` None: the run's own (:func:`run_tokenizer`), with
    the data's BOS id."""
    from .qat import QatModel

    if out is None:
        raise ValueError("out (the .gguf file or HF directory to write) is required")
    if format not in ("gguf", "hf"):
        raise ValueError(f"format must be 'gguf' or 'hf', got {format!r}")
    path = _checkpoint_path(checkpoint_path)
    if tokenizer is None:
        tokenizer, bos = run_tokenizer(path)
        options.setdefault("bos_token_id", bos)
    model = QatModel.from_checkpoint(path)
    if format == "gguf":
        return export_gguf(model, tokenizer, out, **options)
    return export_hf(model, tokenizer, out, **options)


def main(argv: list[str] | None = None) -> int:
    import argparse
    import sys

    p = argparse.ArgumentParser(prog="python -m nanochat_ternary.export", description="Export a trainer checkpoint.")
    p.add_argument("checkpoint", help="ckpt-*.safetensors file or a run directory (its newest checkpoint)")
    p.add_argument("--tokenizer", help="tokenizer.json (default: the one of the data the run was trained on)")
    p.add_argument("--out", required=True, help="output .gguf file or HF directory")
    p.add_argument("--format", choices=["gguf", "hf"], default="gguf")
    p.add_argument("--weight-type", choices=["TQ2_0", "TQ1_0"], default="TQ2_0")
    p.add_argument("--head-type", choices=["Q8_0", "F16", "F32"], default="Q8_0")
    p.add_argument("--generation-config", metavar="JSON",
                   help="file with the sampling defaults generate() uses when the caller sets none "
                        "(keys max_new_tokens, do_sample, temperature, top_k, top_p, min_p, repetition_penalty)")
    args = p.parse_args(argv)
    options: dict[str, Any] = {"weight_type": args.weight_type, "head_type": args.head_type} if args.format == "gguf" else {}
    try:
        if args.generation_config is not None:
            try:
                loaded = json.loads(Path(args.generation_config).read_text(encoding="utf-8"))
            except json.JSONDecodeError as e:
                raise ValueError(f"{args.generation_config} is not valid JSON: {e}") from None
            options["generation_config"] = loaded  # checked by the export itself
        path = _checkpoint_path(args.checkpoint)
        if args.format == "gguf":
            from .model_config import ModelConfig

            config = ModelConfig.from_dict(_trainer_state(path)["model"])
            problems = gguf_export_problems(config)
            if problems:
                print(
                    f"error: {path} can't be exported as GGUF: {'; '.join(problems)}. "
                    + ("Use --format hf for an HF directory." if config.ternary else "It has no ternary export."),
                    file=sys.stderr,
                )
                return 1
        out = export_checkpoint(path, args.tokenizer, args.out, format=args.format, **options)
    except (ValueError, TypeError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
