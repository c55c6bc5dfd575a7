"""Assembles what answers turns: the dialogue engine and the models it is handed.

Loading is blocking (files, torch) and happens once, before the server takes
connections: the bot project, its trained classifier (refused when missing or
stale), the knowledge base embedded with the same shared encoder, the catalog,
the entity extractor, the custom-action runner and the language model.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bot.actions import open_action_runner
from bot.config import Settings
from bot.errors import ProjectError
from dialogue.engine import DialogueEngine
from dialogue.entities import EntityExtractor
from dialogue.generate import Writer
from dialogue.knowledge import KnowledgeIndex, load_knowledge
from dialogue.project import Project, load_project
from dialogue.recommend import Recommender, load_catalog
from dialogue.redact import redact_pii
from dialogue.types import Pipeline

log = logging.getLogger("deskmate.brain")

# texts -> one `deskmate nlu parse` JSON per text (plus "vector": the text's embedding)
Understand = Callable[[list[str]], list[dict[str, Any]]]


@dataclass(frozen=True)
class Brain:
    """What answers turns: the dialogue pipeline and the classifier that reads each message."""

    pipeline: Pipeline
    understand: Understand | None = None
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    model: Any = None  # the language model, for its metrics (queue depth, tokens); None: off
    # texts -> (N, D) unit vectors with the encoder the knowledge index was built with, safe
    # to call from a worker thread while turns are classified; None: no encoder (then
    # knowledge learned from agents is stored but not used, see bot.learning)
    embed: Callable[[list[str]], Any] | None = None

    async def close(self) -> None:
        for close in self.closers:
            try:
                await close()
            except Exception:  # closing must go on for the others
                log.exception("closing %s failed", close)


def lm_backend(settings: Settings, project: Project) -> str:
    backend = settings.lm_backend or str(project.setting("language_model", "backend", "embedded"))
    if backend not in ("embedded", "remote", "none"):
        raise ProjectError(str(project.path / "config.yml"),
                           f"language_model.backend must be embedded, remote or none, not {backend!r}")
    return backend


def open_writer(settings: Settings, project: Project) -> tuple[Writer | None, Any]:
    """The language model wrapped for dialogue, and the model (to close), or (None, None)."""
    backend = lm_backend(settings, project)
    if backend == "none":
        return None, None
    from model.lm import PromptBudget, PromptBuilder, approx_tokens, open_chat_model

    model = open_chat_model(backend=backend)
    max_tokens = int(project.setting("language_model", "max_tokens", 160))
    context = int(getattr(model, "context", 0) or project.setting("language_model", "context", 2048))
    count = getattr(model, "count_tokens", None) or approx_tokens
    prompts = PromptBuilder(count, PromptBudget(context=context, reply_tokens=max_tokens))
    # Customers' e-mail addresses, phone and card numbers stay on this machine.
    redact = redact_pii if backend == "remote" and settings.redact_pii else None
    return Writer(model, prompts, project.config, redact=redact), model


class EmbeddingCache:
    """Embeddings of the project's knowledge and responses, kept in ``models/embeddings.npz``
    by the SHA-1 of each text, so a restart embeds only what changed (embedding a knowledge
    base is seconds of CPU; reading the file is milliseconds).

    The file also names the encoder that made its vectors (``embedding_id``, the
    classifier's); a file made by another one (the other weight precision, another
    release of the encoder) is not used, and is replaced on the next write: its vectors
    are close to this encoder's but not comparable with the questions it embeds.

    One engine embeds in several calls (the knowledge, then the rules' responses): a call
    that embeds something adds to the file and drops nothing, and :meth:`prune`, once
    they are all done, keeps only what this start used."""

    def __init__(self, embed: Callable[[list[str]], Any], path: Path, embedding_id: str) -> None:
        self.embed = embed
        self.path = path
        self.embedding_id = embedding_id
        self.vectors: dict[str, np.ndarray] = {}
        self.used: set[str] = set()    # keys asked for since this cache was made
        self.stored: set[str] = set()  # keys the file holds
        try:
            with np.load(path) as data:
                made_by = str(data["encoder"]) if "encoder" in data.files else None
                if made_by == embedding_id:
                    self.vectors = dict(zip(data["keys"].tolist(), data["vectors"], strict=True))
                    self.stored = set(self.vectors)
                else:
                    log.info("%s was made by another encoder (%s, not %s): embedding again",
                             path, made_by or "unnamed", embedding_id)
        except FileNotFoundError:
            pass  # no cache yet
        except Exception as exc:  # a cache that cannot be read costs only the time to embed again
            # np.load of a damaged file raises whatever its reader meets: EOFError (empty),
            # zipfile.BadZipFile (truncated), ValueError, KeyError, pickle errors...
            log.warning("cannot read the embedding cache %s (%s: %s): embedding again",
                        path, type(exc).__name__, exc)
            self.vectors, self.stored = {}, set()

    def __call__(self, texts: list[str]) -> np.ndarray:
        keys = [hashlib.sha1(t.encode("utf-8")).hexdigest() for t in texts]
        self.used.update(keys)
        missing = sorted({k: t for k, t in zip(keys, texts, strict=True) if k not in self.vectors}.items())
        if missing:
            fresh = np.asarray(self.embed([t for _, t in missing]), dtype=np.float32)
            self.vectors.update({k: v for (k, _), v in zip(missing, fresh, strict=True)})
            self._save(self.stored | self.used)
        return np.stack([self.vectors[k] for k in keys]) if keys else np.zeros((0, 0), np.float32)

    def prune(self) -> None:
        """Keep in the file only the vectors asked for since this cache was made (texts
        edited or removed since the file was written are dropped)."""
        if self.used and self.stored != self.used:
            self._save(self.used)

    def _save(self, keep: set[str]) -> None:
        kept = {k: v for k, v in self.vectors.items() if k in keep}
        tmp: str | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # A file of its own: instances starting together from one project folder each
            # write theirs whole, and the last one renamed wins.
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.stem}-", suffix=".npz", dir=self.path.parent)
            with os.fdopen(fd, "wb") as out:
                np.savez(out, keys=np.asarray(list(kept)), vectors=np.stack(list(kept.values())),
                         encoder=np.asarray(self.embedding_id))
                out.flush()
                os.fsync(out.fileno())  # the data is on disk before the name points at it
            # mkstemp makes the file private (0600): keep the old file's mode, else a plain
            # file's, so that a server running as another user (the image's) can read it
            os.chmod(tmp, self.path.stat().st_mode & 0o777 if self.path.exists() else 0o644)
            os.replace(tmp, self.path)  # readers never see half a file
            tmp = None
            self.stored = set(kept)
        except OSError as exc:
            log.warning("cannot write the embedding cache %s: %s", self.path, exc)
        finally:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)


def build_engine(project: Project, *, embed: Callable[[list[str]], Any] | None,
                 embedding_id: str | None = None, actions_url: str | None = None,
                 writer: Writer | None = None) -> DialogueEngine:
    """The engine for ``project``; ``embed`` (texts -> (N, D) vectors) indexes the knowledge.
    ``embedding_id`` names the encoder behind ``embed`` (``Classifier.embedding_id``); with
    it, the vectors are kept on disk between starts (:class:`EmbeddingCache`)."""
    if embed is not None and embedding_id is not None:
        embed = EmbeddingCache(embed, project.path / "models" / "embeddings.npz", embedding_id)
    knowledge = None
    if project.knowledge_dir.is_dir() and embed is not None:
        entries = load_knowledge(project.knowledge_dir)
        if entries:
            knowledge = KnowledgeIndex(entries, embed([e.embedding_text() for e in entries]))
    recommender = Recommender(load_catalog(project.catalog_path)) if project.catalog_path.is_file() else None
    runner = open_action_runner(project.path, actions_url)
    response_vectors: dict[str, Any] = {}
    if embed is not None:
        # The canned responses rules give, embedded to tell when a knowledge entry is more specific.
        # Also without knowledge/ entries: an agent's approved answer creates the index later
        # (bot/learning.py) and must be able to override a rule as a project's own entry can.
        # Every rule's, conditioned and multi-turn ones too: the engine asks about the rule that matched.
        names = sorted({a for rule in project.rule_list for a in rule.actions if a in project.responses})
        texts = [(n, str(v.get("text") or "")) for n in names for v in project.responses[n]]
        vectors: Any = embed([t for _, t in texts]) if texts else []
        for name in names:
            rows = [vectors[i] for i, (n, _) in enumerate(texts) if n == name]
            response_vectors[name] = np.asarray(rows, dtype=np.float32)
    if isinstance(embed, EmbeddingCache):
        embed.prune()
    return DialogueEngine(project, entities=EntityExtractor.for_project(project), knowledge=knowledge,
                          recommender=recommender, actions=runner, writer=writer,
                          response_vectors=response_vectors)


def load_brain(settings: Settings, *, language_model: bool = True) -> Brain:
    """Load the bot project, its trained classifier and everything the engine uses.

    Raises ProjectError naming the command to run when the classifier is missing or
    older than the project's training data: the server never answers with an untrained
    model."""
    project = load_project(settings.project)
    from model.classifier import load_project_classifier

    classifier = load_project_classifier(settings.project, batches_at_once=settings.nlu_batches)
    writer, model = open_writer(settings, project) if language_model else (None, None)
    engine = build_engine(project, embed=classifier.embed, embedding_id=classifier.embedding_id,
                          actions_url=settings.action_endpoint, writer=writer)
    closers: list[Callable[[], Awaitable[None]]] = []
    if engine.actions is not None and hasattr(engine.actions, "close"):
        closers.append(engine.actions.close)
    if model is not None and hasattr(model, "aclose"):
        closers.append(model.aclose)
    elif model is not None and hasattr(model, "close"):
        engine_close = model.close

        async def close_engine() -> None:
            import asyncio

            await asyncio.to_thread(engine_close)

        closers.append(close_engine)
    log.info("project %s: %d intents, %d knowledge entries, %s actions, language model %s",
             project.path, len(project.intents), len(engine.knowledge or ()),
             "remote" if settings.action_endpoint else ("in-process" if engine.actions else "no"),
             getattr(model, "name", "off"))
    return Brain(engine, functools.partial(classifier.parse_batch, vectors=True), closers, model,
                 embed=classifier.embed)


def actions_environment(redis_url: str, key_prefix: str) -> None:
    """Tell in-process actions (the demo shop's order book) which Redis to use, unless the
    operator already did."""
    os.environ.setdefault("DESKMATE_ACTIONS_REDIS_URL", redis_url)
    os.environ.setdefault("DESKMATE_ACTIONS_PREFIX", f"{key_prefix}shop:")
