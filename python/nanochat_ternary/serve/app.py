"""The OpenAI-compatible HTTP API (FastAPI on uvicorn).

Endpoints: ``POST /v1/completions``, ``POST /v1/chat/completions``, ``GET /v1/models``,
``GET /health``, ``GET /metrics`` (Prometheus text), ``POST /tokenize``, ``POST /detokenize``,
and the chat page at ``/``. Request bodies are parsed and checked here (not by pydantic) so that
every bad request gets a 400 in OpenAI's error shape with a message naming the field.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import math
import random
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response

from ..model import TernaryModel
from .engine import BatchEngine, Overloaded, RequestError, SeqParams, Sequence, TokenEvent
from .text import ChatTemplate, TextStream

MAX_LOGPROBS = 5
MAX_N = 16
MAX_STOPS = 4


class ApiError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.headers = status, message, type_, param, headers


def error_body(status: int, message: str, type_: str, param: str | None = None) -> dict[str, Any]:
    return {"error": {"code": status, "message": message, "type": type_, "param": param}}


def error_response(e: ApiError) -> JSONResponse:
    return JSONResponse(error_body(e.status, e.message, e.type, e.param), status_code=e.status, headers=e.headers)


@dataclass
class ServerConfig:
    model: str | None = None
    api_key: str | None = None
    parallel: int = 8
    max_queue: int = 64
    ctx: int | None = None
    timeout: float = 600.0
    max_body_bytes: int = 1 << 20
    kv_budget_bytes: int | None = None
    prefill_chunk: int = 256
    retry_after: int = 1


@dataclass
class State:
    config: ServerConfig
    engine: BatchEngine | None = None
    model: TernaryModel | None = None
    template: ChatTemplate | None = None
    load_error: str | None = None
    draining: bool = False
    started: float = field(default_factory=time.time)


# ----------------------------------------------------------------------------- field checks


def _number(body: dict[str, Any], name: str, default: float, lo: float, hi: float, lo_open: bool = False) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ApiError(400, f"'{name}' must be a number, got {json.dumps(value)}", param=name)
    if value < lo or value > hi or (lo_open and value == lo):
        left = "(" if lo_open else "["
        raise ApiError(400, f"'{name}' must lie in {left}{lo}, {hi}], got {value}", param=name)
    return float(value)


def _integer(body: dict[str, Any], name: str, default: int | None, lo: int, hi: int | None = None) -> int | None:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(400, f"'{name}' must be an integer, got {json.dumps(value)}", param=name)
    if value < lo or (hi is not None and value > hi):
        bound = f"between {lo} and {hi}" if hi is not None else f">= {lo}"
        raise ApiError(400, f"'{name}' must be {bound}, got {value}", param=name)
    return value


def _boolean(body: dict[str, Any], name: str, default: bool) -> bool:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ApiError(400, f"'{name}' must be a boolean, got {json.dumps(value)}", param=name)
    return value


def _unsupported(body: dict[str, Any], names: dict[str, Callable[[Any], bool]]) -> None:
    """400 for fields whose value asks for something this server does not do."""
    for name, harmless in names.items():
        if name in body and body[name] is not None and not harmless(body[name]):
            raise ApiError(400, f"'{name}' is not supported by this server (got {json.dumps(body[name])})", param=name)


def _stops(body: dict[str, Any]) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise ApiError(400, "'stop' must be a string or a list of strings", param="stop")
    if len(stop) > MAX_STOPS:
        raise ApiError(400, f"'stop' takes at most {MAX_STOPS} strings, got {len(stop)}", param="stop")
    if any(s == "" for s in stop):
        raise ApiError(400, "'stop' strings must not be empty", param="stop")
    return stop


@dataclass
class Sampling:
    max_tokens: int | None
    temperature: float
    top_p: float
    top_k: int
    min_p: float
    repetition_penalty: float
    seed: int | None
    n: int
    stops: list[str]
    stream: bool
    include_usage: bool
    ignore_eos: bool


def _sampling(body: dict[str, Any], max_tokens_names: tuple[str, ...]) -> Sampling:
    _unsupported(
        body,
        {
            "presence_penalty": lambda v: v == 0,
            "frequency_penalty": lambda v: v == 0,
            "logit_bias": lambda v: v == {},
            "tools": lambda v: v == [],
            "tool_choice": lambda v: v == "none",
            "functions": lambda v: v == [],
            "function_call": lambda v: v == "none",
            "response_format": lambda v: isinstance(v, dict) and v.get("type") == "text",
            "echo": lambda v: v is False,
            "suffix": lambda v: v == "",
            "parallel_tool_calls": lambda v: True,
        },
    )
    max_tokens = None
    for name in max_tokens_names:
        value = _integer(body, name, None, 1)
        if value is not None:
            max_tokens = value
    n = _integer(body, "n", 1, 1, MAX_N)
    assert n is not None
    best_of = _integer(body, "best_of", n, 1, MAX_N)
    if best_of != n:
        raise ApiError(400, "'best_of' other than n is not supported", param="best_of")
    top_k = body.get("top_k")
    if top_k == -1:  # vLLM's "off"
        top_k = 0
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ApiError(400, f"'seed' must be an integer, got {json.dumps(seed)}", param="seed")
    stream = _boolean(body, "stream", False)
    options = body.get("stream_options")
    include_usage = False
    if options is not None:
        if not isinstance(options, dict):
            raise ApiError(400, "'stream_options' must be an object", param="stream_options")
        if not stream:
            raise ApiError(400, "'stream_options' is only allowed when 'stream' is true", param="stream_options")
        include_usage = _boolean(options, "include_usage", False)
    return Sampling(
        max_tokens=max_tokens,
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0, lo_open=True),
        top_k=int(_integer({"top_k": top_k}, "top_k", 0, 0) or 0),
        min_p=_number(body, "min_p", 0.0, 0.0, 0.999999),
        repetition_penalty=_number(body, "repetition_penalty", 1.0, 0.01, 100.0),
        seed=seed,
        n=n,
        stops=_stops(body),
        stream=stream,
        include_usage=include_usage,
        ignore_eos=_boolean(body, "ignore_eos", False),
    )


async def _read_json(request: Request, limit: int) -> dict[str, Any]:
    length = request.headers.get("content-length")
    if length is not None:
        try:
            if int(length) > limit:
                raise ApiError(413, f"the request body is larger than {limit} bytes", "invalid_request_error")
        except ValueError:
            raise ApiError(400, "bad Content-Length header") from None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"the request body is larger than {limit} bytes")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw:
        raise ApiError(400, "the request body is empty; send a JSON object")
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ApiError(400, f"the request body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    return body


# ----------------------------------------------------------------------------- generation


@dataclass
class Choice:
    index: int
    seq: Sequence
    text: TextStream
    prompt_tokens: int
    tokens: int = 0
    finish: str | None = None
    logprobs: list[tuple[int, float, list[tuple[int, float]]]] = field(default_factory=list)


@dataclass
class Delta:
    index: int
    text: str
    logprobs: list[tuple[int, float, list[tuple[int, float]]]]
    finish: str | None


class Job:
    """The sequences of one request, their text and their end."""

    def __init__(self, state: State, prompts: list[list[int]], s: Sampling, logprobs: int | None,
                 extra_stops: list[str]) -> None:
        engine, model = state.engine, state.model
        assert engine is not None and model is not None
        self.state = state
        self.timeout = state.config.timeout
        seed = s.seed if s.seed is not None else random.getrandbits(63)
        if len(prompts) * s.n > MAX_N:
            raise ApiError(400, f"at most {MAX_N} choices per request (prompts x n), got {len(prompts) * s.n}", param="n")
        params = []
        for prompt in prompts:
            default = engine.ctx - len(prompt)
            max_new = s.max_tokens if s.max_tokens is not None else default
            for j in range(s.n):
                params.append(
                    SeqParams(
                        prompt=prompt,
                        max_new_tokens=max_new,
                        temperature=s.temperature,
                        top_k=s.top_k,
                        top_p=s.top_p,
                        min_p=s.min_p,
                        repetition_penalty=s.repetition_penalty,
                        seed=seed + j,
                        logprobs=logprobs,
                        ignore_eos=s.ignore_eos,
                    )
                )
        try:
            seqs = engine.submit(params)
        except Overloaded as e:
            raise ApiError(503, str(e), "unavailable_error",
                           headers={"Retry-After": str(state.config.retry_after)}) from None
        except RequestError as e:
            raise ApiError(400, str(e)) from None
        self.queue = seqs[0].queue
        stops = s.stops + extra_stops
        self.choices = [Choice(i, seq, TextStream(model, stops), len(seq.params.prompt)) for i, seq in enumerate(seqs)]
        self.start = time.monotonic()

    def cancel(self) -> None:
        for c in self.choices:
            c.seq.cancel()

    @property
    def prompt_tokens(self) -> int:
        # One prompt per group of n choices is what OpenAI counts; we count each distinct prompt once.
        seen: dict[int, int] = {}
        for c in self.choices:
            seen[id(c.seq.params.prompt)] = c.prompt_tokens
        return sum(seen.values())

    @property
    def completion_tokens(self) -> int:
        return sum(c.tokens for c in self.choices)

    async def deltas(self) -> AsyncIterator[Delta]:
        """Text deltas until every choice has finished; raises ApiError on a timeout or an
        engine error."""
        open_ = len(self.choices)
        while open_:
            remaining = self.start + self.timeout - time.monotonic()
            try:
                index, event = await asyncio.wait_for(self.queue.get(), max(remaining, 0.0))
            except asyncio.TimeoutError:
                self.cancel()
                raise ApiError(504, f"the request took longer than the server's timeout of {self.timeout:g} s",
                               "timeout_error") from None
            c = self.choices[index]
            if c.finish is not None:
                continue
            if event.finish == "error":
                self.cancel()
                raise ApiError(500, f"generation failed: {event.error}", "server_error")
            if event.token is not None:
                c.tokens += 1
                text = c.text.add(event.token)
                lp = [(event.token, event.logprob, event.top)] if c.seq.params.logprobs is not None else []
                if c.text.stopped:
                    c.seq.cancel()
                    c.finish = "stop"
                    open_ -= 1
                    yield Delta(index, text, lp, "stop")
                elif text or lp:
                    yield Delta(index, text, lp, None)
            elif event.finish is not None:
                text = c.text.finish()
                c.finish = "stop" if c.text.stopped else event.finish
                open_ -= 1
                yield Delta(index, text, [], c.finish)

    def usage(self) -> dict[str, int]:
        p, g = self.prompt_tokens, self.completion_tokens
        return {"prompt_tokens": p, "completion_tokens": g, "total_tokens": p + g}


async def _until_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def _race_disconnect(request: Request, job: Job, work: Any) -> Any:
    """Runs ``work`` (a coroutine); cancels the job when the client goes away first."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_until_disconnect(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        task.cancel()
        job.cancel()
        raise ApiError(499, "client disconnected", "client_closed_request")
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()


