"""Small pure helpers of the dialogue engine.

:class:`ExampleMatcher` reads an intent from word overlap with the project's NLU
examples (TF-IDF-weighted cosine similarity) when no trained classifier is
given; :func:`parse_payload` reads Rasa's button payloads (``/intent`` or
``/intent{"slot": "value"}``); :func:`sentences` cuts a written text into the sentences
it is streamed in.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from typing import Any

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


_SENTENCE = re.compile(r".+?(?:[.!?…:](?=\s)\s*|\n+|$)", re.DOTALL)


def sentences(text: str) -> list[str]:
    """``text`` cut into sentences (or lines), the pieces a written response is streamed in.
    A written response is ready at once: word-sized pieces would cost a websocket frame per
    word for nothing (generated text streams as the model writes it)."""
    return [piece for piece in _SENTENCE.findall(text) if piece]
