"""Procedural generator of simple typed Rust tasks (never HumanEval/MBPP-derived).

Each family makes instances from a seeded RNG: a doc comment, a signature, a
reference body and random inputs. The expected values come from *running the
reference*: all references of a batch are compiled into one program that
prints each result as a Rust literal, and those literals become the
``assert_eq!`` tests. Families are split into train and held-out as wholes
(:data:`HELDOUT`). Every task is then checked by the reward harness with its
reference as the completion; failures are dropped and counted.

    python -m nanochat_ternary.rl generate --out python/nanochat_ternary/rl/data/tasks.jsonl
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from ..eval.rustc import compile_rust
from ..eval.sandbox import Limits, run_untrusted, sandbox_dir
from .rewards import RUN_LIMITS
from .tasks import Task

GENERATOR_VERSION = 1
# Whole families the policy never trains on: pass@k is measured there.
HELDOUT = frozenset({
    "sub_const", "min_of_two", "is_odd", "count_digits", "is_vowel", "count_words", "product",
    "index_of", "reverse_vec", "remove_spaces", "safe_sub", "cube",
})  # fmt: skip

Spec = dict[str, Any]
WORDS = ["apple", "river", "stone", "cloud", "tiger", "maple", "ocean", "pixel", "rust", "crab", "lemon", "north"]
NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
                "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty"]  # fmt: skip


def rust_str(s: str) -> str:
    out = []
    for ch in s:
        out.append({"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t"}.get(ch, ch))
    return '"' + "".join(out) + '"'


def rust_char(c: str) -> str:
    return "'" + {"\\": "\\\\", "'": "\\'"}.get(c, c) + "'"


def _ints(rng: random.Random, n: int, lo: int, hi: int) -> list[int]:
    return [rng.randint(lo, hi) for _ in range(n)]


def _slice(values: list[int]) -> str:
    return "&[" + ", ".join(map(str, values)) + "]"


def _word(rng: random.Random) -> str:
    return rng.choice(WORDS)


def _text(rng: random.Random, max_words: int = 4) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(0, max_words)))


def _pick(rng: random.Random, *options: str) -> str:
    return rng.choice(options)


def _int_type(rng: random.Random) -> str:
    return rng.choice(["i32", "i64"])


# ------------------------------------------------------------------ families
# Each returns a spec: doc, name, params [(name, type)], ret, body, inputs
# (lists of argument literals). Bodies are indented by four spaces.


def f_return_const(rng: random.Random) -> Spec:
    k = rng.randint(0, 20)
    t = _int_type(rng)
    name = _pick(rng, f"{NUMBER_WORDS[k]}", f"get_{NUMBER_WORDS[k]}", f"const_{NUMBER_WORDS[k]}")
    return dict(doc=f"Returns the number {k}.", name=name, params=[], ret=t, body=f"    {k}\n", inputs=[[]])


def f_add_const(rng: random.Random) -> Spec:
    k, t = rng.randint(1, 99), _int_type(rng)
    return dict(doc=f"Returns x plus {k}.", name=_pick(rng, f"add_{k}", f"plus_{k}", f"add_{NUMBER_WORDS[k % 21]}_{k}"),
                params=[("x", t)], ret=t, body=f"    x + {k}\n", inputs=[[str(v)] for v in _ints(rng, 5, -500, 500)])  # fmt: skip


def f_sub_const(rng: random.Random) -> Spec:
    k, t = rng.randint(1, 99), _int_type(rng)
    return dict(doc=f"Returns x minus {k}.", name=_pick(rng, f"sub_{k}", f"minus_{k}"), params=[("x", t)], ret=t,
                body=f"    x - {k}\n", inputs=[[str(v)] for v in _ints(rng, 5, -500, 500)])  # fmt: skip


def f_mul_const(rng: random.Random) -> Spec:
    k, t = rng.randint(2, 30), _int_type(rng)
    return dict(doc=f"Returns x multiplied by {k}.", name=_pick(rng, f"times_{k}", f"mul_{k}", f"scale_by_{k}"),
                params=[("x", t)], ret=t, body=f"    x * {k}\n", inputs=[[str(v)] for v in _ints(rng, 5, -300, 300)])  # fmt: skip


def f_cube(rng: random.Random) -> Spec:
    t = _int_type(rng)
    v = _pick(rng, "x", "n", "v")
    return dict(doc=_pick(rng, f"Returns {v} cubed.", f"The cube of {v}.", f"{v} to the third power."),
                name=_pick(rng, "cube", "cubed", f"cube_of_{v}"), params=[(v, t)], ret=t, body=f"    {v} * {v} * {v}\n",
                inputs=[[str(x)] for x in _ints(rng, 5, -100, 100)])  # fmt: skip


def f_square_plus(rng: random.Random) -> Spec:
    k, t = rng.randint(0, 50), _int_type(rng)
    return dict(doc=f"Returns x squared plus {k}.", name=_pick(rng, f"square_plus_{k}", f"sq_add_{k}"),
                params=[("x", t)], ret=t, body=f"    x * x + {k}\n", inputs=[[str(x)] for x in _ints(rng, 5, -200, 200)])  # fmt: skip


def f_max_of_two(rng: random.Random) -> Spec:
    t = _int_type(rng)
    a, b = _pick(rng, "a", "x", "left"), _pick(rng, "b", "y", "right")
    return dict(doc="Returns the larger of the two numbers.", name=_pick(rng, "max_of_two", "larger", "bigger", "max2"),
                params=[(a, t), (b, t)], ret=t, body=f"    if {a} > {b} {{ {a} }} else {{ {b} }}\n",
                inputs=[[str(x), str(y)] for x, y in zip(_ints(rng, 5, -99, 99), _ints(rng, 5, -99, 99))])  # fmt: skip


def f_min_of_two(rng: random.Random) -> Spec:
    t = _int_type(rng)
    a, b = _pick(rng, "a", "x", "left"), _pick(rng, "b", "y", "right")
    return dict(doc="Returns the smaller of the two numbers.", name=_pick(rng, "min_of_two", "smaller", "min2"),
                params=[(a, t), (b, t)], ret=t, body=f"    if {a} < {b} {{ {a} }} else {{ {b} }}\n",
                inputs=[[str(x), str(y)] for x, y in zip(_ints(rng, 5, -99, 99), _ints(rng, 5, -99, 99))])  # fmt: skip


def f_clamp(rng: random.Random) -> Spec:
    lo = rng.randint(-50, 10)
    hi = lo + rng.randint(1, 60)
    return dict(doc=f"Clamps x to the range [{lo}, {hi}].", name=_pick(rng, "clamp_value", f"clamp_{abs(lo)}_{abs(hi)}", "limit"),
                params=[("x", "i64")], ret="i64",
                body=f"    if x < {lo} {{\n        {lo}\n    }} else if x > {hi} {{\n        {hi}\n    }} else {{\n        x\n    }}\n",
                inputs=[[str(x)] for x in _ints(rng, 6, -100, 100)])  # fmt: skip


def f_is_even(rng: random.Random) -> Spec:
    v = _pick(rng, "n", "x", "value")
    return dict(doc=_pick(rng, f"True when {v} is even.", f"Whether {v} is divisible by two."),
                name=_pick(rng, "is_even", "even", "check_even"), params=[(v, _int_type(rng))], ret="bool",
                body=f"    {v} % 2 == 0\n", inputs=[[str(x)] for x in _ints(rng, 6, -50, 50)])  # fmt: skip


def f_is_odd(rng: random.Random) -> Spec:
    v = _pick(rng, "n", "x", "value")
    return dict(doc=_pick(rng, f"True when {v} is odd.", f"Whether {v} is not divisible by two."),
                name=_pick(rng, "is_odd", "odd", "check_odd"), params=[(v, _int_type(rng))], ret="bool",
                body=f"    {v} % 2 != 0\n", inputs=[[str(x)] for x in _ints(rng, 6, -50, 50)])  # fmt: skip


def f_multiple_of(rng: random.Random) -> Spec:
    k = rng.randint(2, 15)
    return dict(doc=f"True when n is a multiple of {k}.", name=_pick(rng, f"is_multiple_of_{k}", f"divisible_by_{k}"),
                params=[("n", "i64")], ret="bool", body=f"    n % {k} == 0\n",
                inputs=[[str(x)] for x in _ints(rng, 4, -100, 100) + [k * rng.randint(-5, 5), 0]])  # fmt: skip


def f_sign(rng: random.Random) -> Spec:
    return dict(doc="Returns -1 for negative numbers, 1 for positive numbers and 0 for zero.",
                name=_pick(rng, "sign", "signum_of", "sign_of"), params=[("x", "i64")], ret="i64",
                body="    if x < 0 {\n        -1\n    } else if x > 0 {\n        1\n    } else {\n        0\n    }\n",
                inputs=[[str(x)] for x in _ints(rng, 4, -100, 100) + [0]])  # fmt: skip


def f_sum_to_n(rng: random.Random) -> Spec:
    return dict(doc=_pick(rng, "Sum of the integers from 1 to n.", "Returns 1 + 2 + ... + n."),
                name=_pick(rng, "sum_to_n", "triangular", "sum_up_to"), params=[("n", "u64")], ret="u64",
                body="    let mut total = 0;\n    for i in 1..=n {\n        total += i;\n    }\n    total\n",
                inputs=[[str(x)] for x in _ints(rng, 5, 0, 200)])  # fmt: skip


def f_factorial(rng: random.Random) -> Spec:
    return dict(doc="Returns n factorial.", name=_pick(rng, "factorial", "fact", "factorial_of"), params=[("n", "u64")],
                ret="u64", body="    (1..=n).product()\n", inputs=[[str(x)] for x in _ints(rng, 5, 0, 20)])  # fmt: skip


def f_fibonacci(rng: random.Random) -> Spec:
    return dict(doc="Returns the n-th Fibonacci number (fib(0) = 0, fib(1) = 1).", name=_pick(rng, "fib", "fibonacci", "nth_fib"),
                params=[("n", "u32")], ret="u64",
                body="    let (mut a, mut b) = (0u64, 1u64);\n    for _ in 0..n {\n        let c = a + b;\n        a = b;\n        b = c;\n    }\n    a\n",
                inputs=[[str(x)] for x in _ints(rng, 5, 0, 60)])  # fmt: skip


def f_gcd(rng: random.Random) -> Spec:
    return dict(doc="Greatest common divisor of a and b.", name=_pick(rng, "gcd", "greatest_common_divisor"),
                params=[("a", "u64"), ("b", "u64")], ret="u64",
                body="    let (mut a, mut b) = (a, b);\n    while b != 0 {\n        let t = a % b;\n        a = b;\n        b = t;\n    }\n    a\n",
                inputs=[[str(x), str(y)] for x, y in zip(_ints(rng, 5, 0, 500), _ints(rng, 5, 1, 500))])  # fmt: skip


def f_power(rng: random.Random) -> Spec:
    k = rng.randint(2, 6)
    return dict(doc=f"Returns x to the power {k}.", name=_pick(rng, f"pow_{k}", f"power_{k}"), params=[("x", "i64")],
                ret="i64", body=f"    x.pow({k})\n", inputs=[[str(x)] for x in _ints(rng, 5, -12, 12)])  # fmt: skip


def f_digit_sum(rng: random.Random) -> Spec:
    return dict(doc="Sum of the decimal digits of n.", name=_pick(rng, "digit_sum", "sum_digits", "sum_of_digits"),
                params=[("n", "u64")], ret="u64",
                body="    let mut n = n;\n    let mut s = 0;\n    while n > 0 {\n        s += n % 10;\n        n /= 10;\n    }\n    s\n",
                inputs=[[str(x)] for x in _ints(rng, 5, 0, 10**9)])  # fmt: skip


def f_count_digits(rng: random.Random) -> Spec:
    return dict(doc="Number of decimal digits of n (1 for zero).", name=_pick(rng, "count_digits", "num_digits", "digit_count"),
                params=[("n", "u64")], ret="u32",
                body="    let mut n = n;\n    let mut c = 1;\n    while n >= 10 {\n        n /= 10;\n        c += 1;\n    }\n    c\n",
                inputs=[[str(x)] for x in _ints(rng, 5, 0, 10**12)])  # fmt: skip


def f_reverse_digits(rng: random.Random) -> Spec:
    return dict(doc="The decimal digits of n in reverse order, as a number.", name=_pick(rng, "reverse_digits", "reverse_number"),
                params=[("n", "u64")], ret="u64",
                body="    let mut n = n;\n    let mut r = 0;\n    while n > 0 {\n        r = r * 10 + n % 10;\n        n /= 10;\n    }\n    r\n",
                inputs=[[str(x)] for x in _ints(rng, 5, 0, 10**8)])  # fmt: skip


def f_is_prime(rng: random.Random) -> Spec:
    return dict(doc="True when n is a prime number.", name=_pick(rng, "is_prime", "prime", "check_prime"),
                params=[("n", "u64")], ret="bool",
                body="    if n < 2 {\n        return false;\n    }\n    let mut d = 2;\n    while d * d <= n {\n        if n % d == 0 {\n            return false;\n        }\n        d += 1;\n    }\n    true\n",
                inputs=[[str(x)] for x in _ints(rng, 6, 0, 200)])  # fmt: skip


def _float(rng: random.Random) -> str:
    return f"{rng.randint(-400, 400) / 4:.2f}"


def f_scale_float(rng: random.Random) -> Spec:
    k = rng.choice([0.5, 1.5, 2.0, 2.5, 3.0, 4.0, 10.0, 0.25])
    return dict(doc=f"Returns x multiplied by {k}.", name=_pick(rng, "scale", f"scale_{str(k).replace('.', '_')}"),
                params=[("x", "f64")], ret="f64", body=f"    x * {k}\n", inputs=[[_float(rng)] for _ in range(5)])  # fmt: skip


def f_average(rng: random.Random) -> Spec:
    return dict(doc="Arithmetic mean of the values; 0.0 when empty.", name=_pick(rng, "average", "mean", "avg"),
                params=[("values", "&[f64]")], ret="f64",
                body="    if values.is_empty() {\n        return 0.0;\n    }\n    values.iter().sum::<f64>() / values.len() as f64\n",
                inputs=[["&[" + ", ".join(_float(rng) for _ in range(rng.randint(0, 5))) + "]"] for _ in range(4)])  # fmt: skip


def f_is_vowel(rng: random.Random) -> Spec:
    v = _pick(rng, "c", "ch", "letter")
    return dict(doc="True when the lowercase letter is a vowel (a, e, i, o, u).", name=_pick(rng, "is_vowel", "vowel", "check_vowel"),
                params=[(v, "char")], ret="bool", body=f"    matches!({v}, 'a' | 'e' | 'i' | 'o' | 'u')\n",
                inputs=[[rust_char(rng.choice("abcdefghijklmnopqrstuvwxyz"))] for _ in range(6)])  # fmt: skip


def f_is_digit(rng: random.Random) -> Spec:
    v = _pick(rng, "c", "ch")
    return dict(doc="True when the character is an ASCII digit.", name=_pick(rng, "is_digit", "is_ascii_digit_char"),
                params=[(v, "char")], ret="bool", body=f"    {v}.is_ascii_digit()\n",
                inputs=[[rust_char(rng.choice("abc0123456789xyz-"))] for _ in range(6)])  # fmt: skip


def f_shift_char(rng: random.Random) -> Spec:
    k = rng.randint(1, 5)
    return dict(doc=f"The lowercase letter {k} places later in the alphabet, wrapping from z to a.",
                name=_pick(rng, f"shift_{k}", f"rotate_letter_{k}"), params=[("c", "char")], ret="char",
                body=f"    (((c as u8 - b'a' + {k}) % 26) + b'a') as char\n",
                inputs=[[rust_char(rng.choice("abcdefghijklmnopqrstuvwxyz"))] for _ in range(5)])  # fmt: skip


def f_count_char(rng: random.Random) -> Spec:
    c = rng.choice("aeiorst")
    return dict(doc=f"How many times the character '{c}' occurs in s.", name=_pick(rng, f"count_{c}", f"occurrences_of_{c}"),
                params=[("s", "&str")], ret="usize", body=f"    s.chars().filter(|&c| c == '{c}').count()\n",
                inputs=[[rust_str(_text(rng))] for _ in range(5)])  # fmt: skip


def f_reverse_string(rng: random.Random) -> Spec:
    return dict(doc="Returns the string reversed.", name=_pick(rng, "reverse", "reversed", "reverse_string"),
                params=[("s", "&str")], ret="String", body="    s.chars().rev().collect()\n",
                inputs=[[rust_str(_text(rng, 2))] for _ in range(4)])  # fmt: skip


def f_char_len(rng: random.Random) -> Spec:
    return dict(doc="Number of characters in s.", name=_pick(rng, "char_count", "length", "num_chars"),
                params=[("s", "&str")], ret="usize", body="    s.chars().count()\n",
                inputs=[[rust_str(_text(rng))] for _ in range(4)])  # fmt: skip


def f_repeat(rng: random.Random) -> Spec:
    k = rng.randint(2, 5)
    return dict(doc=f"Returns s repeated {k} times.", name=_pick(rng, f"repeat_{k}", f"{NUMBER_WORDS[k]}_times"),
                params=[("s", "&str")], ret="String", body=f"    s.repeat({k})\n",
                inputs=[[rust_str(_text(rng, 2))] for _ in range(4)])  # fmt: skip


def f_starts_with(rng: random.Random) -> Spec:
    w = _word(rng)[: rng.randint(1, 3)]
    return dict(doc=f"True when s starts with \"{w}\".", name=_pick(rng, f"starts_with_{w}", f"has_prefix_{w}"),
                params=[("s", "&str")], ret="bool", body=f"    s.starts_with({rust_str(w)})\n",
                inputs=[[rust_str(_text(rng, 2))] for _ in range(4)] + [[rust_str(w + _word(rng))]])  # fmt: skip


def f_uppercase(rng: random.Random) -> Spec:
    return dict(doc="Returns s in upper case.", name=_pick(rng, "shout", "to_upper", "uppercase"),
                params=[("s", "&str")], ret="String", body="    s.to_uppercase()\n",
                inputs=[[rust_str(_text(rng, 3))] for _ in range(4)])  # fmt: skip


def f_remove_spaces(rng: random.Random) -> Spec:
    return dict(doc="Returns s without its space characters.", name=_pick(rng, "remove_spaces", "strip_spaces", "no_spaces"),
                params=[("s", "&str")], ret="String", body="    s.chars().filter(|&c| c != ' ').collect()\n",
                inputs=[[rust_str(_text(rng))] for _ in range(4)])  # fmt: skip


def f_count_words(rng: random.Random) -> Spec:
    return dict(doc="Number of words in s, separated by whitespace.", name=_pick(rng, "count_words", "word_count", "num_words"),
                params=[("s", "&str")], ret="usize", body="    s.split_whitespace().count()\n",
                inputs=[[rust_str(_text(rng, 6))] for _ in range(4)])  # fmt: skip


def f_greeting(rng: random.Random) -> Spec:
    g = rng.choice(["Hello", "Hi", "Welcome", "Goodbye", "Hey"])
    return dict(doc=f"Returns \"{g}, NAME!\" for the given name.", name=_pick(rng, f"{g.lower()}", f"say_{g.lower()}", f"greet_{g.lower()}"),
                params=[("name", "&str")], ret="String", body=f"    format!(\"{g}, {{}}!\", name)\n",
                inputs=[[rust_str(_word(rng).title())] for _ in range(3)])  # fmt: skip


def f_is_palindrome(rng: random.Random) -> Spec:
    def sample() -> str:
        w = _word(rng)[: rng.randint(1, 4)]
        return w + w[::-1][rng.randint(0, 1):] if rng.random() < 0.5 else w
    return dict(doc="True when s reads the same forwards and backwards.", name=_pick(rng, "is_palindrome", "palindrome"),
                params=[("s", "&str")], ret="bool", body="    s.chars().eq(s.chars().rev())\n",
                inputs=[[rust_str(sample())] for _ in range(5)])  # fmt: skip


def _vec_input(rng: random.Random, lo: int = -50, hi: int = 50, max_len: int = 6) -> list[int]:
    return _ints(rng, rng.randint(0, max_len), lo, hi)


def f_sum_slice(rng: random.Random) -> Spec:
    return dict(doc="Sum of the values.", name=_pick(rng, "sum", "total", "sum_all"), params=[("values", "&[i64]")],
                ret="i64", body="    values.iter().sum()\n", inputs=[[_slice(_vec_input(rng))] for _ in range(4)])  # fmt: skip


def f_product(rng: random.Random) -> Spec:
    return dict(doc="Product of the values (1 when empty).", name=_pick(rng, "product", "multiply_all", "prod"),
                params=[("values", "&[i64]")], ret="i64", body="    values.iter().product()\n",
                inputs=[[_slice(_vec_input(rng, -9, 9, 5))] for _ in range(4)])  # fmt: skip


def f_max_slice(rng: random.Random) -> Spec:
    return dict(doc="The largest value, or None when empty.", name=_pick(rng, "max_value", "largest", "maximum"),
                params=[("values", "&[i64]")], ret="Option<i64>", body="    values.iter().copied().max()\n",
                inputs=[[_slice(_vec_input(rng))] for _ in range(4)] + [["&[]"]])  # fmt: skip


def f_min_slice(rng: random.Random) -> Spec:
    return dict(doc="The smallest value, or None when empty.", name=_pick(rng, "min_value", "smallest", "minimum"),
                params=[("values", "&[i64]")], ret="Option<i64>", body="    values.iter().copied().min()\n",
                inputs=[[_slice(_vec_input(rng))] for _ in range(4)] + [["&[]"]])  # fmt: skip


def f_count_above(rng: random.Random) -> Spec:
    k = rng.randint(-20, 20)
    return dict(doc=f"How many values are greater than {k}.", name=_pick(rng, "count_above", f"count_greater_{abs(k)}"),
                params=[("values", "&[i64]")], ret="usize", body=f"    values.iter().filter(|&&v| v > {k}).count()\n",
                inputs=[[_slice(_vec_input(rng))] for _ in range(4)])  # fmt: skip


def f_evens(rng: random.Random) -> Spec:
    return dict(doc="The even values, in order.", name=_pick(rng, "evens", "keep_even", "filter_even"),
                params=[("values", "&[i64]")], ret="Vec<i64>", body="    values.iter().copied().filter(|v| v % 2 == 0).collect()\n",
                inputs=[[_slice(_vec_input(rng))] for _ in range(4)])  # fmt: skip


def f_add_each(rng: random.Random) -> Spec:
    k = rng.randint(1, 50)
    return dict(doc=f"Adds {k} to every value.", name=_pick(rng, f"add_{k}_to_each", f"shift_all_{k}"),
                params=[("values", "&[i64]")], ret="Vec<i64>", body=f"    values.iter().map(|v| v + {k}).collect()\n",
                inputs=[[_slice(_vec_input(rng))] for _ in range(4)])  # fmt: skip


def f_first(rng: random.Random) -> Spec:
    return dict(doc="The first value, or None when empty.", name=_pick(rng, "first", "head", "first_value"),
                params=[("values", "&[i64]")], ret="Option<i64>", body="    values.first().copied()\n",
                inputs=[[_slice(_vec_input(rng))] for _ in range(3)] + [["&[]"]])  # fmt: skip


def f_contains(rng: random.Random) -> Spec:
    k = rng.randint(-10, 10)
    return dict(doc=f"True when {k} is among the values.", name=_pick(rng, f"contains_{abs(k)}", f"has_{abs(k)}") + ("_neg" if k < 0 else ""),
                params=[("values", "&[i64]")], ret="bool", body=f"    values.contains(&{k})\n",
                inputs=[[_slice(_vec_input(rng, -10, 10))] for _ in range(4)] + [[_slice([k, 1])]])  # fmt: skip


def f_index_of(rng: random.Random) -> Spec:
    return dict(doc="Index of the first occurrence of target, or None.", name=_pick(rng, "index_of", "find_index", "position_of"),
                params=[("values", "&[i64]"), ("target", "i64")], ret="Option<usize>",
                body="    values.iter().position(|&v| v == target)\n",
                inputs=[[_slice(_vec_input(rng, 0, 6)), str(rng.randint(0, 6))] for _ in range(5)])  # fmt: skip


def f_reverse_vec(rng: random.Random) -> Spec:
    return dict(doc="The values in reverse order.", name=_pick(rng, "reverse_vec", "reversed_values", "backwards"),
                params=[("values", "&[i64]")], ret="Vec<i64>", body="    values.iter().rev().copied().collect()\n",
                inputs=[[_slice(_vec_input(rng))] for _ in range(4)])  # fmt: skip


def f_cumsum(rng: random.Random) -> Spec:
    return dict(doc="Running totals of the values.", name=_pick(rng, "cumulative_sum", "running_total", "prefix_sums"),
                params=[("values", "&[i64]")], ret="Vec<i64>",
                body="    let mut total = 0;\n    values.iter().map(|v| { total += v; total }).collect()\n",
                inputs=[[_slice(_vec_input(rng))] for _ in range(4)])  # fmt: skip


def f_safe_div(rng: random.Random) -> Spec:
    return dict(doc="a divided by b, or an error message when b is zero.", name=_pick(rng, "safe_div", "checked_divide", "divide"),
                params=[("a", "i64"), ("b", "i64")], ret="Result<i64, String>",
                body="    if b == 0 {\n        return Err(String::from(\"division by zero\"));\n    }\n    Ok(a / b)\n",
                inputs=[[str(x), str(y)] for x, y in zip(_ints(rng, 5, -100, 100), _ints(rng, 4, -9, 9) + [0])])  # fmt: skip


def f_safe_sub(rng: random.Random) -> Spec:
    return dict(doc="a minus b, or None when the result would be negative.", name=_pick(rng, "safe_sub", "checked_minus", "sub_or_none"),
                params=[("a", "u32"), ("b", "u32")], ret="Option<u32>", body="    a.checked_sub(b)\n",
                inputs=[[str(x), str(y)] for x, y in zip(_ints(rng, 5, 0, 50), _ints(rng, 5, 0, 50))])  # fmt: skip


def f_parse_int(rng: random.Random) -> Spec:
    samples = [str(rng.randint(-999, 999)) for _ in range(3)] + [_word(rng), ""]
    return dict(doc="Parses s as an integer, or None when it is not one.", name=_pick(rng, "parse_int", "to_number", "parse_or_none"),
                params=[("s", "&str")], ret="Option<i64>", body="    s.parse().ok()\n",
                inputs=[[rust_str(x)] for x in samples])  # fmt: skip


FAMILIES: dict[str, Callable[[random.Random], Spec]] = {
    name[2:]: fn for name, fn in sorted(globals().items()) if name.startswith("f_") and callable(fn)
}


# ------------------------------------------------------------------ assembly

_LITERALS = r"""
trait Lit { fn lit(&self) -> String; fn ty() -> String; }
macro_rules! lit_display { ($($t:ty),*) => { $(impl Lit for $t {
    fn lit(&self) -> String { format!("{}", self) } fn ty() -> String { stringify!($t).to_string() } })* } }
