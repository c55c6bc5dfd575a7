"""Holding up under faults, each with real processes: a server killed with SIGKILL
mid-turn, Redis killed and restarted, a language model that is down or hangs, and an
action server that is down. The customer is a real websocket client throughout."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from aiohttp import web
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from bot.keys import Keys
from bot.store import TURN_MARK_CLEARED, LockLost, NewEvent, StaleTurn, StartedTurn, Store, TurnContext
from bot.turns import INTERRUPTED_TEXT
from dialogue.engine import ACTION_DOWN
from tests.conftest import Client, RedisProcess, Servers, delete_prefix
from tests.fakes import (
    FAULTBOT,
    ROOT,
    FakeLM,
    closed_url,
    faultbot_brain,
    free_port,
    lm_environment,
    serve_app,
)

NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))
LOCK_TTL = 2  # seconds: how long a killed server's turn lock outlives it
SHOP_TEXT = "We are a small online shop for shoes and clothes."  # the rule's answer: the LM's fallback


def get(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with NO_PROXY.open(url, timeout=10) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as err:
        return err.code, json.load(err)


async def wait_for(check: Any, timeout: float = 20.0, what: str = "condition") -> Any:
    """Poll ``check()`` (sync or async) until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        await asyncio.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


def events(sync_redis: redis.Redis, prefix: str, sid: str) -> list[dict[str, Any]]:
    return [{"event_id": i, "kind": e["kind"], **json.loads(e["data"])}
            for i, e in sync_redis.xrange(Keys(prefix).events(sid))]


def bot_frames_done(frame: dict[str, Any]) -> bool:
    return frame["type"] == "typing" and not frame["on"]


# -- kill -9 of a server mid-turn ------------------------------------------------------

@pytest.fixture(scope="session")
def trained_faultbot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    project = tmp_path_factory.mktemp("faultbot") / "bot"
    shutil.copytree(FAULTBOT, project, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "bot.cli", "train", "--project", str(project), "--quiet"],
                   cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"},
                   check=True, capture_output=True, timeout=600)
    return project


@dataclass
class Instance:
    """A ``deskmate run`` process."""

    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_healthy(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"{self.name} exited with {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                if get(self.http + "/healthz")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        pytest.fail(f"{self.name} not healthy after {timeout}s:\n{self.log.read_text()}")

    def kill(self) -> None:
        """SIGKILL: no shutdown, no lock release, no flushing; the process is just gone."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()


@dataclass
class Cluster:
    prefix: str
    lm: FakeLM
    instances: dict[str, Instance]


@pytest.fixture(scope="module")
def cluster(trained_faultbot: Path, redis_url: str,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Three ``deskmate run`` processes on one Redis: ``a1`` and ``a2`` to be killed,
    ``b`` to carry on. Turn locks live ``LOCK_TTL`` seconds; the language model is a
    FakeLM; ``action_cancel_order`` runs in process and takes 30 s."""
    prefix = f"dmtest:{uuid.uuid4().hex[:10]}:"
    logs = tmp_path_factory.mktemp("cluster")
    lm = FakeLM().start()
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env.update(PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", DESKMATE_REDIS_URL=redis_url,
               DESKMATE_KEY_PREFIX=prefix, DESKMATE_TURN_LOCK_TTL=str(LOCK_TTL),
               DESKMATE_SHUTDOWN_GRACE="1", DESKMATE_LM_BACKEND="remote", DESKMATE_LM_BASE_URL=lm.url,
               DESKMATE_LM_MODEL_NAME="fake", DESKMATE_LM_RETRIES="0",
               DESKMATE_ACTIONS_REDIS_URL=redis_url, DESKMATE_ACTIONS_PREFIX=prefix,
               FAULTBOT_ACTION_SECONDS="30")
    env.pop("DESKMATE_ACTION_ENDPOINT", None)
    instances: dict[str, Instance] = {}
    try:
        for name in ("a1", "a2", "b"):  # all start at once; then wait for each
            port, log = free_port(), logs / f"{name}.log"
            with log.open("wb") as out:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "bot.cli", "run", "--port", str(port),
                     "--project", str(trained_faultbot)],
                    cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
            instances[name] = Instance(name, port, proc, log)
        for instance in instances.values():
            instance.wait_healthy()
        yield Cluster(prefix, lm, instances)
    finally:
        for instance in instances.values():
            instance.stop()
        lm.stop()
        delete_prefix(redis_url, prefix)


