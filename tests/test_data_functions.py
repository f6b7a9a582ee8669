"""The function-level Rust corpus (issue 19, first half): crate fetching with a fake cargo,
licence filtering, the syn function view, completion-prompt rendering, MinHash dedup,
HumanEval-Rust decontamination, rustc verification with resume, the data-mix build and the
nontrivial compile rate. Tiny fake crate trees in temp dirs; no network."""

import json
import os
import shutil
import stat
import sys
from collections import Counter
from pathlib import Path

import pytest

from nanochat_ternary import _core
from nanochat_ternary.data import DataError, TokenShards, read_meta
from nanochat_ternary.data.__main__ import main
from nanochat_ternary.data.decontam import Decontaminator, benchmark_texts
from nanochat_ternary.data.dedup import DedupOptions, deduplicate
from nanochat_ternary.data.fetch import (_spdx_permissive, classify_vendor, fetch_crates, kept_crate_dirs,
                                         license_file_kind, write_manifest)
from nanochat_ternary.data.functions import (FunctionsOptions, build_functions, iter_jsonl, render_completion_shape,
                                             standalone_source)
from nanochat_ternary.eval import compile_rate

needs_rustc = pytest.mark.skipif(shutil.which("rustc") is None, reason="rustc not installed")

MIT_TEXT = "Permission is hereby granted, free of charge, to any person obtaining a copy of this software"
GPL_TEXT = "This program is free software: you can redistribute it under the GNU General Public License"

LIB_A = '''//! Crate a.
use std::collections::HashMap;

/// Adds two numbers.
pub fn add(a: i32, b: i32) -> i32 {
    a + b
}

pub mod nested {
    /// Doubles a value.
    #[inline]
    pub fn double(x: u64) -> u64 {
        let y = x * 2;
        y
    }

    pub fn stub() -> u8 {
        todo!()
    }
}

pub struct Counter {
    n: u32,
}

impl Counter {
    /// Makes a counter.
    pub fn new() -> Self {
        Counter { n: 0 }
    }

    pub fn bump(&mut self) -> u32 {
        self.n += 1;
        self.n
    }
}

pub fn uses_local(c: &Counter) -> u32 {
    c.n
}

pub fn broken(v: &[u8]) -> u8 {
    let s: u8 = v.iter().sum();
    s + "x"
}

pub fn counts(s: &str) -> HashMap<char, usize> {
    let mut m = HashMap::new();
    for c in s.chars() {
        *m.entry(c).or_insert(0) += 1;
    }
    m
}
'''


def make_crate(vendor: Path, dirname: str, cargo_toml: str, files: dict[str, str]) -> Path:
    root = vendor / dirname
    (root / "src").mkdir(parents=True)
    (root / "Cargo.toml").write_text(cargo_toml, encoding="utf-8")
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


def package(name: str, version: str, extra: str) -> str:
    return f'[package]\nname = "{name}"\nversion = "{version}"\nedition = "2021"\n{extra}\n'


