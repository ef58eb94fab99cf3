"""What a fine-tuning task decides (issue 28): how its targets are encoded and split, its
loss, the validation score that chooses the epoch, the calibration fitted after training,
the held-out estimate, and how logits become probabilities and predictions.

:class:`FineTuneClassifier` and the training loop ask the task they were given; neither
knows which one it is. A new task is one module with a :class:`Task` and one row in
:data:`tlearn.finetune.tasks.TASKS`. This module holds the base and the task of one label
per image (softmax, cross-entropy, accuracy, temperature scaling);
:mod:`tlearn.finetune.multilabel` holds the task of several labels per image.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.model_selection import train_test_split

from tlearn._validation import check_labels
from tlearn.calibration import expected_calibration_error, fit_temperature, softmax
from tlearn.exceptions import DataError
from tlearn.finetune.heldout import crossfit_epochs

__all__ = ["OneLabel", "Task"]


class Task(ABC):
    """One kind of target, and everything fine-tuning does that depends on it.

    ``model`` arguments are the :class:`~tlearn.finetune.FineTuneClassifier` being fitted
    or used: a task keeps nothing of its own (one instance serves every model and thread);
    what it fits, it sets on the model, under the names in :attr:`fitted`."""

    #: the name in :data:`~tlearn.finetune.tasks.TASKS` (and in checkpoints' fingerprints)
    name: ClassVar[str]
    #: several labels per image: ``predict`` gives an indicator matrix
    multilabel: ClassVar[bool] = False
    #: what the validation score is called in the progress lines
    score_name: ClassVar[str]
    #: the fitted attributes that the validation run fits and a refit on all images keeps
    fitted: ClassVar[tuple[str, ...]]

    @staticmethod
    @abstractmethod
    def takes(y: Any) -> bool:
        """Whether targets ``y`` call for this task (the first row of
        :data:`~tlearn.finetune.tasks.TASKS` that takes ``y`` is chosen)."""

    def check_params(self, model: Any) -> None:
        """Refuse the model's parameters that have no meaning for this task."""
        return None  # by default, everything is taken

    @abstractmethod
    def encode(
        self, y: Any, n: int, classes: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(classes, encoded targets)`` of ``n`` images; ``classes``: the training
        ones, which validation targets must be among."""

    def decode(self, classes: np.ndarray, encoded: np.ndarray) -> np.ndarray:
        """The targets as the user gives them back, from :meth:`encode`'s."""
        return encoded

    def check_trainable(self, y: np.ndarray, classes: np.ndarray) -> None:
        """Refuse targets that cannot be trained on (after weight-0 images are left out)."""
        return None  # by default, everything is taken

    @abstractmethod
    def split(
        self, y: np.ndarray, classes: np.ndarray, size: float, random_state: int | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The training and validation rows (sorted) of a ``size`` validation split."""

    @abstractmethod
    def loss_per_image(
        self, logits: torch.Tensor, target: torch.Tensor, smoothing: float
    ) -> torch.Tensor:
        """Each image's training loss, ``(n,)``."""

    def correct(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Each image's contribution to a validation score that sums over images, ``(n,)``
        (zeros where the score is computed from all logits at once)."""
        return torch.zeros(len(logits), device=logits.device)

    @abstractmethod
    def validation_score(
        self, logits: np.ndarray, y: np.ndarray, w: np.ndarray, correct: float, n: float
    ) -> float:
        """The score that chooses the epoch (higher is better), from every validation
        image's ``logits`` or from the weighted sum ``correct`` of :meth:`correct` over
        weight ``n``."""

    @abstractmethod
    def uncalibrated(self, model: Any) -> None:
        """Set the :attr:`fitted` attributes of a model with no validation images."""

    @abstractmethod
    def calibrate(
        self, model: Any, logits: np.ndarray, y: np.ndarray, w: np.ndarray | None
    ) -> None:
        """Fit the :attr:`fitted` attributes (and ``model.calibration_``, what was
        measured) on the validation images' ``logits`` of the kept weights."""

    @abstractmethod
    def held_out(
        self, model: Any, val_logits: list[np.ndarray], y: np.ndarray, w: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray | None, str]:
        """Honest probabilities of the validation images from every epoch's logits, their
        predicted labels (or ``None`` where they follow from the probabilities), and what
        chose what, in words."""

    @abstractmethod
    def proba(self, model: Any, logits: np.ndarray) -> np.ndarray:
        """The probabilities of ``logits`` under the model's calibration."""

    @abstractmethod
    def predict(self, model: Any, proba: np.ndarray) -> np.ndarray:
        """``predict``'s answer from :meth:`proba`'s probabilities."""

    @abstractmethod
    def score(self, model: Any, X: Any, y: Any, sample_weight: Any = None) -> float:
        """The model's ``score``, scikit-learn's default metric of the task."""

    def fingerprint(self) -> dict[str, Any]:
        """What a checkpoint's fingerprint records of the task (a resumed run of another
        task is another run)."""
        return {}


class OneLabel(Task):
    """One label per image: a softmax over the classes, cross-entropy with label
    smoothing, the epoch chosen by accuracy (then loss), temperature scaling afterwards."""

    name = "one_label"
    score_name = "acc"
    fitted = ("temperature_", "calibration_")

    @staticmethod
    def takes(y: Any) -> bool:
        return True  # any other target: one label per image

    def encode(
        self, y: Any, n: int, classes: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        if classes is None:
            return check_labels(y, n)
        given = np.asarray(y)
        if len(given) != n:
            raise DataError(f"{len(given)} validation labels for {n} validation images")
        known = set(classes.tolist())
        unknown = sorted({str(v) for v in given if v not in known})
        if unknown:
            raise DataError(f"the validation labels {unknown} are not training classes")
        return classes, np.searchsorted(classes, given).astype(np.int64)

    def decode(self, classes: np.ndarray, encoded: np.ndarray) -> np.ndarray:
        return classes[encoded]

    def check_trainable(self, y: np.ndarray, classes: np.ndarray) -> None:
        missing = [str(c) for c in classes[np.bincount(y, minlength=len(classes)) == 0]]
        if missing:
            raise DataError(
                f"every image of class(es) {missing[:10]} has sample_weight 0 (or cannot be "
                "read): give them a weight above 0, or leave the class out"
            )

    def split(
        self, y: np.ndarray, classes: np.ndarray, size: float, random_state: int | None
    ) -> tuple[np.ndarray, np.ndarray]:
        counts = np.bincount(y, minlength=len(classes))
        need = max(2, int(np.ceil(1 / size)))
        if counts.min() < need:
            small = [f"{str(classes[i])!r} ({c})" for i, c in enumerate(counts) if c < need]
            raise DataError(
                f"class(es) {', '.join(small[:10])} have too few images for a "
                f"{size:.0%} validation split; give at least {need} images per "
                "class, or pass validation_size=0 (CLI: --validation-size 0)"
            )
        try:
            idx_tr, idx_v = train_test_split(
                np.arange(len(y)), test_size=size, stratify=y, random_state=random_state
            )
        except ValueError as e:  # a split too small to hold every class on both sides
            raise DataError(
                f"a {size:.0%} validation split of {len(y)} images cannot hold each of the "
                f"{len(classes)} classes on both sides ({e}); give a validation_size nearer "
                "0.2, or more images"
            ) from None
        return np.sort(idx_tr), np.sort(idx_v)

    def loss_per_image(
        self, logits: torch.Tensor, target: torch.Tensor, smoothing: float
    ) -> torch.Tensor:
        return F.cross_entropy(logits.float(), target, reduction="none", label_smoothing=smoothing)

    def correct(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (logits.argmax(1) == target).float()

    def validation_score(
        self, logits: np.ndarray, y: np.ndarray, w: np.ndarray, correct: float, n: float
    ) -> float:
        return correct / n

    def uncalibrated(self, model: Any) -> None:
        model.temperature_, model.calibration_ = 1.0, {}

    def calibrate(
        self, model: Any, logits: np.ndarray, y: np.ndarray, w: np.ndarray | None
    ) -> None:
        model.temperature_ = fit_temperature(logits, y)
        model.calibration_ = {
            "temperature": model.temperature_,
            "val_ece_before": expected_calibration_error(softmax(logits), y),
            "val_ece_after": expected_calibration_error(softmax(logits, model.temperature_), y),
            "val_accuracy": float((logits.argmax(1) == y).mean()),
            "n_val": len(y),
        }

    def held_out(
        self, model: Any, val_logits: list[np.ndarray], y: np.ndarray, w: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray | None, str]:
        proba, _ = crossfit_epochs(val_logits, y, model.random_state, w)
        return proba, None, "each half judged at the epoch the other half chose (cross-fitted)"

    def proba(self, model: Any, logits: np.ndarray) -> np.ndarray:
        return softmax(logits, getattr(model, "temperature_", 1.0))

    def predict(self, model: Any, proba: np.ndarray) -> np.ndarray:
        return model.classes_[proba.argmax(axis=1)]

    def score(self, model: Any, X: Any, y: Any, sample_weight: Any = None) -> float:
        """Accuracy (refusing targets of the other convention: indices for names)."""
        from tlearn.probe import ScoresNamedTargets

        return ScoresNamedTargets.score(model, X, y, sample_weight)
