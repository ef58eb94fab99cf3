"""The ASGI app: routes, the guard middleware (auth, body limits, draining unread bodies,
request metrics) and the JSON error responses. ``create_app`` returns a FastAPI app, which
users can mount in their own."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException

from tlearn.exceptions import TlearnError
from tlearn.serve.batcher import DeadlineExceeded
from tlearn.serve.config import ServeConfig
from tlearn.serve.errors import ERROR_CODES, ServeError, error_body
from tlearn.serve.service import Service
from tlearn.serve.uploads import decode_upload, parse_body, parse_top_k

__all__ = ["create_app"]

log = logging.getLogger("tlearn.serve")

# the API page's script and style, served from the package (fastapi-offline's copies of
# Swagger UI): FastAPI's own page loads them from a CDN, and is blank offline. No /redoc:
# ReDoc fetches its logo from a CDN whatever it is given
_DOCS_STATIC = "/docs/static"
_OPEN_PATHS = frozenset({"/", "/livez", "/readyz", "/docs", "/openapi.json", "/favicon.ico"})
_ROUTES = frozenset(
    {"/", "/livez", "/readyz", "/docs", "/openapi.json", "/metrics", "/v1/predict", "/v1/model"}
)
_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_parameter",
}
Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def create_app(
    model: Any,
    config: ServeConfig | None = None,
    *,
    engine: str | None = None,
    device: str | None = None,
    **limits: Any,
) -> Any:
    """The server as an ASGI app (FastAPI).

    Parameters
    ----------
    model : Predictor, fitted estimator or str
        What to serve: a :class:`~tlearn.Predictor`, a fitted estimator, a model file, an
        export (``.onnx``/``.xml``) or ``imagenet:BACKBONE``. Anything but a ready
        predictor is loaded in the background when the app starts: ``/readyz`` answers 503
        until it is loaded and a warm-up batch has run.
    config : ServeConfig, optional
        Limits; or give them as keywords (``max_batch_size=8, api_key=...``).
    engine, device : str, optional
        Override the model's engine/device when loading it.

    Notes
    -----
    The app's lifespan loads the model and, at its end, stops the engine and decoding
    threads. Mounted in another app, it gets no lifespan events (Starlette does not pass
    them on): it then starts at its first request and stops when the event loop that
    served it ends. To load at start-up and stop with the parent's lifespan instead, enter
    the app's lifespan in the parent's (see the example).

    Examples
    --------
    Mounted in another FastAPI app, which enters its lifespan:

    >>> from contextlib import asynccontextmanager
    >>> from fastapi import FastAPI
    >>> from tlearn.serve import create_app
    >>> classifier = create_app("model.safetensors", max_batch_size=8)
    >>> @asynccontextmanager
    ... async def lifespan(app):
    ...     async with classifier.router.lifespan_context(classifier):
    ...         yield
    >>> outer = FastAPI(lifespan=lifespan)
    >>> outer.mount("/classifier", classifier)
    """
    from tlearn._io import torch_cache_in_tlearns

    torch_cache_in_tlearns()  # a server writes nothing to the temporary folder
    if config is None or limits:
        config = ServeConfig(**{**(_fields(config) if config else {}), **limits})
    options = {k: v for k, v in (("engine", engine), ("device", device)) if v is not None}
    service = Service(model, config, **options)

    @asynccontextmanager
    async def lifespan(app: Any) -> Any:
        service.start(background=True)
        yield
        await asyncio.get_running_loop().run_in_executor(None, service.close)
        log.info("stopped: %d predictions answered", service.answered())

    app = FastAPIOffline(
        title="tlearn image classifier",
        version=_version(),
        description=_api_description(),
        lifespan=lifespan,
        static_url=_DOCS_STATIC,
        redoc_url=None,
    )
    app.state.service = service
    app.add_middleware(Guard, service=service)
    _add_error_handlers(app, service)
    _add_routes(app, service)
    return app


def _fields(config: ServeConfig) -> dict[str, Any]:
    import dataclasses

    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tlearn")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0"


def _api_description() -> str:
    rows = "\n".join(
        f"| `{code}` | {status} | {what} |" for code, (status, what) in ERROR_CODES.items()
    )
    return (
        "Classify images with a tlearn model. Every error is "
        '`{"error": {"code", "message"}}`, with one of these codes:\n\n'
        "| code | status | when |\n|---|---|---|\n" + rows
    )


# -- middleware -----------------------------------------------------------------------
class Guard:
    """Pure ASGI middleware: API key, body limits, unread bodies, request metrics.

    A ``Content-Length`` over the limit is refused before the body is read; a chunked (or
    lying) body is counted as it arrives and refused when it passes the limit. Whatever
    the answer, a body the app has not read is read and dropped before it is sent (nginx's
    lingering close, bounded the same way: at most ``4 x max_body`` bytes, within the
    body's deadline): clients that send the whole body before reading (http.client,
    requests) read the answer instead of a connection reset, and the connection serves
    the next request. A body past those bounds is answered with ``Connection: close``.
    """

    def __init__(self, app: Any, service: Service) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.service.start(background=True):  # mounted in another app: no lifespan
            _close_with_the_loop(self.service)
        path = scope.get("path", "")
        route = _route(path)
        status = [0]
        start = time.perf_counter()
        body = _Body(scope, self.service.config, receive)

        async def send_status(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                if status[0] == 503:
                    self.service.metrics.refusal_seconds.observe(time.perf_counter() - start)
                if not await body.drain():
                    message = {**message, "headers": [*message.get("headers", []), _CLOSE]}
            await send(message)

        try:
            refusal = self._refusal(scope, path)
            if refusal is not None:
                self.service.metrics.reject(refusal.code)
                await _send_error(send_status, refusal)
                return
            await self.app(scope, body.receive, send_status)
        finally:
            self.service.metrics.requests.labels(route=route, status=str(status[0])).inc()

    def _refusal(self, scope: Scope, path: str) -> ServeError | None:
        config = self.service.config
        headers = dict(scope.get("headers") or [])
        needs_key = config.api_key is not None and not _is_open(path)
        if needs_key and not _key_matches(headers, config.api_key or ""):
            return ServeError(
                "unauthorized",
                "this server needs an API key: send 'Authorization: Bearer KEY' or "
                "'X-API-Key: KEY'",
                {"WWW-Authenticate": "Bearer"},
            )
        length = headers.get(b"content-length")
        if length is not None:
            try:
                n = int(length)
            except ValueError:
                return ServeError("bad_request", "Content-Length is not a number")
            if n > config.max_body_bytes:
                return _too_large(config, n)
        return None


def _route(path: str) -> str:
    """The ``route`` label of the request metrics: a known path, or one label for each
    open-ended family (the API page's files, anything else)."""
    if path in _ROUTES:
        return path
    return _DOCS_STATIC if path.startswith(_DOCS_STATIC + "/") else "other"


def _is_open(path: str) -> bool:
    """Served without the API key: the web page and the API page, with its files (a
    browser cannot send the key for them), and the probes."""
    return path in _OPEN_PATHS or path.startswith("/docs/")


_CLOSE = (b"connection", b"close")
_DRAIN_BODIES = 4  # a refused body is read and dropped up to this many times max_body


class _Body:
    """One request's body as the app reads it: counted against ``max_body``, and read to
    its end (within bounds) before the answer is sent."""

    def __init__(self, scope: Scope, config: ServeConfig, receive: Receive) -> None:
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length", b"").strip()
        self.length = int(length) if length.isdigit() else None
        chunked = b"chunked" in headers.get(b"transfer-encoding", b"").lower()
        self.done = not chunked and not self.length  # nothing to read
        self.config = config
        self.seen = 0
        self.asked = False  # the app asked for the body (uvicorn sent "100 Continue")
        self.waits_for_continue = headers.get(b"expect", b"").lower() == b"100-continue"
        self.deadline = time.monotonic() + config.body_timeout
        self._receive = receive

    async def receive(self) -> dict[str, Any]:
        self.asked = True
        message = await self._receive()
        self._count(message)
        if self.seen > self.config.max_body_bytes:
            raise _too_large(self.config, None)
        return message

    def _count(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.request":
            self.seen += len(message.get("body", b""))
            self.done = not message.get("more_body", False)
        else:  # http.disconnect: nothing more will come
            self.done = True

    async def drain(self) -> bool:
        """Read and drop the rest of the body, within bounds; True when none is left."""
        cap = _DRAIN_BODIES * self.config.max_body_bytes
        if self.done or (self.waits_for_continue and not self.asked):
            return self.done  # a client waiting for "100 Continue" has sent nothing yet
        if (self.length or 0) > cap or time.monotonic() >= self.deadline:
            return False
        loop = asyncio.get_running_loop()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(loop.time() + self.deadline - time.monotonic()):
                while not self.done and self.seen <= cap:
                    self._count(await self._receive())
        return self.done


def _close_with_the_loop(service: Service) -> None:
    """Close a service started by a request (no lifespan) when the event loop serving it
    ends: ``asyncio.run`` (uvicorn, TestClient) cancels every task left at its end."""

    async def until_cancelled() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            service.close()  # the loop is ending: blocking it no longer delays anyone

    service.close_with_loop = asyncio.get_running_loop().create_task(until_cancelled())


def _key_matches(headers: dict[bytes, bytes], key: str) -> bool:
    expected = key.encode()
    given = headers.get(b"x-api-key", b"")
    auth = headers.get(b"authorization", b"")
    if auth[:7].lower() == b"bearer ":
        given = auth[7:].strip()
    return hmac.compare_digest(given, expected)


def _too_large(config: ServeConfig, n: int | None) -> ServeError:
    size = f"{n:,} bytes" if n is not None else "the body"
    return ServeError(
        "payload_too_large",
        f"{size} is over this server's limit of {config.max_body_mb:g} MB "
        f"({config.max_body_bytes:,} bytes); send a smaller image",
    )


async def _send_error(send: Send, error: ServeError) -> None:
    import json

    body = json.dumps(error.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in error.headers.items()]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# -- errors ---------------------------------------------------------------------------
def _add_error_handlers(app: Any, service: Service) -> None:
    def respond(error: ServeError) -> Any:
        service.metrics.reject(error.code)
        return JSONResponse(error.body(), error.status, headers=error.headers or None)

    async def on_serve_error(request: Any, exc: Exception) -> Any:
        assert isinstance(exc, ServeError)
        return respond(exc)

    async def on_http(request: Any, exc: Exception) -> Any:
        assert isinstance(exc, HTTPException)
        code = _HTTP_CODES.get(exc.status_code, "bad_request")
        message = str(exc.detail) if exc.detail else code.replace("_", " ")
        if code == "not_found":
            message = f"no route {request.url.path!r}; see /docs"
        elif code == "method_not_allowed":
            message = f"{request.method} is not allowed on {request.url.path}"
        return respond(ServeError(code, message, dict(exc.headers or {})))

    async def on_validation(request: Any, exc: Exception) -> Any:
        return respond(ServeError("invalid_parameter", str(exc)[:300]))

    async def on_bug(request: Any, exc: Exception) -> Any:
        return JSONResponse(error_body("internal", f"{type(exc).__name__}: {exc}"), 500)

    app.add_exception_handler(ServeError, on_serve_error)
    app.add_exception_handler(HTTPException, on_http)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(Exception, on_bug)


# -- routes ---------------------------------------------------------------------------
def _add_routes(app: Any, service: Service) -> None:
    _add_probes(app, service)
    _add_model_routes(app, service)


def _add_probes(app: Any, service: Service) -> None:
    @app.get("/livez", tags=["probes"])
    async def livez() -> dict[str, str]:
        """The process is alive (no model needed)."""
        return {"status": "alive"}

    @app.get("/readyz", tags=["probes"])
    async def readyz() -> Any:
        """200 once the model is loaded and warmed up; 503 before, and while draining."""
        try:
            _check_open(service)
        except ServeError as e:
            return JSONResponse(e.body(), e.status, headers=e.headers or None)
        return {"status": "ready"}

    @app.get("/metrics", tags=["probes"])
    async def metrics() -> Response:
        """Prometheus text: requests by status, queue/decode/inference time histograms,
        batch sizes, queue depth, rejections by reason."""
        body, content_type = service.metrics.render()
        return Response(body, media_type=content_type)

    del livez, readyz, metrics  # registered on the app


def _add_model_routes(app: Any, service: Service) -> None:
    from tlearn.serve.page import page_html

    @app.get("/v1/model", tags=["model"])
    async def model() -> dict[str, Any]:
        """Classes, backbone, preprocessing, engine and the server's limits."""
        _check_loaded(service)
        limits = service.config.public()
        limits["max_queue"] = service.queue_cap
        return {
            **service.predictor.describe(),
            "source": service.model_info["source"],
            "limits": limits,
        }

    @app.post("/v1/predict", tags=["model"], openapi_extra=_PREDICT_BODY)
    async def predict(
        request: Request,
        top_k: str | None = Query(None, description="predictions per image (1-1000)"),
    ) -> Any:
        """Classify one image, or several (``file`` parts, or a list of ``inputs``): one
        result or one error per image, in order."""
        return await _predict(service, request, top_k)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> Any:
        return HTMLResponse(page_html(service.config), headers=_PAGE_HEADERS)

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> Any:
        return Response(status_code=204)

    del model, predict, page, favicon  # registered on the app


_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; img-src data: blob:; style-src "
    "'unsafe-inline'; script-src 'unsafe-inline'; connect-src 'self'; base-uri 'none'; "
    "form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}

_PREDICT_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {"type": "array", "items": {"type": "string", "format": "binary"}},
                        "top_k": {"type": "integer"},
                    },
                    "required": ["file"],
                }
            },
            "image/*": {"schema": {"type": "string", "format": "binary"}},
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "inputs": {"type": "string", "format": "byte"},
                        "parameters": {
                            "type": "object",
                            "properties": {"top_k": {"type": "integer"}},
                        },
                    },
                    "required": ["inputs"],
                }
            },
        },
    }
}


