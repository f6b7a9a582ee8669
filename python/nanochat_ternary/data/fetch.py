"""Fetching crates from crates.io with cargo, and keeping the permissively licensed ones.

    python -m nanochat_ternary.data fetch-crates --out /work/data/crates [--list crates.txt] [--limit N]

Steps:
  1. The crate list (`crates.txt` next to this file by default: a fixed, reviewed list of
     well-known crates, see its header) is cut into batches. For each batch a throw-away
     package is generated whose `[dependencies]` name every crate of the batch at its newest
     version (`name = "*"`), and `cargo vendor --versioned-dirs --no-delete OUT/vendor` copies
     the crates and all their dependencies into `OUT/vendor/<name>-<version>/`. A batch that
     cargo cannot resolve is split in halves down to single crates; a single crate that still
     fails is recorded as unresolvable (counted, never fatal). Batches already vendored (listed
     in `OUT/batches.json`) are skipped, so a stopped fetch resumes.
  2. Every directory under `OUT/vendor/` is classified by its Cargo.toml `license` (an SPDX
     expression: `OR` needs one permissive side, `AND` needs all; the legacy `MIT/Apache-2.0`
     form reads as `OR`) or, without one, its `license-file` (recognised by the licence's
     wording). Permissive: MIT, Apache-2.0, the BSD family, ISC, Zlib, Unlicense, CC0, BSL-1.0,
     Unicode, ... (see PERMISSIVE). Anything else, or no licence at all, is skipped and counted.
  3. `OUT/crates.json` (written atomically) records every crate with its version, licence,
     verdict and reason; downstream steps (`functions`, the data mix) read only kept crates.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from .. import _atomic
from .corpus import DataError

DEFAULT_LIST = Path(__file__).with_name("crates.txt")
MANIFEST_NAME = "crates.json"
BATCHES_NAME = "batches.json"
VENDOR_DIR = "vendor"

# SPDX identifiers we treat as permissive (compared case-insensitively).
PERMISSIVE = frozenset(s.lower() for s in (
    "MIT", "MIT-0", "Apache-2.0", "BSD-2-Clause", "BSD-3-Clause", "BSD-1-Clause", "0BSD", "ISC", "Zlib",
    "Unlicense", "CC0-1.0", "BSL-1.0", "Unicode-DFS-2016", "Unicode-3.0", "BlueOak-1.0.0", "NCSA", "X11",
    "Apache-2.0 WITH LLVM-exception", "MIT-Modern-Variant", "zlib-acknowledgement", "WTFPL",
))
# Wording that identifies a licence file when Cargo.toml names only `license-file`.
LICENSE_TEXT_MARKERS = (
    ("MIT", re.compile(r"Permission is hereby granted, free of charge", re.I)),
    ("Apache-2.0", re.compile(r"Apache License,?\s+Version 2\.0", re.I)),
    ("BSD", re.compile(r"Redistribution and use in source and binary forms", re.I)),
    ("ISC", re.compile(r"Permission to use, copy, modify, and(/or)? distribute this software for any", re.I)),
    ("Zlib", re.compile(r"This software is provided 'as-is', without any express or implied", re.I)),
    ("Unlicense", re.compile(r"This is free and unencumbered software released into the public domain", re.I)),
)
COPYLEFT_TEXT = re.compile(r"GNU (Lesser |Affero )?General Public License|Mozilla Public License", re.I)
VERSIONED_DIR = re.compile(r"^(?P<name>[A-Za-z0-9_-]+?)-(?P<version>\d+\.\d+\.\d+(?:[-+][0-9A-Za-z.+-]*)?)$")


def read_crate_list(path: str | os.PathLike[str]) -> list[str]:
    """Names from a crate list (one per line, `#` comments, blank lines ignored; duplicates dropped)."""
    try:
        text = Path(path).read_text("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"crate list {path}: cannot read ({e})") from None
    names: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        name = line.split("#", 1)[0].strip()
        if not name:
            continue
        if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
            raise DataError(f"crate list {path}, line {number}: {name!r} is not a crate name")
        if name not in names:
            names.append(name)
    if not names:
        raise DataError(f"crate list {path} names no crates")
    return names


# --- licences -------------------------------------------------------------------------------------

def _spdx_permissive(expr: str) -> bool:
    """True when the SPDX expression `expr` allows use under permissive terms only."""
    expr = expr.strip()
    if not expr:
        return False
    # Legacy crates.io form "MIT/Apache-2.0" means a choice.
    tokens = re.findall(r"\(|\)|[^\s()]+", expr.replace("/", " OR "))
    pos = 0

    def parse_or() -> bool:
        nonlocal pos
        value = parse_and()
        while pos < len(tokens) and tokens[pos].upper() == "OR":
            pos += 1
            rhs = parse_and()
            value = value or rhs
        return value

    def parse_and() -> bool:
        nonlocal pos
        value = parse_atom()
        while pos < len(tokens) and tokens[pos].upper() == "AND":
            pos += 1
            rhs = parse_atom()
            value = value and rhs
        return value

    def parse_atom() -> bool:
        nonlocal pos
        if pos >= len(tokens):
            raise ValueError("unexpected end")
        tok = tokens[pos]
        pos += 1
        if tok == "(":
            value = parse_or()
            if pos >= len(tokens) or tokens[pos] != ")":
                raise ValueError("unbalanced parenthesis")
            pos += 1
            return value
        ident = tok.rstrip("+")  # "Apache-2.0+" means this version or later
        if pos + 1 < len(tokens) and tokens[pos].upper() == "WITH":
            exception = tokens[pos + 1]
            pos += 2
            return f"{ident} with {exception}".lower() in PERMISSIVE or (
                ident.lower() in PERMISSIVE and exception.lower().endswith("exception"))
        return ident.lower() in PERMISSIVE

    try:
        value = parse_or()
    except ValueError:
        return False
    return value and pos == len(tokens)


def license_file_kind(text: str) -> str | None:
    """The permissive licence a licence file's text is, or None (unknown or copyleft)."""
    if COPYLEFT_TEXT.search(text):
        return None
    for kind, marker in LICENSE_TEXT_MARKERS:
        if marker.search(text):
            return kind
    return None


