"""Where images come from: a folder of class sub-folders, a zip of one, a CSV of paths.

Every loader returns a :class:`sklearn.utils.Bunch` in the shape of
:func:`sklearn.datasets.load_files`: ``filenames`` (paths you can pass as ``X``),
``target`` (integer class indices), ``target_names`` (sorted class names).

Folders are walked by :func:`tlearn.data.walk.walk_files`: links are followed, each folder
once, so a link loop can neither repeat images nor make the walk endless; an image that
two class folders reach (through a link) is refused, since its label is ambiguous and,
listed twice, it would leak across a train/test split.

Resource budget (tested in tests/test_sources.py):

- listing a folder holds no directory open between the paths it yields (one while a
  folder's names are read), keeps one short entry per folder still to walk, and starts no
  thread; a zip is opened once to read its index; a CSV is read once, whole (its rows are
  kept: a few short strings per image);
- reading the images (:func:`tlearn.data.loader.iter_batches`) runs ``n_workers`` threads
  (default: the cores less one, at most 8), each with at most one image file open (zip
  members are read through one shared handle per archive), and keeps at most
  ``max(prefetch, n_workers)`` decoded batches in memory.
"""

from __future__ import annotations

import csv
import os
import re
import warnings
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np
from sklearn.utils import Bunch, check_random_state

from tlearn.data.images import is_image_name, split_zip_path
from tlearn.data.walk import FileKey, Link, glob_files, is_hidden_name, walk_files
from tlearn.exceptions import DataError

__all__ = [
    "iter_image_paths",
    "path_text",
    "load_dataset",
    "load_image_csv",
    "load_image_folder",
    "subsample_per_class",
]

_LAYOUT_HINT = "expected {root}/<class name>/<image files>, as for torchvision's ImageFolder"
_PATH_COLUMNS = ("path", "filepath", "file_path", "filename", "file", "image", "image_path")
_LABEL_COLUMNS = ("label", "target", "class", "class_name", "category", "y")
#: A column of per-image sample weights is found under one of these names.
WEIGHT_COLUMNS = ("weight", "sample_weight", "weights")


class _Listing(NamedTuple):
    """What is below a folder or zip: ``base`` to join to the relative posix paths of its
    ``files`` (with each file's ``keys``, its ``(device, inode)``; ``None`` in a zip), the
    ``folders`` (empty ones too) and the folder ``links`` that were not followed."""

    base: str
    files: list[str]
    keys: list[FileKey | None]
    folders: list[str]
    links: list[Link]


def _list_files(root: str, *, identify: bool = False) -> _Listing:
    """Every file below ``root``, a folder, a zip archive or a folder inside one."""
    if os.path.isdir(root):
        links: list[Link] = []
        folders: list[str] = []
        found = list(walk_files(root, links, folders=folders, identify=identify))
        return _Listing(root, [r for r, _ in found], [k for _, k in found], folders, links)
    if os.path.isfile(root) and root.lower().endswith(".zip"):
        archive, inner = root, ""
    else:
        parts = split_zip_path(root)
        if parts is None:
            raise DataError(f"no such folder or zip archive: {root!r}")
        archive, inner = parts
    try:
        with zipfile.ZipFile(archive) as zf:
            names = list(dict.fromkeys(zf.namelist()))  # a name stored twice is one member
    except zipfile.BadZipFile as e:
        raise DataError(f"{archive!r} is not a readable zip archive ({e})") from e
    inner = inner.strip("/")
    prefix = inner + "/" if inner else ""
    inside = sorted(n[len(prefix) :] for n in names if n.startswith(prefix) and n != prefix)
    if inner and not inside:
        raise DataError(f"the zip archive {archive!r} has no folder {inner!r}")
    rel = [n for n in inside if not n.endswith("/")]
    folders = [n.rstrip("/") for n in inside if n.endswith("/")]
    base = archive + "/" + inner if inner else archive
    return _Listing(base, rel, [None] * len(rel), folders, [])


