"""GGUF vocabularies beyond our own export tokenize as llama.cpp does.

Each test writes a tiny random llama-shaped GGUF (F32 tensors) with gguf-py, carrying
one vocabulary: byte-level BPE (`tokenizer.ggml.model = "gpt2"`) with `pre` gpt-2,
default (and absent), llama-bpe, qwen2 or starcoder, or SentencePiece (`llama`). The
engine (`_core.Engine`, rust/engine/src/load.rs `gguf_tokenizer`) turns the vocabulary
into tokenizer.json text, loaded back with `Tokenizer.from_json`.

* Fixed, hand-derived expectations (no llama.cpp needed): a LLaMA-3 vocabulary whose
  tokens are whole pre-token pieces (with `ignore_merges` each piece is one id, so the
  ids spell out llama.cpp's split), and a hand-scored SentencePiece vocabulary.
* Against llama.cpp (`llama_cpp.Llama(vocab_only=True).tokenize(..., add_bos=False,
  special=False)`), on vocabularies trained here and on the hand-made ones; skipped
  when llama-cpp-python is not installed.
"""

from __future__ import annotations

import numpy as np
import pytest

gguf = pytest.importorskip("gguf", reason="gguf-py is not installed")

from nanochat_ternary import _core  # noqa: E402
from nanochat_ternary.tokenizer import Tokenizer  # noqa: E402

SAMPLE = (
    "fn main() {\n    let x = 12345;\n    println!(\"{x:?}\");\n}\n"
    "I'M don't we'LL they've 3.14159 and 1234567\r\n\r\n  tabs\t\tand   spaces   \n"
    "Привет, мир! 你好世界。 مرحبا بالعالم 🦀🦀 naïve café Ωμέγα\n"
)
CORPUS = [
    "fn main() {\n    let value = 42;\n    println!(\"{value}\");\n}\n" * 3,
    "pub fn add(a: i32, b: i32) -> i32 {\n    a + b\n}\n" * 3,
    "The quick brown fox doesn't jump; it's lazy. I'm sure we'll see 2024 and 1999.\n" * 3,
    "Привет мир, как дела? Всё хорошо.\n" * 3,
    "你好世界，今天天气很好。\n" * 3,
    "مرحبا بالعالم\n" * 3,
    "naïve café résumé 🦀 crab\r\n\ttab\n" * 3,
    "let n = 12345 + 1234567 * 314159 - 123 + 45;\n" * 4,
]
BPE_PRES = ["gpt-2", "default", None, "llama-bpe", "qwen2", "starcoder"]
LLAMA3_CODE = "fn main() {\n    let x = 12345;\n}"


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable char table."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    table, n = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(0x100 + n)
            n += 1
    return table


B2U = _bytes_to_unicode()


def _bl(text: str) -> str:
    """Byte-level spelling of text."""
    return "".join(B2U[b] for b in text.encode("utf-8"))


def write_gguf(path, *, model: str, tokens: list[str], types: list[int], merges: list[str] | None = None,
               scores: list[float] | None = None, pre: str | None = None, add_space_prefix: bool | None = None,
               bos: int | None = None, eos: int | None = None, extra=None):
    """A 1-layer random llama (dim 64) carrying the given vocabulary (`extra(writer)` adds more keys)."""
    n, d, ff = len(tokens), 64, 128
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(128)
    w.add_embedding_length(d)
    w.add_block_count(1)
    w.add_feed_forward_length(ff)
    w.add_head_count(4)
    w.add_head_count_kv(4)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_vocab_size(n)
    w.add_tokenizer_model(model)
    if pre is not None:
        w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    if merges is not None:
        w.add_token_merges(merges)
    if scores is not None:
        w.add_token_scores(scores)
    if add_space_prefix is not None:
        w.add_add_space_prefix(add_space_prefix)
    if bos is not None:
        w.add_bos_token_id(bos)
    if eos is not None:
        w.add_eos_token_id(eos)
    if extra is not None:
        extra(w)
    rng = np.random.default_rng(0)

    def t(name, *shape, one=False):
        a = np.ones(shape, np.float32) if one else rng.normal(0, 0.05, shape).astype(np.float32)
        w.add_tensor(name, a)

    t("token_embd.weight", n, d)
    t("blk.0.attn_norm.weight", d, one=True)
    for m in ["attn_q", "attn_k", "attn_v", "attn_output"]:
        t(f"blk.0.{m}.weight", d, d)
    t("blk.0.ffn_norm.weight", d, one=True)
    t("blk.0.ffn_gate.weight", ff, d)
    t("blk.0.ffn_up.weight", ff, d)
    t("blk.0.ffn_down.weight", d, ff)
    t("output_norm.weight", d, one=True)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def ours(path) -> Tokenizer:
    """Our tokenizer of a GGUF, through the engine's loader and tokenizer.json."""
    json = _core.Engine(str(path), "f16").tokenizer_json()
    assert json is not None
    return Tokenizer.from_json(json)


def llama_cpp_tokens(path, text: str) -> list[int]:
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    return llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)


# ------------------------------------------------------------------ vocabularies


