"""Stage 4: fine-tuning a pretrained backbone with a new head."""

from tlearn.finetune.estimator import STRATEGIES, FineTuneClassifier

__all__ = ["STRATEGIES", "FineTuneClassifier"]
