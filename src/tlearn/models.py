"""One table of model kinds: what every fitted classifier offers the code that predicts
with it, saves it, exports it and evaluates it. A new head adds one :class:`ModelKind` row;
persistence, export, evaluation and the predictor look it up with :func:`model_kind`.

A kind says how to find the model's feature extractor, its head (features ->
probabilities), its head as one linear layer (for export), and how its head is written to,
checked in and read from a model file (a file is data from anywhere: its head is checked
against the classes and the tensors it carries before anything is built).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from numbers import Integral, Real
from typing import Any

import numpy as np

from tlearn._validation import Interval
from tlearn.data.images import Preprocessing
from tlearn.exceptions import ModelFileError
from tlearn.features import PretrainedFeatures
from tlearn.finetune import FineTuneClassifier
from tlearn.finetune.estimator import refit_on_all
from tlearn.finetune.multilabel import linear_head as finetune_linear_head
from tlearn.finetune.scratch import ScratchClassifier
from tlearn.multilabel import MultiLabelProbe
from tlearn.probe import LinearProbe, nominal_C
from tlearn.runtime.engines import Engine

__all__ = [
    "IMAGENET_PREFIX",
    "MODEL_KINDS",
    "ModelKind",
    "ModelParts",
    "imagenet_parts",
    "model_kind",
    "register_model_kind",
    "split_model",
]

IMAGENET_PREFIX = "imagenet:"
Array = np.ndarray
Head = Callable[[Array], Array]


@dataclass
class ModelParts:
    """A fitted classifier taken apart for prediction: preprocessing, an engine (uint8
    pixels -> features, or straight to probabilities for an export), a head (features ->
    probabilities), the class labels, and the feature extractor when there is one."""

    preprocessing: Preprocessing
    engine: Engine
    head: Head
    classes: np.ndarray
    features: PretrainedFeatures | None = None
    info: dict[str, Any] = field(default_factory=dict)
    #: a multi-label model's threshold for each class (``None``: one label per image)
    thresholds: np.ndarray | None = None

    @property
    def rows(self) -> str:
        """The kind of prediction row it makes (:data:`tlearn.rows.ROW_KINDS`)."""
        return "predictions" if self.thresholds is None else "multilabel"


@dataclass(frozen=True)
class ModelKind:
    """One kind of fitted model. ``to_file(model)`` gives the head's arrays and settings;
    ``check_file(head_meta, shapes, n_classes)`` checks a file's head settings and the
    shapes of its ``head.*`` tensors (before they are read) and returns the number of
    features the head takes, raising ``ValueError`` naming the field;
    ``from_file(head_meta, arrays, features, classes, params)`` rebuilds the model, whose
    parameters are those of ``estimator`` (``None``: it has none of its own)."""

    name: str
    matches: Callable[[Any], bool]
    features: Callable[[Any], PretrainedFeatures]
    head: Callable[[Any], Head]
    linear_head: Callable[[Any], tuple[Array, Array]]
    to_file: Callable[[Any], tuple[dict[str, Array], dict[str, Any]]]
    check_file: Callable[[dict[str, Any], dict[str, tuple[int, ...]], int], int]
    from_file: Callable[..., Any]
    is_fitted: Callable[[Any], bool]
    estimator: type | None = None
    #: the fitted model's class labels
    classes: Callable[[Any], Array] = lambda m: m.classes_
    #: its honest held-out probabilities (NaN rows: none for that image) and how they
    #: were made, in one line; ``None``: the kind makes none (give test data)
    heldout: Callable[[Any], tuple[Array, str]] | None = None
    #: the model fitted again on every image ``(model, X, y, say, sample_weight)``;
    #: ``None``: a fitted model has already seen every image
    refit: Callable[[Any, Array, Array, Callable[[str], None], Array | None], Any] | None = None
    #: its backbone's weights are its own (trained), not the pretrained ones
    trains_backbone: bool = False
    #: its held-out images were never trained on, and are not refit on (``refit`` None)
    keeps_held_out: bool = False
    #: its files before 0.2 kept its parameters in ``head.params`` (the feature
    #: extractor's in ``backbone.params``), not in ``params``
    params_in_head_before_0_2: bool = False
    #: how its head's scores become probabilities: ``"softmax"`` (one label per image,
    #: they sum to 1) or ``"sigmoid"`` (each label on its own: multi-label)
    activation: str = "softmax"
    #: a multi-label model's probability threshold for each class; ``None``: one label
    #: per image (the best)
    thresholds: Callable[[Any], Array] | None = None


MODEL_KINDS: dict[str, ModelKind] = {}


def register_model_kind(kind: ModelKind) -> ModelKind:
    """Add a kind to the table; duplicate names are refused."""
    if kind.name in MODEL_KINDS:
        raise ValueError(f"a model kind named {kind.name!r} is already registered")
    MODEL_KINDS[kind.name] = kind
    return kind


def model_kind(model: Any) -> ModelKind:
    """The kind of ``model``; a ``TypeError`` names the kinds there are."""
    for kind in MODEL_KINDS.values():
        if kind.matches(model):
            return kind
    raise TypeError(
        f"tlearn handles {', '.join(MODEL_KINDS)} models (LinearProbe, FineTuneClassifier, "
        "Pipeline(PretrainedFeatures, [StandardScaler], LogisticRegression)), not "
        f"{type(model).__name__}"
    )


def split_model(model: Any) -> ModelParts:
    """A fitted model (or ready :class:`ModelParts`) as :class:`ModelParts`."""
    if isinstance(model, ModelParts):
        return model
    kind = model_kind(model)
    if not kind.is_fitted(model):
        raise ModelFileError(f"the {type(model).__name__} is not fitted yet; call fit first")
    features = kind.features(model)
    return ModelParts(
        preprocessing=features.preprocessing_,
        engine=features.runner_,
        head=kind.head(model),
        classes=np.asarray(kind.classes(model)),
        features=features,
        info={"kind": kind.name, "activation": kind.activation},
        thresholds=None if kind.thresholds is None else np.asarray(kind.thresholds(model)),
    )


# -- checking a file's head ----------------------------------------------------------------
#: Temperatures a file may hold (tlearn fits them in [0.05, 20]; 1 means uncalibrated).
TEMPERATURES = Interval(Real, 0.01, 100.0)
#: Regularisation strengths a file may hold (they are recorded, not used to predict).
STRENGTHS = Interval(Real, 0.0, 1e12, closed="right")
_SCALER = ("head.scaler_mean", "head.scaler_scale", "head.scaler_var")


def _need(ok: bool, field: str, what: str, value: Any) -> None:
    """Raise ``ValueError`` saying that ``field`` must be ``what``."""
    if not ok:
        shown = repr(value)
        raise ValueError(f"{field} must be {what}, not {shown[:80]}")


def _tensor(shapes: dict[str, tuple[int, ...]], name: str, shape: tuple[int | None, ...]) -> int:
    """Check that tensor ``name`` has ``shape`` (``None``: any positive length); returns
    its last dimension."""
    got = shapes.get(name)
    if got is None:
        raise ValueError(f"the tensor {name!r} is missing")
    ok = len(got) == len(shape) and all(
        n > 0 and (want is None or n == want) for n, want in zip(got, shape, strict=True)
    )
    dims = ", ".join("n" if n is None else str(n) for n in shape)
    wanted = f"({dims},)" if len(shape) == 1 else f"({dims})"
    _need(ok, f"the tensor {name!r}", f"of shape {wanted}", got)
    return got[-1]


def _only(shapes: dict[str, tuple[int, ...]], names: set[str]) -> None:
    extra = sorted(set(shapes) - names)
    if extra:
        raise ValueError(f"the tensor {extra[0]!r} is not part of this kind of head")


def _temperature(head: dict[str, Any]) -> None:
    t = head.get("temperature", 1.0)
    _need(TEMPERATURES.is_satisfied_by(t), "head.temperature", str(TEMPERATURES), t)


def _dict(head: dict[str, Any], key: str) -> None:
    value = head.get(key, {})
    _need(isinstance(value, dict), f"head.{key}", "an object", value)


def _check_logistic(shapes: dict[str, tuple[int, ...]], n_classes: int, scaler: bool) -> int:
    """A logistic regression's tensors (one row of coefficients for two classes), with a
    StandardScaler's before it when ``scaler``; returns the number of features."""
    rows = 1 if n_classes == 2 else n_classes
    n_features = _tensor(shapes, "head.coef", (rows, None))
    _tensor(shapes, "head.intercept", (rows,))
    names = {"head.coef", "head.intercept"}
    if scaler:
        for name in _SCALER:
            _tensor(shapes, name, (n_features,))
        names |= set(_SCALER)
    _only(shapes, names)
    return n_features


