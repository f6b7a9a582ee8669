"""nanochat_ternary.tokenizer: training, round trips, special tokens, token bytes,
HF tokenizer.json loading (a GPT-2-style file written here), GGUF vocab round trip,
and clear errors on bad input."""

import json
import threading

import numpy as np
import pytest

from nanochat_ternary.tokenizer import SPECIAL_TOKENS, Tokenizer

CODE = '''use std::collections::HashMap;

/// Counts words.
pub fn count_words(text: &str) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for word in text.split_whitespace() {
        *counts.entry(word.to_string()).or_insert(0) += 1;
    }
    counts
}
'''
TEXTS = [CODE.replace("count_words", f"count_{i}") for i in range(30)] + [
    f"The quick brown fox {i} jumps over the lazy dog. Ünïcödé café {i}!" for i in range(30)
]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.train(TEXTS, vocab_size=500)


def test_special_tokens_come_first(tok):
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    assert tok.bos_id == 0
    assert tok.special_tokens() == list(enumerate(SPECIAL_TOKENS))
    assert 256 + len(SPECIAL_TOKENS) < tok.vocab_size <= 500


@pytest.mark.parametrize("text", ["hello world", "Ünïcödé — 日本語 🦀 \x00\x7f", CODE, "", "  \n\t  ",
                                  "never seen: zxqj ⊕ 42"])
def test_round_trip_and_token_bytes(tok, text):
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert b"".join(tok.token_bytes(i) for i in ids) == text.encode("utf-8")


def test_special_tokens_in_text_but_none_added(tok):
    ids = tok.encode("a<|endoftext|>b<|fim_prefix|>")
    assert ids.count(0) == 1 and ids[-1] == 2 and ids[0] != 0
    assert tok.token_bytes(0) == b"<|endoftext|>"
    assert tok.id_to_token(1) == "<|pad|>"


def test_encode_batch_matches_encode_and_releases_the_gil(tok):
    batch = tok.encode_batch(TEXTS)
    assert all(isinstance(a, np.ndarray) and a.dtype == np.uint32 for a in batch)
    assert [a.tolist() for a in batch] == [tok.encode(t) for t in TEXTS]
    # Another Python thread makes progress while a big batch encodes.
    ticks = []
    stop = threading.Event()

    def tick():
        while not stop.is_set():
            ticks.append(1)
            stop.wait(0.001)

    t = threading.Thread(target=tick)
    t.start()
    tok.encode_batch([CODE * 20] * 400)
    stop.set()
    t.join()
    assert len(ticks) > 10  # with the GIL held it would get at most one or two


def test_training_is_deterministic():
    a = Tokenizer.train(TEXTS, vocab_size=400)
    b = Tokenizer.train(iter(TEXTS), vocab_size=400)
    assert a.to_json() == b.to_json()


def test_save_is_atomic_and_loads_back(tok, tmp_path):
    path = tmp_path / "tokenizer.json"
    tok.save(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokenizer.json"]
    again = Tokenizer.from_file(path)
    assert again.encode(CODE) == tok.encode(CODE)
    assert again.to_json() == tok.to_json()


def test_train_files_equals_train(tmp_path):
    paths = []
    for i, text in enumerate(TEXTS):
        p = tmp_path / f"{i}.txt"
        p.write_text(text, encoding="utf-8")
        paths.append(p)
    assert Tokenizer.train_files(paths, vocab_size=400).to_json() == Tokenizer.train(TEXTS, vocab_size=400).to_json()
    with pytest.raises(OSError, match="missing"):
        Tokenizer.train_files([*paths, tmp_path / "missing.txt"], vocab_size=400)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte table, written out independently of the Rust one."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def _gpt2_style_json() -> str:
    """A tiny tokenizer.json in the layout of GPT-2's (model BPE, ByteLevel everything, one special)."""
    table = _bytes_to_unicode()
    vocab = {table[b]: i for i, b in enumerate(range(256))}
    merges = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("Ġ", "w"), ("o", "r")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return json.dumps({
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": vocab["<|endoftext|>"], "content": "<|endoftext|>", "single_word": False,
                          "lstrip": False, "rstrip": False, "normalized": True, "special": True}],
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False,
                  "vocab": vocab, "merges": [f"{a} {b}" for a, b in merges]},
    })


def test_loads_a_gpt2_style_tokenizer_json(tmp_path):
    path = tmp_path / "gpt2.json"
    path.write_text(_gpt2_style_json(), encoding="utf-8")
    tok = Tokenizer.from_file(path)
    assert tok.vocab_size == 256 + 5 + 1
    ids = tok.encode("a the world<|endoftext|>")
    assert [tok.id_to_token(i) for i in ids] == ["a", "Ġthe", "Ġw", "or", "l", "d", "<|endoftext|>"]
    assert tok.bos_id == 261
    assert tok.decode(ids) == "a the world<|endoftext|>"
    assert tok.token_bytes(tok.token_to_id("Ġthe")) == b" the"
    # The legacy "a b" merges export as GGUF and come back encoding identically.
    vocab = tok.gguf_vocab()
    assert vocab["merges"] == ["Ġ t", "h e", "Ġt he", "Ġ w", "o r"]
    back = Tokenizer.from_gguf_vocab(vocab["tokens"], vocab["merges"], vocab["token_types"])
    assert back.encode("a the world<|endoftext|>") == ids


