"""The dataset doctor: ``tlearn doctor DATA`` and :func:`inspect` find unreadable files,
exact and near duplicates, train/test leakage, likely label errors (confident learning on
out-of-fold probabilities, our own implementation; cleanlab, AGPL-3.0, is only a test-time
cross-check), outliers, class imbalance and image-quality problems (cleanvision's
definitions), and write a report. Nothing on disk is moved or deleted."""

from tlearn.doctor.core import ISSUE_TYPES, Findings, inspect
from tlearn.doctor.report import write_clean, write_report

__all__ = ["ISSUE_TYPES", "Findings", "inspect", "write_clean", "write_report"]
