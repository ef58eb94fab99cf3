"""Calibrated probabilities by temperature scaling (Guo et al., 2017): one number ``T``
divides a classifier's scores before the softmax, chosen to minimise the log loss of
held-out predictions (out-of-fold for the probe, the validation split for fine-tuning).
``T > 1`` softens an over-confident model, ``T < 1`` sharpens an under-confident one (a
strongly regularised linear probe is the latter); the predicted class never changes.

Also the expected calibration error, the figure the reports show before and after.
"""

from __future__ import annotations

import numpy as np

__all__ = ["crossfit_softmax", "expected_calibration_error", "fit_temperature", "softmax"]


def softmax(scores: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Probabilities from scores ``(n, n_classes)``, or ``(n,)`` for a binary logistic
    regression (the scores of class 1 against class 0), divided by ``temperature``."""
    z = np.asarray(scores, dtype=np.float64) / temperature
    if z.ndim == 1:
        z = np.stack([np.zeros_like(z), z], axis=1)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _log_loss(scores: np.ndarray, y: np.ndarray, temperature: float) -> float:
    p = softmax(scores, temperature)
    return float(-np.log(np.clip(p[np.arange(len(y)), y], 1e-15, None)).mean())


def fit_temperature(scores: np.ndarray, y: np.ndarray) -> float:
    """The temperature in [0.05, 20] that minimises the log loss of ``softmax(scores / T)``
    for labels ``y`` (integer class indices). The loss is convex in ``1/T``, so a bounded
    scalar search on ``log T`` finds the optimum."""
    from scipy.optimize import minimize_scalar

    y = np.asarray(y, dtype=np.int64)
    if len(y) == 0:
        return 1.0
    result = minimize_scalar(
        lambda log_t: _log_loss(scores, y, float(np.exp(log_t))),
        bounds=(np.log(0.05), np.log(20.0)),
        method="bounded",
        options={"xatol": 1e-4},
    )
    return float(np.exp(result.x))


def crossfit_softmax(scores: np.ndarray, y: np.ndarray, random_state: int | None = 0) -> np.ndarray:
    """Probabilities of held-out ``scores`` calibrated without their own labels: the rows
    are split in two random halves, and each half is divided by the temperature fitted on
    the other (the temperature is a choice too, so an honest estimate of the calibration
    error must not fit it on the rows it is measured on). A single row has no other half:
    it keeps temperature 1 (it was calibrated on its own label)."""
    scores = np.asarray(scores, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    half = np.random.default_rng(random_state).permutation(len(y)) % 2 == 0
    out = np.empty((len(y), scores.shape[1] if scores.ndim == 2 else 2))
    for part in (half, ~half):
        other = ~part
        temperature = fit_temperature(scores[other], y[other]) if other.any() else 1.0
        out[part] = softmax(scores[part], temperature)
    return out


def reliability(confidence: np.ndarray, correct: np.ndarray, n_bins: int = 15) -> list[dict]:
    """The reliability diagram: for each non-empty one of ``n_bins`` equal-width confidence
    bins, its edges, mean confidence, accuracy and image count."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        in_bin = (confidence > lo) & (confidence <= hi)
        if in_bin.any():
            bins.append({"low": float(lo), "high": float(hi),
                         "confidence": float(confidence[in_bin].mean()),
                         "accuracy": float(correct[in_bin].mean()),
                         "count": int(in_bin.sum())})  # fmt: skip
    return bins


def expected_calibration_error(proba: np.ndarray, y: np.ndarray, n_bins: int = 15) -> float:
    """The gap between confidence and accuracy, averaged over 15 equal-width confidence
    bins weighted by their share of the images (the usual ECE)."""
    proba = np.asarray(proba, dtype=np.float64)
    bins = reliability(proba.max(axis=1), proba.argmax(axis=1) == np.asarray(y), n_bins)
    return ece_of(bins)


def ece_of(bins: list[dict]) -> float:
    """ECE from :func:`reliability`'s bins."""
    n = sum(b["count"] for b in bins)
    return float(sum(b["count"] / n * abs(b["accuracy"] - b["confidence"]) for b in bins))
