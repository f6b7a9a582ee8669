"""HumanEval-Rust: loading, truncation, pass@k, and the self-check — correct
solutions pass and each kind of wrong one fails with the right outcome."""

from __future__ import annotations

import json
import math
from itertools import combinations
from pathlib import Path

import pytest

from nanochat_ternary.eval import humaneval, passk
from nanochat_ternary.eval.__main__ import main
from nanochat_ternary.eval.sandbox import Limits

FAST = Limits(cpu_seconds=1, memory_bytes=512 << 20, processes=16, wall_seconds=4.0)

CORRECT = {
    "HumanEval_53_add": "    x + y\n}",
    "HumanEval_23_strlen": "    string.chars().count() as isize\n}",
    "HumanEval_55_fib": "    let (mut a, mut b) = (0, 1);\n    for _ in 0..n { let t = a + b; a = b; b = t; }\n    a\n}",
    "HumanEval_60_sum_to_n": "    (1..=n).sum()\n}",
    "HumanEval_13_greatest_common_divisor": "    if b == 0 { a } else { greatest_common_divisor(b, a % b) }\n}",
}
WRONG = {
    "runtime_error": "    0\n}",  # wrong answer: assert_eq! panics
    "timeout": "    loop { std::hint::black_box(0); }\n}",
    "compile_error": '    "not a number"\n}',
}


def test_vendored_problems_load() -> None:
    problems = humaneval.load_problems()
    assert len(problems) == 156
    assert all(p.stop_tokens == ("\n}",) and p.prompt.rstrip().endswith("{") for p in problems)
    assert (Path(humaneval.__file__).parent / "data" / "README.md").read_text().count("MIT") >= 1


def test_bad_problem_file_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "p.jsonl"
    bad.write_text('{"name": "x"}\n')
    with pytest.raises(ValueError, match="line 1"):
        humaneval.load_problems(bad)


def test_truncate_and_assemble() -> None:
    assert humaneval.truncate("  a\n}\nfn junk() {}\n}", ["\n}"]) == "  a"
    assert humaneval.truncate("no stop", ["\n}"]) == "no stop"
    problem = humaneval.Problem("p", "fn f() -> u8 {\n", "\nfn main() {}\n", ("\n}",), "f")
    assert humaneval.assemble(problem, "    1\n}\nextra") == "fn f() -> u8 {\n    1\n}\nfn main() {}\n"


def brute_pass_at_k(n: int, c: int, k: int) -> float:
    draws = list(combinations([True] * c + [False] * (n - c), k))
    return sum(any(d) for d in draws) / len(draws)


@pytest.mark.parametrize("n,c,k", [(5, 0, 1), (5, 2, 1), (6, 3, 2), (10, 1, 10), (8, 5, 3), (7, 7, 4)])
def test_pass_at_k_matches_enumeration(n: int, c: int, k: int) -> None:
    assert passk.pass_at_k(n, c, k) == pytest.approx(brute_pass_at_k(n, c, k))


def test_pass_at_k_is_stable_and_validated() -> None:
    assert passk.pass_at_k(200, 1, 1) == pytest.approx(1 / 200)
    assert passk.pass_at_k(1000, 3, 10) == pytest.approx(1 - math.comb(997, 10) / math.comb(1000, 10))
    with pytest.raises(ValueError, match="at least 10"):
        passk.pass_at_k(5, 1, 10)
    with pytest.raises(ValueError):
        passk.pass_at_k(5, 6, 1)


def test_self_check_correct_pass_and_wrong_fail_with_right_outcome() -> None:
    problems = [p for p in humaneval.load_problems() if p.name in CORRECT]
    assert len(problems) == 5
    panic = {p.name: "    panic!(\"boom\")\n}" for p in problems}
    completions = {p.name: [CORRECT[p.name], *WRONG.values(), panic[p.name]] for p in problems}
    report = humaneval.evaluate_completions(problems, completions, ks=(1, 10), parallel=2, limits=FAST)
    expected = ["pass", *WRONG.keys(), "runtime_error"]
    for name in CORRECT:
        outcomes = [r["outcome"] for r in report["results"] if r["name"] == name]
        assert outcomes == expected, (name, [r for r in report["results"] if r["name"] == name])
    assert report["outcomes"] == {"pass": 5, "compile_error": 5, "runtime_error": 10, "timeout": 5, "forbidden": 0}
    assert report["pass_at_k"] == {"pass@1": pytest.approx(1 / 5)}
    assert report["skipped_k"] == [10]
    panics = [r for r in report["results"] if "boom" in r["detail"]]
    assert len(panics) == 5
    json.dumps(report)  # the report is JSON-serialisable


