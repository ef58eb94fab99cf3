"""Evaluation: accuracy, per-class precision/recall/F1 and the confusion matrix, as a
:class:`Report` you can print, save as JSON, or inspect in Python."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
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

    def to_dict(self) -> dict[str, Any]:
        return {
            "accuracy": self.accuracy,
            "log_loss": self.log_loss,
            "n_images": self.n_images,
            "classes": self.classes,
            "per_class": self.per_class,
            "confusion_matrix": self.confusion_matrix,
            "failed": self.failed,
            "unknown_labels": self.unknown,
        }

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
    pred_idx = proba.argmax(axis=1)
    if not ok.any():
        raise DataError("no image could be evaluated: every image failed to load")
    y_true, y_pred = y_arr[ok], parts.classes[pred_idx[ok]]
    labels = parts.classes
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
    return Report(
        accuracy=float(accuracy_score(y_true, y_pred)),
        # float32 heads sum to 1 only to ~1e-7; renormalise in float64 for log_loss's check
        log_loss=float(
            log_loss(y_true, proba[ok] / proba[ok].sum(1, keepdims=True), labels=labels)
        ),
        classes=[_py(c) for c in labels],
        per_class=per_class,
        confusion_matrix=confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        n_images=int(ok.sum()),
        failed=failed,
        unknown=unknown_rows,
    )
