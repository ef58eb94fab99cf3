"""Multi-label classification on frozen features: several labels per image (a dog *and* a
person), or none.

:class:`MultiLabelProbe` fits one logistic regression per label on the shared, standardised
features (one-vs-rest), with one ``C`` chosen by k-fold cross-validation on the mean of the
per-label log losses; each label's probabilities are calibrated on its out-of-fold scores
(Platt scaling: a slope and an offset per label), and each label gets its own decision
threshold, chosen on the calibrated out-of-fold probabilities (best F1 by default, or a
target precision or recall: ``threshold_for="precision=0.9"``).

Labels come as scikit-learn's indicator matrix ``(n_samples, n_labels)`` of 0/1, or as one
collection of labels per image (``[["dog", "person"], ["cat"], []]``).
"""

from __future__ import annotations

import os
import re
from numbers import Integral
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import KFold
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import check_is_fitted

from tlearn._validation import Interval, Predicate, check_sample_weight, validate_params
from tlearn.backbones.policy import DEFAULT_BACKBONE
from tlearn.data.loader import check_images
from tlearn.exceptions import DataError
from tlearn.features import ForwardsFeatureParams, PretrainedFeatures
from tlearn.probe import one_blas_thread
from tlearn.runtime import resolve_device

__all__ = [
    "MULTILABEL_CS",
    "MultiLabelProbe",
    "check_multilabel",
    "choose_thresholds",
    "crossfit_labels",
    "is_multilabel_target",
    "platt_scaling",
    "sigmoid",
]

#: C values tried by default: each costs one fit per label and fold.
MULTILABEL_CS = tuple(float(c) for c in np.logspace(-4, 1, 6))
_TARGET = re.compile(r"^(f1|(precision|recall)=(0?\.\d+|1(\.0*)?))$")
#: What ``threshold_for`` may say, in :func:`valid_threshold_target`'s words.
THRESHOLD_TARGETS = "'f1', 'precision=0.9' or 'recall=0.9' (a value in (0, 1])"


def valid_threshold_target(value: object) -> bool:
    """Whether ``value`` is a ``threshold_for``: ``"f1"``, ``"precision=x"`` or
    ``"recall=x"`` with x in (0, 1]."""
    return isinstance(value, str) and bool(_TARGET.match(value))


