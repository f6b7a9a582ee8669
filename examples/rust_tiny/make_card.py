"""Write the model card of the shipped default model from measured artifacts only.

    python examples/rust_tiny/make_card.py --model python/nanochat_ternary/models/rust-tiny/model.gguf \
        --run runs/rust-tiny --run-fp runs/rust-tiny-fp --data DATA_DIR --reports runs/eval \
        --started 2026-11-23T15:51:29Z --out python/nanochat_ternary/models/rust-tiny/README.md

Every number in the card is read from a file the pipeline wrote (trainer logs and
checkpoints, the data directory's meta.json, the evaluation harness's JSON reports)
or measured here (decode speed), so the card cannot drift from what was run. See
pipeline.sh next to this file for the whole recipe.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from cards import cpu_name, decode_speed, newest_checkpoint, read_log, write_card  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True, help="the shipped .gguf")
    p.add_argument("--run", type=Path, required=True, help="ternary training run directory")
    p.add_argument("--run-fp", type=Path, required=True, help="full-precision baseline run directory")
    p.add_argument("--data", type=Path, required=True, help="token data directory")
    p.add_argument("--reports", type=Path, required=True, help="loss.json, compile.json, humaneval.json")
    p.add_argument("--started", required=True, help="UTC start of the training runs, ISO 8601")
    p.add_argument("--name", default="rust-tiny")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()

    meta = json.loads((args.data / "meta.json").read_text())
    steps, evals = read_log(args.run)
    steps_fp, evals_fp = read_log(args.run_fp)
    if not evals or not evals_fp:
        raise SystemExit("both runs need at least one validation record in log.jsonl")
    ckpt, ckpt_fp = newest_checkpoint(args.run), newest_checkpoint(args.run_fp)
    started = datetime.fromisoformat(args.started.replace("Z", "+00:00"))
    ended = datetime.fromtimestamp(max(ckpt.stat().st_mtime, ckpt_fp.stat().st_mtime), tz=timezone.utc)
    wall_h = (ended - started).total_seconds() / 3600
    loss = json.loads((args.reports / "loss.json").read_text())["loss"]
    compile_rate = json.loads((args.reports / "compile.json").read_text())["summary"]
    he = json.loads((args.reports / "humaneval.json").read_text())
    he_cfg = json.loads((args.reports / "settings.json").read_text())
    from nanochat_ternary.model import TernaryModel

    model = TernaryModel.from_pretrained(args.model)
    speed1 = decode_speed(args.model, 1)
    speed2 = decode_speed(args.model, 2)
    train, val = meta["splits"]["train"], meta["splits"]["val"]
    counts = meta["source"]["counts"]
    last, last_fp = evals[-1], evals_fp[-1]
    cfg = model.config
    size_mb = args.model.stat().st_size / 1e6
    pass_k = he["pass_at_k"]

    card = f"""# {args.name}

The small model of `nanochat-ternary` (the default before `rust-coder`): a {model.param_count / 1e6:.2f}M-parameter ternary (BitNet b1.58) Rust-code
model trained from scratch with this package's own tokenizer, data pipeline and QAT trainer, shipped as a
{size_mb:.1f} MB GGUF file (`general.architecture = {model.architecture}`; block projections TQ2_0, tied
embedding/head Q8_0). It is small and briefly trained (about 1 token per parameter): it writes Rust-flavoured
text, not correct programs, and the quality rows below say exactly that.

```python
from nanochat_ternary import TernaryModel
model = TernaryModel.from_pretrained("rust-tiny")  # this model, from package data, sha256-verified
print(model.generate("fn fibonacci(n: u64) -> u64 {{", max_new_tokens=64))
```

## Data

Recipe: `python -m nanochat_ternary.data rust-corpus` (every `.rs` file of the local cargo registry after building this
project, plus the Rust standard library sources from `rustup component add rust-src`), byte-level BPE with
vocabulary {meta['vocab_size']} trained on the training split.

