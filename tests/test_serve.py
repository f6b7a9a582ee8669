"""The OpenAI-compatible server (`python -m nanochat_ternary.serve`) as a subprocess on a free
localhost port, serving the shipped default model: the official `openai` client (plain and
streaming, completions and chat, usage chunk, n, seed, stop, logprobs), raw HTTP for the error
paths (400 / 401 / 404 / 413 / 503 + Retry-After / 504), a client disconnect cancelling its
generation, /metrics, /tokenize, and SIGTERM draining a running stream before exit."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from nanochat_ternary import TernaryModel  # noqa: E402

KEY = "test-key"
PROMPT = "fn main() {"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "nanochat_ternary.serve", "--port", str(self.port), "--log-level", "warning", *args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 120
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.proc.stdout.read() if self.proc.stdout else ''}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("server did not become healthy")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def metric(self, name: str) -> float:
        text = httpx.get(self.url + "/metrics", headers={"Authorization": f"Bearer {KEY}"}, timeout=5).text
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
        raise KeyError(name)


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    s = Server("--api-key", KEY, "--parallel", "3", "--max-queue", "1", "--max-body", "4096")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def model() -> TernaryModel:
    return TernaryModel.from_pretrained()


def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {KEY}"}


def test_health_models_and_page_need_no_key(server: Server, model: TernaryModel) -> None:
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}
    models = httpx.get(server.url + "/v1/models").json()
    assert models["object"] == "list" and models["data"][0]["id"] == model.name
    page = httpx.get(server.url + "/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]


def test_completion_plain_equals_the_engine_greedy(client: openai.OpenAI, model: TernaryModel) -> None:
    r = client.completions.create(model=model.name, prompt=PROMPT, max_tokens=20, temperature=0)
    # The server keeps OpenAI's defaults (no repetition penalty, no token healing), not the model's generation_config.
    expected = model.generate(PROMPT, max_new_tokens=20, temperature=0, repetition_penalty=1.0, token_healing=False)
    assert r.object == "text_completion"
    assert r.choices[0].text == expected
    assert r.choices[0].finish_reason in ("length", "stop")
    assert r.usage.prompt_tokens == len(model.encode(PROMPT))
    assert 0 < r.usage.completion_tokens <= 20
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_completion_stream_with_usage_chunk(client: openai.OpenAI, model: TernaryModel) -> None:
    plain = client.completions.create(model=model.name, prompt=PROMPT, max_tokens=24, temperature=0)
    chunks = list(client.completions.create(model=model.name, prompt=PROMPT, max_tokens=24, temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == plain.choices[0].text
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == plain.usage.completion_tokens
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == plain.choices[0].finish_reason


def test_raw_sse_format_ends_with_done(server: Server) -> None:
    body = {"prompt": PROMPT, "max_tokens": 5, "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", server.url + "/v1/completions", json=body, headers=auth(), timeout=30) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    events = raw.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    payloads = [json.loads(e[len("data: "):]) for e in events[:-2]]
    assert all(e.startswith("data: ") for e in events[:-1])
    assert payloads[-1]["choices"] == [] and set(payloads[-1]["usage"]) == {"prompt_tokens", "completion_tokens", "total_tokens"}


def test_chat_plain_and_stream(client: openai.OpenAI, model: TernaryModel) -> None:
    messages = [{"role": "system", "content": "You write Rust."}, {"role": "user", "content": "A hello world, please."}]
    plain = client.chat.completions.create(model=model.name, messages=messages, max_tokens=16, temperature=0)
    assert plain.object == "chat.completion"
    assert plain.choices[0].message.role == "assistant"
    # The documented base template (the shipped model has no chat template of its own).
    prompt = "System: You write Rust.\n\nUser: A hello world, please.\n\nAssistant:"
    assert plain.usage.prompt_tokens == len(model.encode(prompt))
    expected = model.generate(prompt, max_new_tokens=16, temperature=0, stop="\nUser:", repetition_penalty=1.0,
                              token_healing=False)
    assert plain.choices[0].message.content == expected
    chunks = list(client.chat.completions.create(model=model.name, messages=messages, max_tokens=16, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    assert chunks[-1].usage.total_tokens == plain.usage.total_tokens


def test_n_seed_stop_and_sampling_settings(client: openai.OpenAI, model: TernaryModel) -> None:
    kw = dict(model=model.name, prompt=PROMPT, max_tokens=12, temperature=0.9, top_p=0.95, seed=7, n=2,
              extra_body={"top_k": 40, "min_p": 0.05})
    a = client.completions.create(**kw)
    b = client.completions.create(**kw)
    assert [c.index for c in a.choices] == [0, 1]
    assert [c.text for c in a.choices] == [c.text for c in b.choices], "same seed, same text"
    greedy = client.completions.create(model=model.name, prompt=PROMPT, max_tokens=20, temperature=0).choices[0].text
    stop = greedy.strip()[:3]
    assert stop
    cut = client.completions.create(model=model.name, prompt=PROMPT, max_tokens=20, temperature=0, stop=[stop])
    assert cut.choices[0].text == greedy[: greedy.index(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_logprobs(client: openai.OpenAI, model: TernaryModel) -> None:
    r = client.completions.create(model=model.name, prompt=PROMPT, max_tokens=6, temperature=0, logprobs=3)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == r.usage.completion_tokens
    assert all(len(t) <= 3 and max(t.values()) == pytest.approx(v, abs=1e-6) for t, v in zip(lp.top_logprobs, lp.token_logprobs))
    c = client.chat.completions.create(model=model.name, messages=[{"role": "user", "content": "hi"}], max_tokens=4,
                                       temperature=0, logprobs=True, top_logprobs=2)
    content = c.choices[0].logprobs.content
    assert len(content) == c.usage.completion_tokens
    assert all(len(e.top_logprobs) == 2 and e.logprob <= 0 for e in content)


def test_tokenize_and_detokenize(server: Server, model: TernaryModel) -> None:
    r = httpx.post(server.url + "/tokenize", json={"content": PROMPT}, headers=auth()).json()
    assert r["tokens"] == model.encode(PROMPT) and r["count"] == len(r["tokens"])
    back = httpx.post(server.url + "/detokenize", json={"tokens": r["tokens"]}, headers=auth()).json()
    assert back["content"].endswith(PROMPT)


@pytest.mark.parametrize(
    ("path", "body", "status", "needle"),
    [
        ("/v1/completions", b"{not json", 400, "not valid JSON"),
        ("/v1/completions", b"[1, 2]", 400, "JSON object"),
        ("/v1/completions", {"prompt": PROMPT, "temperature": "hot"}, 400, "'temperature' must be a number"),
        ("/v1/completions", {"prompt": PROMPT, "temperature": 3}, 400, "'temperature' must lie in"),
        ("/v1/completions", {"prompt": PROMPT, "max_tokens": 0}, 400, "'max_tokens'"),
        ("/v1/completions", {"prompt": PROMPT, "n": 0}, 400, "'n'"),
        ("/v1/completions", {"prompt": PROMPT, "logprobs": 6}, 400, "'logprobs'"),
        ("/v1/completions", {"prompt": PROMPT, "presence_penalty": 1.0}, 400, "not supported"),
        ("/v1/completions", {"prompt": PROMPT, "echo": True}, 400, "not supported"),
        ("/v1/completions", {"prompt": PROMPT, "stop": ["a", "b", "c", "d", "e"]}, 400, "'stop'"),
        ("/v1/completions", {"prompt": PROMPT, "max_tokens": 100000}, 400, "maximum context length"),
        ("/v1/completions", {"prompt": [999999]}, 400, "outside the vocabulary"),
        ("/v1/completions", {"max_tokens": 3}, 400, "'prompt'"),
        ("/v1/completions", {"prompt": PROMPT, "stream_options": {"include_usage": True}}, 400, "stream_options"),
        ("/v1/chat/completions", {"messages": []}, 400, "'messages'"),
        ("/v1/chat/completions", {"messages": [{"role": "robot", "content": "x"}]}, 400, "role"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}, 400, "logprobs"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]}, 400,
         "not supported"),
        ("/detokenize", {"tokens": ["a"]}, 400, "integers"),
        ("/v1/completions", {"prompt": "x" * 5000}, 413, "larger than"),
        ("/v1/nothing", {}, 404, "no such endpoint"),
    ],
)
def test_bad_requests_get_openai_shaped_errors(server: Server, path: str, body: object, status: int, needle: str) -> None:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = httpx.post(server.url + path, content=content, headers={**auth(), "Content-Type": "application/json"}, timeout=10)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == status and needle in err["message"] and err["type"]


def test_missing_or_wrong_key_is_401(server: Server) -> None:
    body = {"prompt": PROMPT, "max_tokens": 2}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        r = httpx.post(server.url + "/v1/completions", json=body, headers=headers)
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0).completions.create(
            model="m", prompt=PROMPT, max_tokens=2)


def _long_stream(server: Server, client: httpx.Client) -> tuple[object, Iterator[str]]:
    body = {"prompt": PROMPT, "max_tokens": 480, "temperature": 0, "stream": True, "ignore_eos": True}
    cm = client.stream("POST", server.url + "/v1/completions", json=body, headers=auth())
    r = cm.__enter__()  # the headers come back as soon as the request is queued
    assert r.status_code == 200
    return cm, r.iter_lines()


def test_full_queue_answers_503_at_once_and_disconnects_cancel(server: Server) -> None:
    cancelled0 = server.metric('nct:request_finished_total{outcome="cancelled"}')
    # parallel 3 + queue 1: four long streams fill the server, the fifth request is refused.
    clients = [httpx.Client(timeout=60) for _ in range(4)]
    streams = [_long_stream(server, c) for c in clients]
    t0 = time.perf_counter()
    r = httpx.post(server.url + "/v1/completions", json={"prompt": PROMPT, "max_tokens": 2}, headers=auth(), timeout=10)
    elapsed = time.perf_counter() - t0
    assert r.status_code == 503, r.text
    assert r.headers["retry-after"] == "1" and r.json()["error"]["type"] == "unavailable_error"
    assert elapsed < 0.5, elapsed
    # Every client goes away mid-stream: their sequences are cancelled, not run to the end.
    for (cm, _), c in zip(streams, clients):
        cm.__exit__(None, None, None)  # type: ignore[attr-defined]
        c.close()
    deadline = time.monotonic() + 10
    while server.metric("nct:num_requests_running") > 0 or server.metric(
        'nct:request_finished_total{outcome="cancelled"}'
    ) < cancelled0 + 4:
        assert time.monotonic() < deadline, "disconnected streams were not cancelled"
        time.sleep(0.05)
    assert httpx.post(server.url + "/v1/completions", json={"prompt": PROMPT, "max_tokens": 2}, headers=auth()).status_code == 200


def test_metrics_are_prometheus_text(server: Server) -> None:
    text = httpx.get(server.url + "/metrics", headers=auth()).text
    for name in ("nct:num_requests_running", "nct:num_requests_waiting", "nct:prompt_tokens_total",
                 "nct:generation_tokens_total"):
        assert f"# TYPE {name} " in text and server.metric(name) >= 0
    assert server.metric("nct:generation_tokens_total") > 0
    for name in ("nct:time_to_first_token_seconds", "nct:inter_token_latency_seconds"):
        assert f"# TYPE {name} histogram" in text and f'{name}_bucket{{le="+Inf"}}' in text
        assert server.metric(name + "_count") > 0


TEMPLATE = (
    "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def with_chat_template(model: TernaryModel, out: Path) -> Path:
    """A copy of the model's GGUF that ships a chat template (every key and tensor kept)."""
    from nanochat_ternary.gguf import GGUFReader, GGUFWriter

    reader = GGUFReader(model.path)
    writer = GGUFWriter(out)
    for key, value in reader.metadata.items():
        if key != "general.alignment":
            writer.add(key, value, reader.metadata_types[key])
    writer.add_string("tokenizer.chat_template", TEMPLATE)
    for t in reader.tensors:
        data = reader.tensor(t.name) if t.ggml_type in ("F32", "F16") else reader.tensor_bytes(t.name)
        writer.add_tensor(t.name, data, ggml_type=t.ggml_type, shape=t.shape)
    writer.write()
    return out


