"""Reading a model file's header and checking everything it declares before any tensor is
read or any network built (the bounds and the budget are documented in
:mod:`tlearn.persistence`, whose loader this is the first half of)."""

from __future__ import annotations

import json
import math
import os
import struct
import warnings
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any

import numpy as np
import torch

from tlearn._validation import Interval, validate_params
from tlearn.backbones import build_backbone
from tlearn.data.images import Preprocessing
from tlearn.exceptions import InvalidParameterError, ModelFileError, TlearnError
from tlearn.features import PretrainedFeatures
from tlearn.models import MODEL_KINDS, ModelKind
from tlearn.runtime.table import ENGINE_TABLE

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
    "Plan",
    "check_carried_engine",
    "check_file",
    "metadata_of",
    "parse_header",
    "read_header",
    "refused",
]

FORMAT_VERSION = 1
_MAGIC = "tlearn"
#: What files written before these parameters existed were computed with.
_BEFORE_0_2 = {"crop": "center", "pooling": "last", "flip_average": False}
#: Parameters files before 0.3 stored as ``str(value)`` (a list of Cs, a splitter, a
#: RandomState): a list is read back, anything else becomes the default.
_TEXT_BEFORE_0_3 = ("Cs", "cv", "random_state")

#: The largest safetensors header (tensor index + tlearn's JSON) a model file may have.
MAX_HEADER_BYTES = 8 << 20
#: How deep the JSON may nest.
MAX_DEPTH = 32
#: Items in one JSON list or object (classes, training history, ...).
MAX_ITEMS = 100_000
#: Characters in one JSON string.
MAX_CHARS = 65_536
#: Characters in a name: backbone, architecture, device, engine, parameter values.
MAX_NAME_CHARS = 256
#: Crop fractions a file may hold (timm's are 0.875 to 1): an image is resized to at most
#: twice the input side before its centre is cropped.
CROP_PCT = Interval(Real, 0.5, 1.0)
#: The image side a file may ask for: the estimators' own bound (``image_size``).
_IMAGE_SIZE = [c for c in PretrainedFeatures._parameter_constraints["image_size"] if c]
#: The largest array of class names (numpy stores them at the longest name's width).
_MAX_CLASS_BYTES = 64 << 20
#: Elements of any one tensor a carried engine may compute for one image (1 GiB in fp32;
#: EfficientNet-Lite0's largest at 4096 px is 134 M).
MAX_ENGINE_ELEMENTS = 1 << 28
#: The largest value in a head's tensors (scores stay finite; tlearn's are far smaller).
MAX_HEAD_VALUE = 1e12
#: safetensors' dtype names of the tensors a network holds.
_DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


def _classes_from_json(values: list[Any], kind: str) -> np.ndarray:
    if kind == "int":
        return np.asarray(values, dtype=np.int64)
    if kind == "bool":
        return np.asarray(values, dtype=bool)
    return np.asarray(values)


# -- reading and checking the header --------------------------------------------------------
def refused(where: str, what: str) -> ModelFileError:
    return ModelFileError(
        f"{where} cannot be loaded: {what}. The file is damaged or was not written by "
        "tlearn; save the model again (tlearn.save or `tlearn fit`) or ask for the original"
    )


def need(ok: bool, where: str, field: str, what: str, value: Any) -> None:
    if not ok:
        shown = repr(value)
        shown = shown if len(shown) <= 80 else shown[:77] + "..."
        raise refused(where, f"{field} must be {what}, not {shown}")


def header_length(head: bytes, where: str) -> int:
    """The header length the first 8 bytes declare, at most :data:`MAX_HEADER_BYTES`."""
    n = struct.unpack("<Q", head[:8])[0] if len(head) >= 8 else -1
    if not 0 <= n <= MAX_HEADER_BYTES:
        what = "it is too short" if n < 0 else f"its header declares {n:,} bytes"
        raise ModelFileError(
            f"{where} is not a tlearn model file ({what}; a model file's safetensors header "
            f"is at most {MAX_HEADER_BYTES:,} bytes). Model files are written by `tlearn fit` "
            "or tlearn.save"
        )
    return int(n)


