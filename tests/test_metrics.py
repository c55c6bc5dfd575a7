"""/metrics after real traffic, and structured logs that name the conversation."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bot import logs
from bot.brain import Brain
from bot.metrics import handoff_kind
from dialogue.engine import DialogueEngine
from dialogue.entities import EntityExtractor
from dialogue.generate import Writer
from dialogue.project import load_project
from dialogue.types import Conversation, Handoff, Output, UserMessage
from tests.conftest import ROOT, TINYBOT, Running, Servers
from tests.test_agent_socket import signed_in

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(server: Running) -> Samples:
    """Every sample of GET /metrics, keyed by (name, sorted labels)."""
    with urllib.request.urlopen(server.http + "/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def ascrape(server: Running) -> Samples:
    return await asyncio.to_thread(scrape, server)


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def eventually(server: Running, check: Any, timeout: float = 5.0) -> Samples:
    """Scrape until ``check(samples)`` holds (socket closes are seen a moment later)."""
    for _ in range(int(timeout / 0.05)):
        samples = await ascrape(server)
        if check(samples):
            return samples
        await asyncio.sleep(0.05)
    raise AssertionError(f"metrics never matched: {samples}")


async def test_series_move_with_real_traffic(server: Running) -> None:
    before = await ascrape(server)
    assert value(before, "deskmate_active_sessions") == 0
    client = await server.client()
    await client.start()
    second = await server.client()
    await second.start()
    samples = await ascrape(server)
    assert value(samples, "deskmate_active_sessions") == 2
    assert value(samples, "deskmate_connections", socket="chat") == 2
    assert value(samples, "deskmate_sessions_started_total", kind="new") == 2

    for text in ("hello", "bye"):
        await client.say(text)
    await client.send("not json")
    assert (await client.recv())["code"] == "bad_json"
    await client.send({"type": "message", "client_id": "dup", "text": "hello"})
    await client.until(lambda f: f["type"] == "typing" and not f["on"])
    await client.send({"type": "message", "client_id": "dup", "text": "hello"})  # a resend
    await client.until(lambda f: f["type"] == "ack")

    samples = await ascrape(server)
    assert value(samples, "deskmate_turns_total") == 3
    assert value(samples, "deskmate_messages_total", duplicate="false") == 3
    assert value(samples, "deskmate_messages_total", duplicate="true") == 1
    assert value(samples, "deskmate_ack_seconds_count") == 4
    assert value(samples, "deskmate_turn_seconds_count") == 3
    assert value(samples, "deskmate_first_reply_seconds_count") == 3
    assert 0 < value(samples, "deskmate_first_reply_seconds_sum") < 10
    assert value(samples, "deskmate_first_reply_seconds_bucket", le="+Inf") == 3
    assert value(samples, "deskmate_errors_total", code="bad_json") == 1
    assert value(samples, "deskmate_redis_up") in (0, 1)  # set by /healthz

    await client.ws.close()
    await second.ws.close()
    await eventually(server, lambda s: value(s, "deskmate_active_sessions") == 0
                     and value(s, "deskmate_connections", socket="chat") == 0)
    resumed = await server.client()
    await resumed.start(client.session_id, client.token)
    samples = await ascrape(server)
    assert value(samples, "deskmate_sessions_started_total", kind="resumed") == 1
    assert value(samples, "deskmate_active_sessions") == 1


def handing_over_bot() -> Brain:
    project = load_project(TINYBOT)
    project.config = {"handoff": {"on_intents": ["goodbye"], "low_confidence_turns": 1}}
    return Brain(DialogueEngine(project, entities=EntityExtractor.for_project(project)))


async def test_handoffs_are_counted_by_kind_of_reason(servers: Servers) -> None:
    server = await servers.start(handing_over_bot())
    asks, lost = await server.client(), await server.client()
    await asks.start()
    await lost.start()
    _, frames = await asks.say("goodbye")  # the customer asked (a handoff intent)
    assert any(f["type"] == "handoff" for f in frames)
    _, frames = await lost.say("qwxz vbnm")  # not understood, once is enough here
    assert any(f["type"] == "handoff" for f in frames)
    samples = await ascrape(server)
    assert value(samples, "deskmate_handoffs_total", reason="asked") == 1
    assert value(samples, "deskmate_handoffs_total", reason="unclear") == 1
    # The bot is quiet now: a message is not waiting for a bot reply.
    await asks.send({"type": "message", "client_id": "x", "text": "hello?"})
    await asks.until(lambda f: f["type"] == "ack")
    assert value(await ascrape(server), "deskmate_first_reply_seconds_count") == 2


async def test_a_handoff_refused_by_a_takeover_is_not_counted(servers: Servers) -> None:
    reached, go = asyncio.Event(), asyncio.Event()

    class HandsOver:
        """Decides a handoff once the test has let an agent take over (a stand-in: the real
        engine cannot be held mid-turn)."""

        async def respond(self, conversation: Conversation, message: UserMessage) -> AsyncIterator[Output]:
            reached.set()
            await go.wait()
            yield Handoff("the customer asked (contact_human_agent)")

    server = await servers.start(Brain(HandsOver()))
    client = await server.client()
    await client.start()
    await client.send({"type": "message", "client_id": "m1", "text": "a person please"})
    await asyncio.wait_for(reached.wait(), 10)
    agent = await signed_in(server, "anna")
    assert (await agent.act({"type": "takeover", "session_id": client.session_id}))["type"] == "ok"
    go.set()
    frames = await client.until(lambda f: f["type"] == "typing" and not f["on"])
    assert not [f for f in frames if f["type"] == "handoff" and f["state"] == "requested"]
    samples = await ascrape(server)
    assert value(samples, "deskmate_handoffs_total", reason="asked") == 0
    assert value(samples, "deskmate_turns_total") == 0  # its result was never stored


async def test_first_reply_is_measured_again_once_a_closed_conversation_reopens(server: Running) -> None:
    client = await server.client()
    await client.start()
    await client.say("hello")
    agent = await signed_in(server, "anna")
    for action in ("takeover", "close"):
        assert (await agent.act({"type": action, "session_id": client.session_id}))["type"] == "ok"
    await client.quiet(0.3)
    _, frames = await client.say("hello")  # reopens the conversation; the bot answers
    assert frames[-1]["type"] == "stream_end"
    assert value(await ascrape(server), "deskmate_first_reply_seconds_count") == 2


async def test_an_interrupted_answer_ends_the_wait_for_a_first_reply(server: Running) -> None:
    client = await server.client()
    await client.start()
    sid = client.session_id or ""
    store = server.app.store
    # Another holder has the lock, starts the turn for the next message and dies.
    owner = await store.acquire_lock(sid, 1.0)
    assert owner is not None
    await client.send({"type": "message", "client_id": "m1", "text": "hello"})
    ack = (await client.until(lambda f: f["type"] == "ack"))[-1]
    await store.start_turn(sid, owner, ack["event_id"], 10, None)
    frames = await client.until(lambda f: f["type"] == "message" and f["role"] == "system", timeout=5)
    assert frames[-1]["name"] == "interrupted"
    await client.quiet(1.0)  # the customer takes a while to write again
    await client.say("hello")
    samples = await ascrape(server)
    assert value(samples, "deskmate_first_reply_seconds_count") == 1
    assert value(samples, "deskmate_first_reply_seconds_sum") < 0.9  # from the second ack


def test_handoff_kinds() -> None:
    assert handoff_kind("the customer asked (contact_human_agent)") == "asked"
    assert handoff_kind("2 negative turns in a row") == "negative"
    assert handoff_kind("3 turns in a row not understood") == "unclear"
    assert handoff_kind("a rule handed over") == "rule"
    assert handoff_kind("an action paused the conversation") == "action"
    assert handoff_kind("something new") == "other"


@pytest.fixture(scope="module")
def real_model() -> Iterator[Any]:
    """The default language model, SmolLM2-135M-Instruct, on this machine's CPU (~15 s to load)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from model.lm.engine import Engine
    from model.lm.loader import load_model

    try:
        loaded = load_model(cache=os.environ.get("DESKMATE_LM_CACHE") or ROOT / "var" / "models")
    except Exception as exc:  # the model wheel is not installed in this environment
        pytest.skip(f"the default language model is not available: {exc}")
    engine = Engine(loaded)
    yield engine
    engine.close()


