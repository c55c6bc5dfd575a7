"""Rasa NLU example blocks: the one reader of intent examples, for the project loader
(``dialogue.project``) and the classifier's training data (``model.data``)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from bot.errors import ProjectError

# [surface text](entity), [text](entity:value) or [text]{"entity": ...} / [text]{...}[...]
_ENTITY = re.compile(r"\[(?P<text>[^\]]+)\](?:\([^)]*\)|\{[^}]*\}|\[[^\]]*\])+")


def strip_entities(text: str) -> str:
    """``"fly to [Berlin](city)"`` -> ``"fly to Berlin"``: entities stay as plain text."""
    return _ENTITY.sub(lambda m: m.group("text"), text)


def example_lines(block: str) -> Iterable[str]:
    """The ``- text`` items of a Rasa ``examples: |`` block (comments and blanks skipped)."""
    for raw in block.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("- "):
            line = line[2:]
        elif line == "-":
            continue
        yield line.strip()


def section_examples(path: str, item: dict[str, Any]) -> list[str]:
    """The examples of one ``- intent:`` section, as plain text; ``path`` names the file
    in errors. Accepts the ``examples: |`` block and the list-with-metadata form."""
    raw = item.get("examples")
    if isinstance(raw, str):
        lines = list(example_lines(raw))
    elif isinstance(raw, list):  # examples: [- text: ..., metadata: ...]
        lines = []
        for entry in raw:
            text = entry.get("text") if isinstance(entry, dict) else entry
            if not isinstance(text, str):
                raise ProjectError(path, f"intent {item.get('intent')!r}: bad example {entry!r}")
            lines.append(text.strip())
    elif raw is None:
        lines = []
    else:
        raise ProjectError(path, f"intent {item.get('intent')!r}: 'examples' must be a block")
    return [t for t in (strip_entities(x).strip() for x in lines) if t]
