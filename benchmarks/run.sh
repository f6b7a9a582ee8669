#!/usr/bin/env bash
# Every benchmark in one command (release builds; nothing else should run meanwhile):
#
#   bash benchmarks/run.sh
#
# Prints the codec pack/unpack table (4096x11008) and the kernel GEMV/GEMM
# tables with the streaming-read bandwidth and VNNI int8 peak measured in the
# same process, so the ratios are comparable across noisy machines. Arguments go to the
# kernel benchmark: --quick, --gemv or --gemm (one section), --variant scalar|avx2|avx512.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== codec: pack / unpack throughput (rust/ternary/examples/bench_codec.rs)"
cargo run -q --release -p ternary --example bench_codec
echo
echo "== kernels: ternary x int8 GEMV / GEMM (rust/kernels/examples/bench_kernels.rs)"
cargo run -q --release -p kernels --example bench_kernels -- "$@"
echo; echo "== train: tokens/s and peak memory, ours vs plain PyTorch eager (benchmarks/bench_train.py)"; .venv/bin/python benchmarks/bench_train.py --repeats 3
echo; echo "== engine: prefill / decode tokens/s, bytes per token vs bandwidth, peak RSS (rust/engine/examples/bench_engine.rs)"; cargo run -q --release -p engine --example bench_engine
echo; echo "== engine vs llama.cpp on the same GGUF (benchmarks/bench_llama_cpp.py; needs llama-cpp-python)"
if .venv/bin/python -c "import llama_cpp" 2>/dev/null; then .venv/bin/python benchmarks/bench_llama_cpp.py; else echo "skipped: pip install llama-cpp-python==0.3.36 into .venv"; fi
