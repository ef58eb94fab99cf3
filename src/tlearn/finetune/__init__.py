"""Stage 5: fine-tuning a pretrained backbone with a new head (imported on first use)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tlearn._lazy import lazy_exports

if TYPE_CHECKING:
    from tlearn.finetune.estimator import STRATEGIES, FineTuneClassifier
    from tlearn.finetune.scratch import ScratchClassifier

_WHERE = {
    "STRATEGIES": "tlearn.finetune.estimator",
    "FineTuneClassifier": "tlearn.finetune.estimator",
    "ScratchClassifier": "tlearn.finetune.scratch",
}
__getattr__, __dir__ = lazy_exports(__name__, _WHERE)

__all__ = ["STRATEGIES", "FineTuneClassifier", "ScratchClassifier"]
