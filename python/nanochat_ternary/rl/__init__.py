"""RL from compiler and test feedback: MaxRL and a GRPO baseline (issue 20).

- :mod:`.tasks`: the task record and loader (train / held-out families, provenance).
- :mod:`.generator`: the procedural task generator (references run to make the tests).
- :mod:`.rewards`: batched rustc + sandboxed test runs, binary rewards.
- :mod:`.advantages`: MaxRL and GRPO advantages per prompt group.
- :mod:`.rollouts`: sampling through the Rust engine, in-memory weight sync.
- :mod:`.loop`: the training loop (update on tch in Rust), logging, checkpoints, exact resume.

Command line: ``python -m nanochat_ternary.rl --help``.
"""
