"""The linear probe: frozen features + ``StandardScaler`` + ``LogisticRegression``, with the
regularisation strength ``C`` chosen by cross-validation on the features, refit on all the
training images, and calibrated by temperature scaling on the out-of-fold scores."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from numbers import Integral
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import check_is_fitted

from tlearn._validation import (
    Interval,
    Options,
    Predicate,
    check_labels,
    check_sample_weight,
    encode_class_weight,
    validate_params,
)
from tlearn.backbones import DEFAULT_BACKBONE
from tlearn.calibration import (
    crossfit_softmax,
    expected_calibration_error,
    fit_temperature,
    softmax,
)
from tlearn.data.loader import check_images
from tlearn.data.targets import check_target_kind
from tlearn.exceptions import DataError
from tlearn.features import ForwardsFeatureParams, PretrainedFeatures
from tlearn.runtime import resolve_device

__all__ = [
    "DEFAULT_CS",
    "LinearProbe",
    "ScoresNamedTargets",
    "TunedHead",
    "check_sample_weight",
    "make_probe",
    "tune_block_heads",
    "tune_linear_head",
]

#: The default sweep: 13 values, log-spaced from 1e-4 to 1e2.
DEFAULT_CS = tuple(float(c) for c in np.logspace(-4, 2, 13))
#: Above this many training images, out-of-fold scores come from one 20% hold-out.
HOLDOUT_ABOVE = 20_000
#: C is searched on a stratified sample of at most this many images.
SEARCH_SAMPLES = 5_000
#: Folds of nested cross-validation's inner search (each outer fold's C): 3 folds cost
#: half of 5 and choose the same C but for noise (measured in benchmarks/honest.py).
INNER_FOLDS = 3


@dataclass
class TunedHead:
    """A logistic-regression head tuned on features: the scaler and classifier refit on all
    the images at the chosen ``C``, the search's results, the temperature that calibrates
    it, and the out-of-fold scores it was calibrated on (``None`` rows left out of them).
    ``honest`` marks the out-of-fold rows whose scores come from a ``C`` chosen without
    them (nested cross-validation, or rows outside the search's sample), and ``estimate``
    says in one line how they were held out."""

    scaler: StandardScaler
    classifier: LogisticRegression
    C: float | tuple[float, ...]
    cv_results: dict[str, Any]
    temperature: float
    oof_scores: np.ndarray | None
    oof_index: np.ndarray | None
    calibration: dict[str, float] = field(default_factory=dict)
    honest: np.ndarray | None = None
    estimate: str = ""


def one_blas_thread() -> Any:
    """A context in which BLAS runs on one thread: the logistic regressions of the C search
    and the out-of-fold fits are many small solves, where BLAS's threads cost more than
    they give (2 cores: 600 images x 1,752 features, C search and out-of-fold scores 37 s
    -> 6 s; 20,000 images 186 s -> 69 s; the same C and scores). The limit is process-wide
    while it lasts (threadpoolctl), so only fitting uses it."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


def _too_few(counts: np.ndarray, what: str) -> DataError:
    return DataError(
        f"too few images to {what}: the smallest class has {counts.min()} image(s); add "
        "images (at least 2 per class, 5 for 5-fold) or remove the class; in Python a single "
        "C without calibration fits without holding images out (LinearProbe(Cs=[1.0], "
        "calibrate=False)), with no held-out estimate"
    )


def _splitter(cv: Any, n_samples: int, counts: np.ndarray, random_state: int | None) -> Any:
    """k-fold, stratified and shuffled; a single stratified 20% hold-out above
    :data:`HOLDOUT_ABOVE` images, where k-fold costs more than it adds."""
    from sklearn.model_selection import StratifiedKFold, StratifiedShuffleSplit

    if not isinstance(cv, (int, np.integer)):
        return cv
    if counts.min() < 2:
        raise _too_few(counts, "hold images out")
    if n_samples > HOLDOUT_ABOVE:
        return StratifiedShuffleSplit(n_splits=1, test_size=0.2, random_state=random_state)
    folds = int(min(cv, counts.min()))
    return StratifiedKFold(n_splits=folds, shuffle=True, random_state=random_state)


def _outer_splits(cv: Any, y: np.ndarray, random_state: Any) -> list[tuple[Any, Any]]:
    """The splits the held-out scores come from (:func:`_splitter`), made once: every
    step that should use the same folds is given these."""
    splitter = _splitter(cv, len(y), np.bincount(y), random_state)
    return [(tr, te) for tr, te in splitter.split(np.zeros((len(y), 1)), y)]


def _subset_cv(cv: Any, folds: int) -> Any:
    """The folds of a search on a subset of the rows (an outer fold's training images,
    or the search's sample): a splitter of the caller's may be bound to the rows it was
    made for (``PredefinedSplit``, ``LeaveOneOut``'s count), so a subset gets stratified
    k-fold, with at most ``folds`` folds, or ``cv`` folds when it is a smaller int."""
    return min(cv, folds) if isinstance(cv, (int, np.integer)) else folds


def _weights(w: np.ndarray | None, rows: Any) -> dict[str, Any]:
    """The pipeline's fit parameters for ``rows``: their sample weights, if any, for the
    scaler and the classifier (an image of weight 2 counts as that image twice)."""
    if w is None:
        return {}
    taken = _weighing(w[rows], "the images of a fit")
    return {"scaler__sample_weight": taken, "clf__sample_weight": taken}


def _weighing(w: np.ndarray, what: str) -> np.ndarray:
    """``w`` when it weighs something, else a :class:`DataError` naming ``what``."""
    if not w.sum() > 0:
        raise DataError(
            f"{what} all weigh 0: too few images carry weight to hold images out; give "
            "weight to more images (of every class), or fit with fewer folds (cv)"
        )
    return w


def _scores_at(
    pipe: Any,
    F: np.ndarray,
    y: np.ndarray,
    train: Any,
    test: Any,
    C: float,
    w: np.ndarray | None = None,
) -> Any:
    from sklearn.base import clone

    fitted = clone(pipe).set_params(clf__C=C).fit(F[train], y[train], **_weights(w, train))
    return fitted.decision_function(F[test])


def _assemble(index: list[np.ndarray], scores: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    order = np.concatenate(index)
    return np.concatenate(scores)[np.argsort(order)], np.sort(order)


def _search_C(
    pipe: Any,
    F: np.ndarray,
    y: np.ndarray,
    Cs: tuple[float, ...],
    cv: Any,
    random_state: int | None,
    n_jobs: int | None,
    w: np.ndarray | None = None,
) -> tuple[float, dict[str, Any]]:
    """``GridSearchCV`` over ``Cs`` on all of ``F``, scored by mean log loss across
    folds (``cv``: as :func:`_splitter` takes it, or a list of splits), without its
    machinery: each fold's scaler is fitted once for every ``C`` (the same numbers as a
    pipeline refit per ``C``; no warm start along the path: at large C, where the images
    are separable, it stops elsewhere and scores C differently), and the log loss counts
    every class, also one that a small fold holds none of (``neg_log_loss`` scored that
    fold NaN, and every C with it). On the doctor's 30-image folds GridSearchCV's own
    cost was a third of the search. Sample weights ``w`` weight each fold's fit and its
    held-out loss and accuracy."""
    from sklearn.utils.parallel import Parallel, delayed

    splitter = cv if isinstance(cv, list) else _splitter(cv, len(y), np.bincount(y), random_state)
    splits = splitter if isinstance(splitter, list) else list(splitter.split(F, y))
    grid = sorted(Cs)  # ascending: a tie goes to the smaller C, seen first
    folds = Parallel(n_jobs=n_jobs)(
        delayed(_fold_scores)(pipe, F, y, grid, (train, test), w) for train, test in splits
    )
    loss = np.array([[s[0] for s in fold] for fold in folds])  # folds x Cs
    accuracy = np.array([[s[1] for s in fold] for fold in folds])
    if np.isnan(loss).all():
        raise DataError("the C search's held-out images all weigh 0: give weight to more images")
    scored = ~np.isnan(loss[:, 0])  # folds whose held-out images weigh something
    loss, accuracy = loss[scored], accuracy[scored]
    results: dict[str, Any] = {
        "C": [float(c) for c in grid],
        "mean_log_loss": loss.mean(0).tolist(),
        "std_log_loss": loss.std(0).tolist(),
        "mean_accuracy": accuracy.mean(0).tolist(),
        "std_accuracy": accuracy.std(0).tolist(),
        "n_images": len(y),
    }
    return _best_C(results), results


def _fold_scores(
    pipe: Any,
    F: np.ndarray,
    y: np.ndarray,
    grid: list[float],
    fold: tuple[Any, Any],
    w: np.ndarray | None,
) -> list[tuple[float, float]]:
    """Log loss and accuracy on one fold's held-out rows at each ``C`` of ``grid``,
    weighted by ``w`` where given; NaN where the held-out rows weigh nothing (the fold
    then has no say in the choice)."""
    from sklearn.base import clone
    from sklearn.metrics import log_loss

    train, test = fold
    missing = np.setdiff1d(y[test], y[train])
    if len(missing):
        raise DataError(
            f"a fold of the C search has no training images of class index {missing[:5].tolist()}"
            ": every class needs images on the training side of every fold (use a stratified "
            "splitter, or more images of that class)"
        )
    fit_w = (
        None if w is None else _weighing(w[train], "the images of a training fold of the C search")
    )
    if w is not None and not w[test].sum() > 0:
        return [(float("nan"), float("nan"))] * len(grid)
    test_w = None if w is None else w[test]

    scaler = clone(pipe["scaler"]).fit(F[train], sample_weight=fit_w)
    A, B = scaler.transform(F[train]), scaler.transform(F[test])
    scores = []
    for C in grid:
        clf = clone(pipe["clf"]).set_params(C=C).fit(A, y[train], sample_weight=fit_w)
        proba = clf.predict_proba(B)
        correct = clf.classes_[proba.argmax(1)] == y[test]
        loss = log_loss(y[test], proba, labels=clf.classes_, sample_weight=test_w)
        scores.append((float(loss), float(np.average(correct, weights=test_w))))
    return scores


def _best_C(results: dict[str, Any]) -> float:
    losses = np.round(np.asarray(results["mean_log_loss"]), 6)
    return float(results["C"][int(np.argmin(losses))])


def _nested(
    pipe: Any, F: np.ndarray, y: np.ndarray, Cs: tuple[float, ...], cv: Any, options: Any
) -> tuple[float, dict[str, Any], np.ndarray, np.ndarray]:
    """Nested cross-validation: in each outer fold (``options``: the random state, the
    jobs, the outer splits and the sample weights or ``None``) ``C`` is searched on its
    training images alone (an inner stratified k-fold) and the held-out images are
    scored at that ``C``, so no score comes from a choice that saw its image. The
    model's own ``C`` minimises the inner searches' log loss averaged over the outer
    folds (every image took part in choosing it). Returns ``C``, the averaged results,
    and the out-of-fold scores and rows."""
    random_state, n_jobs, outer, w = options
    runs, index, scores = [], [], []
    inner = _subset_cv(cv, INNER_FOLDS)
    for train, test in outer:
        w_train = None if w is None else w[train]
        C_fold, results = _search_C(
            pipe, F[train], y[train], Cs, inner, random_state, n_jobs, w_train
        )
        runs.append(results)
        index.append(test)
        scores.append(_scores_at(pipe, F, y, train, test, C_fold, w))
    merged: dict[str, Any] = {"C": runs[0]["C"], "n_images": len(y), "nested": True,
                              "fold_C": [_best_C(r) for r in runs]}  # fmt: skip
    for key in ("mean_log_loss", "mean_accuracy"):
        merged[key] = np.mean([r[key] for r in runs], axis=0).tolist()
        merged["std" + key[4:]] = np.std([r[key] for r in runs], axis=0).tolist()
    oof, rows = _assemble(index, scores)
    return _best_C(merged), merged, oof, rows


def _oof_at(
    pipe: Any,
    F: np.ndarray,
    y: np.ndarray,
    C: float,
    outer: list[tuple[Any, Any]],
    w: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold scores at one ``C`` on the ``outer`` splits, and their rows."""
    return _assemble(
        [te for _, te in outer], [_scores_at(pipe, F, y, tr, te, C, w) for tr, te in outer]
    )


def _can_nest(outer: list[tuple[Any, Any]], y: np.ndarray) -> bool:
    """Whether every outer fold's training images hold 2 or more of every class (an
    inner stratified split needs them; with k-fold: 3 or more images of each class)."""
    k = int(y.max()) + 1
    return all(int(np.bincount(y[train], minlength=k).min()) >= 2 for train, _ in outer)


def _stratified_sample(pool: np.ndarray, y: np.ndarray, size: int, random_state: Any) -> np.ndarray:
    """About ``size`` rows of ``pool``, each class in proportion but with at least 2 of
    it (or all it has), so that the search's stratified folds can hold every class out.
    (scikit-learn's stratified sample refused pools that leave fewer rows out than there
    are classes, and could keep one image of a class of 2.)"""
    from sklearn.utils import check_random_state

    rng = check_random_state(random_state)
    chosen = []
    for c in np.unique(y[pool]):
        members = rng.permutation(pool[y[pool] == c])
        share = int(round(len(members) * size / len(pool)))
        chosen.append(members[: max(share, min(2, len(members)))])
    return np.sort(np.concatenate(chosen))


def _sampled_search(
    pipe: Any, F: np.ndarray, y: np.ndarray, Cs: tuple[float, ...], cv: Any, options: Any
) -> tuple[float, dict[str, Any], np.ndarray, np.ndarray, np.ndarray]:
    """Above :data:`SEARCH_SAMPLES` images: ``C`` is searched on a stratified sample of at
    most that many (the best C barely moves with more images, and each fit costs time in
    proportion), drawn from the training side of the hold-out when there is one; the
    out-of-fold scores at that ``C`` are honest on every image outside the sample. With
    k-fold the sample takes at most half of the images, so that the other half (not one
    image, at SEARCH_SAMPLES + 1) is left for the estimate."""
    random_state, n_jobs, outer, w = options
    pool = outer[0][0] if len(outer) == 1 else np.arange(len(y))
    size = SEARCH_SAMPLES if len(outer) == 1 else min(SEARCH_SAMPLES, len(y) // 2)
    searched = pool
    if len(pool) > size:
        searched = _stratified_sample(pool, y, size, random_state)
    search_cv = _subset_cv(cv, 5)
    w_searched = None if w is None else w[searched]
    C, results = _search_C(
        pipe, F[searched], y[searched], Cs, search_cv, random_state, n_jobs, w_searched
    )
    oof, rows = _oof_at(pipe, F, y, C, outer, w)
    return C, results, oof, rows, ~np.isin(rows, searched)


def tune_linear_head(
    F: np.ndarray,
    y: np.ndarray,
    *,
    Cs: tuple[float, ...] = DEFAULT_CS,
    cv: Any = 5,
    max_iter: int = 1000,
    calibrate: bool = True,
    random_state: int | None = 0,
    n_jobs: int | None = None,
    refit: bool = True,
    class_weight: Any = None,
    sample_weight: np.ndarray | None = None,
) -> TunedHead:
    """Choose ``C`` for StandardScaler + LogisticRegression on features ``F``, scored by
    mean log loss across stratified folds (it separates values of C that accuracy ties;
    ties left fall to the stronger regularisation), take out-of-fold scores, fit the
    temperature on them, and refit on everything (with ``refit=False`` the scaler and
    classifier come back unfitted, for a caller that wants only ``C`` and the scores).
    ``y`` holds class indices ``0..n_classes-1``.

    Up to :data:`SEARCH_SAMPLES` images the out-of-fold scores come from nested
    cross-validation (:func:`_nested`), so they are an honest estimate; above, from k-fold
    (one 20% hold-out above :data:`HOLDOUT_ABOVE`) at a C searched on a sample, honest on
    the images outside it. Without calibration there are no out-of-fold scores: C is
    searched once (or simply taken, when ``Cs`` has one value). ``sample_weight`` weights
    every fit and every held-out loss and accuracy of the search (not the temperature,
    which is fitted on the images as they are)."""
    from sklearn.pipeline import Pipeline

    clf = LogisticRegression(max_iter=max_iter, class_weight=class_weight)
    pipe = Pipeline([("scaler", StandardScaler()), ("clf", clf)])
    oof = index = honest = None
    estimate = ""
    w = check_sample_weight(sample_weight, len(y))
    with warnings.catch_warnings(), one_blas_thread():
        warnings.simplefilter("ignore", ConvergenceWarning)
        if not calibrate:
            C, results = float(Cs[0]), {"C": [float(Cs[0])]}
            if len(Cs) > 1:
                C, results = _search_C(pipe, F, y, Cs, cv, random_state, n_jobs, w)
        else:
            outer = _outer_splits(cv, y, random_state)
            C, results, oof, index, honest, kind = _heldout_scores(
                pipe, F, y, Cs, cv, (random_state, n_jobs, outer, w)
            )
            estimate = _describe_estimate(cv, outer, len(y), kind)
        pipe.set_params(clf__C=C)
        if refit:
            pipe.fit(F, y, **_weights(w, slice(None)))
    temperature, calibration = _calibrate(oof, index, y)
    return TunedHead(pipe["scaler"], pipe["clf"], C, results, temperature, oof, index,
                     calibration, honest, estimate)  # fmt: skip


def _heldout_scores(
    pipe: Any, F: np.ndarray, y: np.ndarray, Cs: tuple[float, ...], cv: Any, options: Any
) -> tuple[float, dict[str, Any], np.ndarray, np.ndarray, np.ndarray, str]:
    """``C``, the search's results, the out-of-fold scores on the outer splits of
    ``options`` (random state, jobs, splits, sample weights), their rows, which rows are
    honest, and what kind of estimate that is (for :func:`_describe_estimate`)."""
    random_state, n_jobs, outer, w = options
    if len(Cs) == 1:  # no choice to hide from the scores
        C, results = float(Cs[0]), {"C": [float(Cs[0])]}
        oof, index = _oof_at(pipe, F, y, C, outer, w)
        return C, results, oof, index, np.ones(len(index), bool), "given"
    if len(y) <= SEARCH_SAMPLES and _can_nest(outer, y):
        C, results, oof, index = _nested(pipe, F, y, Cs, cv, options)
        return C, results, oof, index, np.ones(len(index), bool), "nested"
    if len(y) <= SEARCH_SAMPLES:  # too few images per class to nest: say so
        C, results = _search_C(pipe, F, y, Cs, outer, random_state, n_jobs, w)
        oof, index = _oof_at(pipe, F, y, C, outer, w)
        return C, results, oof, index, np.zeros(len(index), bool), "same folds"
    C, results, oof, index, honest = _sampled_search(pipe, F, y, Cs, cv, options)
    return C, results, oof, index, honest, f"outside {int(honest.sum())}"


def _describe_estimate(cv: Any, outer: list[tuple[Any, Any]], n: int, kind: str) -> str:
    """One line: how the held-out scores were kept from every choice. ``kind``: "nested",
    "given" (one C), "same folds" (too few images to nest) or "outside N" (the N images
    outside the search's sample); ``outer``: the splits they come from."""
    if not isinstance(cv, (int, np.integer)):
        how = f"cross-validation on the given cv's {len(outer)} split(s)"
    elif n > HOLDOUT_ABOVE:
        how = "one 20% hold-out"
    else:  # the folds made: fewer than cv when a class has fewer images
        how = f"{len(outer)}-fold cross-validation"
    if kind.startswith("outside"):
        return f"{how}, on the {kind.split()[1]} images that did not choose C"
    return {
        "nested": f"nested {how} (C chosen inside each fold's training images)",
        "given": f"{how} (C given, not chosen)",
        "same folds": f"{how} on the folds that chose C (optimistic: nesting needs 3 or "
        "more images per class)",
    }[kind]


def _calibrate(
    oof: np.ndarray | None, index: np.ndarray | None, y: np.ndarray
) -> tuple[float, dict[str, float]]:
    """The temperature fitted on out-of-fold scores, and what it did to them."""
    if oof is None or index is None:
        return 1.0, {}
    temperature = fit_temperature(oof, y[index])
    return temperature, {
        "temperature": temperature,
        "oof_ece_before": expected_calibration_error(softmax(oof), y[index]),
        "oof_ece_after": expected_calibration_error(softmax(oof, temperature), y[index]),
        "oof_accuracy": float((softmax(oof).argmax(1) == y[index]).mean()),
        "n_oof": len(index),
    }


def tune_block_heads(F: np.ndarray, y: np.ndarray, blocks: list[int], **options: Any) -> TunedHead:
    """:func:`tune_linear_head` on each block of columns of ``F`` (one per backbone of an
    ensemble, ``blocks`` their widths), in parallel threads, combined into one linear head
    whose scores are the mean of the blocks' calibrated scores (a geometric mean of their
    probabilities), with a temperature fitted on the mean of their out-of-fold scores.
    ``C`` is then the tuple of the blocks' values. One block: :func:`tune_linear_head`."""
    if len(blocks) == 1:
        return tune_linear_head(F, y, **options)
    from concurrent.futures import ThreadPoolExecutor

    edges = np.cumsum([0, *blocks])
    if edges[-1] != F.shape[1]:
        raise ValueError(f"blocks {blocks} do not cover the {F.shape[1]} features")
    # the blocks' scores are averaged row by row, so every block must hold out the same
    # rows: one seed for all (None or a shared RandomState drew other splits per block)
    from sklearn.utils import check_random_state

    seed = options.get("random_state", 0)
    if not isinstance(seed, (int, np.integer)):
        options = {**options, "random_state": int(check_random_state(seed).randint(2**31))}
    # one outer limit and filter for all threads: each thread's own enter and exit then
    # restore what the outer ones set, and these restore the caller's state at the end
    with one_blas_thread(), warnings.catch_warnings(), ThreadPoolExecutor(2) as pool:
        heads = list(
            pool.map(
                lambda i: tune_linear_head(F[:, edges[i] : edges[i + 1]], y, **options),
                range(len(blocks)),
            )  # fmt: skip
        )
    return _combine(heads, y, int(options.get("max_iter", 1000)))


def nominal_C(C: float | tuple[float, ...]) -> float:
    """One ``C`` for the combined classifier of an ensemble (the geometric mean of its
    blocks' values; nothing is fitted with it); a single value as it is."""
    return float(C) if isinstance(C, (int, float)) else float(np.exp(np.mean(np.log(C))))


def _combine(heads: list[TunedHead], y: np.ndarray, max_iter: int) -> TunedHead:
    """One StandardScaler + LogisticRegression equal to the mean of the heads' scores,
    each divided by its temperature."""
    k = len(heads)
    Cs = tuple(float(h.C) for h in heads)  # type: ignore[arg-type]
    scaler = StandardScaler()
    clf = LogisticRegression(C=nominal_C(Cs), max_iter=max_iter)
    if hasattr(heads[0].classifier, "coef_"):
        for name in ("mean_", "scale_", "var_"):
            setattr(scaler, name, np.concatenate([getattr(h.scaler, name) for h in heads]))
        scaler.n_features_in_ = len(scaler.mean_)
        scaler.n_samples_seen_ = heads[0].scaler.n_samples_seen_
        clf.coef_ = np.hstack([h.classifier.coef_ / h.temperature for h in heads]) / k
        clf.intercept_ = sum(h.classifier.intercept_ / h.temperature for h in heads) / k
        clf.classes_, clf.n_features_in_ = heads[0].classifier.classes_, clf.coef_.shape[1]
        clf.n_iter_ = np.max([h.classifier.n_iter_ for h in heads], axis=0)
    oof, index = None, heads[0].oof_index
    scores = [(h.oof_scores, h.oof_index, h.temperature) for h in heads]
    if all(z is not None and i is not None for z, i, _ in scores):
        if any(not np.array_equal(i, index) for _, i, _ in scores):  # type: ignore[arg-type]
            raise RuntimeError("the blocks' out-of-fold rows differ")  # same y, same splits
        oof = np.mean([np.asarray(z) / t for z, _, t in scores], axis=0)
    temperature, calibration = _calibrate(oof, index, y)
    results = {"blocks": [h.cv_results for h in heads]}
    honest = None  # the blocks share y and the splits: the same rows are honest in each
    if all(h.honest is not None for h in heads):
        honest = np.logical_and.reduce([np.asarray(h.honest) for h in heads])
    return TunedHead(scaler, clf, Cs, results, temperature, oof, index, calibration, honest,
                     heads[0].estimate)  # fmt: skip


class ScoresNamedTargets(ClassifierMixin):
    """``score`` that refuses targets of the other convention (class indices for a model
    of names, or names for one of indices) instead of counting every image wrong."""

    def score(self, X: object, y: object, sample_weight: object = None) -> float:
        check_target_kind(self.classes_, y)
        return float(super().score(X, y, sample_weight))


class LinearProbe(ForwardsFeatureParams, ScoresNamedTargets, BaseEstimator):
    """Image classifier: pretrained features -> StandardScaler -> LogisticRegression, with
    ``C`` chosen by cross-validation and calibrated probabilities.

    With several backbones (``backbone="efficientnet_lite1+efficientnet_lite2"``) each
    one's features get their own head, tuned as below, and the probe's scores are the mean
    of theirs (:func:`tune_block_heads`), calibrated again.

    ``fit`` computes the features once, chooses ``C`` from ``Cs`` by stratified k-fold
    cross-validation on them (mean log loss across folds; above 20,000 images a single 20%
    hold-out), refits the scaler and the classifier on all training images with that ``C``,
    and fits a temperature on the out-of-fold scores so that the probabilities are
    calibrated (:mod:`tlearn.calibration`).

    Parameters
    ----------
    backbone, weights, image_size, crop, pooling, flip_average
        Passed to :class:`PretrainedFeatures`: which features.
    batch_size, device, n_workers, cache_dir, on_error, engine
        Passed to :class:`PretrainedFeatures`: how they are computed. With
        ``on_error="skip"`` unreadable training images are left out (listed in ``skipped_``).
    Cs : sequence of float, optional
        Inverse regularisation strengths to try; default 13 values from 1e-4 to 1e2.
    cv : int or scikit-learn splitter, default=5
        Folds for choosing C (stratified, shuffled).
    max_iter : int, default=1000
        Iterations of the logistic regression's solver.
    calibrate : bool, default=True
        Fit a temperature on the out-of-fold scores (``False``: the raw probabilities).
    class_weight : "balanced", dict or None, default=None
        Weights of the classes in the logistic regression's loss, as scikit-learn's
        (``"balanced"``: inversely proportional to their counts; a dict: class label ->
        weight, 1 for a class left out). Weighting raises the recall of small classes at
        the cost of calibrated probabilities (they lean towards the small classes).
    random_state : int, default=0
        Seeds the folds.
    verbose : int, default=0
        Progress bars and messages.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
    features_ : PretrainedFeatures
    scaler_ : StandardScaler
    classifier_ : LogisticRegression
        Trained on class indices ``0..n_classes-1`` (``classes_`` maps them back).
    C_ : float, or tuple of float for an ensemble
    cv_results_ : dict
        ``C``, ``mean_log_loss``, ``std_log_loss``, ``mean_accuracy``, ``std_accuracy`` for
        each value tried (an ensemble: ``{"blocks": [...]}``, one such dict per backbone).
    temperature_ : float
        Divides the scores before the softmax (1.0 without calibration).
    calibration_ : dict
        ``temperature``, and the out-of-fold accuracy and expected calibration error before
        and after it.
    oof_proba_ : ndarray of shape (n_samples, n_classes)
        Calibrated out-of-fold probabilities of the training images (rows of NaN for
        images left out: unreadable, or outside the hold-out on large sets). Up to 5,000
        images they come from nested cross-validation: each fold's C is chosen on its own
        training images.
    heldout_proba_ : ndarray of shape (n_samples, n_classes)
        The honest estimate every model kind gives (:func:`tlearn.train` reports it): the
        out-of-fold probabilities of the images no choice has seen (C, and the temperature,
        which is cross-fitted between two halves of them); rows of NaN for the others.
        When a class has too few images (2) to keep any row from the choice of C, all
        the out-of-fold rows, and ``heldout_method_`` says the figure is optimistic.
    heldout_method_ : str
        How they were held out, in one line.
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
        "cv": [Interval(Integral, 2, None), Predicate(lambda v: hasattr(v, "split"), "a splitter")],
        "max_iter": [Interval(Integral, 1, None)],
        "calibrate": ["boolean"],
        "class_weight": [
            Options({"balanced"}),
            Predicate(lambda v: isinstance(v, dict), "a dict of class -> weight"),
            None,
        ],
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
        calibrate: bool = True,
        class_weight: str | dict[Any, float] | None = None,
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
        self.calibrate = calibrate
        self.class_weight = class_weight
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

    def fit(self, X: object, y: object, sample_weight: object = None) -> LinearProbe:
        """Compute features, choose ``C`` by cross-validation, refit on everything, and
        calibrate on the out-of-fold scores. ``sample_weight`` (one non-negative number per
        image) weights each image in every fit (the scaler's too: an image of weight 2
        counts as that image twice) and in the search's held-out loss."""
        self._validate_params()
        features = self._make_features()
        classes, y_enc = check_labels(y, len(check_images(X)))
        w = check_sample_weight(sample_weight, len(y_enc))
        features.fit(X)
        F, self.skipped_ = features.extract(X)
        ok = ~np.isnan(F).any(axis=1)
        if self.skipped_:
            _warn_left_out(self.skipped_, y_enc[ok], len(classes))
        head = tune_block_heads(
            F[ok],
            y_enc[ok],
            features.blocks_,
            Cs=DEFAULT_CS if self.Cs is None else tuple(float(c) for c in self.Cs),
            cv=self.cv,
            max_iter=self.max_iter,
            calibrate=self.calibrate,
            random_state=self.random_state,
            class_weight=encode_class_weight(self.class_weight, classes),
            sample_weight=None if w is None else _weighing(w[ok], "the readable images"),
        )
        self.classes_, self.features_ = classes, features
        self.scaler_, self.classifier_, self.C_ = head.scaler, head.classifier, head.C
        self.cv_results_, self.temperature_ = head.cv_results, head.temperature
        self.calibration_ = head.calibration
        self.oof_proba_ = np.full((len(F), len(classes)), np.nan)
        self.heldout_proba_ = np.full((len(F), len(classes)), np.nan)
        self.heldout_method_ = head.estimate
        if head.oof_scores is not None and head.oof_index is not None:
            rows = np.flatnonzero(ok)[head.oof_index]
            self.oof_proba_[rows] = softmax(head.oof_scores, head.temperature)
            assert head.honest is not None
            # where no row could be kept from the choice of C (too few images per class
            # to nest), the estimate is the out-of-fold one, and heldout_method_ says it
            # is optimistic: a small set still gets a figure, as it did before nesting
            honest = head.honest if head.honest.any() else np.ones_like(head.honest)
            self.heldout_proba_[rows[honest]] = crossfit_softmax(
                head.oof_scores[honest], y_enc[rows[honest]], self.random_state
            )
        self.n_features_in_ = F.shape[1]
        return self

    @classmethod
    def from_fitted(
        cls,
        features: PretrainedFeatures,
        classes: np.ndarray,
        scaler: Any,
        classifier: Any,
        *,
        C: Any,
        cv_results: dict[str, Any] | None = None,
        temperature: float = 1.0,
        calibration: dict[str, Any] | None = None,
        **params: Any,
    ) -> LinearProbe:
        """A fitted probe from its parts (what a model file holds): the feature extractor,
        the class labels, the fitted scaler and classifier (trained on class indices), the
        C chosen and its search, the temperature; ``params`` are the probe's own."""
        probe = cls(**params)
        probe.features_, probe.classes_ = features, classes
        probe.scaler_, probe.classifier_ = scaler, classifier
        probe.C_, probe.cv_results_ = C, cv_results or {}
        probe.skipped_, probe.n_features_in_ = [], classifier.n_features_in_
        probe.temperature_, probe.calibration_ = float(temperature), calibration or {}
        return probe

    def predict_proba_features(self, F: np.ndarray) -> np.ndarray:
        """Class probabilities ``(n, n_classes)`` from precomputed features."""
        check_is_fitted(self, "classifier_")
        scores = self.classifier_.decision_function(self.scaler_.transform(F))
        return softmax(scores, self.temperature_)

    def predict_proba(self, X: object) -> np.ndarray:
        """Calibrated class probabilities ``(n_samples, n_classes)``, columns in
        ``classes_`` order."""
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


def _warn_left_out(skipped: list[tuple[int, str, str]], y_kept: np.ndarray, n_classes: int) -> None:
    warnings.warn(
        f"{len(skipped)} unreadable training image(s) were left out: "
        + "; ".join(f"{p}: {r}" for _, p, r in skipped[:5]),
        UserWarning,
        stacklevel=3,
    )
    if len(np.unique(y_kept)) < n_classes:
        raise DataError(
            "after leaving out unreadable images, some classes have no images left; fix or "
            "replace the files listed above"
        )


def make_probe(backbone: str = DEFAULT_BACKBONE, **params: Any) -> LinearProbe:
    """Shorthand for :class:`LinearProbe` ``(backbone, **params)``."""
    return LinearProbe(backbone, **params)
