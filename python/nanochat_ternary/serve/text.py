"""Token ids → text for streaming: incremental UTF-8 decoding of token bytes, stop strings held
back while they may still be forming and cut where they match, and prompt templates for chat."""

from __future__ import annotations

import codecs
import json
from pathlib import Path
from typing import Any

from ..model import TernaryModel

# The documented prompt template for models that ship none (base models):
#
#   System: {system content}\n\n        (each system message)
#   User: {content}\n\n                  (each user message)
#   Assistant: {content}\n\n             (each assistant message)
#   Assistant:                           (the generation prompt)
#
# and generation stops at "\nUser:" (besides the model's EOS and the request's stop strings).
BASE_ROLES = {"system": "System", "user": "User", "assistant": "Assistant"}
BASE_STOP = "\nUser:"


def base_template(messages: list[dict[str, str]]) -> str:
    parts = [f"{BASE_ROLES[m['role']]}: {m['content']}\n\n" for m in messages]
    return "".join(parts) + "Assistant:"


def model_chat_template(model: TernaryModel) -> str | None:
    """The chat template the model file ships (GGUF ``tokenizer.chat_template``, or
    ``chat_template`` in an HF directory's tokenizer_config.json), if any."""
    path = Path(model.path)
    try:
        if path.is_file():
            from ..gguf import GGUFReader

            value = GGUFReader(path).metadata.get("tokenizer.chat_template")
            return value if isinstance(value, str) and value else None
        config = path / "tokenizer_config.json"
        if config.is_file():
            value = json.loads(config.read_text()).get("chat_template")
            return value if isinstance(value, str) and value else None
    except (OSError, ValueError):
        return None
    return None


class ChatTemplate:
    """Renders messages with the model's own template (Jinja, sandboxed) or the base template."""

    def __init__(self, model: TernaryModel) -> None:
        self.source = model_chat_template(model)
        self._template: Any = None
        self.bos = model.decode([model.bos_token_id]) if model.bos_token_id is not None else ""
        self.eos = model.decode([model.eos_token_id]) if model.eos_token_id is not None else ""
        if self.source is not None:
            from jinja2.sandbox import ImmutableSandboxedEnvironment

            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
            self._template = env.from_string(self.source)

    @property
    def name(self) -> str:
        return "model" if self.source is not None else "base"

    def render(self, messages: list[dict[str, str]]) -> tuple[str, list[str]]:
        """(prompt text, extra stop strings)."""
        if self._template is None:
            return base_template(messages), [BASE_STOP]
        text = self._template.render(
            messages=messages, add_generation_prompt=True, bos_token=self.bos, eos_token=self.eos
        )
        return str(text), []


def _partial_suffix(text: str, stop: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``stop``."""
    for k in range(min(len(stop) - 1, len(text)), 0, -1):
        if text.endswith(stop[:k]):
            return k
    return 0


class TextStream:
    """Turns one sequence's tokens into released text. ``add`` returns the text that can be
    shown now; ``stopped`` turns true when a stop string matched (the text before it is
    released, the rest dropped)."""

    def __init__(self, model: TernaryModel, stops: list[str]) -> None:
        self._bytes = model._tokens.token_bytes
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self.stops = stops
        self.pending = ""
        self.stopped = False
        self.text = ""  # everything released so far

    def add(self, token: int) -> str:
        if self.stopped:
            return ""
        self.pending += self._decoder.decode(self._bytes(token))
        return self._release(final=False)

    def finish(self) -> str:
        if self.stopped:
            return ""
        self.pending += self._decoder.decode(b"", final=True)
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        out = self.pending
        if self.stops:
            hits = [i for i in (out.find(s) for s in self.stops) if i >= 0]
            if hits:
                out = out[: min(hits)]
                self.stopped = True
            elif not final:
                hold = max(_partial_suffix(out, s) for s in self.stops)
                out = out[: len(out) - hold]
        self.pending = "" if self.stopped else self.pending[len(out) :]
        self.text += out
        return out
