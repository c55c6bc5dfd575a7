"""Entity extraction from a project's Rasa NLU YAML, without a model.

What Rasa's ``RegexEntityExtractor`` and ``EntitySynonymMapper`` do, read from
the same files:

- ``- regex: name`` sections: each pattern extracts entity ``name``; a named
  group ``(?P<value>...)`` gives the value, else the whole match does;
- ``- lookup: name`` sections, the values of ``categorical`` slots filled
  ``from_entity``, and the texts of annotated examples (``[text](entity)``,
  ``[text]{"entity": ...}``) become lookup values: matched case-insensitively,
  on word boundaries, the longest first; the value is the table's spelling;
- ``- synonym: canonical`` sections (and annotations with a ``value``) map an
  extracted value to its canonical name, case-insensitively.

As in Rasa, only names that are entities (annotated in an example, or named by
a slot's ``from_entity`` mapping) extract anything, so a regex kept only as an
intent feature stays silent. Annotated texts are not lookups for an entity that
has regexes: its shape is the regex's job, and ``[80](budget)`` as a literal
would turn every "80" into a budget. Overlapping matches keep the longest.

A *normaliser* per entity turns the text into a typed value after synonyms
(``budget``: "under 80 euros" -> ``80.0``); one returning None drops the entity.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from bot.errors import ProjectError
from dialogue.project import YamlLoader

if TYPE_CHECKING:
    from dialogue.project import Project

Normaliser = Callable[[str], Any]

# Where a match came from, strongest first: when two overlapping matches are
# equally long, the regex wins over a lookup table.
_REGEX, _LOOKUP = 0, 1

# [text](entity), [text](entity:value) (Rasa 1 short synonym) or [text]{"entity": ..., "value": ...}
_ANNOTATION = re.compile(r"\[(?P<text>[^\]]+)\](?:\((?P<short>[^)]*)\)|(?P<json>\{[^}]*\}))")
_SEPARATORS = re.compile(r"[\s\-]+")
_AMOUNT = re.compile(r"\d+(?:[.,]\d+)*")


def parse_budget(text: str) -> float | None:
    """The amount in a budget phrase, in euros: ``"under 100 euros"``, ``"€80"``,
    ``"max 50"``, ``"less than 120€"``, ``"79,90"``; None without a positive amount."""
    match = _AMOUNT.search(text)
    if match is None:
        return None
    raw = match.group()
    last = max(raw.rfind("."), raw.rfind(","))
    if last < 0:
        amount = float(raw)
    elif len(raw) - last - 1 == 3:  # "1.000" / "1,000": a thousands separator
        amount = float(re.sub(r"[.,]", "", raw))
    else:
        whole = re.sub(r"[.,]", "", raw[:last])
        amount = float(f"{whole}.{raw[last + 1:]}")
    return amount if amount > 0 else None


# Built-in normalisers; EntityExtractor(normalisers=...) adds to or overrides these.
BUILTIN_NORMALISERS: Mapping[str, Normaliser] = {"budget": parse_budget}


@dataclass(frozen=True)
class Entity:
    """One extracted entity; ``start``/``end`` index the message text."""

    entity: str
    value: Any
    start: int
    end: int
    extractor: str  # "regex", "lookup", or "synonym" when a synonym renamed the value

    def to_rasa(self) -> dict[str, Any]:
        """The entity as Rasa puts it in ``latest_message["entities"]``. Rule-based
        matches carry no ``confidence_entity``, like Rasa's RegexEntityExtractor."""
        return {"entity": self.entity, "value": self.value, "start": self.start,
                "end": self.end, "extractor": self.extractor}


def _key(text: str) -> str:
    """Case- and separator-insensitive key: "T-Shirt", "t shirt" and "tshirt" agree."""
    return _SEPARATORS.sub("", text.strip().casefold())


@dataclass
class _Sources:
    """Everything the NLU files say about entities, gathered before compiling."""

    regexes: dict[str, list[re.Pattern[str]]]
    lookups: dict[str, dict[str, str]]  # entity -> key -> spelling, first seen wins
    annotated: dict[str, dict[str, str]]
    synonyms: dict[str, str]  # key -> canonical value
    entities: set[str]  # names that are entities (annotated ones)

    def add_lookup(self, table: dict[str, dict[str, str]], entity: str, value: str) -> None:
        value = value.strip()
        if _key(value):
            table.setdefault(entity, {}).setdefault(_key(value), value)