@pytest.mark.slow
async def test_language_model_series(servers: Servers, real_model: Any) -> None:
    from model.lm import PromptBudget, PromptBuilder

    project = load_project(TINYBOT)
    project.config = {"generative": {"intents": ["greet"]},
                      "language_model": {"max_tokens": 24, "first_token_timeout": 100,
                                         "chunk_timeout": 100}}
    writer = Writer(real_model, PromptBuilder(real_model.count_tokens,
                                              PromptBudget(context=real_model.context, reply_tokens=24)),
                    project.config)
    engine = DialogueEngine(project, entities=EntityExtractor.for_project(project), writer=writer)
    server = await servers.start(Brain(engine, model=real_model))
    before = await ascrape(server)
    assert value(before, "deskmate_lm_active_requests") == 0
    assert value(before, "deskmate_lm_waiting_requests") == 0
    clients = [await server.client() for _ in range(3)]
    for client in clients:
        await client.start()
    busy: list[float] = []

    async def watch() -> None:  # the queue gauges move while replies are generated
        while True:
            s = await ascrape(server)
            busy.append(value(s, "deskmate_lm_active_requests") + value(s, "deskmate_lm_waiting_requests"))
            await asyncio.sleep(0.01)

    async def greet(client: Any) -> None:  # generous timeouts: a busy CI machine is slow
        await client.send({"type": "message", "client_id": "hi", "text": "hello"})
        await client.until(lambda f: f["type"] == "typing" and not f["on"], timeout=120)

    watcher = asyncio.create_task(watch())
    try:
        await asyncio.gather(*(greet(c) for c in clients))
    finally:
        watcher.cancel()
    after = await ascrape(server)
    assert value(after, "deskmate_lm_tokens_total") > value(before, "deskmate_lm_tokens_total")
    assert max(busy) >= 1
    assert value(after, "deskmate_first_reply_seconds_count") == 3
    # A reply that ended early (a sentence limit, the grounding gate) cancels its generation,
    # and the engine thread drops the row at its next decode step, which may come after the
    # customer saw the end of the turn: the gauge must come back to 0, not leak.
    async with asyncio.timeout(60):
        while value(await ascrape(server), "deskmate_lm_active_requests") != 0:  # noqa: ASYNC110 - a gauge
            await asyncio.sleep(0.05)
    assert value(await ascrape(server), "deskmate_lm_waiting_requests") == 0


