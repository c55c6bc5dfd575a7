"""Learning from agents, end to end: real servers on one real Redis, the demo shop's engine
with its trained classifier and encoder, real customer and console sockets.

A question the bot cannot answer, answered by an agent, becomes a proposal; once an agent
approves it, every instance answers it from knowledge at once (no restart), and a new
instance loads it at start. The rules for which message was the question are tested
without I/O at the end."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed

from bot.agents import Agents
from bot.learning import pick_question, proposal_id, unread
from bot.server import Brain
from bot.store import Event
from tests.conftest import Client, Running, Servers
from tests.test_agent_socket import Console, console, customer, signed_in

Frame = dict[str, Any]

QUESTION = "do you offer gift wrapping?"
ANSWER = "Yes, gift wrapping costs €3.50 and you can choose it at checkout."
PARAPHRASE = "can you gift wrap my order?"


@pytest.fixture(scope="module")
def shop_classifier(trained_shop: Path) -> Any:
    from model.classifier import load_project_classifier

    return load_project_classifier(trained_shop)


@pytest.fixture
def shop_brain(trained_shop: Path, shop_classifier: Any, shop_actions_env: None) -> Callable[[], Brain]:
    """Factory: the demo shop's brain as ``deskmate run`` builds it (no language model), with
    an engine and knowledge index of its own per call: one per server instance, as in
    production, so that what one instance learns reaches another only through Redis."""
    from bot.brain import build_engine
    from dialogue.project import load_project

    def make() -> Brain:
        engine = build_engine(load_project(trained_shop), embed=shop_classifier.embed,
                              embedding_id=shop_classifier.embedding_id)
        return Brain(engine, functools.partial(shop_classifier.parse_batch, vectors=True),
                     embed=shop_classifier.embed)

    return make


async def reviewing(server: Running, name: str, role: str = "agent") -> tuple[Console, list[Frame]]:
    """A console signed in as ``name`` that follows the proposals; (console, pending list)."""
    agent = await signed_in(server, name, role)
    await agent.send({"type": "proposals"})
    listing = (await agent.until(lambda f: f["type"] == "proposals"))[-1]
    assert listing["enabled"] is True, listing
    return agent, listing["proposals"]


async def proposals(agent: Console) -> list[Frame]:
    await agent.send({"type": "proposals"})
    return (await agent.until(lambda f: f["type"] == "proposals"))[-1]["proposals"]


async def answered(agent: Console, sid: str, text: str) -> None:
    """``agent`` takes ``sid`` over (if not theirs yet) and says ``text``."""
    assert (await agent.act({"type": "takeover", "session_id": sid}))["type"] == "ok"
    ack = await agent.act({"type": "send", "session_id": sid, "client_id": f"c{time.time_ns()}",
                           "text": text})
    assert ack["type"] == "ack", ack


async def question_answered(server: Running) -> str:
    """A customer asks QUESTION and Anna answers it with ANSWER; the proposal's id."""
    anna = await signed_in(server, "anna")
    shopper = await customer(server, None)
    await shopper.say(QUESTION)
    assert shopper.session_id
    await answered(anna, shopper.session_id, ANSWER)
    return proposal_id(shopper.session_id, QUESTION)


async def proposal_frame(agent: Console, kind: str = "proposal") -> Frame:
    return (await agent.until(lambda f: f["type"] == kind))[-1]["proposal"]


async def writes(client: Client, text: str) -> None:
    """The customer writes while a person has the conversation (the bot stays quiet)."""
    await client.send({"type": "message", "client_id": f"c{time.time_ns()}", "text": text})
    await client.until(lambda f: f["type"] == "ack")


def reply(frames: list[Frame]) -> Frame:
    """The bot's reply among a customer's frames: a stream's end, or a stored message."""
    return [f for f in frames if f["type"] == "stream_end"
            or (f["type"] == "message" and f.get("role") == "bot")][-1]


