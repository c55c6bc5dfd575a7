"""Training paths not covered by the bot fixture: adapters, the lexical head, artifacts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from bot.errors import DeskmateError
from model import artifacts
from model.adapter import AdapterConfig
from model.artifacts import Meta
from model.bench_report import HEADING, write_section
from model.data import Example
from model.lexical import from_state, state, train_lexical
from model.sentiment import DEFAULT_DIR, recipe, train_sentiment
from model.train import TrainConfig, restricted_cross_entropy, train_task

TEXTS = ["great, thanks a lot", "I love it", "awful, I hate it", "this is terrible",
         "wonderful service", "worst shop ever"]
LABELS = [1, 1, 0, 0, 1, 0]


def test_adapter_training_moves_only_the_adapter(encoder, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    before = {k: v.clone() for k, v in encoder.model.state_dict().items()}
    config = TrainConfig(adapter=AdapterConfig(top_layers=1, rank=4), epochs=8, batch_size=4)
    model = train_task(encoder, TEXTS, LABELS, 2, config, progress=False)
    assert any(p.abs().sum() > 0 for k, p in model.adapter.up.items())
    for k, v in encoder.model.state_dict().items():  # the shared base weights are untouched
        assert torch.equal(v, before[k]), k
    meta = Meta(task="sentiment", labels=["negative", "positive"], adapter=config.adapter,
                encoder=encoder.name, data_hash="x")
    artifacts.save(tmp_path / "a", model, meta)
    again, meta2 = artifacts.load(tmp_path / "a", encoder)
    assert meta2.labels == meta.labels and meta2.adapter == config.adapter
    batch = encoder.tokenize(TEXTS)
    torch.testing.assert_close(model.predict_logits(batch), again.predict_logits(batch))


def test_restricted_loss_is_cross_entropy_over_the_allowed_labels() -> None:
    torch.manual_seed(0)
    logits = torch.randn(4, 3, requires_grad=True)
    target = torch.tensor([0, 2, 1, 0])
    everything = torch.ones(4, 3, dtype=torch.bool)
    torch.testing.assert_close(restricted_cross_entropy(logits, target, everything, 0.1),
                               F.cross_entropy(logits, target, label_smoothing=0.1))
    # Rows 0 and 1 choose between labels 0 and 2 only: label 1 plays no part in their loss.
    allowed = everything.clone()
    allowed[:2, 1] = False
    loss = restricted_cross_entropy(logits, target, allowed, 0.1)
    two = logits[:2][:, [0, 2]]
    expected = (F.cross_entropy(two, torch.tensor([0, 1]), label_smoothing=0.1, reduction="sum")
                + F.cross_entropy(logits[2:], target[2:], label_smoothing=0.1, reduction="sum")) / 4
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert logits.grad is not None and torch.all(logits.grad[:2, 1] == 0)
    assert torch.isfinite(logits.grad).all()


def test_sentiment_training_takes_polarity_only_rows(encoder, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Binary rows (no neutral class in their corpus) train beside three-class rows; the
    flags are checked against the examples and recorded in the artifact."""
    three = [Example("it is a bag", "neutral"), Example("the parcel is a box", "neutral"),
             Example("I love it", "positive"), Example("awful, I hate it", "negative")]
    binary = [Example(t, "positive" if y else "negative") for t, y in zip(TEXTS, LABELS, strict=True)]
    config = TrainConfig(adapter=AdapterConfig(top_layers=0), epochs=3, batch_size=4, label_smoothing=0.0)
    flags = [False] * len(three) + [True] * len(binary)
    meta = train_sentiment(three + binary, tmp_path / "s", config=config, polarity_only=flags,
                           encoder=encoder, progress=False)
    assert meta.labels == ["negative", "neutral", "positive"]
    assert meta.extra["polarity_only_examples"] == len(binary)
    with pytest.raises(ValueError, match="one flag per example"):
        train_sentiment(three + binary, tmp_path / "t", config=config, polarity_only=[True],
                        encoder=encoder, progress=False)
    with pytest.raises(ValueError, match="own label"):
        train_task(encoder, ["it is a bag"], [1], 3, config, progress=False,
                   allowed=torch.tensor([[True, False, True]]))


def test_sentiment_recipe_is_the_shipped_models() -> None:
    """The default training settings are those the shipped artifact was trained with, so
    `deskmate train sentiment` and scripts/train_sentiment.py retrain the same kind of model."""
    shipped = json.loads((DEFAULT_DIR / "meta.json").read_text())
    config = recipe(shipped["num_examples"])
    assert (config.adapter.top_layers, config.adapter.rank) == (
        shipped["adapter"]["top_layers"], shipped["adapter"]["rank"])
    assert config.epochs == shipped["extra"]["epochs"] and config.lr == shipped["extra"]["lr"]
    assert recipe(500).epochs == 20 and recipe(8000).epochs == 8  # small data: more passes
    frozen = recipe(500, top_layers=0)
    assert frozen.adapter.top_layers == 0 and frozen.epochs == 0  # TrainConfig's own rule
    with pytest.raises(DeskmateError, match="rank >= 1"):
        recipe(10, rank=0)


def test_lexical_head_fits_and_round_trips() -> None:
    head = train_lexical(TEXTS, LABELS, 2, progress=False)
    with torch.no_grad():
        pred = head(TEXTS).argmax(-1).tolist()
    assert pred == LABELS
    tensors, grams = state(head)
    again = from_state(tensors, grams)
    with torch.no_grad():
        torch.testing.assert_close(head(["love it"]), again(["love it"]), atol=1e-2, rtol=1e-2)
        assert again(["zzzz unseen"]).shape == (1, 2)  # no known n-gram: bias only


def test_bench_section_keeps_other_sections(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\n## Websocket load\n\nfast.\n")
    results = {"machine": {"date": "d", "nproc": 2, "cpu": "c", "ram": "1 GiB", "torch": "t",
                           "torch_threads": 2, "python": "3.11", "load_avg_1m_at_start": 0.1}}
    write_section(doc, results)
    write_section(doc, results)  # idempotent: replaced, not appended twice
    text = doc.read_text()
    assert text.count(HEADING) == 1 and "## Websocket load\n\nfast." in text


_TRAIN_AND_HASH = """
import hashlib, random
from model.encoder import load_encoder
from model.train import TrainConfig, train_task
words = ["refund", "parcel", "where", "my", "is", "order", "the", "shoes", "xq", "zzkp", "late", "box"]
rng = random.Random(0)
texts = set()
while len(texts) < 150:  # all 24 characters long, of different word pieces: ties everywhere
    texts.add(" ".join(rng.choice(words) for _ in range(6))[:24].ljust(24, "!"))
texts = sorted(texts)
model = train_task(load_encoder(), texts, [i % 2 for i in range(len(texts))], 2,
                   TrainConfig(epochs=1, batch_size=32), progress=False)
digest = hashlib.sha256()
for key, value in sorted(model.trainable_state().items()):
    digest.update(key.encode() + value.numpy().tobytes())
print(digest.hexdigest())
"""


def test_same_seed_same_weights_in_another_process() -> None:
    """Training is deterministic across processes: nothing depends on the order of a set,
    which follows PYTHONHASHSEED (texts of equal length once went into the trunk's padded
    batches in set order, and the batches' float rounding into the weights)."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    digests = set()
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(root), "HF_HUB_OFFLINE": "1"}
        done = subprocess.run([sys.executable, "-c", _TRAIN_AND_HASH], cwd=root, env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        digests.add(done.stdout.strip().splitlines()[-1])
    assert len(digests) == 1
