"""``deskmate eval intents`` and ``deskmate eval sentiment``: predictions + metrics."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from bot.errors import DeskmateError
from model.artifacts import Meta
from model.classifier import Classifier, load_project_classifier
from model.data import Example, load_file
from model.encoder import SharedEncoder, load_encoder
from model.intents import IntentConfig, train_intents
from model.metrics import classification_report, plot_confusion
from model.sentiment import (
    load_sentiment,
    load_sentiment_csv,
    load_sentiment_files,
    train_sentiment,
)


def intent_classifier_from_examples(
    encoder: SharedEncoder,
    examples: list[Example],
    config: IntentConfig | None = None,
    *,
    progress: bool = True,
) -> tuple[Classifier, Meta]:
    """An in-memory intent-only classifier trained on ``examples``."""
    intent = train_intents(encoder, examples, config, progress=progress)
    return Classifier(encoder, intent, None), intent.meta


def predict_intents(classifier: Classifier, texts: list[str]) -> list[str]:
    """The intent (``out_of_scope`` included) of each text."""
    return [str(r["intent"]) for r in classifier.parse_batch(texts)]


def eval_intents(
    test: Path,
    *,
    train: Path | None = None,
    project: Path | None = None,
    json_out: Path | None = None,
    plot: Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train on ``train`` (or load ``project``'s model as is) and score it on ``test``."""
    if (train is None) == (project is None):
        raise DeskmateError("eval intents: give exactly one of --train CSV or --project DIR")
    tests = load_file(test)
    encoder = load_encoder()
    if project is not None:
        classifier = load_project_classifier(project, encoder=encoder)
    else:
        assert train is not None
        classifier, _ = intent_classifier_from_examples(
            encoder, load_file(train), progress=progress
        )
    preds = predict_intents(classifier, [e.text for e in tests])
    report = classification_report([e.label for e in tests], preds)
    report["test"] = str(test)
    report["model"] = str(project) if project is not None else f"trained on {train}"
    _write(report, json_out, plot)
    return report


def predict_sentiment(classifier: Classifier, texts: list[str], binary: bool) -> list[str]:
    """Sentiment labels; for binary gold data, the sign of P(positive) - P(negative)."""
    results = classifier.parse_batch(texts)
    if binary:
        return ["positive" if float(r["sentiment_score"]) > 0 else "negative" for r in results]
    return [str(r["sentiment"]) for r in results]


def eval_sentiment(
    test: Path,
    *,
    train: list[Path] | None = None,
    json_out: Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Score the default sentiment model (or one trained on ``train``, as ``deskmate train
    sentiment`` trains it from those files) on ``test``."""
    tests = load_sentiment_csv(test)
    encoder = load_encoder()
    if train:
        examples, polarity_only = load_sentiment_files(train)
        with tempfile.TemporaryDirectory() as tmp:
            train_sentiment(examples, Path(tmp) / "sentiment", polarity_only=polarity_only,
                            sources=[str(p) for p in train], encoder=encoder, progress=progress)
            from model import artifacts

            sentiment = artifacts.load(Path(tmp) / "sentiment", encoder)
    else:
        sentiment = load_sentiment(None, encoder=encoder)
    classifier = Classifier(encoder, None, sentiment)
    binary = {e.label for e in tests} <= {"negative", "positive"}
    preds = predict_sentiment(classifier, [e.text for e in tests], binary)
    report = classification_report([e.label for e in tests], preds)
    report["test"] = str(test)
    report["binary"] = binary
    _write(report, json_out, None)
    return report


def _write(report: dict[str, Any], json_out: Path | None, plot: Path | None) -> None:
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    if plot is not None:
        plot_confusion(report, plot)
