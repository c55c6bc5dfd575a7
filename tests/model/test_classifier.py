"""A tiny bot trained end to end: parse schema, out-of-scope, stale/missing artifacts."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from bot.errors import ProjectError
from model.classifier import load_project_classifier

SCHEMA = {"intent", "confidence", "ranking", "sentiment", "sentiment_score"}


def test_artifact_is_versioned(trained_shopbot: Path) -> None:
    folder = trained_shopbot / "models" / "intent"
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["format"] == "deskmate-task-model" and meta["format_version"] == 1
    assert meta["encoder"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert meta["labels"] == ["goodbye", "greet", "order_status", "refund", "out_of_scope"]
    assert len(meta["data_hash"]) == 64
    assert meta["trained_at_iso"].endswith("Z")
    assert 0.0 < meta["oos_threshold"] < 1.0
    assert (folder / "weights.safetensors").stat().st_size < 1_000_000


def test_parse_schema_and_answers(trained_shopbot: Path) -> None:
    clf = load_project_classifier(trained_shopbot)
    result = clf.parse("where is my parcel, it has not arrived")
    assert set(result) == SCHEMA
    assert result["intent"] == "order_status"
    assert 0.0 <= result["confidence"] <= 1.0
    ranking = result["ranking"]
    assert ranking[0]["intent"] == "order_status"
    assert [r["confidence"] for r in ranking] == sorted((r["confidence"] for r in ranking), reverse=True)
    assert result["sentiment"] in ("negative", "neutral", "positive")
    assert -1.0 <= result["sentiment_score"] <= 1.0
    assert clf.parse("I want my money back for these shoes")["intent"] == "refund"
    assert clf.parse("this is awful, the worst service ever")["sentiment"] == "negative"
    assert clf.parse("thank you so much, you were wonderful!")["sentiment"] == "positive"


def test_gibberish_is_out_of_scope(trained_shopbot: Path) -> None:
    clf = load_project_classifier(trained_shopbot)
    for text in ("asdkjh qwpoe zzxv", "xkcd blorp fnord", "jjjjjjj kkkkk"):
        assert clf.parse(text)["intent"] == "out_of_scope", text


def test_batch_equals_single_and_threads(trained_shopbot: Path) -> None:
    clf = load_project_classifier(trained_shopbot)
    long = ("I ordered a pair of boots three weeks ago and they still have not arrived, the "
            "tracking page has said in transit for ten days and nobody answers my emails")
    texts = ["hi", "refund please, the item is broken", "bye bye", long, "track my parcel"] * 3
    batch = clf.parse_batch(texts, vectors=True)   # cut into batches of similar length
    singles = [clf.parse_batch([t], vectors=True)[0] for t in texts]
    assert [b["intent"] for b in batch] == [s["intent"] for s in singles]
    for b, s in zip(batch, singles, strict=True):
        assert b["confidence"] == pytest.approx(s["confidence"], abs=1e-3)
        assert b["sentiment_score"] == pytest.approx(s["sentiment_score"], abs=1e-3)
        assert np.allclose(b["vector"], s["vector"], atol=1e-4)
    errors: list[BaseException] = []
    answers: dict[int, str] = {}

    def work(i: int) -> None:
        try:
            answers[i] = clf.parse(texts[i])["intent"]
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(texts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert [answers[i] for i in range(len(texts))] == [s["intent"] for s in singles]


def test_batches_run_together_share_the_cores(trained_shopbot: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The server runs DESKMATE_NLU_BATCHES classifier batches at once; each gets its share
    of DESKMATE_TORCH_THREADS, so two batches on two cores do not run four threads that
    wait on each other (at least one thread each)."""
    import torch

    before = torch.get_num_threads()
    monkeypatch.setenv("DESKMATE_TORCH_THREADS", "4")
    try:
        for at_once, threads in ((1, 4), (2, 2), (3, 1), (8, 1)):
            clf = load_project_classifier(trained_shopbot, batches_at_once=at_once)
            assert clf.graph is not None
            assert clf.graph.session.get_session_options().intra_op_num_threads == threads, at_once
        assert clf.parse("where is my parcel")["intent"] is not None
    finally:
        torch.set_num_threads(before)


