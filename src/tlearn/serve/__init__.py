"""``tlearn serve``: an HTTP API and a web page for a tlearn model (extra ``tlearn[serve]``).

- :func:`create_app` returns the ASGI app (FastAPI), to run with any ASGI server or mount in
  your own app;
- :func:`run` serves it with uvicorn, draining on SIGTERM;
- :class:`ServeConfig` holds the limits; :data:`ERROR_CODES` lists every error answer.

The flow of one request: the guard middleware checks the API key and the body size; the
body is read in memory under its own deadline, its bytes counted against the upload buffer
as they arrive, before the request takes a place in the queue (a slow upload holds none);
each image is checked (format allow-list, pixel count from the header) and decoded in a
small thread pool; only then may it join the batcher's queue, from which one engine thread
takes whatever is waiting. A refused request's unread body is read and dropped (bounded)
before the answer, so the client reads it. ``config``'s docstring states the resource
budget all this adds up to.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tlearn.serve.config import DEFAULT_FORMATS, ServeConfig
from tlearn.serve.errors import ERROR_CODES, ServeError

if TYPE_CHECKING:
    from tlearn.serve.app import create_app
    from tlearn.serve.server import run

__all__ = ["DEFAULT_FORMATS", "ERROR_CODES", "ServeConfig", "ServeError", "create_app", "run"]


def __getattr__(name: str) -> Any:
    if name in ("create_app", "run"):
        _require_extra()
        if name == "create_app":
            from tlearn.serve.app import create_app

            return create_app
        from tlearn.serve.server import run

        return run
    raise AttributeError(f"module 'tlearn.serve' has no attribute {name!r}")


def _require_extra() -> None:
    from tlearn.exceptions import require_extra

    modules = ("fastapi", "fastapi_offline", "uvicorn", "python_multipart", "prometheus_client")
    require_extra("serve", {m: m for m in modules}, "the server")
