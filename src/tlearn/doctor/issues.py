"""The doctor's issue types, one row each: what a row of that type means, its default
threshold, whether it names a partner image, and what ``--write-clean`` does with its
images. The report's tables, ``issues.csv``'s order, the summary and docs/doctor.md's table
come from here (a test holds the page to it); a new check is one module plus one row."""

from __future__ import annotations

from dataclasses import dataclass

from tlearn.doctor.duplicates import NEAR_THRESHOLD
from tlearn.doctor.quality import THRESHOLDS

__all__ = ["IMBALANCE", "ISSUES", "ISSUE_TYPES", "LEFT_OUT", "OUTLIER_IQR", "IssueType"]

#: An image is an outlier when its distance to its class centre is above Q3 + 3 IQR of
#: its class's distances (the rule cleanvision uses for odd sizes).
OUTLIER_IQR = 3.0
#: A class is rare in a split under this fraction of the split's median class count.
IMBALANCE = 0.2


@dataclass(frozen=True)
class IssueType:
    """One kind of finding. ``clean``: what ``--write-clean`` does with a training image of
    this type: ``"drop"`` (left out), ``"one"`` (one image of each group of partners
    kept), ``"relabel"`` (its suggested label with ``--relabel``, else left out),
    ``"keep"`` (reported only: often a valid image)."""

    name: str
    meaning: str
    threshold: float | None = None
    paired: bool = False
    clean: str = "keep"


ISSUES: dict[str, IssueType] = {
    t.name: t
    for t in (
        IssueType("unreadable", "the file cannot be decoded (the reason is given)",
                  clean="drop"),
        IssueType("exact_duplicate", "the same decoded pixels as the partner image",
                  paired=True, clean="one"),
        IssueType("near_duplicate",
                  "the same shot as the partner (resized, re-encoded, recoloured...)",
                  NEAR_THRESHOLD, paired=True, clean="one"),
        IssueType("leakage", "a test image with a near or exact duplicate in the training set",
                  NEAR_THRESHOLD, paired=True),
        IssueType("label_issue", "confidently predicted (out of fold) as another class",
                  clean="relabel"),
        IssueType("outlier", "far from its own class in feature space", OUTLIER_IQR),
        IssueType("class_imbalance",
                  "a class with under a fifth of the median class's images in a split",
                  IMBALANCE),
        *(IssueType(name, f"image quality: {name.replace('_', ' ')}", value)
          for name, value in THRESHOLDS.items()),
    )
}  # fmt: skip
#: Every issue type, in report order, with what it means.
ISSUE_TYPES = {name: t.meaning for name, t in ISSUES.items()}
#: Issue types whose training images the clean CSV leaves out (or relabels).
LEFT_OUT = tuple(name for name, t in ISSUES.items() if t.clean != "keep")
