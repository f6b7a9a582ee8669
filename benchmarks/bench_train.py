"""Training throughput and peak memory: ours (the Rust QAT trainer) against a
plain PyTorch eager reference of the same model and math
(`benchmarks/reference_model.py`), the same reference under CPU bf16
autocast, and the same reference through torch.compile (inductor).

Run (from the repository root, after `maturin develop --release`):

    .venv/bin/python benchmarks/bench_train.py [--configs tiny,d20] [--steps 8]
        [--warmup 2] [--batch 8] [--seq 256] [--accum 1] [--threads 2]
        [--repeats 1] [--impls reference,bf16-autocast,compile,ours] [--profile]

"Ours" is `_core.QatTrainer`, the Rust trainer that
`nanochat_ternary.train.Trainer` drives, fed the micro-batches directly (on
CPU its BitLinear runs an int8 forward and a bf16 backward, its LM head in
bf16: `rust/train/src/cpu_bitlinear.rs`). "reference" is the f32 eager
reference, "bf16-autocast" the same under `torch.autocast("cpu",
torch.bfloat16)`, "compile" the same with the model through `torch.compile`
(inductor; compilation happens in the warmup steps, which are not timed). For
each config, each implementation runs in its own subprocess (so its peak RSS
is its own) with the same config, random init of the same distributions, the
same batches (seeded uniform random tokens), `--accum` micro-batches of
`--batch` x `--seq` tokens per optimizer step, the trainer's default
hyper-parameters and the same torch thread count (both use the venv's
libtorch, so `torch.set_num_threads` governs both). Newton–Schulz runs in the
precision the Rust trainer picks: bf16 on CPUs with AVX512-BF16. After
`--warmup` steps, `--steps` timed optimizer steps give tokens/s. With
`--repeats R` the two implementations alternate R times and the best run of
each counts, which damps noise from other processes; the load average is
printed too. On a busy machine use `--threads 1`: with 2 threads the Python
reference, which leaves gaps between ops, loses its second OpenMP thread to
other processes far more often than the Rust loop does (seen: 5-13x swings).

Memory: "peak RSS" is the worker's VmHWM; "train MB" is VmHWM minus the RSS
after imports and data (parameters, gradients, optimizer state, activations).
Both workers import the same modules first, torch._dynamo included (which
torch.optim.Optimizer pulls in, ~115 MB), so the baselines are equal.

`--profile` adds a torch.profiler table of the timed steps per worker (ops
dispatched by the Rust trainer are recorded too: it calls the same libtorch);
PROF_SHAPES=1 splits its rows by input shapes, PROF_ROWS=N sets its length.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

HERE = os.path.dirname(os.path.abspath(__file__))
RESULT_PREFIX = "BENCH_RESULT "
IMPLEMENTATIONS = ("reference", "bf16-autocast", "compile", "ours")
# What print_table calls each reference on its "vs" line.
VERSUS = {"bf16-autocast": "bf16-autocast", "compile": "torch.compile"}


@dataclass(frozen=True)
class Workload:
    config: str
    steps: int
    warmup: int
    batch: int
    seq: int
    accum: int
    threads: int
    seed: int
    profile: bool


@dataclass(frozen=True)
class Result:
    implementation: str
    params: int
    tokens_per_s: float
    median_step_ms: float
    first_loss: float
    last_loss: float
    baseline_rss_mb: float
    peak_rss_mb: float

    @property
    def train_mb(self) -> float:
        return self.peak_rss_mb - self.baseline_rss_mb


# ---- the worker (one implementation, one config) ---------------------------


def _status_mb(field: str) -> float:
    """A memory field of /proc/self/status in MiB; getrusage where there is
    no procfs (maxrss is the peak, so baselines are then overestimates)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_batches(vocab_size: int, w: Workload) -> list[list[tuple[object, object]]]:
    """(tokens, targets) micro-batches for warmup + timed steps, identical in
    every worker: targets are the tokens shifted by one."""
    import torch

    gen = torch.Generator().manual_seed(w.seed)
    steps = []
    for _ in range(w.warmup + w.steps):
        micro = []
        for _ in range(w.accum):
            ids = torch.randint(0, vocab_size, (w.batch, w.seq + 1), generator=gen)
            micro.append((ids[:, :-1].contiguous(), ids[:, 1:].contiguous()))
        steps.append(micro)
    return steps


