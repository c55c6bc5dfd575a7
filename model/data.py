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
from dataclasses import dataclass
from pathlib import Path

import yaml

from bot.errors import DeskmateError, ProjectError
from dialogue.project import parse_yaml
from dialogue.rasa_nlu import section_examples, strip_entities

__all__ = ["Example", "OOS_LABELS", "OUT_OF_SCOPE", "strip_entities"]

_SKIPPED_SECTIONS = ("synonym", "lookup", "regex")
OOS_LABELS = ("out_of_scope", "oos", "NO_NODES_DETECTED")
OUT_OF_SCOPE = "out_of_scope"


@dataclass(frozen=True)
class Example:
    """One labelled utterance."""

    text: str
    label: str


def load_rasa_yaml(path: Path) -> list[Example]:
    """Intent examples of one Rasa NLU YAML file ([] when it has no ``nlu`` key)."""
    try:
        doc = parse_yaml(path.read_text(encoding="utf-8"))
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
        examples.extend(Example(text, intent) for text in section_examples(str(path), item))
    return examples


def load_csv(path: Path) -> list[Example]:
    """Rows of a CSV whose first columns are ``text,label`` (more may follow)."""
    try:
        # utf-8-sig: Excel's "CSV UTF-8" starts the file with a byte-order mark, which
        # would otherwise become part of the first column's name ("\ufefftext").
        with path.open(newline="", encoding="utf-8-sig") as fh:
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
    """All intent examples of a project and the files they came from.

    An example given twice (the same text under the same intent, in one file or two) is
    kept once, where it first occurs: :func:`data_hash`, which says whether a model is
    stale, covers each pair once, so training counts it once too (class balance and the
    calibration split would otherwise change with no change to the hash)."""
    files = project_data_files(project)
    examples: list[Example] = []
    seen: set[Example] = set()
    used: list[Path] = []
    for path in files:
        found = load_file(path)
        if found:
            used.append(path)
        for example in found:
            if example not in seen:
                seen.add(example)
                examples.append(example)
    if not examples:
        raise ProjectError(str(project / "data"), "no intent examples found (nlu: - intent: ...)")
    return examples, used


def data_hash(examples: list[Example]) -> str:
    """SHA-256 of the examples, independent of file layout, order and comments."""
    rows = sorted({(e.label, e.text) for e in examples})
    return hashlib.sha256(json.dumps(rows, ensure_ascii=False).encode()).hexdigest()