class SSEResponse(Response):
    """Server-sent events from an async iterator of strings. A client that disconnects cancels
    the iterator, and ``on_close`` always runs (it cancels the generation)."""

    media_type = "text/event-stream"

    def __init__(self, events: AsyncIterator[str], on_close: Callable[[], None]) -> None:
        super().__init__(content=None, status_code=200,
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.events, self.on_close = events, on_close
        # A stream has no length: chunked transfer encoding.
        self.raw_headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        async def stream() -> None:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            async for event in self.events:
                await send({"type": "http.response.body", "body": event.encode(), "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        async def listen() -> None:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return

        streamer, listener = asyncio.ensure_future(stream()), asyncio.ensure_future(listen())
        try:
            await asyncio.wait({streamer, listener}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (streamer, listener):
                t.cancel()
            self.on_close()
            try:
                await streamer
            except (asyncio.CancelledError, OSError):
                pass


def _sse(obj: dict[str, Any]) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


# ----------------------------------------------------------------------------- the app


class ApiKeyMiddleware:
    """401 unless ``Authorization: Bearer KEY`` (the page, /health and /v1/models are exempt, as
    in llama.cpp's server). Plain ASGI, so streaming responses pass through untouched."""

    EXEMPT = frozenset({"/", "/health", "/v1/models", "/favicon.ico"})

    def __init__(self, app: Any, key: str) -> None:
        self.app, self.key = app, key.encode()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] in self.EXEMPT:
            await self.app(scope, receive, send)
            return
        header = ""
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                header = value.decode("latin-1")
        given = header[7:].strip() if header.lower().startswith("bearer ") else ""
        if hmac.compare_digest(given.encode(), self.key):
            await self.app(scope, receive, send)
            return
        message = "missing API key (send Authorization: Bearer KEY)" if not given else "invalid API key"
        response = JSONResponse(error_body(401, message, "authentication_error"), status_code=401,
                                headers={"WWW-Authenticate": "Bearer"})
        await response(scope, receive, send)



def create_app(config: ServerConfig | None = None, model: TernaryModel | None = None) -> FastAPI:
    """The ASGI app. The model (``config.model``: path, zoo name or hub id; the zoo default when
    None) loads in a background thread at startup unless one is given; until then /health and
    the API answer 503."""
    config = config or ServerConfig()
    state = State(config)

    def load() -> None:
        try:
            m = model if model is not None else TernaryModel.from_pretrained(config.model)
            template = ChatTemplate(m)
            engine = BatchEngine(m, parallel=config.parallel, max_queue=config.max_queue, ctx=config.ctx,
                                 kv_budget_bytes=config.kv_budget_bytes, prefill_chunk=config.prefill_chunk)
            state.model, state.template, state.engine = m, template, engine
        except Exception as e:  # noqa: BLE001 - reported by /health
            state.load_error = f"{type(e).__name__}: {e}"

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loader = threading.Thread(target=load, name="nct-load", daemon=True)
        loader.start()
        yield
        state.draining = True
        if state.engine is not None:
            state.engine.close()

    app = FastAPI(title="nanochat-ternary", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.nct = state
    if config.api_key:
        app.add_middleware(ApiKeyMiddleware, key=config.api_key)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError) -> JSONResponse:
        return error_response(e)

    @app.exception_handler(404)
    async def not_found(request: Request, e: Exception) -> JSONResponse:
        return JSONResponse(error_body(404, f"no such endpoint: {request.method} {request.url.path}", "not_found_error"),
                            status_code=404)

    @app.exception_handler(405)
    async def bad_method(request: Request, e: Exception) -> JSONResponse:
        return JSONResponse(error_body(405, f"method {request.method} is not allowed on {request.url.path}",
                                       "invalid_request_error"), status_code=405)

    @app.exception_handler(Exception)
    async def internal(request: Request, e: Exception) -> JSONResponse:
        return JSONResponse(error_body(500, f"internal error: {type(e).__name__}: {e}", "server_error"), status_code=500)

    def ready() -> tuple[BatchEngine, TernaryModel]:
        if state.load_error is not None:
            raise ApiError(503, f"the model failed to load: {state.load_error}", "unavailable_error")
        if state.engine is None or state.model is None:
            raise ApiError(503, "Loading model", "unavailable_error", headers={"Retry-After": "1"})
        if state.draining:
            raise ApiError(503, "the server is shutting down", "unavailable_error")
        return state.engine, state.model

    def model_name() -> str:
        return state.model.name if state.model is not None else (config.model or "default")

    def check_model_field(body: dict[str, Any]) -> None:
        name = body.get("model")
        if name is not None and not isinstance(name, str):
            raise ApiError(400, "'model' must be a string", param="model")

    # --------------------------------------------------------------- plain endpoints

    @app.get("/health")
    async def health() -> JSONResponse:
        if state.load_error is not None:
            return JSONResponse(error_body(503, f"the model failed to load: {state.load_error}", "unavailable_error"),
                                status_code=503)
        if state.engine is None:
            return JSONResponse(error_body(503, "Loading model", "unavailable_error"), status_code=503)
        if state.draining:
            return JSONResponse(error_body(503, "Shutting down", "unavailable_error"), status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/v1/models")
    async def models() -> JSONResponse:
        engine, model = ready()
        return JSONResponse({"object": "list", "data": [{
            "id": model.name, "object": "model", "created": int(state.started), "owned_by": "nanochat-ternary",
            "max_model_len": engine.ctx,
        }]})

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        engine = state.engine
        if engine is None:
            text = "# model loading\nnct:num_requests_running 0\nnct:num_requests_waiting 0\n"
        else:
            text = engine.render_metrics()
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    @app.get("/", response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        html = resources.files("nanochat_ternary.serve").joinpath("static/index.html").read_text(encoding="utf-8")
        return HTMLResponse(html)

    @app.post("/tokenize")
    async def tokenize(request: Request) -> JSONResponse:
        body = await _read_json(request, config.max_body_bytes)
        engine, model = ready()
        text = body.get("content", body.get("prompt"))
        if not isinstance(text, str):
            raise ApiError(400, "'content' must be a string", param="content")
        add_special = _boolean(body, "add_special", True)
        ids = model.encode(text) if add_special else model.encode(text, add_bos=False, add_eos=False)
        return JSONResponse({"tokens": ids, "count": len(ids), "max_model_len": engine.ctx})

    @app.post("/detokenize")
    async def detokenize(request: Request) -> JSONResponse:
        body = await _read_json(request, config.max_body_bytes)
        _, model = ready()
        ids = body.get("tokens")
        if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise ApiError(400, "'tokens' must be a list of integers", param="tokens")
        bad = [i for i in ids if not 0 <= i < model.vocab_size]
        if bad:
            raise ApiError(400, f"token id {bad[0]} is outside the vocabulary (size {model.vocab_size})", param="tokens")
        return JSONResponse({"content": model.decode(ids)})

    # --------------------------------------------------------------- generation endpoints

    def logprobs_completion(model: TernaryModel, lp: list[tuple[int, float, list[tuple[int, float]]]],
                            offset: int) -> dict[str, Any]:
        tokens, token_logprobs, tops, offsets = [], [], [], []
        for token, logprob, top in lp:
            text = model.decode([token])
            tokens.append(text)
            token_logprobs.append(logprob)
            tops.append({model.decode([t]): v for t, v in top})
            offsets.append(offset)
            offset += len(text)
        return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": tops, "text_offset": offsets}

    def logprobs_chat(model: TernaryModel, lp: list[tuple[int, float, list[tuple[int, float]]]],
                      with_top: bool) -> dict[str, Any]:
        def entry(token: int, logprob: float) -> dict[str, Any]:
            raw = model._tokens.token_bytes(token)
            return {"token": raw.decode("utf-8", "replace"), "logprob": logprob, "bytes": list(raw)}

        content = []
        for token, logprob, top in lp:
            item = entry(token, logprob)
            item["top_logprobs"] = [entry(t, v) for t, v in top] if with_top else []
            content.append(item)
        return {"content": content}

    async def generate(request: Request, chat: bool) -> Response:
        body = await _read_json(request, config.max_body_bytes)
        engine, model = ready()
        check_model_field(body)
        extra_stops: list[str] = []
        top_logprobs = 0
        if chat:
            s = _sampling(body, ("max_tokens", "max_completion_tokens"))
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                raise ApiError(400, "'messages' must be a non-empty list of {role, content} objects", param="messages")
            clean = []
            for i, m in enumerate(messages):
                if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant", "developer"):
                    raise ApiError(400, f"messages[{i}] needs a role of system, user or assistant", param="messages")
                content = m.get("content")
                if isinstance(content, list):  # content parts: text only
                    if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                               for p in content):
                        raise ApiError(400, f"messages[{i}].content parts must all be text", param="messages")
                    content = "".join(p["text"] for p in content)
                if not isinstance(content, str):
                    raise ApiError(400, f"messages[{i}].content must be a string", param="messages")
                role = "system" if m["role"] == "developer" else m["role"]
                clean.append({"role": role, "content": content})
            assert state.template is not None
            try:
                text, extra_stops = state.template.render(clean)
            except Exception as e:  # noqa: BLE001 - a template error is the request's problem
                raise ApiError(400, f"the chat template failed on these messages: {e}") from None
            prompts = [model.encode(text)]
            want_logprobs = _boolean(body, "logprobs", False)
            top_logprobs = int(_integer(body, "top_logprobs", 0, 0, MAX_LOGPROBS) or 0)
            if top_logprobs and not want_logprobs:
                raise ApiError(400, "'top_logprobs' needs 'logprobs': true", param="top_logprobs")
            logprobs = top_logprobs if want_logprobs else None
        else:
            s = _sampling(body, ("max_tokens",))
            if s.max_tokens is None:
                s.max_tokens = 16  # OpenAI's default for completions
            prompts = parse_prompt(body.get("prompt"), model)
            logprobs = _integer(body, "logprobs", None, 0, MAX_LOGPROBS)
        job = Job(state, prompts, s, logprobs, extra_stops)
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        created = int(time.time())
        name = model_name()
        obj = "chat.completion" if chat else "text_completion"

        def choice_logprobs(c: Choice, lp: list[Any], offset: int) -> dict[str, Any] | None:
            if c.seq.params.logprobs is None:
                return None
            if chat:
                return logprobs_chat(model, lp, top_logprobs > 0)
            return logprobs_completion(model, lp, offset)

        if s.stream:
            async def events() -> AsyncIterator[str]:
                chunk_obj = obj + ".chunk" if chat else obj
                base = {"id": rid, "object": chunk_obj, "created": created, "model": name}
                if chat:
                    for c in job.choices:
                        yield _sse({**base, "choices": [{"index": c.index, "delta": {"role": "assistant", "content": ""},
                                                         "logprobs": None, "finish_reason": None}]})
                offsets = [0] * len(job.choices)
                try:
                    async for d in job.deltas():
                        c = job.choices[d.index]
                        lp = choice_logprobs(c, d.logprobs, offsets[d.index])
                        offsets[d.index] += len(d.text)
                        if chat:
                            delta = {"content": d.text} if d.text or d.finish is None else {}
                            choice = {"index": d.index, "delta": delta, "logprobs": lp, "finish_reason": d.finish}
                        else:
                            choice = {"index": d.index, "text": d.text, "logprobs": lp, "finish_reason": d.finish}
                        yield _sse({**base, "choices": [choice]})
                except ApiError as e:
                    yield _sse(error_body(e.status, e.message, e.type))
                    yield "data: [DONE]\n\n"
                    return
                if s.include_usage:
                    yield _sse({**base, "choices": [], "usage": job.usage()})
                yield "data: [DONE]\n\n"

            return SSEResponse(events(), job.cancel)

        async def collect() -> dict[str, Any]:
            texts = [""] * len(job.choices)
            lps: list[list[Any]] = [[] for _ in job.choices]
            async for d in job.deltas():
                texts[d.index] += d.text
                lps[d.index] += d.logprobs
            choices = []
            for c in job.choices:
                lp = choice_logprobs(c, lps[c.index], 0)
                if chat:
                    choices.append({"index": c.index, "message": {"role": "assistant", "content": texts[c.index]},
                                    "logprobs": lp, "finish_reason": c.finish})
                else:
                    choices.append({"index": c.index, "text": texts[c.index], "logprobs": lp,
                                    "finish_reason": c.finish})
            return {"id": rid, "object": obj, "created": created, "model": name, "choices": choices,
                    "usage": job.usage()}

        try:
            result = await _race_disconnect(request, job, collect())
        finally:
            job.cancel()
        return JSONResponse(result)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await generate(request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await generate(request, chat=True)

    return app


def parse_prompt(prompt: Any, model: TernaryModel) -> list[list[int]]:
    """A string, a list of strings, a list of token ids, or a list of lists of token ids."""
    def ids(p: list[Any]) -> list[int]:
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in p):
            raise ApiError(400, "'prompt' token lists must hold integers", param="prompt")
        bad = [i for i in p if not 0 <= i < model.vocab_size]
        if bad:
            raise ApiError(400, f"prompt token id {bad[0]} is outside the vocabulary (size {model.vocab_size})",
                           param="prompt")
        return list(p)

    if isinstance(prompt, str):
        out = [model.encode(prompt)]
    elif isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        out = [model.encode(p) for p in prompt]
    elif isinstance(prompt, list) and prompt and all(isinstance(p, int) and not isinstance(p, bool) for p in prompt):
        out = [ids(prompt)]
    elif isinstance(prompt, list) and prompt and all(isinstance(p, list) for p in prompt):
        out = [ids(p) for p in prompt]
    else:
        raise ApiError(400, "'prompt' must be a string, a list of strings or a list of token ids", param="prompt")
    if len(out) > MAX_N:
        raise ApiError(400, f"at most {MAX_N} prompts per request", param="prompt")
    if any(not p for p in out):
        raise ApiError(400, "a prompt is empty (no tokens)", param="prompt")
    return out
