"""Forms, slots and responses as Rasa has them: a rasa-sdk ``FormValidationAction`` sees
this turn's slots, a free-text slot takes any answer but "no" (or an intent its mapping
excludes), an action can
start a form, every domain slot (with its initial value) reaches actions, and conditional
response variations win over the default ones. Slots fill as Rasa's action_extract_slots
fills them (tests/fixtures/slots_forms), and button payloads read as Rasa reads them.

tests/fixtures/formbot's actions run in this process with rasa-sdk's own executor; its
messages are read by the engine's example matcher (exact training examples, so confident).
The demo shop's case runs with its trained classifier and actions on the test Redis."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bot.actions import open_action_runner
from dialogue.convtest import ConversationRunner, Observed
from dialogue.engine import DialogueEngine
from dialogue.entities import EntityExtractor
from dialogue.project import load_project
from dialogue.responses import Responses
from dialogue.simple import read_payload
from dialogue.slots import map_slots
from dialogue.types import Conversation
from tests.conftest import ROOT

FORMBOT = ROOT / "tests" / "fixtures" / "formbot"


def formbot() -> ConversationRunner:
    project = load_project(FORMBOT)
    engine = DialogueEngine(project, entities=EntityExtractor.for_project(project),
                            actions=open_action_runner(FORMBOT, None))
    return ConversationRunner(engine)


async def chat(runner: ConversationRunner, *texts: str) -> tuple[Conversation, list[Observed]]:
    conv, seen = Conversation("formbot-test", "bot"), []
    for text in texts:
        conv, observed = await runner.turn(conv, text, None)
        seen.append(observed)
    return conv, seen


# --- validate_<form> ----------------------------------------------------------------------

async def test_the_form_validator_rejects_a_value_and_the_form_asks_again() -> None:
    runner = formbot()
    conv, (start, wrong) = await chat(runner, "book a table", "40")
    assert start.replies == ["How many guests?"]
    assert wrong.actions[0] == "validate_booking_form"
    assert wrong.replies == ["We seat at most 10 guests.", "How many guests?"]
    assert conv.slots["guests"] is None and conv.state["requested_slot"] == "guests"
    conv, right = await runner.turn(conv, "4", None)
    assert right.replies == ["Any note for the kitchen?"]
    assert conv.slots["guests"] == 4.0 and conv.state["requested_slot"] == "note"


async def test_the_validator_checks_slots_filled_before_the_form_starts() -> None:
    runner = formbot()
    conv = Conversation("formbot-test", "bot", slots={"guests": 40.0})
    conv, seen = await runner.turn(conv, "book a table", None)
    assert seen.replies == ["We seat at most 10 guests.", "How many guests?"]
    assert conv.slots["guests"] is None


async def test_validated_values_reach_the_submit_action() -> None:
    conv, seen = await chat(formbot(), "book a table", "4", "  window seat please")
    assert seen[-1].actions == ["validate_booking_form", "action_book"]
    assert seen[-1].replies == ["Booked for 4 guests. Note: Window seat please"]
    assert conv.state.get("active_loop") is None


async def test_the_validator_chooses_the_next_slot_beyond_the_domains_list() -> None:
    conv, seen = await chat(formbot(), "book a table", "9", "window seat", "a birthday")
    assert seen[2].replies == ["What is the occasion?"]  # asked for by the validator
    assert conv.state.get("active_loop") is None
    assert seen[3].replies == ["Booked for 9 guests. Note: Window seat Occasion: a birthday"]


# --- free text inside a form ----------------------------------------------------------------

async def test_no_stops_a_form_that_asks_for_free_text() -> None:
    conv, seen = await chat(formbot(), "book a table", "4", "no never mind")
    assert seen[-1].replies == ["Alright, no booking."]
    assert "action_book" not in seen[-1].actions
    assert conv.slots.get("note") is None and conv.state.get("active_loop") is None


async def test_a_request_the_mapping_excludes_leaves_a_form_that_asks_for_free_text() -> None:
    conv, seen = await chat(formbot(), "book a table", "4", "when do you open")
    assert seen[-1].replies == ["We open at nine."]
    assert seen[-1].policy == "rules" and "action_book" not in seen[-1].actions
    assert conv.slots.get("note") is None and conv.state.get("active_loop") is None


ShopParts = tuple[DialogueEngine, Callable[[list[str]], list[dict[str, Any]]]]


async def shop_return_reason(shop_parts: ShopParts, answer: str) -> tuple[Conversation, Observed]:
    """The demo shop's return form asking for the reason, then ``answer`` to it."""
    runner = ConversationRunner(*shop_parts)
    conv = Conversation("shop-return-reason", "bot")
    for text in ("I'd like to return an item", "NW-10236"):
        conv, _ = await runner.turn(conv, text, None)
    assert conv.state["requested_slot"] == "return_reason"
    return await runner.turn(conv, answer, None)


