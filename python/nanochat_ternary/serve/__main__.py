"""``python -m nanochat_ternary.serve``: the OpenAI-compatible server on uvicorn.

SIGTERM / Ctrl-C: uvicorn stops accepting connections, lets running requests finish (up to
``--drain-timeout`` seconds), then the scheduler thread stops and the process exits.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m nanochat_ternary.serve", description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="a .gguf file, an HF-style directory, a zoo name or a hub id "
                   "(default: the zoo's default model)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=os.environ.get("NCT_API_KEY"),
                   help="require 'Authorization: Bearer KEY' (default: $NCT_API_KEY; none = open)")
    p.add_argument("--parallel", type=int, default=8, help="sequences decoded together in one batched step")
    p.add_argument("--max-queue", type=int, default=64, help="sequences that may wait beyond --parallel; more get 503")
    p.add_argument("--ctx", type=int, default=None, help="most prompt + completion tokens per request "
                   "(default and maximum: the model's context)")
    p.add_argument("--timeout", type=float, default=600.0, help="per-request time limit in seconds")
    p.add_argument("--max-body", type=int, default=1 << 20, help="largest request body in bytes (413 beyond)")
    p.add_argument("--kv-budget-mb", type=float, default=None,
                   help="KV-cache memory for all running sequences (default: --parallel x --ctx positions)")
    p.add_argument("--prefill-chunk", type=int, default=256, help="most prompt tokens fed per batched step")
    p.add_argument("--threads", type=int, default=None, help="kernel threads (default: all cores)")
    p.add_argument("--drain-timeout", type=float, default=30.0, help="seconds SIGTERM waits for running requests")
    p.add_argument("--log-level", default="info")
    args = p.parse_args(argv)
    for name in ("parallel", "port", "max_body", "prefill_chunk"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.max_queue < 0:
        p.error("--max-queue must be >= 0")
    if args.ctx is not None and args.ctx < 2:
        p.error("--ctx must be at least 2")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        from .. import kernels

        kernels.set_num_threads(args.threads)
    try:
        import uvicorn
    except ImportError:
        print("the server needs the 'serve' extra: pip install 'nanochat-ternary[serve]'", file=sys.stderr)
        return 2
    from .app import ServerConfig, create_app

    config = ServerConfig(
        model=args.model,
        api_key=args.api_key or None,
        parallel=args.parallel,
        max_queue=args.max_queue,
        ctx=args.ctx,
        timeout=args.timeout,
        max_body_bytes=args.max_body,
        kv_budget_bytes=None if args.kv_budget_mb is None else int(args.kv_budget_mb * (1 << 20)),
        prefill_chunk=args.prefill_chunk,
    )
    logging.basicConfig(level=args.log_level.upper())
    uvicorn.run(
        create_app(config),
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        timeout_graceful_shutdown=args.drain_timeout,
        access_log=False,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
