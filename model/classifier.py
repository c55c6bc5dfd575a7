"""The turn classifier the server calls: intent (or ``out_of_scope``) and sentiment.

``load_project_classifier(project)`` loads the bot's trained intent model and the
default (or project) sentiment model over the one shared encoder, refusing
missing or stale artifacts with the command to run. ``parse`` / ``parse_batch``
are thread-safe: the tokenizer is guarded by a lock (the Rust tokenizer is not
re-entrant when padding is set) and inference holds no mutable state.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bot.errors import DeskmateError, ProjectError
from model import artifacts
from model.adapter import TaskModel
from model.artifacts import Meta
from model.data import OUT_OF_SCOPE, data_hash, load_project
from model.encoder import (
    MAX_SEQ_LENGTH,
    Batch,
    SharedEncoder,
    by_length,
    encoder_release,
    length_groups,
    load_encoder,
    mean_pool,
)
from model.intents import IntentModel
from model.lexical import blend
from model.runtime import (
    PRECISIONS,
    OnnxGraph,
    ServedEncoder,
    compile_graph,
    precision_name,
    runtime_name,
)
from model.sentiment import SENTIMENT_LABELS, load_sentiment, sentiment_result

RANKING_SIZE = 10
INTENT_DIR = "intent"  # <project>/models/intent/


def intent_dir(project: Path) -> Path:
    """Where ``deskmate train`` writes the intent artifact of a project."""
    return project / "models" / INTENT_DIR


@dataclass
class _Sentiment:
    model: TaskModel
    meta: Meta


class Classifier:
    """Intent and sentiment over one shared encoder; either part may be absent."""

    def __init__(
        self,
        encoder: SharedEncoder,
        intent: IntentModel | None,
        sentiment: tuple[TaskModel, Meta] | None,
        *,
        out_of_scope: bool = True,
        runtime: str | None = None,
        precision: str | None = None,
        batches_at_once: int = 1,
    ) -> None:
        """``batches_at_once``: how many callers run batches at the same time (the server's
        ``DESKMATE_NLU_BATCHES``); the serving graph's threads are the cores shared among
        them, so that batches running together do not each wait on threads descheduled
        by the others (docs/benchmarks.md, "The classifier's batches")."""
        self.encoder = encoder
        # False: closed-set answers (best real intent, no threshold), for benchmarks
        # whose test sets have no out-of-scope turns.
        self.out_of_scope = out_of_scope
        self.intent = intent
        self.sentiment = _Sentiment(*sentiment) if sentiment else None
        self._tokenize_lock = threading.Lock()
        tasks: list[IntentModel | _Sentiment] = [
            t for t in (self.intent, self.sentiment) if t is not None
        ]
        # The trunk is shared: computed up to the lowest layer any task adapts.
        self.stop_layer = min((t.model.start_layer for t in tasks), default=encoder.num_layers)
        self.max_length = max((t.meta.max_length for t in tasks), default=64)
        # Serving runs one ONNX Runtime graph (model/runtime.py); "torch" keeps the layers
        # in torch. Both give the same outputs to float rounding.
        self.runtime = runtime or runtime_name()
        self.graph: OnnxGraph | None = None
        self.precision = "fp32"
        if precision is not None and precision not in PRECISIONS:
            raise DeskmateError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
        if self.runtime == "torch":
            # The torch path has fp32 weights only: int8 asked for there would be answered,
            # and benchmarked, in fp32 under the int8 name. An explicit runtime="torch" (a
            # reference run) ignores DESKMATE_NLU_PRECISION, which is about the serving graph.
            from_env = precision is None and runtime is None and precision_name() == "int8"
            if precision == "int8" or from_env:
                asked = "DESKMATE_NLU_PRECISION=int8" if from_env else "precision int8"
                raise DeskmateError(f"{asked} needs the ONNX runtime: the torch path "
                                    "(DESKMATE_NLU_RUNTIME=torch) has fp32 weights only")
        if self.runtime == "onnx":
            self.precision = precision or precision_name()
            self.graph = compile_graph(
                encoder,
                self.intent.model if self.intent else None,
                self.sentiment.model if self.sentiment else None,
                precision=self.precision,
                threads=max(1, torch.get_num_threads() // max(1, batches_at_once)),
            )

    @property
    def embedding_id(self) -> str:
        """Names what :meth:`embed` computes with: the encoder, its release and the weights'
        precision (torch and the fp32 serving graph agree to 1e-5, so both are ``fp32``).
        int8 vectors differ from fp32 ones by up to 0.01 in cosine: vectors stored under
        another id must not be compared with this one's (``bot.brain.EmbeddingCache``)."""
        return f"{self.encoder.name} {encoder_release()} {self.precision}"

    @property
    def intent_labels(self) -> list[str]:
        return list(self.intent.meta.labels) if self.intent else []

    def parse(self, text: str) -> dict[str, Any]:
        """``{"intent", "confidence", "ranking", "sentiment", "sentiment_score"}`` for one text."""
        return self.parse_batch([text])[0]

    def embed(self, texts: list[str]) -> np.ndarray:
        """:meth:`SharedEncoder.embed` (full length, as the knowledge index is built), safe to
        call while another thread parses: the Rust tokenizer is shared and not re-entrant, so
        the call holds the tokenizer lock (a few milliseconds for a handful of texts)."""
        texts = [_well_formed(t) for t in texts]
        if self.graph is None:
            with self._tokenize_lock:
                return self.encoder.embed(texts)
        graph = self.graph

        def encode(chunk: list[str]) -> np.ndarray:
            with self._tokenize_lock:
                batch = self.encoder.tokenize(chunk)
            return graph.run(batch.input_ids, batch.attention_mask, ["embedding"])["embedding"]

        return by_length(texts, encode, self.encoder.hidden_size)

    @torch.inference_mode()
    def parse_batch(self, texts: list[str], batch_size: int = 64, *,
                    vectors: bool = False) -> list[dict[str, Any]]:
        """:meth:`parse` for many texts, batched by length; same order as ``texts``.

        The texts are cut into batches of similar length (:func:`length_groups`): a text
        of a batch costs as much as its longest one, and the turns that arrive together
        at a busy server mix greetings with long messages.

        ``vectors``: also return each text's plain sentence embedding (what :meth:`embed`
        gives, for knowledge retrieval) under ``"vector"``. A text that fits the heads'
        ``max_length`` gets it from the same forward pass, so the shared layers run once; a
        longer one, which the heads see cut, from :meth:`embed` at the encoder's full
        length, as the knowledge entries it is compared with were embedded.

        Text that is not valid Unicode (a lone surrogate, from undecodable bytes) has the
        bad code points replaced, so that it cannot fail the texts batched with it."""
        results: list[dict[str, Any]] = [{} for _ in texts]
        if not texts:
            return results
        texts = [_well_formed(t) for t in texts]
        with self._tokenize_lock:
            tokens = self.encoder.tokenize(texts, self.max_length)  # padded on the right
        lengths = tokens.attention_mask.sum(1).tolist()
        # A text as long as the cut may have been cut (the tokenizer does not say): its
        # vector is recomputed at full length. Messages that long are rare in chat.
        cut = min(self.max_length, MAX_SEQ_LENGTH)
        long = [i for i, n in enumerate(lengths) if n >= cut] if vectors else []
        long_vectors = self.embed([texts[i] for i in long]) if long else None
        for idx in length_groups(lengths, batch_size):
            rows, width = torch.tensor(idx), max(lengths[i] for i in idx)
            batch = Batch(tokens.input_ids[rows, :width].contiguous(),
                          tokens.attention_mask[rows, :width].contiguous())
            intent_logits, sent_logits, embedded = self._forward(batch, vectors)
            intent_probs = sent_probs = None
            if self.intent is not None:
                assert intent_logits is not None
                lexical = None
                if self.intent.lexical is not None:
                    lexical = self.intent.lexical([texts[i] for i in idx])
                intent_probs = blend(intent_logits, lexical, self.intent.lexical_weight)
            if sent_logits is not None:
                sent_probs = sent_logits.softmax(-1)
            for row, i in enumerate(idx):
                out: dict[str, Any] = {}
                if intent_probs is not None:
                    out.update(self._intent_result(intent_probs[row]))
                else:
                    out.update({"intent": None, "confidence": None, "ranking": []})
                if sent_probs is not None:
                    assert self.sentiment is not None
                    out.update(sentiment_result(sent_probs[row], self.sentiment.meta.labels))
                else:
                    out.update({"sentiment": None, "sentiment_score": None})
                if embedded is not None:
                    out["vector"] = embedded[row]
                results[i] = out
        if long_vectors is not None:
            for i, vector in zip(long, long_vectors, strict=True):
                results[i]["vector"] = vector
        return results

    def _forward(self, batch: Batch, vectors: bool
                 ) -> tuple[torch.Tensor | None, torch.Tensor | None, np.ndarray | None]:
        """Intent logits, sentiment logits and (when ``vectors``) embeddings of a batch."""
        if self.graph is not None:
            out = self.graph.run(batch.input_ids, batch.attention_mask)
            intent = out.get("intent_logits")
            sentiment = out.get("sentiment_logits")
            return (torch.from_numpy(intent) if intent is not None else None,
                    torch.from_numpy(sentiment) if sentiment is not None else None,
                    out["embedding"] if vectors else None)
        trunk = self.encoder.trunk(batch, self.stop_layer)  # (B, T, C)
        intent_logits = sent_logits = None
        if self.intent is not None:
            intent_logits = self.intent.model(trunk, batch.attention_mask, self.stop_layer)
        if self.sentiment is not None:
            sent_logits = self.sentiment.model(trunk, batch.attention_mask, self.stop_layer)
        embedded = None
        if vectors:
            hidden = self.encoder.top(trunk, batch.attention_mask, self.stop_layer)  # (B, T, C)
            embedded = F.normalize(mean_pool(hidden, batch.attention_mask), dim=-1).numpy()
        return intent_logits, sent_logits, embedded

    def _intent_result(self, probs: torch.Tensor) -> dict[str, Any]:
        """Top intent with the out-of-scope rule applied, and the ranking."""
        assert self.intent is not None
        labels = self.intent.meta.labels
        values, indices = probs.sort(descending=True)
        ranking = [
            {"intent": labels[j], "confidence": round(float(p), 4)}
            for p, j in zip(values[:RANKING_SIZE].tolist(), indices[:RANKING_SIZE].tolist(), strict=True)
        ]
        if not self.out_of_scope:
            best = next(int(j) for j in indices.tolist() if labels[j] != OUT_OF_SCOPE)
            return {"intent": labels[best], "confidence": round(float(probs[best]), 4),
                    "ranking": ranking}
        top, confidence = labels[int(indices[0])], float(values[0])
        threshold = self.intent.meta.oos_threshold
        if top != OUT_OF_SCOPE and threshold is not None and confidence < threshold:
            # Nothing fits well enough: the dialogue falls back instead of misrouting.
            top, confidence = OUT_OF_SCOPE, 1.0 - confidence
        return {"intent": top, "confidence": round(confidence, 4), "ranking": ranking}


