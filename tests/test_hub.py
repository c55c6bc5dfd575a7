"""Live frames across a lost pub/sub connection. The fan-out (bot/hub.py, against a real
Redis): after its connection is lost and renewed, every listener is told to catch up from
the stream (``resync``), whoever renewed it, and a channel subscribed while Redis was coming
back strands no other. A customer's catch-up (bot/chat.py): nothing missed is skipped, and
nothing replayed is shown twice."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from bot.hub import Hub
from bot.store import Event, Store
from tests.conftest import RedisProcess

RESYNC = {"type": "resync"}


async def until(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    """Wait for ``check`` (a deadline for a stuck hub, not a speed requirement)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if loop.time() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def named(url: str, name: str) -> str:
    """``url`` with a client name, so the test can find the hub's connection in CLIENT LIST."""
    return f"{url}{'&' if '?' in url else '?'}client_name={name}"


@pytest.fixture
async def admin(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


async def started_hub(url: str) -> tuple[Store, Hub]:
    store = Store.from_url(url)  # the server's client settings, retries included
    hub = Hub(store.redis)
    await hub.start()
    return store, hub


async def test_listeners_catch_up_after_redis_py_renews_the_connection_itself(
        redis_url: str, admin: aioredis.Redis) -> None:
    name = f"hubtest-{uuid.uuid4().hex[:8]}"
    store, hub = await started_hub(named(redis_url, name))
    channel = f"hubtest:{uuid.uuid4().hex}"
    got: list[dict[str, Any]] = []
    try:
        await hub.subscribe(channel, got.append)
        await admin.publish(channel, json.dumps({"type": "typing", "n": 1}))
        await until(lambda: len(got) == 1, "the first frame")
        # Drop the subscriber connection. The client reconnects and subscribes again on its
        # own (no error reaches the hub); whatever was published in between is gone.
        killed = 0
        for client in await admin.client_list():
            if client.get("name") == name and int(client.get("sub", 0)) > 0:
                killed += await admin.client_kill_filter(_id=client["id"])
        assert killed == 1
        await until(lambda: RESYNC in got, "a resync after the connection was renewed")
        await admin.publish(channel, json.dumps({"type": "typing", "n": 2}))
        await until(lambda: {"type": "typing", "n": 2} in got, "frames after the renewal")
    finally:
        await hub.stop()
        await store.close()


async def test_a_channel_subscribed_as_redis_returns_strands_no_other(own_redis: RedisProcess) -> None:
    store, hub = await started_hub(own_redis.url)
    first, second = f"hubtest:{uuid.uuid4().hex}", f"hubtest:{uuid.uuid4().hex}"
    got: list[dict[str, Any]] = []
    publisher = aioredis.Redis.from_url(own_redis.url)
    failures = 0
    real_resubscribe = hub._resubscribe

    async def counted() -> bool:
        nonlocal failures
        ok = await real_resubscribe()
        failures += not ok
        return ok

    hub._resubscribe = counted  # type: ignore[method-assign]
    try:
        await hub.subscribe(first, got.append)
        own_redis.kill()
        # The reader has lost the connection and failed to subscribe again: it waits out
        # its backoff (0.4 s and more after three failures).
        await until(lambda: failures >= 3, "failed re-subscribes while Redis is down")
        own_redis.start()
        # A new customer's channel, subscribed on the reader's empty connection before the
        # reader tries again.
        await hub.subscribe(second, lambda frame: None)
        await until(lambda: RESYNC in got, "a resync for the channel subscribed before the outage")
        await publisher.publish(first, json.dumps({"type": "typing", "on": True}))
        await until(lambda: {"type": "typing", "on": True} in got, "live frames on that channel again")
    finally:
        await publisher.aclose()
        await hub.stop()
        await store.close()


def chat_connection(events: Callable[..., Any]) -> Any:
    """A customer connection whose store reads the stream with ``events``; frames it sends
    end up in its ``out`` queue."""
    from types import SimpleNamespace

    from bot.chat import ChatConnection

    settings = SimpleNamespace(rate_messages=10, rate_window=10.0)
    app = SimpleNamespace(settings=settings, store=SimpleNamespace(events=events),
                          client_key=lambda ws: "127.0.0.1")
    conn = ChatConnection(SimpleNamespace(), app)  # type: ignore[arg-type]
    conn.sid, conn.last_id = "s1", (1, 0)
    return conn


def sent(conn: Any) -> list[dict[str, Any]]:
    return [conn.out.get_nowait() for _ in range(conn.out.qsize())]


def message(event_id: str, text: str, **data: Any) -> Event:
    return Event(event_id, "message", 1.0, {"role": "agent", "text": text, "agent": "anna", **data})


async def test_a_resync_sends_missed_events_even_when_a_newer_one_arrives_during_the_read() -> None:
    missed, newer = message("2-0", "sent while the subscription was down"), message("3-0", "sent just now")

    async def events(sid: str, after: str | None, kinds: Any = None) -> list[Event]:
        assert after == "1-0"
        conn.on_live(newer.frame(sid))  # published while the stream is being read
        return [missed, newer]

    conn = chat_connection(events)
    conn.on_live({"type": "resync"})
    await until(lambda: conn.out.qsize() >= 2 and conn.held is None, "the missed and the newer event")
    assert [f["text"] for f in sent(conn)] == [missed.data["text"], newer.data["text"]]


async def test_a_stream_whose_message_was_replayed_is_not_shown_again() -> None:
    answer = message("2-0", "Your parcel left today.", role="bot", stream_id="st1")

    async def events(sid: str, after: str | None, kinds: Any = None) -> list[Event]:
        # The whole answer goes by while the stream is read: its frames, then its message.
        for frame in ({"type": "stream_start", "stream_id": "st1", "role": "bot"},
                      {"type": "stream_delta", "stream_id": "st1", "text": "Your parcel left today."},
                      answer.frame(sid)):
            conn.on_live(frame)
        return [answer]

    conn = chat_connection(events)
    conn.on_live({"type": "resync"})
    await until(lambda: conn.held is None and not conn._tasks, "the resync")
    assert [(f["type"], f.get("text")) for f in sent(conn)] == [("message", answer.data["text"])]


def watch_of(events: Callable[..., Any]) -> tuple[Any, list[dict[str, Any]]]:
    """A console's watch of conversation s1, its replay done; and what the console got."""
    from types import SimpleNamespace

    from bot.agent_socket import Watch

    got: list[dict[str, Any]] = []
    tasks: set[asyncio.Task[None]] = set()

    def spawn(work: Any) -> None:
        task = asyncio.ensure_future(work)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    conn = SimpleNamespace(store=SimpleNamespace(events=events), send=got.append, spawn=spawn,
                           room=lambda: True, tasks=tasks)
    watch = Watch(conn, "s1")  # type: ignore[arg-type]
    watch.last_id = (1, 0)
    watch.release()
    return watch, got


async def test_a_console_resync_skips_nothing_and_shows_no_stream_twice() -> None:
    missed = message("2-0", "Your parcel left today.", role="bot", stream_id="st1")
    newer = message("3-0", "sent just now")
    watch: Any

    async def events(sid: str, after: str | None) -> list[Event]:
        assert after == "1-0"
        for frame in ({"type": "stream_start", "stream_id": "st1", "role": "bot"},
                      {"type": "stream_delta", "stream_id": "st1", "text": "Your parcel left today."},
                      missed.frame(sid), newer.frame(sid)):
            watch.on_live(frame)  # published while the stream is being read
        return [missed, newer]

    watch, got = watch_of(events)
    watch.on_live({"type": "resync"})
    await until(lambda: watch.held is None and not watch.conn.tasks, "the resync")
    assert [(f["type"], f.get("text")) for f in got] == [
        ("message", missed.data["text"]), ("message", newer.data["text"])]
