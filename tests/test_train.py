"""The training loop (`nanochat_ternary.train`): exact resume through the
Python Trainer on real shards, gradient accumulation, entropy and clipping
metrics, checkpoint retention and corruption, weights export, the data
loader, and the CLI end to end including bad flags."""

import json
import math
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from nanochat_ternary.data import ShardWriter
from nanochat_ternary.data.shards import FORMAT, write_json_atomic
from nanochat_ternary.model_config import ModelConfig
from nanochat_ternary.qat import QatModel
from nanochat_ternary.train import TokenBatches, Trainer, checkpoints, latest_checkpoint, main

VOCAB = 48
SMALL = dict(vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=48, max_seq_len=16)
FAST = dict(steps=8, warmup=1, batch_size=2, seq_len=8, log_every=0, eval_every=0, save_every=0, progress=False)


@pytest.fixture(autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def make_data(directory, train_docs=60, val_docs=10, seed=0):
    """Documents of a learnable pattern (arithmetic runs mod the vocab)."""
    rng = np.random.default_rng(seed)
    splits = {}
    for split, docs in (("train", train_docs), ("val", val_docs)):
        writer = ShardWriter(directory, split, "uint16", bos_id=0, shard_tokens=300)
        for _ in range(docs):
            start, stride, length = rng.integers(1, VOCAB), rng.integers(1, 4), rng.integers(8, 30)
            ids = 1 + (start + stride * np.arange(length)) % (VOCAB - 1)
            writer.add(ids, n_bytes=int(3 * length))
        splits[split] = writer.finish()
    write_json_atomic(directory / "meta.json", {
        "format": FORMAT, "dtype": "uint16", "vocab_size": VOCAB, "bos_id": 0,
        "tokenizer_sha256": "0" * 64, "splits": splits, "source": {"test": True},
    })
    return directory


@pytest.fixture
def data(tmp_path):
    return make_data(tmp_path / "data")


def small_config(**overrides):
    return ModelConfig(**{**SMALL, **overrides})


def test_interrupted_and_resumed_run_reproduces_the_losses_exactly(tmp_path, data):
    config = small_config(mhc_streams=2)
    options = dict(FAST, grad_accum=2)
    straight = Trainer(config, data, tmp_path / "a", **options).fit()

    first = Trainer(config, data, tmp_path / "b", **options)
    part = first.fit(3)
    assert first.save().name == "ckpt-00000003.safetensors"
    del first
    resumed = Trainer.resume(tmp_path / "b", progress=False)
    assert resumed.step_count == 3 and resumed.loop["grad_accum"] == 2
    rest = resumed.fit()
    losses = [m["loss"] for m in part + rest]
    assert losses == [m["loss"] for m in straight]  # bit-equal, not approximately
    assert [m["grad_norm"] for m in part + rest] == [m["grad_norm"] for m in straight]
    assert len(losses) == 8 and losses[-1] < losses[0]


def test_wsd_branch_equals_a_run_planned_with_the_earlier_decay(tmp_path, data):
    # A 20-step run (decay over its last 4) branched at step 8 with a 4-step decay is exactly
    # the 12-step run whose decay starts at step 8: same rates before, same data, same tail.
    options = dict(FAST, warmup=2, decay_frac=0.2)
    source = Trainer(small_config(), data, tmp_path / "long", **{**options, "steps": 20})
    head = source.fit(8)
    source.save()
    planned = Trainer(small_config(), data, tmp_path / "planned", **{**options, "steps": 12, "decay_frac": 4 / 12})
    expected = planned.fit()
    branch = Trainer.branch(tmp_path / "long", tmp_path / "short", 4, progress=False)
    assert branch.step_count == 8 and branch.hyper["total_steps"] == 12
    tail = branch.fit()
    assert [m["loss"] for m in head + tail] == [m["loss"] for m in expected]  # bit-equal
    assert [m["lr_muon"] for m in tail] == [m["lr_muon"] for m in expected[8:]]
    assert tail[-1]["lr_muon"] == 0.0 and tail[0]["lr_muon"] < source.hyper["lr_muon"]
    # The source run is untouched and still resumes to its own 20-step schedule.
    assert latest_checkpoint(tmp_path / "long").name == "ckpt-00000008.safetensors"
    assert Trainer.resume(tmp_path / "long", progress=False).hyper["total_steps"] == 20
    # The branch resumes with its own schedule.
    again = Trainer.resume(tmp_path / "short", progress=False)
    assert again.step_count == 12 and again.hyper["total_steps"] == 12
    with pytest.raises(ValueError, match="already holds a run"):
        Trainer.branch(tmp_path / "long", tmp_path / "short", 4, progress=False)
    # Only from the stable phase: the branch itself is decaying now.
    with pytest.raises(ValueError, match="stable phase"):
        Trainer.branch(tmp_path / "short", tmp_path / "again", 2, progress=False)
    with pytest.raises(ValueError, match="at least 1"):
        Trainer.branch(tmp_path / "long", tmp_path / "zero", 0, progress=False)


def test_two_half_micro_batches_equal_one_batch(monkeypatch):
    # Accumulation bookkeeping, compared to float rounding: on the f32 path.
    # The default CPU path (int8 forward, bf16 backward and head) rounds each
    # micro-batch's gradient sums to bf16 (rust/train/src/cpu_bitlinear.rs).
    monkeypatch.setenv("NCT_QAT_MATMUL", "fp32")
    torch.manual_seed(0)
    seq = torch.randint(VOCAB, (4, 9))
    x, y = seq[:, :-1], seq[:, 1:]
    whole = Trainer(small_config(), **FAST)
    halves = Trainer(small_config(), **FAST, grad_accum=2)
    for step in range(2):
        a, b = whole.step(x, y), halves.step(x, y)
        assert a["tokens"] == b["tokens"] == 32
        # Step 0 differs by float summation order only; step 1 starts from
        # weights one update apart, where bf16 Newton–Schulz (CPUs with
        # AVX512-BF16) turned that into ~1e-4 (seen: 1e-4 loss, 4e-3 grad-norm).
        assert math.isclose(a["loss"], b["loss"], rel_tol=1e-5 if step == 0 else 1e-3)
        assert math.isclose(a["grad_norm"], b["grad_norm"], rel_tol=1e-4 if step == 0 else 2e-2)
        if step == 0:
            # After one step. (Later the two drift apart by more than float
            # rounding: Newton–Schulz may run in bf16, whose rounding turns
            # 1e-7 gradient differences into ~1e-4 update differences, and a
            # latent weight at a ternary threshold then flips its trit.)
            pa, pb = whole.named_parameters(), halves.named_parameters()
            assert max((pa[n] - pb[n]).abs().max().item() for n in pa) < 1e-3
    with pytest.raises(ValueError, match="grad_accum=2"):
        halves.step(x[:3], y[:3])


def test_step_metrics_entropy_and_clipping():
    torch.manual_seed(1)
    seq = torch.randint(VOCAB, (2, 9))
    x, y = seq[:, :-1], seq[:, 1:]
    plain = Trainer(small_config(), **FAST)
    reg = Trainer(small_config(), **FAST, entropy_weight=0.3, clip=1e-3)
    m0, m1 = plain.step(x, y), reg.step(x, y)
    assert set(m0) == {"step", "loss", "ce", "entropy", "lr_muon", "lr_lion", "grad_norm", "tokens"}
    # The same CE (bit for bit on the f32 path; the int8 path's plain objective
    # takes the fused CE kernel, equal to float rounding).
    assert m0["loss"] == m0["ce"] and math.isclose(m0["ce"], m1["ce"], rel_tol=1e-6)
    assert math.isclose(m1["loss"], m1["ce"] - 0.3 * m1["entropy"], rel_tol=1e-6)  # f32 objective
    # Entropy by hand: near-uniform at init, at most ln(V).
    logits = QatModel(small_config()).forward(x)
    p = logits.double().softmax(-1)
    h = float(-(p * p.log()).sum(-1).mean())
    assert math.isclose(m0["entropy"], h, rel_tol=1e-5) and h <= math.log(VOCAB) + 1e-9
    assert m1["grad_norm"] > 1e-3  # reported before clipping
    # warmup=1: the first step already runs at the peak rates.
    assert (m0["lr_muon"], m0["lr_lion"]) == (plain.hyper["lr_muon"], plain.hyper["lr_lion"])
    assert plain.step_count == 1


def test_measured_peak_is_the_faster_of_the_trainers_precisions(monkeypatch):
    import nanochat_ternary.train as train_module

    asked = []

    def rate(device, dtype, n, reps):
        asked.append((device, dtype))
        return {torch.float32: 1e11, torch.bfloat16: 4e11}[dtype]

    monkeypatch.setattr(train_module, "_matmul_rate", rate)
    # On CPU: f32 and bf16 both measured, the faster one is the peak (the int8/bf16 path and
    # bf16 attention would read over 100 % of an f32-only figure).
    assert train_module.measured_peak_flops("cpu") == 4e11
    assert sorted(map(str, asked)) == ["('cpu', torch.bfloat16)", "('cpu', torch.float32)"]
    monkeypatch.setattr(train_module, "_matmul_rate", lambda d, dtype, n, r: {torch.float32: 3e11, torch.bfloat16: 5e10}[dtype])
    assert train_module.measured_peak_flops("cpu") == 3e11  # emulated bf16: f32 is the peak
    # And a real measurement is a positive finite rate.
    monkeypatch.undo()
    assert 0 < train_module._matmul_rate("cpu", torch.float32, 64, 1) < float("inf")


def test_checkpoints_retention_latest_and_corruption(tmp_path, data):
    out = tmp_path / "run"
    trainer = Trainer(small_config(), data, out, **{**FAST, "save_every": 2, "keep": 2})
    trainer.fit()
    names = [p.name for p in checkpoints(out)]
    assert names == ["ckpt-00000006.safetensors", "ckpt-00000008.safetensors"]
    assert latest_checkpoint(out).name == "ckpt-00000008.safetensors"
    assert not list(out.glob("*.tmp*"))
    # Weights export: the checkpoint loads as a QatModel with the trainer's weights.
    model = QatModel.from_checkpoint(latest_checkpoint(out))
    mine = trainer.named_parameters()
    assert set(model.named_parameters()) == set(mine)
    assert all(torch.equal(t, mine[n]) for n, t in model.named_parameters().items())
    assert model.config == trainer.config
    copy = trainer.model()
    assert all(torch.equal(t, mine[n]) for n, t in copy.named_parameters().items())
    # A flipped bit or a truncated file is an error, not silently wrong weights.
    path = latest_checkpoint(out)
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 0x10
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="corrupt"):
        Trainer.resume(out, progress=False)
    path.write_bytes(bytes(raw[: len(raw) // 3]))
    with pytest.raises(ValueError, match="checkpoint"):
        QatModel.from_checkpoint(path)
    (out / "latest").write_text("../elsewhere.safetensors")
    with pytest.raises(FileNotFoundError, match="not a checkpoint"):
        Trainer.resume(out)


def test_evaluate_reports_bits_per_byte(data):
    trainer = Trainer(small_config(), data, **FAST)
    result = trainer.evaluate()
    meta = json.loads((data / "meta.json").read_text())["splits"]["val"]
    expected = result["val_loss"] * meta["tokens"] / (meta["bytes"] * math.log(2))
    assert math.isclose(result["val_bpb"], expected)
    assert abs(result["val_loss"] - math.log(VOCAB)) < 0.5


def test_loader_windows_wrap_and_restore(data):
    from nanochat_ternary.data import TokenShards

    shards = TokenShards(data, "train")
    loader = TokenBatches(shards, batch_size=3, seq_len=5)
    x, y = loader.next()
    stream = shards.read(0, 18).reshape(3, 6)
    assert torch.equal(x, torch.from_numpy(stream[:, :-1])) and torch.equal(y, torch.from_numpy(stream[:, 1:]))
    per_epoch = shards.tokens // 18
    for _ in range(per_epoch - 1):
        loader.next()
    assert loader.state() == {"position": 18 * per_epoch, "epoch": 0}
    x2, _ = loader.next()
    assert loader.state() == {"position": 18, "epoch": 1} and torch.equal(x2, x)
    loader.load_state({"position": 0, "epoch": 0})
    assert torch.equal(loader.next()[0], x)
    with pytest.raises(ValueError, match="outside"):
        loader.load_state({"position": shards.tokens + 1, "epoch": 0})
    with pytest.raises(ValueError, match="fewer than one batch"):
        TokenBatches(shards, batch_size=shards.tokens, seq_len=5)


def test_bad_trainer_arguments_are_clear_errors(tmp_path, data):
    with pytest.raises(ValueError, match="max_seq_len"):
        Trainer(small_config(), seq_len=17)
    with pytest.raises(ValueError, match="lr_muon"):
        Trainer(small_config(), lr_muon=-1.0)
    with pytest.raises(ValueError, match="exceed total_steps"):
        Trainer(small_config(), steps=5, warmup=10)
    with pytest.raises(ValueError, match="hyper-parameters: invalid type"):
        Trainer(small_config(), warmup=1.5)
    with pytest.raises(TypeError, match="unknown Trainer options"):
        Trainer(small_config(), learning_rate=1.0)
    with pytest.raises(ValueError, match="neither a preset"):
        Trainer("huge")
    with pytest.raises(ValueError, match="vocab_size"):
        Trainer(small_config(vocab_size=32), data)
    with pytest.raises(FileNotFoundError, match="meta.json"):
        Trainer(small_config(), tmp_path)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        Trainer.resume(tmp_path)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            Trainer(small_config(), device="cuda")


def test_cli_end_to_end_and_resume(tmp_path, data, capsys):
    config = tmp_path / "model.json"
    config.write_text(small_config().to_json())
    out = tmp_path / "run"
    argv = ["--config", str(config), "--data", str(data), "--out", str(out), "--steps", "6", "--batch-size", "2",
            "--seq-len", "8", "--warmup", "1", "--log-every", "2", "--eval-every", "3", "--save-every", "3",
            "--eval-batches", "2", "--threads", "1", "--no-progress", "--peak-flops", "1e12"]
    assert main(argv) == 0
    log = capsys.readouterr().out
    assert "step 6/6 | loss" in log and "tok/s" in log and "MFU" in log and "(given peak)" in log
    assert "val bpb" in log
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [2, 4, 6]
    assert [r["step"] for r in records if "val_loss" in r] == [3, 6]
    assert {"loss", "ce", "entropy", "lr_muon", "lr_lion", "grad_norm", "tok_per_s", "mfu", "time"} <= set(records[0])
    times = [r["time"] for r in records]
    assert times == sorted(times) and abs(times[-1] - time.time()) < 600
    assert [p.name for p in checkpoints(out)] == ["ckpt-00000003.safetensors", "ckpt-00000006.safetensors"]
    # A second run into the same directory must say how to continue it.
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2 and "--resume" in capsys.readouterr().err
    # Resuming a finished run does no more steps.
    assert main(["--out", str(out), "--resume", "--no-progress", "--threads", "1"]) == 0



def test_cli_stop_at_splits_a_run_and_branch_decays_it(tmp_path, data, capsys):
    config = tmp_path / "model.json"
    config.write_text(small_config().to_json())
    out, straight = tmp_path / "run", tmp_path / "straight"
    argv = ["--config", str(config), "--data", str(data), "--steps", "10", "--batch-size", "2", "--seq-len", "8",
            "--warmup", "1", "--decay-frac", "0.2", "--log-every", "1", "--eval-every", "0", "--save-every", "4",
            "--threads", "1", "--no-progress"]
    assert main([*argv, "--out", str(out), "--stop-at", "5"]) == 0
    assert "stopped at step 5/10" in capsys.readouterr().out
    assert latest_checkpoint(out).name == "ckpt-00000005.safetensors"  # saved at the stop, off the save grid
    assert main(["--out", str(out), "--resume", "--stop-at", "7", "--no-progress", "--threads", "1"]) == 0
    assert main(["--out", str(out), "--resume", "--no-progress", "--threads", "1"]) == 0
    assert main([*argv, "--out", str(straight)]) == 0
    losses = lambda run: [r["loss"] for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if "loss" in r]
    assert losses(out) == losses(straight) and len(losses(out)) == 10  # three invocations = one run, bit for bit
    # A branch from a stopped stable-phase checkpoint, through the CLI.
    assert main([*argv, "--out", str(tmp_path / "long"), "--stop-at", "4"]) == 0
    assert main(["--branch-from", str(tmp_path / "long"), "--decay-steps", "2", "--out", str(tmp_path / "b"),
                 "--no-progress", "--threads", "1"]) == 0
    assert "step 4/6" in capsys.readouterr().out
    assert latest_checkpoint(tmp_path / "b").name == "ckpt-00000006.safetensors"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--steps", "0"], "--steps: must be a positive integer"),
        (["--lr-muon", "nan"], "--lr-muon: must be a finite number > 0"),
        (["--device", "tpu"], "invalid choice"),
        (["--batch-size", "x"], "--batch-size"),
        (["--config", "huge"], "neither a preset"),
        (["--seq-len", "4096"], "max_seq_len"),
        (["--warmup", "900"], "exceed total_steps"),
        (["--branch-from", "runs/x"], "--branch-from and --decay-steps go together"),
        (["--decay-steps", "5"], "--branch-from and --decay-steps go together"),
        (["--branch-from", "nowhere", "--decay-steps", "5"], "no checkpoint to resume from"),
        (["--branch-from", "nowhere", "--decay-steps", "5", "--resume"], "takes neither --resume"),
    ],
)
def test_cli_bad_flags_exit_2_with_one_message(tmp_path, data, capsys, flags, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["--data", str(data), "--out", str(tmp_path / "o"), "--no-progress", *flags])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_cli_missing_data_and_module_entry_point(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "nanochat_ternary.train", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "o")],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert "no meta.json" in result.stderr and "Traceback" not in result.stderr


