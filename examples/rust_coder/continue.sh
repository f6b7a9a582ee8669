#!/usr/bin/env bash
# Continued pretraining of `rust-coder` from its exported weights: for when the long run's checkpoints
# are gone (the machines here are reset between sessions; the GGUF in the repo is what survives). The
# corpus is rebuilt with pipeline.sh's step 1 but tokenized with the model's own tokenizer, and the run
# reads the train split on from where the run behind the file stopped reading.
#
#     START_CARD=start-card.md bash examples/rust_coder/continue.sh runs/rust-coder/pretrained.gguf   # in the venv
#
# START_CARD is the card of PRETRAINED.gguf (e.g. `git show <rev>:python/nanochat_ternary/models/rust-coder-base/README.md`):
# its Data / Size sweep / Training sections and its Quality section are carried into the new card.
# After the run: export, the sampling sweep, evaluation (reports in RUNS/eval-base), the card, and the
# zoo entry `rust-coder-base` replaced by the continued file. Then post-training and shipping the default:
#     MIX=data/rust-mix-cont RUNS=runs/rust-coder PRETRAIN_CARD=python/nanochat_ternary/models/rust-coder-base/README.md \
#         bash examples/rust_coder/posttrain.sh python/nanochat_ternary/models/rust-coder-base/model.gguf
#
# Time: the corpus ~10 min; the run 70 min at the long run's 6,500 tokens/s, 2.2-2.4 h at the 3,100-3,500
# tokens/s measured here on 2026-12-06 (same 2-core kind, another day); evaluation ~30 min.
#
# Environment: DATA_ROOT (default data), RUNS (default runs/rust-coder), STEPS (default 3,250 steps of
# 8 x 1024 tokens = 26.6M tokens: with the file's 73.7M, 100.4M in all), DATA_START (default 9,000
# steps x 8 x 1025 tokens, where the file's run stopped), THREADS (default 2). Rerunning resumes the run.
set -euo pipefail
cd "$(dirname "$0")/../.."
PRE=${1:?usage: continue.sh PRETRAINED.gguf}
DATA_ROOT=${DATA_ROOT:-data}
RUNS=${RUNS:-runs/rust-coder}
STEPS=${STEPS:-3250}
DATA_START=${DATA_START:-$((9000 * 8 * 1025))}
THREADS=${THREADS:-2}
MIX=$DATA_ROOT/rust-mix-cont
REPORTS=$RUNS/eval-base
BASE_DIR=python/nanochat_ternary/models/rust-coder-base
HE=python/nanochat_ternary/eval/data/humaneval-rs.jsonl
START_CARD=${START_CARD:?START_CARD: the card of PRETRAINED.gguf (its Data / Size sweep / Training sections are carried over)}
mkdir -p "$RUNS"
if [ -f "$RUNS/cont/log.jsonl" ]; then  # a rerun: the same start file, or the comparisons below would be wrong
  WANT=$(head -1 "$RUNS/cont/log.jsonl" | python -c "import json, sys; print(json.load(sys.stdin).get('init_sha256', ''))")
  [ "$WANT" = "$(sha256sum "$PRE" | cut -d' ' -f1)" ] || { echo "error: $RUNS/cont continues another file than $PRE" >&2; exit 2; }
fi

# 1. The corpus, as pipeline.sh step 1, tokenized with the file's tokenizer (train checks it id by id).
[ -f "$DATA_ROOT/crates/crates.json" ] || python -m nanochat_ternary.data fetch-crates --out "$DATA_ROOT/crates"
command -v rustup > /dev/null && rustup component add rust-src
[ -f "$DATA_ROOT/rust-fn/stats.json" ] || python -m nanochat_ternary.data functions --crates "$DATA_ROOT/crates" --out "$DATA_ROOT/rust-fn"
python -m nanochat_ternary.data verify --functions "$DATA_ROOT/rust-fn" --workers "$THREADS"
python -c "import sys; from nanochat_ternary.model import TernaryModel; TernaryModel(sys.argv[1]).tokenizer.save(sys.argv[2])" \
  "$PRE" "$RUNS/pretrained-tokenizer.json"
