"""Batch prediction: one row per image (path, top-k labels and probabilities, or the error
that image raised), streamed to CSV or JSON Lines so that nothing is lost."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from tlearn.data.sources import iter_image_paths
from tlearn.exceptions import DataError
from tlearn.models import python_value as _py
from tlearn.models import split_model

__all__ = ["iter_predictions", "write_predictions"]


def iter_predictions(
    model: Any, inputs: Iterable[str], *, top_k: int = 1, chunk_size: int = 1024
) -> Iterator[dict[str, Any]]:
    """Yield one dict per image, in input order: ``path``, ``label``, ``probability``,
    ``top_labels``, ``top_probabilities`` and ``error`` (empty when the image was read).

    Images are taken ``chunk_size`` at a time, so memory stays flat for any number of them;
    unreadable images get a row with the error instead of stopping the run.
    """
    parts = split_model(model)
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    k = min(top_k, len(parts.classes))
    features = parts.features
    saved = features.on_error
    features.on_error = "skip"  # a batch job keeps going; each failure gets its own row
    try:
        paths = iter_image_paths(inputs)
        while True:
            chunk = [p for _, p in zip(range(chunk_size), paths, strict=False)]
            if not chunk:
                return
            rows: list[dict[str, Any] | None] = [None] * len(chunk)
            for idx, feats, errors in features.iter_features(chunk):
                if len(idx):
                    proba = parts.predict_proba(feats)
                    top = np.argsort(-proba, axis=1)[:, :k]
                    for i, p, t in zip(idx, proba, top, strict=True):
                        labels = [_py(parts.classes[j]) for j in t]
                        probs = [float(p[j]) for j in t]
                        rows[i] = {
                            "path": chunk[i],
                            "label": labels[0],
                            "probability": probs[0],
                            "top_labels": labels,
                            "top_probabilities": probs,
                            "error": "",
                        }
                for i, p, reason in errors:
                    rows[i] = {
                        "path": p,
                        "label": None,
                        "probability": None,
                        "top_labels": [],
                        "top_probabilities": [],
                        "error": reason,
                    }
            for row in rows:
                assert row is not None  # every position is either predicted or failed
                yield row
    finally:
        features.on_error = saved


def write_predictions(
    rows: Iterable[dict[str, Any]], output: str | os.PathLike[str], top_k: int = 1
) -> dict[str, int]:
    """Write rows as CSV (``.csv``) or JSON Lines (``.jsonl``/``.json``), flushing as it goes.

    Returns ``{"ok": n, "failed": m}``.
    """
    output = os.fspath(output)
    folder = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(folder):
        raise DataError(f"cannot write {output!r}: the folder {folder!r} does not exist")
    ext = os.path.splitext(output)[1].lower()
    if ext not in (".csv", ".jsonl", ".json", ".ndjson"):
        raise DataError(f"unknown output format {ext!r} for {output!r}; use .csv or .jsonl")
    counts = {"ok": 0, "failed": 0}
    with open(output, "w", newline="", encoding="utf-8") as f:
        if ext in (".jsonl", ".json", ".ndjson"):
            for row in rows:
                counts["failed" if row["error"] else "ok"] += 1
                f.write(json.dumps(row) + "\n")
        else:
            header = ["path", "label", "probability"]
            if top_k > 1:
                for j in range(1, top_k + 1):
                    header += [f"label_{j}", f"probability_{j}"]
            writer = csv.writer(f)
            writer.writerow([*header, "error"])
            for row in rows:
                counts["failed" if row["error"] else "ok"] += 1
                line = [
                    row["path"],
                    row["label"] if row["label"] is not None else "",
                    f"{row['probability']:.6f}" if row["probability"] is not None else "",
                ]
                if top_k > 1:
                    for j in range(top_k):
                        has = j < len(row["top_labels"])
                        line += [
                            row["top_labels"][j] if has else "",
                            f"{row['top_probabilities'][j]:.6f}" if has else "",
                        ]
                writer.writerow([*line, row["error"]])
    return counts
