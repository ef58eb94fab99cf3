"""Batch prediction and featurisation: one row per image (its row id and path, then the
top-k labels and probabilities, or the feature vector, or the error that image raised),
streamed to CSV, JSON Lines or a Parquet folder (:mod:`tlearn.outputs`) so that nothing is
lost, memory stays flat, and an interrupted run can resume where it stopped.

This is the single-process path; :mod:`tlearn.scale.ray` writes the same rows from a Ray
cluster.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from tlearn.outputs import (
    FORMATS,
    prepare_output,
    read_done_paths,
    read_done_rows,
    refuse_to_replace,
    write_rows,
)
from tlearn.predictor import load_predictor
from tlearn.rows import kind_of_row

__all__ = [
    "FORMATS",
    "featurize_to_file",
    "iter_predictions",
    "predict_to_file",
    "read_done_paths",
    "read_done_rows",
    "write_predictions",
]


def iter_predictions(
    model: Any,
    inputs: Iterable[str],
    *,
    top_k: int | None = None,
    tta: bool = False,
    chunk_size: int = 1024,
    skip: Mapping[int, str] | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield one dict per image, in input order: ``row_id``, ``path``, ``label``,
    ``probability``, ``top_labels``, ``top_probabilities``, a multi-label model's
    ``above_threshold`` and ``error`` (empty when the image was read).

    ``model`` is a :class:`~tlearn.predictor.Predictor`, a fitted model, a model file, an
    export or ``imagenet:NAME``; see :meth:`Predictor.iter_predict`. ``skip``: the rows
    done by an earlier run, ``{row id: path}`` (:func:`read_done_rows`).
    """
    predictor = load_predictor(model)
    yield from predictor.iter_predict(
        inputs, top_k=top_k, tta=tta, chunk_size=chunk_size, skip=skip
    )


def write_predictions(
    rows: Iterable[dict[str, Any]],
    output: str | os.PathLike[str],
    *,
    append: bool = False,
    on_row: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, int]:
    """Write prediction rows as CSV, JSON Lines or a Parquet folder (by extension), each
    with the columns of :data:`tlearn.outputs.PREDICTION_COLUMNS` (in a CSV the lists are
    JSON arrays).

    Returns ``{"ok": n, "failed": m}`` for the rows written now. Rows of a multi-label
    model (with ``above_threshold``) are written with that column too.
    """
    rows = iter(rows)
    first = next(rows, None)
    kind = kind_of_row(first).name
    rows = itertools.chain([] if first is None else [first], rows)
    return write_rows(rows, output, kind, append=append, on_row=on_row)


def predict_to_file(
    model: Any,
    inputs: Iterable[str],
    output: str | os.PathLike[str],
    *,
    top_k: int | None = None,
    tta: bool = False,
    resume: bool = False,
    overwrite: bool = False,
    on_row: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, int]:
    """Predict every image in ``inputs`` into ``output``; returns counts of ``ok``,
    ``failed`` and ``skipped`` (already done by an earlier run, with ``resume``: its
    complete rows, by row id, so an image listed twice is done twice)."""
    output = os.fspath(output)
    refuse_to_replace(output, resume=resume, overwrite=overwrite)  # before the model loads
    predictor = load_predictor(model)
    kind = predictor.rows.name  # one label a row, or several
    done = prepare_output(output, kind, resume=resume, overwrite=overwrite)
    rows = iter_predictions(predictor, inputs, top_k=top_k, tta=tta, skip=done)
    counts = write_rows(rows, output, kind, append=done is not None, on_row=on_row)
    return {**counts, "skipped": len(done or ())}


def featurize_to_file(
    model: Any,
    inputs: Iterable[str],
    output: str | os.PathLike[str],
    *,
    resume: bool = False,
    overwrite: bool = False,
    on_row: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, int]:
    """Write the backbone features of every image in ``inputs`` to ``output`` (a Parquet
    folder or JSON Lines), one row per image: ``row_id``, ``path``, ``features`` and
    ``error``. ``model``: a model file, ``imagenet:BACKBONE``, a fitted model or a
    :class:`~tlearn.predictor.Predictor`. Returns counts like :func:`predict_to_file`."""
    output = os.fspath(output)
    done = prepare_output(output, "features", resume=resume, overwrite=overwrite)
    rows = load_predictor(model).iter_featurize(inputs, skip=done)
    counts = write_rows(rows, output, "features", append=done is not None, on_row=on_row)
    return {**counts, "skipped": len(done or ())}
