"""``deskmate bench nlu``: accuracy, speed and memory of the NLU, next to baselines.

Every figure in docs/benchmarks.md's NLU section comes from one run of this
module on the machine it names. Intent sets: Banking77, HWU64, HINT3
(SOFMattress, Curekart; their test sets carry out-of-scope rows). Sentiment:
SST-2 validation and the held-out half of tweet_eval (the other half trains the
default model, see scripts/train_sentiment.py), next to VADER.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from model import artifacts
from model.baseline import TfidfBaseline, vader_predict
from model.bench_report import machine, rss_mb, write_section
from model.classifier import Classifier
from model.data import Example, load_csv
from model.encoder import configure_threads, load_encoder
from model.evaluate import predict_intents, predict_sentiment
from model.intents import IntentModel, train_intents
from model.metrics import classification_report
from model.sentiment import holdout_split, load_sentiment, load_sentiment_csv

INTENT_SETS = {
    "banking77": ("intents/banking77/train.csv", "intents/banking77/test.csv"),
    "hwu64": ("intents/hwu64/train.csv", "intents/hwu64/test.csv"),
    "sofmattress": ("intents/hint3/sofmattress_train.csv", "intents/hint3/sofmattress_test.csv"),
    "curekart": ("intents/hint3/curekart_train.csv", "intents/hint3/curekart_test.csv"),
}
SENTIMENT_SETS = ("sst2", "tweet_eval")
ALL = [*INTENT_SETS, "bot40x15", *SENTIMENT_SETS, "latency"]


def _scores(report: dict[str, Any]) -> dict[str, Any]:
    keys = ("accuracy", "macro_f1", "in_scope_accuracy", "oos_recall", "n")
    return {k: report[k] for k in keys if k in report}


def bench_intents(
    data: Path, name: str, results: dict[str, Any]
) -> tuple[Classifier, TfidfBaseline]:
    """Ours and the TF-IDF baseline on one intent set; returns both models."""
    train_rel, test_rel = INTENT_SETS[name]
    train, test = load_csv(data / train_rel), load_csv(data / test_rel)
    encoder = load_encoder()
    start = time.perf_counter()
    intent = train_intents(encoder, train, progress=True)
    ours_train = time.perf_counter() - start
    meta = intent.meta
    classifier = Classifier(encoder, intent, None)
    gold, texts = [e.label for e in test], [e.text for e in test]
    ours = classification_report(gold, predict_intents(classifier, texts))
    closed = Classifier(encoder, intent, None, out_of_scope=False)
    ours_closed = classification_report(gold, predict_intents(closed, texts))
    # int8 exists only in the ONNX serving graph (the torch path refuses it), whatever
    # DESKMATE_NLU_RUNTIME says for the fp32 rows.
    int8 = Classifier(encoder, intent, None, runtime="onnx", precision="int8")
    int8_closed = Classifier(encoder, intent, None, out_of_scope=False, runtime="onnx", precision="int8")
    ours_int8 = {"accuracy": classification_report(gold, predict_intents(int8, texts))["accuracy"],
                 "closed_set_accuracy": classification_report(
                     gold, predict_intents(int8_closed, texts))["accuracy"]}
    baseline = TfidfBaseline().fit(train)
    base = classification_report(gold, baseline.predict(texts))
    base_closed = classification_report(gold, baseline.predict(texts, out_of_scope=False))
    results[name] = {
        "train_examples": len(train),
        "labels": len({e.label for e in train}),
        "ours": {**_scores(ours), "train_s": round(ours_train, 1),
                 "oos_threshold": meta.oos_threshold,
                 "closed_set_accuracy": ours_closed["accuracy"]},
        "ours_int8": ours_int8,
        "tfidf_lr": {**_scores(base), "train_s": round(baseline.train_seconds, 1),
                     "closed_set_accuracy": base_closed["accuracy"]},
    }
    return classifier, baseline


def bench_bot_size(data: Path, results: dict[str, Any]) -> None:
    """Training time of a bot-sized project: 40 HWU64 intents x 15 examples."""
    rows = load_csv(data / INTENT_SETS["hwu64"][0])
    by_label: dict[str, list[Example]] = {}
    for e in rows:
        by_label.setdefault(e.label, []).append(e)
    rng = random.Random(0)
    labels = sorted(lab for lab, ex in by_label.items() if len(ex) >= 15)[:40]
    examples = [e for lab in labels for e in rng.sample(by_label[lab], 15)]
    start = time.perf_counter()
    train_intents(load_encoder(), examples, progress=True)
    results["bot40x15"] = {"examples": len(examples), "train_s": round(time.perf_counter() - start, 1)}


def bench_sentiment(data: Path, name: str, results: dict[str, Any]) -> None:
    """The default sentiment model and VADER on SST-2 validation / tweet_eval held-out."""
    if name == "sst2":
        tests = load_sentiment_csv(data / "sentiment/sst2/validation.csv")
        note = "SST-2 validation (binary: sign of P(pos) - P(neg))"
    else:
        rows = load_sentiment_csv(data / "sentiment/tweet_eval/sentiment_validation.csv")
        _, held = holdout_split([e.text for e in rows])
        tests = [rows[i] for i in held]
        note = "tweet_eval validation, held-out half (3 classes)"
    encoder = load_encoder()
    classifier = Classifier(encoder, None, load_sentiment(None, encoder=encoder))
    binary = {e.label for e in tests} <= {"negative", "positive"}
    gold, texts = [e.label for e in tests], [e.text for e in tests]
    ours = classification_report(gold, predict_sentiment(classifier, texts, binary))
    int8 = Classifier(encoder, None, load_sentiment(None, encoder=encoder), runtime="onnx",
                      precision="int8")
    ours_int8 = classification_report(gold, predict_sentiment(int8, texts, binary))
    vader = classification_report(gold, vader_predict(texts, binary))
    results[name] = {"set": note, "ours": _scores(ours), "ours_int8": _scores(ours_int8),
                     "vader": _scores(vader)}


def _percentiles(fn: Callable[[str], object], texts: list[str], warmup: int = 20) -> dict[str, float]:
    """p50/p95 wall time of ``fn(text)`` over ``texts``, in ms, after a warm-up."""
    for text in texts[:warmup]:
        fn(text)
    times = []
    for text in texts:
        start = time.perf_counter()
        fn(text)
        times.append((time.perf_counter() - start) * 1000)
    return {"p50_ms": round(float(np.percentile(times, 50)), 2),
            "p95_ms": round(float(np.percentile(times, 95)), 2)}


def _speed(classifier: Classifier, texts: list[str], sample: list[str]) -> dict[str, Any]:
    single = _percentiles(classifier.parse, sample)
    start = time.perf_counter()
    classifier.parse_batch(texts)
    throughput = len(texts) / (time.perf_counter() - start)
    return {**single, "batched_per_s": round(throughput, 1)}


def bench_latency(classifier: Classifier, texts: list[str], results: dict[str, Any],
                  baseline: TfidfBaseline | None, torch_path: Classifier | None = None,
                  int8: Classifier | None = None) -> None:
    """Single-utterance p50/p95 (intent + sentiment) and batched throughput; the same
    model on the torch path (``torch_path``) and with int8 weights (``int8``) side by
    side, when given."""
    sample = texts[:300]
    out: dict[str, Any] = {**_speed(classifier, texts, sample), "runtime": classifier.runtime,
                           "n_single": len(sample), "n_batched": len(texts)}
    if int8 is not None:
        out["int8"] = _speed(int8, texts, sample)
    if torch_path is not None:
        out["torch"] = _speed(torch_path, texts, sample)
    if baseline is not None:
        base = _percentiles(lambda t: baseline.predict([t]), sample)
        start = time.perf_counter()
        baseline.predict(texts)
        out["tfidf_lr"] = {**base, "batched_per_s": round(len(texts) / (time.perf_counter() - start), 1)}
    results["latency"] = out


_SERVING = """
import json, os, sys
from pathlib import Path
from model.bench_report import rss_mb
from model import artifacts
from model.classifier import Classifier
from model.encoder import load_encoder
from model.intents import IntentModel
from model.sentiment import load_sentiment
from model.runtime import ServedEncoder
imported = rss_mb()
# what load_project_classifier does: the ONNX path loads word pieces only, torch the encoder
enc = ServedEncoder() if sys.argv[2] == "onnx" else load_encoder()
folder = Path(sys.argv[1])
model, meta = artifacts.load(folder, enc)
clf = Classifier(enc, IntentModel(model, meta, artifacts.load_lexical(folder)),
                 load_sentiment(None, encoder=enc), runtime=sys.argv[2])
