"""Rewards of the RL task set (rustc + sandbox), the task loader, and the shipped tasks.

Run: cd tests && ../.venv/bin/python -m pytest -q test_rl_rewards.py
"""

import json
import shutil
from collections import Counter

import pytest

from nanochat_ternary.eval.sandbox import Limits
from nanochat_ternary.rl import rewards
from nanochat_ternary.rl.rewards import ScoreStats, score
from nanochat_ternary.rl.tasks import Task, load_tasks

pytestmark = pytest.mark.skipif(shutil.which("rustc") is None, reason="needs rustc")


def _task(name="add_two", body="    x + 2", tests=((1, 3), (-5, -3))) -> Task:
    asserts = "".join(f"    assert_eq!({name}({a}), {b});\n" for a, b in tests)
    return Task(name=f"t/{name}", family="add", split="train",
                prompt=f"/// Returns x plus 2.\nfn {name}(x: i64) -> i64 {{\n", test=f"\nfn main() {{\n{asserts}}}\n",
                entry_point=name, reference=body, provenance={"source": "test"})


def test_outcomes_are_attributed_per_candidate_in_one_batch(monkeypatch):
    monkeypatch.setattr(rewards, "RUN_LIMITS", Limits(cpu_seconds=2, wall_seconds=3.0))
    monkeypatch.setattr(rewards, "BATCH_RUN_LIMITS", Limits(cpu_seconds=2, wall_seconds=3.0))
    t = _task()
    completions = {
        "right": "    x + 2\n}\n\nthis text after the function's end is cut",
        "right2": "    let y = x;\n    y + 1 + 1",
        "wrong": "    x + 3",
        "type_error": "    x + \"2\"",
        "unknown_name": "    x + undefined_thing",
        "parse_error": "    x + + ) 2",
        "todo_stub": "    todo!()",
        "empty_stub": "",
        "panics": "    panic!(\"no\")",
        "exits_early": "    std::process::exit(0)",
        "loops_forever": "    loop {}",
        "right3": "    2 + x",
    }
    stats = ScoreStats()
    checks = score([(t, c) for c in completions.values()], stats=stats, workers=1)
    got = dict(zip(completions, (c.outcome for c in checks)))
    assert got == {
        "right": "pass", "right2": "pass", "wrong": "runtime_error", "type_error": "compile_error",
        "unknown_name": "compile_error", "parse_error": "parse_error", "todo_stub": "runtime_error",
        "empty_stub": "compile_error", "panics": "runtime_error",
        # exit(0) before the asserts: refused before compiling (and it would print no success line).
        "exits_early": "forbidden", "loops_forever": "timeout", "right3": "pass",
    }
    assert [c.reward for c in checks] == [1.0 if o == "pass" else 0.0 for o in got.values()]
    # The two compile errors were attributed inside one batch: check, re-check, build (no per-candidate rustc).
    assert stats.rustc_calls == 3
    assert stats.candidates == len(completions)


FORGER = ("    let a: Vec<String> = std::env::args().collect();\n"
          "    for i in 0..3 { println!(\"{} {} ok\", a[1], i); }\n    std::process::exit(0)")


def test_a_body_that_forges_the_batch_runners_lines_is_forbidden(monkeypatch):
    t = _task()
    batch = [(t, FORGER), (t, "    x + 3"), (t, "    x + 2")]
    # The hole is real: with the policy off, the forger's lines (it reads the run's nonce from
    # its arguments) make the wrong candidate after it pass.
    monkeypatch.setattr(rewards._core, "rust_completion_escape", lambda prompt, body, test: None)
    assert [c.outcome for c in score(batch, workers=1)] == ["pass", "pass", "pass"]
    monkeypatch.undo()
    checks = score(batch, workers=1)
    assert [c.outcome for c in checks] == ["forbidden", "runtime_error", "pass"]
    assert "module `env`" in checks[0].detail and checks[0].reward == 0.0
    # Leaving the function to neuter the test's assert_eq! is refused too.
    shadow = "    0 }\nmacro_rules! assert_eq { ($($t:tt)*) => {} }\nfn pad() {"
    assert [c.outcome for c in score([(t, shadow)], workers=1)] == ["forbidden"]