[ -f "$MIX/meta.json" ] || python -m nanochat_ternary.data build --mix python/nanochat_ternary/data/mix_rust.json \
  --corpus "$DATA_ROOT/rust-fn" --out "$MIX" --tokenizer "$RUNS/pretrained-tokenizer.json" --val-fraction 0.02

# 2. The run: the file's weights, a new warmup-stable-decay schedule at half the long run's peak rates
#    (re-warming a decayed model), checkpoints every 50 steps; rerunning resumes it exactly.
if [ -f "$RUNS/cont/latest" ]; then
  python -m nanochat_ternary.train --out "$RUNS/cont" --resume --threads "$THREADS" --no-progress >> "$RUNS/cont.out"
else
  python -m nanochat_ternary.train --init-from "$PRE" --data "$MIX" --data-start "$DATA_START" --out "$RUNS/cont" \
    --steps "$STEPS" --warmup 100 --decay-frac 0.35 --lr-muon 0.01 --lr-lion 5e-4 --batch-size 8 --seq-len 1024 \
    --eval-every 250 --eval-batches 16 --save-every 50 --keep 3 --log-every 10 --threads "$THREADS" --no-progress \
    > "$RUNS/cont.out"
fi

# 3. Export; held-out loss of the continued file and of the start file on the whole validation split
#    (the start file's skipped when measured already; the weights are those of the final export).
MODEL=$RUNS/continued.gguf
python -m nanochat_ternary.export "$RUNS/cont" --out "$MODEL"
mkdir -p "$REPORTS"
python -m nanochat_ternary.eval loss --model "$MODEL" --data "$MIX" --output "$REPORTS/loss.json"
[ -f "$REPORTS/loss-pretrained.json" ] || \
  python -m nanochat_ternary.eval loss --model "$PRE" --data "$MIX" --output "$REPORTS/loss-pretrained.json"

# 4. The sampling defaults measured on the built-in dev prompts, the export with them, then HumanEval-Rust
#    greedy with the file's defaults and plain, the dev prompts, pass@k at temperature 0.8.
python examples/rust_coder/sampling.py --model "$MODEL" --n 3 --report "$REPORTS/sampling.json" \
  --out "$RUNS/continued-generation_config.json"
python -m nanochat_ternary.export "$RUNS/cont" --out "$MODEL" --generation-config "$RUNS/continued-generation_config.json"
python -m nanochat_ternary.eval compile-rate --model "$MODEL" --temperature 0 --max-new-tokens 256 \
  --prompts "$HE" --output "$REPORTS/compile.json"
python -m nanochat_ternary.eval compile-rate --model "$MODEL" --temperature 0 --max-new-tokens 256 \
  --repetition-penalty 1 --no-repeat-ngram-size 0 --token-healing off --prompts "$HE" --output "$REPORTS/compile-plain.json"
python -m nanochat_ternary.eval compile-rate --model "$MODEL" --temperature 0 --max-new-tokens 256 \
  --output "$REPORTS/dev.json"
python -m nanochat_ternary.eval humaneval --model "$MODEL" --temperature 0.8 --top-p 0.95 --max-new-tokens 256 \
  --n 10 --k 1 10 --output "$REPORTS/humaneval.json"

# 5. The card (the start file's Data / Size sweep / Training sections carried over from its card) and
#    the zoo entry `rust-coder-base`, the file posttrain.sh starts from next.
cp "$MODEL" "$BASE_DIR/model.gguf"
python examples/rust_coder/make_card.py --model "$BASE_DIR/model.gguf" --runs "$RUNS" --reports "$REPORTS" \
  --pretrain-card "$START_CARD" --continuation "$RUNS/cont" --name rust-coder-base --out "$BASE_DIR/README.md"
python examples/register.py "$BASE_DIR" \
  --description "the pretrained base of rust-coder, before SFT + MaxRL post-training, continued pretraining included (see its README.md)"
