"""Training paths not covered by the bot fixture: adapters, the lexical head, artifacts."""

from __future__ import annotations

from pathlib import Path

import torch

from model import artifacts
from model.adapter import AdapterConfig
from model.artifacts import Meta
from model.bench_report import HEADING, write_section
from model.lexical import from_state, state, train_lexical
from model.train import TrainConfig, train_task

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
