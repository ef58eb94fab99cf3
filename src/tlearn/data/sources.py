"""Where images come from: a folder of class sub-folders, a zip of one, a CSV of paths.

Every loader returns a :class:`sklearn.utils.Bunch` in the shape of
:func:`sklearn.datasets.load_files`: ``filenames`` (paths you can pass as ``X``),
``target`` (integer class indices), ``target_names`` (sorted class names).
"""

from __future__ import annotations

import csv
import glob
import os
import warnings
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
from sklearn.utils import Bunch, check_random_state

from tlearn.data.images import is_image_name, split_zip_path
from tlearn.exceptions import DataError

__all__ = [
    "iter_image_paths",
    "load_dataset",
    "load_image_csv",
    "load_image_folder",
    "subsample_per_class",
]

_LAYOUT_HINT = "expected {root}/<class name>/<image files>, as for torchvision's ImageFolder"
_PATH_COLUMNS = ("path", "filepath", "file_path", "filename", "file", "image", "image_path")
_LABEL_COLUMNS = ("label", "target", "class", "class_name", "category", "y")


def _list_files(root: str) -> tuple[str, list[str]]:
    """(prefix to join, relative posix paths of every file below ``root``)."""
    if os.path.isdir(root):
        rel = []
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            dirnames.sort()
            for name in sorted(filenames):
                rel.append(os.path.relpath(os.path.join(dirpath, name), root).replace(os.sep, "/"))
        return root, rel
    if os.path.isfile(root) and root.lower().endswith(".zip"):
        archive, inner = root, ""
    else:
        parts = split_zip_path(root)
        if parts is None:
            raise DataError(f"no such folder or zip archive: {root!r}")
        archive, inner = parts
    try:
        with zipfile.ZipFile(archive) as zf:
            names = [n for n in zf.namelist() if not n.endswith("/")]
    except zipfile.BadZipFile as e:
        raise DataError(f"{archive!r} is not a readable zip archive ({e})") from e
    inner = inner.strip("/")
    prefix = inner + "/" if inner else ""
    rel = sorted(n[len(prefix) :] for n in names if n.startswith(prefix))
    if inner and not rel:
        raise DataError(f"the zip archive {archive!r} has no folder {inner!r}")
    return (archive + "/" + inner if inner else archive), rel


def _hidden(rel: str) -> bool:
    return any(part.startswith(".") or part == "__MACOSX" for part in rel.split("/"))


def load_image_folder(
    path: str | os.PathLike[str],
    categories: Sequence[str] | None = None,
    *,
    shuffle: bool = True,
    random_state: int | None = 0,
    max_per_class: int | None = None,
) -> Bunch:
    """Load a folder (or zip archive) of images sorted into class sub-folders.

    Works like :func:`sklearn.datasets.load_files`, for images: ``path/<class>/<image>``,
    sub-folders of a class included. ``path`` may be a ``.zip`` with that layout, or a folder
    inside one (``"data.zip/train"``); the archive is read in place, never extracted.

    Parameters
    ----------
    path : str or path-like
        The folder, zip archive, or folder inside a zip archive.
    categories : sequence of str, optional
        Load only these classes (all when ``None``).
    shuffle : bool, default=True
        Shuffle the samples, as ``load_files`` does.
    random_state : int, default=0
        Seed for the shuffle and for ``max_per_class``.
    max_per_class : int, optional
        Keep at most this many images per class, chosen at random.

    Returns
    -------
    Bunch
        ``filenames`` (n_samples,) str, ``target`` (n_samples,) int, ``target_names`` list,
        ``ignored`` list of non-image files that were left out (also warned about).

    Examples
    --------
    >>> data = load_image_folder("cifar10-jpeg.zip/train", max_per_class=100)  # doctest: +SKIP
    >>> data.target_names[:3]  # doctest: +SKIP
    ['airplane', 'automobile', 'bird']
    """
    root = os.fspath(path).rstrip("/")
    by_class, ignored = _class_files(root)
    if categories is not None:
        missing = [c for c in categories if c not in by_class]
        if missing:
            raise DataError(
                f"categories {missing} not found in {root!r}; available: {sorted(by_class)}"
            )
        by_class = {c: by_class[c] for c in categories}
    _check_classes(root, by_class, ignored)
    target_names = sorted(by_class)
    filenames = np.array([f for c in target_names for f in by_class[c]], dtype=object)
    target = np.array([i for i, c in enumerate(target_names) for _ in by_class[c]], dtype=np.int64)
    rng = check_random_state(random_state)
    if max_per_class is not None:
        keep = subsample_per_class(target, max_per_class, rng)
        filenames, target = filenames[keep], target[keep]
    if shuffle:
        order = rng.permutation(len(target))
        filenames, target = filenames[order], target[order]
    return Bunch(
        filenames=filenames,
        target=target,
        target_names=target_names,
        ignored=ignored,
        DESCR=f"Images from {root!r}: {len(target)} images in {len(target_names)} classes.",
    )


