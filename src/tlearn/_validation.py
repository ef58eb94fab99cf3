"""Parameter validation in one place, after scikit-learn's constraint pattern
(``sklearn/utils/_param_validation.py``): each estimator declares
``_parameter_constraints = {"name": [constraint, ...]}`` once; :func:`validate_params`
checks the values in ``fit`` and raises :class:`~tlearn.exceptions.InvalidParameterError`
with one message template: *which parameter of which object, what is allowed, what was
given* (and "did you mean" for a near-miss of a named option).
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any

from tlearn.exceptions import DataError, InvalidParameterError

#: The largest sample weight taken: weights are relative, and larger ones overflow the
#: scaler's weighted variance.
MAX_SAMPLE_WEIGHT = 1e12

__all__ = [
    "Interval",
    "Options",
    "Predicate",
    "check_labels",
    "check_sample_weight",
    "encode_class_weight",
    "check_option",
    "invalid_message",
    "validate_params",
]


@dataclass(frozen=True)
class Options:
    """One of a fixed set of values."""

    values: tuple[Any, ...]

    def __init__(self, values: Iterable[Any]) -> None:
        object.__setattr__(self, "values", tuple(values))

    def is_satisfied_by(self, value: Any) -> bool:
        try:
            return value in self.values
        except TypeError:  # unhashable or incomparable values
            return False

    def __str__(self) -> str:
        return "one of " + ", ".join(repr(v) for v in self.values)


@dataclass(frozen=True)
class Interval:
    """A number of ``kind`` between ``low`` and ``high`` (``None``: unbounded); ``closed``
    is "both", "left", "right" or "neither".

    ``kind`` is ``Integral`` (``int`` means the same) or ``Real`` (``float`` means the
    same). As in scikit-learn, ``Integral`` takes any integer type (``int``, ``np.int64``)
    but not a bool, and not a float even when it is whole (``2.0``): an integral float
    usually means a computation went wrong, so it is refused with a hint to pass an int.
    """

    kind: type
    low: float | None
    high: float | None
    closed: str = "both"

    def __post_init__(self) -> None:
        # `int` and `float` would refuse numpy scalars (np.int64 is no int subclass)
        integral = issubclass(self.kind, Integral)
        object.__setattr__(self, "kind", Integral if integral else Real)

    def is_satisfied_by(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, self.kind):
            return False
        v: Any = value  # compared as it is: float() of a huge int would overflow
        if v != v:  # NaN
            return False
        low_ok = self.low is None or (
            v >= self.low if self.closed in ("both", "left") else v > self.low
        )
        high_ok = self.high is None or (
            v <= self.high if self.closed in ("both", "right") else v < self.high
        )
        return bool(low_ok and high_ok)

    def __str__(self) -> str:
        what = "an int" if self.kind is Integral else "a float"
        left = "[" if self.closed in ("both", "left") and self.low is not None else "("
        right = "]" if self.closed in ("both", "right") and self.high is not None else ")"
        low = "-inf" if self.low is None else f"{self.low:g}"
        high = "inf" if self.high is None else f"{self.high:g}"
        return f"{what} in the range {left}{low}, {high}{right}"


@dataclass(frozen=True)
class Predicate:
    """Any value for which ``test`` is true, described as ``description``."""

    test: Callable[[Any], bool]
    description: str

    def is_satisfied_by(self, value: Any) -> bool:
        try:
            return bool(self.test(value))
        except Exception:
            return False

    def __str__(self) -> str:
        return self.description


def _is_path(value: Any) -> bool:
    return isinstance(value, (str, os.PathLike))


#: Shorthands usable in constraint lists.
NAMED: dict[str, Predicate] = {
    "path": Predicate(_is_path, "a path (str or os.PathLike)"),
    "str": Predicate(lambda v: isinstance(v, str), "a str"),
    "boolean": Predicate(lambda v: isinstance(v, bool), "a bool"),
    "random_state": Predicate(
        lambda v: isinstance(v, Integral) and not isinstance(v, bool) and int(v) >= 0,
        "a non-negative int",
    ),
    "sequence": Predicate(
        lambda v: isinstance(v, (list, tuple)) or hasattr(v, "__array__"),
        "a list, tuple or array",
    ),
    "callable": Predicate(callable, "a callable"),
}


def _constraint(c: Any) -> Any:
    if c is None:
        return Predicate(lambda v: v is None, "None")
    if isinstance(c, str):
        return NAMED[c]
    return c


def _did_you_mean(value: Any, constraints: list[Any]) -> str:
    if not isinstance(value, str):
        return ""
    names = [v for c in constraints if isinstance(c, Options) for v in c.values]
    close = difflib.get_close_matches(value, [n for n in names if isinstance(n, str)], n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


def _whole_float_hint(value: Any, constraints: list[Any]) -> str:
    """For 2.0 where an int is asked for: say which int would do."""
    integral = [c for c in constraints if isinstance(c, Interval) and c.kind is Integral]
    if not integral or isinstance(value, (bool, Integral)) or not isinstance(value, Real):
        return ""
    number = float(value)
    if not number.is_integer() or not any(c.is_satisfied_by(int(number)) for c in integral):
        return ""
    return f" Pass the int {int(number)} (a float is refused even when it is whole)."


def invalid_message(value: Any, allowed: list[Any]) -> str | None:
    """``"must be <what is allowed>. Got <value> instead."`` (with a did-you-mean or a
    hint when one helps), or ``None`` when ``value`` satisfies one of ``allowed``."""
    checks = [_constraint(c) for c in allowed]
    if any(c.is_satisfied_by(value) for c in checks):
        return None
    described = [str(c) for c in checks]
    what = (
        described[0] if len(described) == 1 else ", ".join(described[:-1]) + " or " + described[-1]
    )
    hints = _did_you_mean(value, checks) + _whole_float_hint(value, checks)
    return f"must be {what}. Got {value!r} instead.{hints}"


def validate_params(
    owner: str, params: Mapping[str, Any], constraints: Mapping[str, list[Any]]
) -> None:
    """Check ``params`` against ``constraints``; raise :class:`InvalidParameterError`.

    Only the parameters named in ``constraints`` are checked, so a subclass may add its own.
    """
    for name, allowed in constraints.items():
        if name not in params:
            continue
        problem = invalid_message(params[name], allowed)
        if problem is not None:
            raise InvalidParameterError(f"The {name!r} parameter of {owner} {problem}")


def check_option(owner: str, name: str, value: Any, options: Iterable[Any]) -> None:
    """Shorthand for one parameter that must be one of ``options``."""
    validate_params(owner, {name: value}, {name: [Options(options)]})


def check_labels(y: object, n_samples: int, *, min_per_class: int = 1) -> tuple[Any, Any]:
    """Validate labels; return ``(classes, encoded y)``. Labels may be strings or ints."""
    import numpy as np

    if y is None:
        raise DataError("y is required: one label per image")
    y_arr = np.asarray(y)
    if y_arr.ndim != 1:
        raise DataError(f"y must be 1-d (one label per image), got shape {y_arr.shape}")
    if len(y_arr) != n_samples:
        raise DataError(f"X has {n_samples} images but y has {len(y_arr)} labels")
    classes, encoded = np.unique(y_arr, return_inverse=True)
    if len(classes) < 2:
        raise DataError(
            f"at least 2 classes are needed to train a classifier; got only "
            f"{[c.item() if hasattr(c, 'item') else c for c in classes]}. Add a folder of "
            "images for each other class"
        )
    counts = np.bincount(encoded)
    small = [(classes[i], int(c)) for i, c in enumerate(counts) if c < min_per_class]
    if small:
        names = ", ".join(f"{str(c)!r} ({n})" for c, n in small[:10])
        raise DataError(
            f"class(es) with fewer than {min_per_class} images: {names}. Add images (at least "
            f"{min_per_class} per class) or remove the class"
        )
    return classes, encoded.astype(np.int64)


def check_sample_weight(sample_weight: object, n: int) -> Any:
    """``sample_weight`` as float64, one finite non-negative number per image and not all
    zero; ``None`` stays ``None``."""
    import numpy as np

    if sample_weight is None:
        return None
    try:
        w = np.asarray(sample_weight, dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError("sample_weight must hold numbers, one per image") from None
    if w.ndim == 2 and w.shape[1] == 1:
        w = w[:, 0]
    if w.ndim != 1 or len(w) != n:
        raise DataError(f"sample_weight has shape {w.shape} for {n} images: give one per image")
    finite = np.isfinite(w)
    if not finite.all() or (w < 0).any() or not w.sum() > 0 or w.max() > MAX_SAMPLE_WEIGHT:
        low = float(w[finite].min()) if finite.any() else None
        high = float(w[finite].max()) if finite.any() else None
        raise DataError(
            f"sample_weight must hold finite numbers from 0 to {MAX_SAMPLE_WEIGHT:g}, not all 0 "
            f"(got {low} to {high}, {int((~finite).sum())} not finite)"
        )
    return w


def encode_class_weight(class_weight: Any, classes: Any) -> Any:
    """``class_weight`` for the classifier, which is trained on class indices: a dict of
    class labels becomes one of indices (a label not among the classes is an error)."""
    if not isinstance(class_weight, dict):
        return class_weight
    index = {str(c): i for i, c in enumerate(classes)}  # a file's JSON keys are text
    index.update({c.item() if hasattr(c, "item") else c: i for i, c in enumerate(classes)})
    unknown = [k for k in class_weight if k not in index]
    if unknown:
        raise DataError(
            f"class_weight names {unknown[:5]}, which are not classes of y "
            f"({[str(c) for c in classes[:10]]})"
        )
    bad = [
        k
        for k, w in class_weight.items()
        if isinstance(w, bool)
        or not isinstance(w, (int, float))
        or not 0 < w <= MAX_SAMPLE_WEIGHT  # NaN fails too
    ]
    if bad:
        raise DataError(
            f"class_weight of {bad[:5]} must be a positive number up to {MAX_SAMPLE_WEIGHT:g}"
        )
    return {index[k]: float(w) for k, w in class_weight.items()}