def _read_package_fields(cargo_toml: Path) -> dict[str, str]:
    """name, version, license, license-file from [package] (tomllib when available)."""
    raw = cargo_toml.read_bytes()
    text = raw.decode("utf-8")
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: a line-based reader of the [package] table
        fields: dict[str, str] = {}
        section = None
        for line in text.splitlines():
            stripped = line.strip()
            if stripped.startswith("["):
                section = stripped.strip("[] ")
                continue
            m = re.match(r'^(name|version|license|license-file)\s*=\s*"((?:[^"\\]|\\.)*)"', stripped)
            if section == "package" and m:
                fields[m.group(1)] = m.group(2)
        return fields
    package = tomllib.loads(text).get("package", {})
    return {k: v for k in ("name", "version", "license", "license-file")
            if isinstance(v := package.get(k), str)}


@dataclass
class CrateLicense:
    name: str
    version: str
    dir: str  # directory name under vendor/
    license: str | None
    permissive: bool
    reason: str  # "spdx", "license_file:<kind>", or why skipped

    def to_json(self) -> dict:
        return {"name": self.name, "version": self.version, "dir": self.dir, "license": self.license,
                "permissive": self.permissive, "reason": self.reason}


def classify_crate(crate_dir: Path) -> CrateLicense:
    """Reads a vendored crate's Cargo.toml and decides whether its licence is permissive."""
    name, version = crate_dir.name, ""
    m = VERSIONED_DIR.match(crate_dir.name)
    if m:
        name, version = m.group("name"), m.group("version")
    try:
        fields = _read_package_fields(crate_dir / "Cargo.toml")
    except FileNotFoundError:
        return CrateLicense(name, version, crate_dir.name, None, False, "no_cargo_toml")
    except Exception as e:  # unreadable, not UTF-8, bad TOML: skipped and counted
        return CrateLicense(name, version, crate_dir.name, None, False, f"bad_cargo_toml: {type(e).__name__}")
    name = fields.get("name", name)
    version = fields.get("version", version)
    spdx = fields.get("license")
    if spdx:
        ok = _spdx_permissive(spdx)
        return CrateLicense(name, version, crate_dir.name, spdx, ok, "spdx" if ok else "not_permissive")
    license_file = fields.get("license-file")
    if license_file:
        path = (crate_dir / license_file).resolve()
        if not path.is_relative_to(crate_dir.resolve()):
            return CrateLicense(name, version, crate_dir.name, None, False, "license_file_outside_crate")
        try:
            text = path.read_bytes()[:200_000].decode("utf-8", errors="replace")
        except OSError:
            return CrateLicense(name, version, crate_dir.name, None, False, "license_file_unreadable")
        kind = license_file_kind(text)
        if kind is None:
            return CrateLicense(name, version, crate_dir.name, f"file:{license_file}", False,
                                "license_file_not_permissive")
        return CrateLicense(name, version, crate_dir.name, f"file:{license_file} ({kind})", True,
                            f"license_file:{kind}")
    return CrateLicense(name, version, crate_dir.name, None, False, "no_license")