def _check_probe_file(
    head: dict[str, Any], shapes: dict[str, tuple[int, ...]], n_classes: int
) -> int:
    C = head.get("C")
    Cs = C if isinstance(C, list) and 0 < len(C) <= 64 else [C]  # one per ensemble block
    _need(all(STRENGTHS.is_satisfied_by(c) for c in Cs), "head.C", str(STRENGTHS), C)
    _temperature(head)
    _dict(head, "cv_results")
    _dict(head, "calibration")
    return _check_logistic(shapes, n_classes, scaler=True)


# -- linear heads: the probe and a Pipeline of StandardScaler + LogisticRegression ---------
def _fold_linear(scaler: Any, clf: Any, temperature: float = 1.0) -> tuple[Array, Array]:
    """Scaler + logistic regression (+ temperature) as one linear layer:
    ``W = coef / scale / T``, ``b = (intercept - (mean / scale) @ coef.T) / T``; two classes
    become the logits [0, z]."""
    coef = clf.coef_.astype(np.float64) / temperature
    intercept = clf.intercept_.astype(np.float64) / temperature
    if scaler is not None:
        intercept = intercept - (scaler.mean_ / scaler.scale_) @ coef.T
        coef = coef / scaler.scale_
    if coef.shape[0] == 1:
        coef = np.vstack([np.zeros_like(coef), coef])
        intercept = np.concatenate([[0.0], intercept])
    return coef, intercept


