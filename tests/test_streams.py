"""Every stream a turn opens is closed, and typing goes off, whatever becomes of the turn:
stored, failed, taken over by an agent mid-stream, or lost to another holder.

The pipeline here is a stand-in (:class:`Paused`): the real engine cannot be made to stop
half-way through a reply until the test has acted. Everything else is real: servers, Redis,
the agent socket and the customer's websocket."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import redis

from bot.brain import Brain
from bot.keys import Keys
from bot.store import NewEvent
from bot.turns import ERROR_TEXT, INTERRUPTED_TEXT, TYPING_ON
from dialogue.types import Conversation, Output, Reply, StreamedReply, TurnAnalysis, UserMessage
from tests.conftest import Client, Running, Servers
from tests.test_agent_socket import signed_in

Frame = dict[str, Any]


class Paused:
    """Streams "Hello there. ", then waits for :attr:`go` before "More text."; then, by
    ``mode``: ``ok`` an analysis, ``raise`` a crash after the stream, ``cut`` a crash inside
    it (instead of its second chunk)."""

    def __init__(self, mode: str = "ok") -> None:
        self.mode = mode
        self.streaming = asyncio.Event()  # the first chunk is out
        self.go = asyncio.Event()
        self.generation_closed = False  # the chunks' generator was closed (the model stops)
        self.pipeline_closed = False

    async def respond(self, conversation: Conversation, message: UserMessage) -> AsyncIterator[Output]:
        try:
            yield StreamedReply(self._chunks())
            if self.mode == "raise":
                raise RuntimeError("the pipeline broke after streaming")
            yield TurnAnalysis(intent="greet", confidence=1.0, policy="test", reason="scripted")
        finally:
            self.pipeline_closed = True

    async def _chunks(self) -> AsyncIterator[str]:
        try:
            yield "Hello there. "
            self.streaming.set()
            await self.go.wait()
            if self.mode == "cut":
                raise RuntimeError("the model broke mid-stream")
            yield "More text."
        finally:
            self.generation_closed = True


def stored(sync_redis: redis.Redis, prefix: str, sid: str) -> list[Frame]:
    return [{"event_id": i, "kind": e["kind"], **json.loads(e["data"])}
            for i, e in sync_redis.xrange(Keys(prefix).events(sid))]


def typing(frames: list[Frame]) -> list[bool]:
    return [f["on"] for f in frames if f["type"] == "typing"]


async def test_a_takeover_mid_stream_stops_the_stream_and_closes_it(
        servers: Servers, sync_redis: redis.Redis, key_prefix: str) -> None:
    bot = Paused()
    server = await servers.start(brain=Brain(bot))
    customer = await server.client()
    await customer.start()
    sid = customer.session_id or ""
    watcher = await signed_in(server, "ben")  # a console watching the conversation live
    await watcher.watch(sid)
    await customer.send({"type": "message", "client_id": "m1", "text": "hi"})
    await asyncio.wait_for(bot.streaming.wait(), 10)
    agent = await signed_in(server, "anna")
    assert (await agent.act({"type": "takeover", "session_id": sid}))["type"] == "ok"
    bot.go.set()
    frames = await customer.quiet(1.0)
    watched = [f for f in await watcher.quiet(0.5) if f["type"].startswith("stream")]
    assert [f["type"] for f in watched][-1] == "stream_end" and watched[-1]["dropped"] is True

    joined = next(i for i, f in enumerate(frames) if f["type"] == "message" and f["role"] == "system")
    assert not [f for f in frames[joined:] if f["type"] == "stream_delta"], frames
    start = next(f for f in frames if f["type"] == "stream_start")
    ends = [f for f in frames if f["type"] == "stream_end"]
    assert len(ends) == 1 and ends[0]["stream_id"] == start["stream_id"], frames
    assert ends[0]["event_id"] is None and ends[0]["dropped"] is True
    assert ends[0]["text"] == "Hello there. "  # what the customer was shown
    assert typing(frames)[-1] is False
    assert bot.generation_closed and bot.pipeline_closed  # it stopped at the takeover
    # Nothing of the bot's is stored after the agent joined; the turn is done with.
    assert [(e["kind"], e.get("role")) for e in stored(sync_redis, key_prefix, sid)] == [
        ("message", "user"), ("handoff", None), ("message", "system")]
    record = sync_redis.hgetall(Keys(key_prefix).session(sid))
    assert record["cursor"] == frames[0]["event_id"] and "turn_message" not in record


async def failing_turn(servers: Servers, how: str) -> tuple[Client, list[dict[str, Any]]]:
    """A customer whose one turn fails as ``how`` says (see Paused); what it was sent."""
    bot = Paused(how)
    bot.go.set()
    server = await servers.start(brain=Brain(bot))
    customer = await server.client()
    await customer.start()
    _, frames = await customer.say("hi")
    return customer, frames


async def test_a_failure_after_a_streamed_reply_closes_its_stream_with_the_stored_reply(
        servers: Servers, sync_redis: redis.Redis, key_prefix: str) -> None:
    customer, frames = await failing_turn(servers, "raise")
    start = next(f for f in frames if f["type"] == "stream_start")
    end = next(f for f in frames if f["type"] == "stream_end")
    assert end["stream_id"] == start["stream_id"] and end["text"] == "Hello there. More text."
    assert frames[-1]["type"] == "message" and frames[-1]["text"] == ERROR_TEXT
    bot_messages = [e for e in stored(sync_redis, key_prefix, customer.session_id or "")
                    if e.get("role") == "bot"]
    assert [(e["text"], e.get("stream_id")) for e in bot_messages] == [
        ("Hello there. More text.", start["stream_id"]), (ERROR_TEXT, None)]
    assert end["event_id"] == bot_messages[0]["event_id"]


async def test_a_stream_cut_by_a_failure_ends_with_the_error_text(
        servers: Servers, sync_redis: redis.Redis, key_prefix: str) -> None:
    customer, frames = await failing_turn(servers, "cut")
    start = next(f for f in frames if f["type"] == "stream_start")
    assert frames[-1]["type"] == "stream_end" and frames[-1]["stream_id"] == start["stream_id"]
    assert frames[-1]["text"] == ERROR_TEXT and isinstance(frames[-1]["event_id"], str)
    error = [e for e in stored(sync_redis, key_prefix, customer.session_id or "") if e.get("role") == "bot"]
    assert [(e["event_id"], e["text"], e["stream_id"]) for e in error] == [
        (frames[-1]["event_id"], ERROR_TEXT, start["stream_id"])]


async def interrupted_turn(server: Running, sid: str) -> str:
    """A customer message whose turn another holder started and never finished."""
    store = server.app.store
    message = (await store.append(sid, [NewEvent("message", {"role": "user", "text": "hi", "buttons": [],
                                                              "cards": [], "agent": None})])).event_ids[0]
    owner = await store.acquire_lock(sid, 1.0)
    assert owner is not None
    await store.start_turn(sid, owner, message, 10, None, TYPING_ON)  # typing on, then it dies
    return message


async def test_the_interrupted_notice_turns_typing_off(servers: Servers) -> None:
    server = await servers.start(brain=Brain(Paused()))
    customer = await server.client()
    await customer.start()
    await asyncio.sleep(0.3)  # the start's own kick finds nothing pending
    await interrupted_turn(server, customer.session_id or "")
    await asyncio.sleep(1.1)  # the dead holder's lock expires
    server.app.runner.kick(customer.session_id or "")
    frames = await customer.quiet(1.5)
    notice = next(i for i, f in enumerate(frames) if f["type"] == "message" and f["role"] == "system")
    assert frames[notice]["text"] == INTERRUPTED_TEXT
    assert typing(frames) == [True, False] and typing(frames[notice:]) == [False]


async def test_a_holder_that_lost_the_turn_stops_streaming_and_closes_its_stream(
        servers: Servers, sync_redis: redis.Redis, key_prefix: str) -> None:
    bot = Paused()
    a = await servers.start(brain=Brain(bot))
    b = await servers.start(brain=Brain(Paused()))
    customer = await a.client()
    await customer.start()
    sid = customer.session_id or ""
    await customer.send({"type": "message", "client_id": "m1", "text": "hi"})
    await asyncio.wait_for(bot.streaming.wait(), 10)
    sync_redis.delete(Keys(key_prefix).lock(sid))  # a stalled past its lock
    b.app.runner.kick(sid)  # b takes the turn over: it tells the customer it was interrupted
    frames = await customer.until(lambda f: f["type"] == "message" and f["role"] == "system")
    bot.go.set()  # a wakes up; its result is refused
    frames += await customer.quiet(1.0)
    start = next(f for f in frames if f["type"] == "stream_start")
    notice = next(i for i, f in enumerate(frames) if f["type"] == "message" and f["role"] == "system")
    assert not [f for f in frames[notice:] if f["type"] == "stream_delta"], frames
    ends = [f for f in frames if f["type"] == "stream_end"]
    assert [(f["stream_id"], f["event_id"], f["text"]) for f in ends] == [
        (start["stream_id"], None, "Hello there. ")]
    assert typing(frames)[-1] is False
    assert bot.generation_closed
    assert [e.get("role") for e in stored(sync_redis, key_prefix, sid) if e["kind"] == "message"] == [
        "user", "system"]


async def test_a_written_reply_after_a_takeover_is_not_shown(
        servers: Servers, sync_redis: redis.Redis, key_prefix: str) -> None:
    gate = asyncio.Event()
    reached = asyncio.Event()

    class Slow:
        async def respond(self, conversation: Conversation, message: UserMessage) -> AsyncIterator[Output]:
            reached.set()
            await gate.wait()
            yield Reply("Let me check that for you.")

    server = await servers.start(brain=Brain(Slow()))
    customer = await server.client()
    await customer.start()
    sid = customer.session_id or ""
    await customer.send({"type": "message", "client_id": "m1", "text": "hi"})
    await asyncio.wait_for(reached.wait(), 10)
    agent = await signed_in(server, "anna")
    assert (await agent.act({"type": "takeover", "session_id": sid}))["type"] == "ok"
    gate.set()
    frames = await customer.quiet(1.0)
    assert not [f for f in frames if f["type"].startswith("stream")], frames
    assert typing(frames) == [True, False]
    assert not [e for e in stored(sync_redis, key_prefix, sid) if e.get("role") == "bot"]
