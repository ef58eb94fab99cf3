"""``tlearn export``: the whole classifier (backbone + head, probabilities out) as ONNX or
OpenVINO IR for deployment. The file alone is enough: its input is named ``images``, its
output ``probabilities``, and the classes, the preprocessing and what the input expects are
in the file's own metadata (ONNX ``metadata_props``, OpenVINO ``rt_info`` under ``tlearn``;
each value a string, JSON for lists and objects). A JSON sidecar (``PATH.json``) repeats
them for tools that read no metadata. :func:`load_exported` runs such a file again
(``tlearn predict``, the predictor), from its metadata or the sidecar.

The head comes from the model's kind (:data:`tlearn.models.MODEL_KINDS`) as one linear
layer and its activation: a softmax, or a multi-label model's sigmoid (each label's own
probability; its threshold per label is in the metadata as ``thresholds``).
A model fitted on ``openvino-int8`` exports to OpenVINO as its calibrated int8
backbone plus that head (taking uint8 NHWC pixels); every other export is fp32 (normalised
NCHW input). The conversions are the engines' own (:func:`export_onnx`,
:func:`convert_openvino`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tlearn._io import atomic_path, python_value, write_atomic
from tlearn._validation import check_option
from tlearn.data.images import Preprocessing
from tlearn.exceptions import ModelFileError
from tlearn.models import ModelParts, model_kind, split_model
from tlearn.runtime.onnx_engine import OnnxRuntimeEngine, export_onnx, onnx_description
from tlearn.runtime.openvino_engine import (
    OpenVinoEngine,
    convert_openvino,
    ir_description,
    label_model,
)

__all__ = ["FORMATS", "export_model", "load_exported"]

FORMATS = {"onnx": ".onnx", "openvino": ".xml"}
#: The name of an export's output: what it holds.
OUTPUT = "probabilities"


class _Classifier(nn.Module):
    """Normalised images -> class probabilities (``activation``: softmax, or sigmoid for a
    multi-label model)."""

    def __init__(
        self, backbone: nn.Module, weight: np.ndarray, bias: np.ndarray, activation: str
    ) -> None:
        super().__init__()
        self.backbone, self.sigmoid = backbone, activation == "sigmoid"
        self.head = nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            self.head.weight.copy_(torch.from_numpy(np.asarray(weight, np.float32)))
            self.head.bias.copy_(torch.from_numpy(np.asarray(bias, np.float32)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.head(self.backbone(x))
        return logits.sigmoid() if self.sigmoid else logits.softmax(dim=1)


def export_model(model: Any, path: str | os.PathLike[str], format: str = "onnx") -> str:
    """Write ``model`` as ``path`` (``.onnx`` or ``.xml`` + ``.bin``) and ``path.json``."""
    check_option("export_model", "format", format, FORMATS)
    parts = split_model(model)
    assert parts.features is not None
    bb, pre, net = parts.features.backbone_, parts.preprocessing, parts.features.network_
    kind = model_kind(model)
    weight, bias = kind.linear_head(model)
    path = Path(path)
    if path.suffix != FORMATS[format]:
        path = path.with_suffix(FORMATS[format])
    if not path.parent.is_dir():
        raise ModelFileError(
            f"cannot write {str(path)!r}: the folder {str(path.parent)!r} does not exist"
        )
    ir = getattr(parts.engine, "ir", None)
    int8 = format == "openvino" and ir is not None
    sidecar = _description(parts, bb, pre, int8)
    metadata = {k: v if isinstance(v, str) else json.dumps(v) for k, v in sidecar.items()}
    if format == "onnx":
        classifier = _Classifier(net, weight, bias, kind.activation).eval()
        export_onnx(classifier, pre, path, output=OUTPUT, metadata=metadata)
    elif int8:
        _append_head(ir, (weight, bias, kind.activation), path, metadata)
    else:
        convert_openvino(_Classifier(net, weight, bias, kind.activation).eval(), pre, path,
                         output=OUTPUT, metadata=metadata)  # fmt: skip
    write_atomic(str(path) + ".json", (json.dumps(sidecar, indent=2) + "\n").encode())
    return str(path)


def _description(parts: ModelParts, bb: Any, pre: Preprocessing, int8: bool) -> dict[str, Any]:
    """What a deployed file needs said about it: classes, preprocessing, input, output (a
    multi-label model's: sigmoid probabilities and the threshold of each label)."""
    several = parts.thresholds is not None
    outputs = (
        f"{OUTPUT}: float32 (n, n_labels), each label's own probability (sigmoid), in the "
        "order of classes; a label applies where it reaches its threshold"
        if several
        else f"{OUTPUT}: float32 (n, n_classes), in the order of classes"
    )
    extra = (
        {"activation": "sigmoid", "thresholds": [float(t) for t in parts.thresholds]}
        if parts.thresholds is not None
        else {}
    )
    return {
        "format": "tlearn-export",
        "format_version": 1,
        "precision": "int8" if int8 else "fp32",
        "inputs": (
            "uint8 NHWC pixels (normalised inside)"
            if int8
            else "float32 NCHW, normalised with the preprocessing's mean and std"
        ),
        "outputs": outputs,
        "backbone": bb.architecture,
        "weights_sha256": bb.weights_sha256,
        "classes": [python_value(c) for c in parts.classes],
        "preprocessing": pre.to_dict(),
        **extra,
    }


def _append_head(
    ir: Any, head: tuple[np.ndarray, np.ndarray, str], path: Path, metadata: dict[str, str]
) -> None:
    """The calibrated int8 backbone (uint8 pixels in, features out) with the folded linear
    head and its activation (softmax or sigmoid) appended, saved as ``path``: the deployed
    model is the one the fitted model ran."""
    import openvino as ov
    import openvino.opset13 as ops

    weight, bias, activation = head
    model = ov.Core().read_model(ir[0], ov.Tensor(np.frombuffer(ir[1], np.uint8).copy()))
    features = model.get_results()[0].input_value(0)
    logits = ops.add(
        ops.matmul(features, ops.constant(np.asarray(weight, np.float32).T), False, False),
        ops.constant(np.asarray(bias, np.float32)),
    )
    out = ops.sigmoid(logits) if activation == "sigmoid" else ops.softmax(logits, 1)
    classifier = ov.Model([out], model.get_parameters(), "tlearn-classifier")
    label_model(classifier, OUTPUT, metadata)
    with atomic_path(path, suffix=path.suffix, companions=(".bin",)) as tmp:
        ov.save_model(classifier, tmp, compress_to_fp16=False)


def _read_description(path: Path, data: bytes, weights: bytes) -> tuple[dict[str, Any], str]:
    """An export's description (classes, preprocessing...): from the file's own metadata,
    else from its sidecar (exports of earlier versions had only that), checked against the
    network's input and output; and where it came from."""
    if path.suffix == ".onnx":
        found, inputs, outputs = onnx_description(data)
    else:
        found, inputs, outputs = ir_description(data, weights)
    if "classes" in found and "preprocessing" in found:
        where = repr(str(path))
        what = f"the metadata of {where}"
        lists = [k for k in ("classes", "preprocessing", "thresholds") if k in found]
        meta: dict[str, Any] = {**found, **{k: _json(found[k], what) for k in lists}}
    else:
        sidecar = Path(str(path) + ".json")
        if not sidecar.is_file():
            raise ModelFileError(
                f"{str(path)!r} has no tlearn metadata (classes, preprocessing) and no sidecar "
                f"{sidecar.name!r} beside it: export it with tlearn export"
            )
        where = repr(str(sidecar))
        meta = _json(sidecar.read_text(errors="replace"), f"the sidecar {where}")
        if not isinstance(meta, dict):
            raise ModelFileError(f"the sidecar {where} is damaged (not a JSON object)")
    _check_fits(meta, where, inputs, outputs)
    return meta, where


def _json(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as e:  # RecursionError: nesting past Python's stack
        raise ModelFileError(f"{what} is damaged ({str(e)[:100]})") from None


def _check_fits(meta: dict[str, Any], where: str, inputs: list[Any], outputs: list[Any]) -> None:
    """Refuse a description the network cannot honour (it comes from the file: from
    anyone): classes that are not a list of distinct names or numbers, or not one per
    output, and an input size other than the network's (a huge one allocated its pixels
    on the first prediction)."""
    classes, pre = meta.get("classes"), meta.get("preprocessing")
    thresholds = meta.get("thresholds")
    if meta.get("activation", "softmax") not in ("softmax", "sigmoid") or (
        (meta.get("activation") == "sigmoid") != (thresholds is not None)
    ):
        raise ModelFileError(
            f"the description in {where} is damaged (a sigmoid model has thresholds, and only it)"
        )
    if thresholds is not None and not (
        isinstance(thresholds, list)
        and isinstance(classes, list)
        and len(thresholds) == len(classes)
        and all(
            isinstance(t, (int, float)) and not isinstance(t, bool) and 0 <= t <= 1
            for t in thresholds
        )  # fmt: skip
    ):
        raise ModelFileError(
            f"the description in {where} is damaged (thresholds must be one probability "
            "for each class)"
        )
    if not isinstance(classes, list) or not classes or not isinstance(pre, dict):
        raise ModelFileError(
            f"the description in {where} is damaged (classes must be a non-empty list and "
            "preprocessing an object)"
        )
    if not all(isinstance(c, (str, int, float)) for c in classes):
        raise ModelFileError(f"the description in {where} has classes that are not names")
    if len(np.unique(np.asarray(classes))) != len(classes):
        raise ModelFileError(f"the description in {where} names a class twice")
    if outputs[-1:] != [len(classes)]:
        raise ModelFileError(
            f"{where} names {len(classes)} classes but its network gives "
            f"{outputs[-1] if outputs else 'no'} outputs"
        )
    size = pre.get("input_size")
    square = inputs[2:4] if inputs[1:2] == [3] else inputs[1:3]  # NCHW, or uint8 NHWC
    if len(inputs) != 4 or square != [size, size] or isinstance(size, bool):
        raise ModelFileError(
            f"{where} says the input is {size!r} pixels square but its network takes "
            f"{inputs}: it does not describe this network"
        )


def _identity(probabilities: np.ndarray) -> np.ndarray:
    return probabilities


def load_exported(path: str | os.PathLike[str]) -> ModelParts:
    """An exported classifier as :class:`~tlearn.models.ModelParts`, its engine holding the
    file's bytes (so it pickles and runs anywhere the runtime is installed)."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"no such exported model: {str(path)!r}")
    data = path.read_bytes()
    weights = b""
    if path.suffix == ".xml":
        if not path.with_suffix(".bin").is_file():
            raise ModelFileError(f"{str(path)!r} needs its weights {path.stem}.bin beside it")
        weights = path.with_suffix(".bin").read_bytes()
    meta, where = _read_description(path, data, weights)
    try:
        pre = Preprocessing.from_dict(meta["preprocessing"])
        classes = np.asarray(meta["classes"])
    except (ValueError, KeyError, TypeError) as e:
        raise ModelFileError(f"the description in {where} is damaged ({e})") from None
    engine: Any
    if path.suffix == ".onnx":
        engine = OnnxRuntimeEngine.from_bytes(data, pre)
    else:
        engine = OpenVinoEngine.from_ir(data, weights, pre)
    info = {
        "kind": "export",
        "format": path.suffix[1:],
        "backbone": meta.get("backbone"),
        "precision": meta.get("precision", "fp32"),
        "activation": "sigmoid" if "thresholds" in meta else "softmax",
    }
    cuts = meta.get("thresholds")
    thresholds = None if cuts is None else np.asarray(cuts, np.float64)
    return ModelParts(pre, engine, _identity, classes, None, info, thresholds)
