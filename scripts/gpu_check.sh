#!/usr/bin/env bash
# Every CUDA check in one go, for a GPU machine that has python3 with torch 2.11 + CUDA but no Rust
# toolchain and no network. Writes everything under $OUT (default ./gpu_check_out); < 8 minutes.
#
#   OUT=/some/dir bash scripts/gpu_check.sh
#
# The package comes from (first that exists): an installed nanochat_ternary that has the cuda
# subpackage; a wheel in $WHEEL, dist/ or target/wheels/ (build it on the CPU machine with
# `maturin build --release` and carry it), installed with --no-deps; else the source tree on
# PYTHONPATH with a prebuilt python/nanochat_ternary/_core.abi3.so (maturin develop).
# Steps (each with its own time limit, output in $OUT/<step>.txt, exit codes in $OUT/summary.txt):
#   env       GPU, driver, torch, NVRTC version, PTX arch
#   pytest    tests/test_cuda.py, test_cuda_gpu.py, test_cuda_model.py (kernels vs CPU references, TernaryModel cuda)
#   bench     benchmarks/bench_cuda.py --quick (GEMV/GEMM vs HBM copy and cuBLAS bf16, quantizers, nano-125m training MFU)
#   train     python -m nanochat_ternary.train --device cuda on nano-125m (random-token shards), then the
#             checkpoint resumed on the CPU for one step and on the GPU for one step (same format, losses compared)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_check_out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
step() {  # step NAME SECONDS COMMAND...
    local name=$1 limit=$2
    shift 2
    local start=$SECONDS
    timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1
    local rc=$?
    echo "$name rc=$rc seconds=$((SECONDS - start))" | tee -a "$SUMMARY"
}

if ! "$PY" -c "import torch, nanochat_ternary.cuda" 2>/dev/null; then
    WHEEL=${WHEEL:-$(ls dist/nanochat_ternary-*.whl target/wheels/nanochat_ternary-*.whl 2>/dev/null | head -n 1)}
    if [ -n "$WHEEL" ]; then
        "$PY" -m pip install -q --no-deps --no-index --force-reinstall "$WHEEL" > "$OUT/install.txt" 2>&1
        echo "install $WHEEL rc=$?" | tee -a "$SUMMARY"
    fi
    if ! "$PY" -c "import torch, nanochat_ternary.cuda" 2>/dev/null; then
        export PYTHONPATH=$PWD/python${PYTHONPATH:+:$PYTHONPATH}
        echo "using the source tree (PYTHONPATH=$PWD/python)" | tee -a "$SUMMARY"
    fi
fi
# pytest is not in every GPU image; the wheel's test extras are not installable offline.
"$PY" -c "import pytest" 2>/dev/null || echo "pytest missing: the pytest step will fail" | tee -a "$SUMMARY"

step env 40 "$PY" - <<'PY'
import torch, nanochat_ternary
from nanochat_ternary.cuda import driver, nvrtc
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
for i in range(torch.cuda.device_count()):
    print(i, torch.cuda.get_device_name(i), driver.arch_of(i), torch.cuda.get_device_properties(i))
print("nvrtc", nvrtc.library_path(), nvrtc.version())
print("package", nanochat_ternary.__file__)
for k in nvrtc.KERNELS:
    print(k, len(nvrtc.compile_ptx(k, driver.arch_of(0))), "bytes of PTX")
PY

step pytest 170 "$PY" -m pytest -q -p no:cacheprovider -rs tests/test_cuda.py tests/test_cuda_gpu.py tests/test_cuda_model.py

step bench 140 "$PY" benchmarks/bench_cuda.py --quick --json "$OUT/bench_cuda.json"

RUN=$(mktemp -d)  # checkpoints of nano-125m are ~1.5 GB: kept out of $OUT
step train 110 "$PY" - "$RUN" <<'PY'
import json, subprocess, sys
from pathlib import Path
import numpy as np
import torch
from nanochat_ternary.data import ShardWriter
from nanochat_ternary.data.shards import FORMAT, write_json_atomic
from nanochat_ternary.train import Trainer

run = Path(sys.argv[1])
data, out = run / "data", run / "out"
data.mkdir()
rng = np.random.default_rng(0)
splits = {}
for split, docs in (("train", 300), ("val", 20)):
    writer = ShardWriter(data, split, "uint16", bos_id=0, shard_tokens=1 << 20)
    for _ in range(docs):
        writer.add(rng.integers(1, 50257, 2000), n_bytes=8000)
    splits[split] = writer.finish()
write_json_atomic(data / "meta.json", {"format": FORMAT, "dtype": "uint16", "vocab_size": 50257, "bos_id": 0,
                                       "tokenizer_sha256": "0" * 64, "splits": splits, "source": {"gpu_check": True}})
cmd = [sys.executable, "-m", "nanochat_ternary.train", "--config", "nano-125m", "--data", str(data), "--out", str(out),
       "--device", "cuda", "--steps", "12", "--batch-size", "8", "--seq-len", "1024", "--warmup", "2",
       "--log-every", "2", "--save-every", "10", "--eval-every", "10", "--no-progress"]
print("$", " ".join(cmd), flush=True)
rc = subprocess.run(cmd).returncode
print("train --device cuda exit", rc, flush=True)
if rc != 0:
    sys.exit(f"train --device cuda failed (exit {rc}); nothing to resume")
ckpt = sorted(out.glob("ckpt-*.safetensors"))
print("checkpoints", [p.name for p in ckpt], flush=True)
print("log", (out / "log.jsonl").read_text()[-1500:])
losses = {}
for device in ("cpu", "cuda"):
    torch.manual_seed(0)
    t = Trainer.resume(out, device=device, progress=False)  # the newest checkpoint, written from the GPU
    tokens = torch.randint(1, 50257, (2, 257), generator=torch.Generator().manual_seed(1))
    losses[device] = float(t.step(tokens[:, :-1], tokens[:, 1:])["loss"])
    print(f"resumed {ckpt[-1].name} on {device}: step {t.step_count}, one step loss {losses[device]:.5f}", flush=True)
print("cpu vs cuda relative loss difference", abs(losses["cpu"] - losses["cuda"]) / abs(losses["cpu"]))
PY
rm -rf "$RUN"
echo "done; results in $OUT" | tee -a "$SUMMARY"
