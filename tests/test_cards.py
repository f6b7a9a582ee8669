"""The model-card writer of the Rust models (`examples/rust_coder/make_card.py`): the continued-pretraining
section is built from a real continued run (`train --init-from --data-start`), its checkpoint and the
harness's loss reports; sections of a carried card are found by heading."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from nanochat_ternary.model_config import ModelConfig

EXAMPLES = Path(__file__).parents[1] / "examples"
TRAINING = """## Training

| | |
|---|---|
| tokens | 9,000 steps × 8,192 = 73,728,000 |
"""


@pytest.fixture(autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def make_card():
    sys.path.insert(0, str(EXAMPLES))
    spec = importlib.util.spec_from_file_location("make_card", EXAMPLES / "rust_coder" / "make_card.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_continuation_section_from_a_continued_run(tmp_path, make_card):
    from nanochat_ternary.data.__main__ import main as data_main
    from nanochat_ternary.eval.__main__ import main as eval_main
    from nanochat_ternary.export import main as export_main
    from nanochat_ternary.tokenizer import Tokenizer
    from nanochat_ternary.train import main as train_main

    rng = np.random.default_rng(0)
    words = ["fn", "let", "mut", "x", "y", "u32", "return", "if", "else", "for", "in", "0..n", "+", "*", "{", "}", ";"]
    src = tmp_path / "src"
    src.mkdir()
    texts = [" ".join(rng.choice(words, size=120)) + "\n" for _ in range(40)]
    for i, text in enumerate(texts):
        (src / f"f{i}.rs").write_text(text)
    Tokenizer.train(texts, vocab_size=300, min_frequency=1).save(tmp_path / "tok.json")
    assert data_main(["build", "--input", str(src), "--ext", ".rs", "--tokenizer", str(tmp_path / "tok.json"),
                      "--out", str(tmp_path / "data"), "--val-fraction", "0.2", "--quiet"]) in (0, None)  # fmt: skip
    config = ModelConfig(vocab_size=320, dim=256, n_layers=1, n_heads=4, n_kv_heads=4, ffn_hidden=256, max_seq_len=64)
    (tmp_path / "model.json").write_text(config.to_json())
    loop = ["--batch-size", "2", "--seq-len", "16", "--warmup", "1", "--eval-every", "2", "--eval-batches", "2",
            "--save-every", "2", "--log-every", "1", "--threads", "1", "--no-progress"]  # fmt: skip
    assert train_main(["--config", str(tmp_path / "model.json"), "--data", str(tmp_path / "data"),
                       "--out", str(tmp_path / "first"), "--steps", "2", *loop]) == 0  # fmt: skip
    assert export_main([str(tmp_path / "first"), "--out", str(tmp_path / "start.gguf")]) == 0
    reports = tmp_path / "reports"
    reports.mkdir()

    # An unfinished continuation is refused: the card describes finished runs only.
    cont = tmp_path / "cont"
    assert train_main(["--init-from", str(tmp_path / "start.gguf"), "--data", str(tmp_path / "data"), "--out", str(cont),
                       "--data-start", str(2 * 2 * 17), "--steps", "4", "--stop-at", "2", *loop]) == 0  # fmt: skip
    with pytest.raises(SystemExit, match="stopped at step 2 of 4"):
        make_card.continuation_section(cont, TRAINING, reports)
    assert train_main(["--out", str(cont), "--resume", "--threads", "1", "--no-progress"]) == 0
    assert export_main([str(cont), "--out", str(tmp_path / "end.gguf")]) == 0
    for which, name in (("start", "loss-pretrained"), ("end", "loss")):
        assert eval_main(["loss", "--model", str(tmp_path / f"{which}.gguf"), "--data", str(tmp_path / "data"),
                          "--output", str(reports / f"{name}.json")]) == 0  # fmt: skip

    section = make_card.continuation_section(cont, TRAINING, reports)
    start, end = (json.loads((reports / f"{name}.json").read_text())["loss"] for name in ("loss-pretrained", "loss"))
    assert start["mean_loss"] != end["mean_loss"]
    assert section.startswith(make_card.CONTINUED + "\n")
    assert f"{start['mean_loss']:.4f} → this file {end['mean_loss']:.4f}" in section
    assert "4 steps × 32 = 128; with the start file's 73,728,000: **73,728,128** in all" in section
    assert "token position 68 " in section and "warmup 1" in section
    records = [json.loads(line) for line in (cont / "log.jsonl").read_text().splitlines()]
    assert f"`{records[0]['init_sha256'][:16]}…`" in section
    val = [r for r in records if "val_loss" in r]
    assert f"{val[0]['val_loss']:.4f} at step 2 → {val[-1]['val_loss']:.4f} at step 4" in section

    # A carried card: sections by heading, the continuation among them; a run without --init-from and a
    # card without a tokens row are refused.
    card = f"# m\n\nintro\n\n{TRAINING}\n{section}\n## Quality (x)\n\n| a | b |\n"
    carried = make_card.sections(card)
    assert list(carried) == ["## Training", make_card.CONTINUED, "## Quality (x)"]
    assert carried[make_card.CONTINUED] == section + "\n"
    with pytest.raises(SystemExit, match="not a continued run"):
        make_card.continuation_section(tmp_path / "first", TRAINING, reports)
    with pytest.raises(SystemExit, match="tokens"):
        make_card.continuation_section(cont, "## Training\n", reports)
