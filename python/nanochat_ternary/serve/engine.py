"""The serving engine: one background thread drives the Rust continuous-batching scheduler
(``_core.Scheduler``), whose steps run without the GIL; the asyncio side submits and cancels
sequences through a command queue and reads tokens from per-sequence asyncio queues.

Back-pressure: at most ``parallel`` sequences run and ``max_queue`` more wait; a submission
beyond that raises :class:`Overloaded` at once (the server answers 503 + Retry-After).
"""

from __future__ import annotations

import asyncio
import collections
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from .. import _core
from ..model import TernaryModel


class Overloaded(Exception):
    """The bounded queue is full."""


class RequestError(ValueError):
    """A request the engine refuses (bad settings, too long for the context or the KV budget)."""


@dataclass
class SeqParams:
    prompt: list[int]
    max_new_tokens: int
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    seed: int = 0
    logprobs: int | None = None
    ignore_eos: bool = False


@dataclass
class TokenEvent:
    """A new token (``token`` set) or the end of a sequence (``finish`` set)."""

    token: int | None = None
    logprob: float = math.nan
    top: list[tuple[int, float]] = field(default_factory=list)
    finish: str | None = None
    error: str | None = None


class Histogram:
    """A Prometheus histogram (cumulative buckets, sum, count)."""

    def __init__(self, name: str, doc: str, buckets: list[float]) -> None:
        self.name, self.doc, self.buckets = name, doc, buckets
        self.counts = [0] * (len(buckets) + 1)
        self.sum = 0.0
        self.count = 0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        with self._lock:
            i = next((i for i, b in enumerate(self.buckets) if value <= b), len(self.buckets))
            self.counts[i] += 1
            self.sum += value
            self.count += 1

    def render(self) -> str:
        lines = [f"# HELP {self.name} {self.doc}", f"# TYPE {self.name} histogram"]
        with self._lock:
            acc = 0
            for b, c in zip(self.buckets, self.counts):
                acc += c
                lines.append(f'{self.name}_bucket{{le="{b}"}} {acc}')
            lines.append(f'{self.name}_bucket{{le="+Inf"}} {self.count}')
            lines.append(f"{self.name}_sum {self.sum}")
            lines.append(f"{self.name}_count {self.count}")
        return "\n".join(lines)


class Metrics:
    """vLLM-style serving metrics, rendered as Prometheus text."""

    def __init__(self) -> None:
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.requests = collections.Counter[str]()
        self.ttft = Histogram(
            "nct:time_to_first_token_seconds",
            "Time from request arrival to its first generated token.",
            [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0],
        )
        self.itl = Histogram(
            "nct:inter_token_latency_seconds",
            "Time between consecutive generated tokens of one sequence.",
            [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5],
        )
        self._lock = threading.Lock()

    def count(self, prompt: int = 0, generated: int = 0) -> None:
        with self._lock:
            self.prompt_tokens += prompt
            self.generation_tokens += generated

    def finished(self, outcome: str) -> None:
        with self._lock:
            self.requests[outcome] += 1

    def render(self, running: int, waiting: int, kv_bytes: int, kv_budget: int) -> str:
        def gauge(name: str, doc: str, value: float, kind: str = "gauge") -> str:
            return f"# HELP {name} {doc}\n# TYPE {name} {kind}\n{name} {value}"

        with self._lock:
            parts = [
                gauge("nct:num_requests_running", "Sequences being decoded or prefilled.", running),
                gauge("nct:num_requests_waiting", "Sequences waiting for a batch slot.", waiting),
                gauge("nct:kv_cache_bytes", "KV-cache bytes held by running sequences.", kv_bytes),
                gauge("nct:kv_cache_budget_bytes", "KV-cache byte budget.", kv_budget),
                gauge("nct:prompt_tokens_total", "Prompt tokens processed.", self.prompt_tokens, "counter"),
                gauge("nct:generation_tokens_total", "Tokens generated.", self.generation_tokens, "counter"),
            ]
            name = "nct:request_finished_total"
            lines = [f"# HELP {name} Finished requests by outcome.", f"# TYPE {name} counter"]
            for outcome in sorted(set(self.requests) | {"stop", "length", "cancelled", "error", "rejected"}):
                lines.append(f'{name}{{outcome="{outcome}"}} {self.requests[outcome]}')
            parts.append("\n".join(lines))
        parts += [self.ttft.render(), self.itl.render()]
        return "\n".join(parts) + "\n"


