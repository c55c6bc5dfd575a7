"""``deskmate report``: real conversations with the demo shop over the socket, an agent
taking one over, then the report read back from the same Redis prefix."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bot import cli
from bot.brain import Brain
from bot.cli_report import parse_since
from bot.errors import ConfigError
from bot.insights import window_events
from bot.report_html import render
from bot.store import NewEvent, Store
from dialogue.engine import DialogueEngine
from dialogue.insights import ConversationLog, Insights, handoff_category, is_unanswered, resolution
from model.insights import cluster_questions
from tests.conftest import Client, Running, Servers
from tests.test_agent_socket import signed_in

WEATHER = ["what's the weather like in Paris tomorrow", "will it rain in London tomorrow",
           "weather forecast for Berlin this weekend?",
           "is it going to rain in Madrid today?"]
SCRIPT = "<script>alert('x')</script> can you book me a flight to Rome"
FOOTBALL_OLD = "what was the score of the football game yesterday"
FOOTBALL_NEW = "who won the football match last night"


# -- the definitions, on hand-made events ----------------------------------------

@dataclass(frozen=True)
class Ev:
    kind: str
    data: dict[str, Any] = field(default_factory=dict)
    ts: float = 1_750_000_000.0
    event_id: str = "1-0"


def test_handoff_reasons_as_the_engine_writes_them() -> None:
    assert handoff_category("the customer asked (contact_human_agent)") == ("explicit request",
                                                                           "contact_human_agent")
    assert handoff_category("2 negative turns in a row") == ("negative sentiment", None)
    assert handoff_category("2 turns in a row not understood") == ("not understood", None)
    assert handoff_category("an action paused the conversation") == ("action paused", None)
    assert handoff_category("a rule handed over") == ("rule", None)
    assert handoff_category(None) == ("other", None)


def test_resolution_follows_the_handoff_events_and_the_status() -> None:
    asked, joined, left = (Ev("handoff", {"state": s}) for s in ("requested", "agent_joined", "agent_left"))
    assert resolution("bot", [Ev("turn")]) == "bot"
    assert resolution("closed", []) == "bot"  # closed without an agent
    assert resolution("waiting", [asked]) == "unresolved"
    assert resolution("closed", [asked]) == "unresolved"  # closed from the queue, nobody came
    assert resolution("agent", [asked, joined]) == "agent"
    assert resolution("bot", [asked, joined, left]) == "agent"  # handed back after an agent helped
    assert resolution("agent", []) == "agent"  # taken over before the window


def test_unanswered_turns() -> None:
    assert is_unanswered({"policy": "fallback", "intent": "greet", "confidence": 0.9}, 0.3)
    assert is_unanswered({"policy": "knowledge", "intent": "out_of_scope", "confidence": 0.9}, 0.3)
    assert is_unanswered({"policy": "rules", "intent": "greet", "confidence": 0.2}, 0.3)
    assert not is_unanswered({"policy": "rules", "intent": "greet", "confidence": 0.9}, 0.3)
    assert not is_unanswered({"policy": "interrupted", "intent": None, "confidence": None}, 0.3)


def test_clusters_count_repeats_and_show_the_most_typical_questions_first() -> None:
    a, b = np.eye(4, dtype=np.float32)[:2]
    vectors = np.stack([a, a * 0.9 + b * 0.1, b, a * 0.8 + b * 0.2])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    questions = [("a1", 1), ("a2", 3), ("b1", 2), ("a3", 1)]
    clusters = cluster_questions(questions, vectors, distance=0.3, examples=2)
    assert [(c.size, c.distinct) for c in clusters] == [(5, 3), (2, 1)]
    assert clusters[0].examples == ["a2", "a1"] and clusters[1].examples == ["b1"]


def test_since_accepts_durations_dates_and_all() -> None:
    now = 1_750_000_000.0
    assert parse_since("7d", now=now) == now - 7 * 86400
    assert parse_since("90m", now=now) == now - 5400
    assert parse_since("2025-06-02") == 1_748_822_400.0  # UTC midnight
    assert parse_since("2025-06-02T10:00:00+02:00") == 1_748_851_200.0
    assert parse_since("all") is None
    with pytest.raises(Exception, match="--since"):
        parse_since("last week")


def test_since_before_1970_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    # Stream ids start at 0 ms: Redis would refuse the window's first id.
    assert parse_since("1970-01-01") == 0.0
    for early in ("1960-01-01", "1969-12-31T23:59:59+00:00"):
        with pytest.raises(ConfigError, match="before 1970"):
            parse_since(early)
    with pytest.raises(ConfigError, match="before 1970"):
        parse_since("3000w", now=1_750_000_000.0)
    # The CLI says so before it reads anything (no Redis is reachable at that URL).
    assert cli.main(["report", "--since", "1960-01-01", "--redis-url", "redis://127.0.0.1:1/0"]) == 2
    assert "--since: '1960-01-01' is before 1970" in capsys.readouterr().err


async def test_events_of_a_window_that_starts_before_1970(redis_url: str, key_prefix: str) -> None:
    """A window may start before any stream id (a caller other than the CLI): all events."""
    store = Store.from_url(redis_url, prefix=key_prefix)
    try:
        sid, _ = await store.create_session()
        await store.append(sid, [NewEvent("message", {"role": "user", "text": "hi"})])
        events = await window_events(store, sid, since=-86400.0)
        assert [e.data["text"] for e in events] == ["hi"]
    finally:
        await store.close()


def test_an_empty_period_renders() -> None:
    insights = Insights(intent_threshold=0.3, since=1_750_000_000.0, until=1_750_086_400.0)
    insights.add(ConversationLog("s1", "bot", []))  # opened, never written to: not counted
    summary = insights.summary()
    assert summary["totals"]["conversations"] == 0
    assert [d["day"] for d in summary["volume"]] == ["2025-06-15", "2025-06-16"]  # quiet days listed
    report = {**summary, "since": "2025-06-15T15:06:40Z", "until": "2025-06-16T15:06:40Z",
              "generated_at": "now", "prefix": "dm:",
              "unanswered": {"turns": 0, "distinct_questions": 0, "intent_threshold": 0.3,
                             "cluster_distance": 0.65, "clustered": 0, "left_out": 0, "clusters": [],
                             "more_clusters": 0}}
    page = render(report)
    ET.fromstring(page.split("\n", 1)[1])
    assert "<img" not in page and "None in this period" in page


def test_control_characters_a_customer_pasted_keep_the_page_well_formed() -> None:
    """Escaping left "\\x1b" and "\\x0c" in the page: not XML, an HTML parse error."""
    question = "where is my order\x1b[31m ?\x0c\x7f"
    insights = Insights(intent_threshold=0.3, since=1_749_990_000.0, until=1_750_010_000.0)
    insights.add(ConversationLog("s1", "bot", [
        Ev("message", {"role": "user", "text": question}, event_id="1-0"),
        Ev("turn", {"reply_to": "1-0", "intent": "out_of_scope", "policy": "fallback", "confidence": 0.1},
           event_id="2-0")]))
    report = {**insights.summary(), "since": "x", "until": "y", "generated_at": "now", "prefix": "dm:\x00",
              "unanswered": {"turns": 1, "distinct_questions": 1, "intent_threshold": 0.3,
                             "cluster_distance": 0.65, "clustered": 1, "left_out": 0, "more_clusters": 0,
                             "clusters": [{"size": 1, "distinct": 1, "examples": [question]}]}}
    page = render(report)
    ET.fromstring(page.split("\n", 1)[1])
    assert "where is my order\ufffd[31m ?\ufffd\ufffd" in page and "dm:\ufffd" in page


def test_report_files_are_checked_before_the_work_and_replaced_whole(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bot.files import replaced

    common = ["report", "--redis-url", "redis://127.0.0.1:1/0", "--since", "all"]  # never reached
    missing = tmp_path / "nope"
    assert cli.main([*common, "--out", str(missing / "r.html")]) == 2
    assert f"configuration error: --out: {missing}: no such folder" in capsys.readouterr().err
    assert cli.main([*common, "--out", str(tmp_path / "r.html"), "--json", str(missing / "r.json")]) == 2
    assert f"configuration error: --json: {missing}: no such folder" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # the page was not written without its JSON

    page = tmp_path / "r.html"
    page.write_text("last week\n", encoding="utf-8")
    page.chmod(0o640)
    with pytest.raises(KeyboardInterrupt), replaced(page) as out:
        out.write("this we")
        raise KeyboardInterrupt  # half-way: the old page stays whole, nothing is left beside it
    assert page.read_text(encoding="utf-8") == "last week\n" and list(tmp_path.iterdir()) == [page]
    with replaced(page) as out:
        out.write("this week\n")
    assert page.read_text(encoding="utf-8") == "this week\n" and list(tmp_path.iterdir()) == [page]
    assert page.stat().st_mode & 0o777 == 0o640


# -- end to end ----------------------------------------------------------------------

async def chat(server: Running, *texts: str) -> Client:
    client = await server.client()
    await client.start()
    for text in texts:
        await client.say(text)
    return client


async def report(args: list[str], out: Path) -> tuple[dict[str, Any], str]:
    html_path, json_path = out.with_suffix(".html"), out.with_suffix(".json")
    # The CLI runs its own event loop: in a thread, as it would in its own process.
    code = await asyncio.to_thread(cli.main, ["report", *args, "--out", str(html_path),
                                              "--json", str(json_path)])
    assert code == 0
    return json.loads(json_path.read_text()), html_path.read_text()


def cluster_of(data: dict[str, Any], text: str) -> dict[str, Any]:
    return next(c for c in data["unanswered"]["clusters"] if text in c["examples"])


async def test_report_over_real_conversations(
        servers: Servers, key_prefix: str, redis_url: str, shop_actions_env: None, tmp_path: Path,
        shop_parts: tuple[DialogueEngine, Callable[[list[str]], list[dict[str, Any]]]]) -> None:
    engine, understand = shop_parts
    running = await servers.start(Brain(engine, understand), project=engine.project.path)

    await chat(running, "hi", FOOTBALL_OLD)  # before the --since cut below
    await asyncio.sleep(0.05)
    cut = time.time()
    await asyncio.sleep(0.05)

    await chat(running, "hi", SCRIPT, "I'm looking for black sneakers size 42", "thanks, bye")
    closed = await chat(running, WEATHER[0], "how do I return an item")
    await chat(running, WEATHER[1], WEATHER[2])  # not understood twice: handed over, waiting
    human = await chat(running, "hi", "I want to speak to a real person please")
    await chat(running, "this is terrible, I am furious, worst shop ever")  # a complaint hands over
    await chat(running, WEATHER[3], "hi", FOOTBALL_NEW)
    agent = await signed_in(running, "anna")
    assert (await agent.act({"type": "takeover", "session_id": human.session_id}))["type"] == "ok"
    assert (await agent.act({"type": "close", "session_id": closed.session_id}))["type"] == "ok"

    common = ["--redis-url", redis_url, "--prefix", key_prefix, "--project", str(engine.project.path)]
    data, page = await report([*common, "--since", "all"], tmp_path / "all")

    assert data["totals"]["conversations"] == 7
    assert data["totals"]["customer_messages"] == 16
    # Agent: taken over. Unresolved: still waiting. Bot: the rest, the one an agent closed
    # without taking it over included.
    assert data["resolution"] == {"bot": 4, "agent": 1, "unresolved": 2}
    assert data["totals"]["handoffs"] == 3 and data["totals"]["handoff_rate"] == round(3 / 7, 4)
    assert data["handoff_reasons"] == {"explicit request": 2, "not understood": 1}
    assert data["handoff_requested_by_intent"] == {"complaint": 1, "contact_human_agent": 1}
    intents = {i["intent"]: i["turns"] for i in data["intents"]}
    assert intents["greet"] == 4 and intents["out_of_scope"] == 7
    assert data["policies"]["fallback"] == 7 and data["policies"]["handoff"] == 2
    complaint = next(i for i in data["sentiment_by_intent"] if i["intent"] == "complaint")
    assert complaint["counts"]["negative"] == 1 and complaint["mean_score"] < 0
    assert sum(d["customer_messages"] for d in data["volume"]) == 16
    assert sum(sum(d["counts"].values()) for d in data["sentiment_by_day"]) == data["totals"]["turns"]

    # The unanswered questions: the four weather questions together, largest first; the two
    # football questions together; the flight question on its own.
    clusters = data["unanswered"]["clusters"]
    assert data["unanswered"]["turns"] == 7
    assert [(c["size"], c["distinct"]) for c in clusters] == [(4, 4), (2, 2), (1, 1)]
    assert len(clusters[0]["examples"]) == 3 and set(clusters[0]["examples"]) <= set(WEATHER)
    assert set(clusters[1]["examples"]) == {FOOTBALL_OLD, FOOTBALL_NEW}
    assert clusters[2]["examples"] == [SCRIPT]

    # One well-formed, self-contained page; what the customer typed is text, not markup.
    ET.fromstring(page.split("\n", 1)[1])
    assert "<script" not in page.lower() and "&lt;script&gt;alert(&#x27;x&#x27;)" in page
    assert not re.search(r"(?:src|href)=\"(?!data:image/png;base64,)", page)
    assert "<link" not in page and "url(" not in page and "@import" not in page
    images = re.findall(r"src=\"data:image/png;base64,([A-Za-z0-9+/=]+)\"", page)
    assert len(images) == 5  # volume, sentiment by day, by intent, top intents, handoff reasons
    assert all(base64.b64decode(i).startswith(b"\x89PNG") for i in images)

    # --since: only what happened after the cut.
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(cut)) + f".{int(cut % 1 * 1e6):06d}+00:00"
    recent, _ = await report([*common, "--since", since], tmp_path / "recent")
    assert recent["totals"]["conversations"] == 6 and recent["totals"]["customer_messages"] == 14
    assert recent["resolution"] == {"bot": 3, "agent": 1, "unresolved": 2}
    assert recent["totals"]["handoff_rate"] == 0.5
    assert cluster_of(recent, FOOTBALL_NEW)["size"] == 1
    assert not any(FOOTBALL_OLD in c["examples"] for c in recent["unanswered"]["clusters"])
