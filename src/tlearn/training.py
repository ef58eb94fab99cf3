"""What ``tlearn fit`` does, as a library function: load the data, fit the estimator,
evaluate it, and save it. The command line, a server, a Ray job or the dataset inspector all
call :func:`train`.

No image is thrown away. With separate test data the model is fitted on all the training
images and evaluated on the test data. Without it, the figure reported is the estimator's
own held-out estimate (the probe's out-of-fold predictions from choosing C; fine-tuning's
validation split), and the saved model has seen every image: the probe is refit on all of
them by construction, and fine-tuning is run again on all of them for the best number of
epochs. ``test_size`` still holds out a test split when asked for, and then refits.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tlearn._log import logger
from tlearn.data.targets import is_label_sets
from tlearn.exceptions import DataError
from tlearn.methods import METHODS, make_estimator

__all__ = [
    "METHODS",
    "TrainRequest",
    "TrainResult",
    "load_labelled",
    "make_estimator",
    "train",
]

#: Classes are imbalanced when the smallest has fewer images than this share of the
#: largest: then the loss weighs classes by inverse frequency and auto compares candidates
#: by balanced accuracy (unless ``class_weight`` is given).
IMBALANCE_RATIO = 0.2


@dataclass
class TrainResult:
    """What :func:`train` made: the fitted model, its report (on the test data, or on the
    held-out predictions), how it was evaluated, the images it could not read, and where it
    was saved."""

    model: Any
    report: Any
    evaluation: dict[str, Any]
    skipped: list[tuple[int, str, str]] = field(default_factory=list)
    path: str | None = None
    seconds: float = 0.0
    leaderboard: list[dict[str, Any]] = field(default_factory=list)


def load_labelled(
    source: str | os.PathLike[str], max_per_class: int | None = None, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """``(paths, labels)`` of a class-folder tree, a zip of one, or a CSV of path,label;
    a CSV of several labels per image (:func:`~tlearn.data.multilabel_sources.is_multilabel_csv`),
    or a folder whose Hugging Face ``metadata.jsonl``/``metadata.csv`` lists them, gives each
    image a tuple of labels (see :func:`is_multilabel`). A weight column is not read."""
    X, y, _, _ = _load(source, max_per_class, seed, weights=False)
    return X, y


def load_weighted(
    source: str | os.PathLike[str], max_per_class: int | None = None, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """:func:`load_labelled`'s ``(paths, labels)`` and the images' sample weights: a CSV's
    (or Hugging Face metadata's) ``weight`` column (:data:`~tlearn.data.sources.WEIGHT_COLUMNS`),
    else ``None``. Images of weight 0 are left out, before ``max_per_class`` samples."""
    X, y, w, _ = _load(source, max_per_class, seed, weights=True)
    return X, y, w


def _load(
    source: str | os.PathLike[str], max_per_class: int | None, seed: int, weights: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, int]:
    """``(paths, labels, weights, how many images of weight 0 were left out)``."""
    from tlearn.data import load_dataset, load_image_csv
    from tlearn.data import multilabel_sources as ml
    from tlearn.data.sources import subsample_per_class

    text, several = os.fspath(source), None
    is_csv = text.lower().endswith((".csv", ".tsv")) and os.path.isfile(text)
    if is_csv and ml.is_multilabel_csv(text):
        several = ml.load_multilabel_csv(text, read_weights=weights)
    elif os.path.isdir(text) and (metadata := ml.find_hf_metadata(text)) is not None:
        several = ml.load_hf_metadata(metadata, read_weights=weights)  # HF's imagefolder
    if several is not None:
        w = several.get("sample_weight") if weights else None
        rows = np.arange(len(several.target)) if w is None else np.flatnonzero(w > 0)
        keep = rows[_per_label_sample(several.target[rows], max_per_class, seed)]
        return (several.filenames[keep], _label_tuples(several.target[keep], several.target_names),
                None if w is None else w[keep], len(several.target) - len(rows))  # fmt: skip
    if is_csv and weights:
        data = load_image_csv(text, read_weights=True)
    else:
        data = load_dataset(source, max_per_class=max_per_class, random_state=seed)
    if data.target is None:
        raise DataError(
            f"{os.fspath(source)!r} has no labels: a CSV for fitting or evaluating needs a "
            "label column"
        )
    w, keep = data.get("sample_weight"), np.arange(len(data.target))
    if is_csv and weights:
        keep = keep if w is None else np.flatnonzero(w > 0)
        if max_per_class is not None:
            keep = keep[subsample_per_class(data.target[keep], max_per_class, seed)]
    names = np.asarray(data.target_names, dtype=object)
    dropped = 0 if w is None else int((w == 0).sum())
    return (np.asarray(data.filenames, dtype=object)[keep], names[data.target[keep]],
            None if w is None else w[keep], dropped)  # fmt: skip


def _label_tuples(M: np.ndarray, names: list[Any]) -> np.ndarray:
    """An indicator matrix as one tuple of label names per image (an object array)."""
    y = np.empty(len(M), dtype=object)
    for i, row in enumerate(M):
        y[i] = tuple(names[j] for j in np.flatnonzero(row))
    return y


def _per_label_sample(M: np.ndarray, max_per_class: int | None, seed: int) -> np.ndarray:
    """Rows of a multi-label set kept by ``max_per_class``: in a shuffled order, an image is
    kept while one of its labels has fewer than that many (images without a label: while
    fewer than that many of them are kept)."""
    if max_per_class is None:
        return np.arange(len(M))
    counts, none, keep = np.zeros(M.shape[1], np.int64), 0, []
    for i in np.random.default_rng(seed).permutation(len(M)):
        labels = np.flatnonzero(M[i])
        if (len(labels) and (counts[labels] < max_per_class).any()) or (
            not len(labels) and none < max_per_class
        ):
            keep.append(i)
            counts[labels] += 1
            none += not len(labels)
    return np.sort(np.asarray(keep, dtype=np.int64))


def is_multilabel(y: np.ndarray) -> bool:
    """Whether ``y`` (from :func:`load_labelled`) gives each image a tuple of labels."""
    return is_label_sets(y)


def _classes_of(y: np.ndarray) -> set[Any]:
    from tlearn.automl import judge_for

    return judge_for(y).classes(y)


def _test_data(
    test: str | None, max_per_class: int | None, seed: int, train_classes: set[Any]
) -> tuple[np.ndarray, np.ndarray]:
    X_test, y_test = load_labelled(test, max_per_class, seed)  # type: ignore[arg-type]
    unseen = sorted(_classes_of(y_test) - train_classes, key=str)
    if unseen:
        raise DataError(
            f"the test data {test!r} has classes the training data lacks: {unseen}; the "
            f"training classes are {sorted(train_classes)}. Use test data with the same "
            "class folders"
        )
    return X_test, y_test


def held_out_report(model: Any, X: np.ndarray, y: np.ndarray) -> tuple[Any, dict[str, Any]]:
    """The report on the estimator's honest held-out probabilities (``heldout_proba_``:
    the probe's nested out-of-fold ones, fine-tuning's cross-fitted validation split):
    images no choice has seen. ``heldout_method_`` says how, in one line."""
    from tlearn.evaluation import Report, compute_metrics
    from tlearn.models import model_kind

    kind = model_kind(model)
    proba, what = kind.heldout(model) if kind.heldout is not None else (np.zeros((0, 0)), "")
    ok = ~np.isnan(proba).any(axis=1)
    if not ok.any():
        raise DataError(
            "this model has no held-out estimate (a probe with calibrate=False, or "
            "fine-tuning with validation_size=0); give --test DATA or --test-size 0.2"
        )
    if kind.thresholds is not None:  # several labels per image
        return _held_out_multilabel(model, kind, X, y, (proba, ok, what))
    report = Report.from_metrics(compute_metrics(model.classes_, y[ok], proba[ok], X[ok]))
    calibration = getattr(model, "calibration_", {}) or {}
    report.calibration = {
        "temperature": model.temperature_,
        "ece_before": calibration.get("oof_ece_before", calibration.get("val_ece_before", 0.0)),
        "ece_after": report.expected_calibration_error,
    }
    return report, {"method": what, "n_images": report.n_images, "accuracy": report.accuracy}


#: What a multi-label run's evaluation records beside its subset accuracy.
_MULTILABEL_FIGURES = ("mean_average_precision", "macro_f1", "micro_f1", "hamming_loss")


def _held_out_multilabel(
    model: Any, kind: Any, X: np.ndarray, y: np.ndarray, heldout: tuple[Any, Any, str]
) -> tuple[Any, dict[str, Any]]:
    """A multi-label model's report on its held-out probabilities and labels (the labels
    thresholded as other images chose, ``heldout_labels_``, and average precision ranked
    by the out-of-fold ``oof_proba_``, when the model has them)."""
    from tlearn.evaluation.multilabel import compute_multilabel_metrics
    from tlearn.multilabel import check_multilabel

    proba, ok, what = heldout
    classes = np.asarray(kind.classes(model))
    _, M = check_multilabel(list(y), len(y), classes)
    labels, oof = getattr(model, "heldout_labels_", None), getattr(model, "oof_proba_", None)
    report = compute_multilabel_metrics(
        classes, M[ok], proba[ok], np.asarray(kind.thresholds(model)),
        np.asarray([str(x) for x in X], dtype=object)[ok],
        predicted=None if labels is None else labels[ok],
        ranking=None if oof is None else oof[ok],
    )  # fmt: skip
    figures = report.to_dict()
    evaluation = {"method": what, "n_images": report.n_images, "accuracy": report.accuracy}
    return report, {**evaluation, **{k: figures[k] for k in _MULTILABEL_FIGURES}}


def _fit(
    model: Any, X: np.ndarray, y: np.ndarray, resume: bool = False, w: np.ndarray | None = None
) -> Any:
    weighed = {} if w is None else {"sample_weight": w}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # bad files are listed by the caller
        return model.fit(X, y, resume=True, **weighed) if resume else model.fit(X, y, **weighed)


@dataclass
class TrainRequest:
    """Everything :func:`train` was asked for (the command line's flags)."""

    data: str
    method: str = "auto"
    test: str | None = None
    test_size: float | None = None
    max_per_class: int | None = None
    test_max_per_class: int | None = None
    out: str | None = None
    skip_bad_images: bool = False
    resume: bool = False
    refit: bool = True
    seed: int = 0
    time_budget: float | None = None
    say: Callable[[str], None] = logger.info
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def common(self) -> dict[str, Any]:
        """Settings every estimator of the run shares."""
        on_error = "skip" if self.skip_bad_images else "raise"
        return {"random_state": self.seed, "on_error": on_error, "verbose": 1}


def train(data: str | os.PathLike[str], **options: Any) -> TrainResult:
    """Fit a classifier on ``data``, evaluate it, and save it to ``out``.

    ``test``: separate labelled test data. Without it the report is the held-out estimate
    (cross-validated for the probe) and the model is refit on every image (``refit``).
    ``test_size``: hold out that fraction as a test split first (then refit on all).
    ``method="auto"`` tries several candidates within ``time_budget`` seconds (see
    :func:`tlearn.automl.fit_auto`). Other keywords go to the estimator (``backbone``,
    ``image_size``, ``engine``, ``epochs``...).
    """
    names = {f.name for f in dataclasses.fields(TrainRequest)} - {"data", "params"}
    req = TrainRequest(
        os.fspath(data),
        **{k: v for k, v in options.items() if k in names},
        params={k: v for k, v in options.items() if k not in names},
    )
    if req.out is not None:
        req.out = os.fspath(req.out)
        if not Path(req.out).parent.exists():
            raise DataError(f"the output folder {str(Path(req.out).parent)!r} does not exist")
    t0 = time.perf_counter()
    model = make_estimator(req.method, **req.common, **req.params)
    if req.method == "auto":  # its fine-tuning candidate's flags are checked now, too
        make_estimator("lp-ft", **req.common, **req.params)
    if req.resume and "strategy" not in model.get_params():
        raise DataError("resume continues an interrupted fine-tuning run; the probe has none")
    X, y, w, dropped = _load(req.data, req.max_per_class, req.seed, weights=True)
    from tlearn.automl import judge_for

    targets = judge_for(y)  # one label per image, or several: what differs is its
    targets.check_params(req.params)
    split, w_fit = _split(X, y, req.test, req.test_size, req.test_max_per_class, req.seed, w)
    if targets.balances:
        _balance(req, split[1])
    model = targets.estimator(req.method, **req.common, **req.params)
    req.say(_plan(model, req.method, y, split, req.test, "backbone" in req.params))
    if w is not None:
        req.say(_weights_line(w, dropped))
    with _feature_cache(req, model) as temporary:
        model, report, evaluation, leaderboard = _fit_and_evaluate(
            req, model, (X, y, w), split, w_fit
        )
        if temporary and "cache_dir" in model.get_params():  # the model made (a refit,
            model.set_params(cache_dir=None)  # auto's winner) must not keep the folder
    if os.environ.get("RANK", "0") != "0":  # torchrun: only the main process goes on
        return TrainResult(model, None, {}, list(model.skipped_))
    evaluation["seconds"] = round(time.perf_counter() - t0, 1)
    path = None if req.out is None else _save(req, model, evaluation, leaderboard)
    return TrainResult(model, report, evaluation, list(model.skipped_), path,
                       time.perf_counter() - t0, leaderboard)  # fmt: skip


@contextlib.contextmanager
def _feature_cache(req: TrainRequest, model: Any) -> Iterator[bool]:
    """Features computed once for every fit of the run (a refit, auto's candidates reuse
    them), in a temporary cache (yields whether it is one: then the caller drops it from
    the model it keeps, which is not always ``model``)."""
    if req.params.get("cache_dir") is not None:
        yield False
        return
    with tempfile.TemporaryDirectory(prefix="tlearn-features-") as cache:
        req.params["cache_dir"] = cache
        if "cache_dir" in model.get_params():
            model.set_params(cache_dir=cache)
        try:
            yield True
        finally:
            req.params.pop("cache_dir")
            if "cache_dir" in model.get_params():
                model.set_params(cache_dir=None)


def _fit_and_evaluate(
    req: TrainRequest,
    model: Any,
    data: tuple[np.ndarray, np.ndarray, np.ndarray | None],
    split: Any,
    w_fit: np.ndarray | None,
) -> tuple[Any, Any, dict[str, Any], list[dict[str, Any]]]:
    """Fit on ``split``'s first part (weighing ``w_fit``), evaluate, and refit on every
    image of ``data`` ``(X, y, sample weights)`` when nothing else tests it."""
    X, y, w = data
    leaderboard: list[dict[str, Any]] = []
    if req.method == "auto":  # the judge y calls for: accuracy, or mAP for several labels
        from tlearn.automl import fit_auto

        balanced = req.params.get("class_weight") == "balanced"
        model, leaderboard = fit_auto(
            split[0], split[1], req.common, req.params, req.time_budget, req.say, balanced,
            sample_weight=w_fit,
        )  # fmt: skip
    else:
        model = _fit(model, split[0], split[1], req.resume, w_fit)
    if os.environ.get("RANK", "0") != "0":
        return model, None, {}, leaderboard
    report, evaluation = _evaluate(model, split, req.test, req.test_size)
    if w_fit is not None:
        evaluation["sample_weight"] = "fitted weighing the CSV's weight column; figures per image"
    if req.refit and req.test is None:
        model = _refit(model, X, y, req.test_size, req.say, w)
    return model, report, evaluation, leaderboard


def _weights_line(w: np.ndarray, zero: int) -> str:
    left = f"; {zero} image(s) of weight 0 left out" if zero else ""
    return (
        f"sample weights from the CSV's weight column: {w.min():g} to {w.max():g}{left} "
        "(they weigh the fit and its choices; the figures reported count each image once)"
    )


def _balance(req: TrainRequest, y: np.ndarray) -> bool:
    """Imbalanced classes (the smallest under :data:`IMBALANCE_RATIO` of the largest) and
    no ``class_weight`` given: weigh the classes by inverse frequency (the default measured
    better on long-tailed CIFAR-10, docs/accuracy.md), and say so. Returns whether it did."""
    if "class_weight" in req.params or not len(y):
        return False
    _, counts = np.unique(y, return_counts=True)
    if counts.min() >= IMBALANCE_RATIO * counts.max():
        return False
    req.params["class_weight"] = "balanced"
    judged = "; auto compares candidates by balanced accuracy" if req.method == "auto" else ""
    req.say(
        f"classes imbalanced (the smallest has {counts.min()} images, the largest "
        f"{counts.max()}): class_weight='balanced'{judged} (--class-weight none to turn off)"
    )
    return True


def _split(
    X: np.ndarray,
    y: np.ndarray,
    test: str | None,
    test_size: float | None,
    test_max_per_class: int | None,
    seed: int,
    w: np.ndarray | None = None,
) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None], Any]:
    """``(X_fit, y_fit, X_test, y_test)``: the test data, a held-out split, or none; and
    the fitted images' sample weights (``w``'s rows of ``X_fit``)."""
    if test is not None:
        return (X, y, *_test_data(test, test_max_per_class, seed, _classes_of(y))), w
    if test_size is None:
        return (X, y, None, None), w
    from sklearn.model_selection import train_test_split

    if not 0 < test_size < 1:
        raise DataError(f"test_size must be between 0 and 1, got {test_size}")
    rows = np.arange(len(y))
    from tlearn.automl import judge_for

    tr, te = train_test_split(
        rows, test_size=test_size, stratify=judge_for(y).stratify(y), random_state=seed
    )
    return (X[tr], y[tr], X[te], y[te]), None if w is None else w[tr]


