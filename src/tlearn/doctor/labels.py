"""Likely label errors by confident learning (Northcutt, Jiang and Chuang, "Confident
Learning: Estimating Uncertainty in Dataset Labels", JAIR 2021), on out-of-fold predicted
probabilities such as :attr:`tlearn.LinearProbe.oof_proba_`.

1. Per-class thresholds: ``t_j`` = the mean predicted probability of class ``j`` over the
   images labelled ``j`` (how confident the model is, on average, in that class).
2. An image is *confidently* of class ``j`` when ``p_j >= t_j``; with several such classes,
   the most probable one. Images above no threshold are not counted.
3. The confident joint counts (given label, confident class); an image off its diagonal
   (confidently of a class other than its label) is a likely label error, with that class
   as the suggested label.
4. Flagged images are ranked by a label-quality score, lowest first: the self-confidence
   ``p_label`` or the normalised margin ``(p_label - max_{j != label} p_j + 1) / 2``.

This reproduces cleanlab's ``find_label_issues(filter_by="confident_learning")`` and its
rankings (checked in ``tests/test_doctor_labels.py``), written here because cleanlab is
AGPL-3.0 and tlearn is Apache-2.0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tlearn._validation import check_option
from tlearn.exceptions import DataError

__all__ = [
    "LabelIssues",
    "confident_joint",
    "confident_thresholds",
    "find_label_issues",
    "label_quality",
]

RANKINGS = ("self_confidence", "normalized_margin")
#: A class threshold never goes below this (cleanlab's bound), so near-zero means count.
THRESHOLD_FLOOR = 1e-6
#: Tolerance of ``p >= threshold`` (probabilities that equal the mean up to rounding).
TOLERANCE = 1e-6


def _check(labels: np.ndarray, proba: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels)
    proba = np.asarray(proba, dtype=np.float64)
    if proba.ndim != 2 or len(labels) != len(proba):
        raise DataError(
            f"need one row of class probabilities per label: got {len(labels)} labels and "
            f"probabilities of shape {proba.shape}"
        )
    if (
        not np.issubdtype(labels.dtype, np.integer)
        or labels.min() < 0
        or labels.max() >= proba.shape[1]
    ):
        raise DataError(
            f"labels must be class indices 0..{proba.shape[1] - 1} (columns of the "
            "probabilities); map names with np.searchsorted(classes_, y)"
        )
    if not np.isfinite(proba).all():
        raise DataError(
            "the probabilities have NaN rows (images without an out-of-fold prediction); "
            "drop them first"
        )
    return labels, proba


def confident_thresholds(labels: np.ndarray, proba: np.ndarray) -> np.ndarray:
    """``t_j``: the mean probability of class ``j`` over the images labelled ``j`` (2.0, out
    of reach, for a class no image is labelled with)."""
    labels, proba = _check(labels, proba)
    k = proba.shape[1]
    counts = np.bincount(labels, minlength=k)
    sums = np.bincount(labels, weights=proba[np.arange(len(labels)), labels], minlength=k)
    with np.errstate(invalid="ignore", divide="ignore"):
        thresholds = np.where(counts > 0, sums / np.maximum(counts, 1), 2.0)
    return np.clip(thresholds, THRESHOLD_FLOOR, None)


def _confident_class(proba: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Each image's confident class, or -1 when it is above no class's threshold."""
    above = proba >= thresholds - TOLERANCE
    n_above = above.sum(axis=1)
    guess = np.where(n_above > 1, proba.argmax(axis=1), above.argmax(axis=1))
    return np.where(n_above > 0, guess, -1)


def confident_joint(labels: np.ndarray, proba: np.ndarray) -> np.ndarray:
    """``C[i, j]``: images labelled ``i`` that are confidently of class ``j`` (every
    diagonal entry at least 1)."""
    labels, proba = _check(labels, proba)
    k = proba.shape[1]
    guess = _confident_class(proba, confident_thresholds(labels, proba))
    counted = guess >= 0
    joint = np.zeros((k, k), dtype=np.int64)
    np.add.at(joint, (labels[counted], guess[counted]), 1)
    np.fill_diagonal(joint, np.maximum(joint.diagonal(), 1))
    return joint


def label_quality(
    labels: np.ndarray, proba: np.ndarray, method: str = "self_confidence"
) -> np.ndarray:
    """One score per image in [0, 1]; lower means more likely mislabelled."""
    check_option("label_quality", "method", method, RANKINGS)
    labels, proba = _check(labels, proba)
    rows = np.arange(len(labels))
    given = proba[rows, labels]
    if method == "self_confidence":
        return given
    others = proba.copy()
    others[rows, labels] = -np.inf
    return (given - others.max(axis=1) + 1) / 2


@dataclass
class LabelIssues:
    """Likely label errors, most likely first."""

    indices: np.ndarray  # into the inputs
    suggested: np.ndarray  # the confident class of each flagged image
    scores: np.ndarray  # its label-quality score (lower: more likely wrong)
    joint: np.ndarray  # the confident joint
    thresholds: np.ndarray


def find_label_issues(
    labels: np.ndarray, proba: np.ndarray, rank_by: str = "self_confidence"
) -> LabelIssues:
    """Images confidently of a class other than their label, ranked by ``rank_by``
    (``"self_confidence"`` or ``"normalized_margin"``), each with a suggested label.

    Parameters
    ----------
    labels : ndarray of shape (n_samples,)
        Given labels as class indices (the columns of ``proba``).
    proba : ndarray of shape (n_samples, n_classes)
        Out-of-fold predicted probabilities (never those of a model trained on the same
        images: it has memorised their labels).
    rank_by : {"self_confidence", "normalized_margin"}, default="self_confidence"
    """
    check_option("find_label_issues", "rank_by", rank_by, RANKINGS)
    labels, proba = _check(labels, proba)
    thresholds = confident_thresholds(labels, proba)
    guess = _confident_class(proba, thresholds)
    flagged = np.flatnonzero((guess >= 0) & (guess != labels))
    scores = label_quality(labels, proba, rank_by)[flagged]
    order = np.argsort(scores, kind="stable")
    return LabelIssues(
        indices=flagged[order],
        suggested=guess[flagged][order],
        scores=scores[order],
        joint=confident_joint(labels, proba),
        thresholds=thresholds,
    )