def test_truncated_and_non_utf8_score_zero_without_compiling():
    t = _task()
    stats = ScoreStats()
    checks = score([(t, "    x + 2 + 0 * (((((("), (t, "    x + 2\n}"), (t, "    x \ufffd+ 2")],
                   finished=[False, False, True], stats=stats)
    assert [c.outcome for c in checks] == ["truncated", "pass", "parse_error"]
    assert stats.rustc_calls == 2  # only the one finished candidate was compiled (check + build)


def test_a_broken_harness_scores_zero_and_does_not_raise(monkeypatch):
    def boom(*args, **kwargs):
        raise OSError("sandbox exploded")
    monkeypatch.setattr(rewards, "run_tool", boom)
    checks = score([(_task(), "    x + 2")])
    assert checks[0].reward == 0.0 and "harness error" in checks[0].detail


def _write(path, tasks):
    path.write_text("".join(t.to_json() + "\n" for t in tasks), encoding="utf-8")


def test_load_rejects_tasks_whose_reference_fails(tmp_path):
    good, bad = _task(), _task(name="add_bad", body="    x + 5")
    _write(tmp_path / "t.jsonl", [good, bad])
    ts = load_tasks(tmp_path / "t.jsonl", verify=True)
    assert [t.name for t in ts.tasks] == ["t/add_two"] and ts.rejected == 1 and ts.rejected_names == ["t/add_bad"]


