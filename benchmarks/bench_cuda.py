"""CUDA ternary kernels and GPU training: GB/s against the HBM bandwidth measured in the same run,
speed against cuBLAS bf16 at the same shapes, and nano-125m QAT training tokens/s and MFU.

Run (a machine with a CUDA GPU and the package installed; exits 0 with a message without one):

    python benchmarks/bench_cuda.py [--quick] [--json out.json] [--no-train] [--train-steps 6]

Sections, all in one process so the ratios are comparable:
- HBM: device-to-device copy of 1 GiB (read + write bytes / time).
- GEMV (decode, 1 token): ternary (``ops.matmul``, the ``nct-u32x16`` layout, 2 bits per weight)
  for every rows-per-warp variant, against ``torch.matmul`` in bf16 (cuBLAS) at the same shape.
  Bytes = packed weights + int8 activations + float32 output. Weight copies are rotated so that
  their total exceeds the L2 cache (every launch reads from HBM), and launches are captured in a
  CUDA graph so Python launch overhead is not timed (falls back to plain launches, marked).
- GEMM (prefill / batches of 16..512 tokens): the dp4a ternary GEMM and the ``int_mm`` backend
  (cuBLASLt int8 over the trits unpacked to int8) against bf16 cuBLAS, TOPS.
- Activation quantization and ternarization throughput (GB/s).
- Training: ``nanochat_ternary.train.Trainer`` on nano-125m with bf16 autocast, tokens/s and MFU
  against the GPU's dense bf16 peak (``cuda.peaks``) and against a measured bf16 matmul rate.
Targets (issue 24): GEMV >= 70 % of measured HBM bandwidth at 4096x4096 and 4096x11008 and >= 3x
the bf16 cuBLAS GEMV; nano-125m QAT training >= 40 % MFU.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

import nanochat_ternary  # noqa: F401  (imports torch before the extension)
from nanochat_ternary.cuda import driver, layout, ops, peaks

L2_SPAN = 256 << 20  # rotate weight copies over at least this many bytes (H100 L2: 50 MB)


def timed(fn: Callable[[int], Any], copies: int, reps: int) -> tuple[float, str]:
    """Seconds per call of ``fn(i)`` (i cycles over the copies): a CUDA graph of ``reps`` calls,
    replayed; plain launches when capture fails."""
    for i in range(copies):
        fn(i)  # compile, load, warm up
    torch.cuda.synchronize()
    try:
        graph = torch.cuda.CUDAGraph()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for i in range(copies):
                fn(i)
            with torch.cuda.graph(graph, stream=stream):
                for r in range(reps):
                    fn(r % copies)
        torch.cuda.current_stream().wait_stream(stream)
        graph.replay()
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        best = float("inf")
        for _ in range(3):
            start.record()
            graph.replay()
            end.record()
            end.synchronize()
            best = min(best, start.elapsed_time(end) / 1e3 / reps)
        return best, "graph"
    except Exception as e:  # noqa: BLE001 - report and fall back
        print(f"  (CUDA graph capture failed: {type(e).__name__}: {e}; timing plain launches)")
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for r in range(reps):
            fn(r % copies)
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3 / reps, "launches"


def hbm_bandwidth() -> float:
    n = 1 << 30
    src = torch.empty(n, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    dst.copy_(src)
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(5):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        best = min(best, start.elapsed_time(end) / 1e3)
    return 2 * n / best


def bench_gemv(rows: int, cols: int, hbm: float, reps: int) -> dict[str, Any]:
    w_bytes = rows * layout.words_per_row(cols) * 4
    copies = max(2, -(-L2_SPAN // w_bytes))
    g = torch.Generator(device="cuda").manual_seed(0)
    mats = [ops.ternarize(torch.randn(rows, cols, device="cuda", generator=g)) for _ in range(copies)]
    q, d = ops.quantize_activations(torch.randn(1, cols, device="cuda", generator=g), "engine")
    moved = w_bytes + q.numel() + 4 * rows
    out: dict[str, Any] = {"shape": f"{rows}x{cols}", "weight_MB": w_bytes / 1e6}
    for rpw in (1, 2, 4, 8):
        sec, how = timed(lambda i, r=rpw: ops.matmul(q, d, mats[i], r), copies, reps)
        out[f"ternary_rows{rpw}_us"] = sec * 1e6
        out[f"ternary_rows{rpw}_GBps"] = moved / sec / 1e9
        out["timing"] = how
    best = min((1, 2, 4, 8), key=lambda r: out[f"ternary_rows{r}_us"])
    out["best_rows_per_warp"] = best
    ternary = out[f"ternary_rows{best}_us"] / 1e6
    out["ternary_fraction_of_hbm"] = moved / ternary / hbm
    # cuBLAS bf16 GEMV at the same shape.
    bf_bytes = rows * cols * 2
    bf_copies = max(2, -(-L2_SPAN // bf_bytes))
    wb = [torch.randn(rows, cols, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(bf_copies)]
    xb = torch.randn(cols, device="cuda", dtype=torch.bfloat16, generator=g)
    sec, _ = timed(lambda i: torch.matmul(wb[i], xb), bf_copies, reps)
    out["bf16_cublas_us"] = sec * 1e6
    out["bf16_fraction_of_hbm"] = (bf_bytes + 4 * cols + 2 * rows) / sec / hbm
    out["speedup_vs_bf16"] = sec / ternary
    return out


def bench_gemm(rows: int, cols: int, tokens: int, reps: int) -> dict[str, Any]:
    g = torch.Generator(device="cuda").manual_seed(1)
    w = ops.ternarize(torch.randn(rows, cols, device="cuda", generator=g))
    q, d = ops.quantize_activations(torch.randn(tokens, cols, device="cuda", generator=g), "engine")
    sec, how = timed(lambda i: ops.matmul(q, d, w), 1, reps)
    w.int8_weights()  # unpacked once, outside the timing
    isec, _ = timed(lambda i: ops.matmul(q, d, w, backend="int_mm"), 1, reps)
    wb = torch.randn(rows, cols, device="cuda", dtype=torch.bfloat16, generator=g)
    xb = torch.randn(tokens, cols, device="cuda", dtype=torch.bfloat16, generator=g)
    bsec, _ = timed(lambda i: xb @ wb.T, 1, reps)
    ops_count = 2 * rows * cols * tokens
    return {
        "shape": f"{tokens}x{cols} @ {rows}x{cols}^T", "timing": how,
        "ternary_us": sec * 1e6, "ternary_TOPS": ops_count / sec / 1e12,
        "int_mm_us": isec * 1e6, "int_mm_TOPS": ops_count / isec / 1e12,
        "bf16_cublas_us": bsec * 1e6, "bf16_TFLOPS": ops_count / bsec / 1e12, "speedup_vs_bf16": bsec / sec,
        "int_mm_speedup_vs_bf16": bsec / isec,
    }


def bench_quant(rows: int, cols: int, reps: int, hbm: float) -> dict[str, Any]:
    g = torch.Generator(device="cuda").manual_seed(2)
    x = torch.randn(rows, cols, device="cuda", generator=g)
    sec_a, _ = timed(lambda i: ops.quantize_activations(x, "qat"), 1, reps)
    sec_w, _ = timed(lambda i: ops.ternarize(x), 1, reps)
    a_bytes = x.numel() * 5  # f32 read + int8 write
    w_bytes = x.numel() * 8 + x.numel() // 4  # two f32 passes + packed write
    return {
        "shape": f"{rows}x{cols} f32", "act_quant_us": sec_a * 1e6, "act_quant_fraction_of_hbm": a_bytes / sec_a / hbm,
        "ternarize_us": sec_w * 1e6, "ternarize_fraction_of_hbm": w_bytes / sec_w / hbm,
    }


def bench_bitlinear(tokens: int, out_dim: int, in_dim: int, reps: int) -> dict[str, Any]:
    """The fused BitLinear (``ops.bit_linear``: packed ternary + int8 GEMM) against the QAT fake
    quantization in torch (``reference_model.bit_linear``, what rust/train computes) in bf16 autocast
    and in float32, forward only and forward + backward."""
    sys.path.insert(0, __file__.rsplit("/", 1)[0])
    import reference_model as qat

    g = torch.Generator(device="cuda").manual_seed(3)
    x = torch.randn(tokens, in_dim, device="cuda", generator=g, requires_grad=True)
    w = torch.randn(out_dim, in_dim, device="cuda", generator=g, requires_grad=True)
    grad = torch.randn(tokens, out_dim, device="cuda", generator=g)
    out: dict[str, Any] = {"shape": f"{tokens}x{in_dim} -> {out_dim}"}

    def fwd_bwd(f: Callable[[], torch.Tensor]) -> None:
        f().backward(grad)

    with torch.no_grad():
        out["fused_fwd_us"] = timed(lambda i: ops.bit_linear(x, w), 1, reps)[0] * 1e6
        out["fused_int_mm_fwd_us"] = timed(lambda i: ops.bit_linear(x, w, "int_mm"), 1, reps)[0] * 1e6
        out["fake_quant_f32_fwd_us"] = timed(lambda i: qat.bit_linear(x, w), 1, reps)[0] * 1e6
        with torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False):  # no cast cache in graph capture
            out["fake_quant_bf16_fwd_us"] = timed(lambda i: qat.bit_linear(x, w), 1, reps)[0] * 1e6
    # Backward passes allocate and accumulate gradients: timed as plain launches, best of a few.
    for name, f in (("fused", lambda: ops.bit_linear(x, w)), ("fused_int_mm", lambda: ops.bit_linear(x, w, "int_mm")),
                    ("fake_quant_f32", lambda: qat.bit_linear(x, w))):
        fwd_bwd(f)
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(max(3, reps // 10)):
            fwd_bwd(f)
        torch.cuda.synchronize()
        out[f"{name}_fwd_bwd_us"] = (time.perf_counter() - start) / max(3, reps // 10) * 1e6
    return out


def bench_train(steps: int, batch: int, seq: int) -> dict[str, Any]:
    from nanochat_ternary.train import Trainer, measured_peak_flops

    trainer = Trainer("nano-125m", steps=1000, warmup=10, device="cuda", progress=False)
    vocab = trainer.config.vocab_size
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(vocab, (batch, seq + 1), generator=g)
    x, y = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()
    for _ in range(2):
        trainer.step(x, y)
    torch.cuda.synchronize()
    start = time.perf_counter()
    losses = [float(trainer.step(x, y)["loss"]) for _ in range(steps)]
    torch.cuda.synchronize()
    sec = time.perf_counter() - start
    tok_s = steps * batch * seq / sec
    flops = 6 * trainer.config.param_count * tok_s
    name = torch.cuda.get_device_name()
    table = peaks.dense_bf16_peak(name)
    measured = measured_peak_flops("cuda")
    return {
        "model": "nano-125m", "batch": batch, "seq": seq, "steps": steps, "tokens_per_s": tok_s,
        "losses": losses, "peak_table": table[1] if table else None,
        "mfu_vs_table_peak": flops / table[0] if table else None,
        "measured_bf16_matmul_TFLOPS": measured / 1e12, "mfu_vs_measured_matmul": flops / measured,
    }


def section(results: dict[str, Any], name: str, path: str | None, fn: Callable[[], Any]) -> None:
    """Runs one section; a failure is printed and recorded, and the next section still runs.
    The JSON is rewritten after every section, so a timeout keeps what was measured."""
    try:
        results[name] = fn()
    except Exception as e:  # noqa: BLE001 - a benchmark section must not take the others down
        import traceback

        traceback.print_exc()
        results[name] = {"error": f"{type(e).__name__}: {e}"}
    sys.stdout.flush()
    if path:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)


def run_gemv(shapes: list[tuple[int, int]], hbm: float, reps: int) -> list[dict[str, Any]]:
    print("\nGEMV (1 token): ternary us / GB/s per rows-per-warp; best as a fraction of HBM; bf16 cuBLAS; speedup")
    out = []
    for rows, cols in shapes:
        r = bench_gemv(rows, cols, hbm, reps)
        out.append(r)
        variants = "  ".join(f"r{k} {r[f'ternary_rows{k}_us']:.1f}us/{r[f'ternary_rows{k}_GBps']:.0f}" for k in (1, 2, 4, 8))
        print(f"  {r['shape']:>11}  {variants}  | best {r['ternary_fraction_of_hbm']:.2f} HBM | bf16 "
              f"{r['bf16_cublas_us']:.1f}us ({r['bf16_fraction_of_hbm']:.2f} HBM) | {r['speedup_vs_bf16']:.2f}x [{r['timing']}]",
              flush=True)
    return out


def run_gemm(shapes: list[tuple[int, int]], tokens_list: tuple[int, ...], reps: int) -> list[dict[str, Any]]:
    print("\nGEMM: ternary int8 (dp4a kernel; int_mm = torch._int_mm over unpacked int8 trits) vs bf16 cuBLAS")
    out = []
    for rows, cols in shapes:
        for tokens in tokens_list:
            r = bench_gemm(rows, cols, tokens, reps)
            out.append(r)
            print(f"  {r['shape']:>26}  dp4a kernel {r['ternary_us']:8.1f}us {r['ternary_TOPS']:6.1f} TOPS "
                  f"({r['speedup_vs_bf16']:.2f}x) | int_mm {r['int_mm_us']:8.1f}us {r['int_mm_TOPS']:6.1f} TOPS "
                  f"({r['int_mm_speedup_vs_bf16']:.2f}x) | bf16 {r['bf16_cublas_us']:8.1f}us {r['bf16_TFLOPS']:6.1f} TFLOPS",
                  flush=True)
    return out


def run_quant(hbm: float, reps: int) -> dict[str, Any]:
    print("\nQAT forward helpers (fraction of HBM)")
    q = bench_quant(8192, 4096, reps, hbm)
    print(f"  {q['shape']}: act_quant {q['act_quant_us']:.1f}us ({q['act_quant_fraction_of_hbm']:.2f}) | "
          f"ternarize {q['ternarize_us']:.1f}us ({q['ternarize_fraction_of_hbm']:.2f})")
    return q


def run_bitlinear(reps: int) -> list[dict[str, Any]]:
    print("\nBitLinear forward (and forward + backward): fused kernels vs the QAT fake quant in torch")
    out = []
    for tokens, out_dim, in_dim in ((8192, 2048, 768), (8192, 768, 2048)):
        b = bench_bitlinear(tokens, out_dim, in_dim, reps)
        out.append(b)
        print(f"  {b['shape']:>20}  fwd: fused {b['fused_fwd_us']:.0f}us, fused int_mm {b['fused_int_mm_fwd_us']:.0f}us, "
              f"fake-quant f32 {b['fake_quant_f32_fwd_us']:.0f}us, bf16 {b['fake_quant_bf16_fwd_us']:.0f}us | fwd+bwd: "
              f"fused {b['fused_fwd_bwd_us']:.0f}us, fused int_mm {b['fused_int_mm_fwd_bwd_us']:.0f}us, "
              f"fake-quant f32 {b['fake_quant_f32_fwd_bwd_us']:.0f}us", flush=True)
    return out


def run_train(steps: int, batch: int) -> dict[str, Any]:
    print("\nTraining nano-125m (bf16 autocast)")
    t = bench_train(steps, batch, 1024)
    table = f"{100 * t['mfu_vs_table_peak']:.1f}% of {t['peak_table']} dense bf16" if t["peak_table"] else "no table peak"
    print(f"  {t['tokens_per_s']:,.0f} tok/s (batch {t['batch']} x {t['seq']}) | MFU {table} | "
          f"{100 * t['mfu_vs_measured_matmul']:.1f}% of measured bf16 matmul ({t['measured_bf16_matmul_TFLOPS']:.0f} TFLOPS)",
          flush=True)
    return t


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer shapes and repetitions (the GPU check script)")
    p.add_argument("--json", default=None, help="also write the results here (rewritten after every section)")
    p.add_argument("--no-train", action="store_true", help="skip the training section")
    p.add_argument("--train-steps", type=int, default=6)
    p.add_argument("--train-batch", type=int, default=16)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_cuda: no CUDA GPU here (torch.cuda.is_available() is False); nothing measured.")
        return 0
    if not driver.available():
        print("bench_cuda: no NVRTC library (CPU-only torch wheel?); nothing measured.")
        return 0
    name = torch.cuda.get_device_name()
    results: dict[str, Any] = {"device": name, "capability": driver.arch_of(0), "torch": torch.__version__}
    hbm = hbm_bandwidth()
    results["hbm_copy_GBps"] = hbm / 1e9
    print(f"device {name} ({driver.arch_of(0)}), torch {torch.__version__}")
    print(f"HBM device-to-device copy: {hbm / 1e9:,.0f} GB/s", flush=True)
    reps = 50 if args.quick else 200
    shapes = [(4096, 4096), (11008, 4096), (4096, 11008)] if args.quick else [
        (2048, 2048), (4096, 4096), (11008, 4096), (4096, 11008), (8192, 8192), (50257, 768), (768, 2048), (2048, 768)]
    gemm_tokens = (16, 128, 512) if args.quick else (16, 64, 128, 512, 2048)
    few = max(10, reps // 5)
    section(results, "gemv", args.json, lambda: run_gemv(shapes, hbm, reps))
    if not args.no_train:
        section(results, "train", args.json, lambda: run_train(args.train_steps, args.train_batch))
    section(results, "gemm", args.json, lambda: run_gemm(shapes[:3], gemm_tokens, few))
    section(results, "bitlinear", args.json, lambda: run_bitlinear(few))
    section(results, "quant", args.json, lambda: run_quant(hbm, few))
    return 0


if __name__ == "__main__":
    sys.exit(main())
