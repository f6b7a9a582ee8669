"""Side by side: our engine vs llama.cpp on the same nano-125m-shaped GGUF, in one run.

    python benchmarks/bench_llama_cpp.py

The model is the one ``bench_engine`` measures (dim 768, 12 layers, FFN 2048, vocab 50257;
random TQ2_0 blocks, Q8_0 head, F16 embedding), written by
``cargo run --release -p engine --example bench_engine -- --write-nano DIR``. Both sides
prefill the same 128-token prompt (logits of the last token only) and then run 64 decode
steps, one Python call per token on both sides; each figure is the best of 3 runs, at 1 and 2
threads. Needs ``llama-cpp-python``
(``pip install llama-cpp-python==0.3.36``, the version the targets were set with) and our
wheel (``nanochat_ternary._core``).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROMPT, DECODE, RUNS = 128, 64, 3
ROOT = Path(__file__).resolve().parent.parent


def write_model(directory: Path) -> Path:
    cmd = ["cargo", "run", "-q", "--release", "-p", "engine", "--example", "bench_engine", "--", "--write-nano", str(directory)]
    out = subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True).stdout
    return Path(out.strip().splitlines()[-1])


def best(fn) -> float:
    times = []
    for _ in range(RUNS):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def llama_cpp_rates(path: Path, prompt: list[int], threads: int) -> tuple[float, float]:
    import llama_cpp

    llm = llama_cpp.Llama(
        model_path=str(path), n_ctx=PROMPT + DECODE + 8, n_batch=PROMPT, n_threads=threads,
        n_threads_batch=threads, logits_all=False, verbose=False,
    )

    def prefill() -> None:
        llm.reset()
        llm.eval(prompt)

    def decode() -> None:
        llm.reset()
        llm.n_tokens = 0
        llm.eval(prompt)
        start = time.perf_counter()
        for i in range(DECODE):
            llm.eval([prompt[i % len(prompt)]])
        decode.seconds = min(getattr(decode, "seconds", float("inf")), time.perf_counter() - start)

    t_prefill = best(prefill)
    for _ in range(RUNS):
        decode()
    return PROMPT / t_prefill, DECODE / decode.seconds


def our_rates(path: Path, prompt: list[int], threads: int) -> tuple[float, float]:
    from nanochat_ternary import _core, kernels

    kernels.set_num_threads(threads)
    engine = _core.Engine(str(path))
    one = best(lambda: engine.generate([prompt], 1, stop_ids=[]))  # prefill + one sampled token
    # Decode as llama.cpp's is timed: one call per token from Python (the streaming iterator),
    # from the first token (after the prefill) to the last.
    decode = float("inf")
    for _ in range(RUNS):
        tokens = engine.stream(prompt, DECODE + 1, stop_ids=[])
        next(tokens)
        start = time.perf_counter()
        assert sum(1 for _ in tokens) == DECODE
        decode = min(decode, time.perf_counter() - start)
    return PROMPT / one, DECODE / decode


def main() -> None:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        sys.exit("llama-cpp-python is not installed: pip install llama-cpp-python==0.3.36")
    import torch  # noqa: F401  (the extension links libtorch)

    with tempfile.TemporaryDirectory() as tmp:
        path = write_model(Path(tmp))
        prompt = [(i * 7919 + 13) % 50257 for i in range(PROMPT)]
        print(f"nano-125m TQ2_0 + Q8_0 head ({path.stat().st_size / 1e6:.1f} MB); {PROMPT}-token prompt, {DECODE} decode steps, best of {RUNS}")
        print("| threads | ours prefill tok/s | llama.cpp prefill | ratio | ours decode tok/s | llama.cpp decode | ratio |")
        print("|---|---|---|---|---|---|---|")
        for threads in (1, 2):
            lp, ld = llama_cpp_rates(path, prompt, threads)
            op, od = our_rates(path, prompt, threads)
            print(f"| {threads} | {op:,.0f} | {lp:,.0f} | {op / lp:.2f}× | {od:,.0f} | {ld:,.0f} | {od / ld:.2f}× |")


if __name__ == "__main__":
    main()
