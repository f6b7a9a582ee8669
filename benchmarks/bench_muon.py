"""Muon's Newton-Schulz iteration, two ways, in one run: each step as two scaled GEMMs
(`torch.addmm` with beta / alpha: what `rust/train/src/optim.rs` calls through libtorch, and
`torch.optim.Muon`'s form) against products followed by element-wise passes (the textbook form), on the
2-D projections of a model preset, in the precision the trainer picks (bf16 on CPUs with AVX512-BF16).
Prints time per optimizer step's worth of matrices and each form's distance to the f64 iteration.

    .venv/bin/python benchmarks/bench_muon.py [--config d20] [--threads 1] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reference_model import (
    NEWTON_SCHULZ_COEFFS,
    NEWTON_SCHULZ_STEPS,
    newton_schulz_dtype,
)

HERE = os.path.dirname(os.path.abspath(__file__))


def textbook(g: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    a, b, c = NEWTON_SCHULZ_COEFFS
    x = g.double() if dtype == torch.float64 else g.float()
    tall = x.shape[0] > x.shape[1]
    x = x.T if tall else x
    x = (x / (x.norm() + 1e-7)).to(dtype)
    for _ in range(NEWTON_SCHULZ_STEPS):
        gram = x @ x.T
        poly = gram * b + (gram @ gram) * c
        x = x * a + poly @ x
    return x.T if tall else x


def fused(g: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    a, b, c = NEWTON_SCHULZ_COEFFS
    x = g.float()
    tall = x.shape[0] > x.shape[1]
    x = x.T if tall else x
    x = (x / (x.norm() + 1e-7)).to(dtype).contiguous()
    for _ in range(NEWTON_SCHULZ_STEPS):
        gram = x @ x.T
        poly = torch.addmm(gram, gram, gram, beta=b, alpha=c)
        x = torch.addmm(x, poly, x, beta=a)
    return x.T if tall else x


def shapes(config: str) -> list[tuple[int, int]]:
    from nanochat_ternary.model_config import ModelConfig

    path = os.path.join(os.path.dirname(HERE), "python", "nanochat_ternary", "configs", f"{config}.json")
    with open(path) as f:
        c = ModelConfig.from_json(f.read())
    head_dim = c.dim // c.n_heads
    kv = c.n_kv_heads * head_dim
    per_layer = [(c.dim, c.dim), (kv, c.dim), (kv, c.dim), (c.dim, c.dim),
                 (c.ffn_hidden, c.dim), (c.ffn_hidden, c.dim), (c.dim, c.ffn_hidden)]  # fmt: skip
    return per_layer * c.n_layers


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="d20")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5, help="alternating timed rounds; the best of each form counts")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dtype = newton_schulz_dtype("cpu")
    grads = [torch.randn(s) for s in shapes(args.config)]
    best = {"textbook": float("inf"), "fused": float("inf")}
    for _ in range(args.repeats):
        for name, f in (("textbook", textbook), ("fused", fused)):
            start = time.perf_counter()
            for g in grads:
                f(g, dtype)
            best[name] = min(best[name], time.perf_counter() - start)
    exact = [textbook(g, torch.float64) for g in grads[:7]]
    dist = {name: sum(((f(g, dtype).double() - e).norm() / e.norm()).item() for g, e in zip(grads, exact)) / len(exact)
            for name, f in (("textbook", textbook), ("fused", fused))}  # fmt: skip
    print(f"{args.config}: {len(grads)} matrices, {dtype}, {args.threads} thread(s), best of {args.repeats}; "
          f"load average {os.getloadavg()[0]:.2f}")  # fmt: skip
    for name, seconds in best.items():
        print(f"{name:9s} {seconds * 1e3:8.1f} ms per step   distance to the f64 iteration {dist[name]:.4f}")
    print(f"ratio fused/textbook: time {best['fused'] / best['textbook']:.2f}x")


if __name__ == "__main__":
    main()