@pytest.mark.parametrize("line, message", [
    ("{not json", "not JSON"),
    (json.dumps({"name": "x"}), "field 'family'"),
    (None, "split must be"),
    (None, "duplicate task name"),
])
def test_load_errors_name_the_line(tmp_path, line, message):
    record = json.loads(_task().to_json())
    if message == "split must be":
        record["split"] = "test"
        line = json.dumps(record)
    if message == "duplicate task name":
        line = json.dumps(record) + "\n" + json.dumps(record)
    (tmp_path / "t.jsonl").write_text(line + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        load_tasks(tmp_path / "t.jsonl")
    (tmp_path / "u.jsonl").write_bytes(b"\xff\xfe")
    with pytest.raises(ValueError, match="not UTF-8"):
        load_tasks(tmp_path / "u.jsonl")


def test_shipped_task_set():
    ts = load_tasks()
    assert len(ts.tasks) >= 2000
    train, held = set(ts.families("train")), set(ts.families("heldout"))
    assert len(train) >= 30 and len(held) >= 10 and not train & held
    assert all(t.provenance.get("source") and t.provenance.get("family") == t.family for t in ts.tasks)
    assert len({t.name for t in ts.tasks}) == len(ts.tasks)
    # A sample spread over every family passes with its reference and fails with a stub body.
    by_family = {}
    for t in sorted(ts.tasks, key=lambda t: t.name):
        by_family.setdefault(t.family, t)
    sample = list(by_family.values())
    checks = score([(t, t.reference) for t in sample] + [(t, "    todo!()") for t in sample])
    outcomes = Counter(c.outcome for c in checks[: len(sample)])
    assert outcomes == {"pass": len(sample)}
    assert not any(c.reward for c in checks[len(sample):])


def test_generator_tests_come_from_running_the_reference():
    from nanochat_ternary.rl.generator import generate_tasks

    tasks = generate_tasks(per_family=2, seed=7, families=["add_const", "safe_div", "evens", "greeting"])
    assert len(tasks) == 8
    add = next(t for t in tasks if t.family == "add_const")
    k = int(add.reference.split("+")[1])
    for line in add.test.splitlines():
        if "assert_eq!" in line:  # assert_eq!(name(A), B) with B = A + k
            a, b = line.split("(", 2)[2].split(")")[0], line.rsplit(", ", 1)[1].rstrip(");")
            assert int(b) == int(a) + k
    assert all(c.outcome == "pass" for c in score([(t, t.reference) for t in tasks]))


def test_mined_tasks_are_tested_differentially(tmp_path):
    """A tiny synthetic corpus: a qualifying function becomes a task whose asserts hold the original's
    outputs; a constant one, a method-like signature, an unverified one and a generic one are not mined."""
    from nanochat_ternary.rl.mined import mine

    def fn(name, signature, body, doc="", ok=True):
        return {"kind": "function", "name": name, "signature": signature, "body": body, "doc": doc, "std_uses": "",
                "crate": "democrate", "path": "democrate-1.0.0/src/lib.rs", "start_line": 1, "end_line": 3,
                "sha256": name * 4, "text": "", "standalone": True, "nontrivial": True, "impl_header": None, "group": "crate:democrate"}, ok
    rows = [
        fn("double", "pub fn double(x: i64) -> i64", "\n    x * 2\n", "Twice x."),
        fn("shout", "fn shout(s: &str) -> String", "\n    s.to_uppercase()\n"),
        fn("always", "fn always(x: u8) -> bool", "\n    true\n"),
        fn("generic", "fn generic<T>(x: T) -> T", "\n    x\n"),
        fn("unverified", "fn unverified(x: i32) -> i32", "\n    x\n", ok=False),
        fn("halve", "fn halve(x: u32) -> u32", "\n    100 / x\n"),  # panics on 0: that input is dropped
    ]
    # Decontamination: a doc copied from a HumanEval-Rust prompt, and a path of an exercise collection.
    from nanochat_ternary.eval.humaneval import load_problems

    copied = next(p for p in load_problems() if p.name == "HumanEval_23_strlen").prompt
    doc = "\n".join(line.removeprefix("/// ") for line in copied.splitlines() if line.startswith("///"))
    rows.append(fn("strlen", "fn strlen(string: String) -> isize", "\n    string.len() as isize\n", doc))
    exercise = fn("triple", "fn triple(x: i64) -> i64", "\n    x * 3\n")
    exercise[0]["path"] = "democrate-1.0.0/exercism/rust/triple.rs"
    rows.append(exercise)
    # A body the completion policy refuses is not built.
    rows.append(fn("args_len", "fn args_len(x: usize) -> usize", "\n    x + std::env::args().count()\n"))
    (tmp_path / "functions.jsonl").write_text("".join(json.dumps(r) + "\n" for r, _ in rows))
    (tmp_path / "verify.jsonl").write_text("".join(json.dumps({"sha256": r["sha256"], "ok": ok}) + "\n" for r, ok in rows))
    crates = tmp_path / "crates"
    crates.mkdir()
    (crates / "crates.json").write_text(json.dumps({"crates": [{"name": "democrate", "version": "1.0.0", "license": "MIT"}]}))
    tasks, counts = mine(tmp_path, crates, inputs_per_task=8, heldout_fraction=0.0)
    assert counts["candidates"] == 7 and counts["contaminated"] == 2 and counts["refused"] == 1 and counts["constant"] == 1
    by = {t.entry_point: t for t in tasks}
    assert set(by) == {"double", "shout", "halve"}
    assert by["double"].prompt == "/// Twice x.\npub fn double(x: i64) -> i64 {\n"
    for line in by["double"].test.splitlines():
        if "assert_eq!" in line:
            arg, want = line.split("double(")[1].split("), ")
            assert int(want.rstrip(");")) == 2 * int(arg.removesuffix("i64"))
    assert "double(0u32" not in by["halve"].test and "halve(0u32)" not in by["halve"].test
    assert by["shout"].provenance["licence"] == "MIT" and by["shout"].provenance["crate"] == "democrate"
    assert all(c.outcome == "pass" for c in score([(t, t.reference) for t in tasks]))