def _plan(model: Any, method: str, y: np.ndarray, split: Any, test: Any, named: bool) -> str:
    tested = (
        f"testing on {len(split[2])} ({'the test data' if test else 'a held-out split'})"
        if split[2] is not None
        else "evaluating by its own held-out predictions"
    )
    from tlearn.automl import judge_for

    targets = judge_for(y)
    chooses = method == "auto" and not named and targets.chooses_backbone
    backbone = "as auto chooses" if chooses else model.backbone
    what, method = targets.describe(y, method)
    return (
        f"training on {len(split[0])} images in {what}, {tested}; backbone {backbone}, "
        f"method {method}"
    )


def _evaluate(
    model: Any, split: Any, test: str | None, test_size: float | None
) -> tuple[Any, dict[str, Any]]:
    from tlearn.evaluation import evaluate

    X_fit, y_fit, X_test, y_test = split
    if X_test is None:
        report, evaluation = held_out_report(model, X_fit, y_fit)
    else:
        report = evaluate(model, X_test, y_test, unknown="skip")
        what = "test data" if test is not None else f"held-out {test_size:.0%} test split"
        evaluation = {"method": what, "n_images": report.n_images, "accuracy": report.accuracy}
        figures = report.to_dict()
        if figures.get("task") == "multi-label":  # the figures it is judged by
            evaluation.update({k: figures[k] for k in _MULTILABEL_FIGURES})
    report.evaluation = evaluation
    evaluation["log_loss"] = report.log_loss
    evaluation["expected_calibration_error"] = report.expected_calibration_error
    return report, evaluation


