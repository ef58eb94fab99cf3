"""Messages go through the ``tlearn`` logger, never bare prints.

The library only logs. When an estimator is asked to be verbose and nobody has configured
logging, :func:`ensure_handler` attaches one plain handler on stderr (once), so
``FineTuneClassifier(verbose=1)`` shows its epochs in a script or notebook as users expect.
The command line installs rich's handler on a terminal (:func:`configure_cli`) and turns
warnings into single lines (:func:`cli_warnings`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from typing import Any

__all__ = ["cli_warnings", "configure_cli", "ensure_handler", "logger"]

logger = logging.getLogger("tlearn")
_PLAIN = "_tlearn_plain_handler"


def ensure_handler() -> None:
    """Make INFO messages visible when the application has not configured logging."""
    if logger.handlers or logging.getLogger().handlers:
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.INFO)
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    setattr(handler, _PLAIN, True)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def configure_cli() -> None:
    """The command line's logging: rich on a terminal, plain lines otherwise (stderr)."""
    for h in list(logger.handlers):
        logger.removeHandler(h)
    if sys.stderr.isatty():
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(
            show_time=False, show_path=False, show_level=False, markup=False
        )
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _matters(category: type[Warning], filename: str) -> bool:
    """A warning tlearn gives on purpose (an image skipped, a file that is not an image, an
    engine that fell back): a plain ``UserWarning`` (or tlearn's own kind) raised from
    tlearn's code. Other libraries' warnings (scikit-learn's ConvergenceWarning, PIL's,
    PyTorch's, deprecations) speak of code the user did not write: noise on a command line.
    """
    ours = category is UserWarning or category.__module__.startswith("tlearn")
    return ours and os.path.abspath(filename).startswith(_PACKAGE)


@contextlib.contextmanager
def cli_warnings() -> Iterator[None]:
    """Within: a warning that matters prints one ``warning: ...`` line on stderr (each text
    once), without the source line Python adds; the others are silenced."""
    shown: set[str] = set()

    def show(message: Any, category: type[Warning], filename: str, lineno: int,
             file: Any = None, line: str | None = None) -> None:  # fmt: skip
        text = " ".join(str(message).split())
        if _matters(category, filename) and text not in shown:
            shown.add(text)
            sys.stderr.write(f"warning: {text}\n")

    with warnings.catch_warnings():
        warnings.simplefilter("always")  # `show` decides, and shows each text once
        warnings.showwarning = show
        yield