def test_model_chat_template_timeout_and_sigterm_drain(tmp_path: Path, model: TernaryModel) -> None:
    path = with_chat_template(model, tmp_path / "templated.gguf")
    s = Server("--model", str(path), "--timeout", "1.5", "--parallel", "2")
    try:
        # The file's own template renders the prompt (no base-template stop string).
        c = openai.OpenAI(base_url=s.url + "/v1", api_key="none", max_retries=0).chat.completions.create(
            model="templated", messages=[{"role": "user", "content": "hi"}], max_tokens=4, temperature=0)
        assert c.usage.prompt_tokens == len(model.encode("<|user|>hi\n<|assistant|>"))
        r = httpx.post(s.url + "/v1/completions", timeout=30,
                       json={"prompt": PROMPT, "max_tokens": 480, "temperature": 0, "ignore_eos": True,
                             "repetition_penalty": 1.0, "n": 2})
        # rust-tiny decodes far faster than this on any machine, so only check when it timed out
        if r.status_code != 200:
            assert r.status_code == 504 and "timeout" in r.json()["error"]["message"]
        body = {"prompt": PROMPT, "max_tokens": 40, "temperature": 0, "stream": True, "ignore_eos": True}
        with httpx.stream("POST", s.url + "/v1/completions", json=body, timeout=30) as r:
            lines = r.iter_lines()
            first = next(line for line in lines if line.startswith("data: "))
            s.proc.send_signal(signal.SIGTERM)
            rest = [line for line in lines if line.startswith("data: ")]
        chunks = [json.loads(line[6:]) for line in [first, *rest[:-1]]]
        assert rest[-1] == "data: [DONE]"
        assert chunks[-1]["choices"][0]["finish_reason"] == "length"
        assert sum(1 for c in chunks if c["choices"] and c["choices"][0]["text"]) >= 1
        # uvicorn drains, then re-raises the SIGTERM it caught (the conventional exit status).
        assert s.proc.wait(20) in (0, -signal.SIGTERM)
    finally:
        s.stop()


