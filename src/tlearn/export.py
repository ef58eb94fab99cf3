"""``tlearn export``: the whole classifier (backbone + head, probabilities out) as ONNX or
OpenVINO IR for deployment, with a JSON sidecar holding the classes and the preprocessing;
:func:`load_exported` runs such a file again, for ``tlearn predict``.

The head is folded into one linear layer: for a probe, the scaler and the logistic
regression become ``W = coef / scale``, ``b = intercept - (mean / scale) @ coef.T``.
A model fitted on ``openvino-int8`` exports to OpenVINO as its calibrated int8 backbone plus
that head (taking uint8 NHWC pixels); every other export is fp32 (normalised NCHW input).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tlearn.backbones import Backbone
from tlearn.data.images import Preprocessing
from tlearn.exceptions import ModelFileError
from tlearn.features import PretrainedFeatures
from tlearn.finetune import FineTuneClassifier
from tlearn.models import ModelParts, python_value, split_model
from tlearn.probe import LinearProbe
from tlearn.runtime.engines import OnnxRuntimeEngine, OpenVinoEngine

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


def _linear_head(model: Any) -> tuple[np.ndarray, np.ndarray]:
    """The model's head as one linear layer over the backbone's features (2-class logistic
    regression becomes the logits [0, z])."""
    if isinstance(model, FineTuneClassifier):
        return model.head_weight_, model.head_bias_
    if isinstance(model, LinearProbe):
        scaler, clf = model.scaler_, model.classifier_
    else:  # a Pipeline(PretrainedFeatures, [StandardScaler], LogisticRegression)
        steps = [est for _, est in model.steps]
        scaler, clf = (steps[1] if len(steps) == 3 else None), steps[-1]
    coef, intercept = clf.coef_.astype(np.float64), clf.intercept_.astype(np.float64)
    if scaler is not None:
        intercept = intercept - (scaler.mean_ / scaler.scale_) @ coef.T
        coef = coef / scaler.scale_
    if coef.shape[0] == 1:
        coef = np.vstack([np.zeros_like(coef), coef])
        intercept = np.concatenate([[0.0], intercept])
    return coef, intercept


def export_model(model: Any, path: str | os.PathLike[str], format: str = "onnx") -> str:
    """Write ``model`` as ``path`` (``.onnx`` or ``.xml`` + ``.bin``) and ``path.json``."""
    if format not in FORMATS:
        raise ValueError(f"format must be one of {sorted(FORMATS)}, got {format!r}")
    parts = split_model(model)
    bb = parts.features.backbone_
    pre = parts.features.preprocessing_
    weight, bias = _linear_head(model)
    net = _Classifier(bb.model, weight, bias).eval()
    path = Path(path)
    if path.suffix != FORMATS[format]:
        path = path.with_suffix(FORMATS[format])
    if not path.parent.is_dir():
        raise ModelFileError(
            f"cannot write {str(path)!r}: the folder {str(path.parent)!r} does not exist"
        )
    engine = getattr(parts.features, "_engine", None)
    int8 = isinstance(engine, OpenVinoEngine) and engine.precision == "int8"
    if format == "onnx":
        OnnxRuntimeEngine._export(net, pre, path)
    elif int8:
        _append_head(engine.path, weight, bias, path)  # type: ignore[union-attr]
    else:
        OpenVinoEngine._convert(net, pre, path)
    sidecar = {
        "format": "tlearn-export",
        "format_version": 1,
        "precision": "int8" if int8 and format == "openvino" else "fp32",
        "inputs": (
            "uint8 NHWC pixels (normalised inside)"
            if int8 and format == "openvino"
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


def _append_head(backbone_xml: Path, weight: np.ndarray, bias: np.ndarray, path: Path) -> None:
    """The calibrated int8 backbone (uint8 pixels in, features out) with the folded linear
    head and a softmax appended, saved as ``path``: the deployed model is the one the
    fitted model ran."""
    import openvino as ov
    import openvino.opset13 as ops

    model = ov.Core().read_model(str(backbone_xml))
    features = model.get_results()[0].input_value(0)
    logits = ops.add(
        ops.matmul(features, ops.constant(np.asarray(weight, np.float32).T), False, False),
        ops.constant(np.asarray(bias, np.float32)),
    )
    classifier = ov.Model([ops.softmax(logits, 1)], model.get_parameters(), "tlearn-classifier")
    ov.save_model(classifier, str(path), compress_to_fp16=False)


def load_exported(path: str | os.PathLike[str]) -> ModelParts:
    """An exported classifier ready for :func:`tlearn.inference.iter_predictions`."""
    path = Path(path)
    meta_path = Path(str(path) + ".json")
    if not path.is_file() or not meta_path.is_file():
        raise ModelFileError(
            f"{str(path)!r} needs its sidecar {meta_path.name!r} (written by "
            "tlearn export) beside it"
        )
    meta = json.loads(meta_path.read_text())
    pre = Preprocessing.from_dict(meta["preprocessing"])
    classes = np.asarray(meta["classes"])
    engine: Any = (
        OnnxRuntimeEngine.from_file(path, pre)
        if path.suffix == ".onnx"
        else OpenVinoEngine.from_file(path, pre)
    )
    features = PretrainedFeatures(meta["backbone"], image_size=pre.input_size)
    features._set_backbone(
        Backbone(
            name=path.name,
            architecture=meta["backbone"],
            model=nn.Identity(),
            n_features=len(classes),
            preprocessing=pre,
            weights_sha256=meta["weights_sha256"],
            weights_source=str(path),
        )
    )
    features._engine, features.engine_ = engine, f"exported {path.suffix[1:]} model"
    return ModelParts(features, lambda probabilities: probabilities, classes)
