"""Model files that are data, not code: one safetensors file holding the weights, with
everything else (backbone, preprocessing, the engine that ran, classes, head settings,
library versions) as JSON in its header. Loading never unpickles.

Every kind of model in :data:`tlearn.models.MODEL_KINDS` can be saved: the file's common
part (backbone, classes, engine) is written here, the head by the kind. :func:`dumps` and
:func:`loads` do the same with bytes in memory (the predictor pickles itself that way).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import struct
import warnings
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import numpy as np
import torch

from tlearn._io import write_atomic
from tlearn.backbones import Backbone, build_backbone, state_dict_sha256
from tlearn.data.images import Preprocessing
from tlearn.exceptions import EngineError, ModelFileError
from tlearn.features import PretrainedFeatures
from tlearn.models import MODEL_KINDS, model_kind
from tlearn.runtime.openvino_engine import OpenVinoEngine

__all__ = ["FORMAT_VERSION", "dumps", "load", "loads", "read_metadata", "save"]

FORMAT_VERSION = 1
_MAGIC = "tlearn"
_FEATURE_PARAMS = (
    "image_size",
    "crop",
    "pooling",
    "flip_average",
    "batch_size",
    "device",
    "on_error",
    "engine",
)
#: What files written before these parameters existed were computed with.
_BEFORE_0_2 = {"crop": "center", "pooling": "last", "flip_average": False}


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


def _jsonable(value: Any) -> Any:
    return value if value is None or isinstance(value, (int, float, str, bool)) else str(value)


def _features_meta(features: PretrainedFeatures) -> dict[str, Any]:
    bb = features.backbone_
    params = features.get_params()
    return {
        "name": bb.name,
        "architecture": bb.architecture,
        "weights_sha256": bb.weights_sha256,
        "weights_source": bb.weights_source,
        "n_features": bb.n_features,
        "preprocessing": bb.preprocessing.to_dict(),
        "params": {k: _jsonable(params[k]) for k in _FEATURE_PARAMS},
        "engine_": features.engine_,
        "engine_reason": features.engine_reason_,
    }


def _to_tensors(
    model: Any, evaluation: dict[str, Any] | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    kind = model_kind(model)
    if not kind.is_fitted(model):
        raise ModelFileError(f"the {type(model).__name__} is not fitted yet; call fit first")
    features = kind.features(model)
    arrays, head = kind.to_file(model)
    classes = model.classes_ if hasattr(model, "classes_") else model[-1].classes_
    class_values, class_kind = _jsonable_classes(np.asarray(classes))
    params = {} if kind.name == "pipeline" else model.get_params()
    meta = {
        "format": _MAGIC,
        "format_version": FORMAT_VERSION,
        "kind": kind.name,
        "backbone": _features_meta(features),
        "classes": class_values,
        "classes_type": class_kind,
        "head": head,
        "params": {k: _jsonable(v) for k, v in params.items()},
        "evaluation": evaluation or {},
        "versions": _versions(),
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    tensors = {
        f"backbone.{k}": v.detach().cpu().contiguous()
        for k, v in features.backbone_.model.state_dict().items()
    }
    for k, v in arrays.items():
        tensors[k] = torch.from_numpy(np.ascontiguousarray(v))
    ir = getattr(features._engine, "ir", None)
    if ir is not None:
        # a calibrated engine cannot be rebuilt without its training images: keep its bytes
        tensors["engine.xml"] = torch.frombuffer(bytearray(ir[0]), dtype=torch.uint8)
        tensors["engine.bin"] = torch.frombuffer(bytearray(ir[1]), dtype=torch.uint8)
    meta["engine"] = None if ir is None else features.engine_
    return tensors, meta


def dumps(model: Any, evaluation: dict[str, Any] | None = None) -> bytes:
    """The model file's bytes (what :func:`save` writes)."""
    from safetensors.torch import save

    tensors, meta = _to_tensors(model, evaluation)
    return bytes(save(tensors, metadata={_MAGIC: json.dumps(meta)}))