class Sequence:
    """One generated sequence as the asyncio side sees it."""

    def __init__(
        self,
        engine: BatchEngine,
        params: SeqParams,
        loop: asyncio.AbstractEventLoop,
        queue: asyncio.Queue[tuple[int, TokenEvent]],
        index: int,
    ) -> None:
        self.engine = engine
        self.params = params
        self.loop = loop
        self.queue = queue
        self.index = index
        self.rust_id: int | None = None
        self.done = False
        self.created = time.monotonic()
        self.last_token: float | None = None
        self.n_generated = 0

    def _push(self, event: TokenEvent) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, (self.index, event))
        except RuntimeError:  # the loop is closed (shutdown)
            pass

    def cancel(self) -> None:
        """Stops the sequence and frees its cache (a no-op once it finished)."""
        if not self.done:
            self.done = True
            self.engine._command(("cancel", self))


class BatchEngine:
    """A loaded model plus the scheduler thread. ``parallel``: sequences decoded together;
    ``max_queue``: sequences that may wait beyond those; ``ctx``: the longest prompt +
    completion a request may use (at most the model's context)."""

    def __init__(
        self,
        model: TernaryModel,
        parallel: int = 8,
        max_queue: int = 64,
        ctx: int | None = None,
        kv_budget_bytes: int | None = None,
        prefill_chunk: int = 256,
    ) -> None:
        if parallel < 1:
            raise ValueError(f"parallel must be at least 1, got {parallel}")
        if max_queue < 0:
            raise ValueError(f"max_queue must be >= 0, got {max_queue}")
        self.model = model
        self.ctx = min(ctx or model.context_length, model.context_length)
        engine = model._engine
        probe = _core.Scheduler(engine, max_batch=1)
        per_position = probe.kv_bytes_per_position
        if kv_budget_bytes is None:
            kv_budget_bytes = parallel * self.ctx * per_position
        self.scheduler = _core.Scheduler(
            engine, max_batch=parallel, prefill_chunk=prefill_chunk, kv_budget_bytes=kv_budget_bytes
        )
        self.parallel, self.max_queue = parallel, max_queue
        self.kv_budget_bytes = kv_budget_bytes
        self.kv_bytes_per_position = per_position
        self.metrics = Metrics()
        self._commands: collections.deque[tuple[str, Any]] = collections.deque()
        self._wake = threading.Condition()
        self._by_id: dict[int, Sequence] = {}
        self._in_flight = 0  # sequences submitted and not finished
        self._lock = threading.Lock()
        self.running = 0
        self.waiting = 0
        self.kv_bytes = 0
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="nct-scheduler", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ asyncio side

    def submit(self, params: list[SeqParams]) -> list[Sequence]:
        """Queues sequences (the choices of one request) or raises Overloaded / RequestError at
        once. Their events arrive as ``(index, TokenEvent)`` on the first sequence's ``queue``,
        which all of them share."""
        for p in params:
            self.check(p)
        with self._lock:
            if self._in_flight + len(params) > self.parallel + self.max_queue:
                self.metrics.finished("rejected")
                raise Overloaded(
                    f"the server is busy ({self._in_flight} sequences running or queued, "
                    f"limit {self.parallel + self.max_queue}); retry later"
                )
            self._in_flight += len(params)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[int, TokenEvent]] = asyncio.Queue()
        seqs = [Sequence(self, p, loop, queue, i) for i, p in enumerate(params)]
        for s in seqs:
            self._command(("add", s))
        return seqs

    def check(self, p: SeqParams) -> None:
        if not p.prompt:
            raise RequestError("the prompt is empty")
        if p.max_new_tokens < 1:
            raise RequestError(f"max_tokens must be at least 1, got {p.max_new_tokens}")
        total = len(p.prompt) + p.max_new_tokens
        if total > self.ctx:
            raise RequestError(
                f"this model's maximum context length is {self.ctx} tokens; the request needs {total} "
                f"({len(p.prompt)} in the prompt, {p.max_new_tokens} for the completion)"
            )
        if total * self.kv_bytes_per_position > self.kv_budget_bytes:
            raise RequestError(f"the request needs {total} positions of KV cache, more than the server's budget")

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def render_metrics(self) -> str:
        return self.metrics.render(self.running, self.waiting, self.kv_bytes, self.kv_budget_bytes)

    # ------------------------------------------------------------------ scheduler thread

    def _command(self, cmd: tuple[str, Any]) -> None:
        with self._wake:
            self._commands.append(cmd)
            self._wake.notify()

    def close(self, timeout: float = 10.0) -> None:
        with self._wake:
            self._stop = True
            self._wake.notify()
        self._thread.join(timeout)

    def _release(self, seq: Sequence) -> None:
        with self._lock:
            self._in_flight -= 1

    def _apply(self, cmd: tuple[str, Any]) -> None:
        kind, seq = cmd
        if kind == "add":
            if seq.done:  # cancelled before it was added
                self._release(seq)
                self.metrics.finished("cancelled")
                return
            p: SeqParams = seq.params
            try:
                seq.rust_id = self.scheduler.add(
                    p.prompt,
                    p.max_new_tokens,
                    temperature=p.temperature,
                    top_k=p.top_k,
                    top_p=p.top_p,
                    min_p=p.min_p,
                    repetition_penalty=p.repetition_penalty,
                    seed=p.seed,
                    ignore_eos=p.ignore_eos,
                    logprobs=p.logprobs,
                )
            except ValueError as e:
                seq.done = True
                self._release(seq)
                self.metrics.finished("error")
                seq._push(TokenEvent(finish="error", error=str(e)))
                return
            self._by_id[seq.rust_id] = seq
            self.metrics.count(prompt=len(p.prompt))
        elif kind == "cancel":
            if seq.rust_id is not None and seq.rust_id in self._by_id:
                self.scheduler.cancel(seq.rust_id)
                del self._by_id[seq.rust_id]
                self._release(seq)
                self.metrics.finished("cancelled")

    def _run(self) -> None:
        sched = self.scheduler
        while True:
            with self._wake:
                while not self._commands and not self._by_id and not self._stop:
                    self._wake.wait()
                if self._stop:
                    break
                commands = list(self._commands)
                self._commands.clear()
            for cmd in commands:
                self._apply(cmd)
            if not self._by_id:
                self.running, self.waiting, self.kv_bytes = sched.running, sched.waiting, sched.kv_bytes
                continue
            try:
                events = sched.step()
            except Exception as e:  # noqa: BLE001 - keep serving; fail the running sequences
                events = [(i, [], "error", f"scheduler step failed: {e}") for i in list(self._by_id)]
            now = time.monotonic()
            for rust_id, tokens, finish, error in events:
                seq = self._by_id.get(rust_id)
                if seq is None:
                    continue
                for token, logprob, top in tokens:
                    if seq.last_token is None:
                        self.metrics.ttft.observe(now - seq.created)
                    else:
                        self.metrics.itl.observe(now - seq.last_token)
                    seq.last_token = now
                    seq.n_generated += 1
                    seq._push(TokenEvent(token=token, logprob=logprob, top=top))
                self.metrics.count(generated=len(tokens))
                if finish is not None:
                    del self._by_id[rust_id]
                    seq.done = True
                    self._release(seq)
                    self.metrics.finished(finish)
                    seq._push(TokenEvent(finish=finish, error=error))
            self.running, self.waiting = sched.running, sched.waiting
            self.kv_bytes = sched.kv_bytes
        # Shutting down: end whatever is left.
        for seq in list(self._by_id.values()):
            seq._push(TokenEvent(finish="error", error="the server is shutting down"))
        self._by_id.clear()
