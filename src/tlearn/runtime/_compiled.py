"""What the compiled engines (ONNX Runtime, OpenVINO) share: where converted models are
cached on disk, and loading them with a rebuild when a cached file is stale or corrupt."""

from __future__ import annotations

import hashlib
import os
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from tlearn.exceptions import EngineError, import_extra

__all__ = [
    "CONVERSION_LOCK",
    "cache_path",
    "cached",
    "engine_cache_dir",
    "engine_threads",
    "require_runtime",
]

T = TypeVar("T")

#: Held while a torch module is traced into another runtime's graph: the ONNX exporter
#: and the TorchScript tracer OpenVINO uses keep process-wide state, so two threads
#: converting at once failed ("GLOBALS.in_onnx_export must be True", "Graphs differed
#: across invocations"), even for different networks.
CONVERSION_LOCK = threading.RLock()


def engine_threads() -> int | None:
    """The threads a compiled engine may use: ``$TLEARN_NUM_THREADS`` (set by a worker
    that was given that many cores, such as a Ray actor), else ``None`` (all of them)."""
    n = int(os.environ.get("TLEARN_NUM_THREADS", "0") or 0)
    return n if n > 0 else None


def engine_cache_dir() -> Path:
    """Where compiled models are cached: ``$TLEARN_HOME/engines`` or
    ``~/.cache/tlearn/engines``."""
    home = os.environ.get("TLEARN_HOME")
    return (Path(home) if home else Path.home() / ".cache" / "tlearn") / "engines"


def cache_path(key: dict[str, Any], suffix: str) -> Path:
    """The cache file for a model configuration (architecture, weights hash, input...)."""
    digest = hashlib.sha256(repr(sorted(key.items())).encode()).hexdigest()[:16]
    return engine_cache_dir() / f"{key['architecture'].replace(':', '-')}-{digest}{suffix}"


def cached(paths: list[Path], build: Callable[[], None], load: Callable[[], T], what: str) -> T:
    """Load a compiled model from its cache files, building them first when missing; a
    stale or corrupt cache is detected (loading fails), deleted and rebuilt once."""
    for attempt in (1, 2):
        if not all(p.is_file() for p in paths):
            build()
        try:
            return load()
        except EngineError:
            raise
        except Exception as e:
            for p in paths:
                p.unlink(missing_ok=True)
            if attempt == 2:
                raise EngineError(f"cannot run the {what} ({str(e)[:200]})") from None
            warnings.warn(
                f"the cached {what} ({paths[0]}) was unreadable and is rebuilt",
                UserWarning,
                stacklevel=3,
            )
    raise AssertionError("unreachable")


def require_runtime(engine: str, extra: str, module: str, said: str) -> Any:
    """``engine``'s runtime module, imported by :func:`tlearn.exceptions.import_extra`
    (:class:`~tlearn.exceptions.MissingExtraError`, an ``EngineError``, when it is not
    installed or cannot be imported)."""
    return import_extra(extra, module, said, f"engine={engine!r}")
