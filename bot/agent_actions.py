"""What each agent action writes to a conversation, and who may do it. No I/O.

An action is a :class:`Write`: the events to append, the session fields to
set, and the ``allow`` guard (status -> the agent who must own it, ``"*"`` for
anyone) that the append script checks atomically against the stored session,
so two agents on two instances cannot both take a conversation over. The
agent socket (``bot.agent_socket``) runs these writes and turns a refused
guard into an ``error`` frame with :func:`refusal`.

Ownership rules:
- takeover: the conversation is with the bot or waiting for a human, or the
  taker already owns it;
- assign (admins): to any agent, unless the conversation is closed;
- send, typing: the owner only;
- handback, close: the owner, or an admin (close also while the bot has it);
- note: anyone, any time; notes never reach the customer.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bot.agents import Agent
from bot.store import Conflict, NewEvent

ANY = "*"


@dataclass(frozen=True)
class Write:
    events: list[NewEvent]
    fields: dict[str, str | None] = field(default_factory=dict)
    allow: dict[str, str] | None = None  # None: no ownership check
    client_id: str | None = None  # dedupe key, for agent messages


def _handoff(state: str, agent: str) -> NewEvent:
    return NewEvent("handoff", {"state": state, "agent": agent})


def _system(text: str, agent: str) -> NewEvent:
    return NewEvent("message", {"role": "system", "text": text, "buttons": [], "cards": [],
                                "agent": agent})


def _joined(name: str) -> list[NewEvent]:
    # The handoff event drives clients' state; the system message is the line every
    # customer client shows, whether or not it knows handoff frames.
    return [_handoff("agent_joined", name), _system(f"{name} joined the chat.", name)]


def takeover(agent: Agent) -> Write:
    return Write(_joined(agent.name), {"status": "agent", "agent": agent.name},
                 allow={"bot": ANY, "waiting": ANY, "agent": agent.name})


def assign(target: str) -> Write:
    """An admin hands the conversation to ``target`` (an existing agent)."""
    return Write(_joined(target), {"status": "agent", "agent": target},
                 allow={"bot": ANY, "waiting": ANY, "agent": ANY})


def send(agent: Agent, client_id: str, text: str) -> Write:
    message = NewEvent("message", {"role": "agent", "text": text, "buttons": [], "cards": [],
                                   "agent": agent.name, "client_id": client_id})
    return Write([message], {"last_message": text[:200], "last_role": "agent"},
                 allow={"agent": agent.name},
                 # Its own namespace in the session's dedupe table: a customer's client_id
                 # can never answer for an agent's message, or the other way round; nor one
                 # agent's for another's (the dedupe runs before the ownership check).
                 client_id=f"agent:{agent.name}:{client_id}")


def handback(agent: Agent, owner: str | None) -> Write:
    """Back to the bot; ``owner`` (from a read just before) names who leaves."""
    return Write([_handoff("agent_left", owner or agent.name)],
                 {"status": "bot", "agent": None, "handoff_reason": None},
                 allow={"agent": ANY if agent.is_admin else agent.name})


def close(agent: Agent) -> Write:
    text = f"{agent.name} closed this conversation. Write again any time if you need more help."
    return Write([_system(text, agent.name)],
                 {"status": "closed", "agent": None, "handoff_reason": None},
                 allow={"bot": ANY, "waiting": ANY, "agent": ANY if agent.is_admin else agent.name})


def note(agent: Agent, text: str) -> Write:
    return Write([NewEvent("note", {"text": text, "agent": agent.name})])


def refusal(exc: Conflict, me: str) -> tuple[str, str]:
    """(error code, message) for a write the guard refused."""
    if exc.status == "agent" and exc.agent and exc.agent != me:
        return "owned", f"{exc.agent} is handling this conversation"
    if exc.status == "closed":
        return "closed", "this conversation is closed"
    return "not_owner", "take this conversation over first"


def _json(raw: str | None, default: Any) -> Any:
    try:
        return json.loads(raw) if raw else default
    except ValueError:
        return default


def _float(raw: str | None) -> float | None:
    try:
        return float(raw) if raw else None
    except ValueError:
        return None


def summary(sid: str, record: Mapping[str, Any]) -> dict[str, Any]:
    """A session summary for consoles, from a session record or a published update.

    Both hold Redis strings; this gives every field its JSON type, and every key
    a value (None when unset)."""
    return {
        "session_id": sid,
        "status": record.get("status") or "bot",
        "customer": _json(record.get("customer"), {}),
        "last_message": record.get("last_message"),
        "last_role": record.get("last_role"),
        "last_intent": record.get("last_intent"),
        "sentiment": record.get("sentiment"),
        "sentiment_trend": _json(record.get("sentiment_trend"), []),
        "waiting_since": _float(record.get("waiting_since")),
        "handoff_reason": record.get("handoff_reason"),
        "agent": record.get("agent"),
        "created_at": _float(record.get("created_at")),
        "updated_at": _float(record.get("updated_at")),
    }