def fake_fetch_dir(tmp: Path) -> Path:
    """A fetch-crates directory: permissive crates a (two versions), b, mitfile; GPL, unlicensed,
    a binding crate excluded by name, and c with a benchmark-looking path."""
    out = tmp / "crates"
    vendor = out / "vendor"
    make_crate(vendor, "a-1.2.0", package("a", "1.2.0", 'license = "MIT OR Apache-2.0"'), {"src/lib.rs": LIB_A})
    make_crate(vendor, "a-1.10.0", package("a", "1.10.0", 'license = "MIT/Apache-2.0"'), {"src/lib.rs": LIB_A})
    make_crate(vendor, "b-0.3.1", package("b", "0.3.1", 'license = "Apache-2.0 WITH LLVM-exception"'), {
        "src/lib.rs": "pub fn square(x: f64) -> f64 {\n    x * x\n}\n\nfn bad( {\n",
        "src/data.bin": "\x00\x01binary",
        "src/latin1.rs": "",  # replaced by non-UTF-8 bytes below
    })
    (vendor / "b-0.3.1" / "src" / "latin1.rs").write_bytes(b"// caf\xe9\nfn f() {}\n")
    make_crate(vendor, "mitfile-1.0.0", package("mitfile", "1.0.0", 'license-file = "LICENSE"'),
               {"src/lib.rs": "pub fn one() -> u8 {\n    1\n}\n", "LICENSE": MIT_TEXT})
    make_crate(vendor, "gpl-1.0.0", package("gpl", "1.0.0", 'license = "GPL-3.0-only"'),
               {"src/lib.rs": "pub fn secret() -> u8 {\n    7\n}\n"})
    make_crate(vendor, "gplfile-1.0.0", package("gplfile", "1.0.0", 'license-file = "COPYING"'),
               {"src/lib.rs": "pub fn g() -> u8 {\n    8\n}\n", "COPYING": GPL_TEXT})
    make_crate(vendor, "nolicense-0.1.0", package("nolicense", "0.1.0", ""),
               {"src/lib.rs": "pub fn n() -> u8 {\n    9\n}\n"})
    make_crate(vendor, "windows-sys-0.1.0", package("windows-sys", "0.1.0", 'license = "MIT"'),
               {"src/lib.rs": "pub fn w() -> u8 {\n    10\n}\n"})
    make_crate(vendor, "c-2.0.0", package("c", "2.0.0", 'license = "Zlib"'), {
        "src/lib.rs": "pub fn triple(x: u32) -> u32 {\n    x * 3\n}\n",
        "exercises/leetcode/two_sum.rs": "pub fn two_sum(v: &[i32], t: i32) -> bool {\n    v.contains(&t)\n}\n",
    })
    write_manifest(out, classify_vendor(vendor), {})
    return out


# --- licences and fetching ----------------------------------------------------------------------

def test_spdx_and_license_files():
    for expr in ["MIT", "MIT OR Apache-2.0", "MIT/Apache-2.0", "(MIT OR Apache-2.0) AND Unicode-3.0",
                 "Apache-2.0 WITH LLVM-exception", "Zlib OR Apache-2.0 OR MIT", "BSD-3-Clause", "Unlicense OR MIT",
                 "Apache-2.0+"]:
        assert _spdx_permissive(expr), expr
    for expr in ["GPL-3.0", "MIT AND GPL-2.0", "MPL-2.0", "LGPL-2.1 OR GPL-3.0", "", "(MIT", "MIT OR",
                 "CDLA-Permissive-2.0"]:
        assert not _spdx_permissive(expr), expr
    assert _spdx_permissive("GPL-3.0 OR MIT")
    assert license_file_kind(MIT_TEXT) == "MIT"
    assert license_file_kind(GPL_TEXT) is None
    assert license_file_kind("all rights reserved") is None


def test_licence_filtering_is_recorded_per_crate(tmp_path):
    out = fake_fetch_dir(tmp_path)
    manifest = json.loads((out / "crates.json").read_text())
    by_dir = {c["dir"]: c for c in manifest["crates"]}
    assert by_dir["a-1.2.0"]["permissive"] and by_dir["a-1.2.0"]["license"] == "MIT OR Apache-2.0"
    assert by_dir["mitfile-1.0.0"]["permissive"] and by_dir["mitfile-1.0.0"]["reason"] == "license_file:MIT"
    assert not by_dir["gpl-1.0.0"]["permissive"] and by_dir["gpl-1.0.0"]["reason"] == "not_permissive"
    assert by_dir["gplfile-1.0.0"]["reason"] == "license_file_not_permissive"
    assert by_dir["nolicense-0.1.0"]["reason"] == "no_license"
    assert manifest["counts"] == {"crates": 9, "kept": 6, "skipped": 3, "skipped_by_reason": {
        "license_file_not_permissive": 1, "no_license": 1, "not_permissive": 1}}
    kept = {name for name, _ in kept_crate_dirs(out)}
    assert kept == {"a", "b", "mitfile", "windows-sys", "c"}


FAKE_CARGO = r'''#!/usr/bin/env python3
"""Stands in for `cargo vendor`: copies one crate directory per dependency; fails on "unknown"."""
import os, re, sys
deps = re.findall(r'^([A-Za-z0-9_-]+) = "\*"', open("Cargo.toml").read(), re.M)
if "unknown" in deps:
    sys.stderr.write("error: no matching package named `unknown` found\n")
    sys.exit(101)
vendor = sys.argv[-1]
with open(os.environ["FAKE_CARGO_LOG"], "a") as log:
    log.write(" ".join(deps) + "\n")
for d in deps:
    os.makedirs(os.path.join(vendor, d + "-1.0.0", "src"), exist_ok=True)
    lic = "" if d == "nolic" else 'license = "MIT"\n'
    with open(os.path.join(vendor, d + "-1.0.0", "Cargo.toml"), "w") as f:
        f.write('[package]\nname = "%s"\nversion = "1.0.0"\n%s' % (d, lic))
'''


