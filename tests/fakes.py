"""Stand-ins for the services around deskmate that a test must be able to break on
demand, and the fault-test bot wired to them.

:class:`FakeLM` is an OpenAI-compatible ``/v1/chat/completions`` server. It stands in
for a model server (vLLM, llama.cpp, ``deskmate model serve``) because a real one
cannot be made to stream slowly, stay silent or stall at a chosen moment. It runs
on its own event loop in a thread, so both in-process servers and ``deskmate run``
subprocesses can reach it, and counts the requests it gets.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web

from bot.actions import RemoteActions
from bot.brain import Brain, build_engine, open_writer
from bot.config import Settings
from dialogue.generate import GenerationSettings
from dialogue.project import load_project

ROOT = Path(__file__).resolve().parent.parent
FAULTBOT = ROOT / "tests" / "fixtures" / "faultbot"
_LENGTH = re.compile(rb"content-length:\s*(\d+)", re.IGNORECASE)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def serve_app(app: web.Application) -> tuple[web.AppRunner, int]:
    """Serve ``app`` on a free loopback port; the caller cleans the runner up."""
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, int(runner.addresses[0][1])


def closed_url(path: str = "/webhook") -> str:
    """An http URL on a port where nothing listens (connections are refused)."""
    return f"http://127.0.0.1:{free_port()}{path}"


class FakeLM:
    """Answers every chat completion according to ``mode``:

    - ``"stream"``: each of ``chunks`` as one SSE delta, ``delay`` seconds apart, then ``[DONE]``;
    - ``"silent"``: reads the request and never answers (until the client hangs up);
    - ``"stall"``: the first chunk, then silence.
    """

    def __init__(self) -> None:
        self.mode = "stream"
        self.chunks: list[str] = ["Happy to help. "]
        self.delay = 0.0
        self.requests = 0
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fake-lm", daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        """The base URL, as ``DESKMATE_LM_BASE_URL`` takes it."""
        return f"http://127.0.0.1:{self.port}/v1"

    def script(self, mode: str, chunks: list[str] | None = None, delay: float = 0.0) -> None:
        self.mode, self.delay = mode, delay
        if chunks is not None:
            self.chunks = chunks

    def start(self) -> FakeLM:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(10)
        return self

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = _LENGTH.search(head)
            await reader.readexactly(int(length.group(1)) if length else 0)
            self.requests += 1
            if self.mode == "silent":
                await reader.read()  # returns when the client gives up and closes
                return
            # No Content-Length and Connection: close: the body ends when we close.
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                         b"Cache-Control: no-cache\r\nConnection: close\r\n\r\n")
            for i, chunk in enumerate(self.chunks):
                if i and self.delay:
                    await asyncio.sleep(self.delay)
                delta = {"choices": [{"index": 0, "delta": {"content": chunk}, "finish_reason": None}]}
                writer.write(b"data: " + json.dumps(delta).encode() + b"\n\n")
                await writer.drain()
                if self.mode == "stall":
                    await reader.read()
                    return
            writer.write(b"data: [DONE]\n\n")
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # the client went away (a killed server, a cancelled generation)
        finally:
            self._writers.discard(writer)
            writer.close()

    def stop(self) -> None:
        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            for writer in list(self._writers):
                writer.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()


def lm_environment(monkeypatch: pytest.MonkeyPatch, lm: FakeLM | str) -> None:
    """Point the remote language-model backend at ``lm`` (a FakeLM or a base URL)."""
    monkeypatch.setenv("DESKMATE_LM_BASE_URL", lm.url if isinstance(lm, FakeLM) else lm)
    monkeypatch.setenv("DESKMATE_LM_MODEL_NAME", "fake")
    monkeypatch.setenv("DESKMATE_LM_RETRIES", "0")


def faultbot_brain(*, actions: str, lm: bool = False, patient: bool = False) -> Brain:
    """The fault-test bot as ``deskmate run`` wires it (remote actions at ``actions``, the
    remote language model when ``lm``), reading intents by example matching, so no
    trained classifier is needed in process.

    The project gives the model 1 s per chunk, to test a slow one quickly; ``patient``
    restores the defaults (20 s, 10 s) for tests where a slow model is not the point and
    a busy machine must not make it one.

    ``actions`` is always a URL: the bot's own ``actions/`` package must not be imported
    into the test process, where the demo shop's package of the same name is loaded."""
    settings = Settings(project=FAULTBOT, action_endpoint=actions, lm_backend="remote" if lm else "none")
    project = load_project(FAULTBOT)
    writer, _model = open_writer(settings, project)  # the remote model holds no connections
    if writer is not None and patient:
        writer.settings = GenerationSettings(max_tokens=writer.settings.max_tokens)
    engine = build_engine(project, embed=None, actions_url=settings.action_endpoint, writer=writer)
    closers: list[Callable[[], Awaitable[None]]] = []
    if isinstance(engine.actions, RemoteActions):
        closers.append(engine.actions.close)
    return Brain(engine, None, closers)
