"""Write the model card of `rust-coder` from measured artifacts only.

    python examples/rust_coder/make_card.py --model python/nanochat_ternary/models/rust-coder/model.gguf \
        --runs runs/rust-coder --final runs/rust-coder/branch-2000-d400 --data data/rust-mix-full \
        [--post runs/rust-coder/post --ckpt runs/rust-coder/post/maxrl/ckpt-00000080.safetensors] \
        --out python/nanochat_ternary/models/rust-coder/README.md

Every number comes from a file pipeline.sh / posttrain.sh wrote (trainer and RL logs, the data's
meta.json, the harness's JSON reports in RUNS/eval and POST) or is measured here (decode speed).
Where the pretraining logs are not on this machine (`--final` / `--data` absent), `--pretrain-card`
names the card written when they were: its Data, Size sweep and Training sections are carried over
verbatim and its Quality section becomes the "before post-training" section.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from cards import cpu_name, decode_speed, read_log, write_card  # noqa: E402

SWEEP = ("s", "m", "l")
QUALITY = "## Quality (all from `python -m nanochat_ternary.eval`)"
CONTINUED = "## Continued pretraining"


def load(path: Path) -> Any:
    return json.loads(path.read_text())


def run_hours(run: Path, until: int | None = None) -> float:
    """Training wall time of a run from its log up to step `until` (gaps over 10 minutes, i.e. between
    sessions, left out)."""
    rows = map(json.loads, (run / "log.jsonl").read_text().splitlines())
    times = [r["time"] for r in rows if "time" in r and (until is None or r.get("step", 0) <= until)]
    return sum(b - a for a, b in zip(times, times[1:]) if b - a < 600) / 3600


def rate(summary: dict[str, Any], key: str) -> str:
    value = summary.get(key)
    return "n/a" if value is None else f"{value:.1%}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--runs", type=Path, required=True)
    p.add_argument("--final", type=Path, help="the pretraining run directory the shipped file came from")
    p.add_argument("--data", type=Path, help="the pretraining data (its meta.json)")
    p.add_argument("--pretrain-card", type=Path, help="card whose pretraining sections are carried over")
    p.add_argument("--post", type=Path, help="posttrain.sh's directory (SFT + MaxRL)")
    p.add_argument("--ckpt", type=Path, help="the RL checkpoint the shipped file was exported from")
    p.add_argument("--continuation", type=Path,
                   help="continue.sh's run directory: continued pretraining of the --pretrain-card's file")
    p.add_argument("--reports", type=Path, help="the evaluation reports (default RUNS/eval)")
    p.add_argument("--name", default="rust-coder")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    reports = args.reports if args.reports is not None else args.runs / "eval"
    if args.pretrain_card is None and (args.final is None or args.data is None):
        p.error("--final and --data are required unless --pretrain-card carries the pretraining sections")
    if (args.post is None) != (args.ckpt is None):
        p.error("--post and --ckpt go together")
    if args.continuation is not None and args.pretrain_card is None:
        p.error("--continuation needs --pretrain-card (the card of the file the run continued from)")

    from nanochat_ternary.model import TernaryModel

    model = TernaryModel.from_pretrained(args.model)
    if args.pretrain_card is not None:
        carried = sections(args.pretrain_card.read_text())
        args.continued = CONTINUED in carried
        pretrain = "\n".join(carried[h] for h in ("## Data", "## Size sweep (equal compute)", "## Training", CONTINUED)
                             if h in carried)
        if args.continuation is not None:
            pretrain += "\n" + continuation_section(args.continuation, carried["## Training"], reports)
        before = ("## Quality of the file the continuation started from (carried over from its card)"
                  if args.continuation is not None else
                  "## Quality before post-training (the pretrained file, carried over from its card)")
        pretrain += "\n" + carried[QUALITY].replace(QUALITY, before, 1)
    else:
        args.continued = False
        pretrain = pretrain_sections(args, model)
    post = post_section(args.post, args.ckpt) if args.post is not None else ""
    card = f"{intro(args, model)}\n{pretrain}\n{post}{quality(args, model, reports)}"
    write_card(args.out, card)


def sections(card: str) -> dict[str, str]:
    """A card's `## ` sections by heading, each with its heading and text up to the next one."""
    out, head, lines = {}, None, []
    for line in card.splitlines(keepends=True):
        if line.startswith("## "):
            if head is not None:
                out[head] = "".join(lines)
            head, lines = line.strip(), []
        if head is not None:
            lines.append(line)
    if head is not None:
        out[head] = "".join(lines)
    return out


