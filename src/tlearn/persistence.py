"""Model files that are data, not code: one safetensors file holding the weights, with
everything else (backbone, preprocessing, the engine that ran, classes, head settings,
library versions) as JSON in its header. Loading never unpickles.

Every kind of model in :data:`tlearn.models.MODEL_KINDS` can be saved: the file's common
part (backbone, classes, engine) is written here, the head by the kind. :func:`dumps` and
:func:`loads` do the same with bytes in memory (the predictor pickles itself that way).

Loading a file from anywhere
----------------------------
A model file may come from a stranger. Loading one never unpickles, never opens a path
named in it, never goes online and writes nothing, except that an ONNX Runtime or OpenVINO
engine recorded at fit is converted into the engine cache (``$TLEARN_HOME/engines``), as
fitting does. Path-valued parameters (``weights`` given as a file, ``cache_dir``,
``checkpoint_dir``) name places on the machine that saved the model: the loaded model has
their defaults (``"pretrained"``, ``None``). A device this machine lacks (``"cuda"``)
becomes ``"auto"``, with a warning. Everything else is checked before it is used, and a
file outside these bounds raises :class:`~tlearn.exceptions.ModelFileError` naming the
file and the field:

- the safetensors header is at most :data:`MAX_HEADER_BYTES`; its JSON nests at most
  :data:`MAX_DEPTH` deep, holds at most :data:`MAX_ITEMS` items in a list or object,
  strings of at most :data:`MAX_CHARS` characters (:data:`MAX_NAME_CHARS` for names and
  parameter values) and integers that fit in 64 bits;
- the image size (``input_size``, ``image_size``) is within the estimators' own bound,
  [8, 4096]; the crop fraction within :data:`CROP_PCT`; the normalisation finite (std at
  least 0.001); the temperature within :data:`tlearn.models.TEMPERATURES`; the classes 2 to
  :data:`MAX_ITEMS` distinct labels (1 for a multi-label model); every parameter within its
  estimator's constraints, and the engine one tlearn has;
- the network the file names is first built on PyTorch's meta device, which allocates
  nothing, and its weights must be exactly the tensors the file carries (names, shapes,
  dtypes); the head's tensors must fit the classes and the network's features, and be
  finite, within :data:`MAX_HEAD_VALUE`; every tensor must belong to a part;
- a calibrated engine the file carries (``openvino-int8``) is a graph from the file:
  before OpenVINO compiles it, it must take uint8 images of the input size to the head's
  features, with every tensor's shape known for one image and none over
  :data:`MAX_ENGINE_ELEMENTS` elements, and no loops.

Resource budget
---------------
Loading a file of ``F`` bytes whose network takes ``S`` x ``S`` images (``S`` <= 4096)
costs at most:

- memory: about ``3 F`` (the bytes, the tensors read from them, the network built from
  them: as large, since their shapes and dtypes were checked) plus one forward pass of one
  ``S`` x ``S`` image (the warm-up). EfficientNet-Lite0 at ``S`` = 64: ``F`` = 13 MiB,
  about 70 MiB in all; its forward pass alone takes about 0.3 GiB at ``S`` = 1024 and
  1.1 GiB at 2048;
- time: building the network (as ``timm`` or ``torchvision`` would), hashing its
  weights and the warm-up (Lite0: 0.5 s at ``S`` = 64; the forward pass alone 4 s at 1024
  and 15 s at 2048, on 2 shared cores); an engine other than torch recorded at fit adds
  its conversion, once (then cached);
- a file refused by these checks costs reading its header and one meta-device build of
  the network it names (under a second even for a billion parameters), whatever it
  declares.

One exception: torchvision's RegNets compute their widths with tensors and cannot be
built on the meta device, so theirs are checked against the file's tensors once built: a
file naming one costs that network's memory and time before it is refused (at most
``regnet_y_128gf``: 2.6 GB, about 40 s).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import warnings
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import numpy as np
import torch

from tlearn._io import write_atomic
from tlearn._model_file import (
    _MAGIC,
    CROP_PCT,
    FORMAT_VERSION,
    MAX_CHARS,
    MAX_DEPTH,
    MAX_ENGINE_ELEMENTS,
    MAX_HEAD_VALUE,
    MAX_HEADER_BYTES,
    MAX_ITEMS,
    MAX_NAME_CHARS,
    Plan,
    check_carried_engine,
    check_file,
    metadata_of,
    need,
    parse_header,
    read_header,
    refused,
)
from tlearn.backbones import Backbone, build_backbone, state_dict_sha256
from tlearn.exceptions import EngineError, ModelFileError
from tlearn.features import INT8_AT_FIT, PretrainedFeatures, effective_preprocessing
from tlearn.models import model_kind
from tlearn.runtime.engines import Engine, check_engine_name, engine_from_carried

__all__ = [
    "CROP_PCT",
    "FORMAT_VERSION",
    "MAX_CHARS",
    "MAX_DEPTH",
    "MAX_ENGINE_ELEMENTS",
    "MAX_HEAD_VALUE",
    "MAX_HEADER_BYTES",
    "MAX_ITEMS",
    "MAX_NAME_CHARS",
    "dumps",
    "load",
    "loads",
    "read_metadata",
    "save",
]

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


def _jsonable(value: Any) -> Any:
    """A parameter as JSON: scalars and lists of scalars as they are, anything else (a
    splitter, a RandomState) as its text."""
    if value is None or isinstance(value, (int, float, str, bool)):
        return value
    if isinstance(value, (list, tuple)) and all(isinstance(v, (int, float)) for v in value):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict) and all(isinstance(v, (int, float)) for v in value.values()):
        return {str(k): float(v) for k, v in value.items()}  # class_weight: label -> weight
    return str(value)


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
    class_values, class_kind = _jsonable_classes(np.asarray(kind.classes(model)))
    params = {} if kind.estimator is None else model.get_params()
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
    carried = features.runner_.carried()
    for name, data in carried.items():
        # a calibrated engine cannot be rebuilt without its training images: keep its bytes
        tensors[f"engine.{name}"] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    meta["engine"] = features.engine_ if carried else None
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


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON part of a model file, validated; raises :class:`ModelFileError`."""
    path = os.fspath(path)
    return metadata_of(read_header(path), repr(path))


