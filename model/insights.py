"""Groups the questions the bot could not answer into topics, with the shared encoder.

Each distinct question is embedded with all-MiniLM-L6-v2 (unit vectors) and the
questions are clustered agglomeratively with *average* linkage on cosine distance,
cut at a distance threshold rather than a number of clusters:

* the number of topics is not known in advance (a quiet week has two, a launch week
  twenty), so k-means' fixed k does not fit; a threshold does;
* average linkage merges two groups when their questions are, on average, similar
  enough. Single linkage chains unrelated questions through one in-between question
  ("weather in Rome" - "flight to Rome" - "flights to Paris"); complete linkage splits
  a topic as soon as one pair in it is worded very differently;
* ``DISTANCE = 0.65`` (average cosine similarity at least 0.35): with this encoder,
  rewordings of one question score about 0.5-0.8, questions on the same topic
  ("will it rain in London", "weather forecast for Berlin") 0.3-0.55, and unrelated
  short questions mostly below 0.25 (measured on the demo shop's out-of-scope
  examples; see docs/insights.md). At 0.7 "pizza near me" joins "concert tickets".

The cost is quadratic in the number of distinct questions (the pairwise distances),
so at most ``MAX_QUESTIONS`` of the most frequently asked are clustered; the report
says how many were left out.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

DISTANCE = 0.65  # cosine distance at which average-linkage merging stops (see above)
MAX_QUESTIONS = 3000  # distinct questions clustered: 3000^2/2 distances, ~36 MB
EXAMPLES = 3

Embed = Callable[[list[str]], np.ndarray]  # texts -> (N, D) unit vectors


@dataclass(frozen=True)
class QuestionCluster:
    size: int  # customer turns in the cluster (a question asked twice counts twice)
    distinct: int  # distinct questions in it
    examples: list[str]  # the most typical questions: closest to the cluster's centre first


@dataclass(frozen=True)
class Clustering:
    clusters: list[QuestionCluster]  # largest first
    clustered: int  # distinct questions clustered
    left_out: int  # distinct questions over MAX_QUESTIONS, not clustered


def cluster_vectors(vectors: np.ndarray, *, distance: float = DISTANCE) -> np.ndarray:
    """A cluster label for each row of ``vectors`` (N, D), unit-normalized."""
    n = len(vectors)
    if n < 2:
        return np.zeros(n, dtype=np.int64)
    from sklearn.cluster import AgglomerativeClustering

    model = AgglomerativeClustering(n_clusters=None, distance_threshold=distance, metric="cosine",
                                    linkage="average")
    labels: np.ndarray = model.fit_predict(vectors)
    return labels


def cluster_questions(questions: Sequence[tuple[str, int]], vectors: np.ndarray, *,
                      distance: float = DISTANCE, examples: int = EXAMPLES) -> list[QuestionCluster]:
    """Clusters of ``questions`` ((text, times asked), one row of ``vectors`` each), largest first.

    A cluster's examples are its distinct questions closest to its centre (the mean of
    its vectors weighted by how often each was asked): the most typical wordings."""
    labels = cluster_vectors(vectors, distance=distance)
    weights = np.array([n for _, n in questions], dtype=np.float32)  # (N,)
    out = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        centre = (vectors[members] * weights[members, None]).sum(0)  # (D,)
        typical = members[np.argsort(-(vectors[members] @ centre), kind="stable")]
        out.append(QuestionCluster(size=int(weights[members].sum()), distinct=len(members),
                                   examples=[questions[i][0] for i in typical[:examples]]))
    out.sort(key=lambda c: (-c.size, -c.distinct, c.examples[0]))
    return out


def top_unanswered(questions: Sequence[tuple[str, int]], *, embed: Embed | None = None,
                   distance: float = DISTANCE, examples: int = EXAMPLES,
                   limit: int = MAX_QUESTIONS) -> Clustering:
    """Embed and cluster ``questions`` (most frequent first) with the shared encoder.

    Blocking (torch): call it off the event loop."""
    kept = list(questions[:limit])
    if not kept:
        return Clustering([], 0, len(questions))
    if embed is None:
        from model.encoder import load_encoder

        embed = load_encoder().embed
    vectors = np.asarray(embed([text for text, _ in kept]), dtype=np.float32)  # (N, 384)
    return Clustering(cluster_questions(kept, vectors, distance=distance, examples=examples),
                      len(kept), len(questions) - len(kept))
