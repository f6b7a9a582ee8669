"""``python -m nanochat_ternary.eval {humaneval,compile-rate,loss}``.

Models plug in as ``--generator MODULE:ATTR`` (a callable prompts -> completions,
or an object / zero-argument factory result with ``.generate``) or, for loss,
``--nll MODULE:ATTR`` (token ids -> per-token NLL in nats). Reports are JSON.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import sys
from pathlib import Path
from typing import Any

from . import compile_rate, humaneval, loss


def _load_attr(spec: str) -> Any:
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise argparse.ArgumentTypeError(f"expected MODULE:ATTR, got {spec!r}")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise argparse.ArgumentTypeError(f"cannot load {spec!r}: {exc}") from exc


def _sampling_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-new-tokens", type=_positive_int, default=256, help="with --model")
    parser.add_argument("--temperature", type=float, default=0.2, help="with --model (0 = greedy)")
    parser.add_argument("--top-p", type=float, default=0.95, help="with --model")
    parser.add_argument("--seed", type=int, default=0, help="with --model; sample j uses seed + j")
    parser.add_argument("--repetition-penalty", type=float, default=None,
                        help="with --model (default: the model's generation_config; 1 = off)")
    parser.add_argument("--no-repeat-ngram-size", type=int, default=None,
                        help="with --model: ban repeating n-grams of this many tokens (0 = off; default: generation_config)")
    parser.add_argument("--token-healing", choices=["on", "off"], default=None,
                        help="with --model (default: the model's generation_config)")


def _model_generator(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """A TernaryModel for ``--model`` and the sampling arguments for its ``generate``."""
    from ..model import TernaryModel

    model = TernaryModel.from_pretrained(args.model)
    # No stop strings: generate() would drop them from the text, and the harness needs to see
    # where a completion closed (it truncates at the problem's stop sequences itself). Without
    # them the engine also decodes all prompts as one batch.
    sampling: dict[str, Any] = {"max_new_tokens": args.max_new_tokens, "seed": args.seed, "truncate": True}
    if args.temperature > 0:
        sampling.update(do_sample=True, temperature=args.temperature, top_p=args.top_p)
    else:
        sampling.update(do_sample=False)
    if args.repetition_penalty is not None:
        if not (math.isfinite(args.repetition_penalty) and args.repetition_penalty > 0):
            raise ValueError(f"--repetition-penalty must be a finite number > 0, got {args.repetition_penalty}")
        sampling["repetition_penalty"] = args.repetition_penalty
    if args.no_repeat_ngram_size is not None:
        if args.no_repeat_ngram_size < 0:
            raise ValueError(f"--no-repeat-ngram-size must be >= 0, got {args.no_repeat_ngram_size}")
        sampling["no_repeat_ngram_size"] = args.no_repeat_ngram_size
    if args.token_healing is not None:
        sampling["token_healing"] = args.token_healing == "on"
    return model, sampling


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m nanochat_ternary.eval", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    he = sub.add_parser("humaneval", help="HumanEval-Rust pass@k")
    source = he.add_mutually_exclusive_group(required=True)
    source.add_argument("--completions", type=Path, help="jsonl of {name, completion} per sample")
    source.add_argument("--generator", type=_load_attr, help="MODULE:ATTR producing completions")
    source.add_argument("--model", help="TernaryModel: .gguf, directory, zoo name or hub id")
    _sampling_args(he)
    he.add_argument("--problems", type=Path, default=None, help="problem jsonl (default: vendored)")
    he.add_argument("--limit", type=_positive_int, default=None, help="only the first N problems")
    he.add_argument("--n", type=_positive_int, default=1, help="samples per problem (with --generator)")
    he.add_argument("--k", type=_positive_int, nargs="+", default=[1, 10])
    he.add_argument("--parallel", type=_positive_int, default=2)
    he.add_argument("--output", type=Path, default=None, help="write the JSON report here")

    cr = sub.add_parser("compile-rate", help="syn parse rate and rustc compile rate")
    source = cr.add_mutually_exclusive_group(required=True)
    source.add_argument("--completions", type=Path, help="jsonl of {prompt, completion} or {source}")
    source.add_argument("--generator", type=_load_attr, help="MODULE:ATTR producing completions")
    source.add_argument("--model", help="TernaryModel: .gguf, directory, zoo name or hub id")
    _sampling_args(cr)
    cr.add_argument("--prompts", type=Path, default=None, help="prompt file (default: built-in set)")
    cr.add_argument("--n", type=_positive_int, default=1)
    cr.add_argument("--no-rustc", action="store_true", help="syn parse check only")
    cr.add_argument("--parallel", type=_positive_int, default=2)
    cr.add_argument("--output", type=Path, default=None)

    lo = sub.add_parser("loss", help="mean loss, perplexity, bits per byte")
    data = lo.add_mutually_exclusive_group(required=True)
    data.add_argument("--text", type=Path, nargs="+", help="raw UTF-8 text files")
    data.add_argument("--data", type=Path, help="token data directory (meta.json + shards)")
    lo.add_argument("--split", default="val", help="split of --data")
    lo.add_argument("--max-tokens", type=_positive_int, default=None, help="score only the first N tokens of --data")
    model = lo.add_mutually_exclusive_group(required=True)
    model.add_argument("--model", help="TernaryModel (its tokenizer encodes --text; context = its context)")
    model.add_argument("--nll", type=_load_attr, help="MODULE:ATTR: token ids -> NLL per token (nats)")
    model.add_argument("--unigram-fit", type=Path, nargs="+", help="baseline: byte unigram fitted on files")
    lo.add_argument("--encode", type=_load_attr, default=None, help="MODULE:ATTR: text -> ids (default bytes)")
    lo.add_argument("--context", type=_positive_int, default=1024)
    lo.add_argument("--output", type=Path, default=None)
    return parser


def _read_sources(path: Path) -> list[str]:
    sources = []
    for number, line in enumerate(path.read_text("utf-8").splitlines(), start=1):
        if line.strip():
            row = json.loads(line)
            if "source" in row:
                sources.append(str(row["source"]))
            elif "prompt" in row and "completion" in row:
                sources.append(compile_rate.complete_source(str(row["prompt"]), str(row["completion"])))
            else:
                raise ValueError(f"{path}, line {number}: expected {{source}} or {{prompt, completion}}")
    return sources


def _run(args: argparse.Namespace) -> dict[str, Any]:
    sampling: dict[str, Any] = {}
    if args.command != "loss" and args.model is not None:
        args.generator, sampling = _model_generator(args)
    if args.command == "humaneval":
        problems = humaneval.load_problems(args.problems)
        if args.generator is not None:
            return humaneval.evaluate_model(args.generator, problems[: args.limit], n=args.n, ks=args.k,
                                            parallel=args.parallel, **sampling)  # fmt: skip
        completions = humaneval.read_completions(args.completions)
        if args.limit is not None:
            problems = problems[: args.limit]
        else:
            problems = [p for p in problems if p.name in completions]
        completions = {p.name: completions.get(p.name, []) for p in problems}
        return humaneval.evaluate_completions(problems, completions, ks=args.k, parallel=args.parallel)
    if args.command == "compile-rate":
        if args.generator is not None:
            prompts = compile_rate.read_prompts(args.prompts) if args.prompts else None
            return compile_rate.evaluate_model(args.generator, prompts, n=args.n, use_rustc=not args.no_rustc,
                                               parallel=args.parallel, **sampling)  # fmt: skip
        return compile_rate.evaluate_sources(_read_sources(args.completions), use_rustc=not args.no_rustc,
                                             parallel=args.parallel)  # fmt: skip
    encode = args.encode or loss.utf8_byte_ids
    context = args.context
    if args.model is not None:
        from ..model import TernaryModel

        model = TernaryModel.from_pretrained(args.model)
        nll_fn: Any = model.nll
        context = min(context, model.context_length)
        if args.encode is None:
            encode = lambda text: model.encode(text, add_bos=False)  # noqa: E731
    elif args.unigram_fit:
        fit_ids = loss.utf8_byte_ids("".join(p.read_text("utf-8") for p in args.unigram_fit))
        nll_fn = loss.UnigramModel.fit(fit_ids, vocab=256)
    else:
        nll_fn = args.nll
    if args.data is not None:
        if args.unigram_fit:
            raise ValueError("--unigram-fit scores bytes; use it with --text")
        result = loss.evaluate_shards(nll_fn, args.data, split=args.split, context=context, max_tokens=args.max_tokens)
    else:
        result = loss.evaluate_files(nll_fn, args.text, encode=encode, context=context)
    return {"loss": result.__dict__}


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if args.output is not None:
            # Before the (possibly long) run, so a bad path fails at once and a result is never lost.
            args.output.parent.mkdir(parents=True, exist_ok=True)
            if args.output.is_dir():
                raise ValueError(f"--output {args.output} is a directory")
        report = _run(args)
    except (ValueError, OSError, RuntimeError) as exc:
        parser.error(str(exc))
    text = json.dumps(report, indent=2)
    if args.output is not None:
        args.output.write_text(text + "\n", encoding="utf-8")
        summary = {k: v for k, v in report.items() if k not in ("results", "per_problem")}
        print(json.dumps(summary, indent=2))
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
