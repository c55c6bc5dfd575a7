"""What the simulated customers of ``deskmate bench load`` say.

Two sources, mixed one conversation each in turn: the customer turns of real
STAR dialogues (doctor, bank, hotel, ride, party, ... — mostly out of the demo
shop's scope, so they exercise fallbacks and handoffs) and the customer turns of
the bot project's own conversation tests (on topic: orders, sizes, returns).
The language-model scenario uses the examples of the project's generative
intents (``generative.intents`` in config.yml), which the model answers.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bot.errors import DeskmateError

MAX_TEXT = 500  # characters; a few STAR turns are long pastes, far above what a widget user types
STAR_FILE = Path("dialogues") / "star" / "all.jsonl"


@dataclass(frozen=True)
class Say:
    """One customer turn: typed ``text``, or a button click (``payload``, titled ``text``)."""

    text: str
    payload: str | None = None


@dataclass(frozen=True)
class Script:
    """The customer turns of one conversation, in order."""

    source: str  # "star:<id>" or "demo:<conversation test name>"
    turns: tuple[Say, ...]


def star_scripts(data_dir: Path, limit: int, rng: random.Random) -> list[Script]:
    """``limit`` STAR dialogues (chosen with ``rng``), their customer turns only."""
    path = data_dir / STAR_FILE
    if not path.is_file():
        raise DeskmateError(f"{path}: STAR dialogues not found (see --data)")
    lines = path.read_text(encoding="utf-8").splitlines()
    out: list[Script] = []
    for line in rng.sample(lines, min(limit, len(lines))):
        dialogue = json.loads(line)
        turns = tuple(Say(str(t["text"]).strip()[:MAX_TEXT]) for t in dialogue.get("turns", [])
                      if t.get("speaker") == "user" and str(t.get("text", "")).strip())
        if turns:
            out.append(Script(f"star:{dialogue.get('id')}", turns))
    return out


def demo_scripts(project: Path) -> list[Script]:
    """The customer turns of the project's conversation tests (``tests/*.yml``)."""
    from dialogue.convtest import conversation_files, load_tests

    out: list[Script] = []
    for test in load_tests(conversation_files(project)):
        turns = tuple(Say(t.text or t.payload or "", t.payload) for t in test.turns if t.text or t.payload)
        if turns:
            out.append(Script(f"demo:{test.name}", turns))
    return out


def generative_texts(project: Path) -> list[str]:
    """Examples of the intents the project's language model answers (e.g. chitchat)."""
    from dialogue.project import load_project

    loaded = load_project(project)
    intents = (loaded.config.get("generative") or {}).get("intents") or []
    texts = [t for intent in intents for t in loaded.examples.get(intent, [])]
    if not texts:
        raise DeskmateError(f"{project}: no examples of generative intents ({intents}) to send to the "
                            "language model; set generative.intents in config.yml")
    return texts


class ScriptMix:
    """An endless supply of conversations: demo and STAR scripts, alternating, each list
    shuffled and cycled. Either list may be empty (not both)."""

    def __init__(self, demo: list[Script], star: list[Script], rng: random.Random) -> None:
        if not demo and not star:
            raise DeskmateError("no conversations to replay")
        self._sources = [self._cycle(s, rng) for s in (demo, star) if s]
        self._n = 0

    @staticmethod
    def _cycle(scripts: list[Script], rng: random.Random) -> Iterator[Script]:
        order = list(scripts)
        while True:
            rng.shuffle(order)
            yield from order

    def next(self) -> Script:
        source = self._sources[self._n % len(self._sources)]
        self._n += 1
        return next(source)
