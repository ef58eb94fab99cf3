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
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "tlearn_requests", "HTTP requests by route and status", ["route", "status"], registry=r
        )
        self.rejections = Counter(
            "tlearn_rejections",
            "Requests or images refused, by reason (the error code)",
            ["reason"],
            registry=r,
        )
        self.queue_seconds = Histogram(
            "tlearn_queue_seconds",
            "Time an image waited for the engine",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.decode_seconds = Histogram(
            "tlearn_decode_seconds",
            "Time to check, decode and preprocess one image",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.inference_seconds = Histogram(
            "tlearn_inference_seconds",
            "Time of one engine call (one batch)",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.request_seconds = Histogram(
            "tlearn_request_seconds",
            "Time from the first byte to the answer of /v1/predict",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.refusal_seconds = Histogram(
            "tlearn_refusal_seconds",
            "Server time of a 503 refusal (overloaded, shutting down, not ready)",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "tlearn_batch_size", "Images per engine call", buckets=_BATCH_BUCKETS, registry=r
        )
        self.queue_depth = Gauge("tlearn_queue_depth", "Images waiting for the engine", registry=r)
        self.admitted = Gauge(
            "tlearn_admitted_images", "Images admitted and not yet answered", registry=r
        )
        self.admitted_peak = Gauge(
            "tlearn_admitted_images_peak",
            "Most images ever admitted at once (never above tlearn_queue_cap)",
            registry=r,
        )
        self.queue_cap = Gauge("tlearn_queue_cap", "Most images admitted at once", registry=r)
        self.ready = Gauge("tlearn_ready", "1 when the server takes predictions", registry=r)

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
