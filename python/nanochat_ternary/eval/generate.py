"""The one thing the harness asks of a model: turn prompts into completions.

A generator is either a callable ``f(prompts: list[str], **sampling) ->
list[str]`` or an object with ``.generate(prompts, **sampling)`` returning the
same (a ``TernaryModel``, or a wrapper around any other model)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, Union, runtime_checkable


@runtime_checkable
class HasGenerate(Protocol):
    def generate(self, prompts: list[str], **sampling: Any) -> list[str]: ...


Generator = Union[HasGenerate, Callable[..., Sequence[str]]]


def generate(model: Generator, prompts: Sequence[str], *, n: int = 1, **sampling: Any) -> list[list[str]]:
    """`n` completions per prompt: ``result[i][j]`` is sample j of prompt i.
    Each of the n rounds asks the model for all prompts at once; when ``seed`` is
    among the sampling arguments, round j uses ``seed + j`` so the samples differ."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if isinstance(model, HasGenerate):
        call: Callable[..., Sequence[str]] = model.generate
    elif callable(model):
        call = model
    else:
        raise TypeError(f"expected a callable or an object with .generate(), got {type(model).__name__}")
    samples: list[list[str]] = [[] for _ in prompts]
    for round_ in range(n):
        kwargs = {**sampling, "seed": sampling["seed"] + round_} if "seed" in sampling else sampling
        outputs = list(call(list(prompts), **kwargs))
        if len(outputs) != len(prompts) or not all(isinstance(o, str) for o in outputs):
            raise ValueError(f"the model must return one string per prompt ({len(prompts)}), got {len(outputs)} items")
        for i, text in enumerate(outputs):
            samples[i].append(text)
    return samples