def test_missing_artifacts_name_the_command(shopbot: Path) -> None:
    with pytest.raises(ProjectError, match=r"deskmate train --project"):
        load_project_classifier(shopbot)


def test_stale_artifacts_name_the_command(trained_shopbot: Path, tmp_path: Path) -> None:
    import shutil

    project = tmp_path / "bot"
    shutil.copytree(trained_shopbot, project)
    load_project_classifier(project)  # fresh: loads
    nlu = project / "data" / "nlu.yml"
    # touching without changing the examples keeps the model fresh
    os.utime(nlu, (time.time() + 5, time.time() + 5))
    load_project_classifier(project)
    extra = "\n- intent: thanks\n  examples: |\n    - thanks\n    - thank you\n"
    nlu.write_text(nlu.read_text(encoding="utf-8") + extra, encoding="utf-8")
    with pytest.raises(ProjectError, match=r"older than the training data.*deskmate train --project"):
        load_project_classifier(project)


def test_onnx_runtime_matches_torch(trained_shopbot: Path) -> None:
    """The served ONNX graph (merged adapters, one trunk) gives the torch path's answers."""
    from model import artifacts
    from model.classifier import Classifier, intent_dir
    from model.encoder import load_encoder
    from model.intents import IntentModel
    from model.runtime import ServedEncoder
    from model.sentiment import load_sentiment

    clf = load_project_classifier(trained_shopbot)
    assert clf.runtime == "onnx" and clf.graph is not None
    assert isinstance(clf.encoder, ServedEncoder)  # serving loads no torch layers
    encoder = load_encoder()
    folder = intent_dir(trained_shopbot)
    model, meta = artifacts.load(folder, encoder)
    reference = Classifier(
        encoder, IntentModel(model, meta, artifacts.load_lexical(folder)),
        load_sentiment(trained_shopbot, encoder=encoder), runtime="torch",
    )
    assert reference.graph is None
    texts = ["where is my parcel", "I hate this, refund now!!", "hi", "ok thanks, bye",
             "qwzx plorb", "Könnten Sie mir helfen? 🙂", "a " * 80]
    ours = clf.parse_batch(texts, vectors=True)
    theirs = reference.parse_batch(texts, vectors=True)
    for a, b in zip(ours, theirs, strict=True):
        assert a["intent"] == b["intent"] and a["sentiment"] == b["sentiment"]
        assert a["confidence"] == pytest.approx(b["confidence"], abs=1e-4)
        assert a["sentiment_score"] == pytest.approx(b["sentiment_score"], abs=1e-4)
        assert abs(a["vector"] - b["vector"]).max() < 1e-5
    # knowledge-base embeddings: full length, identical to the encoder's own
    long_texts = ["returns within 30 days " * 20, "shipping"]
    assert abs(clf.embed(long_texts) - encoder.embed(long_texts)).max() < 1e-5
    # ... so vectors either one stored can be compared with the other's
    assert clf.embedding_id == reference.embedding_id


def test_int8_embeddings_are_named_apart(trained_shopbot: Path) -> None:
    """int8 weights move the embedding (cosine down to ~0.99): its vectors carry another id,
    so a knowledge index stored by an fp32 server is not reused by an int8 one."""
    from model.classifier import Classifier
    from model.encoder import load_encoder

    encoder = load_encoder()
    fp32 = Classifier(encoder, None, None, precision="fp32")
    int8 = Classifier(encoder, None, None, precision="int8")
    assert fp32.embedding_id != int8.embedding_id
    assert fp32.embedding_id.startswith(encoder.name) and fp32.embedding_id.endswith("fp32")
    texts = ["how can I contact customer service", "returns within 30 days"]
    assert abs(fp32.embed(texts) - int8.embed(texts)).max() > 1e-4


def test_unknown_runtime_is_refused(monkeypatch: pytest.MonkeyPatch, trained_shopbot: Path) -> None:
    monkeypatch.setenv("DESKMATE_NLU_RUNTIME", "tensorrt")
    from bot.errors import DeskmateError

    with pytest.raises(DeskmateError, match="DESKMATE_NLU_RUNTIME"):
        load_project_classifier(trained_shopbot)


