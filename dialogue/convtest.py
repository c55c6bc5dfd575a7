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
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bot.errors import ProjectError
from dialogue.project import compose_yaml, parse_yaml
from dialogue.recommend import TRACK_KINDS
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


@dataclass
class Turn:
    """One customer turn and what the test expects of it."""

    line: int
    text: str = ""
    payload: str | None = None
    intent: str | None = None
    actions: list[str] = field(default_factory=list)
    slots: dict[str, Any] = field(default_factory=dict)
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
        stories = data.get("conversations") or data.get("stories") or []
        for i, story in enumerate(stories):
            name = str(story.get("conversation") or story.get("story") or f"conversation {i + 1}")
            turns: list[Turn] = []
            pending_tracks: list[dict[str, Any]] = []
            for j, step in enumerate(story.get("steps") or []):
                line = lines.get((i, j), 0)
                if not isinstance(step, dict):
                    raise ProjectError(str(path), f"{name}: a step must be a mapping", line)
                if "user" in step or "button" in step:
                    text = str(step.get("user") or step.get("title") or step.get("button") or "").strip()
                    turns.append(Turn(line, text, step.get("button"), step.get("intent"),
                                      tracks=pending_tracks))
                    pending_tracks = []
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
                    for item in step["slot_was_set"] or []:
                        if isinstance(item, dict):
                            turn.slots.update(item)
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
            tests.append(ConversationTest(name, str(path), lines.get((i, -1), 0), turns))
    return tests


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
        seen = Observed()
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
            problem = _compare(expected, seen, conv)
            if problem:
                return Failure(test, n, expected.line, f"{expected.text or expected.payload!r}: {problem}")
        return None


def _compare(expected: Turn, seen: Observed, conv: Conversation) -> str | None:
    got = f"(read as {seen.intent} {seen.confidence:.2f}, policy {seen.policy}: {seen.reason})"
    if expected.intent and expected.intent != seen.intent:
        return f"expected intent {expected.intent}, got {seen.intent} {got}"
    actions = [a for a in seen.actions if a not in INTERNAL_ACTIONS]
    if expected.actions and expected.actions != actions:
        return f"expected actions {expected.actions}, got {actions} {got}"
    for name, value in expected.slots.items():
        if conv.slots.get(name) != value:
            return f"expected slot {name}={value!r}, got {conv.slots.get(name)!r} {got}"
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