def classify_vendor(vendor: Path) -> list[CrateLicense]:
    """Every crate directory under `vendor`, in name order."""
    if not vendor.is_dir():
        raise DataError(f"{vendor}: no vendored crates (run fetch-crates first)")
    return [classify_crate(d) for d in sorted(vendor.iterdir()) if d.is_dir() and not d.name.startswith(".")]


def write_manifest(out: Path, crates: list[CrateLicense], extra: dict) -> dict:
    reasons = Counter(c.reason if not c.permissive else "kept" for c in crates)
    manifest = {
        "format": "nanochat-ternary-crates/1",
        "vendor": str((out / VENDOR_DIR).resolve()),
        "counts": {"crates": len(crates), "kept": sum(c.permissive for c in crates),
                   "skipped": sum(not c.permissive for c in crates),
                   "skipped_by_reason": {r: n for r, n in sorted(reasons.items()) if r != "kept"}},
        "permissive_licenses": sorted(PERMISSIVE),
        "crates": [c.to_json() for c in crates],
        **extra,
    }
    _atomic.write_json(out / MANIFEST_NAME, manifest, sort_keys=True, ensure_ascii=True)
    return manifest


def read_manifest(crates_dir: str | os.PathLike[str]) -> dict:
    path = Path(crates_dir) / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        raise DataError(f"{crates_dir}: no {MANIFEST_NAME} (run fetch-crates first)") from None
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: unreadable crate manifest ({e})") from None
    if manifest.get("format") != "nanochat-ternary-crates/1" or not isinstance(manifest.get("crates"), list):
        raise DataError(f"{path}: not a crate manifest")
    return manifest


def kept_crate_dirs(crates_dir: str | os.PathLike[str]) -> list[tuple[str, Path]]:
    """(crate name, directory) of every permissively licensed crate of a fetched directory."""
    root = Path(crates_dir)
    manifest = read_manifest(root)
    return [(c["name"], root / VENDOR_DIR / c["dir"]) for c in manifest["crates"] if c.get("permissive")]


# --- fetching -------------------------------------------------------------------------------------

def _cargo() -> str:
    cargo = shutil.which("cargo")
    if cargo is None:
        raise DataError("cargo not found on PATH: fetch-crates needs a Rust toolchain")
    return cargo


