"""The ternary transformer with quantization-aware training, run by the Rust
core on libtorch (`rust/train`). Every projection inside the blocks is a
BitLinear: absmean ternary weights and int8 per-token activations in the
forward pass, straight-through gradients in the backward pass.
"""

from __future__ import annotations

import json
import os

import torch

from . import _core
from .model_config import ModelConfig


class QatModel:
    """A model built from a `ModelConfig` (or a preset name), its parameters
    owned by Rust. Tensors are shared with Rust, not copied."""

    def __init__(self, config: ModelConfig | str, seed: int = 0, device: str = "cpu") -> None:
        if isinstance(config, str):
            config = ModelConfig.preset(config)
        self.config: ModelConfig = config
        self._model = _core.QatModel(config.to_json(), seed, device)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike[str], device: str = "cpu") -> QatModel:
        """The weights of a trainer checkpoint (`ckpt-*.safetensors` written by
        `nanochat_ternary.train`), CRC verified; ValueError names what is wrong."""
        model = cls.__new__(cls)
        model._model = _core.QatModel.from_checkpoint(os.fspath(path), device)
        model.config = ModelConfig.from_dict(json.loads(model._model.config_json()))
        return model

    @property
    def param_count(self) -> int:
        return self._model.param_count

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits (B, T, vocab) for int64 token ids (B, T); no autograd."""
        return self._model.forward(tokens)

    def loop_logits(self, tokens: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """LoopLM: the logits (B, T, vocab) of every loop's readout and the exit gate's
        lambda (B, T) after every loop (empty without a gate); no autograd. `forward` is
        the last loop's logits (the full depth)."""
        logits, lambdas = self._model.loop_logits(tokens)
        return list(logits), list(lambdas)

    def residual_maps(self, tokens: torch.Tensor) -> list[torch.Tensor]:
        """mHC-lite: every sub-layer's residual map H_res (B, T, n, n) in the order the forward
        applies them (empty for a plain residual); no autograd."""
        return list(self._model.residual_maps(tokens))

    def loss(self, tokens: torch.Tensor, targets: torch.Tensor) -> float:
        """Mean next-token cross-entropy; `targets` has the shape of `tokens`."""
        return self._model.loss(tokens, targets)

    def named_parameters(self) -> dict[str, torch.Tensor]:
        """Parameters by name (e.g. `blocks.0.attn.wq`); writing into them
        under `torch.no_grad()` changes the model."""
        return dict(self._model.named_parameters())
