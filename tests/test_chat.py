"""The customer socket end to end: real server, real Redis, real websocket clients."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
import redis
from websockets.exceptions import ConnectionClosed

from bot.errors import StoreError
from bot.keys import Keys
from tests.conftest import Running, Servers


def stored(sync_redis: redis.Redis, prefix: str, sid: str) -> list[tuple[str, dict[str, str]]]:
    return sync_redis.xrange(Keys(prefix).events(sid))


async def test_new_session(server: Running) -> None:
    client = await server.client()
    frame = await client.start()
    assert frame["status"] == "bot"
    assert len(frame["session_id"]) >= 16 and len(frame["token"]) >= 24


async def test_message_ack_then_streamed_reply(server: Running, sync_redis: redis.Redis,
                                               key_prefix: str) -> None:
    client = await server.client()
    await client.start()
    ack, frames = await client.say("hello")
    kinds = [f["type"] for f in frames]
    assert kinds[-1] == "stream_end"
    assert kinds.index("ack") < kinds.index("stream_start") < kinds.index("stream_end")
    start = next(f for f in frames if f["type"] == "stream_start")
    deltas = "".join(f["text"] for f in frames if f["type"] == "stream_delta")
    end = frames[-1]
    assert end["stream_id"] == start["stream_id"] and start["role"] == "bot"
    assert deltas.strip() == end["text"] == "Hello! How can I help you today?"
    assert end["buttons"] == [{"title": "Track my order", "payload": "/track_order"}]
    # The ack names the stored user message; the stream_end names the stored bot message.
    events = dict(stored(sync_redis, key_prefix, client.session_id or ""))
    assert '"role":"user"' in events[ack["event_id"]]["data"]
    assert end["text"] in events[end["event_id"]]["data"]


async def test_button_action_sets_slot_and_answers(server: Running) -> None:
    client = await server.client()
    await client.start()
    await client.send({"type": "action", "client_id": "b1", "payload": '/track_order{"order_id": "NW-7"}',
                       "title": "Track my order"})
    frames = await client.until(lambda f: f["type"] == "stream_end")
    assert frames[0] == {"type": "ack", "client_id": "b1", "event_id": frames[0]["event_id"]}
    assert frames[-1]["text"] == "I will look up order NW-7 for you."


async def test_duplicate_client_id_is_stored_once(server: Running, sync_redis: redis.Redis,
                                                  key_prefix: str) -> None:
    client = await server.client()
    await client.start()
    ack, _ = await client.say("hello", client_id="same-id")
    await client.send({"type": "message", "client_id": "same-id", "text": "hello"})
    again = await client.quiet(1.0)
    assert [f for f in again if f["type"] == "ack"] == [ack]
    assert not [f for f in again if f["type"] in ("stream_start", "message")]
    events = stored(sync_redis, key_prefix, client.session_id or "")
    assert sum('"client_id":"same-id"' in e[1]["data"] for e in events) == 1
    assert sum('"role":"bot"' in e[1]["data"] for e in events) == 1


async def test_reconnect_after_replays_exactly_the_missed_events(server: Running) -> None:
    first = await server.client()
    await first.start()
    ack1, frames1 = await first.say("hello")
    await first.say("where is my order")
    await first.ws.close()

    # A reload: after=None replays the whole conversation, oldest first.
    reload = await server.client()
    await reload.start(first.session_id, first.token)
    history = await reload.quiet(0.7)
    assert [(f["role"], f["text"]) for f in history] == [
        ("user", "hello"), ("bot", "Hello! How can I help you today?"),
        # The response names a slot the message did not set: an unset slot reads as nothing.
        ("user", "where is my order"), ("bot", "I will look up order  for you."),
    ]
    ids = [f["event_id"] for f in history]
    assert ids == sorted(ids, key=lambda x: tuple(map(int, x.split("-"))))

    # A reconnect with `after` gets only what came later.
    resumed = await server.client()
    frame = await resumed.start(first.session_id, first.token, after=frames1[-1]["event_id"])
    assert frame["session_id"] == first.session_id
    missed = await resumed.quiet(0.7)
    assert [f["event_id"] for f in missed] == ids[2:]


async def test_wrong_token_starts_a_new_session(server: Running) -> None:
    owner = await server.client()
    await owner.start()
    await owner.say("hello")
    intruder = await server.client()
    frame = await intruder.start(owner.session_id, "not-the-token")
    assert frame["session_id"] != owner.session_id
    assert await intruder.quiet(0.5) == []


async def test_two_sessions_stay_isolated(server: Running) -> None:
    a, b = await server.client(), await server.client()
    await a.start()
    await b.start()
    (_, frames_a), (_, frames_b) = await asyncio.gather(a.say("hello"), b.say("bye"))
    assert frames_a[-1]["text"].startswith("Hello")
    assert frames_b[-1]["text"].startswith("Goodbye")
    assert {f.get("session_id") for f in frames_a if "session_id" in f} == {a.session_id}
    assert {f.get("session_id") for f in frames_b if "session_id" in f} == {b.session_id}
    assert await a.quiet(0.3) == [] and await b.quiet(0.3) == []


async def test_second_instance_resumes_and_watches_live(servers: Servers) -> None:
    one, two = await servers.start(), await servers.start()
    customer = await one.client()
    await customer.start()
    await customer.say("hello")
    # The same conversation opened on the other instance: history, then live frames.
    other = await two.client()
    assert (await other.start(customer.session_id, customer.token))["session_id"] == customer.session_id
    history = await other.quiet(0.5)
    assert [f["role"] for f in history] == ["user", "bot"]
    await customer.send({"type": "message", "client_id": "x2", "text": "bye"})
    live = await other.until(lambda f: f["type"] == "stream_end")
    assert live[0]["type"] == "message" and live[0]["text"] == "bye"
    assert "".join(f["text"] for f in live if f["type"] == "stream_delta").strip() == live[-1]["text"]


async def test_turns_of_one_conversation_are_answered_once_and_in_order(
        servers: Servers, sync_redis: redis.Redis, key_prefix: str) -> None:
    one, two = await servers.start(), await servers.start()
    a = await one.client()
    await a.start()
    b = await two.client()
    await b.start(a.session_id, a.token)
    texts = ["hello", "bye", "where is my order", "hi there", "see you later", "track my parcel"]
    for i, text in enumerate(texts):
        sender = a if i % 2 == 0 else b
        await sender.send({"type": "message", "client_id": f"m{i}", "text": text})
    for _ in range(100):
        events = stored(sync_redis, key_prefix, a.session_id or "")
        if sum('"role":"bot"' in e[1]["data"] for e in events) >= len(texts):
            break
        await asyncio.sleep(0.1)
    import json
    messages = [json.loads(e[1]["data"]) | {"id": e[0]} for e in events if e[1]["kind"] == "message"]
    users = [m for m in messages if m["role"] == "user"]
    bots = [m for m in messages if m["role"] == "bot"]
    assert len(bots) == len(users) == len(texts)
    # Each bot reply answers the customer message before it, in stream order.
    assert [b["reply_to"] for b in bots] == [u["id"] for u in users]
    order = [m["role"] for m in messages]
    assert order == ["user", "bot"] * len(texts) or sorted(order) == sorted(["user", "bot"] * len(texts))


async def test_session_expires_after_idle_ttl(servers: Servers, sync_redis: redis.Redis,
                                              key_prefix: str) -> None:
    server = await servers.start(session_ttl=1)
    client = await server.client()
    await client.start()
    await client.say("hello")
    assert sync_redis.exists(Keys(key_prefix).events(client.session_id or ""))
    await asyncio.sleep(2.5)
    assert not sync_redis.exists(Keys(key_prefix).session(client.session_id or ""))
    assert await server.app.store.sweep_expired() == 1
    assert client.session_id not in await server.app.store.live_sessions()
    # Writing to the expired session is refused cleanly, without a half-written stream.
    await client.send({"type": "message", "client_id": uuid.uuid4().hex, "text": "still there?"})
    frame = await client.recv()
    assert frame["type"] == "error" and frame["code"] == "session_expired"
    assert not sync_redis.exists(Keys(key_prefix).events(client.session_id or ""))
    again = await server.client()
    fresh = await again.start(client.session_id, client.token)
    assert fresh["session_id"] != client.session_id


async def test_live_index_lists_sessions_by_activity(server: Running) -> None:
    a, b = await server.client(), await server.client()
    await a.start()
    await b.start()
    await a.say("hello")
    live = await server.app.store.live_sessions()
    assert live[:2] == [a.session_id, b.session_id]


async def test_track_frame_is_stored_for_agents_not_echoed(server: Running, sync_redis: redis.Redis,
                                                           key_prefix: str) -> None:
    client = await server.client()
    await client.start()
    await client.send({"type": "track", "name": "view_product", "data": {"id": "P1001"}})
    assert await client.quiet(0.5) == []
    kinds = [e[1]["kind"] for e in stored(sync_redis, key_prefix, client.session_id or "")]
    assert kinds == ["track"]


async def test_typing_brackets_the_reply(server: Running) -> None:
    client = await server.client()
    await client.start()
    await client.send({"type": "message", "client_id": "t1", "text": "hello"})
    frames = await client.until(lambda f: f["type"] == "typing" and not f["on"])
    kinds = [(f["type"], f.get("on")) for f in frames if f["type"] in ("typing", "stream_start",
                                                                         "stream_end")]
    assert kinds == [("typing", True), ("stream_start", None), ("stream_end", None),
                     ("typing", False)]
    assert all(f["role"] == "bot" for f in frames if f["type"] == "typing")


async def test_a_history_that_cannot_be_read_closes_the_socket_and_the_client_resumes(
        server: Running, monkeypatch: pytest.MonkeyPatch) -> None:
    first = await server.client()
    await first.start()
    await first.say("hello")
    await first.ws.close()

    real_events = server.app.store.events
    failures = 1

    async def events(*args: Any, **kwargs: Any) -> Any:
        nonlocal failures
        if failures:
            failures -= 1
            raise StoreError("events read failed: connection reset")
        return await real_events(*args, **kwargs)

    monkeypatch.setattr(server.app.store, "events", events)
    cut = await server.client()
    await cut.send({"type": "start", "session_id": first.session_id, "token": first.token})
    with pytest.raises(ConnectionClosed) as closed:
        await cut.recv()  # no `session`: it would come with history_to, which is unknown
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013
    # The client resumes as usual and gets its whole history.
    again = await server.client()
    await again.start(first.session_id, first.token)
    history = await again.quiet(0.7)
    assert [f["role"] for f in history if f["type"] == "message"] == ["user", "bot"]


async def test_frames_before_start_count_against_the_socket_budget(servers: Servers) -> None:
    """Only frames after `start` used to count against a socket's own budget: with the
    address budget off, a socket that never started could send garbage without limit."""
    server = await servers.start(rate_messages=3, rate_window=60.0, rate_ip_messages=0)
    client = await server.client()
    for _ in range(5):
        await client.send("not json")
    codes = [f["code"] for f in await client.quiet(0.5)]
    assert codes == ["bad_json"] * 3 + ["rate_limited"] * 2
    assert client.ws.close_code is None


async def test_a_resent_message_whose_first_write_landed_unanswered_is_answered(
        server: Running) -> None:
    """A message stored with its reply lost (redis-py retried the append after the
    connection dropped, or the client resent after `unavailable`) was acked as a
    duplicate on resend, and nothing ever answered it."""
    from bot.store import NewEvent

    client = await server.client()
    await client.start()
    sid = client.session_id or ""
    # The first write, as _store_message makes it, without the kick that never came.
    await server.app.store.append(
        sid, [NewEvent("message", {"role": "user", "text": "hello", "buttons": [], "cards": [],
                                   "agent": None, "client_id": "c-lost"})],
        client_id="c-lost", fields={"last_message": "hello", "last_role": "user"}, reopen=True)
    ack, frames = await client.say("hello", client_id="c-lost")
    assert [f for f in frames if f["type"] in ("message", "stream_end") and f.get("role", "bot") == "bot"]


async def test_session_names_the_last_event_of_its_replay(server: Running) -> None:
    """A client tells history from live frames by history_to, not by clocks or pauses."""
    first = await server.client()
    await first.start()
    await first.say("hello")
    again = await server.client()
    session = await again.start(first.session_id, first.token)
    history = await again.quiet(0.7)
    assert session["history_to"] == history[-1]["event_id"]
    fresh = await server.client()
    assert (await fresh.start())["history_to"] is None
