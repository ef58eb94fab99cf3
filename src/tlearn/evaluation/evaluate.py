"""``evaluate(model, X, y)``: predict through the model's :class:`~tlearn.Predictor` and
compute the :class:`Report`."""

from __future__ import annotations

from typing import Any

import numpy as np

from tlearn._io import python_value as _py
from tlearn._validation import check_option
from tlearn.calibration import expected_calibration_error, softmax
from tlearn.data.loader import check_images
from tlearn.data.targets import check_target_kind, is_label_sets
from tlearn.evaluation.metrics import compute_metrics
from tlearn.evaluation.report import Report
from tlearn.exceptions import DataError, UnknownClassError
from tlearn.predictor import load_predictor

__all__ = ["evaluate", "predict_proba_with_errors"]


def predict_proba_with_errors(
    predictor: Any, X: object, *, on_error: str = "raise", tta: bool = False
) -> tuple[np.ndarray, list[dict[str, str]]]:
    """Probabilities ``(n, n_classes)`` (rows of NaN for unreadable images) and the list of
    ``{"path", "reason"}`` of those images."""
    predictor = load_predictor(predictor)
    n = len(check_images(X))
    proba = np.full((n, len(predictor.classes)), np.nan, dtype=np.float64)
    failed: list[dict[str, str]] = []
    for idx, p, errors in predictor.iter_proba(X, on_error=on_error, tta=tta):
        if len(idx):
            proba[idx] = p
        failed.extend({"path": path, "reason": reason} for _, path, reason in errors)
    return proba, failed


def calibration_figures(
    model: Any, proba: np.ndarray, y: np.ndarray, classes: np.ndarray
) -> dict[str, float]:
    """ECE of the model's calibrated probabilities and of the raw ones they came from
    (``softmax(T * log p)`` undoes a temperature ``T``), when the model has a temperature."""
    temperature = getattr(model, "temperature_", None)
    if temperature is None:
        return {}
    y_idx = np.searchsorted(classes, y)
    raw = softmax(temperature * np.log(np.clip(proba, 1e-300, None)))
    return {
        "temperature": float(temperature),
        "ece_before": expected_calibration_error(raw, y_idx),
        "ece_after": expected_calibration_error(proba, y_idx),
    }


def _known_only(
    paths: Any, y: np.ndarray, classes: np.ndarray, unknown: str
) -> tuple[Any, np.ndarray, list[dict[str, Any]]]:
    known = np.isin(y, classes)
    if known.all():
        return paths, y, []
    if unknown == "raise":
        raise UnknownClassError(
            f"{int((~known).sum())} images have labels the model was not trained on: "
            f"{sorted({str(v) for v in y[~known]})[:10]}; the model knows "
            f"{[_py(c) for c in classes][:20]}. Evaluate the known classes only with "
            "unknown='skip' (CLI: --skip-unknown-classes)"
        )
    rows = [
        {"path": f"X[{i}]" if isinstance(paths, np.ndarray) else str(paths[i]), "label": _py(y[i])}
        for i in np.flatnonzero(~known).tolist()
    ]
    keep = np.flatnonzero(known)
    paths = paths[keep] if isinstance(paths, np.ndarray) else [paths[i] for i in keep.tolist()]
    return paths, y[keep], rows


def evaluate(
    model: Any,
    X: object,
    y: object,
    *,
    unknown: str = "raise",
    on_error: str | None = None,
    tta: bool = False,
) -> Report:
    """Evaluate a fitted classifier (or predictor, model file, export) on images ``X`` with
    true labels ``y``.

    Images that cannot be read are listed in ``Report.failed`` and left out of the metrics
    when ``on_error="skip"`` (default: the model's own setting). Labels the model has never
    seen raise :class:`UnknownClassError` unless ``unknown="skip"``, which evaluates the
    rest and lists them in ``Report.unknown``.
    """
    check_option("evaluate", "unknown", unknown, ("raise", "skip"))
    predictor = load_predictor(model)
    if on_error is None:
        features = predictor.parts.features
        on_error = features.on_error if features is not None else "raise"
    check_option("evaluate", "on_error", on_error, ("raise", "skip"))
    paths = check_images(X)
    if predictor.parts.thresholds is not None:  # several labels per image
        return _evaluate_multilabel(predictor, paths, y, unknown, on_error, tta)
    if is_label_sets(y):
        raise DataError(
            "this model gives one label per image, and the data gives several per image "
            "(multi-label): evaluate a multi-label model on it (tlearn fit fits one)"
        )
    y_arr = np.asarray(y)
    if len(y_arr) != len(paths):
        raise DataError(f"X has {len(paths)} images but y has {len(y_arr)} labels")
    check_target_kind(predictor.classes, y_arr)
    paths, y_arr, unknown_rows = _known_only(paths, y_arr, predictor.classes, unknown)
    proba, failed = predict_proba_with_errors(predictor, paths, on_error=on_error, tta=tta)
    ok = ~np.isnan(proba[:, 0])
    if not ok.any():
        raise DataError("no image could be evaluated: every image failed to load")
    names = _names(paths)
    metrics = compute_metrics(predictor.classes, y_arr[ok], proba[ok], names[ok])
    metrics.calibration = calibration_figures(
        predictor.model, proba[ok], y_arr[ok], predictor.classes
    )
    report = Report.from_metrics(metrics)
    report.failed, report.unknown = failed, unknown_rows
    report.history = list(getattr(model, "history_", []) or [])
    report.images = paths[ok] if isinstance(paths, np.ndarray) else None
    return report


