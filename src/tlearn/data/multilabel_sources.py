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
import warnings
from typing import Any

import numpy as np
from sklearn.utils import Bunch

from tlearn.data.sources import (
    _PATH_COLUMNS,
    _column,
    _pick_column,
    _read_csv,
    _shown,
    column_weights,
    weight_column_of,
)
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
    fields: list[str], rows: list[tuple[int, dict[str, str]]], pcol: str, path: str
) -> list[str] | None:
    """The 0/1 columns, one per class (every column but the path's and the weight's), or
    ``None`` when some cell is neither 0 nor 1."""
    wcol = weight_column_of(fields, path)
    others = [f for f in fields if f not in (pcol, wcol)]
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


def _indicator(per_image: list[list[str]], path: str) -> tuple[list[Any], np.ndarray]:
    """The sorted label names of ``per_image`` and its indicator matrix (bounded first)."""
    names = sorted(set().union(*map(set, per_image)))
    _bounded(len(per_image), len(names), path)
    index = {c: j for j, c in enumerate(names)}
    M = np.zeros((len(per_image), len(names)), np.int8)
    for i, labels in enumerate(per_image):
        M[i, [index[c] for c in labels]] = 1
    return names, M


def _bounded(n_images: int, n_labels: int, path: str) -> None:
    if n_labels > MAX_LABELS or n_images * n_labels > MAX_CELLS:
        raise DataError(
            f"the CSV {path!r} holds {n_labels:,} distinct labels for {n_images:,} images: "
            f"over the bounds of {MAX_LABELS:,} labels and {MAX_CELLS:,} images times labels "
            "(is its labels column an id or a caption of each image?)"
        )


#: Column names under which ``;`` separates labels too (elsewhere a class may be named
#: "rock;pop").
_PLURAL = ("labels", "tags")


def is_multilabel_csv(path: str | os.PathLike[str]) -> bool:
    """Whether a CSV or TSV lists several labels per image (read by
    :func:`load_multilabel_csv`) rather than one (:func:`tlearn.data.load_image_csv`): two
    or more 0/1 columns beside the path, or a label cell that holds a JSON list or several
    labels (``a|b``; ``a;b`` in a column named ``labels`` or ``tags``). A file of one label
    per row stays single-label, whatever its column is called; so does one 0/1 column
    (``path,y``: one label of two classes) and a class named ``[abc]`` (not a JSON list)."""
    path = os.fspath(path)
    fields, rows = _read_csv(path)
    pcol = _pick_column(fields, None, _PATH_COLUMNS, "path", path) or fields[0]
    indicators = _indicator_columns(fields, rows, pcol, path)
    if indicators is not None and len(indicators) >= 2:
        return True
    lcol = _pick_column(fields, None, _LABELS_COLUMNS, "labels", path)
    if lcol is None:
        return False
    plural = lcol.lower().strip() in _PLURAL
    return any(_holds_several((row.get(lcol) or "").strip(), plural) for _, row in rows)


def _holds_several(cell: str, plural: bool) -> bool:
    """A JSON list, or two or more labels between ``|`` (or ``;`` under a plural name)."""
    if cell.startswith("["):
        try:
            return isinstance(json.loads(cell), list)
        except (json.JSONDecodeError, RecursionError):
            return False
    parts = (_SEPARATORS if plural else re.compile(r"\|")).split(cell)
    return sum(1 for part in parts if part.strip()) >= 2


