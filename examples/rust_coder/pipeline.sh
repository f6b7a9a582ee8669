#!/usr/bin/env bash
# The whole recipe of the default model `rust-coder` (issue 19):
# crates + std -> function-level and compiler-verified views -> mix, tokenizer, shards ->
# equal-compute size sweep (+ full-precision twin) -> long ternary QAT run (resumable, split over
# sessions with STOP_AT) -> WSD decay branch -> GGUF export -> sampling sweep -> evaluation ->
# model card -> zoo registration.
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

# 5. Export, then the sampling defaults measured on the dev-visible prompts, then export again
#    with them as the model's generation_config.
python -m nanochat_ternary.export "$FINAL" --out "$RUNS/model.gguf"
python "$HERE/sampling.py" --model "$RUNS/model.gguf" --n 3 --report "$RUNS/eval/sampling.json" \
  --out "$RUNS/generation_config.json"
python -m nanochat_ternary.export "$FINAL" --out "$MODEL_DIR/model.gguf" --generation-config "$RUNS/generation_config.json"

# 6. Evaluation: held-out loss; HumanEval-Rust greedy (the issue's parse / compile / nontrivial
#    targets; with the model's repetition penalty and without) and pass@k at temperature 0.8; the
#    dev-visible compile rate of the shipped file.
MODEL=$MODEL_DIR/model.gguf
python -m nanochat_ternary.eval loss --model "$MODEL" --data "$MIX" --output "$RUNS/eval/loss.json"
python -m nanochat_ternary.eval compile-rate --model "$MODEL" --temperature 0 --max-new-tokens 256 \
  --prompts python/nanochat_ternary/eval/data/humaneval-rs.jsonl --output "$RUNS/eval/compile.json"
python -m nanochat_ternary.eval compile-rate --model "$MODEL" --temperature 0 --max-new-tokens 256 --repetition-penalty 1 \
  --prompts python/nanochat_ternary/eval/data/humaneval-rs.jsonl --output "$RUNS/eval/compile-plain.json"
python -m nanochat_ternary.eval humaneval --model "$MODEL" --temperature 0.8 --top-p 0.95 --max-new-tokens 256 \
  --n 10 --k 1 10 --output "$RUNS/eval/humaneval.json"
python -m nanochat_ternary.eval compile-rate --model "$MODEL" --temperature 0 --max-new-tokens 256 \
  --output "$RUNS/eval/dev.json"

# 7. Model card from those files, then pin the files in the zoo as the default.
python "$HERE/make_card.py" --model "$MODEL" --runs "$RUNS" --final "$FINAL" --data "$MIX" --out "$MODEL_DIR/README.md"
python examples/register.py "$MODEL_DIR" --default \
  --description "ternary Rust-code model trained with this package on its function-level, compiler-verified corpus (see its README.md)"
