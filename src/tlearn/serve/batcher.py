"""Dynamic batching that adds no latency when idle (Triton's rule).

One engine thread takes everything queued, up to ``max_batch_size`` images, whenever it is
free; it never waits for a batch to fill. At low load every batch holds one image, so a
request's latency is one image's; under load the queue fills while the engine works and
batches grow by themselves. Items whose deadline has passed (or whose caller gave up) are
dropped before inference. Only decoded, checked pixels are queued, so one bad upload can
never fail a batch.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

__all__ = ["Batcher", "BatchResult", "DeadlineExceeded"]


class DeadlineExceeded(Exception):
    """The item's deadline passed before the engine reached it."""


@dataclass(frozen=True)
class BatchResult:
    proba: np.ndarray  # (n_classes,)
    queue_s: float
    inference_s: float
    batch_size: int


@dataclass
class _Item:
    pixels: np.ndarray
    deadline: float
    enqueued: float = field(default_factory=time.monotonic)
    future: Future[BatchResult] = field(default_factory=Future)


class Batcher:
    """Run ``predict(pixels) -> proba`` on batches gathered from many threads.

    Parameters
    ----------
    predict : callable
        ``(n, h, w, 3)`` uint8 -> ``(n, n_classes)``; called from the engine thread only.
    max_batch_size : int
        Most items per call.
    on_batch : callable, optional
        ``(batch_size, queue_seconds_list, inference_seconds)`` after each call (metrics).
    on_drop : callable, optional
        ``(n)`` when items are dropped for their deadline.
    """

    def __init__(
        self,
        predict: Callable[[np.ndarray], np.ndarray],
        max_batch_size: int,
        *,
        on_batch: Callable[[int, list[float], float], None] | None = None,
        on_drop: Callable[[int], None] | None = None,
    ) -> None:
        self._predict = predict
        self.max_batch_size = max_batch_size
        self._on_batch = on_batch
        self._on_drop = on_drop
        self._queue: deque[_Item] = deque()
        self._cv = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="tlearn-engine", daemon=True)
        self._thread.start()

    @property
    def depth(self) -> int:
        """Items waiting for the engine (not counting the batch it is running)."""
        return len(self._queue)

    def submit(self, pixels: np.ndarray, deadline: float) -> Future[BatchResult]:
        """Queue one preprocessed image; ``deadline`` is a ``time.monotonic()`` value."""
        item = _Item(pixels, deadline)
        with self._cv:
            if self._closed:
                raise RuntimeError("the batcher is closed")
            self._queue.append(item)
            self._cv.notify()
        return item.future

    def close(self, timeout: float | None = None) -> None:
        """Finish what is queued, then stop the engine thread."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        self._thread.join(timeout)

    # -- the engine thread -------------------------------------------------------------
    def _take(self) -> list[_Item] | None:
        with self._cv:
            while not self._queue and not self._closed:
                self._cv.wait()
            if not self._queue:
                return None
            batch: list[_Item] = []
            while self._queue and len(batch) < self.max_batch_size:
                batch.append(self._queue.popleft())
        return batch

    def _live(self, batch: list[_Item]) -> list[_Item]:
        now = time.monotonic()
        live, dropped = [], 0
        for item in batch:
            if not item.future.set_running_or_notify_cancel():
                dropped += 1  # the caller gave up (its deadline passed)
            elif item.deadline <= now:
                item.future.set_exception(DeadlineExceeded())
                dropped += 1
            else:
                live.append(item)
        if dropped and self._on_drop is not None:
            self._on_drop(dropped)
        return live

    def _run(self) -> None:
        while (batch := self._take()) is not None:
            live = self._live(batch)
            if not live:
                continue
            start = time.monotonic()
            waits = [start - item.enqueued for item in live]
            try:
                proba = self._predict(np.stack([item.pixels for item in live]))
            except BaseException as e:  # the engine failed: every caller hears why
                for item in live:
                    item.future.set_exception(e)
                continue
            spent = time.monotonic() - start
            for item, row, wait in zip(live, proba, waits, strict=True):
                item.future.set_result(BatchResult(row, wait, spent, len(live)))
            if self._on_batch is not None:
                self._on_batch(len(live), waits, spent)