def _logistic_arrays(scaler: Any, clf: Any) -> dict[str, Array]:
    t = {"head.coef": clf.coef_, "head.intercept": clf.intercept_}
    if scaler is not None:
        t.update(
            {
                "head.scaler_mean": scaler.mean_,
                "head.scaler_scale": scaler.scale_,
                "head.scaler_var": scaler.var_,
            }
        )
    return t


def _logistic_from_arrays(arrays: dict[str, Array], C: float, max_iter: int) -> tuple[Any, Any]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    clf = LogisticRegression(C=C, max_iter=max_iter)
    clf.coef_, clf.intercept_ = arrays["head.coef"], arrays["head.intercept"]
    clf.n_features_in_ = clf.coef_.shape[1]
    clf.n_iter_ = np.zeros(1, dtype=np.int32)
    scaler = None
    if "head.scaler_mean" in arrays:
        scaler = StandardScaler()
        scaler.mean_ = arrays["head.scaler_mean"]
        scaler.scale_ = arrays["head.scaler_scale"]
        scaler.var_ = arrays["head.scaler_var"]
        if not (scaler.scale_ > 0).all():  # a StandardScaler's scale is never 0 (1 for var 0)
            raise ValueError("the tensor 'head.scaler_scale' must be positive")
        scaler.n_features_in_ = scaler.mean_.shape[0]
        scaler.n_samples_seen_ = np.int64(0)
    return scaler, clf


def _probe_to_file(model: LinearProbe) -> tuple[dict[str, Array], dict[str, Any]]:
    arrays = _logistic_arrays(model.scaler_, model.classifier_)
    meta = {
        "type": "logistic_regression",
        "scaler": True,
        "C": model.C_,
        "cv_results": model.cv_results_,
        "temperature": float(model.temperature_),
        "calibration": model.calibration_,
    }
    return arrays, meta


