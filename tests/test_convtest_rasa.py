"""``deskmate test`` runs Rasa's own test stories (the format of RasaHQ/rasa
examples/formbot/tests/test_stories.yml): entity markup, ``user: /intent`` shortcuts,
``requested_slot``, ``checkpoint`` and ``or`` steps, and a form listed as Rasa lists it.

tests/fixtures/convtest_rasabot is read by the engine's example matcher (no classifier).
Where a test must see what the classifier is given, a recording function stands in for
the trained classifier, which this small project does not have.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dialogue import convtest
from dialogue.convtest import ConversationRunner, conversation_files, load_tests
from tests.conftest import ROOT, tiny_engine

RASABOT = ROOT / "tests" / "fixtures" / "convtest_rasabot"


def runner(understand: Any = None) -> ConversationRunner:
    return ConversationRunner(tiny_engine(RASABOT), understand)


def stories(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "stories.yml"
    path.write_text(text, encoding="utf-8")
    return path


async def test_rasas_test_stories_pass_as_written() -> None:
    tests = load_tests(conversation_files(RASABOT))
    assert [t.name for t in tests] == ["the form, as Rasa lists its turns", "an intent typed as a shortcut"]
    play = runner()
    assert [await play.run(t) for t in tests] == [None, None]


async def test_requested_slot_is_checked_against_the_forms_state(tmp_path: Path) -> None:
    (test,) = load_tests([stories(tmp_path, """
stories:
- story: the form asks for the city
  steps:
  - user: I want to book a trip
  - active_loop: trip_form
  - slot_was_set:
    - requested_slot: note
""")])
    failure = await runner().run(test)
    assert failure is not None and "expected slot requested_slot='note', got 'city'" in failure.message
    test.turns[0].slots["requested_slot"] = "city"
    assert await runner().run(test) is None


async def test_entity_markup_is_sent_as_plain_text_and_its_entities_are_checked(tmp_path: Path) -> None:
    (test,) = load_tests([stories(tmp_path, """
stories:
- story: markup
  steps:
  - user: |
      I live in [Berlin](city)
    intent: inform
  - user: 'I live in [Rome]{"entity": "city", "value": "Roma"}'
""")])
    berlin, rome = test.turns
    assert (berlin.text, berlin.entities) == ("I live in Berlin", [("city", "Berlin", "Berlin")])
    assert (rome.text, rome.entities) == ("I live in Rome", [("city", "Roma", "Rome")])

    heard: list[str] = []

    def understand(texts: list[str]) -> list[dict[str, Any]]:
        heard.extend(texts)
        return [{"intent": "inform", "confidence": 1.0} for _ in texts]

    failure = await runner(understand).run(test)
    assert heard == ["I live in Berlin", "I live in Rome"]
    # The bot knows Berlin (an NLU example) but not Rome: the annotation is checked.
    assert failure is not None and failure.turn == 2
    assert "expected entity city='Roma', got []" in failure.message


async def test_a_user_message_starting_with_a_slash_is_a_payload(tmp_path: Path) -> None:
    (test,) = load_tests([stories(tmp_path, """
stories:
- story: shortcuts
  steps:
  - user: /greet
    intent: greet
  - action: utter_greet
  - user: '/inform{"city": "Paris"}'
    intent: inform
  - slot_was_set:
    - city: Paris
""")])
    assert [t.payload for t in test.turns] == ["/greet", '/inform{"city": "Paris"}']
    assert await runner().run(test) is None


async def test_checkpoints_are_skipped(tmp_path: Path) -> None:
    (test,) = load_tests([stories(tmp_path, """
stories:
- story: joints
  steps:
  - checkpoint: start
  - user: hello
  - action: utter_greet
  - checkpoint: greeted
  - user: thanks
  - action: utter_noworries
""")])
    assert [t.text for t in test.turns] == ["hello", "thanks"]
    assert await runner().run(test) is None


async def test_or_accepts_any_of_its_intents_or_slot_values(tmp_path: Path) -> None:
    (test,) = load_tests([stories(tmp_path, """
stories:
- story: alternatives
  steps:
  - or:
    - user: sure
      intent: affirm
    - user: thanks
      intent: thankyou
  - action: utter_noworries
  - or:
    - intent: thankyou
    - intent: greet
  - action: utter_noworries
  - or:
    - slot_was_set:
      - city: Paris
    - slot_was_set:
      - city: null
""")])
    assert [(t.text, t.intents) for t in test.turns] == [
        ("sure", ["affirm", "thankyou"]), ("/thankyou", ["thankyou", "greet"])]
    assert await runner().run(test) is None
    test.turns[1].intents = ["greet"]
    failure = await runner().run(test)
    assert failure is not None and "expected one of the intents ['greet'], got thankyou" in failure.message


async def test_a_form_may_be_listed_as_rasa_or_as_deskmate_lists_it(tmp_path: Path) -> None:
    tests = load_tests([stories(tmp_path, """
stories:
- story: Rasa's way (the form action runs on each turn, its questions are not listed)
  steps:
  - user: book a trip
  - action: trip_form
  - user: Paris
  - action: trip_form
  - user: an aisle seat
  - action: trip_form
  - action: utter_done
- story: deskmate's way (the form's questions, and the form only where it starts)
  steps:
  - user: book a trip
  - action: trip_form
  - action: utter_ask_city
  - user: Paris
  - action: utter_ask_note
  - user: an aisle seat
  - action: utter_done
- story: neither
  steps:
  - user: book a trip
  - action: utter_ask_city
""")])
    play = runner()
    rasa, deskmate, neither = [await play.run(t) for t in tests]
    assert rasa is None and deskmate is None
    assert neither is not None and ("expected actions ['utter_ask_city'], got ['trip_form', "
                                    "'utter_ask_city'] (as a Rasa story: ['trip_form'])" in neither.message)


async def test_deskmates_own_conversations_still_list_every_action(tmp_path: Path) -> None:
    (test,) = load_tests([stories(tmp_path, """
conversations:
- conversation: the form, as Rasa lists it
  steps:
  - user: book a trip
  - action: trip_form
""")])
    failure = await runner().run(test)
    assert failure is not None
    assert "expected actions ['trip_form'], got ['trip_form', 'utter_ask_city']" in failure.message


def test_a_forms_actions_as_a_rasa_story_lists_them() -> None:
    # Asked on activation, asked after an interruption, continued, completed.
    rasa = convtest.as_rasa_lists
    assert rasa(["trip_form", "utter_ask_city"], None, "trip_form", "rules") == ["trip_form"]
    assert rasa(["utter_chitchat", "utter_ask_city"], "trip_form", "trip_form", "rules") == [
        "utter_chitchat", "trip_form"]
    assert rasa(["utter_ask_note"], "trip_form", "trip_form", "form") == ["trip_form"]
    assert rasa(["utter_done"], "trip_form", None, "form") == ["trip_form", "utter_done"]
    assert rasa(["utter_ask_city"], None, None, "rules") == ["utter_ask_city"]
