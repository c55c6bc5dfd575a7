"""HTTP routes, Redis health, a Redis restart, and graceful shutdown of the real CLI."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from bot.brain import Brain
from bot.config import Settings
from bot.embedded_redis import EmbeddedRedis
from bot.errors import ConfigError
from bot.server import bound_port, running
from tests.conftest import ROOT, TINYBOT, Client, Running, Servers, tiny_engine


def get(url: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


async def aget(url: str) -> tuple[int, dict[str, str], bytes]:
    return await asyncio.to_thread(get, url)


async def test_healthz_metrics_and_assets(server: Running) -> None:
    status, headers, body = await aget(server.http + "/healthz")
    assert status == 200 and json.loads(body)["redis"] == "ok"
    client = await server.client()
    await client.start()
    await client.say("hello")
    status, headers, body = await aget(server.http + "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    text = body.decode()
    assert 'deskmate_messages_total{duplicate="false"} 1.0' in text
    assert "deskmate_turns_total 1.0" in text
    assert 'deskmate_connections{socket="chat"} 1.0' in text
    for path, kind in (("/widget.js", "application/javascript"), ("/demo", "text/html")):
        status, headers, body = await aget(server.http + path)
        assert status == 200 and headers["Content-Type"].startswith(kind) and body
    status, _, _ = await aget(server.http + "/nope")
    assert status == 404
    status, _, _ = await aget(server.http + "/ws/chat")  # plain GET on the socket path
    assert status == 426


async def test_redis_outage_is_reported_and_survived(servers: Servers, tmp_path: Path) -> None:
    embedded = EmbeddedRedis(tmp_path).start()
    try:
        server = await servers.start(redis_url=embedded.url)
        client = await server.client()
        await client.start()
        ack, _ = await client.say("hello")

        embedded.stop()
        status, _, body = await aget(server.http + "/healthz")
        assert status == 503 and json.loads(body)["redis"] == "down"
        await client.send({"type": "message", "client_id": "during-outage", "text": "anyone?"})
        frame = await client.until(lambda f: f["type"] == "error", timeout=30)
        assert frame[-1]["code"] == "unavailable"

        embedded.start()  # same directory: the append-only file brings the data back
        for _ in range(50):
            if (await aget(server.http + "/healthz"))[0] == 200:
                break
            await asyncio.sleep(0.2)
        # The client resends the unacked message; the acked one is still there.
        await client.send({"type": "message", "client_id": "during-outage", "text": "hello again"})
        # The reply arrives streamed, or (if it was published before this instance's
        # pub/sub reconnected) as the stored message once the instance catches up.
        frames = await client.until(lambda f: f["type"] == "stream_end"
                                    or (f["type"] == "message" and f["role"] == "bot"))
        assert [f["event_id"] for f in frames if f["type"] == "ack"]
        reader = await server.client()
        await reader.start(client.session_id, client.token)
        history = await reader.quiet(0.7)
        assert [f["text"] for f in history if f["role"] == "user"] == ["hello", "hello again"]
        assert history[0]["event_id"] == ack["event_id"]
    finally:
        embedded.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_cli_run_with_embedded_redis_and_sigterm(tmp_path: Path, trained_tinybot: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DESKMATE_REDIS_URL")}
    # No language model: this test is about the process lifecycle, not generation.
    env.update(PYTHONPATH=str(ROOT), DESKMATE_DATA_DIR=str(tmp_path / "var"), DESKMATE_LM_BACKEND="none")
    proc = subprocess.Popen(
        [sys.executable, "-m", "bot.cli", "run", "--port", str(port), "--project", str(trained_tinybot)],
        env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        # Loading torch and the models takes seconds, many more on a busy machine: poll until
        # the process answers or exits.
        for _ in range(1200):
            if proc.poll() is not None:
                pytest.fail(f"server exited: {proc.stdout.read().decode() if proc.stdout else ''}")
            try:
                status, _, _ = await aget(f"http://127.0.0.1:{port}/healthz")
                if status == 200:
                    break
            except OSError:
                await asyncio.sleep(0.1)
        else:
            pytest.fail("server did not start")
        assert (tmp_path / "var" / "redis" / "appendonly.aof").exists() or \
            (tmp_path / "var" / "redis" / "appendonlydir").exists()
        async with connect(f"ws://127.0.0.1:{port}/ws/chat") as ws:
            client = Client(ws)
            await client.start()
            await client.say("hello")
            proc.send_signal(signal.SIGTERM)
            with pytest.raises(Exception) as info:
                await client.recv(timeout=15)
            assert "1001" in str(info.value)  # going away
        assert await asyncio.to_thread(proc.wait, 30) == 0
        output = proc.stdout.read().decode() if proc.stdout else ""
        assert "shutting down" in output
        # The embedded Redis went down with it.
        await asyncio.sleep(0.2)
        assert not EmbeddedRedis(tmp_path / "var")._ping()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bot.cli", *args], cwd=ROOT, capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}, timeout=120)


def test_cli_refuses_a_missing_project(tmp_path: Path) -> None:
    result = run_cli("run", "--project", str(tmp_path / "none"))
    assert result.returncode == 1
    assert "domain.yml is missing" in result.stderr


def test_cli_refuses_an_untrained_or_stale_project(tmp_path: Path, trained_tinybot: Path) -> None:
    untrained = tmp_path / "untrained"
    shutil.copytree(TINYBOT, untrained, ignore=shutil.ignore_patterns("models"))
    result = run_cli("run", "--project", str(untrained), "--data-dir", str(tmp_path / "var"))
    assert result.returncode == 1
    assert f"deskmate train --project {untrained}" in result.stderr
    assert not (tmp_path / "var").exists()  # refused before starting anything

    stale = tmp_path / "stale"
    shutil.copytree(trained_tinybot, stale)
    nlu = stale / "data" / "nlu.yml"
    nlu.write_text(nlu.read_text() + "  - intent: thanks\n    examples: |\n      - thank you\n")
    result = run_cli("run", "--project", str(stale), "--data-dir", str(tmp_path / "var"))
    assert result.returncode == 1
    assert "older than the training data" in result.stderr
    assert f"deskmate train --project {stale}" in result.stderr


async def test_product_pictures_are_served_and_nothing_else_from_disk(server: Running) -> None:
    status, headers, body = await aget(f"{server.http}/static/img/p1001.svg")
    assert status == 200 and body.startswith(b"<svg") and b"Harbor Runner" in body
    assert "image/svg+xml" in str(headers).lower()
    for path in ("/static/../bot/config.py", "/static/img/../../../pyproject.toml", "/static/img/nope.svg",
                 "/static/", "/web/widget.js"):
        status, _, _ = await aget(f"{server.http}{path}")
        assert status == 404, path


class HeldPipeline:
    """The tiny bot's engine, holding every answer until ``release`` is set: a turn that
    is still running when the server is asked to stop."""

    def __init__(self) -> None:
        self.engine = tiny_engine(TINYBOT)
        self.started = asyncio.Event()
        self.release = asyncio.Event()

    async def respond(self, conversation: Any, message: Any) -> AsyncIterator[Any]:
        self.started.set()
        await self.release.wait()
        async for out in self.engine.respond(conversation, message):
            yield out

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)


async def test_a_draining_instance_is_unhealthy_and_takes_no_new_sockets(redis_url: str,
                                                                         key_prefix: str) -> None:
    """After SIGTERM an instance finishes its running turns (up to DESKMATE_SHUTDOWN_GRACE).
    It used to answer /healthz with 200 and accept new sockets meanwhile, so load balancers
    kept sending customers whose messages it would not answer before closing them."""
    pipeline = HeldPipeline()
    settings = Settings(host="127.0.0.1", port=0, project=TINYBOT, key_prefix=key_prefix,
                        shutdown_grace=10.0)
    stack = AsyncExitStack()
    _app, server = await stack.enter_async_context(
        running(settings, redis_url=redis_url, brain=Brain(pipeline)))
    port = bound_port(server)
    shutdown: asyncio.Task[None] | None = None
    try:
        ws = await connect(f"ws://127.0.0.1:{port}/ws/chat")
        client = Client(ws)
        await client.start()
        await client.send({"type": "message", "client_id": "m1", "text": "hello"})
        await asyncio.wait_for(pipeline.started.wait(), 10)

        shutdown = asyncio.create_task(stack.aclose())  # what SIGTERM does in `deskmate run`
        await asyncio.sleep(0.3)
        assert not shutdown.done()  # still waiting for the held turn
        status, _, body = await aget(f"http://127.0.0.1:{port}/healthz")
        assert status == 503 and json.loads(body)["status"] == "draining"
        with pytest.raises(InvalidStatus) as refused:
            await connect(f"ws://127.0.0.1:{port}/ws/chat", open_timeout=5)
        assert refused.value.response.status_code == 503

        # The running turn still finishes and reaches its customer, then the socket closes.
        pipeline.release.set()
        # The bot's typing indicator goes off last, after the reply is stored.
        frames = await client.until(lambda f: f["type"] == "typing" and not f["on"])
        assert [f for f in frames if f["type"] in ("stream_end", "message") and f.get("role") != "user"]
        await asyncio.wait_for(shutdown, 15)
        with pytest.raises(Exception, match="1001"):
            await client.recv(timeout=5)
    finally:
        pipeline.release.set()
        await (shutdown if shutdown is not None else stack.aclose())


async def test_a_port_in_use_is_a_configuration_error(redis_url: str, key_prefix: str) -> None:
    """It used to end in an OSError traceback from deep inside asyncio."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = Settings(host="127.0.0.1", port=port, project=TINYBOT, key_prefix=key_prefix)
        with pytest.raises(ConfigError) as info:
            async with running(settings, redis_url=redis_url, brain=Brain(tiny_engine(TINYBOT))):
                pass
    assert info.value.name == "DESKMATE_PORT"
    assert f"127.0.0.1:{port}" in str(info.value) and "in use" in str(info.value)
    # Nothing started for it keeps running (the hub's reader, the sweeper).
    await asyncio.sleep(0)
    leftovers = [t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()]
    assert not [t.get_name() for t in leftovers if t.get_name().startswith("hub")]


async def test_cli_run_on_a_port_in_use_says_so_and_stops_its_redis(tmp_path: Path,
                                                                    trained_tinybot: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DESKMATE_REDIS_URL")}
    env.update(PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", DESKMATE_DATA_DIR=str(tmp_path / "var"),
               DESKMATE_LM_BACKEND="none")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "bot.cli", "run", "--port", str(port), "--project", str(trained_tinybot)],
            env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert f"configuration error: DESKMATE_PORT: cannot listen on 127.0.0.1:{port}" in result.stderr
    embedded = EmbeddedRedis(tmp_path / "var")
    assert embedded.socket.parent.is_dir()  # it was started, and then stopped:
    assert not embedded._ping()
    embedded.start().stop()  # and the directory is free again
