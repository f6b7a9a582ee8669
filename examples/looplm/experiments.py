"""LoopLM and mHC-lite experiments on the Rust corpus: equal training tokens, the same data.

    python examples/looplm/experiments.py --data /work/data/rust-mix-full --runs /work/runs/looplm \
        --steps 600 --threads 2 > /work/runs/looplm/report.md

Runs (dim 256, 4 heads, SwiGLU 768, vocab 8192, context 256, batch 8 x 256, the same schedule):

* ``plain-k``  : k = 2 plain layers;
* ``loop-kxT`` : the same 2 layers looped T = 3 times with an exit gate (beta = 0.05): the
  parameters of ``plain-k``, the compute of ``plain-kT``;
* ``plain-kT`` : k*T = 6 plain layers;
* ``mhc2``, ``mhc4``: ``plain-kT`` with mHC-lite N = 2 / 4 residual streams (+1 % parameters).

Every run trains with ``python -m nanochat_ternary.train`` (skipped when it already finished), then
this script measures, on the same fixed held-out windows (128 x 256 tokens spread evenly over the
validation split: whole crates the training never saw):

1. held-out loss of every run (training forward, full depth), beside the trainer's own end-of-run
   validation loss (its first 16 validation batches);
2. for ``loop-kxT`` exported to GGUF: the early-exit threshold sweep in the engine -- held-out loss
   and mean loops per token at each threshold (prefill, which applies the same per-token exit rule
   as decode), the loss with the skipped loops' keys and values computed exactly instead of copied
   (``exit_kv="compute"``: what the copy costs), and greedy decode tokens/s, all thresholds in one
   process, side by side;
3. for the mHC runs: the composite residual map (product of every sub-layer's H_res) per held-out
   token -- its forward gain (max row sum), backward gain (max column sum), spectral norm and
   distance from the identity.

It prints markdown tables and writes ``report.json`` into ``--runs``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

BASE = {
    "vocab_size": 8192, "dim": 256, "n_heads": 4, "n_kv_heads": 4, "ffn_hidden": 768,
    "ffn_activation": "swiglu", "max_seq_len": 256, "tie_embeddings": True,
}
K, T = 2, 3
RUNS = {
    "plain-k": {"n_layers": K},
    "loop-kxT": {"n_layers": K, "loop": {"loops": T, "exit_gate": True, "entropy_weight": 0.05}},
    "plain-kT": {"n_layers": K * T},
    "mhc2": {"n_layers": K * T, "mhc_streams": 2},
    "mhc4": {"n_layers": K * T, "mhc_streams": 4},
}
THRESHOLDS = [1.0, 0.95, 0.9, 0.8, 0.7, 0.5, 0.3, 0.1]
WINDOWS, WINDOW = 128, 256
DECODE_PROMPTS = ["/// Returns the sum of the squares of `v`.\npub fn sum_squares(v: &[i64]) -> i64 {\n",
                  "impl Default for Config {\n", "fn parse_line(line: &str) -> Option<(String, u32)> {\n"]
DECODE_TOKENS = 200
REPEATS = 7


def train(name: str, args: argparse.Namespace) -> Path:
    out = args.runs / name
    if (out / "latest").is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    config = {"name": f"looplm-{name}", **BASE, **RUNS[name]}
    (out.parent / f"{name}.json").write_text(json.dumps(config, indent=1))
    cmd = [sys.executable, "-m", "nanochat_ternary.train", "--config", str(out.parent / f"{name}.json"),
           "--data", str(args.data), "--out", str(out), "--steps", str(args.steps), "--batch-size", "8",
           "--seq-len", "256", "--warmup", str(args.steps // 10), "--decay-frac", "0.3",
           "--eval-every", str(args.steps), "--eval-batches", "16", "--save-every", str(args.steps),
           "--keep", "1", "--log-every", "20", "--threads", str(args.threads), "--no-progress"]
    start = time.time()
    with open(out.parent / f"{name}.out", "w") as log:
        subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT)
    print(f"trained {name} in {time.time() - start:.0f} s", file=sys.stderr)
    return out


def held_out_windows(data: Path) -> np.ndarray:
    from nanochat_ternary.data.shards import TokenShards

    val = TokenShards(data, "val")
    starts = np.linspace(0, len(val) - WINDOW - 2, WINDOWS).astype(np.int64)
    return np.stack([val.read(int(s), WINDOW + 1).astype(np.int64) for s in starts])


def training_loss(run: Path, windows: np.ndarray):
    from nanochat_ternary.qat import QatModel

    model = QatModel.from_checkpoint(run / (run / "latest").read_text().strip())
    x, y = torch.from_numpy(windows[:, :-1]), torch.from_numpy(windows[:, 1:])
    losses = [model.loss(x[i : i + 8], y[i : i + 8]) for i in range(0, len(x), 8)]
    return model, float(np.mean(losses))


def engine_loss(engine, windows: np.ndarray) -> float:
    total = 0.0
    for w in windows:
        logits = engine.logits(w[:-1].tolist()).astype(np.float64)
        m = logits.max(-1, keepdims=True)
        logz = (m[:, 0] + np.log(np.exp(logits - m).sum(-1)))
        total += float(np.mean(logz - logits[np.arange(WINDOW), w[1:]]))
    return total / len(windows)


def threshold_sweep(run: Path, windows: np.ndarray) -> list[dict]:
    from nanochat_ternary import _core, export
    from nanochat_ternary.tokenizer import Tokenizer

    gguf = run / "model.gguf"
    if not gguf.is_file():
        export.export_checkpoint(run, None, gguf)
    engine = _core.Engine(str(gguf))
    tok = Tokenizer.from_json(engine.tokenizer_json())
    prompts = [[engine.bos_token_id, *tok.encode(p)] for p in DECODE_PROMPTS]
    rows = []
    for threshold in THRESHOLDS:
        engine.exit_threshold = threshold
        engine.reset_depth()
        loss = engine_loss(engine, windows)
        depth = engine.mean_depth()[0]
        # The same exits with the skipped loops' keys and values computed exactly: what the copy costs.
        engine.exit_kv = "compute"
        exact = engine_loss(engine, windows)
        engine.exit_kv = "copy"
        rows.append({"threshold": threshold, "loss": loss, "loss_exact_kv": exact, "mean_depth": depth,
                     "decode_tok_s": 0.0})
    # Decode speed: the same prompts and lengths (greedy, EOS ignored by stop_ids=[]); the
    # thresholds take turns REPEATS times so drift on a shared machine hits them alike; best time.
    for _ in range(REPEATS):
        for r in rows:
            engine.exit_threshold = r["threshold"]
            engine.reset_depth()
            start = time.perf_counter()
            for p in prompts:
                engine.generate([p], DECODE_TOKENS, stop_ids=[])
            rate = len(prompts) * DECODE_TOKENS / (time.perf_counter() - start)
            r["decode_tok_s"] = max(r["decode_tok_s"], rate)
            r["decode_mean_depth"] = engine.mean_depth()[0]  # prompt + generated tokens
    base = rows[0]
    for r in rows:
        r["speedup"] = r["decode_tok_s"] / base["decode_tok_s"]
        r["loss_increase"] = r["loss"] / base["loss"] - 1.0
    return rows


def composite_gain(model, windows: np.ndarray) -> dict:
    x = torch.from_numpy(windows[:16, :-1])
    maps = [m.double() for m in model.residual_maps(x)]
    composite = maps[0]
    for m in maps[1:]:
        composite = m @ composite  # x_{l+1} = H_l x_l: later maps multiply from the left
    n = composite.shape[-1]
    eye = torch.eye(n, dtype=torch.float64)
    first = maps[0]
    return {
        "sublayers": len(maps),
        "forward_gain_max": float(composite.abs().sum(-1).max()),
        "backward_gain_max": float(composite.abs().sum(-2).max()),
        "spectral_norm_max": float(torch.linalg.matrix_norm(composite, ord=2).max()),
        "distance_from_identity_mean": float((composite - eye).abs().sum((-2, -1)).mean() / n),
        "first_map_distance_from_identity_mean": float((first - eye).abs().sum((-2, -1)).mean() / n),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--runs", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", nargs="*", default=list(RUNS), choices=list(RUNS))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    windows = held_out_windows(args.data)
    report: dict = {"steps": args.steps, "tokens_per_run": args.steps * 8 * 256,
                    "held_out_tokens": int(windows.shape[0] * WINDOW), "runs": {}}
    for name in args.only:
        run = train(name, args)
        model, loss = training_loss(run, windows)
        log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]
        rates = [e["tok_per_s"] for e in log if "tok_per_s" in e][1:]  # the first includes warm-up
        val = [e for e in log if "val_loss" in e]
        entry = {"params": model.param_count, "held_out_loss": loss,
                 "trainer_val_loss": val[-1]["val_loss"] if val else None,
                 "train_tok_s": float(np.median(rates)) if rates else None}
        if model.config.mhc_streams > 1:
            entry["composite"] = composite_gain(model, windows)
        if model.config.loops > 1:
            entry["threshold_sweep"] = threshold_sweep(run, windows)
        report["runs"][name] = entry
        (args.runs / "report.json").write_text(json.dumps(report, indent=1))
    print_tables(report)


def print_tables(report: dict) -> None:
    runs = report["runs"]
    print(f"Equal training tokens: {report['tokens_per_run']:,} per run; held-out loss on "
          f"{report['held_out_tokens']:,} tokens of held-out crates.\n")
    print("| run | params | held-out loss | trainer's val loss | train tok/s |\n|---|---|---|---|---|")
    for name, r in runs.items():
        print(f"| {name} | {r['params']:,} | {r['held_out_loss']:.4f} | {r.get('trainer_val_loss') or 0:.4f} "
              f"| {r['train_tok_s'] or 0:,.0f} |")
    for name, r in runs.items():
        if "threshold_sweep" in r:
            print(f"\nEarly exit ({name}, engine, greedy decode of {DECODE_TOKENS} tokens x "
                  f"{len(DECODE_PROMPTS)} prompts, best of {REPEATS} interleaved rounds):\n")
            print("| threshold | mean loops (held-out) | held-out loss | loss vs full depth | loss, skipped KV computed "
                  "| mean loops (decode) | decode tok/s | speed-up |")
            print("|---|---|---|---|---|---|---|---|")
            for s in r["threshold_sweep"]:
                print(f"| {s['threshold']} | {s['mean_depth']:.2f} | {s['loss']:.4f} | {100 * s['loss_increase']:+.2f} % "
                      f"| {s.get('loss_exact_kv', float('nan')):.4f} | {s.get('decode_mean_depth', float('nan')):.2f} "
                      f"| {s['decode_tok_s']:,.0f} | {s['speedup']:.2f}x |")
    mhc = {n: r for n, r in runs.items() if "composite" in r}
    if mhc:
        print("\nComposite residual map (product of all H_res) over held-out tokens:\n")
        print("| run | sub-layers | forward gain (max row sum) | backward gain (max col sum) | spectral norm | "
              "mean distance from I (composite / first map) |\n|---|---|---|---|---|---|")
        for name, r in mhc.items():
            c = r["composite"]
            print(f"| {name} | {c['sublayers']} | {c['forward_gain_max']:.6f} | {c['backward_gain_max']:.6f} | "
                  f"{c['spectral_norm_max']:.6f} | {c['distance_from_identity_mean']:.4f} / "
                  f"{c['first_map_distance_from_identity_mean']:.4f} |")


if __name__ == "__main__":
    main()