def _probe_from_file(
    head: dict[str, Any],
    arrays: dict[str, Array],
    features: PretrainedFeatures,
    classes: Array,
    params: dict[str, Any],
) -> LinearProbe:
    C = head["C"] if isinstance(head["C"], (int, float)) else tuple(head["C"])  # ensembles
    scaler, clf = _logistic_from_arrays(arrays, nominal_C(C), int(params.get("max_iter", 1000)))
    clf.classes_ = np.arange(len(classes))
    return LinearProbe.from_fitted(
        features, classes, scaler, clf, C=C, cv_results=head.get("cv_results", {}),
        temperature=head.get("temperature", 1.0), calibration=head.get("calibration", {}),
        **params,
    )  # fmt: skip


def _pipeline_is_linear(model: Any) -> bool:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    parts = [est for _, est in model.steps]
    return (
        len(parts) in (2, 3)
        and isinstance(parts[-1], LogisticRegression)
        and (len(parts) == 2 or isinstance(parts[1], StandardScaler))
    )


def _pipeline_linear_parts(model: Any) -> tuple[Any, Any]:
    if not _pipeline_is_linear(model):
        raise TypeError(
            "tlearn can save and export a Pipeline(PretrainedFeatures, [StandardScaler], "
            f"LogisticRegression); this one has {[type(e).__name__ for _, e in model.steps]}"
        )
    steps = [est for _, est in model.steps]
    return (steps[1] if len(steps) == 3 else None), steps[-1]


def _check_pipeline_file(
    head: dict[str, Any], shapes: dict[str, tuple[int, ...]], n_classes: int
) -> int:
    _need(STRENGTHS.is_satisfied_by(head.get("C")), "head.C", str(STRENGTHS), head.get("C"))
    _dict(head, "params")
    max_iter = head.get("params", {}).get("max_iter", 1000)
    iterations = Interval(Integral, 1, 10**9)
    _need(iterations.is_satisfied_by(max_iter), "head.params.max_iter", str(iterations), max_iter)
    scaler = head.get("scaler", "head.scaler_mean" in shapes)
    _need(isinstance(scaler, bool), "head.scaler", "true or false", scaler)
    steps = head.get("steps")
    if steps is not None:
        ok = (
            isinstance(steps, list)
            and len(steps) == 2 + scaler
            and all(isinstance(n, str) and n.isidentifier() and "__" not in n for n in steps)
            and len(set(steps)) == len(steps)
        )
        _need(ok, "head.steps", f"{2 + scaler} different step names", steps)
    return _check_logistic(shapes, n_classes, scaler=scaler)


def _pipeline_to_file(model: Any) -> tuple[dict[str, Array], dict[str, Any]]:
    scaler, clf = _pipeline_linear_parts(model)
    meta = {
        "type": "logistic_regression",
        "scaler": scaler is not None,
        "C": float(clf.C),
        "params": {"max_iter": clf.max_iter},
        "steps": [name for name, _ in model.steps],
    }
    return _logistic_arrays(scaler, clf), meta


def _pipeline_from_file(
    head: dict[str, Any],
    arrays: dict[str, Array],
    features: PretrainedFeatures,
    classes: Array,
    params: dict[str, Any],
) -> Any:
    from sklearn.pipeline import Pipeline

    max_iter = int(head.get("params", {}).get("max_iter", 1000))
    scaler, clf = _logistic_from_arrays(arrays, head["C"], max_iter)
    clf.classes_ = classes
    names = head.get("steps") or ["features", "scaler", "clf"][: 2 + (scaler is not None)]
    steps = [features] + ([scaler] if scaler is not None else []) + [clf]
    return Pipeline(list(zip(names, steps, strict=True)))


def _is_pipeline(model: Any) -> bool:
    from sklearn.pipeline import Pipeline

    return isinstance(model, Pipeline) and isinstance(model.steps[0][1], PretrainedFeatures)


def _finetune_to_file(model: FineTuneClassifier) -> tuple[dict[str, Array], dict[str, Any]]:
    arrays = {"head.weight": model.head_weight_, "head.bias": model.head_bias_}
    meta = {
        "type": "linear",
        "history": model.history_,
        "best_epoch": model.best_epoch_,
        "temperature": float(getattr(model, "temperature_", 1.0)),
        "calibration": getattr(model, "calibration_", {}),
    }
    return arrays, meta