async def knows(server: Running, entry_id: str, timeout: float = 10.0) -> None:
    """Wait until ``server``'s knowledge index holds ``entry_id`` (learned from Redis)."""
    deadline = time.monotonic() + timeout
    while True:
        index = server.app.learning.pipeline.knowledge
        if index is not None and any(e.id == entry_id for e in index.entries):
            return
        assert time.monotonic() < deadline, f"{entry_id} never reached the index"
        await asyncio.sleep(0.05)


async def asks(server: Running, text: str) -> Frame:
    """A new customer on ``server`` asks ``text``; the bot's reply."""
    client = await server.client()
    await client.start()
    _, frames = await client.say(text)
    return reply(frames)


async def turn_of(agent: Console, sid: str, text: str) -> Frame:
    """The stored turn analysis of the customer message ``text`` in ``sid``."""
    events = await agent.watch(sid)
    message = next(f for f in events if f["type"] == "message" and f.get("text") == text)
    await agent.send({"type": "unwatch", "session_id": sid})
    return next(f for f in events if f["type"] == "turn" and f["reply_to"] == message["event_id"])


# -- the whole loop --------------------------------------------------------------------

async def test_an_approved_answer_is_used_by_every_instance_at_once(
        servers: Servers, shop_brain: Callable[[], Brain]) -> None:
    a, b = await servers.start(brain=shop_brain()), await servers.start(brain=shop_brain())
    reviewer, pending = await reviewing(a, "rita")
    assert pending == []

    # A customer on A asks what the shop's knowledge does not cover: the bot falls back,
    # then hands over when asked.
    shopper = await customer(a, None)
    _, frames = await shopper.say(QUESTION)
    assert not reply(frames)["sources"]
    await shopper.say("I want to talk to a person")
    sid = shopper.session_id
    assert sid is not None

    # An agent on B answers; the proposal reaches the reviewer on A live.
    anna = await signed_in(b, "anna")
    assert (await turn_of(anna, sid, QUESTION))["policy"] == "fallback"
    await answered(anna, sid, ANSWER)
    proposal = await proposal_frame(reviewer)
    pid = proposal_id(sid, QUESTION)
    assert proposal == {
        "id": pid, "session_id": sid, "message_id": proposal["message_id"], "question": QUESTION,
        "answer": ANSWER, "agent": "anna", "status": "pending", "reviewed_by": None,
        "created_at": proposal["created_at"], "updated_at": proposal["created_at"],
        "reviewed_at": None, "rev": 1}
    assert await proposals(reviewer) == [proposal]  # the list, as published

    # Before approval the bot still cannot answer the paraphrase.
    before = await asks(b, PARAPHRASE)
    assert before["text"] != ANSWER and not before["sources"]

    # Approved (with the question tidied up): live on A before `ok`, on B moments later.
    await reviewer.send({"type": "approve", "proposal_id": pid, "question": "Do you offer gift wrapping?",
                         "answer": ANSWER})
    seen = await reviewer.until(lambda f: f["type"] in ("ok", "error"))
    assert seen[-1] == {"type": "ok", "action": "approve", "proposal_id": pid,
                        "entry_id": f"agents/{pid}"}
    # The update is published by the approving write, so it may come before or after `ok`.
    updates = [f for f in seen if f["type"] == "proposal_update"]
    update = updates[0] if updates else (await reviewer.until(lambda f: f["type"] == "proposal_update"))[-1]
    assert update["proposal"]["status"] == "approved" and update["proposal"]["reviewed_by"] == "rita"
    assert update["proposal"]["question"] == "Do you offer gift wrapping?"
    assert update["entry"]["source"] == f"agents/{pid}"
    assert await proposals(reviewer) == []
    await knows(b, f"agents/{pid}")

    for instance in (b, a):
        answer = await asks(instance, PARAPHRASE)
        assert answer["text"] == ANSWER
        assert [s["source"] for s in answer["sources"]] == [f"agents/{pid}"]

    # A new instance (a restart) loads it from Redis before taking turns.
    c = await servers.start(brain=shop_brain())
    answer = await asks(c, PARAPHRASE)
    assert answer["text"] == ANSWER and answer["sources"][0]["source"] == f"agents/{pid}"

    # Not proposed: what the bot answered (a rule), and small talk while a person has the
    # conversation (the classifier understands it: the bot could have answered it).
    other = await customer(a, "how much is shipping?")
    assert other.session_id
    await answered(anna, other.session_id, "Standard shipping is €4.95.")
    await writes(shopper, "ok, thanks a lot")
    await answered(anna, sid, "You're welcome!")
    assert [f for f in await reviewer.quiet(1.0) if f["type"].startswith("proposal")] == []
    assert await proposals(reviewer) == []