def save(
    model: Any, path: str | os.PathLike[str], *, evaluation: dict[str, Any] | None = None
) -> str:
    """Write a fitted model to ``path`` (conventionally ``*.safetensors``), atomically.

    ``evaluation`` records how the model was evaluated (``tlearn fit`` stores the method,
    the accuracy and the number of images; :func:`read_metadata` returns it). Returns the
    path. Raises ``TypeError`` for a model this format cannot hold, naming what it can.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    data = dumps(model, evaluation)
    if not os.path.isdir(folder):
        raise ModelFileError(f"cannot write {path!r}: the folder {folder!r} does not exist")
    write_atomic(path, data)
    return path


def _header(data: bytes, where: str) -> dict[str, Any]:
    """The safetensors header (JSON) of ``data``; raises :class:`ModelFileError`."""
    try:
        (n,) = struct.unpack("<Q", data[:8])
        if n > len(data) - 8:
            raise ValueError("the header is longer than the file")
        header = json.loads(data[8 : 8 + n])
    except Exception as e:
        raise ModelFileError(
            f"{where} is not a tlearn model file (it is not a readable safetensors file: "
            f"{e}). Model files are written by `tlearn fit` or tlearn.save"
        ) from None
    return header if isinstance(header, dict) else {}


def _meta_from_header(header: dict[str, Any], where: str) -> dict[str, Any]:
    raw = (header.get("__metadata__") or {}).get(_MAGIC)
    if raw is None:
        raise ModelFileError(
            f"{where} is a safetensors file but not a tlearn model "
            "(no tlearn metadata); it may hold plain weights"
        )
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ModelFileError(f"{where} has damaged tlearn metadata ({e})") from None
    fmt = meta.get("format_version")
    if not isinstance(fmt, int):
        raise ModelFileError(f"{where} has no valid format_version")
    if fmt > FORMAT_VERSION:
        raise ModelFileError(
            f"{where} uses model-file format {fmt}, newer than this tlearn understands "
            f"({FORMAT_VERSION}); upgrade tlearn (pip install -U tlearn)"
        )
    return meta


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON part of a model file, validated; raises :class:`ModelFileError`."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ModelFileError(f"no such model file: {path!r}")
    with open(path, "rb") as f:
        head = f.read(8)
        n = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
        data = head + f.read(min(n, 100_000_000))
    return _meta_from_header(_header(data, repr(path)), repr(path))


def _load_backbone(meta: dict[str, Any], tensors: dict[str, torch.Tensor], where: str) -> Backbone:
    bmeta = meta["backbone"]
    state = {k[len("backbone.") :]: v for k, v in tensors.items() if k.startswith("backbone.")}
    bb = build_backbone(bmeta["architecture"], weights=None, alias=bmeta["name"])
    try:
        bb.model.load_state_dict(state)
    except RuntimeError as e:
        raise ModelFileError(
            f"{where}: the stored weights do not fit {bmeta['architecture']} ({str(e)[:300]})"
        ) from None
    bb.model.eval()
    bb.weights_sha256 = state_dict_sha256(bb.model.state_dict())
    if bb.weights_sha256 != bmeta["weights_sha256"]:
        raise ModelFileError(f"{where} is damaged: its weights do not match their recorded hash")
    bb.preprocessing = Preprocessing.from_dict(bmeta["preprocessing"])
    bb.weights_source = f"model file {where}" if meta["kind"] != "finetune" else "fine-tuned"
    return bb


def _features(
    meta: dict[str, Any], tensors: dict[str, torch.Tensor], where: str
) -> PretrainedFeatures:
    """The fitted feature extractor, running the engine recorded at fit (what ``auto``
    chose, or the calibrated int8 engine carried by the file)."""
    bmeta = meta["backbone"]
    weights = "fine-tuned" if meta["kind"] == "finetune" else "pretrained"
    params = {**_BEFORE_0_2, **bmeta["params"]}
    features = PretrainedFeatures(bmeta["name"], weights=weights, **params)
    backbone = _load_backbone(meta, tensors, where)
    recorded = bmeta.get("engine_")
    if meta.get("engine"):
        xml, weights_ = (
            tensors["engine.xml"].numpy().tobytes(),
            tensors["engine.bin"].numpy().tobytes(),
        )
        try:
            engine = OpenVinoEngine.from_ir(
                xml,
                weights_,
                features._preprocessing(backbone),
                meta["engine"],
            )
            features._install(backbone, engine=engine)
            return features
        except EngineError as e:
            warnings.warn(
                f"{where} carries an {meta['engine']} engine calibrated on its training "
                f"images, which cannot run here ({str(e)[:160]}); predicting with fp32 torch "
                "instead, so probabilities may differ slightly. pip install "
                "'tlearn[openvino]' to use it",
                UserWarning,
                stacklevel=3,
            )
            features.set_params(engine="torch")
            recorded = "torch"
    try:
        features._install(backbone, engine_name=recorded)
    except EngineError as e:
        warnings.warn(
            f"{where} was fitted with engine {recorded!r}, which cannot run here "
            f"({str(e)[:160]}); using fp32 torch",
            UserWarning,
            stacklevel=3,
        )
        features._install(backbone, engine_name="torch")
    return features


def _from_tensors(meta: dict[str, Any], tensors: dict[str, torch.Tensor], where: str) -> Any:
    kind = MODEL_KINDS.get(meta.get("kind", ""))
    if kind is None:
        raise ModelFileError(
            f"{where} holds a model of kind {meta.get('kind')!r}, which this version "
            "of tlearn cannot load; upgrade tlearn"
        )
    try:
        features = _features(meta, tensors, where)
        classes = _classes_from_json(meta["classes"], meta["classes_type"])
        arrays = {k: v.numpy() for k, v in tensors.items() if k.startswith("head.")}
        head, params = meta["head"], meta.get("params")
        if params is None and kind.name == "linear_probe":  # files written before 0.2
            params = {"backbone": meta["backbone"]["name"], **meta["backbone"]["params"]}
            params.update(head.get("params", {}))
        head.setdefault("history", meta.get("history", []))
        head.setdefault("best_epoch", meta.get("best_epoch", -1))
        return kind.from_file(head, arrays, features, classes, params or {})
    except (KeyError, TypeError) as e:
        raise ModelFileError(f"{where} is damaged or incomplete (missing {e})") from None


def loads(data: bytes, where: str = "the model bytes") -> Any:
    """A model from the bytes of a model file; it predicts exactly what the saved one did."""
    from safetensors.torch import load

    meta = _meta_from_header(_header(data, where), where)
    try:
        tensors = load(data)
    except Exception as e:
        raise ModelFileError(f"{where} is damaged: cannot read its tensors ({e})") from None
    return _from_tensors(meta, tensors, where)


def load(path: str | os.PathLike[str]) -> Any:
    """Load a model written by :func:`save`; it predicts exactly what the saved one did."""
    from safetensors.torch import load_file

    path = os.fspath(path)
    meta = read_metadata(path)
    try:
        tensors = load_file(path)
    except Exception as e:
        raise ModelFileError(f"{path!r} is damaged: cannot read its tensors ({e})") from None
    return _from_tensors(meta, tensors, repr(path))
