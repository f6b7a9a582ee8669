#!/usr/bin/env bash
# Continued pretraining of `rust-coder` from its exported weights: for when the long run's checkpoints
# are gone (the machines here are reset between sessions; the GGUF in the repo is what survives). The
# corpus is rebuilt with pipeline.sh's step 1 but tokenized with the model's own tokenizer, and the run
# reads the train split on from where the run behind the file stopped reading.
#
#     bash examples/rust_coder/continue.sh runs/rust-coder/pretrained.gguf   # inside the venv
#
# Time: the corpus ~10 min; the run 70 min at the long run's 6,500 tokens/s, 2.4 h at the 3,100 tokens/s
# measured here on 2026-12-06 (same 2-core kind, another day).
#
# then post-training and shipping: MIX=data/rust-mix-cont RUNS=runs/rust-coder PRETRAIN_CARD=<the file's card> \
#     bash examples/rust_coder/posttrain.sh runs/rust-coder/continued.gguf
# (make_card.py does not yet write a section for the continuation: its log and eval/cont-loss-*.json hold it).
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
mkdir -p "$RUNS"

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

# 3. Export.
python -m nanochat_ternary.export "$RUNS/cont" --out "$RUNS/continued.gguf"

# 4. Held-out loss of the start file and the continued one on the same validation tokens (the first
#    524,288 of the rebuilt mix's held-out crates; posttrain.sh measures the whole split for what ships).
mkdir -p "$RUNS/eval"
for which in "start $PRE" "end $RUNS/continued.gguf"; do
  set -- $which
  python -m nanochat_ternary.eval loss --model "$2" --data "$MIX" --max-tokens 524288 --output "$RUNS/eval/cont-loss-$1.json"
done
