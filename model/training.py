"""``deskmate train --project DIR``: a bot's intent model from its ``data/``."""

from __future__ import annotations

from pathlib import Path

from bot.errors import ProjectError
from model import artifacts
from model.artifacts import Meta
from model.classifier import intent_dir
from model.data import load_project
from model.encoder import load_encoder
from model.intents import IntentConfig, train_intents, with_hash


def train_project(
    project: Path, config: IntentConfig | None = None, *, progress: bool = True
) -> Meta:
    """Train on ``<project>/data`` and write ``<project>/models/intent`` atomically."""
    if not project.is_dir():
        raise ProjectError(str(project), "no such project directory")
    examples, files = load_project(project)
    try:
        intent = train_intents(
            load_encoder(),
            examples,
            config,
            data_files=[str(p.relative_to(project)) for p in files],
            progress=progress,
        )
    except ValueError as exc:
        raise ProjectError(str(project / "data"), str(exc)) from None
    intent = with_hash(intent, examples)
    artifacts.save(intent_dir(project), intent.model, intent.meta, intent.lexical)
    return intent.meta
