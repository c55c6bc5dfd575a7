"""Training data: Rasa NLU YAML (``version: "3.1"``) and ``text,label`` CSV.

An existing Rasa project's ``data/`` loads unchanged: intent examples are kept,
annotated entities are reduced to their surface text (``[Berlin](city)`` ->
``Berlin``), and ``synonym``, ``lookup`` and ``regex`` sections are skipped, as
are files without an ``nlu`` key (stories, rules, domain).
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bot.errors import DeskmateError, ProjectError

# [surface text](entity), [text](entity:value) or [text]{"entity": ...} / [text]{...}[...]
_ENTITY = re.compile(r"\[(?P<text>[^\]]+)\](?:\([^)]*\)|\{[^}]*\}|\[[^\]]*\])+")
_SKIPPED_SECTIONS = ("synonym", "lookup", "regex")
OOS_LABELS = ("out_of_scope", "oos", "NO_NODES_DETECTED")
OUT_OF_SCOPE = "out_of_scope"


@dataclass(frozen=True)
class Example:
    """One labelled utterance."""

    text: str
    label: str


def strip_entities(text: str) -> str:
    """``"fly to [Berlin](city)"`` -> ``"fly to Berlin"``."""
    return _ENTITY.sub(lambda m: m.group("text"), text)


def _example_lines(block: str) -> Iterable[str]:
    """The ``- text`` items of a Rasa ``examples: |`` block."""
    for raw in block.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("- "):
            line = line[2:]
        elif line == "-":
            continue
        yield line.strip()


def _section_examples(path: str, item: dict[str, Any]) -> list[str]:
    raw = item.get("examples")
    if isinstance(raw, str):
        lines = list(_example_lines(raw))
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


def load_rasa_yaml(path: Path) -> list[Example]:
    """Intent examples of one Rasa NLU YAML file ([] when it has no ``nlu`` key)."""
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise ProjectError(str(path), f"invalid YAML: {exc}", line) from None
    except UnicodeDecodeError as exc:
        raise ProjectError(str(path), f"not UTF-8: {exc}") from None
    if not isinstance(doc, dict) or "nlu" not in doc:
        return []
    sections = doc["nlu"] or []
    if not isinstance(sections, list):
        raise ProjectError(str(path), "'nlu' must be a list of sections")
    examples: list[Example] = []
    for item in sections:
        if not isinstance(item, dict):
            raise ProjectError(str(path), f"bad nlu section: {item!r}")
        if "intent" not in item:
            if any(key in item for key in _SKIPPED_SECTIONS):
                continue
            raise ProjectError(str(path), f"unknown nlu section with keys {sorted(item)}")
        intent = str(item["intent"]).strip()
        if not intent:
            raise ProjectError(str(path), "empty intent name")
        examples.extend(Example(text, intent) for text in _section_examples(str(path), item))
    return examples


def load_csv(path: Path) -> list[Example]:
    """Rows of a CSV whose first columns are ``text,label`` (more may follow)."""
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if not reader.fieldnames or not {"text", "label"} <= set(reader.fieldnames):
                raise ProjectError(str(path), "a CSV needs a header with 'text' and 'label'")
            rows = [
                Example(row["text"].strip(), row["label"].strip())
                for row in reader
                if row.get("text") and row.get("label")
            ]
    except FileNotFoundError:
        raise DeskmateError(f"{path}: no such file") from None
    except UnicodeDecodeError as exc:
        raise ProjectError(str(path), f"not UTF-8: {exc}") from None
    if not rows:
        raise ProjectError(str(path), "no rows")
    return rows


def load_file(path: Path) -> list[Example]:
    """A ``.yml``/``.yaml`` (Rasa) or ``.csv`` file."""
    if path.suffix.lower() in (".yml", ".yaml"):
        if not path.is_file():
            raise DeskmateError(f"{path}: no such file")
        return load_rasa_yaml(path)
    return load_csv(path)


def project_data_files(project: Path) -> list[Path]:
    """NLU data files of a bot project: ``data/**/*.yml|yaml|csv``, sorted."""
    data = project / "data"
    if not data.is_dir():
        raise ProjectError(str(data), "no data directory (expected data/nlu.yml)")
    files = sorted(
        p for p in data.rglob("*") if p.is_file() and p.suffix.lower() in (".yml", ".yaml", ".csv")
    )
    return files


def load_project(project: Path) -> tuple[list[Example], list[Path]]:
    """All intent examples of a project and the files they came from."""
    files = project_data_files(project)
    examples: list[Example] = []
    used: list[Path] = []
    for path in files:
        found = load_file(path)
        if found:
            examples.extend(found)
            used.append(path)
    if not examples:
        raise ProjectError(str(project / "data"), "no intent examples found (nlu: - intent: ...)")
    return examples, used


def data_hash(examples: list[Example]) -> str:
    """SHA-256 of the examples, independent of file layout, order and comments."""
    rows = sorted({(e.label, e.text) for e in examples})
    return hashlib.sha256(json.dumps(rows, ensure_ascii=False).encode()).hexdigest()
