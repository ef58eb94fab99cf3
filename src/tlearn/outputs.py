"""Where batch rows go: CSV, JSON Lines, or a Parquet dataset folder, each written so that a
killed run loses at most the rows in flight and a resumed one can tell what is done.

Every kind of row of :data:`tlearn.rows.ROW_KINDS` (predictions, multi-label predictions,
features) shares these writers; the kind gives the columns, the CSV cells and the Arrow
schema.

Parquet output is a folder of part files, as Spark and Ray Data write it
(``pandas.read_parquet(folder)`` reads it whole, in row order): each part is written under a
temporary name and renamed when complete, and is named by its first row id
(``part-000000000.parquet``), so a part written twice (a retried worker) replaces itself
instead of adding rows, and a resumed run knows exactly which rows are done.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from tlearn.data.sources import path_text
from tlearn.exceptions import DataError, import_extra
from tlearn.rows import ROW_KINDS, row_kind

__all__ = [
    "FORMATS",
    "PART_ROWS",
    "PREDICTION_COLUMNS",
    "RowWriter",
    "check_output",
    "cut_torn_tail",
    "output_format",
    "prepare_output",
    "refuse_to_replace",
    "read_done_paths",
    "read_done_rows",
    "rows_table",
    "write_part",
    "write_rows",
]

FORMATS = {
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
}
#: Rows per Parquet part written by a single process.
PART_ROWS = 4096
_PART = "part-{:09d}.parquet"


def output_format(output: str, kind: str = "predictions") -> str:
    """``csv``, ``jsonl`` or ``parquet``, from the extension (a kind of row without a CSV
    form, as features, only the last two)."""
    ext = os.path.splitext(output)[1].lower()
    csv_too = row_kind(kind).has_csv
    allowed = FORMATS if csv_too else {k: v for k, v in FORMATS.items() if v != "csv"}
    if ext not in allowed:
        names = ".csv, .jsonl or .parquet" if csv_too else ".parquet or .jsonl"
        raise DataError(f"unknown output format {ext!r} for {output!r}; use {names}")
    return allowed[ext]


def check_output(output: str) -> None:
    """The folder that will hold ``output`` exists and is writable."""
    folder = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(folder):
        raise DataError(f"cannot write {output!r}: the folder {folder!r} does not exist")
    if not os.access(folder, os.W_OK):
        raise DataError(f"cannot write {output!r}: the folder {folder!r} is not writable")


def refuse_to_replace(output: str, *, resume: bool, overwrite: bool) -> None:
    """An existing ``output`` is neither resumed nor replaced unless asked: a
    :class:`DataError` saying how, before anything is loaded."""
    if os.path.exists(output) and not resume and not overwrite:
        raise DataError(
            f"the output {output!r} exists; pass --overwrite to replace it or "
            "--resume to continue an interrupted run"
        )


def prepare_output(
    output: str, kind: str, *, resume: bool, overwrite: bool
) -> dict[int, str] | None:
    """Check ``output`` before a run: when resuming, cut what a killed run left half
    written and return the rows already done (``{row id: path}``); ``None`` when starting
    afresh (an existing output is removed with ``overwrite``, refused without)."""
    output_format(output, kind)
    check_output(output)
    if os.path.exists(output):
        if resume:
            done = cut_torn_tail(output)
            _check_columns(output, output_format(output, kind), kind)
            return done
        refuse_to_replace(output, resume=resume, overwrite=overwrite)
        if os.path.isdir(output):
            shutil.rmtree(output)
        else:
            os.remove(output)
    return None


def read_done_rows(output: str | os.PathLike[str]) -> dict[int, str]:
    """``{row id: path}`` of every complete row of an output: the complete records of a CSV
    or JSON Lines file (a record cut short by a killed run does not count, wherever the cut
    fell), the rows of the complete parts of a Parquet folder (a part that cannot be read
    does not count). Reads only; :func:`cut_torn_tail` removes what does not count."""
    output = os.fspath(output)
    if output_format(output) == "parquet":
        return _part_rows(output, drop=False)
    return _scan_records(output)[0]


def read_done_paths(output: str | os.PathLike[str]) -> set[str]:
    """The paths of the complete rows of an output (see :func:`read_done_rows`)."""
    return set(read_done_rows(output).values())


def cut_torn_tail(output: str | os.PathLike[str]) -> dict[int, str]:
    """Remove what a killed run left half written, so that appending stays valid: the
    bytes after the last complete record of a CSV or JSON Lines file; the temporary and
    unreadable parts of a Parquet folder (their rows are not done, and are written again).
    Returns the rows that remain, as :func:`read_done_rows` (one pass over the file)."""
    output = os.fspath(output)
    if output_format(output) == "parquet":
        return _part_rows(output, drop=True)
    done, end = _scan_records(output)
    if os.path.getsize(output) != end:
        with open(output, "rb+") as f:
            f.truncate(end)
    return done


def _part_rows(folder: str, *, drop: bool) -> dict[int, str]:
    """The rows of the readable parts of a Parquet folder; with ``drop``, the others go."""
    if not os.path.isdir(folder):
        raise DataError(
            f"{folder!r} is a single Parquet file (written by an earlier tlearn, which "
            "could not resume); Parquet outputs are now folders of parts: pass "
            "--overwrite to start afresh"
        )
    done: dict[int, str] = {}
    for name in sorted(os.listdir(folder)):
        if not name.endswith(".parquet"):
            continue
        path = os.path.join(folder, name)
        # a temporary part was being written when the run was killed
        table = None if name.startswith(".tmp-") else _read_part(path)
        if table is not None:
            done.update(zip(table["row_id"].to_pylist(), table["path"].to_pylist(), strict=True))
        elif drop:
            os.remove(path)
    return done


def _read_part(path: str) -> Any:
    """A part's row ids and paths; ``None`` for a part cut short (renamed before its bytes
    reached the disk, or damaged since)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path, columns=["row_id", "path"])
    except (pa.ArrowException, OSError):
        return None


