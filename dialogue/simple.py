"""The built-in pipeline: answers from the bot project's rules and responses.

It takes the intent from the trained classifier's reading of the message
(``UserMessage.nlu``) or, without a classifier, from word overlap with the
project's NLU examples (TF-IDF-weighted cosine similarity), maps the intent
to an action through ``data/rules.yml`` and answers with one of the domain's
response variations, streamed word by word. Button payloads (``/intent`` or
``/intent{"slot": "value"}``) select the intent directly. The full dialogue
engine replaces this policy without changing the interface.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import re
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

from dialogue.project import Project
from dialogue.types import (
    Button,
    Conversation,
    Output,
    Reply,
    SlotSet,
    StreamedReply,
    TurnAnalysis,
    UserMessage,
)

_WORD = re.compile(r"\w+", re.UNICODE)
_PAYLOAD = re.compile(r"^/(\w+)(\{.*\})?$", re.DOTALL)
FALLBACK = "utter_default"
FALLBACK_TEXT = "Sorry, I didn't get that. Could you rephrase it, or shall I get a person to help?"


def words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]


class ExampleMatcher:
    """Nearest NLU example by TF-IDF cosine similarity; pure Python, no model."""

    def __init__(self, examples: dict[str, list[str]]) -> None:
        docs = [(intent, Counter(words(t))) for intent, texts in examples.items() for t in texts]
        df: Counter[str] = Counter()
        for _, bag in docs:
            df.update(bag.keys())
        n = max(len(docs), 1)
        self.idf = {w: math.log((1 + n) / (1 + c)) + 1.0 for w, c in df.items()}
        self.docs = [(intent, self._vector(bag)) for intent, bag in docs]

    def _vector(self, bag: Counter[str]) -> dict[str, float]:
        vec = {w: c * self.idf.get(w, 0.0) for w, c in bag.items()}
        norm = math.sqrt(sum(v * v for v in vec.values())) or 1.0
        return {w: v / norm for w, v in vec.items()}

    def match(self, text: str) -> tuple[str | None, float]:
        query = self._vector(Counter(words(text)))
        best, score = None, 0.0
        for intent, vec in self.docs:
            s = sum(v * vec.get(w, 0.0) for w, v in query.items())
            if s > score:
                best, score = intent, s
        return best, round(score, 4)


def parse_payload(payload: str) -> tuple[str, dict[str, Any]] | None:
    """Rasa's ``/intent{"slot": "value"}`` button payload, or None if it is not one."""
    m = _PAYLOAD.match(payload.strip())
    if not m:
        return None
    entities: dict[str, Any] = {}
    if m.group(2):
        try:
            loaded = json.loads(m.group(2))
        except json.JSONDecodeError:
            return None
        if isinstance(loaded, dict):
            entities = loaded
    return m.group(1), entities


async def stream_words(text: str) -> AsyncIterator[str]:
    """Yield ``text`` a word at a time (with its following space), letting other turns run."""
    for piece in re.findall(r"\S+\s*", text):
        yield piece
        await asyncio.sleep(0)


class _Formatter(dict[str, Any]):
    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


class ResponsesPipeline:
    """Intent by example matching, action by rule, text from the domain's responses."""

    def __init__(self, project: Project, *, threshold: float | None = None) -> None:
        self.project = project
        self.matcher = ExampleMatcher(project.examples)
        thresholds = project.config.get("thresholds") or {}
        self.threshold = threshold if threshold is not None else float(thresholds.get("intent", 0.5))

    def _understand(self, message: UserMessage) -> tuple[str, float, dict[str, Any], str]:
        if message.payload:
            parsed = parse_payload(message.payload)
            if parsed:
                return parsed[0], 1.0, parsed[1], "button payload"
        nlu = message.nlu or {}
        if nlu.get("intent"):
            confidence = float(nlu.get("confidence") or 0.0)
            if nlu["intent"] != "out_of_scope" and confidence < self.threshold:
                return "out_of_scope", confidence, {}, (
                    f"classifier: {nlu['intent']} at {confidence:.2f} < {self.threshold}")
            return str(nlu["intent"]), confidence, {}, f"classifier: {confidence:.2f}"
        intent, score = self.matcher.match(message.text)
        if intent is None or score < self.threshold:
            return "out_of_scope", score, {}, f"best example match {score:.2f} < {self.threshold}"
        return intent, score, {}, f"nearest example match {score:.2f}"

    def _response_for(self, intent: str, slots: dict[str, Any] | None = None) -> tuple[str, str]:
        for action in self.project.rules.get(intent, []):
            if action in self.project.responses:
                return action, "rules"
            for slot in self.project.forms.get(action, []):
                # A form starts by asking for its first missing slot, as in Rasa.
                if (slots or {}).get(slot) is None:
                    for ask in (f"utter_ask_{action}_{slot}", f"utter_ask_{slot}"):
                        if ask in self.project.responses:
                            return ask, "rules"
        guess = f"utter_{intent}"
        if guess in self.project.responses:
            return guess, "responses"
        return FALLBACK, "fallback"

    async def respond(self, conversation: Conversation, message: UserMessage) -> AsyncIterator[Output]:
        intent, confidence, entities, why = self._understand(message)
        slots = dict(conversation.slots)
        for name, value in entities.items():
            if name in self.project.slots:
                slots[name] = value
                yield SlotSet(name, value)
        action, policy = self._response_for(intent, slots)
        nlu = message.nlu or {}
        yield TurnAnalysis(intent=intent, confidence=confidence, policy=policy,
                           reason=f"{why}; action {action}", sentiment=nlu.get("sentiment"),
                           sentiment_score=nlu.get("sentiment_score"))
        variations = self.project.responses.get(action)
        if not variations:
            yield Reply(FALLBACK_TEXT)
            return
        # Seeded by the message id: a re-run of the same turn picks the same variation.
        choice = random.Random(message.event_id).choice(variations)
        text = str(choice.get("text", "")).format_map(_Formatter(slots))
        buttons = [Button(str(b.get("title", "")), str(b.get("payload", "")))
                   for b in choice.get("buttons") or [] if isinstance(b, dict)]
        cards = [c for c in choice.get("cards") or [] if isinstance(c, dict)]
        yield StreamedReply(stream_words(text), buttons=buttons, cards=cards)
