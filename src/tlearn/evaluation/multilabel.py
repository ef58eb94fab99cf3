"""The evaluation of a multi-label model (issue 28): mean average precision, micro and macro
F1, subset accuracy, Hamming loss, per-label precision/recall/F1/AP at the model's own
thresholds, the most frequent misses, and one HTML page with precision-recall curves and a
gallery of the images it got most wrong."""

from __future__ import annotations

import html
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score, f1_score, precision_recall_curve

from tlearn._io import python_value as _py
from tlearn.calibration import ece_of, reliability
from tlearn.evaluation.metrics import json_text
from tlearn.plotting import plain_text

__all__ = ["MultiLabelReport", "compute_multilabel_metrics"]


@dataclass
class MultiLabelReport:
    """Every figure of a multi-label evaluation; printable with rich, savable as JSON and
    one self-contained HTML page.

    Attributes
    ----------
    mean_average_precision : float
        The mean over labels (with at least one positive image) of average precision: how
        well each label's probabilities rank its images, whatever the threshold.
    micro_f1, macro_f1 : float
        F1 of the predicted label sets (each label's probability against its threshold),
        pooled over labels, and averaged over labels.
    subset_accuracy : float
        Images whose predicted labels are exactly the true ones (also ``accuracy``).
    hamming_loss : float
        Labels wrongly predicted or missed, over images times labels.
    log_loss : float
        Mean binary cross-entropy of each label's probability.
    expected_calibration_error : float
        ECE of every label's probability against whether the image has the label.
    per_class : list of dict
        ``class``, ``precision``, ``recall``, ``f1``, ``average_precision``, ``support``
        (images with the label), ``predicted`` and ``threshold``.
    most_missed : list of dict
        ``class``, ``missed`` (images with the label it did not give) and ``extra`` (images
        it gave the label wrongly), most errors first.
    worst_images : list of dict
        The images with the most wrong labels: ``path``, ``index``, ``true``,
        ``predicted`` (label lists) and ``wrong`` (how many).
    """

    mean_average_precision: float
    micro_f1: float
    macro_f1: float
    subset_accuracy: float
    hamming_loss: float
    log_loss: float
    expected_calibration_error: float
    classes: list[Any]
    per_class: list[dict[str, Any]]
    n_images: int
    most_missed: list[dict[str, Any]] = field(default_factory=list)
    worst_images: list[dict[str, Any]] = field(default_factory=list)
    pr_curves: dict[str, Any] = field(default_factory=dict, repr=False)
    failed: list[dict[str, str]] = field(default_factory=list)
    unknown: list[dict[str, Any]] = field(default_factory=list)
    calibration: dict[str, float] = field(default_factory=dict)
    evaluation: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    images: Any = field(default=None, repr=False)

    @property
    def accuracy(self) -> float:
        """Subset accuracy: the share of images with exactly the true labels."""
        return self.subset_accuracy

    def headline(self, which: str = "") -> str:
        """The figures a run is judged by, on one line (``which``: "test", "held-out")."""
        w = f"{which} " if which else ""
        return (
            f"{w}mAP: {self.mean_average_precision:.4f}  {w}macro F1: {self.macro_f1:.4f}  "
            f"micro F1: {self.micro_f1:.4f}  subset accuracy: {self.subset_accuracy:.4f}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": "multi-label",
            "mean_average_precision": self.mean_average_precision,
            "micro_f1": self.micro_f1,
            "macro_f1": self.macro_f1,
            "subset_accuracy": self.subset_accuracy,
            "hamming_loss": self.hamming_loss,
            "log_loss": self.log_loss,
            "expected_calibration_error": self.expected_calibration_error,
            "n_images": self.n_images,
            "n_failed": len(self.failed),
            "classes": self.classes,
            "per_class": self.per_class,
            "most_missed": self.most_missed,
            "worst_images": self.worst_images,
            "calibration": self.calibration,
            "evaluation": self.evaluation,
            "failed": self.failed,
            "unknown_labels": self.unknown,
        }

    def to_json(self, path: str | os.PathLike[str] | None = None, indent: int = 2) -> str:
        return json_text(self.to_dict(), path, indent)

    def __rich__(self) -> Any:
        from rich.table import Table

        table = Table(title=f"{self.headline()}, on {self.n_images} images")
        for col in ("label", "precision", "recall", "f1", "AP", "support", "threshold"):
            table.add_column(col, justify="left" if col == "label" else "right")
        for r in self.per_class:
            table.add_row(str(r["class"]), f"{r['precision']:.3f}", f"{r['recall']:.3f}",
                          f"{r['f1']:.3f}", f"{r['average_precision']:.3f}", str(r["support"]),
                          f"{r['threshold']:.3f}")  # fmt: skip
        return table

    def to_html(self, title: str = "tlearn evaluation report") -> str:
        """One self-contained HTML page (curves and thumbnails embedded)."""
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            return _render(self, title, _plot_pr(self, Path(tmp) / "pr_curves.png"))

    def save(
        self, folder: str | os.PathLike[str], title: str = "tlearn evaluation report"
    ) -> dict[str, str]:
        """Write metrics.json, pr_curves.png and report.html into ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        curves = _plot_pr(self, folder / "pr_curves.png")
        (folder / "metrics.json").write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        (folder / "report.html").write_text(_render(self, title, curves), encoding="utf-8")
        return {"pr_curves": curves, "metrics": str(folder / "metrics.json"),
                "html": str(folder / "report.html")}  # fmt: skip


def compute_multilabel_metrics(
    classes: np.ndarray,
    Y: np.ndarray,
    proba: np.ndarray,
    thresholds: np.ndarray,
    names: np.ndarray,
    n_worst: int = 24,
    predicted: np.ndarray | None = None,
    ranking: np.ndarray | None = None,
) -> MultiLabelReport:
    """The metrics of probabilities ``proba`` ``(n, n_labels)`` against the indicator
    matrix ``Y``, the labels predicted where a probability reaches its ``threshold``
    (or given as ``predicted``, a held-out estimate's own). ``ranking``: the scores that
    rank each label's images for average precision, when not ``proba`` (a held-out
    estimate whose halves were calibrated apart ranks by its out-of-fold scores, which one
    monotone calibration per label would not reorder)."""
    ranking = proba if ranking is None else ranking
    Y = np.asarray(Y, dtype=np.int8)
    pred = (proba >= thresholds).astype(np.int8) if predicted is None else predicted
    p = np.clip(proba, 1e-12, 1 - 1e-12)
    per_class, aps, curves = _per_label(classes, Y, pred, ranking, thresholds)
    return MultiLabelReport(
        mean_average_precision=float(np.mean(aps)) if aps else float("nan"),
        micro_f1=float(f1_score(Y, pred, average="micro", zero_division=0)),
        macro_f1=float(f1_score(Y, pred, average="macro", zero_division=0)),
        subset_accuracy=float((pred == Y).all(1).mean()),
        hamming_loss=float((pred != Y).mean()),
        log_loss=float(-(Y * np.log(p) + (1 - Y) * np.log(1 - p)).mean()),
        expected_calibration_error=ece_of(reliability(proba.ravel(), Y.ravel() == 1)),
        classes=[_py(c) for c in classes],
        per_class=per_class,
        n_images=len(Y),
        most_missed=_most_missed(classes, Y, pred),
        worst_images=_worst_images(classes, Y, pred, names, n_worst),
        pr_curves=curves,
    )


def _per_label(
    classes: np.ndarray, Y: np.ndarray, pred: np.ndarray, ranking: np.ndarray, cuts: np.ndarray
) -> tuple[list[dict[str, Any]], list[float], dict[str, Any]]:
    """Each label's row (precision, recall, F1 at its threshold, average precision...),
    the APs of the labels some image has, and their precision-recall curves."""
    per_class, aps, curves = [], [], {}
    for j, c in enumerate(classes):
        tp = int((pred[:, j] & Y[:, j]).sum())
        support, n_predicted = int(Y[:, j].sum()), int(pred[:, j].sum())
        precision = tp / n_predicted if n_predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if tp else 0.0
        ap = float(average_precision_score(Y[:, j], ranking[:, j])) if support else float("nan")
        if support:
            aps.append(ap)
            prec, rec, _ = precision_recall_curve(Y[:, j], ranking[:, j])
            curves[str(c)] = (rec.tolist(), prec.tolist())
        per_class.append({"class": _py(c), "precision": precision, "recall": recall, "f1": f1,
                          "average_precision": ap, "support": support, "predicted": n_predicted,
                          "threshold": float(cuts[j])})  # fmt: skip
    return per_class, aps, curves


def _most_missed(classes: np.ndarray, Y: np.ndarray, pred: np.ndarray) -> list[dict[str, Any]]:
    """The 20 labels most often missed or given wrongly."""
    missed, extra = (Y & (1 - pred)).sum(0), (pred & (1 - Y)).sum(0)
    order = np.argsort(-(missed + extra), kind="stable")
    return [{"class": _py(classes[j]), "missed": int(missed[j]), "extra": int(extra[j])}
            for j in order if missed[j] + extra[j]][:20]  # fmt: skip


def _worst_images(
    classes: np.ndarray, Y: np.ndarray, pred: np.ndarray, names: np.ndarray, n: int
) -> list[dict[str, Any]]:
    """The ``n`` images with the most wrong labels (missed or extra)."""
    wrong = (pred != Y).sum(1)
    return [{"path": str(names[i]), "index": int(i),
             "true": [_py(c) for c in classes[Y[i] == 1]],
             "predicted": [_py(c) for c in classes[pred[i] == 1]], "wrong": int(wrong[i])}
            for i in np.argsort(-wrong, kind="stable")[:n] if wrong[i]]  # fmt: skip


def _plot_pr(report: MultiLabelReport, path: Path) -> str:
    """Each label's precision-recall curve (the 20 most frequent labels), one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = sorted(report.per_class, key=lambda r: -r["support"])[:20]
    fig, ax = plt.subplots(figsize=(6, 5))
    for r in shown:
        if str(r["class"]) in report.pr_curves:
            rec, prec = report.pr_curves[str(r["class"])]
            name = plain_text(r["class"])
            ax.plot(rec, prec, lw=1.2, label=f"{name} (AP {r['average_precision']:.2f})")
    mean_ap = report.mean_average_precision
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02),
           title=f"precision-recall per label (mAP {mean_ap:.3f})")  # fmt: skip
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)


