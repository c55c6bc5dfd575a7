"""The events a custom action returns, applied as Rasa applies them.

The engine runs tests/fixtures/eventbot ("set my colour please" runs
``action_set_colour``) with :class:`RemoteActions` over Rasa's webhook protocol. The
action server is a stand-in on port 0 (an action that returns any given list of events
needs no rasa-sdk server): it answers with events made by rasa-sdk's own constructors and
messages collected by its own ``CollectingDispatcher``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from rasa_sdk.events import ActiveLoop, BotUttered, FollowupAction, SlotSet, UserUtteranceReverted
from rasa_sdk.executor import CollectingDispatcher

from bot.actions import RemoteActions
from dialogue.convtest import ConversationRunner, Observed
from dialogue.engine import DialogueEngine
from dialogue.project import load_project
from dialogue.types import Conversation
from tests.conftest import ROOT
from tests.fakes import serve_app

EVENTBOT = ROOT / "tests" / "fixtures" / "eventbot"


class ActionServer:
    """Answers every action call with the events and dispatcher messages of ``answer``."""

    def __init__(self) -> None:
        self.url = ""
        self.events: list[dict[str, Any]] = []
        self.responses: list[dict[str, Any]] = []

    def answer(self, events: list[dict[str, Any]], *, said: tuple[str, ...] = ()) -> None:
        dispatcher = CollectingDispatcher()
        for text in said:
            dispatcher.utter_message(text=text)
        self.events, self.responses = events, dispatcher.messages

    async def handle(self, request: web.Request) -> web.Response:
        await request.json()
        return web.json_response({"events": self.events, "responses": self.responses})


@pytest.fixture
async def server() -> AsyncIterator[ActionServer]:
    fake = ActionServer()
    app = web.Application()
    app.router.add_post("/webhook", fake.handle)
    runner, port = await serve_app(app)
    fake.url = f"http://127.0.0.1:{port}/webhook"
    yield fake
    await runner.cleanup()


async def turn(server: ActionServer, *, slots: dict[str, Any] | None = None) -> tuple[Conversation, Observed]:
    """One customer turn that runs ``action_set_colour``."""
    actions = RemoteActions(server.url)
    try:
        runner = ConversationRunner(DialogueEngine(load_project(EVENTBOT), actions=actions))
        conv = Conversation("events-test", "bot", slots=dict(slots or {}))
        return await runner.turn(conv, "set my colour please", None)
    finally:
        await actions.close()


async def test_bot_events_follow_the_dispatchers_messages(server: ActionServer) -> None:
    """Rasa's RemoteAction utters the dispatcher's messages, then the BotUttered events."""
    server.answer([BotUttered("Noted by an event."), SlotSet("colour", "teal"), BotUttered("And another.")],
                  said=("From the dispatcher.",))
    _, seen = await turn(server)
    assert seen.replies == ["From the dispatcher.", "Noted by an event.", "And another."]
    assert seen.slots == {"colour": "teal"}

    server.answer([BotUttered("Only an event.")])
    _, seen = await turn(server)
    assert seen.replies == ["Only an event."]


async def test_a_rewind_undoes_what_the_turn_changed(server: ActionServer) -> None:
    """UserUtteranceReverted takes the conversation back to before the customer's message:
    the slots and the active loop the turn set are undone, what was said stays said, and
    events after it apply as usual."""
    server.answer([SlotSet("colour", "teal"), SlotSet("size", "M"), ActiveLoop("some_loop"),
                   UserUtteranceReverted(), SlotSet("size", "L")], said=("Let me undo that.",))
    conv, seen = await turn(server, slots={"colour": "red"})
    assert seen.replies == ["Let me undo that."]
    assert seen.slots == {"size": "L"}
    assert conv.slots["colour"] == "red" and conv.slots["size"] == "L"
    assert not conv.state.get("active_loop")
    assert seen.actions == ["action_set_colour"]


async def test_a_rewind_drops_a_pending_followup(server: ActionServer) -> None:
    server.answer([FollowupAction("utter_followed"), UserUtteranceReverted()])
    _, seen = await turn(server)
    assert seen.actions == ["action_set_colour"] and seen.replies == []


async def test_only_the_last_followup_runs(server: ActionServer) -> None:
    """Rasa's tracker keeps one followup_action: a later FollowupAction replaces an earlier one."""
    server.answer([SlotSet("colour", "teal"), FollowupAction("utter_followed"),
                   FollowupAction("utter_colour")])
    _, seen = await turn(server)
    assert seen.actions == ["action_set_colour", "utter_colour"]
    assert seen.replies == ["Your colour is teal."]
