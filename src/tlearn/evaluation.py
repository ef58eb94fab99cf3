"""Evaluation: accuracy, balanced accuracy, F1, top-k, log loss, calibration, per-class
precision/recall/F1, the confusion matrix, the most confused pairs and the most confidently
wrong images, as a :class:`Report` to print, save as JSON/PNG/HTML, or inspect in Python."""

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

from tlearn.data.loader import check_images
from tlearn.exceptions import DataError, UnknownClassError
from tlearn.models import python_value as _py
from tlearn.models import split_model

__all__ = ["Report", "evaluate"]


@dataclass
class Report:
    """The result of :func:`evaluate`.

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
    images: Any = field(default=None, repr=False)

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
            "failed": self.failed,
            "unknown_labels": self.unknown,
        }

    def to_html(self, title: str = "tlearn evaluation report") -> str:
        """One self-contained HTML page (plots and thumbnails embedded), readable offline."""
        from tlearn.report import render_html

        return render_html(self, title)

    def save(
        self, folder: str | os.PathLike[str], title: str = "tlearn evaluation report"
    ) -> dict[str, str]:
        """Write metrics.json, confusion.png, reliability.png, curves.png (when there is a
        training history) and report.html into ``folder``; returns their paths."""
        from tlearn.report import save_report

        return save_report(self, folder, title)

    def to_json(self, path: str | os.PathLike[str] | None = None, indent: int = 2) -> str:
        text = json.dumps(self.to_dict(), indent=indent)
        if path is not None:
            with open(path, "w", encoding="utf-8") as f:
                f.write(text + "\n")
        return text

    def __rich__(self) -> Any:
        from rich.table import Table

        table = Table(
            title=f"accuracy {self.accuracy:.4f}, loss {self.log_loss:.4f}, on "
            f"{self.n_images} images"
        )
        for col in ("class", "precision", "recall", "f1", "support"):
            table.add_column(col, justify="left" if col == "class" else "right")
        for row in self.per_class:
            table.add_row(
                str(row["class"]),
                f"{row['precision']:.3f}",
                f"{row['recall']:.3f}",
                f"{row['f1']:.3f}",
                str(row["support"]),
            )
        return table


def evaluate(model: Any, X: object, y: object, *, unknown: str = "raise") -> Report:
    """Evaluate a fitted classifier on images ``X`` with true labels ``y``.

    Images that cannot be read are listed in ``Report.failed`` (when the model's
    ``on_error`` is ``"skip"``) and left out of the metrics. Labels the model has never seen
    raise :class:`UnknownClassError` unless ``unknown="skip"``, which evaluates the rest and
    lists them in ``Report.unknown``.
    """
    if unknown not in ("raise", "skip"):
        raise ValueError(f"unknown must be 'raise' or 'skip', got {unknown!r}")
    parts = split_model(model)
    y_arr = np.asarray(y)
    paths = check_images(X)
    if len(y_arr) != len(paths):
        raise DataError(f"X has {len(paths)} images but y has {len(y_arr)} labels")
    known = np.isin(y_arr, parts.classes)
    unknown_rows = []
    if not known.all():
        unknown_labels = sorted({str(v) for v in y_arr[~known]})
        if unknown == "raise":
            raise UnknownClassError(
                f"{int((~known).sum())} images have labels the model was not trained on: "
                f"{unknown_labels[:10]}; the model knows {[_py(c) for c in parts.classes][:20]}. "
                "Evaluate the known classes only with unknown='skip' (CLI: "
                "--skip-unknown-classes)"
            )
        for i in np.flatnonzero(~known).tolist():
            name = f"X[{i}]" if isinstance(paths, np.ndarray) else str(paths[i])
            unknown_rows.append({"path": name, "label": _py(y_arr[i])})
        keep = np.flatnonzero(known)
        paths = paths[keep] if isinstance(paths, np.ndarray) else [paths[i] for i in keep.tolist()]
        y_arr = y_arr[keep]
    proba = np.full((len(y_arr), len(parts.classes)), np.nan, dtype=np.float64)
    failed: list[dict[str, str]] = []
    for idx, feats, errors in parts.features.iter_features(paths):
        if len(idx):
            proba[idx] = parts.predict_proba(feats)
        failed.extend({"path": p, "reason": r} for _, p, r in errors)
    ok = ~np.isnan(proba[:, 0])
    if not ok.any():
        raise DataError("no image could be evaluated: every image failed to load")
    names = np.array(
        [f"X[{i}]" for i in range(len(y_arr))] if isinstance(paths, np.ndarray) else list(paths),
        dtype=object,
    )
    report = _metrics(parts.classes, y_arr[ok], proba[ok], names[ok])
    report.failed, report.unknown = failed, unknown_rows
    report.history = list(getattr(model, "history_", []) or [])
    report.images = paths[ok] if isinstance(paths, np.ndarray) else None
    return report


def _metrics(
    labels: np.ndarray,
    y_true: np.ndarray,
    proba: np.ndarray,
    names: np.ndarray,
    n_bins: int = 15,
    n_mistakes: int = 24,
) -> Report:
    proba = proba / proba.sum(1, keepdims=True)  # float32 heads sum to 1 only to ~1e-7
    true_idx = np.searchsorted(labels, y_true)  # labels are sorted (np.unique)
    pred_idx = proba.argmax(axis=1)
    y_pred = labels[pred_idx]
    prec, rec, f1, sup = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    per_class = [
        {
            "class": _py(c),
            "precision": float(p),
            "recall": float(r),
            "f1": float(f),
            "support": int(s),
        }
        for c, p, r, f, s in zip(labels, prec, rec, f1, sup, strict=True)
    ]
    cm = confusion_matrix(y_true, y_pred, labels=labels)
    k = min(5, len(labels) - 1) if len(labels) > 2 else 1
    topk = np.argsort(-proba, axis=1)[:, :k]
    conf = proba.max(axis=1)
    correct = pred_idx == true_idx
    bins, ece = [], 0.0
    edges = np.linspace(0, 1, n_bins + 1)
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            acc, c = float(correct[m].mean()), float(conf[m].mean())
            ece += m.mean() * abs(acc - c)
            bins.append(
                {
                    "low": float(lo),
                    "high": float(hi),
                    "confidence": c,
                    "accuracy": acc,
                    "count": int(m.sum()),
                }
            )
    off = cm.copy()
    np.fill_diagonal(off, 0)
    pairs = [
        {"true": _py(labels[i]), "predicted": _py(labels[j]), "count": int(off[i, j])}
        for i, j in zip(*np.unravel_index(np.argsort(-off, axis=None)[:10], off.shape), strict=True)
        if off[i, j] > 0
    ]
    wrong = np.flatnonzero(~correct)
    wrong = wrong[np.argsort(-conf[wrong])][:n_mistakes]
    mistakes = [
        {
            "path": str(names[i]),
            "index": int(i),
            "true": _py(y_true[i]),
            "predicted": _py(y_pred[i]),
            "probability": float(conf[i]),
        }
        for i in wrong
    ]
    return Report(
        accuracy=float(accuracy_score(y_true, y_pred)),
        log_loss=float(log_loss(y_true, proba, labels=labels)),
        classes=[_py(c) for c in labels],
        per_class=per_class,
        confusion_matrix=cm.tolist(),
        n_images=len(y_true),
        balanced_accuracy=float(balanced_accuracy_score(y_true, y_pred)),
        macro_f1=float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        weighted_f1=float(
            f1_score(y_true, y_pred, labels=labels, average="weighted", zero_division=0)
        ),
        top_k=k,
        top_k_accuracy=float((topk == true_idx[:, None]).any(axis=1).mean()),
        expected_calibration_error=float(ece),
        reliability=bins,
        confused_pairs=pairs,
        confident_mistakes=mistakes,
    )
