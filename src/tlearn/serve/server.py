"""Run the app with uvicorn; on SIGTERM (or Ctrl+C) drain, then exit 0.

Draining: ``/readyz`` turns 503 at once (load balancers stop sending), new predictions get
503 ``shutting_down`` (admission stops), predictions in flight (a body still arriving
included) finish and are answered; then uvicorn closes the sockets and the process exits
with status 0. A second signal, or ``drain_s`` seconds, cuts the wait short.
"""

from __future__ import annotations

import logging
from types import FrameType
from typing import Any

from tlearn.serve.config import ServeConfig

__all__ = ["run"]

log = logging.getLogger("tlearn.serve")


def run(
    model: Any,
    config: ServeConfig | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    engine: str | None = None,
    device: str | None = None,
    log_level: str = "info",
) -> int:
    """Serve ``model`` (see :func:`create_app`) until SIGTERM/SIGINT; return the exit
    status (0 after a clean drain, 1 when the model could not be loaded)."""
    import uvicorn

    from tlearn.serve.app import create_app

    config = config or ServeConfig()
    if host not in ("127.0.0.1", "localhost", "::1") and config.api_key is None:
        log.warning(
            "serving on %s without an API key: anyone who can reach this address can use "
            "the model; set one with --api-key-env NAME",
            host,
        )
    app = create_app(model, config, engine=engine, device=device)
    uv_config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        timeout_graceful_shutdown=max(1, int(config.drain_s)),
        timeout_keep_alive=5,
        server_header=False,
        http=_json_protocol(),
    )
    server = _draining_server(uv_config, app.state.service)
    server.run()
    return server.exit_code


def _draining_server(config: Any, service: Any) -> Any:
    """A ``uvicorn.Server`` whose first SIGTERM/SIGINT starts a drain instead of a stop."""
    import uvicorn

    class DrainingServer(uvicorn.Server):
        exit_code = 0

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            # Not uvicorn's own: it would re-raise the signal at exit (status -15, not 0).
            if service.draining:
                self.should_exit = True  # a second signal: stop waiting
            else:
                service.start_draining()

        async def on_tick(self, counter: int) -> bool:
            if service.failed:
                self.exit_code = 1
                return True
            if service.drained():
                return True
            return bool(await super().on_tick(counter))

    return DrainingServer(config)


def _json_protocol() -> type:
    """uvicorn's h11 protocol, answering malformed HTTP with the server's JSON 400 instead
    of plain text. h11, not httptools, even where httptools is installed: h11 refuses
    headers over 16 KB (httptools buffers a header of any size: 100 MB were taken in a
    test) and requests without an HTTP version."""
    import json

    from uvicorn.protocols.http.h11_impl import H11Protocol

    from tlearn.serve.errors import error_body

    class JsonErrorProtocol(H11Protocol):
        def send_400_response(self, msg: str) -> None:
            body = json.dumps(error_body("bad_request", f"malformed HTTP request ({msg})"))
            head = (
                "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n"
                f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
            )
            self.transport.write((head + body).encode())
            self.transport.close()

    return JsonErrorProtocol
