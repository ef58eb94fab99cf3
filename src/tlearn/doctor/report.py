"""What the doctor writes: ``issues.csv``, ``summary.json``, ``report.html`` (one
self-contained page, a gallery per issue type) and, on request, a clean CSV for
``tlearn fit``. Nothing is moved or deleted on disk."""

from __future__ import annotations

import csv
import html
import json
import os
from pathlib import Path
from typing import Any

from tlearn.doctor.core import Findings
from tlearn.doctor.issues import ISSUE_TYPES, ISSUES, LEFT_OUT
from tlearn.exceptions import ImageReadError

__all__ = ["LEFT_OUT", "write_clean", "write_report"]

GALLERY_MAX = 60
THUMB_SIDE = 112


def write_report(findings: Findings, folder: str | os.PathLike[str], title: str) -> dict[str, str]:
    """``issues.csv``, ``summary.json`` and ``report.html`` in ``folder``; their paths."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: str(out / name) for name in ("issues.csv", "summary.json", "report.html")}
    findings.to_csv(paths["issues.csv"])
    Path(paths["summary.json"]).write_text(json.dumps(findings.summary, indent=2))
    # surrogateescape: a file name that is not UTF-8 (Linux gives its raw bytes as lone
    # surrogates) is written as those bytes, as the predictions' CSV writes it
    Path(paths["report.html"]).write_text(
        render_page(findings, title), encoding="utf-8", errors="surrogateescape"
    )
    return paths


def write_clean(
    findings: Findings, paths: list[str], labels: list[Any], csv_path: str, relabel: bool
) -> dict[str, int]:
    """A CSV of ``path,label`` for the training images: label issues relabelled to the
    suggestion (``relabel``) or left out; unreadable files left out; of each group of
    duplicates (exact or near, chains included) one image kept."""
    drop, new_label = set(), {}
    groups = _Groups()
    for row in findings.rows:
        if row["split"] != "train" or row["issue"] not in LEFT_OUT:
            continue
        clean = ISSUES[row["issue"]].clean
        if clean == "relabel" and relabel:
            new_label[row["path"]] = row["suggested_label"]
        elif clean == "one":
            groups.join(row["path"], row["partner"])
        else:
            drop.add(row["path"])
    for members in groups.groups():
        keep = [m for m in sorted(members) if m not in drop]
        drop.update(keep[1:])
    kept = relabelled = 0
    with open(csv_path, "w", newline="", encoding="utf-8", errors="surrogateescape") as f:
        writer = csv.writer(f)  # a name that is not UTF-8: its bytes, naming the file
        writer.writerow(["path", "label"])
        for path, label in zip(paths, labels, strict=True):
            if path in drop:
                continue
            relabelled += path in new_label
            writer.writerow([os.path.abspath(path), new_label.get(path, label)])
            kept += 1
    return {"kept": kept, "left_out": len(paths) - kept, "relabelled": relabelled}


class _Groups:
    """Union-find over paths: which images are copies of each other."""

    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, a: str) -> str:
        self.parent.setdefault(a, a)
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def join(self, a: str, b: str) -> None:
        self.parent[self.find(a)] = self.find(b)

    def groups(self) -> list[set[str]]:
        out: dict[str, set[str]] = {}
        for a in list(self.parent):
            out.setdefault(self.find(a), set()).add(a)
        return list(out.values())


def _thumb(path: str) -> str:
    from tlearn.data.images import decode_image, read_bytes
    from tlearn.evaluation.html import image_data_uri

    try:  # a large JPEG is decoded at a reduced scale (still >= 112 px)
        return image_data_uri(decode_image(read_bytes(path), path, min_side=THUMB_SIDE), THUMB_SIDE)
    except (ImageReadError, OSError):
        return ""


def _figure(path: str, caption: str) -> str:
    e = html.escape
    src = _thumb(path) if path and not path.startswith(("train[", "test[")) else ""
    img = f"<img alt='{e(path)}' src='{src}'>" if src else "<div class='none'>no preview</div>"
    small = f"<div class='small'>{e(path)}</div>"
    return f"<figure>{img}<figcaption>{caption}{small}</figcaption></figure>"


def _item(row: dict[str, Any]) -> str:
    e = html.escape
    caption = f"{e(str(row['given_label']))} &middot; score {row['score']:.3f}"
    if row["suggested_label"] != "":
        caption += f"<br>suggested <b class='good'>{e(str(row['suggested_label']))}</b>"
    parts = [_figure(row["path"], caption)]
    if row["partner"] and row["issue"] in ("exact_duplicate", "near_duplicate", "leakage"):
        parts.append(_figure(row["partner"], "partner"))
    elif row["partner"]:
        parts[0] = parts[0].replace("</figcaption>", f"<br>{e(row['partner'])}</figcaption>")
    return "<div class='item'>" + "".join(parts) + "</div>"


# after the report's PAGE_CSS: an item holds one figure or a pair, each 120 px wide
_STYLE = """
.item{display:flex;gap:4px;width:auto;background:#fafafa;border:1px solid #eee;
border-radius:6px;padding:6px;font-size:12px}figure{margin:0;width:120px;
overflow-wrap:anywhere}.item figure img{width:112px;height:112px;object-fit:contain;
image-rendering:pixelated;background:#fff}.none{width:112px;height:112px;background:#eee}
"""


def render_page(findings: Findings, title: str) -> str:
    """One self-contained HTML page: the summary, then a gallery per issue type."""
    from tlearn.evaluation.html import PAGE_CSS, html_table

    e = html.escape
    counts = findings.counts()
    out = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title>"
        f"<style>{PAGE_CSS}{_STYLE}</style></head><body><h1>{e(title)}</h1>",
        f"<p>{findings.summary.get('images', 0)} images, "
        f"{findings.summary.get('images_flagged', 0)} flagged.</p>",
        html_table(
            ["issue", "images", "meaning"], [[t, counts[t], ISSUE_TYPES[t]] for t in counts]
        ),  # fmt: skip
    ]
    for issue in counts:
        rows = findings.of(issue)
        shown = "" if len(rows) <= GALLERY_MAX else f" (the first {GALLERY_MAX})"
        out.append(f"<h2 id='{issue}'>{e(issue)}: {len(rows)}{shown}</h2><div class='gallery'>")
        out += [_item(r) for r in rows[:GALLERY_MAX]]
        out.append("</div>")
    out.append("</body></html>")
    return "\n".join(out)
