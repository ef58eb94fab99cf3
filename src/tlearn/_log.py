"""Messages go through the ``tlearn`` logger, never bare prints.

The library only logs. When an estimator is asked to be verbose and nobody has configured
logging, :func:`ensure_handler` attaches one plain handler on stderr (once), so
``FineTuneClassifier(verbose=1)`` shows its epochs in a script or notebook as users expect.
The command line installs rich's handler on a terminal (:func:`configure_cli`).
"""

from __future__ import annotations

import logging
import sys

__all__ = ["configure_cli", "ensure_handler", "logger"]

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
