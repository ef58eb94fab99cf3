"""Plots that more than one part draws: a training run's loss and accuracy curves (the
fine-tuning callbacks write them during training, the HTML report shows them)."""

from __future__ import annotations

import math
import os

from tlearn._io import write_atomic

__all__ = ["plot_history", "plain_text"]


def plain_text(value: object) -> str:
    """A class name as matplotlib shows it literally: ``$`` would start its math mode (a
    class named ``$\\foo$`` raised "Unknown symbol" and lost the whole report)."""
    return str(value).replace("$", r"\$")


def plot_history(history: list[dict[str, float]], path: str | os.PathLike[str]) -> None:
    """Loss and accuracy curves per epoch as a PNG (matplotlib's Figure API: no pyplot,
    no global backend switch, safe from any thread)."""
    import io

    from matplotlib.figure import Figure

    epochs = [h["epoch"] for h in history]
    fig = Figure(figsize=(10, 4))
    ax1, ax2 = fig.subplots(1, 2)
    ax1.plot(epochs, [h["train_loss"] for h in history], "o-", label="train loss")
    if any(not math.isnan(h["val_loss"]) for h in history):
        ax1.plot(epochs, [h["val_loss"] for h in history], "o-", label="validation loss")
        ax2.plot(epochs, [h["val_accuracy"] for h in history], "o-", color="C2")
    ax1.set_xlabel("epoch")
    ax1.set_title("loss")
    ax1.legend()
    ax2.set_xlabel("epoch")
    ax2.set_title("validation accuracy")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    write_atomic(path, buf.getvalue())
