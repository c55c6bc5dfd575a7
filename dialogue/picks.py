"""Product picks in a conversation: the reply of ``action_recommend_products`` and the
offer of picks to a customer who browsed but hesitates. The ranking itself is
:class:`dialogue.recommend.Recommender`'s; this module turns the conversation (its slots,
the customer's words, what they viewed and bought) into its preferences and its picks
into a reply."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from dialogue.recommend import Preferences, Profile, Recommender
from dialogue.responses import Responses
from dialogue.slots import coerce
from dialogue.types import Button, Conversation, Reply

RECOMMEND = "action_recommend_products"
# Intents after which a customer who browsed is offered picks.
_HESITANT = {"greet", "deny", "thanks", "affirm"}
_WORD = re.compile(r"[a-z0-9]+")
_STOPWORDS = set("""a an the i me my we you your it is are am be to of for in on at and or with
something some any anything show find want need looking look like would could can please some
do does have has get give me recommend suggest buy new""".split())


class Picks:
    """Recommendations as replies, for one project's catalogue and responses."""

    def __init__(self, recommender: Recommender, responses: Responses) -> None:
        self.recommender = recommender
        self.responses = responses

    def reply(self, conversation: Conversation, slots: Mapping[str, Any], text: str,
              entities: Sequence[Mapping[str, Any]], *, button: bool, event_id: str) -> Reply:
        """Three picks for the customer's wishes (slots, and the words of ``text`` unless
        the request came from a ``button``), saying when wishes had to be relaxed."""
        ok, budget = coerce({"type": "float"}, slots.get("budget"))
        prefs = Preferences(category=slots.get("category"), size=slots.get("size"),
                            color=slots.get("color"), budget=budget if ok else None,
                            words=() if button else request_words(text, entities))
        picks = self.recommender.recommend(prefs, profile(conversation), k=3)
        if not picks:
            reply = self.responses.render("utter_no_products_found", dict(slots), event_id)
            return reply or Reply("I couldn't find a matching product right now.", name=RECOMMEND)
        intro = "Here are a few picks for you:" if not any(s.relaxed for s in picks) else (
            "I couldn't find an exact match, so here are the closest picks:")
        return Reply(intro, [Button("Size help", "/size_help")],
                     [self.recommender.card(s) for s in picks], name=RECOMMEND)

    @staticmethod
    def offer(conversation: Conversation, intent: str, replies: list[Reply]) -> None:
        """A customer who browsed but hesitates (greets, thanks, says no) gets a button to
        see picks on the turn's last reply."""
        if not conversation.profile.get("viewed") or intent not in _HESITANT or not replies:
            return
        last = replies[-1]
        if any(b.payload.startswith("/recommend") for b in last.buttons):
            return
        replies[-1] = Reply(last.text, [*last.buttons, Button("Picks for me", "/recommend")],
                            last.cards, last.name, last.sources)


def profile(conversation: Conversation) -> Profile:
    p = conversation.profile
    return Profile(tuple(p.get("viewed", [])), tuple(p.get("carted", [])), tuple(p.get("bought", [])))


def request_words(text: str, entities: Sequence[Mapping[str, Any]]) -> tuple[str, ...]:
    """The words of a product request that rank products ("waterproof", "wedding").

    Left out: what an entity already made a filter ("black", "sneakers", "size 42",
    "under 100 euros" -- "100" would match "100% cotton"), numbers and function words.
    A word a synonym renamed stays: "hoodies" (sweaters) and "chelsea boots" (boots)
    say more than the category they fill."""
    for e in entities:
        start, end = e.get("start"), e.get("end")
        if e.get("extractor") != "synonym" and isinstance(start, int) and isinstance(end, int):
            text = text[:start] + " " * (end - start) + text[end:]  # offsets stay valid
    return tuple(w for w in _WORD.findall(text.lower())
                 if w not in _STOPWORDS and len(w) > 2 and not w.isdigit())


__all__ = ["RECOMMEND", "Picks", "profile", "request_words"]
