"""The training methods ``tlearn fit`` offers and the estimator each one fits: what
:mod:`tlearn.training` and :mod:`tlearn.automl` both need, below either of them (so
neither imports the other at module level)."""

from __future__ import annotations

from typing import Any

from tlearn._validation import check_option

__all__ = ["METHODS", "estimator_class", "make_estimator"]

#: ``method`` -> the estimator that fits it ("auto" chooses among them).
METHODS = ("auto", "probe", "finetune", "lp-ft", "scratch")


def estimator_class(method: str) -> type:
    check_option("train", "method", method, METHODS)
    if method in ("probe", "auto"):
        from tlearn.probe import LinearProbe

        return LinearProbe
    if method == "scratch":  # a compact network trained from scratch (small images)
        from tlearn.finetune.scratch import ScratchClassifier

        return ScratchClassifier
    from tlearn.finetune import FineTuneClassifier

    return FineTuneClassifier


def make_estimator(method: str, multilabel: bool = False, **params: Any) -> Any:
    """The estimator for ``method`` with the parameters it takes (validated now, so a bad
    value fails before any image is read); ``multilabel``: several labels per image (the
    multi-label probe; fine-tuning takes either, as its ``y`` says)."""
    if multilabel and method in ("probe", "auto"):
        from tlearn.multilabel import MultiLabelProbe

        cls: type = MultiLabelProbe
    else:
        cls = estimator_class(method)
    if method == "lp-ft":
        params["strategy"] = "lp-ft"
    known = cls().get_params()
    model = cls(**{k: v for k, v in params.items() if k in known and v is not None})
    model._validate_params()
    return model
