"""Export to GGUF and to the HF-style directory: lossless trits, f16 scales, metadata, gguf-py interop."""

from __future__ import annotations

import json
import os

import gguf
import numpy as np
import pytest
import torch

from nanochat_ternary import checkpoint, codec, export
from nanochat_ternary.gguf import GGUFReader

from _export_fixtures import EOS, small_config, small_model, tokenizer_json

torch.set_num_threads(1)

TERNARY = ["attn.wq", "attn.wk", "attn.wv", "attn.wo", "mlp.up", "mlp.down"]
GGUF_NAMES = {"attn.wq": "attn_q", "attn.wk": "attn_k", "attn.wv": "attn_v", "attn.wo": "attn_output",
              "mlp.gate": "ffn_gate", "mlp.up": "ffn_up", "mlp.down": "ffn_down"}


@pytest.fixture(scope="module")
def tok() -> str:
    return tokenizer_json()


@pytest.fixture(scope="module")
def llama_model():
    return small_model(seed=1)


@pytest.fixture(scope="module")
def mhc_model():
    return small_model(seed=2, mhc_streams=2, ffn_activation="relu2", tie_embeddings=False)


def _rope_rows(n_heads: int, head_dim: int) -> np.ndarray:
    # Written independently of export.rope_permutation: per head, even rows are
    # the first half and odd rows the second half of the rotate-half layout.
    rows = []
    for h in range(n_heads):
        for j in range(head_dim // 2):
            rows += [h * head_dim + j, h * head_dim + head_dim // 2 + j]
    return np.array(rows)


def _trits_of(model, name):
    w = model.named_parameters()[name].detach().numpy().astype(np.float32)
    trits, scales = codec.quantize(w, group_size=None)
    return trits, float(scales[0])


@pytest.mark.parametrize("weight_type", ["TQ2_0", "TQ1_0"])
@pytest.mark.parametrize("which", ["llama", "mhc"])
def test_gguf_trits_equal_training_quantization(tmp_path, tok, llama_model, mhc_model, weight_type, which):
    model = llama_model if which == "llama" else mhc_model
    cfg = model.config
    path = export.export_gguf(model, tok, tmp_path / "m.gguf", weight_type=weight_type)
    r = GGUFReader(path)
    names = TERNARY + (["mlp.gate"] if cfg.ffn_activation == "swiglu" else [])
    for layer in range(cfg.n_layers):
        for suffix in names:
            name = f"blocks.{layer}.{suffix}"
            expected, scale = _trits_of(model, name)
            if suffix == "attn.wq":
                expected = expected[_rope_rows(cfg.n_heads, cfg.head_dim)]
            elif suffix == "attn.wk":
                expected = expected[_rope_rows(cfg.n_kv_heads, cfg.head_dim)]
            info = r.tensor_info(f"blk.{layer}.{GGUF_NAMES[suffix]}.weight")
            assert info.ggml_type == weight_type and info.shape == expected.shape
            trits, block_scales = codec.unpack(r.tensor_bytes(info.name), info.shape, weight_type.lower())
            np.testing.assert_array_equal(trits, expected, err_msg=name)
            # Every block carries the per-tensor scale, rounded once to f16.
            assert np.all(block_scales == np.float32(np.float16(scale)))
            assert np.all(np.abs(block_scales - scale) <= scale * 2.0**-11)


def test_rope_permutation_matches_llama_cpp_convention():
    # convert_hf_to_gguf's permute: reshape(heads, 2, hd/2, cols).swapaxes(1, 2)
    n_heads, hd = 3, 8
    w = np.arange(n_heads * hd)[:, None] * np.ones((1, 4))
    hf = w.reshape(n_heads, 2, hd // 2, 4).swapaxes(1, 2).reshape(w.shape)
    np.testing.assert_array_equal(w[export.rope_permutation(n_heads, hd)], hf)
    np.testing.assert_array_equal(export.rope_permutation(n_heads, hd), _rope_rows(n_heads, hd))


def test_gguf_metadata_complete_llama(tmp_path, tok, llama_model):
    cfg = llama_model.config
    path = export.export_gguf(llama_model, tok, tmp_path / "m.gguf")
    md = GGUFReader(path).metadata
    assert md["general.architecture"] == "llama"
    assert md["general.file_type"] == 37
    assert md["general.name"] == cfg.name
    assert json.loads(md["nct.config"]) == json.loads(cfg.to_json())
    expect = {
        "context_length": cfg.max_seq_len, "embedding_length": cfg.dim, "block_count": cfg.n_layers,
        "feed_forward_length": cfg.ffn_hidden, "attention.head_count": cfg.n_heads,
        "attention.head_count_kv": cfg.n_kv_heads, "vocab_size": cfg.vocab_size, "rope.dimension_count": cfg.head_dim,
    }
    for key, value in expect.items():
        assert md[f"llama.{key}"] == value, key
    assert md["llama.rope.freq_base"] == pytest.approx(cfg.rope_theta)
    assert md["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(cfg.norm_eps)
    assert "llama.mhc.streams" not in md
    spec = json.loads(tok)
    assert md["tokenizer.ggml.model"] == "gpt2"
    tokens = md["tokenizer.ggml.tokens"]
    assert len(tokens) == cfg.vocab_size == len(md["tokenizer.ggml.token_type"])
    for t, i in spec["model"]["vocab"].items():
        assert tokens[i] == t
    n = len(spec["model"]["vocab"])
    assert tokens[n:] == [f"[PAD{i}]" for i in range(n, cfg.vocab_size)]
    assert set(md["tokenizer.ggml.token_type"][n:]) == {5}
    assert md["tokenizer.ggml.token_type"][0] == 3  # <|endoftext|> is CONTROL
    assert md["tokenizer.ggml.merges"] == spec["model"]["merges"]
    assert md["tokenizer.ggml.bos_token_id"] == md["tokenizer.ggml.eos_token_id"] == spec["model"]["vocab"][EOS]
    assert md["tokenizer.huggingface.json"] == tok


def test_gguf_metadata_mhc(tmp_path, tok, mhc_model):
    path = export.export_gguf(mhc_model, tok, tmp_path / "m.gguf", weight_type="TQ1_0", head_type="F16")
    r = GGUFReader(path)
    md = r.metadata
    assert md["general.architecture"] == "nanochat-ternary"
    assert md["general.file_type"] == 36
    assert md["nanochat-ternary.mhc.streams"] == 2
    assert md["nanochat-ternary.ffn_activation"] == "relu2"
    params = mhc_model.named_parameters()
    for layer in range(2):
        for conn in ("mhc_attn", "mhc_mlp"):
            for m in ("res", "pre", "post"):
                for p in ("weight", "alpha", "bias"):
                    info = r.tensor_info(f"blk.{layer}.{conn}.{m}.{p}")
                    assert info.ggml_type == "F32"
                    np.testing.assert_array_equal(r.tensor(info.name), params[f"blocks.{layer}.{conn}.{m}.{p}"].numpy())
    head = r.tensor("output.weight")
    assert r.tensor_info("output.weight").ggml_type == "F16"
    np.testing.assert_array_equal(head, params["head"].numpy().astype(np.float16).astype(np.float32))
    assert "blk.0.ffn_gate.weight" not in {t.name for t in r.tensors}


def test_gguf_py_reads_the_file(tmp_path, tok, llama_model):
    path = export.export_gguf(llama_model, tok, tmp_path / "m.gguf")
    r = gguf.GGUFReader(path)
    params = llama_model.named_parameters()
    by_name = {t.name: t for t in r.tensors}
    # 2 layers x 9 tensors + embedding, head, final norm
    assert len(by_name) == 2 * 9 + 3
    assert by_name["output.weight"].tensor_type == gguf.GGMLQuantizationType.Q8_0
    embed = params["embed"].numpy()
    # Tied embeddings: the Q8_0 head is byte-identical to gguf-py's own quantizer.
    np.testing.assert_array_equal(
        np.asarray(by_name["output.weight"].data).reshape(-1), gguf.quants.quantize(embed, gguf.GGMLQuantizationType.Q8_0).reshape(-1)
    )
    np.testing.assert_array_equal(np.asarray(by_name["token_embd.weight"].data).reshape(embed.shape), embed)
    t = by_name["blk.1.ffn_down.weight"]
    assert t.tensor_type == gguf.GGMLQuantizationType.TQ2_0
    deq = gguf.quants.dequantize(np.asarray(t.data), gguf.GGMLQuantizationType.TQ2_0).reshape(256, 512)
    trits, scale = _trits_of(llama_model, "blocks.1.mlp.down")
    np.testing.assert_array_equal(deq, trits.astype(np.float32) * np.float32(np.float16(scale)))


def test_quantize_q8_0_matches_gguf_py():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((7, 96)).astype(np.float32)
    w[3] = 0.0  # an all-zero block
    w[4, :32] = 0.5  # exact ties at the round-half-away boundary
    np.testing.assert_array_equal(export.quantize_q8_0(w).reshape(-1), gguf.quants.quantize(w, gguf.GGMLQuantizationType.Q8_0).reshape(-1))
    with pytest.raises(ValueError, match="multiple of 32"):
        export.quantize_q8_0(w[:, :40])


def test_hf_directory(tmp_path, tok, mhc_model):
    out = export.export_hf(mhc_model, tok, tmp_path / "hf")
    assert sorted(os.listdir(out)) == ["config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["NanochatTernaryForCausalLM"] and cfg["model_type"] == "nanochat-ternary"
    assert cfg["quantization"] == {"format": "nanochat-ternary-checkpoint/1", "weights": "ternary-absmean", "packing": "packed2"}
    assert {k: cfg[k] for k in json.loads(mhc_model.config.to_json())} == json.loads(mhc_model.config.to_json())
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["bos_token_id"] == gen["eos_token_id"] == 0 and gen["max_new_tokens"] == 256
    assert (out / "tokenizer.json").read_text() == tok
    tensors, _ = checkpoint.load(out / "model.safetensors")
    params = mhc_model.named_parameters()
    assert set(tensors) == set(params)
    for name, value in params.items():
        if export.is_ternary_parameter(name):
            trits, scale = _trits_of(mhc_model, name)  # training layout: no RoPE permutation
            np.testing.assert_array_equal(tensors[name].trits, trits, err_msg=name)
            assert tensors[name].scales.tolist() == [np.float32(scale)]
            assert tensors[name].group_size is None
        else:
            np.testing.assert_array_equal(tensors[name], value.numpy(), err_msg=name)
    # The safetensors file is readable by the reference library too.
    from safetensors.numpy import load_file

    raw = load_file(out / "model.safetensors")
    assert raw["blocks.0.attn.wq.codes"].dtype == np.uint8


def test_hf_export_into_existing_directory_replaces_files(tmp_path, tok, llama_model):
    target = tmp_path / "hf"
    target.mkdir()
    (target / "config.json").write_text("stale")
    (target / "notes.txt").write_text("kept")
    export.export_hf(llama_model, tok, target)
    assert json.loads((target / "config.json").read_text())["dim"] == 256
    assert (target / "notes.txt").read_text() == "kept"
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # no temp leftovers


def test_failed_export_leaves_nothing(tmp_path, llama_model):
    with pytest.raises(ValueError):
        export.export_hf(llama_model, '{"model": {"type": "BPE", "vocab": {"a": 0}}}', tmp_path / "hf")
    with pytest.raises(ValueError):
        export.export_gguf(llama_model, '{"model": {"type": "BPE", "vocab": {"a": 0}}}', tmp_path / "m.gguf")
    assert os.listdir(tmp_path) == []


def test_bad_inputs(tmp_path, tok, llama_model, mhc_model):
    with pytest.raises(ValueError, match="weight_type"):
        export.export_gguf(llama_model, tok, tmp_path / "a.gguf", weight_type="Q4_0")
    with pytest.raises(ValueError, match="head_type"):
        export.export_gguf(llama_model, tok, tmp_path / "a.gguf", head_type="Q4_K")
    with pytest.raises(ValueError, match="llama-shaped"):
        export.export_gguf(mhc_model, tok, tmp_path / "a.gguf", arch="llama")
    with pytest.raises(ValueError, match="unknown architecture"):
        export.export_gguf(llama_model, tok, tmp_path / "a.gguf", arch="gpt-neox")
    # Tokenizer with more tokens than the model: mismatched.
    big = small_model(vocab_size=280)
    with pytest.raises(ValueError, match="mismatched tokenizer"):
        export.export_gguf(big, tok, tmp_path / "a.gguf")
    with pytest.raises(ValueError, match="mismatched tokenizer"):
        export.export_hf(big, tok, tmp_path / "hf")
    spec = json.loads(tok)
    spec["added_tokens"] = []
    del spec["model"]["vocab"][EOS]
    with pytest.raises(ValueError, match="endoftext"):
        export.export_gguf(llama_model, json.dumps(spec), tmp_path / "a.gguf")
    spec = json.loads(tok)
    spec["model"]["type"] = "WordPiece"
    with pytest.raises(ValueError, match="BPE"):
        export.export_gguf(llama_model, json.dumps(spec), tmp_path / "a.gguf")
    with pytest.raises(ValueError, match="not valid JSON"):
        export.export_gguf(llama_model, "{not json", tmp_path / "a.gguf")
    with pytest.raises(FileNotFoundError):
        export.export_gguf(llama_model, tmp_path / "missing.json", tmp_path / "a.gguf")
    with pytest.raises(TypeError):
        export.export_gguf(llama_model, 42, tmp_path / "a.gguf")
    # Projections whose width isn't whole 256-weight blocks can't be TQ2_0.
    narrow = small_model(ffn_hidden=384)
    with pytest.raises(ValueError, match="export_hf"):
        export.export_gguf(narrow, tok, tmp_path / "a.gguf")
    export.export_hf(narrow, tok, tmp_path / "narrow")  # the HF directory holds any width
    assert not (tmp_path / "a.gguf").exists()
    # The full-precision baseline has no lossless ternary export.
    full = small_model(ternary=False)
    with pytest.raises(ValueError, match="without ternary"):
        export.export_gguf(full, tok, tmp_path / "a.gguf")
    with pytest.raises(ValueError, match="without ternary"):
        export.export_hf(full, tok, tmp_path / "full")


def test_nonfinite_weights_are_rejected(tmp_path, tok):
    model = small_model(seed=3)
    with torch.no_grad():
        model.named_parameters()["blocks.0.attn.wv"][0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        export.export_gguf(model, tok, tmp_path / "a.gguf")


def test_tokenizer_from_object_and_path(tmp_path, tok, llama_model):
    class WithToJson:
        def to_json(self):
            return tok

    class WithSave:
        def save(self, path):
            with open(path, "w", encoding="utf-8") as f:
                f.write(tok)

    p = tmp_path / "tokenizer.json"
    p.write_text(tok, encoding="utf-8")
    assert export.tokenizer_json_text(WithToJson()) == tok
    assert export.tokenizer_json_text(WithSave()) == tok
    assert export.tokenizer_json_text(p) == tok
    assert export.tokenizer_json_text(str(p)) == tok



def test_trained_tokenizer_metadata_matches_its_gguf_vocab(tmp_path, llama_model):
    """A tokenizer from `Tokenizer.train` exports the same tokens/merges/types as its own GGUF helper."""
    from nanochat_ternary.tokenizer import Tokenizer

    tokenizer = Tokenizer.train(["fn main() { let x = 1; }\n"] * 3, vocab_size=300, min_frequency=1)
    md = GGUFReader(export.export_gguf(llama_model, tokenizer, tmp_path / "m.gguf")).metadata
    vocab = tokenizer.gguf_vocab()
    n = len(vocab["tokens"])
    assert md["tokenizer.ggml.tokens"][:n] == vocab["tokens"]
    assert md["tokenizer.ggml.token_type"][:n] == vocab["token_types"]
    assert md["tokenizer.ggml.merges"] == vocab["merges"]
    assert md["tokenizer.ggml.eos_token_id"] == vocab["eos_id"] == tokenizer.bos_id
    assert md["tokenizer.ggml.pre"] == vocab["pre"]


def test_export_checkpoint_and_cli(tmp_path, tok):
    from _export_fixtures import small_config
    from nanochat_ternary.qat import QatModel
    from nanochat_ternary.train import Trainer

    trainer = Trainer(small_config(), None, tmp_path / "run", steps=1, progress=False, batch_size=2, seq_len=16, warmup=0)
    x = torch.randint(0, 300, (2, 16))
    trainer.step(x, x)
    ckpt = trainer.save()
    (tmp_path / "tokenizer.json").write_text(tok, encoding="utf-8")
    out = export.export_checkpoint(tmp_path / "run", tmp_path / "tokenizer.json", tmp_path / "a.gguf")
    trits, scale = _trits_of(QatModel.from_checkpoint(ckpt), "blocks.0.attn.wv")
    got, _ = codec.unpack(GGUFReader(out).tensor_bytes("blk.0.attn_v.weight"), trits.shape, "tq2_0")
    np.testing.assert_array_equal(got, trits)
    assert export.main([str(ckpt), "--tokenizer", str(tmp_path / "tokenizer.json"), "--out", str(tmp_path / "hf"), "--format", "hf"]) == 0
    assert (tmp_path / "hf" / "config.json").is_file()
    assert export.main([str(tmp_path / "nothing"), "--tokenizer", str(tmp_path / "tokenizer.json"), "--out", str(tmp_path / "b.gguf")]) == 1
    with pytest.raises(ValueError, match="format"):
        export.export_checkpoint(ckpt, tok, tmp_path / "c", format="onnx")


def test_generation_config_flag_reaches_generate_and_bad_configs_are_refused(tmp_path, tok, capsys):
    from _export_fixtures import small_config
    from nanochat_ternary.model import TernaryModel
    from nanochat_ternary.train import Trainer

    trainer = Trainer(small_config(), None, tmp_path / "run", steps=1, progress=False, batch_size=2, seq_len=16, warmup=0)
    x = torch.randint(0, 300, (2, 16))
    trainer.step(x, x)
    ckpt = trainer.save()
    (tmp_path / "tokenizer.json").write_text(tok, encoding="utf-8")
    common = [str(ckpt), "--tokenizer", str(tmp_path / "tokenizer.json")]
    gen = tmp_path / "gen.json"
    gen.write_text(json.dumps({"temperature": 0.3, "top_p": 0.9, "repetition_penalty": 1.1, "max_new_tokens": 7,
                               "no_repeat_ngram_size": 4, "token_healing": True}))
    assert export.main([*common, "--out", str(tmp_path / "g.gguf"), "--generation-config", str(gen)]) == 0
    assert export.main([*common, "--out", str(tmp_path / "hf"), "--format", "hf", "--generation-config", str(gen)]) == 0
    for path in (tmp_path / "g.gguf", tmp_path / "hf"):
        model = TernaryModel.from_pretrained(path)
        assert model.generation_config["temperature"] == 0.3 and model.generation_config["repetition_penalty"] == 1.1
        assert model.generation_config["no_repeat_ngram_size"] == 4 and model.generation_config["token_healing"] is True
        # max_new_tokens from the file when the caller sets nothing; the caller's value wins otherwise.
        assert len(model.encode(model.generate("fn main() {", stop=[]), add_bos=False)) <= 7
        text = model.generate("fn main() {", max_new_tokens=3, do_sample=False)
        assert len(model.encode(text, add_bos=False)) <= 3
    capsys.readouterr()
    for bad, message in (({"temprature": 0.3}, "unknown key 'temprature'"), ({"top_p": 0}, "top_p must be in (0, 1]"),
                         ({"max_new_tokens": 2.5}, "max_new_tokens must be >= 1"), ({"do_sample": 1}, "do_sample"),
                         ({"do_sample": True, "temperature": 0}, "needs temperature > 0"), ([1], "JSON object"),
                         ({"no_repeat_ngram_size": -1}, "no_repeat_ngram_size must be >= 0"),
                         ({"token_healing": "yes"}, "token_healing must be true or false")):
        gen.write_text(json.dumps(bad))
        assert export.main([*common, "--out", str(tmp_path / "b.gguf"), "--generation-config", str(gen)]) == 1
        assert message in capsys.readouterr().err
        assert not (tmp_path / "b.gguf").exists()
    gen.write_text("{nope")
    assert export.main([*common, "--out", str(tmp_path / "b.gguf"), "--generation-config", str(gen)]) == 1
    assert "not valid JSON" in capsys.readouterr().err