def _check_finetune_file(
    head: dict[str, Any], shapes: dict[str, tuple[int, ...]], n_classes: int
) -> int:
    _temperature(head)
    _dict(head, "calibration")
    history = head.get("history", [])
    number = Interval(Real, None, None)
    ok = isinstance(history, list) and len(history) <= 10_000
    for row in history if ok else []:
        ok = isinstance(row, dict) and all(
            number.is_satisfied_by(row.get(k)) or _is_nan(row.get(k))
            for k in ("epoch", "train_loss", "val_loss", "val_accuracy")
        )
        if not ok:
            break
    epochs = "a list of epochs (epoch, train_loss, val_loss, val_accuracy)"
    _need(ok, "head.history", epochs, history)
    best = head.get("best_epoch", -1)
    valid = Interval(Integral, -1, len(history) if ok else 0)
    _need(valid.is_satisfied_by(best), "head.best_epoch", str(valid), best)
    n_features = _tensor(shapes, "head.weight", (n_classes, None))
    _tensor(shapes, "head.bias", (n_classes,))
    _only(shapes, {"head.weight", "head.bias"})
    return n_features


def _tempered_linear_head(model: FineTuneClassifier) -> tuple[Array, Array]:
    """A fine-tuned head's weight and bias divided by its temperature (for export)."""
    t = getattr(model, "temperature_", 1.0)
    return model.head_weight_ / t, model.head_bias_ / t


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _finetune_from_file(
    head: dict[str, Any],
    arrays: dict[str, Array],
    features: PretrainedFeatures,
    classes: Array,
    params: dict[str, Any],
    multilabel: tuple[Array, Array, Array] | None = None,
    estimator: type[FineTuneClassifier] = FineTuneClassifier,
) -> FineTuneClassifier:
    return estimator.from_fitted(
        features, classes, arrays["head.weight"], arrays["head.bias"],
        history=head.get("history", []), best_epoch=head.get("best_epoch", -1),
        temperature=head.get("temperature", 1.0), calibration=head.get("calibration", {}),
        multilabel=multilabel, **params,
    )  # fmt: skip


# -- fine-tuning with several labels per image: a sigmoid per label, calibrated ----------
_CALIBRATED = ("head.slope", "head.offset", "head.thresholds")


def _is_multilabel_finetune(model: Any) -> bool:
    return isinstance(model, FineTuneClassifier) and getattr(model, "multilabel_", False)


def _multilabel_finetune_to_file(
    model: FineTuneClassifier,
) -> tuple[dict[str, Array], dict[str, Any]]:
    arrays, meta = _finetune_to_file(model)
    arrays.update({"head.slope": model.calibration_slope_, "head.offset": model.calibration_offset_,
                   "head.thresholds": model.thresholds_})  # fmt: skip
    return arrays, {**meta, "type": "linear_sigmoid"}


def _check_multilabel_finetune_file(
    head: dict[str, Any], shapes: dict[str, tuple[int, ...]], n_classes: int
) -> int:
    linear = {k: v for k, v in shapes.items() if k not in _CALIBRATED}
    n_features = _check_finetune_file(head, linear, n_classes)
    for name in _CALIBRATED:
        _tensor(shapes, name, (n_classes,))
    return n_features


def _multilabel_finetune_from_file(
    head: dict[str, Any],
    arrays: dict[str, Array],
    features: PretrainedFeatures,
    classes: Array,
    params: dict[str, Any],
) -> FineTuneClassifier:
    thresholds = _probabilities(arrays["head.thresholds"], "head.thresholds")
    calibrated = (arrays["head.slope"], arrays["head.offset"], thresholds)
    return _finetune_from_file(head, arrays, features, classes, params, calibrated)


def _probabilities(values: Array, name: str) -> Array:
    if not ((values >= 0) & (values <= 1)).all():
        raise ValueError(f"the tensor {name!r} must hold probabilities in [0, 1]")
    return values