async def test_one_proposal_per_question_and_rejecting_removes_it(
        servers: Servers, shop_brain: Callable[[], Brain]) -> None:
    server = await servers.start(brain=shop_brain())
    reviewer, _ = await reviewing(server, "rita")
    anna = await signed_in(server, "anna")
    shopper = await customer(server, None)
    await shopper.say("do you sell gift cards?")
    sid = shopper.session_id
    assert sid is not None
    assert (await turn_of(anna, sid, "do you sell gift cards?"))["policy"] == "fallback"

    # A greeting and the answer in two messages: one proposal, its answer both messages.
    await answered(anna, sid, "Hi, I'm Anna.")
    first = await proposal_frame(reviewer)
    await answered(anna, sid, "No, we don't sell gift cards at the moment.")
    second = await proposal_frame(reviewer)
    assert second["id"] == first["id"] and second["rev"] == 2
    assert second["answer"] == "Hi, I'm Anna.\n\nNo, we don't sell gift cards at the moment."

    # Rejected: gone from the list, and the same question is never proposed again.
    await reviewer.send({"type": "reject", "proposal_id": first["id"]})
    seen = await reviewer.until(lambda f: f["type"] in ("ok", "error"))
    assert seen[-1] == {"type": "ok", "action": "reject", "proposal_id": first["id"]}
    updates = [f for f in seen if f["type"] == "proposal_update"]
    update = (updates[0] if updates else (await reviewer.until(
        lambda f: f["type"] == "proposal_update"))[-1])["proposal"]
    assert update["status"] == "rejected" and update["reviewed_by"] == "rita" and update["rev"] == 3
    assert await proposals(reviewer) == []
    await writes(shopper, "Do you sell  GIFT cards?")  # the same question, asked again
    await answered(anna, sid, "Still no, sorry.")
    assert [f for f in await reviewer.quiet(1.0) if f["type"].startswith("proposal")] == []
    assert "gift cards" not in str(server.app.learning.pipeline.knowledge.entries)

    # Decided once: a second decision, or one on an unknown id, is refused.
    again = await reviewer.act({"type": "approve", "proposal_id": first["id"], "question": "q a",
                                "answer": "a"})
    assert again["code"] == "already_reviewed" and again["proposal_id"] == first["id"]
    unknown = await reviewer.act({"type": "reject", "proposal_id": "0123456789abcdef"})
    assert unknown["code"] == "unknown_proposal"
    for bad in ({"type": "reject", "proposal_id": "../x"}, {"type": "reject"},
                {"type": "approve", "proposal_id": first["id"], "question": " ", "answer": "a"}):
        assert (await reviewer.act(bad))["code"] in ("bad_field", "missing_field"), bad


