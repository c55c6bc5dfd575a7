"""Slot filling by Rasa 3's slot mappings: ``from_entity``, ``from_text``, ``from_intent``.

A mapping with ``conditions`` applies only while its form is active (and, if
given, while that form asks for ``requested_slot``); without conditions it
applies on every turn, as in Rasa. Values are coerced to the slot's type; a
categorical slot takes only one of its declared values.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def _conditions_met(mapping: Mapping[str, Any], active_loop: str | None, requested: str | None) -> bool:
    conditions = mapping.get("conditions")
    if not conditions:
        return True
    for cond in conditions:
        if not isinstance(cond, dict):
            continue
        if cond.get("active_loop") != active_loop:
            continue
        if "requested_slot" in cond and cond["requested_slot"] != requested:
            continue
        return True
    return False


def _intent_allowed(mapping: Mapping[str, Any], intent: str) -> bool:
    wanted = mapping.get("intent")
    if wanted is not None and intent not in (wanted if isinstance(wanted, list) else [wanted]):
        return False
    blocked = mapping.get("not_intent")
    return not (blocked is not None and intent in (blocked if isinstance(blocked, list) else [blocked]))


def coerce(spec: Mapping[str, Any], value: Any) -> tuple[bool, Any]:
    """(accepted, value in the slot's type)."""
    if value is None:
        return True, None
    kind = spec.get("type", "any")
    if kind == "float":
        try:
            number = float(str(value).replace(",", ".").strip("€$ "))
        except ValueError:
            return False, None
        low, high = spec.get("min_value"), spec.get("max_value")
        if low is not None and number < float(low) or high is not None and number > float(high):
            return False, None
        return True, number
    if kind == "bool":
        if isinstance(value, bool):
            return True, value
        text = str(value).strip().lower()
        if text in {"true", "yes", "1"}:
            return True, True
        if text in {"false", "no", "0"}:
            return True, False
        return False, None
    if kind == "categorical":
        for option in spec.get("values") or []:
            if str(option).lower() == str(value).strip().lower():
                return True, option
        return False, None
    if kind == "list":
        return True, value if isinstance(value, list) else [value]
    if kind == "text":
        return True, str(value)
    return True, value


def map_slots(slots: Mapping[str, Mapping[str, Any]], *, text: str, intent: str,
              entities: Sequence[Mapping[str, Any]], active_loop: str | None,
              requested: str | None) -> dict[str, Any]:
    """The slot values this user turn sets, by each slot's mappings."""
    found = fill_slots(slots, text=text, intent=intent, entities=entities, active_loop=active_loop,
                       requested=requested)
    return {name: value for name, (value, _) in found.items()}


def fill_slots(slots: Mapping[str, Mapping[str, Any]], *, text: str, intent: str,
               entities: Sequence[Mapping[str, Any]], active_loop: str | None,
               requested: str | None) -> dict[str, tuple[Any, str]]:
    """Like :func:`map_slots`, with the type of the mapping that filled each slot
    (``from_entity``, ``from_text``, ``from_intent``): the engine trusts a whole message
    taken as a value less than an entity found in it."""
    found: dict[str, tuple[Any, str]] = {}
    for name, spec in slots.items():
        for mapping in spec.get("mappings") or []:
            if not isinstance(mapping, dict) or not _conditions_met(mapping, active_loop, requested):
                continue
            if not _intent_allowed(mapping, intent):
                continue
            kind = mapping.get("type")
            value: Any = None
            matched = False
            if kind == "from_entity":
                for ent in entities:
                    if ent.get("entity") != mapping.get("entity"):
                        continue
                    if "role" in mapping and ent.get("role") != mapping["role"]:
                        continue
                    if "group" in mapping and ent.get("group") != mapping["group"]:
                        continue
                    value, matched = ent.get("value"), True
                    break
            elif kind == "from_text":
                # Only a requested slot takes free text, unless the mapping says otherwise by
                # having no conditions (Rasa's behaviour, kept for compatibility).
                value, matched = text, True
            elif kind == "from_intent":
                value, matched = mapping.get("value"), True
            if not matched:
                continue
            ok, value = coerce(spec, value)
            if ok:
                found[name] = (value, str(kind))
                break
    return found