lit_display!(i32, i64, u32, u64, usize, bool);
impl Lit for f64 { fn lit(&self) -> String { format!("{:?}", self) } fn ty() -> String { "f64".into() } }
impl Lit for char { fn lit(&self) -> String { format!("{:?}", self) } fn ty() -> String { "char".into() } }
impl Lit for String { fn lit(&self) -> String { format!("String::from({:?})", self) } fn ty() -> String { "String".into() } }
impl<T: Lit> Lit for Vec<T> {
    fn lit(&self) -> String {
        if self.is_empty() { return format!("Vec::<{}>::new()", T::ty()); }
        format!("vec![{}]", self.iter().map(|v| v.lit()).collect::<Vec<_>>().join(", "))
    }
    fn ty() -> String { format!("Vec<{}>", T::ty()) }
}
impl<T: Lit> Lit for Option<T> {
    fn lit(&self) -> String { match self { Some(v) => format!("Some({})", v.lit()), None => "None".into() } }
    fn ty() -> String { format!("Option<{}>", T::ty()) }
}
impl<T: Lit, E: Lit> Lit for Result<T, E> {
    fn lit(&self) -> String { match self { Ok(v) => format!("Ok({})", v.lit()), Err(e) => format!("Err({})", e.lit()) } }
    fn ty() -> String { format!("Result<{}, {}>", T::ty(), E::ty()) }
}
"""


def _prompt(spec: Spec) -> str:
    params = ", ".join(f"{n}: {t}" for n, t in spec["params"])
    return f"/// {spec['doc']}\nfn {spec['name']}({params}) -> {spec['ret']} {{\n"


def _expected_values(specs: list[Spec]) -> list[list[str]] | None:
    """Runs every reference on its inputs (one program) and returns the results as Rust literals."""
    parts = [_LITERALS]
    for i, spec in enumerate(specs):
        calls = "".join(
            f"        println!(\"{i}\\t{{}}\", {spec['name']}({', '.join(args)}).lit());\n" for args in spec["inputs"]
        )
        parts.append(f"mod t{i} {{\n    use super::Lit;\n{_prompt(spec)}{spec['body']}}}\n    pub fn run() {{\n{calls}    }}\n}}\n")
    parts.append("fn main() {\n" + "".join(f"    t{i}::run();\n" for i in range(len(specs))) + "}\n")
    stdout = run_program("".join(parts), RUN_LIMITS)
    if stdout is None:
        return None
    out: list[list[str]] = [[] for _ in specs]
    for line in stdout.splitlines():
        index, _, value = line.partition("\t")
        out[int(index)].append(value)
    return out


def run_program(source: str, limits: Limits) -> str | None:
    """Compiles `source` as a binary and runs it in the sandbox; its stdout, or None when it does not
    build, fails or times out (the probes that compute expected values from reference bodies)."""
    with sandbox_dir() as workdir:
        if not compile_rust(source, workdir, binary=True).ok:
            return None
        run = run_untrusted(["./prog"], workdir, limits)
    if run.returncode != 0 or run.timed_out:
        return None
    return run.stdout


def _task(family: str, index: int, seed: int, spec: Spec, expected: list[str]) -> Task:
    asserts = "".join(
        f"    assert_eq!({spec['name']}({', '.join(args)}), {value});\n" for args, value in zip(spec["inputs"], expected)
    )
    return Task(
        name=f"gen/{family}/{index}", family=family, split="heldout" if family in HELDOUT else "train",
        prompt=_prompt(spec), test="\nfn main() {\n" + asserts + "}\n", entry_point=spec["name"],
        reference=spec["body"].removesuffix("\n"),
        provenance={"source": "generator", "module": __name__, "version": GENERATOR_VERSION, "family": family,
                    "seed": seed, "instance": index},
    )  # fmt: skip


def generate_tasks(per_family: int = 60, seed: int = 0, families: list[str] | None = None,
                   attempts: int = 8, batch: int = 150) -> list[Task]:  # fmt: skip
    """Up to ``per_family`` distinct tasks (by prompt and test) of each family,
    expected values from running the references. A family whose batch fails to
    build is retried one instance at a time (a failing instance is skipped)."""
    names = families or sorted(FAMILIES)
    unknown = [f for f in names if f not in FAMILIES]
    if unknown:
        raise ValueError(f"unknown families {unknown}; known: {sorted(FAMILIES)}")
    pending: list[tuple[str, int, Spec]] = []
    for family in names:
        rng = random.Random(f"{seed}/{family}")
        prompts: set[tuple[str, tuple[tuple[str, ...], ...]]] = set()
        for _ in range(per_family * attempts):
            if len(prompts) >= per_family:
                break
            spec = FAMILIES[family](rng)
            key = (_prompt(spec), tuple(tuple(a) for a in spec["inputs"]))
            if key not in prompts:
                prompts.add(key)
                pending.append((family, len(prompts) - 1, spec))
    tasks: list[Task] = []
    for start in range(0, len(pending), batch):
        chunk = pending[start : start + batch]
        expected = _expected_values([s for _, _, s in chunk])
        if expected is None:  # find the culprit(s) one by one
            expected = [(_expected_values([s]) or [[]])[0] for _, _, s in chunk]
        for (family, index, spec), values in zip(chunk, expected):
            if len(values) == len(spec["inputs"]):
                tasks.append(_task(family, index, seed, spec, values))
    return tasks