def _check_open(service: Service) -> None:
    if service.draining:
        raise ServeError(
            "shutting_down",
            "the server is shutting down; retry on another replica",
            {"Retry-After": "1"},
        )
    _check_loaded(service)


def _check_loaded(service: Service) -> None:
    if service.failed:
        raise ServeError("not_ready", f"the model failed to load: {service.failed}")
    if not service.ready:
        raise ServeError(
            "not_ready", "the model is loading or warming up; retry shortly", {"Retry-After": "1"}
        )


class _Held:
    """What one prediction holds: bytes of the upload buffer while its body is in memory,
    then places in the queue until it is answered; all given back on exit."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.body_bytes = 0
        self.images = 0

    def __enter__(self) -> _Held:
        self.service.enter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.drop_body()
        self.service.release(self.images)
        self.service.leave()

    def add_body(self, n: int) -> None:
        if not self.service.hold_body(n):
            mb = self.service.config.upload_buffer_bytes / 1024 / 1024
            raise ServeError(
                "overloaded",
                f"the bodies being uploaded fill this server's upload buffer of {mb:g} MB; "
                "retry after the Retry-After seconds",
                {"Retry-After": "1"},
            )
        self.body_bytes += n

    def drop_body(self) -> None:
        self.service.drop_body(self.body_bytes)
        self.body_bytes = 0

    def admit(self, n: int) -> None:
        if n and not self.service.admit(n, held=self.images):
            raise _overloaded(self.service)
        self.images += n


async def _read_body(request: Any, held: _Held, deadline: float) -> list[bytes]:
    """The whole body, as the chunks that came, counted against the upload buffer as they
    arrive; 408 past ``deadline``."""
    chunks: list[bytes] = []
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout_at(loop.time() + (deadline - time.monotonic())):
            while True:
                message = await request.receive()
                if message["type"] == "http.disconnect":
                    raise ServeError("bad_request", "the client disconnected")
                chunk = message.get("body", b"")
                held.add_body(len(chunk))
                chunks.append(chunk)
                if not message.get("more_body", False):
                    return chunks
    except BaseException as e:
        # the error's traceback keeps this frame, and so the body, alive while the rest of
        # the body is drained: free it now, as the upload buffer is told
        chunks.clear()
        if isinstance(e, TimeoutError):
            seconds = held.service.config.body_timeout
            raise ServeError(
                "request_timeout",
                f"the body did not arrive within {seconds:g} s; send it faster, or send less",
            ) from None
        raise


async def _predict(service: Service, request: Any, top_k_query: str | None) -> Any:
    start = time.monotonic()
    deadline = start + service.config.timeout_s
    _check_open(service)
    with _Held(service) as held:
        # the body first: an upload, however slow, holds no place in the queue
        chunks = await _read_body(request, held, start + service.config.body_timeout)
        top_k, many, decoded = await _decoded(service, request, held, chunks, top_k_query)
        held.drop_body()  # what is left of it are the images' pixels
        results, timing = await _run_images(service, decoded, deadline)
    timing["total"] = (time.monotonic() - start) * 1000
    service.metrics.request_seconds.observe(timing["total"] / 1000)
    rows = [r if isinstance(r, ServeError) else _predictions(service, r, top_k) for r in results]
    payload: dict[str, Any] = {"model": service.model_info, "timing_ms": _round(timing)}
    if not many:
        if isinstance(rows[0], ServeError):
            raise rows[0]
        return JSONResponse({**rows[0], **payload})
    for r in rows:
        if isinstance(r, ServeError):
            service.metrics.reject(r.code)
    out = [r.body() if isinstance(r, ServeError) else r for r in rows]
    return JSONResponse({"results": out, **payload})


async def _decoded(
    service: Service, request: Any, held: _Held, chunks: list[bytes], top_k_query: str | None
) -> tuple[int, bool, list[Any]]:
    """Admit the request, parse its body and decode its images in the thread pool:
    ``(top_k, many, [(pixels or ServeError, seconds)])``. The body (``chunks``, emptied)
    and the parsed upload end here: nothing of the body's bytes outlives the decoding."""
    try:
        return await _parse_and_decode(service, request, held, chunks, top_k_query)
    except ServeError as e:
        raise _detached(e) from None
    finally:
        chunks.clear()