def intro(args: argparse.Namespace, model: Any) -> str:
    size_mb = args.model.stat().st_size / 1e6
    how = (f"pretrained from scratch{' (and continued)' if args.continued else ''} with this package on its function-level,\n"
           "compiler-verified Rust corpus, then post-trained with the compiler in the loop (an SFT warm start on the RL task\n"
           "set's train families, then MaxRL)" if args.post is not None else
           "trained from scratch with this package on its function-level, compiler-verified Rust corpus")
    if args.continuation is not None:
        how = ("trained from scratch with this package on its function-level, compiler-verified Rust\n"
               "corpus, then on more of it (continued pretraining)")
    role = ("The default model of `nanochat-ternary`" if args.post is not None or args.continuation is None else
            "The pretrained base of the Rust models, before post-training (the starting point of\n"
            "`examples/rust_coder/posttrain.sh`, which makes the default `rust-coder`)")
    name_arg = "" if args.name == "rust-coder" else f'"{args.name}"'
    return f"""# {args.name}

{role}: a {model.param_count / 1e6:.2f}M-parameter ternary (BitNet b1.58) Rust-code
model {how}, shipped as a {size_mb:.1f} MB GGUF file (`general.architecture = {model.architecture}`; block
projections TQ2_0, tied embedding/head Q8_0). It is still small and young: read the quality rows before trusting
its code.

```python
from nanochat_ternary import TernaryModel
model = TernaryModel.from_pretrained({name_arg})  # this model, from package data, sha256-verified
print(model.generate("/// n-th Fibonacci number.\\npub fn fibonacci(n: u32) -> u64 {{\\n"))
```
"""


