"""Rollouts through the Rust engine, and the weight sync after each update.

:class:`Policy` holds the engine copy of the policy. :meth:`Policy.sync`
exports the trainer's current weights with :func:`nanochat_ternary.export.export_gguf`
(the same ternarization, packing and file a user's export gets) into a file in
memory (``/dev/shm`` when it exists, else the temp directory) and reloads the
engine from it, so what samples is exactly what export + load would run.

:meth:`Policy.sample` draws N completions per prompt with the continuous-batching
scheduler (one batched forward per decode step for all running sequences), each
rollout seeded on its own. A rollout ends at ``"\\n}"`` (the function's closing
brace: the token that completes it is its last), at EOS, or at max tokens
(``finished`` False: scored 0 without compiling). Token ids are kept exactly as
sampled: the update trains on them, not on a re-tokenization.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .. import _core
from ..model import TernaryModel
from .tasks import STOP

_STOP_BYTES = STOP.encode()


@dataclasses.dataclass
class Rollout:
    prompt_ids: list[int]
    completion_ids: list[int]
    text: str
    finished: bool  # ended at the stop string or EOS, not at max tokens


class _Exportable:
    """What export needs from a trainer: config and latent weights by name."""

    def __init__(self, trainer: Any, config: Any) -> None:
        self._trainer = trainer
        self.config = config

    def named_parameters(self) -> dict[str, Any]:
        return dict(self._trainer.named_parameters())


def _memory_dir() -> str:
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()


class Policy:
    """The engine copy of a trainer's policy (see the module doc)."""

    def __init__(self, trainer: Any, tokenizer: Any, bos_token_id: int | None, *, max_batch: int = 64) -> None:
        from ..model_config import ModelConfig
        import json

        self.trainer = trainer
        self.tokenizer = tokenizer
        self.bos_token_id = bos_token_id
        self.max_batch = max_batch
        self.config = ModelConfig.from_dict(json.loads(trainer.config_json()))
        fd, name = tempfile.mkstemp(prefix="nct-rl-policy-", suffix=".gguf", dir=_memory_dir())
        os.close(fd)
        self.path = Path(name)
        self.model: TernaryModel | None = None
        self.sync_seconds = 0.0
        self.sync()

    @classmethod
    def from_model(cls, model: TernaryModel, *, max_batch: int = 64) -> Policy:
        """A fixed policy (no trainer, no sync) sampling from an already loaded model."""
        policy = cls.__new__(cls)
        policy.trainer = None
        policy.model = model
        policy.max_batch = max_batch
        policy.path = Path(model.path)
        policy.sync_seconds = 0.0
        return policy

    def sync(self) -> None:
        """Export the trainer's current weights (in memory) and reload the engine from them."""
        from ..export import export_gguf

        start = time.monotonic()
        export_gguf(_Exportable(self.trainer, self.config), self.tokenizer, self.path, bos_token_id=self.bos_token_id)
        self.model = TernaryModel(self.path, name="rl-policy", kv_cache="f32")
        self.sync_seconds = time.monotonic() - start

    def close(self) -> None:
        if self.trainer is not None:  # only the exported copy is ours to delete
            self.model = None
            self.path.unlink(missing_ok=True)

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def encode(self, prompt: str) -> list[int]:
        assert self.model is not None
        return self.model.encode(prompt, add_eos=False)

    def sample(
        self,
        prompts: Sequence[str],
        n: int,
        *,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int = 0,
    ) -> list[list[Rollout]]:
        """``n`` rollouts per prompt; rollout j of prompt i uses seed ``seed + i * n + j``."""
        model = self.model
        assert model is not None
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0 for sampling, got {temperature}")
        tokens = model._tokens  # the engine's tokenizer view (ids -> bytes)
        eos = model.eos_token_id
        stop_ids = [] if eos is None else [eos]
        scheduler = _core.Scheduler(model._engine, max_batch=self.max_batch)
        context = model.context_length
        out: list[list[Rollout]] = []
        live: dict[int, tuple[int, int, list[int], bytearray]] = {}
        for i, prompt in enumerate(prompts):
            ids = self.encode(prompt)
            budget = min(max_new_tokens, context - len(ids))
            if budget < 1:
                raise ValueError(f"prompt {i} is {len(ids)} tokens: no room to generate in a context of {context}")
            out.append([Rollout(ids, [], "", False) for _ in range(n)])
            for j in range(n):
                rid = scheduler.add(ids, budget, temperature=temperature, top_p=top_p, seed=seed + i * n + j,
                                    stop_ids=stop_ids)  # fmt: skip
                live[rid] = (i, j, [], bytearray())
        while live:
            for rid, new, finish, error in scheduler.step():
                if rid not in live:
                    continue
                i, j, got, text = live[rid]
                stopped = False
                for token, _, _ in new:
                    if token == eos:
                        stopped = True
                        break
                    got.append(int(token))
                    text.extend(tokens.token_bytes(int(token)))
                    if _STOP_BYTES in text:
                        stopped = True
                        break
                if stopped and finish is None:
                    scheduler.cancel(rid)
                if not stopped and finish == "stop" and error is None and eos is not None:
                    got.append(eos)  # the policy chose to end: train on that choice too
                if stopped or finish is not None:
                    r = out[i][j]
                    r.completion_ids = got
                    r.text = bytes(text).decode("utf-8", errors="replace")
                    r.finished = stopped or (finish == "stop" and error is None)
                    del live[rid]
        return out
