"""The report's plots, drawn with matplotlib's ``Figure`` API: no pyplot, no global
backend switch (a notebook keeps its own), safe to call from any thread."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from tlearn._io import write_atomic
from tlearn.evaluation.metrics import Metrics
from tlearn.plotting import plain_text, plot_history

__all__ = ["plot_confusion", "plot_history", "plot_reliability", "write_plots"]


def _save(fig: Figure, path: str | os.PathLike[str]) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    write_atomic(path, buf.getvalue())


def plot_confusion(report: Metrics, path: str | os.PathLike[str]) -> None:
    """Row-normalised confusion matrix; annotated up to 20 classes, readable up to ~100."""
    cm = np.asarray(report.confusion_matrix, dtype=float)
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    n = len(report.classes)
    side = min(22.0, max(5.0, 0.45 * n + 2))
    fig = Figure(figsize=(side, side * 0.9))
    ax = fig.subplots()
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    names = [plain_text(c) for c in report.classes]
    font = max(4, min(10, int(300 / max(n, 1))))
    ax.set_xticks(range(n), names, rotation=90, fontsize=font)
    ax.set_yticks(range(n), names, fontsize=font)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 20:
        for i in range(n):
            for j in range(n):
                if norm[i, j] >= 0.005:
                    ax.text(
                        j,
                        i,
                        f"{norm[i, j]:.2f}",
                        ha="center",
                        va="center",
                        fontsize=font,
                        color="white" if norm[i, j] > 0.5 else "black",
                    )
    ax.set_title(f"confusion matrix (rows normalised), accuracy {report.accuracy:.3f}")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    _save(fig, path)


def plot_reliability(report: Metrics, path: str | os.PathLike[str]) -> None:
    """Accuracy against confidence per bin, with the expected calibration error."""
    fig = Figure(figsize=(5, 6))
    ax, hist = fig.subplots(2, 1, height_ratios=[3, 1], sharex=True)
    bins = report.reliability
    centers = [(b["low"] + b["high"]) / 2 for b in bins]
    width = 1.0 / 15
    ax.bar(centers, [b["accuracy"] for b in bins], width=width * 0.9, color="C0", label="accuracy")
    ax.bar(
        centers,
        [abs(b["confidence"] - b["accuracy"]) for b in bins],
        bottom=[min(b["accuracy"], b["confidence"]) for b in bins],
        width=width * 0.9,
        color="C3",
        alpha=0.4,
        label="gap to confidence",
    )
    ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    ax.set_ylabel("accuracy")
    ax.set_title(f"reliability (ECE {report.expected_calibration_error:.3f})")
    ax.legend(loc="upper left", fontsize=8)
    hist.bar(centers, [b["count"] for b in bins], width=width * 0.9, color="grey")
    hist.set_xlabel("confidence (top-1 probability)")
    hist.set_ylabel("images")
    fig.tight_layout()
    _save(fig, path)


def write_plots(report: Metrics, folder: str | os.PathLike[str]) -> dict[str, str]:
    """confusion.png, reliability.png and (with a training history) curves.png."""
    folder = Path(folder)
    plots = {
        "confusion matrix": str(folder / "confusion.png"),
        "reliability": str(folder / "reliability.png"),
    }
    plot_confusion(report, plots["confusion matrix"])
    plot_reliability(report, plots["reliability"])
    if report.history:
        plots["training curves"] = str(folder / "curves.png")
        plot_history(report.history, plots["training curves"])
    return plots