def test_resume_with_another_tokenizer_or_mix_is_a_clear_error(tmp_path, data):
    """A run resumed on data made with another tokenizer or another data-mix config stops with an
    error naming --data; the run's own data (or a copy of it) resumes."""
    import json
    import shutil

    one_step = {**FAST, "steps": 1}
    trainer = Trainer(small_config(), data, tmp_path / "run", **one_step)
    trainer.fit()
    trainer.save()
    same = tmp_path / "copy"
    shutil.copytree(data, same)
    Trainer.resume(tmp_path / "run", data_dir=same, progress=False)
    for key, value, what in (("tokenizer_sha256", "1" * 64, "tokenizer"),
                             ("source", {"mix": {"config_sha256": "2" * 64}}, "data mix")):
        other = tmp_path / f"other-{key}"
        shutil.copytree(data, other)
        meta = json.loads((other / "meta.json").read_text())
        meta[key] = value
        (other / "meta.json").write_text(json.dumps(meta))
        if what == "data mix":
            # The run itself was trained on a mix: another mix config is refused too.
            run = tmp_path / "run-mix"
            mixed = tmp_path / "mixed"
            shutil.copytree(data, mixed)
            meta_mixed = json.loads((mixed / "meta.json").read_text())
            meta_mixed["source"] = {"mix": {"config_sha256": "3" * 64}}
            (mixed / "meta.json").write_text(json.dumps(meta_mixed))
            t = Trainer(small_config(), mixed, run, **one_step)
            t.fit()
            t.save()
            Trainer.resume(run, data_dir=mixed, progress=False)
        else:
            run = tmp_path / "run"
        with pytest.raises(ValueError, match=f"another {what}.*--data"):
            Trainer.resume(run, data_dir=other, progress=False)


