"""Serving benchmark on a nano-125m-shaped GGUF (random TQ2_0 weights; speed does not depend on
the values), localhost only, bounded in count and time.

1. engine: aggregate decode tokens/s of 1 / 4 / 8 / 16 sequences in one `_core.Scheduler`
   (one batched step per token of every sequence), in this process.
2. server: `python -m nanochat_ternary.serve` as a subprocess; 1, 4, 8 and 16 concurrent
   streaming clients → aggregate tokens/s, time to first token and inter-token latency
   p50 / p99, errors.
3. soak: `--soak` mixed requests (streaming or not, random lengths, a quarter of the streams
   hung up after their first token) → server errors, RSS before and after.
4. overload: with the queue full, the latency of the 503s.

    .venv/bin/python benchmarks/bench_serve.py [--threads 2] [--soak 1000] [--gguf FILE]

The GGUF comes from `cargo run --release -p engine --example bench_engine -- --write-nano DIR`
unless `--gguf` names one.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


def write_nano(directory: Path) -> Path:
    cmd = ["cargo", "run", "-q", "--release", "-p", "engine", "--example", "bench_engine", "--", "--write-nano",
           str(directory)]
    out = subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True).stdout
    return Path(out.strip().splitlines()[-1])


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def bench_engine(path: Path, threads: int, batches: list[int], prompt_len: int, decode: int) -> list[tuple[int, float]]:
    from nanochat_ternary import _core, kernels

    kernels.set_num_threads(threads)
    engine = _core.Engine(str(path))
    rows = []
    rng = random.Random(0)
    for n in batches:
        sched = _core.Scheduler(engine, max_batch=n, prefill_chunk=4096, kv_budget_bytes=8 << 30)
        for i in range(n):
            prompt = [rng.randrange(1, 50000) for _ in range(prompt_len)]
            sched.add(prompt, decode, ignore_eos=True, seed=i)
        sched.step()  # every prompt prefilled, first tokens sampled
        tokens, t0 = 0, time.perf_counter()
        while sched.running:
            tokens += sum(len(e[1]) for e in sched.step())
        rows.append((n, tokens / (time.perf_counter() - t0)))
    return rows


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class Client:
    """One streaming request: TTFT, inter-token gaps, token count, error."""

    def __init__(self, url: str) -> None:
        self.url = url

    def stream(self, http: httpx.Client, body: dict, hang_up: bool = False) -> dict:
        t0 = time.perf_counter()
        out = {"ttft": None, "gaps": [], "tokens": 0, "error": None, "status": None}
        last = None
        try:
            with http.stream("POST", self.url + "/v1/completions", json=body) as r:
                out["status"] = r.status_code
                if r.status_code != 200:
                    out["error"] = f"{r.status_code} {r.read()[:200]!r}"
                    return out
                for line in r.iter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    chunk = json.loads(line[6:])
                    if "error" in chunk:
                        out["error"] = chunk["error"]["message"]
                        break
                    if chunk.get("usage"):
                        out["tokens"] = chunk["usage"]["completion_tokens"]
                    if chunk["choices"] and chunk["choices"][0]["text"]:
                        now = time.perf_counter()
                        if last is None:
                            out["ttft"] = now - t0
                        else:
                            out["gaps"].append(now - last)
                        last = now
                        if hang_up:
                            break
        except httpx.HTTPError as e:
            out["error"] = f"{type(e).__name__}: {e}"
        return out


def run_level(url: str, concurrency: int, requests_per_client: int, max_tokens: int, prompt: str) -> dict:
    results: list[dict] = []
    lock = threading.Lock()
    client = Client(url)

    def worker(seed: int) -> None:
        with httpx.Client(timeout=300) as http:
            for k in range(requests_per_client):
                body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0.8, "seed": seed * 1000 + k,
                        "stream": True, "stream_options": {"include_usage": True}, "ignore_eos": True}
                res = client.stream(http, body)
                with lock:
                    results.append(res)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ok = [r for r in results if r["error"] is None]
    ttft = [r["ttft"] for r in ok if r["ttft"] is not None]
    gaps = [g for r in ok for g in r["gaps"]]
    return {
        "clients": concurrency,
        "requests": len(results),
        "tokens_per_s": sum(r["tokens"] for r in ok) / wall,
        "ttft_p50": pct(ttft, 50),
        "ttft_p99": pct(ttft, 99),
        "itl_p50": pct(gaps, 50),
        "itl_p99": pct(gaps, 99),
        "errors": len(results) - len(ok),
    }


def soak(url: str, pid: int, count: int, concurrency: int, prompt: str) -> dict:
    rng = random.Random(1)
    plans = []
    for i in range(count):
        stream = rng.random() < 0.75
        plans.append({"stream": stream, "hang_up": stream and rng.random() < 0.25, "max_tokens": rng.randint(1, 24),
                      "prompt": prompt[: rng.randint(8, len(prompt))], "seed": i})
    errors, server_errors, done = [], 0, 0
    lock = threading.Lock()
    it = iter(plans)
    client = Client(url)

    def worker() -> None:
        nonlocal server_errors, done
        with httpx.Client(timeout=300) as http:
            while True:
                with lock:
                    plan = next(it, None)
                if plan is None:
                    return
                body = {"prompt": plan["prompt"], "max_tokens": plan["max_tokens"], "temperature": 0.7,
                        "seed": plan["seed"], "stream": plan["stream"]}
                if plan["stream"]:
                    res = client.stream(http, body, hang_up=plan["hang_up"])
                    status, err = res["status"], res["error"]
                else:
                    try:
                        r = http.post(url + "/v1/completions", json=body)
                        status, err = r.status_code, None if r.status_code == 200 else r.text[:200]
                    except httpx.HTTPError as e:
                        status, err = None, str(e)
                with lock:
                    done += 1
                    if err is not None:
                        errors.append(err)
                        if status is None or status >= 500:
                            server_errors += 1

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"requests": done, "errors": len(errors), "server_errors": server_errors, "seconds": time.perf_counter() - t0,
            "examples": errors[:3]}


def overload(url: str, parallel: int, queue: int, prompt: str) -> dict:
    """Fills running + queued slots with long streams, then times requests that must get 503."""
    holders = []
    http = [httpx.Client(timeout=300) for _ in range(parallel + queue)]
    for h in http:
        body = {"prompt": prompt, "max_tokens": 200, "stream": True, "ignore_eos": True}
        cm = h.stream("POST", url + "/v1/completions", json=body)
        r = cm.__enter__()
        holders.append((cm, r))
    latencies, statuses = [], []
    with httpx.Client(timeout=30) as c:
        for _ in range(20):
            t0 = time.perf_counter()
            r = c.post(url + "/v1/completions", json={"prompt": prompt, "max_tokens": 4})
            latencies.append(time.perf_counter() - t0)
            statuses.append(r.status_code)
    for cm, _ in holders:
        cm.__exit__(None, None, None)
    for h in http:
        h.close()
    return {"n503": statuses.count(503), "n": len(statuses), "p50_ms": 1000 * pct(latencies, 50),
            "max_ms": 1000 * max(latencies), "retry_after": True}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gguf", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--levels", default="1,4,8,16")
    ap.add_argument("--requests-per-client", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--soak", type=int, default=1000, help="mixed requests of the soak (0: skip)")
    ap.add_argument("--skip-engine", action="store_true")
    ap.add_argument("--skip-server", action="store_true")
    args = ap.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    tmp = tempfile.TemporaryDirectory()
    path = args.gguf or write_nano(Path(tmp.name))
    print(f"model: {path} ({path.stat().st_size / 1e6:.1f} MB), {args.threads} threads")

    if not args.skip_engine:
        print("\n== engine: aggregate decode tokens/s (prompt 32, 64 new tokens per sequence)")
        rows = bench_engine(path, args.threads, levels, 32, 64)
        base = rows[0][1]
        print("| sequences | tokens/s | vs 1 |")
        print("|---|---|---|")
        for n, tps in rows:
            print(f"| {n} | {tps:.1f} | {tps / base:.2f}x |")
    if args.skip_server:
        return 0

    parallel, queue = max(levels), 8
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "nanochat_ternary.serve", "--model", str(path), "--port", str(port),
           "--parallel", str(parallel), "--max-queue", str(queue), "--threads", str(args.threads),
           "--ctx", "512", "--log-level", "warning"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start: {proc.stderr.read() if proc.stderr else ''}")
            time.sleep(0.2)
        prompt = "fn main() { let values: Vec<u64> = (0..100).map(|i| i * i).collect(); " * 2
        print(f"\n== server: streaming clients, {args.requests_per_client} requests each, "
              f"{args.max_tokens} tokens per request (server --parallel {parallel} --threads {args.threads})")
        print("| clients | requests | tokens/s | vs 1 | TTFT p50 | TTFT p99 | ITL p50 | ITL p99 | errors |")
        print("|---|---|---|---|---|---|---|---|---|")
        base = None
        for c in levels:
            row = run_level(url, c, args.requests_per_client, args.max_tokens, prompt)
            base = base or row["tokens_per_s"]
            print(f"| {c} | {row['requests']} | {row['tokens_per_s']:.1f} | {row['tokens_per_s'] / base:.2f}x "
                  f"| {row['ttft_p50'] * 1000:.0f} ms | {row['ttft_p99'] * 1000:.0f} ms | {row['itl_p50'] * 1000:.0f} ms "
                  f"| {row['itl_p99'] * 1000:.0f} ms | {row['errors']} |", flush=True)
        if args.soak:
            before = rss_kib(proc.pid)
            s = soak(url, proc.pid, args.soak, 8, prompt)
            after = rss_kib(proc.pid)
            print(f"\n== soak: {s['requests']} mixed requests (8 clients, 1/4 of streams hung up) in {s['seconds']:.0f} s: "
                  f"{s['server_errors']} server errors, {s['errors']} errors in all; RSS {before / 1024:.0f} MiB → "
                  f"{after / 1024:.0f} MiB ({100 * (after - before) / before:+.1f} %)")
            if s["examples"]:
                print("   e.g.", s["examples"])
        o = overload(url, parallel, queue, prompt)
        print(f"\n== overload: {o['n503']}/{o['n']} requests beyond the queue got 503; latency p50 {o['p50_ms']:.1f} ms, "
              f"max {o['max_ms']:.1f} ms")
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