def check_multilabel(
    Y: Any, n_samples: int, classes: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(classes, indicator matrix)`` of multi-label targets: an indicator matrix of 0/1
    (numbers or booleans; classes ``0..n_labels-1``, scikit-learn's convention) or one
    collection of labels per image, strings or integers (classes sorted). Images with no
    label are allowed. ``classes``: a fitted model's, which the labels must be among (an
    indicator matrix has one column for each)."""
    if Y is None:
        raise DataError("Y is required: the labels of each image (an indicator matrix or lists)")
    if not hasattr(Y, "__len__"):
        Y = list(Y)
    if len(Y) != n_samples:
        raise DataError(f"X has {n_samples} images but Y has {len(Y)} rows of labels")
    if _is_matrix(Y):
        M = np.asarray(Y)
        M = M.astype(np.float64) if M.dtype == object else M
        if not np.isin(M, (0, 1)).all():
            raise DataError(
                "Y is read as an indicator matrix (rows of numbers, all of one length), which "
                "holds only 0 and 1 (1: the image has the label); to give integer labels, "
                "give each image a set of them ([{3}, {5, 7}])"
            )
        if classes is not None and M.shape[1] != len(classes):
            raise DataError(f"Y has {M.shape[1]} columns, but the model has {len(classes)} labels")
        if classes is None and not M.any():
            raise DataError("no image has a label: multi-label training needs at least one")
        found = np.arange(M.shape[1]) if classes is None else np.asarray(classes)
        return found, M.astype(np.int8)
    rows = [_labels_of(labels, i) for i, labels in enumerate(Y)]
    every = set().union(*rows)
    if len({type(v) for v in every}) > 1:
        raise DataError(
            "Y mixes string and integer labels (such as 1 and '1', which would be two labels "
            "of one name): give labels of one type"
        )
    if classes is None:
        if not every:
            raise DataError("no image has a label: multi-label training needs at least one")
        ints = isinstance(next(iter(every)), int)
        classes = np.array(sorted(every), dtype=np.int64 if ints else object)
    index = {c: j for j, c in enumerate(np.asarray(classes).tolist())}
    unknown = sorted(every - index.keys(), key=str)
    if unknown:
        raise DataError(
            f"Y has labels the model was not fitted on: {', '.join(map(repr, unknown[:10]))}"
        )
    M = np.zeros((n_samples, len(classes)), np.int8)
    for i, labels in enumerate(rows):
        M[i, [index[c] for c in labels]] = 1
    return np.asarray(classes), M


def _labels_of(labels: Any, i: int) -> set[str | int]:
    """Row ``i`` of label lists as a set of strings or integers (NumPy's as Python's)."""
    try:
        if isinstance(labels, (str, bytes)):
            raise TypeError
        items = list(labels)
    except TypeError:
        raise DataError(
            f"row {i} of Y is {_shown(labels)}: give each image a list of labels "
            "(['dog', 'person'], or [] for none) or an indicator matrix"
        ) from None
    row: set[str | int] = set()
    for label in items:
        value = label.item() if isinstance(label, np.generic) else label
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise DataError(
                f"row {i} of Y holds {_shown(label)}: a label is a string or an integer"
            )
        if isinstance(value, int) and not -(2**63) <= value < 2**63:
            raise DataError(f"row {i} of Y holds {value}: an integer label fits in 64 bits")
        row.add(value)
    return row


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _is_matrix(Y: Any) -> bool:
    """Rows of numbers (or booleans) of one length: an indicator matrix."""
    try:
        M = np.asarray(Y)
    except ValueError:  # ragged lists
        return False
    if M.ndim != 2 or M.shape[1] == 0:
        return False
    if M.dtype == object:  # a DataFrame's mixed columns: numbers only, no labels
        return all(isinstance(v, (int, float, np.number)) for v in M.flat)
    return M.dtype == bool or np.issubdtype(M.dtype, np.number)


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # stable for large |z|


def _log_loss(p: np.ndarray, y: np.ndarray, w: np.ndarray | None = None) -> float:
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return float(-np.average(y * np.log(p) + (1 - y) * np.log(1 - p), weights=w))


def _fit_label(
    F: np.ndarray, y: np.ndarray, C: float, max_iter: int, w: np.ndarray | None = None
) -> tuple[np.ndarray, float]:
    """One label's logistic regression on standardised features (an image of weight 2
    counting twice): ``(coef, intercept)``; a label constant on these images gets the
    prior's log odds and no weights."""
    if y.min() == y.max():
        prior = np.clip(y.mean(), 1e-3, 1 - 1e-3)
        return np.zeros(F.shape[1]), float(np.log(prior / (1 - prior)))
    clf = LogisticRegression(C=C, max_iter=max_iter).fit(F, y, sample_weight=w)
    return clf.coef_[0], float(clf.intercept_[0])