@pytest.fixture(scope="module")
def trained() -> Tokenizer:
    return Tokenizer.train(CORPUS, vocab_size=700)


@pytest.fixture(scope="module")
def bpe_vocab(trained):
    v = trained.gguf_vocab()
    return v["tokens"], v["merges"], v["token_types"]


def spm_from_bpe(trained):
    """A SentencePiece vocabulary derived from a trained byte-level BPE: its merged tokens
    (those that are whole UTF-8) spelled with U+2581 for spaces, scored -merge rank; every
    char of the corpus as a piece scored below all merges; <unk>, <s>, </s>, <0x00>..<0xFF>."""
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [2, 3, 3] + [6] * 256
    scores = [0.0] * len(tokens)
    seen = set(tokens)
    v = trained.gguf_vocab()
    for rank, merge in enumerate(v["merges"]):
        left, right = merge.split(" ")
        try:
            piece = bytes(trained.token_bytes(trained.token_to_id(left + right))).decode("utf-8")
        except UnicodeDecodeError:
            continue
        piece = piece.replace(" ", "\u2581")
        if piece not in seen and len(piece) > 1:
            seen.add(piece)
            tokens.append(piece)
            types.append(1)
            scores.append(-float(rank))
    chars = sorted({c for doc in CORPUS for c in doc.replace(" ", "\u2581")})
    for i, c in enumerate(chars):
        if c not in seen:
            seen.add(c)
            tokens.append(c)
            types.append(1)
            scores.append(-1.0e6 - i)
    return tokens, types, scores


# ------------------------------------------------------------------ fixed expectations


def llama3_piece_vocab():
    """256 byte tokens (id = byte) + the pieces llama.cpp's LLaMA-3 regex cuts LLAMA3_CODE into
    (worked out by hand: a space joins the letters after it, "() {\\n" is "()" + " {\\n", the
    4-space indent is 3 spaces + " let", 12345 is 123 + 45, ";\\n" stays together)."""
    pieces = ["fn", " main", "()", " {\n", "   ", " let", " x", " =", "123", "45", ";\n"]
    # "qz" only feeds one merge that the text never uses (llama.cpp wants a non-empty merges list).
    tokens = [B2U[b] for b in range(256)] + [_bl(p) for p in pieces] + ["qz", "<|begin_of_text|>", "<|end_of_text|>"]
    types = [1] * (256 + len(pieces) + 1) + [3, 3]
    expected = [256, 257, 258, 259, 260, 261, 262, 263, ord(" "), 264, 265, 266, ord("}")]
    return tokens, types, expected


def test_llama3_pieces_are_single_ids(tmp_path):
    tokens, types, expected = llama3_piece_vocab()
    path = write_gguf(tmp_path / "l3.gguf", model="gpt2", pre="llama-bpe", tokens=tokens, types=types, merges=["q z"],
                      bos=len(tokens) - 2, eos=len(tokens) - 1)
    tok = ours(path)
    assert tok.is_byte_level
    assert tok.encode(LLAMA3_CODE) == expected
    assert tok.decode(expected) == LLAMA3_CODE
    # Under gpt-2 (no ignore_merges) the same merge-less vocabulary gives one id per byte.
    path2 = write_gguf(tmp_path / "g2.gguf", model="gpt2", pre="gpt-2", tokens=tokens, types=types, merges=["q z"],
                       bos=len(tokens) - 2, eos=len(tokens) - 1)
    assert ours(path2).encode(LLAMA3_CODE) == list(LLAMA3_CODE.encode())


SPM_HAND = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + [
    "\u2581", "a", "b", "ab", "\u2581a", "\u2581ab", "ba", "aa"]
SPM_HAND_SCORES = [0.0] * 259 + [-12.0, -11.0, -10.5, -1.0, -2.0, -3.0, -0.5, -1.5]
SPM_HAND_TYPES = [2, 3, 3] + [6] * 256 + [1] * 8
SP, A, B, AB, SP_A, SP_AB, BA, AA = range(259, 267)


def test_spm_hand_vocabulary(tmp_path):
    path = write_gguf(tmp_path / "spm.gguf", model="llama", tokens=SPM_HAND, types=SPM_HAND_TYPES,
                      scores=SPM_HAND_SCORES, bos=1, eos=2)
    tok = ours(path)
    assert not tok.is_byte_level
    # "▁ab▁abab": "ba" (-0.5) first, then the first "ab", "▁a" on the second word, "▁ab".
    assert tok.encode("ab abab") == [SP_AB, SP_A, BA, B]
    # "▁aaa": the two "aa" tie; the leftmost wins.
    assert tok.encode("aaa") == [SP, AA, A]
    # "é" is no piece: its UTF-8 bytes.
    assert tok.encode("ab é") == [SP_AB, SP, 3 + 0xC3, 3 + 0xA9]
    for text in ["ab abab", "aaa", "ab é", " b\na "]:
        assert tok.decode(tok.encode(text)) == text
    assert tok.token_bytes(SP_AB) == b" ab" and tok.token_bytes(3 + 0xC3) == b"\xc3"
    no_prefix = ours(write_gguf(tmp_path / "spm0.gguf", model="llama", tokens=SPM_HAND, types=SPM_HAND_TYPES,
                                scores=SPM_HAND_SCORES, add_space_prefix=False, bos=1, eos=2))
    assert no_prefix.encode("ab abab") == [AB, SP_A, BA, B]
    assert no_prefix.decode([AB, SP_A, BA, B]) == "ab abab"


