"""Fine-tuning's honest held-out estimate.

The validation split chooses the epoch whose weights are kept (and early stopping), so the
best epoch's validation accuracy is the maximum of several noisy figures: optimistic. Here
the validation images are split in two halves; each half is scored by the epoch the
*other* half would have chosen (by the same rule as :class:`BestWeights`: accuracy, then
lower loss, the earlier epoch on a tie), so no image's score comes from a choice it took
part in. The temperature is cross-fitted the same way (:func:`crossfit_softmax`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from tlearn.calibration import crossfit_softmax

__all__ = ["crossfit_epochs", "epochs_chosen_by_the_other_half"]


def _key(logits: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[float, float]:
    """(accuracy, -mean cross-entropy) of ``logits`` for labels ``y``, weighted by ``w``."""
    z = logits.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    right = z.argmax(1) == y
    return float(np.average(right, weights=w)), float(
        np.average(log_p[np.arange(len(y)), y], weights=w)
    )


def crossfit_epochs(
    val_logits: list[np.ndarray],
    y: np.ndarray,
    random_state: int | None = 0,
    sample_weight: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Honest probabilities of the validation images ``(n_val, n_classes)`` from the
    logits of every epoch, and the epoch (1-based) that scored each image; each half's
    epoch chosen by the other half's accuracy and loss weighted by ``sample_weight``."""
    y = np.asarray(y, dtype=np.int64)
    logits, epoch = epochs_chosen_by_the_other_half(val_logits, y, sample_weight, _key)
    return crossfit_softmax(logits, y, random_state), epoch


def epochs_chosen_by_the_other_half(
    val_logits: list[np.ndarray],
    y: np.ndarray,
    sample_weight: np.ndarray | None,
    key: Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[float, float]],
) -> tuple[np.ndarray, np.ndarray]:
    """The validation images' logits, each half (even and odd rows) at the epoch whose
    ``key(logits, y, weights)`` was best on the other half (the earlier on a tie), and that
    epoch (1-based) for each image."""
    w = np.ones(len(y)) if sample_weight is None else np.asarray(sample_weight, np.float64)
    half = np.arange(len(y)) % 2 == 0
    logits = np.empty_like(val_logits[0], dtype=np.float64)
    epoch = np.zeros(len(y), np.int64)
    for part in (half, ~half):
        chooser = ~part if (~part).any() and w[~part].sum() > 0 else part
        keys = [key(z[chooser], y[chooser], w[chooser]) for z in val_logits]
        best = max(range(len(keys)), key=lambda e: (keys[e], -e))
        logits[part], epoch[part] = val_logits[best][part], best + 1
    return logits, epoch
