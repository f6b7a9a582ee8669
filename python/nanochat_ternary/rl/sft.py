"""Warm start before RL: supervised fine-tuning on train-family references.

A policy that never passes a test gets no learning signal from binary rewards
(every group's advantage is 0). This step teaches the task format on the
*train* families only (the held-out families stay unseen): cross-entropy on the
completion tokens ``reference + "\\n}"`` after the prompt, which is exactly the
RL update with advantage 1 on every rollout (``_core.rl_step``), so it runs
through the same QAT model, STE and Muon + Lion.

    python -m nanochat_ternary.rl sft --model python/nanochat_ternary/models/rust-tiny/model.gguf \\
        --out runs/sft --steps 200 --batch 32
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .. import _core
from .loop import micro_batches, rollout_rows
from .rollouts import Policy, Rollout
from .tasks import STOP, Task


def sft(trainer: Any, policy: Policy, tasks: Sequence[Task], steps: int, batch: int, seed: int = 0,
        progress: bool = True) -> list[float]:  # fmt: skip
    """``steps`` updates of ``batch`` random tasks each; returns the per-step CE on completion tokens."""
    assert policy.model is not None
    rng = random.Random(f"sft/{seed}")
    context = policy.model.context_length
    encoded = []
    for t in tasks:
        prompt = policy.encode(t.prompt)
        completion = policy.model.encode(t.reference + STOP, add_bos=False, add_eos=False)
        if len(prompt) + len(completion) <= context + 1:
            encoded.append(Rollout(prompt, completion, "", True))
    if not encoded:
        raise ValueError("no task fits the context")
    losses = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=steps, desc="sft", unit="step")
    for _ in range(steps):
        chosen = [encoded[rng.randrange(len(encoded))] for _ in range(batch)]
        mbs = micro_batches(rollout_rows(chosen, [1.0] * len(chosen), context), batch)
        metrics = _core.rl_step(trainer, mbs)
        losses.append(-float(metrics["logprob"]))
        if bar is not None:
            bar.set_postfix(ce=f"{losses[-1]:.3f}")
            bar.update(1)
    if bar is not None:
        bar.close()
    return losses


def run_sft(model: str, tasks: Sequence[Task], out: str | os.PathLike[str], steps: int, batch: int,
            lr_muon: float, lr_lion: float, seed: int = 0, progress: bool = True) -> Path:  # fmt: skip
    """Fine-tunes ``model`` (GGUF export or trainer checkpoint) and writes ``out/sft.safetensors``
    (a trainer checkpoint), ``out/tokenizer.json``, ``out/sft.gguf`` and ``out/sft.json``."""
    from ..model import TernaryModel
    from .loop import RLConfig, trainer_from_checkpoint

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = RLConfig(steps=steps, lr_muon=lr_muon, lr_lion=lr_lion, seed=seed, warmup=min(10, steps))
    trainer = trainer_from_checkpoint(model, config)
    if Path(model).suffix == ".gguf":
        source = TernaryModel(model)
        tokenizer, bos = source.tokenizer, source.bos_token_id
    else:
        from ..export import run_tokenizer

        tok_path, bos = run_tokenizer(model)
        from ..tokenizer import Tokenizer

        tokenizer = Tokenizer.from_file(tok_path)
    tokenizer.save(out / "tokenizer.json")
    policy = Policy(trainer, tokenizer, bos)
    losses = sft(trainer, policy, tasks, steps, batch, seed, progress)
    trainer.save(os.fspath(out / "sft.safetensors"), json.dumps({"sft": {"steps": steps, "batch": batch}}))
    policy.sync()
    (out / "sft.gguf").write_bytes(policy.path.read_bytes())
    policy.close()
    summary = {"model": str(model), "tasks": len(tasks), "steps": steps, "batch": batch, "bos_token_id": bos,
               "ce_first": losses[0], "ce_last": sum(losses[-10:]) / len(losses[-10:])}  # fmt: skip
    (out / "sft.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    return out / "sft.safetensors"

