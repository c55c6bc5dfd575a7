"""The remote backend against the real ``deskmate model serve`` (real sockets, port 0)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from model.lm.api import InvalidRequestError, Usage, complete
from model.lm.remote import RemoteChatModel, RemoteConfig, RemoteError, RemoteStreamError
from model.lm.serve import running

ROOT = Path(__file__).resolve().parents[2]


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


@pytest.fixture
async def base_url(engine) -> AsyncIterator[str]:  # type: ignore[no-untyped-def]
    async with running(engine, port=0) as port:
        yield f"http://127.0.0.1:{port}/v1"


def remote(url: str, **kw: object) -> RemoteChatModel:
    return RemoteChatModel(RemoteConfig(base_url=url, model="SmolLM2-135M-Instruct", **kw))  # type: ignore[arg-type]


async def test_remote_streams_same_text_as_engine(engine, base_url) -> None:  # type: ignore[no-untyped-def]
    usage = Usage()
    deltas = [d async for d in remote(base_url).stream(user("Say hello in French."), max_tokens=16,
                                                       usage=usage)]
    assert len(deltas) > 3
    assert "".join(deltas) == await complete(engine, user("Say hello in French."), max_tokens=16)
    assert usage.completion_tokens == 16 and usage.prompt_tokens > 10
    assert usage.finish_reason == "length"


async def test_models_and_plain_json(base_url) -> None:  # type: ignore[no-untyped-def]
    async with aiohttp.ClientSession() as s:
        async with s.get(base_url + "/models") as r:
            assert (await r.json())["data"][0]["id"] == "SmolLM2-135M-Instruct"
        body = {"messages": user("Hi"), "max_tokens": 5, "temperature": 0, "stop": "zzz"}
        async with s.post(base_url + "/chat/completions", json=body) as r:
            obj = await r.json()
            assert r.status == 200 and obj["object"] == "chat.completion"
            assert obj["choices"][0]["message"]["content"] and obj["usage"]["completion_tokens"] <= 5
        async with s.post(base_url + "/chat/completions", data=b"{not json") as r:
            assert r.status == 400 and "error" in await r.json()
        async with s.post(base_url + "/chat/completions", json={"messages": user("x"),
                                                                 "max_tokens": "9"}) as r:
            assert r.status == 400


async def test_errors_map_to_statuses(base_url) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(RemoteError) as err:
        await complete(remote(base_url), user("word " * 9000), max_tokens=4)
    assert err.value.status == 400 and err.value.code == "context_length_exceeded"
    with pytest.raises(InvalidRequestError):
        await complete(remote(base_url), user("hi"), max_tokens=0)


# A template that refuses a conversation the way many models' templates do ("roles must
# alternate"): the real jinja ``raise_exception`` path of apply_chat_template.
STRICT_TEMPLATE = (
    "{% for m in messages %}{% if loop.index0 > 0 and m['role'] == messages[loop.index0 - 1]['role'] %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


async def test_template_refusal_is_a_400_json_error(engine, base_url, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(engine.tokenizer, "chat_template", STRICT_TEMPLATE)
    body = {"messages": user("hi") + user("hello?"), "max_tokens": 4}
    async with aiohttp.ClientSession() as s:
        for stream in (False, True):
            async with s.post(base_url + "/chat/completions", json={**body, "stream": stream}) as r:
                assert r.status == 400 and r.content_type == "application/json"
                err = (await r.json())["error"]
        assert err["type"] == "invalid_request_error" and err["code"] == "invalid_request"
        assert "roles must alternate" in err["message"]
        # The template itself still works for a conversation it accepts.
        async with s.post(base_url + "/chat/completions", json={**body, "messages": user("hi")}) as r:
            assert r.status == 200


async def test_closed_engine_is_a_503_server_error(loaded) -> None:  # type: ignore[no-untyped-def]
    from model.lm.engine import Engine

    closed = Engine(loaded)
    closed.close()
    async with running(closed, port=0) as port, aiohttp.ClientSession() as s:
        async with s.post(f"http://127.0.0.1:{port}/v1/chat/completions",
                          json={"messages": user("hi"), "max_tokens": 4}) as r:
            assert r.status == 503
            err = (await r.json())["error"]
    assert err["type"] == "server_error" and err["code"] == "engine_closed"


class BrokenModel:
    """Stands in for a model with a bug (no real one fails this way on purpose)."""

    name = "broken"

    async def stream(self, messages, **kwargs):  # type: ignore[no-untyped-def]
        if kwargs.get("max_tokens") == 2:
            yield "partial"
        raise KeyError("bug")


async def test_unexpected_failure_is_a_json_500_or_an_in_band_error() -> None:
    async with running(BrokenModel(), port=0) as port, aiohttp.ClientSession() as s:  # type: ignore[arg-type]
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        async with s.post(url, json={"messages": user("hi"), "max_tokens": 4}) as r:
            assert r.status == 500
            err = (await r.json())["error"]
        assert err["type"] == "server_error" and "KeyError" in err["message"]
        async with s.post(url, json={"messages": user("hi"), "max_tokens": 2, "stream": True}) as r:
            assert r.status == 200
            events = [line[6:] for line in (await r.text()).splitlines() if line.startswith("data: ")]
        assert json.loads(events[-1])["error"]["type"] == "server_error"
        assert json.loads(events[1])["choices"][0]["delta"]["content"] == "partial"


async def test_unreachable_server_retries_then_fails() -> None:
    import socket

    with socket.socket() as sock:          # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    lm = remote(f"http://127.0.0.1:{port}/v1", retries=2, backoff=0.01)
    with pytest.raises(RemoteError, match="3 attempts"):
        await complete(lm, user("hi"), max_tokens=4)


async def test_read_timeout_and_slot_freed(engine, base_url) -> None:  # type: ignore[no-untyped-def]
    # Prefilling ~1500 tokens takes seconds here, far longer than the 50 ms allowed.
    lm = remote(base_url, read_timeout=0.05, retries=0)
    with pytest.raises(RemoteError):
        await complete(lm, user("tea " * 1500), max_tokens=50)
    async with asyncio.timeout(30):
        while engine.active_count or engine.waiting_count:  # noqa: ASYNC110 - plain counters
            await asyncio.sleep(0.05)


async def test_consumer_cancel_frees_server_slot(engine, base_url) -> None:  # type: ignore[no-untyped-def]
    cancelled = engine.stats.finished.get("cancelled", 0)
    gen = remote(base_url).stream(user("Tell me a very long story."), max_tokens=300)
    async for _ in gen:
        break
    await gen.aclose()
    async with asyncio.timeout(30):
        while engine.stats.finished.get("cancelled", 0) == cancelled:  # noqa: ASYNC110 - counters
            await asyncio.sleep(0.05)
    assert engine.active_count == 0


async def test_server_gone_mid_stream(tmp_path: Path) -> None:
    """A real ``model serve`` process killed while it streams."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT),
           "DESKMATE_LM_CACHE": os.environ.get("DESKMATE_LM_CACHE", str(ROOT / "var" / "models"))}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "model.lm.cli", "model", "serve", "--port", "0", "--threads", "1",
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(120):
            line = (await proc.stdout.readline()).decode()
        url = line.strip().rsplit(" on ", 1)[1]
        lm = remote(url)
        got: list[str] = []
        with pytest.raises(RemoteStreamError):
            async for delta in lm.stream(user("Tell me a very long story."), max_tokens=400):
                got.append(delta)
                if len(got) == 3:
                    proc.kill()
        assert len(got) >= 3
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


