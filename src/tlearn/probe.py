"""The linear probe: frozen features + ``StandardScaler`` + ``LogisticRegression``, with the
regularisation strength ``C`` chosen on held-out training data, then refit on all of it."""

from __future__ import annotations

import os
import warnings
from numbers import Integral, Real
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, log_loss
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import check_is_fitted

from tlearn._validation import Interval, Predicate, validate_params
from tlearn.backbones import DEFAULT_BACKBONE
from tlearn.data.loader import check_images
from tlearn.exceptions import DataError
from tlearn.features import ForwardsFeatureParams, PretrainedFeatures
from tlearn.runtime import resolve_device

__all__ = ["DEFAULT_CS", "LinearProbe", "check_labels", "make_probe"]

#: The default sweep: 13 values, log-spaced from 1e-4 to 1e2.
DEFAULT_CS = tuple(float(c) for c in np.logspace(-4, 2, 13))


def check_labels(
    y: object, n_samples: int, *, min_per_class: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Validate labels; return ``(classes, encoded y)``. Labels may be strings or ints."""
    if y is None:
        raise DataError("y is required: one label per image")
    y_arr = np.asarray(y)
    if y_arr.ndim != 1:
        raise DataError(f"y must be 1-d (one label per image), got shape {y_arr.shape}")
    if len(y_arr) != n_samples:
        raise DataError(f"X has {n_samples} images but y has {len(y_arr)} labels")
    classes, encoded = np.unique(y_arr, return_inverse=True)
    if len(classes) < 2:
        raise DataError(
            f"at least 2 classes are needed to train a classifier; got only "
            f"{[c.item() if hasattr(c, 'item') else c for c in classes]}. Add a folder of "
            "images for each other class"
        )
    counts = np.bincount(encoded)
    small = [(classes[i], int(c)) for i, c in enumerate(counts) if c < min_per_class]
    if small:
        names = ", ".join(f"{str(c)!r} ({n})" for c, n in small[:10])
        raise DataError(
            f"class(es) with fewer than {min_per_class} images: {names}. Add images (at least "
            f"{min_per_class} per class) or remove the class"
        )
    return classes, encoded.astype(np.int64)


def _softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Probabilities from logistic-regression scores (``(n,)`` for two classes), the way
    scikit-learn computes them, with the scores divided by ``temperature`` first."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    if z.ndim == 1:
        z = np.stack([np.zeros_like(z), z], axis=1)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class LinearProbe(ForwardsFeatureParams, ClassifierMixin, BaseEstimator):
    """Image classifier: pretrained features -> StandardScaler -> LogisticRegression.

    ``fit`` computes the features once, holds out ``validation_size`` of the training images
    (stratified), picks ``C`` from ``Cs`` by validation accuracy (ties: lower log loss), then
    refits the scaler and the classifier on all training images with that ``C``.

    Parameters
    ----------
    backbone, weights, image_size, batch_size, device, n_workers, cache_dir, on_error, engine
        Passed to :class:`PretrainedFeatures`. With ``on_error="skip"`` unreadable training
        images are left out (and listed in ``skipped_``).
    Cs : sequence of float, optional
        Inverse regularisation strengths to try; default 13 values from 1e-4 to 1e2.
    validation_size : float, default=0.2
        Fraction of the training images held out to choose ``C``.
    max_iter : int, default=1000
    random_state : int, default=0
    verbose : int, default=0

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
    features_ : PretrainedFeatures
    scaler_ : StandardScaler
    classifier_ : LogisticRegression
        Trained on class indices ``0..n_classes-1`` (``classes_`` maps them back).
    C_ : float
    cv_results_ : dict
        ``C``, ``val_accuracy`` and ``val_log_loss`` for each value tried.
    skipped_ : list of (int, str, str)

    Examples
    --------
    >>> data = load_image_folder("photos/")  # doctest: +SKIP
    >>> probe = LinearProbe().fit(data.filenames, data.target)  # doctest: +SKIP
    >>> probe.predict(["new.jpg"])  # doctest: +SKIP
    """

    _parameter_constraints: dict[str, list[Any]] = {
        **PretrainedFeatures._parameter_constraints,
        "Cs": [
            Predicate(
                lambda v: len(v) > 0 and all(float(c) > 0 for c in v),
                "a non-empty list of positive floats",
            ),
            None,
        ],
        "validation_size": [Interval(Real, 0, 1, closed="neither")],
        "max_iter": [Interval(Integral, 1, None)],
        "random_state": ["random_state", None],
    }

    def __init__(
        self,
        backbone: str = DEFAULT_BACKBONE,
        *,
        weights: str | os.PathLike[str] | None = "pretrained",
        image_size: int | None = None,
        Cs: tuple[float, ...] | list[float] | None = None,
        validation_size: float = 0.2,
        max_iter: int = 1000,
        batch_size: int = 64,
        device: str = "auto",
        n_workers: int | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        on_error: str = "raise",
        engine: str = "torch",
        random_state: int | None = 0,
        verbose: int = 0,
    ) -> None:
        self.backbone = backbone
        self.weights = weights
        self.image_size = image_size
        self.Cs = Cs
        self.validation_size = validation_size
        self.max_iter = max_iter
        self.batch_size = batch_size
        self.device = device
        self.n_workers = n_workers
        self.cache_dir = cache_dir
        self.on_error = on_error
        self.engine = engine
        self.random_state = random_state
        self.verbose = verbose

    def _validate_params(self) -> None:
        validate_params(type(self).__name__, self.get_params(), self._parameter_constraints)
        resolve_device(self.device)

    def _make_features(self) -> PretrainedFeatures:
        return PretrainedFeatures(
            self.backbone,
            weights=self.weights,
            image_size=self.image_size,
            batch_size=self.batch_size,
            device=self.device,
            n_workers=self.n_workers,
            cache_dir=self.cache_dir,
            on_error=self.on_error,
            engine=self.engine,
            verbose=self.verbose,
        )

    def _head(self, C: float) -> tuple[StandardScaler, LogisticRegression]:
        return StandardScaler(), LogisticRegression(C=C, max_iter=self.max_iter)

    def fit(self, X: object, y: object) -> LinearProbe:
        """Compute features, choose ``C`` on held-out data, refit on everything."""
        self._validate_params()
        Cs = DEFAULT_CS if self.Cs is None else tuple(float(c) for c in self.Cs)
        features = self._make_features()
        n = len(check_images(X))
        classes, y_enc = check_labels(y, n)
        features.fit(X)
        F, self.skipped_ = features.extract(X)
        if self.skipped_:
            ok = ~np.isnan(F).any(axis=1)
            F, y_enc = F[ok], y_enc[ok]
            warnings.warn(
                f"{len(self.skipped_)} unreadable training image(s) were left out: "
                + "; ".join(f"{p}: {r}" for _, p, r in self.skipped_[:5]),
                UserWarning,
                stacklevel=2,
            )
            if len(np.unique(y_enc)) < len(classes):
                raise DataError(
                    "after leaving out unreadable images, some classes have no "
                    "images left; fix or replace the files listed above"
                )
        self.classes_ = classes
        self.features_ = features
        self.C_, self.cv_results_ = self._choose_C(F, y_enc, Cs)
        self.scaler_, self.classifier_ = self._head(self.C_)
        self.classifier_.fit(self.scaler_.fit_transform(F), y_enc)
        self.temperature_ = 1.0
        self.n_features_in_ = F.shape[1]
        return self

    def _choose_C(
        self, F: np.ndarray, y: np.ndarray, Cs: tuple[float, ...]
    ) -> tuple[float, dict[str, Any]]:
        counts = np.bincount(y)
        n_val = int(round(self.validation_size * len(y)))
        if len(Cs) == 1:
            return Cs[0], {"C": list(Cs), "val_accuracy": [None], "val_log_loss": [None]}
        if counts.min() < 2 or n_val < len(counts):
            need = max(2, int(np.ceil(1 / self.validation_size)))
            raise DataError(
                f"too few images to hold out a validation split for choosing C: the smallest "
                f"class has {counts.min()} image(s) and {n_val} validation images cannot "
                f"cover {len(counts)} classes. Give at least {need} images per class, or a "
                "single C (Cs=[1.0])"
            )
        F_tr, F_val, y_tr, y_val = train_test_split(
            F, y, test_size=self.validation_size, stratify=y, random_state=self.random_state
        )
        accs, losses = [], []
        for C in Cs:
            scaler, clf = self._head(C)
            clf.fit(scaler.fit_transform(F_tr), y_tr)
            proba = clf.predict_proba(scaler.transform(F_val))
            accs.append(float(accuracy_score(y_val, clf.classes_[proba.argmax(1)])))
            losses.append(float(log_loss(y_val, proba, labels=clf.classes_)))
        best = max(range(len(Cs)), key=lambda i: (accs[i], -losses[i]))
        return Cs[best], {"C": list(Cs), "val_accuracy": accs, "val_log_loss": losses}

    def predict_proba_features(self, F: np.ndarray) -> np.ndarray:
        """Class probabilities ``(n, n_classes)`` from precomputed features."""
        check_is_fitted(self, "classifier_")
        logits = self.classifier_.decision_function(self.scaler_.transform(F))
        return _softmax(logits, self.temperature_)

    def predict_proba(self, X: object) -> np.ndarray:
        """Class probabilities ``(n_samples, n_classes)``, columns in ``classes_`` order."""
        check_is_fitted(self, "classifier_")
        return self.predict_proba_features(self.features_.transform(X))

    def decision_function(self, X: object) -> np.ndarray:
        check_is_fitted(self, "classifier_")
        F = self.features_.transform(X)
        return self.classifier_.decision_function(self.scaler_.transform(F))

    def predict(self, X: object) -> np.ndarray:
        """The most probable class of each image, as a label from ``classes_``."""
        check_is_fitted(self, "classifier_")
        return self.classes_[self.predict_proba(X).argmax(axis=1)]

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        return tags


def make_probe(backbone: str = DEFAULT_BACKBONE, **params: Any) -> LinearProbe:
    """Shorthand for :class:`LinearProbe` ``(backbone, **params)``."""
    return LinearProbe(backbone, **params)
