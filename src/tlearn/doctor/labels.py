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
4. Unless its given label is its most probable class (within ``TOLERANCE``): a class's
   mean can sit above an image's probability of it while that probability is still the
   image's highest, and the model then agrees with the label.
5. Flagged images are ranked by a label-quality score, lowest first: the self-confidence
   ``p_label`` or the normalised margin ``(p_label - max_{j != label} p_j + 1) / 2``.

This reproduces cleanlab's ``find_label_issues(filter_by="confident_learning")`` and its
rankings (the flagged sets checked equal over hundreds of random problems in
``tests/test_doctor_labels.py``), written here because cleanlab is AGPL-3.0 and tlearn is
Apache-2.0. cleanlab's default filter, ``"prune_by_noise_rate"``, is another of the
paper's variants: it flags as many images per (label, class) cell as the calibrated joint
holds, by margin, so more images (more recall, less precision); the doctor keeps the
confident ones.
"""

from __future__ import annotations

import warnings
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
    "out_of_fold_proba",
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


def _label_is_top(labels: np.ndarray, proba: np.ndarray) -> np.ndarray:
    """Whether each image's given label is its most probable class, ties (within
    ``TOLERANCE``) going to the label."""
    rows = np.arange(len(labels))
    lifted = proba.copy()
    lifted[rows, labels] += TOLERANCE
    return lifted.argmax(axis=1) == labels


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
    """Images confidently of a class other than their label, whose label is not their
    most probable class either, ranked by ``rank_by`` (``"self_confidence"`` or
    ``"normalized_margin"``), each with a suggested label (steps 1 to 5 above).

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
    flagged = np.flatnonzero((guess >= 0) & (guess != labels) & ~_label_is_top(labels, proba))
    scores = label_quality(labels, proba, rank_by)[flagged]
    order = np.argsort(scores, kind="stable")
    return LabelIssues(
        indices=flagged[order],
        suggested=guess[flagged][order],
        scores=scores[order],
        joint=confident_joint(labels, proba),
        thresholds=thresholds,
    )


def out_of_fold_proba(
    features: np.ndarray, labels: np.ndarray, *, n_splits: int = 5, prune: bool = True
) -> np.ndarray:
    """Calibrated out-of-fold probabilities of every image from a linear probe on its
    features: the doctor's input to :func:`find_label_issues`.

    1. ``C`` is tuned and out-of-fold probabilities are computed by stratified k-fold (the
       probe's own tuning, :func:`tlearn.probe.tune_linear_head`), with a temperature
       fitted on them.
    2. With ``prune``, the images that pass flags as label issues are left out of the
       *training* part of each of k new folds and every image is scored again out of fold
       (Northcutt et al.'s "prune, then retrain": the mislabelled images no longer teach
       the model their wrong labels), with the temperature fitted on the unflagged images.
       A class keeps all its images when half or more of them are flagged, and in a fold
       whose training part would hold none of its unflagged images (a class of 3 with one
       flagged, its 2 others both in the fold's test part: a probe cannot be trained
       without one of its classes).

    Parameters
    ----------
    features : ndarray of shape (n_samples, n_features)
        Image features, such as those of :class:`tlearn.PretrainedFeatures`.
    labels : ndarray of shape (n_samples,)
        Given labels as class indices ``0..n_classes - 1``, each class at least twice.
    n_splits : int, default=5
        Folds (fewer when a class has fewer images).
    prune : bool, default=True
        Run the second pass. On 50,000 CIFAR-10 training images with 5% of the labels
        flipped to look-alike classes (and the 10,000 test images) it raises the AUROC of
        the label-quality score from 0.929 to 0.945; with random flips it changes it by
        under 0.002 (the README; ``benchmarks/doctor.py --lookalike``).

    Returns
    -------
    proba : ndarray of shape (n_samples, n_classes)
    """
    from sklearn.base import clone
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import Pipeline

    from tlearn.calibration import fit_temperature, softmax
    from tlearn.probe import one_blas_thread, tune_linear_head

    features, labels = np.asarray(features), np.asarray(labels)
    counts = np.bincount(labels)
    if len(features) != len(labels) or len(counts) < 2 or counts.min() < 2:
        raise DataError(
            f"need one feature row per label ({len(features)} rows, {len(labels)} labels) "
            f"and every class index 0..{len(counts) - 1} at least twice (counts "
            f"{counts.tolist()})"
        )
    folds = int(min(n_splits, counts.min()))
    head = tune_linear_head(features, labels, refit=False,
                            cv=StratifiedKFold(folds, shuffle=True, random_state=0))  # fmt: skip
    assert head.oof_scores is not None and head.oof_index is not None
    proba = np.full((len(labels), len(counts)), np.nan)
    proba[head.oof_index] = softmax(head.oof_scores, head.temperature)
    if not prune:
        return proba
    keep = np.ones(len(labels), dtype=bool)
    keep[find_label_issues(labels, proba).indices] = False
    trusted = np.bincount(labels[keep], minlength=len(counts)) > counts / 2
    keep |= ~trusted[labels]
    if keep.all():
        return proba
    refolds = StratifiedKFold(folds, shuffle=True, random_state=1).split(features, labels)
    splits = [(_pruned(train, keep, labels), test) for train, test in refolds]
    pipe = clone(Pipeline([("scaler", head.scaler), ("clf", head.classifier)]))
    with warnings.catch_warnings(), one_blas_thread():
        warnings.simplefilter("ignore", ConvergenceWarning)
        scores = cross_val_predict(pipe, features, labels, cv=splits, method="decision_function")
    return softmax(scores, fit_temperature(scores[keep], labels[keep]))


def _pruned(train: np.ndarray, keep: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The rows of ``train`` that are kept, and every row of a class none of whose kept
    rows is in ``train``."""
    kept = train[keep[train]]
    lost = np.setdiff1d(labels[train], labels[kept])
    return np.union1d(kept, train[np.isin(labels[train], lost)])