def parse_header(data: bytes, where: str) -> dict[str, Any]:
    """The safetensors header (JSON) of ``data``; raises :class:`ModelFileError`."""
    try:
        n = header_length(data[:8], where)
        if n > len(data) - 8:
            raise ValueError("the header is longer than the file")
        header = json.loads(data[8 : 8 + n])
    except ModelFileError:
        raise
    except Exception as e:  # RecursionError for deep nesting, UnicodeDecodeError, ...
        raise ModelFileError(
            f"{where} is not a tlearn model file (it is not a readable safetensors file: "
            f"{str(e)[:200]}). Model files are written by `tlearn fit` or tlearn.save"
        ) from None
    need(isinstance(header, dict), where, "its safetensors header", "an object", header)
    return header


def check_json(value: Any, where: str) -> None:
    """Bound the JSON's depth, sizes, strings and integers (iteratively: no recursion)."""
    stack: list[tuple[Any, str, int]] = [(value, "the metadata", 0)]
    while stack:
        value, field, depth = stack.pop()
        if isinstance(value, str) and len(value) > MAX_CHARS:
            raise refused(where, f"{field} has {len(value):,} characters; at most {MAX_CHARS:,}")
        if isinstance(value, int) and not isinstance(value, bool):
            need(-(2**63) <= value < 2**63, where, field, "a 64-bit integer", value)
        elif isinstance(value, (dict, list)):
            if depth >= MAX_DEPTH:
                raise refused(where, f"{field} nests deeper than {MAX_DEPTH} levels")
            if len(value) > MAX_ITEMS:
                raise refused(where, f"{field} has {len(value):,} items; at most {MAX_ITEMS:,}")
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in items:
                if isinstance(key, str):
                    need(len(key) <= MAX_NAME_CHARS, where, field, "short keys", key)
                stack.append((item, f"{field}[{key!r}]", depth + 1))


def metadata_of(header: dict[str, Any], where: str) -> dict[str, Any]:
    extra = header.get("__metadata__")
    raw = extra.get(_MAGIC) if isinstance(extra, dict) else None
    if raw is None:
        raise ModelFileError(
            f"{where} is a safetensors file but not a tlearn model "
            "(no tlearn metadata); it may hold plain weights"
        )
    meta: Any = None
    try:
        meta = json.loads(raw) if isinstance(raw, str) else None
    except (ValueError, RecursionError) as e:
        raise ModelFileError(f"{where} has damaged tlearn metadata ({str(e)[:200]})") from None
    need(isinstance(meta, dict), where, "the tlearn metadata", "a JSON object", raw)
    check_json(meta, where)
    fmt = meta.get("format_version")
    if not isinstance(fmt, int) or isinstance(fmt, bool) or fmt < 1:
        raise ModelFileError(f"{where} has no valid format_version")
    if fmt > FORMAT_VERSION:
        raise ModelFileError(
            f"{where} uses model-file format {fmt}, newer than this tlearn understands "
            f"({FORMAT_VERSION}); upgrade tlearn (pip install -U tlearn)"
        )
    return meta


def read_header(path: str) -> dict[str, Any]:
    """The safetensors header of the file at ``path``, reading no more than it."""
    if not os.path.isfile(path):
        raise ModelFileError(f"no such model file: {path!r}")
    with open(path, "rb") as f:
        head = f.read(8)
        data = head + f.read(header_length(head, repr(path)))
    return parse_header(data, repr(path))


def _tensor_index(header: dict[str, Any], where: str) -> dict[str, tuple[str, tuple[int, ...]]]:
    """``name -> (dtype, shape)`` of every tensor the header declares (safetensors checks
    later that the bytes are there)."""
    index = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        shape: Any = entry.get("shape") if isinstance(entry, dict) else None
        ok = (
            isinstance(shape, list)
            and len(shape) <= 8
            and all(isinstance(n, int) and 0 <= n < 2**40 for n in shape)
            and isinstance(entry.get("dtype"), str)
        )
        need(ok, where, f"the header's entry for tensor {name!r}", "a dtype and a shape", entry)
        index[name] = (entry["dtype"], tuple(shape))
    return index


# -- checking the metadata before anything is built ----------------------------------------
@dataclass
class Plan:
    """What a checked file builds: the kind, the metadata (paths dropped), the classes, the
    feature extractor's parameters, the model's parameters, and the head's feature count."""

    kind: ModelKind
    meta: dict[str, Any]
    classes: np.ndarray
    preprocessing: Preprocessing
    feature_params: dict[str, Any]
    params: dict[str, Any]
    n_features: int


