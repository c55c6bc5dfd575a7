"""Browser tests of the widget and the agent console: the real server in a subprocess (with
its embedded Redis under a temporary data dir), driven by Debian's chromium through
Playwright for Python. Support agents are real accounts (``deskmate agent add``) acting
through the real agent socket: in the console, or with :class:`AgentClient`.

Nothing is downloaded: Playwright launches ``/usr/bin/chromium`` (``apt-get install
chromium``; override with ``DESKMATE_CHROMIUM``). Without that binary every test here is
skipped with the reason; without the ``playwright`` package the run fails loudly, since it
is a declared dev dependency. Screenshots go to ``test-artifacts/``.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, Playwright, expect, sync_playwright
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as ws_connect

Frame = dict[str, Any]

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = Path(os.environ.get("DESKMATE_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
HERE = Path(__file__).resolve().parent
START_TIMEOUT = 90.0  # seconds for the server to answer /healthz (first start builds indexes)

expect.set_options(timeout=15_000)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if CHROMIUM.exists():
        return
    skip = pytest.mark.skip(reason=f"{CHROMIUM} not found: install Debian's chromium "
                                   "(apt-get install chromium) to run the browser tests")
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(skip)


# -- the server -------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class DeskmateServer:
    """``python -m bot.cli run`` as a child process on a fixed port and data dir, so a test
    can stop it and start it again where it was (same Redis data, same URL)."""

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = data_dir / "server.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = self.env()
        # The limits the tests (and the widget's defaults) count on, whatever the environment says.
        env.update(DESKMATE_MAX_TEXT_CHARS="2000", DESKMATE_RATE_MESSAGES="20",
                   DESKMATE_RATE_WINDOW="10", DESKMATE_LOG_LEVEL="INFO",
                   # Every customer here comes from 127.0.0.1: no per-address budget or cap.
                   DESKMATE_RATE_IP_MESSAGES="0", DESKMATE_MAX_CONNECTIONS_PER_IP="0",
                   # Replies from the shop's responses, knowledge and actions only: the same
                   # text every run, at once. The language model has its own tests (tests/lm).
                   DESKMATE_LM_BACKEND="none")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "bot.cli", "run", "--project", "examples/shop",
                 "--host", "127.0.0.1", "--port", str(self.port)],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"deskmate exited with {self.process.returncode}:\n{self.tail()}")
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=2) as r:
                    if r.status == 200 and json.load(r).get("status") == "ok":
                        return
            except (OSError, urllib.error.URLError, ValueError):
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"deskmate did not answer /healthz in {START_TIMEOUT:.0f}s:\n{self.tail()}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DESKMATE_REDIS_URL")}
        env["DESKMATE_DATA_DIR"] = str(self.data_dir)
        return env

    def add_agent(self, name: str, role: str = "agent") -> str:
        """``deskmate agent add NAME`` against this server's Redis; the password it prints."""
        done = subprocess.run([sys.executable, "-m", "bot.cli", "agent", "add", name, "--role", role],
                              cwd=ROOT, env=self.env(), capture_output=True, text=True, timeout=60)
        found = re.search(r"^password: (\S+)$", done.stdout, re.M)
        assert done.returncode == 0 and found, done.stdout + done.stderr
        return found.group(1)

    def agent(self, name: str, role: str = "agent") -> AgentClient:
        """A new agent account ``name``, signed in on the agent socket."""
        return AgentClient(self, name, self.add_agent(name, role))

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


class AgentClient:
    """A support agent on ``/ws/agent`` (websockets' sync client, so it runs beside
    Playwright's sync API): how a test acts as an agent without a console on screen."""

    def __init__(self, server: DeskmateServer, name: str, password: str) -> None:
        self.name = name
        self.ws: ClientConnection = ws_connect(server.url.replace("http", "ws", 1) + "/ws/agent",
                                               open_timeout=10, max_queue=None)
        self.send({"type": "login", "name": name, "password": password})
        signed_in = self.until(lambda f: f["type"] in ("auth_ok", "error"))[-1]
        assert signed_in["type"] == "auth_ok", signed_in

    def send(self, frame: Frame) -> None:
        self.ws.send(json.dumps(frame))

    def until(self, predicate: Callable[[Frame], bool], timeout: float = 15.0) -> list[Frame]:
        """Frames received up to and including the first that matches ``predicate``."""
        seen: list[Frame] = []
        deadline = time.monotonic() + timeout
        while not seen or not predicate(seen[-1]):
            seen.append(json.loads(self.ws.recv(timeout=max(0.01, deadline - time.monotonic()))))
        return seen

    def act(self, kind: str, session_id: str, **fields: Any) -> Frame:
        """Send an action on a conversation; its answer (``ok``, ``ack`` or ``error``)."""
        self.send({"type": kind, "session_id": session_id, **fields})
        return self.until(lambda f: f["type"] in ("ok", "ack", "error")
                          and f.get("session_id") == session_id)[-1]

    def do(self, kind: str, session_id: str, **fields: Any) -> Frame:
        """:meth:`act`, which must succeed."""
        answer = self.act(kind, session_id, **fields)
        assert answer["type"] in ("ok", "ack"), answer
        return answer

    def say(self, session_id: str, text: str) -> Frame:
        return self.do("send", session_id, client_id=uuid.uuid4().hex, text=text)

    def close(self) -> None:
        self.ws.close()


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DeskmateServer]:
    """One server for the whole run; each test gets its own browser context (a new customer).
    A test may stop and start it again (same port, same data dir)."""
    srv = DeskmateServer(tmp_path_factory.mktemp("deskmate"))
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


