"""Model files that are data, not code: one safetensors file holding the weights, with
everything else (backbone, preprocessing, classes, head settings, library versions) as JSON
in its header. Loading never unpickles.

Supported models: :class:`~tlearn.LinearProbe`, :class:`~tlearn.FineTuneClassifier`, and
scikit-learn ``Pipeline`` objects of ``PretrainedFeatures`` -> optional ``StandardScaler`` ->
``LogisticRegression``.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import warnings
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from tlearn._io import write_atomic, write_safetensors_atomic
from tlearn.backbones import Backbone, build_backbone, state_dict_sha256
from tlearn.data.images import Preprocessing
from tlearn.exceptions import ModelFileError
from tlearn.features import PretrainedFeatures
from tlearn.finetune import FineTuneClassifier
from tlearn.probe import LinearProbe
from tlearn.runtime.engines import OpenVinoEngine, engine_cache_dir

__all__ = ["FORMAT_VERSION", "load", "read_metadata", "save"]

FORMAT_VERSION = 1
_MAGIC = "tlearn"


def _versions() -> dict[str, str]:
    out = {}
    for pkg in ("tlearn", "torch", "timm", "torchvision", "scikit-learn", "numpy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _jsonable_classes(classes: np.ndarray) -> tuple[list[Any], str]:
    if classes.dtype.kind in "iu":
        return [int(c) for c in classes], "int"
    if classes.dtype.kind == "b":
        return [bool(c) for c in classes], "bool"
    return [str(c) for c in classes], "str"


def _classes_from_json(values: list[Any], kind: str) -> np.ndarray:
    if kind == "int":
        return np.asarray(values, dtype=np.int64)
    if kind == "bool":
        return np.asarray(values, dtype=bool)
    return np.asarray(values)


def _features_meta(features: PretrainedFeatures) -> dict[str, Any]:
    bb = features.backbone_
    return {
        "name": bb.name,
        "architecture": bb.architecture,
        "weights_sha256": bb.weights_sha256,
        "weights_source": bb.weights_source,
        "n_features": bb.n_features,
        "preprocessing": bb.preprocessing.to_dict(),
        "params": {
            k: features.get_params()[k]
            for k in ("image_size", "batch_size", "device", "on_error", "engine")
        },
    }


def _head_tensors(scaler: StandardScaler | None, clf: LogisticRegression) -> dict[str, Any]:
    t = {"head.coef": clf.coef_, "head.intercept": clf.intercept_}
    if scaler is not None:
        t["head.scaler_mean"] = scaler.mean_
        t["head.scaler_scale"] = scaler.scale_
        t["head.scaler_var"] = scaler.var_
    return t


def save(model: Any, path: str | os.PathLike[str]) -> str:
    """Write a fitted model to ``path`` (conventionally ``*.safetensors``), atomically.

    Returns the path. Raises ``TypeError`` for a model this format cannot hold, naming what
    it can.
    """
    if isinstance(model, LinearProbe):
        if not hasattr(model, "classifier_"):
            raise ModelFileError("the LinearProbe is not fitted yet; call fit first")
        features, scaler, clf = model.features_, model.scaler_, model.classifier_
        classes = model.classes_
        kind = "linear_probe"
        extra: dict[str, Any] = {
            "C": model.C_,
            "cv_results": model.cv_results_,
            "params": {
                k: v
                for k, v in model.get_params().items()
                if k in ("validation_size", "max_iter", "random_state")
            },
        }
        steps = None
    elif isinstance(model, FineTuneClassifier):
        return _save_finetuned(model, path)
    elif isinstance(model, Pipeline):
        steps = [name for name, _ in model.steps]
        parts = [est for _, est in model.steps]
        ok = (
            len(parts) in (2, 3)
            and isinstance(parts[0], PretrainedFeatures)
            and isinstance(parts[-1], LogisticRegression)
            and (len(parts) == 2 or isinstance(parts[1], StandardScaler))
        )
        if not ok:
            raise TypeError(
                "tlearn.save handles LinearProbe and Pipeline(PretrainedFeatures, "
                "[StandardScaler], LogisticRegression); got a Pipeline of "
                f"{[type(p).__name__ for p in parts]}"
            )
        if not hasattr(parts[-1], "coef_"):
            raise ModelFileError("the Pipeline is not fitted yet; call fit first")
        features, clf = parts[0], parts[-1]
        scaler = parts[1] if len(parts) == 3 else None
        classes = clf.classes_
        kind = "pipeline"
        extra = {"C": float(clf.C), "params": {"max_iter": clf.max_iter}}
    else:
        raise TypeError(
            f"tlearn.save handles LinearProbe and Pipeline(PretrainedFeatures, [StandardScaler],"
            f" LogisticRegression), not {type(model).__name__}"
        )
    class_values, class_kind = _jsonable_classes(np.asarray(classes))
    meta = {
        "format": _MAGIC,
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "steps": steps,
        "backbone": _features_meta(features),
        "classes": class_values,
        "classes_type": class_kind,
        "head": {"type": "logistic_regression", "scaler": scaler is not None, **extra},
        "versions": _versions(),
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    tensors = {
        f"backbone.{k}": v.detach().cpu().contiguous()
        for k, v in features.backbone_.model.state_dict().items()
    }
    for k, v in _head_tensors(scaler, clf).items():
        tensors[k] = torch.from_numpy(np.ascontiguousarray(v))
    meta["engine"] = _engine_files(features, tensors)
    path = os.fspath(path)
    _check_folder(path)
    write_safetensors_atomic(path, tensors, meta, key=_MAGIC)
    return path


def _engine_files(features: PretrainedFeatures, tensors: dict[str, Any]) -> str | None:
    """An int8 engine was calibrated on the training images, which are gone at load time:
    its compiled files travel in the model file (as bytes) so a loaded model predicts the
    same. Returns the engine's name, or None when there is nothing to keep."""
    engine = getattr(features, "_engine", None)
    if not isinstance(engine, OpenVinoEngine) or engine.precision != "int8":
        return None
    for part, suffix in (("xml", ".xml"), ("bin", ".bin")):
        try:
            data = bytearray(engine.path.with_suffix(suffix).read_bytes())
        except OSError as e:
            raise ModelFileError(
                f"the calibrated int8 engine's file {engine.path.with_suffix(suffix)} is gone "
                f"({e.strerror}); was the engine cache cleared? Fit the model again to save "
                "it, or save it with engine='openvino' (fp32)"
            ) from None
        tensors[f"engine.{part}"] = torch.frombuffer(data, dtype=torch.uint8)
    return engine.name


