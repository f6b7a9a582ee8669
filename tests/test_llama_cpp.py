"""llama.cpp interop: a plain llama-shaped model exported with TQ2_0 (or TQ1_0) runs in llama.cpp
(through ``llama-cpp-python``) and agrees with the training model.

llama.cpp quantizes activations per 256-weight block (Q8_K) where training uses
one int8 scale per token, and its head is our Q8_0 copy, so logits differ
slightly (measured max |diff| ≈ 0.02 on logits of magnitude ≈ 1). Greedy decoding
must be identical for 64 tokens except where the training model's own top-2
margin is below that error (a numerical near-tie), which is asserted explicitly.

Skipped when ``llama_cpp`` isn't installed (``pip install llama-cpp-python``; it
compiles llama.cpp, ~10 minutes).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nanochat_ternary import export
from nanochat_ternary.gguf import GGUFReader

from _export_fixtures import small_model, tokenizer_json, trained_checkpoint

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install llama-cpp-python)")

torch.set_num_threads(1)

LOGIT_BOUND = 0.05
"""Max |logit difference| llama.cpp vs the training forward (measured ≈ 0.023)."""
PROMPTS = [[0, 50, 60, 70, 80], [0, 100], [0, 7, 8, 9, 10, 11, 12, 200, 201], [0, 300, 2, 3]]
NEW_TOKENS = 64


@pytest.fixture(scope="module")
def model():
    return small_model(seed=7)


def _llama(path):
    return llama_cpp.Llama(model_path=str(path), n_ctx=128, n_threads=1, logits_all=True, verbose=False)


def _training_logits(model, ids):
    return model.forward(torch.tensor([ids]))[0].numpy()


def _llama_greedy(llm, prompt, n):
    llm.reset()
    llm.eval(prompt)
    out = []
    for _ in range(n):
        token = int(np.argmax(llm.eval_logits[-1]))
        out.append(token)
        llm.eval([token])
    return out


@pytest.mark.parametrize("weight_type", ["TQ2_0", "TQ1_0"])
def test_llama_cpp_runs_our_export(tmp_path, model, weight_type):
    path = export.export_gguf(model, tokenizer_json(), tmp_path / "m.gguf", weight_type=weight_type)
    assert GGUFReader(path).metadata["general.architecture"] == "llama"
    llm = _llama(path)
    assert llm.n_vocab() == model.config.vocab_size
    worst = 0.0
    for prompt in PROMPTS:
        llm.reset()
        llm.eval(prompt)
        theirs = np.array(llm.eval_logits, dtype=np.float32)
        ours = _training_logits(model, prompt)
        worst = max(worst, float(np.abs(theirs - ours).max()))
    assert worst < LOGIT_BOUND, worst

    for prompt in PROMPTS:
        theirs = _llama_greedy(llm, prompt, NEW_TOKENS)
        ids = list(prompt)
        for step in range(NEW_TOKENS):
            logits = _training_logits(model, ids)[-1]
            ours = int(np.argmax(logits))
            if ours != theirs[step]:
                top2 = np.sort(logits)[-2:]
                margin = float(top2[1] - top2[0])
                assert margin < 2 * LOGIT_BOUND, f"prompt {prompt}: diverged at step {step} with margin {margin}"
                break
            ids.append(ours)


def test_llama_cpp_tokenizes_like_the_export(tmp_path, model):
    """llama.cpp reads our tokenizer.ggml.* metadata back into the same vocabulary."""
    tok = tokenizer_json()
    path = export.export_gguf(model, tok, tmp_path / "m.gguf")
    llm = _llama(path)
    assert llm.token_eos() == 0 and llm.token_bos() == 0
    # "Ġtotal" is a merged token of the fixture tokenizer; llama.cpp must produce it whole.
    import json

    vocab = json.loads(tok)["model"]["vocab"]
    ids = llm.tokenize(b" total", add_bos=False, special=False)
    assert ids == [vocab["Ġtotal"]]
    assert llm.detokenize(ids) == b" total"
    assert llm.tokenize(b"<|endoftext|>", add_bos=False, special=True) == [0]
    from nanochat_ternary.tokenizer import Tokenizer

    ours = Tokenizer.from_json(tok)
    for text in ["fn main() {\n    let mut total = 0;\n}", "The quick brown fox's 12 jumps!", "Ünïcödé ✓ 日本語 €"]:
        assert llm.tokenize(text.encode(), add_bos=False, special=False) == ours.encode(text), text


def test_llama_cpp_greedy_equals_our_engine_on_a_trained_model(tmp_path):
    """A briefly trained (decisive) llama-shaped checkpoint: llama.cpp and our engine produce the
    same 64 greedy tokens from the same GGUF file."""
    from nanochat_ternary import _core
    from nanochat_ternary.tokenizer import Tokenizer

    if not hasattr(_core, "Engine"):
        pytest.skip("_core.Engine is not built")
    tok = tokenizer_json()
    path = export.export_checkpoint(trained_checkpoint("llama"), tok, tmp_path / "m.gguf")
    tokenizer = Tokenizer.from_json(tok)
    prompts = [[0, *tokenizer.encode(p)] for p in ("fn main() {", "The quick", "pub fn add(a", "    let")]
    ours = _core.Engine(str(path)).generate(prompts, NEW_TOKENS, temperature=0.0, stop_ids=[])
    llm = _llama(path)
    for prompt, got in zip(prompts, ours):
        assert _llama_greedy(llm, prompt, NEW_TOKENS) == list(got), prompt


def test_llama_cpp_refuses_a_looplm_file(tmp_path):
    """A LoopLM export is 'nanochat-ternary-loop': llama.cpp, which would run each block once,
    refuses to load it instead of producing silently wrong logits."""
    from _export_fixtures import small_config

    from nanochat_ternary.qat import QatModel

    loop = QatModel(small_config(loop={"loops": 2, "exit_gate": True}), seed=1)
    path = export.export_gguf(loop, tokenizer_json(), tmp_path / "loop.gguf")
    assert GGUFReader(path).metadata["general.architecture"] == "nanochat-ternary-loop"
    with pytest.raises(Exception):
        _llama(path)
