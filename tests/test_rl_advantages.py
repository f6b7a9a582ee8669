"""MaxRL / GRPO advantages against hand-worked values, and the update's row layout.

Run: cd tests && ../.venv/bin/python -m pytest -q test_rl_advantages.py
"""

import math

import pytest
import torch

from nanochat_ternary.rl.advantages import advantages, group_advantages
from nanochat_ternary.rl.loop import micro_batches, pass_at_k_table
from nanochat_ternary.rl.rollouts import Rollout
from nanochat_ternary.rl.loop import rollout_rows


def test_maxrl_binary_rewards_hand_worked():
    # N = 4, K = 1 correct: r̄ = 1/4; correct (1 - 1/4)/(1/4) = 3 = (N - K)/K, wrong (0 - 1/4)/(1/4) = -1.
    assert group_advantages([1, 0, 0, 0], "maxrl") == [3.0, -1.0, -1.0, -1.0]
    # K = 2 of 4: r̄ = 1/2 -> correct 1, wrong -1.
    assert group_advantages([0, 1, 1, 0], "maxrl") == [-1.0, 1.0, 1.0, -1.0]
    # K = 3 of 8: (8 - 3)/3 = 5/3.
    adv = group_advantages([1, 1, 1, 0, 0, 0, 0, 0], "maxrl")
    assert adv[:3] == pytest.approx([5 / 3] * 3, abs=1e-12) and adv[3:] == [-1.0] * 5
    # No success, or all success: nothing to learn.
    assert group_advantages([0, 0, 0], "maxrl") == [0.0, 0.0, 0.0]
    assert group_advantages([1, 1, 1], "maxrl") == [0.0, 0.0, 0.0]
    # Non-binary rewards: r̄ = 1 -> A = r - 1.
    assert group_advantages([2.0, 0.0], "maxrl") == [1.0, -1.0]


def test_grpo_hand_worked():
    # r = [1, 0, 0, 0]: mean 1/4, population std sqrt(1/4 * 3/4) = sqrt(3)/4.
    std = math.sqrt(3) / 4
    adv = group_advantages([1, 0, 0, 0], "grpo")
    assert adv == pytest.approx([0.75 / std, -0.25 / std, -0.25 / std, -0.25 / std], rel=1e-5)
    assert adv[0] == pytest.approx(math.sqrt(3), rel=1e-5) and adv[1] == pytest.approx(-1 / math.sqrt(3), rel=1e-5)
    # Half right: mean 1/2, std 1/2 -> ±1.
    assert group_advantages([1, 0], "grpo") == pytest.approx([1.0, -1.0], rel=1e-5)
    assert group_advantages([1, 1], "grpo") == [0.0, 0.0]
    # MaxRL weights rare successes more than GRPO: at K = 1 of 4, 3 vs sqrt(3).
    assert group_advantages([1, 0, 0, 0], "maxrl")[0] > group_advantages([1, 0, 0, 0], "grpo")[0]


def test_advantage_errors():
    with pytest.raises(ValueError, match="algo"):
        group_advantages([1, 0], "ppo")
    with pytest.raises(ValueError, match="at least one"):
        group_advantages([], "maxrl")
    with pytest.raises(ValueError, match="finite"):
        group_advantages([float("nan"), 1], "grpo")
    assert advantages([[1, 0], [0, 0]], "maxrl") == [[1.0, -1.0], [0.0, 0.0]]


def test_micro_batch_layout_masks_completion_targets_only():
    # prompt [5, 6, 7], completion [8, 9]: inputs [5, 6, 7, 8], targets [6, 7, 8, 9];
    # the targets 8 and 9 (positions 2, 3) are completion tokens.
    rows = rollout_rows([Rollout([5, 6, 7], [8, 9], "", True), Rollout([5, 6], [4], "", True),
                         Rollout([5], [], "", True)], [2.0, -1.0, 3.0], context=16)
    assert len(rows) == 2  # the empty completion has nothing to train
    (tokens, targets, mask, adv), = micro_batches(rows, size=8)
    # Sorted by length: the short row first, padded with 0 and mask 0.
    assert tokens.tolist() == [[5, 6, 0, 0], [5, 6, 7, 8]]
    assert targets.tolist() == [[6, 4, 0, 0], [6, 7, 8, 9]]
    assert mask.tolist() == [[0, 1, 0, 0], [0, 0, 1, 1]]
    assert adv.tolist() == [-1.0, 2.0]
    assert tokens.dtype == torch.int64 and mask.dtype == torch.float32


def test_pass_at_k_table():
    # 2 tasks, n = 4: c = 1 -> pass@1 1/4, pass@2 1/2, pass@4 1; c = 0 -> 0.
    table = pass_at_k_table([(4, 1), (4, 0)], 4)
    assert table == pytest.approx({"pass@1": 0.125, "pass@2": 0.25, "pass@4": 0.5})
