"""Sentiment: label handling, the shipped default model, and retraining it.

The default artifact in ``model/artifacts/sentiment/`` is an adapter + head over
the shared encoder, trained by ``scripts/train_sentiment.py`` from
``../shared/data/sentiment``; a bot project may override it with its own
``<project>/models/sentiment``.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from bot.errors import DeskmateError
from model import artifacts
from model.adapter import AdapterConfig, TaskModel
from model.artifacts import Meta
from model.data import Example, data_hash, load_csv
from model.encoder import SharedEncoder, load_encoder
from model.train import TrainConfig, train_task

SENTIMENT_LABELS = ("negative", "neutral", "positive")
DEFAULT_DIR = Path(__file__).resolve().parent / "artifacts" / "sentiment"

# The shipped model's recipe (docs/nlu.md, "Decisions"): LoRA on the top 3 encoder layers.
TOP_LAYERS, RANK, LR = 3, 16, 2e-3
_BINARY = {"0": "negative", "1": "positive"}


def normalize_label(raw: str, path: str = "") -> str:
    """``0``/``1`` or ``negative``/``neutral``/``positive`` (any case) -> a sentiment label."""
    label = _BINARY.get(raw.strip(), raw.strip().lower())
    if label not in SENTIMENT_LABELS:
        raise DeskmateError(f"{path}: sentiment label {raw!r} is not 0/1 or {SENTIMENT_LABELS}")
    return label


def load_sentiment_csv(path: Path) -> list[Example]:
    """A ``text,label`` CSV with normalized sentiment labels."""
    return [Example(e.text, normalize_label(e.label, str(path))) for e in load_csv(path)]


def load_sentiment_files(paths: Sequence[Path]) -> tuple[list[Example], list[bool]]:
    """The examples of sentiment CSVs and, one flag per example, whether it is polarity-only:
    a file with no neutral rows (binary data such as SST-2) teaches negative-vs-positive
    only (:func:`train_sentiment`). ``deskmate train sentiment`` and ``deskmate eval
    sentiment --train`` both read their files here, so they train the same model."""
    examples: list[Example] = []
    polarity_only: list[bool] = []
    for path in paths:
        rows = load_sentiment_csv(path)
        binary = all(e.label != "neutral" for e in rows)
        examples += rows
        polarity_only += [binary] * len(rows)
    return examples, polarity_only


def sentiment_result(probs: torch.Tensor, labels: list[str]) -> dict[str, Any]:
    """``{"sentiment", "sentiment_score"}``; the score is P(positive) - P(negative) in [-1, 1]."""
    p = dict(zip(labels, probs.tolist(), strict=True))
    best = max(p, key=lambda k: p[k])
    score = p.get("positive", 0.0) - p.get("negative", 0.0)
    return {"sentiment": best, "sentiment_score": round(score, 4)}


def load_sentiment(
    project: Path | None, *, encoder: SharedEncoder | None = None
) -> tuple[TaskModel, Meta]:
    """``<project>/models/sentiment`` if it exists, else the shipped default."""
    encoder = encoder or load_encoder()
    folder = DEFAULT_DIR
    if project is not None:
        own = artifacts.current(project / "models" / "sentiment")
        if (own / artifacts.META).is_file():
            folder = own
    if not (folder / artifacts.META).is_file():
        raise DeskmateError(
            f"{folder}: default sentiment model missing; "
            "run: deskmate train sentiment --out model/artifacts/sentiment --data CSV [CSV...]"
        )
    return artifacts.load(folder, encoder)


def holdout_split(texts: list[str], test_fraction: float = 0.5) -> tuple[list[int], list[int]]:
    """Deterministic split by a hash of the text (stable across runs and machines)."""
    train: list[int] = []
    test: list[int] = []
    for i, text in enumerate(texts):
        h = int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big") / 2**32
        (test if h < test_fraction else train).append(i)
    return train, test


def lora_epochs(n: int, batch_size: int = 32) -> int:
    """Epochs for ``n`` examples with adapters: 2 on a corpus the size of SST-2 (the
    shipped model's), more on small data so a run gets at least ~2000 steps, at most 20."""
    steps_per_epoch = max(1, math.ceil(n / batch_size))
    return max(2, min(20, math.ceil(2000 / steps_per_epoch)))


def recipe(n: int, *, top_layers: int = TOP_LAYERS, rank: int = RANK, epochs: int = 0,
           lr: float = LR, seed: int = 0) -> TrainConfig:
    """Training settings of the shipped model for ``n`` examples (``epochs`` 0: from the
    data size, :func:`lora_epochs`; with ``top_layers`` 0, a head over the frozen encoder
    and :class:`TrainConfig`'s own epoch rule)."""
    if top_layers < 0 or rank < 1 or epochs < 0:
        raise DeskmateError(f"sentiment training needs top layers >= 0, rank >= 1 and epochs >= 0 "
                            f"(got {top_layers}, {rank}, {epochs})")
    if top_layers == 0:
        return TrainConfig(epochs=epochs, seed=seed)
    return TrainConfig(adapter=AdapterConfig(top_layers=top_layers, rank=rank),
                       epochs=epochs or lora_epochs(n), lr=lr, seed=seed)


def train_sentiment(
    examples: list[Example],
    out: Path,
    *,
    config: TrainConfig | None = None,
    polarity_only: Sequence[bool] | None = None,
    sources: list[str] | None = None,
    encoder: SharedEncoder | None = None,
    progress: bool = True,
) -> Meta:
    """Train a sentiment model on normalized examples and write it to ``out`` (``config``
    defaults to the shipped model's :func:`recipe`).

    ``polarity_only[i]`` marks an example from binary data (no ``neutral`` class, such
    as SST-2): it is scored as negative-or-positive only, so a corpus that left neutral
    sentences out does not teach the model that nothing is neutral."""
    encoder = encoder or load_encoder()
    config = config or recipe(len(examples))
    labels = [lab for lab in SENTIMENT_LABELS if any(e.label == lab for e in examples)]
    if len(labels) < 2:
        raise DeskmateError(f"sentiment data needs at least two labels, found {labels}")
    index = {lab: i for i, lab in enumerate(labels)}
    allowed = None
    if polarity_only is not None and any(polarity_only) and "neutral" in index:
        if len(polarity_only) != len(examples):
            raise ValueError("polarity_only needs one flag per example")
        allowed = torch.ones(len(examples), len(labels), dtype=torch.bool)
        allowed[torch.tensor(list(polarity_only)), index["neutral"]] = False
    start = time.perf_counter()
    model = train_task(
        encoder,
        [e.text for e in examples],
        [index[e.label] for e in examples],
        len(labels),
        config,
        allowed=allowed,
        progress=progress,
        desc="training sentiment",
    )
    meta = Meta(
        task="sentiment",
        labels=labels,
        adapter=config.adapter,
        encoder=encoder.name,
        data_hash=data_hash(examples),
        data_files=list(sources or []),
        num_examples=len(examples),
        max_length=config.max_length,
        train_seconds=time.perf_counter() - start,
        extra={"epochs": config.epochs_for(len(examples)), "lr": config.lr,
               "polarity_only_examples": sum(polarity_only or ())},
    )
    artifacts.save(out, model, meta)
    return meta
