"""The knowledge base: FAQ entries and help-page sections, and a vector index over them.

A project's ``knowledge/`` folder holds ``*.yml`` files (a list of ``{id, question,
answer, tags}``) and ``*.md`` help pages, split into one entry per ``##``/``###``
section. :func:`load_knowledge` reads them once at start-up and fails loudly, with
file and line, on bad data. :class:`KnowledgeIndex` holds one unit vector per entry
and answers cosine-similarity searches; the vectors are computed by the caller (the
shared encoder lives in ``model/``, and ``dialogue/`` does no model I/O).

What to embed per entry (:meth:`KnowledgeEntry.embedding_text`) and the similarity
threshold for trusting the top hit (``thresholds.knowledge`` in ``config.yml``) were
measured with ``scripts/eval_knowledge.py``.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from bot.errors import ProjectError
from dialogue.project import YamlLoader

log = logging.getLogger("deskmate.knowledge")

# A ``###`` section whose body is shorter than this is folded into its ``##`` parent
# (whatever its siblings' length): a two-line subsection retrieves poorly on its own
# and reads oddly as an answer.
MIN_SECTION_CHARS = 160

FAQ_KEYS = frozenset({"id", "question", "answer", "tags"})
_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_HEADING_RE = re.compile(r"^(#{1,6})[ \t]+(.+?)(?:[ \t]+#+)?[ \t]*$")
_FENCE_RE = re.compile(r"^[ \t]{0,3}(```|~~~)")
_TITLE_SEP = " › "


@dataclass(frozen=True)
class KnowledgeEntry:
    """One answerable piece of shop knowledge: an FAQ entry or a help-page section."""

    id: str  # "shipping-costs" for FAQ, "returns#refunds" for a Markdown section
    title: str  # the FAQ question, or the section's heading path ("Returns › Refunds")
    text: str  # the answer / the section body (plain Markdown)
    source: str  # relative to the project: "knowledge/faq.yml#shipping-costs"
    tags: tuple[str, ...] = ()

    def embedding_text(self) -> str:
        """The text whose embedding represents this entry in the index: heading and body.

        Measured with ``scripts/eval_knowledge.py --compare``: the question (or the
        section's own heading, without the page title in front) followed by the answer
        beats the question alone, the answer alone and max-pooling over several vectors;
        customers rarely echo the FAQ's wording but do use the answer's words
        ("parcel locker", "Klarna", "half sizes").
        """
        heading = self.title.rsplit(_TITLE_SEP, 1)[-1]
        return f"{heading}\n{self.text}"


# ------------------------------------------------------------------ loading
def load_knowledge(directory: Path) -> list[KnowledgeEntry]:
    """All entries of ``directory``'s ``*.yml``/``*.yaml`` and ``*.md`` files (top level, by name).

    Raises :class:`ProjectError` naming the file (and line, where there is one) on
    invalid YAML, a missing or empty ``id``/``question``/``answer``, or a duplicate id.
    Unknown FAQ keys are logged and ignored, so a newer file still loads.
    """
    if not directory.is_dir():
        raise ProjectError(str(directory), "knowledge directory not found")
    entries: list[KnowledgeEntry] = []
    seen: dict[str, str] = {}  # id -> "file:line" of its first definition
    files = sorted(p for p in directory.iterdir() if p.is_file())
    for path in files:
        suffix = path.suffix.lower()
        if suffix in (".yml", ".yaml"):
            loaded = _load_faq(path, directory.name)
        elif suffix == ".md":
            loaded = _load_markdown(path, directory.name)
        else:
            continue
        for entry, line in loaded:
            where = f"{path.name}:{line}"
            if entry.id in seen:
                first = seen[entry.id]
                raise ProjectError(str(path), f"duplicate id {entry.id!r} (first defined at {first})", line)
            seen[entry.id] = where
            entries.append(entry)
    return entries


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ProjectError(str(path), f"not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except OSError as exc:
        raise ProjectError(str(path), f"cannot read: {exc.strerror}") from exc


def _load_faq(path: Path, folder: str) -> list[tuple[KnowledgeEntry, int]]:
    text = _read_text(path)
    # Compose first, then construct: the node tree keeps the line of every item and key.
    loader = YamlLoader(text)
    try:
        root = loader.get_single_node()
        data: Any = loader.construct_document(root) if root is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = None if mark is None else mark.line + 1
        raise ProjectError(str(path), f"invalid YAML: {exc}", line) from exc
    finally:
        loader.dispose()
    if data is None:
        return []
    if not isinstance(data, list) or not isinstance(root, yaml.SequenceNode):
        raise ProjectError(str(path), "expected a list of FAQ entries ({id, question, answer, tags})", 1)
    out: list[tuple[KnowledgeEntry, int]] = []
    for item, node in zip(data, root.value, strict=True):
        line = node.start_mark.line + 1
        if not isinstance(item, dict) or not isinstance(node, yaml.MappingNode):
            raise ProjectError(str(path), "an FAQ entry must be a mapping with id, question and answer", line)
        key_lines = {str(k.value): k.start_mark.line + 1 for k, _ in node.value}
        out.append((_faq_entry(path, folder, item, line, key_lines), line))
    return out


def _faq_entry(path: Path, folder: str, item: dict[Any, Any], line: int,
               key_lines: dict[str, int]) -> KnowledgeEntry:
    def field_line(key: str) -> int:
        return key_lines.get(key, line)

    for key in item:
        if str(key) not in FAQ_KEYS:
            log.warning("%s:%d: unknown key %r in FAQ entry (ignored)", path, field_line(str(key)), key)
    raw_id = item.get("id")
    if raw_id is None or raw_id == "":
        raise ProjectError(str(path), "FAQ entry without an id", line)
    if isinstance(raw_id, bool) or not isinstance(raw_id, (str, int)) or not _ID_RE.fullmatch(str(raw_id)):
        raise ProjectError(str(path), f"id {raw_id!r} must be letters, digits, '-', '_' or '.'",
                           field_line("id"))
    entry_id = str(raw_id)
    values: dict[str, str] = {}
    for key in ("question", "answer"):
        value = item.get(key)
        if value is None or (isinstance(value, str) and not value.strip()):
            raise ProjectError(str(path), f"FAQ entry {entry_id!r} has no {key}", field_line(key))
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ProjectError(str(path), f"FAQ entry {entry_id!r}: {key} must be text", field_line(key))
        values[key] = str(value).strip()
    return KnowledgeEntry(id=entry_id, title=values["question"], text=values["answer"],
                          source=f"{folder}/{path.name}#{entry_id}",
                          tags=_tags(path, entry_id, item.get("tags"), field_line("tags")))


def _tags(path: Path, entry_id: str, raw: Any, line: int) -> tuple[str, ...]:
    if raw is None:
        return ()
    if isinstance(raw, str):  # "tags: shipping" is a one-tag list, not an error
        raw = [raw]
    if not isinstance(raw, list) or any(isinstance(t, (dict, list)) or t is None for t in raw):
        raise ProjectError(str(path), f"FAQ entry {entry_id!r}: tags must be a list of words", line)
    return tuple(str(t).strip() for t in raw if str(t).strip())


@dataclass
class _Section:
    level: int  # 0 for text before the first heading
    heading: str
    line: int
    path: tuple[str, ...]  # headings from the page title down to this one
    anchor: str = "intro"  # GitHub's anchor of the heading, unique in the page
    body: list[str] = field(default_factory=list)
    children: list[_Section] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "\n".join(self.body).strip()


def _load_markdown(path: Path, folder: str) -> list[tuple[KnowledgeEntry, int]]:
    """One entry per section; ``###`` sections shorter than MIN_SECTION_CHARS join their
    ``##`` parent, also after a long sibling that stands alone ("Pickup" belongs with
    "Options", not with "Express" before it). A ``###`` with no ``##`` above stands alone."""
    sections = _split_sections(_read_text(path).splitlines())
    merged: list[_Section] = []
    parent: _Section | None = None  # the open ``##`` section
    for section in sections:
        if section.level == 3 and parent is not None and len(section.text) < MIN_SECTION_CHARS:
            parent.body = [parent.text, "", f"### {section.heading}", "", section.text]
            continue
        merged.append(section)
        if section.level <= 2:
            parent = section if section.level == 2 else None
    out: list[tuple[KnowledgeEntry, int]] = []
    for section in merged:
        text = section.text
        if not text:  # a heading that only introduces its subsections
            continue
        title = _TITLE_SEP.join(section.path) or path.stem.replace("-", " ").capitalize()
        out.append((KnowledgeEntry(id=f"{path.stem}#{section.anchor}", title=title, text=text,
                                   source=f"{folder}/{path.name}#{section.anchor}"), section.line))
    return out


