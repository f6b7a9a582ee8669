"""The GPU path of TernaryModel (``device="cuda"``, ``nanochat_ternary.cuda.model``) run on the CPU
with the kernels' references: logits against the Rust engine, generation, KV cache, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import nanochat_ternary  # noqa: F401  (imports torch before the extension)
from nanochat_ternary import TernaryModel, export
from nanochat_ternary.cuda import driver
from nanochat_ternary.cuda.model import TorchForward, sample_next
from nanochat_ternary.tokenizer import Tokenizer

from _export_fixtures import small_model, tokenizer_json


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cuda-model")
    tok = Tokenizer.from_json(tokenizer_json())
    llama = small_model(seed=21)
    mhc = small_model(seed=22, mhc_streams=2, ffn_activation="relu2", tie_embeddings=False)
    return {
        "llama": export.export_gguf(llama, tok, root / "llama.gguf"),
        "mhc": export.export_gguf(mhc, tok, root / "mhc.gguf"),
        "hf": export.export_hf(llama, tok, root / "llama-hf"),
    }


@pytest.mark.parametrize("kind", ["llama", "mhc"])
def test_logits_match_the_engine(files, kind):
    model = TernaryModel(files[kind], kv_cache="f32")
    ids = model.encode("fn main() { let mut total = 0; }")
    want = model.logits(ids)
    fwd = TorchForward.from_gguf(files[kind], model.config, "cpu")
    got = fwd(torch.tensor(ids), fwd.new_cache()).numpy()
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    # Prefill in two parts through the KV cache gives the same logits as one pass.
    cache = fwd.new_cache()
    parts = [fwd(torch.tensor(ids[:3]), cache), fwd(torch.tensor(ids[3:4]), cache), fwd(torch.tensor(ids[4:]), cache)]
    np.testing.assert_allclose(torch.cat(parts).numpy(), got, rtol=1e-5, atol=1e-5)
    assert cache.length == len(ids)


def test_shipped_model_greedy_generation_matches_the_engine():
    cpu = TernaryModel.from_pretrained(kv_cache="f32")
    gpu_path = TernaryModel.from_pretrained(kv_cache="f32")
    gpu_path._use_torch_forward("cpu")  # the CUDA path's code, with the kernels' CPU references
    prompt = "fn fibonacci(n: u64) -> u64 {"
    ids = cpu.encode(prompt)
    # Both sides quantize activations to int8 per token; float summation order moves a value that
    # sits at a rounding boundary by one step, which the 6 layers of rust-coder carry to the logits
    # (measured: exact for the first 3 positions, then up to 0.125 on logits up to 15.4, 0.8 %).
    want = cpu.logits(ids)
    np.testing.assert_allclose(gpu_path.logits(ids), want, rtol=0, atol=0.02 * np.abs(want).max())
    greedy = cpu.generate(prompt, max_new_tokens=16)
    assert gpu_path.generate(prompt, max_new_tokens=16) == greedy
    assert "".join(gpu_path.stream(prompt, max_new_tokens=16)) == greedy
    # Measured: 0.054 nats at most for the post-trained rust-coder (0.022 for its base), one position of 16.
    np.testing.assert_allclose(gpu_path.nll(ids[1:]), cpu.nll(ids[1:]), rtol=0, atol=0.1)
    # Token healing restricts the first token on this path as in the engine.
    healed = cpu.generate(prompt, max_new_tokens=12, token_healing=True)
    assert gpu_path.generate(prompt, max_new_tokens=12, token_healing=True) == healed
    no_repeat = cpu.generate(prompt, max_new_tokens=24, no_repeat_ngram_size=2)
    assert gpu_path.generate(prompt, max_new_tokens=24, no_repeat_ngram_size=2) == no_repeat
    sampled = gpu_path.generate(prompt, max_new_tokens=6, do_sample=True, temperature=0.8, top_p=0.9, seed=3)
    assert sampled == gpu_path.generate(prompt, max_new_tokens=6, do_sample=True, temperature=0.8, top_p=0.9, seed=3)


def test_sampling_rules():
    g = torch.Generator().manual_seed(0)
    logits = torch.tensor([1.0, 3.0, 3.0, -2.0])
    assert sample_next(logits, [], 0.0, 0, 1.0, 0.0, 1.0, g) == 1  # greedy: lowest id on ties
    assert sample_next(logits, [1], 0.0, 0, 1.0, 0.0, 2.0, g) == 2  # penalty divides a positive logit
    assert {sample_next(logits, [], 1.0, 1, 1.0, 0.0, 1.0, g) for _ in range(20)} == {1}  # top-k 1, stable order
    assert {sample_next(logits, [], 1.0, 0, 0.4, 0.0, 1.0, g) for _ in range(20)} == {1}  # top-p keeps the head
    assert {sample_next(logits, [], 1.0, 0, 0.5, 0.0, 1.0, g) for _ in range(40)} == {1, 2}  # until the sum reaches p
    drawn = {sample_next(logits, [], 1.0, 0, 1.0, 0.5, 1.0, g) for _ in range(200)}
    assert drawn == {1, 2}  # min-p 0.5 drops ids 0 and 3


def test_device_errors(files):
    with pytest.raises(ValueError, match="device must be 'cpu', 'cuda' or 'cuda:N'"):
        TernaryModel(files["llama"], device="gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU is available"):
            TernaryModel(files["llama"], device="cuda")
        with pytest.raises(ValueError, match="no CUDA GPU is available"):
            TernaryModel.from_pretrained(files["llama"], device="cuda:0")
    model = TernaryModel(files["hf"])
    assert model.device == "cpu" and model._torch is None  # the default path is the Rust engine
    with pytest.raises(ValueError, match="loads .gguf files"):
        model._use_torch_forward("cpu")
    fwd = TorchForward.from_gguf(files["llama"], TernaryModel(files["llama"]).config, "cpu")
    with pytest.raises(ValueError, match="token ids must lie"):
        fwd(torch.tensor([10_000]), fwd.new_cache())
    with pytest.raises(ValueError, match="exceed the context length"):
        fwd(torch.zeros(200, dtype=torch.int64), fwd.new_cache())


@pytest.mark.skipif(not driver.available(), reason="needs a CUDA GPU and NVRTC")
def test_cuda_device_matches_the_cpu_engine(files):
    for kind in ("llama", "mhc"):
        cpu = TernaryModel(files[kind], kv_cache="f32")
        gpu = TernaryModel(files[kind], device="cuda")
        ids = cpu.encode("pub fn add(a: i32, b: i32) -> i32 { a + b }")
        np.testing.assert_allclose(gpu.logits(ids), cpu.logits(ids), rtol=1e-3, atol=1e-3)
    cpu = TernaryModel.from_pretrained(kv_cache="f32")
    gpu = TernaryModel.from_pretrained(device="cuda")
    prompt = "fn fibonacci(n: u64) -> u64 {"
    assert gpu.generate(prompt, max_new_tokens=32) == cpu.generate(prompt, max_new_tokens=32)