def test_gguf_vocab_round_trip(tok):
    v = tok.gguf_vocab()
    assert (v["model"], v["pre"], v["bos_id"], v["eos_id"], v["pad_id"]) == ("gpt2", "gpt-2", 0, 0, 1)
    assert len(v["tokens"]) == len(v["token_types"]) == tok.vocab_size
    assert v["token_types"][:5] == [3] * 5 and set(v["token_types"][5:]) == {1}
    back = Tokenizer.from_gguf_vocab(v["tokens"], v["merges"], v["token_types"])
    for text in TEXTS + ["x<|endoftext|>y 🦀"]:
        assert back.encode(text) == tok.encode(text)
    with pytest.raises(ValueError, match=r"tokenizer.ggml.pre \"no-such-split\".*llama-bpe.*qwen2"):
        Tokenizer.from_gguf_vocab(v["tokens"], v["merges"], v["token_types"], pre="no-such-split")
    with pytest.raises(ValueError, match="tokenizer.ggml.model"):
        Tokenizer.from_gguf_vocab(v["tokens"], v["merges"], v["token_types"], model="bert")
    # Other llama.cpp splits load, stay byte-level, and round-trip every text.
    for pre in ["llama-bpe", "qwen2", "default", ""]:
        other = Tokenizer.from_gguf_vocab(v["tokens"], v["merges"], v["token_types"], pre=pre)
        assert other.is_byte_level
        for text in TEXTS[:3] + ["x 12345 🦀\r\n  y"]:
            assert other.decode(other.encode(text)) == text
    with pytest.raises(ValueError, match="merge"):
        Tokenizer.from_gguf_vocab(v["tokens"], [*v["merges"], "nospace"], v["token_types"])


def test_sentencepiece_gguf_vocab_token_bytes():
    # "llama" (SentencePiece) vocabulary: <unk>, <s>, </s>, 256 byte tokens, then pieces.
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + ["\u2581", "a", "b", "ab", "\u2581ab"]
    types = [2, 3, 3] + [6] * 256 + [1] * 5
    scores = [0.0] * 259 + [-10.0, -11.0, -12.0, -1.0, -2.0]
    tok = Tokenizer.from_gguf_vocab(tokens, [], types, model="llama", pre="", scores=scores)
    assert not tok.is_byte_level
    sp, ab, sp_ab = 259, 262, 263
    # " ab ab" -> "▁▁ab▁ab": "ab" (-1) twice, then "▁ab" (-2) leftmost first; "é" is two bytes.
    assert tok.encode(" ab abé") == [sp, sp_ab, sp_ab, 3 + 0xC3, 3 + 0xA9]
    assert tok.decode([sp, sp_ab, sp_ab, 3 + 0xC3, 3 + 0xA9]) == " ab abé"
    assert tok.token_bytes(sp_ab) == b" ab" and tok.token_bytes(3 + 0x41) == b"A" and tok.token_bytes(1) == b"<s>"
    no_prefix = Tokenizer.from_gguf_vocab(tokens, [], types, model="llama", scores=scores, pre="",
                                          add_space_prefix=False)
    assert no_prefix.encode("ab ab") == [ab, sp_ab]
    with pytest.raises(ValueError, match="scores"):
        Tokenizer.from_gguf_vocab(tokens, [], types, model="llama", pre="", scores=scores[:-1])
    with pytest.raises(ValueError, match="scores"):
        Tokenizer.from_gguf_vocab(tokens, [], types, model="llama", pre="")
    with pytest.raises(ValueError, match="NaN"):
        Tokenizer.from_gguf_vocab(tokens, [], types, model="llama", pre="", scores=[float("nan")] * len(tokens))


def test_bad_input_raises_clear_errors(tok, tmp_path):
    with pytest.raises(OSError, match="nope.json"):
        Tokenizer.from_file(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match="bad.json"):
        Tokenizer.from_file(bad)
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ValueError, match="UTF-8"):
        Tokenizer.from_file(binary)
    with pytest.raises(ValueError, match="unknown token id"):
        tok.decode([tok.vocab_size])
    with pytest.raises(ValueError, match="unknown token id"):
        tok.token_bytes(10**6)
    with pytest.raises(ValueError, match="vocab_size"):
        Tokenizer.train(TEXTS, vocab_size=100)
    with pytest.raises(ValueError, match="twice"):
        Tokenizer.train(TEXTS, vocab_size=400, special_tokens=["<a>", "<a>"])
    with pytest.raises(TypeError):
        Tokenizer.train([b"bytes"], vocab_size=400)  # type: ignore[list-item]
    no_bos = Tokenizer.train(TEXTS, vocab_size=400, special_tokens=["<x>"])
    with pytest.raises(ValueError, match="<\\|endoftext\\|>"):
        no_bos.bos_id
