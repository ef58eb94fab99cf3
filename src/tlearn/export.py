"""``tlearn export``: the whole classifier (backbone + head, probabilities out) as ONNX or
OpenVINO IR for deployment, with a JSON sidecar holding the classes and the preprocessing;
:func:`load_exported` runs such a file again (``tlearn predict``, the predictor).

The head comes from the model's kind (:data:`tlearn.models.MODEL_KINDS`) as one linear
layer. A model fitted on ``openvino-int8`` exports to OpenVINO as its calibrated int8
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

from tlearn._validation import check_option
from tlearn.data.images import Preprocessing
from tlearn.exceptions import ModelFileError
from tlearn.models import ModelParts, model_kind, python_value, split_model
from tlearn.runtime.onnx_engine import OnnxRuntimeEngine, export_onnx
from tlearn.runtime.openvino_engine import OpenVinoEngine, convert_openvino

__all__ = ["FORMATS", "export_model", "load_exported"]

FORMATS = {"onnx": ".onnx", "openvino": ".xml"}


class _Classifier(nn.Module):
    """Normalised images -> class probabilities."""

    def __init__(self, backbone: nn.Module, weight: np.ndarray, bias: np.ndarray) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            self.head.weight.copy_(torch.from_numpy(np.asarray(weight, np.float32)))
            self.head.bias.copy_(torch.from_numpy(np.asarray(bias, np.float32)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x)).softmax(dim=1)


def export_model(model: Any, path: str | os.PathLike[str], format: str = "onnx") -> str:
    """Write ``model`` as ``path`` (``.onnx`` or ``.xml`` + ``.bin``) and ``path.json``."""
    check_option("export_model", "format", format, FORMATS)
    parts = split_model(model)
    assert parts.features is not None
    bb, pre, net = parts.features.backbone_, parts.preprocessing, parts.features.network_
    weight, bias = model_kind(model).linear_head(model)
    path = Path(path)
    if path.suffix != FORMATS[format]:
        path = path.with_suffix(FORMATS[format])
    if not path.parent.is_dir():
        raise ModelFileError(
            f"cannot write {str(path)!r}: the folder {str(path.parent)!r} does not exist"
        )
    ir = getattr(parts.engine, "ir", None)
    int8 = format == "openvino" and ir is not None
    if format == "onnx":
        export_onnx(_Classifier(net, weight, bias).eval(), pre, path)
    elif int8:
        _append_head(ir, weight, bias, path)
    else:
        convert_openvino(_Classifier(net, weight, bias).eval(), pre, path)
    sidecar = {
        "format": "tlearn-export",
        "format_version": 1,
        "precision": "int8" if int8 else "fp32",
        "inputs": (
            "uint8 NHWC pixels (normalised inside)"
            if int8
            else "float32 NCHW, normalised with the preprocessing's mean and std"
        ),
        "outputs": "probabilities",
        "backbone": bb.architecture,
        "weights_sha256": bb.weights_sha256,
        "classes": [python_value(c) for c in parts.classes],
        "preprocessing": pre.to_dict(),
    }
    Path(str(path) + ".json").write_text(json.dumps(sidecar, indent=2) + "\n")
    return str(path)


def _append_head(ir: Any, weight: np.ndarray, bias: np.ndarray, path: Path) -> None:
    """The calibrated int8 backbone (uint8 pixels in, features out) with the folded linear
    head and a softmax appended, saved as ``path``: the deployed model is the one the
    fitted model ran."""
    import openvino as ov
    import openvino.opset13 as ops

    model = ov.Core().read_model(ir[0], ov.Tensor(np.frombuffer(ir[1], np.uint8).copy()))
    features = model.get_results()[0].input_value(0)
    logits = ops.add(
        ops.matmul(features, ops.constant(np.asarray(weight, np.float32).T), False, False),
        ops.constant(np.asarray(bias, np.float32)),
    )
    classifier = ov.Model([ops.softmax(logits, 1)], model.get_parameters(), "tlearn-classifier")
    ov.save_model(classifier, str(path), compress_to_fp16=False)


def _identity(probabilities: np.ndarray) -> np.ndarray:
    return probabilities


def load_exported(path: str | os.PathLike[str]) -> ModelParts:
    """An exported classifier as :class:`~tlearn.models.ModelParts`, its engine holding the
    file's bytes (so it pickles and runs anywhere the runtime is installed)."""
    path = Path(path)
    meta_path = Path(str(path) + ".json")
    if not path.is_file() or not meta_path.is_file():
        raise ModelFileError(
            f"{str(path)!r} needs its sidecar {meta_path.name!r} (written by "
            "tlearn export) beside it"
        )
    try:
        meta = json.loads(meta_path.read_text())
        pre = Preprocessing.from_dict(meta["preprocessing"])
        classes = np.asarray(meta["classes"])
    except (ValueError, KeyError, TypeError) as e:
        raise ModelFileError(f"the sidecar {str(meta_path)!r} is damaged ({e})") from None
    engine: Any
    if path.suffix == ".onnx":
        engine = OnnxRuntimeEngine.from_bytes(path.read_bytes(), pre)
    else:
        engine = OpenVinoEngine.from_ir(
            path.read_bytes(), path.with_suffix(".bin").read_bytes(), pre
        )
    info = {
        "kind": "export",
        "format": path.suffix[1:],
        "backbone": meta.get("backbone"),
        "precision": meta.get("precision", "fp32"),
    }
    return ModelParts(pre, engine, _identity, classes, None, info)
