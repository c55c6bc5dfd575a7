"""The dialogue engine end to end: rasa-sdk action events applied in Redis, handoff over
the socket, grounded generation with its fallbacks, and the engine's policy order."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import redis

from bot.actions import open_action_runner
from bot.brain import Brain
from dialogue.engine import ACTION_DOWN, DialogueEngine
from dialogue.entities import EntityExtractor
from dialogue.generate import Writer
from dialogue.project import load_project
from dialogue.types import Conversation, HistoryItem, StreamedReply, TurnAnalysis, UserMessage
from model.lm import PromptBuilder, approx_tokens
from tests.conftest import ROOT, Servers

EVENTBOT = ROOT / "tests" / "fixtures" / "eventbot"


def event_engine() -> DialogueEngine:
    project = load_project(EVENTBOT)
    return DialogueEngine(project, entities=EntityExtractor.for_project(project),
                          actions=open_action_runner(EVENTBOT, None))


def session(sync_redis: redis.Redis, prefix: str, sid: str) -> dict[str, str]:
    return dict(sync_redis.hgetall(f"{prefix}s:{{{sid}}}"))  # the fixture decodes responses


def bot_texts(frames: list[dict[str, Any]]) -> list[str]:
    return [f["text"] for f in frames if f["type"] == "stream_end"]


async def test_action_events_change_the_conversation_in_redis(
        servers: Servers, sync_redis: redis.Redis, key_prefix: str) -> None:
    running = await servers.start(Brain(event_engine()), project=EVENTBOT)
    client = await running.client()
    await client.start()
    sid = client.session_id or ""

    _, frames = await client.say("set my colour please")  # SlotSet x2 + a templated response
    assert bot_texts(frames) == ["Your colour is teal."]
    assert json.loads(session(sync_redis, key_prefix, sid)["slots"]) == {"colour": "teal", "size": "M"}

    _, frames = await client.say("run the follow up")  # text + buttons, then FollowupAction
    assert bot_texts(frames) == [f"Following up for {sid[:4]}…", "This came from a follow-up action."]
    ends = [f for f in frames if f["type"] == "stream_end"]
    assert ends[0]["buttons"] == [{"title": "Again", "payload": "/follow_up"}]

    _, frames = await client.say("reset everything")  # AllSlotsReset
    assert bot_texts(frames) == ["Forgotten."]
    assert json.loads(session(sync_redis, key_prefix, sid)["slots"]) == {"colour": None, "size": None}

    _, frames = await client.say("pause the bot")  # ConversationPaused: handed to a human
    assert "Pausing; a person will take it from here." in bot_texts(frames)
    record = session(sync_redis, key_prefix, sid)
    assert record["status"] == "waiting" and "paused" in record["handoff_reason"]
    assert any(f["type"] == "handoff" and f["state"] == "requested" for f in frames)
    await client.send({"type": "message", "client_id": "after-pause", "text": "hello?"})
    later = await client.quiet(1.0)
    # Stored (and echoed to the customer's other tabs), and the bot stays quiet.
    assert [(f["type"], f.get("role")) for f in later] == [("ack", None), ("message", "user")], later


async def test_a_failing_action_is_reported_and_the_conversation_goes_on(servers: Servers) -> None:
    running = await servers.start(Brain(event_engine()), project=EVENTBOT)
    client = await running.client()
    await client.start()
    _, frames = await client.say("crash the action")
    assert bot_texts(frames) == [ACTION_DOWN]
    _, frames = await client.say("set my colour please")
    assert bot_texts(frames) == ["Your colour is teal."]


async def test_asking_for_a_human_hands_over_over_the_socket(
        servers: Servers, sync_redis: redis.Redis, key_prefix: str, shop_actions_env: None,
        shop_parts: tuple[DialogueEngine, Callable[[list[str]], list[dict[str, Any]]]]) -> None:
    engine, understand = shop_parts
    running = await servers.start(Brain(engine, understand), project=engine.project.path)
    client = await running.client()
    await client.start()
    _, frames = await client.say("I want to speak to a real person please")
    handoff = [f for f in frames if f["type"] == "handoff"]
    assert handoff and handoff[0]["state"] == "requested"
    assert any("colleague" in t for t in bot_texts(frames))  # the customer is told what happens
    record = session(sync_redis, key_prefix, client.session_id or "")
    assert record["status"] == "waiting" and record.get("waiting_since")
    turns = [json.loads(v["data"]) for _, v in sync_redis.xrange(
        f"{key_prefix}s:{{{client.session_id}}}:ev") if v["kind"] == "turn"]
    assert turns[-1]["intent"] == "contact_human_agent" and turns[-1]["policy"] == "handoff"


class ScriptedModel:
    """Stands in for a language model where a test needs one particular answer (a made-up
    price, a hang) that the real small model cannot be made to give on demand."""

    name = "scripted"

    def __init__(self, text: str = "", *, hang: bool = False) -> None:
        self.text = text
        self.hang = hang
        self.closed = False

    async def stream(self, messages: Sequence[Any], **_: Any) -> AsyncIterator[str]:
        try:
            if self.hang:
                await asyncio.sleep(3600)
            for word in self.text.split(" "):
                yield word + " "
        finally:
            self.closed = True


def writer(model: Any, **lm: Any) -> Writer:
    config = {"persona": {"name": "Nora", "shop_name": "Northwind Threads"},
              "language_model": {"first_token_timeout": 0.5, "chunk_timeout": 0.5, **lm}}
    return Writer(model, PromptBuilder(approx_tokens), config)


async def answer(engine: DialogueEngine, text: str, nlu: dict[str, Any] | None = None,
                 ) -> tuple[str, TurnAnalysis]:
    conv = Conversation("s1", "bot", history=[HistoryItem("user", "hi"), HistoryItem("bot", "Hello!")])
    reply, analysis = "", None
    async for out in engine.respond(conv, UserMessage("1-1", text, None, nlu)):
        if isinstance(out, StreamedReply):
            reply = "".join([c async for c in out.chunks])
        elif isinstance(out, TurnAnalysis):
            analysis = out
    assert analysis is not None
    return reply.strip(), analysis


def chit_chat_engine(tmp_path: Path, model: Any) -> DialogueEngine:
    project = load_project(ROOT / "tests" / "fixtures" / "tinybot")
    project.config = {"generative": {"intents": ["greet"]}}
    return DialogueEngine(project, writer=writer(model))


async def test_a_generated_reply_that_invents_a_fact_is_replaced(tmp_path: Path) -> None:
    model = ScriptedModel("Hello there! Today everything costs only €3.50 for you.")
    engine = chit_chat_engine(tmp_path, model)
    reply, analysis = await answer(engine, "hello", {"intent": "greet", "confidence": 0.99})
    # The first sentence has no facts and is kept; the made-up price stops the reply.
    assert reply == "Hello there!"
    assert "€3.50" in analysis.reason and model.closed


async def test_a_reply_with_nothing_grounded_falls_back_to_the_rule(tmp_path: Path) -> None:
    engine = chit_chat_engine(tmp_path, ScriptedModel("Shipping is free for 90 days on every order."))
    reply, analysis = await answer(engine, "hello", {"intent": "greet", "confidence": 0.99})
    assert reply == "Hello! How can I help you today?"  # the greet rule's response
    assert analysis.policy == "generative+fallback"


async def test_a_model_that_hangs_times_out_to_the_fallback(tmp_path: Path) -> None:
    model = ScriptedModel(hang=True)
    engine = chit_chat_engine(tmp_path, model)
    reply, analysis = await asyncio.wait_for(
        answer(engine, "hello", {"intent": "greet", "confidence": 0.99}), 10)
    assert reply == "Hello! How can I help you today?"
    assert "timed out" in analysis.reason and model.closed


async def test_low_confidence_without_knowledge_says_not_sure_then_hands_over() -> None:
    project = load_project(ROOT / "tests" / "fixtures" / "tinybot")
    project.config = {"handoff": {"low_confidence_turns": 2}}
    engine = DialogueEngine(project)
    conv = Conversation("s2", "bot")
    outs: list[list[Any]] = []
    for text in ("zxq qqq", "blorp vlip"):
        outs.append([o async for o in engine.respond(conv, UserMessage("1-1", text))])
        state = next(o for o in outs[-1] if type(o).__name__ == "StateUpdate").state
        conv = Conversation("s2", "bot", state=state)
    names = [[type(o).__name__ for o in turn] for turn in outs]
    assert "Handoff" not in names[0] and "Handoff" in names[1]


def glue_engine(model: Any) -> DialogueEngine:
    from dialogue.knowledge import KnowledgeEntry, KnowledgeIndex

    project = load_project(ROOT / "tests" / "fixtures" / "tinybot")
    project.config = {"generative": {"knowledge_glue": True}, "thresholds": {"knowledge": 0.5}}
    entry = KnowledgeEntry("returns", "Can I return things?",
                           "You can return items within 30 days of delivery, free of charge.",
                           "knowledge/faq.yml#returns")
    index = KnowledgeIndex([entry], [[1.0, 0.0, 0.0]])
    return DialogueEngine(project, knowledge=index, writer=writer(model))


async def glue_answer(engine: DialogueEngine) -> tuple[str, TurnAnalysis]:
    reply, analysis = "", None
    message = UserMessage("1-2", "can i send stuff back", None, {"intent": "out_of_scope", "confidence": 0.9},
                          [0.9, 0.1, 0.0])
    async for out in engine.respond(Conversation("s3", "bot"), message):
        if isinstance(out, StreamedReply):
            reply = "".join([c async for c in out.chunks])
            assert out.sources and out.sources[0]["id"] == "returns"
        elif isinstance(out, TurnAnalysis):
            analysis = out
    assert analysis is not None
    return reply.strip(), analysis


async def test_knowledge_glue_keeps_grounded_words() -> None:
    engine = glue_engine(ScriptedModel("Good question! You can return items within 30 days of delivery."))
    reply, analysis = await glue_answer(engine)
    assert reply == "Good question! You can return items within 30 days of delivery."
    assert analysis.policy == "knowledge" and analysis.sources == ["knowledge/faq.yml#returns"]


async def test_knowledge_glue_that_changes_the_policy_is_replaced_by_the_entry() -> None:
    engine = glue_engine(ScriptedModel("You can return items within 60 days, and we refund shipping too."))
    reply, analysis = await glue_answer(engine)
    assert reply == "You can return items within 30 days of delivery, free of charge."
    assert "60 days" in analysis.reason


async def test_recommendations_remember_what_a_known_customer_viewed_before(
        servers: Servers, shop_actions_env: None,
        shop_parts: tuple[DialogueEngine, Callable[[list[str]], list[dict[str, Any]]]]) -> None:
    engine, understand = shop_parts
    running = await servers.start(Brain(engine, understand), project=engine.project.path)

    async def conversation(customer: dict[str, Any] | None) -> Any:
        client = await running.client()
        await client.send({"type": "start", "session_id": None, "token": None, "after": None,
                           "customer": customer})
        assert (await client.recv())["type"] == "session"
        return client

    first = await conversation({"id": "c-42", "name": "Anna"})
    for pid in ("P1004", "P1004", "P1003"):  # sneakers, as the host page reports views
        await first.send({"type": "track", "name": "view_product", "data": {"product_id": pid}})
    await first.say("hi")  # a turn reads the profile and keeps it for the customer

    later = await conversation({"id": "c-42"})
    _, frames = await later.say("can you recommend something for me?")
    cards = next(f for f in frames if f["type"] == "stream_end")["cards"]
    assert cards and any("you viewed" in c["subtitle"] for c in cards), cards

    stranger = await conversation(None)
    _, frames = await stranger.say("can you recommend something for me?")
    cards = next(f for f in frames if f["type"] == "stream_end")["cards"]
    assert not any("you viewed" in c["subtitle"] for c in cards), cards


async def test_a_knowledge_answer_reaches_the_customer_with_its_source(
        servers: Servers, shop_actions_env: None,
        shop_parts: tuple[DialogueEngine, Callable[[list[str]], list[dict[str, Any]]]]) -> None:
    engine, understand = shop_parts
    running = await servers.start(Brain(engine, understand), project=engine.project.path)
    client = await running.client()
    await client.start()
    _, frames = await client.say("how do I use a voucher code")
    end = next(f for f in frames if f["type"] == "stream_end")
    assert end["sources"] and end["sources"][0]["source"] == "knowledge/faq.yml#vouchers"
    later = await running.client()  # a reload replays the stored message with its source
    await later.start(client.session_id, client.token)
    replayed = await later.until(lambda f: f["type"] == "message" and f.get("role") == "bot")
    assert replayed[-1]["sources"] == end["sources"]


async def test_a_rambling_model_is_cut_at_a_repeat_and_at_three_sentences(tmp_path: Path) -> None:
    engine = chit_chat_engine(tmp_path, ScriptedModel("Hi there! I can help. I can help. I can help."))
    reply, _ = await answer(engine, "hello", {"intent": "greet", "confidence": 0.99})
    assert reply == "Hi there! I can help."
    rambling = ScriptedModel("One moment. Sure thing. Happy to help. Anything else?")
    engine = chit_chat_engine(tmp_path, rambling)
    reply, _ = await answer(engine, "hello", {"intent": "greet", "confidence": 0.99})
    assert reply == "One moment. Sure thing. Happy to help."