def pretrain_sections(args: argparse.Namespace, model: Any) -> str:
    from nanochat_ternary.model_config import ModelConfig

    runs, reports, cfg = args.runs, args.runs / "eval", model.config
    meta = load(args.data / "meta.json")
    mix = meta["source"]["mix"]

    # Data.
    views = []
    for view, stats in mix["tokens_per_view"]["train"].items():
        val = mix["tokens_per_view"]["val"].get(view, {})
        weight = mix["views"][view].get("weight", 1.0)
        views.append(f"| {view} (weight {weight}) | {stats['documents']:,} | {stats['tokens']:,} | "
                     f"{val.get('documents', 0):,} | {val.get('tokens', 0):,} |")
    decontam = mix["decontamination"]

    # Sweep.
    sweep_rows = []
    for k in SWEEP:
        run = runs / f"sweep-{k}"
        steps, evals = read_log(run)
        c = ModelConfig.from_json((Path(__file__).parent / f"sweep-{k}.json").read_text())
        dev = load(reports / f"dev-{k}.json")["summary"]
        tokens = steps[-1]["step"] * steps[-1]["tokens"]
        shape, params = f"dim {c.dim}, {c.n_layers} layers, FFN {c.ffn_hidden}", f"{c.param_count / 1e6:.1f}M"
        sweep_rows.append(f"| {shape} | {params} | {steps[-1]['step']} | {tokens / 1e6:.2f}M | {run_hours(run) * 60:.1f} | "
                          f"{evals[-1]['val_loss']:.4f} | {rate(dev, 'parse_rate')} | {rate(dev, 'compile_rate')} | "
                          f"{rate(dev, 'nontrivial_compile_rate')} |")
    _, twin_t = read_log(runs / "sweep-s")
    if (runs / "sweep-s-fp" / "log.jsonl").is_file():
        _, twin_f = read_log(runs / "sweep-s-fp")
        twin = (f"Ternary vs full precision, the smallest shape at the sweep's budget (same data, order and steps): val loss\n"
                f"{twin_t[-1]['val_loss']:.4f} vs {twin_f[-1]['val_loss']:.4f} (gap {twin_t[-1]['val_loss'] - twin_f[-1]['val_loss']:+.4f}); "
                f"bpb {twin_t[-1]['val_bpb']:.4f} vs {twin_f[-1]['val_bpb']:.4f}.")
    else:
        twin = "The full-precision twin (`sweep-s-fp.json`, pipeline step 2) has not been run yet: no ternary gap is claimed."

    # The long run and the shipped branch.
    long_steps, long_evals = read_log(runs / "long")
    final_steps, final_evals = read_log(args.final)
    branch = [r for r in map(json.loads, (args.final / "log.jsonl").read_text().splitlines()) if "branched_from" in r]
    hyper_total = branch[0]["total_steps"] if branch else final_steps[-1]["step"]
    tokens_step = final_steps[-1]["tokens"]
    trained = final_steps[-1]["step"] * tokens_step
    long_hours = run_hours(runs / "long", branch[0]["step"] if branch else None) + (run_hours(args.final) if branch else 0.0)
    how = (f"the long run (schedule 12,288 steps = 100.7M tokens) stopped at step {branch[0]['step']:,} and branched "
           f"into a {branch[0]['decay_steps']}-step linear decay (warmup-stable-decay), ending at step {hyper_total:,}"
           if branch else f"the full schedule of {hyper_total:,} steps")

    return f"""## Data

The mix `python/nanochat_ternary/data/mix_rust.json` over ~330 of the most-used crates.io crates and their dependencies
(vendored by cargo; permissive licences only, recorded per crate) and the std sources: whole files, free functions
and impl blocks as standalone documents (a quarter of the free functions in completion-prompt shape), and
standalone std-only functions that type-check alone with rustc (weight 2). MinHash near-duplicate removal
(threshold {mix['dedup']['threshold']}), {meta['source']['groups']['val']} whole crates held out for validation, byte-level BPE with
vocabulary {meta['vocab_size']} trained on the mix. Decontamination against the vendored HumanEval-Rust prompts and
tests (13-token windows with two or more content words; benchmark-like paths): dropped {sum(decontam['dropped'].values()) if decontam['dropped'] else 0}.

| view | train documents | train tokens | val documents | val tokens |
|---|---|---|---|---|
{chr(10).join(views)}

## Size sweep (equal compute)

Three ternary shapes, each given about the same 2-thread CPU time (steps set from their measured tokens/s), batch
8 × 1024, warmup 10 %, decay 30 %, same data order. Held-out loss from the trainer (32 validation batches); dev
compile rates on the harness's built-in prompts (30 completion prompts, not HumanEval), greedy, 256 new tokens.

| shape | parameters | steps | tokens | minutes | val loss | dev parse | dev compile | dev nontrivial compile |
|---|---|---|---|---|---|---|---|---|
{chr(10).join(sweep_rows)}

{twin}

## Training

| | |
|---|---|
| config | dim {cfg.dim}, {cfg.n_layers} layers, {cfg.n_heads} heads ({cfg.n_kv_heads} KV), SwiGLU {cfg.ffn_hidden}, context {cfg.max_seq_len}, tied embeddings, plain residual |
| parameters | {model.param_count:,} |
| schedule | {how} |
| tokens | {final_steps[-1]['step']:,} steps × {tokens_step:,} = {trained:,} |
| optimizer | Muon (block projections) + Lion (embedding, norms), int8 forward / bf16 backward QAT path |
| hardware | {cpu_name()}, CPU only, 2 threads; {long_hours:.2f} h of training |
| validation loss | {long_evals[0]['val_loss']:.3f} at step {long_evals[0]['step']} → {final_evals[-1]['val_loss']:.4f} at step {final_evals[-1]['step']} (bpb {final_evals[-1]['val_bpb']:.4f}) |
"""