# -- CSV and JSON Lines -----------------------------------------------------------------
class _Lines:
    """The newline-terminated lines of a binary file, decoded, counting their bytes in
    ``consumed``; a last line without its newline was cut by a killed run: never given."""

    def __init__(self, f: Any) -> None:
        self.f, self.consumed, self.number, self.finished = f, 0, 0, False

    def __iter__(self) -> Iterator[str]:
        for raw in self.f:
            if not raw.endswith(b"\n"):
                break
            self.consumed += len(raw)
            self.number += 1
            yield raw.decode("utf-8", "surrogateescape")
        self.finished = True


def _scan_records(output: str) -> tuple[dict[int, str], int]:
    """The rows of the complete records of a CSV or JSON Lines output, and the byte offset
    where the last of them ends (what follows was cut short)."""
    done: dict[int, str] = {}
    with open(output, "rb") as f:
        lines = _Lines(f)
        records = _csv_records(lines) if output_format(output) == "csv" else _json_records(lines)
        end = 0
        try:
            for record in records:
                if record is not None:
                    row_id, path = record
                    done[row_id] = path
                end = lines.consumed  # the reader never reads past the record it gives
        except (csv.Error, ValueError, KeyError, TypeError) as e:
            if not lines.finished:  # not at the end: damaged, not torn
                raise DataError(
                    f"cannot resume {output!r}: line {lines.number} is not a row of a tlearn "
                    f"output ({e}); pass --overwrite to start afresh"
                ) from e
    return done, end


def _csv_records(lines: _Lines) -> Iterator[tuple[int, str] | None]:
    """``(row id, path)`` for each complete row (``None`` for the header)."""
    reader = csv.reader(lines, strict=True)  # strict: a quote left open at the end raises
    header = next(reader, None)
    if header is None:
        return
    if header[:2] != ["row_id", "path"] or header[-1] != "error":
        raise ValueError(f"the header is {header[:3]}..., not row_id, path, ..., error")
    yield None
    for record in reader:
        if len(record) != len(header):
            raise ValueError(f"{len(record)} fields for {len(header)} columns")
        yield int(record[0]), record[1]


def _json_records(lines: _Lines) -> Iterator[tuple[int, str]]:
    for line in lines:
        row = json.loads(line)
        if not isinstance(row["row_id"], int) or not isinstance(row["path"], str):
            raise TypeError("row_id or path of the wrong type")
        yield row["row_id"], row["path"]


#: The columns of a prediction row, in every format. In a CSV the two lists are JSON arrays
#: (``json.loads`` reads them back); a failed row's label and probability are empty there
#: and null in JSON Lines and Parquet; ``error`` is ``""`` for a row that was predicted.
PREDICTION_COLUMNS = ROW_KINDS["predictions"].names


# -- Parquet parts ----------------------------------------------------------------------
def _pyarrow() -> Any:
    return import_extra("parquet", "pyarrow.parquet", "pyarrow", "writing Parquet",
                        " (or write .jsonl)")  # fmt: skip


def rows_table(rows: list[dict[str, Any]], kind: str) -> Any:
    """Rows as a pyarrow Table with the fixed schema of their kind (labels as strings),
    the same whichever rows a part happens to hold (all failed, say)."""
    import pyarrow as pa

    kind_ = row_kind(kind)
    columns: dict[str, list[Any]] = {c.name: [] for c in kind_.columns}
    for row in rows:
        for column in kind_.columns:
            value = row[column.name]
            columns[column.name].append(
                path_text(value) if column.name == "path" else column.plain(value)
            )
    return pa.table(columns, schema=kind_.schema())


