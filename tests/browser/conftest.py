"""Browser tests of the widget: the real server in a subprocess (with its embedded Redis
under a temporary data dir), driven by Debian's chromium through Playwright for Python.

Nothing is downloaded: Playwright launches ``/usr/bin/chromium`` (``apt-get install
chromium``; override with ``DESKMATE_CHROMIUM``). Without that binary every test here is
skipped with the reason; without the ``playwright`` package the run fails loudly, since it
is a declared dev dependency. Screenshots go to ``test-artifacts/``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, Playwright, expect, sync_playwright

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
        env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DESKMATE_REDIS_URL")}
        env["DESKMATE_DATA_DIR"] = str(self.data_dir)
        # The limits the tests (and the widget's defaults) count on, whatever the environment says.
        env.update(DESKMATE_MAX_TEXT_CHARS="2000", DESKMATE_RATE_MESSAGES="20",
                   DESKMATE_RATE_WINDOW="10", DESKMATE_LOG_LEVEL="INFO")
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

    def inject(self, session_id: str, events: Sequence[tuple[str, dict[str, Any]]] = (),
               frames: Sequence[dict[str, Any]] = ()) -> None:
        """Store ``events`` and publish ephemeral ``frames`` in a conversation, through the
        server's own ``bot.store.Store`` on its Redis, the way a support agent's actions
        reach the customer. A stand-in for the agent socket until the console lands."""
        job = json.dumps({"url": f"unix://{self.data_dir / 'redis' / 'redis.sock'}",
                          "sid": session_id, "events": list(events), "frames": list(frames)})
        subprocess.run([sys.executable, "-c", INJECT], input=job.encode(), cwd=ROOT, check=True,
                       timeout=30)

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


INJECT = """
import asyncio, json, sys
from bot.store import NewEvent, Store

async def main(job):
    store = Store.from_url(job["url"])
    try:
        for kind, data in job["events"]:
            await store.append(job["sid"], [NewEvent(kind, data)])
        for frame in job["frames"]:
            await store.publish(job["sid"], frame)
    finally:
        await store.close()

asyncio.run(main(json.load(sys.stdin)))
"""


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DeskmateServer]:
    """One server for the whole run; each test gets its own browser context (a new customer)."""
    srv = DeskmateServer(tmp_path_factory.mktemp("deskmate"))
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[DeskmateServer]:
    """A server this test may stop and restart (not started yet)."""
    srv = DeskmateServer(tmp_path / "deskmate")
    try:
        yield srv
    finally:
        srv.stop()


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
        self.dialogs: list[str] = []
        self.errors: list[str] = []  # uncaught page errors and the widget's console.error
        page.on("websocket", self._watch_socket)
        page.on("dialog", self._on_dialog)
        page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))
        page.on("console", self._on_console)

    def _watch_socket(self, ws: Any) -> None:
        def sent(payload: str | bytes) -> None:
            if isinstance(payload, str):
                self.sent.append(json.loads(payload))
        ws.on("framesent", sent)

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
        return [f for f in self.sent if f.get("type") == kind]


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
