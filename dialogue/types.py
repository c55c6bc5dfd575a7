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


@dataclass(frozen=True)
class StreamedReply:
    """A bot message produced piece by piece; ``bot`` streams the chunks and stores the whole."""

    chunks: AsyncIterator[str]
    buttons: list[Button] = field(default_factory=list)
    cards: list[dict[str, Any]] = field(default_factory=list)


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


@dataclass(frozen=True)
class SlotSet:
    name: str
    value: Any


Output = Reply | StreamedReply | TurnAnalysis | SlotSet


class Pipeline(Protocol):
    """Answers one customer turn. Implementations must not do network, Redis or model I/O
    themselves; they get what they need at construction (a classifier, a retriever, ...)."""

    def respond(self, conversation: Conversation, message: UserMessage) -> AsyncIterator[Output]:
        ...
