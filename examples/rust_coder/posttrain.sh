#!/usr/bin/env bash
# Post-training of the default model `rust-coder` (issue 20) and what ships from it: an SFT warm start on
# the RL task set's train families, then MaxRL with the compiler and the tests in the loop, the checkpoint
# chosen on dev tasks; then the sampling sweep, export with the chosen generation_config, evaluation, the
# card and the zoo entry. pipeline.sh runs it on the pretrained export; alone:
#
#     bash examples/rust_coder/posttrain.sh runs/rust-coder/pretrained.gguf   # inside the venv; ~45 min on 2 cores
#
# Environment: RUNS (default runs/rust-coder), RL_STEPS (default 240; rerunning with more extends the run), THREADS (default 2), MIX (the
# pretraining data, for the held-out loss; skipped when absent), PRETRAIN_CARD (when pipeline.sh's
# pretraining logs are not on this machine: the card whose Data / Size sweep / Training sections are
# carried over, e.g. the card of the pretrained file from git), PRE_LOSS (the pretrained file's held-out loss
# report on MIX when already measured, e.g. continue.sh's eval-base/loss.json: copied, not measured again).
# Never trained or tuned on HumanEval-Rust: the checkpoint and the sampling defaults are chosen on dev
# tasks of the train families and on the harness's built-in prompts.
set -euo pipefail
cd "$(dirname "$0")/../.."
HERE=examples/rust_coder
PRE=${1:?usage: posttrain.sh PRETRAINED.gguf}
RUNS=${RUNS:-runs/rust-coder}
RL_STEPS=${RL_STEPS:-240}
THREADS=${THREADS:-2}
POST=$RUNS/post
MODEL_DIR=python/nanochat_ternary/models/rust-coder
HE=python/nanochat_ternary/eval/data/humaneval-rs.jsonl
mkdir -p "$POST" "$RUNS/eval"
# Every stage below is skipped once its output exists: refuse a POST made from another pretrained file.
SUM=$(sha256sum "$PRE" | cut -d' ' -f1)
if [ -f "$POST/pretrained.sha256" ] && [ "$(cat "$POST/pretrained.sha256")" != "$SUM" ]; then
  echo "error: $POST holds the post-training of another pretrained file; move it away first" >&2
  exit 2
fi
echo "$SUM" > "$POST/pretrained.sha256"

# 1. Split: 6 instances of every train family become dev tasks (never trained on), held-out families apart.
python examples/rl/make_dev_split.py python/nanochat_ternary/rl/data/tasks.jsonl "$POST"

# 2. SFT warm start on the train families' references (120 + 60 steps of 32, as examples/rl/experiment.sh).
[ -f "$POST/sft120/sft.json" ] || python -m nanochat_ternary.rl sft --model "$PRE" --tasks "$POST/exp_tasks.jsonl" \
  --out "$POST/sft120" --steps 120 --batch 32 --threads "$THREADS" --no-progress
[ -f "$POST/sft180/sft.json" ] || python -m nanochat_ternary.rl sft --model "$POST/sft120/sft.gguf" \
  --tasks "$POST/exp_tasks.jsonl" --out "$POST/sft180" --steps 60 --batch 32 --seed 1 --threads "$THREADS" --no-progress

# 3. MaxRL, 8 prompts x 16 rollouts a step, dev pass@k (64 tasks x 16 samples) every 40 steps; every
#    evaluated checkpoint kept, the best on dev pass@1 ships.
if [ -f "$POST/maxrl/latest" ]; then
  # Resumes an interrupted run, or extends a finished one to RL_STEPS (exact: constant LR after warmup).
  python -m nanochat_ternary.rl --out "$POST/maxrl" --resume --steps "$RL_STEPS" --threads "$THREADS" --no-progress
else
  python -m nanochat_ternary.rl --model "$POST/sft180/sft.safetensors" --tokenizer "$POST/sft180/tokenizer.json" \
    --tasks "$POST/exp_tasks.jsonl" --out "$POST/maxrl" --algo maxrl --rollouts 16 --prompts 8 --steps "$RL_STEPS" \
    --max-new-tokens 64 --lr-muon 5e-3 --lr-lion 2e-4 --eval-every 40 --eval-tasks 64 --eval-samples 16 \
    --save-every 40 --keep 100 --threads "$THREADS" --no-progress