def continuation_section(run: Path, training: str, reports: Path) -> str:
    """Continued pretraining (continue.sh): the start file (its sha256 from the run's log, its tokens from
    the carried Training section), the new schedule and tokens from the run's newest checkpoint and log,
    and the held-out loss of the start and end files on the same validation tokens (REPORTS/loss-pretrained.json,
    REPORTS/loss.json)."""
    import re

    from nanochat_ternary import _core

    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]
    init = next((r for r in records if "init_from" in r), None)
    start = next((r for r in records if "data_start" in r), None)
    if init is None or start is None:
        raise SystemExit(f"{run}: not a continued run (its log has no init_from / data_start record)")
    match = re.search(r"^\| tokens \| .*= ([\d,]+) \|$", training, re.M)
    if match is None:
        raise SystemExit("the carried Training section has no '| tokens | ... = N |' row")
    before_tokens = int(match.group(1).replace(",", ""))
    core, state = _core.QatTrainer.load(str(run / (run / "latest").read_text().strip()), "cpu")
    hyper, loop = json.loads(core.hyper_json()), json.loads(state)["loop"]
    steps, evals = read_log(run)
    if not steps or not evals:
        raise SystemExit(f"{run}: no logged steps or evaluations")
    done, tokens_step = steps[-1]["step"], steps[-1]["tokens"]
    if done != hyper["total_steps"]:
        raise SystemExit(f"{run}: stopped at step {done} of {hyper['total_steps']}; finish it first")
    tokens = done * tokens_step
    loss_a, loss_b = (load(reports / name)["loss"] for name in ("loss-pretrained.json", "loss.json"))
    if loss_a["tokens"] != loss_b["tokens"]:
        raise SystemExit("loss-pretrained.json and loss.json scored different token counts")
    return f"""{CONTINUED}

The long run's checkpoints were lost with its machine; `examples/rust_coder/continue.sh` continues from the exported
file instead (`train --init-from`: every weight as in the file, sha256 `{init['init_sha256'][:16]}…`; new optimizer
state), reading the train split on from token position {start['data_start']:,} (where the first run stopped) of the
corpus rebuilt by the same pipeline and tokenized with the file's tokenizer.

| | |
|---|---|
| schedule | {done:,} steps, warmup {hyper['warmup']}, Muon {hyper['lr_muon']} / Lion {hyper['lr_lion']} (half the long run's peak rates), linear decay over the last {hyper['decay_frac']:.0%} |
| tokens | {done:,} steps × {tokens_step:,} = {tokens:,}; with the start file's {before_tokens:,}: **{tokens + before_tokens:,}** in all |
| hardware | {cpu_name()}, CPU only; {run_hours(run):.2f} h of training |
| validation loss (trainer, {loop['eval_batches']} batches) | {evals[0]['val_loss']:.4f} at step {evals[0]['step']} → {evals[-1]['val_loss']:.4f} at step {evals[-1]['step']} (bpb {evals[-1]['val_bpb']:.4f}) |
| held-out loss (engine, {loss_a['tokens']:,} validation tokens) | start file {loss_a['mean_loss']:.4f} → this file {loss_b['mean_loss']:.4f} nats/token ({loss_a['bits_per_byte']:.4f} → {loss_b['bits_per_byte']:.4f} bits per byte) |
"""


