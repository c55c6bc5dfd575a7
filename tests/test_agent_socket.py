"""The agent socket end to end: real servers, real Redis, real customer and console sockets."""

from __future__ import annotations

import asyncio
import json
import re
import typing
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from bot.agents import Agents
from bot.embedded_redis import EmbeddedRedis
from bot.errors import StoreError
from bot.keys import Keys
from bot.server import Brain
from bot.store import NewEvent, Store
from tests.conftest import TINYBOT, Client, Running, Servers, tiny_engine
from tests.fakes import free_port

Frame = dict[str, Any]


class Console:
    """An agent console on /ws/agent."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.name = ""
        self.token = ""

    async def send(self, frame: Frame | str) -> None:
        await self.ws.send(frame if isinstance(frame, str) else json.dumps(frame))

    async def recv(self, timeout: float = 10.0) -> Frame:
        return json.loads(await asyncio.wait_for(self.ws.recv(), timeout))

    async def until(self, predicate: Callable[[Frame], bool], timeout: float = 10.0) -> list[Frame]:
        seen = []
        while True:
            seen.append(await self.recv(timeout))
            if predicate(seen[-1]):
                return seen

    async def quiet(self, seconds: float = 0.5) -> list[Frame]:
        seen = []
        try:
            while True:
                seen.append(await self.recv(seconds))
        except TimeoutError:
            return seen

    async def act(self, frame: Frame) -> Frame:
        """Send an action; return its `ok`, `ack` or `error` (skipping other frames)."""
        await self.send(frame)
        frames = await self.until(lambda f: f["type"] in ("ok", "ack", "error")
                                  and f.get("session_id") == frame.get("session_id"))
        return frames[-1]

    async def watch(self, sid: str) -> list[Frame]:
        """Watch ``sid``; the replayed events (everything up to a short silence)."""
        await self.send({"type": "watch", "session_id": sid})
        await self.until(lambda f: f["type"] == "watching" and f["session_id"] == sid)
        return [f for f in await self.quiet(0.5) if f.get("session_id") == sid]


async def console(server: Running) -> Console:
    ws = await server.stack.enter_async_context(
        connect(f"ws://127.0.0.1:{server.port}/ws/agent", max_size=None, max_queue=None))
    return Console(ws)


async def add_agent(server: Running, name: str, role: str = "agent") -> str:
    return await Agents(server.app.store.redis, server.app.store.keys).add(name, role)


async def signed_in(server: Running, name: str, role: str = "agent") -> Console:
    """A console signed in as a new agent ``name``, past its `sessions` snapshot."""
    password = await add_agent(server, name, role)
    agent = await console(server)
    await agent.send({"type": "login", "name": name, "password": password})
    ok = await agent.recv()
    assert ok["type"] == "auth_ok" and ok["agent"] == name and ok["role"] == role, ok
    agent.name, agent.token = name, ok["token"]
    assert (await agent.recv())["type"] == "sessions"
    return agent


async def customer(server: Running, text: str | None = "hello") -> Client:
    client = await server.client()
    await client.start()
    if text:
        await client.say(text)
    return client


async def refused(agent: Console, code: str = "unauthorized", close_code: int = 4401,
                  timeout: float = 10.0) -> None:
    frame = await agent.recv(timeout)
    assert frame["type"] == "error" and frame["code"] == code, frame
    with pytest.raises(ConnectionClosed):
        await agent.recv()
    assert agent.ws.close_code == close_code


# -- the console's files ------------------------------------------------------

async def test_console_is_served_without_external_assets(server: Running) -> None:
    def get(path: str) -> tuple[str, str]:
        with urllib.request.urlopen(server.http + path, timeout=5) as resp:
            return resp.headers["Content-Type"], resp.read().decode()

    for path, kind in (("/agent", "text/html"), ("/agent.js", "application/javascript"),
                       ("/agent.css", "text/css")):
        content_type, body = await asyncio.to_thread(get, path)
        assert content_type.startswith(kind) and body
        assert not re.search(r"(?:src|href)=[\"']?(?:https?:)?//", body), path
        # Text from customers and agents goes in through textContent only.
        assert not re.search(r"\.(?:inner|outer)HTML\s*=|insertAdjacentHTML|document\.write", body)


# -- signing in ---------------------------------------------------------------

@pytest.mark.parametrize("first", [
    {"type": "watch", "session_id": "x"},
    {"type": "auth", "token": "not-a-token"},
    {"type": "auth"},
    {"type": "login", "name": "nobody", "password": "secret"},
    "not json",
])
async def test_anything_but_a_good_sign_in_closes_4401(server: Running, first: Frame | str) -> None:
    agent = await console(server)
    await agent.send(first)
    await refused(agent)


async def test_wrong_password_then_rate_limit(server: Running) -> None:
    await add_agent(server, "anna")
    for attempt in range(6):
        agent = await console(server)
        await agent.send({"type": "login", "name": "anna", "password": "guess"})
        await refused(agent, "unauthorized" if attempt < 5 else "rate_limited")


async def test_login_token_signs_in_again_until_revoked(server: Running) -> None:
    first = await signed_in(server, "anna")
    again = await console(server)
    await again.send({"type": "auth", "token": first.token})
    ok = await again.recv()
    assert ok["type"] == "auth_ok" and ok["agent"] == "anna" and ok["token"] == first.token
    assert ok["expires_at"] > 0
    assert (await again.recv())["type"] == "sessions"
    # Removing the agent revokes its tokens: the next action closes the console.
    await Agents(server.app.store.redis, server.app.store.keys).remove("anna")
    await again.send({"type": "sessions"})
    await refused(again)
    late = await console(server)
    await late.send({"type": "auth", "token": first.token})
    await refused(late)


async def test_logout_revokes_the_token(server: Running) -> None:
    agent = await signed_in(server, "anna")
    await agent.send({"type": "logout"})
    with pytest.raises(ConnectionClosed):
        await agent.recv()
    again = await console(server)
    await again.send({"type": "auth", "token": agent.token})
    await refused(again)


async def test_sign_in_without_redis_is_unavailable_1013(servers: Servers, tmp_path: Path) -> None:
    embedded = EmbeddedRedis(tmp_path).start()
    try:
        server = await servers.start(redis_url=embedded.url)
        password = await add_agent(server, "anna")
        token = (await signed_in(server, "bert")).token
        embedded.stop()
        # Refused as retryable (1013), not crashed (1011), whichever way the console signs in.
        agent = await console(server)
        await agent.send({"type": "login", "name": "anna", "password": password})
        await refused(agent, "unavailable", 1013, timeout=30)
        again = await console(server)
        await again.send({"type": "auth", "token": token})
        await refused(again, "unavailable", 1013, timeout=30)
    finally:
        embedded.stop()


async def test_snapshot_reads_without_redis_are_store_errors(key_prefix: str) -> None:
    """What a console's `sessions` snapshot reads fails as StoreError (answered
    `unavailable`), like every other Store read, never as redis-py's own exceptions."""
    # Nothing listens on the port; no retries, so each call fails at once.
    client = aioredis.Redis(port=free_port(), decode_responses=True, retry=Retry(NoBackoff(), 0))
    store = Store(client, prefix=key_prefix)
    try:
        with pytest.raises(StoreError):
            await store.live_sessions()
        with pytest.raises(StoreError):
            await store.records(["a-session"])
    finally:
        await store.close()


