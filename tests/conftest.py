"""Shared fixtures: a real Redis (embedded, or $REDIS_URL), real servers on port 0,
real websocket clients. Every test gets its own key prefix and deletes only its keys."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
import redis
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from bot.config import Settings
from bot.embedded_redis import EmbeddedRedis, find_redis_server
from bot.server import App, Brain, bound_port, running
from dialogue.engine import DialogueEngine
from dialogue.entities import EntityExtractor
from dialogue.project import load_project
from tests.fakes import free_port

ROOT = Path(__file__).resolve().parent.parent
TINYBOT = ROOT / "tests" / "fixtures" / "tinybot"


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """$REDIS_URL when set (a shared server), else an embedded redis-server for the run."""
    url = os.environ.get("REDIS_URL") or os.environ.get("DESKMATE_REDIS_URL")
    if url:
        yield url
        return
    with EmbeddedRedis(tmp_path_factory.mktemp("redis")) as embedded:
        yield embedded.url


def delete_prefix(url: str, prefix: str) -> None:
    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=500))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture(scope="session")
def trained_tinybot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the tiny test bot with its intent model trained by ``deskmate train``."""
    project = tmp_path_factory.mktemp("tinybot") / "bot"
    shutil.copytree(TINYBOT, project)
    subprocess.run([sys.executable, "-m", "bot.cli", "train", "--project", str(project), "--quiet"],
                   cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"},
                   check=True, capture_output=True, timeout=600)
    return project


@pytest.fixture
def key_prefix(redis_url: str) -> Iterator[str]:
    prefix = f"dmtest:{uuid.uuid4().hex[:10]}:"
    yield prefix
    delete_prefix(redis_url, prefix)


