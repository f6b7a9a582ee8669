"""Interop and newcomer paths (issue 17): BOS/EOS as the file says, every preset exportable,
export finding the run's tokenizer, CLI errors naming CLI flags, and a LLaMA-3-shaped GGUF
written by gguf-py that our engine and llama.cpp decode alike.

The llama.cpp comparisons skip without ``llama-cpp-python``; everything else always runs.

Run: .venv/bin/python -m pytest tests/test_interop.py -q
"""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q

from nanochat_ternary import ModelConfig, QatModel, TernaryModel, export
from nanochat_ternary.gguf import GGUFReader
from nanochat_ternary.model_config import PRESETS

from _export_fixtures import SAMPLE_TEXT, bytes_to_unicode, small_model, tokenizer_json, trained_checkpoint

torch.set_num_threads(1)


def _llama_cpp():
    return pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install llama-cpp-python)")


# --------------------------------------------------------------------------- BOS / EOS


def test_export_records_the_training_bos(tmp_path):
    """GGUF: add_bos_token true, add_eos_token false, BOS = EOS = the document token; HF
    directory: the same in tokenizer_config.json; the engine reads both back."""
    tok = tokenizer_json()
    model = small_model(seed=1)
    md = GGUFReader(export.export_gguf(model, tok, tmp_path / "m.gguf")).metadata
    assert md["tokenizer.ggml.add_bos_token"] is True
    assert md["tokenizer.ggml.add_eos_token"] is False
    assert md["tokenizer.ggml.bos_token_id"] == md["tokenizer.ggml.eos_token_id"] == 0
    hf = export.export_hf(model, tok, tmp_path / "hf")
    config = json.loads((hf / "tokenizer_config.json").read_text())
    assert config == {"add_bos_token": True, "add_eos_token": False, "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"}
    for path in (tmp_path / "m.gguf", hf):
        m = TernaryModel.from_pretrained(path)
        assert (m.bos_token_id, m.eos_token_id, m.add_bos_token, m.add_eos_token) == (0, 0, True, False)
        assert m.encode("fn main")[0] == 0 and m.encode("fn main", add_bos=False)[0] != 0
    # An explicit BOS id (what the run's data says) wins over the token's name.
    md = GGUFReader(export.export_gguf(model, tok, tmp_path / "b.gguf", bos_token_id=1)).metadata
    assert md["tokenizer.ggml.bos_token_id"] == md["tokenizer.ggml.eos_token_id"] == 1
    with pytest.raises(ValueError, match="bos_token_id"):
        export.export_gguf(model, tok, tmp_path / "c.gguf", bos_token_id=10_000)


