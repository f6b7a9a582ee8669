"""Model resolution: local paths, the hub cache layout offline, and the zoo's sha256 pinning.

No network: the hub cache (``models--org--name/refs`` + ``snapshots/<commit>/``)
is built by hand in a temp dir and read with ``local_files_only`` or
``HF_HUB_OFFLINE=1``.
"""

from __future__ import annotations

import hashlib
import shutil

import pytest
import torch

from nanochat_ternary import _core, export, hub, zoo
from nanochat_ternary.model import TernaryModel

from _export_fixtures import small_model, tokenizer_json

torch.set_num_threads(1)

COMMIT = "0123456789abcdef0123456789abcdef01234567"
needs_engine = pytest.mark.skipif(not hasattr(_core, "Engine"), reason="_core.Engine is not built yet")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A small model exported once as GGUF and as an HF directory."""
    root = tmp_path_factory.mktemp("exported")
    model = small_model(seed=5)
    tok = tokenizer_json()
    gguf_path = export.export_gguf(model, tok, root / "model.gguf")
    hf_dir = export.export_hf(model, tok, root / "hf")
    return gguf_path, hf_dir


def make_hub_cache(cache, repo_id, files, commit=COMMIT, ref="main"):
    """The layout huggingface_hub writes: refs/<ref> holds the commit, snapshots/<commit>/ the files."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / ref).write_text(commit)
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True, exist_ok=True)
    for f in files:
        shutil.copy(f, snap / f.name)
    return snap


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def registry():
    """Registers entries for one test and removes them afterwards."""
    added = []

    def add(name, value, default=False):
        zoo.register(name, value, default=default)
        added.append(name)

    before = zoo.default_name()
    yield add
    for name in added:
        zoo.unregister(name)
    zoo.set_default(before)


# --------------------------------------------------------------------------- local paths


def test_local_paths(tmp_path, exported):
    gguf_path, hf_dir = exported
    assert hub.resolve(gguf_path).path == gguf_path
    assert hub.resolve(str(hf_dir)).path == hf_dir
    assert hub.resolve(hf_dir).source == "local"
    one = tmp_path / "one"
    one.mkdir()
    shutil.copy(gguf_path, one / "x.gguf")
    assert hub.resolve(one).path == one / "x.gguf"
    shutil.copy(gguf_path, one / "y.gguf")
    with pytest.raises(ValueError, match="several .gguf"):
        hub.resolve(one)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="holds no model"):
        hub.resolve(empty)
    with pytest.raises(ValueError, match="not a .gguf"):
        hub.resolve(hf_dir / "config.json")
    with pytest.raises(FileNotFoundError, match="not a local file"):
        hub.resolve(tmp_path / "nope")
    with pytest.raises(ValueError, match="empty"):
        hub.resolve("")


def test_hub_id_syntax():
    assert hub.is_hub_id("org/name") and hub.is_hub_id("a-b/c.d_e")
    assert not hub.is_hub_id("name") and not hub.is_hub_id("a/b/c") and not hub.is_hub_id("../x") and not hub.is_hub_id("a/..")


# --------------------------------------------------------------------------- hub cache offline


def test_hub_cache_offline_local_files_only(tmp_path, exported):
    gguf_path, _ = exported
    snap = make_hub_cache(tmp_path / "cache", "org/tiny", [gguf_path])
    found = hub.resolve("org/tiny", cache_dir=tmp_path / "cache", local_files_only=True)
    assert found.source == "hub" and found.path == snap / "model.gguf" and found.name == "org/tiny"
    by_commit = hub.resolve("org/tiny", revision=COMMIT, cache_dir=tmp_path / "cache", local_files_only=True)
    assert by_commit.path == found.path
    with pytest.raises(FileNotFoundError, match="not in the hub cache"):
        hub.resolve("org/tiny", revision="v2", cache_dir=tmp_path / "cache", local_files_only=True)
    with pytest.raises(FileNotFoundError, match="org/other"):
        hub.resolve("org/other", cache_dir=tmp_path / "cache", local_files_only=True)


