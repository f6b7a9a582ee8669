"""Advantages of one prompt group's rollouts (MaxRL and GRPO share everything else).

With N rollouts of a prompt, rewards r_i and their mean r̄:

* **MaxRL** (arXiv 2602.02710, maximizes log pass-rate): A_i = (r_i − r̄) / r̄,
  and 0 for the whole group when r̄ = 0 (only prompts with some success teach).
  With binary rewards and K of N correct: correct samples get (N − K)/K, wrong −1.
* **GRPO**: A_i = (r_i − r̄) / (σ + ε), σ the group's population standard
  deviation; 0 for the whole group when σ = 0 (all equal).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

ALGOS = ("maxrl", "grpo")
GRPO_EPS = 1e-6


def group_advantages(rewards: Sequence[float], algo: str) -> list[float]:
    """Advantages of one group's rewards under ``algo`` ("maxrl" or "grpo")."""
    if algo not in ALGOS:
        raise ValueError(f"algo must be one of {ALGOS}, got {algo!r}")
    values = [float(r) for r in rewards]
    if not values:
        raise ValueError("a group needs at least one reward")
    if any(not math.isfinite(r) for r in values):
        raise ValueError(f"rewards must be finite, got {values}")
    n = len(values)
    mean = sum(values) / n
    if algo == "maxrl":
        if mean <= 0.0:
            return [0.0] * n
        return [(r - mean) / mean for r in values]
    std = math.sqrt(sum((r - mean) ** 2 for r in values) / n)
    if std == 0.0:
        return [0.0] * n
    return [(r - mean) / (std + GRPO_EPS) for r in values]


def advantages(groups: Sequence[Sequence[float]], algo: str) -> list[list[float]]:
    """:func:`group_advantages` of every group."""
    return [group_advantages(g, algo) for g in groups]