def test_bad_metadata_is_a_clear_error(tmp_path, bpe_vocab):
    tokens, merges, types = bpe_vocab
    cases = [
        (dict(model="gpt2", pre="no-such-split", tokens=tokens, types=types, merges=merges), "no-such-split"),
        (dict(model="bert", pre="gpt-2", tokens=tokens, types=types, merges=merges), "bert"),
        (dict(model="llama", tokens=SPM_HAND, types=SPM_HAND_TYPES, scores=SPM_HAND_SCORES[:-1]), "scores"),
        (dict(model="llama", tokens=SPM_HAND, types=SPM_HAND_TYPES), "scores"),
        (dict(model="llama", tokens=SPM_HAND, types=SPM_HAND_TYPES,
              scores=SPM_HAND_SCORES[:-1] + [float("inf")]), "inf"),
        (dict(model="llama", tokens=SPM_HAND[:-1] + ["ab"], types=SPM_HAND_TYPES, scores=SPM_HAND_SCORES), "twice"),
        (dict(model="gpt2", pre="qwen2", tokens=tokens, types=types, merges=[*merges, "zzq qzz"]), "(?i)merge"),
        # Keys of the wrong GGUF type.
        (dict(model="llama", tokens=SPM_HAND, types=SPM_HAND_TYPES,
              extra=lambda w: w.add_array("tokenizer.ggml.scores", [0] * len(SPM_HAND))), "scores must be a float32"),
        (dict(model="llama", tokens=SPM_HAND, types=SPM_HAND_TYPES, scores=SPM_HAND_SCORES,
              extra=lambda w: w.add_string("tokenizer.ggml.add_space_prefix", "yes")), "add_space_prefix must be a bool"),
        (dict(model="gpt2", tokens=tokens, types=types, merges=merges,
              extra=lambda w: w.add_uint32("tokenizer.ggml.pre", 2)), "pre must be a string"),
    ]
    for i, (kw, message) in enumerate(cases):
        path = write_gguf(tmp_path / f"bad{i}.gguf", **kw)
        with pytest.raises(ValueError, match=message):
            _core.Engine(str(path), "f16")


# ------------------------------------------------------------------ against llama.cpp


@pytest.mark.parametrize("pre", BPE_PRES)
def test_bpe_matches_llama_cpp(tmp_path, bpe_vocab, pre):
    tokens, merges, types = bpe_vocab
    path = write_gguf(tmp_path / "bpe.gguf", model="gpt2", pre=pre, tokens=tokens, types=types, merges=merges,
                      bos=0, eos=0)
    tok = ours(path)
    for text in [SAMPLE, LLAMA3_CODE, *CORPUS[:2]]:
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        assert b"".join(tok.token_bytes(i) for i in ids) == text.encode()
    for text in [SAMPLE, LLAMA3_CODE, CORPUS[2], CORPUS[6]]:
        assert tok.encode(text) == llama_cpp_tokens(path, text), (pre, text)


def test_llama3_piece_vocab_matches_llama_cpp(tmp_path):
    tokens, types, expected = llama3_piece_vocab()
    path = write_gguf(tmp_path / "l3.gguf", model="gpt2", pre="llama-bpe", tokens=tokens, types=types, merges=["q z"],
                      bos=len(tokens) - 2, eos=len(tokens) - 1)
    assert llama_cpp_tokens(path, LLAMA3_CODE) == expected
    assert ours(path).encode(SAMPLE) == llama_cpp_tokens(path, SAMPLE)


@pytest.mark.parametrize("add_space_prefix", [None, True, False])
def test_spm_matches_llama_cpp(tmp_path, trained, add_space_prefix):
    tokens, types, scores = spm_from_bpe(trained)
    path = write_gguf(tmp_path / "spm.gguf", model="llama", tokens=tokens, types=types, scores=scores,
                      add_space_prefix=add_space_prefix, bos=1, eos=2)
    tok = ours(path)
    for text in [SAMPLE, *CORPUS]:
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        assert tok.encode(text) == llama_cpp_tokens(path, text)
    # Text outside the vocabulary (Ω, ü) falls back to bytes in both.
    assert tok.encode("Ωü") == llama_cpp_tokens(path, "Ωü")


def test_spm_hand_vocabulary_matches_llama_cpp(tmp_path):
    path = write_gguf(tmp_path / "spm.gguf", model="llama", tokens=SPM_HAND, types=SPM_HAND_TYPES,
                      scores=SPM_HAND_SCORES, bos=1, eos=2)
    tok = ours(path)
    for text in ["ab abab", "aaa", "ab é", "abababa baba aab", " b\na "]:
        assert tok.encode(text) == llama_cpp_tokens(path, text), text