def _object(parent: dict[str, Any], key: str, where: str, field: str) -> dict[str, Any]:
    value = parent.get(key)
    need(isinstance(value, dict), where, field, "an object", value)
    return value  # type: ignore[return-value]


def _name(parent: dict[str, Any], key: str, where: str, field: str) -> str:
    value = parent.get(key)
    ok = isinstance(value, str) and 0 < len(value) <= MAX_NAME_CHARS
    need(ok, where, field, f"a name of 1 to {MAX_NAME_CHARS} characters", value)
    return value  # type: ignore[return-value]


def _preprocessing(bmeta: dict[str, Any], where: str) -> Preprocessing:
    field = "backbone.preprocessing"
    d = _object(bmeta, "preprocessing", where, field)
    size = d.get("input_size")
    need(_satisfies(_IMAGE_SIZE, size), where, f"{field}.input_size", "in [8, 4096]", size)
    for key, low, high in (("mean", -10.0, 10.0), ("std", 1e-3, 10.0)):
        values, bounds = d.get(key), Interval(Real, low, high)
        ok = isinstance(values, list) and len(values) == 3
        ok = ok and all(bounds.is_satisfied_by(v) for v in values)  # type: ignore[union-attr]
        need(ok, where, f"{field}.{key}", f"3 numbers in [{low:g}, {high:g}]", values)
    crop = d.get("crop_pct", 0.875)
    need(CROP_PCT.is_satisfied_by(crop), where, f"{field}.crop_pct", str(CROP_PCT), crop)
    flag, pad = d.get("crop_small", True), d.get("pad_small", 0)
    need(isinstance(flag, bool), where, f"{field}.crop_small", "true or false", flag)
    pads = Interval(Integral, 0, 1024)
    need(pads.is_satisfied_by(pad), where, f"{field}.pad_small", str(pads), pad)
    try:
        return Preprocessing.from_dict(d)
    except (ValueError, TypeError) as e:
        raise refused(where, f"{field}: {e}") from None


def _satisfies(constraints: list[Any], value: Any) -> bool:
    try:
        validate_params("", {"v": value}, {"v": constraints})
    except InvalidParameterError:
        return False
    return True


def _from_text(text: str, default: Any) -> Any:
    try:
        value = json.loads(text.replace("(", "[").replace(")", "]"))
    except (ValueError, RecursionError):
        return default
    return value if isinstance(value, list) else default


def _params(
    owner: type, raw: Any, where: str, field: str, fixed: tuple[str, ...] = ()
) -> dict[str, Any]:
    """``raw`` as parameters of ``owner``, each within its constraints; path-valued ones
    (a weights file, a cache or checkpoint folder) are those of the machine that saved the
    model and become ``owner``'s defaults. ``fixed``: set by the loader, not the file."""
    need(isinstance(raw, dict), where, field, "an object", raw)
    defaults = owner().get_params()
    constraints: dict[str, list[Any]] = owner._parameter_constraints  # type: ignore[attr-defined]
    out = {}
    for name, value in raw.items():
        if name not in defaults or name in fixed:
            raise refused(where, f"{field} holds {name!r}, which is not a parameter to load")
        allowed = constraints.get(name, [])
        if "path" in allowed and value is not None and value != defaults[name]:
            value = defaults[name]  # a path on the machine that saved the model
        elif name in _TEXT_BEFORE_0_3 and isinstance(value, str):
            value = _from_text(value, defaults[name])
        short = not isinstance(value, str) or len(value) <= MAX_NAME_CHARS
        need(short, where, f"{field}.{name}", f"at most {MAX_NAME_CHARS} characters", value)
        try:
            validate_params(owner.__name__, {name: value}, {name: allowed})
        except InvalidParameterError as e:
            raise refused(where, f"{field}.{name}: {str(e)[:300]}") from None
        out[name] = value
    return out