fi
CKPT=$(python "$HERE/pick_checkpoint.py" "$POST/maxrl")

# 4. Sampling defaults measured on the built-in dev prompts, then the shipped export with them.
python -m nanochat_ternary.export "$CKPT" --tokenizer "$POST/maxrl/tokenizer.json" --out "$POST/model.gguf"
python "$HERE/sampling.py" --model "$POST/model.gguf" --n 3 --report "$RUNS/eval/sampling.json" \
  --out "$RUNS/generation_config.json"
python -m nanochat_ternary.export "$CKPT" --tokenizer "$POST/maxrl/tokenizer.json" --out "$MODEL_DIR/model.gguf" \
  --generation-config "$RUNS/generation_config.json"

# 5. Evaluation: task pass@k before / after each stage (dev tasks; 256 held-out-family tasks), held-out
#    loss (when the corpus is here), HumanEval-Rust greedy and pass@k at temperature 0.8, each with the
#    model's sampling defaults and plain (no penalty, n-gram ban or token healing), the dev prompts.
MODEL=$MODEL_DIR/model.gguf
for stage in "pretrained $PRE" "sft $POST/sft180/sft.gguf" "maxrl $MODEL"; do
  set -- $stage
  [ -f "$POST/tasks-dev-$1.json" ] || python -m nanochat_ternary.rl eval --model "$2" --tasks "$POST/dev.jsonl" \
    --limit 64 --samples 16 --max-new-tokens 64 --output "$POST/tasks-dev-$1.json" > /dev/null
  [ -f "$POST/tasks-heldfam-$1.json" ] || python -m nanochat_ternary.rl eval --model "$2" --tasks "$POST/heldfam.jsonl" \
    --limit 256 --samples 16 --max-new-tokens 64 --output "$POST/tasks-heldfam-$1.json" > /dev/null
done
if [ -n "${MIX:-}" ] && [ -f "$MIX/meta.json" ]; then
  python -m nanochat_ternary.eval loss --model "$MODEL" --data "$MIX" --output "$RUNS/eval/loss.json"
  if [ -n "${PRE_LOSS:-}" ]; then
    cp "$PRE_LOSS" "$RUNS/eval/loss-pretrained.json"
  else
    python -m nanochat_ternary.eval loss --model "$PRE" --data "$MIX" --output "$RUNS/eval/loss-pretrained.json"
  fi
fi
python -m nanochat_ternary.eval compile-rate --model "$MODEL" --temperature 0 --max-new-tokens 256 \
  --prompts "$HE" --output "$RUNS/eval/compile.json"
PLAIN=(--repetition-penalty 1 --no-repeat-ngram-size 0 --token-healing off)
python -m nanochat_ternary.eval compile-rate --model "$MODEL" --temperature 0 --max-new-tokens 256 "${PLAIN[@]}" \
  --prompts "$HE" --output "$RUNS/eval/compile-plain.json"
python -m nanochat_ternary.eval humaneval --model "$MODEL" --temperature 0.8 --top-p 0.95 --max-new-tokens 256 \
  --n 10 --k 1 10 --output "$RUNS/eval/humaneval.json"
python -m nanochat_ternary.eval humaneval --model "$MODEL" --temperature 0.8 --top-p 0.95 --max-new-tokens 256 \
  --n 10 --k 1 10 "${PLAIN[@]}" --output "$RUNS/eval/humaneval-plain.json"
python -m nanochat_ternary.eval compile-rate --model "$MODEL" --temperature 0 --max-new-tokens 256 \
  --output "$RUNS/eval/dev.json"

# 6. Model card from those files, then pin the files in the zoo as the default.
python "$HERE/make_card.py" --model "$MODEL" --runs "$RUNS" --post "$POST" --ckpt "$CKPT" \
  ${FINAL:+--final "$FINAL"} ${MIX:+--data "$MIX"} ${PRETRAIN_CARD:+--pretrain-card "$PRETRAIN_CARD"} \
  --out "$MODEL_DIR/README.md"
python examples/register.py "$MODEL_DIR" --default \
  --description "ternary Rust-code model trained with this package on its function-level, compiler-verified corpus, then SFT + MaxRL with the compiler in the loop (see its README.md)"
