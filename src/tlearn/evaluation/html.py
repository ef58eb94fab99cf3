"""The report as one self-contained HTML page with a gallery of the most confidently
wrong images (thumbnails embedded, so it opens offline, anywhere)."""

from __future__ import annotations

import base64
import html
import io
import json
import os
from pathlib import Path
from typing import Any

from PIL import Image

from tlearn.data.images import decode_image, load_array_image, read_bytes
from tlearn.evaluation.metrics import Metrics
from tlearn.evaluation.plots import write_plots
from tlearn.exceptions import ImageReadError

__all__ = [
    "PAGE_CSS",
    "failed_section",
    "html_table",
    "image_data_uri",
    "render_html",
    "save_report",
]


def _png_data_uri(path: str | os.PathLike[str]) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode()


def _thumbnail(report: Metrics, mistake: dict[str, Any], size: int = 96) -> str:
    try:
        if report.images is not None:
            img = load_array_image(report.images[mistake["index"]])
        else:
            img = decode_image(read_bytes(mistake["path"]), mistake["path"], min_side=size)
    except ImageReadError:
        return ""
    return image_data_uri(img, size)


def image_data_uri(img: Image.Image, size: int = 96) -> str:
    """A JPEG thumbnail as a data: URI (tiny images enlarged, pixelated, not blurred)."""
    img = img.convert("RGB")
    img.thumbnail((size, size), Image.Resampling.LANCZOS)
    if max(img.size) < size:  # tiny images (CIFAR's 32 px) are shown enlarged, pixelated
        scale = size // max(img.size)
        img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


PAGE_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222}
h1{font-size:22px}h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ddd}
.cards{display:flex;flex-wrap:wrap;gap:12px}.card{background:#f4f6fa;border-radius:8px;
padding:10px 14px;min-width:120px}.card b{display:block;font-size:20px}
table{border-collapse:collapse;font-size:13px}td,th{padding:4px 10px;border-bottom:1px solid #eee;
text-align:right}td:first-child,th:first-child{text-align:left}
.plots img{max-width:48%;margin-right:1%;vertical-align:top}
.gallery{display:flex;flex-wrap:wrap;gap:10px}.item{width:140px;font-size:12px;
background:#fafafa;border:1px solid #eee;border-radius:6px;padding:6px}
.item img{width:128px;height:128px;object-fit:contain;image-rendering:pixelated;
background:#fff}.bad{color:#b00}.good{color:#070}.small{color:#777;font-size:11px;
word-break:break-all}
"""


def render_html(report: Metrics, title: str, plots: dict[str, str] | None = None) -> str:
    """The report as one HTML page; ``plots`` maps names to PNG files to embed (made in a
    temporary folder when not given)."""
    if plots is None:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            return render_html(report, title, write_plots(report, tmp))
    e = html.escape
    out = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title>"
        f"<style>{PAGE_CSS}</style></head><body><h1>{e(title)}</h1>",
        _summary(report),
        "<div class='cards'>",
        *(f"<div class='card'>{e(name)}<b>{value:.4f}</b></div>" for name, value in _cards(report)),
        "</div><h2>Plots</h2><div class='plots'>",
        *(f"<img alt='{e(name)}' src='{_png_data_uri(path)}'>" for name, path in plots.items()),
        "</div><h2>Per class</h2>",
        html_table(
            ["class", "precision", "recall", "F1", "support"],
            [
                [
                    r["class"],
                    f"{r['precision']:.3f}",
                    f"{r['recall']:.3f}",
                    f"{r['f1']:.3f}",
                    r["support"],
                ]
                for r in sorted(report.per_class, key=lambda r: r["f1"])
            ],
        ),  # fmt: skip
        "<h2>Most confused pairs</h2>",
        html_table(
            ["true", "predicted as", "images"],
            [[p["true"], p["predicted"], p["count"]] for p in report.confused_pairs],
        ),
        "<h2>Most confidently wrong</h2><div class='gallery'>",
        *(_mistake(report, m) for m in report.confident_mistakes),
        "</div>",
    ]
    out += failed_section(report.failed)
    out.append("</body></html>")
    return "\n".join(out)


def failed_section(failed: list[dict[str, str]]) -> list[str]:
    """The page's list of images that could not be read (nothing when none)."""
    if not failed:
        return []
    rows = [[f["path"], f["reason"]] for f in failed]
    return ["<h2>Images that could not be read</h2>", html_table(["path", "reason"], rows)]


def _cards(report: Metrics) -> list[tuple[str, float]]:
    cards = [
        ("accuracy", report.accuracy),
        ("balanced accuracy", report.balanced_accuracy),
        ("macro F1", report.macro_f1),
        (f"top-{report.top_k} accuracy", report.top_k_accuracy),
        ("log loss", report.log_loss),
        ("calibration error (ECE)", report.expected_calibration_error),
    ]
    if "ece_before" in report.calibration:
        cards.append(("ECE before calibration", report.calibration["ece_before"]))
    return cards


def _summary(report: Metrics) -> str:
    e = html.escape
    text = f"<p>{report.n_images} images evaluated in {len(report.classes)} classes"
    if report.failed:
        text += f"; <span class='bad'>{len(report.failed)} could not be read</span>"
    if report.unknown:
        text += f"; {len(report.unknown)} with unknown classes left out"
    if report.evaluation.get("method"):
        text += f" ({e(str(report.evaluation['method']))})"
    return text + ".</p>"


def html_table(headers: list[str], rows: list[list[Any]]) -> str:
    """An HTML table, every cell escaped."""
    e = html.escape
    head = "".join(f"<th>{e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _mistake(report: Metrics, m: dict[str, Any]) -> str:
    e = html.escape
    return (
        f"<div class='item'><img alt='{e(m['path'])}' src='{_thumbnail(report, m)}'><br>"
        f"true <span class='good'>{e(str(m['true']))}</span><br>"
        f"predicted <span class='bad'>{e(str(m['predicted']))}</span> "
        f"({m['probability']:.2f})<div class='small'>{e(m['path'])}</div></div>"
    )


def save_report(report: Metrics, folder: str | os.PathLike[str], title: str) -> dict[str, str]:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = write_plots(report, folder)
    (folder / "metrics.json").write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    (folder / "report.html").write_text(render_html(report, title, paths), encoding="utf-8")
    return {**paths, "metrics": str(folder / "metrics.json"), "html": str(folder / "report.html")}