async def test_reviews_need_a_live_login(servers: Servers, shop_brain: Callable[[], Brain]) -> None:
    server = await servers.start(brain=shop_brain())
    pid = await question_answered(server)

    # Not signed in: the first frame must sign in.
    stranger = await console(server)
    await stranger.send({"type": "proposals"})
    assert (await stranger.recv())["code"] == "unauthorized"
    with pytest.raises(ConnectionClosed):
        await stranger.recv()
    assert stranger.ws.close_code == 4401

    # Revoked while the console is open (password reset): the approval is refused.
    reviewer, pending = await reviewing(server, "rita")
    assert [p["id"] for p in pending] == [pid]
    await Agents(server.app.store.redis, server.app.store.keys).reset("rita")
    await reviewer.send({"type": "approve", "proposal_id": pid, "question": QUESTION, "answer": ANSWER})
    refused = await reviewer.until(lambda f: f["type"] == "error")
    assert refused[-1]["code"] == "unauthorized"
    with pytest.raises(ConnectionClosed):
        await reviewer.until(lambda f: False)
    assert reviewer.ws.close_code == 4401
    _, pending = await reviewing(server, "ines")  # still waiting for a review
    assert [p["id"] for p in pending] == [pid]
    assert f"agents/{pid}" not in {e.id for e in server.app.learning.pipeline.knowledge.entries}


async def test_a_project_without_knowledge_gets_an_index(
        servers: Servers, shop_brain: Callable[[], Brain]) -> None:
    brain = shop_brain()
    brain.pipeline.knowledge = None  # as a project without knowledge/ builds it
    server = await servers.start(brain=brain)
    pid = await question_answered(server)
    reviewer, pending = await reviewing(server, "rita")
    assert [p["id"] for p in pending] == [pid]
    ok = await reviewer.act({"type": "approve", "proposal_id": pid, "question": QUESTION, "answer": ANSWER})
    assert ok["type"] == "ok", ok
    assert len(brain.pipeline.knowledge) == 1
    assert (await asks(server, PARAPHRASE))["text"] == ANSWER


async def test_without_an_encoder_learning_is_off(server: Running) -> None:
    # The socket tests' bot reads intents by example matching: no encoder to embed entries.
    agent = await signed_in(server, "anna")
    await agent.send({"type": "proposals"})
    assert (await agent.recv()) == {"type": "proposals", "enabled": False, "proposals": []}
    refused = await agent.act({"type": "reject", "proposal_id": "0123456789abcdef"})
    assert refused["code"] == "learning_off"


