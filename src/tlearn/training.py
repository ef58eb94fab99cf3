"""What ``tlearn fit`` does, as a library function: load the data, split it, build the
estimator, fit it, evaluate it and save it. The command line, a server, a Ray job or the
dataset inspector all call :func:`train`.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tlearn._log import logger
from tlearn._validation import check_option
from tlearn.exceptions import DataError

__all__ = ["METHODS", "TrainResult", "load_labelled", "make_estimator", "train"]

#: ``method`` -> the estimator class that fits it.
METHODS = ("probe", "finetune", "lp-ft")


@dataclass
class TrainResult:
    """What :func:`train` made: the fitted model, its test report (when there was test
    data), how it was evaluated, the images it could not read, and where it was saved."""

    model: Any
    report: Any
    evaluation: dict[str, Any]
    skipped: list[tuple[int, str, str]] = field(default_factory=list)
    path: str | None = None
    seconds: float = 0.0


def load_labelled(
    source: str | os.PathLike[str], max_per_class: int | None = None, seed: int = 0
) -> tuple[list[str], np.ndarray]:
    """``(paths, labels)`` of a class-folder tree, a zip of one, or a CSV of path,label."""
    from tlearn.data import load_dataset

    data = load_dataset(source, max_per_class=max_per_class, random_state=seed)
    if data.target is None:
        raise DataError(
            f"{os.fspath(source)!r} has no labels: a CSV for fitting or evaluating needs a "
            "label column"
        )
    names = np.asarray(data.target_names, dtype=object)
    return list(data.filenames), names[data.target]


def estimator_class(method: str) -> type:
    check_option("train", "method", method, METHODS)
    if method == "probe":
        from tlearn.probe import LinearProbe

        return LinearProbe
    from tlearn.finetune import FineTuneClassifier

    return FineTuneClassifier


def make_estimator(method: str, **params: Any) -> Any:
    """The estimator for ``method`` with the parameters it takes (validated now, so a bad
    value fails before any image is read)."""
    cls = estimator_class(method)
    if method == "lp-ft":
        params["strategy"] = "lp-ft"
    known = cls().get_params()
    model = cls(**{k: v for k, v in params.items() if k in known and v is not None})
    model._validate_params()
    return model


def _test_split(
    X: list[str], y: np.ndarray, test: str | None, test_size: float, test_max_per_class: int | None,
    seed: int,
) -> tuple[list[str], np.ndarray, list[str], np.ndarray]:  # fmt: skip
    if test is not None:
        X_test, y_test = load_labelled(test, test_max_per_class, seed)
        unseen = sorted(set(y_test) - set(y))
        if unseen:
            raise DataError(
                f"the test data {test!r} has classes the training data lacks: {unseen}; the "
                f"training classes are {sorted(set(y))}. Use test data with the same class "
                "folders"
            )
        return X, y, X_test, y_test
    from sklearn.model_selection import train_test_split

    if not 0 < test_size < 1:
        raise DataError(f"test_size must be between 0 and 1, got {test_size}")
    X_tr, X_te, y_tr, y_te = train_test_split(
        X, y, test_size=test_size, stratify=y, random_state=seed
    )
    return list(X_tr), np.asarray(y_tr), list(X_te), np.asarray(y_te)


def train(
    data: str | os.PathLike[str],
    *,
    method: str = "probe",
    test: str | None = None,
    test_size: float = 0.2,
    max_per_class: int | None = None,
    test_max_per_class: int | None = None,
    out: str | os.PathLike[str] | None = None,
    skip_bad_images: bool = False,
    resume: bool = False,
    seed: int = 0,
    say: Callable[[str], None] = logger.info,
    **params: Any,
) -> TrainResult:
    """Fit a classifier on ``data``, evaluate it on ``test`` (or a held-out split), and
    save it to ``out``. ``params`` go to the method's estimator (``backbone``,
    ``image_size``, ``engine``, ``epochs``, ...)."""
    from tlearn.evaluation import evaluate
    from tlearn.persistence import save

    t0 = time.perf_counter()
    on_error = "skip" if skip_bad_images else "raise"
    model = make_estimator(method, random_state=seed, on_error=on_error, verbose=1, **params)
    if out is not None and not Path(out).parent.exists():
        raise DataError(f"the output folder {str(Path(out).parent)!r} does not exist; create it")
    X, y = load_labelled(data, max_per_class, seed)
    X, y, X_test, y_test = _test_split(X, y, test, test_size, test_max_per_class, seed)
    say(
        f"training on {len(X)} images in {len(set(y))} classes, testing on {len(X_test)}; "
        f"backbone {model.backbone}, method {method}"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # bad files are listed by the caller
        model.fit(X, y, **({"resume": resume} if method != "probe" else {}))
    if os.environ.get("RANK", "0") != "0":  # torchrun: only the main process goes on
        return TrainResult(model, None, {}, list(model.skipped_))
    report = evaluate(model, X_test, y_test, unknown="skip")
    evaluation = {"method": "test" if test is not None else "held-out split",
                  "n_images": report.n_images, "accuracy": report.accuracy}  # fmt: skip
    path = save(model, out) if out is not None else None
    if path is not None:
        settings = {"data": os.fspath(data), "method": method, "test": test, "seed": seed, **params}
        with open(str(path) + ".settings.json", "w", encoding="utf-8") as f:
            json.dump({k: _plain(v) for k, v in settings.items()}, f, indent=2)
    return TrainResult(
        model, report, evaluation, list(model.skipped_), path, time.perf_counter() - t0
    )


def _plain(value: Any) -> Any:
    return value if value is None or isinstance(value, (int, float, str, bool)) else str(value)
