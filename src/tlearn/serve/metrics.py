"""Prometheus metrics of one app, in a registry of its own (two apps in one process do not
share counters)."""

from __future__ import annotations

from typing import Any

__all__ = ["Metrics"]

_LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    def __init__(self) -> None:
        from prometheus_client import (
            CollectorRegistry,
            Counter,
            Gauge,
            Histogram,
            disable_created_metrics,
        )

        disable_created_metrics()  # the *_created series only add noise to a scrape
        self.registry = r = CollectorRegistry()

        def seconds(name: str, doc: str) -> Any:
            return Histogram(f"tlearn_{name}_seconds", doc, buckets=_LATENCY_BUCKETS, registry=r)

        def gauge(name: str, doc: str) -> Any:
            return Gauge(f"tlearn_{name}", doc, registry=r)

        self.requests = Counter("tlearn_requests", "HTTP requests by route and status",
                                ["route", "status"], registry=r)  # fmt: skip
        self.rejections = Counter("tlearn_rejections", "Requests or images refused, by reason "
                                  "(the error code)", ["reason"], registry=r)  # fmt: skip
        self.queue_seconds = seconds("queue", "Time an image waited for the engine")
        self.decode_seconds = seconds("decode", "Time to check, decode and preprocess one image")
        self.inference_seconds = seconds("inference", "Time of one engine call (one batch)")
        self.request_seconds = seconds("request", "Time from the first byte to the answer")
        self.refusal_seconds = seconds("refusal", "Server time of a 503 refusal")
        self.batch_size = Histogram("tlearn_batch_size", "Images per engine call",
                                    buckets=_BATCH_BUCKETS, registry=r)  # fmt: skip
        self.queue_depth = gauge("queue_depth", "Images waiting for the engine")
        self.admitted = gauge("admitted_images", "Images admitted and not yet answered")
        self.admitted_peak = gauge("admitted_images_peak", "Most images ever admitted at once")
        self.queue_cap = gauge("queue_cap", "Most images admitted at once, now")
        self.body_bytes = gauge("body_bytes", "Bytes of request bodies held in memory "
                                "(arriving, or waiting to be decoded)")  # fmt: skip
        self.ready = gauge("ready", "1 when the server takes predictions")

    def on_batch(self, size: int, waits: list[float], spent: float) -> None:
        self.batch_size.observe(size)
        self.inference_seconds.observe(spent)
        for wait in waits:
            self.queue_seconds.observe(wait)

    def reject(self, reason: str, n: int = 1) -> None:
        self.rejections.labels(reason=reason).inc(n)

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def sample(self, name: str, **labels: Any) -> float:
        """One sample's value (tests and benchmarks)."""
        value = self.registry.get_sample_value(name, labels or None)
        return float(value or 0.0)