register_model_kind(
    ModelKind(
        name="linear_probe",
        matches=lambda m: isinstance(m, LinearProbe),
        features=lambda m: m.features_,
        head=lambda m: m.predict_proba_features,
        linear_head=lambda m: _fold_linear(m.scaler_, m.classifier_, m.temperature_),
        to_file=_probe_to_file,
        check_file=_check_probe_file,
        from_file=_probe_from_file,
        is_fitted=lambda m: hasattr(m, "classifier_"),
        estimator=LinearProbe,
        heldout=lambda m: (m.heldout_proba_, m.heldout_method_),
        params_in_head_before_0_2=True,
    )
)
register_model_kind(  # before "finetune", which takes every FineTuneClassifier
    ModelKind(
        name="scratch",
        matches=lambda m: isinstance(m, ScratchClassifier),
        features=lambda m: m.features_,
        head=lambda m: m.predict_proba_features,
        linear_head=_tempered_linear_head,
        to_file=_finetune_to_file,
        check_file=_check_finetune_file,
        from_file=lambda head, arrays, features, classes, params: _finetune_from_file(
            head, arrays, features, classes, params, estimator=ScratchClassifier
        ),
        is_fitted=lambda m: hasattr(m, "head_weight_"),
        estimator=ScratchClassifier,
        heldout=lambda m: (m.heldout_proba_, m.heldout_method_),
        trains_backbone=True,
        keeps_held_out=True,  # no refit: training again would double the time
    )
)
register_model_kind(
    ModelKind(
        name="multilabel_finetune",
        matches=_is_multilabel_finetune,
        features=lambda m: m.features_,
        head=lambda m: m.predict_proba_features,
        linear_head=lambda m: finetune_linear_head(
            m.head_weight_, m.head_bias_, m.calibration_slope_, m.calibration_offset_
        ),
        to_file=_multilabel_finetune_to_file,
        check_file=_check_multilabel_finetune_file,
        from_file=_multilabel_finetune_from_file,
        is_fitted=lambda m: hasattr(m, "head_weight_"),
        estimator=FineTuneClassifier,
        heldout=lambda m: (m.heldout_proba_, m.heldout_method_),
        refit=refit_on_all,
        trains_backbone=True,
        activation="sigmoid",
        thresholds=lambda m: m.thresholds_,
    )
)
register_model_kind(
    ModelKind(
        name="finetune",
        matches=lambda m: isinstance(m, FineTuneClassifier),
        features=lambda m: m.features_,
        head=lambda m: m.predict_proba_features,
        linear_head=_tempered_linear_head,
        to_file=_finetune_to_file,
        check_file=_check_finetune_file,
        from_file=_finetune_from_file,
        is_fitted=lambda m: hasattr(m, "head_weight_"),
        estimator=FineTuneClassifier,
        heldout=lambda m: (m.heldout_proba_, m.heldout_method_),
        refit=refit_on_all,
        trains_backbone=True,
    )
)
register_model_kind(
    ModelKind(
        name="pipeline",
        matches=_is_pipeline,
        features=lambda m: m.steps[0][1],
        head=lambda m: m[1:].predict_proba,
        linear_head=lambda m: _fold_linear(*_pipeline_linear_parts(m)),
        to_file=_pipeline_to_file,
        check_file=_check_pipeline_file,
        from_file=_pipeline_from_file,
        is_fitted=lambda m: hasattr(m.steps[-1][1], "classes_"),
        classes=lambda m: m[-1].classes_,
    )
)


# -- multi-label: one calibrated logistic regression per label ----------------------------
_MULTILABEL = ("head.coef", "head.intercept", "head.slope", "head.offset", "head.thresholds")


def _multilabel_to_file(model: MultiLabelProbe) -> tuple[dict[str, Array], dict[str, Any]]:
    arrays = {
        "head.coef": model.coef_,
        "head.intercept": model.intercept_,
        "head.slope": model.calibration_slope_,
        "head.offset": model.calibration_offset_,
        "head.thresholds": model.thresholds_,
        "head.scaler_mean": model.scaler_.mean_,
        "head.scaler_scale": model.scaler_.scale_,
        "head.scaler_var": model.scaler_.var_,
    }
    meta = {"type": "one_vs_rest_logistic", "C": model.C_, "cv_results": model.cv_results_}
    return arrays, meta


