"""Fine-tuning with several labels per image (issue 28): what changes from one label.

The head gives one logit per label, each label a sigmoid of its own, trained with binary
cross-entropy (targets smoothed toward 1/2 by ``label_smoothing / 2``). The validation
images choose the epoch by their mean average precision (then lower loss), as one label's
choose it by accuracy. After training each label is calibrated (Platt scaling of its
logit) and thresholded on the validation images, as :class:`~tlearn.multilabel.MultiLabelProbe`
does on its out-of-fold scores; the held-out estimate is cross-fitted between two halves of
the validation split, each half judged at the epoch, calibration and threshold the other
half chose.

:class:`SeveralLabels` is this task as :class:`~tlearn.finetune.FineTuneClassifier` and the
loop use it (one row of :data:`~tlearn.finetune.tasks.TASKS`): the estimator takes it when
``y`` is an indicator matrix or gives each image a collection of labels, as
scikit-learn's ``MLPClassifier`` does.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.model_selection import train_test_split

from tlearn._validation import check_sample_weight
from tlearn.data.loader import check_images
from tlearn.exceptions import DataError
from tlearn.finetune.heldout import epochs_chosen_by_the_other_half
from tlearn.finetune.task import Task
from tlearn.multilabel import (
    check_multilabel,
    choose_thresholds,
    crossfit_labels,
    is_multilabel_target,
    platt_scaling,
    sigmoid,
)

__all__ = [
    "SeveralLabels",
    "average_precision",
    "bce_per_image",
    "calibrate_labels",
    "crossfit_label_epochs",
    "mean_average_precision",
]


def bce_per_image(logits: torch.Tensor, target: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Each image's binary cross-entropy, the mean over its labels; targets smoothed
    toward 1/2 by ``smoothing / 2``."""
    t = target.float() * (1.0 - smoothing) + smoothing / 2
    return F.binary_cross_entropy_with_logits(logits.float(), t, reduction="none").mean(1)


def average_precision(scores: np.ndarray, y: np.ndarray, w: np.ndarray | None = None) -> float:
    """One label's average precision, as scikit-learn's ``average_precision_score``
    defines it (precision at each distinct score, weighted by the recall it adds), without
    its checks: the bootstrap of auto's choice calls it thousands of times."""
    w = np.ones(len(y)) if w is None else w
    order = np.argsort(-scores, kind="mergesort")
    s, yw = scores[order], (w * y)[order]
    tp, seen = np.cumsum(yw), np.cumsum(w[order])
    last = np.r_[s[1:] != s[:-1], True]  # a threshold between distinct scores only
    tp, seen = tp[last], seen[last]
    precision = np.divide(tp, seen, out=np.zeros(len(tp)), where=seen > 0)
    return float(np.sum(np.diff(np.r_[0.0, tp / tp[-1]]) * precision))


def mean_average_precision(scores: np.ndarray, Y: np.ndarray, w: np.ndarray | None = None) -> float:
    """The mean over labels that have a positive image (of weight above 0) of each one's
    average precision of ``scores``; NaN when no label has one."""
    weights = np.ones(len(Y)) if w is None else np.asarray(w, np.float64)
    aps = [
        average_precision(scores[:, j], Y[:, j], weights)
        for j in range(Y.shape[1])
        if (weights * Y[:, j]).sum() > 0
    ]
    return float(np.mean(aps)) if aps else float("nan")


def _key(logits: np.ndarray, Y: np.ndarray, w: np.ndarray) -> tuple[float, float]:
    """(mAP, -mean binary cross-entropy) of ``logits``, weighted by ``w``; a NaN mAP (no
    label with a positive among the images) ranks last."""
    z = logits.astype(np.float64)
    each = (np.logaddexp(0, z) - Y * z).mean(1)
    score = mean_average_precision(z, Y, w)
    return (-1.0 if np.isnan(score) else score), -float(np.average(each, weights=w))