def _names(paths: Any) -> np.ndarray:
    n = len(paths)
    return np.array(
        [f"X[{i}]" for i in range(n)] if isinstance(paths, np.ndarray) else list(paths),
        dtype=object,
    )


def _known_labels(
    names: np.ndarray, Y: Any, classes: np.ndarray, unknown: str
) -> tuple[Any, list[dict[str, Any]], np.ndarray]:
    """Label lists without the labels the model does not know, which are refused (unless
    ``unknown="skip"``: then listed, and an image left with no known label at all is left
    out rather than scored as an image without labels), and which images are kept; an
    indicator matrix as it is."""
    from tlearn.multilabel import _is_matrix, _labels_of

    if _is_matrix(Y):
        return Y, [], np.ones(len(names), bool)
    known = {_py(c) for c in classes}
    rows = [_labels_of(labels, i) for i, labels in enumerate(Y)]
    strange = [(i, sorted(r - known, key=str)) for i, r in enumerate(rows) if r - known]
    if strange and unknown == "raise":
        every = sorted({str(v) for _, labels in strange for v in labels})
        raise UnknownClassError(
            f"{len(strange)} images have labels the model was not trained on: {every[:10]}; "
            f"the model knows {[_py(c) for c in classes][:20]}. Evaluate the known labels "
            "only with unknown='skip' (CLI: --skip-unknown-classes)"
        )
    keep = np.array([not (r - known) or bool(r & known) for r in rows], bool)
    unknown_rows = [{"path": str(names[i]), "label": labels, "left_out": not keep[i]}
                    for i, labels in strange]  # fmt: skip
    return [sorted(r & known, key=str) for r in rows], unknown_rows, keep


def _as_label_sets(Y: Any) -> Any:
    """One label per image (a class folder's) as one 1-tuple per image: what a
    multi-label model is scored on; lists, tuples and indicator matrices as they are."""
    single = isinstance(Y, np.ndarray) and Y.ndim == 1 and not is_label_sets(Y)
    if not single or not all(isinstance(v, (str, int)) for v in Y.tolist()):
        return Y
    out = np.empty(len(Y), dtype=object)
    for i, v in enumerate(Y.tolist()):
        out[i] = (v,)
    return out


def _evaluate_multilabel(
    predictor: Any, paths: Any, Y: Any, unknown: str, on_error: str, tta: bool
) -> Any:
    """A multi-label model's :class:`MultiLabelReport` on images with label lists (or an
    indicator matrix); unknown labels are refused, or left out with ``unknown="skip"``."""
    from tlearn.evaluation.multilabel import compute_multilabel_metrics
    from tlearn.multilabel import check_multilabel

    if not hasattr(Y, "__len__") or len(Y) != len(paths):
        raise DataError(f"X has {len(paths)} images but Y has {len(Y)} rows of labels")
    names = _names(paths)
    labels, unknown_rows, keep = _known_labels(names, _as_label_sets(Y), predictor.classes, unknown)
    if not keep.all():  # images whose every label the model does not know
        where = np.flatnonzero(keep)
        labels = [labels[i] for i in where]
        paths = paths[where] if isinstance(paths, np.ndarray) else [paths[i] for i in where]
        names = names[where]
        if not len(where):
            raise DataError("no image has a label the model knows: nothing to evaluate")
    _, M = check_multilabel(labels, len(paths), predictor.classes)
    proba, failed = predict_proba_with_errors(predictor, paths, on_error=on_error, tta=tta)
    ok = ~np.isnan(proba[:, 0])
    if not ok.any():
        raise DataError("no image could be evaluated: every image failed to load")
    thresholds = predictor.parts.thresholds
    report = compute_multilabel_metrics(predictor.classes, M[ok], proba[ok], thresholds, names[ok])
    report.failed, report.unknown = failed, unknown_rows
    report.images = paths[ok] if isinstance(paths, np.ndarray) else None
    return report