def _check_multilabel_file(
    head: dict[str, Any], shapes: dict[str, tuple[int, ...]], n_classes: int
) -> int:
    _need(STRENGTHS.is_satisfied_by(head.get("C")), "head.C", str(STRENGTHS), head.get("C"))
    _dict(head, "cv_results")
    n_features = _tensor(shapes, "head.coef", (n_classes, None))
    for name in _MULTILABEL[1:]:
        _tensor(shapes, name, (n_classes,))
    for name in _SCALER:
        _tensor(shapes, name, (n_features,))
    _only(shapes, {*_MULTILABEL, *_SCALER})
    return n_features


def _multilabel_from_file(
    head: dict[str, Any],
    arrays: dict[str, Array],
    features: PretrainedFeatures,
    classes: Array,
    params: dict[str, Any],
) -> MultiLabelProbe:
    from sklearn.preprocessing import StandardScaler

    thresholds = _probabilities(arrays["head.thresholds"], "head.thresholds")
    scaler = StandardScaler()
    scaler.mean_, scaler.scale_ = arrays["head.scaler_mean"], arrays["head.scaler_scale"]
    scaler.var_, scaler.n_features_in_ = arrays["head.scaler_var"], len(arrays["head.scaler_mean"])
    scaler.n_samples_seen_ = np.int64(0)
    if not (scaler.scale_ > 0).all():
        raise ValueError("the tensor 'head.scaler_scale' must be positive")
    return MultiLabelProbe.from_fitted(
        features, classes, scaler, (arrays["head.coef"], arrays["head.intercept"]),
        (arrays["head.slope"], arrays["head.offset"], thresholds), C=float(head["C"]),
        cv_results=head.get("cv_results", {}), **params,
    )  # fmt: skip


def _multilabel_linear(model: MultiLabelProbe) -> tuple[Array, Array]:
    """The calibrated log odds as one linear layer on the raw features."""
    a, c = model.calibration_slope_[:, None], model.calibration_offset_
    coef = model.coef_ / model.scaler_.scale_ * a
    intercept = model.intercept_ - (model.scaler_.mean_ / model.scaler_.scale_) @ model.coef_.T
    return coef, intercept * model.calibration_slope_ + c


register_model_kind(
    ModelKind(
        name="multilabel_probe",
        matches=lambda m: isinstance(m, MultiLabelProbe),
        features=lambda m: m.features_,
        head=lambda m: m.predict_proba_features,
        linear_head=_multilabel_linear,
        to_file=_multilabel_to_file,
        check_file=_check_multilabel_file,
        from_file=_multilabel_from_file,
        is_fitted=lambda m: hasattr(m, "coef_"),
        estimator=MultiLabelProbe,
        heldout=lambda m: (m.heldout_proba_, m.heldout_method_),
        activation="sigmoid",
        thresholds=lambda m: m.thresholds_,
    )
)


def imagenet_parts(name: str, **params: Any) -> ModelParts:
    """The backbone's own ImageNet-1k head, with readable class names (from timm), so a
    backbone can be checked on a photo before anything is trained: ``imagenet:NAME``."""
    import torch
    from timm.data import ImageNetInfo

    backbone = name.removeprefix(IMAGENET_PREFIX)
    features = PretrainedFeatures(backbone, pooling="last", flip_average=False, **params).fit()
    head = features.backbone_.classifier
    if head is None or head.out_features != 1000:
        raise ModelFileError(f"{name!r} has no ImageNet-1k classifier head to predict with")
    info = ImageNetInfo()
    classes = np.array([info.index_to_description(i) for i in range(1000)], dtype=object)

    def predict_proba(F: Array) -> Array:
        with torch.inference_mode():
            logits = head(torch.from_numpy(np.ascontiguousarray(F, dtype=np.float32)))
        return logits.softmax(dim=1).numpy()

    return ModelParts(
        features.preprocessing_,
        features.runner_,
        predict_proba,
        classes,
        features,
        {"kind": "imagenet", "backbone": backbone},
    )