def test_init_from_a_gguf_export_starts_a_run_as_exactly_that_model(tmp_path, capsys):
    """--init-from: a new run (own schedule) from one of our GGUF exports, e.g. a zoo model that ships
    without its trainer checkpoint. Untouched, it exports back to the same model; the file's shape is
    the run's; data made with another tokenizer, --config beside it, --resume are refused."""
    from nanochat_ternary.data.__main__ import main as data_main
    from nanochat_ternary.export import main as export_main
    from nanochat_ternary.model import TernaryModel
    from nanochat_ternary.tokenizer import Tokenizer

    rng = np.random.default_rng(0)
    words = ["fn", "let", "mut", "x", "y", "u32", "return", "if", "else", "for", "in", "0..n", "+", "*", "{", "}", ";"]
    src = tmp_path / "src"
    src.mkdir()
    texts = [" ".join(rng.choice(words, size=120)) + "\n" for _ in range(40)]
    for i, text in enumerate(texts):
        (src / f"f{i}.rs").write_text(text)
    datasets = {}
    for name, vocab in (("data", 300), ("other", 290)):
        tok = Tokenizer.train(texts, vocab_size=vocab, min_frequency=1)
        tok.save(tmp_path / f"{name}.json")
        assert data_main(["build", "--input", str(src), "--ext", ".rs", "--tokenizer", str(tmp_path / f"{name}.json"),
                          "--out", str(tmp_path / name), "--quiet"]) in (0, None)  # fmt: skip
        datasets[name] = tmp_path / name
    config = ModelConfig(vocab_size=320, dim=256, n_layers=1, n_heads=4, n_kv_heads=4, ffn_hidden=256, max_seq_len=64)
    (tmp_path / "model.json").write_text(config.to_json())
    loop = ["--steps", "3", "--batch-size", "2", "--seq-len", "16", "--warmup", "1", "--eval-every", "0",
            "--save-every", "3", "--log-every", "1", "--threads", "1", "--no-progress"]  # fmt: skip
    assert main(["--config", str(tmp_path / "model.json"), "--data", str(datasets["data"]), "--out", str(tmp_path / "a"), *loop]) == 0
    assert export_main([str(tmp_path / "a"), "--out", str(tmp_path / "a.gguf")]) == 0
    original = TernaryModel(tmp_path / "a.gguf", kv_cache="f32")

    # Untouched, the new run is the file's model.
    fresh = Trainer(config, datasets["data"], tmp_path / "b", **FAST)
    fresh.init_from_gguf(tmp_path / "a.gguf")
    fresh.save()
    assert export_main([str(tmp_path / "b"), "--out", str(tmp_path / "b.gguf")]) == 0
    ids = original.encode(texts[0][:80])
    assert (TernaryModel(tmp_path / "b.gguf", kv_cache="f32").logits(ids) == original.logits(ids)).all()

    # Through the CLI: the shape comes from the file, the run trains on and records where it started.
    assert main(["--init-from", str(tmp_path / "a.gguf"), "--data", str(datasets["data"]), "--out", str(tmp_path / "c"), *loop]) == 0
    records = [json.loads(line) for line in (tmp_path / "c" / "log.jsonl").read_text().splitlines()]
    assert records[0]["init_from"] == str((tmp_path / "a.gguf").resolve()) and len(records[0]["init_sha256"]) == 64
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3]
    # Not from scratch: its first step's loss is below the first step of run a, which started from scratch
    # on the same batches.
    first_a = next(json.loads(line)["loss"] for line in (tmp_path / "a" / "log.jsonl").read_text().splitlines()
                   if "loss" in json.loads(line))  # fmt: skip
    assert records[1]["loss"] < first_a, (records[1]["loss"], first_a)
    capsys.readouterr()
    # --data-start: the new run reads on where another stopped (the window after step 3 of run a).
    window = 2 * 17
    assert main(["--init-from", str(tmp_path / "a.gguf"), "--data", str(datasets["data"]), "--out", str(tmp_path / "s"),
                 "--data-start", str(3 * window), *loop]) == 0  # fmt: skip
    resumed = Trainer.resume(tmp_path / "s", progress=False)
    assert resumed.train_batches.state() == {"position": 6 * window, "epoch": 0}
    split = resumed.train_batches.shards.tokens
    wrapped = Trainer(config, datasets["data"], tmp_path / "w", **FAST)
    wrapped.start_data_at(2 * split + 5)
    assert wrapped.train_batches.state() == {"position": 5, "epoch": 2}
    capsys.readouterr()

    for argv, message in (
        (["--data", str(datasets["other"])], "tokenizer is not the one"),
        (["--data", str(datasets["data"]), "--config", str(tmp_path / "model.json")], "leave out --config"),
        (["--data", str(datasets["data"]), "--resume"], "takes neither --resume"),
        (["--data", str(datasets["data"]), "--data-start", "-1"], "--data-start"),
        (["--data", str(datasets["data"]), "--init-from", str(tmp_path / "model.json")], "model.json"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(["--init-from", str(tmp_path / "a.gguf"), "--out", str(tmp_path / "d"), *loop, *argv])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and message in err and "Traceback" not in err, err
    with pytest.raises(ValueError, match="another model shape"):
        Trainer(ModelConfig(**{**json.loads(config.to_json()), "n_layers": 2}), datasets["data"], tmp_path / "e",
                **FAST).init_from_gguf(tmp_path / "a.gguf")  # fmt: skip