@pytest.fixture
def sync_redis(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


class Client:
    """A customer on /ws/chat with helpers to wait for frames."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.session_id: str | None = None
        self.token: str | None = None

    async def send(self, frame: dict[str, Any] | str | bytes) -> None:
        await self.ws.send(frame if isinstance(frame, (str, bytes)) else json.dumps(frame))

    async def recv(self, timeout: float = 10.0) -> dict[str, Any]:
        return json.loads(await asyncio.wait_for(self.ws.recv(), timeout))

    async def until(self, predicate: Callable[[dict[str, Any]], bool],
                    timeout: float = 10.0) -> list[dict[str, Any]]:
        """Frames received up to and including the first one matching ``predicate``."""
        seen = []
        while True:
            frame = await self.recv(timeout)
            seen.append(frame)
            if predicate(frame):
                return seen

    async def quiet(self, seconds: float = 0.5) -> list[dict[str, Any]]:
        """Everything that arrives within ``seconds``."""
        seen = []
        try:
            while True:
                seen.append(await self.recv(seconds))
        except TimeoutError:
            return seen

    async def start(self, session_id: str | None = None, token: str | None = None,
                    after: str | None = None) -> dict[str, Any]:
        await self.send({"type": "start", "session_id": session_id, "token": token,
                         "after": after, "customer": None})
        frame = await self.recv()
        assert frame["type"] == "session", frame
        self.session_id, self.token = frame["session_id"], frame["token"]
        return frame

    async def say(self, text: str, client_id: str | None = None,
                  ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Send a message; return its ack and the frames up to the reply's stream_end."""
        client_id = client_id or uuid.uuid4().hex
        await self.send({"type": "message", "client_id": client_id, "text": text})
        # The bot's typing indicator goes off last, after the reply is stored.
        frames = await self.until(lambda f: f["type"] == "typing" and not f["on"])
        frames = [f for f in frames if f["type"] != "typing"]
        acks = [f for f in frames if f["type"] == "ack"]
        assert len(acks) == 1 and acks[0]["client_id"] == client_id, frames
        return acks[0], frames


def tiny_engine(path: Path) -> DialogueEngine:
    """The dialogue engine over a small project, reading intents by example matching (no models)."""
    project = load_project(path)
    return DialogueEngine(project, entities=EntityExtractor.for_project(project))


class Servers:
    """Starts deskmate servers on free ports against the test Redis."""

    def __init__(self, redis_url: str, prefix: str, stack: AsyncExitStack) -> None:
        self.redis_url = redis_url
        self.prefix = prefix
        self.stack = stack

    async def start(self, brain: Brain | None = None, **overrides: Any) -> Running:
        """A server on a free port. The socket tests answer with the project's example
        matcher (no classifier) unless given a ``brain``; tests/test_server_nlu.py runs
        the trained classifier end to end."""
        settings = Settings(host="127.0.0.1", port=0, project=TINYBOT, key_prefix=self.prefix,
                            shutdown_grace=2.0).replace(**overrides)
        url = overrides.pop("redis_url", None) or self.redis_url
        brain = brain or Brain(tiny_engine(settings.project))
        app, server = await self.stack.enter_async_context(
            running(settings, redis_url=url, brain=brain))
        return Running(app, bound_port(server), self.stack)


class Running:
    def __init__(self, app: App, port: int, stack: AsyncExitStack) -> None:
        self.app = app
        self.port = port
        self.stack = stack
        self.http = f"http://127.0.0.1:{port}"

    async def client(self) -> Client:
        ws = await self.stack.enter_async_context(
            connect(f"ws://127.0.0.1:{self.port}/ws/chat", max_size=None,
                    max_queue=None))  # unread frames must not stall the close handshake
        return Client(ws)

    async def flood_without_reading(self, socket_name: str, opening: str, junk: str) -> int:
        """Open ``/ws/<socket_name>`` on a socket that never reads, send ``opening``, then
        ``junk`` until the server drops the connection; returns how many frames that took.
        Fails if the server still holds the connection after its close handshake timed out."""
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window: the server blocks
        sock.connect(("127.0.0.1", self.port))
        ws = await self.stack.enter_async_context(
            connect(f"ws://127.0.0.1:{self.port}/ws/{socket_name}", sock=sock, max_queue=1))  # reads nothing
        await ws.send(opening)

        def open_sockets() -> float | None:
            return self.app.metrics.registry.get_sample_value("deskmate_connections", {"socket": socket_name})

        sent = 0
        with contextlib.suppress(ConnectionClosed):
            # How many frames it takes depends on the kernel's socket buffers: send until dropped.
            while sent < 60_000 and open_sockets() != 0:
                await asyncio.gather(*(ws.send(junk) for _ in range(200)))
                sent += 200
        for _ in range(1200):  # the close handshake times out (the client is not reading)
            if open_sockets() == 0:
                break
            await asyncio.sleep(0.05)
        assert open_sockets() == 0, sent
        ws.transport.abort()  # no close handshake with a server that is gone
        return sent


@pytest.fixture
async def servers(redis_url: str, key_prefix: str) -> AsyncIterator[Servers]:
    async with AsyncExitStack() as stack:
        yield Servers(redis_url, key_prefix, stack)


@pytest.fixture
async def server(servers: Servers) -> Running:
    return await servers.start()


SHOP = ROOT / "examples" / "shop"


@pytest.fixture(scope="session")
def trained_shop() -> Path:
    """The demo shop, its intent model trained if missing or older than its data
    (``make prepare`` does the same before the suite)."""
    from model.classifier import check_fresh

    try:
        check_fresh(SHOP)
    except Exception:
        subprocess.run([sys.executable, "-m", "bot.cli", "train", "--project", str(SHOP), "--quiet"],
                       cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"},
                       check=True)
    return SHOP


@pytest.fixture(scope="session")
def shop_parts(trained_shop: Path) -> tuple[DialogueEngine, Callable[[list[str]], list[dict[str, Any]]]]:
    """The demo shop's engine (no language model) and its classifier, loaded once per run."""
    from bot.brain import build_engine
    from model.classifier import load_project_classifier

    classifier = load_project_classifier(trained_shop)
    engine = build_engine(load_project(trained_shop), embed=classifier.embed,
                          embedding_id=classifier.embedding_id)

    def understand(texts: list[str]) -> list[dict[str, Any]]:
        return classifier.parse_batch(texts, vectors=True)

    return engine, understand


@pytest.fixture
def shop_actions_env(redis_url: str, key_prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The demo shop's order actions keep their orders under this test's key prefix."""
    monkeypatch.setenv("DESKMATE_ACTIONS_REDIS_URL", redis_url)
    monkeypatch.setenv("DESKMATE_ACTIONS_PREFIX", f"{key_prefix}shop:")


class RedisProcess:
    """A redis-server on a free TCP port with an append-only file in ``folder``, as
    deployed (``appendfsync everysec``, like the Compose file and EmbeddedRedis)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [find_redis_server(), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder),
             "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
             "--logfile", str(self.folder / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, socket_timeout=1)
        try:
            for _ in range(100):
                try:
                    if client.ping():
                        return
                except redis.RedisError:
                    time.sleep(0.05)
        finally:
            client.close()
        pytest.fail(f"redis-server did not start:\n{(self.folder / 'redis.log').read_text()}")

    def kill(self) -> None:
        """SIGKILL: nothing flushed on the way out; only what Redis wrote before replying."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    """A redis-server of the test's own, which it may kill and start again."""
    server = RedisProcess(tmp_path)
    server.start()
    yield server
    server.kill()


@pytest.fixture
def disk_writes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The order of ``os.fsync`` and ``os.replace`` calls from here on (both still run):
    a file must reach the disk before it takes its final name."""
    calls: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        calls.append("fsync")
        real_fsync(fd)

    def replace(src: str, dst: str) -> None:
        calls.append("replace")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return calls
