"""Stage 7: evaluation. Imports go one way: ``metrics`` (pure data) <- ``plots`` <- ``html``
<- ``report`` (:class:`Report`) <- ``evaluate``."""

from tlearn.evaluation.evaluate import evaluate, predict_proba_with_errors
from tlearn.evaluation.metrics import Metrics, compute_metrics
from tlearn.evaluation.report import Report

__all__ = ["Metrics", "Report", "compute_metrics", "evaluate", "predict_proba_with_errors"]