async def _parse_and_decode(
    service: Service, request: Any, held: _Held, chunks: list[bytes], top_k_query: str | None
) -> tuple[int, bool, list[Any]]:
    held.admit(1)
    loop = asyncio.get_running_loop()
    content_type = request.headers.get("content-type", "")
    upload, decoded = await loop.run_in_executor(
        service.decode_pool, _parse, service, content_type, chunks
    )
    top_k = parse_top_k(
        top_k_query or upload.params.get("top_k"),
        service.config.top_k,
        service.model_info["n_classes"],
    )
    held.admit(len(upload.images) - 1)
    if decoded is None:
        decoded = await asyncio.gather(
            *(loop.run_in_executor(service.decode_pool, _decode, service, n, d)
              for n, d in upload.images)
        )  # fmt: skip
    return top_k, upload.many, decoded


def _detached(error: ServeError) -> ServeError:
    """``error`` without its traceback and context: their frames hold the body's bytes,
    which must be freed when the upload buffer is told, not when the answer is sent."""
    error.__context__ = None
    return error.with_traceback(None)


def _overloaded(service: Service) -> ServeError:
    return ServeError(
        "overloaded",
        f"the server is at its limit of {service.queue_cap} images "
        "in flight; retry after the Retry-After seconds",
        {"Retry-After": "1"},
    )


