#!/bin/bash
# MaxRL vs GRPO from one base model, same samples (README "RL" section has the numbers).
#   bash examples/rl/experiment.sh /tmp/rl-exp        (~45 min on 2 shared CPU cores from rust-tiny)
#   BASE=python/nanochat_ternary/models/rust-coder-base/model.gguf bash examples/rl/experiment.sh /tmp/rl-coder
# BASE: the GGUF to start from (default the shipped rust-tiny). Every model of the experiment is also
# measured on the vendored HumanEval-Rust (greedy compile rates; pass@1 at temperature 0.8), the
# issue's before/after check: measured only, never trained or tuned on.
set -euo pipefail
OUT=${1:-/tmp/rl-exp}
PY=${PY:-.venv/bin/python}
TINY=${BASE:-python/nanochat_ternary/models/rust-tiny/model.gguf}
[ -f "$TINY" ] || { echo "BASE $TINY: no such file" >&2; exit 2; }
mkdir -p "$OUT" 
$PY examples/rl/make_dev_split.py python/nanochat_ternary/rl/data/tasks.jsonl "$OUT"
# Warm start on the train families (the base alone passes nothing): 120 + 60 steps of 32 references.
$PY -m nanochat_ternary.rl sft --model $TINY --tasks "$OUT/exp_tasks.jsonl" --out "$OUT/sft120" --steps 120 --batch 32 --no-progress
$PY -m nanochat_ternary.rl sft --model "$OUT/sft120/sft.gguf" --tasks "$OUT/exp_tasks.jsonl" --out "$OUT/sft180" --steps 60 \
    --batch 32 --seed 1 --no-progress
for algo in maxrl grpo; do
  $PY -m nanochat_ternary.rl --model "$OUT/sft180/sft.safetensors" --tokenizer "$OUT/sft180/tokenizer.json" \
    --tasks "$OUT/exp_tasks.jsonl" --out "$OUT/rl40-$algo" --algo $algo --rollouts 16 --prompts 8 --steps 40 \
    --max-new-tokens 64 --lr-muon 5e-3 --lr-lion 2e-4 --eval-every 40 --eval-tasks 64 --eval-samples 16 --no-progress
done
for model in $TINY "$OUT/sft180/sft.gguf" "$OUT/rl40-maxrl/final.gguf" "$OUT/rl40-grpo/final.gguf"; do
  for split in dev heldfam; do
    $PY -m nanochat_ternary.rl eval --model "$model" --tasks "$OUT/$split.jsonl" --split heldout --limit 64 \
      --samples 16 --max-new-tokens 64
  done
done
HE=python/nanochat_ternary/eval/data/humaneval-rs.jsonl
for model in $TINY "$OUT/sft180/sft.gguf" "$OUT/rl40-maxrl/final.gguf" "$OUT/rl40-grpo/final.gguf"; do
  name=$(basename "$(dirname "$model")")
  $PY -m nanochat_ternary.eval compile-rate --model "$model" --temperature 0 --max-new-tokens 256 --prompts "$HE" \
    --output "$OUT/humaneval-compile-$name.json"
  $PY -m nanochat_ternary.eval humaneval --model "$model" --temperature 0.8 --top-p 0.95 --max-new-tokens 256 \
    --n 10 --k 1 10 --output "$OUT/humaneval-pass-$name.json"
done
