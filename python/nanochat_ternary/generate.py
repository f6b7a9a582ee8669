"""Generate text from the command line.

    python -m nanochat_ternary.generate "fn main() {" --model model.gguf --max-new-tokens 64
    python -m nanochat_ternary.generate "Once" --model org/repo --do-sample --temperature 0.8 --top-p 0.95 --seed 1
    python -m nanochat_ternary.generate "fn f(" --model my-model/ --stop $'\\n}' --no-stream

``--model`` takes a ``.gguf`` file, a model directory, a zoo name or a hub id
(default: the zoo's default model). Output streams to stdout as it is made.
Bad arguments exit with status 2, load/generation errors with status 1 and a
one-line message.
"""

from __future__ import annotations

import argparse
import sys

from .model import TernaryModel


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m nanochat_ternary.generate", description=__doc__.split("\n")[0])
    p.add_argument("prompt", help="the text to continue")
    p.add_argument("--model", default=None, help=".gguf file, model directory, zoo name or hub id (default: zoo default)")
    p.add_argument("--revision", default=None, help="hub revision (branch, tag or commit)")
    p.add_argument("--cache-dir", default=None, help="hub cache directory")
    p.add_argument("--offline", action="store_true", help="use only local files / the hub cache")
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=None)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--min-p", type=float, default=None)
    p.add_argument("--repetition-penalty", type=float, default=None)
    p.add_argument("--stop", action="append", default=None, help="stop string (repeatable)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--truncate", action="store_true", help="keep the tail of a prompt longer than the context")
    p.add_argument("--no-repeat-ngram-size", type=int, default=None,
                   help="ban repeating any n-gram of this many tokens (0 = off; default: generation_config)")
    p.add_argument("--token-healing", action=argparse.BooleanOptionalAction, default=None,
                   help="re-choose the prompt's last token (default: the model's generation_config)")
    p.add_argument("--threads", type=int, default=None, help="inference threads (default: all cores)")
    p.add_argument("--no-stream", action="store_true", help="print the text once it is complete")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.threads is not None:
            from . import kernels

            kernels.set_num_threads(args.threads)
        model = TernaryModel.from_pretrained(
            args.model, revision=args.revision, cache_dir=args.cache_dir, local_files_only=args.offline
        )
        kwargs = dict(
            max_new_tokens=args.max_new_tokens,
            do_sample=True if args.do_sample else None,
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            min_p=args.min_p,
            repetition_penalty=args.repetition_penalty,
            stop=args.stop,
            seed=args.seed,
            truncate=args.truncate,
            token_healing=args.token_healing,
            no_repeat_ngram_size=args.no_repeat_ngram_size,
        )
        if args.no_stream:
            print(model.generate(args.prompt, **kwargs))
        else:
            for piece in model.stream(args.prompt, **kwargs):
                sys.stdout.write(piece)
                sys.stdout.flush()
            sys.stdout.write("\n")
    except (ValueError, TypeError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