def subscribe_fails(server: Running, monkeypatch: pytest.MonkeyPatch, channel: str) -> None:
    """Make the hub's subscriptions to ``channel`` fail as when its pub/sub connection
    cannot reach Redis. Injected: a real outage takes the data connection down too, and
    the token check before every action would fail first."""
    subscribe = server.app.hub.subscribe

    async def failing(name: str, *args: Any, **kwargs: Any) -> None:
        if name == channel:
            raise redis.ConnectionError("Error 111 connecting to redis")
        await subscribe(name, *args, **kwargs)

    monkeypatch.setattr(server.app.hub, "subscribe", failing)


async def test_no_session_updates_refuses_the_sign_in_1013(server: Running,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    password = await add_agent(server, "anna")
    subscribe_fails(server, monkeypatch, server.app.store.keys.updates_channel())
    agent = await console(server)
    await agent.send({"type": "login", "name": "anna", "password": password})
    assert (await agent.recv())["type"] == "auth_ok"
    await refused(agent, "unavailable", 1013)


async def test_watch_that_cannot_subscribe_is_unavailable(server: Running,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    client = await customer(server)
    sid = client.session_id or ""
    agent = await signed_in(server, "anna")
    subscribe_fails(server, monkeypatch, server.app.store.keys.channel(sid))
    error = await agent.act({"type": "watch", "session_id": sid})
    assert (error["type"], error["code"], error["action"]) == ("error", "unavailable", "watch")
    # The console stays open, and the watch works once Redis answers again.
    monkeypatch.undo()
    assert [f for f in await agent.watch(sid) if f["type"] == "message"]


async def test_watch_whose_history_cannot_be_read_is_dropped(server: Running,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A watch whose replay failed used to answer `watching`, then `unavailable`, and stay
    subscribed: live frames past the unread history moved the console beyond it."""
    client = await customer(server)
    sid = client.session_id or ""
    agent = await signed_in(server, "anna")
    events = server.app.store.events

    async def failing(session: str, *args: Any, **kwargs: Any) -> Any:
        if session == sid:
            raise StoreError("could not read events: Error 111 connecting to redis")
        return await events(session, *args, **kwargs)

    monkeypatch.setattr(server.app.store, "events", failing)
    await agent.send({"type": "watch", "session_id": sid})
    got = await agent.until(lambda f: f["type"] == "error")
    assert (got[-1]["code"], got[-1]["action"]) == ("unavailable", "watch")
    assert "watching" not in [f["type"] for f in got]
    # Not watching: the customer's next words do not reach this console.
    await client.send({"type": "message", "client_id": "c-after", "text": "anyone there?"})
    await client.until(lambda f: f["type"] == "ack")
    later = await agent.quiet(1.0)
    assert not [f for f in later if f.get("session_id") == sid and f["type"] != "session_update"]
    monkeypatch.undo()
    assert [f for f in await agent.watch(sid) if f["type"] == "message"]


async def test_bad_frames_count_against_the_console_budget(server: Running) -> None:
    """The budget was spent only by frames that parsed: a console could send garbage
    without limit, each answered `bad_json`."""
    from bot.agent_socket import RATE_FRAMES

    agent = await signed_in(server, "anna")
    for _ in range(RATE_FRAMES + 20):
        await agent.send("not json")
    codes = [f.get("code") for f in await agent.quiet(1.0) if f["type"] == "error"]
    assert codes.count("bad_json") <= RATE_FRAMES and "rate_limited" in codes
    assert agent.ws.close_code is None


async def test_a_console_flooding_without_reading_is_dropped(
        server: Running, caplog: pytest.LogCaptureFixture) -> None:
    """Error answers to a console that sends and never reads used to pile up in the
    server without bound; past MAX_QUEUED it is dropped, like a slow customer."""
    password = await add_agent(server, "anna")
    await server.flood_without_reading(
        "agent", json.dumps({"type": "login", "name": "anna", "password": password}), "not json")
    # Dropped for its queue, not by the keepalive timeout much later.
    assert "console too slow, dropping it" in caplog.text


# -- the session list ---------------------------------------------------------

async def test_snapshot_and_live_session_updates(server: Running) -> None:
    early = await customer(server)
    agent = await signed_in(server, "anna")
    await agent.send({"type": "sessions"})
    snapshot = (await agent.until(lambda f: f["type"] == "sessions"))[-1]["sessions"]
    mine = next(s for s in snapshot if s["session_id"] == early.session_id)
    assert mine["status"] == "bot" and mine["last_role"] == "bot"
    assert mine["last_message"] == "Hello! How can I help you today?"
    assert mine["last_intent"] == "greet" and mine["customer"] == {}
    assert isinstance(mine["updated_at"], float) and mine["agent"] is None

    late = await customer(server, None)
    await late.send({"type": "message", "client_id": "m1", "text": "where is my order"})
    updates = await agent.until(lambda f: f["type"] == "session_update"
                                and f["session"]["session_id"] == late.session_id
                                and f["session"]["last_role"] == "bot")
    first = next(u for u in updates if u["type"] == "session_update")["session"]
    assert (first["last_role"], first["last_message"]) == ("user", "where is my order")
    assert updates[-1]["session"]["last_intent"] == "track_order"


async def test_sentiment_trend_and_waiting_since(servers: Servers, sync_redis: redis.Redis,
                                                 key_prefix: str) -> None:
    # A stand-in for the trained classifier: only the sentiment matters here (the intent
    # still comes from the tiny bot's examples).
    def understand(texts: list[str]) -> list[dict[str, Any]]:
        return [{"sentiment": "negative" if "awful" in t else "positive" if "!" in t
                 else "neutral", "sentiment_score": 0.0} for t in texts]

    brain = Brain(tiny_engine(TINYBOT), understand=understand)
    server = await servers.start(brain=brain)
    agent = await signed_in(server, "anna")
    client = await customer(server, "hello")
    await client.say("hello!")
    update = (await agent.until(lambda f: f["type"] == "session_update"
                                and f["session"]["sentiment_trend"] == [0, 1]))[-1]["session"]
    assert update["sentiment"] == "positive" and update["waiting_since"] is None
    for _ in range(10):
        await client.say("hi there!")
    await agent.until(lambda f: f["type"] == "session_update"
                      and f["session"]["sentiment_trend"] == [1] * 10)
    await client.say("bye, this is awful")
    negative = (await agent.until(lambda f: f["type"] == "session_update"
                                  and f["session"]["sentiment_trend"] == [1] * 9 + [-1]))[-1]
    assert negative["session"]["sentiment"] == "negative"

    # The dialogue may ask for a human on its own; if not, write what the turn runner
    # writes when it does.
    sid = client.session_id or ""
    if sync_redis.hget(Keys(key_prefix).session(sid), "status") != "waiting":
        await server.app.store.append(sid, [NewEvent("handoff", {
            "state": "requested", "agent": None})], fields={"status": "waiting"})
    await agent.send({"type": "sessions"})
    snapshot = (await agent.until(lambda f: f["type"] == "sessions"))[-1]["sessions"]
    waiting = next(s for s in snapshot if s["session_id"] == sid)
    assert waiting["status"] == "waiting"
    assert waiting["updated_at"] - 10 < waiting["waiting_since"] <= waiting["updated_at"]
    assert (await agent.act({"type": "takeover", "session_id": sid}))["type"] == "ok"
    assert not sync_redis.hexists(Keys(key_prefix).session(sid), "waiting_since")


# -- watching -----------------------------------------------------------------

async def test_watch_replays_everything_then_streams_live(server: Running) -> None:
    client = await customer(server, "hello")
    await client.send({"type": "track", "name": "view_product", "data": {"id": "P1001"}})
    await asyncio.sleep(0.2)
    agent = await signed_in(server, "anna")
    history = await agent.watch(client.session_id or "")
    kinds = [(f["type"], f.get("role")) for f in history]
    # The turn's events (its analysis, the reply, slots...) in whatever order the dialogue
    # wrote them, between the customer's message and the later track event.
    assert kinds[0] == ("message", "user") and kinds[-1] == ("track", None)
    assert {("turn", None), ("message", "bot")} <= set(kinds)
    ids = [f["event_id"] for f in history]
    assert ids == sorted(ids, key=lambda x: tuple(map(int, x.split("-"))))
    turn = next(f for f in history if f["type"] == "turn")
    assert turn["intent"] == "greet" and turn["policy"] and "confidence" in turn
    assert turn["reply_to"] == history[0]["event_id"]
    assert history[-1]["name"] == "view_product" and history[-1]["data"] == {"id": "P1001"}

    await client.say("bye")
    live = await agent.until(lambda f: f["type"] == "typing" and not f["on"])
    kinds = [f["type"] for f in live]
    assert kinds[0] == "message" and live[0]["role"] == "user" and live[0]["text"] == "bye"
    assert kinds.index("stream_start") < kinds.index("stream_delta") < kinds.index("stream_end")
    assert "turn" in kinds
    end = live[kinds.index("stream_end")]
    deltas = "".join(f["text"] for f in live if f["type"] == "stream_delta")
    assert deltas.strip() == end["text"] == "Goodbye, and thanks for visiting."
    assert end["role"] == "bot" and end["event_id"]
    assert all(f["session_id"] == client.session_id for f in live)

    # After unwatch, nothing more about this conversation but its session_update.
    await agent.send({"type": "unwatch", "session_id": client.session_id})
    await asyncio.sleep(0.2)
    await client.say("hello")
    assert {f["type"] for f in await agent.quiet(0.5)} <= {"session_update"}


async def test_watch_unknown_session_and_bad_frames(server: Running) -> None:
    agent = await signed_in(server, "anna")
    frame = await agent.act({"type": "watch", "session_id": "nope"})
    assert frame["code"] == "unknown_session"
    await agent.send({"type": "send", "session_id": "x", "client_id": "c", "text": ""})
    assert (await agent.recv())["code"] == "bad_field"
    await agent.send({"type": "teleport"})
    assert (await agent.recv())["code"] == "unknown_type"
    await agent.send({"type": "typing", "session_id": "x", "on": "yes"})
    assert (await agent.recv())["code"] == "bad_field"
    # A bad frame does not close the console.
    await agent.send({"type": "sessions"})
    assert (await agent.recv())["type"] == "sessions"


# -- takeover, send, notes, handback, close -----------------------------------

async def test_takeover_announces_the_agent_and_silences_the_bot(server: Running) -> None:
    client = await customer(server)
    agent = await signed_in(server, "anna")
    sid = client.session_id or ""
    done = await agent.act({"type": "takeover", "session_id": sid})
    assert done["type"] == "ok" and done["action"] == "takeover"
    seen = await client.until(lambda f: f["type"] == "message" and f["role"] == "system")
    handoff = next(f for f in seen if f["type"] == "handoff")
    assert handoff["state"] == "agent_joined" and handoff["agent"] == "anna"
    assert seen[-1]["text"] == "anna joined the chat."
    update = (await agent.until(lambda f: f["type"] == "session_update"
                                and f["session"]["status"] == "agent"))[-1]
    assert update["session"]["agent"] == "anna"
    # The bot stays quiet while the agent has the conversation.
    await client.send({"type": "message", "client_id": "q1", "text": "hello"})
    quiet = await client.quiet(1.0)
    assert [(f["type"], f.get("role")) for f in quiet] == [("ack", None), ("message", "user")]
    # Taking over again is a no-op for the owner.
    assert (await agent.act({"type": "takeover", "session_id": sid}))["type"] == "ok"
    assert await client.quiet(0.3) == []


async def test_second_takeover_is_refused_and_admin_assigns(server: Running) -> None:
    client = await customer(server)
    sid = client.session_id or ""
    anna, bert = await signed_in(server, "anna"), await signed_in(server, "bert")
    boss = await signed_in(server, "boss", "admin")
    assert (await anna.act({"type": "takeover", "session_id": sid}))["type"] == "ok"
    no = await bert.act({"type": "takeover", "session_id": sid})
    assert (no["type"], no["code"], no["agent"], no["action"]) == ("error", "owned", "anna", "takeover")
    assert "anna" in no["message"]
    # Only the owner writes to the customer, or hands back.
    for frame in ({"type": "send", "session_id": sid, "client_id": "b1", "text": "hi"},
                  {"type": "handback", "session_id": sid}, {"type": "close", "session_id": sid}):
        assert (await bert.act(frame))["code"] == "owned"
    assert (await bert.act({"type": "assign", "session_id": sid, "agent": "bert"}))["code"] == "forbidden"
    ghost = await boss.act({"type": "assign", "session_id": sid, "agent": "ghost"})
    assert ghost["code"] == "unknown_agent"
    assert (await boss.act({"type": "assign", "session_id": sid, "agent": "bert"}))["type"] == "ok"
    joined = await client.until(lambda f: f["type"] == "handoff" and f["agent"] == "bert")
    assert joined[-1]["state"] == "agent_joined"
    assert (await anna.act({"type": "send", "session_id": sid, "client_id": "a1", "text": "x"}))[
        "code"] == "owned"
    assert (await bert.act({"type": "send", "session_id": sid, "client_id": "b2", "text": "hi"}))[
        "type"] == "ack"


async def test_agent_messages_reach_the_customer_once(server: Running, sync_redis: redis.Redis,
                                                      key_prefix: str) -> None:
    client = await customer(server)
    sid = client.session_id or ""
    agent = await signed_in(server, "anna")
    refusal = await agent.act({"type": "send", "session_id": sid, "client_id": "c0", "text": "hi"})
    assert refusal["code"] == "not_owner"
    await agent.act({"type": "takeover", "session_id": sid})
    await client.until(lambda f: f["type"] == "message" and f["role"] == "system")

    await agent.send({"type": "typing", "session_id": sid, "on": True})
    typing = await client.recv()
    assert (typing["type"], typing["role"], typing["on"]) == ("typing", "agent", True)
    assert typing["agent"] == "anna"

    text = "<img src=x onerror=alert(1)> Your order ships today."
    ack = await agent.act({"type": "send", "session_id": sid, "client_id": "c1", "text": text})
    assert ack["type"] == "ack" and ack["client_id"] == "c1"
    message = (await client.until(lambda f: f["type"] == "message"))[-1]
    assert (message["role"], message["agent"], message["text"]) == ("agent", "anna", text)
    assert message["event_id"] == ack["event_id"]
    # The same client_id again: the same ack, nothing new for the customer.
    again = await agent.act({"type": "send", "session_id": sid, "client_id": "c1", "text": text})
    assert again == ack
    assert await client.quiet(0.5) == []
    events = sync_redis.xrange(Keys(key_prefix).events(sid))
    assert sum('"role":"agent"' in e[1]["data"] for e in events) == 1


async def test_agents_reusing_a_client_id_do_not_share_its_ack(server: Running) -> None:
    client = await customer(server)
    sid = client.session_id or ""
    anna, bert = await signed_in(server, "anna"), await signed_in(server, "bert")
    boss = await signed_in(server, "rita", "admin")
    await anna.act({"type": "takeover", "session_id": sid})
    first = await anna.act({"type": "send", "session_id": sid, "client_id": "c1", "text": "anna here"})
    assert first["type"] == "ack"
    # Not the owner: refused, not handed anna's ack for a message bert never stored.
    stolen = await bert.act({"type": "send", "session_id": sid, "client_id": "c1", "text": "bert"})
    assert stolen["type"] == "error" and stolen["code"] == "owned", stolen
    # The owner now: bert's message is stored and reaches the customer.
    await boss.act({"type": "assign", "session_id": sid, "agent": "bert"})
    own = await bert.act({"type": "send", "session_id": sid, "client_id": "c1", "text": "bert here"})
    assert own["type"] == "ack" and own["event_id"] != first["event_id"]
    said = await client.until(lambda f: f["type"] == "message" and f["text"] == "bert here")
    assert said[-1]["event_id"] == own["event_id"]


async def test_notes_never_reach_the_customer(server: Running) -> None:
    client = await customer(server)
    sid = client.session_id or ""
    agent = await signed_in(server, "anna")
    watcher = await signed_in(server, "bert")
    await watcher.watch(sid)
    done = await agent.act({"type": "note", "session_id": sid, "text": "VIP customer, be nice"})
    assert done["type"] == "ok" and done["action"] == "note"
    note = (await watcher.until(lambda f: f["type"] == "note"))[-1]
    assert (note["text"], note["agent"], note["session_id"]) == ("VIP customer, be nice", "anna", sid)
    assert await client.quiet(0.5) == []
    # Nor on a resume, from the start or from any point.
    resumed = await server.client()
    await resumed.start(sid, client.token)
    assert all(f["type"] != "note" and "VIP" not in json.dumps(f) for f in await resumed.quiet(0.5))
    # Other agents see it in the replay.
    replay = await (await signed_in(server, "cleo")).watch(sid)
    assert [f["text"] for f in replay if f["type"] == "note"] == ["VIP customer, be nice"]


async def test_handback_lets_the_bot_answer_again(server: Running) -> None:
    client = await customer(server)
    sid = client.session_id or ""
    agent = await signed_in(server, "anna")
    await agent.act({"type": "takeover", "session_id": sid})
    await client.until(lambda f: f["type"] == "message" and f["role"] == "system")
    assert (await agent.act({"type": "handback", "session_id": sid}))["type"] == "ok"
    left = await client.until(lambda f: f["type"] == "handoff")
    assert (left[-1]["state"], left[-1]["agent"]) == ("agent_left", "anna")
    _, frames = await client.say("hello")
    assert frames[-1]["text"] == "Hello! How can I help you today?"
    # Not the owner any more.
    assert (await agent.act({"type": "handback", "session_id": sid}))["code"] == "not_owner"


async def test_close_then_the_customer_reopens(server: Running, sync_redis: redis.Redis,
                                               key_prefix: str) -> None:
    client = await customer(server)
    sid = client.session_id or ""
    agent = await signed_in(server, "anna")
    await agent.act({"type": "takeover", "session_id": sid})
    assert (await agent.act({"type": "close", "session_id": sid}))["type"] == "ok"
    closing = (await client.until(lambda f: f["type"] == "message" and "closed" in f["text"]))[-1]
    assert closing["role"] == "system"
    record = sync_redis.hgetall(Keys(key_prefix).session(sid))
    assert record["status"] == "closed" and "agent" not in record
    assert (await agent.act({"type": "takeover", "session_id": sid}))["code"] == "closed"
    # The customer's socket saw status "bot" at start; the write still reopens.
    _, frames = await client.say("hello")
    assert frames[-1]["text"] == "Hello! How can I help you today?"
    assert sync_redis.hget(Keys(key_prefix).session(sid), "status") == "bot"


async def test_two_servers_customer_on_one_agent_on_the_other(servers: Servers) -> None:
    one, two = await servers.start(), await servers.start()
    client = await customer(one, None)
    sid = client.session_id or ""
    agent = await signed_in(two, "anna")
    await agent.watch(sid)
    await client.send({"type": "message", "client_id": "x1", "text": "where is my order"})
    live = await agent.until(lambda f: f["type"] == "stream_end")
    assert "".join(f["text"] for f in live if f["type"] == "stream_delta").strip() == live[-1]["text"]
    assert (await agent.act({"type": "takeover", "session_id": sid}))["type"] == "ok"
    joined = await client.until(lambda f: f["type"] == "handoff")
    assert (joined[-1]["state"], joined[-1]["agent"]) == ("agent_joined", "anna")
    await agent.act({"type": "send", "session_id": sid, "client_id": uuid.uuid4().hex,
                     "text": "Let me check that for you."})
    reply = (await client.until(lambda f: f["type"] == "message" and f["role"] == "agent"))[-1]
    assert reply["text"] == "Let me check that for you."
    # A second agent on the first server is refused: ownership lives in Redis.
    other = await signed_in(one, "bert")
    assert (await other.act({"type": "takeover", "session_id": sid}))["code"] == "owned"


async def test_a_report_since_before_1970_is_a_bad_field(server: Running) -> None:
    admin = await signed_in(server, "rita", "admin")
    for since in ("1960-01-01", "9000w"):
        await admin.send({"type": "report", "since": since})
        refused = (await admin.until(lambda f: f["type"] in ("report", "error"), timeout=60))[-1]
        assert (refused["type"], refused.get("code"), refused.get("action")) == (
            "error", "bad_field", "report"), refused


def test_each_console_frame_class_is_named_after_its_type() -> None:
    """An error frame names the action that failed by the parsed frame's class."""
    from bot import agent_frames as frames

    sid = {"session_id": "abc"}
    minimal: dict[str, dict[str, Any]] = {
        "sessions": {}, "logout": {}, "proposals": {}, "report": {},
        "watch": sid, "unwatch": sid, "takeover": sid, "handback": sid, "close": sid,
        "assign": {**sid, "agent": "anna"}, "send": {**sid, "client_id": "c1", "text": "hi"},
        "typing": {**sid, "on": True}, "note": {**sid, "text": "hi"},
        "approve": {"proposal_id": "ab12", "question": "q?", "answer": "a"},
        "reject": {"proposal_id": "ab12"},
        "copy": {"product_id": "P1001", "audience": "runners", "keywords": ["light"]},
    }
    parsed_types = set()
    for kind, fields in minimal.items():
        parsed = frames.parse(json.dumps({"type": kind, **fields}), max_bytes=65536, max_text=2000)
        assert type(parsed).__name__.lower() == kind
        parsed_types.add(type(parsed))
    assert parsed_types == set(typing.get_args(frames.AgentFrame))  # every kind is covered
