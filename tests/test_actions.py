"""Custom actions against the real rasa-sdk: the demo shop's actions in this process
and on a real ``python -m rasa_sdk`` action server, with orders in the real Redis.

The only stand-in is a small aiohttp server playing a proxy that answers 503 or
garbage (tests of the retry policy), since no real proxy runs here.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from aiohttp import web

from bot.actions import InProcessActions, RemoteActions, open_action_runner
from dialogue.actions import ActionError, ActionResult
from tests.conftest import ROOT, TINYBOT, delete_prefix
from tests.fakes import serve_app

SHOP = ROOT / "examples" / "shop"
FIXTURES = ROOT / "tests" / "fixtures"
SHOP_ACTIONS = {"action_order_status", "action_cancel_order", "action_start_return"}
DOMAIN: dict[str, Any] = yaml.safe_load((SHOP / "domain.yml").read_text(encoding="utf-8"))


def tracker(sender_id: str | None = None, *, intent: str = "track_order", text: str = "",
            **slots: Any) -> dict[str, Any]:
    """A tracker dict as Rasa sends it to an action server."""
    return {
        "sender_id": sender_id or uuid.uuid4().hex,
        "slots": {"order_id": None, "return_reason": None, **slots},
        "latest_message": {"intent": {"name": intent, "confidence": 0.97}, "entities": [], "text": text},
        "events": [],
        "paused": False,
        "followup_action": None,
        "active_loop": {},
        "latest_action_name": "action_listen",
    }


def slot(name: str, value: Any) -> dict[str, Any]:
    """rasa-sdk's ``SlotSet`` event, as it comes over the wire."""
    return {"event": "slot", "timestamp": None, "name": name, "value": value}


def text_of(result: ActionResult) -> str:
    assert len(result.responses) == 1, result.responses
    return str(result.responses[0]["text"])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- fixtures -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def shop_actions() -> InProcessActions:
    """The shop's package as the server loads it: as ``actions``, or under a name of its
    own when another project's ``actions`` is already loaded (test_forms' formbot)."""
    runner = open_action_runner(SHOP, None)
    assert isinstance(runner, InProcessActions)
    return runner


@pytest.fixture(scope="module")
def misc_actions() -> InProcessActions:
    return InProcessActions("actions_pkg", search_path=FIXTURES)


@pytest.fixture
def shop_env(redis_url: str, key_prefix: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The actions' configuration for one test: its own key prefix (deleted afterwards)."""
    monkeypatch.setenv("DESKMATE_ACTIONS_REDIS_URL", redis_url)
    monkeypatch.setenv("DESKMATE_ACTIONS_PREFIX", key_prefix)
    monkeypatch.delenv("DESKMATE_ACTIONS_TODAY", raising=False)
    return key_prefix


@dataclass(frozen=True)
class ActionServers:
    shop: str  # webhook URL of the shop's actions
    misc: str  # webhook URL of tests/fixtures/actions_pkg
    prefix: str  # the servers' DESKMATE_ACTIONS_PREFIX


@pytest.fixture(scope="module")
def action_servers(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ActionServers]:
    """Two real rasa-sdk action servers, started the way one is run by hand: the shop's
    actions (cwd examples/shop) and tests/fixtures/actions_pkg, sharing one key prefix."""
    prefix = f"dmtest:{uuid.uuid4().hex[:10]}:"
    env = {**os.environ, "SANIC_HOST": "127.0.0.1", "DESKMATE_ACTIONS_REDIS_URL": redis_url,
           "DESKMATE_ACTIONS_PREFIX": prefix}
    env.pop("DESKMATE_ACTIONS_TODAY", None)
    logs = tmp_path_factory.mktemp("action-servers")
    procs: dict[str, tuple[subprocess.Popen[bytes], int, Path]] = {}
    try:
        for name, package, cwd in (("shop", "actions", SHOP), ("misc", "actions_pkg", FIXTURES)):
            port, log_path = free_port(), logs / f"{name}.log"
            with log_path.open("wb") as log_file:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "rasa_sdk", "--actions", package, "--port", str(port)],
                    cwd=cwd, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                    start_new_session=True)  # its own process group: Sanic runs a worker process
            procs[name] = (proc, port, log_path)
        for proc, port, log_path in procs.values():  # both start at once; wait for each
            wait_healthy(proc, port, log_path)
        url = {name: f"http://127.0.0.1:{port}/webhook" for name, (_, port, _) in procs.items()}
        yield ActionServers(url["shop"], url["misc"], prefix)
    finally:
        for proc, _, _ in procs.values():
            stop(proc)
        delete_prefix(redis_url, prefix)


NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via $http_proxy


def wait_healthy(proc: subprocess.Popen[bytes], port: int, log_path: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"action server exited with {proc.returncode}:\n{log_path.read_text()}")
        try:
            with NO_PROXY.open(f"http://127.0.0.1:{port}/health", timeout=1) as resp:
                if json.load(resp) == {"status": "ok"}:
                    return
        except OSError:
            time.sleep(0.1)
    pytest.fail(f"action server not healthy after {timeout}s:\n{log_path.read_text()}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


@pytest.fixture
async def remote(action_servers: ActionServers) -> AsyncIterator[dict[str, RemoteActions]]:
    runners = {"shop": RemoteActions(action_servers.shop), "misc": RemoteActions(action_servers.misc)}
    yield runners
    for runner in runners.values():
        await runner.close()


def count_calls(redis_url: str, prefix: str, action: str, sender_id: str) -> int:
    client = redis.Redis.from_url(redis_url)
    try:
        return int(client.get(f"{prefix}calls:{action}:{sender_id}") or 0)
    finally:
        client.close()


# --- in process: loading --------------------------------------------------------------------

def test_in_process_serves_only_its_package(shop_actions: InProcessActions,
                                            misc_actions: InProcessActions) -> None:
    assert shop_actions.names() == SHOP_ACTIONS  # action_recommend_products is the engine's
    assert misc_actions.names() == {"action_reject", "action_crash", "action_slow", "action_blocking"}


def test_open_action_runner_picks_by_configuration() -> None:
    assert isinstance(open_action_runner(SHOP, "http://127.0.0.1:5055/webhook"), RemoteActions)
    runner = open_action_runner(SHOP, None)
    assert isinstance(runner, InProcessActions) and runner.names() == SHOP_ACTIONS
    assert open_action_runner(TINYBOT, None) is None


# --- in process: the shop's flows -------------------------------------------------------------

@pytest.mark.parametrize("typed", ["NW-10234", "nw 10234", "NW10234", "10234"])
async def test_order_status(shop_actions: InProcessActions, shop_env: str, typed: str) -> None:
    result = await shop_actions.run("action_order_status", tracker(order_id=typed), DOMAIN)
    assert result.events == [slot("order_id", "NW-10234")]
    text = text_of(result)
    for fact in ("shipped on 17 February 2026", "DHL Express", "JD014600003828512345",
                 "Expected delivery: 18–19 February 2026", "1 × Hollow Chelsea Boot (size 39, black)",
                 "Total: €164.85"):
        assert fact in text, text


async def test_unknown_order(shop_actions: InProcessActions, shop_env: str) -> None:
    result = await shop_actions.run("action_order_status", tracker(order_id="NW-99999"), DOMAIN)
    assert result.events == [slot("order_id", None)]
    [message] = result.responses
    assert message["response"] == "utter_order_not_found" and message["order_id"] == "NW-99999"


async def test_no_order_number_asks_for_it(shop_actions: InProcessActions, shop_env: str) -> None:
    result = await shop_actions.run("action_cancel_order", tracker(), DOMAIN)
    assert result.events == [] and result.responses[0]["response"] == "utter_ask_order_id"


async def test_cancel_twice(shop_actions: InProcessActions, shop_env: str,
                            sync_redis: redis.Redis) -> None:
    first = await shop_actions.run("action_cancel_order", tracker(order_id="NW-10236"), DOMAIN)
    assert first.events == [slot("order_id", None)]
    assert text_of(first) == ("Done: order NW-10236 is cancelled, free of charge. The full amount, "
                              "€79.95, goes back to your original payment method (Klarna) within "
                              "5–7 business days.")
    stored = json.loads(sync_redis.get(f"{shop_env}order:NW-10236"))
    assert stored["status"] == "cancelled" and stored["refund"]["status"] == "pending"

    second = await shop_actions.run("action_cancel_order", tracker(order_id="nw10236"), DOMAIN)
    assert text_of(second).startswith("Order NW-10236 is already cancelled")
    assert second.events == [slot("order_id", None)]
    status = await shop_actions.run("action_order_status", tracker(order_id="NW-10236"), DOMAIN)
    assert "was cancelled on" in text_of(status)


async def test_cancel_shipped_order_uses_the_domain_response(shop_actions: InProcessActions,
                                                             shop_env: str) -> None:
    result = await shop_actions.run("action_cancel_order", tracker(order_id="NW-10234"), DOMAIN)
    [message] = result.responses
    assert message["response"] == "utter_cancel_not_possible" and message["order_id"] == "NW-10234"
    assert result.events == [slot("order_id", None)]


async def test_concurrent_cancels_succeed_once(shop_actions: InProcessActions, shop_env: str) -> None:
    results = await asyncio.gather(*(
        shop_actions.run("action_cancel_order", tracker(order_id="NW-10241"), DOMAIN) for _ in range(8)))
    done = [r for r in results if text_of(r).startswith("Done:")]
    assert len(done) == 1, [text_of(r) for r in results]


async def test_seeding_never_overwrites(shop_actions: InProcessActions, shop_env: str,
                                        sync_redis: redis.Redis) -> None:
    changed = {"id": "NW-10237", "status": "cancelled", "cancelled_at": "2026-02-18T16:00:00+01:00"}
    sync_redis.set(f"{shop_env}order:NW-10237", json.dumps(changed))
    result = await shop_actions.run("action_order_status", tracker(order_id="NW-10237"), DOMAIN)
    assert text_of(result) == "Order NW-10237 was cancelled on 18 February 2026."


async def test_return_flow(shop_actions: InProcessActions, shop_env: str, sync_redis: redis.Redis) -> None:
    started = await shop_actions.run(
        "action_start_return", tracker(order_id="NW-10238", return_reason="It's too small"), DOMAIN)
    assert started.events == [slot("order_id", None), slot("return_reason", None)]
    text = text_of(started)
    for fact in ("Your return for order NW-10238 is started",
                 "prepaid return label to e•••@example.com",
                 "we refund you within 5–7 business days to your original payment method (Visa)"):
        assert fact in text, text
    stored = json.loads(sync_redis.get(f"{shop_env}order:NW-10238"))
    assert stored["status"] == "return_started" and stored["return_reason"] == "It's too small"

    again = await shop_actions.run("action_start_return", tracker(order_id="NW-10238"), DOMAIN)
    assert text_of(again).startswith("A return for order NW-10238 was already started")


@pytest.mark.parametrize(("order_id", "says"), [
    ("NW-10231", "was delivered on 14 January 2026, more than 30 days ago"),
    ("NW-10234", "is on its way but hasn't been delivered yet"),
    ("NW-10236", "hasn't shipped yet, so there's nothing to return"),
    ("NW-10232", "has already been returned. €89.90 was refunded to your PayPal on 9 February 2026."),
    ("NW-10233", "was cancelled, so there's nothing to return"),
])
async def test_return_refused(shop_actions: InProcessActions, shop_env: str, order_id: str,
                              says: str) -> None:
    result = await shop_actions.run("action_start_return", tracker(order_id=order_id), DOMAIN)
    assert says in text_of(result)
    assert result.events == [slot("order_id", None), slot("return_reason", None)]


async def test_return_window_follows_the_clock(shop_actions: InProcessActions, shop_env: str,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    # NW-10240 was delivered on 11 February 2026: its 30 days end on 13 March.
    monkeypatch.setenv("DESKMATE_ACTIONS_TODAY", "2026-03-14")
    late = await shop_actions.run("action_start_return", tracker(order_id="NW-10240"), DOMAIN)
    assert "more than 30 days ago" in text_of(late)
    monkeypatch.setenv("DESKMATE_ACTIONS_TODAY", "2026-03-13")
    last_day = await shop_actions.run("action_start_return", tracker(order_id="NW-10240"), DOMAIN)
    assert "is started" in text_of(last_day)


# --- in process: errors -------------------------------------------------------------------------

async def test_in_process_errors(misc_actions: InProcessActions, shop_env: str,
                                 caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(ActionError) as rejected:
        await misc_actions.run("action_reject", tracker(), {})
    assert rejected.value.kind == "rejected" and rejected.value.message == "not in this state"
    with pytest.raises(ActionError) as unknown:
        await misc_actions.run("action_order_status", tracker(), {})  # the shop's, not this package's
    assert unknown.value.kind == "unknown"
    with caplog.at_level(logging.ERROR, logger="bot.actions"), pytest.raises(ActionError) as failed:
        await misc_actions.run("action_crash", tracker(), {})
    assert failed.value.kind == "failed" and "boom" in failed.value.message
    assert any(r.exc_info for r in caplog.records if r.name == "bot.actions")


async def test_sync_action_runs_off_the_event_loop(misc_actions: InProcessActions) -> None:
    result = await misc_actions.run("action_blocking", tracker(text="hello"), {})
    assert text_of(result) == "you said hello"
    [event] = result.events
    assert event["name"] == "thread" and event["value"] != "MainThread"


async def test_misconfigured_actions_fail(shop_actions: InProcessActions,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DESKMATE_ACTIONS_REDIS_URL", raising=False)
    monkeypatch.delenv("REDIS_URL", raising=False)
    with pytest.raises(ActionError) as failed:
        await shop_actions.run("action_order_status", tracker(order_id="NW-10234"), DOMAIN)
    assert failed.value.kind == "failed" and "DESKMATE_ACTIONS_REDIS_URL" in failed.value.message


async def test_an_in_process_action_past_its_timeout_is_unavailable(shop_env: str) -> None:
    """An in-process action that never finished held its turn, and the conversation, for
    good; an action server's answer is waited for 10 s, and so is an in-process one."""
    slow = InProcessActions("actions_pkg", search_path=FIXTURES, timeout=0.3)
    with pytest.raises(ActionError) as timed_out:
        await slow.run("action_slow", tracker(delay=30.0), {})
    assert timed_out.value.kind == "unavailable" and "0.3s" in timed_out.value.message


# --- remote: a real rasa-sdk action server ---------------------------------------------------------

async def test_remote_shop_flows(remote: dict[str, RemoteActions]) -> None:
    shop = remote["shop"]
    assert shop.names() is None
    status = await shop.run("action_order_status", tracker(order_id="nw 10239"), DOMAIN)
    assert status.events == [slot("order_id", "NW-10239")]
    assert "GLS, tracking number GLS7781234577" in text_of(status)

    missing = await shop.run("action_order_status", tracker(order_id="NW-10"), DOMAIN)
    assert missing.events == [slot("order_id", None)]
    assert missing.responses[0]["response"] == "utter_order_not_found"

    first = await shop.run("action_cancel_order", tracker(order_id="NW-10242"), DOMAIN)
    assert text_of(first) == "Done: order NW-10242 is cancelled, free of charge."
    second = await shop.run("action_cancel_order", tracker(order_id="NW-10242"), DOMAIN)
    assert text_of(second).startswith("Order NW-10242 is already cancelled")

    returned = await shop.run(
        "action_start_return", tracker(order_id="NW-10240", return_reason="Changed my mind"), DOMAIN)
    assert "prepaid return label to c•••@example.com" in text_of(returned)
    assert returned.events == [slot("order_id", None), slot("return_reason", None)]


async def test_remote_unknown_and_rejected(remote: dict[str, RemoteActions]) -> None:
    with pytest.raises(ActionError) as unknown:  # HTTP 404
        await remote["shop"].run("action_recommend_products", tracker(), DOMAIN)
    assert unknown.value.kind == "unknown" and "action_recommend_products" in unknown.value.message
    with pytest.raises(ActionError) as rejected:  # HTTP 400
        await remote["misc"].run("action_reject", tracker(), {})
    assert rejected.value.kind == "rejected" and rejected.value.message == "not in this state"


async def test_remote_crash_fails_without_retry(remote: dict[str, RemoteActions],
                                                action_servers: ActionServers, redis_url: str) -> None:
    sender = uuid.uuid4().hex
    with pytest.raises(ActionError) as failed:  # HTTP 500 from rasa-sdk's exception handler
        await remote["misc"].run("action_crash", tracker(sender), {})
    assert failed.value.kind == "failed" and "boom" in failed.value.message
    assert count_calls(redis_url, action_servers.prefix, "action_crash", sender) == 1


async def test_remote_timeout_is_unavailable_and_not_retried(action_servers: ActionServers,
                                                             redis_url: str) -> None:
    runner = RemoteActions(action_servers.misc, timeout=0.5, retries=2, backoff=0.01)
    sender = uuid.uuid4().hex
    try:
        with pytest.raises(ActionError) as timed_out:
            await runner.run("action_slow", tracker(sender, delay=1.0), {})
    finally:
        await runner.close()
    assert timed_out.value.kind == "unavailable" and "not retried" in timed_out.value.message
    assert count_calls(redis_url, action_servers.prefix, "action_slow", sender) == 1


async def test_server_down_is_unavailable_after_retries(caplog: pytest.LogCaptureFixture) -> None:
    runner = RemoteActions(f"http://127.0.0.1:{free_port()}/webhook", retries=2, backoff=0.01)
    try:
        with caplog.at_level(logging.WARNING, logger="bot.actions"), \
                pytest.raises(ActionError) as down:
            await runner.run("action_order_status", tracker(order_id="NW-10234"), DOMAIN)
    finally:
        await runner.close()
    assert down.value.kind == "unavailable" and "3 attempts" in down.value.message
    assert sum("cannot connect" in r.getMessage() for r in caplog.records) == 3


# --- remote: a stand-in proxy (no real proxy runs here) --------------------------------------------

class Proxy:
    """An HTTP server on port 0 that answers each POST with the next canned answer
    (text is sent as UTF-8, bytes as they are) under ``content_type``."""

    def __init__(self, answers: list[tuple[int, str | bytes]], content_type: str) -> None:
        self.answers = answers
        self.content_type = content_type
        self.bodies: list[dict[str, Any]] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.bodies.append(await request.json())
        status, body = self.answers[min(len(self.bodies), len(self.answers)) - 1]
        raw = body if isinstance(body, bytes) else body.encode()
        return web.Response(status=status, body=raw, headers={"Content-Type": self.content_type})


@pytest.fixture
async def proxy() -> AsyncIterator[Callable[..., Awaitable[Proxy]]]:
    runners: list[web.AppRunner] = []

    async def start(answers: list[tuple[int, str | bytes]],
                    content_type: str = "application/json") -> Proxy:
        fake = Proxy(answers, content_type)
        app = web.Application()
        app.router.add_post("/webhook", fake.handle)
        runner, port = await serve_app(app)
        runners.append(runner)
        fake.url = f"http://127.0.0.1:{port}/webhook"
        return fake

    yield start
    for runner in runners:
        await runner.cleanup()


OK = json.dumps({"events": [slot("order_id", None)], "responses": [{"text": "hi"}]})


async def test_503_is_retried_then_answered(proxy: Callable[..., Awaitable[Proxy]]) -> None:
    fake = await proxy([(503, "{}"), (502, ""), (200, OK)])
    runner = RemoteActions(fake.url, retries=2, backoff=0.01)
    try:
        result = await runner.run("action_order_status", tracker("s1", order_id="NW-10234"), DOMAIN)
    finally:
        await runner.close()
    assert result == ActionResult(events=[slot("order_id", None)], responses=[{"text": "hi"}])
    assert len(fake.bodies) == 3
    body = fake.bodies[0]  # what Rasa sends
    assert set(body) == {"next_action", "sender_id", "tracker", "domain", "version"}
    assert body["next_action"] == "action_order_status" and body["sender_id"] == "s1"
    assert body["tracker"]["slots"]["order_id"] == "NW-10234" and body["domain"] == DOMAIN


async def test_503_every_time_is_unavailable(proxy: Callable[..., Awaitable[Proxy]]) -> None:
    fake = await proxy([(503, "{}")])
    runner = RemoteActions(fake.url, retries=1, backoff=0.01)
    try:
        with pytest.raises(ActionError) as down:
            await runner.run("action_order_status", tracker(), DOMAIN)
    finally:
        await runner.close()
    assert down.value.kind == "unavailable" and len(fake.bodies) == 2


@pytest.mark.parametrize("answer", [
    "not json", "null", json.dumps({"events": "slot"}), json.dumps({"events": [], "responses": [1]})])
async def test_malformed_answer_fails(proxy: Callable[..., Awaitable[Proxy]], answer: str) -> None:
    fake = await proxy([(200, answer)])
    runner = RemoteActions(fake.url)
    try:
        with pytest.raises(ActionError) as failed:
            await runner.run("action_order_status", tracker(), DOMAIN)
    finally:
        await runner.close()
    assert failed.value.kind == "failed" and len(fake.bodies) == 1


@pytest.mark.parametrize("status", [200, 500])
async def test_an_answer_that_is_not_in_its_charset_fails(
        proxy: Callable[..., Awaitable[Proxy]], status: int) -> None:
    """A Latin-1 error page (a proxy's, say) read as the UTF-8 it does not declare otherwise:
    the action failed, like any other unreadable answer, and the error quotes what it can."""
    fake = await proxy([(status, b"\xff\xfe<html>Fehler \xe4</html>")], content_type="text/html")
    runner = RemoteActions(fake.url)
    try:
        with pytest.raises(ActionError) as failed:
            await runner.run("action_order_status", tracker(), DOMAIN)
    finally:
        await runner.close()
    assert failed.value.kind == "failed" and "Fehler" in failed.value.message
    assert len(fake.bodies) == 1


async def test_an_answer_in_its_declared_charset_is_read(proxy: Callable[..., Awaitable[Proxy]]) -> None:
    answer = json.dumps({"events": [], "responses": [{"text": "Grüße"}]}, ensure_ascii=False)
    fake = await proxy([(200, answer.encode("latin-1"))], content_type="application/json; charset=iso-8859-1")
    runner = RemoteActions(fake.url)
    try:
        result = await runner.run("action_order_status", tracker(), DOMAIN)
    finally:
        await runner.close()
    assert result.responses == [{"text": "Grüße"}]
