"""The RL loop: rollouts -> rewards -> group advantages -> policy-gradient update -> sync.

One step draws ``prompts_per_step`` train tasks, samples ``rollouts`` completions
of each through the engine, scores them with the compiler and the tests, turns
each group's rewards into MaxRL or GRPO advantages, and takes one on-policy
update in Rust (``_core.rl_step``: token-level policy gradient on completion
tokens, optional k3 KL to the starting policy, through the QAT model with STE
and Muon + Lion). Then the engine gets the new weights (:meth:`Policy.sync`).
A step whose groups all carry zero advantage (no success, or all success) and
no KL term makes no update.

Everything a step draws is seeded by (seed, step): a run resumed from a
checkpoint (weights, optimizer moments, RL state) logs what the uninterrupted
run logs. ``log.jsonl`` holds one record per step (and ``eval`` records);
``ckpt-*.safetensors`` are trainer checkpoints whose data state is the RL state;
``reference.safetensors`` is the starting policy, ``tasks.jsonl`` the run's copy of
its (verified) tasks, ``tokenizer.json`` its tokenizer; ``final.gguf`` the exported result.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .. import _core
from ..eval.passk import mean_pass_at_k
from .advantages import ALGOS, group_advantages
from .rewards import ScoreStats, score
from .rollouts import Policy, Rollout
from .tasks import Task, TaskSet, load_tasks, write_tasks

STATE_FORMAT = "nanochat-ternary-rl/1"


@dataclasses.dataclass
class RLConfig:
    algo: str = "maxrl"
    rollouts: int = 16
    prompts_per_step: int = 8
    steps: int = 100
    max_new_tokens: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    lr_muon: float = 2e-3
    lr_lion: float = 5e-5
    warmup: int = 0
    clip: float = 1.0
    kl_coef: float = 0.0
    micro_batch: int = 32
    seed: int = 0
    families: list[str] | None = None
    eval_every: int = 0
    eval_tasks: int = 64
    eval_samples: int = 8
    eval_temperature: float = 1.0
    save_every: int = 10
    keep: int = 2
    workers: int = 2

    def validate(self) -> None:
        if self.algo not in ALGOS:
            raise ValueError(f"algo must be one of {ALGOS}, got {self.algo!r}")
        for name in ("rollouts", "prompts_per_step", "steps", "max_new_tokens", "micro_batch", "eval_samples",
                     "eval_tasks", "keep", "workers"):  # fmt: skip
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.temperature > 0 or not self.eval_temperature > 0:
            raise ValueError("temperatures must be > 0 (rollouts are sampled)")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.kl_coef < 0:
            raise ValueError(f"kl_coef must be >= 0, got {self.kl_coef}")

    def hyper_json(self) -> str:
        return json.dumps({"total_steps": self.steps, "lr_muon": self.lr_muon, "lr_lion": self.lr_lion,
                           "warmup": min(self.warmup, self.steps), "decay_frac": 0.0, "lr_floor": 1.0,
                           "clip": self.clip, "seed": self.seed})  # fmt: skip


def rollout_rows(
    rollouts: Sequence[Rollout], advantages: Sequence[float], context: int
) -> list[tuple[list[int], int, float]]:
    """(sequence ids, prompt length, advantage) of each rollout with completion tokens."""
    rows = []
    for r, a in zip(rollouts, advantages):
        if not r.completion_ids:
            continue
        seq = (r.prompt_ids + r.completion_ids)[: context + 1]
        rows.append((seq, len(r.prompt_ids), float(a)))
    return rows


def micro_batches(rows: Sequence[tuple[list[int], int, float]], size: int) -> list[tuple[torch.Tensor, ...]]:
    """(tokens, targets, mask, advantages) micro-batches: inputs seq[:-1], targets
    seq[1:], mask 1 where the target is a completion token, padding masked out."""
    ordered = sorted(rows, key=lambda r: len(r[0]))
    out = []
    for k in range(0, len(ordered), size):
        chunk = ordered[k : k + size]
        width = max(len(seq) - 1 for seq, _, _ in chunk)
        tokens = torch.zeros((len(chunk), width), dtype=torch.int64)
        targets = torch.zeros((len(chunk), width), dtype=torch.int64)
        mask = torch.zeros((len(chunk), width), dtype=torch.float32)
        for b, (seq, plen, _) in enumerate(chunk):
            n = len(seq) - 1
            tokens[b, :n] = torch.tensor(seq[:-1])
            targets[b, :n] = torch.tensor(seq[1:])
            mask[b, plen - 1 : n] = 1.0
        adv = torch.tensor([a for _, _, a in chunk], dtype=torch.float32)
        out.append((tokens, targets, mask, adv))
    return out


def pass_at_k_table(counts: Sequence[tuple[int, int]], n: int) -> dict[str, float]:
    ks = sorted({k for k in (1, 2, 4, 8, 16, 32, 64, n) if k <= n})
    return {f"pass@{k}": mean_pass_at_k(counts, k) for k in ks}


def evaluate(policy: Policy, tasks: Sequence[Task], n: int, *, max_new_tokens: int, temperature: float,
             top_p: float = 1.0, seed: int = 12345, workers: int = 2) -> dict[str, Any]:  # fmt: skip
    """pass@k (unbiased, k up to n) and compile rate of ``tasks`` with n samples each."""
    groups = policy.sample([t.prompt for t in tasks], n, max_new_tokens=max_new_tokens,
                           temperature=temperature, top_p=top_p, seed=seed)  # fmt: skip
    flat = [(t, r) for t, g in zip(tasks, groups) for r in g]
    stats = ScoreStats()
    checks = score([(t, r.text) for t, r in flat], finished=[r.finished for _, r in flat], workers=workers, stats=stats)
    counts = [(n, sum(int(c.reward) for c in checks[i * n : (i + 1) * n])) for i in range(len(tasks))]
    return {"tasks": len(tasks), "samples_per_task": n, **pass_at_k_table(counts, n),
            "compile_rate": sum(c.compiled for c in checks) / len(checks),
            "checks_per_s": stats.checks_per_second}  # fmt: skip


def eval_subset(tasks: Sequence[Task], count: int) -> list[Task]:
    """A fixed subset (same for every run) spread over the families."""
    ordered = sorted(tasks, key=lambda t: t.name)
    random.Random("nct-rl-eval").shuffle(ordered)
    return ordered[:count]


class RLRun:
    """A run directory and the objects of one RL run."""

    def __init__(self, trainer: Any, tokenizer: Any, bos_token_id: int | None, tasks: TaskSet, out: Path,
                 config: RLConfig, state: dict[str, Any]) -> None:  # fmt: skip
        from ..tokenizer import Tokenizer

        config.validate()
        self.trainer = trainer
        self.tokenizer = Tokenizer.from_file(tokenizer) if isinstance(tokenizer, (str, os.PathLike)) else tokenizer
        self.bos_token_id = bos_token_id
        self.tasks = tasks
        self.out = out
        self.config = config
        self.state = state
        train = tasks.split("train")
        if config.families:
            unknown = sorted(set(config.families) - set(tasks.families("train")))
            if unknown:
                raise ValueError(f"families {unknown} are not train families of {tasks.source}")
            train = [t for t in train if t.family in config.families]
        if not train:
            raise ValueError(f"{tasks.source}: no train tasks")
        self.train_tasks = train
        self.heldout = eval_subset(tasks.split("heldout"), config.eval_tasks)
        self.context = json.loads(trainer.config_json())["max_seq_len"]
        self.policy = Policy(trainer, self.tokenizer, bos_token_id, max_batch=min(256, config.rollouts * config.prompts_per_step))
        self.reference = None
        if config.kl_coef > 0:
            self.reference = _core.RlReference(os.fspath(out / "reference.safetensors"))
        self.score_stats = ScoreStats()

    # ------------------------------------------------------------------ construction

    @classmethod
    def start(cls, trainer: Any, tokenizer: Any, bos_token_id: int | None, tasks: TaskSet,
              out: str | os.PathLike[str], config: RLConfig) -> RLRun:  # fmt: skip
        """A new run from ``trainer``'s current weights (a ``_core.QatTrainer`` built
        with :meth:`RLConfig.hyper_json`, see :func:`trainer_from_checkpoint`)."""
        config.validate()
        out = Path(out)
        if (out / "latest").exists():
            raise ValueError(f"{out} already holds an RL run; resume it or pick another --out")
        out.mkdir(parents=True, exist_ok=True)
        # The run keeps its own copy of the (verified) tasks, so a resume reads exactly these.
        write_tasks(tasks.tasks, out / "tasks.jsonl")
        tasks = load_tasks(out / "tasks.jsonl")
        state = {"format": STATE_FORMAT, "step": 0, "samples": 0, "config": dataclasses.asdict(config),
                 "tasks_sha256": tasks.sha256, "bos_token_id": bos_token_id}  # fmt: skip
        tok = tokenizer
        if isinstance(tok, (str, os.PathLike)):
            shutil.copyfile(tok, out / "tokenizer.json")
        else:
            tok.save(out / "tokenizer.json")
        trainer.save(os.fspath(out / "reference.safetensors"), json.dumps(state))
        (out / "log.jsonl").write_text("", encoding="utf-8")
        return cls(trainer, out / "tokenizer.json", bos_token_id, tasks, out, config, state)

    @classmethod
    def resume(cls, out: str | os.PathLike[str], steps: int | None = None) -> RLRun:
        """Continues the run in ``out`` from its newest checkpoint. ``steps`` (at least the steps
        taken) moves the end of the run: the RL schedule is constant after warmup, so a run
        extended this way is exactly the run planned that long."""
        out = Path(out)
        latest = out / "latest"
        if not latest.is_file():
            raise FileNotFoundError(f"{out}: no RL checkpoint to resume (no 'latest')")
        path = out / latest.read_text(encoding="utf-8").strip()
        trainer, data_state = _core.QatTrainer.load(os.fspath(path))
        state = json.loads(data_state)
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"{path}: not an RL checkpoint (format {state.get('format')!r})")
        tasks = load_tasks(out / "tasks.jsonl")
        if tasks.sha256 != state["tasks_sha256"]:
            raise ValueError(f"{out / 'tasks.jsonl'} changed since the run started (sha256 differs); resuming would not be exact")
        if steps is not None:
            if steps < state["step"]:
                raise ValueError(f"{out} has taken {state['step']} steps; --steps {steps} would end it before that")
            warmup = state["config"]["warmup"]
            if warmup > state["config"]["steps"] or steps < warmup:
                raise ValueError(f"{out}: a warmup of {warmup} steps does not fit both {state['config']['steps']} and "
                                 f"{steps} steps, so the runs would differ; start a new run")
            state["config"]["steps"] = steps
        config = RLConfig(**state["config"])
        # Drop log records written after the checkpoint (the resumed run writes them again).
        log = out / "log.jsonl"
        if log.is_file():
            kept = [line for line in log.read_text(encoding="utf-8").splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= state["step"]]  # fmt: skip
            log.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        return cls(trainer, out / "tokenizer.json", state.get("bos_token_id"), tasks, out, config, state)

    # ------------------------------------------------------------------ the loop

    def _log(self, record: dict[str, Any]) -> None:
        with open(self.out / "log.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def step(self) -> dict[str, Any]:
        c, s = self.config, self.state["step"]
        rng = random.Random(f"{c.seed}/{s}")
        batch = rng.sample(self.train_tasks, min(c.prompts_per_step, len(self.train_tasks)))
        seed = rng.getrandbits(40)
        t0 = time.monotonic()
        groups = self.policy.sample([t.prompt for t in batch], c.rollouts, max_new_tokens=c.max_new_tokens,
                                    temperature=c.temperature, top_p=c.top_p, seed=seed)  # fmt: skip
        t1 = time.monotonic()
        flat = [(t, r) for t, g in zip(batch, groups) for r in g]
        stats = ScoreStats()
        checks = score([(t, r.text) for t, r in flat], finished=[r.finished for _, r in flat], workers=c.workers, stats=stats)
        t2 = time.monotonic()
        rows, signal = [], 0
        for i, group in enumerate(groups):
            rewards = [checks[i * c.rollouts + j].reward for j in range(c.rollouts)]
            adv = group_advantages(rewards, c.algo)
            signal += any(a != 0 for a in adv)
            keep = [(r, a) for r, a in zip(group, adv) if a != 0 or c.kl_coef > 0]
            rows += rollout_rows([r for r, _ in keep], [a for _, a in keep], self.context)
        metrics: dict[str, Any] = {}
        if rows:
            mbs = micro_batches(rows, c.micro_batch)
            metrics = dict(_core.rl_step(self.trainer, mbs, self.reference, c.kl_coef))
            self.policy.sync()
        t3 = time.monotonic()
        n = len(flat)
        self.state["step"] = s + 1
        self.state["samples"] += n
        record = {
            "step": s + 1, "samples": self.state["samples"], "algo": c.algo,
            "reward_mean": sum(ch.reward for ch in checks) / n,
            "pass_rate": sum(ch.outcome == "pass" for ch in checks) / n,
            "compile_rate": sum(ch.compiled for ch in checks) / n,
            "parse_rate": sum(ch.outcome != "parse_error" and ch.outcome != "truncated" for ch in checks) / n,
            "truncated_rate": sum(ch.outcome == "truncated" for ch in checks) / n,
            "groups_with_signal": signal, "updated": bool(rows), "rows": len(rows),
            "kl": metrics.get("kl", 0.0), "entropy": metrics.get("pg_entropy"), "loss": metrics.get("loss"),
            "grad_norm": metrics.get("grad_norm"), "logprob": metrics.get("logprob"),
            "completion_tokens": sum(len(r.completion_ids) for _, r in flat),
            "rollouts_per_s": n / max(t1 - t0, 1e-9), "checks_per_s": stats.checks_per_second,
            "seconds": {"sample": t1 - t0, "score": t2 - t1, "update": t3 - t2},
        }  # fmt: skip
        self._log(record)
        if c.eval_every and (s + 1) % c.eval_every == 0:
            self.evaluate()
        if (s + 1) % c.save_every == 0 or s + 1 == c.steps:
            self.save()
        return record

    def evaluate(self, tasks: Sequence[Task] | None = None) -> dict[str, Any]:
        c = self.config
        tasks = list(tasks) if tasks is not None else self.heldout
        if not tasks:
            raise ValueError("no held-out tasks to evaluate")
        result = evaluate(self.policy, tasks, c.eval_samples, max_new_tokens=c.max_new_tokens,
                          temperature=c.eval_temperature, top_p=c.top_p, workers=c.workers)  # fmt: skip
        record = {"eval": "heldout", "step": self.state["step"], "samples": self.state["samples"], **result}
        self._log(record)
        return record

    def save(self) -> Path:
        name = f"ckpt-{self.state['step']:08d}.safetensors"
        self.trainer.save(os.fspath(self.out / name), json.dumps(self.state))
        (self.out / "latest").write_text(name + "\n", encoding="utf-8")
        for old in sorted(self.out.glob("ckpt-*.safetensors"))[: -self.config.keep]:
            old.unlink(missing_ok=True)
        return self.out / name

    def fit(self, progress: bool = True) -> list[dict[str, Any]]:
        records = []
        todo = self.config.steps - self.state["step"]
        bar = None
        if progress and todo > 0:
            from tqdm import tqdm

            bar = tqdm(total=todo, desc=f"rl {self.config.algo}", unit="step")
        while self.state["step"] < self.config.steps:
            r = self.step()
            records.append(r)
            if bar is not None:
                bar.set_postfix(reward=f"{r['reward_mean']:.3f}", compile=f"{r['compile_rate']:.2f}")
                bar.update(1)
        if bar is not None:
            bar.close()
        shutil.copyfile(self.policy.path, self.out / "final.gguf")
        return records


def trainer_from_checkpoint(path: str | os.PathLike[str], config: RLConfig, device: str = "cpu") -> Any:
    """A fresh ``_core.QatTrainer`` (RL hyper-parameters, zero optimizer moments)
    holding the weights of a trainer checkpoint or run directory, or of one of our
    GGUF exports (a ``.gguf`` file, see :func:`trainer_from_gguf`)."""
    from ..qat import QatModel
    from ..train import resolve_checkpoint

    if Path(path).suffix == ".gguf":
        return trainer_from_gguf(path, config, device)
    source = QatModel.from_checkpoint(resolve_checkpoint(path), device=device)
    trainer = _core.QatTrainer(source.config.to_json(), config.hyper_json(), device)
    weights = source.named_parameters()
    with torch.no_grad():
        for name, target in trainer.named_parameters():
            target.copy_(weights[name])
    return trainer


def trainer_from_gguf(path: str | os.PathLike[str], config: RLConfig, device: str = "cpu") -> Any:
    """A trainer whose forward pass is the model of one of our GGUF exports (e.g.
    the shipped ``rust-tiny``), for RL from a model that ships without its trainer
    checkpoint (see :func:`nanochat_ternary.export.load_gguf_weights`)."""
    from ..export import gguf_model_config, load_gguf_weights

    model = gguf_model_config(path)
    trainer = _core.QatTrainer(model.to_json(), config.hyper_json(), device)
    load_gguf_weights(trainer, path)
    return trainer
