"""The errors tlearn raises, as one small tree.

Every message says which input, what is wrong, and what to do about it::

    TlearnError
    ├── InvalidParameterError      (also a ValueError) a parameter outside its constraints
    ├── DataError                  (also a ValueError)
    │   ├── ImageReadError         one image file could not be decoded
    │   └── UnknownClassError      labels the model has never seen
    ├── BackboneError
    │   ├── UnknownBackboneError   (also a ValueError) name not found
    │   └── WeightsUnavailableError  weights not found locally and not downloadable
    ├── EngineError                an inference engine not installed or unable to run
    ├── ModelFileError             (also a ValueError) a damaged, too new or foreign file
    ├── CheckpointError            a training checkpoint that cannot be resumed from
    ├── TrainingError              training failed (out of memory, ...)
    └── DatasetUnavailableError    a dataset not found locally and not downloadable

The command line prints any of them as one line and exits with status 2; the server turns
them into a JSON 4xx.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "BackboneError",
    "CheckpointError",
    "DataError",
    "DatasetUnavailableError",
    "EngineError",
    "ImageReadError",
    "InvalidParameterError",
    "MissingExtraError",
    "ModelFileError",
    "TlearnError",
    "TrainingError",
    "UnknownBackboneError",
    "UnknownClassError",
    "WeightsUnavailableError",
    "import_extra",
    "require_extra",
]


class TlearnError(Exception):
    """Base class of every error tlearn raises on purpose."""


class InvalidParameterError(TlearnError, ValueError):
    """A parameter value outside its documented constraints (which object, which parameter,
    what is allowed, what was given)."""


class DataError(TlearnError, ValueError):
    """The input data cannot be used as given."""


class ImageReadError(DataError):
    """One image could not be read; ``path`` names it and ``reason`` says why; ``code`` is
    the kind of failure, for programs: ``"empty_image"``, ``"unsupported_format"``,
    ``"too_many_pixels"``, ``"corrupt_image"`` or ``"unreadable"`` (anything else)."""

    def __init__(self, path: str, reason: str, code: str = "unreadable") -> None:
        self.path = path
        self.reason = reason
        self.code = code
        super().__init__(f"cannot read image {path!r}: {reason}")

    def __reduce__(self) -> tuple[type, tuple[str, str, str]]:
        return (type(self), (self.path, self.reason, self.code))


class UnknownClassError(DataError):
    """Labels that the fitted model does not know."""


class BackboneError(TlearnError):
    """A backbone cannot be built."""


class UnknownBackboneError(BackboneError, ValueError):
    """No backbone of that name exists in tlearn, timm or torchvision."""


class WeightsUnavailableError(BackboneError):
    """Pretrained weights are not available locally and could not be downloaded."""


class EngineError(TlearnError):
    """An inference engine that is not installed or cannot run this backbone."""


class MissingExtraError(EngineError, ImportError):
    """A part of tlearn (an engine, the server, Ray, Parquet output) needs packages that
    are not installed; the message names the extra to install. An :class:`EngineError`,
    so that an engine whose runtime is missing is passed over like one that cannot run."""


def require_extra(extra: str, modules: dict[str, str], needed_by: str, hint: str = "") -> None:
    """Raise :class:`MissingExtraError` when any of ``modules`` (import name -> name said)
    is not installed: ``"{needed_by} needs {names}, which is not installed: pip install
    'tlearn[{extra}]'{hint}"``. Nothing is imported (a module set to ``None`` in
    ``sys.modules`` counts as missing)."""
    import importlib.util
    import sys

    def installed(module: str) -> bool:
        if module in sys.modules:
            return sys.modules[module] is not None
        try:
            return importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            return False

    missing = [said for module, said in modules.items() if not installed(module)]
    if missing:
        verb = "is" if len(missing) == 1 else "are"
        raise MissingExtraError(
            f"{needed_by} needs {', '.join(missing)}, which {verb} not installed: "
            f"pip install 'tlearn[{extra}]'{hint}"
        )


def import_extra(extra: str, module: str, said: str, needed_by: str, hint: str = "") -> Any:
    """``module`` imported, after :func:`require_extra` for its package. A package that is
    installed but cannot be imported (a shared library missing, built for another NumPy)
    raises :class:`MissingExtraError` too, with the reason: ``auto`` passes over such an
    engine, and the command line says it in one line, as for a missing one."""
    import importlib

    require_extra(extra, {module.partition(".")[0]: said}, needed_by, hint)
    try:
        return importlib.import_module(module)
    except Exception as e:  # noqa: BLE001 - any failure to import: the extra is unusable
        reason = " ".join(str(e).split())[:100] or type(e).__name__  # callers cut at 200
        raise MissingExtraError(
            f"{needed_by} needs {said}, which is installed but cannot be imported ({reason}): "
            f"reinstall it, pip install --force-reinstall 'tlearn[{extra}]'{hint}"
        ) from None


class ModelFileError(TlearnError, ValueError):
    """A model file is damaged, from a newer format version, or not a tlearn model."""


class CheckpointError(TlearnError):
    """A training checkpoint that cannot be resumed from."""


class TrainingError(TlearnError):
    """Training could not go on (for example, out of memory)."""


class DatasetUnavailableError(TlearnError):
    """A dataset is not available locally and could not be downloaded."""