def test_fetch_batches_split_failures_and_resume(tmp_path, monkeypatch):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    cargo = bindir / "cargo"
    cargo.write_text(FAKE_CARGO.replace("#!/usr/bin/env python3", f"#!{sys.executable}"))
    cargo.chmod(cargo.stat().st_mode | stat.S_IEXEC)
    log = tmp_path / "cargo.log"
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_CARGO_LOG", str(log))
    crate_list = tmp_path / "crates.txt"
    crate_list.write_text("# list\nalpha\nbeta\nunknown  # cargo cannot resolve this one\ngamma\nnolic\nalpha\n")
    out = tmp_path / "fetched"
    manifest = fetch_crates(out, crate_list, batch_size=4, log=lambda _: None)
    assert manifest["unresolvable"] == ["unknown"]
    assert manifest["counts"]["kept"] == 3 and manifest["counts"]["skipped_by_reason"] == {"no_license": 1}
    assert sorted(p.name for p in (out / "vendor").iterdir()) == [
        "alpha-1.0.0", "beta-1.0.0", "gamma-1.0.0", "nolic-1.0.0"]
    calls = log.read_text().splitlines()
    # [alpha beta unknown gamma] fails, is split: [alpha beta] ok, [unknown gamma] -> [unknown] x, [gamma] ok.
    assert calls == ["alpha beta", "gamma", "nolic"]
    # A second run vendors nothing again.
    fetch_crates(out, crate_list, batch_size=4, log=lambda _: None)
    assert log.read_text().splitlines() == calls
    with pytest.raises(DataError, match="not a crate name"):
        bad = tmp_path / "bad.txt"
        bad.write_text("serde json\n")
        fetch_crates(out, bad)


# --- function view ------------------------------------------------------------------------------

def run_functions(tmp_path: Path) -> Path:
    crates = fake_fetch_dir(tmp_path)
    out = tmp_path / "fn"
    build_functions(FunctionsOptions(crates=str(crates), out=str(out), include_std=False), progress=None)
    return out


def test_function_view_of_fake_crates(tmp_path):
    out = run_functions(tmp_path)
    stats = json.loads((out / "stats.json").read_text())["counts"]
    files = list(iter_jsonl(out / "files.jsonl"))
    fns = list(iter_jsonl(out / "functions.jsonl"))
    crates = {f["crate"] for f in files}
    assert crates == {"a", "b", "mitfile", "c"}  # licences filtered, windows-sys excluded by name
    assert stats["crates_excluded_by_name"] == 1 and stats["crates_older_versions_skipped"] == 1
    assert stats["files_dropped"] == {"extension": 6, "not_utf8": 1}  # Cargo.toml x4, LICENSE, data.bin
    assert stats["files_parse_error"] == 1  # b's lib.rs: kept as a file, no functions
    assert all(f["group"] == f"crate:{f['crate']}" for f in files + fns)
    a_paths = {f["path"] for f in files if f["crate"] == "a"}
    assert a_paths == {"a-1.10.0/src/lib.rs"}  # only the newest version
    by_name = {f["name"]: f for f in fns}
    assert by_name["double"]["text"] == (
        "/// Doubles a value.\n#[inline]\npub fn double(x: u64) -> u64 {\n    let y = x * 2;\n    y\n}")
    assert by_name["double"]["doc"] == "Doubles a value." and by_name["double"]["standalone"]
    assert by_name["stub"]["standalone"] and not by_name["stub"]["nontrivial"]
    assert by_name["bump"]["kind"] == "method" and by_name["bump"]["impl_header"] == "impl Counter"
    assert not by_name["uses_local"]["standalone"]
    # HashMap comes from the file's `use std::collections::HashMap;`, which goes with it.
    assert by_name["counts"]["standalone"] and by_name["counts"]["std_uses"] == "use std::collections::HashMap;"
    assert standalone_source(by_name["counts"]).startswith("use std::collections::HashMap;\n\npub fn counts(")
    assert by_name["add"]["std_uses"] == "" and standalone_source(by_name["add"]) == by_name["add"]["text"]
    assert by_name["broken"]["standalone"]  # std-only on its face: rustc has the last word
    kinds = Counter(f["kind"] for f in fns)
    assert kinds == {"function": 9, "impl": 1, "method": 2}
    # add, double, broken, counts (a); one (mitfile); triple, two_sum (c); b did not parse; stub is a stub.
    assert stats["standalone_nontrivial"] == 7 and stats["standalone_nontrivial_with_std_uses"] == 1