async def test_the_shop_return_reason_is_not_never_mind(shop_actions_env: None,
                                                        shop_parts: ShopParts) -> None:
    conv, seen = await shop_return_reason(shop_parts, "no, never mind")
    assert seen.intent == "deny" and "action_start_return" not in seen.actions
    assert conv.slots.get("return_reason") is None and conv.state.get("active_loop") is None


async def test_the_shop_return_reason_may_read_as_another_intent(shop_actions_env: None,
                                                                shop_parts: ShopParts) -> None:
    conv, seen = await shop_return_reason(shop_parts, "wrong size")
    assert seen.intent != "get_refund"  # read as another request, still the answer asked for
    assert seen.policy == "form" and "action_start_return" in seen.actions
    assert conv.state.get("active_loop") is None  # the form is done, not left for size help


# --- an action that starts a form --------------------------------------------------------------

async def test_an_action_that_starts_a_form_makes_it_ask_its_first_question() -> None:
    conv, (seen,) = await chat(formbot(), "start a booking for me")
    assert seen.actions == ["action_start_booking", "booking_form", "validate_booking_form",
                            "utter_ask_guests"]
    assert seen.replies == ["Let's book a table.", "How many guests?"]
    assert conv.state == {**conv.state, "active_loop": "booking_form", "requested_slot": "guests"}


async def test_a_form_started_by_an_action_and_named_by_the_rule_asks_once() -> None:
    _, (seen,) = await chat(formbot(), "start it and run the form")
    assert seen.replies == ["Let's book a table.", "How many guests?"]


# --- slots actions see ---------------------------------------------------------------------------

async def test_actions_see_every_domain_slot_with_its_initial_value() -> None:
    _, (seen,) = await chat(formbot(), "show my plan")
    assert seen.replies == ["Plan: basic; guests: None."]


# --- conditional response variations ---------------------------------------------------------

def test_a_matching_conditional_variation_wins_over_the_default() -> None:
    responses = Responses({"utter_plan": [
        {"text": "You are on our standard plan."},
        {"text": "You are on the premium plan.", "condition": [{"type": "slot", "name": "plan",
                                                                  "value": "premium"}]},
    ]})
    said = set()
    for seed in range(20):
        premium = responses.render("utter_plan", {"plan": "premium"}, str(seed))
        basic = responses.render("utter_plan", {"plan": "basic"}, str(seed))
        assert premium is not None and basic is not None
        said.add((premium.text, basic.text))
    assert said == {("You are on the premium plan.", "You are on our standard plan.")}


# --- slot mappings as Rasa's action_extract_slots reads them ------------------------------------

SLOTS_FORMS = ROOT / "tests" / "fixtures" / "slots_forms"


def slots_bot() -> ConversationRunner:
    project = load_project(SLOTS_FORMS)
    return ConversationRunner(DialogueEngine(project, entities=EntityExtractor.for_project(project)))


