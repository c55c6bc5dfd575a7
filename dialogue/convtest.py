"""Conversation tests: Rasa-style test stories, run against the dialogue engine.

A file holds ``stories:`` (Rasa's test-story format) or ``conversations:``;
each has ``steps``::

    - user: where is my order        # a customer message (or `button: /intent{...}`)
      intent: track_order            # optional: the intent it must be read as
    - action: utter_ask_order_id     # the responses/actions that answer it, in order
    - slot_was_set:
      - order_id: NW-10231
    - bot: delivered                 # deskmate: a reply must contain this text
    - policy: knowledge              # deskmate: which policy answered
    - source: knowledge/faq.yml#...  # deskmate: a knowledge source used
    - handoff: true                  # deskmate: the turn handed over to a human
    - track: {name: view_product, data: {product_id: P1001}}   # a browsing signal

``active_loop`` steps are checked against the form that is active after the turn.
The runner feeds turns exactly as the server does (classifier reading first) but
in-process, and reports the first mismatch of each conversation with its line.

Rasa's own test stories run unchanged: ``[Berlin](city)`` markup is sent as plain text
(and the annotated entities are checked), ``user: /greet`` is a payload,
``requested_slot`` is checked against the form's state, ``checkpoint`` steps are skipped
and ``or`` accepts any of its intents (or slot values). In ``stories:`` a turn's actions
may be listed as deskmate reports them (the form, then ``utter_ask_*``) or as Rasa does
(the form action also on the turns that continue it, its questions not listed).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bot.errors import ProjectError
from dialogue.entities import marked_entities
from dialogue.project import compose_yaml, parse_yaml
from dialogue.rasa_nlu import strip_entities
from dialogue.recommend import TRACK_KINDS
from dialogue.simple import parse_payload
from dialogue.types import (
    Conversation,
    Handoff,
    HistoryItem,
    Pipeline,
    Reply,
    SlotSet,
    StateUpdate,
    StreamedReply,
    TurnAnalysis,
    UserMessage,
)

Understand = Callable[[list[str]], list[dict[str, Any]]]
INTERNAL_ACTIONS = {"action_deactivate_loop", "action_listen"}
REQUESTED_SLOT = "requested_slot"  # a slot in Rasa, dialogue state here
ANY_VALUE = object()  # ``slot_was_set: [name]``: set to something
ASKS = ("utter_ask_", "action_ask_")  # a form's questions, said by the form action in Rasa

# [text](entity), [text](entity:value), [text]{"entity": ..., "value": ...}


@dataclass
class Turn:
    """One customer turn and what the test expects of it."""

    line: int
    text: str = ""
    payload: str | None = None
    intent: str | None = None
    intents: list[str] = field(default_factory=list)  # ``or``: any of these
    entities: list[tuple[str, str, str]] = field(default_factory=list)  # annotated: entity, value, text
    actions: list[str] = field(default_factory=list)
    slots: dict[str, Any] = field(default_factory=dict)
    slot_choices: list[list[dict[str, Any]]] = field(default_factory=list)  # ``or`` of slot_was_set
    says: list[str] = field(default_factory=list)
    policy: str | None = None
    sources: list[str] = field(default_factory=list)
    handoff: bool | None = None
    active_loop: str | None | bool = False  # False: not checked
    tracks: list[dict[str, Any]] = field(default_factory=list)  # signals sent before this turn


@dataclass
class ConversationTest:
    name: str
    file: str
    line: int
    turns: list[Turn]
    rasa: bool = False  # from ``stories:``: Rasa's way of listing a form's actions also passes


@dataclass(frozen=True)
class Failure:
    test: ConversationTest
    turn: int  # 1-based
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.test.file}:{self.line}: {self.test.name!r}, turn {self.turn}: {self.message}"


def _line_map(path: Path) -> dict[tuple[int, int], int]:
    """(story index, step index) -> line, from the YAML node tree."""
    root = compose_yaml(path.read_text(encoding="utf-8"))
    out: dict[tuple[int, int], int] = {}
    if not isinstance(root, yaml.MappingNode):
        return out
    for key, value in root.value:
        if key.value in ("stories", "conversations") and isinstance(value, yaml.SequenceNode):
            for i, story in enumerate(value.value):
                out[(i, -1)] = story.start_mark.line + 1
                if not isinstance(story, yaml.MappingNode):
                    continue
                for k, v in story.value:
                    if k.value == "steps" and isinstance(v, yaml.SequenceNode):
                        for j, step in enumerate(v.value):
                            out[(i, j)] = step.start_mark.line + 1
    return out


def _annotations(text: str) -> list[tuple[str, str, str]]:
    """The entities marked up in a test story's message: (entity, value, text), the value
    being the text itself where the markup names none."""
    return [(entity, (value or "").strip() or surface, surface)
            for entity, value, surface in marked_entities(text)]


def _user_turn(step: dict[str, Any], line: int) -> Turn:
    """A ``user:`` or ``button:`` step: markup stripped, ``/intent{...}`` read as a payload."""
    raw = str(step.get("user") or step.get("title") or step.get("button") or "").strip()
    text, payload = strip_entities(raw), step.get("button")
    if payload is None and parse_payload(text) is not None:
        payload = text  # as Rasa reads "/greet" typed in a story
    intent = step.get("intent")
    return Turn(line, text, payload, str(intent) if intent else None, entities=_annotations(raw))


def _or_turn(choices: list[Any], line: int) -> Turn | None:
    """An ``or`` of intents: one user turn that may be read as any of them (sent as the first
    choice's text, or as its intent's payload when the choices have no text)."""
    intents = [str(c["intent"]) for c in choices if isinstance(c, dict) and c.get("intent")]
    if not intents or len(intents) != len(choices):
        return None
    first = next((c for c in choices if c.get("user")), None)
    turn = _user_turn(first, line) if first else Turn(line, f"/{intents[0]}", f"/{intents[0]}")
    turn.intent, turn.intents = None, intents
    return turn


def load_tests(paths: Sequence[Path]) -> list[ConversationTest]:
    """Conversation tests from YAML files (ProjectError with file and line on bad input)."""
    tests: list[ConversationTest] = []
    for path in paths:
        try:
            data = parse_yaml(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            raise ProjectError(str(path), f"invalid YAML: {exc}", mark.line + 1 if mark else None) from exc
        lines = _line_map(path)
        rasa = not data.get("conversations")
        stories = data.get("conversations") or data.get("stories") or []
        for i, story in enumerate(stories):
            name = str(story.get("conversation") or story.get("story") or f"conversation {i + 1}")
            turns: list[Turn] = []
            pending_tracks: list[dict[str, Any]] = []
            for j, step in enumerate(story.get("steps") or []):
                line = lines.get((i, j), 0)
                if not isinstance(step, dict):
                    raise ProjectError(str(path), f"{name}: a step must be a mapping", line)
                if "checkpoint" in step:
                    continue  # a story joint: nothing to play or check
                user: Turn | None = None
                if "user" in step or "button" in step:
                    user = _user_turn(step, line)
                elif "or" in step and any(isinstance(c, dict) and "intent" in c for c in step["or"] or []):
                    user = _or_turn(list(step["or"]), line)
                    if user is None:
                        raise ProjectError(str(path), f"{name}: an 'or' lists intents or slot_was_set "
                                           "steps, not both", line)
                if user is not None:
                    user.tracks, pending_tracks = pending_tracks, []
                    turns.append(user)
                    continue
                if "track" in step:
                    pending_tracks.append(dict(step["track"]))
                    continue
                if not turns:
                    raise ProjectError(str(path), f"{name}: a step before the first user message", line)
                turn = turns[-1]
                if "action" in step:
                    turn.actions.append(str(step["action"]))
                elif "slot_was_set" in step:
                    turn.slots.update(_slot_values(step["slot_was_set"]))
                elif "or" in step:
                    choices = [_slot_values(c.get("slot_was_set")) for c in step["or"] or []
                               if isinstance(c, dict) and "slot_was_set" in c]
                    if not choices or len(choices) != len(step["or"]):
                        raise ProjectError(str(path), f"{name}: an 'or' lists intents or slot_was_set "
                                           "steps", line)
                    turn.slot_choices.append(choices)
                elif "active_loop" in step:
                    turn.active_loop = step["active_loop"]
                elif "bot" in step:
                    turn.says.append(str(step["bot"]))
                elif "policy" in step:
                    turn.policy = str(step["policy"])
                elif "source" in step:
                    turn.sources.append(str(step["source"]))
                elif "handoff" in step:
                    turn.handoff = bool(step["handoff"])
                elif "intent" in step:
                    turn.intent = str(step["intent"])
                else:
                    raise ProjectError(str(path), f"{name}: unknown step {sorted(step)}", line)
            tests.append(ConversationTest(name, str(path), lines.get((i, -1), 0), turns, rasa))
    return tests


def _slot_values(items: Any) -> dict[str, Any]:
    """``slot_was_set`` items: ``{name: value}``, or a bare name (set to any value)."""
    out: dict[str, Any] = {}
    for item in items or []:
        if isinstance(item, dict):
            out.update(item)
        elif isinstance(item, str):
            out[item] = ANY_VALUE
    return out


def conversation_files(project: Path) -> list[Path]:
    folder = project / "tests"
    return sorted(folder.glob("*.yml")) + sorted(folder.glob("*.yaml")) if folder.is_dir() else []


@dataclass
class Observed:
    """What one turn did."""

    intent: str = ""
    confidence: float = 0.0
    policy: str = ""
    actions: list[str] = field(default_factory=list)
    replies: list[str] = field(default_factory=list)
    slots: dict[str, Any] = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)
    handoff: bool = False
    reason: str = ""
    entities: list[dict[str, Any]] = field(default_factory=list)
    loop_before: str | None = None  # the form active when the turn began


class ConversationRunner:
    """Plays conversation tests against ``pipeline`` with ``understand`` reading each message."""

    def __init__(self, pipeline: Pipeline, understand: Understand | None = None) -> None:
        self.pipeline = pipeline
        self.understand = understand

    async def turn(self, conv: Conversation, text: str, payload: str | None) -> tuple[Conversation, Observed]:
        nlu = vector = None
        if self.understand is not None and not payload:
            nlu = dict(self.understand([text])[0])
            vector = nlu.pop("vector", None)
        message = UserMessage(uuid.uuid4().hex, text, payload, nlu, vector)
        seen = Observed(loop_before=conv.state.get("active_loop") or None)
        slots, state, status = dict(conv.slots), dict(conv.state), conv.status
        async for out in self.pipeline.respond(conv, message):
            if isinstance(out, SlotSet):
                slots[out.name] = out.value
                seen.slots[out.name] = out.value
            elif isinstance(out, Reply):
                seen.replies.append(out.text)
            elif isinstance(out, StreamedReply):
                seen.replies.append("".join([c async for c in out.chunks]).strip())
            elif isinstance(out, StateUpdate):
                state = dict(out.state)
            elif isinstance(out, Handoff):
                seen.handoff, status = True, "waiting"
            elif isinstance(out, TurnAnalysis):
                seen.intent, seen.confidence, seen.policy = out.intent, out.confidence, out.policy
                seen.actions, seen.sources, seen.reason = list(out.actions), list(out.sources), out.reason
                seen.entities = list(out.entities)
        history = [*conv.history, HistoryItem("user", text), *(HistoryItem("bot", r) for r in seen.replies)]
        return Conversation(conv.session_id, status, slots, conv.customer, history[-50:], state,
                            conv.profile), seen

    async def run(self, test: ConversationTest) -> Failure | None:
        conv = Conversation(session_id=f"test-{uuid.uuid4().hex[:8]}", status="bot")
        for n, expected in enumerate(test.turns, start=1):
            for signal in expected.tracks:
                kind = TRACK_KINDS.get(str(signal.get("name")))
                pid = (signal.get("data") or {}).get("product_id")
                if kind and pid:
                    conv.profile.setdefault(kind, []).append(str(pid))
            if conv.status != "bot":
                return Failure(test, n, expected.line,
                               f"the bot is no longer answering (status {conv.status})")
            conv, seen = await self.turn(conv, expected.text, expected.payload)
            problem = _compare(expected, seen, conv, rasa=test.rasa)
            if problem:
                return Failure(test, n, expected.line, f"{expected.text or expected.payload!r}: {problem}")
        return None


def as_rasa_lists(actions: Sequence[str], loop_before: str | None, loop_after: str | None,
                  policy: str) -> list[str]:
    """A turn's actions as a Rasa story lists them: the form action runs on every turn that
    continues the form, and the questions it asks (``utter_ask_*``) are not actions of their
    own. ``actions`` are deskmate's, internal ones already left out."""
    forms = {f for f in (loop_before, loop_after) if f}
    out = list(actions)
    if loop_before and policy.startswith("form") and loop_before not in out:
        out.insert(0, loop_before)
    view: list[str] = []
    for action in out:
        if action.startswith(ASKS) and forms:
            form = loop_after or loop_before
            if not view or view[-1] not in forms:  # the form asks again after an interruption
                view.append(str(form))
            continue
        view.append(action)
    return view