@pytest.fixture
async def clients() -> AsyncIterator[Any]:
    """Opens customer sockets to any port; closes them all at the end."""
    sockets: list[Any] = []

    async def open_client(port: int) -> Client:
        ws = await connect(f"ws://127.0.0.1:{port}/ws/chat", max_size=None, max_queue=None)
        sockets.append(ws)
        return Client(ws)

    yield open_client
    for ws in sockets:
        await ws.close()


async def gone(client: Client) -> None:
    """The server behind ``client`` is dead: its socket closes without a close frame."""
    with pytest.raises(ConnectionClosed):
        while True:
            await client.recv(timeout=10)


def one_answer_each(stored: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Customer message id -> the bot or system messages stored in answer to it."""
    answers: dict[str, list[dict[str, Any]]] = {
        e["event_id"]: [] for e in stored if e["kind"] == "message" and e["role"] == "user"}
    for e in stored:
        if e["kind"] == "message" and e.get("reply_to") in answers:
            answers[e["reply_to"]].append(e)
    return answers


async def test_kill_during_an_action_tells_the_customer_and_never_reruns_it(
        cluster: Cluster, clients: Any, sync_redis: redis.Redis) -> None:
    a1, b = cluster.instances["a1"], cluster.instances["b"]
    customer = await clients(a1.port)
    await customer.start()
    sid = customer.session_id or ""
    await customer.send({"type": "message", "client_id": "k1", "text": "cancel my order"})
    ack = (await customer.until(lambda f: f["type"] == "ack"))[-1]
    calls = f"{cluster.prefix}calls:action_cancel_order:{sid}"
    await wait_for(lambda: sync_redis.get(calls) == "1", what="the action to start")

    a1.kill()  # mid-action: its order may be cancelled already, its reply never stored
    await gone(customer)

    # The customer comes back on another instance, from the last event it has.
    again = await clients(b.port)
    await again.start(sid, customer.token, after=ack["event_id"])
    frames = await again.until(lambda f: f["type"] == "message", timeout=LOCK_TTL + 15)
    notice = frames[-1]
    assert notice["role"] == "system" and notice["text"] == INTERRUPTED_TEXT
    # Sending the same message again (a client that never saw its ack) stores nothing new.
    await again.send({"type": "message", "client_id": "k1", "text": "cancel my order"})
    assert (await again.until(lambda f: f["type"] == "ack"))[-1] == ack

    # The conversation goes on.
    _, frames = await again.say("hello")
    assert frames[-1]["text"] == "Hello! How can I help you today?"
    stored = events(sync_redis, cluster.prefix, sid)
    answers = one_answer_each(stored)
    assert [len(a) for a in answers.values()] == [1, 1]
    assert answers[ack["event_id"]][0]["name"] == "interrupted"
    turns = [e for e in stored if e["kind"] == "turn" and e["reply_to"] == ack["event_id"]]
    assert [t["policy"] for t in turns] == ["interrupted"]
    assert sync_redis.get(calls) == "1"  # run once, by the killed instance only
    record = sync_redis.hgetall(Keys(cluster.prefix).session(sid))
    assert "turn_message" not in record and record["cursor"] == list(answers)[-1]


async def test_kill_mid_stream_tells_the_customer_and_never_reruns_it(
        cluster: Cluster, clients: Any, sync_redis: redis.Redis) -> None:
    a2, b = cluster.instances["a2"], cluster.instances["b"]
    cluster.lm.script("stream", ["Happy to help. "] * 60, delay=0.5)
    before = cluster.lm.requests
    customer = await clients(a2.port)
    await customer.start()
    sid = customer.session_id or ""
    await customer.send({"type": "message", "client_id": "s1", "text": "what do you sell"})
    frames = await customer.until(lambda f: f["type"] == "stream_delta")
    ack = next(f for f in frames if f["type"] == "ack")
    assert [f["type"] for f in frames][-2:] == ["stream_start", "stream_delta"]

    a2.kill()
    await gone(customer)

    again = await clients(b.port)
    await again.start(sid, customer.token, after=ack["event_id"])
    # The notice, then the typing indicator off (the turn that was cut short is over).
    frames = await again.until(lambda f: f["type"] == "typing" and not f["on"], timeout=LOCK_TTL + 15)
    frames = [f for f in frames if f["type"] != "typing"]
    assert frames[-1]["role"] == "system" and frames[-1]["text"] == INTERRUPTED_TEXT
    assert not [f for f in frames if f["type"].startswith("stream")]
    # A reload replays the conversation: the acked message and the notice, nothing half-said.
    reload = await clients(b.port)
    await reload.start(sid, customer.token)
    history = await reload.quiet(0.5)
    assert [(f["role"], f["text"]) for f in history] == [("user", "what do you sell"),
                                                         ("system", INTERRUPTED_TEXT)]
    assert history[0]["event_id"] == ack["event_id"]
    assert cluster.lm.requests == before + 1  # generated once; b never asked the model again

    cluster.lm.script("stream", ["Happy to help. "])
    _, frames = await again.say("tell me about your shop")
    assert frames[-1]["type"] == "stream_end" and frames[-1]["text"] == "Happy to help."
    answers = one_answer_each(events(sync_redis, cluster.prefix, sid))
    assert [len(a) for a in answers.values()] == [1, 1]


async def test_a_holder_that_lost_the_turn_cannot_store_its_result(redis_url: str,
                                                                    key_prefix: str) -> None:
    """The guard behind the above, without processes: a holder that stalls past its lock
    can neither start another turn nor store the one it was running."""
    store = Store.from_url(redis_url, prefix=key_prefix)
    try:
        sid, _ = await store.create_session()
        message = (await store.append(sid, [NewEvent("message", {"role": "user", "text": "cancel"})])
                   ).event_ids[0]
        stalled = await store.acquire_lock(sid, 0.2) or ""
        assert isinstance(await store.start_turn(sid, stalled, message, 10, None), TurnContext)
        await asyncio.sleep(0.3)  # its lock expires
        taker = await store.acquire_lock(sid, 10.0) or ""
        assert taker and taker != stalled
        with pytest.raises(LockLost):
            await store.start_turn(sid, stalled, message, 10, None)
        earlier = await store.start_turn(sid, taker, message, 10, None)
        assert isinstance(earlier, StartedTurn) and earlier.owner == stalled and earlier.started_at
        late = NewEvent("message", {"role": "bot", "text": "Your order is cancelled.", "reply_to": message})
        with pytest.raises(StaleTurn):
            await store.append(sid, [late], cursor=message, turn=(message, stalled))
        notice = NewEvent("message", {"role": "system", "text": INTERRUPTED_TEXT, "reply_to": message})
        await store.append(sid, [notice], cursor=message, fields=TURN_MARK_CLEARED,
                           turn=(message, taker))
        with pytest.raises(StaleTurn):  # a retry of a write that landed is refused too
            await store.append(sid, [notice], cursor=message, turn=(message, taker))
        stored = await store.events(sid)
        assert [e.data["text"] for e in stored] == ["cancel", INTERRUPTED_TEXT]
        assert (await store.session(sid) or {})["cursor"] == message
    finally:
        await store.close()


# -- Redis killed and restarted ------------------------------------------------------------

class SlowActions:
    """An action server (rasa-sdk's webhook protocol) whose answer waits for the test."""

    def __init__(self) -> None:
        self.called = asyncio.Event()
        self.release = asyncio.Event()
        self.calls = 0
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.calls += 1
        self.called.set()
        await self.release.wait()
        assert body["next_action"] == "action_cancel_order"
        return web.json_response({"events": [], "responses": [{"text": "Your order is cancelled."}]})


@pytest.fixture
async def slow_actions() -> AsyncIterator[SlowActions]:
    actions = SlowActions()
    app = web.Application()
    app.router.add_post("/webhook", actions.handle)
    runner, port = await serve_app(app)
    actions.url = f"http://127.0.0.1:{port}/webhook"
    yield actions
    actions.release.set()
    await runner.cleanup()


# own_redis comes first: it is torn down after the server that uses it.
async def test_redis_killed_and_restarted(own_redis: RedisProcess, servers: Servers,
                                          slow_actions: SlowActions) -> None:
    store = own_redis
    brain = faultbot_brain(actions=slow_actions.url)
    servers.stack.push_async_callback(brain.close)
    server = await servers.start(brain=brain, redis_url=store.url, project=FAULTBOT)
    customer = await server.client()
    await customer.start()
    ack1, _ = await customer.say("hello")
    # A turn in flight when Redis dies: its message is acked, its action is running.
    await customer.send({"type": "message", "client_id": "c2", "text": "cancel my order"})
    ack2 = (await customer.until(lambda f: f["type"] == "ack"))[-1]
    await asyncio.wait_for(slow_actions.called.wait(), 10)
    store.kill()

    status, body = await asyncio.to_thread(get, server.http + "/healthz")
    assert status == 503 and body["redis"] == "down"
    # While it is down, a message is refused with an error (not left hanging)...
    await customer.send({"type": "message", "client_id": "c3", "text": "bye"})
    error = (await customer.until(lambda f: f["type"] == "error", timeout=30))[-1]
    assert error["code"] == "unavailable" and error["client_id"] == "c3"
    # ...and so is a new customer, whose socket stays open.
    newcomer = await server.client()
    await newcomer.send({"type": "start", "session_id": None, "token": None, "after": None,
                         "customer": None})
    error = await newcomer.recv(timeout=30)
    assert error["type"] == "error" and error["code"] == "unavailable"
    slow_actions.release.set()  # the action answers; its reply cannot be stored yet
    await asyncio.sleep(0.5)

    store.start()  # same folder: the append-only file brings everything back
    await wait_for(lambda: asyncio.to_thread(lambda: get(server.http + "/healthz")[0] == 200),
                   what="/healthz to recover")
    # The turn that was in flight finishes by itself; the customer gets its reply.
    frames = await customer.until(lambda f: f.get("role") == "bot" and f["type"] == "message"
                                  or f["type"] == "stream_end", timeout=30)
    assert frames[-1]["text"] == "Your order is cancelled."
    # The refused message is sent again with the same client_id, and answered.
    await customer.send({"type": "message", "client_id": "c3", "text": "bye"})
    frames = await customer.until(lambda f: f["type"] == "stream_end")
    assert frames[-1]["text"] == "Goodbye, and thanks for visiting."
    await newcomer.start()

    reader = await server.client()
    await reader.start(customer.session_id, customer.token)
    history = await reader.quiet(0.7)
    assert [(f["role"], f["text"]) for f in history] == [
        ("user", "hello"), ("bot", "Hello! How can I help you today?"),
        ("user", "cancel my order"), ("bot", "Your order is cancelled."),
        ("user", "bye"), ("bot", "Goodbye, and thanks for visiting.")]
    assert [history[0]["event_id"], history[2]["event_id"]] == [ack1["event_id"], ack2["event_id"]]
    assert slow_actions.calls == 1


# -- the language model down or hanging ---------------------------------------------------------

@pytest.fixture
def fake_lm() -> Iterator[FakeLM]:
    lm = FakeLM().start()
    yield lm
    lm.stop()


@pytest.mark.parametrize("fault", ["refused", "silent", "stall"])
async def test_language_model_down_or_hanging(fault: str, fake_lm: FakeLM, servers: Servers,
                                              monkeypatch: pytest.MonkeyPatch, sync_redis: redis.Redis,
                                              key_prefix: str) -> None:
    if fault == "refused":
        lm_environment(monkeypatch, closed_url("/v1"))  # nothing listens there
    else:
        fake_lm.script(fault, ["Happy to help. ", "We have shoes. "])
        lm_environment(monkeypatch, fake_lm)
    brain = faultbot_brain(actions=closed_url(), lm=True)
    servers.stack.push_async_callback(brain.close)
    server = await servers.start(brain=brain, project=FAULTBOT)
    customer = await server.client()
    await customer.start()
    # first_token_timeout and chunk_timeout are 1 s in the project's config.yml.
    _, frames = await customer.say("what do you sell")
    end = frames[-1]
    assert end["type"] == "stream_end"
    # Down or silent: the rule's answer. Stalled after a sentence: that sentence.
    assert end["text"] == ("Happy to help." if fault == "stall" else SHOP_TEXT)
    turn = [e for e in events(sync_redis, key_prefix, customer.session_id or "") if e["kind"] == "turn"][-1]
    if fault == "refused":
        assert turn["policy"] == "generative+fallback" and "language model failed" in turn["reason"]
    else:
        assert "language model timed out" in turn["reason"]
        assert turn["policy"] == ("generative" if fault == "stall" else "generative+fallback")
    # The next turn is answered as usual.
    _, frames = await customer.say("hello")
    assert frames[-1]["text"] == "Hello! How can I help you today?"


# -- the action server down ------------------------------------------------------------------

async def test_action_server_down(servers: Servers, sync_redis: redis.Redis, key_prefix: str) -> None:
    endpoint = closed_url()  # DESKMATE_ACTION_ENDPOINT pointing where nothing listens
    brain = faultbot_brain(actions=endpoint)
    servers.stack.push_async_callback(brain.close)
    server = await servers.start(brain=brain, project=FAULTBOT, action_endpoint=endpoint)
    customer = await server.client()
    await customer.start()
    _, frames = await customer.say("cancel my order")
    assert frames[-1]["text"] == ACTION_DOWN
    turn = [e for e in events(sync_redis, key_prefix, customer.session_id or "") if e["kind"] == "turn"][-1]
    assert turn["intent"] == "cancel_order" and "action_cancel_order unavailable" in turn["reason"]
    _, frames = await customer.say("hello")
    assert frames[-1]["text"] == "Hello! How can I help you today?"