def crossfit_label_epochs(
    val_logits: list[np.ndarray],
    Y: np.ndarray,
    target: str,
    random_state: int | None = 0,
    sample_weight: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Honest probabilities and labels of the validation images ``(n_val, n_labels)`` from
    every epoch's logits, and the epoch (1-based) that scored each image: each half of the
    images takes the epoch the other half's mAP chose, then each label is calibrated and
    thresholded (for ``target``) by the other half of a second split
    (:func:`~tlearn.multilabel.crossfit_labels`)."""
    logits, epoch = epochs_chosen_by_the_other_half(val_logits, Y, sample_weight, _key)
    proba, labels = crossfit_labels(logits, Y, sample_weight, target, random_state)
    return proba, labels, epoch


def calibrate_labels(
    logits: np.ndarray,
    Y: np.ndarray,
    w: np.ndarray | None,
    target: str,
    names: Any = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """Each label's Platt slope and offset and its threshold for ``target``, fitted on the
    validation images' ``logits``; and what it measured there. A label the validation
    images show only one side of (no image with it, or none without it) cannot be
    calibrated or thresholded there: it keeps its sigmoid and 0.5, and a warning names it."""
    platt = [platt_scaling(logits[:, j], Y[:, j], w) for j in range(Y.shape[1])]
    slope, offset = np.array([a for a, _ in platt]), np.array([c for _, c in platt])
    proba = sigmoid(logits * slope + offset)
    thresholds = choose_thresholds(proba, Y, target, w)
    weights = np.ones(len(Y)) if w is None else w
    positive = (weights[:, None] * Y).sum(0)
    one_sided = (positive <= 0) | (positive >= weights.sum())
    slope[one_sided], offset[one_sided], thresholds[one_sided] = 1.0, 0.0, 0.5
    named = np.arange(Y.shape[1]) if names is None else np.asarray(names)
    if one_sided.any():
        warnings.warn(
            f"label(s) {[str(c) for c in named[one_sided][:10]]} have no image with them, or "
            f"none without them, among the {len(Y)} validation images: they keep threshold "
            "0.5, uncalibrated; give more images of them, or a larger validation_size",
            UserWarning,
            stacklevel=3,
        )
    measured = {
        "val_mean_average_precision": mean_average_precision(logits, Y, w),
        "n_val": len(Y),
        "uncalibrated_labels": [str(c) for c in named[one_sided]],
    }
    return slope, offset, thresholds, measured


def linear_head(
    weight: np.ndarray, bias: np.ndarray, slope: np.ndarray, offset: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The calibrated log odds as one linear layer on the features."""
    return weight * slope[:, None], bias * slope + offset


class SeveralLabels(Task):
    """Several labels per image (or none): a sigmoid per label, binary cross-entropy, the
    epoch chosen by mean average precision (then loss), each label's Platt scaling and
    threshold afterwards (for the model's ``threshold_for``)."""

    name = "multilabel"
    multilabel = True
    score_name = "mAP"
    fitted = ("calibration_slope_", "calibration_offset_", "thresholds_", "temperature_",
              "calibration_")  # fmt: skip

    @staticmethod
    def takes(y: Any) -> bool:
        return is_multilabel_target(y)

    def check_params(self, model: Any) -> None:
        if model.class_weight is not None:
            raise DataError(
                "class_weight weighs the classes of one label per image; y gives several per "
                "image (multi-label): leave it out, or give sample_weight"
            )

    def encode(
        self, y: Any, n: int, classes: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        return check_multilabel(y, n, classes)

    def split(
        self, y: np.ndarray, classes: np.ndarray, size: float, random_state: int | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """A random split (no stratification of label sets)."""
        idx_tr, idx_v = train_test_split(
            np.arange(len(y)), test_size=size, random_state=random_state
        )
        return np.sort(idx_tr), np.sort(idx_v)

    def loss_per_image(
        self, logits: torch.Tensor, target: torch.Tensor, smoothing: float
    ) -> torch.Tensor:
        return bce_per_image(logits, target, smoothing)

    def validation_score(
        self, logits: np.ndarray, y: np.ndarray, w: np.ndarray, correct: float, n: float
    ) -> float:
        return mean_average_precision(logits, y, w)

    def uncalibrated(self, model: Any) -> None:
        n_labels = len(model.classes_)
        model.calibration_slope_ = np.ones(n_labels)
        model.calibration_offset_ = np.zeros(n_labels)
        model.thresholds_ = np.full(n_labels, 0.5)
        model.temperature_, model.calibration_ = 1.0, {}

    def calibrate(
        self, model: Any, logits: np.ndarray, y: np.ndarray, w: np.ndarray | None
    ) -> None:
        slope, offset, thresholds, model.calibration_ = calibrate_labels(
            logits, y, w, model.threshold_for, model.classes_
        )
        model.calibration_slope_, model.calibration_offset_ = slope, offset
        model.thresholds_ = thresholds

    def held_out(
        self, model: Any, val_logits: list[np.ndarray], y: np.ndarray, w: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray | None, str]:
        proba, labels, _ = crossfit_label_epochs(
            val_logits, y, model.threshold_for, model.random_state, w
        )
        return (
            proba,
            labels,
            (
                "each half judged at the epoch, calibration and thresholds the other half chose "
                "(cross-fitted)"
            ),
        )

    def proba(self, model: Any, logits: np.ndarray) -> np.ndarray:
        return sigmoid(logits * model.calibration_slope_ + model.calibration_offset_)

    def predict(self, model: Any, proba: np.ndarray) -> np.ndarray:
        return (proba >= model.thresholds_).astype(np.int8)

    def score(self, model: Any, X: Any, y: Any, sample_weight: Any = None) -> float:
        """Macro-averaged F1 of ``predict``."""
        from sklearn.metrics import f1_score

        n = len(check_images(X))
        _, M = check_multilabel(y, n, model.classes_)
        w = check_sample_weight(sample_weight, n)
        return float(
            f1_score(M, model.predict(X), average="macro", zero_division=0, sample_weight=w)
        )

    def fingerprint(self) -> dict[str, Any]:
        return {"multilabel": True}
