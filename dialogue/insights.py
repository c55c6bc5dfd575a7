"""Conversation insights: the numbers a support lead reads on Monday morning. No I/O.

:class:`Insights` folds conversations into counters one at a time (``bot.insights``
reads them from Redis page by page), so a week of traffic never sits in memory at
once; :meth:`Insights.summary` returns plain, JSON-ready numbers. Embedding and
clustering the unanswered questions needs the encoder and lives in ``model.insights``.

Definitions (also in docs/insights.md):

* A conversation counts when the customer wrote at least once in the window.
* Resolution: ``unresolved`` when it is waiting for an agent now, or its last handoff
  request in the window was never answered by an agent (closed from the queue);
  else ``agent`` when an agent took it over in the window (or has it now); else ``bot``.
* A customer turn is *unanswered* when its ``turn`` event has policy ``fallback``,
  intent ``out_of_scope`` (the classifier's nlu_fallback), or a confidence below the
  project's ``thresholds.intent``.
* Days are UTC calendar days.
"""

from __future__ import annotations

import calendar
import re
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

OUT_OF_SCOPE = "out_of_scope"
SENTIMENTS = ("negative", "neutral", "positive")
RESOLUTIONS = ("bot", "agent", "unresolved")
# Handoff reasons as dialogue.engine and dialogue.tracker write them -> a category.
HANDOFF_CATEGORIES = ("explicit request", "negative sentiment", "not understood", "action paused",
                      "rule", "other")
_ASKED = re.compile(r"the customer asked \((?P<intent>[^)]*)\)")
_REASONS = (
    (re.compile(r"negative turns? in a row"), "negative sentiment"),
    (re.compile(r"not understood"), "not understood"),
    (re.compile(r"paused"), "action paused"),
    (re.compile(r"rule handed over"), "rule"),
)
DAY = 86400


class EventLike(Protocol):
    """A stored event (``bot.store.Event`` is one)."""

    @property
    def kind(self) -> str: ...

    @property
    def ts(self) -> float: ...

    @property
    def data(self) -> dict[str, Any]: ...

    @property
    def event_id(self) -> str: ...


@dataclass(frozen=True)
class ConversationLog:
    """One conversation as the report sees it."""

    session_id: str
    status: str  # the session's status now: bot / waiting / agent / closed
    events: Sequence[EventLike]  # the events of the reporting window, oldest first


def day_of(ts: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(ts))


def handoff_category(reason: str | None) -> tuple[str, str | None]:
    """(category, the intent that asked for it) for a handoff ``reason``."""
    text = reason or ""
    asked = _ASKED.search(text)
    if asked:
        return "explicit request", asked.group("intent") or None
    for pattern, category in _REASONS:
        if pattern.search(text):
            return category, None
    return "other", None


def is_unanswered(turn: Mapping[str, Any], intent_threshold: float) -> bool:
    """Did the bot fail to understand this customer turn? (see the module docstring)"""
    confidence = turn.get("confidence")
    return (turn.get("policy") == "fallback" or turn.get("intent") == OUT_OF_SCOPE
            or (isinstance(confidence, (int, float)) and confidence < intent_threshold))


def resolution(status: str, events: Iterable[EventLike]) -> str:
    """``bot``, ``agent`` or ``unresolved`` for a conversation (see the module docstring)."""
    if status == "waiting":
        return "unresolved"
    agent = status == "agent"
    open_request = False
    for ev in events:
        if ev.kind != "handoff":
            continue
        state = ev.data.get("state")
        if state == "requested":
            open_request = True
        elif state == "agent_joined":
            agent, open_request = True, False
        elif state == "agent_left":
            open_request = False
    if open_request and status != "agent":
        return "unresolved"
    return "agent" if agent else "bot"


def _normalize(text: str) -> str:
    return " ".join(text.split()).casefold()


@dataclass
class _Day:
    conversations: int = 0
    customer_messages: int = 0
    sentiment: Counter[str] = field(default_factory=Counter)
    score_sum: float = 0.0
    scored: int = 0


@dataclass
class _Intent:
    turns: int = 0
    sentiment: Counter[str] = field(default_factory=Counter)
    score_sum: float = 0.0
    scored: int = 0


