"""Turning the domain's responses and rasa-sdk dispatcher messages into replies.

A response has variations; a variation may carry ``condition`` (Rasa 3's
conditional variations, on slot values), ``buttons``, ``image``, ``custom``
(``{"cards": [...]}``) and ``{slot}`` placeholders. The variations whose conditions
hold are used, or the unconditional ones when none does; the choice among them is
seeded by the message id, so re-running a turn says the same thing.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

from dialogue.types import Button, Reply


class _Formatter(dict[str, Any]):
    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def _matches(variation: Mapping[str, Any], slots: Mapping[str, Any]) -> bool:
    for cond in variation.get("condition") or []:
        if isinstance(cond, dict) and cond.get("type", "slot") == "slot":
            if slots.get(str(cond.get("name"))) != cond.get("value"):
                return False
    return True


def buttons_of(raw: Any) -> list[Button]:
    return [Button(str(b.get("title", "")), str(b.get("payload", "")))
            for b in raw or [] if isinstance(b, dict) and b.get("payload") is not None]


def cards_of(message: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Cards from a variation or dispatcher message: ``custom.cards``, Rasa's ``elements``
    (generic template), or ``attachment.payload.elements``."""
    raw: list[Any] = []
    custom = message.get("custom")
    if isinstance(custom, dict) and isinstance(custom.get("cards"), list):
        raw = custom["cards"]
    elif isinstance(message.get("cards"), list):
        raw = message["cards"]
    elif isinstance(message.get("elements"), list):
        raw = message["elements"]
    else:
        attachment = message.get("attachment")
        if isinstance(attachment, dict) and isinstance((attachment.get("payload") or {}).get("elements"),
                                                       list):
            raw = attachment["payload"]["elements"]
    cards = []
    for item in raw:
        if not isinstance(item, dict):
            continue
        cards.append({
            "title": str(item.get("title", "")),
            "subtitle": str(item.get("subtitle", "")),
            "image": str(item.get("image") or item.get("image_url") or ""),
            "url": str(item.get("url") or (item.get("default_action") or {}).get("url") or ""),
            "buttons": [b.to_dict() for b in buttons_of(item.get("buttons"))],
        })
    return cards


def fill(text: str, values: Mapping[str, Any]) -> str:
    """``{slot}`` placeholders from ``values``; unknown names stay as written."""
    try:
        return text.format_map(_Formatter({k: "" if v is None else v for k, v in values.items()}))
    except (ValueError, IndexError):  # a stray brace in the text: say it as written
        return text


class Responses:
    """The domain's responses, rendered for one turn."""

    def __init__(self, responses: Mapping[str, list[dict[str, Any]]]) -> None:
        self.responses = responses

    def __contains__(self, name: object) -> bool:
        return name in self.responses

    def render(self, name: str, slots: Mapping[str, Any], seed: str,
               extra: Mapping[str, Any] | None = None) -> Reply | None:
        variations = self.responses.get(name, [])
        # As in Rasa: a variation whose conditions hold wins; the unconditional ones are
        # the default, said only when no conditional variation matches.
        variations = ([v for v in variations if v.get("condition") and _matches(v, slots)]
                      or [v for v in variations if not v.get("condition")])
        if not variations:
            return None
        choice = random.Random(f"{seed}:{name}").choice(variations)
        values = {**slots, **(extra or {})}
        return Reply(fill(str(choice.get("text", "")), values), buttons_of(choice.get("buttons")),
                     cards_of(choice), name=name)

    def dispatcher_message(self, message: Mapping[str, Any], slots: Mapping[str, Any],
                           seed: str) -> Reply | None:
        """One of rasa-sdk's ``responses`` (what ``dispatcher.utter_message`` collected)."""
        name = message.get("response") or message.get("template")
        extra = {k: v for k, v in message.items() if k not in {"response", "template"}}
        if name:
            # None when the domain has no such response (deskmate validate reports it).
            return self.render(str(name), slots, seed, extra)
        text = str(message.get("text") or "")
        buttons = buttons_of(message.get("buttons") or message.get("quick_replies"))
        cards = cards_of(message)
        if message.get("image") and not cards:
            cards = [{"title": "", "subtitle": "", "image": str(message["image"]), "url": "",
                      "buttons": []}]
        if not text and not buttons and not cards:
            return None
        return Reply(text, buttons, cards)