def _fit_all(
    F: np.ndarray, Y: np.ndarray, C: float, max_iter: int, w: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    fitted = [_fit_label(F, Y[:, j], C, max_iter, w) for j in range(Y.shape[1])]
    return np.stack([c for c, _ in fitted]), np.array([b for _, b in fitted])


def platt_scaling(
    scores: np.ndarray, y: np.ndarray, w: np.ndarray | None = None
) -> tuple[float, float]:
    """Slope and offset mapping one label's scores to calibrated log odds (weights are
    relative: scaled to mean 1, since the regularisation is not)."""
    if y.min() == y.max():
        return 1.0, 0.0
    if w is not None and w.sum() > 0:
        w = w / w[w > 0].mean()
    clf = LogisticRegression(C=1e4, max_iter=1000).fit(scores[:, None], y, sample_weight=w)
    return float(clf.coef_[0, 0]), float(clf.intercept_[0])


def _best_threshold(
    p: np.ndarray, y: np.ndarray, target: str, w: np.ndarray | None = None
) -> float:
    """The threshold on one label's probabilities that meets ``target`` ("f1", or
    "precision=x" at the most recall, or "recall=x" at the most precision), each image
    counting its weight ``w``."""
    if w is not None:  # an image of weight 0 is not there; weights are relative
        p, y, w = p[w > 0], y[w > 0], w[w > 0]
        w = w / w.mean() if len(w) else w
    w = np.ones(len(y)) if w is None else w
    if (w * y).sum() == 0:
        return 1.0  # never seen positive: predict it only when certain
    order = np.argsort(-p, kind="stable")
    ps, ys, ws = p[order], y[order], w[order]
    tp = np.cumsum(ws * ys)
    k = np.cumsum(ws)
    positives = tp[-1]
    last = np.r_[ps[1:] != ps[:-1], True]  # thresholds between distinct values only
    precision = np.divide(tp, k, out=np.zeros(len(k)), where=k > 0)
    recall = tp / positives
    if target == "f1":
        score = np.where(last, 2 * tp / (k + positives), -1.0)
    else:
        what, value = target.split("=")
        goal = float(value)
        ok = last & ((precision if what == "precision" else recall) >= goal)
        if not ok.any():
            ok = last & (precision == precision[last].max())
        score = np.where(ok, recall if what == "precision" else precision, -1.0)
        score = score + 1e-9 * (k if what == "precision" else -k)  # ties: more recall
    i = int(np.argmax(score))
    below = ps[i + 1] if i + 1 < len(ps) else 0.0
    return float((ps[i] + below) / 2)


def _part(w: np.ndarray | None, rows: Any) -> np.ndarray | None:
    return None if w is None else w[rows]


def _mean_log_loss(scores: np.ndarray, M: np.ndarray, w: np.ndarray | None) -> float:
    """The mean over labels of each one's log loss of ``sigmoid(scores)``."""
    return float(np.mean([_log_loss(sigmoid(scores[:, j]), M[:, j], w) for j in range(M.shape[1])]))


def _crossfit_C(
    per_C: list[np.ndarray], M: np.ndarray, w: np.ndarray | None, random_state: int | None
) -> np.ndarray:
    """Out-of-fold scores with each half of the images (the halves of
    :func:`crossfit_labels`) at the C the other half's mean log loss chose: the C search
    is a choice too, so the held-out figures must not be judged on the images it was made
    on."""
    half = np.random.default_rng(random_state).permutation(len(M)) % 2 == 0
    held = np.empty(M.shape, np.float64)
    for part in (half, ~half):
        other = ~part if (~part).any() else part
        losses = [_mean_log_loss(s[other], M[other], _part(w, other)) for s in per_C]
        held[part] = per_C[int(np.argmin(losses))][part]
    return held


def crossfit_labels(
    scores: np.ndarray,
    M: np.ndarray,
    w: np.ndarray | None,
    target: str,
    random_state: int | None = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Held-out probabilities and predicted labels from held-out ``scores`` (log odds):
    the images split in two random halves, each half calibrated (Platt) and thresholded
    (for ``target``) per label by what the other half's scores chose."""
    half = np.random.default_rng(random_state).permutation(len(M)) % 2 == 0
    proba, labels = np.empty(M.shape), np.zeros(M.shape, np.int8)
    for part in (half, ~half):
        other = ~part
        wo = _part(w, other)
        for j in range(M.shape[1]):
            a, c = platt_scaling(scores[other, j], M[other, j], wo) if other.any() else (1.0, 0.0)
            proba[part, j] = sigmoid(a * scores[part, j] + c)
            chosen = (
                _best_threshold(sigmoid(a * scores[other, j] + c), M[other, j], target, wo)
                if other.any()
                else 0.5
            )
            labels[part, j] = proba[part, j] >= chosen
    return proba, labels


def is_multilabel_target(y: Any) -> bool:
    """Whether ``y`` gives several labels per image: an indicator matrix of two columns or
    more, or one collection (list, tuple, set) of labels per image."""
    if _is_matrix(y):
        return np.asarray(y).shape[1] >= 2
    if isinstance(y, (str, bytes)) or not hasattr(y, "__len__") or not len(y):
        return False
    first = next(iter(y))  # by position: a pandas Series' index need not hold 0
    return isinstance(first, (list, tuple, set, frozenset, np.ndarray))


def choose_thresholds(
    P: np.ndarray, Y: np.ndarray, target: str = "f1", sample_weight: np.ndarray | None = None
) -> np.ndarray:
    """One threshold per label on held-out probabilities ``P`` for targets ``Y``."""
    return np.array(
        [_best_threshold(P[:, j], Y[:, j], target, sample_weight) for j in range(Y.shape[1])]
    )


class MultiLabelProbe(ForwardsFeatureParams, ClassifierMixin, BaseEstimator):
    """Multi-label image classifier: pretrained features -> StandardScaler -> one logistic
    regression per label, calibrated per label, with a threshold per label.

    Parameters
    ----------
    backbone, weights, image_size, crop, pooling, flip_average
        Passed to :class:`PretrainedFeatures`: which features.
    batch_size, device, n_workers, cache_dir, on_error, engine
        Passed to :class:`PretrainedFeatures`: how they are computed.
    Cs : sequence of float, optional
        Inverse regularisation strengths to try (one for every label); default
        :data:`MULTILABEL_CS`.
    cv : int, default=5
        Folds (shuffled) for choosing C, calibrating and choosing the thresholds.
    max_iter : int, default=1000
    threshold_for : str, default="f1"
        What each label's threshold maximises on the held-out probabilities: ``"f1"``, or
        ``"precision=0.9"`` (the most recall at that precision) or ``"recall=0.9"``.
    random_state : int, default=0
    verbose : int, default=0

    Attributes
    ----------
    classes_ : ndarray of shape (n_labels,)
    features_, scaler_ : the fitted feature extractor and scaler
    coef_ : ndarray of shape (n_labels, n_features)
    intercept_, calibration_slope_, calibration_offset_, thresholds_ : ndarray (n_labels,)
    C_ : float
    cv_results_ : dict
        ``C`` and ``mean_log_loss`` (mean over labels and folds) for each value tried.
    oof_proba_, heldout_proba_ : ndarray of shape (n_samples, n_labels)
        Calibrated out-of-fold probabilities (the held-out estimate: each label's
        calibration is cross-fitted between two halves of the images).
    heldout_labels_ : ndarray of shape (n_samples, n_labels)
        The held-out predicted labels (0/1; -1 for an unreadable image): each half
        thresholded as the other half's probabilities chose.
    heldout_method_ : str
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
        "cv": [Interval(Integral, 2, None)],
        "max_iter": [Interval(Integral, 1, None)],
        "threshold_for": [Predicate(valid_threshold_target, THRESHOLD_TARGETS)],
        "random_state": ["random_state", None],
    }

    def __init__(
        self,
        backbone: str = DEFAULT_BACKBONE,
        *,
        weights: str | os.PathLike[str] | None = "pretrained",
        image_size: int | None = None,
        crop: str = "auto",
        pooling: str = "auto",
        flip_average: bool = True,
        Cs: tuple[float, ...] | list[float] | None = None,
        cv: int = 5,
        max_iter: int = 1000,
        threshold_for: str = "f1",
        batch_size: int = 64,
        device: str = "auto",
        n_workers: int | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        on_error: str = "raise",
        engine: str = "auto",
        random_state: int | None = 0,
        verbose: int = 0,
    ) -> None:
        self.backbone = backbone
        self.weights = weights
        self.image_size = image_size
        self.crop = crop
        self.pooling = pooling
        self.flip_average = flip_average
        self.Cs = Cs
        self.cv = cv
        self.max_iter = max_iter
        self.threshold_for = threshold_for
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
        params = PretrainedFeatures().get_params()
        return PretrainedFeatures(**{k: getattr(self, k) for k in params})

    def fit(self, X: object, Y: object, sample_weight: object = None) -> MultiLabelProbe:
        """Compute features, choose ``C`` by cross-validation, calibrate each label and
        choose its threshold on the out-of-fold probabilities, refit on everything.
        ``sample_weight``: an image of weight 2 counts as that image twice in every one
        of these steps; one of weight 0 is left out."""
        self._validate_params()
        n = len(check_images(X))
        classes, M = check_multilabel(Y, n)
        w = check_sample_weight(sample_weight, n)
        features = self._make_features().fit(X)
        F, self.skipped_ = features.extract(X)
        ok = ~np.isnan(F).any(axis=1) & (True if w is None else w > 0)
        if ok.sum() < self.cv:
            what = "readable images" if w is None else "readable images of weight above 0"
            raise DataError(f"{int(ok.sum())} {what}; cv={self.cv} needs at least that")
        with one_blas_thread():
            self._fit_head(F[ok], M[ok], np.flatnonzero(ok), len(F), None if w is None else w[ok])
        self.classes_, self.features_, self.n_features_in_ = classes, features, F.shape[1]
        return self

    def _fit_head(
        self, F: np.ndarray, M: np.ndarray, rows: np.ndarray, n: int, w: np.ndarray | None
    ) -> None:
        scaler = StandardScaler().fit(F, sample_weight=w)
        Z = scaler.transform(F)
        folds = list(KFold(self.cv, shuffle=True, random_state=self.random_state).split(Z))
        Cs = MULTILABEL_CS if self.Cs is None else tuple(float(c) for c in self.Cs)
        results, per_C = [], []
        for C in Cs:
            scores = np.empty(M.shape, np.float64)
            for train, test in folds:
                coef, b = _fit_all(Z[train], M[train], C, self.max_iter, _part(w, train))
                scores[test] = Z[test] @ coef.T + b
            results.append({"C": C, "mean_log_loss": _mean_log_loss(scores, M, w)})
            per_C.append(scores)
        best = int(np.argmin([r["mean_log_loss"] for r in results]))
        self.C_, oof = Cs[best], per_C[best]
        self.cv_results_ = {"C": [r["C"] for r in results],
                            "mean_log_loss": [r["mean_log_loss"] for r in results]}  # fmt: skip
        platt = [platt_scaling(oof[:, j], M[:, j], w) for j in range(M.shape[1])]
        self.calibration_slope_ = np.array([a for a, _ in platt])
        self.calibration_offset_ = np.array([c for _, c in platt])
        oof_p = sigmoid(oof * self.calibration_slope_ + self.calibration_offset_)
        self.thresholds_ = choose_thresholds(oof_p, M, self.threshold_for, w)
        self.scaler_ = scaler
        self.coef_, self.intercept_ = _fit_all(Z, M, self.C_, self.max_iter, w)
        self.oof_proba_ = np.full((n, M.shape[1]), np.nan)
        self.oof_proba_[rows] = oof_p
        held = _crossfit_C(per_C, M, w, self.random_state)  # C chosen by the other half too
        proba, labels = crossfit_labels(held, M, w, self.threshold_for, self.random_state)
        self.heldout_proba_ = np.full((n, M.shape[1]), np.nan)
        self.heldout_proba_[rows] = proba
        self.heldout_labels_ = np.full((n, M.shape[1]), -1, np.int8)
        self.heldout_labels_[rows] = labels
        self.heldout_method_ = (
            f"{self.cv}-fold out-of-fold probabilities (each half's C among {len(Cs)}, "
            "calibration and thresholds chosen by the other half: cross-fitted)"
        )

    @classmethod
    def from_fitted(
        cls,
        features: PretrainedFeatures,
        classes: np.ndarray,
        scaler: Any,
        linear: tuple[np.ndarray, np.ndarray],
        calibrated: tuple[np.ndarray, np.ndarray, np.ndarray],
        *,
        C: float,
        cv_results: dict[str, Any] | None = None,
        **params: Any,
    ) -> MultiLabelProbe:
        """A fitted probe from its parts (what a model file holds): the feature extractor,
        the labels, the fitted scaler, each label's coefficients and intercept
        (``linear``), and its calibration slope, offset and threshold (``calibrated``)."""
        model = cls(**params)
        model.features_, model.classes_, model.scaler_ = features, classes, scaler
        model.coef_, model.intercept_ = linear
        model.calibration_slope_, model.calibration_offset_, model.thresholds_ = calibrated
        model.C_, model.cv_results_, model.skipped_ = C, cv_results or {}, []
        model.n_features_in_ = model.coef_.shape[1]
        return model

    def decision_function_features(self, F: np.ndarray) -> np.ndarray:
        """Calibrated log odds ``(n, n_labels)`` from precomputed features."""
        check_is_fitted(self, "coef_")
        z = self.scaler_.transform(F) @ self.coef_.T + self.intercept_
        return np.asarray(z * self.calibration_slope_ + self.calibration_offset_)

    def predict_proba_features(self, F: np.ndarray) -> np.ndarray:
        """Each label's calibrated probability ``(n, n_labels)`` from features."""
        return sigmoid(self.decision_function_features(F))

    def predict_proba(self, X: object) -> np.ndarray:
        """Each label's calibrated probability ``(n_samples, n_labels)``, columns in
        ``classes_`` order (they need not sum to 1)."""
        check_is_fitted(self, "coef_")
        return self.predict_proba_features(self.features_.transform(X))

    def predict(self, X: object) -> np.ndarray:
        """The indicator matrix ``(n_samples, n_labels)``: 1 where a label's probability
        reaches its threshold."""
        return (self.predict_proba(X) >= self.thresholds_).astype(np.int8)

    def score(self, X: object, Y: object, sample_weight: object = None) -> float:
        """Macro-averaged F1 of :meth:`predict` against ``Y`` (weighted by
        ``sample_weight``)."""
        from sklearn.metrics import f1_score

        n = len(check_images(X))
        _, M = check_multilabel(Y, n, self.classes_)
        w = check_sample_weight(sample_weight, n)
        return float(
            f1_score(M, self.predict(X), average="macro", zero_division=0, sample_weight=w)
        )

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.target_tags.multi_output = True
        return tags