def _well_formed(text: str) -> str:
    """``text`` with lone surrogates replaced by ``?``: Python lets them into a ``str`` (a
    command-line argument's undecodable bytes, a JSON ``"\\ud800"`` escape), the tokenizers
    refuse them and would fail the whole batch."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")
    return text


def _serving_encoder() -> SharedEncoder:
    """What a classifier loaded for serving needs: with the ONNX runtime only the word
    pieces (the layers are in the graph), else the torch encoder."""
    return ServedEncoder() if runtime_name() == "onnx" else load_encoder()


def check_fresh(project: Path) -> Meta:
    """The intent artifact's metadata, or a ProjectError that says what to run."""
    folder = artifacts.current(intent_dir(project))
    fix = f"run: deskmate train --project {project}"
    if not (folder / artifacts.META).is_file():
        raise ProjectError(str(folder), f"no trained intent model; {fix}")
    meta = artifacts.read_meta(folder)
    examples, files = load_project(project)
    if data_hash(examples) != meta.data_hash:
        newer = [str(p) for p in files if p.stat().st_mtime > meta.trained_at]
        detail = f" ({', '.join(newer)} changed)" if newer else ""
        raise ProjectError(
            str(folder), f"the intent model is older than the training data{detail}; {fix}"
        )
    return meta


