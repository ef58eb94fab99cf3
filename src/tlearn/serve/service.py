"""The server's state, apart from HTTP: the predictor, the batcher, the decoding threads,
admission control and the lifecycle (loading -> ready -> draining)."""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from tlearn.serve.batcher import Batcher
from tlearn.serve.config import ServeConfig
from tlearn.serve.metrics import Metrics

__all__ = ["Service"]

log = logging.getLogger("tlearn.serve")


class Service:
    """Everything ``create_app`` serves from. ``source`` is a :class:`~tlearn.Predictor`,
    or what :func:`~tlearn.load_predictor` takes (a model file, an export,
    ``imagenet:BACKBONE``, a fitted estimator); :meth:`start` loads and warms it up in a
    background thread, so the probes answer while it does."""

    def __init__(self, source: Any, config: ServeConfig, **load_options: Any) -> None:
        self.source = source
        self.config = config
        self.load_options = load_options
        self.metrics = Metrics()
        self.predictor: Any = None
        self.batcher: Batcher | None = None
        self.decode_pool = ThreadPoolExecutor(config.n_decode_workers, "tlearn-decode")
        self.queue_cap = config.queue_cap()
        self.ready = False
        self.failed: str | None = None
        self.draining_since: float | None = None
        self._in_flight = 0  # predictions between their first byte and their answer
        self._body_bytes = 0  # bodies held in memory (ServeConfig.upload_buffer_mb)
        self._admitted = 0
        self._peak = 0
        self._answered_images = 0
        self._window = (time.monotonic(), 0)  # (start, images answered by then)
        self._saturated = False
        self._lock = threading.Lock()
        self._loader: threading.Thread | None = None
        self._started = False
        self._closing = False
        self.close_with_loop: Any = None  # the task that closes a lazily started service
        self.model_info: dict[str, Any] = {}

    # -- lifecycle ---------------------------------------------------------------------
    def start(self, background: bool = True) -> bool:
        """Load and warm up the model (in a thread when ``background``), then start the
        engine thread; once until :meth:`close`, later calls do nothing. After a close,
        only the threads start again: the model stays loaded. True when this call
        started the service."""
        with self._lock:
            if self._started:
                return False
            self._started, self._closing = True, False
            self.draining_since, self.failed = None, None
        if self.predictor is not None:
            self._open()
        elif background:
            self._loader = threading.Thread(target=self._load, name="tlearn-load", daemon=True)
            self._loader.start()
        else:
            self._load()
        return True

    def _load(self) -> None:
        from tlearn.predictor import Predictor, load_predictor

        try:
            predictor = self.source
            if not isinstance(predictor, Predictor):
                predictor = load_predictor(self.source, **self.load_options)
            self._warm_up(predictor)
        except Exception as e:
            self.failed = f"{type(e).__name__}: {e}"
            log.error("the model could not be loaded: %s", self.failed)
            return
        self._open()

    def _warm_up(self, predictor: Any) -> None:
        """Run one full batch (timed: it sizes the queue); keep the predictor."""
        size = predictor.preprocessing.input_size
        batch = np.zeros((self.config.max_batch_size, size, size, 3), np.uint8)
        predictor.predict_pixels(batch[:1])
        t0 = time.perf_counter()
        predictor.predict_pixels(batch)
        seconds = time.perf_counter() - t0
        self._set_cap(self.config.queue_cap())  # grows with the measured rate under load
        info = predictor.describe()
        self.model_info = {
            "source": self._source_name(),
            "backbone": info.get("backbone", info.get("architecture", "unknown")),
            "engine": info.get("engine"),
            "n_classes": len(info["classes"]),
            "task": info["task"],
        }
        self.predictor = predictor
        log.info(
            "loaded: %s on %s; a batch of %d takes %.0f ms; at most %d images admitted",
            self.model_info["backbone"],
            self.model_info["engine"],
            self.config.max_batch_size,
            seconds * 1000,
            self.queue_cap,
        )

    def _open(self) -> None:
        """Start the engine thread and take requests (unless closed meanwhile)."""
        with self._lock:
            if self._closing:
                return
            self.batcher = batcher = Batcher(
                self.predictor.predict_pixels,
                self.config.max_batch_size,
                on_batch=self.metrics.on_batch,
                on_drop=lambda n: self.metrics.reject("timeout", n),
            )
        self.metrics.queue_depth.set_function(lambda: batcher.depth)
        self.ready = True
        self.metrics.ready.set(1)

    def _source_name(self) -> str:
        import os

        if isinstance(self.source, (str, os.PathLike)):
            return os.path.basename(os.fspath(self.source)) or os.fspath(self.source)
        return type(self.source).__name__

    def wait_ready(self, timeout: float | None = None) -> bool:
        if self._loader is not None:
            self._loader.join(timeout)
        return self.ready

    def start_draining(self) -> None:
        if self.draining_since is None:
            self.draining_since = time.monotonic()
            self.metrics.ready.set(0)
            log.info("draining: no new work; %d predictions in flight", self._in_flight)

    @property
    def draining(self) -> bool:
        return self.draining_since is not None

    def drained(self) -> bool:
        """True when draining and no prediction is in flight, its body still arriving
        included (or ``drain_s`` has passed)."""
        if self.draining_since is None:
            return False
        late = time.monotonic() - self.draining_since > self.config.drain_s
        return self._in_flight == 0 or late

    def close(self) -> None:
        """Stop every thread :meth:`start` started: wait for a load in progress, let the
        engine finish what is queued, stop the decoding threads. The model stays loaded,
        so :meth:`start` may open the service again at once."""
        with self._lock:
            if not self._started:
                return
            self._closing = True  # a load still running starts no engine thread
            self.ready = False
        self.metrics.ready.set(0)
        if self._loader is not None:
            self._loader.join(self.config.drain_s)
        if self.batcher is not None:
            self.batcher.close(timeout=self.config.drain_s)
        self.decode_pool.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            self.decode_pool = ThreadPoolExecutor(self.config.n_decode_workers, "tlearn-decode")
            self.batcher, self._loader, self._started = None, None, False

    # -- requests and their bodies -----------------------------------------------------
    def enter(self) -> None:
        """A prediction began (its body may still be arriving): draining waits for it."""
        with self._lock:
            self._in_flight += 1

    def leave(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def hold_body(self, n: int) -> bool:
        """Count ``n`` more bytes of a body against the upload buffer; False, counting
        nothing, when they would pass it."""
        with self._lock:
            if self._body_bytes + n > self.config.upload_buffer_bytes:
                return False
            self._body_bytes += n
            self.metrics.body_bytes.set(self._body_bytes)
            return True

    def drop_body(self, n: int) -> None:
        with self._lock:
            self._body_bytes -= n
            self.metrics.body_bytes.set(self._body_bytes)

    # -- admission ---------------------------------------------------------------------
    def admit(self, n: int, held: int = 0) -> bool:
        """Reserve room for ``n`` more images for a request already holding ``held``;
        False when the cap would be passed, unless that request is alone in the server
        (a request with more images than the cap is taken when nothing else waits)."""
        with self._lock:
            self._retune()
            alone = held > 0 and self._admitted == held
            if self._admitted + n > self.queue_cap and not alone:
                self._saturated = True
                return False
            self._admitted += n
            if 2 * self._admitted >= self.queue_cap:
                self._saturated = True
            self.metrics.admitted.set(self._admitted)
            if self._admitted > self._peak:
                self._peak = self._admitted
                self.metrics.admitted_peak.set(self._peak)
            return True

    def release(self, n: int) -> None:
        with self._lock:
            self._admitted -= n
            self._answered_images += n
            self.metrics.admitted.set(self._admitted)

    def _retune(self) -> None:
        """Every half second of saturation, size the automatic cap from the rate at which
        images were answered (the warm-up's estimate leaves out decoding and HTTP)."""
        start, answered = self._window
        now = time.monotonic()
        if now - start < 0.5:
            return
        done = self._answered_images - answered
        if self._saturated and done > 0 and self.config.max_queue is None:
            self._set_cap(self.config.queue_cap(done / (now - start)))
        self._window = (now, self._answered_images)
        self._saturated = False

    def _set_cap(self, cap: int) -> None:
        # never below what is already admitted: the cap in force always holds
        self.queue_cap = max(cap, self._admitted)
        self.metrics.queue_cap.set(self.queue_cap)

    def answered(self) -> int:
        """Predictions answered with 200 so far."""
        return int(self.metrics.sample("tlearn_requests_total", route="/v1/predict", status="200"))

    @property
    def admitted(self) -> int:
        return self._admitted
