"""Slot filling by Rasa 3's slot mappings, as its ``action_extract_slots`` does it.

``from_entity``, ``from_text``, ``from_intent`` and ``from_trigger_intent``. A mapping
with ``conditions`` applies only while its form is active (and, if given, while that
form asks for ``requested_slot``); without conditions it applies on every turn. While
a form is active its ``ignored_intents`` count as every mapping's ``not_intent``, and
an entity fills a required slot the form did not ask for only if no other required
slot has the same mapping ("Berlin" is the city asked for, not both cities). When a
message starts a form, the mappings are read again with that form active, as Rasa's
form does on activation: this is when ``from_trigger_intent`` fills.

Values are coerced to the slot's type; a categorical slot takes only one of its
declared values. A float slot's ``min_value``/``max_value`` only scale Rasa's
featurization, so a value outside them is kept.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _required(forms: Mapping[str, Any], form: str) -> list[str]:
    """The form's required slots as the domain writes them (a list, or Rasa 2's mapping)."""
    spec = forms.get(form) or {}
    required = spec.get("required_slots") if isinstance(spec, dict) else None
    return [str(s) for s in required or []]


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


def _under_form(mapping: Mapping[str, Any], form: str) -> bool:
    """Whether ``form``'s settings reach this mapping: it has no conditions, or one names the form."""
    conditions = [c for c in mapping.get("conditions") or [] if isinstance(c, dict)]
    return not conditions or any(c.get("active_loop") == form for c in conditions)


def _intent_desired(mapping: Mapping[str, Any], intent: str, ignored: Sequence[str]) -> bool:
    # Rasa: an intent the mapping names is wanted even if it is also excluded.
    wanted = _as_list(mapping.get("intent"))
    if wanted:
        return intent in wanted
    return intent not in _as_list(mapping.get("not_intent")) and intent not in ignored


def _unique_in_form(slots: Mapping[str, Mapping[str, Any]], forms: Mapping[str, Any], name: str,
                    mapping: Mapping[str, Any], active_loop: str | None, requested: str | None) -> bool:
    """False when an entity mapping of a required slot the form did not ask for is shared
    with another required slot: one entity cannot tell which of them it answers."""
    if not active_loop or requested == name:
        return True
    required = _required(forms, active_loop)
    if name not in required:
        return True
    same = sum(1 for slot in required for other in (slots.get(slot) or {}).get("mappings") or []
               if other == mapping)
    return same <= 1


def _values(mapping: Mapping[str, Any], *, text: str,
            entities: Sequence[Mapping[str, Any]], active_loop: str | None) -> list[Any]:
    """Every value the mapping reads from this message (Rasa's
    ``extract_slot_value_from_predefined_mapping``); empty when it reads none."""
    kind = mapping.get("type")
    if kind == "from_entity":
        # Role and group must match exactly: a mapping without a role does not take an
        # entity that has one, as in Rasa.
        return [ent.get("value") for ent in entities
                if ent.get("entity") == mapping.get("entity")
                and ent.get("role") == mapping.get("role") and ent.get("group") == mapping.get("group")]
    if kind == "from_text":
        return [text]
    if kind == "from_intent":
        return [mapping.get("value")]
    if kind == "from_trigger_intent":
        # Only while a form is active (or starting), and one its conditions name if it has any.
        loops = [c.get("active_loop") for c in mapping.get("conditions") or [] if isinstance(c, dict)]
        if active_loop is None or (loops and active_loop not in loops):
            return []
        return [mapping.get("value")]
    return []  # custom: an action fills it


def _extract(slots: Mapping[str, Mapping[str, Any]], forms: Mapping[str, Any], *, text: str,
             intent: str, entities: Sequence[Mapping[str, Any]], active_loop: str | None,
             requested: str | None) -> dict[str, tuple[Any, str]]:
    spec_of_loop = (forms.get(active_loop) or {}) if active_loop else {}
    ignored = [str(i) for i in _as_list(spec_of_loop.get("ignored_intents"))]
    found: dict[str, tuple[Any, str]] = {}
    for name, spec in slots.items():
        for mapping in spec.get("mappings") or []:
            if not isinstance(mapping, dict):
                continue
            kind = mapping.get("type")
            blocked = ignored if active_loop and _under_form(mapping, active_loop) else []
            if not _intent_desired(mapping, intent, blocked):
                continue
            # A trigger-intent mapping's conditions only name the forms it fills for (read in _values).
            if kind != "from_trigger_intent" and not _conditions_met(mapping, active_loop, requested):
                continue
            if kind == "from_entity" and not _unique_in_form(slots, forms, name, mapping, active_loop,
                                                             requested):
                continue
            values = _values(mapping, text=text, entities=entities, active_loop=active_loop)
            if not values:
                continue
            # A list slot takes every value, any other slot the last one (Rasa's order).
            ok, value = coerce(spec, values if spec.get("type") == "list" else values[-1])
            if ok:
                found[name] = (value, str(kind))
                break
    return found


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
        # min_value/max_value cap only Rasa's featurization of the slot, never its value.
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
              requested: str | None, forms: Mapping[str, Any] | None = None,
              starting: str | None = None) -> dict[str, Any]:
    """The slot values this user turn sets, by each slot's mappings."""
    found = fill_slots(slots, text=text, intent=intent, entities=entities, active_loop=active_loop,
                       requested=requested, forms=forms, starting=starting)
    return {name: value for name, (value, _) in found.items()}


def fill_slots(slots: Mapping[str, Mapping[str, Any]], *, text: str, intent: str,
               entities: Sequence[Mapping[str, Any]], active_loop: str | None,
               requested: str | None, forms: Mapping[str, Any] | None = None,
               starting: str | None = None) -> dict[str, tuple[Any, str]]:
    """Like :func:`map_slots`, with the type of the mapping that filled each slot
    (``from_entity``, ``from_text``, ...): the engine trusts a whole message taken as a
    value less than an entity found in it.

    ``forms`` is the domain's ``forms`` section as written (``required_slots``,
    ``ignored_intents``); ``starting`` the form this message starts, if any."""
    forms = forms or {}
    found = _extract(slots, forms, text=text, intent=intent, entities=entities,
                     active_loop=active_loop, requested=requested)
    if starting is not None and starting != active_loop:
        # Rasa's FormAction.activate runs the extraction again with the new form active
        # and nothing requested yet; what it sets there wins.
        found.update(_extract(slots, forms, text=text, intent=intent, entities=entities,
                              active_loop=starting, requested=None))
    return found
