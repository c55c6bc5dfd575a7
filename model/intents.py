"""Training an intent model, out-of-scope handling included.

Out-of-scope is decided two ways, because they catch different failures:

* an explicit ``out_of_scope`` class, trained on the project's own OOS examples
  (labels ``out_of_scope``, ``oos`` or ``NO_NODES_DETECTED``) plus synthetic
  gibberish, so keyboard mashes never land on a real intent;
* a confidence threshold, calibrated on a held-out slice of the training data:
  the value below which ``oos_quantile`` of held-out in-scope utterances fall.
  Real out-of-scope turns ("hi", "single") are mostly low-confidence, not gibberish.
"""

from __future__ import annotations

import random
import string
import time
from collections import defaultdict
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from model.adapter import TaskModel
from model.artifacts import Meta
from model.data import OOS_LABELS, OUT_OF_SCOPE, Example, data_hash
from model.encoder import SharedEncoder
from model.lexical import LexicalHead, blend, train_lexical
from model.train import TrainConfig, TrunkCache, train_task


@dataclass(frozen=True)
class IntentConfig:
    """How an intent model is trained; defaults measured in docs/nlu.md."""

    train: TrainConfig = field(default_factory=TrainConfig)
    calibrate: bool = True  # hold out a slice to calibrate the OOS threshold
    holdout: float = 0.2  # fraction held out for calibration (classes with >= 4 examples)
    oos_quantile: float = 0.05  # share of held-out in-scope turns the threshold may reject
    gibberish: float = 0.05  # synthetic gibberish examples, as a share of the data (>= 20)
    lexical: bool = True  # blend in the n-gram head (model/lexical.py)
    lexical_weight: float = 0.4  # its weight in the log-linear blend (plateau 0.3-0.5 on Banking77)
    seed: int = 0


@dataclass
class IntentModel:
    """A trained intent model: encoder head, optional lexical head, metadata."""

    model: TaskModel
    meta: Meta
    lexical: LexicalHead | None = None

    @property
    def lexical_weight(self) -> float:
        return float(self.meta.extra.get("lexical_weight", 0.0)) if self.lexical else 0.0


def normalize_oos(examples: list[Example]) -> list[Example]:
    """Map every out-of-scope label spelling to ``out_of_scope``."""
    return [Example(e.text, OUT_OF_SCOPE) if e.label in OOS_LABELS else e for e in examples]


def gibberish(n: int, seed: int = 0) -> list[str]:
    """``n`` random letter strings ("qzvkt bwo"), a stand-in for keyboard mashes."""
    rng = random.Random(seed)
    rows = ["qwertyuiop", "asdfghjkl", "zxcvbnm"]
    out = []
    for _ in range(n):
        words = []
        for _ in range(rng.randint(1, 4)):
            size = rng.randint(2, 10)
            if rng.random() < 0.3:  # a run along one keyboard row
                row = rng.choice(rows)
                start = rng.randrange(len(row))
                words.append("".join(row[(start + i) % len(row)] for i in range(size)))
            else:
                words.append("".join(rng.choices(string.ascii_lowercase, k=size)))
        out.append(" ".join(words))
    return out