def _parse(
    service: Service, content_type: str, chunks: list[bytes]
) -> tuple[Any, list[Any] | None]:
    """Join the body's chunks and parse it; a lone image is decoded in the same thread hop
    (the common case). Joined here, not on the event loop: a decoding thread handles one
    body at a time, so its large blocks are reused whole, where the loop's heap, shared by
    every connection's chunks, fragments (24 clients sending 10 MB bodies: peak RSS +391
    MB with the bodies grown on the loop, +280 MB joined here; +127 MB once refused
    bodies were also freed at once, see ``_detached``)."""
    body = b"".join(chunks)
    chunks.clear()
    upload = parse_body(content_type, body, service.config.max_files)
    if len(upload.images) == 1:
        return upload, [_decode(service, *upload.images[0])]
    return upload, None


def _decode(service: Service, name: str, data: bytes | bytearray) -> tuple[Any, float]:
    """(pixels or the image's ServeError, seconds spent)."""
    config = service.config
    t0 = time.perf_counter()
    try:
        pixels: Any = decode_upload(
            data, name, service.predictor.preprocessing, config.formats, config.max_pixels
        )
    except ServeError as e:
        pixels = _detached(e)
    spent = time.perf_counter() - t0
    service.metrics.decode_seconds.observe(spent)
    return pixels, spent