for _ in range(20):
    clf.parse("I still have not received my new card")
print(json.dumps({"rss_after_imports_mb": imported, "rss_serving_mb": rss_mb()}))
"""


def serving_memory(intent: IntentModel, runtime: str) -> dict[str, float]:
    """RSS of a fresh process that loads ``intent`` and the sentiment model from disk for
    ``runtime`` as the server does and parses a few turns (no training caches)."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "intent"
        artifacts.save(folder, intent.model, intent.meta, intent.lexical)
        env = {**os.environ, "HF_HUB_OFFLINE": "1",
               "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        out = subprocess.run([sys.executable, "-c", _SERVING, str(folder), runtime], env=env,
                             capture_output=True, text=True, check=True)
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def run_bench(data: Path, out: Path, *, json_out: Path | None = None,
              only: list[str] | None = None) -> dict[str, Any]:
    """Run the selected parts (all by default) and write the report section."""
    parts = only or ALL
    unknown = set(parts) - set(ALL)
    if unknown:
        from bot.errors import DeskmateError

        raise DeskmateError(f"bench nlu: unknown part(s) {sorted(unknown)}; choose from {ALL}")
    configure_threads()  # before machine(), which reports the thread count
    results: dict[str, Any] = {"machine": machine()}
    rss_start = rss_mb()
    encoder = load_encoder()
    sentiment = load_sentiment(None, encoder=encoder)
    results["memory"] = {"rss_before_load_mb": rss_start, "rss_encoder_sentiment_mb": rss_mb()}
    b77: tuple[Classifier, TfidfBaseline] | None = None
    for part in tqdm(parts, desc="bench nlu", unit="part"):
        tqdm.write(f"-- {part}")
        if part in INTENT_SETS:
            models = bench_intents(data, part, results)
            if part == "banking77":
                b77 = models
        elif part == "bot40x15":
            bench_bot_size(data, results)
        elif part in SENTIMENT_SETS:
            bench_sentiment(data, part, results)
        elif part == "latency":
            test = load_csv(data / INTENT_SETS["banking77"][1])
            if b77 is None:
                train = load_csv(data / INTENT_SETS["banking77"][0])
                b77 = Classifier(encoder, train_intents(encoder, train), None), TfidfBaseline().fit(train)
            full = Classifier(encoder, b77[0].intent, sentiment)
            reference = Classifier(encoder, b77[0].intent, sentiment, runtime="torch")
            int8 = Classifier(encoder, b77[0].intent, sentiment, runtime="onnx", precision="int8")
            bench_latency(full, [e.text for e in test], results, b77[1], reference, int8)
            assert b77[0].intent is not None
            results["memory"].update(serving_memory(b77[0].intent, full.runtime))
            if full.runtime != "torch":
                torch_rss = serving_memory(b77[0].intent, "torch")
                results["memory"]["torch_rss_serving_mb"] = torch_rss["rss_serving_mb"]
    if json_out is not None:
        json_out.write_text(json.dumps(results, indent=2) + "\n")
    write_section(out, results)
    return results