def _hidden(rel: str) -> bool:
    return any(is_hidden_name(part) for part in rel.split("/"))


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
    found = _class_files(root)
    by_class = found.by_class
    if categories is not None:
        missing = [c for c in categories if c not in by_class]
        if missing:
            empty = [c for c in missing if c in found.empty]
            raise DataError(
                f"categories {missing} not found in {root!r}"
                + (f" ({empty} are empty folders)" if empty else "")
                + f"; available: {sorted(by_class)}"
            )
        by_class = {c: by_class[c] for c in categories}
        found = found._replace(empty=[])  # the folders not asked for are not missed
    _check_classes(root, found, by_class)
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
        ignored=found.ignored,
        DESCR=f"Images from {root!r}: {len(target)} images in {len(target_names)} classes.",
    )


class _Classes(NamedTuple):
    by_class: dict[str, list[str]]  # class -> image paths ([] for only non-images)
    ignored: list[str]  # non-image files in class folders
    empty: list[str]  # class folders without any file
    left_out: list[tuple[str, str]]  # (a link, what it leads to, listed already)


class _Layout(NamedTuple):
    """Where a listing's class folders are: below ``base``, or below its one ``top``
    folder (a zip made by compressing the dataset folder has one)."""

    base: str
    top: str

    def where(self, rel: str) -> str:
        return self.base + "/" + rel if rel else self.base

    def class_of(self, rel: str, folder: bool = False) -> str | None:
        """The class of a file (or folder) at ``rel``; ``None`` above the class folders."""
        top = self.top
        local = rel[len(top) + 1 :] if top and rel.startswith(top + "/") else rel
        if (top and rel == top) or not local or not (folder or "/" in local):
            return None
        return local.split("/", 1)[0]


def _class_files(root: str) -> _Classes:
    """The images below ``root``'s class folders, each listed once and under one class.

    A link that leads to a file or folder listed already is left out (a loop, or a second
    name in the same class); one whose image would also be listed under another class is
    refused, naming both paths: the image's label is the user's call, and listed twice it
    would sit on both sides of a train/test or cross-validation split."""
    found = _list_files(root, identify=True)
    files = [(r, k) for r, k in zip(found.files, found.keys, strict=True) if not _hidden(r)]
    folders = [d for d in found.folders if d and not _hidden(d)]
    layout = _Layout(found.base, _extra_top([r for r, _ in files], folders))
    left_out = []
    for link, target in found.links:
        if target and not link.startswith(target + "/"):  # a second route, not a loop
            a, b = (link, layout.class_of(link, True)), (target, layout.class_of(target, True))
            _refuse_two_classes(layout, a, b)
        left_out.append((layout.where(link), layout.where(target)))
    by_class: dict[str, list[str]] = {}
    ignored: list[str] = []
    listed: dict[FileKey, tuple[str, str | None]] = {}
    for rel, key in files:
        cls = layout.class_of(rel)
        if cls is None:
            continue  # a loose file, beside the class folders
        images = by_class.setdefault(cls, [])
        if not is_image_name(rel):
            ignored.append(layout.where(rel))
        elif key is not None and key in listed:
            _refuse_two_classes(layout, (rel, cls), listed[key])
            left_out.append((layout.where(rel), layout.where(listed[key][0])))
        else:
            listed.update({key: (rel, cls)} if key is not None else {})
            images.append(layout.where(rel))
    classes = {layout.class_of(d, True) for d in folders}
    empty = sorted(c for c in classes if c is not None and c not in by_class)
    if not by_class:
        loose = sum(1 for r, _ in files if "/" not in r)
        what = f"only empty class folders {empty}" if empty else "nothing"
        what = f"only loose files ({loose})" if loose else what
        raise DataError(
            f"{root!r} holds {what} and no class sub-folders with images; "
            + _LAYOUT_HINT.format(root=root)
        )
    return _Classes(by_class, ignored, empty, left_out)


def _extra_top(files: list[str], folders: list[str]) -> str:
    """The one top-level folder holding everything, to look below; ``""`` if none."""
    if not files or not all(r.count("/") >= 2 for r in files):
        return ""
    tops = {r.split("/", 1)[0] for r in files} | {d.split("/", 1)[0] for d in folders}
    return tops.pop() if len(tops) == 1 else ""


def _refuse_two_classes(
    layout: _Layout, a: tuple[str, str | None], b: tuple[str, str | None]
) -> None:
    """Raise if ``a`` and ``b``, ``(path, class)`` of one file or folder reached by two
    names, are in two classes."""
    if a[1] is not None and b[1] is not None and a[1] != b[1]:
        raise DataError(
            f"{layout.where(a[0])!r} (class {a[1]!r}) and {layout.where(b[0])!r} "
            f"(class {b[1]!r}) are the same "
            "image(s), through a symbolic link: an image cannot have two labels, and listed "
            "twice it would fall on both sides of a train/test split; remove the link or "
            "keep the image in one class folder"
        )


