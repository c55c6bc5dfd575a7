"""The project loader and the dialogue engine over a small project (no models, no I/O)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.errors import ProjectError
from dialogue.engine import DialogueEngine
from dialogue.project import load_project
from dialogue.rasa_nlu import section_examples, strip_entities
from dialogue.simple import parse_payload
from dialogue.types import Conversation, Reply, SlotSet, StateUpdate, StreamedReply, TurnAnalysis, UserMessage
from tests.conftest import ROOT, TINYBOT, tiny_engine


def test_rasa_examples_keep_entities_as_text() -> None:
    assert strip_entities("where is [NW-1](order_id) now") == "where is NW-1 now"
    assert strip_entities('size [42]{"entity": "size"} pls') == "size 42 pls"
    block = {"intent": "x", "examples": "- hi\n- [red](color) shoes\n\n# comment\n-\n"}
    assert section_examples("nlu.yml", block) == ["hi", "red shoes"]


def test_payloads() -> None:
    assert parse_payload("/greet") == ("greet", {})
    assert parse_payload('/choose_size{"size": "42"}') == ("choose_size", {"size": "42"})
    assert parse_payload("hello") is None
    assert parse_payload("/x{not json}") is None


def test_demo_shop_loads() -> None:
    project = load_project(ROOT / "examples" / "shop")
    assert len(project.intents) >= 37 and "utter_greet" in project.responses
    assert all(len(v) >= 15 for k, v in project.examples.items())
    assert project.forms["track_order_form"] == ["order_id"]


def test_broken_project_names_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "domain.yml").write_text("version: '3.1'\nresponses:\n  utter_x: [unclosed\n")
    with pytest.raises(ProjectError) as info:
        load_project(tmp_path)
    message = str(info.value)
    assert "domain.yml" in message and (":3" in message or ":4" in message)


async def run(pipeline: DialogueEngine, text: str, payload: str | None = None) -> list[object]:
    conv = Conversation(session_id="s", status="bot")
    out = []
    async for item in pipeline.respond(conv, UserMessage("1-0", text, payload)):
        if isinstance(item, StreamedReply):
            out.append(Reply("".join([c async for c in item.chunks]), item.buttons))
        elif not isinstance(item, StateUpdate):
            out.append(item)
    return out


async def test_pipeline_answers_from_rules_and_falls_back() -> None:
    pipeline = tiny_engine(TINYBOT)
    reply, analysis = await run(pipeline, "hello there")
    assert isinstance(analysis, TurnAnalysis) and analysis.intent == "greet"
    assert analysis.actions == ["utter_greet"] and analysis.policy == "rules"
    assert isinstance(reply, Reply) and reply.text == "Hello! How can I help you today?"
    reply, analysis = await run(pipeline, "what is the airspeed of a swallow")
    assert analysis.intent == "out_of_scope" and analysis.policy == "fallback"  # type: ignore[union-attr]
    assert reply.text == "Sorry, I did not understand that."  # type: ignore[union-attr]
    slot, reply, analysis = await run(pipeline, "Track", '/track_order{"order_id": "NW-9"}')
    assert slot == SlotSet("order_id", "NW-9")
    assert reply.text == "I will look up order NW-9 for you."  # type: ignore[union-attr]


def _yaml_11_project(root: Path) -> Path:
    (root / "data").mkdir(parents=True)
    (root / "domain.yml").write_text(
        "version: '3.1'\nintents: [on, greet]\n"
        "slots:\n  subscribed:\n    type: bool\n    initial_value: false\n    mappings: []\n"
        "session_config:\n  carry_over_slots_to_new_session: true\n"
        "responses:\n  utter_greet:\n  - text: Hi!\n", encoding="utf-8")
    (root / "data" / "nlu.yml").write_text(
        "version: '3.1'\nnlu:\n"
        "- intent: on\n  examples: |\n    - turn it on\n"
        "- intent: greet\n  examples:\n  - text: yes\n  - text: hello\n    metadata: {sentiment: neutral}\n"
        "rules:\n- rule: greet\n  steps:\n  - intent: greet\n  - action: utter_greet\n", encoding="utf-8")
    (root / "config.yml").write_text("generative:\n  knowledge_glue: TRUE\n", encoding="utf-8")
    return root


def test_yes_no_on_off_are_text_as_in_rasa(tmp_path: Path) -> None:
    """Rasa reads YAML 1.2, where only true/false are booleans; PyYAML's YAML 1.1 read
    "- text: yes" as True (refused as a bad example) and "- intent: on" as a label "True"."""
    project = load_project(_yaml_11_project(tmp_path))
    assert project.examples == {"on": ["turn it on"], "greet": ["yes", "hello"]}
    assert project.intents == ["on", "greet"]
    # true/false stay booleans where a setting expects one
    assert project.slots["subscribed"]["initial_value"] is False
    assert project.session_config["carry_over_slots_to_new_session"] is True
    assert project.setting("generative", "knowledge_glue", False) is True


def test_only_true_and_false_are_booleans_in_every_project_file() -> None:
    from dialogue.project import compose_yaml, parse_yaml

    text = "[yes, no, on, off, y, n, Yes, OFF, true, false, True, FALSE, null, ~, 3]"
    assert parse_yaml(text) == ["yes", "no", "on", "off", "y", "n", "Yes", "OFF",
                                True, False, True, False, None, None, 3]
    node = compose_yaml("- on\n- true\n")
    assert node is not None and [n.tag.rsplit(":", 1)[-1] for n in node.value] == ["str", "bool"]
    import yaml
    assert yaml.safe_load("on") is True  # PyYAML's own loaders are left as they were
