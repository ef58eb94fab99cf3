"""The server's limits, in one frozen object: every one has a default a careful operator
would choose on a small machine.

The resource budget they add up to
----------------------------------
Memory, at most (RSS; ``idle`` is the server after its warm-up)::

    idle
    + upload_buffer                             bodies arriving or waiting to be decoded
    + decode_workers x (2 x max_body            a body joined and parsed (a JSON body's
                        + 12 x max_pixels)        text and its image), and decoded
    + 64 KB per open connection                 uvicorn's read buffer
    + 50 MB                                     allocator slack, metrics, logs

- ``upload_buffer`` (default 8 bodies of ``max_body``) bounds every request body held in
  memory at once, whatever the number of connections: a body's bytes count as they
  arrive, so an idle or slow connection holds only what it has sent, and a refused body
  is freed before the rest of it is drained;
- a decoding thread holds one body's parsed copy (a JSON body's base64 text and the image
  it decodes to) and one image decoded whole: at most 4 bytes a pixel as decoded (RGBA,
  CMYK), 4 more turned upright by its EXIF orientation, 3 as RGB (JPEGs are decoded at a
  reduced scale and cost far less);
- images admitted and waiting for the engine are preprocessed pixels
  (``input_size**2 x 3`` bytes each, 150 KB at 224 px): ``queue_cap`` of them are noise.

Measured (``tests/test_serve_limits.py``, 10 MB bodies, 2 decoding threads, 1 MP): 24
clients flooding full, oversize, chunked and stalled uploads raise the peak RSS by 98 to
127 MB, against the budget's 196 MB. glibc keeps freed heap for reuse, so the idle RSS
after a flood stays up to 90 MB higher, and the next flood grows it less.

Threads: one event loop (every connection, upload and drain is a coroutine on it; no
thread per connection or request), one engine thread, ``decode_workers`` decoding
threads, one loading thread while the model loads, and the engine's own compute threads
(torch, ONNX Runtime or OpenVINO: one per core by default).

Time: a body must arrive within ``body_timeout_s`` (and ``timeout_s``); a refused body is
read and dropped for at most that long and at most ``4 x max_body`` bytes, so the client
reads its answer; an answer comes within ``timeout_s`` of the first byte.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from numbers import Integral, Real
from typing import Any, ClassVar

from tlearn._validation import Interval, Predicate, validate_params
from tlearn.exceptions import InvalidParameterError

__all__ = ["DEFAULT_FORMATS", "ServeConfig"]

#: PIL format names the server decodes (MPO: the JPEG variant many cameras and phones write).
#: Nothing else is even tried: no TIFF, EPS, PSD, SVG, ICO...
DEFAULT_FORMATS = ("JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP")
_KNOWN_FORMATS = (*DEFAULT_FORMATS, "TIFF", "PPM", "ICO")


@dataclass(frozen=True)
class ServeConfig:
    """Limits and options of the HTTP server.

    Parameters
    ----------
    max_batch_size : int, default=8
        Most images in one engine call. The batcher never waits to fill a batch: it takes
        whatever is queued, up to this, whenever the engine is free.
    max_queue : int or None, default=None
        Most images admitted and not yet answered (decoding, queued or in the engine);
        more get 503 with ``Retry-After`` at once. ``None``: what the server answers in
        ``queue_ms`` milliseconds, measured every half second while it is saturated (so
        the wait of an admitted request stays near ``queue_ms`` whatever the images cost
        to decode), starting from, and never below, what keeps every decoding thread and
        the engine busy (``decode_workers + 1``). A request with more images than the cap
        is taken only when nothing else is in flight.
    queue_ms : float, default=100
        The queueing budget ``max_queue=None`` is sized from.
    max_body_mb : float, default=20
        Largest request body; a bigger ``Content-Length`` is refused before the body is
        read, a chunked body is cut off when it passes the limit (413).
    max_pixels : int, default=40_000_000
        Largest image (width x height), read from its header before decoding (413).
    max_files : int, default=16
        Most images in one request.
    timeout_s : float, default=10
        Each request's deadline, from its first byte: 504 when the answer has not come by
        then; work past its deadline is dropped before inference.
    body_timeout_s : float, default=5
        The body's own deadline, from the request's first byte (never past ``timeout_s``):
        408 when it has not arrived. A body is read before the request competes for the
        engine, so a slow or idle upload holds no place in the queue.
    upload_buffer_mb : float or None, default=None
        Most megabytes of request bodies held in memory at once, over all requests
        (arriving, or waiting to be decoded); a body whose bytes would pass it is refused
        with 503 ``overloaded``. Bytes count as they arrive: idle connections hold
        nothing. ``None``: 8 bodies of ``max_body_mb``. At least ``max_body_mb``.
    top_k : int, default=5
        Predictions per image when the request does not say.
    api_key : str or None, default=None
        When set, ``/v1/*`` and ``/metrics`` need ``Authorization: Bearer KEY`` or
        ``X-API-Key: KEY`` (compared in constant time); the probes, the page and the docs
        do not.
    decode_workers : int or None, default=None
        Threads that decode and check uploads before they may join a batch (default: the
        number of CPUs, at most 4).
    formats : tuple of str, default=DEFAULT_FORMATS
        Image formats accepted (PIL names).
    drain_s : float, default=30
        On SIGTERM, the longest wait for in-flight requests before exiting.
    """

    max_batch_size: int = 8
    max_queue: int | None = None
    queue_ms: float = 100.0
    max_body_mb: float = 20.0
    max_pixels: int = 40_000_000
    max_files: int = 16
    timeout_s: float = 10.0
    body_timeout_s: float = 5.0
    upload_buffer_mb: float | None = None
    top_k: int = 5
    api_key: str | None = field(default=None, repr=False)
    decode_workers: int | None = None
    formats: tuple[str, ...] = DEFAULT_FORMATS
    drain_s: float = 30.0

    _constraints: ClassVar[dict[str, list[Any]]] = {
        "max_batch_size": [Interval(Integral, 1, 1024)],
        "max_queue": [Interval(Integral, 1, 1_000_000), None],
        "queue_ms": [Interval(Real, 1, None)],
        "max_body_mb": [Interval(Real, 0.001, 4096, closed="both")],
        "max_pixels": [Interval(Integral, 1, None)],
        "max_files": [Interval(Integral, 1, 1024)],
        "timeout_s": [Interval(Real, 0, None, closed="neither")],
        "body_timeout_s": [Interval(Real, 0, None, closed="neither")],
        "upload_buffer_mb": [Interval(Real, 0.001, None), None],
        "top_k": [Interval(Integral, 1, None)],
        "api_key": [
            Predicate(
                lambda v: isinstance(v, str) and len(v) >= 8, "a string of 8 or more characters"
            ),
            None,
        ],
        "decode_workers": [Interval(Integral, 1, 64), None],
        "formats": [
            Predicate(
                lambda v: bool(v) and all(f in _KNOWN_FORMATS for f in v),
                f"a non-empty tuple of {', '.join(_KNOWN_FORMATS)}",
            )
        ],
        "drain_s": [Interval(Real, 0, None)],
    }

    def __post_init__(self) -> None:
        values = {k: getattr(self, k) for k in self._constraints}
        for key in ("queue_ms", "max_body_mb", "timeout_s", "body_timeout_s", "drain_s"):
            if isinstance(values[key], int) and not isinstance(values[key], bool):
                values[key] = float(values[key])
                object.__setattr__(self, key, values[key])
        if isinstance(self.formats, list):
            object.__setattr__(self, "formats", tuple(self.formats))
            values["formats"] = self.formats
        validate_params("ServeConfig", values, self._constraints)
        if self.upload_buffer_mb is not None and self.upload_buffer_mb < self.max_body_mb:
            raise InvalidParameterError(
                "The 'upload_buffer_mb' parameter of ServeConfig must be at least max_body_mb "
                f"({self.max_body_mb:g}), or the largest body allowed could never be read; "
                f"got {self.upload_buffer_mb:g}"
            )

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)

    @property
    def upload_buffer_bytes(self) -> int:
        mb = self.upload_buffer_mb if self.upload_buffer_mb is not None else 8 * self.max_body_mb
        return int(mb * 1024 * 1024)

    @property
    def body_timeout(self) -> float:
        """Seconds a body may take, from the request's first byte."""
        return min(self.body_timeout_s, self.timeout_s)

    def memory_budget_bytes(self, idle: int, connections: int = 0) -> int:
        """The most memory the server may hold (see the module's docstring): ``idle``
        plus what bodies, parsing and decoding add, with ``connections`` open."""
        per_decoder = 2 * self.max_body_bytes + 12 * self.max_pixels
        return int(
            idle
            + self.upload_buffer_bytes
            + self.n_decode_workers * per_decoder
            + 64 * 1024 * connections
            + 50 * 1024 * 1024
        )

    @property
    def n_decode_workers(self) -> int:
        return self.decode_workers or max(1, min(4, os.cpu_count() or 1))

    def queue_cap(self, images_per_second: float = 0.0) -> int:
        """``max_queue``, or (when ``None``) the images answered in ``queue_ms`` at
        ``images_per_second``, never fewer than keep the pipeline full."""
        if self.max_queue is not None:
            return self.max_queue
        return max(self.n_decode_workers + 1, round(images_per_second * self.queue_ms / 1000))

    def public(self) -> dict[str, Any]:
        """The limits as clients may see them (never the key)."""
        out = asdict(self)
        out.pop("api_key")
        out["formats"] = list(self.formats)
        out["auth"] = self.api_key is not None
        return out
