"""Sampling settings for code, measured on the dev-visible prompts (the harness's built-in set,
not HumanEval): greedy against temperature / top-p / repetition-penalty / n-gram-ban / token-healing settings; the best one
(nontrivial compile rate, then compile rate, then parse rate) becomes the model's
generation_config.

    python examples/rust_coder/sampling.py --model runs/rust-coder.gguf --n 3 \
        --report runs/eval/sampling.json --out runs/generation_config.json

Sampled settings draw --n samples per prompt (seeds 0..n-1); greedy draws one. Writes the full
table to --report and the winner (max_new_tokens 256) to --out.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

SETTINGS: list[dict[str, Any]] = [
    {"do_sample": False},
    {"do_sample": False, "repetition_penalty": 1.1},
    {"do_sample": False, "repetition_penalty": 1.3},
    {"do_sample": False, "no_repeat_ngram_size": 10},
    {"do_sample": False, "repetition_penalty": 1.3, "no_repeat_ngram_size": 10},
    {"do_sample": False, "token_healing": True},
    {"do_sample": False, "repetition_penalty": 1.1, "token_healing": True},
    {"do_sample": False, "repetition_penalty": 1.3, "token_healing": True},
    {"do_sample": True, "temperature": 0.2, "top_p": 0.95},
    {"do_sample": True, "temperature": 0.2, "top_p": 0.95, "repetition_penalty": 1.1},
    {"do_sample": True, "temperature": 0.5, "top_p": 0.95},
    {"do_sample": True, "temperature": 0.8, "top_p": 0.95},
]


def label(setting: dict[str, Any]) -> str:
    if not setting["do_sample"]:
        head = "greedy"
    else:
        head = f"temperature {setting['temperature']}, top-p {setting['top_p']}"
    penalty = setting.get("repetition_penalty")
    ngram = setting.get("no_repeat_ngram_size")
    return (head + (f", repetition penalty {penalty}" if penalty else "") + (f", no repeated {ngram}-grams" if ngram else "")
            + (", token healing" if setting.get("token_healing") else ""))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help=".gguf file or model directory")
    p.add_argument("--n", type=int, default=3, help="samples per prompt for the sampled settings")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--report", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="generation_config JSON of the winner")
    args = p.parse_args()
    if args.n < 1 or args.max_new_tokens < 1:
        p.error("--n and --max-new-tokens must be >= 1")

    from nanochat_ternary.eval.compile_rate import BUILTIN_PROMPTS, evaluate_model
    from nanochat_ternary.model import TernaryModel

    model = TernaryModel.from_pretrained(args.model)
    rows = []
    for setting in SETTINGS:
        n = args.n if setting["do_sample"] else 1
        extra = {"seed": 0} if setting["do_sample"] else {}
        report = evaluate_model(model, BUILTIN_PROMPTS, n=n, max_new_tokens=args.max_new_tokens, **setting, **extra)
        summary = report["summary"]
        rows.append({"setting": setting, "label": label(setting), "samples": summary["samples"],
                     "parse_rate": summary["parse_rate"], "compile_rate": summary["compile_rate"],
                     "nontrivial_compile_rate": summary["nontrivial_compile_rate"]})
        print(f"{label(setting):55s} parse {summary['parse_rate']:.3f}  compile {summary['compile_rate']:.3f}  "
              f"nontrivial {summary['nontrivial_compile_rate']:.3f}  ({summary['samples']} samples)", flush=True)
    best = max(rows, key=lambda r: (r["nontrivial_compile_rate"], r["compile_rate"], r["parse_rate"], not r["setting"]["do_sample"]))
    config = {"max_new_tokens": args.max_new_tokens, "temperature": 1.0, "top_p": 1.0, "repetition_penalty": 1.0,
              **best["setting"]}
    for path, value in ((args.report, {"prompts": len(BUILTIN_PROMPTS), "n": args.n, "rows": rows, "best": best["label"]}),
                        (args.out, config)):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(value, indent=2) + "\n")
        os.replace(tmp, path)
    print(f"best: {best['label']} -> {args.out}")


if __name__ == "__main__":
    main()