def _render(report: MultiLabelReport, title: str, curves: str) -> str:
    from tlearn.evaluation.html import PAGE_CSS, _png_data_uri, failed_section, html_table

    e = html.escape
    cards = [("mAP", report.mean_average_precision), ("macro F1", report.macro_f1),
             ("micro F1", report.micro_f1), ("subset accuracy", report.subset_accuracy),
             ("Hamming loss", report.hamming_loss), ("log loss", report.log_loss),
             ("calibration error (ECE)", report.expected_calibration_error)]  # fmt: skip
    how = report.evaluation.get("method")
    out = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title>"
        f"<style>{PAGE_CSS}</style></head><body><h1>{e(title)}</h1>",
        f"<p>{report.n_images} images evaluated, {len(report.classes)} labels (several per "
        f"image){f' ({e(str(how))})' if how else ''}"
        f"{f'; {len(report.failed)} could not be read' if report.failed else ''}.</p>",
        "<div class='cards'>",
        *(f"<div class='card'>{e(name)}<b>{value:.4f}</b></div>" for name, value in cards),
        f"</div><h2>Precision-recall curves</h2><div class='plots'><img alt='precision-recall "
        f"curves' src='{_png_data_uri(curves)}'></div><h2>Per label</h2>",
        html_table(
            ["label", "precision", "recall", "F1", "AP", "support", "predicted", "threshold"],
            [
                [
                    r["class"],
                    f"{r['precision']:.3f}",
                    f"{r['recall']:.3f}",
                    f"{r['f1']:.3f}",
                    f"{r['average_precision']:.3f}",
                    r["support"],
                    r["predicted"],
                    f"{r['threshold']:.3f}",
                ]
                for r in sorted(report.per_class, key=lambda r: r["f1"])
            ],
        ),  # fmt: skip
        "<h2>Most frequent misses</h2>",
        html_table(
            ["label", "missed (had it)", "extra (given wrongly)"],
            [[m["class"], m["missed"], m["extra"]] for m in report.most_missed],
        ),  # fmt: skip
        "<h2>Most wrong labels</h2><div class='gallery'>",
        *(_item(report, m) for m in report.worst_images),
        "</div>",
    ]
    out += failed_section(report.failed)
    out.append("</body></html>")
    return "\n".join(out)


def _item(report: MultiLabelReport, m: dict[str, Any]) -> str:
    from tlearn.evaluation.html import _thumbnail

    e = html.escape
    true, pred = ", ".join(map(str, m["true"])), ", ".join(map(str, m["predicted"]))
    return (
        f"<div class='item'><img alt='{e(m['path'])}' src='{_thumbnail(report, m)}'><br>"  # type: ignore[arg-type]
        f"true <span class='good'>{e(true or '(none)')}</span><br>"
        f"predicted <span class='bad'>{e(pred or '(none)')}</span>"
        f"<div class='small'>{e(m['path'])}</div></div>"
    )