async def _run_images(
    service: Service, decoded: list[Any], deadline: float
) -> tuple[list[Any], dict[str, float]]:
    """Queue the decoded images for the engine; an image refused by its checks keeps its
    error."""
    timing = {"decode": max(s for _, s in decoded) * 1000, "queue": 0.0, "inference": 0.0}
    results: list[Any] = [p for p, _ in decoded]
    pending = {
        i: service.batcher.submit(p, deadline)  # type: ignore[union-attr]
        for i, p in enumerate(results)
        if not isinstance(p, ServeError)
    }
    for i, future in pending.items():
        try:
            remaining = max(deadline - time.monotonic(), 0.001)
            result = await asyncio.wait_for(asyncio.wrap_future(future), remaining)
        except (TimeoutError, DeadlineExceeded):
            results[i] = ServeError(
                "timeout",
                f"no answer within {service.config.timeout_s:g} s; the server is busy, retry later",
            )
            continue
        except TlearnError as e:  # the engine failed on checked pixels: a bug
            raise RuntimeError(str(e)) from e
        results[i] = result.proba
        timing["queue"] = max(timing["queue"], result.queue_s * 1000)
        timing["inference"] = max(timing["inference"], result.inference_s * 1000)
    return results, timing


def _predictions(service: Service, proba: Any, top_k: int) -> dict[str, Any]:
    """One image's answer from its row (:mod:`tlearn.rows`): ``predictions``, the
    ``top_k`` labels with their scores, best first; a multi-label model's
    ``above_threshold`` too, every label that applies, with its score."""
    predictor = service.predictor
    several = predictor.parts.thresholds is not None  # scores of every label that applies
    row = predictor.prediction_rows(proba[None], len(predictor.classes) if several else top_k)[0]
    scores = dict(zip(row["top_labels"], row["top_probabilities"], strict=True))
    answer: dict[str, Any] = {
        "predictions": [
            {"label": label, "score": scores[label]} for label in row["top_labels"][:top_k]
        ]  # fmt: skip
    }
    if "above_threshold" in row:
        answer["above_threshold"] = [
            {"label": label, "score": scores[label]} for label in row["above_threshold"]
        ]
    return answer


def _round(timing: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 2) for k, v in timing.items()}