async def test_a_listing_during_another_one_is_sent_too(server: Running,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A resync (pub/sub reconnected) lists the proposals again in the background, maybe
    while the console's own `proposals` is still being read: both lists arrive."""
    learning = server.app.learning
    # The socket tests' bot has no encoder; listing needs none (nothing here learns).
    monkeypatch.setattr(learning, "enabled", True)
    read_pending, reading, release = learning.pending, asyncio.Event(), asyncio.Event()

    async def slow_pending(*args: Any, **kwargs: Any) -> list[Frame]:
        if not reading.is_set():  # the first listing waits for the test
            reading.set()
            await release.wait()
        return await read_pending(*args, **kwargs)

    monkeypatch.setattr(learning, "pending", slow_pending)
    channel = server.app.store.keys.knowledge_channel()
    resynced = asyncio.Event()
    await server.app.hub.subscribe(channel, lambda f: resynced.set() if f["type"] == "resync" else None)
    agent = await signed_in(server, "anna")
    await agent.send({"type": "proposals"})
    await reading.wait()
    # What listeners get when the hub's pub/sub connection comes back.
    await server.app.store.redis.publish(channel, '{"type": "resync"}')
    await resynced.wait()  # the console's listener had it in the same dispatch: its listing started
    release.set()
    listings = [await agent.until(lambda f: f["type"] == "proposals") for _ in range(2)]
    assert [frames[-1]["proposals"] for frames in listings] == [[], []]
    await agent.send({"type": "sessions"})  # still open
    assert (await agent.until(lambda f: f["type"] == "sessions"))[-1]["type"] == "sessions"


# -- the insights page -----------------------------------------------------------------

async def test_admins_get_the_insights_report(servers: Servers, shop_brain: Callable[[], Brain]) -> None:
    server = await servers.start(brain=shop_brain())
    shopper = await customer(server, None)
    await shopper.say(QUESTION)
    agent = await signed_in(server, "anna")
    assert (await agent.act({"type": "report", "since": "7d"}))["code"] == "forbidden"

    admin = await signed_in(server, "root", "admin")
    assert (await admin.act({"type": "report", "since": "yesterday-ish"}))["code"] == "bad_field"
    await admin.send({"type": "report", "since": "24h"})
    report = (await admin.until(lambda f: f["type"] in ("report", "error"), timeout=60))[-1]
    assert report["type"] == "report" and report["since"] == "24h", report
    assert report["conversations"] == 1
    assert report["html"].startswith("<!DOCTYPE html>") and "<script" not in report["html"]
    assert QUESTION in report["html"]  # among the questions the bot did not understand


# -- which message was the question (no I/O) ------------------------------------------

_ids = iter(range(1, 10_000))


def message(role: str, text: str, **extra: Any) -> Event:
    return Event(f"{next(_ids)}-0", "message", 0.0, {"role": role, "text": text, **extra})


def turn(of: Event, policy: str, intent: str = "out_of_scope") -> Event:
    return Event(f"{next(_ids)}-0", "turn", 0.0, {"reply_to": of.event_id, "policy": policy,
                                                  "intent": intent})


def test_the_question_is_the_earliest_the_bot_could_not_answer() -> None:
    hi, asked = message("user", "hi there"), message("user", QUESTION)
    again = message("user", "anyone there?")
    events = [hi, turn(hi, "rules", "greet"), message("bot", "Hello!"),
              asked, turn(asked, "fallback"), message("bot", "Not sure."),
              again, turn(again, "fallback"), message("bot", "Handing over."),
              message("system", "anna joined the chat."),
              message("agent", "Hi!", agent="anna"), message("agent", ANSWER, agent="anna")]
    found = pick_question(events)
    assert found is not None
    assert found.question == asked and found.answer == f"Hi!\n\n{ANSWER}" and found.agent == "anna"


def test_questions_asked_while_a_person_has_the_conversation() -> None:
    person = message("user", "I want a person")
    # No turns: the bot stays quiet while the customer waits for a person.
    thanks, waiting = message("user", "ok, thanks a lot"), message("user", QUESTION)
    events = [person, turn(person, "handoff", "contact_human_agent"), thanks, waiting,
              message("user", "hello?"), message("agent", ANSWER, agent="anna")]
    assert unread(events) == [thanks, waiting]  # "hello?" is too short to be a question
    # What the classifier made of them decides; without a reading, both count (less surely).
    for readings, expected in (({thanks.event_id: False, waiting.event_id: True}, waiting),
                               ({}, thanks), ({thanks.event_id: True}, thanks)):
        found = pick_question(events, readings)
        assert found is not None and found.question == expected, readings
    # Understood (small talk): only the request for a person is left, the least sure kind.
    found = pick_question(events, {thanks.event_id: False, waiting.event_id: False})
    assert found is not None and found.question == person


def test_nothing_is_proposed_when_the_bot_answered() -> None:
    asked = message("user", "how much is shipping?")
    answered_turn = turn(asked, "rules", "delivery_options")
    assert pick_question([asked, answered_turn, message("agent", "€4.95", agent="anna")]) is None
    button = message("user", "Talk to a human", payload="/contact_human_agent")
    assert pick_question([button, message("agent", "Hi", agent="anna")]) is None
    # Questions before the previous agent answer were answered then.
    old = message("user", QUESTION)
    events = [old, turn(old, "fallback"), message("agent", ANSWER, agent="anna"),
              message("user", "thanks a lot"), message("agent", "You're welcome!", agent="anna")]
    assert pick_question(events, {events[3].event_id: False}) is None
    assert pick_question(events[:3]) is not None
    assert pick_question([]) is None and pick_question([message("user", QUESTION)]) is None


def test_proposal_ids_ignore_case_and_spacing() -> None:
    assert proposal_id("s1", "Do you  offer GIFT wrapping?") == proposal_id("s1", QUESTION)
    assert proposal_id("s2", QUESTION) != proposal_id("s1", QUESTION)