class Insights:
    """Counters over conversations; feed them with :meth:`add`, read :meth:`summary`."""

    def __init__(self, *, intent_threshold: float, since: float | None = None,
                 until: float | None = None) -> None:
        self.intent_threshold = intent_threshold
        self.since = since
        self.until = until
        self.conversations = 0
        self.resolutions: Counter[str] = Counter()
        self.handed_over = 0  # conversations with at least one handoff request
        self.handoff_requests = 0
        self.reasons: Counter[str] = Counter()
        self.asked_by_intent: Counter[str] = Counter()
        self.policies: Counter[str] = Counter()
        self.days: dict[str, _Day] = defaultdict(_Day)
        self.intents: dict[str, _Intent] = defaultdict(_Intent)
        self.turns = 0
        self.unanswered_turns = 0
        # normalized text -> [text as first written, times asked]
        self._questions: dict[str, list[Any]] = {}

    def add(self, conversation: ConversationLog) -> None:
        """Count one conversation's events (those of the reporting window)."""
        events = [e for e in conversation.events if self._in_window(e.ts)]
        user_texts = {e.event_id: str(e.data.get("text") or "") for e in events
                      if e.kind == "message" and e.data.get("role") == "user"}
        if not user_texts:
            return  # opened and never written to: not a conversation
        self.conversations += 1
        self.resolutions[resolution(conversation.status, events)] += 1
        active_days: set[str] = set()
        requested = False
        for ev in events:
            day = day_of(ev.ts)
            if ev.event_id in user_texts:
                self.days[day].customer_messages += 1
                active_days.add(day)
            elif ev.kind == "turn":
                self._turn(day, ev.data, user_texts.get(str(ev.data.get("reply_to") or "")))
            elif ev.kind == "handoff" and ev.data.get("state") == "requested":
                requested = True
                self.handoff_requests += 1
                category, intent = handoff_category(ev.data.get("reason"))
                self.reasons[category] += 1
                if intent:
                    self.asked_by_intent[intent] += 1
        self.handed_over += requested
        for day in active_days:
            self.days[day].conversations += 1

    def _in_window(self, ts: float) -> bool:
        return (self.since is None or ts >= self.since) and (self.until is None or ts <= self.until)

    def _turn(self, day: str, turn: Mapping[str, Any], text: str | None) -> None:
        policy = turn.get("policy")
        if policy:
            self.policies[str(policy)] += 1
        intent = turn.get("intent")
        if not intent:
            return  # an interrupted turn: nothing was understood
        self.turns += 1
        sentiment, score = turn.get("sentiment"), turn.get("sentiment_score")
        per_day, per_intent = self.days[day], self.intents[str(intent)]
        per_intent.turns += 1
        for bucket in (per_day, per_intent):
            if sentiment in SENTIMENTS:
                bucket.sentiment[str(sentiment)] += 1
            if isinstance(score, (int, float)):
                bucket.score_sum += float(score)
                bucket.scored += 1
        if is_unanswered(turn, self.intent_threshold):
            self.unanswered_turns += 1
            if text and text.strip():
                entry = self._questions.setdefault(_normalize(text), [" ".join(text.split()), 0])
                entry[1] += 1

    def questions(self) -> list[tuple[str, int]]:
        """The unanswered customer texts (whitespace and case folded), with how often each
        was asked, most frequent first."""
        return sorted(((t, n) for t, n in self._questions.values()), key=lambda q: (-q[1], q[0]))

    def summary(self) -> dict[str, Any]:
        """Every number of the report except the question clusters, JSON-ready."""
        days = self._day_keys()
        return {
            "totals": {
                "conversations": self.conversations,
                "customer_messages": sum(d.customer_messages for d in self.days.values()),
                "turns": self.turns,
                "handoffs": self.handed_over,
                "handoff_requests": self.handoff_requests,
                "handoff_rate": _ratio(self.handed_over, self.conversations),
                "unanswered_turns": self.unanswered_turns,
            },
            "resolution": {r: self.resolutions[r] for r in RESOLUTIONS},
            "handoff_reasons": {c: self.reasons[c] for c in HANDOFF_CATEGORIES if self.reasons[c]},
            "handoff_requested_by_intent": dict(self.asked_by_intent.most_common()),
            "volume": [{"day": d, "conversations": self.days[d].conversations if d in self.days else 0,
                        "customer_messages": self.days[d].customer_messages if d in self.days else 0}
                       for d in days],
            "sentiment_by_day": [{"day": d, **_sentiment(self.days.get(d))} for d in days],
            "sentiment_by_intent": [{"intent": name, "turns": v.turns, **_sentiment(v)}
                                    for name, v in self._intent_order()],
            "intents": [{"intent": name, "turns": v.turns} for name, v in self._intent_order()],
            "policies": dict(self.policies.most_common()),
        }

    def _intent_order(self) -> list[tuple[str, _Intent]]:
        return sorted(self.intents.items(), key=lambda kv: (-kv[1].turns, kv[0]))

    def _day_keys(self) -> list[str]:
        """Every day from the window's start (or the first activity) to its end, gaps included."""
        seen = sorted(d for d, v in self.days.items() if v.customer_messages or v.sentiment or v.scored)
        if self.since is None and not seen:
            return []
        start = self.since if self.since is not None else calendar.timegm(time.strptime(seen[0], "%Y-%m-%d"))
        end = self.until if self.until is not None else time.time()
        out, ts = [], start
        while day_of(ts) <= day_of(end):
            out.append(day_of(ts))
            ts += DAY
        # Activity outside [start, end] cannot happen (the window filters it) unless the clock
        # moved; never drop a day that has numbers.
        return sorted(set(out) | set(seen))


def _ratio(part: int, whole: int) -> float:
    return round(part / whole, 4) if whole else 0.0


def _sentiment(bucket: _Day | _Intent | None) -> dict[str, Any]:
    counts = bucket.sentiment if bucket is not None else Counter[str]()
    total = sum(counts[s] for s in SENTIMENTS)
    return {
        "counts": {s: counts[s] for s in SENTIMENTS},
        "shares": {s: _ratio(counts[s], total) for s in SENTIMENTS},
        "mean_score": round(bucket.score_sum / bucket.scored, 4) if bucket and bucket.scored else None,
    }