def _restore_engine(
    features: PretrainedFeatures, name: str, tensors: dict[str, torch.Tensor], path: str
) -> None:
    """Run the stored int8 engine; without OpenVINO here, fall back to fp32 torch, warning."""
    xml, bin_ = tensors["engine.xml"].numpy().tobytes(), tensors["engine.bin"].numpy().tobytes()
    digest = hashlib.sha256(xml + bin_).hexdigest()[:16]
    target = engine_cache_dir() / f"model-file-{digest}.xml"
    try:
        if not (target.is_file() and target.with_suffix(".bin").is_file()):
            target.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(target.with_suffix(".bin"), bin_)
            write_atomic(target, xml)
        engine = OpenVinoEngine.from_file(target, features.preprocessing_)
    except Exception as e:
        warnings.warn(
            f"{path!r} carries an {name} engine calibrated on its training images, which "
            f"cannot run here ({str(e)[:160]}); predicting with fp32 torch instead, so "
            "probabilities may differ slightly. pip install 'tlearn[openvino]' to use it",
            UserWarning,
            stacklevel=3,
        )
        features.set_params(engine="torch")
        return
    engine.name, engine.precision = name, "int8"
    features._engine, features.engine_ = engine, f"engine {name} (from the model file)"


def _check_folder(path: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ModelFileError(f"cannot write {path!r}: the folder {folder!r} does not exist")


def _save_finetuned(model: FineTuneClassifier, path: str | os.PathLike[str]) -> str:
    if not hasattr(model, "head_weight_"):
        raise ModelFileError("the FineTuneClassifier is not fitted yet; call fit first")
    class_values, class_kind = _jsonable_classes(np.asarray(model.classes_))
    params = {
        k: (None if v is None else (v if isinstance(v, (int, float, str, bool)) else str(v)))
        for k, v in model.get_params().items()
    }
    meta = {
        "format": _MAGIC,
        "format_version": FORMAT_VERSION,
        "kind": "finetune",
        "backbone": _features_meta(model.features_),
        "classes": class_values,
        "classes_type": class_kind,
        "head": {"type": "linear"},
        "params": params,
        "history": model.history_,
        "best_epoch": model.best_epoch_,
        "versions": _versions(),
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    tensors = {f"backbone.{k}": v for k, v in model.features_.backbone_.model.state_dict().items()}
    tensors["head.weight"] = torch.from_numpy(np.ascontiguousarray(model.head_weight_))
    tensors["head.bias"] = torch.from_numpy(np.ascontiguousarray(model.head_bias_))
    path = os.fspath(path)
    _check_folder(path)
    return write_safetensors_atomic(path, tensors, meta, key=_MAGIC)


def _load_finetuned(
    meta: dict[str, Any], tensors: dict[str, torch.Tensor], path: str
) -> FineTuneClassifier:
    try:
        model = FineTuneClassifier(**meta["params"])
        model._install(
            _load_backbone(meta, tensors, path),
            _classes_from_json(meta["classes"], meta["classes_type"]),
            tensors["head.weight"].numpy(),
            tensors["head.bias"].numpy(),
        )
    except (KeyError, TypeError) as e:
        raise ModelFileError(f"{path!r} is damaged or incomplete ({e})") from None
    model.history_ = meta.get("history", [])
    model.best_epoch_ = meta.get("best_epoch", -1)
    model.stopped_early_ = False
    model.skipped_ = []
    return model


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON part of a model file, validated; raises :class:`ModelFileError`."""
    from safetensors import safe_open

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ModelFileError(f"no such model file: {path!r}")
    try:
        with safe_open(path, framework="pt") as f:
            raw = (f.metadata() or {}).get(_MAGIC)
    except Exception as e:
        raise ModelFileError(
            f"{path!r} is not a tlearn model file (it is not a readable safetensors file: "
            f"{e}). Model files are written by `tlearn fit` or tlearn.save"
        ) from None
    if raw is None:
        raise ModelFileError(
            f"{path!r} is a safetensors file but not a tlearn model "
            "(no tlearn metadata); it may hold plain weights"
        )
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ModelFileError(f"{path!r} has damaged tlearn metadata ({e})") from None
    fmt = meta.get("format_version")
    if not isinstance(fmt, int):
        raise ModelFileError(f"{path!r} has no valid format_version")
    if fmt > FORMAT_VERSION:
        raise ModelFileError(
            f"{path!r} uses model-file format {fmt}, newer than this tlearn understands "
            f"({FORMAT_VERSION}); upgrade tlearn (pip install -U tlearn)"
        )
    return meta


def _load_backbone(meta: dict[str, Any], tensors: dict[str, torch.Tensor], path: str) -> Backbone:
    bmeta = meta["backbone"]
    state = {k[len("backbone.") :]: v for k, v in tensors.items() if k.startswith("backbone.")}
    bb = build_backbone(bmeta["architecture"], weights=None, alias=bmeta["name"])
    try:
        bb.model.load_state_dict(state)
    except RuntimeError as e:
        raise ModelFileError(
            f"{path!r}: the stored weights do not fit {bmeta['architecture']} ({str(e)[:300]})"
        ) from None
    bb.model.eval()
    bb.weights_sha256 = state_dict_sha256(bb.model.state_dict())
    if bb.weights_sha256 != bmeta["weights_sha256"]:
        raise ModelFileError(f"{path!r} is damaged: its weights do not match their recorded hash")
    bb.preprocessing = Preprocessing.from_dict(bmeta["preprocessing"])
    bb.weights_source = f"model file {path}"
    return bb


def load(path: str | os.PathLike[str]) -> Any:
    """Load a model written by :func:`save`; it predicts exactly what the saved one did."""
    from safetensors.torch import load_file

    path = os.fspath(path)
    meta = read_metadata(path)
    try:
        tensors = load_file(path)
    except Exception as e:
        raise ModelFileError(f"{path!r} is damaged: cannot read its tensors ({e})") from None
    if meta.get("kind") == "finetune":
        return _load_finetuned(meta, tensors, path)
    try:
        bmeta = meta["backbone"]
        features = PretrainedFeatures(bmeta["name"], **bmeta["params"])
        features._set_backbone(_load_backbone(meta, tensors, path))
        head = meta["head"]
        classes = _classes_from_json(meta["classes"], meta["classes_type"])
        clf = LogisticRegression(C=head["C"], max_iter=head["params"].get("max_iter", 1000))
        clf.coef_ = tensors["head.coef"].numpy()
        clf.intercept_ = tensors["head.intercept"].numpy()
        clf.n_features_in_ = clf.coef_.shape[1]
        clf.n_iter_ = np.zeros(1, dtype=np.int32)
        scaler = None
        if head["scaler"]:
            scaler = StandardScaler()
            scaler.mean_ = tensors["head.scaler_mean"].numpy()
            scaler.scale_ = tensors["head.scaler_scale"].numpy()
            scaler.var_ = tensors["head.scaler_var"].numpy()
            scaler.n_features_in_ = scaler.mean_.shape[0]
            scaler.n_samples_seen_ = np.int64(0)
    except KeyError as e:
        raise ModelFileError(f"{path!r} is damaged or incomplete: missing {e}") from None
    if meta.get("engine"):
        _restore_engine(features, meta["engine"], tensors, path)
    if meta["kind"] == "linear_probe":
        probe = LinearProbe(
            bmeta["name"], **{k: v for k, v in bmeta["params"].items()}, **head["params"]
        )
        probe.features_ = features
        probe.classes_ = classes
        clf.classes_ = np.arange(len(classes))
        probe.scaler_, probe.classifier_ = scaler, clf
        probe.C_, probe.cv_results_ = head["C"], head.get("cv_results", {})
        probe.skipped_ = []
        probe.n_features_in_ = clf.n_features_in_
        return probe
    if meta["kind"] == "pipeline":
        clf.classes_ = classes
        names = meta.get("steps") or ["features", "scaler", "clf"]
        steps = [features] + ([scaler] if scaler is not None else []) + [clf]
        return Pipeline(list(zip(names, steps, strict=True)))
    raise ModelFileError(
        f"{path!r} holds a model of kind {meta['kind']!r}, which this version "
        "of tlearn cannot load; upgrade tlearn"
    )
