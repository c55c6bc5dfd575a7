"""Several server instances on one Redis, with no sticky routing: a customer resumes on
any instance, a reply streamed by one is watched live on another, an agent on one
takes over a customer on another, and turns sent alternately to two instances are
answered once each, in order."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from bot.keys import Keys
from bot.store import parse_event_id
from tests.conftest import Client, Running, Servers
from tests.fakes import FakeLM, closed_url, faultbot_brain, lm_environment
from tests.test_agent_socket import signed_in

Frame = dict[str, Any]
GREETING = "Hello! How can I help you today?"
GOODBYE = "Goodbye, and thanks for visiting."


@pytest.fixture
def fake_lm(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeLM]:
    lm = FakeLM().start()
    lm_environment(monkeypatch, lm)
    yield lm
    lm.stop()


async def lm_servers(servers: Servers, count: int) -> list[Running]:
    """``count`` instances of the fault-test bot, its language model the FakeLM."""
    out = []
    for _ in range(count):
        brain = faultbot_brain(actions=closed_url(), lm=True, patient=True)
        servers.stack.push_async_callback(brain.close)
        out.append(await servers.start(brain=brain))
    return out


def is_reply(frame: Frame) -> bool:
    """A bot reply as a client receives it: the end of a live stream, or a stored message."""
    return frame["type"] == "stream_end" or (frame["type"] == "message" and frame["role"] == "bot")


def ids(frames: list[Frame]) -> list[str]:
    return [f["event_id"] for f in frames]


def in_order(event_ids: list[str]) -> bool:
    return event_ids == sorted(event_ids, key=parse_event_id)


async def test_resume_on_any_instance(servers: Servers) -> None:
    a, b, c = await servers.start(), await servers.start(), await servers.start()
    first = await a.client()
    await first.start()
    _, frames = await first.say("hello")
    seen = frames[-1]["event_id"]
    await first.ws.close()

    # A reload lands on b: the whole conversation, then it carries on there.
    second = await b.client()
    assert (await second.start(first.session_id, first.token))["status"] == "bot"
    history = await second.quiet(0.5)
    assert [(f["role"], f["text"]) for f in history] == [("user", "hello"), ("bot", GREETING)]
    _, frames = await second.say("bye")
    assert frames[-1]["text"] == GOODBYE
    await second.ws.close()

    # Back on a, from the last event it had: exactly what it missed, in order.
    for instance in (a, c):
        third = await instance.client()
        await third.start(first.session_id, first.token, after=seen)
        missed = await third.quiet(0.5)
        assert [(f["role"], f["text"]) for f in missed] == [("user", "bye"), ("bot", GOODBYE)]
        assert in_order(ids(missed))


async def test_stream_watched_live_from_another_instance(servers: Servers, fake_lm: FakeLM) -> None:
    fake_lm.script("stream", ["Happy ", "to ", "help. ", "We sell ", "shoes ", "and clothes. "], delay=0.15)
    a, b = await lm_servers(servers, 2)
    customer = await a.client()
    await customer.start()
    watcher = await b.client()  # the same conversation in a second tab, via another instance
    await watcher.start(customer.session_id, customer.token)

    await customer.send({"type": "message", "client_id": "m1", "text": "what do you sell"})
    early = await customer.until(lambda f: f["type"] == "stream_delta")
    late = await b.client()  # joins mid-stream
    await late.start(customer.session_id, customer.token)

    mine = early + await customer.until(lambda f: f["type"] == "stream_end")
    theirs = await watcher.until(lambda f: f["type"] == "stream_end")
    for frames in (mine, theirs):
        start = next(f for f in frames if f["type"] == "stream_start")
        end = frames[-1]
        deltas = [f["text"] for f in frames if f["type"] == "stream_delta"]
        assert start["stream_id"] == end["stream_id"] and start["role"] == "bot"
        assert len(deltas) > 1 and "".join(deltas).strip() == end["text"]
        assert end["text"] == "Happy to help. We sell shoes and clothes."
    assert mine[-1]["event_id"] == theirs[-1]["event_id"]
    assert [f["text"] for f in theirs if f["type"] == "stream_delta"] == \
        [f["text"] for f in mine if f["type"] == "stream_delta"]
    # A client that arrived mid-stream gets the stored message, not half a stream.
    joined = await late.until(lambda f: f["type"] == "message" and f["role"] == "bot")
    assert not [f for f in joined if f["type"].startswith("stream")]
    assert joined[-1]["event_id"] == mine[-1]["event_id"] and joined[-1]["text"] == mine[-1]["text"]


async def test_agent_on_one_instance_takes_over_a_customer_on_another(servers: Servers) -> None:
    a, b = await servers.start(), await servers.start()
    customer = await a.client()
    await customer.start()
    await customer.say("hello")
    sid = customer.session_id or ""
    agent = await signed_in(b, "anna")
    history = await agent.watch(sid)
    assert [f.get("role") for f in history if f["type"] == "message"] == ["user", "bot"]

    assert (await agent.act({"type": "takeover", "session_id": sid}))["type"] == "ok"
    seen = await customer.until(lambda f: f["type"] == "message" and f["role"] == "system")
    assert [f["state"] for f in seen if f["type"] == "handoff"] == ["agent_joined"]
    assert seen[-1]["text"] == "anna joined the chat."

    ack = await agent.act({"type": "send", "session_id": sid, "client_id": "g1", "text": "Hi, Anna here."})
    assert ack["type"] == "ack"
    said = (await customer.until(lambda f: f["type"] == "message" and f["role"] == "agent"))[-1]
    assert (said["text"], said["agent"], said["event_id"]) == ("Hi, Anna here.", "anna", ack["event_id"])

    # The customer (on a) answers; the agent (on b) sees it, and the bot stays quiet.
    await customer.send({"type": "message", "client_id": "c2", "text": "where is my order"})
    heard = await agent.until(lambda f: f["type"] == "message" and f.get("role") == "user")
    assert heard[-1]["text"] == "where is my order" and heard[-1]["session_id"] == sid
    quiet = await customer.quiet(1.0)
    assert [(f["type"], f.get("role")) for f in quiet] == [("ack", None), ("message", "user")]

    assert (await agent.act({"type": "handback", "session_id": sid}))["type"] == "ok"
    await customer.until(lambda f: f["type"] == "handoff" and f["state"] == "agent_left")
    _, frames = await customer.say("hello")
    assert frames[-1]["text"] == GREETING


async def test_alternating_instances_answer_each_message_once_in_order(
        servers: Servers, fake_lm: FakeLM, sync_redis: redis.Redis, key_prefix: str) -> None:
    # Generated replies take a few tenths of a second, so turns overlap and the two
    # instances contend for the conversation's turn lock.
    fake_lm.script("stream", ["Happy ", "to ", "help. "], delay=0.05)
    a, b = await lm_servers(servers, 2)
    on_a = await a.client()
    await on_a.start()
    on_b = await b.client()
    await on_b.start(on_a.session_id, on_a.token)
    script = [("hello", GREETING), ("what do you sell", "Happy to help."), ("bye", GOODBYE),
              ("tell me about your shop", "Happy to help."), ("good morning", GREETING),
              ("see you later", GOODBYE), ("what kind of shop is this", "Happy to help."),
              ("hi there", GREETING)]
    for i, (text, _) in enumerate(script):
        sender = on_a if i % 2 == 0 else on_b
        await sender.send({"type": "message", "client_id": f"m{i}", "text": text})
        if i >= len(script) // 2:
            # The second half is spaced out, so that the instance that received a message
            # finds the conversation idle and answers it itself: the turns then move from
            # one instance to the other. (The first half is one burst: one instance holds
            # the turn lock and the other's kicks wait for it.)
            await asyncio.sleep(0.5)

    async def replies(client: Client) -> list[Frame]:
        got: list[Frame] = []
        while len(got) < len(script):
            got += [f for f in await client.until(is_reply, timeout=20) if is_reply(f)]
        return got

    got_a, got_b = await asyncio.gather(replies(on_a), replies(on_b))
    extra = await on_a.quiet(0.5) + await on_b.quiet(0.1)
    assert not [f for f in extra if is_reply(f)]

    stored = [{"event_id": i, "kind": e["kind"], **json.loads(e["data"])}
              for i, e in sync_redis.xrange(Keys(key_prefix).events(on_a.session_id or ""))]
    users = [e for e in stored if e["kind"] == "message" and e["role"] == "user"]
    bots = [e for e in stored if e["kind"] == "message" and e["role"] == "bot"]
    turns = [e for e in stored if e["kind"] == "turn"]
    # Two sockets: each one's messages are stored in the order it sent them, and the
    # stream's order is the conversation's order.
    assert sorted(u["client_id"] for u in users) == sorted(f"m{i}" for i in range(len(script)))
    numbers = [int(u["client_id"][1:]) for u in users]
    for parity in (0, 1):  # even: sent to a, odd: sent to b
        mine = [n for n in numbers if n % 2 == parity]
        assert mine == sorted(mine)
    expected = [dict(script)[u["text"]] for u in users]
    # One reply and one turn analysis per message, answering the messages in their order...
    assert [e["reply_to"] for e in bots] == ids(users) == [t["reply_to"] for t in turns]
    assert [e["text"] for e in bots] == expected
    # ...each stored after the message it answers, and the replies in the same order.
    assert all(parse_event_id(u["event_id"]) < parse_event_id(r["event_id"])
               for u, r in zip(users, bots, strict=True))
    assert in_order(ids(bots))
    answered = [i.app.metrics.registry.get_sample_value("deskmate_turns_total") for i in (a, b)]
    assert sum(answered) == len(script) and min(answered) >= 1, answered
    # Both instances delivered every reply once, in order, to their client.
    for got in (got_a, got_b):
        assert ids(got) == ids(bots)
        assert [f["text"] for f in got] == expected
