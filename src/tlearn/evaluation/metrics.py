"""Evaluation metrics as pure data: accuracy, balanced accuracy, F1, top-k, log loss,
calibration, per-class precision/recall/F1, the confusion matrix, the most confused pairs
and the most confidently wrong images."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    log_loss,
    precision_recall_fscore_support,
)

from tlearn._io import python_value as _py
from tlearn.calibration import ece_of, reliability

__all__ = ["Metrics", "compute_metrics"]


@dataclass
class Metrics:
    """What :func:`compute_metrics` finds; :class:`tlearn.evaluation.Report` adds the
    plots and the HTML page.

    Attributes
    ----------
    accuracy : float
    log_loss : float
        Mean cross-entropy of the predicted probabilities (the "test loss").
    classes : list
    per_class : list of dict
        ``class``, ``precision``, ``recall``, ``f1``, ``support`` for each class.
    confusion_matrix : list of list of int
        Rows are true classes, columns predicted, in ``classes`` order.
    n_images : int
        Images evaluated (after leaving out failures and unknown classes).
    failed : list of dict
        ``path`` and ``reason`` of every image that could not be read.
    unknown : list of dict
        Images whose label the model does not know (left out only when asked).
    """

    accuracy: float
    log_loss: float
    classes: list[Any]
    per_class: list[dict[str, Any]]
    confusion_matrix: list[list[int]]
    n_images: int
    failed: list[dict[str, str]] = field(default_factory=list)
    unknown: list[dict[str, Any]] = field(default_factory=list)
    balanced_accuracy: float = float("nan")
    macro_f1: float = float("nan")
    weighted_f1: float = float("nan")
    top_k: int = 1
    top_k_accuracy: float = float("nan")
    expected_calibration_error: float = float("nan")
    reliability: list[dict[str, float]] = field(default_factory=list)
    confused_pairs: list[dict[str, Any]] = field(default_factory=list)
    confident_mistakes: list[dict[str, Any]] = field(default_factory=list)
    history: list[dict[str, float]] = field(default_factory=list)
    calibration: dict[str, float] = field(default_factory=dict)
    evaluation: dict[str, Any] = field(default_factory=dict)
    images: Any = field(default=None, repr=False)

    @property
    def imbalanced(self) -> bool:
        """The smallest class has under a fifth of the largest's images: then balanced
        accuracy and per-class recall say more than accuracy, and come first."""
        support = [r["support"] for r in self.per_class if r["support"]]
        return bool(support) and min(support) < 0.2 * max(support)

    def headline(self, which: str = "") -> str:
        """The figures a run is judged by, on one line (``which``: "test", "held-out");
        balanced accuracy first when the classes are imbalanced."""
        w = f"{which} " if which else ""
        line = f"{w}loss: {self.log_loss:.4f}  {w}accuracy: {self.accuracy:.4f}"
        if self.imbalanced:
            line = f"{w}balanced accuracy: {self.balanced_accuracy:.4f}  " + line
        return line

    def to_dict(self) -> dict[str, Any]:
        return {
            "accuracy": self.accuracy,
            "balanced_accuracy": self.balanced_accuracy,
            "macro_f1": self.macro_f1,
            "weighted_f1": self.weighted_f1,
            f"top_{self.top_k}_accuracy": self.top_k_accuracy,
            "log_loss": self.log_loss,
            "expected_calibration_error": self.expected_calibration_error,
            "n_images": self.n_images,
            "n_failed": len(self.failed),
            "classes": self.classes,
            "per_class": self.per_class,
            "confusion_matrix": self.confusion_matrix,
            "confused_pairs": self.confused_pairs,
            "confident_mistakes": self.confident_mistakes,
            "reliability": self.reliability,
            "calibration": self.calibration,
            "evaluation": self.evaluation,
            "failed": self.failed,
            "unknown_labels": self.unknown,
        }

    def to_json(self, path: str | os.PathLike[str] | None = None, indent: int = 2) -> str:
        return json_text(self.to_dict(), path, indent)

    def __rich__(self) -> Any:
        from rich.table import Table

        # imbalanced classes: balanced accuracy first, per-class recall first, the smallest
        # classes on top (where a model that favours the big ones fails)
        title = f"accuracy {self.accuracy:.4f}, loss {self.log_loss:.4f}"
        if self.imbalanced:
            title = f"balanced accuracy {self.balanced_accuracy:.4f}, {title}"
        table = Table(title=f"{title}, on {self.n_images} images")
        cols = ["recall", "precision"] if self.imbalanced else ["precision", "recall"]
        for col in ("class", *cols, "f1", "support"):
            table.add_column(col, justify="left" if col == "class" else "right")
        rows = (
            sorted(self.per_class, key=lambda r: r["support"])
            if self.imbalanced
            else self.per_class
        )
        for row in rows:
            table.add_row(str(row["class"]), *(f"{row[c]:.3f}" for c in cols),
                          f"{row['f1']:.3f}", str(row["support"]))  # fmt: skip
        return table


def json_text(data: dict[str, Any], path: str | os.PathLike[str] | None, indent: int) -> str:
    """A report's figures as JSON text, written to ``path`` too when given."""
    text = json.dumps(data, indent=indent)
    if path is not None:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    return text