| | files | bytes | tokens |
|---|---|---|---|
| seen | {counts['files_seen']:,} | | |
| kept (after dropping {sum(counts['dropped'].values()):,}: {', '.join(f"{k} {v}" for k, v in counts['dropped'].items() if v)}) | {counts['kept']:,} | {counts['bytes_kept']:,} | |
| train ({meta['source']['groups']['train']} crates) | {train['documents']:,} | {train['bytes']:,} | {train['tokens']:,} |
| validation ({meta['source']['groups']['val']} whole crates held out) | {val['documents']:,} | {val['bytes']:,} | {val['tokens']:,} |

## Training

| | |
|---|---|
| config | dim {cfg.dim}, {cfg.n_layers} layers, {cfg.n_heads} heads ({cfg.n_kv_heads} KV), SwiGLU {cfg.ffn_hidden}, context {cfg.max_seq_len}, tied embeddings, plain residual |
| parameters | {model.param_count:,} |
| steps × tokens/step | {steps[-1]['step']} × {steps[-1]['tokens']:,} = {steps[-1]['step'] * steps[-1]['tokens']:,} tokens |
| optimizer | Muon (block projections) + Lion (embedding, norms), warmup-stable-decay |
| hardware | {cpu_name()}, CPU only; the ternary run and its full-precision twin ran side by side, 1 thread each |
| wall time | {wall_h:.2f} h for both runs together |
| train loss | {steps[0]['loss']:.3f} at step {steps[0]['step']} → {steps[-1]['loss']:.3f} at step {steps[-1]['step']} |

## Quality (all from `python -m nanochat_ternary.eval`)

| metric | value |
|---|---|
| held-out loss (engine, whole validation split, {loss['tokens']:,} tokens, windows of {cfg.max_seq_len}) | {loss['mean_loss']:.4f} nats/token, perplexity {loss['perplexity']:.2f} |
| held-out bits per byte | {loss['bits_per_byte']:.4f} |
| ternary vs full precision, same config, data order and {steps_fp[-1]['step'] * steps_fp[-1]['tokens']:,} tokens (trainer eval, same validation batches) | val loss {last['val_loss']:.4f} vs {last_fp['val_loss']:.4f} (gap {last['val_loss'] - last_fp['val_loss']:+.4f}); bpb {last['val_bpb']:.4f} vs {last_fp['val_bpb']:.4f} |
| syn parse rate, HumanEval-Rust prompt + completion ({compile_rate['samples']} samples) | {compile_rate['parse_rate']:.1%} |
| rustc compile rate (`--emit=metadata`, edition 2021), same samples | {compile_rate['compile_rate']:.1%} |
| HumanEval-Rust ({he['problems']} problems, n = {he_cfg['n']}, temperature {he_cfg['temperature']}, top-p {he_cfg['top_p']}) | {', '.join(f'{k} = {v:.3f}' for k, v in pass_k.items())} |
| HumanEval-Rust outcomes | {', '.join(f'{k} {v}' for k, v in he['outcomes'].items())} |

Sampling for the compile and HumanEval rows: temperature {he_cfg['temperature']}, top-p {he_cfg['top_p']},
at most {he_cfg['max_new_tokens']} new tokens; the harness cuts each completion at the problem's stop
sequences (`\\n}}` …) and closes the function.

## Speed

Greedy decode with the torch-free engine on this machine ({cpu_name()}): {speed1:,.0f} tokens/s on 1 thread,
{speed2:,.0f} tokens/s on 2 threads (best of 3, 256 tokens).

## Reproduce

`bash examples/rust_tiny/pipeline.sh` (about {wall_h + 0.5:.1f} h on 2 cores). Card generated by
`examples/rust_tiny/make_card.py` on {datetime.now(timezone.utc).strftime('%Y-%m-%d')} ({platform.system()}, Python
{platform.python_version()}).
"""
    write_card(args.out, card)


if __name__ == "__main__":
    main()