def test_completion_shape_rendering():
    record = {"name": "add", "doc": "Adds two numbers.\n\nExact.", "signature": "pub fn add(a: i32, b: i32) -> i32",
              "body": "\n    a + b\n"}
    assert render_completion_shape(record) == (
        "/// Adds two numbers.\n///\n/// Exact.\npub fn add(a: i32, b: i32) -> i32 {\n    a + b\n}\n")
    record = {"name": "parseHeader_line", "doc": "", "signature": "fn parseHeader_line(s: &str) -> usize",
              "body": " s.len() "}
    assert render_completion_shape(record) == "// parse header line\nfn parseHeader_line(s: &str) -> usize { s.len() }\n"


# --- dedup and decontamination ------------------------------------------------------------------

def test_minhash_drops_near_duplicates_and_keeps_different_docs():
    base = "\n".join(f"fn f{i}(x: u32) -> u32 {{ let y = x * {i} + {i * 7}; y - {i} }}" for i in range(40))
    near = base.replace("fn f3(", "fn g3(")  # one identifier changed
    relaid = base.replace("\n", "\n\n    ")  # layout only: the same tokens
    other = "\n".join(f"struct S{i} {{ name: String, size: usize, flag_{i}: bool }}" for i in range(40))
    half = "\n".join(base.splitlines()[:20] + other.splitlines()[20:])  # Jaccard about 0.5 with each
    verdicts = deduplicate([base, near, relaid, other, other, half])
    assert verdicts == ["kept", "near", "exact", "kept", "exact", "kept"]
    assert deduplicate([base, half], DedupOptions(threshold=0.3)) == ["kept", "near"]
    with pytest.raises(ValueError):
        deduplicate([base], DedupOptions(num_perm=10, bands=3))


def test_decontamination_by_13_token_window_and_path():
    prompts = benchmark_texts()
    assert len(prompts) == 2 * 156
    decon = Decontaminator()
    prompt = json.loads(Path(_humaneval_path()).read_text().splitlines()[0])["prompt"]
    tokens = prompt.split()
    leaked = "// my code\nfn helper() {}\n" + prompt + "    n - 1\n}\n"
    assert decon.reason(leaked) == "ngram"
    # Twelve tokens of it are not enough.
    from nanochat_ternary.data.dedup import code_tokens
    twelve = " ".join(code_tokens(prompt)[:12])
    assert decon.reason(twelve) is None
    assert decon.reason("pub fn add(a: i32, b: i32) -> i32 { a + b }") is None
    # A copied test is caught; number lists and idioms the tests share with everyone are not used.
    copied_test = "fn main() {\n    let candidate = largest_divisor;\n    assert_eq!(candidate(3), 1);\n}\n"
    assert decon.reason(copied_test) == "ngram"
    assert decon.reason("const T: [u8; 12] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];") is None
    assert decon.reason("fn f() { g(vec![vec![], vec![1]], vec![String::from(\"a\")]); }") is None
    assert decon.describe()["benchmark_windows_ignored"] > 0
    assert decon.reason("fn f() {}", "crate/tests/humaneval/x.rs") == "path"
    assert decon.reason("fn f() {}", "exercism/rust/two-fer/src/lib.rs") == "path"
    assert decon.reason("fn f() {}", "src/multiple.rs") is None
    assert dict(decon.counts) == {"ngram": 2, "path": 2}
    assert tokens  # the prompt is not empty


def _humaneval_path() -> str:
    from nanochat_ternary.data.decontam import HUMANEVAL_RS
    return str(HUMANEVAL_RS)


# --- verification -------------------------------------------------------------------------------

