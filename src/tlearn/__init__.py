"""tlearn: transfer learning for image classification.

Pretrained backbones (timm and torchvision names; EfficientNet-Lite weights embedded) as
scikit-learn transformers, a tuned linear probe, fine-tuning, one re-entrant predictor for
every interface, safe model files, and a CLI.

Names are imported on first use: ``import tlearn`` does not import PyTorch or scikit-learn.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tlearn._lazy import lazy_exports
from tlearn.exceptions import (
    BackboneError,
    CheckpointError,
    DataError,
    DatasetUnavailableError,
    EngineError,
    ImageReadError,
    InvalidParameterError,
    ModelFileError,
    TlearnError,
    TrainingError,
    UnknownBackboneError,
    UnknownClassError,
    WeightsUnavailableError,
)

if TYPE_CHECKING:
    from tlearn.backbones import Backbone, list_backbones, load_backbone
    from tlearn.data import (
        Preprocessing,
        fetch_cifar10,
        fetch_fashion_mnist,
        load_image_csv,
        load_image_folder,
    )
    from tlearn.evaluation import Report
    from tlearn.evaluation.evaluate import evaluate
    from tlearn.features import PretrainedFeatures
    from tlearn.finetune import FineTuneClassifier, ScratchClassifier
    from tlearn.multilabel import MultiLabelProbe
    from tlearn.persistence import load, save
    from tlearn.predictor import Predictor, load_predictor
    from tlearn.probe import LinearProbe, make_probe
    from tlearn.training import train

__version__ = "0.2.0"

_WHERE = {
    "Backbone": "tlearn.backbones",
    "list_backbones": "tlearn.backbones",
    "load_backbone": "tlearn.backbones",
    "Preprocessing": "tlearn.data",
    "fetch_cifar10": "tlearn.data",
    "fetch_fashion_mnist": "tlearn.data",
    "load_image_csv": "tlearn.data",
    "load_image_folder": "tlearn.data",
    "Report": "tlearn.evaluation",
    "evaluate": "tlearn.evaluation",
    "PretrainedFeatures": "tlearn.features",
    "FineTuneClassifier": "tlearn.finetune",
    "ScratchClassifier": "tlearn.finetune",
    "load": "tlearn.persistence",
    "save": "tlearn.persistence",
    "Predictor": "tlearn.predictor",
    "load_predictor": "tlearn.predictor",
    "LinearProbe": "tlearn.probe",
    "MultiLabelProbe": "tlearn.multilabel",
    "make_probe": "tlearn.probe",
    "train": "tlearn.training",
}
__getattr__, __dir__ = lazy_exports(__name__, _WHERE)

__all__ = [
    "Backbone",
    "BackboneError",
    "CheckpointError",
    "DataError",
    "DatasetUnavailableError",
    "EngineError",
    "FineTuneClassifier",
    "ImageReadError",
    "InvalidParameterError",
    "LinearProbe",
    "MultiLabelProbe",
    "ModelFileError",
    "Predictor",
    "Preprocessing",
    "PretrainedFeatures",
    "Report",
    "ScratchClassifier",
    "TlearnError",
    "TrainingError",
    "UnknownBackboneError",
    "UnknownClassError",
    "WeightsUnavailableError",
    "evaluate",
    "fetch_cifar10",
    "fetch_fashion_mnist",
    "list_backbones",
    "load",
    "load_backbone",
    "load_image_csv",
    "load_image_folder",
    "load_predictor",
    "make_probe",
    "save",
    "train",
]