def write_part(rows: list[dict[str, Any]], folder: str, kind: str) -> str | None:
    """Write ``rows`` (in row-id order) as one complete part of the Parquet folder, named
    by the first row id, atomically: a part written again replaces itself. Returns the
    part's path (``None`` for no rows)."""
    if not rows:
        return None
    pq = _pyarrow()
    table = rows_table(rows, kind)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, _PART.format(int(rows[0]["row_id"])))
    tmp = os.path.join(folder, f".tmp-{uuid.uuid4().hex}.parquet")
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
    return path


def _check_columns(output: str, fmt: str, kind: str) -> None:
    """An output is appended to only when it has the columns of ``kind``'s rows (another
    model may give another kind: one label per image, or several): a CSV's header, the
    keys of a JSON Lines file's first row, the schema of a Parquet folder's first part."""
    found = _columns_of(output, fmt)
    names = list(row_kind(kind).names)
    if found is not None and found != names:
        raise DataError(
            f"cannot append to {output!r}: its columns are {found}, not those of "
            f"{row_kind(kind).what} row {names} (an older tlearn wrote label_1, "
            "probability_1, ...; another model may give another kind of row); pass "
            "--overwrite to start afresh"
        )


def _columns_of(output: str, fmt: str) -> list[str] | None:
    """The columns an existing output holds; ``None`` when it holds no row yet."""
    if fmt == "parquet":
        parts = sorted(n for n in os.listdir(output) if n.startswith("part-"))
        if not parts:
            return None
        import pyarrow.parquet as pq

        return list(pq.read_schema(os.path.join(output, parts[0])).names)
    if os.path.getsize(output) == 0:
        return None
    with open(output, newline="", encoding="utf-8", errors="replace") as f:
        if fmt == "csv":
            return next(csv.reader(f), [])
        first = f.readline()
    try:
        row = json.loads(first)
    except ValueError:
        return None  # damaged: the scan of the records says so
    return list(row) if isinstance(row, dict) else None


class RowWriter:
    """Append rows to an output of any format, flushing as it goes: CSV and JSON Lines every
    256 rows, Parquet a complete part every ``part_rows`` rows."""

    def __init__(
        self,
        output: str,
        kind: str = "predictions",
        *,
        append: bool = False,
        part_rows: int | None = None,
    ) -> None:
        self.output, self.kind, self._row = output, kind, row_kind(kind)
        self.fmt = output_format(output, kind)
        self.part_rows = part_rows or PART_ROWS
        self._pending: list[dict[str, Any]] = []
        self._n = 0
        self._file: Any = None
        self._csv: Any = None
        if self.fmt == "parquet":
            _pyarrow()
            os.makedirs(output, exist_ok=True)
            return
        if append:
            cut_torn_tail(output)
            _check_columns(output, self.fmt, kind)
        # surrogateescape: a path that is not UTF-8 (a Linux file name's raw bytes) is
        # written as those bytes, and read back by _Lines to the same path
        self._file = open(  # noqa: SIM115
            output, "a" if append else "w", newline="", encoding="utf-8", errors="surrogateescape"
        )
        if self.fmt == "csv":
            self._csv = csv.writer(self._file)
            if self._file.tell() == 0:
                self._csv.writerow(self._row.names)

    def write(self, row: dict[str, Any]) -> None:
        self._n += 1
        if self.fmt == "parquet":
            self._pending.append(row)
            if len(self._pending) >= self.part_rows:
                self._flush_part()
            return
        if self._csv is not None:
            self._csv.writerow(self._row.csv_line(row))
        else:
            self._file.write(json.dumps(self._row.plain(row)) + "\n")
        if self._n % 256 == 0:
            self._file.flush()

    def _flush_part(self) -> None:
        write_part(self._pending, self.output, self.kind)
        self._pending = []

    def close(self) -> None:
        """Write what is pending; the output is complete after this."""
        if self.fmt == "parquet":
            self._flush_part()
        elif self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> RowWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_rows(
    rows: Iterable[dict[str, Any]],
    output: str | os.PathLike[str],
    kind: str = "predictions",
    *,
    append: bool = False,
    on_row: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, int]:
    """Write every row to ``output``; returns ``{"ok": n, "failed": m}`` for them."""
    output = os.fspath(output)
    check_output(output)
    counts = {"ok": 0, "failed": 0}
    with RowWriter(output, kind, append=append) as writer:
        for row in _counted(rows, counts, on_row):
            writer.write(row)
    return counts


def _counted(
    rows: Iterable[dict[str, Any]],
    counts: dict[str, int],
    on_row: Callable[[dict[str, Any]], None] | None,
) -> Iterator[dict[str, Any]]:
    for row in rows:
        counts["failed" if row["error"] else "ok"] += 1
        if on_row is not None:
            on_row(row)
        yield row
