"""What every fitted classifier offers the evaluation and prediction code: its feature
extractor, a head mapping features to probabilities, and its class labels."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.pipeline import Pipeline

from tlearn.features import PretrainedFeatures
from tlearn.finetune import FineTuneClassifier
from tlearn.probe import LinearProbe

__all__ = ["IMAGENET_PREFIX", "ModelParts", "imagenet_model", "python_value", "split_model"]

IMAGENET_PREFIX = "imagenet:"


@dataclass
class ModelParts:
    features: PretrainedFeatures
    predict_proba: Callable[[np.ndarray], np.ndarray]
    classes: np.ndarray


def python_value(v: Any) -> Any:
    """A numpy scalar as the plain Python value (for JSON and CSV output)."""
    return v.item() if hasattr(v, "item") else v


def imagenet_model(name: str) -> ModelParts:
    """The backbone's own ImageNet-1k head, with readable class names (from timm), so a
    backbone can be checked on a photo before anything is trained: ``imagenet:NAME``."""
    import torch
    from timm.data import ImageNetInfo

    features = PretrainedFeatures(name.removeprefix(IMAGENET_PREFIX)).fit()
    head = features.backbone_.classifier
    if head is None or head.out_features != 1000:
        raise TypeError(f"{name!r} has no ImageNet-1k classifier head to predict with")
    info = ImageNetInfo()
    classes = np.array([info.index_to_description(i) for i in range(1000)], dtype=object)

    def predict_proba(F: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            logits = head(torch.from_numpy(np.ascontiguousarray(F, dtype=np.float32)))
        return logits.softmax(dim=1).numpy()

    return ModelParts(features, predict_proba, classes)


def split_model(model: Any) -> ModelParts:
    """Split a fitted LinearProbe or Pipeline(PretrainedFeatures, ...) into its parts, so
    that features can be streamed batch by batch and errors kept per image."""
    if isinstance(model, ModelParts):
        return model
    if isinstance(model, (LinearProbe, FineTuneClassifier)):
        return ModelParts(model.features_, model.predict_proba_features, model.classes_)
    if isinstance(model, Pipeline) and isinstance(model.steps[0][1], PretrainedFeatures):
        head = model[1:]
        return ModelParts(model.steps[0][1], head.predict_proba, np.asarray(head.classes_))
    raise TypeError(
        "expected a fitted LinearProbe or a Pipeline starting with PretrainedFeatures, got "
        f"{type(model).__name__}"
    )
