"""Stage 3 helpers: where the model runs (device choice, batch forward) and the feature cache."""

from tlearn.runtime.cache import FeatureCache
from tlearn.runtime.torch_engine import TorchEngine, resolve_device

__all__ = ["FeatureCache", "TorchEngine", "resolve_device"]
