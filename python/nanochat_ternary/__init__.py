"""nanochat-ternary: train and run 1.58-bit ternary language models with a Rust core.

Modules: `codec` (absmean quantization, TQ2_0/TQ1_0/packed2 codes), `gguf`
(GGUF v3 reader/writer), `checkpoint` (safetensors with packed ternary
weights), `mhc` (mHC-lite residual math), `kernels` (ternary x int8
GEMV/GEMM), `model_config` + `qat` (the QAT transformer on libtorch), `data`
(tokenizer training and token shards), `train` (the QAT trainer), `export`
(GGUF and HF-directory export), `model` (`TernaryModel`: the torch-free engine
with `from_pretrained` / `generate`), `hub` + `zoo` (where models come from),
`eval` (compile rate, HumanEval-Rust, held-out loss).

`TernaryModel`, `Tokenizer` and `Trainer` are imported on first use, so that
`python -m nanochat_ternary.train` (or `.export`, `.generate`) does not find its
own module already imported by the package.

The compiled extension links libtorch, so torch is imported first: the dynamic
loader then resolves the extension's libtorch symbols to the copy torch loaded.
"""

import torch as _torch  # noqa: F401  (must precede the extension import)

from . import _core, checkpoint, codec, gguf, kernels, mhc, model_config, qat
from ._core import __version__
from .checkpoint import TernaryTensor
from .codec import dequantize, pack, quantize, unpack
from .gguf import GGUFReader, GGUFWriter
from .model_config import ModelConfig
from .qat import QatModel

__all__ = [
    "__version__",
    "checkpoint",
    "codec",
    "gguf",
    "kernels",
    "mhc",
    "model_config",
    "qat",
    "ModelConfig",
    "QatModel",
    "TernaryTensor",
    "quantize",
    "dequantize",
    "pack",
    "unpack",
    "GGUFReader",
    "GGUFWriter",
    "TernaryModel",
    "Tokenizer",
    "Trainer",
]

_LAZY = {"TernaryModel": "model", "Tokenizer": "tokenizer", "Trainer": "train"}


def __getattr__(name: str):  # PEP 562: lazy exports
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