async def test_an_entity_two_required_slots_share_fills_only_the_slot_the_form_asked_for() -> None:
    conv, (_, berlin, paris) = await chat(slots_bot(), "book a trip", "Berlin", "Paris")
    assert berlin.replies == ["To where?"]
    assert conv.slots["from_city"] == "Berlin" and conv.slots["to_city"] == "Paris"
    assert paris.replies == ["How many travellers?"]


def test_an_entity_fills_every_slot_it_maps_to_while_no_form_is_active() -> None:
    project = load_project(SLOTS_FORMS)
    city = [{"entity": "city", "value": "Berlin"}]
    found = map_slots(project.slots, text="Berlin", intent="inform", entities=city, active_loop=None,
                      requested=None, forms=project.domain["forms"])
    assert found == {"from_city": "Berlin", "to_city": "Berlin"}


async def test_a_trigger_intent_mapping_fills_when_its_intent_starts_the_form() -> None:
    conv, (start,) = await chat(slots_bot(), "book a trip")
    assert start.replies == ["From where?"] and conv.slots["booked_via"] == "chat"
    project = load_project(SLOTS_FORMS)
    assert "booked_via" not in map_slots(project.slots, text="book a trip", intent="book", entities=[],
                                         active_loop=None, requested=None, forms=project.domain["forms"])


async def test_an_entity_mapping_takes_the_last_value_and_a_list_slot_every_value() -> None:
    conv, _ = await chat(slots_bot(), "with ham and cheese")
    assert conv.slots["toppings"] == ["ham", "cheese"]
    assert conv.slots["topping"] == "cheese"


async def test_a_forms_ignored_intents_fill_none_of_its_slots() -> None:
    conv, (_, chitchat) = await chat(slots_bot(), "leave a note", "how old are you")
    assert chitchat.intent == "chitchat" and chitchat.replies == ["I am a bot."]
    assert conv.slots.get("note") is None and "utter_noted" not in chitchat.actions
    # Also an unconditioned mapping of a slot outside the form, while the form is active.
    project = load_project(SLOTS_FORMS)
    topping = [{"entity": "topping", "value": "ham"}]
    assert map_slots(project.slots, text="ham", intent="chitchat", entities=topping,
                     active_loop="note_form", requested="note", forms=project.domain["forms"]) == {}


async def test_a_float_slot_keeps_a_value_beyond_its_max_value() -> None:
    conv, seen = await chat(slots_bot(), "book a trip", "Berlin", "Paris", "8")
    assert seen[-1].replies == ["Booked."]
    assert conv.slots["travellers"] == 8.0 and conv.state.get("active_loop") is None


async def test_button_payloads_are_read_as_rasa_reads_them() -> None:
    runner = slots_bot()
    conv = Conversation("payload-test", "bot")
    conv, balance = await runner.turn(conv, "Show me", "/check-balance")
    conv, greet = await runner.turn(conv, "Show me", "/greet@0.9")
    assert balance.intent == "check-balance" and balance.replies == ["Your balance is 10 euros."]
    assert greet.intent == "greet" and greet.replies == ["Hello!"] and greet.confidence == 0.9
    # A list value is one entity per item: a list slot takes them all, a text slot the last.
    conv, chosen = await runner.turn(conv, "ham and cheese", '/inform{"topping": ["ham", "cheese"]}')
    assert (chosen.slots["toppings"], chosen.slots["topping"]) == (["ham", "cheese"], "cheese")
    read = read_payload('/inform@0.4{"topping": ["ham", "cheese"], "city": "Paris"}')
    assert read is not None and (read.intent, read.confidence) == ("inform", 0.4)
    assert [(e["entity"], e["value"]) for e in read.entities] == [
        ("topping", "ham"), ("topping", "cheese"), ("city", "Paris")]
    assert read_payload("/greet", intents=["inform"]) is None  # not a domain intent: text
