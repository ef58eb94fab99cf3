"""``Report``: the metrics of an evaluation, with its plots and its HTML page."""

from __future__ import annotations

import dataclasses
import os

from tlearn.evaluation.html import render_html, save_report
from tlearn.evaluation.metrics import Metrics

__all__ = ["Report"]


class Report(Metrics):
    """The result of :func:`tlearn.evaluation.evaluate`: every metric (see
    :class:`~tlearn.evaluation.metrics.Metrics`), printable with rich, and savable as
    JSON, PNG plots and one self-contained HTML page."""

    @classmethod
    def from_metrics(cls, metrics: Metrics) -> Report:
        return cls(**{f.name: getattr(metrics, f.name) for f in dataclasses.fields(metrics)})

    def to_html(self, title: str = "tlearn evaluation report") -> str:
        """One self-contained HTML page (plots and thumbnails embedded), readable offline."""
        return render_html(self, title)

    def save(
        self, folder: str | os.PathLike[str], title: str = "tlearn evaluation report"
    ) -> dict[str, str]:
        """Write metrics.json, confusion.png, reliability.png, curves.png (when there is a
        training history) and report.html into ``folder``; returns their paths."""
        return save_report(self, folder, title)