def _vendor_batch(names: list[str], work: Path, vendor: Path, timeout: float) -> tuple[bool, str]:
    """Vendors `names` (and their dependencies) into `vendor`; (ok, cargo's last error lines)."""
    if work.exists():
        shutil.rmtree(work)
    (work / "src").mkdir(parents=True)
    (work / "src" / "lib.rs").write_text("")
    deps = "\n".join(f'{n} = "*"' for n in names)
    (work / "Cargo.toml").write_text(
        '[package]\nname = "nct-corpus-fetch"\nversion = "0.0.0"\nedition = "2021"\npublish = false\n\n'
        f"[dependencies]\n{deps}\n\n[workspace]\n")
    argv = [_cargo(), "vendor", "--versioned-dirs", "--no-delete", "--quiet", str(vendor.resolve())]
    try:
        proc = subprocess.run(argv, cwd=work, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "CARGO_NET_RETRY": "3"})
    except subprocess.TimeoutExpired:
        return False, f"cargo vendor timed out after {timeout:.0f} s"
    finally:
        shutil.rmtree(work, ignore_errors=True)
    tail = "\n".join(proc.stderr.strip().splitlines()[-6:])
    return proc.returncode == 0, tail


def fetch_crates(out: str | os.PathLike[str], list_path: str | os.PathLike[str] = DEFAULT_LIST, *,
                 limit: int | None = None, batch_size: int = 40, timeout: float = 900.0,
                 log=print) -> dict:
    """Vendors the listed crates into `out/vendor`, classifies licences, writes `out/crates.json`."""
    if batch_size < 1:
        raise DataError(f"--batch-size must be at least 1, got {batch_size}")
    names = read_crate_list(list_path)
    if limit is not None:
        if limit < 1:
            raise DataError(f"--limit must be at least 1, got {limit}")
        names = names[:limit]
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    vendor = root / VENDOR_DIR
    vendor.mkdir(exist_ok=True)
    state_path = root / BATCHES_NAME
    state = {"done": [], "unresolvable": {}}
    if state_path.is_file():
        try:
            state = json.loads(state_path.read_text("utf-8"))
        except ValueError:
            raise DataError(f"{state_path}: corrupt fetch state; delete it to refetch") from None
    done = set(state["done"])
    start = time.perf_counter()
    pending = [names[i:i + batch_size] for i in range(0, len(names), batch_size)]
    while pending:
        batch = [n for n in pending.pop(0) if n not in done and n not in state["unresolvable"]]
        if not batch:
            continue
        log(f"cargo vendor: {len(batch)} crate(s) ({batch[0]} .. {batch[-1]})")
        ok, err = _vendor_batch(batch, root / ".work", vendor, timeout)
        if ok:
            done.update(batch)
            state["done"] = sorted(done)
        elif len(batch) > 1:
            half = len(batch) // 2
            pending[:0] = [batch[:half], batch[half:]]
            continue
        else:
            log(f"  skipped {batch[0]}: {err.splitlines()[-1] if err else 'cargo vendor failed'}")
            state["unresolvable"][batch[0]] = err
        _atomic.write_json(state_path, state, sort_keys=True, ensure_ascii=True)
    crates = classify_vendor(vendor)
    manifest = write_manifest(root, crates, {
        "list": str(Path(list_path).resolve()),
        "requested": names,
        "unresolvable": sorted(state["unresolvable"]),
        "fetch_seconds": round(time.perf_counter() - start, 1),
    })
    return manifest


def summary(manifest: dict) -> str:
    c = manifest["counts"]
    reasons = ", ".join(f"{r} {n}" for r, n in c["skipped_by_reason"].items()) or "none"
    return (f"requested {len(manifest.get('requested', []))} crates, unresolvable "
            f"{len(manifest.get('unresolvable', []))}; vendored {c['crates']} crate directories "
            f"(with dependencies): kept {c['kept']} (permissive licence), skipped {c['skipped']} ({reasons})")
