"""Responses rendered as Rasa 3 renders them (rasa/core/nlg/response.py, generator.py's
``ResponseVariationFilter``, interpolator.py): channel variations, the filter's order,
casefolded conditions, ``{slot}`` in every part of a variation, a placeholder that cannot
be filled said as written, images, and custom payloads the web widget cannot show.

tests/fixtures/responses_bot runs through the engine with its example matcher (no
classifier); dispatcher messages are made by rasa-sdk's own ``CollectingDispatcher``.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from rasa_sdk.executor import CollectingDispatcher

from dialogue.engine import DialogueEngine
from dialogue.responses import Responses, fill
from dialogue.types import Conversation, Reply, UserMessage
from tests.conftest import ROOT, tiny_engine

RESPONSES_BOT = ROOT / "tests" / "fixtures" / "responses_bot"
SEEDS = [str(n) for n in range(40)]
PREMIUM = [{"type": "slot", "name": "tier", "value": "premium"}]


def said(responses: Responses, name: str, slots: dict[str, Any] | None = None) -> set[str]:
    """Every text ``name`` says over many seeds."""
    out = set()
    for seed in SEEDS:
        reply = responses.render(name, slots or {}, seed)
        assert reply is not None
        out.add(reply.text)
    return out


async def replies(engine: DialogueEngine, text: str, slots: dict[str, Any] | None = None) -> list[Reply]:
    conv = Conversation("responses-test", "bot", slots=dict(slots or {}))
    return [out async for out in engine.respond(conv, UserMessage("m1", text)) if isinstance(out, Reply)]


# --- which variation ------------------------------------------------------------------

def test_a_variation_for_another_channel_is_never_said_in_the_widget() -> None:
    responses = Responses({"utter_greet": [{"text": "Hi on Slack", "channel": "slack"},
                                           {"text": "Hello!"}]})
    assert said(responses, "utter_greet") == {"Hello!"}


def test_a_variation_for_the_widget_channel_wins_over_the_default() -> None:
    responses = Responses({"utter_greet": [{"text": "Hello!"},
                                           {"text": "Hello, web!", "channel": "socketio"},
                                           {"text": "Hello from deskmate!", "channel": "deskmate"}]})
    assert said(responses, "utter_greet") == {"Hello, web!", "Hello from deskmate!"}


def test_variations_are_filtered_in_rasas_order() -> None:
    # conditional+channel, then default+channel, then conditional, then default.
    variations = [
        {"text": "conditional", "condition": PREMIUM},
        {"text": "default"},
        {"text": "default here", "channel": "socketio"},
        {"text": "conditional here", "condition": PREMIUM, "channel": "socketio"},
        {"text": "conditional on Slack", "condition": PREMIUM, "channel": "slack"},
    ]
    assert said(Responses({"r": variations}), "r", {"tier": "premium"}) == {"conditional here"}
    assert said(Responses({"r": variations[:3]}), "r", {"tier": "premium"}) == {"default here"}
    assert said(Responses({"r": variations[:2]}), "r", {"tier": "premium"}) == {"conditional"}
    assert said(Responses({"r": variations[:2]}), "r", {"tier": "basic"}) == {"default"}
    only_slack = [{"text": "Slack only", "channel": "slack"}]
    assert Responses({"r": only_slack}).render("r", {}, "1") is None


def test_a_condition_on_a_string_ignores_case_as_in_rasa_3() -> None:
    responses = Responses({"utter_tier": [{"text": "You are premium", "condition": PREMIUM},
                                          {"text": "You are on a plan"}]})
    assert said(responses, "utter_tier", {"tier": "Premium"}) == {"You are premium"}
    number = Responses({"r": [{"text": "two", "condition": [{"type": "slot", "name": "n", "value": 2}]},
                              {"text": "other"}]})
    assert said(number, "r", {"n": 2.0}) == {"two"} and said(number, "r", {"n": "2"}) == {"other"}


# --- placeholders ---------------------------------------------------------------------

def test_buttons_image_and_custom_cards_are_filled_like_the_text() -> None:
    responses = Responses({"utter_go": [{
        "text": "Pick one for {city}",
        "image": "https://example.com/{city}.png",
        "buttons": [{"title": "Go to {city}", "payload": '/inform{{"city": "{city}"}}'}],
        "custom": {"cards": [{"title": "Trips to {city}", "buttons": [
            {"title": "Book {city}", "payload": "/book"}]}]},
    }]})
    reply = responses.render("utter_go", {"city": "Berlin"}, "1")
    assert reply is not None
    assert reply.text == "Pick one for Berlin"
    assert [b.to_dict() for b in reply.buttons] == [{"title": "Go to Berlin",
                                                      "payload": '/inform{"city": "Berlin"}'}]
    assert [c["image"] for c in reply.cards] == ["https://example.com/Berlin.png", ""]
    assert reply.cards[1]["title"] == "Trips to Berlin"
    assert reply.cards[1]["buttons"] == [{"title": "Book Berlin", "payload": "/book"}]


def test_a_dotted_or_unknown_placeholder_is_said_as_written() -> None:
    responses = Responses({"utter_mail": [{"text": "Mail us at {support.email}, {name}"}]})
    assert said(responses, "utter_mail", {"name": "Ada"}) == {"Mail us at {support.email}, Ada"}
    assert fill("{missing} and {{literal}} and {", {"missing.x": 1}) == "{missing} and {literal} and {"
    assert fill("{0} {a[b]} {n:.2f}", {"n": 1.5}) == "{0} {a[b]} {n:.2f}"
    assert fill('/choose{"size": "42"}', {"size": "S"}) == '/choose{"size": "42"}'
    assert fill("Hi {name}!", {"name": None}) == "Hi !"


def test_a_dotted_placeholder_does_not_crash_the_turn() -> None:
    responses = Responses({"utter_mail": [{"text": "Mail us at {support.email}"}]})
    reply = responses.dispatcher_message({"response": "utter_mail", "support": {"email": "x"}}, {}, "1")
    assert reply is not None and reply.text == "Mail us at {support.email}"


# --- images and custom payloads -------------------------------------------------------

async def test_an_image_response_reaches_the_widget_as_an_image_card() -> None:
    (reply,) = await replies(tiny_engine(RESPONSES_BOT), "show me a picture", {"city": "Berlin"})
    assert reply.name == "utter_picture" and reply.text == "Here is Berlin"
    assert reply.cards == [{"title": "", "subtitle": "", "image": "https://example.com/Berlin.png",
                            "url": "", "buttons": []}]


async def test_a_custom_payload_the_widget_cannot_show_is_skipped_and_logged_once(
        caplog: pytest.LogCaptureFixture) -> None:
    engine = tiny_engine(RESPONSES_BOT)
    with caplog.at_level(logging.WARNING, logger="dialogue.responses"):
        first = await replies(engine, "show me the blocks")
        again = await replies(engine, "blocks please")
    assert [r.text for r in first] == [r.text for r in again] == ["Hello!"]  # no empty bubble
    warnings = [r for r in caplog.records if r.name == "dialogue.responses"]
    assert len(warnings) == 1 and "utter_blocks" in warnings[0].getMessage()


def test_dispatcher_images_and_json_messages() -> None:
    dispatcher = CollectingDispatcher()
    dispatcher.utter_message(image="https://example.com/cat.png")
    dispatcher.utter_message(json_message={"blocks": [{"type": "divider"}]})
    dispatcher.utter_message(text="Cards and a picture", image="https://example.com/dog.png",
                             json_message={"cards": [{"title": "A dog"}]})
    responses = Responses({})
    picture, blocks, both = (responses.dispatcher_message(m, {}, "1") for m in dispatcher.messages)
    assert picture is not None and picture.text == ""
    assert [c["image"] for c in picture.cards] == ["https://example.com/cat.png"]
    assert blocks is None
    assert both is not None and [(c["title"], c["image"]) for c in both.cards] == [
        ("", "https://example.com/dog.png"), ("A dog", "")]