def _check_classes(root: str, found: _Classes, by_class: dict[str, list[str]]) -> None:
    """Refuse class folders without images; warn about what was left out."""
    imageless = sorted(c for c, files in by_class.items() if not files)
    if imageless:
        raise DataError(
            f"class folder(s) {imageless} in {root!r} contain no image files "
            f"(extensions {sorted({'.jpg', '.png', '.bmp', '.webp', '.tif'})} ...); "
            "add images or remove the folder(s)"
        )
    if found.empty:
        _warn(f"the class folder(s) {found.empty} in {root!r} are empty and were left out")
    if found.ignored:
        shown = ", ".join(repr(p) for p in found.ignored[:3])
        _warn(
            f"{len(found.ignored)} file(s) in {root!r} are not images and were left out "
            f"(e.g. {shown}); see the Bunch's 'ignored' list"
        )
    if found.left_out:
        _warn(_links_left_out(root, found.left_out))


def _warn(message: str) -> None:
    warnings.warn(message, UserWarning, stacklevel=4)  # the caller of the public loader


def _links_left_out(root: str, left_out: list[tuple[str, str]]) -> str:
    shown = ", ".join(f"{a!r} -> {b!r}" for a, b in left_out[:3])
    return (
        f"{len(left_out)} symbolic link(s) in {root!r} lead to images or folders listed "
        f"already (a loop, or a second name) and were left out, so that no image is "
        f"listed twice: {shown}"
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
            shown = ", ".join(_shown(f) for f in fields[:20]) + (" ..." if len(fields) > 20 else "")
            raise DataError(f"the CSV {path!r} has no column {_shown(wanted)}; columns: {shown}")
        return wanted
    lower = {f.lower().strip(): f for f in fields}
    for c in choices:
        if c in lower:
            return lower[c]
    return None


def _shown(text: str, limit: int = 60) -> str:
    """``text`` quoted for a message, cut short: a header can be one 100 kB "column"."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + "..."


def _sniff_delimiter(f: Any) -> str:
    head = f.readline(1 << 20)  # a header line is short; a file of one huge line is not
    f.seek(0)
    counts = {d: head.count(d) for d in (",", ";", "\t")}
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] else ","


def _encoding(path: str) -> str:
    """UTF-8 (with or without its BOM), or UTF-16/32 when the file starts with their BOM
    (Excel's "Unicode Text" is UTF-16)."""
    with open(path, "rb") as f:
        head = f.read(4)
    if head in (b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff"):
        return "utf-32"
    return "utf-16" if head[:2] in (b"\xff\xfe", b"\xfe\xff") else "utf-8-sig"


def load_image_csv(
    path: str | os.PathLike[str],
    path_column: str | None = None,
    label_column: str | None = None,
    weight_column: str | None = None,
    *,
    read_weights: bool = False,
) -> Bunch:
    """Load a CSV file listing image paths and (optionally) their labels.

    ``.tsv`` files are tab-separated; a ``.csv`` may be separated by commas, semicolons or
    tabs (read off its header line). Column names are detected (``path``/``filename``/
    ``image``... and ``label``/``class``/``target``...), or the first two columns are
    used. Relative paths are taken from the CSV file's folder. Without a label column
    ``target`` is ``None``. With ``read_weights``, a column ``weight`` (or
    ``sample_weight``, or the one named by ``weight_column``) gives ``sample_weight``, one
    number per image (else, and without it, ``None``: a prediction does not read them).

    The file is UTF-8 (with or without a byte-order mark) or, with their mark, UTF-16 or
    UTF-32 (Excel's "Unicode Text"). Anything else (another encoding, a NUL character, a
    cell over 128 KiB as an unclosed quote makes, an empty cell, a column named twice) is
    a :class:`~tlearn.exceptions.DataError` naming the file and the line.
    """
    path = os.fspath(path)
    fields, rows = _read_csv(path)
    pcol = _pick_column(fields, path_column, _PATH_COLUMNS, "path", path) or fields[0]
    lcol = _pick_column(fields, label_column, _LABEL_COLUMNS, "label", path)
    wcol = weight_column_of(fields, path, weight_column)
    if lcol is None and label_column is None and len(fields) == 2:
        lcol = fields[1] if fields[1] != pcol else fields[0]
        lcol = None if lcol == wcol else lcol  # path,weight: unlabelled, weighed
    wanted = read_weights or weight_column is not None
    weights = column_weights(fields, rows, path, weight_column) if wanted else None
    for column in (pcol, lcol or pcol):
        if fields.count(column) > 1:  # the reader would keep one of them, silently
            raise DataError(
                f"the CSV {path!r} has {fields.count(column)} columns named {_shown(column)}"
            )
    folder = os.path.dirname(os.path.abspath(path))
    cells = _column(rows, pcol, path)
    filenames = np.array([c if os.path.isabs(c) else os.path.join(folder, c) for c in cells],
                         dtype=object)  # fmt: skip
    if lcol is None:
        return Bunch(filenames=filenames, target=None, target_names=None, ignored=[],
                     sample_weight=weights,
                     DESCR=f"Unlabelled images listed in {path!r}.")  # fmt: skip
    labels = _column(rows, lcol, path)
    target_names = sorted(set(labels))
    index = {c: i for i, c in enumerate(target_names)}
    return Bunch(
        filenames=filenames,
        target=np.array([index[c] for c in labels], dtype=np.int64),
        target_names=target_names,
        ignored=[],
        sample_weight=weights,
        DESCR=f"Images listed in {path!r}: {len(labels)} images in {len(target_names)} classes.",
    )


def weight_column_of(fields: list[str], path: str, wanted: str | None = None) -> str | None:
    """The CSV's sample-weight column (``wanted``, or the one named as
    :data:`WEIGHT_COLUMNS` are, whatever the case), or ``None``; two such columns are an
    error (which one weighs would be a guess)."""
    if wanted is not None:
        return _pick_column(fields, wanted, WEIGHT_COLUMNS, "weight", path)
    found = [f for f in fields if f.lower().strip() in WEIGHT_COLUMNS]
    if len(found) > 1:
        raise DataError(
            f"the CSV {path!r} has {len(found)} weight columns ({', '.join(map(_shown, found))}); "
            "keep one"
        )
    return found[0] if found else None


#: A weight cell: a plain decimal number (no ``_`` separators, no digits of other scripts).
_NUMBER = re.compile(r"[+]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", re.ASCII)


def column_weights(
    fields: list[str],
    rows: list[tuple[int, dict[str, str]]],
    path: str,
    wanted: str | None = None,
) -> np.ndarray | None:
    """The sample-weight column's numbers, or ``None`` without one; a cell that is not a
    plain decimal number from 0 to :data:`~tlearn._validation.MAX_SAMPLE_WEIGHT` is an
    error naming its line (an empty one too: leave an image out with weight 0)."""
    from tlearn._validation import MAX_SAMPLE_WEIGHT

    column = weight_column_of(fields, path, wanted)
    if column is None:
        return None
    if fields.count(column) > 1:
        raise DataError(f"the CSV {path!r} has {fields.count(column)} columns named {column!r}")
    weights = np.empty(len(rows), np.float64)
    for i, ((line, _), cell) in enumerate(zip(rows, _column(rows, column, path), strict=True)):
        value = float(cell) if _NUMBER.fullmatch(cell) else float("nan")
        if not 0 <= value <= MAX_SAMPLE_WEIGHT:  # NaN fails too
            raise DataError(
                f"the CSV {path!r} has weight {_shown(cell)} on line {line}: a weight is a "
                f"number from 0 to {MAX_SAMPLE_WEIGHT:g} (0 leaves the image out)"
            )
        weights[i] = value
    if not weights.sum() > 0:
        raise DataError(f"every weight in the CSV {path!r} is 0: give some images weight")
    return weights


def _read_csv(path: str) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """The header and ``(line number, row)`` pairs of a CSV (a ``.tsv`` is tab-separated;
    a ``.csv`` may use commas, semicolons or tabs, read off its header line)."""
    if not os.path.isfile(path):
        raise DataError(f"no such CSV file: {path!r}")
    reader: Any = None
    try:
        with open(path, newline="", encoding=_encoding(path)) as f:
            delimiter = "\t" if path.lower().endswith(".tsv") else _sniff_delimiter(f)
            reader = csv.DictReader(f, delimiter=delimiter)
            fields = list(reader.fieldnames or [])
            rows = [(reader.line_num, row) for row in reader]
    except UnicodeDecodeError as e:
        raise DataError(
            f"the CSV {path!r} is not UTF-8 text (byte {e.object[e.start : e.start + 1]!r} "
            f"cannot be decoded); save it as UTF-8"
        ) from e
    except csv.Error as e:
        line = reader.line_num if reader is not None else 1
        hint = " (an unclosed quote?)" if "field limit" in str(e) else ""
        raise DataError(f"the CSV {path!r} cannot be read on line {line}: {e}{hint}") from e
    except OSError as e:
        raise DataError(f"cannot read the CSV {path!r}: {e.strerror or e}") from e
    if not fields or not rows:
        raise DataError(f"the CSV {path!r} is empty; expected a header row and one row per image")
    return fields, rows


def _column(rows: list[tuple[int, dict[str, str]]], name: str, path: str) -> list[str]:
    """One column's stripped cells; an empty cell, or one holding a NUL character (no path
    or label has one: the file is not text), is an error naming its line."""
    cells = []
    for line, row in rows:
        cell = (row.get(name) or "").strip()
        if not cell or "\x00" in cell:
            what = "a NUL character in its" if cell else "an empty"
            raise DataError(f"the CSV {path!r} has {what} {_shown(name)} on line {line}")
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
            if data.sample_weight is not None:
                data.sample_weight = data.sample_weight[keep]
        return data
    if not os.path.exists(source) and split_zip_path(source) is None:
        raise DataError(f"no such folder, zip archive or CSV file: {source!r}")
    return load_image_folder(source, max_per_class=max_per_class, random_state=random_state)


def path_text(path: str) -> str:
    """``path`` as text that any UTF-8 writer takes (Parquet's strings must be UTF-8): a
    file name whose bytes are not UTF-8 (Python holds them as lone surrogates, as
    ``os.listdir`` gives them) gets those bytes as ``\\xNN`` escapes; others are unchanged."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        try:
            raw = path.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:  # surrogates that were never bytes of a name
            return path.encode("utf-8", "backslashreplace").decode("utf-8")
        return raw.decode("utf-8", "backslashreplace")
    return path


def iter_image_paths(inputs: Iterable[str]) -> Iterator[str]:
    """Expand folders, zips, CSVs and glob patterns into image paths, lazily and in order.

    Files named explicitly are yielded even when their extension is unusual, so that a
    broken or mislabelled file gets an error row instead of vanishing. Links in folders are
    followed, each folder once: a link to a folder already walked (a loop) is left out,
    with a warning once the folder is listed.
    """
    for item in inputs:
        item = os.fspath(item)
        left_out: list[tuple[str, str]] = []
        yield from _expand(item, left_out)
        if left_out:
            warnings.warn(_links_left_out(item, left_out), UserWarning, stacklevel=2)


def _expand(item: str, left_out: list[tuple[str, str]]) -> Iterator[str]:
    """The image paths of one input; links not followed are added to ``left_out``."""
    links: list[Link] = []
    if os.path.isdir(item):
        for rel, _ in walk_files(item, links):
            if is_image_name(rel) and not is_hidden_name(rel.rsplit("/", 1)[-1]):
                yield os.path.join(item, rel)
        left_out.extend(
            (os.path.join(item, a), os.path.join(item, b) if b else item) for a, b in links
        )
    elif (
        item.lower().endswith(".zip")
        and os.path.isfile(item)
        or (
            not os.path.exists(item)
            and split_zip_path(item) is not None
            and not is_image_name(item)
        )
    ):
        found = _list_files(item)
        yield from (
            found.base + "/" + r for r in found.files if is_image_name(r) and not _hidden(r)
        )
    elif item.lower().endswith((".csv", ".tsv")) and os.path.isfile(item):
        yield from load_image_csv(item).filenames
    elif any(ch in item for ch in "*?[") and not os.path.exists(item):
        matches = glob_files(item, links)
        if not matches:
            raise DataError(f"the pattern {item!r} matches no files")
        yield from matches
        left_out.extend(links)
    else:
        yield item  # a file (or a missing one: it gets an error row later)