def _write_flags_gguf(path: Path, *, bos: int | None, eos: int | None, add_bos: bool | None, add_eos: bool | None,
                      names: tuple[str, str] = ("<|begin_of_text|>", "<|end_of_text|>"), model: str = "gpt2") -> None:
    """A small llama GGUF (gguf-py) whose last two tokens are specials named ``names``, with the
    given BOS/EOS ids and flags (None: key absent)."""
    rng = np.random.default_rng(0)
    vocab, dim, ffn = 64, 256, 256
    w = gguf.GGUFWriter(str(path), "llama")
    for add, value in ((w.add_context_length, 32), (w.add_embedding_length, dim), (w.add_block_count, 1),
                       (w.add_feed_forward_length, ffn), (w.add_head_count, 4), (w.add_head_count_kv, 4),
                       (w.add_vocab_size, vocab)):
        add(value)
    w.add_layer_norm_rms_eps(1e-5)
    table = bytes_to_unicode()
    tokens = [table[b] for b in range(ord("a"), ord("a") + vocab - 2)] + list(names)
    w.add_tokenizer_model(model)
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types([1] * (vocab - 2) + [3, 3])
    w.add_token_merges([])
    if bos is not None:
        w.add_bos_token_id(bos)
    if eos is not None:
        w.add_eos_token_id(eos)
    if add_bos is not None:
        w.add_add_bos_token(add_bos)
    if add_eos is not None:
        w.add_add_eos_token(add_eos)

    def t(rows, cols):
        return gguf.quants.quantize(rng.integers(-1, 2, (rows, cols)).astype(np.float32) / 16, Q.TQ2_0)

    w.add_tensor("token_embd.weight", rng.standard_normal((vocab, dim)).astype(np.float32))
    w.add_tensor("output_norm.weight", np.ones(dim, np.float32))
    w.add_tensor("output.weight", rng.standard_normal((vocab, dim)).astype(np.float16))
    for name, rows, cols in (("attn_q", dim, dim), ("attn_k", dim, dim), ("attn_v", dim, dim), ("attn_output", dim, dim),
                             ("ffn_gate", ffn, dim), ("ffn_up", ffn, dim), ("ffn_down", dim, ffn)):
        w.add_tensor(f"blk.0.{name}.weight", t(rows, cols), raw_dtype=Q.TQ2_0)
    for name in ("attn_norm", "ffn_norm"):
        w.add_tensor(f"blk.0.{name}.weight", np.ones(dim, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_loading_honours_the_files_flags_and_ids(tmp_path):
    """No token name is assumed: BOS/EOS come from the file's ids, adding them from its flags, and
    llama.cpp's defaults apply when a flag is absent."""
    path = tmp_path / "m.gguf"
    _write_flags_gguf(path, bos=62, eos=63, add_bos=True, add_eos=False)
    m = TernaryModel.from_pretrained(path)
    assert (m.bos_token_id, m.eos_token_id, m.add_bos_token) == (62, 63, True)
    assert m.encode("abc") == [62, 0, 1, 2]
    assert m.encode("abc", add_eos=True) == [62, 0, 1, 2, 63]
    assert m.tokenizer.decode([62]) == "<|begin_of_text|>"
    out = m.generate("abc", max_new_tokens=4)  # runs; EOS (63) ends it if produced
    assert isinstance(out, str)

    _write_flags_gguf(path, bos=62, eos=63, add_bos=False, add_eos=True)
    m = TernaryModel.from_pretrained(path)
    assert m.encode("abc") == [0, 1, 2, 63]
    assert m.encode("abc", add_bos=True, add_eos=False) == [62, 0, 1, 2]

    # Flags absent: byte-level BPE with the gpt-2 split adds nothing (llama.cpp's default).
    _write_flags_gguf(path, bos=62, eos=63, add_bos=None, add_eos=None)
    m = TernaryModel.from_pretrained(path)
    assert (m.add_bos_token, m.add_eos_token) == (False, False)
    assert m.encode("abc") == [0, 1, 2]

    # No BOS named: nothing to add, and asking for one is a clear error.
    _write_flags_gguf(path, bos=None, eos=63, add_bos=None, add_eos=None)
    m = TernaryModel.from_pretrained(path)
    assert m.bos_token_id is None and m.encode("abc") == [0, 1, 2]
    with pytest.raises(ValueError, match="no BOS"):
        m.encode("abc", add_bos=True)
    with pytest.raises(ValueError, match="BOS"):
        m.nll([0, 1])

    # A file that asks for a BOS it doesn't name is refused at load.
    _write_flags_gguf(path, bos=None, eos=63, add_bos=True, add_eos=None)
    with pytest.raises(ValueError, match="names no bos"):
        TernaryModel.from_pretrained(path)


def test_hf_directory_flags(tmp_path):
    """tokenizer_config.json decides for an HF directory; without it (older exports) a BOS id
    means the training convention (add it)."""
    hf = export.export_hf(small_model(seed=2), tokenizer_json(), tmp_path / "hf")
    (hf / "tokenizer_config.json").write_text(json.dumps({"add_bos_token": False}))
    assert TernaryModel.from_pretrained(hf).encode("fn")[0] != 0
    (hf / "tokenizer_config.json").unlink()
    assert TernaryModel.from_pretrained(hf).encode("fn")[0] == 0
    (hf / "tokenizer_config.json").write_text(json.dumps({"add_bos_token": "yes"}))
    with pytest.raises(ValueError, match="add_bos_token"):
        TernaryModel.from_pretrained(hf)
    (hf / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="tokenizer_config.json"):
        TernaryModel.from_pretrained(hf)


def test_save_pretrained_keeps_tokenizer_config(tmp_path):
    hf = export.export_hf(small_model(seed=2), tokenizer_json(), tmp_path / "hf")
    copy = TernaryModel.from_pretrained(hf).save_pretrained(tmp_path / "copy")
    assert (copy / "tokenizer_config.json").read_text() == (hf / "tokenizer_config.json").read_text()


def test_llama_cpp_text_prompt_gives_our_text(tmp_path):
    """From a text prompt (not ids) llama.cpp and TernaryModel write the same text: the export's
    add_bos_token makes llama.cpp start the prompt with the BOS token, as training and our engine do."""
    llama_cpp = _llama_cpp()
    path = export.export_checkpoint(trained_checkpoint("llama"), tokenizer_json(), tmp_path / "m.gguf")
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=128, n_threads=1, verbose=False)
    model = TernaryModel.from_pretrained(path)
    for text in ("fn main() {", "The quick", "pub fn add(a", "    let"):
        assert llm.tokenize(text.encode()) == model.encode(text), text
        theirs = llm.create_completion(text, max_tokens=48, temperature=0.0, repeat_penalty=1.0)["choices"][0]["text"]
        assert theirs == model.generate(text, max_new_tokens=48), text


# --------------------------------------------------------------------------- presets and the export CLI


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_is_gguf_exportable(name):
    config = ModelConfig.preset(name)
    assert export.gguf_export_problems(config) == []
    assert config.dim % 256 == 0 and config.ffn_hidden % 256 == 0


@pytest.mark.parametrize("name", ["tiny", "d20"])
def test_small_presets_export_and_load(tmp_path, name):
    """The presets small enough for a test are exported for real and run in the engine."""
    config = ModelConfig.preset(name)
    model = QatModel(config, seed=0)
    path = export.export_gguf(model, tokenizer_json(), tmp_path / f"{name}.gguf")
    loaded = TernaryModel.from_pretrained(path)
    assert loaded.config == config
    ids = [0, 5, 6, 7]
    ours = loaded.logits(ids)
    ref = model.forward(torch.tensor([ids]))[0].numpy()
    assert np.abs(ours - ref).max() < 0.1


def test_gguf_export_problems_name_the_reason():
    narrow = small_model(ffn_hidden=384).config
    assert export.gguf_export_problems(narrow) == ["ffn_hidden=384 is not a multiple of 256"]
    full = small_model(ternary=False).config
    assert any("ternary" in p for p in export.gguf_export_problems(full))


def _data_dir(tmp_path: Path) -> Path:
    from nanochat_ternary.data.build import BuildOptions, build

    src = tmp_path / "src"
    src.mkdir()
    for i in range(12):
        (src / f"f{i}.rs").write_text(SAMPLE_TEXT.replace("total", f"total{i}"), encoding="utf-8")
    build(BuildOptions(inputs=[str(src)], out=str(tmp_path / "data"), vocab_size=300, min_frequency=1, progress=False))
    return tmp_path / "data"


def test_export_finds_the_runs_tokenizer(tmp_path, capsys):
    """`python -m nanochat_ternary.export RUN --out X` needs no --tokenizer: the run's data
    directory has it (checked against the shards' sha256), and its bos_id."""
    from _export_fixtures import small_config
    from nanochat_ternary.data.shards import read_meta
    from nanochat_ternary.train import Trainer

    data = _data_dir(tmp_path)
    meta = read_meta(data)
    config = small_config(vocab_size=meta["vocab_size"])
    trainer = Trainer(config, data, tmp_path / "run", steps=1, progress=False, batch_size=2, seq_len=16, warmup=0)
    trainer.fit()
    trainer.save()
    tokenizer, bos = export.run_tokenizer(tmp_path / "run")
    assert tokenizer == data.resolve() / "tokenizer.json" and bos == meta["bos_id"]
    assert export.main([str(tmp_path / "run"), "--out", str(tmp_path / "m.gguf")]) == 0
    md = GGUFReader(tmp_path / "m.gguf").metadata
    assert md["tokenizer.huggingface.json"] == tokenizer.read_text(encoding="utf-8")
    assert md["tokenizer.ggml.bos_token_id"] == bos
    assert export.main([str(tmp_path / "run"), "--out", str(tmp_path / "hf"), "--format", "hf"]) == 0
    # A tokenizer that is not the one the shards were made with is refused.
    (data / "tokenizer.json").write_text(tokenizer_json(), encoding="utf-8")
    capsys.readouterr()
    assert export.main([str(tmp_path / "run"), "--out", str(tmp_path / "x.gguf")]) == 1
    assert "sha256" in capsys.readouterr().err
    # A run without a data directory names the flag to use.
    t2 = Trainer(config, None, tmp_path / "run2", steps=1, progress=False, batch_size=2, seq_len=16, warmup=0)
    x = torch.randint(0, 200, (2, 16))
    t2.step(x, x)
    t2.save()
    assert export.main([str(tmp_path / "run2"), "--out", str(tmp_path / "y.gguf")]) == 1
    assert "--tokenizer" in capsys.readouterr().err


def test_export_cli_errors_name_cli_flags(tmp_path, capsys):
    from _export_fixtures import small_config
    from nanochat_ternary.train import Trainer

    trainer = Trainer(small_config(ffn_hidden=384), None, tmp_path / "run", steps=1, progress=False, batch_size=2, seq_len=16, warmup=0)
    x = torch.randint(0, 300, (2, 16))
    trainer.step(x, x)
    trainer.save()
    (tmp_path / "tok.json").write_text(tokenizer_json(), encoding="utf-8")
    assert export.main([str(tmp_path / "run"), "--tokenizer", str(tmp_path / "tok.json"), "--out", str(tmp_path / "a.gguf")]) == 1
    err = capsys.readouterr().err
    assert "--format hf" in err and "export_hf" not in err and "ffn_hidden=384" in err
    assert not (tmp_path / "a.gguf").exists()
    assert export.main([str(tmp_path / "run"), "--tokenizer", str(tmp_path / "tok.json"), "--out", str(tmp_path / "hf"), "--format", "hf"]) == 0


# --------------------------------------------------------------------------- a LLaMA-3-shaped file by gguf-py

L3_VOCAB, L3_DIM, L3_LAYERS, L3_HEADS, L3_KV, L3_FFN, L3_CTX = 320, 256, 2, 4, 1, 768, 128


def _llama3_tokens() -> tuple[list[str], list[str]]:
    """A byte-level vocabulary (the 256 byte symbols, merges learned on the sample text) padded
    to L3_VOCAB with reserved tokens, BOS/EOS named as LLaMA 3 names them at the end."""
    spec = json.loads(tokenizer_json(n_merges=40))
    by_id = sorted(spec["model"]["vocab"].items(), key=lambda kv: kv[1])
    tokens = [t for t, _ in by_id if not t.startswith("<|")]
    tokens += [f"<|reserved_special_token_{i}|>" for i in range(L3_VOCAB - 2 - len(tokens))]
    tokens += ["<|begin_of_text|>", "<|end_of_text|>"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    return tokens, merges


def write_llama3_gguf(path: Path, seed: int = 0) -> None:
    """Random weights in LLaMA 3's shape: GQA (4 query heads per KV head), rope_theta 500000,
    an untied F16 head, TQ2_0 projections, the llama-bpe pre-tokenizer, BOS <|begin_of_text|>."""
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("llama3-shaped-random")
    w.add_context_length(L3_CTX)
    w.add_embedding_length(L3_DIM)
    w.add_block_count(L3_LAYERS)
    w.add_feed_forward_length(L3_FFN)
    w.add_head_count(L3_HEADS)
    w.add_head_count_kv(L3_KV)
    w.add_rope_freq_base(500000.0)
    w.add_rope_dimension_count(L3_DIM // L3_HEADS)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(L3_VOCAB)
    w.add_file_type(37)  # MOSTLY_TQ2_0
    tokens, merges = _llama3_tokens()
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("llama-bpe")
    w.add_token_list(tokens)
    w.add_token_types([3 if t.startswith("<|") else 1 for t in tokens])
    w.add_token_merges(merges)
    w.add_bos_token_id(L3_VOCAB - 2)
    w.add_eos_token_id(L3_VOCAB - 1)
    w.add_add_bos_token(True)

    def ternary(rows, cols):
        scale = np.float32(2.0**-4)
        return gguf.quants.quantize(rng.integers(-1, 2, (rows, cols)).astype(np.float32) * scale, Q.TQ2_0)

    hd = L3_DIM // L3_HEADS
    w.add_tensor("token_embd.weight", rng.standard_normal((L3_VOCAB, L3_DIM)).astype(np.float32))
    for i in range(L3_LAYERS):
        for name, rows, cols in (("attn_q", L3_DIM, L3_DIM), ("attn_k", L3_KV * hd, L3_DIM), ("attn_v", L3_KV * hd, L3_DIM),
                                 ("attn_output", L3_DIM, L3_DIM), ("ffn_gate", L3_FFN, L3_DIM),
                                 ("ffn_up", L3_FFN, L3_DIM), ("ffn_down", L3_DIM, L3_FFN)):
            w.add_tensor(f"blk.{i}.{name}.weight", ternary(rows, cols), raw_dtype=Q.TQ2_0)
        for name in ("attn_norm", "ffn_norm"):
            w.add_tensor(f"blk.{i}.{name}.weight", (1 + 0.2 * rng.standard_normal(L3_DIM)).astype(np.float32))
    w.add_tensor("output_norm.weight", np.ones(L3_DIM, np.float32))
    w.add_tensor("output.weight", (rng.standard_normal((L3_VOCAB, L3_DIM)) * 0.5).astype(np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture(scope="module")
def llama3_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("l3") / "llama3.gguf"
    write_llama3_gguf(path)
    return path


def test_llama3_shaped_gguf_loads(llama3_path):
    m = TernaryModel.from_pretrained(llama3_path)
    c = m.config
    assert (c.n_heads, c.n_kv_heads, c.rope_theta, c.tie_embeddings) == (L3_HEADS, L3_KV, 500000.0, False)
    assert (m.bos_token_id, m.eos_token_id, m.add_bos_token) == (L3_VOCAB - 2, L3_VOCAB - 1, True)
    ids = m.encode("fn main() {")
    assert ids[0] == L3_VOCAB - 2 and m.decode(ids[1:]) == "fn main() {"
    assert np.isfinite(m.logits(ids)).all()


L3_REL_BOUND = 0.03
"""Max |logit difference| llama.cpp vs our engine over the largest |logit| (measured 0.015-0.022).
Both quantize activations to int8 (llama.cpp per 256 values, we per token), so float noise moves a
few roundings and random-weight logits differ by ~2 %; a greedy pick can differ only where the
top two logits are closer than that."""


def test_llama3_shaped_gguf_same_greedy_tokens_as_llama_cpp(llama3_path):
    """The same greedy tokens from our engine and llama.cpp, prompts given as text (so the
    llama-bpe split and the BOS flag are exercised too). Free-running, the two must agree token for
    token up to the first numerical near-tie (our top-2 margin below twice the logit bound); fed
    our sequence, llama.cpp must pick our token at >= 90 % of the steps, and only at near-ties not."""
    llama_cpp = _llama_cpp()
    from nanochat_ternary import _core

    steps = 32
    llm = llama_cpp.Llama(model_path=str(llama3_path), n_ctx=L3_CTX, n_threads=1, logits_all=True, verbose=False)
    assert llm.token_bos() == L3_VOCAB - 2 and llm.token_eos() == L3_VOCAB - 1
    model = TernaryModel.from_pretrained(llama3_path)
    engine = _core.Engine(str(llama3_path))
    agreed = total = identical_runs = 0
    for text in ("fn main() {", "The quick brown fox", "    let mut total = 0;", "pub fn add(a: i32", "impl Foo {",
                 "// sum the values"):
        prompt = model.encode(text)
        assert llm.tokenize(text.encode()) == prompt, text
        ours = list(engine.generate([prompt], steps, temperature=0.0, stop_ids=[])[0])
        seq = prompt + ours
        mine = engine.logits(seq)
        bound = 2 * L3_REL_BOUND * float(np.abs(mine).max())

        def margin(i: int) -> float:
            top2 = np.sort(mine[i])[-2:]
            return float(top2[1] - top2[0])

        llm.reset()
        llm.eval(prompt)
        for step in range(steps):
            token = int(np.argmax(llm.eval_logits[-1]))
            if token != ours[step]:
                assert margin(len(prompt) - 1 + step) < bound, f"{text!r}: diverged at step {step} without a near-tie"
                break
            llm.eval([token])
        else:
            identical_runs += 1
        llm.reset()
        llm.eval(seq)
        theirs = np.array(llm.eval_logits, dtype=np.float32)
        assert np.abs(theirs - mine).max() < L3_REL_BOUND * np.abs(mine).max(), text
        for i in range(len(prompt) - 1, len(seq) - 1):
            total += 1
            if int(np.argmax(theirs[i])) == seq[i + 1]:
                agreed += 1
            else:
                assert margin(i) < bound, f"{text!r}: llama.cpp picks another token at {i} without a near-tie"
    assert agreed >= 0.9 * total, (agreed, total)
    assert identical_runs >= 2
