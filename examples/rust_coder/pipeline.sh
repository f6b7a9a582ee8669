#!/usr/bin/env bash
# The whole recipe of the default model `rust-coder` (issue 19):
# crates + std -> function-level and compiler-verified views -> mix, tokenizer, shards ->
# equal-compute size sweep (+ full-precision twin) -> long ternary QAT run (resumable, split over
# sessions with STOP_AT) -> WSD decay branch -> GGUF export -> SFT + MaxRL (posttrain.sh) -> sampling
# sweep -> evaluation -> model card -> zoo registration.
#
#     bash examples/rust_coder/pipeline.sh        # inside the project venv; ~9 h of 2 cores in all
#
# Environment: DATA_ROOT (default data), RUNS (default runs/rust-coder), STOP_AT (stop the long run
# at this step and ship a decay branch of it; rerun the script later to resume the run), DECAY
# (decay steps of that branch; default a fifth of the steps done), THREADS (default 2).
set -euo pipefail
cd "$(dirname "$0")/../.."
HERE=examples/rust_coder
DATA_ROOT=${DATA_ROOT:-data}
RUNS=${RUNS:-runs/rust-coder}
THREADS=${THREADS:-2}
TOTAL=12288
MODEL_DIR=python/nanochat_ternary/models/rust-coder
MIX=$DATA_ROOT/rust-mix-full
mkdir -p "$RUNS/eval" "$MODEL_DIR"

# 1. Corpus: ~330 most-used crates (+ dependencies) vendored by cargo, permissive licences only;
#    whole-file and function views; std-only functions type-checked alone; the mix (MinHash dedup,
#    decontamination against the vendored HumanEval-Rust, whole crates held out) with its own
#    8192-token BPE. Every step is resumable and skipped once its output exists.
[ -f "$DATA_ROOT/crates/crates.json" ] || python -m nanochat_ternary.data fetch-crates --out "$DATA_ROOT/crates"
# The std sources come from rustup's rust-src component (the functions step refuses to run without them).
command -v rustup > /dev/null && rustup component add rust-src
[ -f "$DATA_ROOT/rust-fn/stats.json" ] || python -m nanochat_ternary.data functions --crates "$DATA_ROOT/crates" --out "$DATA_ROOT/rust-fn"
python -m nanochat_ternary.data verify --functions "$DATA_ROOT/rust-fn" --workers "$THREADS"
[ -f "$MIX/meta.json" ] || python -m nanochat_ternary.data build --mix python/nanochat_ternary/data/mix_rust.json \
  --corpus "$DATA_ROOT/rust-fn" --out "$MIX" --vocab-size 8192 --val-fraction 0.02

# 2. Equal-compute size sweep: three shapes, each ~10 min of 2-thread CPU (steps from measured
#    tokens/s), same data, batch and schedule shape; then the full-precision twin of the chosen
#    shape at the sweep's budget (the ternary gap). Held-out loss from the trainer, dev compile
#    rate (the harness's built-in prompts, greedy, not HumanEval) from each export.
COMMON=(--data "$MIX" --batch-size 8 --seq-len 1024 --log-every 10 --threads "$THREADS" --no-progress)
for spec in "s 240" "m 160" "l 90" "s-fp 240"; do
  set -- $spec
  if [ ! -f "$RUNS/sweep-$1/latest" ]; then
    python -m nanochat_ternary.train --config "$HERE/sweep-$1.json" --out "$RUNS/sweep-$1" --steps "$2" \
      --warmup $(($2 / 10)) --decay-frac 0.3 --eval-every "$2" --eval-batches 32 --save-every "$2" --keep 1 \
      "${COMMON[@]}" > "$RUNS/sweep-$1.out"
  fi
  [ "$1" = s-fp ] && continue
  [ -f "$RUNS/sweep-$1/model.gguf" ] || python -m nanochat_ternary.export "$RUNS/sweep-$1" --out "$RUNS/sweep-$1/model.gguf"
  [ -f "$RUNS/eval/dev-$1.json" ] || python -m nanochat_ternary.eval compile-rate --model "$RUNS/sweep-$1/model.gguf" \
    --temperature 0 --max-new-tokens 256 --output "$RUNS/eval/dev-$1.json"
done

# 3. The long run: the chosen shape (config.json) on TOTAL x 8 x 1024 = 100.7M tokens, checkpoints
#    every 50 steps. STOP_AT splits it over sessions; rerunning this script resumes it exactly.
if [ -f "$RUNS/long/latest" ]; then
  python -m nanochat_ternary.train --out "$RUNS/long" --resume --threads "$THREADS" --no-progress \
    ${STOP_AT:+--stop-at "$STOP_AT"} >> "$RUNS/long.out"
else
  python -m nanochat_ternary.train --config "$HERE/config.json" --out "$RUNS/long" --steps "$TOTAL" --warmup 100 \
    --decay-frac 0.2 --eval-every 250 --eval-batches 16 --save-every 50 --keep 3 "${COMMON[@]}" \
    ${STOP_AT:+--stop-at "$STOP_AT"} > "$RUNS/long.out"
fi

# 4. What ships: the finished run, or a warmup-stable-decay branch of where it stands.
DONE=$(sed -e 's/^ckpt-0*//' -e 's/\.safetensors$//' "$RUNS/long/latest")
FINAL=$RUNS/long
if [ "$DONE" -lt "$TOTAL" ]; then
  DECAY=${DECAY:-$((DONE / 5))}
  FINAL=$RUNS/branch-$DONE-d$DECAY
  [ -f "$FINAL/latest" ] || python -m nanochat_ternary.train --branch-from "$RUNS/long" --decay-steps "$DECAY" \
    --out "$FINAL" --threads "$THREADS" --no-progress > "$FINAL.out"
fi

# 5. Export of the pretrained model, then post-training and what ships (posttrain.sh): SFT warm start +
#    MaxRL with the compiler in the loop, sampling defaults measured on the dev prompts, export with them,
#    evaluation (held-out loss on this mix), the card and the zoo entry.
python -m nanochat_ternary.export "$FINAL" --out "$RUNS/pretrained.gguf"
FINAL=$FINAL MIX=$MIX RUNS=$RUNS THREADS=$THREADS bash "$HERE/posttrain.sh" "$RUNS/pretrained.gguf"
