"""RL from compiler and test feedback (MaxRL / GRPO) on the Rust task set.

    python -m nanochat_ternary.rl --model RUN|CKPT --out runs/rl --algo maxrl --rollouts 16 --steps 100
    python -m nanochat_ternary.rl --out runs/rl --resume
    python -m nanochat_ternary.rl generate --out python/nanochat_ternary/rl/data/tasks.jsonl \
        --functions /work/data/rust-fn --crates /work/data/crates     # + tasks mined from the verified corpus
    python -m nanochat_ternary.rl eval --model runs/rl/final.gguf --split heldout --samples 8 [--output r.json]
    python -m nanochat_ternary.rl sft --model MODEL.gguf --out runs/sft     # warm start on train families

Training logs to ``OUT/log.jsonl`` (mean reward, pass rate, compile rate, KL,
entropy, rollouts/s, checks/s per step; held-out pass@k every --eval-every
steps), writes exact-resume checkpoints and exports ``OUT/final.gguf``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

import torch

from .._atomic import write_json
from .advantages import ALGOS
from .loop import RLConfig, RLRun, eval_subset, evaluate, trainer_from_checkpoint
from .tasks import load_tasks, split_counts, write_tasks


def _positive(text: str) -> int:
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def train_parser() -> argparse.ArgumentParser:
    d = RLConfig()
    p = argparse.ArgumentParser(prog="python -m nanochat_ternary.rl", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--model", help="trainer checkpoint or run directory to start from (its latest checkpoint)")
    p.add_argument("--tokenizer", help="tokenizer.json (default: the run's own, from its data directory)")
    p.add_argument("--tasks", help="task jsonl (default: the shipped task set)")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--resume", action="store_true", help="continue the run in --out with its saved settings")
    p.add_argument("--algo", choices=ALGOS, default=d.algo)
    p.add_argument("--rollouts", type=_positive, default=d.rollouts, help="N rollouts per prompt (8-64)")
    p.add_argument("--prompts", type=_positive, default=d.prompts_per_step, help="prompts per step")
    p.add_argument("--steps", type=_positive, default=None,
                   help=f"steps of the run (default {d.steps}); with --resume: extend the run to this many")
    p.add_argument("--max-new-tokens", type=_positive, default=d.max_new_tokens)
    p.add_argument("--temperature", type=float, default=d.temperature)
    p.add_argument("--top-p", type=float, default=d.top_p)
    p.add_argument("--lr-muon", type=float, default=d.lr_muon)
    p.add_argument("--lr-lion", type=float, default=d.lr_lion)
    p.add_argument("--warmup", type=int, default=d.warmup)
    p.add_argument("--clip", type=float, default=d.clip)
    p.add_argument("--kl", type=float, default=d.kl_coef, help="KL penalty coefficient to the starting policy")
    p.add_argument("--micro-batch", type=_positive, default=d.micro_batch, help="rollouts per update micro-batch")
    p.add_argument("--families", nargs="*", help="train only on these train families")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--eval-every", type=int, default=d.eval_every, help="held-out pass@k every N steps (0 = off)")
    p.add_argument("--eval-tasks", type=_positive, default=d.eval_tasks)
    p.add_argument("--eval-samples", type=_positive, default=d.eval_samples)
    p.add_argument("--eval-temperature", type=float, default=d.eval_temperature)
    p.add_argument("--save-every", type=_positive, default=d.save_every)
    p.add_argument("--keep", type=_positive, default=d.keep, help="checkpoints kept (the newest)")
    p.add_argument("--workers", type=_positive, default=d.workers, help="parallel rustc / test runs")
    p.add_argument("--threads", type=_positive, default=None, help="libtorch CPU threads")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--no-progress", action="store_true")
    return p


def _train(argv: Sequence[str]) -> int:
    parser = train_parser()
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        if args.resume:
            run = RLRun.resume(args.out, steps=args.steps)
        else:
            if not args.model:
                parser.error("--model is required unless --resume")
            config = RLConfig(
                algo=args.algo, rollouts=args.rollouts, prompts_per_step=args.prompts,
                steps=args.steps if args.steps is not None else RLConfig().steps,
                max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                lr_muon=args.lr_muon, lr_lion=args.lr_lion, warmup=args.warmup, clip=args.clip, kl_coef=args.kl,
                micro_batch=args.micro_batch, seed=args.seed, families=args.families or None,
                eval_every=args.eval_every, eval_tasks=args.eval_tasks, eval_samples=args.eval_samples,
                eval_temperature=args.eval_temperature, save_every=args.save_every, keep=args.keep,
                workers=args.workers,
            )  # fmt: skip
            config.validate()
            tasks = load_tasks(args.tasks, verify=True, workers=args.workers)
            if tasks.rejected:
                print(f"rejected {tasks.rejected} task(s) whose reference fails its tests: "
                      f"{', '.join(tasks.rejected_names[:10])}", file=sys.stderr)  # fmt: skip
            trainer = trainer_from_checkpoint(args.model, config, device=args.device)
            if args.tokenizer:
                tokenizer, bos = args.tokenizer, None
            else:
                from ..export import run_tokenizer

                tokenizer, bos = run_tokenizer(args.model)
            run = RLRun.start(trainer, tokenizer, bos, tasks, args.out, config)
            if config.eval_every:
                run.evaluate()
        run.fit(progress=not args.no_progress)
        if run.config.eval_every and run.config.steps % run.config.eval_every:
            run.evaluate()  # the last step's eval, unless the loop just ran it
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {run.out / 'final.gguf'} and {run.out / 'log.jsonl'}")
    return 0


def _generate(argv: Sequence[str]) -> int:
    from .generator import generate_tasks
    from .tasks import TaskSet, verify_tasks

    p = argparse.ArgumentParser(prog="python -m nanochat_ternary.rl generate",
                                description="Generate (and verify) the procedural task set.")  # fmt: skip
    p.add_argument("--out", required=True)
    p.add_argument("--per-family", type=_positive, default=60)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=_positive, default=2)
    p.add_argument("--functions", help="also mine tasks from this verified function corpus (data functions/verify)")
    p.add_argument("--crates", help="the fetch-crates directory (licences of mined functions)")
    args = p.parse_args(argv)
    tasks = generate_tasks(per_family=args.per_family, seed=args.seed)
    if args.functions:
        from .mined import mine

        mined, counts = mine(args.functions, args.crates, seed=args.seed)
        print(json.dumps({"mined": counts}), file=sys.stderr)
        tasks += mined
    checked = verify_tasks(TaskSet(tasks, "generated", ""), workers=args.workers)
    n = write_tasks(checked.tasks, args.out)
    counts = split_counts(checked.tasks)
    print(json.dumps({"written": n, "rejected": checked.rejected,
                      "families": {s: len(f) for s, f in counts.items()},
                      "tasks": {s: sum(f.values()) for s, f in counts.items()}}))  # fmt: skip
    return 0


def _eval(argv: Sequence[str]) -> int:
    from ..model import TernaryModel
    from .rollouts import Policy

    p = argparse.ArgumentParser(prog="python -m nanochat_ternary.rl eval",
                                description="pass@k of a model on a split of the task set.")  # fmt: skip
    p.add_argument("--model", required=True, help="GGUF file / model directory / zoo name")
    p.add_argument("--tasks")
    p.add_argument("--split", choices=["train", "heldout"], default="heldout")
    p.add_argument("--limit", type=_positive, default=64, help="tasks (a fixed subset)")
    p.add_argument("--samples", type=_positive, default=8)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--max-new-tokens", type=_positive, default=128)
    p.add_argument("--workers", type=_positive, default=2)
    p.add_argument("--output", help="also write the result JSON here (atomically)")
    args = p.parse_args(argv)
    tasks = eval_subset(load_tasks(args.tasks).split(args.split), args.limit)
    policy = Policy.from_model(TernaryModel.from_pretrained(args.model, kv_cache="f32"))
    result = evaluate(policy, tasks, args.samples, max_new_tokens=args.max_new_tokens,
                      temperature=args.temperature, workers=args.workers)  # fmt: skip
    record = {"model": args.model, "split": args.split, **result}
    print(json.dumps(record))
    if args.output:
        write_json(args.output, record)
    return 0


def _sft(argv: Sequence[str]) -> int:
    from .sft import run_sft

    p = argparse.ArgumentParser(prog="python -m nanochat_ternary.rl sft",
                                description="Warm start: fine-tune on the train families' references.")  # fmt: skip
    p.add_argument("--model", required=True, help="GGUF export or trainer checkpoint / run directory")
    p.add_argument("--tasks")
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=_positive, default=200)
    p.add_argument("--batch", type=_positive, default=32)
    p.add_argument("--lr-muon", type=float, default=5e-3)
    p.add_argument("--lr-lion", type=float, default=2e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=_positive, default=None)
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    tasks = load_tasks(args.tasks).split("train")
    path = run_sft(args.model, tasks, args.out, args.steps, args.batch, args.lr_muon, args.lr_lion, args.seed,
                   progress=not args.no_progress)  # fmt: skip
    print(f"wrote {path} ({args.out}/sft.gguf, tokenizer.json, sft.json)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "sft":
        return _sft(argv[1:])
    if argv and argv[0] == "generate":
        return _generate(argv[1:])
    if argv and argv[0] == "eval":
        return _eval(argv[1:])
    return _train(argv)


if __name__ == "__main__":
    sys.exit(main())
