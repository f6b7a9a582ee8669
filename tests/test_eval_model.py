"""The evaluation harness driving a TernaryModel: per-token NLL, loss over token
shards, and the CLI's --model path for HumanEval-Rust, compile rate and loss."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from nanochat_ternary import export
from nanochat_ternary.data.shards import ShardWriter, read_meta
from nanochat_ternary.eval import evaluate_shards, generate
from nanochat_ternary.eval.__main__ import main as eval_main
from nanochat_ternary.eval.loss import UnigramModel
from nanochat_ternary.model import TernaryModel

from _export_fixtures import small_model, tokenizer_json

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalmodel")
    return export.export_hf(small_model(seed=5), tokenizer_json(), root / "hf")


@pytest.fixture(scope="module")
def model(model_dir):
    return TernaryModel.from_pretrained(model_dir)


def _shards(directory, docs, n_bytes):
    writer = ShardWriter(directory, "val", "uint16", bos_id=0)
    for ids, b in zip(docs, n_bytes):
        writer.add(np.asarray(ids), b)
    split = writer.finish()
    meta = {"format": "nanochat-ternary-tokens/1", "dtype": "uint16", "vocab_size": 320, "bos_id": 0,
            "tokenizer_sha256": "0" * 64, "splits": {"val": split}}  # fmt: skip
    (directory / "meta.json").write_text(json.dumps(meta))
    return directory


def test_nll_is_the_shifted_log_softmax_of_the_logits(model):
    ids = model.encode("fn add(a: u32, b: u32) -> u32 { a + b }", add_bos=False)
    nll = model.nll(ids)
    logits = torch.from_numpy(model.logits([model.eos_token_id, *ids[:-1]])).double()
    expected = -torch.log_softmax(logits, dim=-1)[torch.arange(len(ids)), torch.tensor(ids)]
    np.testing.assert_allclose(nll, expected.numpy(), rtol=1e-9, atol=1e-9)
    assert nll.shape == (len(ids),) and np.all(nll > 0)
    # A token's NLL depends only on what precedes it.
    np.testing.assert_allclose(model.nll(ids[:5]), nll[:5], rtol=1e-5, atol=1e-5)


def test_nll_bad_input(model):
    with pytest.raises(ValueError, match="at least one"):
        model.nll([])
    with pytest.raises(ValueError, match="exceed the context"):
        model.nll([1] * (model.context_length + 1))
    with pytest.raises(ValueError, match="token ids"):
        model.nll([model.vocab_size])


def test_evaluate_shards_matches_the_unigram_oracle(tmp_path):
    docs = [[5, 6, 7], [9, 9], [1, 2, 3, 4]]  # the writer puts bos (0) before each
    directory = _shards(tmp_path / "data", docs, [30, 20, 50])
    probs = np.full(16, 1 / 16)
    probs[9] = 0.25
    probs /= probs.sum()
    flat = np.concatenate([[0, *d] for d in docs])
    result = evaluate_shards(UnigramModel(probs), directory, context=5)
    assert result.tokens == len(flat) and result.bytes == 100
    np.testing.assert_allclose(result.total_nll, -np.log(probs[flat]).sum())
    np.testing.assert_allclose(result.bits_per_byte, result.total_nll / np.log(2) / 100)
    part = evaluate_shards(UnigramModel(probs), directory, max_tokens=6)
    assert part.tokens == 6 and part.bytes == round(100 * 6 / len(flat))
    with pytest.raises(ValueError, match="no split"):
        evaluate_shards(UnigramModel(probs), directory, split="train")
    assert read_meta(directory)["splits"]["val"]["tokens"] == len(flat)


def test_generate_rounds_use_successive_seeds():
    seen = []

    def model(prompts, **sampling):
        seen.append(sampling["seed"])
        return [f"{p}{sampling['seed']}" for p in prompts]

    samples = generate(model, ["a", "b"], n=3, seed=7)
    assert seen == [7, 8, 9] and samples == [["a7", "a8", "a9"], ["b7", "b8", "b9"]]


def test_cli_with_a_model(model_dir, tmp_path, capsys):
    report = tmp_path / "he.json"
    assert eval_main(["humaneval", "--model", str(model_dir), "--limit", "2", "--n", "2", "--k", "1", "2",
                      "--max-new-tokens", "8", "--temperature", "0.8", "--output", str(report)]) == 0  # fmt: skip
    he = json.loads(report.read_text())
    assert he["problems"] == 2 and he["samples"] == 4 and sum(he["outcomes"].values()) == 4
    # Sampled at temperature 0.8 with seeds 0 and 1: the two samples of a problem differ.
    bodies = {}
    for r in he["results"]:
        bodies.setdefault(r["name"], []).append(r["completion"])
    assert any(len(set(b)) == 2 for b in bodies.values())
    capsys.readouterr()

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "fn main() {"}) + "\n")
    assert eval_main(["compile-rate", "--model", str(model_dir), "--prompts", str(prompts), "--no-rustc",
                      "--max-new-tokens", "8", "--temperature", "0"]) == 0  # fmt: skip
    cr = json.loads(capsys.readouterr().out)
    assert cr["summary"]["samples"] == 1 and 0.0 <= cr["summary"]["parse_rate"] <= 1.0
    # --repetition-penalty reaches generate (a strong penalty changes the greedy completion).
    completions = {}
    for penalty in ("1", "5"):
        out = tmp_path / f"cr-{penalty}.json"
        assert eval_main(["compile-rate", "--model", str(model_dir), "--prompts", str(prompts), "--no-rustc",
                          "--max-new-tokens", "16", "--temperature", "0", "--repetition-penalty", penalty,
                          "--output", str(out)]) == 0  # fmt: skip
        completions[penalty] = [r["source"] for r in json.loads(out.read_text())["results"]]
    assert completions["1"][0].startswith("fn main() {") and completions["1"] != completions["5"]
    capsys.readouterr()
    with pytest.raises(SystemExit):
        eval_main(["compile-rate", "--model", str(model_dir), "--prompts", str(prompts), "--no-rustc",
                   "--temperature", "0", "--repetition-penalty", "0"])  # fmt: skip
    assert "--repetition-penalty must be" in capsys.readouterr().err

    data = _shards(tmp_path / "data", [[5, 6, 7, 8], [9, 10]], [40, 20])
    assert eval_main(["loss", "--model", str(model_dir), "--data", str(data)]) == 0
    lo = json.loads(capsys.readouterr().out)["loss"]
    assert lo["tokens"] == 8 and lo["bytes"] == 60 and np.isfinite(lo["bits_per_byte"])
    text = tmp_path / "a.rs"
    text.write_text("fn main() { println!(\"hi\"); }\n")
    assert eval_main(["loss", "--model", str(model_dir), "--text", str(text)]) == 0
    lo = json.loads(capsys.readouterr().out)["loss"]
    assert lo["bytes"] == len(text.read_bytes()) and lo["mean_loss"] > 0

    with pytest.raises(SystemExit):
        eval_main(["loss", "--model", str(model_dir)])  # neither --text nor --data
    capsys.readouterr()