def _split_sections(lines: list[str]) -> list[_Section]:
    sections = [_Section(level=0, heading="", line=1, path=())]
    path: list[tuple[int, str]] = []  # (level, heading) of the open headings
    anchors: dict[str, int] = {}  # every heading counts, so anchors match the rendered page
    fenced = False
    for number, line in enumerate(lines, start=1):
        if _FENCE_RE.match(line):
            fenced = not fenced
        match = None if fenced else _HEADING_RE.match(line)
        if match is None or len(match.group(1)) > 3:
            sections[-1].body.append(line)
            continue
        level, heading = len(match.group(1)), match.group(2).strip()
        while path and path[-1][0] >= level:
            path.pop()
        path.append((level, heading))
        sections.append(_Section(level=level, heading=heading, line=number, path=tuple(h for _, h in path),
                                 anchor=_unique(_slug(heading) or "section", anchors)))
    # The text before the first heading has no anchor on the rendered page; it takes
    # "intro" after the headings took theirs, so a heading named "Intro" keeps its link
    # and the page's intro becomes "intro-1".
    sections[0].anchor = _unique("intro", anchors)
    return sections


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[*_`]", "", heading.lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.strip().replace(" ", "-")


def _unique(anchor: str, seen: dict[str, int]) -> str:
    """``anchor``, or ``anchor-1``, ``anchor-2``, ... if taken, as GitHub (github-slugger)
    numbers repeated headings; a suffixed anchor another heading already has ("Intro",
    "Intro", "Intro 1") is skipped, so anchors stay unique per page."""
    result = anchor
    while result in seen:
        seen[anchor] += 1
        result = f"{anchor}-{seen[anchor]}"
    seen[result] = 0
    return result


# -------------------------------------------------------------------- index
@dataclass(frozen=True)
class Hit:
    """A search result: the entry and its cosine similarity to the query."""

    entry: KnowledgeEntry
    score: float


@dataclass(frozen=True)
class _Snapshot:
    entries: tuple[KnowledgeEntry, ...]
    matrix: np.ndarray  # (N, D) float32, rows of unit length; never written after creation


class KnowledgeIndex:
    """Exact cosine-similarity search over one vector per entry.

    A knowledge base has hundreds of entries, so a matrix-vector product beats any
    approximate index. :meth:`add` replaces the whole snapshot (copy on write) in
    one attribute assignment, so a search running in another thread, or interleaved
    on the event loop, always sees a consistent pair of entries and vectors.
    """

    def __init__(self, entries: Sequence[KnowledgeEntry], vectors: np.ndarray | Sequence[Sequence[float]]
                 ) -> None:
        matrix = _unit_rows(np.asarray(vectors, dtype=np.float32))
        if len(entries) != matrix.shape[0]:
            raise ValueError(f"{len(entries)} entries but {matrix.shape[0]} vectors")
        ids = [e.id for e in entries]
        if len(set(ids)) != len(ids):
            duplicate = next(i for i in ids if ids.count(i) > 1)
            raise ValueError(f"duplicate entry id {duplicate!r}")
        self._dim = int(matrix.shape[1])
        self._write_lock = threading.Lock()
        self._snapshot = _Snapshot(tuple(entries), matrix)

    @property
    def entries(self) -> list[KnowledgeEntry]:
        """The indexed entries, in index order (a copy)."""
        return list(self._snapshot.entries)

    @property
    def dimension(self) -> int:
        return self._dim

    def __len__(self) -> int:
        return len(self._snapshot.entries)

    def search(self, vector: Sequence[float] | np.ndarray, k: int = 3) -> list[Hit]:
        """The ``k`` entries most similar to ``vector``, best first (fewer if the index is smaller)."""
        snap = self._snapshot  # read once: add() may swap it meanwhile
        if k <= 0 or not snap.entries:
            return []
        query = _unit_rows(np.asarray(vector, dtype=np.float32).reshape(1, -1), dim=self._dim)[0]
        scores = snap.matrix @ query  # (N,)
        # By score, then index order: equal scores come out in index order, also at the
        # k-th place (a partial sort would pick any of them). N is hundreds: a full sort is cheap.
        order = np.lexsort((np.arange(len(scores)), -scores))[:k]
        return [Hit(snap.entries[i], float(scores[i])) for i in order.tolist()]

    def vector(self, entry_id: str) -> np.ndarray | None:
        """The unit vector stored for ``entry_id``, or None."""
        snap = self._snapshot
        index = next((i for i, e in enumerate(snap.entries) if e.id == entry_id), None)
        return None if index is None else snap.matrix[index]

    def add(self, entry: KnowledgeEntry, vector: Sequence[float] | np.ndarray) -> None:
        """Add ``entry``, or replace the entry with the same id (live learning)."""
        row = _unit_rows(np.asarray(vector, dtype=np.float32).reshape(1, -1), dim=self._dim)
        with self._write_lock:  # writers serialise; readers never wait
            snap = self._snapshot
            index = next((i for i, e in enumerate(snap.entries) if e.id == entry.id), None)
            if index is None:
                entries = (*snap.entries, entry)
                matrix = np.concatenate([snap.matrix, row])
            else:
                entries = (*snap.entries[:index], entry, *snap.entries[index + 1:])
                matrix = snap.matrix.copy()
                matrix[index] = row[0]
            self._snapshot = _Snapshot(entries, matrix)


def _unit_rows(matrix: np.ndarray, dim: int | None = None) -> np.ndarray:
    """``matrix`` (N, D) with rows scaled to unit length; all-zero rows stay zero."""
    if matrix.ndim != 2 or (matrix.shape[0] and matrix.shape[1] == 0):
        raise ValueError(f"expected an (N, D) array of vectors, got shape {matrix.shape}")
    if dim is not None and matrix.shape[1] != dim:
        raise ValueError(f"expected vectors of dimension {dim}, got {matrix.shape[1]}")
    if not np.isfinite(matrix).all():
        raise ValueError("vectors contain NaN or infinity")
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return np.ascontiguousarray(matrix / np.maximum(norms, 1e-12), dtype=np.float32)