def post_section(post: Path, ckpt: Path) -> str:
    """SFT + MaxRL: the split, both stages' settings and costs from their logs, the chosen checkpoint and
    task pass@k of the pretrained file, the SFT start and the shipped file."""
    from nanochat_ternary import _core

    def count(name: str) -> int:
        return sum(1 for line in (post / name).read_text().splitlines() if line.strip())

    exp_rows = [json.loads(line) for line in (post / "exp_tasks.jsonl").read_text().splitlines() if line.strip()]
    train_tasks = sum(r["split"] == "train" for r in exp_rows)
    train_families = len({r["family"] for r in exp_rows if r["split"] == "train"})
    held_families = len({json.loads(line)["family"] for line in (post / "heldfam.jsonl").read_text().splitlines() if line.strip()})
    sft1, sft2 = load(post / "sft120" / "sft.json"), load(post / "sft180" / "sft.json")
    rl_run = ckpt.parent
    _, state = _core.QatTrainer.load(str(ckpt))
    c = json.loads(state)["config"]
    records = [json.loads(line) for line in (rl_run / "log.jsonl").read_text().splitlines() if line.strip()]
    steps = [r for r in records if "eval" not in r]
    evals = [r for r in records if r.get("eval") == "heldout"]
    chosen = json.loads(state)["step"]
    seconds = sum(sum(r["seconds"].values()) for r in steps)
    first, last = steps[: min(10, len(steps))], steps[-min(10, len(steps)):]
    mean = lambda rows, key: sum(r[key] for r in rows) / len(rows)  # noqa: E731
    dev_evals = ", ".join(f"step {r['step']}: {r['pass@1']:.3f}" for r in evals)
    rows = []
    for stage, label in (("pretrained", "pretrained (before post-training)"), ("sft", "+ SFT warm start"),
                         ("maxrl", f"+ MaxRL, step {chosen} (this file)")):
        dev, held = load(post / f"tasks-dev-{stage}.json"), load(post / f"tasks-heldfam-{stage}.json")
        rows.append(f"| {label} | {dev['pass@1']:.4f} | {dev['pass@16']:.3f} | {dev['compile_rate']:.3f} | "
                    f"{held['pass@1']:.4f} | {held['pass@16']:.3f} | {held['compile_rate']:.3f} |")
    dev0, held0 = load(post / "tasks-dev-maxrl.json"), load(post / "tasks-heldfam-maxrl.json")
    return f"""## Post-training (SFT + MaxRL, `examples/rust_coder/posttrain.sh`)

The RL task set `python/nanochat_ternary/rl/data/tasks.jsonl` (procedural typed tasks and tasks mined from the
compiler-verified corpus, each with `assert_eq!` tests; never HumanEval or MBPP): {train_tasks:,} tasks of {train_families}
train families train; {count('dev.jsonl')} further instances of those families are dev tasks (never trained on; they choose
the checkpoint); {count('heldfam.jsonl')} tasks of {held_families} whole held-out families measure generalization.

- **SFT warm start** on the train tasks' reference bodies (cross-entropy on completion tokens): {sft1['steps']} + {sft2['steps']}
  steps of {sft1['batch']}, completion CE {sft1['ce_first']:.3f} → {sft2['ce_last']:.3f}.
- **MaxRL** (advantage (r − r̄)/r̄ per prompt group, binary reward: every test passes in the sandbox), {c['prompts_per_step']}
  prompts × {c['rollouts']} rollouts a step, temperature {c['temperature']}, top-p {c['top_p']}, at most {c['max_new_tokens']} new tokens,
  Muon {c['lr_muon']} / Lion {c['lr_lion']}, KL coefficient {c['kl_coef']}; {len(steps)} steps ({steps[-1]['samples']:,} samples) in
  {seconds / 60:.1f} min. Training pass rate of the sampled prompts, first → last 10 steps: {mean(first, 'pass_rate'):.3f} →
  {mean(last, 'pass_rate'):.3f}; compile rate {mean(first, 'compile_rate'):.3f} → {mean(last, 'compile_rate'):.3f}.
  Dev pass@1 ({evals[0]['tasks']} tasks × {evals[0]['samples_per_task']} samples) — {dev_evals}: **step {chosen} ships**.

pass@k (unbiased) of {dev0['samples_per_task']} samples per task at temperature 1.0, at most 64 new tokens; dev: {dev0['tasks']} tasks, held-out
families: {held0['tasks']} tasks:

| model | dev pass@1 | dev pass@16 | dev compile | held-out families pass@1 | pass@16 | compile |
|---|---|---|---|---|---|---|
{chr(10).join(rows)}

"""


