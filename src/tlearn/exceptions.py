"""The errors tlearn raises, as one small tree.

Every message says which input, what is wrong, and what to do about it::

    TlearnError
    ├── DataError                  (also a ValueError)
    │   ├── ImageReadError         one image file could not be decoded
    │   └── UnknownClassError      labels the model has never seen
    ├── BackboneError
    │   ├── UnknownBackboneError   (also a KeyError-free ValueError) name not found
    │   └── WeightsUnavailableError  weights not found locally and not downloadable
    ├── ModelFileError             a model file that is damaged, too new or not a model
    └── DatasetUnavailableError    a dataset not found locally and not downloadable
"""

from __future__ import annotations

__all__ = [
    "BackboneError",
    "DataError",
    "DatasetUnavailableError",
    "ImageReadError",
    "ModelFileError",
    "TlearnError",
    "UnknownBackboneError",
    "UnknownClassError",
    "WeightsUnavailableError",
]


class TlearnError(Exception):
    """Base class of every error tlearn raises on purpose."""


class DataError(TlearnError, ValueError):
    """The input data cannot be used as given."""


class ImageReadError(DataError):
    """One image could not be read; ``path`` names it and ``reason`` says why."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"cannot read image {path!r}: {reason}")


class UnknownClassError(DataError):
    """Labels that the fitted model does not know."""


class BackboneError(TlearnError):
    """A backbone cannot be built."""


class UnknownBackboneError(BackboneError, ValueError):
    """No backbone of that name exists in tlearn, timm or torchvision."""


class WeightsUnavailableError(BackboneError):
    """Pretrained weights are not available locally and could not be downloaded."""


class ModelFileError(TlearnError, ValueError):
    """A model file is damaged, from a newer format version, or not a tlearn model."""


class DatasetUnavailableError(TlearnError):
    """A dataset is not available locally and could not be downloaded."""
