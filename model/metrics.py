"""Classification metrics (numpy only) and the confusion-matrix plot.

Out-of-scope gold labels (``oos``, ``out_of_scope``, ``NO_NODES_DETECTED``) are
normalized to ``out_of_scope`` first, so a prediction of ``out_of_scope`` is
correct for them; ``in_scope_accuracy`` and ``oos_recall`` are added when the
gold labels contain any.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from bot.errors import DeskmateError
from model.data import OOS_LABELS, OUT_OF_SCOPE


def _norm(label: str) -> str:
    return OUT_OF_SCOPE if label in OOS_LABELS else label


def classification_report(gold: list[str], pred: list[str]) -> dict[str, Any]:
    """Accuracy, macro-F1 over gold labels, per-label P/R/F1 and the confusion matrix."""
    if len(gold) != len(pred) or not gold:
        raise ValueError("gold and pred must be non-empty and of the same length")
    gold = [_norm(g) for g in gold]
    pred = [_norm(p) for p in pred]
    labels = sorted(set(gold) | set(pred))
    pos = {lab: i for i, lab in enumerate(labels)}
    cm = np.zeros((len(labels), len(labels)), dtype=np.int64)  # rows gold, columns predicted
    for g, p in zip(gold, pred, strict=True):
        cm[pos[g], pos[p]] += 1
    tp = np.diag(cm).astype(float)
    predicted = cm.sum(0).astype(float)
    support = cm.sum(1).astype(float)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    gold_labels = sorted(set(gold))
    per_label = {
        lab: {
            "precision": round(float(precision[pos[lab]]), 4),
            "recall": round(float(recall[pos[lab]]), 4),
            "f1": round(float(f1[pos[lab]]), 4),
            "support": int(support[pos[lab]]),
        }
        for lab in gold_labels
    }
    report: dict[str, Any] = {
        "accuracy": round(float(tp.sum() / len(gold)), 4),
        # macro over the labels that occur in the test set (as scikit-learn does
        # when called with labels=gold labels)
        "macro_f1": round(float(np.mean([f1[pos[lab]] for lab in gold_labels])), 4),
        "n": len(gold),
        "per_label": per_label,
        "labels": labels,
        "confusion_matrix": cm.tolist(),
    }
    if OUT_OF_SCOPE in gold_labels:
        ins = [(g, p) for g, p in zip(gold, pred, strict=True) if g != OUT_OF_SCOPE]
        oos = [p for g, p in zip(gold, pred, strict=True) if g == OUT_OF_SCOPE]
        report["in_scope_accuracy"] = round(float(np.mean([g == p for g, p in ins])), 4) if ins else None
        report["oos_recall"] = round(float(np.mean([p == OUT_OF_SCOPE for p in oos])), 4)
    return report


def plot_confusion(report: dict[str, Any], path: Path, title: str = "") -> None:
    """Write the confusion matrix of a report as a PNG (row-normalized colours)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise DeskmateError("--plot needs matplotlib: pip install matplotlib") from None
    labels: list[str] = report["labels"]
    cm = np.asarray(report["confusion_matrix"], dtype=float)
    rows = cm.sum(1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    size = max(6.0, 0.18 * len(labels) + 3)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ticks = range(len(labels))
    fontsize = 8 if len(labels) <= 30 else 5
    ax.set_xticks(list(ticks), labels, rotation=90, fontsize=fontsize)
    ax.set_yticks(list(ticks), labels, fontsize=fontsize)
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    ax.set_title(title or f"accuracy {report['accuracy']:.3f}, macro-F1 {report['macro_f1']:.3f}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def summary_line(report: dict[str, Any]) -> str:
    """One human line: accuracy, macro-F1 and the OOS figures where present (in-scope
    accuracy is "–" when every test row is out of scope)."""
    parts = [f"accuracy {report['accuracy']:.4f}", f"macro-F1 {report['macro_f1']:.4f}"]
    if "oos_recall" in report:
        in_scope = report.get("in_scope_accuracy")
        parts.append(f"in-scope accuracy {'–' if in_scope is None else format(in_scope, '.4f')}")
        parts.append(f"OOS recall {report['oos_recall']:.4f}")
    return ", ".join(parts) + f" (n={report['n']})"