def _class_files(root: str) -> tuple[dict[str, list[str]], list[str]]:
    """``{class: image paths}`` and the non-image files under ``root``'s class folders."""
    base, rel = _list_files(root)
    rel = [r for r in rel if not _hidden(r)]
    # A zip made by compressing the dataset folder has one extra top-level folder.
    if rel and all("/" in r for r in rel):
        tops = {r.split("/", 1)[0] for r in rel}
        if len(tops) == 1 and all(r.count("/") >= 2 for r in rel):
            top = tops.pop()
            base, rel = base + "/" + top, [r.split("/", 1)[1] for r in rel]
    by_class: dict[str, list[str]] = {}
    ignored: list[str] = []
    loose = [r for r in rel if "/" not in r]
    for r in rel:
        if "/" in r:
            files = by_class.setdefault(r.split("/", 1)[0], [])
            (files if is_image_name(r) else ignored).append(base + "/" + r)
    if not by_class:
        what = f"only loose files ({len(loose)})" if loose else "nothing"
        raise DataError(
            f"{root!r} holds {what} and no class sub-folders; " + _LAYOUT_HINT.format(root=root)
        )
    return by_class, ignored


def _check_classes(root: str, by_class: dict[str, list[str]], ignored: list[str]) -> None:
    """Refuse empty class folders; warn about the files left out."""
    empty = sorted(c for c, files in by_class.items() if not files)
    if empty:
        raise DataError(
            f"class folder(s) {empty} in {root!r} contain no image files "
            f"(extensions {sorted({'.jpg', '.png', '.bmp', '.webp', '.tif'})} ...); "
            "add images or remove the folder(s)"
        )
    if ignored:
        shown = ", ".join(repr(p) for p in ignored[:3])
        warnings.warn(
            f"{len(ignored)} file(s) in {root!r} are not images and were left out "
            f"(e.g. {shown}); see the Bunch's 'ignored' list",
            UserWarning,
            stacklevel=3,
        )


def subsample_per_class(
    target: np.ndarray, max_per_class: int, random_state: int | np.random.RandomState | None = 0
) -> np.ndarray:
    """Sorted indices keeping at most ``max_per_class`` random samples of each class."""
    if max_per_class < 1:
        raise DataError(f"max_per_class must be at least 1, got {max_per_class}")
    rng = check_random_state(random_state)
    keep = []
    for cls in np.unique(target):
        idx = np.flatnonzero(target == cls)
        if len(idx) > max_per_class:
            idx = np.sort(rng.choice(idx, max_per_class, replace=False))
        keep.append(idx)
    return np.sort(np.concatenate(keep))


def _pick_column(
    fields: list[str], wanted: str | None, choices: tuple[str, ...], what: str, path: str
) -> str | None:
    if wanted is not None:
        if wanted not in fields:
            raise DataError(f"the CSV {path!r} has no column {wanted!r}; columns: {fields}")
        return wanted
    lower = {f.lower().strip(): f for f in fields}
    for c in choices:
        if c in lower:
            return lower[c]
    return None


def _sniff_delimiter(f: Any) -> str:
    head = f.readline()
    f.seek(0)
    counts = {d: head.count(d) for d in (",", ";", "\t")}
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] else ","