def _entity_found(entity: str, value: str, surface: str, found: Sequence[dict[str, Any]]) -> bool:
    wanted = {value.casefold(), surface.casefold()}
    for e in found:
        if e.get("entity") != entity:
            continue
        got = e.get("value")
        if str(got).casefold() in wanted:
            return True
        try:  # a number read as 2.0 from "2"
            if float(str(got)) in {float(value), float(surface)}:
                return True
        except ValueError:
            pass
    return False


def _slot_matches(name: str, want: Any, conv: Conversation) -> bool:
    have = conv.state.get(name) if name == REQUESTED_SLOT else conv.slots.get(name)
    return have is not None if want is ANY_VALUE else bool(have == want)


def _compare(expected: Turn, seen: Observed, conv: Conversation, *, rasa: bool = False) -> str | None:
    got = f"(read as {seen.intent} {seen.confidence:.2f}, policy {seen.policy}: {seen.reason})"
    if expected.intent and expected.intent != seen.intent:
        return f"expected intent {expected.intent}, got {seen.intent} {got}"
    if expected.intents and seen.intent not in expected.intents:
        return f"expected one of the intents {expected.intents}, got {seen.intent} {got}"
    for entity, value, surface in expected.entities:
        if not _entity_found(entity, value, surface, seen.entities):
            found = [(e.get("entity"), e.get("value")) for e in seen.entities]
            return f"expected entity {entity}={value!r}, got {found} {got}"
    actions = [a for a in seen.actions if a not in INTERNAL_ACTIONS]
    if expected.actions:
        want = [a for a in expected.actions if a not in INTERNAL_ACTIONS] if rasa else expected.actions
        also = as_rasa_lists(actions, seen.loop_before, conv.state.get("active_loop"), seen.policy)
        if want != actions and not (rasa and want == also):
            shown = f"{actions} (as a Rasa story: {also})" if rasa and also != actions else f"{actions}"
            return f"expected actions {expected.actions}, got {shown} {got}"
    for name, value in expected.slots.items():
        if not _slot_matches(name, value, conv):
            have = conv.state.get(name) if name == REQUESTED_SLOT else conv.slots.get(name)
            shown = "a value" if value is ANY_VALUE else repr(value)
            return f"expected slot {name}={shown}, got {have!r} {got}"
    for choices in expected.slot_choices:
        if not any(all(_slot_matches(n, v, conv) for n, v in c.items()) for c in choices):
            return f"expected one of the slot values {choices}, got {conv.slots} {got}"
    text = "\n".join(seen.replies)
    for part in expected.says:
        if part.lower() not in text.lower():
            return f"expected a reply containing {part!r}, got {text!r} {got}"
    if expected.policy and not seen.policy.startswith(expected.policy):
        return f"expected policy {expected.policy}, got {seen.policy} {got}"
    for source in expected.sources:
        if source not in seen.sources:
            return f"expected knowledge source {source}, got {seen.sources} {got}"
    if expected.handoff is not None and expected.handoff != seen.handoff:
        return f"expected handoff={expected.handoff}, got {seen.handoff} {got}"
    if expected.active_loop is not False:
        loop = conv.state.get("active_loop")
        if (expected.active_loop or None) != (loop or None):
            return f"expected active form {expected.active_loop}, got {loop} {got}"
    return None