def test_hub_cache_offline_env(tmp_path, exported, monkeypatch):
    _, hf_dir = exported
    files = [hf_dir / n for n in ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json")]
    snap = make_hub_cache(tmp_path / "cache", "org/hfdir", files)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub.offline()
    assert hub.resolve("org/hfdir", cache_dir=tmp_path / "cache").path == snap
    with pytest.raises(FileNotFoundError, match="downloads are disabled"):
        hub.resolve("org/missing", cache_dir=tmp_path / "cache")


# --------------------------------------------------------------------------- zoo


def test_zoo_hub_entry_verified(tmp_path, exported, registry):
    gguf_path, _ = exported
    snap = make_hub_cache(tmp_path / "cache", "org/zoo-model", [gguf_path])
    registry("test-zoo", {"hub": "org/zoo-model", "revision": COMMIT, "files": {"model.gguf": sha256(gguf_path)}})
    found = hub.resolve("test-zoo", cache_dir=tmp_path / "cache", local_files_only=True)
    assert found.source == "zoo" and found.path == snap / "model.gguf"
    with pytest.raises(ValueError, match="pinned"):
        hub.resolve("test-zoo", revision="main", cache_dir=tmp_path / "cache", local_files_only=True)


def test_zoo_sha256_mismatch_is_an_error(tmp_path, exported, registry):
    gguf_path, _ = exported
    make_hub_cache(tmp_path / "cache", "org/zoo-bad", [gguf_path])
    registry("test-zoo-bad", {"hub": "org/zoo-bad", "revision": COMMIT, "files": {"model.gguf": "0" * 64}})
    with pytest.raises(zoo.ZooChecksumError, match="sha256"):
        hub.resolve("test-zoo-bad", cache_dir=tmp_path / "cache", local_files_only=True)
    # A corrupted local copy is caught too.
    local = tmp_path / "local"
    local.mkdir()
    data = bytearray(gguf_path.read_bytes())
    registry("test-zoo-local", {"path": str(local), "files": {"model.gguf": hashlib.sha256(data).hexdigest()}})
    data[-1] ^= 0xFF
    (local / "model.gguf").write_bytes(bytes(data))
    with pytest.raises(zoo.ZooChecksumError):
        zoo.resolve("test-zoo-local")
    (local / "model.gguf").unlink()
    with pytest.raises(FileNotFoundError, match="missing"):
        zoo.resolve("test-zoo-local")


def test_zoo_registry_validation(registry):
    good = {"files": {"model.gguf": "a" * 64}}
    with pytest.raises(ValueError, match="exactly one"):
        zoo.register("x", good)
    with pytest.raises(ValueError, match="exactly one"):
        zoo.register("x", {**good, "package": "x", "path": "/x"})
    with pytest.raises(ValueError, match="revision"):
        zoo.register("x", {**good, "hub": "org/x"})
    with pytest.raises(ValueError, match="sha256"):
        zoo.register("x", {"package": "x", "files": {"model.gguf": "ABC"}})
    with pytest.raises(ValueError, match="bad file name"):
        zoo.register("x", {"package": "x", "files": {"../model.gguf": "a" * 64}})
    with pytest.raises(ValueError, match="files"):
        zoo.register("x", {"package": "x"})
    with pytest.raises(ValueError, match="no '/'"):
        zoo.register("a/b", {"package": "x", **good})
    with pytest.raises(KeyError, match="no zoo model"):
        zoo.entry("never-registered")
    assert "x" not in zoo.names()


def test_shipped_registry_is_valid():
    # Every shipped entry validates at import; package entries point at shipped files.
    for name in zoo.names():
        value = zoo.entry(name)
        if "package" in value:
            for filename in value["files"]:
                assert (zoo.PACKAGE_MODELS / value["package"] / filename).is_file()
    default = zoo.default_name()
    assert default is None or default in zoo.names()


def test_from_pretrained_without_default_is_a_clear_error(registry):
    zoo.set_default(None)
    with pytest.raises(ValueError, match="no default model"):
        TernaryModel.from_pretrained()


# --------------------------------------------------------------------------- loading through the engine


@needs_engine
def test_from_pretrained_hub_offline_loads_and_generates(tmp_path, exported, monkeypatch):
    gguf_path, hf_dir = exported
    make_hub_cache(tmp_path / "cache", "org/tiny", [gguf_path])
    files = [hf_dir / n for n in ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json")]
    make_hub_cache(tmp_path / "cache", "org/tiny-hf", files)
    a = TernaryModel.from_pretrained("org/tiny", cache_dir=tmp_path / "cache", local_files_only=True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    b = TernaryModel.from_pretrained("org/tiny-hf", cache_dir=tmp_path / "cache")
    assert a.source == b.source == "hub"
    # Each generates exactly what the same files loaded from their own directory do. (The GGUF
    # and the HF directory differ in the head's storage, Q8_0 vs float, so an untrained model's
    # near-tied logits may pick different tokens between the two.)
    for hub_model, local in ((a, gguf_path), (b, hf_dir)):
        text = hub_model.generate("fn main", max_new_tokens=8)
        assert text == TernaryModel.from_pretrained(local).generate("fn main", max_new_tokens=8)
        assert len(text) > 0


@needs_engine
def test_from_pretrained_zoo_default(tmp_path, exported, registry):
    gguf_path, _ = exported
    registry("test-default", {"path": str(gguf_path.parent), "files": {"model.gguf": sha256(gguf_path)}}, default=True)
    model = TernaryModel.from_pretrained()
    assert model.name == "test-default" and model.source == "zoo"
    assert "test-default" in repr(model)
