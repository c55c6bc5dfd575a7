"""Small pure helpers of the dialogue engine.

:class:`ExampleMatcher` reads an intent from word overlap with the project's NLU
examples (TF-IDF-weighted cosine similarity) when no trained classifier is
given; :func:`read_payload` reads Rasa's button payloads (``/intent``,
``/intent@0.9``, ``/intent{"entity": "value"}``); :func:`sentences` cuts a written text
into the sentences it is streamed in.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

_WORD = re.compile(r"\w+", re.UNICODE)
# Rasa's RegexMessageHandler: "/", the intent (anything up to "{" or "@"), an optional
# "@confidence", optional JSON entities; anything after them is ignored, as there.
_PAYLOAD = re.compile(r"/(?P<intent>[^{@]+)(?P<confidence>@[0-9.]+)?(?P<entities>\{.+\})?(?P<rest>.*)",
                      re.DOTALL)
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


@dataclass(frozen=True)
class Payload:
    """A button payload read as Rasa reads it."""

    intent: str
    confidence: float
    values: dict[str, Any]  # the JSON object as written

    @property
    def entities(self) -> list[dict[str, Any]]:
        """One entity per value; a list value gives one entity per item, as in Rasa."""
        return [{"entity": name, "value": item, "extractor": "payload"}
                for name, value in self.values.items()
                for item in (value if isinstance(value, list) else [value])]


def read_payload(payload: str, intents: Collection[str] | None = None) -> Payload | None:
    """Rasa's ``/intent@confidence{"entity": "value"}`` button payload, or None if it is
    not one (then it is read as text). With ``intents`` (the domain's), an intent not among
    them is not one either, as in Rasa. Unlike Rasa, JSON that does not parse makes the
    whole payload text rather than an intent without entities."""
    m = _PAYLOAD.fullmatch(payload.strip())
    if not m:
        return None
    intent = m.group("intent").strip()
    if not intent or (intents is not None and intent not in intents):
        return None
    values: dict[str, Any] = {}
    if m.group("entities"):
        try:
            loaded = json.loads(m.group("entities"))
        except json.JSONDecodeError:
            return None
        if isinstance(loaded, dict):
            values = loaded
    confidence = 1.0
    if m.group("confidence"):
        try:  # "@1.5" is capped at 1; "@1.2.3" is 0, as in Rasa
            confidence = min(1.0, float(m.group("confidence")[1:]))
        except ValueError:
            confidence = 0.0
    return Payload(intent, confidence, values)


def parse_payload(payload: str) -> tuple[str, dict[str, Any]] | None:
    """:func:`read_payload`'s intent and entity values, or None if it is not a payload."""
    read = read_payload(payload)
    return None if read is None else (read.intent, read.values)


_SENTENCE = re.compile(r".+?(?:[.!?…:](?=\s)\s*|\n+|$)", re.DOTALL)


def sentences(text: str) -> list[str]:
    """``text`` cut into sentences (or lines), the pieces a written response is streamed in.
    A written response is ready at once: word-sized pieces would cost a websocket frame per
    word for nothing (generated text streams as the model writes it)."""
    return [piece for piece in _SENTENCE.findall(text) if piece]
