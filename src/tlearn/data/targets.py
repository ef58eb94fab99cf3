"""Targets: the two conventions users meet, and a clear error when they are mixed.

scikit-learn's loaders (``load_files``, and :func:`tlearn.data.load_image_folder`) give
``target`` as class indices with the names in ``target_names``; ``tlearn fit`` (a folder,
a zip, a CSV) trains on the names themselves. A model's ``classes_`` are whichever it was
fitted on, so indices scored against a model of names (or names against indices) would
silently count every image wrong; :func:`check_target_kind` says which to pass instead.
"""

from __future__ import annotations

import numpy as np

from tlearn.exceptions import DataError

__all__ = ["check_target_kind", "is_label_sets", "refuse_label_sets"]


def is_label_sets(y: object) -> bool:
    """Whether ``y`` gives each image a tuple of labels (several per image, as
    :func:`tlearn.training.load_labelled` gives a multi-label CSV's)."""
    return (
        isinstance(y, np.ndarray) and len(y) > 0 and y.dtype == object and isinstance(y[0], tuple)
    )


def refuse_label_sets(y: object, what: str) -> None:
    """One line for a part that takes one label per image, given several."""
    if is_label_sets(y):
        raise DataError(
            f"{what} takes one label per image so far; this data gives several per image "
            "(multi-label)"
        )


def _numbers(values: np.ndarray) -> bool:
    """Whether ``values`` are numbers. Booleans are: scikit-learn scores ``True`` equal to
    ``1`` and ``False`` to ``0``, so a model of boolean classes scored with 0/1 targets (a
    yes/no column read as integers) counts right and is not of the other convention."""
    if values.dtype.kind in "biuf":
        return True
    return values.dtype.kind == "O" and all(
        isinstance(v, (bool, int, float, np.bool_, np.integer, np.floating))
        for v in values.tolist()
    )


def check_target_kind(classes: object, y: object) -> None:
    """Raise :class:`DataError` when ``y`` holds class indices and the model's ``classes``
    are names, or the other way round."""
    known, given = np.asarray(classes), np.asarray(y)
    if not len(given) or not len(known) or _numbers(known) == _numbers(given):
        return
    names = [str(c) for c in known.tolist()[:5]]
    if _numbers(given):
        raise DataError(
            f"y holds numbers ({given[:3].tolist()}...) but this model's classes are names "
            f"({names}...): pass the names, e.g. data.target_names[data.target] for the data "
            "of load_image_folder"
        )
    raise DataError(
        f"y holds names ({[str(v) for v in given[:3].tolist()]}...) but this model's classes "
        f"are numbers ({known[:5].tolist()}...): pass the class indices it was fitted on"
    )