# -- building -----------------------------------------------------------------------------
def _load_backbone(plan: Plan, tensors: dict[str, torch.Tensor], where: str) -> Backbone:
    bmeta = plan.meta["backbone"]
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
    bb.preprocessing = plan.preprocessing
    bb.weights_source = "fine-tuned" if plan.kind.trains_backbone else f"model file {where}"
    return bb


def _features(
    plan: Plan, tensors: dict[str, torch.Tensor], where: str, runtime: dict[str, str]
) -> PretrainedFeatures:
    """The fitted feature extractor, its engine built once: the one asked for in
    ``runtime`` (``engine``, ``device``), else the one recorded at fit (what ``auto``
    chose, or the calibrated int8 engine the file carries)."""
    bmeta = plan.meta["backbone"]
    params = {**plan.feature_params, **runtime, "backbone": bmeta["name"],
              "weights": "fine-tuned" if plan.kind.trains_backbone else "pretrained"}  # fmt: skip
    backbone = _load_backbone(plan, tensors, where)
    carried_name, asked = plan.meta.get("engine"), runtime.get("engine")
    wanted = asked or bmeta.get("engine_")
    if carried_name and asked in (None, carried_name):
        engine = _carried(plan, tensors, backbone, params, where)
        if engine is not None:
            return PretrainedFeatures.from_backbone(backbone, runtime=engine, **params)
        wanted = params["engine"] = "torch"
    elif wanted == "openvino-int8":
        raise EngineError(
            f"{where} has no engine calibrated for int8 (it was fitted with "
            f"{bmeta.get('engine_')!r}): {INT8_AT_FIT}"
        )
    try:
        return PretrainedFeatures.from_backbone(backbone, runtime=wanted, **params)
    except EngineError as e:
        if runtime.get("engine"):
            raise  # asked for by name: say why it cannot run
        warnings.warn(
            f"{where} was fitted with engine {wanted!r}, which cannot run here "
            f"({str(e)[:160]}); using fp32 torch",
            UserWarning,
            stacklevel=4,
        )
        return PretrainedFeatures.from_backbone(backbone, runtime="torch", **params)


