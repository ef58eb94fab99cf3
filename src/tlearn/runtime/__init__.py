"""Stage 3: where the model runs. One table of engines (:mod:`tlearn.runtime.table`), one
module per runtime (torch, ONNX Runtime, OpenVINO), normalisation written once, ``auto``
and its agreement check (:mod:`tlearn.runtime.engines`), and the on-disk feature cache.

Names are imported on first use, so the engine table can be read without PyTorch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tlearn.runtime.cache import FeatureCache
    from tlearn.runtime.torch_engine import TorchEngine, resolve_device

__all__ = ["FeatureCache", "TorchEngine", "resolve_device"]

_WHERE = {
    "FeatureCache": "tlearn.runtime.cache",
    "TorchEngine": "tlearn.runtime.torch_engine",
    "resolve_device": "tlearn.runtime.torch_engine",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'tlearn.runtime' has no attribute {name!r}")
