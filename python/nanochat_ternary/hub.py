"""Finding model files: local paths, zoo names and Hugging Face Hub ids.

    from nanochat_ternary import hub
    hub.resolve("model.gguf")           # a local file or directory
    hub.resolve("zoo-name")             # a registered zoo model (sha256-verified)
    hub.resolve("org/repo", revision="main", local_files_only=True)

Hub downloads go through ``huggingface_hub.snapshot_download``, so they land in
(and offline use reads from) the standard hub cache, ``models--org--repo/
snapshots/<commit>/``. ``local_files_only=True`` or ``HF_HUB_OFFLINE=1`` never
touches the network.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ResolvedModel", "resolve", "download", "model_file", "is_hub_id", "offline"]

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_HUB_FILES = ["*.gguf", "*.json", "*.safetensors"]


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model's files are: ``path`` is a ``.gguf`` file or an HF-style directory."""

    path: Path
    source: str
    """``"local"``, ``"zoo"`` or ``"hub"``."""
    name: str


def is_hub_id(text: str) -> bool:
    """True for ``org/name`` strings (what the hub accepts as a repo id)."""
    return bool(_HUB_ID.match(text)) and ".." not in text


def offline() -> bool:
    """``HF_HUB_OFFLINE`` is set to a true value (read at call time, unlike huggingface_hub)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def model_file(path: str | os.PathLike[str]) -> Path:
    """The loadable model at ``path``: a ``.gguf`` file, a directory with exactly one ``.gguf``
    (preferred: it holds the fast int8 head), or an HF-style directory (``config.json`` +
    ``model.safetensors``). FileNotFoundError / ValueError otherwise."""
    p = Path(path)
    if p.is_file():
        if p.suffix.lower() != ".gguf":
            raise ValueError(f"{p} is not a .gguf file; pass a .gguf file or a model directory")
        return p
    if not p.is_dir():
        raise FileNotFoundError(f"no such model file or directory: {p}")
    ggufs = sorted(q for q in p.iterdir() if q.suffix.lower() == ".gguf" and q.is_file())
    if len(ggufs) == 1:
        return ggufs[0]
    if (p / "config.json").is_file() and (p / "model.safetensors").is_file():
        return p
    if len(ggufs) > 1:
        raise ValueError(f"{p} holds several .gguf files ({', '.join(q.name for q in ggufs)}); pass one of them")
    raise FileNotFoundError(f"{p} holds no model: expected a .gguf file or config.json + model.safetensors")


def download(
    repo_id: str,
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    local_files_only: bool = False,
    allow_patterns: list[str] | None = None,
) -> Path:
    """The snapshot directory of ``repo_id`` at ``revision`` in the hub cache, downloading it
    unless offline. FileNotFoundError when it isn't available (offline and not cached,
    unknown repo or revision)."""
    try:
        import huggingface_hub
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
    except ImportError as e:  # pragma: no cover - huggingface_hub is a dependency
        raise ImportError("loading from the Hugging Face Hub needs `pip install huggingface_hub`") from e
    offline_only = local_files_only or offline()
    try:
        snapshot = huggingface_hub.snapshot_download(
            repo_id,
            revision=revision,
            cache_dir=os.fspath(cache_dir) if cache_dir is not None else None,
            local_files_only=offline_only,
            allow_patterns=allow_patterns or _HUB_FILES,
        )
    except LocalEntryNotFoundError:
        where = f" in {cache_dir}" if cache_dir is not None else ""
        rev = f" at revision {revision!r}" if revision else ""
        raise FileNotFoundError(
            f"{repo_id}{rev} is not in the hub cache{where}"
            + (" and downloads are disabled (local_files_only / HF_HUB_OFFLINE)" if offline_only else "")
        ) from None
    except HfHubHTTPError as e:
        raise FileNotFoundError(f"could not get {repo_id} from the Hugging Face Hub: {e}") from None
    return Path(snapshot)


def resolve(
    name_or_path: str | os.PathLike[str],
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    local_files_only: bool = False,
) -> ResolvedModel:
    """Local file/directory first, then a zoo name, then a hub id."""
    from . import zoo

    text = os.fspath(name_or_path)
    if not text:
        raise ValueError("empty model name or path")
    if os.path.exists(text):
        local = Path(text)
        return ResolvedModel(model_file(local), "local", local.stem if local.is_file() else local.name)
    if text in zoo.names():
        if revision is not None:
            raise ValueError(f"zoo model {text!r} is pinned to one revision; revision= is not accepted")
        directory = zoo.resolve(text, cache_dir=cache_dir, local_files_only=local_files_only)
        return ResolvedModel(model_file(directory), "zoo", text)
    if isinstance(name_or_path, str) and is_hub_id(text):
        snapshot = download(text, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only)
        return ResolvedModel(model_file(snapshot), "hub", text)
    known = ", ".join(zoo.names()) or "none registered"
    raise FileNotFoundError(f"{text!r} is not a local file or directory, a zoo name (known: {known}) or a hub id 'org/name'")
