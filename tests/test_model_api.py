"""`TernaryModel`: loading, generate/stream semantics, stop strings, streaming UTF-8, bad input, save, CLI."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from nanochat_ternary import _core, export
from nanochat_ternary import generate as cli
from nanochat_ternary.gguf import GGUFReader, GGUFWriter

from _export_fixtures import small_model, tokenizer_json

if not hasattr(_core, "Engine"):
    pytest.skip("_core.Engine is not built yet", allow_module_level=True)

from nanochat_ternary.model import TernaryModel, _StopFilter, _TextAssembler  # noqa: E402

torch.set_num_threads(1)
PROMPT = "fn main() {"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("api")
    tok = tokenizer_json()
    llama = small_model(seed=11)
    mhc = small_model(seed=12, mhc_streams=2, ffn_activation="relu2", tie_embeddings=False)
    return {
        "gguf": export.export_gguf(llama, tok, root / "llama.gguf"),
        "hf": export.export_hf(llama, tok, root / "llama-hf"),
        "mhc": export.export_gguf(mhc, tok, root / "mhc.gguf"),
        "root": root,
    }


@pytest.fixture(scope="module")
def model(files):
    return TernaryModel.from_pretrained(files["gguf"])


def test_load_both_formats_and_repr(files, model):
    hf = TernaryModel.from_pretrained(files["hf"])
    mhc = TernaryModel.from_pretrained(files["mhc"])
    assert model.architecture == "llama" and mhc.architecture == "nanochat-ternary"
    assert model.config == hf.config and mhc.config.mhc_streams == 2
    assert model.context_length == 128 and model.vocab_size == 320
    assert model.eos_token_id == 0
    text = repr(model)
    for part in ("llama", "arch=", "params=", f"{model.param_count / 1e6:.1f}M", "llama.gguf".removesuffix(".gguf")):
        assert part in text
    assert "nanochat-ternary" in repr(mhc)


def test_generate_types_and_greedy_determinism(model):
    a = model.generate(PROMPT, max_new_tokens=12)
    assert isinstance(a, str)
    assert model.generate(PROMPT, max_new_tokens=12) == a
    batch = model.generate([PROMPT, "let x", PROMPT], max_new_tokens=12)
    assert isinstance(batch, list) and len(batch) == 3
    assert batch[0] == batch[2] == a
    assert batch[1] == model.generate("let x", max_new_tokens=12)


def test_stream_joins_to_generate(model):
    pieces = list(model.stream(PROMPT, max_new_tokens=20))
    assert all(isinstance(p, str) and p for p in pieces)
    assert "".join(pieces) == model.generate(PROMPT, max_new_tokens=20)


def test_sampling_is_seeded(model):
    kw = dict(max_new_tokens=24, do_sample=True, temperature=1.5)
    a = model.generate(PROMPT, seed=1, **kw)
    assert model.generate(PROMPT, seed=1, **kw) == a
    assert "".join(model.stream(PROMPT, seed=1, **kw)) == a
    others = {model.generate(PROMPT, seed=s, **kw) for s in range(2, 6)}
    assert others - {a}, "different seeds never changed the sample"
    # top_k=1 is greedy whatever the temperature.
    assert model.generate(PROMPT, max_new_tokens=24, do_sample=True, temperature=2.0, top_k=1, seed=3) == model.generate(
        PROMPT, max_new_tokens=24
    )


def test_streamers(model):
    got = []
    text = model.generate(PROMPT, max_new_tokens=16, streamer=got.append)
    assert "".join(got) == text

    class Collector:
        def __init__(self):
            self.parts, self.ended = [], False

        def put(self, piece):
            self.parts.append(piece)

        def end(self):
            self.ended = True

    c = Collector()
    assert model.generate(PROMPT, max_new_tokens=16, streamer=c) == text
    assert "".join(c.parts) == text and c.ended
    with pytest.raises(ValueError, match="single prompt"):
        model.generate([PROMPT, PROMPT], streamer=got.append)


def test_stop_strings(model):
    full = model.generate(PROMPT, max_new_tokens=40)
    assert len(full) > 6
    stop = full[3:6]
    cut = full[: full.find(stop)]
    assert model.generate(PROMPT, max_new_tokens=40, stop=stop) == cut
    assert model.generate(PROMPT, max_new_tokens=40, stop=["\x00never", stop]) == cut
    pieces = list(model.stream(PROMPT, max_new_tokens=40, stop=stop))
    assert "".join(pieces) == cut
    assert model.generate([PROMPT, PROMPT], max_new_tokens=40, stop=stop) == [cut, cut]
    assert model.generate(PROMPT, max_new_tokens=40, stop="\x00never") == full


def test_stop_filter_holds_back_prefixes():
    f = _StopFilter(["\n}"])
    assert f.feed("a\n") == "a"  # "\n" could start the stop string
    assert f.feed("x") == "\nx"
    assert f.feed("\n") == ""
    assert f.feed("}rest") == "" and f.stopped
    g = _StopFilter(["ab"])
    assert g.feed("xa") == "x" and g.flush() == "a"


def test_streaming_never_splits_utf8(model):
    ids = model.encode("€✓", add_bos=False)  # multi-byte characters not merged by the fixture tokenizer
    assert len(ids) > 2
    text = _TextAssembler(model._tokens)
    pieces = [text.add(i) for i in ids] + [text.finish()]
    assert "".join(pieces) == "€✓"
    assert all("\ufffd" not in p for p in pieces)
    assert pieces[0] == ""  # the first byte of "€" alone is not emitted
    # A dangling lead byte at the end becomes U+FFFD, never a broken string.
    text = _TextAssembler(model._tokens)
    assert text.add(ids[0]) == "" and text.finish() == "\ufffd"


def test_prompt_longer_than_context(model):
    long_prompt = "fn main() { " * 200
    assert len(model.encode(long_prompt)) > model.context_length
    with pytest.raises(ValueError, match="truncate=True"):
        model.generate(long_prompt, max_new_tokens=8)
    with pytest.raises(ValueError, match="truncate=True"):
        list(model.stream(long_prompt, max_new_tokens=8))
    out = model.generate(long_prompt, max_new_tokens=8, truncate=True)
    assert isinstance(out, str)
    # Truncation keeps the tail: the same as giving the tail directly.
    ids = model.encode(long_prompt)[-(model.context_length - 8):]
    assert ids == model._prepare(long_prompt, 8, None, None, None, None, None, None, 0, True, True)[0]
    # Without max_new_tokens the default is capped by the room left in the context.
    _, params = model._prepare("x " * 50, None, None, None, None, None, None, None, 0, False, True)
    assert params.max_new_tokens == model.context_length - len(model.encode("x " * 50))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(max_new_tokens=0), "max_new_tokens"),
        (dict(max_new_tokens=-3), "max_new_tokens"),
        (dict(max_new_tokens=128), "no room"),
        (dict(max_new_tokens=2.5), "max_new_tokens"),
        (dict(temperature=-1.0), "temperature"),
        (dict(temperature=float("nan")), "temperature"),
        (dict(do_sample=True, temperature=0.0), "temperature > 0"),
        (dict(top_k=-1), "top_k"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(min_p=1.0), "min_p"),
        (dict(repetition_penalty=0.0), "repetition_penalty"),
        (dict(seed=-1), "seed"),
        (dict(no_repeat_ngram_size=-1), "no_repeat_ngram_size"),
        (dict(no_repeat_ngram_size=2.5), "no_repeat_ngram_size"),
        (dict(stop=""), "stop"),
        (dict(stop=[None]), "stop"),
    ],
)
def test_invalid_generation_arguments(model, kwargs, match):
    with pytest.raises(ValueError, match=match):
        model.generate(PROMPT, **kwargs)
    with pytest.raises(ValueError, match=match):
        model.stream(PROMPT, **kwargs)


def test_empty_and_wrong_prompts(model):
    with pytest.raises(ValueError, match="empty"):
        model.generate("")
    with pytest.raises(ValueError, match="empty"):
        model.generate([])
    with pytest.raises(TypeError):
        model.generate([PROMPT, 3])
    with pytest.raises(TypeError):
        model.stream([PROMPT])


def test_bad_files(files, tmp_path):
    with pytest.raises(FileNotFoundError):
        TernaryModel.from_pretrained(tmp_path / "missing.gguf")
    data = files["gguf"].read_bytes()
    (tmp_path / "truncated.gguf").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError):
        TernaryModel.from_pretrained(tmp_path / "truncated.gguf")
    (tmp_path / "garbage.gguf").write_bytes(b"not a gguf file at all")
    with pytest.raises(ValueError):
        TernaryModel.from_pretrained(tmp_path / "garbage.gguf")
    # Unknown architecture: rewrite the metadata of a valid file.
    r = GGUFReader(files["gguf"])
    w = GGUFWriter(tmp_path / "foreign.gguf")
    for key, value in r.metadata.items():
        types = r.metadata_types[key]
        w.add(key, "gpt-neox" if key == "general.architecture" else value, types if len(types) > 1 else types[0])
    for t in r.tensors:
        if t.ggml_type == "F32":
            w.add_tensor(t.name, r.tensor(t.name))
        else:
            w.add_tensor(t.name, r.tensor_bytes(t.name), t.ggml_type, shape=t.shape)
    w.write()
    with pytest.raises(ValueError, match="gpt-neox"):
        TernaryModel.from_pretrained(tmp_path / "foreign.gguf")
    # HF directory whose tokenizer has more tokens than the model: mismatched tokenizer.
    bad = tmp_path / "bad-hf"
    shutil.copytree(files["hf"], bad)
    spec = json.loads((bad / "tokenizer.json").read_text())
    for i in range(400):
        spec["model"]["vocab"][f"extra{i}"] = len(spec["model"]["vocab"])
    (bad / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(ValueError):
        TernaryModel.from_pretrained(bad)
    # HF directory with a corrupt checkpoint.
    corrupt = tmp_path / "corrupt-hf"
    shutil.copytree(files["hf"], corrupt)
    blob = bytearray((corrupt / "model.safetensors").read_bytes())
    blob[-5] ^= 0xFF
    (corrupt / "model.safetensors").write_bytes(bytes(blob))
    with pytest.raises(ValueError):
        TernaryModel.from_pretrained(corrupt)


def test_save_pretrained_round_trip(files, model, tmp_path):
    expected = model.generate(PROMPT, max_new_tokens=10)
    out = model.save_pretrained(tmp_path / "saved")
    again = TernaryModel.from_pretrained(out)
    assert again.generate(PROMPT, max_new_tokens=10) == expected
    hf = TernaryModel.from_pretrained(files["hf"])
    out_hf = hf.save_pretrained(tmp_path / "saved-hf")
    assert sorted(p.name for p in out_hf.iterdir()) == ["config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    assert TernaryModel.from_pretrained(out_hf).generate(PROMPT, max_new_tokens=10) == hf.generate(PROMPT, max_new_tokens=10)


def test_token_healing(files, model, tmp_path):
    # The prompt's last token is dropped and the first new token is the most likely of those whose
    # text starts with it; the returned text continues the prompt as given.
    ids = model.encode(PROMPT)
    prefix = model._tokens.token_bytes(ids[-1])
    special = {i for i, _ in model._tokens.tokenizer.special_tokens()}
    allowed = [i for i in range(model.vocab_size) if i not in special and model._tokens.token_bytes(i).startswith(prefix)]
    assert ids[-1] in allowed
    logits = model.logits(ids[:-1])[-1]
    first = max(allowed, key=lambda i: (logits[i], -i))
    rest = model._engine.generate([ids[:-1] + [first]], 7, stop_ids=[model.eos_token_id])[0]
    text = b"".join(model._tokens.token_bytes(i) for i in [first, *rest] if i != model.eos_token_id)
    expected = text[len(prefix) :].decode("utf-8", errors="replace")
    healed = model.generate(PROMPT, max_new_tokens=8, token_healing=True)
    assert healed == expected
    assert "".join(model.stream(PROMPT, max_new_tokens=8, token_healing=True)) == healed
    assert model.generate([PROMPT, PROMPT], max_new_tokens=8, token_healing=True) == [healed, healed]
    # Off by default; a generation_config turns it on; a bad value is a clear error.
    assert model.generate(PROMPT, max_new_tokens=8) == model.generate(PROMPT, max_new_tokens=8, token_healing=False)
    target = tmp_path / "hf-heal"
    shutil.copytree(files["hf"], target)
    gen = json.loads((target / "generation_config.json").read_text())
    (target / "generation_config.json").write_text(json.dumps({**gen, "token_healing": True}))
    assert TernaryModel.from_pretrained(target).generate(PROMPT, max_new_tokens=8) == healed
    (target / "generation_config.json").write_text(json.dumps({**gen, "token_healing": "yes"}))
    with pytest.raises(ValueError, match="token_healing"):
        TernaryModel.from_pretrained(target).generate(PROMPT, max_new_tokens=8)
    # A prompt of one token (after BOS) has nothing to heal: the same as without.
    one = model._tokens.tokenizer.decode([ids[-1]])
    assert model.generate(one, max_new_tokens=6, token_healing=True) == model.generate(one, max_new_tokens=6)


def test_no_repeat_ngram_size(files, model, tmp_path):
    ids = model.encode(PROMPT)
    eos = model.eos_token_id
    for n in (1, 2, 3):
        out = model._engine.generate([ids], 40, stop_ids=[eos], no_repeat_ngram_size=n)[0]
        seq = ids + [i for i in out if i != eos]
        grams = [tuple(seq[i : i + n]) for i in range(len(seq) - n + 1)]
        # The prompt may repeat itself; nothing the model added repeats an n-gram seen before.
        for end in range(len(ids), len(seq)):
            assert tuple(seq[end + 1 - n : end + 1]) not in grams[: end + 1 - n], (n, seq)
        text = model._text(out)
        assert model.generate(PROMPT, max_new_tokens=40, no_repeat_ngram_size=n) == text
        assert "".join(model.stream(PROMPT, max_new_tokens=40, no_repeat_ngram_size=n)) == text
    target = tmp_path / "hf-ngram"
    shutil.copytree(files["hf"], target)
    gen = json.loads((target / "generation_config.json").read_text())
    (target / "generation_config.json").write_text(json.dumps({**gen, "no_repeat_ngram_size": 2}))
    assert TernaryModel.from_pretrained(target).generate(PROMPT, max_new_tokens=40) == model.generate(
        PROMPT, max_new_tokens=40, no_repeat_ngram_size=2
    )
    assert cli.main([PROMPT, "--model", str(files["gguf"]), "--max-new-tokens", "40", "--no-stream", "--no-repeat-ngram-size", "2"]) == 0


def test_generation_config_defaults(files, tmp_path):
    target = tmp_path / "hf-gen"
    shutil.copytree(files["hf"], target)
    gen = json.loads((target / "generation_config.json").read_text())
    gen["max_new_tokens"] = 5
    (target / "generation_config.json").write_text(json.dumps(gen))
    m = TernaryModel.from_pretrained(target)
    assert m.generation_config["max_new_tokens"] == 5
    assert m._prepare(PROMPT, None, None, None, None, None, None, None, 0, False, True)[1].max_new_tokens == 5


def test_cli(files, capsys):
    assert cli.main([PROMPT, "--model", str(files["gguf"]), "--max-new-tokens", "8", "--no-stream"]) == 0
    out = capsys.readouterr().out
    assert out.rstrip("\n") == TernaryModel.from_pretrained(files["gguf"]).generate(PROMPT, max_new_tokens=8)
    assert cli.main([PROMPT, "--model", str(files["gguf"]), "--max-new-tokens", "8"]) == 0
    assert capsys.readouterr().out == out
    assert cli.main([PROMPT, "--model", str(files["gguf"]), "--max-new-tokens", "8", "--no-stream", "--token-healing"]) == 0
    healed = TernaryModel.from_pretrained(files["gguf"]).generate(PROMPT, max_new_tokens=8, token_healing=True)
    assert capsys.readouterr().out.rstrip("\n") == healed
    assert cli.main([PROMPT, "--model", str(files["root"] / "nope.gguf")]) == 1
    assert "error:" in capsys.readouterr().err
    assert cli.main([PROMPT, "--model", str(files["gguf"]), "--top-p", "2"]) == 1
    with pytest.raises(SystemExit) as e:
        cli.main(["--max-new-tokens", "x"])
    assert e.value.code == 2
