"""The kinds of row a batch job makes, as one table: their columns (with each column's CSV
text and Arrow type), the row of an image that failed, the output formats allowed, and the
builder that turns a batch of model outputs into rows.

Every interface takes its rows from here: :class:`~tlearn.predictor.Predictor` (and so
``tlearn predict``, ``serve`` and :mod:`tlearn.inference`), the writers of
:mod:`tlearn.outputs` and the Ray workers of :mod:`tlearn.scale.ray`. A new kind of row is
one :class:`RowKind` in :data:`ROW_KINDS`.

- ``predictions`` (one label per image): ``label`` and ``probability`` of the best class,
  ``top_labels`` and ``top_probabilities`` (best first), ``error``;
- ``multilabel`` (several labels per image, issue 28): the same columns, the probabilities
  each label's own (they need not sum to 1), plus ``above_threshold``: every label whose
  probability reaches its threshold, best first (empty: no label applies);
- ``features``: ``features`` (float32 vector) and ``error``.

Every row also has ``row_id`` (the image's position in the expanded input) and ``path``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from tlearn._io import python_value

__all__ = ["ROW_KINDS", "Column", "RowKind", "error_row", "row_kind", "top_k_rows"]


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _number(value: Any) -> str:
    return "" if value is None else f"{value:.6f}"


def _labels(values: Any) -> str:
    return json.dumps([str(v) for v in values])


def _scores(values: Any) -> str:
    return json.dumps([round(float(v), 6) for v in values])


@dataclass(frozen=True)
class Column:
    """One column: its name, its Arrow type (``string``, ``int64``, ``float64``, or
    ``list<T>``), and how a CSV cell writes it (``None``: the kind has no CSV form).
    ``label`` columns hold class labels, written as text in every format, whatever type
    the model's classes have."""

    name: str
    arrow: str
    csv: Callable[[Any], Any] | None = None
    label: bool = False

    def arrow_type(self) -> Any:
        import pyarrow as pa

        if self.arrow.startswith("list<"):
            return pa.list_(getattr(pa, self.arrow[5:-1])())
        return getattr(pa, self.arrow)()

    def plain(self, value: Any) -> Any:
        """The value as JSON Lines and Parquet hold it."""
        if not self.label or value is None:
            return value.tolist() if isinstance(value, np.ndarray) else value
        return [str(v) for v in value] if self.arrow.startswith("list<") else str(value)


_ID = (Column("row_id", "int64", str), Column("path", "string", str))
_ERROR = Column("error", "string", str)
_PREDICTED = (
    Column("label", "string", _text, label=True),
    Column("probability", "float64", _number),
    Column("top_labels", "list<string>", _labels, label=True),
    Column("top_probabilities", "list<float64>", _scores),
)


def top_k_rows(
    proba: np.ndarray, classes: np.ndarray, top_k: int, thresholds: np.ndarray | None = None
) -> list[dict[str, Any]]:
    """One prediction row per row of ``proba``: the ``top_k`` labels, best first; with
    ``thresholds`` (a multi-label model's, one per class) also ``above_threshold``."""
    k = min(top_k, len(classes))
    order = np.argsort(-proba, axis=1, kind="stable")
    rows = []
    for p, o in zip(proba, order, strict=True):
        labels = [python_value(classes[j]) for j in o[:k]]
        scores = [float(p[j]) for j in o[:k]]
        row: dict[str, Any] = {"label": labels[0], "probability": scores[0],
                               "top_labels": labels, "top_probabilities": scores}  # fmt: skip
        if thresholds is not None:
            row["above_threshold"] = [python_value(classes[j]) for j in o if p[j] >= thresholds[j]]
        row["error"] = ""
        rows.append(row)
    return rows


@dataclass(frozen=True)
class RowKind:
    """One kind of row: its ``columns`` in order (``row_id`` and ``path`` first, ``error``
    last), the values of a failed row, and ``build(outputs, classes, top_k, thresholds)``:
    a batch of model outputs -> one row each (without ``row_id`` and ``path``)."""

    name: str
    columns: tuple[Column, ...]
    failed: dict[str, Any]
    build: Callable[..., list[dict[str, Any]]]
    #: what one row describes, for messages
    what: str
    #: a table on the terminal shows the top k classes (else every label the row has)
    shows_top_k: bool = True

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    @property
    def has_csv(self) -> bool:
        return all(c.csv is not None for c in self.columns)

    def failed_row(self, reason: str) -> dict[str, Any]:
        """The row of an image that could not be read (``reason`` says why)."""
        return {**{k: (list(v) if isinstance(v, list) else v) for k, v in self.failed.items()},
                "error": reason}  # fmt: skip

    def csv_line(self, row: dict[str, Any]) -> list[Any]:
        return [c.csv(row[c.name]) for c in self.columns]  # type: ignore[misc]

    def plain(self, row: dict[str, Any]) -> dict[str, Any]:
        """``row`` as JSON Lines holds it (labels as text, vectors as lists)."""
        return {c.name: c.plain(row[c.name]) for c in self.columns}

    def schema(self) -> Any:
        import pyarrow as pa

        return pa.schema([(c.name, c.arrow_type()) for c in self.columns])


def _features(outputs: np.ndarray, *_: Any) -> list[dict[str, Any]]:
    return [{"features": f, "error": ""} for f in np.asarray(outputs, np.float32)]


_NOT_PREDICTED: dict[str, Any] = {
    "label": None,
    "probability": None,
    "top_labels": [],
    "top_probabilities": [],
}

#: Every kind of row, by name.
ROW_KINDS: dict[str, RowKind] = {
    kind.name: kind
    for kind in (
        RowKind(
            "predictions",
            (*_ID, *_PREDICTED, _ERROR),
            _NOT_PREDICTED,
            lambda proba, classes, top_k, _=None: top_k_rows(proba, classes, top_k),
            "a prediction",
        ),
        RowKind(
            "multilabel",
            (
                *_ID,
                *_PREDICTED,
                Column("above_threshold", "list<string>", _labels, label=True),
                _ERROR,
            ),  # fmt: skip
            {**_NOT_PREDICTED, "above_threshold": []},
            top_k_rows,
            "a multi-label prediction",
            shows_top_k=False,
        ),
        RowKind(
            "features",
            (*_ID, Column("features", "list<float32>"), _ERROR),
            {"features": None},
            _features,
            "features",
        ),
    )
}


def row_kind(name: str) -> RowKind:
    """The kind of row named ``name``."""
    return ROW_KINDS[name]


def kind_of_row(row: dict[str, Any] | None) -> RowKind:
    """The kind of a row built elsewhere: of the kinds whose columns it all has, the one
    with the most; a prediction when there is no row."""
    if row is None:
        return ROW_KINDS["predictions"]
    fits = [kind for kind in ROW_KINDS.values() if set(kind.names) - {"row_id"} <= set(row)]
    if not fits:
        raise ValueError(f"a row with keys {sorted(row)[:10]} is of no kind of row")
    return max(fits, key=lambda kind: len(kind.columns))


def error_row(reason: str) -> dict[str, Any]:
    """The prediction row of an image that could not be read."""
    return ROW_KINDS["predictions"].failed_row(reason)
