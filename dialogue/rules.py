"""Which rule answers a turn: a project's rules matched against the conversation as
Rasa's RulePolicy matches them (intent, conditions, earlier turns), most specific first.

The engine asks :class:`RuleBook` for the rule of a customer's intent
(:meth:`RuleBook.match`), for the rule that goes on after an action when a rule says
``wait_for_user_input: false`` (:meth:`RuleBook.after`), and keeps the few past turns
multi-turn rules look back at in the dialogue state (:meth:`RuleBook.remember`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from dialogue.project import SLOT_IS_SET, Project, Rule, base_intent
from dialogue.slots import coerce
from dialogue.tracker import TurnState
from dialogue.types import Conversation

RULE_TURNS = "rule_turns"  # dialogue state: [intent, actions of the rule that answered] per past turn


class RuleBook:
    """A project's rules, indexed for the lookups of one turn."""

    def __init__(self, project: Project) -> None:
        self.slots = project.slots
        self.by_intent: dict[str, list[Rule]] = {}
        for rule in project.rule_list:
            if rule.intent is not None:
                self.by_intent.setdefault(rule.intent, []).append(rule)
        # Rules that start with an action, run after a rule with wait_for_user_input: false
        # (a form's submit rules run when the form completes, through project.submits).
        self.after_rules = [r for r in project.rule_list if r.after and r.after not in project.forms]
        # The longest look back of a multi-turn rule: this many past turns stay in the state.
        self.memory = max((len(r.earlier) for r in project.rule_list), default=0)

    def match(self, intent: str, turn: TurnState, conversation: Conversation) -> Rule | None:
        """The rule for ``intent`` (``chitchat`` also for the retrieval intent
        ``chitchat/ask_name``) whose conditions hold; of several, the most specific
        (Rasa's RulePolicy takes the longest matching rule), then the first written."""
        candidates = self.by_intent.get(intent, [])
        if base_intent(intent) != intent:
            candidates = candidates + self.by_intent.get(base_intent(intent), [])
        return _most_specific([r for r in candidates if self.holds(r, turn, conversation)])

    def after(self, action: str | None, turn: TurnState, conversation: Conversation) -> Rule | None:
        """The rule that starts with ``action`` and whose conditions hold, if any."""
        return _most_specific([r for r in self.after_rules
                               if r.after == action and self.holds(r, turn, conversation)])

    def holds(self, rule: Rule, turn: TurnState, conversation: Conversation) -> bool:
        """Whether ``rule``'s conditions hold: its form (or none), the conversation's start,
        its slot values and the earlier turns of a multi-turn rule."""
        if rule.active_loop and turn.active_loop != rule.active_loop:
            return False
        if rule.no_loop and turn.active_loop:
            return False
        if rule.conversation_start and any(item.role == "user" for item in conversation.history):
            return False
        for name, wanted in rule.slots:
            if not _slot_matches(self.slots.get(name) or {}, turn.slots.get(name), wanted):
                return False
        return not rule.earlier or _earlier_match(rule.earlier, turn.state.get(RULE_TURNS) or [])

    def remember(self, turn: TurnState, intent: str, actions: Sequence[str] | None) -> None:
        """Keep what multi-turn rules look back at: the intent of each turn and the actions
        of the rule that answered it (None: no rule did). Nothing in projects without them."""
        if self.memory:
            past = list(turn.state.get(RULE_TURNS) or [])[-self.memory:]
            turn.state[RULE_TURNS] = [*past, [intent, actions]][-self.memory:]


def _most_specific(rules: list[Rule]) -> Rule | None:
    return max(rules, key=lambda r: r.specificity) if rules else None  # max keeps the first of equals


def _earlier_match(earlier: Sequence[tuple[str, Sequence[str]]], remembered: Sequence[Any]) -> bool:
    """Whether the last turns went as a multi-turn rule's earlier turns are written: the
    same intents, answered by the same actions."""
    past = list(remembered)[-len(earlier):]
    if len(past) < len(earlier):
        return False
    for (intent, actions), seen in zip(earlier, past, strict=True):
        said, did = (seen + [None, None])[:2] if isinstance(seen, list) else (None, None)
        if not isinstance(said, str) or intent not in (said, base_intent(said)):
            return False
        if did != list(actions):
            return False
    return True


def _slot_matches(spec: Mapping[str, Any], value: Any, wanted: Any) -> bool:
    """A rule's ``slot_was_set`` condition, as Rasa featurizes the slot: text, list and any
    slots only as set or not set, the others by value; null means not set."""
    if wanted is None:
        return value is None or value == []
    if wanted is SLOT_IS_SET or spec.get("type", "text") in ("text", "list", "any"):
        return value is not None and value != []
    ok, want = coerce(spec, wanted)
    ok_value, have = coerce(spec, value)
    return ok and ok_value and want == have and have is not None


__all__ = ["RULE_TURNS", "RuleBook"]
