"""What every fitted classifier offers the evaluation and prediction code: its feature
extractor, a head mapping features to probabilities, and its class labels."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.pipeline import Pipeline

from tlearn.features import PretrainedFeatures
from tlearn.probe import LinearProbe

__all__ = ["ModelParts", "split_model"]


@dataclass
class ModelParts:
    features: PretrainedFeatures
    predict_proba: Callable[[np.ndarray], np.ndarray]
    classes: np.ndarray


def split_model(model: Any) -> ModelParts:
    """Split a fitted LinearProbe or Pipeline(PretrainedFeatures, ...) into its parts, so
    that features can be streamed batch by batch and errors kept per image."""
    if isinstance(model, LinearProbe):
        return ModelParts(model.features_, model.predict_proba_features, model.classes_)
    if isinstance(model, Pipeline) and isinstance(model.steps[0][1], PretrainedFeatures):
        head = model[1:]
        return ModelParts(model.steps[0][1], head.predict_proba, np.asarray(head.classes_))
    raise TypeError(
        "expected a fitted LinearProbe or a Pipeline starting with PretrainedFeatures, got "
        f"{type(model).__name__}"
    )