ESCAPES = {
    # Exit with status 0 before the asserts run.
    "exit": "    std::process::exit(0)\n}",
    # Close the function (returning a wrong 0) and shadow assert_eq! for the test that follows.
    "macro": "    0 }\nmacro_rules! assert_eq { ($($t:tt)*) => {} }\nfn pad() {\n}",
    "use": "    0 } use std::dbg as assert_eq; fn pad() {\n}",
}


def test_escapes_that_would_pass_are_forbidden() -> None:
    from nanochat_ternary.eval.rustc import compile_rust
    from nanochat_ternary.eval.sandbox import run_untrusted, sandbox_dir

    problem = next(p for p in humaneval.load_problems() if p.name == "HumanEval_53_add")
    assert "assert_eq!(" in problem.test
    for name, completion in ESCAPES.items():
        # Each is a real hole: compiled and run as is, the wrong program exits with status 0.
        with sandbox_dir() as workdir:
            assert compile_rust(humaneval.assemble(problem, completion), workdir, binary=True).ok, name
            assert run_untrusted([f"./{humaneval.BINARY_NAME}"], workdir, FAST).returncode == 0, name
        result = humaneval.run_sample(problem, completion, limits=FAST)
        assert result.outcome == "forbidden", (name, result)
        assert ("leaves its function" if name != "exit" else "module `process`") in result.detail
    report = humaneval.evaluate_completions([problem], {problem.name: list(ESCAPES.values())}, ks=(1,), limits=FAST)
    assert report["outcomes"]["forbidden"] == 3 and report["pass_at_k"] == {"pass@1": 0.0}


def test_every_vendored_prompt_and_test_is_checkable_and_honest_bodies_pass_the_policy() -> None:
    from nanochat_ternary import _core

    for problem in humaneval.load_problems():
        assert _core.rust_completion_escape(problem.prompt, "    todo!()", problem.test) is None, problem.name
    for name, body in CORRECT.items():
        problem = next(p for p in humaneval.load_problems() if p.name == name)
        assert _core.rust_completion_escape(problem.prompt, humaneval.truncate(body, ["\n}"]), problem.test) is None
    with pytest.raises(ValueError):
        _core.rust_completion_escape("fn f( {\n", "1", "fn main() {}")


def test_evaluate_model_accepts_callable_and_generate_object() -> None:
    problems = [p for p in humaneval.load_problems() if p.name == "HumanEval_53_add"]

    class Model:
        def generate(self, prompts: list[str], temperature: float = 0.0) -> list[str]:
            assert temperature == 0.5
            return ["    x + y\n}" for _ in prompts]

    report = humaneval.evaluate_model(Model(), problems, n=2, ks=(1,), temperature=0.5)
    assert report["pass_at_k"] == {"pass@1": 1.0} and report["samples"] == 2
    report = humaneval.evaluate_model(lambda prompts: ["    x - y\n}"] * len(prompts), problems, ks=(1,))
    assert report["pass_at_k"] == {"pass@1": 0.0}
    with pytest.raises(ValueError, match="one string per prompt"):
        humaneval.evaluate_model(lambda prompts: [], problems)
    with pytest.raises(TypeError):
        humaneval.evaluate_model(42, problems)  # type: ignore[arg-type]


def test_cli_with_precomputed_completions(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    completions = tmp_path / "c.jsonl"
    rows = [{"name": "HumanEval_53_add", "completion": "    x + y\n}"},
            {"name": "HumanEval_53_add", "completion": "    x * y\n}"}]  # fmt: skip
    completions.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "new" / "dir" / "report.json"  # missing parents are created
    assert main(["humaneval", "--completions", str(completions), "--k", "1", "2", "--output", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["pass_at_k"] == {"pass@1": 0.5, "pass@2": 1.0}
    assert [r["outcome"] for r in report["results"]] == ["pass", "runtime_error"]
    assert "pass@1" in capsys.readouterr().out


def test_cli_output_that_is_a_directory_fails_before_running(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["humaneval", "--completions", str(tmp_path / "missing.jsonl"), "--output", str(tmp_path)])
    assert exit_info.value.code == 2 and "is a directory" in capsys.readouterr().err


def test_cli_rejects_bad_flags(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["humaneval"], ["humaneval", "--completions", "x", "--k", "0"],
                 ["humaneval", "--generator", "no_colon"], ["nonsense"]):  # fmt: skip
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
    with pytest.raises(SystemExit):
        main(["humaneval", "--completions", "/nonexistent/file.jsonl"])
    assert "error" in capsys.readouterr().err
