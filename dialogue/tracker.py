"""Rasa's tracker, as rasa-sdk actions see it, and the events they send back.

:func:`tracker_state` builds the JSON Rasa posts to an action server (what
``rasa_sdk.Tracker.from_dict`` reads); :func:`apply_events` folds the events an
action returns into the turn's working state. Unknown or unsupported events are
reported, never fatal.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dialogue.types import Button, HistoryItem, Reply

log = logging.getLogger("deskmate.tracker")


@dataclass
class TurnState:
    """What a turn changes as it runs; ``bot/`` stores the result atomically at the end.

    ``slots`` and ``state`` are those of the conversation when the customer's message
    arrived; the turn keeps a copy of them to go back to (:meth:`rewind`)."""

    slots: dict[str, Any]
    state: dict[str, Any]
    replies: list[Reply] = field(default_factory=list)
    slot_events: list[tuple[str, Any]] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)
    # The action to run next (FollowupAction). One, as Rasa's tracker.followup_action: a
    # later FollowupAction replaces an earlier one.
    followup: str | None = None
    handoff: str | None = None
    # An action set requested_slot (a form validator choosing the next slot, or None to end
    # the form early, as rasa-sdk's does when it overrides required_slots).
    requested_chosen: bool = False
    _start: tuple[dict[str, Any], dict[str, Any]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._start = copy.deepcopy((self.slots, self.state))

    def set_slot(self, name: str, value: Any) -> None:
        if self.slots.get(name) != value or name not in self.slots:
            self.slots[name] = value
            self.slot_events.append((name, value))

    def rewind(self) -> None:
        """Undo what the turn changed since the customer's message, as Rasa's
        UserUtteranceReverted does: slots (the ones read from the message too), the active
        form and the slot it asked for, and the pending follow-up. What was said stays said,
        the actions that ran stay on the record, and a handoff already decided stands."""
        slots, state = copy.deepcopy(self._start)
        self.slots.clear()
        self.slots.update(slots)
        self.state.clear()
        self.state.update(state)
        self.slot_events.clear()
        self.followup = None
        self.requested_chosen = False

    @property
    def active_loop(self) -> str | None:
        value = self.state.get("active_loop")
        return str(value) if value else None


def tracker_state(*, sender_id: str, slots: Mapping[str, Any], text: str, intent: str, confidence: float,
                  ranking: Sequence[Mapping[str, Any]], entities: Sequence[Mapping[str, Any]],
                  history: Sequence[HistoryItem], active_loop: str | None, latest_action: str | None,
                  candidates: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The tracker dict of Rasa's action-server protocol for the current turn.

    ``candidates`` are the slot values a ``validate_<form>`` action is to check. Rasa's
    form sends them as the very last events, after its own ``action`` event, and
    rasa-sdk's ``Tracker.slots_to_validate()`` reads only that tail; every other slot
    event goes before the latest action, so nothing else reads as a candidate."""
    now = time.time()
    candidates = candidates or {}
    events: list[dict[str, Any]] = []
    for item in history:
        kind = "user" if item.role == "user" else "bot"
        events.append({"event": kind, "timestamp": now, "text": item.text})
    latest = {
        "text": text,
        "intent": {"name": intent, "confidence": confidence},
        "intent_ranking": [{"name": r.get("intent"), "confidence": r.get("confidence")} for r in ranking],
        "entities": list(entities),
    }
    events.append({"event": "user", "timestamp": now, "text": text, "parse_data": latest})
    for name, value in slots.items():
        if value is not None and name not in candidates:
            events.append({"event": "slot", "timestamp": now, "name": name, "value": value})
    if latest_action:
        events.append({"event": "action", "timestamp": now, "name": latest_action})
    for name, value in candidates.items():
        events.append({"event": "slot", "timestamp": now, "name": name, "value": value})
    return {
        "sender_id": sender_id,
        "slots": dict(slots),
        "latest_message": latest,
        "latest_event_time": now,
        "followup_action": None,
        "paused": False,
        "events": events,
        "latest_input_channel": "deskmate",
        "active_loop": {"name": active_loop} if active_loop else {},
        "latest_action": {"action_name": latest_action} if latest_action else {},
        "latest_action_name": latest_action,
    }


def apply_events(turn: TurnState, events: Sequence[Any], *, initial_slots: Mapping[str, Any]) -> list[str]:
    """Apply rasa-sdk event dicts to ``turn``; returns human-readable notes on ignored events."""
    notes: list[str] = []
    for event in events:
        if not isinstance(event, dict):
            notes.append(f"ignored non-event {event!r}")
            continue
        kind = event.get("event")
        if kind == "slot":
            turn.set_slot(str(event.get("name")), event.get("value"))
        elif kind in ("reset_slots", "restart"):
            for name in list(turn.slots):
                turn.set_slot(name, initial_slots.get(name))
            if kind == "restart":
                turn.state.clear()
        elif kind == "followup":
            if event.get("name"):
                turn.followup = str(event["name"])
            else:
                notes.append("ignored a followup event without an action name")
        elif kind == "pause":
            turn.handoff = turn.handoff or "an action paused the conversation"
        elif kind in ("active_loop", "form"):
            loop = event.get("name") or None
            if loop != turn.active_loop:  # the slot asked for belonged to the form that ended
                turn.state.pop("requested_slot", None)
            turn.state["active_loop"] = loop
        elif kind == "bot":
            data = event.get("data") or {}
            turn.replies.append(Reply(str(event.get("text") or ""),
                                      [Button(str(b.get("title", "")), str(b.get("payload", "")))
                                       for b in data.get("buttons") or [] if isinstance(b, dict)]))
        elif kind == "rewind":
            turn.rewind()
        elif kind in ("resume", "action", "user", "session_started", "action_execution_rejected",
                      "user_featurization", "loop_interrupted", "entities", "undo"):
            continue  # nothing to apply here: bookkeeping events of Rasa's tracker
        else:
            notes.append(f"event {kind!r} is not supported and was ignored")
    for note in notes:
        log.warning("%s", note)
    return notes
