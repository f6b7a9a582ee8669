#!/usr/bin/env bash
# The whole recipe of `rust-tiny`, the small zoo model (the default until `rust-coder`):
# corpus -> tokenizer + shards -> ternary QAT run and its full-precision twin ->
# GGUF export -> evaluation -> model card -> zoo registration.
#
#     bash examples/rust_tiny/pipeline.sh            # ~1.5 h on 2 cores; run inside the project venv
#
# DATA, RUNS and STEPS may be overridden from the environment. STARTED=<ISO UTC time> skips
# step 2 and reuses the runs in $RUNS that started then (e.g. to re-evaluate).
set -euo pipefail
cd "$(dirname "$0")/../.."
HERE=examples/rust_tiny
DATA=${DATA:-data/rust-corpus}
RUNS=${RUNS:-runs}
STEPS=${STEPS:-600}
MODEL_DIR=python/nanochat_ternary/models/rust-tiny
mkdir -p "$RUNS/eval" "$MODEL_DIR"

# 1. Corpus: local cargo registry + std sources, de-duplicated, whole crates held out.
[ -f "$DATA/meta.json" ] || python -m nanochat_ternary.data rust-corpus --out "$DATA"

# 2. Ternary run and its full-precision twin (config-fp.json differs only in "ternary": false),
#    same data order and token count, side by side on one thread each.
if [ -z "${STARTED:-}" ]; then
STARTED=$(date -u +%Y-%m-%dT%H:%M:%SZ)
for variant in "" "-fp"; do
  python -m nanochat_ternary.train --config "$HERE/config$variant.json" --data "$DATA" \
    --out "$RUNS/rust-tiny$variant" --steps "$STEPS" --batch-size 16 --seq-len 512 --warmup 40 \
    --decay-frac 0.3 --eval-every 100 --eval-batches 16 --save-every 100 --keep 2 --log-every 10 \
    --threads 1 --no-progress > "$RUNS/train$variant.out" 2>&1 &
done
wait
fi

# 3. Export: TQ2_0 projections, Q8_0 tied head, tokenizer in the GGUF metadata.
python -m nanochat_ternary.export "$RUNS/rust-tiny" --tokenizer "$DATA/tokenizer.json" --out "$MODEL_DIR/model.gguf"

# 4. Evaluation with the project's harness.
MODEL="$MODEL_DIR/model.gguf"
SAMPLING=(--temperature 0.2 --top-p 0.95 --max-new-tokens 256)
python -m nanochat_ternary.eval loss --model "$MODEL" --data "$DATA" --output "$RUNS/eval/loss.json"
python -m nanochat_ternary.eval compile-rate --model "$MODEL" "${SAMPLING[@]}" \
  --prompts python/nanochat_ternary/eval/data/humaneval-rs.jsonl --output "$RUNS/eval/compile.json"
python -m nanochat_ternary.eval humaneval --model "$MODEL" "${SAMPLING[@]}" --n 10 --k 1 10 \
  --output "$RUNS/eval/humaneval.json"
echo '{"n": 10, "temperature": 0.2, "top_p": 0.95, "max_new_tokens": 256}' > "$RUNS/eval/settings.json"

# 5. Model card from those files, then pin both files in the zoo.
python "$HERE/make_card.py" --model "$MODEL" --run "$RUNS/rust-tiny" --run-fp "$RUNS/rust-tiny-fp" \
  --data "$DATA" --reports "$RUNS/eval" --started "$STARTED" --out "$MODEL_DIR/README.md"
python examples/register.py "$MODEL_DIR" \
  --description "4.5M-parameter ternary Rust-code model trained with this package (see its README.md)"
