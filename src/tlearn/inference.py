"""Batch prediction: one row per image (path, top-k labels and probabilities, or the error
that image raised), streamed to CSV, JSON Lines or Parquet so that nothing is lost, memory
stays flat, and an interrupted run can resume where it stopped."""

from __future__ import annotations

import contextlib
import csv
import json
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from tlearn.exceptions import DataError
from tlearn.predictor import load_predictor

__all__ = ["FORMATS", "iter_predictions", "predict_to_file", "read_done_paths", "write_predictions"]

FORMATS = {
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
}


def iter_predictions(
    model: Any,
    inputs: Iterable[str],
    *,
    top_k: int = 1,
    tta: bool = False,
    chunk_size: int = 1024,
    skip: set[str] | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield one dict per image, in input order: ``path``, ``label``, ``probability``,
    ``top_labels``, ``top_probabilities`` and ``error`` (empty when the image was read).

    ``model`` is a :class:`~tlearn.predictor.Predictor`, a fitted model, a model file, an
    export or ``imagenet:NAME``; see :meth:`Predictor.iter_predict`.
    """
    predictor = load_predictor(model)
    yield from predictor.iter_predict(
        inputs, top_k=top_k, tta=tta, chunk_size=chunk_size, skip=skip
    )


def _format(output: str) -> str:
    ext = os.path.splitext(output)[1].lower()
    if ext not in FORMATS:
        raise DataError(
            f"unknown output format {ext!r} for {output!r}; use .csv, .jsonl or .parquet"
        )
    return FORMATS[ext]


def _csv_header(top_k: int) -> list[str]:
    header = ["path", "label", "probability"]
    for j in range(1, top_k + 1 if top_k > 1 else 1):
        header += [f"label_{j}", f"probability_{j}"]
    return [*header, "error"]


def _csv_line(row: dict[str, Any], top_k: int) -> list[Any]:
    line = [
        row["path"],
        "" if row["label"] is None else row["label"],
        "" if row["probability"] is None else f"{row['probability']:.6f}",
    ]
    if top_k > 1:
        for j in range(top_k):
            has = j < len(row["top_labels"])
            line += [
                row["top_labels"][j] if has else "",
                f"{row['top_probabilities'][j]:.6f}" if has else "",
            ]
    return [*line, row["error"]]


def read_done_paths(output: str | os.PathLike[str]) -> set[str]:
    """Paths already written to a CSV or JSON Lines output (a torn last line is ignored)."""
    output = os.fspath(output)
    fmt = _format(output)
    done: set[str] = set()
    if fmt == "parquet":
        raise DataError(
            "--resume works with .csv and .jsonl outputs; Parquet files cannot "
            "be appended to. Write .csv or .jsonl, or start afresh with --overwrite"
        )
    with open(output, encoding="utf-8", newline="") as f:
        if fmt == "csv":
            for row in csv.DictReader(f):
                if row.get("path") and "error" in row and row["error"] is not None:
                    done.add(row["path"])
        else:
            for line in f:
                with contextlib.suppress(json.JSONDecodeError, KeyError):  # a torn last line
                    done.add(json.loads(line)["path"])
    return done


def _truncate_torn_tail(output: str) -> None:
    """Drop a half-written last line left by a killed run, so appending stays valid."""
    with open(output, "rb+") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        if size == 0:
            return
        f.seek(max(0, size - 65536))
        tail = f.read()
        if tail.endswith(b"\n"):
            return
        cut = tail.rfind(b"\n")
        f.truncate(size - len(tail) + cut + 1 if cut >= 0 else 0)


def write_predictions(
    rows: Iterable[dict[str, Any]],
    output: str | os.PathLike[str],
    top_k: int = 1,
    *,
    append: bool = False,
    on_row: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, int]:
    """Write rows as CSV, JSON Lines or Parquet (by extension), flushing every 256 rows.

    Returns ``{"ok": n, "failed": m}`` for the rows written now.
    """
    output = os.fspath(output)
    fmt = _format(output)
    folder = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(folder):
        raise DataError(f"cannot write {output!r}: the folder {folder!r} does not exist")
    if not os.access(folder, os.W_OK):
        raise DataError(f"cannot write {output!r}: the folder {folder!r} is not writable")
    counts = {"ok": 0, "failed": 0}

    def counted(rows: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for row in rows:
            counts["failed" if row["error"] else "ok"] += 1
            if on_row is not None:
                on_row(row)
            yield row

    if fmt == "parquet":
        _write_parquet(counted(rows), output, top_k)
        return counts
    if append:
        _truncate_torn_tail(output)
    with open(output, "a" if append else "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f) if fmt == "csv" else None
        if writer is not None and (not append or f.tell() == 0):
            writer.writerow(_csv_header(top_k))
        for n, row in enumerate(counted(rows), start=1):
            if writer is not None:
                writer.writerow(_csv_line(row, top_k))
            else:
                f.write(json.dumps(row) + "\n")
            if n % 256 == 0:
                f.flush()
    return counts


def _write_parquet(rows: Iterable[dict[str, Any]], output: str, top_k: int) -> None:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(
            "writing Parquet needs pyarrow: pip install 'tlearn[parquet]' (or write .csv / .jsonl)"
        ) from None
    tmp = output + ".part"
    writer = None
    batch: list[dict[str, Any]] = []

    def flush() -> None:
        nonlocal writer
        table = pa.Table.from_pylist(
            [
                {
                    **r,
                    "label": None if r["label"] is None else str(r["label"]),
                    "top_labels": [str(v) for v in r["top_labels"]],
                }
                for r in batch
            ]
        )
        if writer is None:
            writer = pq.ParquetWriter(tmp, table.schema)
        writer.write_table(table)
        batch.clear()

    try:
        for row in rows:
            batch.append(row)
            if len(batch) >= 4096:
                flush()
        if batch or writer is None:
            flush()
    finally:
        if writer is not None:
            writer.close()
    os.replace(tmp, output)


def predict_to_file(
    model: Any,
    inputs: Iterable[str],
    output: str | os.PathLike[str],
    *,
    top_k: int = 1,
    tta: bool = False,
    resume: bool = False,
    overwrite: bool = False,
    on_row: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, int]:
    """Predict every image in ``inputs`` into ``output``; returns counts of ``ok``,
    ``failed`` and ``skipped`` (already done by an earlier run, with ``resume``)."""
    output = os.fspath(output)
    _format(output)
    skip: set[str] = set()
    if os.path.exists(output):
        if resume:
            skip = read_done_paths(output)
        elif not overwrite:
            raise DataError(
                f"the output {output!r} exists; pass --overwrite to replace it or "
                "--resume to continue an interrupted run"
            )
    elif resume:
        resume = False  # nothing to continue from: start afresh
    rows = iter_predictions(model, inputs, top_k=top_k, tta=tta, skip=skip)
    counts = write_predictions(rows, output, top_k, append=resume, on_row=on_row)
    return {**counts, "skipped": len(skip)}