def _classes(meta: dict[str, Any], where: str, minimum: int = 2) -> np.ndarray:
    """The class labels: ``minimum`` (2; 1 for a multi-label model, whose one label is
    a yes or no of its own) to :data:`MAX_ITEMS` distinct ones of the recorded type."""
    values: Any = meta.get("classes")
    kind: Any = meta.get("classes_type")
    types = {"int": int, "bool": bool, "str": str}
    need(kind in types, where, "classes_type", "'int', 'bool' or 'str'", kind)
    ok = isinstance(values, list) and minimum <= len(values) <= MAX_ITEMS
    # type(v) is int: a bool is an int to Python, but not a class label of type int
    ok = ok and all(type(v) is types[kind] for v in values) and len(set(values)) == len(values)
    need(ok, where, "classes", f"{minimum} to {MAX_ITEMS} distinct labels of type {kind}", values)
    if kind == "str":  # numpy stores every name at the longest one's width
        width = max(len(v) for v in values) * 4 * len(values)
        need(width <= _MAX_CLASS_BYTES, where, "classes", "names of reasonable length", "...")
    return _classes_from_json(values, kind)


def _feature_params(bmeta: dict[str, Any], where: str) -> dict[str, Any]:
    """The feature extractor's recorded parameters, checked; a device this machine lacks
    becomes ``"auto"`` (the model was saved where it had one)."""
    raw = _object(bmeta, "params", where, "backbone.params")
    params = _params(PretrainedFeatures, {**_BEFORE_0_2, **raw}, where, "backbone.params",
                     fixed=("backbone", "weights"))  # fmt: skip
    device = params.get("device", "auto")
    if device != "auto" and not _device_here(device, where):
        warnings.warn(
            f"{where} was fitted on device {device!r}, which this machine does not have; "
            "using device 'auto'",
            UserWarning,
            stacklevel=4,
        )
        params["device"] = "auto"
    return params


def _device_here(name: str, where: str) -> bool:
    """Whether this machine has the device ``name``; a name that is no device an engine
    runs on is refused."""
    kinds = sorted({kind for spec in ENGINE_TABLE.values() for kind in spec.devices})
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        device = None
    if device is None or device.type not in kinds:
        need(False, where, "backbone.params.device", f"'auto' or a {'/'.join(kinds)} device", name)
        return False
    if device.type == "cuda":
        return torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count()
    if device.type == "mps":
        return bool(torch.backends.mps.is_available())
    return True


def _engines(meta: dict[str, Any], bmeta: dict[str, Any], where: str) -> None:
    """The engine recorded at fit (``engine_``) and a carried calibrated one (``engine``)."""
    recorded, carried = bmeta.get("engine_"), meta.get("engine")
    ok = recorded is None or recorded in ENGINE_TABLE
    need(ok, where, "backbone.engine_", f"one of {', '.join(ENGINE_TABLE)}", recorded)
    ok = carried in (None, False) or (
        carried in ENGINE_TABLE and ENGINE_TABLE[carried].runtime == "openvino"
    )
    need(ok, where, "engine", "null or an OpenVINO engine's name", carried)


def _check_tensors(
    kind: ModelKind, meta: dict[str, Any], index: dict[str, Any], n_classes: int, where: str
) -> int:
    """The head's and the carried engine's tensors against the metadata; every tensor
    belongs to a part. Returns the number of features the head takes."""
    head = {k: shape for k, (_, shape) in index.items() if k.startswith("head.")}
    for name, (dtype, _) in index.items():
        if name.startswith("head."):
            need(dtype in ("F32", "F64"), where, f"tensor {name!r}", "float", dtype)
        elif name in ("engine.xml", "engine.bin"):
            ok = dtype == "U8" and len(index[name][1]) == 1 and bool(meta.get("engine"))
            need(ok, where, f"tensor {name!r}", "the bytes of a carried engine", dtype)
        elif not name.startswith("backbone."):
            raise refused(where, f"it holds a tensor {name!r} that no part of a model uses")
    if meta.get("engine") and not {"engine.xml", "engine.bin"} <= set(index):
        raise refused(where, f"its {meta['engine']} engine's tensors are missing")
    try:
        n_features = kind.check_file(meta["head"], head, n_classes)
    except ValueError as e:
        raise refused(where, str(e)) from None
    return n_features


def _check_network(architecture: str, index: dict[str, Any], where: str) -> None:
    """The network ``architecture`` built on the meta device (nothing allocated) must hold
    exactly the file's ``backbone.*`` tensors, so building it costs no more than they do."""
    stored = {k[len("backbone.") :]: v for k, v in index.items() if k.startswith("backbone.")}
    try:
        with torch.device("meta"):
            skeleton = build_backbone(architecture, weights=None).model.state_dict()
    except TlearnError as e:  # an unknown name
        raise refused(where, f"backbone.architecture: {str(e)[:300]}") from None
    except Exception:  # the few networks the meta device cannot build: checked once built
        return
    expected = {
        k: (_DTYPES.get(v.dtype, str(v.dtype)), tuple(v.shape)) for k, v in skeleton.items()
    }
    for name in sorted(set(expected) | set(stored)):
        if expected.get(name) != stored.get(name):
            got = stored.get(name, "nothing")
            raise refused(
                where,
                f"{architecture} has a tensor {name!r} of (dtype, shape) {expected.get(name)}, "
                f"but the file holds {got} under 'backbone.{name}'",
            )