def quality(args: argparse.Namespace, model: Any, reports: Path) -> str:
    cfg = model.config
    loss_path = reports / "loss.json"
    if loss_path.is_file():
        loss = load(loss_path)["loss"]
        before = ""
        if (reports / "loss-pretrained.json").is_file():
            pre = load(reports / "loss-pretrained.json")["loss"]
            if pre["tokens"] != loss["tokens"]:
                raise SystemExit("loss.json and loss-pretrained.json scored different token counts")
            which = "the file the continuation started from" if args.continuation is not None else "the pretrained file"
            before = f" ({which} on the same tokens: {pre['mean_loss']:.4f} nats, {pre['bits_per_byte']:.4f} bits per byte)"
        loss_row = (f"| held-out loss (engine, {loss['tokens']:,} validation tokens, windows of {cfg.max_seq_len}) | "
                    f"{loss['mean_loss']:.4f} nats/token, perplexity {loss['perplexity']:.2f}, {loss['bits_per_byte']:.4f} bits per byte{before} |\n")
    else:
        loss_row = ""
    greedy = load(reports / "compile.json")["summary"]
    plain = load(reports / "compile-plain.json")["summary"]
    penalty = model.generation_config.get("repetition_penalty", 1.0)
    ngram = model.generation_config.get("no_repeat_ngram_size", 0)
    healing = model.generation_config.get("token_healing", False)
    defaults = ", ".join([f"repetition penalty {penalty}"] * (penalty != 1.0) + [f"no repeated {ngram}-grams"] * bool(ngram)
                         + ["token healing"] * bool(healing)) or "nothing else"
    dev = load(reports / "dev.json")["summary"]
    he = load(reports / "humaneval.json") if (reports / "humaneval.json").is_file() else None
    he_plain = load(reports / "humaneval-plain.json") if (reports / "humaneval-plain.json").is_file() else None
    plain_pass = "" if he_plain is None else (
        f"| the same, plain (no repetition penalty, n-gram ban or token healing) | "
        f"{', '.join(f'{k} = {v:.3f}' for k, v in he_plain['pass_at_k'].items())}; outcomes "
        f"{', '.join(f'{k} {v}' for k, v in he_plain['outcomes'].items())} |\n")
    sampled = "" if he is None else (
        f"| HumanEval-Rust pass@k ({he['problems']} problems, n = 10, temperature 0.8, top-p 0.95, {defaults}) | "
        f"{', '.join(f'{k} = {v:.3f}' for k, v in he['pass_at_k'].items())} |\n"
        f"| HumanEval-Rust outcomes of those samples | {', '.join(f'{k} {v}' for k, v in he['outcomes'].items())} |\n")
    sampling = load(reports / "sampling.json")
    gen = model.generation_config
    sampling_rows = "\n".join(
        f"| {r['label']} | {r['samples']} | {r['parse_rate']:.1%} | {r['compile_rate']:.1%} | {r['nontrivial_compile_rate']:.1%} |"
        for r in sampling["rows"]
    )
    speed1, speed2 = decode_speed(args.model, 1), decode_speed(args.model, 2)
    recipe = ("`bash examples/rust_coder/pipeline.sh` (data, sweep, long run, branch, export; then\n"
              "`examples/rust_coder/posttrain.sh`: SFT, MaxRL, sampling, evaluation, this card, zoo entry; `STOP_AT=N` splits\n"
              "the long run over sessions)" if args.post is not None else
              "`bash examples/rust_coder/pipeline.sh` (data, sweep, long run, branch, export, sampling, evaluation, this card,\n"
              "zoo entry; `STOP_AT=N` splits the long run over sessions)")
    if args.continuation is not None:
        recipe = ("`bash examples/rust_coder/continue.sh START.gguf` on the file of the carried sections (corpus rebuilt,\n"
                  "continued run, export, sampling, evaluation, this card, zoo entry)")
    elif args.continued and args.post is not None:
        recipe = ("`bash examples/rust_coder/pipeline.sh` (data, sweep, long run, branch, export), then `continue.sh` (continued\n"
                  "pretraining, the base's own card and zoo entry), then `posttrain.sh` on the continued base (SFT, MaxRL,\n"
                  "sampling, evaluation, this card, zoo entry)")
    return f"""## Quality (all from `python -m nanochat_ternary.eval`)

| metric | value |
|---|---|
{loss_row}| HumanEval-Rust, greedy, 256 new tokens ({greedy['samples']} problems), the model's defaults ({defaults}) / plain greedy (no repetition penalty, n-gram ban or token healing): syn parse | {rate(greedy, 'parse_rate')} / {rate(plain, 'parse_rate')} |
| rustc compile (`--emit=metadata`, edition 2021), same samples | {rate(greedy, 'compile_rate')} / {rate(plain, 'compile_rate')} |
| **nontrivial** compile (no empty / `todo!` / `unimplemented!` / `unreachable!` / `panic!` body) | {rate(greedy, 'nontrivial_compile_rate')} / {rate(plain, 'nontrivial_compile_rate')} |
{sampled}{plain_pass}| dev prompts (built-in, greedy, {defaults}): parse / compile / nontrivial compile | {rate(dev, 'parse_rate')} / {rate(dev, 'compile_rate')} / {rate(dev, 'nontrivial_compile_rate')} |

The harness cuts each completion at the problem's stop sequences (`\\n}}` …) and closes the function.

## Sampling defaults (measured)

`generate` uses the model's generation_config when the caller sets nothing: **{sampling['best']}**, at most
{gen.get('max_new_tokens')} new tokens. Chosen on the dev-visible prompts ({sampling['prompts']} built-in prompts, {sampling['n']} samples per
prompt for sampled settings), by nontrivial compile rate, then compile rate, then parse rate:

| setting | samples | parse | compile | nontrivial compile |
|---|---|---|---|---|
{sampling_rows}

## Speed

Greedy decode with the torch-free engine ({cpu_name()}): {speed1:,.0f} tokens/s on 1 thread, {speed2:,.0f} tokens/s on
2 threads (best of 3, 256 tokens).

## Reproduce

{recipe}. Card generated by `examples/rust_coder/make_card.py` on
{datetime.now(timezone.utc).strftime('%Y-%m-%d')} ({platform.system()}, Python {platform.python_version()}).
"""


if __name__ == "__main__":
    main()
