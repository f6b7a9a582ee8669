"""Data-parallel training on torch.distributed (gloo on CPUs, NCCL on GPUs).

Launch the trainer with torchrun, which sets RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR and MASTER_PORT for every process:

    torchrun --standalone --nproc-per-node 2 -m nanochat_ternary.train --data D --out runs/x --threads 1
    torchrun --nnodes 2 --node-rank 0 --nproc-per-node 8 --rdzv-backend c10d \\
        --rdzv-endpoint HOST:29400 -m nanochat_ternary.train --device cuda ...

Each rank computes the gradients of its own rows of every global batch in
Rust; `GradientReducer` all-reduces them in place (the tensors share the Rust
trainer's storage) between the backward pass and the optimizer step, which
every rank then applies identically. Rank 0 alone logs, evaluates and writes
checkpoints. Every collective runs under the process group's timeout, so a
rank that dies or stalls makes the others fail with `DistributedError`
instead of hanging.
"""

from __future__ import annotations

import datetime
import json
import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist

#: Seconds a collective may wait for the other ranks before the job fails.
DEFAULT_TIMEOUT_S = 300.0


class DistributedError(RuntimeError):
    """A collective failed: another rank exited, crashed or stalled past the timeout."""


def active() -> bool:
    """Whether a process group with more than one rank is initialized."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def launched_by_torchrun() -> bool:
    """Whether the environment asks for more than one process (WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1") or "1") > 1


def _env_int(name: str) -> int:
    text = os.environ.get(name)
    if text is None:
        raise ValueError(f"data-parallel run: environment variable {name} is not set (launch with torchrun)")
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"data-parallel run: {name}={text!r} is not an integer") from None


def init_from_env(device: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> str:
    """Joins the process group described by torchrun's environment variables
    (gloo for `device="cpu"`, NCCL for CUDA with one GPU per local rank) with
    `timeout_s` on every collective. Returns this rank's device ("cpu" or
    "cuda:LOCAL_RANK")."""
    if not dist.is_available():
        raise ValueError("this torch build has no torch.distributed")
    if not (timeout_s > 0):
        raise ValueError(f"the distributed timeout must be positive, got {timeout_s}")
    world, this = _env_int("WORLD_SIZE"), _env_int("RANK")
    if not 0 <= this < world:
        raise ValueError(f"data-parallel run: RANK={this} is outside WORLD_SIZE={world}")
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if not os.environ.get(name):
            raise ValueError(f"data-parallel run: environment variable {name} is not set (launch with torchrun)")
    timeout = datetime.timedelta(seconds=timeout_s)
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but no CUDA GPU is available")
        local = int(os.environ.get("LOCAL_RANK", "0"))
        count = torch.cuda.device_count()
        if local >= count:
            raise ValueError(f"LOCAL_RANK {local} needs GPU {local}, but this node has {count}; "
                             f"lower --nproc-per-node to at most {count}")
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
        dist.init_process_group("nccl", timeout=timeout, device_id=torch.device(device))
    else:
        dist.init_process_group("gloo", timeout=timeout)
    return device


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _failure(what: str, error: BaseException) -> DistributedError:
    return DistributedError(
        f"rank {dist.get_rank()} of {dist.get_world_size()}: {what} failed; another rank exited, crashed or "
        f"stalled past the timeout, so this run stops ({type(error).__name__}: {error})"
    )


class GradientReducer:
    """The `reduce` callable of `QatTrainer.step_reduced`: every rank scales
    its mean gradients and metrics by its share of the step's global tokens
    (1/world for equal batches: exact in floating point for 2, 4, 8 ... ranks)
    and sums them with all-reduce, in place. The gradients' all-reduces run
    asynchronously, all in flight at once."""

    def __init__(self, device: str = "cpu") -> None:
        self.device = device
        self.steps = 0

    def __call__(self, grads: Sequence[torch.Tensor], stats: torch.Tensor) -> None:
        self.steps += 1
        try:
            local_tokens = float(stats[4])
            total = stats[4:].to(self.device, copy=True)
            dist.all_reduce(total)
            share = local_tokens / float(total[0])
            if share != 1.0:
                stats[:4].mul_(share)
            moved = stats.to(self.device) if self.device != "cpu" else stats
            dist.all_reduce(moved)
            if moved is not stats:
                stats.copy_(moved.cpu())
            works = []
            for g in grads:
                if share != 1.0:
                    g.mul_(share)
                works.append(dist.all_reduce(g, async_op=True))
            for work in works:
                work.wait()
        except (RuntimeError, dist.DistError) as e:
            raise _failure(f"the gradient all-reduce of local step {self.steps}", e) from e


def check_consistent(settings: dict[str, Any]) -> None:
    """Raises ValueError on every rank when the ranks disagree on `settings`
    (model config, hyper-parameters, loop settings, step, ...), naming the
    keys that differ from rank 0's."""
    if not active():
        return
    mine = json.dumps(settings, sort_keys=True, default=str)
    gathered: list[Any] = [None] * dist.get_world_size()
    try:
        dist.all_gather_object(gathered, mine)
    except (RuntimeError, dist.DistError) as e:
        raise _failure("the start-up consistency check", e) from e
    reference = json.loads(gathered[0])
    for other_rank, text in enumerate(gathered):
        other = json.loads(text)
        if other != reference:
            keys = sorted(k for k in set(reference) | set(other) if reference.get(k) != other.get(k))
            raise ValueError(
                f"data-parallel ranks disagree: rank {other_rank} has different {', '.join(keys)} than rank 0 "
                f"({', '.join(f'{k}={other.get(k)!r} vs {reference.get(k)!r}' for k in keys)})"
            )


def broadcast_(tensors: Sequence[torch.Tensor]) -> None:
    """Overwrites `tensors` in place with rank 0's values."""
    if not active():
        return
    try:
        for t in tensors:
            dist.broadcast(t, src=0)
    except (RuntimeError, dist.DistError) as e:
        raise _failure("the start-up weight broadcast", e) from e
