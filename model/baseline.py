"""The TF-IDF + logistic-regression baseline (what Rasa's classic sklearn pipeline
does) and the VADER sentiment baseline, for ``deskmate bench nlu`` only."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from bot.errors import DeskmateError
from model.data import OUT_OF_SCOPE, Example
from model.intents import IntentConfig, _split, normalize_oos


class TfidfBaseline:
    """Word 1-2-gram + char 2-4-gram TF-IDF, logistic regression, the same OOS rule."""

    def __init__(self, config: IntentConfig | None = None) -> None:
        self.config = config or IntentConfig()
        self.threshold: float | None = None
        self.train_seconds = 0.0

    def _pipeline(self) -> Any:
        try:
            from sklearn.feature_extraction.text import TfidfVectorizer
            from sklearn.linear_model import LogisticRegression
            from sklearn.pipeline import make_pipeline, make_union
        except ImportError:
            raise DeskmateError("the benchmark needs scikit-learn: pip install scikit-learn") from None
        features = make_union(
            TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1),
            TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), sublinear_tf=True, min_df=2),
        )
        return make_pipeline(features, LogisticRegression(C=10.0, max_iter=2000))

    def fit(self, examples: list[Example]) -> TfidfBaseline:
        start = time.perf_counter()
        examples = normalize_oos(examples)
        if self.config.calibrate:
            train_idx, held_idx = _split(examples, self.config.holdout, self.config.seed)
            held = [examples[i] for i in held_idx if examples[i].label != OUT_OF_SCOPE]
            if held:
                part = self._pipeline().fit(
                    [examples[i].text for i in train_idx], [examples[i].label for i in train_idx]
                )
                probs = part.predict_proba([e.text for e in held])
                cols = [i for i, c in enumerate(part.classes_) if c != OUT_OF_SCOPE]
                top = probs[:, cols].max(1)
                self.threshold = float(np.quantile(top, self.config.oos_quantile))
        self.model = self._pipeline().fit([e.text for e in examples], [e.label for e in examples])
        self.train_seconds = time.perf_counter() - start
        return self

    def predict(self, texts: list[str], *, out_of_scope: bool = True) -> list[str]:
        """Labels; with ``out_of_scope=False`` the best real intent, no threshold."""
        probs = self.model.predict_proba(texts)
        classes = list(self.model.classes_)
        out = []
        for row in probs:
            if not out_of_scope:
                row = np.where(np.array(classes) == OUT_OF_SCOPE, -1.0, row)
            best = int(row.argmax())
            label = classes[best]
            if (out_of_scope and self.threshold is not None and label != OUT_OF_SCOPE
                    and row[best] < self.threshold):
                label = OUT_OF_SCOPE
            out.append(label)
        return out


def vader_predict(texts: list[str], binary: bool) -> list[str]:
    """VADER compound score: >= 0.05 positive, <= -0.05 negative, else neutral;
    for binary gold data, the sign (0 counts as positive)."""
    try:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    except ImportError:
        raise DeskmateError("the benchmark needs vaderSentiment: pip install vaderSentiment") from None
    analyzer = SentimentIntensityAnalyzer()
    out = []
    for text in texts:
        c = analyzer.polarity_scores(text)["compound"]
        if binary:
            out.append("positive" if c >= 0 else "negative")
        else:
            out.append("positive" if c >= 0.05 else "negative" if c <= -0.05 else "neutral")
    return out