class EntityExtractor:
    """Extracts Rasa-style entities from text with a project's regexes, lookups and synonyms."""

    def __init__(self, nlu_files: Sequence[Path], slots: Mapping[str, Mapping[str, Any]], *,
                 normalisers: Mapping[str, Normaliser] | None = None) -> None:
        sources = _Sources(regexes={}, lookups={}, annotated={}, synonyms={}, entities=set())
        slot_entities = _add_slot_values(sources, slots)
        for path in nlu_files:
            _read_nlu_file(sources, Path(path))
        names = sources.entities | slot_entities
        self._regexes = {e: p for e, p in sources.regexes.items() if e in names}
        values: dict[str, dict[str, str]] = {}
        for entity in sorted(names):
            table = dict(sources.lookups.get(entity, {}))
            if entity not in self._regexes:
                for key, value in sources.annotated.get(entity, {}).items():
                    table.setdefault(key, value)
            if table:
                values[entity] = table
        self._values = values
        self._lookups = {entity: _lookup_pattern(table.values()) for entity, table in values.items()}
        self._synonyms = sources.synonyms
        self._normalisers = {**BUILTIN_NORMALISERS, **(normalisers or {})}

    @classmethod
    def for_project(cls, project: Project, *,
                    normalisers: Mapping[str, Normaliser] | None = None) -> EntityExtractor:
        """The extractor for a loaded project: its ``data/**/*.yml|yaml`` and domain slots."""
        data = project.path / "data"
        files = sorted(data.rglob("*.yml")) + sorted(data.rglob("*.yaml")) if data.is_dir() else []
        return cls(files, project.slots, normalisers=normalisers)

    @property
    def entity_names(self) -> list[str]:
        """The entities this extractor can find, sorted."""
        return sorted(set(self._regexes) | set(self._lookups))

    def extract(self, text: str) -> list[Entity]:
        """The entities in ``text``, in order of position, at most one per span."""
        candidates: list[tuple[int, int, int, str, str]] = []  # start, end, source, entity, value
        for entity, patterns in self._regexes.items():
            for pattern in patterns:
                for m in pattern.finditer(text):
                    if m.end() == m.start():
                        continue
                    group = m.group("value") if "value" in pattern.groupindex else None
                    value = group if group is not None else m.group()
                    candidates.append((m.start(), m.end(), _REGEX, entity, value))
        for entity, lookup in self._lookups.items():
            table = self._values[entity]
            for m in lookup.finditer(text):
                start, end = m.span("v")
                spelling = table.get(_key(text[start:end]), text[start:end])
                candidates.append((start, end, _LOOKUP, entity, spelling))
        # Longest first; on equal length a regex beats a lookup, then the earlier span.
        candidates.sort(key=lambda c: (c[0] - c[1], c[2], c[0], c[3]))
        taken: list[tuple[int, int]] = []
        found: list[Entity] = []
        for start, end, source, entity, value in candidates:
            if any(start < t_end and t_start < end for t_start, t_end in taken):
                continue
            extracted = self._finish(entity, value, start, end, "regex" if source == _REGEX else "lookup")
            if extracted is not None:
                taken.append((start, end))
                found.append(extracted)
        return sorted(found, key=lambda e: (e.start, e.end))

    def _finish(self, entity: str, value: str, start: int, end: int, extractor: str) -> Entity | None:
        canonical = self._synonyms.get(_key(value))
        if canonical is not None and canonical != value:
            value, extractor = canonical, "synonym"
        normalise = self._normalisers.get(entity)
        typed: Any = value if normalise is None else normalise(value)
        if typed is None:
            return None
        return Entity(entity=entity, value=typed, start=start, end=end, extractor=extractor)


def _lookup_pattern(values: Iterable[str]) -> re.Pattern[str]:
    """One pattern that finds every lookup value at every position (the lookahead lets
    matches overlap; the caller keeps the longest). Spaces and hyphens inside a value
    match any run of them or none ("off-white", "off white", "offwhite")."""
    parts = sorted({_key(v): v for v in values}.values(), key=lambda v: (-len(v), v.casefold()))
    alternatives = ("[\\s\\-]*".join(re.escape(w) for w in _SEPARATORS.split(p.strip())) for p in parts)
    # Not inside a word, nor right after a contraction's apostrophe ("I'm" and "it's"
    # are not sizes M and S), nor glued to a word by a dot or an ampersand ("U.S.",
    # "L.A.", "H&M" are not sizes S, L and M), nor part of a number: "42.5", "42,5" and
    # "40,000" hold no 42 or 40, while "42,43" is a list of two.
    return re.compile(r"(?<!\w)(?<!\w['’.&])(?=(?P<v>" + "|".join(alternatives)
                      + r")(?!\w|[.&]\w|,\d(?!\d\b)))", re.IGNORECASE)


def _add_slot_values(sources: _Sources, slots: Mapping[str, Mapping[str, Any]]) -> set[str]:
    """Entities named by slots' ``from_entity`` mappings; a categorical slot's values
    become lookup values of the entities that fill it."""
    entities: set[str] = set()
    for spec in slots.values():
        if not isinstance(spec, Mapping):
            continue
        mapped = [str(m["entity"]) for m in spec.get("mappings") or []
                  if isinstance(m, Mapping) and m.get("type") == "from_entity" and m.get("entity")]
        entities.update(mapped)
        if spec.get("type") == "categorical":
            for entity in mapped:
                for value in spec.get("values") or []:
                    sources.add_lookup(sources.lookups, entity, str(value))
    return entities