# -- structured logs --------------------------------------------------------------------

class Failing:
    """A pipeline that crashes on every turn, to make the turn runner log."""

    async def respond(self, conversation: Conversation, message: UserMessage) -> AsyncIterator[Output]:
        raise RuntimeError("the pipeline broke")
        yield  # an async generator  # type: ignore[unreachable]


@pytest.fixture
def json_logs() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved = root.level, list(root.handlers)
    out = io.StringIO()
    logs.configure("INFO", fmt="json", stream=out)
    try:
        yield out
    finally:
        root.handlers[:] = saved[1]
        root.setLevel(saved[0])


async def test_json_logs_carry_the_session_id(servers: Servers, json_logs: io.StringIO) -> None:
    server = await servers.start(Brain(Failing()))
    client = await server.client()
    await client.start()
    await client.say("hello")  # answered with the apology after the crash
    await asyncio.sleep(0.1)
    lines = [json.loads(line) for line in json_logs.getvalue().splitlines()]
    about = [line for line in lines if client.session_id in line["message"] + line.get("exc", "")]
    assert len(about) >= 2  # "started", and the turn runner's report of the crash
    assert all(line.get("session_id") == client.session_id for line in about), about
    crash = next(line for line in about if "the pipeline broke" in line.get("exc", ""))
    assert crash["level"] == "ERROR"
    assert {"ts", "level", "logger", "message"} <= set(crash)


def test_text_format_appends_the_session_id() -> None:
    out = io.StringIO()
    handler = logs.handler(stream=out)
    record = logging.LogRecord("deskmate.x", logging.INFO, __file__, 1, "hello %s", ("there",), None)
    logs.SESSION_ID.set("S-42")
    try:
        handler.handle(record)
    finally:
        logs.SESSION_ID.set(None)
    assert out.getvalue().rstrip().endswith("INFO deskmate.x hello there session_id=S-42")


def test_log_format_setting(tmp_path: Path) -> None:
    from bot.config import from_env
    from bot.errors import ConfigError

    assert from_env({"DESKMATE_LOG_FORMAT": "JSON"}).log_format == "json"
    with pytest.raises(ConfigError, match="DESKMATE_LOG_FORMAT"):
        from_env({"DESKMATE_LOG_FORMAT": "xml"})
