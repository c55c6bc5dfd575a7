"""The values that cross the line between ``bot`` (I/O) and ``dialogue`` (decisions).

``bot`` hands the pipeline a :class:`Conversation` and a :class:`UserMessage`;
the pipeline yields :data:`Output` values. Nothing here touches a socket,
Redis or a model.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class HistoryItem:
    role: str  # "user" | "bot" | "agent" | "system"
    text: str


@dataclass(frozen=True)
class Conversation:
    """What the pipeline knows about a conversation before this turn."""

    session_id: str
    status: str  # "bot" | "waiting" | "agent" | "closed"
    slots: dict[str, Any] = field(default_factory=dict)
    customer: dict[str, Any] = field(default_factory=dict)
    history: list[HistoryItem] = field(default_factory=list)  # oldest first, this turn excluded
    # The dialogue's own memory between turns (active form, requested slot, streaks
    # of negative or unclear turns); the pipeline returns changes as StateUpdate.
    state: dict[str, Any] = field(default_factory=dict)
    # What the customer looked at and bought (widget `track` frames, past orders):
    # {"viewed": [product ids, oldest first], "carted": [...], "bought": [...]}.
    profile: dict[str, list[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class UserMessage:
    """A stored customer message: typed text, or a button click with a Rasa payload.

    ``nlu`` is the classifier's reading of ``text`` (``deskmate nlu parse``'s JSON:
    intent, confidence, ranking, sentiment, sentiment_score), computed by ``bot``
    before the pipeline runs; None where no classifier is configured.
    """

    event_id: str
    text: str
    payload: str | None = None
    nlu: dict[str, Any] | None = None
    # The shared sentence encoder's embedding of ``text`` (for knowledge retrieval),
    # computed by ``bot`` in the same batch as ``nlu``; None without an encoder.
    vector: Any = None


@dataclass(frozen=True)
class Button:
    title: str
    payload: str

    def to_dict(self) -> dict[str, str]:
        return {"title": self.title, "payload": self.payload}


@dataclass(frozen=True)
class Reply:
    """A complete bot message."""

    text: str
    buttons: list[Button] = field(default_factory=list)
    cards: list[dict[str, Any]] = field(default_factory=list)
    name: str | None = None  # the response or action that said it, e.g. "utter_greet"
    sources: list[dict[str, str]] = field(default_factory=list)  # knowledge used: id, title, source


@dataclass(frozen=True)
class StreamedReply:
    """A bot message produced piece by piece; ``bot`` streams the chunks and stores the whole."""

    chunks: AsyncIterator[str]
    buttons: list[Button] = field(default_factory=list)
    cards: list[dict[str, Any]] = field(default_factory=list)
    name: str | None = None
    sources: list[dict[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class TurnAnalysis:
    """How the turn was understood and answered; stored as a ``turn`` event for agents."""

    intent: str
    confidence: float
    policy: str  # which part of the pipeline answered, e.g. "rules", "fallback"
    reason: str
    sentiment: str | None = None
    sentiment_score: float | None = None
    sources: list[str] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)  # responses and actions run, in order
    entities: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class SlotSet:
    name: str
    value: Any


@dataclass(frozen=True)
class StateUpdate:
    """The dialogue state to keep for the next turn (replaces ``Conversation.state``)."""

    state: dict[str, Any]


@dataclass(frozen=True)
class Handoff:
    """Hand the conversation to a human: status ``waiting``, the bot stops answering."""

    reason: str


Output = Reply | StreamedReply | TurnAnalysis | SlotSet | StateUpdate | Handoff


class Pipeline(Protocol):
    """Answers one customer turn. Implementations must not do network, Redis or model I/O
    themselves; they get what they need at construction (a classifier, a retriever, ...)."""

    def respond(self, conversation: Conversation, message: UserMessage) -> AsyncIterator[Output]:
        ...
