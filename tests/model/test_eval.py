"""Metrics (out-of-scope included), the eval JSON, and the CLI commands."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from bot.errors import DeskmateError
from model.metrics import classification_report

FIXTURES = Path(__file__).parent / "fixtures"


def test_report_with_out_of_scope() -> None:
    gold = ["a", "a", "b", "oos", "NO_NODES_DETECTED", "out_of_scope"]
    pred = ["a", "b", "b", "out_of_scope", "a", "out_of_scope"]
    r = classification_report(gold, pred)
    assert r["accuracy"] == pytest.approx(4 / 6, abs=1e-4)
    assert r["in_scope_accuracy"] == pytest.approx(2 / 3, abs=1e-4)
    assert r["oos_recall"] == pytest.approx(2 / 3, abs=1e-4)
    assert r["per_label"]["a"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    # macro-F1 over gold labels a (0.5), b (0.6667), out_of_scope (0.8)
    assert r["macro_f1"] == pytest.approx((0.5 + 2 / 3 + 0.8) / 3, abs=1e-4)
    assert sum(map(sum, r["confusion_matrix"])) == 6


def test_report_without_out_of_scope() -> None:
    r = classification_report(["x", "y"], ["x", "x"])
    assert "oos_recall" not in r and "in_scope_accuracy" not in r
    assert r["accuracy"] == 0.5


def _parser() -> argparse.ArgumentParser:
    from model import cli

    parser = argparse.ArgumentParser(prog="deskmate")
    sub = parser.add_subparsers(dest="command", required=True)
    cli.register(sub)
    return parser


def _run(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    return int(args.handler(args))


def test_cli_parses_every_command() -> None:
    p = _parser()
    assert p.parse_args(["train"]).handler.__name__ == "cmd_train"
    assert p.parse_args(["train", "--project", "x"]).project == Path("x")
    a = p.parse_args(["train", "sentiment", "--data", "a.csv", "b.csv"])
    assert a.handler.__name__ == "cmd_train_sentiment" and a.data == [Path("a.csv"), Path("b.csv")]
    assert p.parse_args(["nlu", "parse", "hi"]).handler.__name__ == "cmd_parse"
    a = p.parse_args(["eval", "intents", "--test", "t", "--train", "x"])
    assert a.handler.__name__ == "cmd_eval_intents"
    assert p.parse_args(["eval", "sentiment", "--test", "t"]).handler.__name__ == "cmd_eval_sentiment"
    assert p.parse_args(["bench", "nlu"]).handler.__name__ == "cmd_bench_nlu"
    with pytest.raises(SystemExit):
        p.parse_args(["eval", "intents", "--test", "t"])  # needs --train or --project


def test_eval_intents_project_json_and_plot(
    trained_shopbot: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, png = tmp_path / "r.json", tmp_path / "cm.png"
    code = _run(["eval", "intents", "--test", str(FIXTURES / "intents_test.csv"),
                 "--project", str(trained_shopbot), "--json", str(out), "--plot", str(png),
                 "--quiet"])
    assert code == 0
    report = json.loads(out.read_text())
    for key in ("accuracy", "macro_f1", "in_scope_accuracy", "oos_recall", "per_label"):
        assert key in report
    assert report["in_scope_accuracy"] >= 0.75
    assert report["oos_recall"] >= 0.5  # the gibberish row at least
    assert set(report["per_label"]["greet"]) == {"precision", "recall", "f1", "support"}
    assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"
    stdout = json.loads(capsys.readouterr().out)
    assert stdout["accuracy"] == report["accuracy"]


def test_eval_sentiment_binary(tmp_path: Path) -> None:
    out = tmp_path / "s.json"
    assert _run(["eval", "sentiment", "--test", str(FIXTURES / "sentiment_test.csv"),
                 "--json", str(out), "--quiet"]) == 0
    report = json.loads(out.read_text())
    assert report["binary"] is True
    assert report["accuracy"] == 1.0 and report["macro_f1"] == 1.0


def test_train_sentiment_cli_writes_the_chosen_adapter(tmp_path: Path) -> None:
    """`deskmate train sentiment` trains adapters like the shipped model's (here small
    ones, one pass); a file without neutral rows is marked polarity-only."""
    three = tmp_path / "three.csv"
    three.write_text("text,label\nit is a bag,neutral\nI love it,positive\nawful service,negative\n"
                     "the box is brown,neutral\n")
    out = tmp_path / "model"
    assert _run(["train", "sentiment", "--data", str(three), str(FIXTURES / "sentiment_test.csv"),
                 "--out", str(out), "--top-layers", "1", "--rank", "2", "--epochs", "1", "--quiet"]) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["adapter"]["top_layers"] == 1 and meta["adapter"]["rank"] == 2
    assert meta["extra"]["epochs"] == 1 and meta["extra"]["polarity_only_examples"] == 4
    assert meta["labels"] == ["negative", "neutral", "positive"]
    # More adapted layers than the encoder has: a clear error, nothing written.
    with pytest.raises(DeskmateError, match="6 layers"):
        _run(["train", "sentiment", "--data", str(three), "--out", str(tmp_path / "no"),
              "--top-layers", "7", "--quiet"])
    assert not (tmp_path / "no").exists()


def test_nlu_parse_cli(trained_shopbot: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(["nlu", "parse", "where is my order", "--project", str(trained_shopbot)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["intent"] == "order_status"
    assert _run(["nlu", "parse", "I hate this"]) == 0  # no project: sentiment only
    result = json.loads(capsys.readouterr().out)
    assert result["intent"] is None and result["sentiment"] == "negative"


def test_train_cli_writes_artifacts(shopbot: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(["train", "--project", str(shopbot), "--quiet"]) == 0
    assert (shopbot / "models" / "intent" / "meta.json").is_file()
    assert "trained 5 intents" in capsys.readouterr().out


def test_summary_line_when_every_row_is_out_of_scope() -> None:
    from model.metrics import summary_line

    report = classification_report(["oos", "NO_NODES_DETECTED"], ["out_of_scope", "refund"])
    assert report["in_scope_accuracy"] is None
    assert summary_line(report) == ("accuracy 0.5000, macro-F1 0.6667, in-scope accuracy –, "
                                    "OOS recall 0.5000 (n=2)")


def test_train_sentiment_options_before_or_after_the_target() -> None:
    p = _parser()
    for argv in (["train", "--quiet", "sentiment", "--data", "a.csv"],
                 ["train", "sentiment", "--data", "a.csv", "--quiet"]):
        assert p.parse_args(argv).quiet is True, argv
    assert p.parse_args(["train", "sentiment", "--data", "a.csv"]).quiet is False
    for argv in (["train", "--project", "bot", "sentiment", "--data", "a.csv"],
                 ["train", "sentiment", "--project", "bot", "--data", "a.csv"]):
        assert p.parse_args(argv).project == Path("bot"), argv


def test_train_sentiment_for_a_project_leaves_the_shipped_model(
    shopbot: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With --project the model goes where that bot loads it from; with neither --project
    nor --out the command refuses rather than replace every other bot's default."""
    from model import artifacts, sentiment

    shipped = tmp_path / "shipped"  # stands in for model/artifacts/sentiment
    monkeypatch.setattr(sentiment, "DEFAULT_DIR", shipped)
    small = ["--top-layers", "1", "--rank", "2", "--epochs", "1"]
    data = str(FIXTURES / "sentiment_test.csv")
    assert _run(["train", "--project", str(shopbot), "--quiet", "sentiment", "--data", data, *small]) == 0
    own = artifacts.current(shopbot / "models" / "sentiment")
    assert json.loads((own / "meta.json").read_text())["adapter"]["rank"] == 2
    assert sentiment.load_sentiment(shopbot)[1].adapter.rank == 2  # what the bot now loads
    assert not shipped.exists()
    with pytest.raises(DeskmateError, match="--project DIR"):
        _run(["train", "sentiment", "--data", data, *small, "--quiet"])
    assert not shipped.exists()


