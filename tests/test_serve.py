"""The OpenAI-compatible server, as a real process on a free localhost port: the official ``openai``
client (streaming and not), raw HTTP for the bad cases, auth, body limit, queue limit, disconnects,
and a bounded load test after which the server is healthy with no GPU buffers leaked."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

from tests.cli import REPO

KEY = "test-key-0123456789"
MODEL = "tiny"  # the served model id (--model-name; default: the model directory's name)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, mod: Path, log: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.proc = subprocess.Popen([sys.executable, "-m", "runtime.serve", str(mod), "--port", str(self.port), *args],
                                     cwd=REPO, stdout=subprocess.DEVNULL, stderr=log.open("w"),
                                     env={**os.environ, **(env or {})})
        deadline = time.time() + 120
        while time.time() < deadline:
            assert self.proc.poll() is None, log.read_text()
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise AssertionError("server did not start:\n" + log.read_text())

    def stop(self) -> str:
        self.proc.terminate()
        self.proc.wait(timeout=30)
        return self.log.read_text()


@pytest.fixture(scope="module")
def mod(compiled):
    return compiled("tiny", "f32", "float32", max_context=2048)


@pytest.fixture(scope="module")
def server(mod, tmp_path_factory):
    s = Server(mod, tmp_path_factory.mktemp("serve") / "server.log", "--api-key", KEY, "--max-queue", "4",
               "--model-name", MODEL, "--max-body-bytes", "65536")
    yield s
    s.stop()


@pytest.fixture()
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=60)


def _auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {KEY}"}


def test_openai_client_chat(client):
    assert [m.id for m in client.models.list()] == [MODEL]
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]
    r = client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=12, temperature=0)
    c = r.choices[0]
    assert c.message.role == "assistant" and isinstance(c.message.content, str)
    assert c.finish_reason in ("stop", "length")
    assert r.usage.completion_tokens <= 12 and r.usage.prompt_tokens > 5
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    chunks = list(client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=12, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == c.message.content
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == c.finish_reason
    assert chunks[-1].usage.completion_tokens == r.usage.completion_tokens
    # the same conversation again reuses the cached prefix
    again = client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=12, temperature=0)
    assert again.choices[0].message.content == c.message.content
    assert again.usage.prompt_tokens_details.cached_tokens == again.usage.prompt_tokens - 1


def test_openai_client_completions_seed_and_stop(client):
    kw = dict(model=MODEL, prompt="Once upon a time", max_tokens=16)
    greedy = client.completions.create(**kw, temperature=0)
    streamed = "".join(ch.choices[0].text for ch in client.completions.create(**kw, temperature=0, stream=True))
    assert streamed == greedy.choices[0].text and greedy.choices[0].finish_reason == "length"
    a = client.completions.create(**kw, temperature=2, seed=3).choices[0].text
    assert a == client.completions.create(**kw, temperature=2, seed=3).choices[0].text
    assert a != client.completions.create(**kw, temperature=2, seed=4).choices[0].text
    full = greedy.choices[0].text  # the random-weight model says "eeeeeeeeeeee07070707"
    stop = full[full.rindex("e") + 1:][:2]
    cut = client.completions.create(**kw, temperature=0, stop=[stop, "never-in-it"])
    assert cut.choices[0].finish_reason == "stop"
    # OpenAI's rule: the stop string and what follows are not returned
    assert cut.choices[0].text == full[:full.find(stop)] and len(cut.choices[0].text) > 3
    streamed = "".join(ch.choices[0].text for ch in client.completions.create(**kw, temperature=0, stop=stop,
                                                                              stream=True))
    assert streamed == cut.choices[0].text


def test_context_limit_is_a_clear_400(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL, prompt="word " * 3000, max_tokens=4)
    assert e.value.code == "context_length_exceeded" and "maximum context length is 2048" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL, prompt="hi", max_tokens=5000)
    assert "lower max_tokens to 2046 or less" in e.value.message


@pytest.mark.parametrize("path,body,status,needle", [
    ("/v1/chat/completions", b"{not json", 400, "not valid JSON"),
    ("/v1/chat/completions", b"[1]", 400, "must be a JSON object"),
    ("/v1/chat/completions", {"model": MODEL}, 400, "messages"),
    ("/v1/chat/completions", {"model": MODEL, "messages": []}, 400, "messages"),
    ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]}, 400, "role"),
    ("/v1/chat/completions", {"model": "gpt-4", "messages": [{"role": "user", "content": "x"}]}, 404,
     "this server serves 'tiny'"),
    ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "n": 2}, 400, "n > 1"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "temperature": -1}, 400, "temperature"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "top_p": 0}, 400, "top_p"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "stop": [""]}, 400, "stop"),
    ("/v1/completions", {"model": MODEL, "prompt": ""}, 400, "empty"),
    ("/v1/completions", {"model": MODEL, "prompt": [1, 99999]}, 400, "token ids"),
    ("/v1/completions", {"model": MODEL, "prompt": ["a", "b"]}, 400, "one prompt per request"),
    ("/v1/nothing", {}, 404, "no such endpoint"),
])
def test_bad_requests_get_openai_errors(server, path, body, status, needle):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = httpx.post(server.url + path, content=content, headers={**_auth(), "Content-Type": "application/json"})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and needle in err["message"], err


def test_api_key(server):
    body = {"model": MODEL, "prompt": "x", "max_tokens": 1}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}, {"Authorization": "Basic " + KEY}):
        r = httpx.post(server.url + "/v1/completions", json=body, headers=headers)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(server.url + "/v1/models").status_code == 401
    assert httpx.get(server.url + "/stats").status_code == 401
    assert httpx.get(server.url + "/health").status_code == 200  # health stays open, as in llama-server / vLLM
    assert httpx.post(server.url + "/v1/completions", json=body, headers=_auth()).status_code == 200


def test_body_limit(server):
    big = json.dumps({"model": MODEL, "prompt": "x" * 70000}).encode()
    r = httpx.post(server.url + "/v1/completions", content=big, headers=_auth())
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"

    def chunked():  # no Content-Length: the limit is enforced while reading
        for i in range(0, len(big), 8192):
            yield big[i:i + 8192]

    r = httpx.post(server.url + "/v1/completions", content=chunked(), headers=_auth())
    assert r.status_code == 413


def _stats(server) -> dict:
    return httpx.get(server.url + "/stats", headers=_auth()).json()


def test_disconnect_frees_engine_at_once(server):
    before = _stats(server)
    body = {"model": MODEL, "prompt": "long story", "max_tokens": 2000, "temperature": 0, "stream": True}
    with httpx.stream("POST", server.url + "/v1/completions", json=body, headers=_auth(), timeout=60) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        for _ in range(3):
            next(lines)
    t0 = time.time()
    while _stats(server)["running"]:
        assert time.time() - t0 < 10, "the engine kept generating for a client that left"
        time.sleep(0.05)
    after = _stats(server)
    assert after["cancelled"] == before["cancelled"] + 1 and after["served"] == before["served"]


async def _one_client(url: str, i: int) -> str:
    body = {"model": MODEL, "messages": [{"role": "user", "content": f"client {i}"}], "max_tokens": 12,
            "stream": True, "temperature": 0.7, "seed": i}
    async with httpx.AsyncClient(timeout=120) as c, c.stream("POST", url + "/v1/chat/completions", json=body,
                                                             headers=_auth()) as r:
        if r.status_code == 429:
            err = json.loads(await r.aread())["error"]
            assert err["code"] == "rate_limit_exceeded" and r.headers["retry-after"] == "1"
            return "rejected"
        assert r.status_code == 200
        n = 0
        async for line in r.aiter_lines():
            if not line:
                continue
            if i % 4 == 0 and n == 2:
                return "left"  # a client that disconnects early
            n += 1
            if line == "data: [DONE]":
                return "done"
            assert "error" not in json.loads(line.removeprefix("data: "))
        raise AssertionError("stream ended without [DONE]")


def test_load_32_streaming_clients(server):
    before = _stats(server)

    async def run():
        return await asyncio.gather(*(_one_client(server.url, i) for i in range(32)))

    t0 = time.time()
    outcomes = asyncio.run(run())
    assert time.time() - t0 < 120
    # every accepted client ends as it meant to (clients 0, 4, 8, ... hang up early); which ones are
    # accepted depends on arrival order, but a queue of 4 cannot take all 32
    for i, o in enumerate(outcomes):
        assert o in ({"left", "rejected"} if i % 4 == 0 else {"done", "rejected"}), (i, o)
    assert "done" in outcomes and "rejected" in outcomes
    t0 = time.time()
    while (s := _stats(server))["running"] or s["waiting"]:
        assert time.time() - t0 < 30
        time.sleep(0.1)
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}
    assert s["gpu_buffers"] == before["gpu_buffers"] and s["failed"] == 0
    assert s["rejected"] - before["rejected"] == outcomes.count("rejected")


def test_prompts_not_logged_unless_asked(mod, server, client, tmp_path):
    secret = "zebra-umbrella-4711"
    client.completions.create(model=MODEL, prompt=secret, max_tokens=2)
    log = server.log.read_text()
    assert "cmpl-" in log and secret not in log
    # the API key may come from the environment; --log-prompts logs the prompt
    other = Server(mod, tmp_path / "server.log", "--log-prompts", "--model-name", "m", env={"QWEN3VK_API_KEY": "k2"})
    try:
        assert httpx.get(other.url + "/v1/models").status_code == 401
        c = openai.OpenAI(base_url=other.url + "/v1", api_key="k2", max_retries=0)
        c.chat.completions.create(model="m", messages=[{"role": "user", "content": secret}], max_tokens=2,
                                  extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    finally:
        log = other.stop()
    assert secret in log and "<think>" in log  # thinking off pre-fills an empty think block