def default_hyper(seed: int) -> dict:
    """The Rust trainer's default hyper-parameters, with the given seed."""
    from nanochat_ternary import _core

    return {**json.loads(_core.train_default_hyper()), "seed": seed}


def reference_stepper(
    config_name: str, seed: int, autocast: bool = False, compile: bool = False
) -> tuple[int, Callable[[list], float]]:
    import torch

    sys.path.insert(0, HERE)
    from reference_model import ReferenceModel, ReferenceTrainer, TrainHyper

    from nanochat_ternary.model_config import ModelConfig

    torch.manual_seed(seed)
    model = ReferenceModel(ModelConfig.preset(config_name))
    trainer = ReferenceTrainer(model, TrainHyper(**default_hyper(seed)), autocast=autocast, compile=compile)
    params = sum(p.numel() for p in model.parameters())
    return params, trainer.step


def ours_stepper(config_name: str, seed: int) -> tuple[int, Callable[[list], float]]:
    from nanochat_ternary import _core
    from nanochat_ternary.model_config import ModelConfig

    config = ModelConfig.preset(config_name)
    trainer = _core.QatTrainer(config.to_json(), json.dumps(default_hyper(seed)), "cpu")

    def step(micro_batches: list) -> float:
        return float(trainer.step(micro_batches)["loss"])

    return config.param_count, step


def run_worker(implementation: str, w: Workload) -> Result:
    import torch

    torch.set_num_threads(w.threads)
    # torch.optim.Optimizer imports torch._dynamo on first use (~115 MB of
    # modules). Both workers import it before the baseline so that import
    # cost is neither counted as training memory nor different between them.
    import torch._dynamo  # noqa: F401

    from nanochat_ternary.model_config import ModelConfig

    batches = make_batches(ModelConfig.preset(w.config).vocab_size, w)
    baseline = _status_mb("VmRSS")
    if implementation == "ours":
        params, step = ours_stepper(w.config, w.seed)
    else:
        variant = {"bf16-autocast": {"autocast": True}, "compile": {"compile": True}}.get(implementation, {})
        params, step = reference_stepper(w.config, w.seed, **variant)
    losses, times = [], []
    for micro in batches[: w.warmup]:
        losses.append(step(micro))
    profiler = None
    if w.profile:
        from torch.profiler import ProfilerActivity, profile

        profiler = profile(activities=[ProfilerActivity.CPU], record_shapes=bool(os.environ.get("PROF_SHAPES")))
        profiler.__enter__()
    for micro in batches[w.warmup :]:
        start = time.perf_counter()
        losses.append(step(micro))
        times.append(time.perf_counter() - start)
    if profiler is not None:
        profiler.__exit__(None, None, None)
        table = profiler.key_averages(group_by_input_shape=bool(os.environ.get("PROF_SHAPES"))).table(sort_by="self_cpu_time_total", row_limit=int(os.environ.get("PROF_ROWS", "25")))
        print(f"== torch.profiler: {implementation}, {w.config}, {w.steps} timed steps\n{table}", file=sys.stderr)
    tokens = w.steps * w.accum * w.batch * w.seq
    return Result(
        implementation=implementation,
        params=params,
        tokens_per_s=tokens / sum(times),
        median_step_ms=sorted(times)[len(times) // 2] * 1e3,
        first_loss=losses[0],
        last_loss=losses[-1],
        baseline_rss_mb=baseline,
        peak_rss_mb=_status_mb("VmHWM"),
    )


# ---- the driver ------------------------------------------------------------


def spawn(implementation: str, w: Workload) -> Result:
    """Runs one worker in a fresh interpreter and parses its result line."""
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", implementation, "--workload", json.dumps(asdict(w))]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{implementation} worker for {w.config} failed (exit {proc.returncode}):\n{proc.stdout}")
    return Result(**json.loads(lines[-1][len(RESULT_PREFIX) :]))


def best_of(results: Sequence[Result]) -> Result:
    """The fastest run; peak memory is the largest seen (it should not vary)."""
    best = max(results, key=lambda r: r.tokens_per_s)
    peak = max(r.peak_rss_mb for r in results)
    return Result(**{**asdict(best), "peak_rss_mb": peak})


