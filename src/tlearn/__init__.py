"""tlearn: transfer learning for image classification.

Pretrained backbones (timm and torchvision names; EfficientNet-Lite weights embedded) as
scikit-learn transformers, a tuned linear probe, safe model files, and a CLI.
"""

from tlearn.backbones import Backbone, list_backbones, load_backbone
from tlearn.data import (
    Preprocessing,
    fetch_cifar10,
    fetch_fashion_mnist,
    load_image_csv,
    load_image_folder,
)
from tlearn.exceptions import (
    BackboneError,
    DataError,
    DatasetUnavailableError,
    ImageReadError,
    ModelFileError,
    TlearnError,
    UnknownBackboneError,
    UnknownClassError,
    WeightsUnavailableError,
)
from tlearn.features import PretrainedFeatures
from tlearn.finetune import FineTuneClassifier
from tlearn.persistence import load, save
from tlearn.probe import LinearProbe, make_probe

__version__ = "0.1.0"

__all__ = [
    "Backbone",
    "BackboneError",
    "DataError",
    "DatasetUnavailableError",
    "FineTuneClassifier",
    "ImageReadError",
    "LinearProbe",
    "ModelFileError",
    "Preprocessing",
    "PretrainedFeatures",
    "TlearnError",
    "UnknownBackboneError",
    "UnknownClassError",
    "WeightsUnavailableError",
    "fetch_cifar10",
    "fetch_fashion_mnist",
    "list_backbones",
    "load",
    "load_backbone",
    "load_image_csv",
    "load_image_folder",
    "make_probe",
    "save",
]