@needs_rustc
def test_verify_checks_candidates_and_resumes(tmp_path):
    from nanochat_ternary.data.verify import verify

    out = tmp_path / "fn"
    out.mkdir()
    records = [
        {"kind": "function", "name": "ok", "text": "pub fn ok(x: u32) -> u32 {\n    x.wrapping_mul(3)\n}",
         "standalone": True, "nontrivial": True},
        {"kind": "function", "name": "bad", "text": "pub fn bad(x: u32) -> u32 {\n    x + \"s\"\n}",
         "standalone": True, "nontrivial": True},
        {"kind": "function", "name": "stub", "text": "fn stub() -> u8 {\n    todo!()\n}",
         "standalone": True, "nontrivial": False},
        {"kind": "method", "name": "m", "text": "fn m(&self) {}", "standalone": False, "nontrivial": False},
    ]
    import hashlib
    with open(out / "functions.jsonl", "w") as f:
        for r in records + records[:1]:  # a duplicate candidate is checked once
            r["sha256"] = hashlib.sha256(r["text"].encode()).hexdigest()
            f.write(json.dumps(r) + "\n")
        f.write("{torn line\n")
    report = verify(out, progress=None)
    assert (report["candidates"], report["checked_now"], report["passed_now"], report["failed_now"]) == (2, 2, 1, 1)
    assert report["checks_per_second"] > 0
    lines = [json.loads(line) for line in (out / "verify.jsonl").read_text().splitlines()]
    by_ok = {r["ok"]: r for r in lines}
    assert "E0277" in by_ok[False]["error"] or "cannot add" in by_ok[False]["error"]
    # A torn last line (a killed run) is skipped; the second run re-checks nothing.
    with open(out / "verify.jsonl", "a") as f:
        f.write('{"sha256": "abc", "ok"')
    again = verify(out, progress=None)
    assert again["checked_now"] == 0 and again["already_checked"] == 2 and again["passes_total"] == 1
    assert again["skipped_lines"] == 2  # the torn results line and the bad functions.jsonl line
    third = verify(out, progress=None)  # the torn line was ended: every good line still reads
    assert third["checked_now"] == 0 and third["already_checked"] == 2
    # A changed function is a new candidate; its old result stays in the file but is not counted.
    text = (out / "functions.jsonl").read_text().replace("x.wrapping_mul(3)", "x.wrapping_mul(5)")
    (out / "functions.jsonl").write_text(text)
    fourth = verify(out, progress=None)
    assert (fourth["checked_now"], fourth["passed_now"], fourth["already_checked"]) == (1, 1, 1)
    assert fourth["results_not_candidates"] == 1 and fourth["passes_total"] == 1 and fourth["left_unchecked"] == 0


# --- the data mix -------------------------------------------------------------------------------

@needs_rustc
def test_mix_build_with_three_views(tmp_path):
    from nanochat_ternary.data.verify import verify

    fn_dir = run_functions(tmp_path)
    report = verify(fn_dir, progress=None)
    assert report["passed_now"] >= 4
    mix = tmp_path / "mix.json"
    config = json.loads(Path(_default_mix()).read_text())
    config["corpus"] = "fn"
    config["views"]["functions"]["prompt_fraction"] = 1.0
    mix.write_text(json.dumps(config))
    out = tmp_path / "data"
    assert main(["build", "--mix", str(mix), "--out", str(out), "--vocab-size", "300", "--val-fraction", "0.2",
                 "--quiet"]) == 0
    meta = read_meta(out)
    src = meta["source"]
    assert src["holdout_by"] == "group"
    views = src["mix"]["views"]
    assert views["files"]["decontaminated_path"] == 1  # c's exercises/leetcode file
    assert views["functions"]["decontaminated_path"] == 1 and views["functions"]["prompt_shaped"] >= 1
    assert views["verified"]["kept"] == report["passed_now"] - 1  # two_sum is under a leetcode path
    per_view = src["mix"]["tokens_per_view"]
    for split in ("train", "val"):
        assert sum(v["tokens"] for v in per_view[split].values()) == meta["splits"][split]["tokens"]
        assert sum(v["documents"] for v in per_view[split].values()) == meta["splits"][split]["documents"]
    # Whole crates are held out: no group straddles the split.
    assert src["val_groups"] and set(src["val_groups"]).isdisjoint(_train_groups(tmp_path, src))
    # The verified view has weight 2: its train documents are written twice.
    n_verified = views["verified"]["kept"]
    train_v = per_view["train"].get("verified", {"documents": 0})["documents"]
    val_v = per_view["val"].get("verified", {"documents": 0})["documents"]
    assert train_v % 2 == 0 and train_v // 2 + val_v == n_verified
    assert len(TokenShards(out, "train")) == meta["splits"]["train"]["tokens"]
    # An existing directory is not overwritten silently; --input and --mix exclude each other.
    assert main(["build", "--mix", str(mix), "--out", str(out), "--quiet"]) == 1
    with pytest.raises(SystemExit) as e:
        main(["build", "--mix", str(mix), "--input", str(tmp_path), "--out", str(tmp_path / "x")])
    assert e.value.code == 2
    assert main(["build", "--input", str(tmp_path), "--corpus", "fn", "--out", str(tmp_path / "x")]) == 1