@contextlib.asynccontextmanager
async def sse_server(events: list[str]) -> AsyncIterator[str]:
    """A fake OpenAI-compatible server (port 0) that streams ``events`` as ``data:`` lines:
    it stands in for TGI and for a broken server, which cannot run here."""
    async def chat(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for event in events:
            await response.write(f"data: {event}\n\n".encode())
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
    finally:
        await runner.cleanup()


TEXT_EVENT = json.dumps({"choices": [{"index": 0, "delta": {"content": "Hello"}}]})
TGI_ERROR = json.dumps({"error": "Input validation error: too many tokens", "error_type": "validation"})


@pytest.mark.parametrize("text_first", [False, True])
async def test_in_stream_error_as_a_string_tgi(text_first: bool) -> None:
    async with sse_server([TEXT_EVENT] * text_first + [TGI_ERROR]) as url:
        got: list[str] = []
        with pytest.raises(RemoteStreamError, match="Input validation error: too many tokens"):
            async for delta in remote(url, retries=0).stream(user("hi"), max_tokens=4):
                got.append(delta)
        assert got == ["Hello"] * text_first


async def test_malformed_event_is_a_stream_error() -> None:
    async with sse_server([TEXT_EVENT, "{not json", "[DONE]"]) as url:
        with pytest.raises(RemoteStreamError, match="malformed stream event: '{not json'"):
            await complete(remote(url, retries=0), user("hi"), max_tokens=4)


def test_config_from_env_fails_loudly() -> None:
    with pytest.raises(ValueError, match="DESKMATE_LM_BASE_URL"):
        RemoteConfig.from_env({})
    with pytest.raises(ValueError):
        RemoteConfig.from_env({"DESKMATE_LM_BASE_URL": "http://x/v1", "DESKMATE_LM_MODEL_NAME": "m",
                               "DESKMATE_LM_TIMEOUT": "soon"})
    cfg = RemoteConfig.from_env({"DESKMATE_LM_BASE_URL": "http://x/v1", "DESKMATE_LM_MODEL_NAME": "m",
                                 "DESKMATE_LM_API_KEY": "k"})
    assert cfg.api_key == "k" and json.dumps(cfg.retries) == "2"


def test_open_chat_model_picks_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    from model.lm import open_chat_model

    monkeypatch.setenv("DESKMATE_LM_BACKEND", "cloud")
    with pytest.raises(ValueError, match="DESKMATE_LM_BACKEND"):
        open_chat_model()
    monkeypatch.setenv("DESKMATE_LM_BACKEND", "remote")
    monkeypatch.setenv("DESKMATE_LM_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("DESKMATE_LM_MODEL_NAME", "SmolLM2-135M-Instruct")
    lm = open_chat_model()
    assert isinstance(lm, RemoteChatModel) and lm.name == "SmolLM2-135M-Instruct"