def load_multilabel_csv(
    path: str | os.PathLike[str],
    path_column: str | None = None,
    labels_column: str | None = None,
    *,
    read_weights: bool = False,
) -> Bunch:
    """Load a CSV or TSV of image paths and their labels, several per image (see the
    module's docstring for the two layouts). Relative paths are taken from the file's
    folder. With ``read_weights``, a ``weight`` column gives ``sample_weight`` (see
    :func:`tlearn.data.load_image_csv`); a weight column is never a label."""
    path = os.fspath(path)
    fields, rows = _read_csv(path)
    pcol = _pick_column(fields, path_column, _PATH_COLUMNS, "path", path) or fields[0]
    _once(fields, [pcol], path)
    folder = os.path.dirname(os.path.abspath(path))
    cells = _column(rows, pcol, path)
    filenames = np.array([c if os.path.isabs(c) else os.path.join(folder, c) for c in cells],
                         dtype=object)  # fmt: skip
    columns = None if labels_column else _indicator_columns(fields, rows, pcol, path)
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
        names, M = _indicator(per_image, path)
    if M.shape[1] == 0 or not M.any():
        raise DataError(f"no image in {path!r} has a label")
    return Bunch(
        filenames=filenames,
        target=M,
        target_names=list(names),
        ignored=[],
        sample_weight=column_weights(fields, rows, path) if read_weights else None,
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
    as such in a CSV), or ``None``: the folder's class sub-folders label it. A metadata
    file that cannot be read so (captions, another tool's, damaged) is passed over with a
    warning: the class sub-folders still label the images."""
    folder = os.fspath(folder)
    for name in HF_METADATA:
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            continue
        try:
            if name.endswith(".csv"):
                return path if is_multilabel_csv(path) else None
            return path if _jsonl_labels_column(_jsonl_rows(path)) is not None else None
        except DataError as e:
            warnings.warn(f"{e}; its labels are not used", UserWarning, stacklevel=2)
            return None
    return None


def _inside(folder: str, name: Any, where: str) -> str:
    """``folder/name`` for a ``file_name`` that stays inside ``folder`` (not absolute, no
    ``..`` out of it, no backslash path); refused naming ``where`` otherwise."""
    path = os.path.normpath(os.path.join(folder, name)) if isinstance(name, str) and name else ""
    if (not path or os.path.isabs(name) or "\\" in name
            or os.path.commonpath([folder, path]) != folder):  # fmt: skip
        raise DataError(
            f"{where}: file_name must be a path inside the folder, not {_shown(str(name))}"
        )
    return path


def load_hf_metadata(path: str | os.PathLike[str], *, read_weights: bool = False) -> Bunch:
    """The images of an ``imagefolder``'s metadata file and their labels, as
    :func:`load_multilabel_csv` gives them: ``file_name`` is the path (relative to the
    file's folder), the labels a column of lists (``labels``, ``tags``... or the only
    column of lists). With ``read_weights``, a ``weight`` column or key gives
    ``sample_weight`` (else ``None``: only fitting reads it)."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if path.endswith(".csv"):
        data = load_multilabel_csv(path, path_column="file_name", read_weights=read_weights)
        _, rows_csv = _read_csv(path)
        for (line, row), _ in zip(rows_csv, data.filenames, strict=True):
            _inside(folder, (row.get("file_name") or "").strip(), f"{path!r} line {line}")
        return data
    rows = _jsonl_rows(path)
    column = _jsonl_labels_column(rows)
    if column is None:
        raise DataError(f'{path!r} has no column of label lists (such as "labels": [...])')
    filenames, per_image = [], []
    for line, row in rows:
        where = f"{path!r} line {line}"
        filenames.append(_inside(folder, row.get("file_name"), where))
        value = row.get(column)
        if value is not None and not isinstance(value, list):
            raise DataError(
                f"{where}: {column!r} must be a list of labels, not {_shown(repr(value))}"
            )
        per_image.append(split_labels(json.dumps(value or []), where))
    names, M = _indicator(per_image, path)
    if not M.any():
        raise DataError(f"no image in {path!r} has a label")
    return Bunch(filenames=np.array(filenames, dtype=object), target=M, target_names=names,
                 ignored=[],
                 sample_weight=_jsonl_weights(rows, path) if read_weights else None,
                 DESCR=f"Images listed in {path!r}: {len(M)} images, "
                 f"{M.shape[1]} labels.")  # fmt: skip


def _jsonl_weights(rows: list[tuple[int, dict[str, Any]]], path: str) -> np.ndarray | None:
    """A ``weight`` (or ``sample_weight``) key's numbers, read as a CSV's weight column."""
    fields = sorted({k for _, row in rows for k in row})
    texts = [(line, {k: "" if v is None else json.dumps(v) for k, v in row.items()})
             for line, row in rows]  # fmt: skip
    return column_weights(fields, texts, path)


def _jsonl_rows(path: str) -> list[tuple[int, dict[str, Any]]]:
    if os.path.getsize(path) > MAX_METADATA_BYTES:
        raise DataError(f"{path!r} is over {MAX_METADATA_BYTES >> 20} MB: not a metadata file")
    rows = []
    with open(path, encoding="utf-8-sig", errors="replace") as f:  # -sig: a BOM is no row
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


def _jsonl_labels_column(rows: list[tuple[int, dict[str, Any]]]) -> str | None:
    """The column of label lists (in any row): one named as labels are, else the only
    column of lists."""
    lists = sorted({k for _, row in rows for k, v in row.items() if isinstance(v, list)})
    named = [k for k in lists if k.lower() in _LABELS_COLUMNS]
    if named:
        return named[0]
    return lists[0] if len(lists) == 1 else None
