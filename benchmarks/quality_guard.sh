#!/usr/bin/env bash
# Quality guard of the CPU training path (issue 18): the same short run twice, side by side, one thread each,
# once with the integer path (NCT_QAT_MATMUL=int8: int8 forward with the fused norm / SwiGLU prologues, bf16
# backward and head) and once with the fake-quant f32 path (NCT_QAT_MATMUL=fp32); prints both final
# validation losses and their relative difference (the target: within 1 %).
#
#     bash benchmarks/quality_guard.sh DATA [OUT] [STEPS]   # inside the venv; ~12 min for 500 steps on 2 cores
#
# DATA: a token directory from `python -m nanochat_ternary.data` (real Rust: e.g. the rust_coder corpus); WARMUP
# (default 40) for short smoke runs.
# The model is examples/rust_tiny/config.json with the data's vocabulary; 8 x 256 tokens a step, warmup 40,
# linear decay over the last 30 %, validation on 16 batches at the end, the same seed and data order for both.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:?usage: quality_guard.sh DATA [OUT] [STEPS]}
OUT=${2:-runs/quality-guard}
STEPS=${3:-500}
[ -f "$DATA/meta.json" ] || { echo "error: $DATA/meta.json not found (a token directory is needed)" >&2; exit 2; }
rm -rf "$OUT"
mkdir -p "$OUT"
python - "$DATA/meta.json" "$OUT/config.json" <<'EOF'
import json, sys
config = json.load(open("examples/rust_tiny/config.json"))
config["vocab_size"] = json.load(open(sys.argv[1]))["vocab_size"]
json.dump(config, open(sys.argv[2], "w"), indent=2)
EOF
run() {
  NCT_QAT_MATMUL=$1 python -m nanochat_ternary.train --config "$OUT/config.json" --data "$DATA" --out "$OUT/$1" \
    --steps "$STEPS" --batch-size 8 --seq-len 256 --warmup "${WARMUP:-40}" --decay-frac 0.3 --eval-every "$STEPS" \
    --eval-batches 16 --save-every "$STEPS" --threads 1 --seed 0 --no-progress > "$OUT/$1.out" 2>&1
}
run int8 & A=$!
run fp32 & B=$!
wait $A || { echo "error: the int8 run failed, see $OUT/int8.out" >&2; exit 1; }
wait $B || { echo "error: the fp32 run failed, see $OUT/fp32.out" >&2; exit 1; }
python - "$OUT" "$STEPS" <<'EOF'
import json, sys
out, steps = sys.argv[1], int(sys.argv[2])
def final(path):
    rows = [json.loads(line) for line in open(f"{out}/{path}/log.jsonl")]
    vals = [r for r in rows if "val_loss" in r and r["step"] == steps]
    if not vals:
        sys.exit(f"error: {out}/{path}/log.jsonl has no validation loss at step {steps}")
    speed = [r["tok_per_s"] for r in rows if "tok_per_s" in r]
    return vals[-1]["val_loss"], sorted(speed)[len(speed) // 2]
(a, sa), (b, sb) = final("int8"), final("fp32")
print(f"final validation loss after {steps} steps: int8 path {a:.4f}, f32 path {b:.4f} "
      f"({100 * (a - b) / b:+.2f} %); median tokens/s {sa:.0f} vs {sb:.0f} (side by side, 1 thread each)")
EOF