def test_eval_sentiment_trains_what_train_sentiment_trains(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`eval sentiment --train` marks a file without neutral rows polarity-only, as
    `train sentiment` does (both read their files with model.sentiment.load_sentiment_files):
    both score one model."""
    import model.evaluate as evaluate
    from model import artifacts
    from model.classifier import Classifier
    from model.encoder import load_encoder
    from model.sentiment import load_sentiment_csv, recipe

    three = tmp_path / "three.csv"
    three.write_text("text,label\nit is a bag,neutral\nI love it,positive\nawful service,negative\n")
    binary = FIXTURES / "sentiment_test.csv"  # 4 rows, 0/1 labels
    seen: dict[str, object] = {}
    real = evaluate.train_sentiment

    def small(examples, out, **kw):  # type: ignore[no-untyped-def]
        seen.update(kw)  # the real training, one small pass
        return real(examples, out, **{**kw, "config": recipe(len(examples), top_layers=1, rank=2, epochs=1)})

    monkeypatch.setattr(evaluate, "train_sentiment", small)
    report = evaluate.eval_sentiment(binary, train=[three, binary], progress=False)
    assert seen.get("polarity_only") == [False] * 3 + [True] * 4
    # the same model from `train sentiment`, scored on the same file: the same report
    out = tmp_path / "model"
    assert _run(["train", "sentiment", "--data", str(three), str(binary), "--out", str(out),
                 "--top-layers", "1", "--rank", "2", "--epochs", "1", "--quiet"]) == 0
    encoder = load_encoder()
    trained = Classifier(encoder, None, artifacts.load(out, encoder))
    tests = load_sentiment_csv(binary)
    preds = evaluate.predict_sentiment(trained, [e.text for e in tests], True)
    assert classification_report([e.label for e in tests], preds) == {
        k: v for k, v in report.items() if k not in ("test", "binary")}


def test_bench_int8_rows_run_int8_whatever_the_runtime(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`deskmate bench nlu` with DESKMATE_NLU_RUNTIME=torch: the fp32 row is the torch path,
    the int8 row still int8 weights (on ONNX Runtime), never fp32 under the int8 name."""
    import shutil

    import model.bench as bench
    from model.classifier import Classifier

    made: list[Classifier] = []

    class Recorded(Classifier):
        def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(bench, "Classifier", Recorded)
    monkeypatch.setenv("DESKMATE_NLU_RUNTIME", "torch")
    sst2 = tmp_path / "data" / "sentiment" / "sst2"
    sst2.mkdir(parents=True)
    shutil.copy(FIXTURES / "sentiment_test.csv", sst2 / "validation.csv")
    results: dict[str, object] = {}
    bench.bench_sentiment(tmp_path / "data", "sst2", results)
    assert [(c.runtime, c.precision) for c in made] == [("torch", "fp32"), ("onnx", "int8")]
    assert "ours_int8" in results["sst2"]  # type: ignore[operator]
