"""The server's limits, in one frozen object: every one has a default a careful operator
would choose on a small machine, and every one is a ``tlearn serve`` flag."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from numbers import Integral, Real
from typing import Any, ClassVar

from tlearn._validation import Interval, Predicate, validate_params

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
        Each request's deadline, from its first byte: 408 when the body has not arrived
        by then, 504 when the answer has not; work past its deadline is dropped before
        inference.
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
        for key in ("queue_ms", "max_body_mb", "timeout_s", "drain_s"):
            if isinstance(values[key], int) and not isinstance(values[key], bool):
                values[key] = float(values[key])
                object.__setattr__(self, key, values[key])
        if isinstance(self.formats, list):
            object.__setattr__(self, "formats", tuple(self.formats))
            values["formats"] = self.formats
        validate_params("ServeConfig", values, self._constraints)

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)

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