_names = itertools.count(1)


@pytest.fixture
def agent_name() -> Callable[[str], str]:
    """``name`` made unique on the shared server (accounts outlive a test): "anna-7"."""
    return lambda name: f"{name}-{next(_names)}"


@pytest.fixture
def new_agent(server: DeskmateServer, agent_name: Callable[[str], str],
              ) -> Iterator[Callable[..., AgentClient]]:
    """Factory: a new agent account signed in on the agent socket, closed after the test."""
    clients: list[AgentClient] = []

    def make(name: str = "agent", role: str = "agent") -> AgentClient:
        clients.append(server.agent(agent_name(name), role))
        return clients[-1]

    try:
        yield make
    finally:
        for client in clients:
            client.close()


# -- the browser ------------------------------------------------------------------------


# Module scope, not session: while the sync API is alive it keeps an asyncio loop marked as
# running in this thread, and the async tests elsewhere in the suite could not start theirs.
@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    b = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
    try:
        yield b
    finally:
        b.close()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


class Widget:
    """The customer's view: a page with the widget, and what it sent on the socket."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.sent: list[dict[str, Any]] = []  # JSON frames the widget sent
        self.received: list[dict[str, Any]] = []  # and the frames it got
        self.dialogs: list[str] = []
        self.errors: list[str] = []  # uncaught page errors and the widget's console.error
        page.on("websocket", self._watch_socket)
        page.on("dialog", self._on_dialog)
        page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))
        page.on("console", self._on_console)

    def script_chat(self, on_start: Callable[[Any, int], None]) -> tuple[list[float], list[dict[str, Any]]]:
        """Answer this page's chat sockets from a script (Playwright's websocket routing)
        instead of the server: ``on_start(ws, n)`` for each `start` frame (n: how many so far,
        this one included); every message is acked. The times the `start` frames came, and
        every frame the widget sent to the script."""
        starts: list[float] = []
        sent: list[dict[str, Any]] = []

        def socket(ws: Any) -> None:
            def on_message(raw: str | bytes) -> None:
                frame = json.loads(raw)
                sent.append(frame)
                if frame["type"] == "start":
                    starts.append(time.monotonic())
                    on_start(ws, len(starts))
                elif frame["type"] == "message":
                    ws.send(json.dumps({"type": "ack", "client_id": frame["client_id"],
                                        "event_id": f"1732890009999-{len(sent)}"}))
            ws.on_message(on_message)

        self.page.route_web_socket(re.compile(r".*/ws/chat$"), socket)
        return starts, sent

    def _watch_socket(self, ws: Any) -> None:
        def sent(payload: str | bytes) -> None:
            if isinstance(payload, str):
                self.sent.append(json.loads(payload))

        def received(payload: str | bytes) -> None:
            if isinstance(payload, str):
                self.received.append(json.loads(payload))
        ws.on("framesent", sent)
        ws.on("framereceived", received)

    def _on_dialog(self, dialog: Any) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def _on_console(self, msg: Any) -> None:
        if msg.type == "error" and "[deskmate]" in msg.text:
            self.errors.append(f"console: {msg.text}")

    # locators pierce the widget's open shadow root
    @property
    def launcher(self) -> Any:
        return self.page.locator("#deskmate-widget .launcher")

    @property
    def panel(self) -> Any:
        return self.page.locator("#deskmate-widget .panel")

    @property
    def input(self) -> Any:
        return self.page.locator("#deskmate-widget textarea")

    def rows(self, selector: str = "") -> Any:
        return self.page.locator(f"#deskmate-widget .msgs .row{selector}")

    def goto(self, base: str, path: str = "/demo") -> None:
        self.page.goto(base + path)
        self.page.wait_for_function("() => window.deskmate && window.deskmate.version")

    def open(self) -> None:
        if self.is_open():  # restored open after a reload
            self.page.evaluate("window.deskmate.open()")
        else:
            self.launcher.click()
        expect(self.input).to_be_focused()

    def shell_class(self) -> str:
        return str(self.page.locator("#deskmate-widget .dm").get_attribute("class"))

    def is_open(self) -> bool:
        return "open" in self.shell_class().split()

    def send(self, text: str) -> None:
        self.input.fill(text)
        self.input.press("Enter")

    def wait_sent(self) -> None:
        """Every message of ours acked (no pending bubbles)."""
        expect(self.rows(".pending")).to_have_count(0)
        expect(self.rows(".failed")).to_have_count(0)

    def wait_bot_replies(self, count: int) -> None:
        """At least ``count`` finished bot replies on screen, no stream still open."""
        expect(self.rows(".bot:not(.streaming)").nth(count - 1)).to_be_visible()
        expect(self.rows(".streaming")).to_have_count(0)

    def transcript(self) -> list[tuple[str, str]]:
        """(role, text) for every row, in order."""
        rows = self.page.evaluate(
            """() => Array.from(document.querySelector('#deskmate-widget').shadowRoot
                   .querySelectorAll('.msgs .row')).map(r => [
                     ['user', 'bot', 'agent', 'system'].find(c => r.classList.contains(c)) || '?',
                     (r.querySelector('.bubble, .sys') || r).textContent])"""
        )
        return [(role, text) for role, text in rows]

    def session_id(self) -> str:
        stored = self.page.evaluate(
            "() => Object.keys(localStorage).filter(k => k.startsWith('deskmate:'))"
            ".map(k => JSON.parse(localStorage.getItem(k)).session_id)")
        assert len(stored) == 1 and stored[0], stored
        return str(stored[0])

    def frames(self, kind: str) -> list[dict[str, Any]]:
        """The frames of type ``kind`` the widget sent."""
        return [f for f in self.sent if f.get("type") == kind]

    @property
    def typing(self) -> Any:
        return self.page.locator("#deskmate-widget .typing")

    @property
    def status(self) -> Any:
        return self.page.locator("#deskmate-widget .status")


@pytest.fixture
def new_widget(browser: Browser) -> Iterator[Callable[..., Widget]]:
    """Factory: a fresh browser context (its own localStorage: a new customer) per call."""
    contexts = []
    widgets: list[Widget] = []

    def make(**context_options: Any) -> Widget:
        options = {"viewport": {"width": 1280, "height": 860}, **context_options}
        context = browser.new_context(**options)
        contexts.append(context)
        w = Widget(context.new_page())
        widgets.append(w)
        return w

    try:
        yield make
    finally:
        for context in contexts:
            context.close()
    errors = [e for w in widgets for e in w.errors]
    assert not errors, errors


@pytest.fixture
def widget(new_widget: Callable[..., Widget]) -> Widget:
    return new_widget()


class Console:
    """A support agent's view: the console at /agent, and what its socket received."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.received: list[Frame] = []  # JSON frames from the agent socket
        self.dialogs: list[str] = []
        self.errors: list[str] = []
        page.on("websocket", self._watch_socket)
        page.on("dialog", self._on_dialog)
        page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))
        page.on("console", lambda msg: self.errors.append(f"console: {msg.text}")
                if msg.type == "error" and "[deskmate]" in msg.text else None)

    def _watch_socket(self, ws: Any) -> None:
        def received(payload: str | bytes) -> None:
            if isinstance(payload, str):
                self.received.append(json.loads(payload))
        ws.on("framereceived", received)

    def _on_dialog(self, dialog: Any) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def goto(self, base: str) -> None:
        self.page.goto(base + "/agent")

    def sign_in(self, name: str, password: str) -> None:
        self.page.fill("#login-name", name)
        self.page.fill("#login-password", password)
        self.page.click("#login-submit")
        expect(self.page.locator("#me")).to_have_text(name)
        expect(self.page.locator("#conn")).to_have_attribute("data-state", "online")

    def item(self, session_id: str) -> Any:
        """The conversation's entry in the list."""
        return self.page.locator(f'#session-list li.session[data-sid="{session_id}"]')

    @property
    def items(self) -> Any:
        return self.page.locator("#session-list li.session")

    def open(self, session_id: str) -> None:
        self.item(session_id).click()
        expect(self.item(session_id)).to_have_class(re.compile(r"\bactive\b"))
        expect(self.page.locator("#conversation")).to_be_visible()

    def rows(self, selector: str = "") -> Any:
        return self.page.locator(f"#transcript .msg{selector}")

    def button(self, name: str) -> Any:
        return self.page.locator(f"#btn-{name}")

    @property
    def error(self) -> Any:
        return self.page.locator("#conv-error")

    def reply(self, text: str) -> None:
        box = self.page.locator("#reply-text")
        box.fill(text)
        box.press("Enter")

    def transcript(self) -> list[tuple[str, str]]:
        """(kind, text) for every message row, in order (kind: user, bot, agent, system, note)."""
        rows = self.page.evaluate(
            """() => Array.from(document.querySelectorAll('#transcript .msg')).map(r => [
                 ['user', 'bot', 'agent', 'system', 'note'].find(c => r.classList.contains(c)) || '?',
                 (r.querySelector('.bubble, .sys') || r).textContent])""")
        return [(kind, text) for kind, text in rows]


@pytest.fixture
def new_console(browser: Browser) -> Iterator[Callable[..., Console]]:
    """Factory: the agent console in a browser context of its own (its own sessionStorage)."""
    contexts = []
    consoles: list[Console] = []

    def make(**context_options: Any) -> Console:
        options = {"viewport": {"width": 1280, "height": 800}, **context_options}
        context = browser.new_context(**options)
        contexts.append(context)
        consoles.append(Console(context.new_page()))
        return consoles[-1]

    try:
        yield make
    finally:
        for context in contexts:
            context.close()
    errors = [e for c in consoles for e in c.errors]
    assert not errors, errors