def load_project_classifier(
    project: str | Path, *, encoder: SharedEncoder | None = None, batches_at_once: int = 1
) -> Classifier:
    """The classifier of a bot project, for the server to load at start-up.

    Raises :class:`bot.errors.ProjectError` naming ``deskmate train --project DIR``
    when the intent model is missing or older than ``<project>/data``. Sentiment
    comes from ``<project>/models/sentiment`` if present, else the shipped default.
    ``batches_at_once``: see :class:`Classifier`.
    """
    project = Path(project)
    encoder = encoder or _serving_encoder()
    check_fresh(project)
    folder = artifacts.current(intent_dir(project))
    model, meta = artifacts.load(folder, encoder)
    intent = IntentModel(model, meta, artifacts.load_lexical(folder))
    return Classifier(encoder, intent, load_sentiment(project, encoder=encoder),
                      batches_at_once=batches_at_once)


def load_sentiment_only(encoder: SharedEncoder | None = None) -> Classifier:
    """A classifier with the default sentiment model and no intents."""
    encoder = encoder or _serving_encoder()
    return Classifier(encoder, None, load_sentiment(None, encoder=encoder))


__all__ = [
    "Classifier",
    "SENTIMENT_LABELS",
    "check_fresh",
    "intent_dir",
    "load_project_classifier",
    "load_sentiment_only",
]
