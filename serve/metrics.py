"""Prometheus metrics of one gateway (own registry per app, so several apps can live in one process), and the
ASGI middleware that counts and times its requests."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class Metrics:
    """requests by endpoint/status (499: the client went away), latencies, images, batch sizes, queue depth,
    errors by kind, open connections and connections closed by the server (serve/limits.py), cluster
    assignments and low-confidence / out-of-distribution answers per model version, the served versions."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter("gateway_requests", "HTTP requests by endpoint and status",
                                ["endpoint", "method", "status"], registry=r)
        self.latency = Histogram("gateway_request_latency_seconds", "HTTP request latency by endpoint",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.images = Counter("gateway_images", "images received, by endpoint and outcome (ok, error)",
                              ["endpoint", "outcome"], registry=r)
        self.errors = Counter("gateway_errors", "errors answered, by kind (and per-image decode errors)",
                              ["kind"], registry=r)
        self.batch_size = Histogram("gateway_batch_size", "images per model batch", ["model"],
                                    buckets=BATCH_BUCKETS, registry=r)
        self.inference = Histogram("gateway_inference_latency_seconds", "backend time per model batch",
                                   ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("gateway_queue_depth", "images waiting for a batch", ["model"], registry=r)
        self.assignments = Counter("gateway_cluster_assignments", "images assigned to each cluster by /cluster",
                                   ["model", "version", "cluster"], registry=r)
        self.low_confidence = Counter("gateway_low_confidence", "cluster answers flagged low_confidence",
                                      ["model", "version"], registry=r)
        self.ood = Counter("gateway_ood", "cluster answers flagged out of distribution", ["model", "version"],
                           registry=r)
        self.served_version = Gauge("gateway_model_version", "the version unpinned requests get", ["model"],
                                    registry=r)
        self.connections = Gauge("gateway_open_connections", "client connections open", registry=r)
        self.connections_closed = Counter(
            "gateway_connections_closed", "connections the server closed, by reason (refused at the limit, "
            "evicted to make room, headers_timeout, body_timeout)", ["reason"], registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Pure ASGI: counts requests by endpoint (route template) and status, and times them."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        began = time.perf_counter()

        async def send_status(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(endpoint, scope["method"], str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - began)
