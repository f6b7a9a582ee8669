"""Model hyper-parameters of the ternary transformer.

Presets are JSON files shipped in `nanochat_ternary/configs/` (`tiny`, `d20`,
`nano-125m`, `nano-1b`); the Rust core embeds the same files and does all
validation, so Python and Rust can never disagree about what a config means.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from typing import Any, Literal

from . import _core

PRESETS: tuple[str, ...] = tuple(_core.train_preset_names())


@dataclass(frozen=True)
class ModelConfig:
    """A validated model config. Construct it with `preset`, `from_file`,
    `from_json` or `from_dict`; unknown keys and bad values raise ValueError
    naming the field."""

    vocab_size: int
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    ffn_hidden: int
    max_seq_len: int
    name: str = ""
    ffn_activation: Literal["swiglu", "relu2"] = "swiglu"
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    mhc_streams: int = 1
    # False: full-precision linear layers (the baseline measuring what ternary costs; not exportable).
    ternary: bool = True
    # LoopLM: {"loops": T, "exit_gate": bool, "entropy_weight": beta, "exit_threshold": (0, 1]};
    # None: the blocks run once.
    loop: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        # Validation lives in Rust (one source of truth); it raises ValueError.
        _core.train_validate_config(self.to_json())

    @classmethod
    def preset(cls, name: str) -> ModelConfig:
        """A shipped preset; ValueError lists the available names."""
        return cls.from_json(_core.train_preset_config(name))

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        """Parse and validate JSON text (defaults filled in for optional keys)."""
        return cls(**json.loads(_core.train_validate_config(text)))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelConfig:
        """Validate a plain dict (Rust reports unknown or missing keys)."""
        return cls.from_json(json.dumps(values))

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> ModelConfig:
        with open(path, encoding="utf-8") as f:
            return cls.from_json(f.read())

    def to_json(self) -> str:
        values = dataclasses.asdict(self)
        if values["loop"] is None:
            del values["loop"]  # as Rust writes it: configs without loops keep their old JSON
        return json.dumps(values, indent=2)

    @property
    def loops(self) -> int:
        """T, how many times the block stack runs (1 without a loop block)."""
        return int(self.loop["loops"]) if self.loop else 1

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def param_count(self) -> int:
        """Exact number of trainable parameters (embeddings, head if untied,
        ternary projections, norm gains, mHC maps)."""
        return _core.train_param_count(self.to_json())

