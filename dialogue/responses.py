"""Turning the domain's responses and rasa-sdk dispatcher messages into replies.

A response has variations; a variation may carry ``condition`` (Rasa 3's
conditional variations, on slot values), ``channel``, ``buttons``, ``image``,
``custom`` (``{"cards": [...]}``) and ``{slot}`` placeholders. The variations are
chosen as Rasa's ``ResponseVariationFilter`` does; the choice among the eligible
ones is seeded by the message id, so re-running a turn says the same thing.
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Mapping
from typing import Any

from dialogue.types import Button, Reply

log = logging.getLogger(__name__)

# The output channel a ``channel:`` variation must name to be said here. Rasa's web
# widgets (Rasa Webchat, the socket.io channel) are "socketio"; custom actions see the
# input channel as "deskmate" (``tracker.get_latest_input_channel()``), so both count.
WIDGET_CHANNELS = ("deskmate", "socketio")

# As Rasa's interpolator: ``{name}`` without a newline or brace inside; ``{{`` and ``}}``
# are literal braces. A name is looked up whole, so ``{support.email}`` is one name.
_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([^\n{}]+?)\}")

# The variation keys Rasa interpolates (rasa/core/nlg/response.py), recursively.
_INTERPOLATED = ("text", "image", "custom", "buttons", "attachment", "quick_replies")


def _same(have: Any, want: Any) -> bool:
    # Rasa 3 compares strings casefolded ("Premium" matches "premium"), other values exactly.
    if isinstance(have, str) and isinstance(want, str):
        return have.casefold() == want.casefold()
    return bool(have == want)


def _matches(variation: Mapping[str, Any], slots: Mapping[str, Any]) -> bool:
    for cond in variation.get("condition") or []:
        if isinstance(cond, dict) and cond.get("type", "slot") == "slot":
            if not _same(slots.get(str(cond.get("name"))), cond.get("value")):
                return False
    return True


def eligible(variations: list[dict[str, Any]], slots: Mapping[str, Any],
             channels: tuple[str, ...] = WIDGET_CHANNELS) -> list[dict[str, Any]]:
    """The variations Rasa would choose among: the first non-empty group of conditional
    variations for this channel, unconditional ones for this channel, conditional ones for
    any channel, unconditional ones for any channel. Other channels' variations never count."""
    conditional = [v for v in variations if v.get("condition") and _matches(v, slots)]
    default = [v for v in variations if not v.get("condition")]
    for group in (conditional, default):
        ours = [v for v in group if v.get("channel") in channels]
        if ours:
            return ours
    for group in (conditional, default):
        anywhere = [v for v in group if not v.get("channel")]
        if anywhere:
            return anywhere
    return []


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
    """``{slot}`` placeholders from ``values`` (None says nothing); a name with no value,
    a dotted name or a stray brace stays as written, as Rasa leaves an unfillable text."""
    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        if name is None:  # "{{" or "}}"
            return match.group(0)[0]
        if name not in values:
            return match.group(0)
        value = values[name]
        return "" if value is None else str(value)
    return _PLACEHOLDER.sub(one, text)


def interpolate(value: Any, values: Mapping[str, Any]) -> Any:
    """``fill`` applied to every string in ``value``, however deeply nested (a copy)."""
    if isinstance(value, str):
        return fill(value, values)
    if isinstance(value, dict):
        return {k: interpolate(v, values) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, values) for v in value]
    return value


def _image_card(url: str) -> dict[str, Any]:
    return {"title": "", "subtitle": "", "image": url, "url": "", "buttons": []}


class Responses:
    """The domain's responses, rendered for one turn.

    ``channels`` are the ``channel:`` names said here (see ``WIDGET_CHANNELS``).
    """

    def __init__(self, responses: Mapping[str, list[dict[str, Any]]], *,
                 channels: tuple[str, ...] = WIDGET_CHANNELS) -> None:
        self.responses = responses
        self.channels = channels
        self._warned: set[str] = set()  # responses already reported as unshowable

    def __contains__(self, name: object) -> bool:
        return name in self.responses

    def render(self, name: str, slots: Mapping[str, Any], seed: str,
               extra: Mapping[str, Any] | None = None) -> Reply | None:
        """One variation of ``name``, filled in; None when no variation is eligible or the
        chosen one has nothing the widget can show (a ``custom`` payload other than cards)."""
        variations = eligible(self.responses.get(name, []), slots, self.channels)
        if not variations:
            return None
        choice = random.Random(f"{seed}:{name}").choice(variations)
        values = {**slots, **(extra or {})}
        filled = {k: interpolate(v, values) if k in _INTERPOLATED else v for k, v in choice.items()}
        return self._reply(filled, name)

    def dispatcher_message(self, message: Mapping[str, Any], slots: Mapping[str, Any],
                           seed: str) -> Reply | None:
        """One of rasa-sdk's ``responses`` (what ``dispatcher.utter_message`` collected)."""
        name = message.get("response") or message.get("template")
        extra = {k: v for k, v in message.items() if k not in {"response", "template"}}
        if name:
            # None when the domain has no such response (deskmate validate reports it).
            return self.render(str(name), slots, seed, extra)
        return self._reply(message, None)

    def _reply(self, message: Mapping[str, Any], name: str | None) -> Reply | None:
        text = str(message.get("text") or "")
        buttons = buttons_of(message.get("buttons") or message.get("quick_replies"))
        cards = cards_of(message)
        if message.get("image"):
            # The protocol has no image field: an image is a card with only the image.
            cards = [_image_card(str(message["image"])), *cards]
        if text or buttons or cards:
            return Reply(text, buttons, cards, name=name)
        # The message frame carries text, buttons and cards only, so another ``custom``
        # payload (Slack blocks, say) has nothing to show; an empty bubble would be worse.
        key = name or "a custom action's message"
        if message.get("custom") and key not in self._warned:
            self._warned.add(key)
            log.warning("%s: a custom payload other than {cards: [...]} is not shown in the web "
                        "widget; the message is skipped", key)
        return None