def load_image_csv(
    path: str | os.PathLike[str],
    path_column: str | None = None,
    label_column: str | None = None,
) -> Bunch:
    """Load a CSV file listing image paths and (optionally) their labels.

    ``.tsv`` files are tab-separated; a ``.csv`` may be separated by commas, semicolons or
    tabs (read off its header line). Column names are detected (``path``/``filename``/
    ``image``... and ``label``/``class``/``target``...), or the first two columns are
    used. Relative paths are taken from the CSV file's folder. Without a label column
    ``target`` is ``None``.
    """
    path = os.fspath(path)
    fields, rows = _read_csv(path)
    pcol = _pick_column(fields, path_column, _PATH_COLUMNS, "path", path) or fields[0]
    lcol = _pick_column(fields, label_column, _LABEL_COLUMNS, "label", path)
    if lcol is None and label_column is None and len(fields) == 2:
        lcol = fields[1] if fields[1] != pcol else fields[0]
    folder = os.path.dirname(os.path.abspath(path))
    cells = _column(rows, pcol, path)
    filenames = np.array([c if os.path.isabs(c) else os.path.join(folder, c) for c in cells],
                         dtype=object)  # fmt: skip
    if lcol is None:
        return Bunch(filenames=filenames, target=None, target_names=None, ignored=[],
                     DESCR=f"Unlabelled images listed in {path!r}.")  # fmt: skip
    labels = _column(rows, lcol, path)
    target_names = sorted(set(labels))
    index = {c: i for i, c in enumerate(target_names)}
    return Bunch(
        filenames=filenames,
        target=np.array([index[c] for c in labels], dtype=np.int64),
        target_names=target_names,
        ignored=[],
        DESCR=f"Images listed in {path!r}: {len(labels)} images in {len(target_names)} classes.",
    )


def _read_csv(path: str) -> tuple[list[str], list[dict[str, str]]]:
    """The header and rows of a CSV (a ``.tsv`` is tab-separated; a ``.csv`` may use
    commas, semicolons or tabs, read off its header line)."""
    if not os.path.isfile(path):
        raise DataError(f"no such CSV file: {path!r}")
    with open(path, newline="", encoding="utf-8-sig") as f:
        delimiter = "\t" if path.lower().endswith(".tsv") else _sniff_delimiter(f)
        reader = csv.DictReader(f, delimiter=delimiter)
        fields = list(reader.fieldnames or [])
        rows = list(reader)
    if not fields or not rows:
        raise DataError(f"the CSV {path!r} is empty; expected a header row and one row per image")
    return fields, rows


def _column(rows: list[dict[str, str]], name: str, path: str) -> list[str]:
    """One column's stripped cells; an empty cell is an error naming its line."""
    cells = []
    for line, row in enumerate(rows, start=2):
        cell = (row.get(name) or "").strip()
        if not cell:
            raise DataError(f"the CSV {path!r} has an empty {name!r} on line {line}")
        cells.append(cell)
    return cells


def load_dataset(
    source: str | os.PathLike[str],
    *,
    max_per_class: int | None = None,
    random_state: int | None = 0,
) -> Bunch:
    """A folder, zip (or folder inside one) or CSV, whichever ``source`` is."""
    source = os.fspath(source)
    if source.lower().endswith((".csv", ".tsv")):
        data = load_image_csv(source)
        if max_per_class is not None and data.target is not None:
            keep = subsample_per_class(data.target, max_per_class, random_state)
            data.filenames, data.target = data.filenames[keep], data.target[keep]
        return data
    if not os.path.exists(source) and split_zip_path(source) is None:
        raise DataError(f"no such folder, zip archive or CSV file: {source!r}")
    return load_image_folder(source, max_per_class=max_per_class, random_state=random_state)


def iter_image_paths(inputs: Iterable[str]) -> Iterator[str]:
    """Expand folders, zips, CSVs and glob patterns into image paths, lazily and in order.

    Files named explicitly are yielded even when their extension is unusual, so that a
    broken or mislabelled file gets an error row instead of vanishing.
    """
    for item in inputs:
        item = os.fspath(item)
        if os.path.isdir(item):
            for dirpath, dirnames, filenames in os.walk(item, followlinks=True):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                for name in sorted(filenames):
                    if is_image_name(name) and not name.startswith("."):
                        yield os.path.join(dirpath, name)
        elif (
            item.lower().endswith(".zip")
            and os.path.isfile(item)
            or (
                not os.path.exists(item)
                and split_zip_path(item) is not None
                and not is_image_name(item)
            )
        ):
            base, rel = _list_files(item)
            for r in rel:
                if is_image_name(r) and not _hidden(r):
                    yield base + "/" + r
        elif item.lower().endswith((".csv", ".tsv")) and os.path.isfile(item):
            yield from load_image_csv(item).filenames
        elif any(ch in item for ch in "*?[") and not os.path.exists(item):
            matches = sorted(glob.glob(item, recursive=True))
            if not matches:
                raise DataError(f"the pattern {item!r} matches no files")
            yield from (m for m in matches if os.path.isfile(m))
        else:
            yield item  # a file (or a missing one: it gets an error row later)