def _refit(
    model: Any,
    X: np.ndarray,
    y: np.ndarray,
    test_size: float | None,
    say: Callable[[str], None],
    w: np.ndarray | None = None,
) -> Any:
    """The model to save: fitted on every image (the test split too, when one was held
    out; weighing ``w``), as its kind refits it."""
    from tlearn.models import model_kind

    if test_size is not None:  # a test split was held out: fit again with it
        from sklearn.base import clone

        say(f"refitting on all {len(y)} images (the test split included)")
        model = _fit(clone(model), X, y, w=w)
    kind = model_kind(model)
    if kind.refit is not None:
        return kind.refit(model, X, y, say, w)
    held = 0
    if kind.keeps_held_out and kind.heldout is not None:
        held = int((~np.isnan(kind.heldout(model)[0]).any(axis=1)).sum())
    if held:
        say(f"the saved model is trained on {len(y) - held} of the {len(y)} images; the "
            f"other {held} stay held out (they calibrate and measure it)")  # fmt: skip
    elif test_size is None:
        say(f"the saved model is fitted on all {len(y)} images")
    return model


def _save(
    req: TrainRequest,
    model: Any,
    evaluation: dict[str, Any],
    leaderboard: list[dict[str, Any]],
) -> str:
    from tlearn.persistence import save

    assert req.out is not None
    path = save(model, req.out, evaluation=evaluation)
    settings = {"data": req.data, "method": req.method, "test": req.test, "seed": req.seed,
                **req.params}  # fmt: skip
    with open(str(path) + ".settings.json", "w", encoding="utf-8") as f:
        json.dump({k: _plain(v) for k, v in settings.items()}, f, indent=2)
    if leaderboard:
        with open(str(path) + ".leaderboard.json", "w", encoding="utf-8") as f:
            json.dump(leaderboard, f, indent=2)
    return path


def _plain(value: Any) -> Any:
    return value if value is None or isinstance(value, (int, float, str, bool)) else str(value)