def _split(examples: list[Example], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Stratified train/held-out indices; classes with < 4 examples stay in train."""
    by_label: dict[str, list[int]] = defaultdict(list)
    for i, e in enumerate(examples):
        by_label[e.label].append(i)
    rng = random.Random(seed)
    train, held = [], []
    for idx in by_label.values():
        rng.shuffle(idx)
        k = int(round(len(idx) * fraction)) if len(idx) >= 4 else 0
        held.extend(idx[:k])
        train.extend(idx[k:])
    return sorted(train), sorted(held)


@torch.inference_mode()
def predict_proba(
    model: TaskModel, lexical: LexicalHead | None, weight: float, texts: list[str],
    cache: TrunkCache,
) -> np.ndarray:
    """Blended probabilities (N, L) of texts already in ``cache``."""
    out = np.zeros((len(texts), model.head.out_features), dtype=np.float32)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    for start in range(0, len(order), 64):
        idx = order[start : start + 64]
        trunk, mask = cache.batch([texts[i] for i in idx])
        lex = lexical([texts[i] for i in idx]) if lexical is not None else None
        out[idx] = blend(model(trunk, mask), lex, weight).numpy()
    return out


def _fit(
    cache: TrunkCache, examples: list[Example], labels: list[str], config: IntentConfig,
    progress: bool, desc: str,
) -> tuple[TaskModel, LexicalHead | None]:
    index = {lab: i for i, lab in enumerate(labels)}
    texts, targets = [e.text for e in examples], [index[e.label] for e in examples]
    model = train_task(
        cache.encoder, texts, targets, len(labels), config.train,
        cache=cache, progress=progress, desc=desc,
    )
    lexical = None
    if config.lexical:
        lexical = train_lexical(texts, targets, len(labels), progress=progress)
    return model, lexical


def train_intents(
    encoder: SharedEncoder,
    examples: list[Example],
    config: IntentConfig | None = None,
    *,
    data_files: list[str] | None = None,
    progress: bool = True,
) -> IntentModel:
    """Train the intent model of a bot (or a benchmark) and describe it."""
    config = config or IntentConfig()
    start = time.perf_counter()
    examples = normalize_oos(examples)
    in_scope = sorted({e.label for e in examples} - {OUT_OF_SCOPE})
    if len(in_scope) < 2:
        raise ValueError(f"need at least two intents, found {in_scope}")
    n_noise = max(20, int(config.gibberish * len(examples))) if config.gibberish > 0 else 0
    noise = [Example(t, OUT_OF_SCOPE) for t in gibberish(n_noise, config.seed)]
    data = examples + noise
    labels = in_scope + ([OUT_OF_SCOPE] if any(e.label == OUT_OF_SCOPE for e in data) else [])

    stop = encoder.num_layers - config.train.adapter.top_layers
    cache = TrunkCache(encoder, stop, config.train.max_length)
    cache.add([e.text for e in data], progress=progress)  # one encoding pass for both fits
    threshold: float | None = None
    extra: dict[str, object] = {}
    if config.calibrate:
        train_idx, held_idx = _split(examples, config.holdout, config.seed)
        held = [examples[i] for i in held_idx if examples[i].label != OUT_OF_SCOPE]
        if held:
            part = [examples[i] for i in train_idx] + noise
            part_labels = [lab for lab in labels if any(e.label == lab for e in part)]
            model, lexical = _fit(cache, part, part_labels, config, progress, "calibrating OOS")
            texts = [e.text for e in held]
            probs = predict_proba(model, lexical, config.lexical_weight, texts, cache)
            in_cols = [i for i, lab in enumerate(part_labels) if lab != OUT_OF_SCOPE]
            top = probs[:, in_cols].max(1)  # (N,) confidence of the best in-scope intent
            threshold = float(np.quantile(top, config.oos_quantile))
            extra["calibration"] = {
                "held_out": len(held),
                "quantile": config.oos_quantile,
                "held_out_accuracy": float(
                    np.mean([part_labels[in_cols[j]] == e.label
                             for j, e in zip(probs[:, in_cols].argmax(1), held, strict=True)])
                ),
            }
    model, lexical = _fit(cache, data, labels, config, progress, "training intents")
    meta = Meta(
        task="intent",
        labels=labels,
        adapter=config.train.adapter,
        encoder=encoder.name,
        data_hash="",  # filled in by the caller that knows the source files
        data_files=list(data_files or []),
        num_examples=len(examples),
        oos_threshold=threshold,
        max_length=config.train.max_length,
        train_seconds=time.perf_counter() - start,
        extra={
            **extra,
            "epochs": config.train.epochs_for(len(data)),
            "gibberish": n_noise,
            "lexical_weight": config.lexical_weight if lexical is not None else 0.0,
        },
    )
    return IntentModel(model, meta, lexical)


def with_hash(intent: IntentModel, examples: list[Example]) -> IntentModel:
    """``intent`` with the hash of the (un-normalized) source examples in its metadata."""
    return replace(intent, meta=replace(intent.meta, data_hash=data_hash(examples)))
