"""Knowledge distillation (`--teacher`): the loss against a hand computation,
alpha = 1 is plain CE training bit for bit, a teacher of another vocabulary or
tokenizer is a clear error, and the CLI path trains and resumes with its
teacher."""

import json
import math
import shutil

import pytest
import torch
import torch.nn.functional as F

from nanochat_ternary import _core
from nanochat_ternary.model_config import ModelConfig
from nanochat_ternary.train import Trainer, latest_checkpoint, main
from test_train import FAST, SMALL, make_data


@pytest.fixture(autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def data(tmp_path):
    return make_data(tmp_path / "data")


@pytest.fixture
def teacher(tmp_path, data):
    """A full-precision twin trained for 3 steps; returns its run directory."""
    out = tmp_path / "teacher"
    Trainer(ModelConfig(**SMALL, ternary=False), data, out, **{**FAST, "steps": 3}).fit()
    return out


@pytest.mark.parametrize(("alpha", "temperature"), [(0.3, 2.5), (0.0, 1.0), (1.0, 4.0)])
def test_loss_matches_a_hand_computation(alpha, temperature):
    torch.manual_seed(0)
    student, teacher = torch.randn(2, 3, 7) * 2, torch.randn(2, 3, 7) * 2
    targets = torch.randint(7, (2, 3))
    s, t = student.double(), teacher.double()
    ce = F.cross_entropy(s.reshape(-1, 7), targets.reshape(-1))
    p_t = (t / temperature).softmax(-1)
    kl = (p_t * ((t / temperature).log_softmax(-1) - (s / temperature).log_softmax(-1))).sum(-1).mean()
    expected = alpha * ce + (1 - alpha) * temperature**2 * kl
    got, got_ce, got_kl = _core.train_distill_loss(student, teacher, targets, alpha, temperature)
    assert math.isclose(got_ce, float(ce), rel_tol=1e-5)
    assert math.isclose(got_kl, float(kl), rel_tol=1e-4) and got_kl > 0
    assert math.isclose(got, float(expected), rel_tol=1e-5)
    assert _core.train_distill_loss(student, student, targets, alpha, temperature)[2] == pytest.approx(0, abs=1e-6)


def test_bad_distillation_settings_are_clear_errors():
    x = torch.zeros(1, 2, 5)
    y = torch.zeros(1, 2, dtype=torch.int64)
    with pytest.raises(ValueError, match="distill_alpha"):
        _core.train_distill_loss(x, x, y, 1.5, 1.0)
    with pytest.raises(ValueError, match="distill_temperature"):
        _core.train_distill_loss(x, x, y, 0.5, 0.0)
    with pytest.raises(ValueError, match="differ in shape"):
        _core.train_distill_loss(x, torch.zeros(1, 2, 6), y, 0.5, 1.0)
    with pytest.raises(ValueError, match="distill_alpha must lie in"):
        Trainer(ModelConfig(**SMALL), distill_alpha=-1.0)
    with pytest.raises(ValueError, match="distill_temperature must be"):
        Trainer(ModelConfig(**SMALL), distill_temperature=float("inf"))


def test_alpha_one_equals_plain_training_bit_for_bit(tmp_path, data, teacher):
    plain = Trainer(ModelConfig(**SMALL), data, **FAST).fit(4)
    distilled = Trainer(ModelConfig(**SMALL), data, **FAST, teacher=teacher, distill_alpha=1.0)
    assert distilled.teacher_path == latest_checkpoint(teacher).resolve()
    history = distilled.fit(4)
    assert [m["loss"] for m in history] == [m["loss"] for m in plain]
    assert [m["grad_norm"] for m in history] == [m["grad_norm"] for m in plain]
    assert all(m["kl"] > 0 for m in history) and "kl" not in plain[0]
    # alpha < 1 really uses the teacher: loss = alpha*CE + (1-alpha)*T^2*KL.
    soft = Trainer(ModelConfig(**SMALL), data, **FAST, teacher=teacher, distill_alpha=0.25,
                   distill_temperature=2.0).fit(2)
    assert soft[0]["ce"] == plain[0]["ce"]
    for m in soft:
        assert math.isclose(m["loss"], 0.25 * m["ce"] + 0.75 * 4 * m["kl"], rel_tol=1e-5)
    assert soft[1]["loss"] != plain[1]["loss"]


def test_teacher_with_another_vocabulary_or_tokenizer_is_refused(tmp_path, data, teacher):
    other = tmp_path / "other"
    Trainer(ModelConfig(**{**SMALL, "vocab_size": 64}), data, other, **{**FAST, "steps": 1}).fit()
    with pytest.raises(ValueError, match="vocab_size is 64, the student's 48.*same tokenizer"):
        Trainer(ModelConfig(**SMALL), data, teacher=other, **FAST)
    # Same vocabulary size, another tokenizer: the data's meta.json says so.
    data2 = shutil.copytree(data, tmp_path / "data2")
    meta = json.loads((data2 / "meta.json").read_text())
    meta["tokenizer_sha256"] = "1" * 64
    (data2 / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="tokenizer sha256 000000000000.*is 111111111111.*same tokenizer"):
        Trainer(ModelConfig(**SMALL), data2, teacher=teacher, **FAST)
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        Trainer(ModelConfig(**SMALL), data, teacher=tmp_path / "missing", **FAST)


def test_cli_teacher_trains_and_resumes_with_it(tmp_path, data, teacher, capsys):
    config = tmp_path / "model.json"
    config.write_text(ModelConfig(**SMALL).to_json())
    out = tmp_path / "student"
    common = ["--threads", "1", "--no-progress", "--peak-flops", "1e12"]
    argv = ["--config", str(config), "--data", str(data), "--out", str(out), "--steps", "4", "--batch-size", "2",
            "--seq-len", "8", "--warmup", "1", "--log-every", "1", "--eval-every", "0", "--save-every", "2",
            "--teacher", str(teacher), "--distill-alpha", "0.5", "--distill-temperature", "2", *common]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "distilling from" in printed and "alpha 0.5, T 2.0" in printed and "| kl " in printed
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4] and all(r["kl"] > 0 for r in records)
    # Resume from step 2 reproduces steps 3-4 bit for bit, with the same teacher.
    (out / "latest").write_text("ckpt-00000002.safetensors\n")
    resumed = Trainer.resume(out, progress=False)
    assert resumed.teacher_path == latest_checkpoint(teacher).resolve() and resumed.loop["distill_alpha"] == 0.5
    assert [m["loss"] for m in resumed.fit()] == [r["loss"] for r in records[2:]]
    with pytest.raises(SystemExit) as exit_info:
        main(["--data", str(data), "--out", str(tmp_path / "x"), "--distill-alpha", "0.5", *common])
    assert exit_info.value.code == 2 and "need --teacher" in capsys.readouterr().err