def _carried(
    plan: Plan,
    tensors: dict[str, torch.Tensor],
    backbone: Backbone,
    params: dict[str, Any],
    where: str,
) -> Engine | None:
    """The calibrated engine the file carries, checked first; ``None`` (warned about)
    where its runtime cannot run it."""
    name = plan.meta["engine"]
    carried = {k[len("engine.") :]: v.numpy().tobytes() for k, v in tensors.items()
               if k.startswith("engine.")}  # fmt: skip
    pre = effective_preprocessing(backbone, params.get("image_size"), params.get("crop", "auto"))
    check_carried_engine(carried["xml"], carried["bin"], pre.input_size, plan.n_features, where)
    try:
        return engine_from_carried(name, carried, pre)
    except EngineError as e:
        warnings.warn(
            f"{where} carries an {name} engine calibrated on its training images, which "
            f"cannot run here ({str(e)[:200]}); predicting with fp32 torch instead, so "
            "probabilities may differ slightly",
            UserWarning,
            stacklevel=5,
        )
        return None


def _build(
    plan: Plan, tensors: dict[str, torch.Tensor], where: str, runtime: dict[str, str]
) -> Any:
    arrays = {k: v.numpy() for k, v in tensors.items() if k.startswith("head.")}
    for name, array in arrays.items():
        # bounded so that scores stay finite: tlearn's heads hold values far smaller
        ok = bool((np.abs(array) <= MAX_HEAD_VALUE).all())  # False for NaN
        need(ok, where, f"tensor {name!r}", f"finite, within +-{MAX_HEAD_VALUE:g}", "more")
    features = _features(plan, tensors, where, runtime)
    if features.n_features_out_ != plan.n_features:
        raise refused(
            where,
            f"its head takes {plan.n_features} features, but its backbone gives "
            f"{features.n_features_out_}",
        )
    try:
        return plan.kind.from_file(plan.meta["head"], arrays, features, plan.classes, plan.params)
    except ValueError as e:  # a value the kind refuses (a scaler's zero scale, ...)
        raise refused(where, str(e)) from None


def loads(
    data: bytes,
    where: str = "the model bytes",
    *,
    engine: str | None = None,
    device: str | None = None,
) -> Any:
    """A model from the bytes of a model file; it predicts exactly what the saved one did.
    ``engine``/``device`` as for :func:`load`. See the module's docstring for what is
    checked and what loading costs."""
    from safetensors.torch import load

    plan = check_file(parse_header(data, where), where)
    try:
        tensors = load(data)
    except Exception as e:
        raise ModelFileError(f"{where} is damaged: cannot read its tensors ({e})") from None
    return _build(plan, tensors, where, _runtime(engine, device))


def _runtime(engine: str | None, device: str | None) -> dict[str, str]:
    """The engine and device asked for, checked before the file is read."""
    runtime = {k: v for k, v in (("engine", engine), ("device", device)) if v is not None}
    if "engine" in runtime:
        check_engine_name(runtime["engine"], "load")
    return runtime


def load(
    path: str | os.PathLike[str], *, engine: str | None = None, device: str | None = None
) -> Any:
    """Load a model written by :func:`save`; it predicts exactly what the saved one did.

    ``engine`` and ``device`` run it on another engine or device than the one it was
    fitted with, built once as the model loads (``"openvino-int8"`` only where the file
    carries the engine calibrated at fit); the model's parameters record them.

    The file is data: see the module's docstring for what is checked, what loading costs,
    and the parameters that name paths on the machine that saved it, which come back as
    their defaults. Raises :class:`~tlearn.exceptions.ModelFileError` naming the file and
    the field for a file outside those bounds.
    """
    from safetensors.torch import load_file

    path = os.fspath(path)
    runtime = _runtime(engine, device)
    plan = check_file(read_header(path), repr(path))
    try:
        tensors = load_file(path)
    except Exception as e:
        raise ModelFileError(f"{path!r} is damaged: cannot read its tensors ({e})") from None
    return _build(plan, tensors, repr(path), runtime)