def print_table(rows: list[tuple[Workload, dict[str, Result]]]) -> None:
    head = (
        f"{'config':<6} {'params':>7} {'tokens/step':>14} {'impl':<13} {'tokens/s':>9} "
        f"{'step ms':>8} {'peak RSS MB':>11} {'train MB':>9} {'loss first->last':>17}"
    )
    print(head)
    print("-" * len(head))
    for w, results in rows:
        shape = f"{w.accum}x{w.batch}x{w.seq}"
        for r in results.values():
            print(
                f"{w.config:<6} {r.params / 1e6:6.2f}M {shape:>14} {r.implementation:<13} {r.tokens_per_s:9.0f} "
                f"{r.median_step_ms:8.1f} {r.peak_rss_mb:11.0f} {r.train_mb:9.0f} "
                f"{r.first_loss:8.3f}->{r.last_loss:<7.3f}"
            )
        ours, ref = results.get("ours"), results.get("reference")
        if ours is not None and ref is not None:
            print(
                f"{'':<6} ratio ours/reference: speed {ours.tokens_per_s / ref.tokens_per_s:.2f}x, "
                f"peak RSS {ours.peak_rss_mb / ref.peak_rss_mb:.2f}x, train MB {ours.train_mb / ref.train_mb:.2f}x"
            )
        for impl, label in VERSUS.items():
            other = results.get(impl)
            if ours is not None and other is not None:
                print(
                    f"{'':<6} vs {label}: {ours.tokens_per_s / other.tokens_per_s:.2f}x "
                    f"(peak RSS {ours.peak_rss_mb / other.peak_rss_mb:.2f}x, "
                    f"train MB {ours.train_mb / other.train_mb:.2f}x)"
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="tiny,d20", help="comma-separated presets")
    parser.add_argument("--steps", type=int, default=8, help="timed optimizer steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed optimizer steps first")
    parser.add_argument("--batch", type=int, default=8, help="sequences per micro-batch")
    parser.add_argument("--seq", type=int, default=256, help="tokens per sequence")
    parser.add_argument("--accum", type=int, default=1, help="micro-batches per optimizer step")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (both implementations)")
    parser.add_argument("--repeats", type=int, default=1, help="alternating runs per implementation; best counts")
    parser.add_argument(
        "--impls", default=",".join(IMPLEMENTATIONS), help=f"comma-separated subset of {', '.join(IMPLEMENTATIONS)}"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", action="store_true", help="print a torch.profiler table per worker")
    parser.add_argument("--worker", choices=IMPLEMENTATIONS, help=argparse.SUPPRESS)
    parser.add_argument("--workload", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        result = run_worker(args.worker, Workload(**json.loads(args.workload)))
        print(RESULT_PREFIX + json.dumps(asdict(result)), flush=True)
        return

    for name, value in (("steps", args.steps), ("batch", args.batch), ("seq", args.seq), ("accum", args.accum)):
        if value < 1:
            parser.error(f"--{name} must be at least 1, got {value}")
    if args.warmup < 0 or args.threads < 1 or args.repeats < 1:
        parser.error("--warmup must be >= 0, --threads and --repeats >= 1")
    impls = [i.strip() for i in args.impls.split(",") if i.strip()]
    unknown = [i for i in impls if i not in IMPLEMENTATIONS]
    if unknown or not impls:
        parser.error(f"--impls: unknown {unknown or 'empty'}; choose from {', '.join(IMPLEMENTATIONS)}")
    impls = [i for i in IMPLEMENTATIONS if i in impls]
    from nanochat_ternary.model_config import PRESETS, ModelConfig

    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    for name in configs:
        if name not in PRESETS:
            parser.error(f"unknown config {name!r}; presets: {', '.join(PRESETS)}")
        if args.seq > ModelConfig.preset(name).max_seq_len:
            parser.error(f"--seq {args.seq} exceeds {name}'s max_seq_len {ModelConfig.preset(name).max_seq_len}")

    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; threads {args.threads}")
    rows = []
    for name in configs:
        w = Workload(
            config=name,
            steps=args.steps,
            warmup=args.warmup,
            batch=args.batch,
            seq=args.seq,
            accum=args.accum,
            threads=args.threads,
            seed=args.seed,
            profile=args.profile,
        )
        runs: dict[str, list[Result]] = {impl: [] for impl in impls}
        for _ in range(args.repeats):
            for impl in impls:
                runs[impl].append(spawn(impl, w))
        rows.append((w, {impl: best_of(results) for impl, results in runs.items()}))
    print(f"load average after:  {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print_table(rows)


if __name__ == "__main__":
    main()
