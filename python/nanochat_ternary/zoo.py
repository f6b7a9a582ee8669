"""The model zoo: short names for published models, each pinned by sha256.

    from nanochat_ternary import zoo
    zoo.names()                      # registered names
    zoo.resolve("name")              # a local directory holding the verified files

Entries live in ``nanochat_ternary/models/registry.json`` (see the README next
to it) and may be added at run time with :func:`register`. An entry is one of

* ``{"package": "subdir", "files": {...}}`` — files shipped inside the package,
  under ``nanochat_ternary/models/subdir/``;
* ``{"hub": "org/repo", "revision": "<commit>", "files": {...}}`` — files on the
  Hugging Face Hub (downloaded once into the hub cache; offline use reads the
  cache);
* ``{"path": "/abs/dir", "files": {...}}`` — files in a local directory.

``files`` maps every file name to its sha256; each file is hashed on load and a
mismatch raises :class:`ZooChecksumError`, so a zoo name always means the same
bytes.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

__all__ = [
    "REGISTRY_PATH",
    "ZooChecksumError",
    "names",
    "entry",
    "default_name",
    "register",
    "unregister",
    "set_default",
    "resolve",
    "verify_files",
    "sha256_file",
]

PACKAGE_MODELS = Path(__file__).resolve().parent / "models"
REGISTRY_PATH = PACKAGE_MODELS / "registry.json"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_SOURCES = ("package", "hub", "path")


class ZooChecksumError(ValueError):
    """A zoo file's sha256 differs from the pinned one (corrupt or tampered download)."""


def _load_registry() -> dict[str, Any]:
    try:
        with open(REGISTRY_PATH, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        return {"default": None, "models": {}}
    models = data.get("models") or {}
    for name, value in models.items():
        _validate(name, value)
    return {"default": data.get("default"), "models": dict(models)}


def _validate(name: str, value: Any) -> None:
    if not isinstance(name, str) or not name or "/" in name:
        raise ValueError(f"zoo names are non-empty and contain no '/', got {name!r}")
    if not isinstance(value, dict):
        raise ValueError(f"zoo entry {name!r} must be a dict, got {type(value).__name__}")
    sources = [k for k in _SOURCES if k in value]
    if len(sources) != 1:
        raise ValueError(f"zoo entry {name!r} needs exactly one of {_SOURCES}, got {sorted(value)}")
    files = value.get("files")
    if not isinstance(files, dict) or not files:
        raise ValueError(f"zoo entry {name!r} needs 'files': {{filename: sha256}}")
    for filename, digest in files.items():
        if not isinstance(filename, str) or not filename or filename.startswith("/") or ".." in Path(filename).parts:
            raise ValueError(f"zoo entry {name!r}: bad file name {filename!r}")
        if not isinstance(digest, str) or not _SHA256.match(digest):
            raise ValueError(f"zoo entry {name!r}: {filename!r} needs a lowercase hex sha256, got {digest!r}")
    if "hub" in value and not isinstance(value.get("revision"), str):
        raise ValueError(f"zoo entry {name!r}: a hub entry needs a pinned 'revision' (a commit hash)")


_registry: dict[str, Any] = _load_registry()  # after _validate, which it calls


def names() -> list[str]:
    """Registered model names, sorted."""
    return sorted(_registry["models"])


def entry(name: str) -> dict[str, Any]:
    """A copy of the registry entry of ``name``; KeyError lists the known names."""
    try:
        return copy.deepcopy(_registry["models"][name])
    except KeyError:
        raise KeyError(f"no zoo model named {name!r}; known: {names() or 'none'}") from None


def default_name() -> str | None:
    """The name ``TernaryModel.from_pretrained()`` loads without an argument (None: no default yet)."""
    return _registry["default"]


def register(name: str, value: dict[str, Any], default: bool = False) -> None:
    """Add or replace an entry for this process (the registry file is not changed)."""
    _validate(name, value)
    _registry["models"][name] = copy.deepcopy(value)
    if default:
        _registry["default"] = name


def unregister(name: str) -> None:
    """Remove an entry added by :func:`register` (KeyError if absent); clears the default if it was it."""
    del _registry["models"][name]
    if _registry["default"] == name:
        _registry["default"] = None


def set_default(name: str | None) -> None:
    """Make ``name`` (registered) the default, or clear it with None."""
    if name is not None:
        entry(name)
    _registry["default"] = name


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_files(directory: str | os.PathLike[str], files: dict[str, str], name: str = "") -> None:
    """Checks every ``files`` entry exists in ``directory`` with its sha256.

    FileNotFoundError for a missing file, :class:`ZooChecksumError` for a mismatch.
    """
    label = f"zoo model {name!r}" if name else "model"
    for filename, expected in files.items():
        path = Path(directory) / filename
        if not path.is_file():
            raise FileNotFoundError(f"{label}: file {filename!r} is missing from {directory}")
        actual = sha256_file(path)
        if actual != expected:
            raise ZooChecksumError(
                f"{label}: sha256 of {path} is {actual}, expected {expected} (corrupt or modified file; "
                f"delete it to download again)"
            )


def resolve(
    name: str, cache_dir: str | os.PathLike[str] | None = None, local_files_only: bool = False
) -> Path:
    """The local directory holding zoo model ``name``'s files, all verified against their sha256."""
    value = entry(name)
    files: dict[str, str] = value["files"]
    if "package" in value:
        directory = PACKAGE_MODELS / value["package"]
    elif "path" in value:
        directory = Path(value["path"])
    else:
        from .hub import download

        directory = download(
            value["hub"],
            revision=value["revision"],
            cache_dir=cache_dir,
            local_files_only=local_files_only,
            allow_patterns=list(files),
        )
    verify_files(directory, files, name)
    return directory
