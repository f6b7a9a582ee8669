"""The Rust-code corpus of the shipped Rust model.

    python -m nanochat_ternary.data rust-corpus --out /work/data/rust-corpus --vocab-size 4096

is `build` with these inputs and settings:
  * every `~/.cargo/registry/src/<index>/` (`$CARGO_HOME` if set): the crates
    cargo downloaded to build this project, one group per crate (all its versions:
    `--group-strip-version` is on, so syn 1.x and syn 2.x cannot straddle the split);
  * the standard library sources, `$(rustc --print sysroot)/lib/rustlib/src/rust/library`,
    when present (`rustup component add rust-src`), one group per library crate;
  * only `.rs` files, the usual noise filters (`corpus.py`), and
    `--holdout-by group --group-depth 1 --val-fraction 0.02`, so validation crates
    (about 2 % of the bytes) are never trained on.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


def cargo_registry_roots() -> list[Path]:
    """The `registry/src/<index>` directories of the cargo home, sorted."""
    home = Path(os.environ.get("CARGO_HOME") or Path.home() / ".cargo")
    src = home / "registry" / "src"
    return sorted(p for p in src.iterdir() if p.is_dir()) if src.is_dir() else []


def rust_std_library() -> Path | None:
    """The rust-src component's `library/` directory, if rustc and the component are installed."""
    try:
        sysroot = subprocess.run(["rustc", "--print", "sysroot"], capture_output=True, text=True, check=True,
                                 timeout=60).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    library = Path(sysroot) / "lib" / "rustlib" / "src" / "rust" / "library"
    return library if library.is_dir() else None


def rust_corpus_inputs(include_std: bool = True) -> tuple[list[str], list[str]]:
    """(input directories, notes for the user). Raises DataError when there is nothing to read."""
    from .corpus import DataError

    notes = []
    inputs = [str(p) for p in cargo_registry_roots()]
    if not inputs:
        notes.append("no cargo registry sources found (build the project once so cargo downloads its crates)")
    if include_std:
        library = rust_std_library()
        if library is None:
            notes.append("Rust standard library sources not found; `rustup component add rust-src` adds them")
        else:
            inputs.append(str(library))
    if not inputs:
        raise DataError("; ".join(notes))
    return inputs, notes
