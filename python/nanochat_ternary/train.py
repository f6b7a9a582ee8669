"""Quantization-aware training of the ternary transformer.

Run:
    python -m nanochat_ternary.train --config tiny --data DATA_DIR --out runs/tiny --steps 300
    python -m nanochat_ternary.train --out runs/tiny --resume        # continue that run
    python -m nanochat_ternary.train --out runs/tiny-d --branch-from runs/tiny --decay-steps 50  # decay it now
    python -m nanochat_ternary.train --init-from MODEL.gguf --data DATA_DIR --out runs/more --steps 1000
                                     # a new run from one of our GGUF exports (e.g. a zoo model)

Python:
    from nanochat_ternary.train import Trainer
    trainer = Trainer("tiny", "DATA_DIR", "runs/tiny", steps=300)
    trainer.fit()
    trainer = Trainer.resume("runs/tiny")

The optimizer step runs in Rust (`rust/train/src/trainer.rs`): Muon for the
2-D block projections, Lion for embeddings, head, norm gains and mHC maps,
warmup-stable-decay learning rates, gradient accumulation and clipping,
optional entropy regularization (loss = CE - w*H), each projection ternarized
once per step. This module feeds it sequential windows of a token data
directory (`nanochat_ternary.data`), logs, evaluates and checkpoints:

    OUT/ckpt-00000100.safetensors   weights, optimizer moments, step, config and
                                    the data position (exact resume), CRC-checked
    OUT/latest                      name of the newest checkpoint (atomic)
    OUT/log.jsonl                   one JSON object per logged step / evaluation,
                                    each with its wall-clock "time" (Unix seconds)

On CPU a resumed run reproduces the uninterrupted run's losses bit for bit when
both use the same thread count (`--threads`): libtorch's reductions depend on it.

Distillation (`--teacher CKPT|RUN_DIR`): the objective becomes
alpha*CE + (1 - alpha)*T^2*KL(softmax(z_teacher/T) || softmax(z_student/T)), the
teacher (a trainer checkpoint of the same vocabulary and tokenizer, ternary or
full precision) run without gradients on the same batch.

Data parallel: under `torchrun --nproc-per-node N -m nanochat_ternary.train ...`
every rank reads its own rows of each global batch (`--batch-size` is the
global micro-batch, split over the ranks), the gradients are all-reduced
through torch.distributed (`nanochat_ternary.distributed`) and rank 0 alone
logs, evaluates and checkpoints. A checkpoint resumes under any world size
that divides the batch size.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import _atomic, _core
from . import distributed as ddp
from .data.shards import TokenShards, sha256_file
from .model_config import PRESETS, ModelConfig
from .qat import QatModel

CHECKPOINT_PREFIX = "ckpt-"
CHECKPOINT_SUFFIX = ".safetensors"
LATEST = "latest"
LOG_FILE = "log.jsonl"

#: Optimization hyper-parameters understood by the Rust trainer, with defaults.
DEFAULT_HYPER: dict[str, Any] = json.loads(_core.train_default_hyper())
#: Loop settings saved with each checkpoint so a resumed run continues identically.
DEFAULT_LOOP: dict[str, Any] = {
    "batch_size": 8,
    "seq_len": None,  # None: min(256, max_seq_len)
    "grad_accum": 1,
    "eval_every": 100,
    "eval_batches": 8,
    "save_every": 100,
    "keep": 3,
    "log_every": 10,
    "teacher": None,  # path of the teacher checkpoint when distilling
    "distill_alpha": 0.5,  # alpha in alpha*CE + (1 - alpha)*T^2*KL (with a teacher)
    "distill_temperature": 2.0,  # T (with a teacher)
}


class TokenBatches:
    """Sequential (tokens, targets) batches from one split: each row is the
    next `seq_len + 1` tokens of the stream (targets are tokens shifted by
    one). At the end of the split it wraps to the start and counts an epoch.
    `state()` / `load_state()` capture the position exactly.

    Data parallel: with `world` ranks, `batch_size` is the global batch and
    rank `rank` reads only its `batch_size / world` rows of each window; the
    position (the same on every rank) is global."""

    def __init__(self, shards: TokenShards, batch_size: int, seq_len: int, *, rank: int = 0, world: int = 1) -> None:
        if batch_size % world:
            raise ValueError(
                f"batch size {batch_size} does not split over {world} data-parallel ranks; "
                f"use a multiple of {world}"
            )
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} outside world size {world}")
        self.shards, self.batch_size, self.seq_len = shards, batch_size, seq_len
        self.rank, self.world = rank, world
        self.rows = batch_size // world
        self.window = batch_size * (seq_len + 1)
        if self.window > shards.tokens:
            raise ValueError(
                f"split {shards.split!r} of {shards.directory} has {shards.tokens} tokens, fewer than one batch "
                f"({batch_size} x {seq_len + 1}); lower --batch-size or --seq-len"
            )
        self.position = 0
        self.epoch = 0

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.position + self.window > self.shards.tokens:
            self.position, self.epoch = 0, self.epoch + 1
        span = self.rows * (self.seq_len + 1)
        rows = self.shards.read(self.position + self.rank * span, span).reshape(self.rows, self.seq_len + 1)
        self.position += self.window
        rows_t = torch.from_numpy(np.ascontiguousarray(rows))
        return rows_t[:, :-1].contiguous(), rows_t[:, 1:].contiguous()

    def state(self) -> dict[str, int]:
        return {"position": self.position, "epoch": self.epoch}

    def load_state(self, state: dict[str, int]) -> None:
        position, epoch = int(state["position"]), int(state["epoch"])
        if not 0 <= position <= self.shards.tokens:
            raise ValueError(f"saved data position {position} is outside the split ({self.shards.tokens} tokens)")
        self.position, self.epoch = position, epoch


def compute_params(config: ModelConfig) -> int:
    """Parameters a token's forward multiplies by (6x this = training FLOPs per token): every
    parameter once, plus a LoopLM model's shared blocks once more per extra loop and, with an exit
    gate, the LM head once more per extra loop (every loop's readout is scored)."""
    c = config
    kv = c.n_kv_heads * c.head_dim
    ffn = 3 if c.ffn_activation == "swiglu" else 2
    blocks = c.n_layers * (2 * c.dim * c.dim + 2 * c.dim * kv + ffn * c.dim * c.ffn_hidden)
    extra = (c.loops - 1) * blocks
    if c.loop and c.loop.get("exit_gate"):
        extra += (c.loops - 1) * c.vocab_size * c.dim
    return c.param_count + extra


def _matmul_rate(device: str, dtype: torch.dtype, n: int, reps: int) -> float:
    """FLOP/s of `reps` square n x n products in `dtype` on `device` (after one warmup)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b  # warm up
    if device != "cpu":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    if device != "cpu":
        torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - start)


def measured_peak_flops(device: str) -> float:
    """A quick measured matmul rate in FLOP/s, the MFU denominator when no --peak-flops is
    given: bf16 on CUDA; on CPU the faster of f32 and bf16, the two precisions the trainer's
    products run in (its int8/bf16 BitLinear path and bf16 attention would read over 100 % of
    an f32-only figure on CPUs with native bf16; where bf16 is emulated, f32 is the faster)."""
    if device != "cpu":
        return _matmul_rate(device, torch.bfloat16, 4096, 20)
    return max(_matmul_rate("cpu", torch.float32, 512, 4), _matmul_rate("cpu", torch.bfloat16, 1024, 4))


def _resolve_config(config: ModelConfig | str | os.PathLike[str]) -> ModelConfig:
    if isinstance(config, ModelConfig):
        return config
    text = os.fspath(config)
    if text in PRESETS:
        return ModelConfig.preset(text)
    if Path(text).is_file():
        return ModelConfig.from_file(text)
    raise ValueError(f"--config {text!r} is neither a preset ({', '.join(PRESETS)}) nor an existing JSON file")


class Trainer:
    """Trains a `QatModel` config on a token data directory.

    `Trainer(config, data_dir, out_dir, steps=..., **options)`: `config` is a
    `ModelConfig`, a preset name or a JSON file; `data_dir` a directory made by
    `nanochat_ternary.data` (optional when you only call `step`); `out_dir`
    receives checkpoints and `log.jsonl` (optional). Options: the
    hyper-parameters of `DEFAULT_HYPER` (`steps` sets `total_steps`, the
    schedule's length), the loop settings of `DEFAULT_LOOP` (`teacher`: a
    trainer checkpoint or run directory to distill from, with
    `distill_alpha` and `distill_temperature`), `device` ("cpu" | "cuda"),
    `peak_flops` (for MFU) and `progress` (tqdm bar).

    Inside an initialized torch.distributed process group of more than one
    rank the trainer is data parallel: every rank must construct it with the
    same arguments; `batch_size` is the global micro-batch."""

    def __init__(
        self,
        config: ModelConfig | str | os.PathLike[str],
        data_dir: str | os.PathLike[str] | None = None,
        out_dir: str | os.PathLike[str] | None = None,
        *,
        steps: int | None = None,
        device: str = "cpu",
        peak_flops: float | None = None,
        progress: bool = True,
        **options: Any,
    ) -> None:
        self.config = _resolve_config(config)
        unknown = sorted(set(options) - set(DEFAULT_HYPER) - set(DEFAULT_LOOP))
        if unknown:
            raise TypeError(f"unknown Trainer options {unknown}; known: {sorted(DEFAULT_HYPER) + sorted(DEFAULT_LOOP)}")
        hyper = {**DEFAULT_HYPER, **{k: v for k, v in options.items() if k in DEFAULT_HYPER}}
        if steps is not None:
            hyper["total_steps"] = steps
        loop = {**DEFAULT_LOOP, **{k: v for k, v in options.items() if k in DEFAULT_LOOP}}
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but no CUDA GPU is available")
        self._core = _core.QatTrainer(self.config.to_json(), json.dumps(hyper), device)
        self.hyper: dict[str, Any] = json.loads(self._core.hyper_json())
        self._setup(data_dir, out_dir, loop, device, peak_flops, progress)
        if ddp.active():
            # Same seed, same init; the broadcast makes sure of it (e.g. across GPU models).
            ddp.broadcast_([t for _, t in self._core.named_parameters()])

    def _setup(self, data_dir: str | os.PathLike[str] | None, out_dir: str | os.PathLike[str] | None,
               loop: dict[str, Any], device: str, peak_flops: float | None, progress: bool) -> None:
        """Loop settings, data and output directories (shared by __init__ and resume)."""
        if loop["seq_len"] is None:
            loop["seq_len"] = min(256, self.config.max_seq_len)
        for key in ("batch_size", "seq_len", "grad_accum", "eval_batches", "keep"):
            if not isinstance(loop[key], int) or loop[key] < 1:
                raise ValueError(f"{key} must be a positive integer, got {loop[key]!r}")
        for key in ("eval_every", "save_every", "log_every"):
            if not isinstance(loop[key], int) or loop[key] < 0:
                raise ValueError(f"{key} must be a non-negative integer (0 = never), got {loop[key]!r}")
        if loop["seq_len"] > self.config.max_seq_len:
            raise ValueError(f"seq_len {loop['seq_len']} exceeds the model's max_seq_len {self.config.max_seq_len}")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but no CUDA GPU is available")
        if loop.get("teacher") is not None and not isinstance(loop["teacher"], (str, os.PathLike)):
            raise ValueError(f"teacher must be a checkpoint path, got {loop['teacher']!r}")
        for key in ("distill_alpha", "distill_temperature"):
            loop.setdefault(key, DEFAULT_LOOP[key])  # checkpoints from before distillation existed
            if isinstance(loop[key], bool) or not isinstance(loop[key], (int, float)):
                raise ValueError(f"{key} must be a number, got {loop[key]!r}")
            loop[key] = float(loop[key])
        if not 0.0 <= loop["distill_alpha"] <= 1.0:
            raise ValueError(f"distill_alpha must lie in [0, 1] (the weight of the hard-label CE), "
                             f"got {loop['distill_alpha']}")
        if not (math.isfinite(loop["distill_temperature"]) and loop["distill_temperature"] > 0):
            raise ValueError(f"distill_temperature must be a finite number > 0, got {loop['distill_temperature']}")
        self.rank, self.world = ddp.rank(), ddp.world_size()
        if loop["batch_size"] % self.world:
            raise ValueError(
                f"batch size {loop['batch_size']} (global, per micro-batch) does not split over "
                f"{self.world} data-parallel ranks; use a multiple of {self.world}"
            )
        self._reducer = ddp.GradientReducer(device) if self.world > 1 else None
        self.loop, self.device, self.progress = loop, device, progress and self.rank == 0
        self.data_dir = Path(data_dir) if data_dir is not None else None
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.train_batches: TokenBatches | None = None
        self.val: TokenShards | None = None
        if self.data_dir is not None:
            train = TokenShards(self.data_dir, "train")
            if train.vocab_size > self.config.vocab_size:
                raise ValueError(
                    f"{self.data_dir}: token ids go up to vocab_size {train.vocab_size}, "
                    f"the model's vocab_size is {self.config.vocab_size}"
                )
            self.train_batches = TokenBatches(
                train, loop["batch_size"], loop["seq_len"], rank=self.rank, world=self.world
            )
            if "val" in train.meta["splits"]:
                self.val = TokenShards(self.data_dir, "val")
        if self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        if peak_flops is not None and not peak_flops > 0:
            raise ValueError(f"peak_flops must be positive, got {peak_flops}")
        self._peak_flops = peak_flops
        self.peak_flops_source = "given" if peak_flops is not None else "measured matmul"
        self._flops_per_token = 6 * compute_params(self.config)
        self.teacher_path: Path | None = None
        if loop.get("teacher") is not None:
            self._attach_teacher(loop["teacher"])
        ddp.check_consistent({
            "config": self.config.to_json(), "hyper": self.hyper, "loop": self.loop, "step": self.step_count,
            "loader": self.train_batches.state() if self.train_batches is not None else None,
            "teacher_sha": self._teacher_digest(),
        })

    # ---- distillation ------------------------------------------------------------

    def _attach_teacher(self, teacher: str | os.PathLike[str]) -> None:
        """Loads the teacher checkpoint (or a run directory's latest) and checks
        that it shares the student's vocabulary and tokenizer."""
        path = resolve_checkpoint(teacher, "teacher").resolve()
        config_json, data_state = self._core.set_teacher(
            os.fspath(path), self.loop["distill_alpha"], self.loop["distill_temperature"]
        )
        teacher_sha = _tokenizer_sha256(json.loads(data_state) if data_state else {})
        mine = self._tokenizer_sha256()
        if teacher_sha is not None and mine is not None and teacher_sha != mine:
            raise ValueError(
                f"teacher {path} was trained with tokenizer sha256 {teacher_sha[:12]}..., this data's tokenizer "
                f"is {mine[:12]}...: distillation needs the same tokenizer"
            )
        if (teacher_sha is None or mine is None) and self.rank == 0:
            print(f"note: could not compare the tokenizers of teacher {path} and this run "
                  "(one of them names no tokenizer); only the vocabulary sizes were checked", file=sys.stderr)
        self.teacher_path = path
        self.teacher_config = ModelConfig.from_json(config_json)
        self.loop["teacher"] = os.fspath(path)

    def _teacher_digest(self) -> str | None:
        if self.teacher_path is None:
            return None
        stat = self.teacher_path.stat()
        return f"{self.teacher_path.name}:{stat.st_size}"

    def _tokenizer_sha256(self) -> str | None:
        if self.train_batches is None:
            return None
        sha = self.train_batches.shards.meta.get("tokenizer_sha256")
        return sha if isinstance(sha, str) else None

    def _mix_sha256(self) -> str | None:
        """The sha256 of the data-mix config the shards were built with (None: not a mix build)."""
        if self.train_batches is None:
            return None
        mix = (self.train_batches.shards.meta.get("source") or {}).get("mix") or {}
        sha = mix.get("config_sha256") if isinstance(mix, dict) else None
        return sha if isinstance(sha, str) else None

    # ---- construction from a checkpoint --------------------------------------

    @classmethod
    def resume(cls, out_dir: str | os.PathLike[str], *, data_dir: str | os.PathLike[str] | None = None,
               device: str = "cpu", peak_flops: float | None = None, progress: bool = True) -> Trainer:
        """Continues the run in `out_dir` from its newest checkpoint: weights,
        optimizer state, schedule position, data position and loop settings.
        `data_dir` defaults to the directory the run was trained on."""
        path = latest_checkpoint(out_dir)
        if path is None:
            raise FileNotFoundError(f"{out_dir}: no checkpoint to resume from (no {LATEST!r} file)")
        core, data_state = _core.QatTrainer.load(os.fspath(path), device)
        state = json.loads(data_state)
        self = cls.__new__(cls)
        self._core = core
        self.config = ModelConfig.from_json(core.config_json())
        self.hyper = json.loads(core.hyper_json())
        data = data_dir if data_dir is not None else state.get("data_dir")
        self._setup(data, out_dir, dict(state["loop"]), device, peak_flops, progress)
        # Token ids only mean something under the tokenizer they were made with, and a resumed
        # data position only under the same mix: other data is a clear error, not a silent restart.
        for what, recorded, now in (("tokenizer", state.get("tokenizer_sha256"), self._tokenizer_sha256()),
                                    ("data mix", state.get("mix_sha256"), self._mix_sha256())):
            if recorded is not None and now != recorded:
                raise ValueError(
                    f"{out_dir} was trained with another {what} than {self.data_dir}'s "
                    f"(sha256 {recorded[:12]} vs {(now or 'none')[:12]}); resume with the run's own --data "
                    f"or start a new run"
                )
        if self.train_batches is not None and state.get("loader") is not None:
            self.train_batches.load_state(state["loader"])
        return self

    @classmethod
    def branch(cls, source: str | os.PathLike[str], out_dir: str | os.PathLike[str], decay_steps: int, *,
               data_dir: str | os.PathLike[str] | None = None, device: str = "cpu",
               peak_flops: float | None = None, progress: bool = True) -> Trainer:
        """Warmup-stable-decay branch: the run in `source` (its newest checkpoint, which must lie in
        the stable phase) continued in the new run directory `out_dir`, its schedule ending
        `decay_steps` steps later with the learning rate decaying from the next step on. The
        steps taken so far keep their rates and the data continues where it was, so the branch is
        the source run with its decay moved earlier; `source` itself is untouched and can go on
        (or branch again) later. `out_dir` then resumes like any run."""
        if latest_checkpoint(out_dir) is not None:
            raise ValueError(f"{out_dir} already holds a run; branch into a new directory")
        if Path(out_dir).resolve() == Path(source).resolve():
            raise ValueError("the branch needs its own directory, not the source run's")
        self = cls.resume(source, data_dir=data_dir, device=device, peak_flops=peak_flops, progress=progress)
        self._core.decay_now(decay_steps)
        self.hyper = json.loads(self._core.hyper_json())
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._log({"step": self.step_count, "branched_from": os.fspath(Path(source).resolve()),
                   "decay_steps": decay_steps, "total_steps": self.hyper["total_steps"]})
        return self

    def init_from_gguf(self, path: str | os.PathLike[str]) -> None:
        """Starts this (new) run from the weights of one of our GGUF exports: continued pretraining
        or fine-tuning of a model that ships without its trainer checkpoint, such as the zoo's.
        The model shape must be the file's and the data's tokenizer the file's (every id the same
        token); latent weights as in :func:`export.load_gguf_weights`, optimizer moments zero, the
        schedule this run's own."""
        from .export import gguf_model_config, load_gguf_weights
        from .model import TernaryModel

        if self.step_count != 0:
            raise ValueError("init_from_gguf starts a new run; this trainer has already taken steps")
        theirs = gguf_model_config(path)
        if json.loads(theirs.to_json()) != json.loads(self.config.to_json()):
            raise ValueError(f"{path} holds another model shape than this run's config "
                             f"({theirs.to_json()} vs {self.config.to_json()})")  # fmt: skip
        if self.data_dir is not None:
            from .tokenizer import Tokenizer

            data_tok = Tokenizer.from_file(self.data_dir / "tokenizer.json")
            file_tok = TernaryModel(path).tokenizer
            if data_tok.vocab_size != file_tok.vocab_size or any(
                data_tok.id_to_token(i) != file_tok.id_to_token(i) for i in range(data_tok.vocab_size)
            ):
                raise ValueError(f"{self.data_dir}'s tokenizer is not the one of {path}: build the data with "
                                 f"--tokenizer set to the model's (see python -m nanochat_ternary.data build --help)")
        load_gguf_weights(self._core, path)
        self._log({"step": 0, "init_from": os.fspath(Path(path).resolve()), "init_sha256": sha256_file(path)})

    def start_data_at(self, tokens: int) -> None:
        """A new run reads its train split from token offset `tokens` on (modulo the split's length,
        counting the wraps as epochs), e.g. to continue where the run it was initialized from stopped."""
        if self.step_count != 0 or self.train_batches is None:
            raise ValueError("start_data_at needs a new run with data")
        if tokens < 0:
            raise ValueError(f"data start must be >= 0, got {tokens}")
        epoch, position = divmod(tokens, self.train_batches.shards.tokens)
        self.train_batches.load_state({"position": position, "epoch": epoch})
        self._log({"step": 0, "data_start": tokens, "position": position, "epoch": epoch})

    # ---- one step -------------------------------------------------------------

    def _autocast(self) -> AbstractContextManager[Any]:
        # The Rust step enables autocast on CUDA; this picks bf16 as its dtype.
        if self.device.startswith("cuda"):
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    @property
    def step_count(self) -> int:
        """Optimizer steps done."""
        return self._core.step_count

    def step(self, tokens: torch.Tensor | None = None, targets: torch.Tensor | None = None, *,
             micro_batches: Sequence[tuple[torch.Tensor, torch.Tensor]] | None = None) -> dict[str, float]:
        """One optimizer step. Either `tokens`, `targets` (both (B, T) int64;
        split along B into `grad_accum` micro-batches) or explicit
        `micro_batches=[(tokens, targets), ...]`. Returns the metrics step,
        loss, ce, entropy, lr_muon, lr_lion, grad_norm, tokens (and kl when
        distilling). Data parallel: pass this rank's rows; the gradients are
        all-reduced and the metrics are those of the global batch."""
        if micro_batches is None:
            if tokens is None or targets is None:
                raise ValueError("step() needs tokens and targets, or micro_batches")
            accum = self.loop["grad_accum"]
            if tokens.shape[0] % accum:
                raise ValueError(f"batch of {tokens.shape[0]} rows does not split into grad_accum={accum} micro-batches")
            micro_batches = list(zip(tokens.chunk(accum), targets.chunk(accum)))
        batches = [(x.contiguous(), y.contiguous()) for x, y in micro_batches]
        with self._autocast():
            if self._reducer is not None:
                return self._core.step_reduced(batches, self._reducer)
            return self._core.step(batches)

    def train_step(self) -> dict[str, float]:
        """One optimizer step on the next `grad_accum` batches of the data."""
        if self.train_batches is None:
            raise ValueError("no data directory: pass data_dir, or call step() with batches")
        return self.step(micro_batches=[self.train_batches.next() for _ in range(self.loop["grad_accum"])])

    # ---- evaluation -------------------------------------------------------------

    def evaluate(self) -> dict[str, float]:
        """Mean loss over the first `eval_batches` batches of the val split and
        bits per byte (loss x tokens / (bytes x ln 2), the split's counts)."""
        if self.val is None:
            raise ValueError("no val split in the data directory")
        b, t = self.loop["batch_size"], self.loop["seq_len"]
        rows = min(self.loop["eval_batches"] * b, self.val.tokens // (t + 1))
        if rows == 0:
            raise ValueError(f"val split has {self.val.tokens} tokens, fewer than one sequence of {t + 1}")
        losses, weights = [], []
        for start in range(0, rows, b):
            n = min(b, rows - start)
            chunk = torch.from_numpy(self.val.read(start * (t + 1), n * (t + 1)).reshape(n, t + 1))
            with self._autocast():
                losses.append(self._core.eval_loss(chunk[:, :-1].contiguous(), chunk[:, 1:].contiguous()))
            weights.append(n)
        loss = float(np.average(losses, weights=weights))
        bpb = loss * self.val.tokens / (self.val.bytes * math.log(2)) if self.val.bytes else float("nan")
        return {"val_loss": loss, "val_bpb": bpb}

    # ---- checkpoints --------------------------------------------------------------

    def _data_state(self) -> str:
        return json.dumps({
            "data_dir": os.fspath(self.data_dir.resolve()) if self.data_dir is not None else None,
            "loader": self.train_batches.state() if self.train_batches is not None else None,
            "loop": self.loop,
            "tokenizer_sha256": self._tokenizer_sha256(),
            "mix_sha256": self._mix_sha256(),
        })

    def save(self) -> Path:
        """Writes OUT/ckpt-<step>.safetensors and OUT/latest (atomically) and
        keeps the newest `keep` checkpoints."""
        if self.out_dir is None:
            raise ValueError("no out_dir to save into")
        path = self.out_dir / f"{CHECKPOINT_PREFIX}{self.step_count:08d}{CHECKPOINT_SUFFIX}"
        self._core.save(os.fspath(path), self._data_state())
        _atomic.write_text(self.out_dir / LATEST, path.name + "\n")
        for old in checkpoints(self.out_dir)[: -self.loop["keep"]]:
            old.unlink()
        return path

    def named_parameters(self) -> dict[str, torch.Tensor]:
        """Copies of the current weights by name (for export)."""
        return {name: t.detach().clone() for name, t in self._core.named_parameters()}

    def model(self) -> QatModel:
        """A `QatModel` holding a copy of the current weights."""
        model = QatModel(self.config, device=self.device)
        params = model.named_parameters()
        with torch.no_grad():
            for name, t in self._core.named_parameters():
                params[name].copy_(t)
        return model

    # ---- the loop -------------------------------------------------------------------

    def _log(self, record: dict[str, Any]) -> None:
        """Appends one record to log.jsonl, stamped with the wall-clock time (Unix seconds) so a
        run's duration can be read back from its log."""
        if self.out_dir is not None:
            with open(self.out_dir / LOG_FILE, "a", encoding="utf-8") as f:
                f.write(json.dumps({**record, "time": round(time.time(), 3)}) + "\n")

    def peak_flops(self) -> float:
        """The MFU denominator of one process: `peak_flops` as given; on CUDA the GPU's dense
        bf16 peak by device name (`cuda.peaks`: H100/H200 SXM 989 TFLOP/s); else measured once."""
        if self._peak_flops is None:
            known = None
            if self.device.startswith("cuda"):
                from .cuda import peaks

                known = peaks.dense_bf16_peak(torch.cuda.get_device_name(torch.device(self.device)))
            if known is not None:
                self._peak_flops, label = known
                self.peak_flops_source = f"{label} dense bf16"
            else:
                self._peak_flops = measured_peak_flops("cpu" if self.device == "cpu" else self.device)
        return self._peak_flops

    def fit(self, steps: int | None = None) -> list[dict[str, float]]:
        """Trains `steps` more optimizer steps (default: to the end of the
        schedule), logging, evaluating and checkpointing as configured.
        Returns every step's metrics."""
        total = self.hyper["total_steps"]
        target = total if steps is None else self.step_count + steps
        loop, history = self.loop, []
        # Imported here: in a Jupyter kernel without ipywidgets, importing
        # tqdm.auto prints a warning, which callers of step() alone never need.
        from tqdm.auto import tqdm

        bar = tqdm(total=target, initial=self.step_count, disable=not self.progress, desc="train", unit="step")
        try:
            while self.step_count < target:
                start = time.perf_counter()
                metrics = self.train_step()
                seconds = time.perf_counter() - start
                tok_s = metrics["tokens"] / seconds
                metrics["tok_per_s"] = tok_s
                metrics["mfu"] = self._flops_per_token * tok_s / (self.peak_flops() * self.world)
                history.append(metrics)
                step = int(metrics["step"])
                bar.update(1)
                bar.set_postfix(loss=f"{metrics['loss']:.3f}", refresh=False)
                if self.rank != 0:
                    continue  # rank 0 alone logs, evaluates and checkpoints
                if loop["log_every"] and (step % loop["log_every"] == 0 or step == target):
                    kl = f" | kl {metrics['kl']:.4f}" if "kl" in metrics else ""
                    bar.write(
                        f"step {step}/{total} | loss {metrics['loss']:.4f} | ce {metrics['ce']:.4f}{kl} | "
                        f"entropy {metrics['entropy']:.3f} | lr {metrics['lr_muon']:.2e}/{metrics['lr_lion']:.2e} | "
                        f"grad-norm {metrics['grad_norm']:.3f} | {tok_s:,.0f} tok/s | "
                        f"MFU {100 * metrics['mfu']:.2f}% ({self.peak_flops_source} peak)"
                    )
                    self._log(metrics)
                if self.val is not None and loop["eval_every"] and (step % loop["eval_every"] == 0 or step == target):
                    result = self.evaluate()
                    bar.write(f"step {step} | val loss {result['val_loss']:.4f} | val bpb {result['val_bpb']:.4f}")
                    self._log({"step": step, **result})
                if self.out_dir is not None and (
                    (loop["save_every"] and step % loop["save_every"] == 0) or step == target
                ):
                    self.save()
        finally:
            bar.close()
        return history


def _tokenizer_sha256(data_state: dict[str, Any]) -> str | None:
    """The tokenizer a checkpoint's run used: recorded in its data state, else
    read from its data directory's meta.json when that still exists."""
    sha = data_state.get("tokenizer_sha256")
    if isinstance(sha, str):
        return sha
    data_dir = data_state.get("data_dir")
    if isinstance(data_dir, str):
        try:
            sha = json.loads((Path(data_dir) / "meta.json").read_text(encoding="utf-8")).get("tokenizer_sha256")
        except (OSError, ValueError):
            return None
        return sha if isinstance(sha, str) else None
    return None


def checkpoints(out_dir: str | os.PathLike[str]) -> list[Path]:
    """Checkpoints in `out_dir`, oldest first."""
    return sorted(Path(out_dir).glob(f"{CHECKPOINT_PREFIX}*{CHECKPOINT_SUFFIX}"))


def resolve_checkpoint(path: str | os.PathLike[str], what: str = "checkpoint") -> Path:
    """A checkpoint file, or a run directory's newest checkpoint; FileNotFoundError naming
    ``what`` when there is none."""
    path = Path(path)
    if path.is_dir():
        found = latest_checkpoint(path)
        if found is None:
            raise FileNotFoundError(f"{what} {path}: a run directory without checkpoints")
        return found
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path}: no such checkpoint file or run directory")
    return path


def latest_checkpoint(out_dir: str | os.PathLike[str]) -> Path | None:
    """The checkpoint named by OUT/latest, or None when there is none."""
    pointer = Path(out_dir) / LATEST
    if not pointer.is_file():
        return None
    name = pointer.read_text(encoding="utf-8").strip()
    if Path(name).name != name or not (Path(out_dir) / name).is_file():
        raise FileNotFoundError(f"{pointer} names {name!r}, which is not a checkpoint in {out_dir}")
    return Path(out_dir) / name


# ---- command line ---------------------------------------------------------------------


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    h, lp = DEFAULT_HYPER, DEFAULT_LOOP
    p = argparse.ArgumentParser(
        prog="python -m nanochat_ternary.train",
        description="Quantization-aware training of a ternary (BitNet b1.58) transformer.",
    )
    p.add_argument("--config", default=None, help=f"preset ({', '.join(PRESETS)}) or model config JSON file (default tiny)")
    p.add_argument("--init-from", metavar="MODEL.gguf", default=None,
                   help="start a new run from the weights of one of this package's GGUF exports (continued "
                        "pretraining / fine-tuning; the shape is the file's, the data must use its tokenizer)")
    p.add_argument("--data-start", metavar="TOKENS", type=_non_negative_int, default=None,
                   help="a new run reads the train split from this token offset on (wrapped to the split), e.g. "
                        "where the run that made the --init-from file stopped reading")
    p.add_argument("--data", help="token data directory (meta.json + shards); required unless --resume")
    p.add_argument("--out", required=True, help="run directory: checkpoints, latest, log.jsonl")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its latest checkpoint with its saved settings "
                        "(only --data, --device, --threads, --peak-flops, --no-progress apply)")
    p.add_argument("--branch-from", metavar="RUN", default=None,
                   help="WSD branch: continue RUN's latest (stable-phase) checkpoint in --out with the decay "
                        "starting now and lasting --decay-steps (RUN itself is untouched)")
    p.add_argument("--decay-steps", type=_positive_int, default=None, help="length of the branch's decay (with --branch-from)")
    p.add_argument("--stop-at", type=_positive_int, default=None, metavar="STEP",
                   help="stop with a checkpoint once STEP steps are done (the schedule is unchanged; --resume "
                        "continues), e.g. to split a long run over sessions")
    p.add_argument("--steps", type=_positive_int, default=h["total_steps"], help="total optimizer steps (schedule length)")
    p.add_argument("--batch-size", type=_positive_int, default=lp["batch_size"], help="sequences per micro-batch")
    p.add_argument("--seq-len", type=_positive_int, default=None, help="tokens per sequence (default min(256, max_seq_len))")
    p.add_argument("--grad-accum", type=_positive_int, default=lp["grad_accum"], help="micro-batches per step")
    p.add_argument("--lr-muon", type=_positive_float, default=h["lr_muon"], help="peak LR of the Muon group")
    p.add_argument("--lr-lion", type=_positive_float, default=h["lr_lion"], help="peak LR of the Lion group")
    p.add_argument("--weight-decay", type=_non_negative_float, default=h["weight_decay"], help="Muon weight decay")
    p.add_argument("--warmup", type=_non_negative_int, default=h["warmup"], help="warmup steps")
    p.add_argument("--decay-frac", type=_non_negative_float, default=h["decay_frac"], help="fraction of steps decaying")
    p.add_argument("--lr-floor", type=_non_negative_float, default=h["lr_floor"], help="final LR as a fraction of peak")
    p.add_argument("--clip", type=_non_negative_float, default=h["clip"], help="global grad-norm clip (0 = off)")
    p.add_argument("--entropy-weight", type=_non_negative_float, default=h["entropy_weight"], help="w in CE - w*H")
    p.add_argument("--seed", type=int, default=h["seed"], help="init seed")
    p.add_argument("--teacher", default=None,
                   help="distill from this trainer checkpoint (or run directory: its latest checkpoint), "
                        "same vocabulary and tokenizer, full-precision or ternary")
    p.add_argument("--distill-alpha", type=_non_negative_float, default=None,
                   help=f"alpha in alpha*CE + (1-alpha)*T^2*KL (default {lp['distill_alpha']}; needs --teacher)")
    p.add_argument("--distill-temperature", type=_positive_float, default=None,
                   help=f"temperature T of the soft targets (default {lp['distill_temperature']}; needs --teacher)")
    p.add_argument("--eval-every", type=_non_negative_int, default=lp["eval_every"], help="steps between evals (0 = off)")
    p.add_argument("--eval-batches", type=_positive_int, default=lp["eval_batches"], help="val batches per eval")
    p.add_argument("--save-every", type=_non_negative_int, default=lp["save_every"], help="steps between checkpoints")
    p.add_argument("--keep", type=_positive_int, default=lp["keep"], help="checkpoints to keep")
    p.add_argument("--log-every", type=_non_negative_int, default=lp["log_every"], help="steps between log lines")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="cpu, or cuda when a GPU exists")
    p.add_argument("--threads", type=_positive_int, default=None, help="CPU threads for libtorch")
    p.add_argument("--peak-flops", type=_positive_float, default=None,
                   help="peak FLOP/s for MFU (default: the GPU's dense bf16 peak by name on CUDA, else a quick measured matmul rate)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    p.add_argument("--dist-timeout", type=_positive_float, default=ddp.DEFAULT_TIMEOUT_S,
                   help="data-parallel runs (torchrun): seconds a collective waits for the other ranks before "
                        "the job fails")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.teacher is None and (args.distill_alpha is not None or args.distill_temperature is not None):
        parser.error("--distill-alpha and --distill-temperature need --teacher")
    if args.resume and args.teacher is not None:
        parser.error("--teacher applies to a new run; a resumed run keeps its own teacher")
    if (args.branch_from is None) != (args.decay_steps is None):
        parser.error("--branch-from and --decay-steps go together")
    if args.data_start is not None and (args.resume or args.branch_from is not None):
        parser.error("--data-start applies to a new run; a resumed run or branch continues its own data position")
    if args.init_from is not None and (args.resume or args.branch_from is not None):
        parser.error("--init-from starts a new run; it takes neither --resume nor --branch-from")
    if args.branch_from is not None and (args.resume or args.teacher is not None):
        parser.error("--branch-from starts a branch of an existing run; it takes neither --resume nor --teacher")
    device = args.device
    if ddp.launched_by_torchrun():
        try:
            device = ddp.init_from_env(args.device, args.dist_timeout)
        except (ValueError, RuntimeError) as e:
            parser.error(str(e))
    try:
        return _run(parser, args, device)
    except ddp.DistributedError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        ddp.shutdown()


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace, device: str) -> int:
    lp = DEFAULT_LOOP
    common = dict(device=device, peak_flops=args.peak_flops, progress=not args.no_progress)
    try:
        if args.resume:
            trainer = Trainer.resume(args.out, data_dir=args.data, **common)
        elif args.branch_from is not None:
            trainer = Trainer.branch(args.branch_from, args.out, args.decay_steps, data_dir=args.data, **common)
        else:
            if args.data is None:
                parser.error("--data is required (unless --resume)")
            if latest_checkpoint(args.out) is not None:
                parser.error(f"{args.out} already holds a run; pass --resume to continue it or choose a new --out")
            if args.init_from is not None:
                if args.config is not None:
                    parser.error("--init-from takes the model shape from the file; leave out --config")
                from .export import gguf_model_config

                config: Any = gguf_model_config(args.init_from)
            else:
                config = args.config if args.config is not None else "tiny"
            trainer = Trainer(
                config, args.data, args.out, steps=args.steps,
                batch_size=args.batch_size, seq_len=args.seq_len, grad_accum=args.grad_accum,
                lr_muon=args.lr_muon, lr_lion=args.lr_lion, weight_decay=args.weight_decay,
                warmup=args.warmup, decay_frac=args.decay_frac, lr_floor=args.lr_floor, clip=args.clip,
                entropy_weight=args.entropy_weight, seed=args.seed, eval_every=args.eval_every,
                eval_batches=args.eval_batches, save_every=args.save_every, keep=args.keep,
                log_every=args.log_every, teacher=args.teacher,
                distill_alpha=lp["distill_alpha"] if args.distill_alpha is None else args.distill_alpha,
                distill_temperature=(
                    lp["distill_temperature"] if args.distill_temperature is None else args.distill_temperature
                ),
                **common,
            )
            if args.init_from is not None:
                trainer.init_from_gguf(args.init_from)
            if args.data_start is not None:
                trainer.start_data_at(args.data_start)
    except (ValueError, FileNotFoundError) as e:
        parser.error(str(e))
    stop = args.stop_at is not None and args.stop_at < trainer.hyper["total_steps"]
    stop_steps = max(0, args.stop_at - trainer.step_count) if stop else None
    if trainer.rank != 0:
        trainer.fit(stop_steps)
        return 0
    distill = ""
    if trainer.teacher_path is not None:
        distill = (f"; distilling from {trainer.teacher_path} (alpha {trainer.loop['distill_alpha']}, "
                   f"T {trainer.loop['distill_temperature']})")
    world = f"; {trainer.world} data-parallel ranks" if trainer.world > 1 else ""
    print(
        f"model {trainer.config.name or 'custom'}: {trainer.config.param_count:,} parameters on {trainer.device}; "
        f"step {trainer.step_count}/{trainer.hyper['total_steps']}{distill}{world}"
    )
    from .export import gguf_export_problems

    problems = gguf_export_problems(trainer.config)
    if problems and trainer.config.ternary:
        print(f"note: this model can't be exported to GGUF ({'; '.join(problems)}); "
              "python -m nanochat_ternary.export --format hf writes an HF directory")
    if stop:
        if stop_steps:
            trainer.fit(stop_steps)  # saves at its last step
        print(f"stopped at step {trainer.step_count}/{trainer.hyper['total_steps']}; continue with: "
              f"python -m nanochat_ternary.train --out {trainer.out_dir} --resume")
        return 0
    trainer.fit()
    if trainer.val is not None:
        result = trainer.evaluate()
        print(f"final val loss {result['val_loss']:.4f}, val bpb {result['val_bpb']:.4f}")
    if trainer.out_dir is not None and not problems:
        print(f"export: python -m nanochat_ternary.export {trainer.out_dir} --out {trainer.out_dir}/model.gguf")
    return 0


if __name__ == "__main__":
    sys.exit(main())
