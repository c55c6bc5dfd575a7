"""Measure knowledge retrieval on paraphrased customer questions.

    .venv/bin/python scripts/eval_knowledge.py [--knowledge DIR] [--queries FILE] [--compare]

Embeds every entry of the knowledge folder with the shared encoder
(all-MiniLM-L6-v2), embeds each query of the query file (``query`` → the ``expect``
ids that answer it, ``[]`` for questions nothing answers) and prints:

* top-1 and top-3 accuracy over the answerable queries, and every top-1 miss;
* a threshold table: for each similarity threshold, how many queries would get an
  answer (top-1 score >= threshold), the precision of those answers (a top-1 that is
  not in ``expect``, or any answer to an unanswerable query, counts as wrong), the
  recall (correct answers / answerable queries) and the share of unanswerable
  queries that are correctly left unanswered;
* with ``--compare``, top-1 accuracy for other choices of what to embed (question
  only, answer only, several vectors per entry with max-pooling, ...), which is how
  :meth:`dialogue.knowledge.KnowledgeEntry.embedding_text` was chosen.

Last run (examples/shop/knowledge: 73 entries; tests/fixtures/knowledge_queries.yml:
63 answerable + 12 unanswerable queries; all-MiniLM-L6-v2 on CPU, torch 2.13.0, AMD
EPYC, 2 cores; the scores are deterministic, not timings):

    top-1 0.810, top-3 0.905 (heading + text). Title only 0.730, text only 0.698,
    page title path + text 0.778, max(title, text) 0.762.

    threshold  answered  precision  recall  no-match rejected
         0.45        50      0.860   0.683   11/12
         0.50        42      0.952   0.635   12/12
         0.55        35      0.971   0.540   12/12   <- examples/shop/config.yml
         0.60        22      1.000   0.349   12/12

The query set was written before the first measurement and is also the set the
embedding choice was made on; there is no held-out split, so treat differences of one
or two queries (1.6 points each) as noise.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dialogue.knowledge import KnowledgeEntry, KnowledgeIndex, load_knowledge  # noqa: E402

THRESHOLDS = [round(0.30 + 0.05 * i, 2) for i in range(10)]  # 0.30 .. 0.75


@dataclass(frozen=True)
class Query:
    text: str
    expect: frozenset[str]


def load_queries(path: Path) -> list[Query]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    return [Query(str(item["query"]), frozenset(str(x) for x in item.get("expect") or [])) for item in data]


def _heading(entry: KnowledgeEntry) -> str:
    return entry.title.rsplit(" › ", 1)[-1]


# What to embed per entry: one or more texts; an entry's score is the max over its texts.
STRATEGIES: dict[str, Callable[[KnowledgeEntry], list[str]]] = {
    "embedding_text() (chosen)": lambda e: [e.embedding_text()],
    "title only": lambda e: [e.title],
    "text only": lambda e: [e.text],
    "full title path + text": lambda e: [f"{e.title}\n{e.text}"],
    "heading + tags + text": lambda e: [f"{_heading(e)}\n{', '.join(e.tags)}\n{e.text}"],
    "max(title, text)": lambda e: [e.title, e.text],
    "max(heading, heading + text)": lambda e: [_heading(e), f"{_heading(e)}\n{e.text}"],
}


def entry_scores(entries: list[KnowledgeEntry], qvecs: np.ndarray, embed: Callable[[list[str]], np.ndarray],
                 texts_of: Callable[[KnowledgeEntry], list[str]]) -> np.ndarray:
    """(Q, N) similarity of each query to each entry, max-pooled over the entry's texts."""
    texts = [texts_of(e) for e in entries]
    flat = [t for ts in texts for t in ts]
    owner = np.array([i for i, ts in enumerate(texts) for _ in ts])
    sims = qvecs @ embed(flat).T  # (Q, M)
    scores = np.full((len(qvecs), len(entries)), -1.0, dtype=np.float32)
    for column, i in enumerate(owner):
        scores[:, i] = np.maximum(scores[:, i], sims[:, column])
    return scores


