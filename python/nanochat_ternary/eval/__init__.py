"""Evaluation harness: held-out loss, Rust compile rate and HumanEval-Rust
pass@k, with generated programs compiled and run in a sandbox (see
`nanochat_ternary.eval.sandbox` for what is enforced where).

CLI: ``python -m nanochat_ternary.eval {humaneval,compile-rate,loss} --help``.
"""

from .generate import Generator, generate
from .loss import LossResult, UnigramModel, evaluate_files, evaluate_shards, evaluate_texts, evaluate_tokens
from .passk import mean_pass_at_k, pass_at_k
from .sandbox import Limits, RunResult, namespaces_available, run_untrusted, sandbox_dir, sandbox_report

__all__ = [
    "Generator",
    "Limits",
    "LossResult",
    "RunResult",
    "UnigramModel",
    "evaluate_files",
    "evaluate_texts",
    "evaluate_shards",
    "evaluate_tokens",
    "generate",
    "mean_pass_at_k",
    "namespaces_available",
    "pass_at_k",
    "run_untrusted",
    "sandbox_dir",
    "sandbox_report",
]