@pytest.mark.skipif(os.environ.get("NCT_SKIP_SLOW") == "1", reason="NCT_SKIP_SLOW")
def test_many_requests_with_random_disconnects_leave_no_errors(server: Server) -> None:
    import random

    rng = random.Random(0)
    errors0 = server.metric('nct:request_finished_total{outcome="error"}')
    for i in range(30):
        body = {"prompt": PROMPT, "max_tokens": rng.randint(1, 30), "temperature": 0.8, "seed": i,
                "stream": rng.random() < 0.7}
        if body["stream"] and rng.random() < 0.5:
            with httpx.stream("POST", server.url + "/v1/completions", json=body, headers=auth(), timeout=30) as r:
                assert r.status_code == 200
                next(r.iter_lines())  # then hang up
        else:
            r = httpx.post(server.url + "/v1/completions", json=body, headers=auth(), timeout=30)
            assert r.status_code == 200, r.text
    assert server.metric('nct:request_finished_total{outcome="error"}') == errors0
    assert httpx.get(server.url + "/health").status_code == 200


def test_health_is_503_while_the_model_loads(monkeypatch: pytest.MonkeyPatch, model: TernaryModel) -> None:
    import asyncio
    import threading

    from nanochat_ternary.serve import ServerConfig, create_app

    release = threading.Event()

    def slow_load(name: object = None, **kw: object) -> TernaryModel:
        release.wait(30)
        return model

    monkeypatch.setattr(TernaryModel, "from_pretrained", staticmethod(slow_load))
    app = create_app(ServerConfig(parallel=1))

    async def run() -> None:
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
                r = await c.get("/health")
                assert r.status_code == 503
                assert r.json() == {"error": {"code": 503, "message": "Loading model", "type": "unavailable_error",
                                              "param": None}}
                r = await c.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 2})
                assert r.status_code == 503 and r.headers["retry-after"] == "1"
                release.set()
                for _ in range(200):
                    if (await c.get("/health")).status_code == 200:
                        break
                    await asyncio.sleep(0.02)
                r = await c.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 2, "temperature": 0})
                assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] >= 1

    asyncio.run(run())
