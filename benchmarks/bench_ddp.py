"""Data-parallel training throughput on CPU: 2 processes x 1 thread over gloo
(torch.distributed, the gradients all-reduced between backward and the
optimizer step) against 1 process x 2 threads, the same model, the same
global batch and the same number of optimizer steps, measured in one run.

Run (from the repository root, after `maturin develop --release`):

    .venv/bin/python benchmarks/bench_ddp.py [--config tiny] [--batch 8] [--seq 256]
        [--steps 6] [--warmup 2] [--repeats 1]

Each setup runs in fresh subprocesses: the 2-process one is launched like
torchrun would (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT), each rank
computing the gradients of its `batch / 2` rows. Batches are seeded uniform
random tokens. After `--warmup` steps, `--steps` timed optimizer steps give
tokens/s (global tokens of the step over wall-clock seconds on rank 0). With
`--repeats R` the two setups alternate R times and the best run of each
counts. The load average is printed: on a busy machine the numbers move.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time


def worker(args: argparse.Namespace) -> None:
    import torch

    from nanochat_ternary import distributed as ddp
    from nanochat_ternary.train import Trainer

    torch.set_num_threads(args.threads)
    if ddp.launched_by_torchrun():
        ddp.init_from_env("cpu", timeout_s=300)
    rank, world = ddp.rank(), ddp.world_size()
    trainer = Trainer(args.config, steps=args.warmup + args.steps + 1, warmup=1, batch_size=args.batch,
                      seq_len=args.seq, progress=False)
    vocab = trainer.config.vocab_size
    rows = args.batch // world
    generator = torch.Generator().manual_seed(0)

    def batch() -> tuple[torch.Tensor, torch.Tensor]:
        seq = torch.randint(vocab, (args.batch, args.seq + 1), generator=generator)
        mine = seq[rank * rows:(rank + 1) * rows]
        return mine[:, :-1].contiguous(), mine[:, 1:].contiguous()

    for _ in range(args.warmup):
        trainer.step(*batch())
    batches = [batch() for _ in range(args.steps)]
    start = time.perf_counter()
    tokens = 0
    for x, y in batches:
        tokens += int(trainer.step(x, y)["tokens"])
    seconds = time.perf_counter() - start
    if rank == 0:
        print(json.dumps({"tok_per_s": tokens / seconds, "seconds": seconds, "tokens": tokens, "world": world}))
    ddp.shutdown()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(args: argparse.Namespace, processes: int, threads: int) -> float:
    command = [sys.executable, os.path.abspath(__file__), "--worker", "--threads", str(threads),
               "--config", args.config, "--batch", str(args.batch), "--seq", str(args.seq),
               "--steps", str(args.steps), "--warmup", str(args.warmup)]
    port = free_port()
    procs = []
    for rank in range(processes):
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        if processes > 1:
            env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(processes),
                       RANK=str(rank), LOCAL_RANK=str(rank))
        procs.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True))
    outputs = []
    for proc in procs:
        out, _ = proc.communicate(timeout=1800)
        if proc.returncode != 0:
            raise SystemExit(f"worker failed with exit code {proc.returncode}")
        outputs.append(out)
    record = json.loads(next(line for line in outputs[0].splitlines() if line.startswith("{")))
    return float(record["tok_per_s"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="tiny", help="preset or model config JSON")
    p.add_argument("--batch", type=int, default=8, help="global batch rows per step (even)")
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--steps", type=int, default=6, help="timed optimizer steps")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    if args.batch % 2:
        p.error("--batch must be even (it is split over 2 processes)")
    print(f"config {args.config}, global batch {args.batch} x {args.seq} tokens, {args.steps} timed steps "
          f"after {args.warmup}; load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    best = {"2 processes x 1 thread (gloo DDP)": 0.0, "1 process x 2 threads": 0.0}
    for repeat in range(args.repeats):
        ddp_run, single_run = run(args, 2, 1), run(args, 1, 2)
        print(f"  repeat {repeat + 1}: {ddp_run:,.0f} / {single_run:,.0f} tok/s "
              f"(load {os.getloadavg()[0]:.2f})")
        best["2 processes x 1 thread (gloo DDP)"] = max(best["2 processes x 1 thread (gloo DDP)"], ddp_run)
        best["1 process x 2 threads"] = max(best["1 process x 2 threads"], single_run)
    for name, tok_s in best.items():
        print(f"{name:<36} {tok_s:10,.0f} tok/s")
    ddp, single = best.values()
    print(f"ratio (2 processes / 1 process)      {ddp / single:10.2f}x")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