def _save_twice(folder: Path, encoder, crash: bool, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    from model import artifacts
    from model.adapter import AdapterConfig, TaskModel

    config = AdapterConfig(top_layers=1, rank=2)
    model = TaskModel(config, encoder, 2)

    def meta(data_hash: str) -> artifacts.Meta:
        return artifacts.Meta(task="intent", labels=["a", "b"], adapter=config, encoder=encoder.name,
                              data_hash=data_hash)

    artifacts.save(folder, model, meta("first"))
    real_replace = os.replace

    def replace_then_die(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        real_replace(src, dst)
        if crash:
            raise KeyboardInterrupt  # the process dies right after its first rename

    monkeypatch.setattr(artifacts.os, "replace", replace_then_die)
    with contextlib.suppress(KeyboardInterrupt):
        artifacts.save(folder, model, meta("second"))


def test_a_crash_while_saving_leaves_a_model(
        tmp_path: Path, encoder, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """Retraining swaps the new folder in with the old one in one step: it renamed
    intent -> intent.old, then the new folder -> intent, and a crash between the two left
    no intent model, so the server refused to start."""
    from model import artifacts

    folder = tmp_path / "models" / "intent"
    _save_twice(folder, encoder, True, monkeypatch)
    assert artifacts.read_meta(folder).data_hash == "second"
    assert [p.name for p in folder.parent.iterdir()] == ["intent"]  # nothing left beside it


def test_saving_without_an_atomic_swap_still_replaces_the_model(
        tmp_path: Path, encoder, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """Where the system cannot swap two folders (not Linux), the two renames remain."""
    from model import artifacts

    monkeypatch.setattr(artifacts, "_exchange", lambda a, b: False)
    folder = tmp_path / "models" / "intent"
    _save_twice(folder, encoder, False, monkeypatch)
    assert artifacts.read_meta(folder).data_hash == "second"
    assert [p.name for p in folder.parent.iterdir()] == ["intent"]


def test_a_crash_between_the_two_renames_still_serves_the_old_model(
        tmp_path: Path, encoder, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """Without an atomic swap a save renames intent -> intent.old, then the new folder ->
    intent; a crash between the two left only intent.old, and the server said "run
    deskmate train" although a whole model was on disk."""
    from model import artifacts

    monkeypatch.setattr(artifacts, "_exchange", lambda a, b: False)
    folder = tmp_path / "models" / "intent"
    _save_twice(folder, encoder, True, monkeypatch)
    assert not folder.exists()
    assert artifacts.current(folder) == folder.with_name("intent.old")
    assert artifacts.read_meta(artifacts.current(folder)).data_hash == "first"
    monkeypatch.undo()
    _save_twice(folder, encoder, False, monkeypatch)  # the next save tidies up
    assert artifacts.current(folder) == folder
    assert [p.name for p in folder.parent.iterdir()] == ["intent"]


def test_a_project_whose_model_was_left_as_intent_old_loads(
        tmp_path: Path, trained_shopbot: Path) -> None:
    """check_fresh and load_project_classifier read what a crashed save left behind."""
    from model.classifier import check_fresh, intent_dir

    project = tmp_path / "shopbot"
    shutil.copytree(trained_shopbot, project)
    folder = intent_dir(project)
    folder.rename(folder.with_name("intent.old"))
    assert check_fresh(project).task == "intent"
    classifier = load_project_classifier(project)
    assert classifier.parse("where is my order")["intent"] in classifier.intent_labels


def _classifier(project: Path, runtime: str):  # type: ignore[no-untyped-def]
    """The project's classifier over the torch encoder, on ``runtime``."""
    from model import artifacts
    from model.classifier import Classifier, intent_dir
    from model.encoder import load_encoder
    from model.intents import IntentModel
    from model.sentiment import load_sentiment

    encoder = load_encoder()
    folder = intent_dir(project)
    model, meta = artifacts.load(folder, encoder)
    return Classifier(encoder, IntentModel(model, meta, artifacts.load_lexical(folder)),
                      load_sentiment(project, encoder=encoder), runtime=runtime)


PREAMBLE = ("hello there, I have been a customer of yours for many years and I always liked the shop, "
            "the staff was friendly and the prices fair, but something happened last month that I "
            "need to tell you about in detail, because it matters to me and to my family as well, "
            "before my actual question: ")


@pytest.mark.parametrize("runtime", ["onnx", "torch"])
def test_vectors_of_long_texts_are_full_length_embeddings(trained_shopbot: Path, runtime: str) -> None:
    """The heads read 64 word pieces, but a turn's knowledge vector is compared with entries
    embedded at 256: past 64 it must still be what embed() gives, not the cut text's."""
    clf = _classifier(trained_shopbot, runtime)
    refund = PREAMBLE + "how do I return a jacket for a refund?"
    hours = PREAMBLE + "when do you open on sunday?"
    texts = [refund, "where is my parcel", hours, "a " * 80, "returns within 30 days " * 60, "hi"]
    assert int(clf.encoder.tokenize([PREAMBLE]).attention_mask.sum()) > clf.max_length - 4
    batch = clf.parse_batch(texts, vectors=True)
    singles = [clf.parse_batch([t], vectors=True)[0] for t in texts]
    expected = clf.embed(texts)
    for text, b, s, e in zip(texts, batch, singles, expected, strict=True):
        assert abs(b["vector"] - e).max() < 1e-5, text[-30:]
        assert abs(s["vector"] - e).max() < 1e-5, text[-30:]
        assert b["intent"] == s["intent"]
        assert b["confidence"] == pytest.approx(s["confidence"], abs=1e-3)
    # the two questions after the same long preamble are told apart (0.94 when cut at 64)
    assert float(batch[0]["vector"] @ batch[2]["vector"]) < 0.6


@pytest.mark.parametrize("runtime", ["onnx", "torch"])
def test_invalid_unicode_does_not_fail_the_batch(trained_shopbot: Path, runtime: str) -> None:
    """A lone surrogate (undecodable bytes, a JSON escape) is replaced, not a tokenizer
    error that fails every text batched with it."""
    clf = _classifier(trained_shopbot, runtime)
    texts = ["refund \udcff please", "where is my parcel", "\ud800"]
    results = clf.parse_batch(texts, vectors=True)
    assert results[0]["intent"] == clf.parse("refund ? please")["intent"]
    assert results[1]["intent"] == clf.parse("where is my parcel")["intent"] == "order_status"
    assert clf.embed(texts).shape == (3, clf.encoder.hidden_size)


def test_nlu_parse_cli_takes_undecodable_bytes() -> None:
    """`deskmate nlu parse $'refund \\xff please'`: Python hands the byte to the command as a
    lone surrogate; the command answers instead of a traceback."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-m", "bot.cli", "nlu", "parse", b"refund \xff please"],
                          cwd=root, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(root), "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["sentiment"] in ("negative", "neutral", "positive")


def test_int8_is_refused_on_the_torch_runtime(monkeypatch: pytest.MonkeyPatch) -> None:
    """The torch path has fp32 weights only: int8 asked for there is an error, never fp32
    figures under the int8 name."""
    from bot.errors import DeskmateError
    from model.classifier import Classifier
    from model.encoder import load_encoder

    encoder = load_encoder()
    with pytest.raises(DeskmateError, match="int8 needs the ONNX runtime"):
        Classifier(encoder, None, None, runtime="torch", precision="int8")
    monkeypatch.setenv("DESKMATE_NLU_RUNTIME", "torch")
    with pytest.raises(DeskmateError, match="int8 needs the ONNX runtime"):
        Classifier(encoder, None, None, precision="int8")
    monkeypatch.setenv("DESKMATE_NLU_PRECISION", "int8")
    with pytest.raises(DeskmateError, match="DESKMATE_NLU_PRECISION=int8 needs the ONNX runtime"):
        Classifier(encoder, None, None)
    # a torch reference run asked for by name is fp32 whatever the serving precision
    assert Classifier(encoder, None, None, runtime="torch").precision == "fp32"
    with pytest.raises(DeskmateError, match="precision 'int4'"):
        Classifier(encoder, None, None, runtime="onnx", precision="int4")