def compute_metrics(
    labels: np.ndarray,
    y_true: np.ndarray,
    proba: np.ndarray,
    names: np.ndarray,
    n_bins: int = 15,
    n_mistakes: int = 24,
) -> Metrics:
    proba = proba / proba.sum(1, keepdims=True)  # float32 heads sum to 1 only to ~1e-7
    true_idx = np.searchsorted(labels, y_true)  # labels are sorted (np.unique)
    pred_idx = proba.argmax(axis=1)
    y_pred = labels[pred_idx]
    cm = confusion_matrix(y_true, y_pred, labels=labels)
    k = min(5, len(labels) - 1) if len(labels) > 2 else 1
    topk = np.argsort(-proba, axis=1)[:, :k]
    conf = proba.max(axis=1)
    correct = pred_idx == true_idx
    bins = reliability(conf, correct, n_bins)
    wrong = np.flatnonzero(~correct)
    wrong = wrong[np.argsort(-conf[wrong])][:n_mistakes]
    mistakes = [
        {"path": str(names[i]), "index": int(i), "true": _py(y_true[i]),
         "predicted": _py(y_pred[i]), "probability": float(conf[i])}
        for i in wrong
    ]  # fmt: skip
    return Metrics(
        accuracy=float(accuracy_score(y_true, y_pred)),
        log_loss=float(log_loss(y_true, proba, labels=labels)),
        classes=[_py(c) for c in labels],
        per_class=_per_class(labels, y_true, y_pred),
        confusion_matrix=cm.tolist(),
        n_images=len(y_true),
        balanced_accuracy=float(balanced_accuracy_score(y_true, y_pred)),
        macro_f1=float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        weighted_f1=float(
            f1_score(y_true, y_pred, labels=labels, average="weighted", zero_division=0)
        ),
        top_k=k,
        top_k_accuracy=float((topk == true_idx[:, None]).any(axis=1).mean()),
        expected_calibration_error=ece_of(bins),
        reliability=bins,
        confused_pairs=_confused_pairs(labels, cm),
        confident_mistakes=mistakes,
    )


def _per_class(labels: np.ndarray, y_true: np.ndarray, y_pred: np.ndarray) -> list[dict]:
    prec, rec, f1, sup = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    return [
        {"class": _py(c), "precision": float(p), "recall": float(r), "f1": float(f),
         "support": int(s)}
        for c, p, r, f, s in zip(labels, prec, rec, f1, sup, strict=True)
    ]  # fmt: skip


def _confused_pairs(labels: np.ndarray, cm: np.ndarray, n: int = 10) -> list[dict]:
    """The ``n`` most frequent (true, predicted) confusions."""
    off = cm.copy()
    np.fill_diagonal(off, 0)
    order = np.unravel_index(np.argsort(-off, axis=None)[:n], off.shape)
    return [
        {"true": _py(labels[i]), "predicted": _py(labels[j]), "count": int(off[i, j])}
        for i, j in zip(*order, strict=True)
        if off[i, j] > 0
    ]
