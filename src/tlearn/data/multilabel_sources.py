"""Multi-label data from a CSV or TSV: several labels per image, or none (issue 28).

Two layouts, found from the header:

- one labels column (``labels``, ``tags``, ``label``...) holding ``a|b``, ``a;b`` (in a
  comma-separated file) or a JSON list ``["a", "b"]``; an empty cell is an image with no
  label;
- one column of 0/1 per class beside the path column (every other column holds only 0
  and 1): the classes are the column names, in file order.

Returns a :class:`~sklearn.utils.Bunch` like :func:`tlearn.data.load_image_csv`, with
``target`` an indicator matrix ``(n_images, n_classes)`` of 0/1 (scikit-learn's
convention) and ``target_names`` the classes.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

import numpy as np
from sklearn.utils import Bunch

from tlearn.data.sources import _PATH_COLUMNS, _column, _pick_column, _read_csv, _shown
from tlearn.exceptions import DataError

__all__ = ["is_multilabel_csv", "load_multilabel_csv", "split_labels"]

_LABELS_COLUMNS = ("labels", "tags", "label", "classes", "categories", "target")
_SEPARATORS = re.compile(r"[|;]")
#: Labels a cell may hold: a bound on the work a hostile file can ask for.
MAX_LABELS_PER_IMAGE = 1000
#: Distinct labels a file may hold: as many classes as a model file may (its MAX_ITEMS).
MAX_LABELS = 100_000
#: Cells of the indicator matrix (one byte each), checked before it is made: images times
#: labels grows as the square of the file (a labels column of names unique to each image,
#: such as ids or captions: a 0.5 MB file of 30,000 rows asked for 900 MB). 100,000 images
#: of 2,600 labels, or a million of 260, fit.
MAX_CELLS = 1 << 28


def split_labels(cell: str, where: str) -> list[str]:
    """The labels in one cell: a JSON list, or names separated by ``|`` or ``;``."""
    cell = cell.strip()
    if not cell:
        return []
    if cell.startswith("["):
        try:
            value = json.loads(cell)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: {_shown(cell)} is not a JSON list ({e.msg})") from None
        if not isinstance(value, list) or not all(
            isinstance(v, str | int) and not isinstance(v, bool) for v in value
        ):
            raise DataError(f"{where}: a JSON list of labels holds strings or numbers only")
        labels = [str(v).strip() for v in value]
    else:
        labels = [part.strip() for part in _SEPARATORS.split(cell)]
    labels = [label for label in labels if label]
    if len(labels) > MAX_LABELS_PER_IMAGE:
        raise DataError(f"{where}: {len(labels)} labels, over {MAX_LABELS_PER_IMAGE} an image")
    return labels


def _indicator_columns(
    fields: list[str], rows: list[tuple[int, dict[str, str]]], pcol: str
) -> list[str] | None:
    others = [f for f in fields if f != pcol]
    if not others:
        return None
    if len(others) == 1 and others[0].lower().strip() in _LABELS_COLUMNS:
        return None  # a labels column whose labels happen to be 0 and 1: names, not flags
    for _, row in rows:
        if any((row.get(f) or "").strip() not in ("0", "1") for f in others):
            return None
    return others


def _once(fields: list[str], names: list[str], path: str) -> None:
    """The columns read are each named once (a reader keeps the last of two)."""
    counts = dict.fromkeys(names, 0)
    for f in fields:
        if f in counts:
            counts[f] += 1
            if counts[f] > 1:
                raise DataError(
                    f"the CSV {path!r} has more than one column named {_shown(f)}; name "
                    "each column once"
                )


def _bounded(n_images: int, n_labels: int, path: str) -> None:
    if n_labels > MAX_LABELS or n_images * n_labels > MAX_CELLS:
        raise DataError(
            f"the CSV {path!r} holds {n_labels:,} distinct labels for {n_images:,} images: "
            f"over the bounds of {MAX_LABELS:,} labels and {MAX_CELLS:,} images times labels "
            "(is its labels column an id or a caption of each image?)"
        )


#: Column names that say "several labels": a labels column under one of these is read as
#: one, even when each cell happens to hold one label.
_PLURAL = ("labels", "tags")


def is_multilabel_csv(path: str | os.PathLike[str]) -> bool:
    """Whether a CSV or TSV lists several labels per image (read by
    :func:`load_multilabel_csv`) rather than one (:func:`tlearn.data.load_image_csv`): two
    or more 0/1 columns beside the path; a column named ``labels`` or ``tags``; or label
    cells holding ``a|b``, ``a;b`` or a JSON list. One 0/1 column (``path,y``) is one label
    of two classes."""
    path = os.fspath(path)
    fields, rows = _read_csv(path)
    pcol = _pick_column(fields, None, _PATH_COLUMNS, "path", path) or fields[0]
    indicators = _indicator_columns(fields, rows, pcol)
    if indicators is not None and len(indicators) >= 2:
        return True
    if _pick_column(fields, None, _PLURAL, "labels", path) is not None:
        return True
    lcol = _pick_column(fields, None, _LABELS_COLUMNS, "labels", path)
    if lcol is None:
        return False
    cells = ((row.get(lcol) or "").strip() for _, row in rows)
    return any(c.startswith("[") or _SEPARATORS.search(c) for c in cells)


def load_multilabel_csv(
    path: str | os.PathLike[str],
    path_column: str | None = None,
    labels_column: str | None = None,
) -> Bunch:
    """Load a CSV or TSV of image paths and their labels, several per image (see the
    module's docstring for the two layouts). Relative paths are taken from the file's
    folder."""
    path = os.fspath(path)
    fields, rows = _read_csv(path)
    pcol = _pick_column(fields, path_column, _PATH_COLUMNS, "path", path) or fields[0]
    _once(fields, [pcol], path)
    folder = os.path.dirname(os.path.abspath(path))
    cells = _column(rows, pcol, path)
    filenames = np.array([c if os.path.isabs(c) else os.path.join(folder, c) for c in cells],
                         dtype=object)  # fmt: skip
    columns = None if labels_column else _indicator_columns(fields, rows, pcol)
    if columns is not None:
        _once(fields, columns, path)
        _bounded(len(rows), len(columns), path)
        M = np.array([[int(row[c].strip()) for c in columns] for _, row in rows], np.int8)
        names: list[Any] = columns
    else:
        lcol = _pick_column(fields, labels_column, _LABELS_COLUMNS, "labels", path)
        if lcol is None:
            raise DataError(
                f"the CSV {path!r} has no labels column ({', '.join(_LABELS_COLUMNS)}) and "
                "no 0/1 column per class; name its labels column with labels_column"
            )
        per_image = [split_labels(row.get(lcol) or "", f"{path!r} line {line}")
                     for line, row in rows]  # fmt: skip
        _once(fields, [lcol], path)
        names = sorted(set().union(*map(set, per_image)))
        _bounded(len(rows), len(names), path)
        index = {c: j for j, c in enumerate(names)}
        M = np.zeros((len(rows), len(names)), np.int8)
        for i, labels in enumerate(per_image):
            M[i, [index[c] for c in labels]] = 1
    if M.shape[1] == 0 or not M.any():
        raise DataError(f"no image in {path!r} has a label")
    return Bunch(
        filenames=filenames,
        target=M,
        target_names=list(names),
        ignored=[],
        DESCR=f"Images listed in {path!r}: {len(M)} images, {M.shape[1]} labels, "
        f"{M.sum(axis=1).mean():.2f} per image on average.",
    )


#: The file names Hugging Face's ``imagefolder`` reads labels from, in the order it tries.
HF_METADATA = ("metadata.jsonl", "metadata.csv")
#: Bytes a metadata file may hold (100 MB: a million images with a few labels each).
MAX_METADATA_BYTES = 100 << 20


def find_hf_metadata(folder: str | os.PathLike[str]) -> str | None:
    """The ``metadata.jsonl`` or ``metadata.csv`` of an ``imagefolder`` that gives several
    labels per image (a column of lists in JSON Lines; one :func:`is_multilabel_csv` reads
    as such in a CSV), or ``None``: the folder's class sub-folders label it."""
    folder = os.fspath(folder)
    for name in HF_METADATA:
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            continue
        if name.endswith(".csv"):
            return path if is_multilabel_csv(path) else None
        return path if _jsonl_labels_column(_jsonl_rows(path), path) is not None else None
    return None


def load_hf_metadata(path: str | os.PathLike[str]) -> Bunch:
    """The images of an ``imagefolder``'s metadata file and their labels, as
    :func:`load_multilabel_csv` gives them: ``file_name`` is the path (relative to the
    file's folder), the labels a column of lists (``labels``, ``tags``... or the only
    column of lists)."""
    path = os.fspath(path)
    if path.endswith(".csv"):
        return load_multilabel_csv(path, path_column="file_name")
    rows = _jsonl_rows(path)
    column = _jsonl_labels_column(rows, path)
    if column is None:
        raise DataError(f'{path!r} has no column of label lists (such as "labels": [...])')
    folder = os.path.dirname(os.path.abspath(path))
    filenames, per_image = [], []
    for line, row in rows:
        name = row.get("file_name")
        if not isinstance(name, str) or not name or os.path.isabs(name) or ".." in name.split("/"):
            raise DataError(
                f"{path!r} line {line}: file_name must be a path inside the folder, not "
                f"{_shown(str(name))}"
            )
        filenames.append(os.path.join(folder, name))
        per_image.append(split_labels(json.dumps(row.get(column) or []), f"{path!r} line {line}"))
    names = sorted(set().union(*map(set, per_image)))
    _bounded(len(rows), len(names), path)
    index = {c: j for j, c in enumerate(names)}
    M = np.zeros((len(rows), len(names)), np.int8)
    for i, labels in enumerate(per_image):
        M[i, [index[c] for c in labels]] = 1
    if not M.any():
        raise DataError(f"no image in {path!r} has a label")
    return Bunch(filenames=np.array(filenames, dtype=object), target=M, target_names=names,
                 ignored=[], DESCR=f"Images listed in {path!r}: {len(M)} images, "
                 f"{M.shape[1]} labels.")  # fmt: skip


def _jsonl_rows(path: str) -> list[tuple[int, dict[str, Any]]]:
    if os.path.getsize(path) > MAX_METADATA_BYTES:
        raise DataError(f"{path!r} is over {MAX_METADATA_BYTES >> 20} MB: not a metadata file")
    rows = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line, text in enumerate(f, 1):
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as e:
                raise DataError(f"{path!r} line {line} is not JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path!r} line {line} is not a JSON object")
            rows.append((line, row))
    if not rows:
        raise DataError(f"{path!r} lists no image")
    return rows


def _jsonl_labels_column(rows: list[tuple[int, dict[str, Any]]], path: str) -> str | None:
    """The column of label lists: one named as labels are, else the only column of lists."""
    lists = [k for k, v in rows[0][1].items() if isinstance(v, list)]
    named = [k for k in lists if k.lower() in _LABELS_COLUMNS]
    if named:
        return named[0]
    return lists[0] if len(lists) == 1 else None
