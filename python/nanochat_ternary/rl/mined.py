"""Tasks mined from the compiler-verified corpus functions, tested differentially.

Input: the function corpus of ``python -m nanochat_ternary.data functions`` /
``verify`` (``functions.jsonl`` + ``verify.jsonl``) and, for licences, the
``crates.json`` of ``fetch-crates``. A function qualifies when it type-checked
alone (std only), is free (not a method), not generic, and its arguments and
result have simple types (integers, floats, bool, char, ``&str``/``String``,
integer slices / vectors, ``Option`` of those). Random inputs are drawn per
argument type; the *original* function is run on them (each call under
``catch_unwind``: inputs that panic are dropped) and its results become the
``assert_eq!`` tests. A function is kept with at least 3 passing inputs and at
least 2 distinct results (a constant function tests nothing). The prompt is the
function's ``use`` lines, doc comment and signature; the family is the crate,
and whole crates are held out. Provenance: crate, version, licence, file, lines,
sha256 of the function.

    python -m nanochat_ternary.rl mine --functions /work/data/rust-fn --crates /work/data/crates --out mined.jsonl
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .. import _core
from ..data.decontam import Decontaminator
from ..eval.sandbox import Limits
from .generator import _LITERALS, run_program, rust_char, rust_str
from .tasks import Task

_INT = r"i8|i16|i32|i64|isize|u8|u16|u32|u64|usize"
_ARG = rf"(?:{_INT}|bool|char|f64|f32|&str|String|&\[(?:i32|i64|u8|u32|u64|usize)\]|Vec<(?:i32|i64|u8|u32|u64|usize)>)"
_RET = rf"(?:{_INT}|bool|char|f64|f32|String|Vec<(?:i32|i64|u8|u32|u64|usize|String|char|bool)>|Option<(?:{_INT}|char|String|bool)>)"
_SIGNATURE = re.compile(
    rf"^(?:pub(?:\([a-z]+\))? )?(?:const )?fn ([a-z_][a-z0-9_]*)\(((?:\s*[a-z_][a-z0-9_]*: {_ARG},?)+)\s*\) -> ({_RET})\s*$"
)
_LITERALS_EXTRA = "lit_display!(i8, i16, u8, u16, isize);\nimpl Lit for f32 { fn lit(&self) -> String { format!(\"{:?}\", self) } fn ty() -> String { \"f32\".into() } }\n"
_WORDS = ["", "a", "abc", "hello world", "0x1f", "42", "-7", "/usr/bin", "C:/x", "a,b,c", "Hello", "  pad  ",
          "\\\\", "x=1;y=2", "zz9", "CamelCase", "snake_case", "ünï", "1.5e3", "true"]  # fmt: skip
_RUN_LIMITS = Limits(cpu_seconds=10, memory_bytes=1 << 30, wall_seconds=20.0)


def _int_value(rng: random.Random, ty: str) -> str:
    bits = int(re.sub(r"\D", "", ty) or "64")
    signed = ty.startswith("i")
    pool = [0, 1, 2, 3, 7, 10, 100, 255, 1000, rng.randint(0, 1 << min(bits - 1, 20))]
    v = rng.choice(pool)
    if signed and rng.random() < 0.3:
        v = -v
    hi = (1 << (bits - 1)) - 1 if signed else (1 << bits) - 1
    v = max(min(v, hi), -hi - 1 if signed else 0)
    return f"{v}{ty}"


def _value(rng: random.Random, ty: str) -> str:
    if re.fullmatch(_INT, ty):
        return _int_value(rng, ty)
    if ty == "bool":
        return rng.choice(["true", "false"])
    if ty == "char":
        return rust_char(rng.choice("aZ09 _-/\\.é"))
    if ty in ("f64", "f32"):
        return f"{float(rng.choice([0.0, 1.0, -2.5, 0.1, 3.75, 100.0, rng.randint(-1000, 1000) / 8]))!r}_{ty}"
    if ty == "&str":
        return rust_str(rng.choice(_WORDS))
    if ty == "String":
        return f"String::from({rust_str(rng.choice(_WORDS))})"
    inner = ty.removeprefix("&[").removesuffix("]").removeprefix("Vec<").removesuffix(">")
    items = ", ".join(_int_value(rng, inner) for _ in range(rng.randint(0, 5)))
    return f"&[{items}]" if ty.startswith("&[") else f"vec![{items}]"


def candidates(functions: Path, crates: Path | None) -> Iterator[dict[str, Any]]:
    """Qualifying corpus functions with their licence (see the module doc)."""
    verified = set()
    with open(functions / "verify.jsonl", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            if row.get("ok"):
                verified.add(row["sha256"])
    licences: dict[str, tuple[str, str]] = {}
    if crates is not None and (crates / "crates.json").is_file():
        for c in json.loads((crates / "crates.json").read_text(encoding="utf-8"))["crates"]:
            licences[c["name"]] = (str(c.get("version", "")), str(c.get("license", "")))
    with open(functions / "functions.jsonl", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            if row.get("kind") != "function" or row.get("sha256") not in verified:
                continue
            signature = " ".join(str(row.get("signature") or "").split())
            match = _SIGNATURE.match(signature)
            if not match or "{" in signature:
                continue
            params = [p.strip().split(": ", 1) for p in match.group(2).split(",") if p.strip()]
            version, licence = licences.get(row["crate"], ("", "std (MIT OR Apache-2.0)" if row["crate"] in ("std", "core", "alloc", "coretests") else ""))
            yield {**row, "fn": match.group(1), "params": params, "ret": match.group(3),
                   "version": version, "licence": licence}  # fmt: skip


def _prompt(row: dict[str, Any]) -> str:
    uses = str(row.get("std_uses") or "").strip()
    doc = "".join(f"/// {line}".rstrip() + "\n" for line in str(row.get("doc") or "").splitlines())
    signature = " ".join(str(row["signature"]).split())
    return (uses + "\n" if uses else "") + doc + signature + " {\n"


def _run_batch(rows: list[dict[str, Any]], inputs: list[list[list[str]]]) -> list[list[str | None]] | None:
    parts = [_LITERALS, _LITERALS_EXTRA, "fn quiet() { std::panic::set_hook(Box::new(|_| {})); }\n"]
    for i, (row, calls) in enumerate(zip(rows, inputs)):
        body = "".join(
            f"        match std::panic::catch_unwind(|| {row['fn']}({', '.join(args)}).lit()) {{\n"
            f"            Ok(v) => println!(\"{i}\\t{k}\\t{{}}\", v), Err(_) => println!(\"{i}\\t{k}\\t!panic\") }}\n"
            for k, args in enumerate(calls)
        )
        parts.append(f"#[allow(warnings)]\nmod m{i} {{\n    use super::Lit;\n{_prompt(row)}{row['body'].strip(chr(10))}\n}}\n"
                     f"    pub fn run() {{\n{body}    }}\n}}\n")  # fmt: skip
    parts.append("fn main() {\n    quiet();\n" + "".join(f"    m{i}::run();\n" for i in range(len(rows))) + "}\n")
    stdout = run_program("".join(parts), _RUN_LIMITS)
    if stdout is None:
        return None
    out: list[list[str | None]] = [[None] * len(calls) for calls in inputs]
    for line in stdout.splitlines():
        fields = line.split("\t", 2)
        if len(fields) == 3 and fields[0].isdigit() and fields[1].isdigit():
            i, k = int(fields[0]), int(fields[1])
            if i < len(out) and k < len(out[i]):
                out[i][k] = None if fields[2] == "!panic" else fields[2]
    return out


def mine(functions: str | Path, crates: str | Path | None = None, *, inputs_per_task: int = 6, seed: int = 0,
         heldout_fraction: float = 0.2, batch: int = 40, limit: int | None = None) -> tuple[list[Task], dict[str, int]]:  # fmt: skip
    """Mined tasks and counters (candidates, contaminated, refused, no_build, too_few, constant, kept)."""
    rows = list(candidates(Path(functions), Path(crates) if crates else None))
    if limit is not None:
        rows = rows[:limit]
    # Decontamination against the vendored HumanEval-Rust, as for the training mix: a function
    # sharing a 13-token window with a benchmark prompt or test, or under a benchmark-looking
    # path, is no task.
    decontam = Decontaminator()
    clean = [r for r in rows if decontam.reason(_prompt(r) + r["body"], str(r.get("path") or "")) is None]
    contaminated, rows = len(rows) - len(clean), clean
    # A reference the completion policy refuses (std::env, unsafe, ...) would fail its own
    # verification: skip it before building.
    allowed = [r for r in rows if _core.rust_completion_escape(_prompt(r), r["body"].strip("\n"), "\nfn main() {}\n") is None]
    refused, rows = len(rows) - len(allowed), allowed
    rng = random.Random(f"mine/{seed}")
    inputs = [[[_value(rng, ty) for _, ty in row["params"]] for _ in range(inputs_per_task)] for row in rows]
    counts = {"candidates": len(rows) + contaminated + refused, "contaminated": contaminated, "refused": refused,
              "no_build": 0, "too_few": 0, "constant": 0, "kept": 0}
    results: list[list[str | None] | None] = []
    for start in range(0, len(rows), batch):
        chunk, chunk_inputs = rows[start : start + batch], inputs[start : start + batch]
        got = _run_batch(chunk, chunk_inputs)
        if got is None:  # one function fails to build or hangs: try them one by one
            got = [(_run_batch([r], [x]) or [None])[0] for r, x in zip(chunk, chunk_inputs)]  # type: ignore[list-item]
        results.extend(got)
    crates_sorted = sorted({r["crate"] for r in rows})
    held = set(random.Random(f"mine-split/{seed}").sample(crates_sorted, round(len(crates_sorted) * heldout_fraction)))
    tasks, names = [], set()
    for row, args, values in zip(rows, inputs, results):
        if values is None:
            counts["no_build"] += 1
            continue
        pairs = list({tuple(a): (a, v) for a, v in zip(args, values) if v is not None}.values())
        if len(pairs) < 3:
            counts["too_few"] += 1
            continue
        if len({v for _, v in pairs}) < 2:
            counts["constant"] += 1
            continue
        name = f"mined/{row['crate']}/{row['fn']}"
        suffix = 1
        while name in names:
            suffix += 1
            name = f"mined/{row['crate']}/{row['fn']}_{suffix}"
        names.add(name)
        asserts = "".join(f"    assert_eq!({row['fn']}({', '.join(a)}), {v});\n" for a, v in pairs)
        tasks.append(Task(
            name=name, family=f"crate:{row['crate']}", split="heldout" if row["crate"] in held else "train",
            prompt=_prompt(row), test="\nfn main() {\n" + asserts + "}\n", entry_point=row["fn"],
            reference=row["body"].strip("\n"),
            provenance={"source": "mined", "family": f"crate:{row['crate']}", "crate": row["crate"], "version": row["version"], "licence": row["licence"],
                        "path": row.get("path"), "lines": [row.get("start_line"), row.get("end_line")],
                        "sha256": row["sha256"], "inputs_seed": seed},
        ))  # fmt: skip
        counts["kept"] += 1
    return tasks, counts
