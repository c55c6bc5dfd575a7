"""Rasa rules as Rasa's RulePolicy reads them: conditions (slot_was_set, active_loop, null),
the more specific matching rule first, a form's unhappy-path rules, multi-turn rules,
``or:``, ``conversation_start`` and ``wait_for_user_input``; retrieval intents with their
responses in data files; a domain split across a ``domain/`` folder.

The fixtures' messages are read by the engine's example matcher (exact training examples,
so confident); no classifier or action server is needed."""

from __future__ import annotations

import shutil
from pathlib import Path

from dialogue.convtest import ConversationRunner, Observed
from dialogue.engine import DialogueEngine
from dialogue.entities import EntityExtractor
from dialogue.project import load_project
from dialogue.types import Conversation
from dialogue.validate import validate
from tests.conftest import ROOT

FIXTURES = ROOT / "tests" / "fixtures"
RULES = FIXTURES / "rasa_rules"
RETRIEVAL = FIXTURES / "rasa_rules_retrieval"
SPLIT = FIXTURES / "rasa_rules_split"


def runner(path: Path) -> ConversationRunner:
    project = load_project(path)
    return ConversationRunner(DialogueEngine(project, entities=EntityExtractor.for_project(project)))


async def chat(path: Path, *texts: str, slots: dict[str, object] | None = None,
               ) -> tuple[Conversation, list[Observed]]:
    bot, conv, seen = runner(path), Conversation("rules-test", "bot", slots=dict(slots or {})), []
    for text in texts:
        conv, observed = await bot.turn(conv, text, None)
        seen.append(observed)
    return conv, seen


# --- conditions --------------------------------------------------------------------------

async def test_a_slot_condition_chooses_between_rules_for_the_same_intent() -> None:
    _, (member,) = await chat(RULES, "hello")  # logged_in starts true
    assert member.replies == ["Welcome back!"]
    _, (anon,) = await chat(RULES, "hello", slots={"logged_in": False})
    assert anon.replies == ["Hello stranger, please log in"]


async def test_a_rule_for_a_question_inside_a_form_answers_and_the_form_asks_again() -> None:
    conv, (start, faq, name) = await chat(RULES, "sign me up", "a faq question", "I am Bob")
    assert start.replies == ["Your name?"]
    assert faq.replies == ["Here is the faq answer", "Your name?"]
    assert faq.policy == "rules" and "action_deactivate_loop" not in faq.actions
    assert not faq.handoff
    assert name.policy == "form" and conv.slots["name"] == "Bob"
    assert not conv.state.get("active_loop")


async def test_an_active_loop_null_rule_applies_only_outside_forms() -> None:
    _, (outside,) = await chat(RULES, "a faq question")
    assert outside.replies == ["The general faq answer"]
    conv, (_, inside) = await chat(RULES, "sign me up", "a faq question")
    assert inside.replies == ["Here is the faq answer", "Your name?"]
    assert conv.state["active_loop"] == "name_form"


# --- rule shapes -------------------------------------------------------------------------

async def test_a_multi_turn_rule_answers_its_second_turn_only_after_its_first() -> None:
    _, (sad, bye) = await chat(RULES, "i am sad", "goodbye")
    assert sad.replies == ["Sorry to hear"]  # not "Bye" at once
    assert bye.replies == ["Bye"]  # the two-turn rule is more specific than `or:`'s bye
    _, (alone,) = await chat(RULES, "goodbye")
    assert alone.replies == ["Great!"]


async def test_an_or_step_is_one_rule_per_intent() -> None:
    _, (great, bye) = await chat(RULES, "i feel great", "goodbye")
    assert great.replies == ["Great!"] and bye.replies == ["Great!"]
    assert not any("mood or" in w for w in load_project(RULES).warnings)


async def test_a_conversation_start_rule_answers_only_the_first_message() -> None:
    _, (first, later) = await chat(RULES, "help me", "help me")
    assert first.replies == ["New here? I can help with bookings"]
    assert later.replies == ["What do you need help with?"]


async def test_wait_for_user_input_false_goes_on_with_the_rule_after_its_action() -> None:
    _, (thanks,) = await chat(RULES, "thank you")
    assert thanks.replies == ["You're welcome", "Anything else?"]
    assert thanks.actions == ["utter_thanks", "utter_anything_else"]


def test_validate_reports_rules_deskmate_cannot_run_as_written(tmp_path: Path) -> None:
    project = tmp_path / "bot"
    shutil.copytree(RULES, project)
    with (project / "data" / "rules.yml").open("a", encoding="utf-8") as fh:
        fh.write("""- rule: after bye, never reached
  steps:
  - action: utter_bye
  - action: utter_help
- rule: branch on what an action set
  steps:
  - intent: check-balance
  - action: utter_balance
  - slot_was_set:
    - logged_in: false
  - action: utter_greet_anon
- rule: contradicts greet member
  condition:
  - slot_was_set:
    - logged_in: true
  steps:
  - intent: greet
  - action: utter_happy
""")
    problems = validate(project)
    rules_file = str(project / "data" / "rules.yml")
    warnings = [p.message for p in problems if p.severity == "warning" and p.file == rules_file]
    assert any("'after bye, never reached'" in w and "never runs" in w for w in warnings)
    assert any("'branch on what an action set'" in w and "is not checked" in w for w in warnings)
    errors = [p for p in problems if p.severity == "error"]
    assert len(errors) == 1 and "contradict" in errors[0].message and errors[0].file == rules_file
    assert errors[0].line is not None


# --- retrieval intents -------------------------------------------------------------------

async def test_a_retrieval_intent_answers_with_its_response_from_a_data_file() -> None:
    _, (name, weather) = await chat(RETRIEVAL, "what is your name", "how is the weather")
    assert name.intent == "chitchat/ask_name"
    assert name.replies == ["I am a bot"] and name.actions == ["utter_chitchat"]
    assert name.policy == "rules"
    assert weather.replies == ["Sunny"]


def test_validate_accepts_retrieval_intents_and_responses_in_data_files() -> None:
    problems = validate(RETRIEVAL)
    assert [str(p) for p in problems] == []
    project = load_project(RETRIEVAL)
    assert "utter_chitchat/ask_name" in project.responses
    assert "utter_chitchat/ask_name" in project.domain["responses"]  # what rasa-sdk actions see


# --- a domain split across files ---------------------------------------------------------

async def test_a_domain_folder_is_merged_recursively() -> None:
    project = load_project(SPLIT)
    assert project.intents == ["greet", "chitchat", "book"]
    assert project.forms == {"note_form": ["note"]}
    assert "utter_note_saved" in project.responses and "note_form" in project.domain["forms"]
    conv, (start, note) = await chat(SPLIT, "leave a note", "buy milk")
    assert start.replies == ["Your note?"]
    assert note.replies == ["Noted: buy milk"] and conv.slots["note"] == "buy milk"


def test_validate_names_the_file_of_a_split_domain(tmp_path: Path) -> None:
    project = tmp_path / "bot"
    shutil.copytree(SPLIT, project)
    form_file = project / "domain" / "forms" / "note.yml"
    form_file.write_text(form_file.read_text().replace("required_slots: [note]",
                                                       "required_slots: [note, when]"))
    problems = [p for p in validate(project) if p.severity == "error"]
    assert len(problems) == 1 and "'when'" in problems[0].message
    assert problems[0].file == str(form_file) and problems[0].line == 3