def _default_mix() -> str:
    from nanochat_ternary.data.mix import DEFAULT_MIX
    return str(DEFAULT_MIX)


def _train_groups(tmp_path: Path, src: dict) -> set[str]:
    groups = set()
    for r in iter_jsonl(tmp_path / "fn" / "files.jsonl"):
        groups.add(r["group"])
    return groups - set(src["val_groups"])


def test_mix_config_errors(tmp_path):
    from nanochat_ternary.data.mix import load_config

    fn_dir = run_functions(tmp_path)
    bad = tmp_path / "bad.json"
    for config, message in [
        ({"format": "x"}, "format"),
        ({"format": "nanochat-ternary-mix/1", "corpus": "fn", "views": {"tests": {}}}, "unknown view"),
        ({"format": "nanochat-ternary-mix/1", "corpus": "fn", "views": {"files": {"weight": 0}}}, "weight"),
        ({"format": "nanochat-ternary-mix/1", "corpus": "fn", "views": {"functions": {"kinds": ["trait"]}}}, "kinds"),
        ({"format": "nanochat-ternary-mix/1", "views": {"files": {}}}, "names no corpus"),
        ({"format": "nanochat-ternary-mix/1", "corpus": "nowhere", "views": {"files": {}}}, "run the functions"),
        ({"format": "nanochat-ternary-mix/1", "corpus": "fn", "views": {"verified": {}}}, "run the verify step"),
        ({"format": "nanochat-ternary-mix/1", "corpus": "fn", "views": {"files": {}},
          "decontaminate": {"windows": 13}}, "decontaminate takes"),
    ]:
        bad.write_text(json.dumps(config))
        with pytest.raises(DataError, match=message):
            load_config(bad)
    assert fn_dir.is_dir()


# --- nontrivial compile rate --------------------------------------------------------------------

def test_nontrivial_bodies_decided_by_syn():
    assert compile_rate.has_nontrivial_bodies("fn f(x: u8) -> u8 { x + 1 }")
    assert not compile_rate.has_nontrivial_bodies("fn f() -> u8 { todo!() }")
    assert not compile_rate.has_nontrivial_bodies("fn f() {}")
    assert not compile_rate.has_nontrivial_bodies("struct S;")  # no body at all
    assert not compile_rate.has_nontrivial_bodies("fn f( {")
    assert not compile_rate.has_nontrivial_bodies("fn a() -> u8 { 1 }\nfn b() -> u8 { unimplemented!() }")
    assert _core.rust_extract_functions("impl S { fn f(&self) -> u8 { panic!(\"x\") } }")[1]["nontrivial"] is False


@needs_rustc
def test_nontrivial_compile_rate_does_not_count_stubs():
    sources = ["pub fn f(x: u8) -> u8 {\n    x.wrapping_add(1)\n}\n",
               "pub fn g() -> u8 {\n    todo!()\n}\n",
               "pub fn h(x: u8) -> u8 {\n    match x { 0 => 1, _ => unreachable!() }\n}\n",
               "pub fn k() -> u8 {\n    \"no\"\n}\n"]
    report = compile_rate.evaluate_sources(sources, parallel=1)
    summary = report["summary"]
    assert summary["compile_rate"] == 0.75  # the stubs compile ...
    assert summary["nontrivial_compile_rate"] == 0.25  # ... but do not count
    assert [r["nontrivial"] for r in report["results"]] == [True, False, False, True]
    assert compile_rate.evaluate_sources(sources, use_rustc=False)["summary"]["nontrivial_compile_rate"] is None