def check_file(header: dict[str, Any], where: str) -> Plan:
    """Check everything the file declares, before any tensor is read or module built."""
    meta = metadata_of(header, where)
    kind = MODEL_KINDS.get(meta["kind"]) if isinstance(meta.get("kind"), str) else None
    if kind is None:
        raise ModelFileError(
            f"{where} holds a model of kind {str(meta.get('kind'))[:80]!r}, which this "
            "version of tlearn cannot load; upgrade tlearn"
        )
    bmeta = _object(meta, "backbone", where, "backbone")
    _name(bmeta, "name", where, "backbone.name")
    architecture = _name(bmeta, "architecture", where, "backbone.architecture")
    _name(bmeta, "weights_sha256", where, "backbone.weights_sha256")
    preprocessing = _preprocessing(bmeta, where)
    feature_params = _feature_params(bmeta, where)
    _engines(meta, bmeta, where)
    classes = _classes(meta, where, 1 if kind.activation == "sigmoid" else 2)
    head = _object(meta, "head", where, "head")
    head.setdefault("history", meta.get("history", []))  # files before 0.2 kept them here
    head.setdefault("best_epoch", meta.get("best_epoch", -1))
    params = meta.get("params")
    if params is None and kind.params_in_head_before_0_2:
        before = head.get("params", {})
        need(isinstance(before, dict), where, "head.params", "an object", before)
        params = {"backbone": bmeta["name"], **bmeta["params"], **before}
    if kind.estimator is None:
        params = {}  # the kind has no parameters of its own (a Pipeline's are its steps')
    else:
        params = _params(kind.estimator, params or {}, where, "params")
    index = _tensor_index(header, where)
    n_features = _check_tensors(kind, meta, index, len(classes), where)
    _check_network(architecture, index, where)
    return Plan(kind, meta, classes, preprocessing, feature_params, params, n_features)


def check_carried_engine(
    xml: bytes, weights: bytes, size: int, n_features: int, where: str
) -> None:
    """A calibrated engine carried by a file is a graph from the file: before it is compiled
    it must take uint8 ``size`` x ``size`` images and give ``n_features``, with every
    tensor's shape known for one image and none over :data:`MAX_ENGINE_ELEMENTS` elements,
    and no loops (whose work the shapes do not show)."""
    try:
        import openvino as ov
    except ImportError:
        return  # it cannot run here: the loader predicts with fp32 torch instead
    try:
        model = ov.Core().read_model(xml, ov.Tensor(np.frombuffer(weights, np.uint8).copy()))
        (image,), (features,) = model.inputs, model.outputs
        fits = (
            image.get_element_type() == ov.Type.u8
            and image.get_partial_shape().compatible(ov.PartialShape([-1, size, size, 3]))
            and features.get_partial_shape().compatible(ov.PartialShape([-1, n_features]))
        )
        model.reshape({image: ov.PartialShape([1, size, size, 3])})
    except Exception as e:
        raise refused(
            where, f"its engine is not a readable OpenVINO model ({str(e)[:200]})"
        ) from None
    if not fits:
        raise refused(
            where, f"its engine does not take {size} px uint8 images to {n_features} features"
        )
    for op in model.get_ordered_ops():
        kind = op.get_type_name()
        if kind in ("Loop", "TensorIterator", "If"):
            raise refused(where, f"its engine holds a {kind} operation (tlearn writes none)")
        for i in range(op.get_output_size()):
            shape = op.get_output_partial_shape(i)
            n = math.prod(shape.to_shape()) if shape.is_static else None
            if n is None or n > MAX_ENGINE_ELEMENTS:
                raise refused(
                    where,
                    f"its engine's {kind} operation makes a tensor of shape {shape} for one "
                    f"image (at most {MAX_ENGINE_ELEMENTS:,} elements, all known)",
                )