def accuracy(queries: list[Query], ids: list[str], scores: np.ndarray, k: int = 1) -> float:
    answerable = [i for i, q in enumerate(queries) if q.expect]
    top = np.argsort(-scores, axis=1)[:, :k]
    return sum(any(ids[j] in queries[i].expect for j in top[i]) for i in answerable) / len(answerable)


def threshold_table(queries: list[Query], top_ids: list[str], top_scores: list[float]) -> list[str]:
    answerable = sum(1 for q in queries if q.expect)
    unanswerable = len(queries) - answerable
    rows = [f"{'threshold':>9}  {'answered':>8}  {'precision':>9}  {'recall':>6}  {'no-match rejected':>17}"]
    for t in THRESHOLDS:
        answered = [i for i, s in enumerate(top_scores) if s >= t]
        correct = sum(1 for i in answered if top_ids[i] in queries[i].expect)
        rejected = sum(1 for i, q in enumerate(queries) if not q.expect and top_scores[i] < t)
        precision = correct / len(answered) if answered else float("nan")
        rows.append(f"{t:>9.2f}  {len(answered):>8}  {precision:>9.3f}  {correct / answerable:>6.3f}  "
                    f"{rejected:>10}/{unanswerable} ({rejected / unanswerable:.2f})")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--knowledge", type=Path, default=ROOT / "examples/shop/knowledge")
    parser.add_argument("--queries", type=Path, default=ROOT / "tests/fixtures/knowledge_queries.yml")
    parser.add_argument("--compare", action="store_true", help="also compare other choices of what to embed")
    args = parser.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from model.encoder import load_encoder

    encoder = load_encoder()
    entries = load_knowledge(args.knowledge)
    queries = load_queries(args.queries)
    unknown = sorted({i for q in queries for i in q.expect} - {e.id for e in entries})
    if unknown:
        sys.exit(f"{args.queries}: expected ids not in the knowledge base: {', '.join(unknown)}")
    answerable = sum(1 for q in queries if q.expect)
    print(f"{len(entries)} entries in {args.knowledge}; {len(queries)} queries "
          f"({answerable} answerable, {len(queries) - answerable} with no answer); encoder {encoder.name}")

    index = KnowledgeIndex(entries, encoder.embed([e.embedding_text() for e in entries]))
    qvecs = encoder.embed([q.text for q in queries])
    hits = [index.search(v, k=3) for v in qvecs]
    top_ids = [h[0].entry.id for h in hits]
    top_scores = [h[0].score for h in hits]
    top1 = sum(1 for i, q in enumerate(queries) if q.expect and top_ids[i] in q.expect) / answerable
    top3 = sum(1 for q, h in zip(queries, hits, strict=True)
               if q.expect and any(x.entry.id in q.expect for x in h)) / answerable
    print(f"\ntop-1 accuracy: {top1:.3f}   top-3 accuracy: {top3:.3f}")
    print("\ntop-1 misses:")
    for q, h in zip(queries, hits, strict=True):
        if q.expect and h[0].entry.id not in q.expect:
            expected = ", ".join(sorted(q.expect))
            print(f"  {h[0].score:.3f}  {q.text!r} -> {h[0].entry.id} (expected {expected})")
    print("\nunanswerable queries, best score:")
    for i, q in enumerate(queries):
        if not q.expect:
            print(f"  {top_scores[i]:.3f}  {q.text!r} -> {top_ids[i]}")
    print("\nthreshold table (answer = top-1 hit with score >= threshold):")
    print("\n".join(threshold_table(queries, top_ids, top_scores)))

    if args.compare:
        ids = [e.id for e in entries]
        print("\nwhat to embed (top-1 / top-3 accuracy):")
        for name, texts_of in STRATEGIES.items():
            scores = entry_scores(entries, qvecs, encoder.embed, texts_of)
            first, within3 = accuracy(queries, ids, scores), accuracy(queries, ids, scores, 3)
            print(f"  {name:<30} {first:.3f} / {within3:.3f}")


if __name__ == "__main__":
    main()