def _read_nlu_file(sources: _Sources, path: Path) -> None:
    """Add one file's regex, lookup and synonym sections and annotations to ``sources``."""
    try:
        loader = YamlLoader(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ProjectError(str(path), f"cannot read: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ProjectError(str(path), f"not UTF-8: {exc}") from exc
    try:
        root = loader.get_single_node()
        data = loader.construct_document(root) if root is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = None if mark is None else mark.line + 1
        raise ProjectError(str(path), f"invalid YAML: {exc}", line) from exc
    finally:
        loader.dispose()
    if not isinstance(data, dict) or not isinstance(data.get("nlu"), list):
        return  # rules, stories, domain: nothing about entities
    assert isinstance(root, yaml.MappingNode)
    section_nodes = next(v.value for k, v in root.value if k.value == "nlu")
    for item, node in zip(data["nlu"], section_nodes, strict=True):
        if not isinstance(item, dict):
            continue
        examples = _numbered_examples(str(path), item, node)
        if "intent" in item:
            for text, _line in examples:
                _add_annotations(sources, text)
        elif "regex" in item:
            name = str(item["regex"])
            for pattern, line in examples:
                try:
                    compiled = re.compile(pattern)
                except re.error as exc:
                    raise ProjectError(str(path), f"regex {name!r}: {exc.msg} in {pattern!r}", line) from exc
                sources.regexes.setdefault(name, []).append(compiled)
        elif "lookup" in item:
            for value, _line in examples:
                sources.add_lookup(sources.lookups, str(item["lookup"]), value)
        elif "synonym" in item:
            canonical = str(item["synonym"])
            for value, _line in examples:
                sources.synonyms.setdefault(_key(value), canonical)
        # Other sections (Rasa or not) carry nothing for entities.


def _numbered_examples(path: str, item: dict[str, Any], node: yaml.Node) -> list[tuple[str, int]]:
    """A section's ``- item`` lines with their 1-based line numbers in the file."""
    examples_node = None
    if isinstance(node, yaml.MappingNode):
        examples_node = next((v for k, v in node.value if k.value == "examples"), None)
    raw = item.get("examples")
    if raw is None or examples_node is None:
        return []
    if isinstance(raw, str):
        # A block scalar ("|") starts on the line after its indicator; a plain or
        # quoted one on its own line. Either way its lines follow the file's.
        first = examples_node.start_mark.line + (2 if examples_node.style in ("|", ">") else 1)
        out = []
        for offset, line in enumerate(raw.splitlines()):
            text = line.strip()
            if not text or text.startswith("#") or text == "-":
                continue
            out.append((text[2:].strip() if text.startswith("- ") else text, first + offset))
        return out
    if isinstance(raw, list) and isinstance(examples_node, yaml.SequenceNode):
        listed = []
        for entry, entry_node in zip(raw, examples_node.value, strict=True):
            value = entry.get("text") if isinstance(entry, dict) else entry
            if isinstance(value, str | int | float):
                listed.append((str(value).strip(), entry_node.start_mark.line + 1))
        return listed
    raise ProjectError(path, "'examples' must be a block or a list", examples_node.start_mark.line + 1)


def marked_entities(text: str) -> list[tuple[str, str | None, str]]:
    """The entities marked up in a Rasa message, ``[text](entity)``, ``[text](entity:value)``
    or ``[text]{"entity": ..., "value": ...}``: ``(entity, value or None, text)`` each;
    markup without an entity name is skipped."""
    out: list[tuple[str, str | None, str]] = []
    for m in _ANNOTATION.finditer(text):
        surface = m.group("text").strip()
        entity: Any = None
        value: Any = None
        if m.group("short") is not None:
            entity, _, value = m.group("short").partition(":")
        else:
            try:
                spec = json.loads(m.group("json"))
            except json.JSONDecodeError:
                continue
            if isinstance(spec, dict):
                entity, value = spec.get("entity"), spec.get("value")
        if isinstance(entity, str) and entity.strip():
            out.append((entity.strip(), None if value in (None, "") else str(value), surface))
    return out


def _add_annotations(sources: _Sources, text: str) -> None:
    """Record ``[text](entity)`` annotations: the entity exists, its text is a lookup
    value, and an annotated ``value`` that differs is a synonym (as Rasa learns them)."""
    for entity, value, surface in marked_entities(text):
        sources.entities.add(entity)
        sources.add_lookup(sources.annotated, entity, surface)
        if value is not None and value != surface:
            sources.synonyms.setdefault(_key(surface), value)
