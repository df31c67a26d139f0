"""GET /metrics: Prometheus counters, gauges and histograms of one app (``prometheus-client``).

Each app has its own ``CollectorRegistry``, so several apps in one process (tests, a benchmark)
never share or clash over a metric. ``Observe`` is the ASGI middleware that counts every request
by route and status and times it to its last byte (a stream's end); the scheduler reports the
rest (queue, batches, tokens, forward passes, time to first token).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from remask.serve.limits import Receive, Scope, Send

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    """The server's metrics in a registry of their own; ``render()`` is the /metrics body."""

    def __init__(self, queue_length: Callable[[], float], open_streams: Callable[[], float]) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = r = CollectorRegistry()
        self.requests = Counter("remask_requests", "HTTP requests answered, by route and status", ["route", "status"],
                                registry=r)
        self.latency = Histogram("remask_request_latency_seconds", "time from a request's arrival to its last byte "
                                 "(a stream's end)", ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("remask_time_to_first_token_seconds", "time from a generation request's arrival to "
                              "its first final text", buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("remask_batch_size", "rows generated together in one batch", buckets=BATCH_BUCKETS,
                                    registry=r)
        self.tokens = Counter("remask_generated_tokens", "answer tokens sent (before EOS and stop strings)", registry=r)
        self.forward = Counter("remask_forward_passes", "network evaluations (a CFG step counts 2)", registry=r)
        self.batches = Counter("remask_batches", "batches generated", registry=r)
        Gauge("remask_queue_length", "requests waiting for the model", registry=r).set_function(queue_length)
        Gauge("remask_open_streams", "streamed responses open now", registry=r).set_function(open_streams)

    def render(self) -> tuple[bytes, str]:
        """(the text exposition of every metric, its content type)."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def batch(self, rows: int, n_forward: int) -> None:
        self.batches.inc()
        self.batch_size.observe(rows)
        self.forward.inc(n_forward)

    def answered(self, ttft: float | None, tokens: int) -> None:
        if ttft is not None:
            self.ttft.observe(ttft)
        self.tokens.inc(tokens)


class Observe:
    """ASGI middleware: counts and times every HTTP request under its route's path template
    (``other`` for a path the app does not serve, so a scanner cannot grow the label set)."""

    def __init__(self, app: Any, metrics: Metrics, routes: list[Any]) -> None:
        self.app, self.metrics, self.routes = app, metrics, routes  # the router's (a live list)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), 500

        async def observed(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, observed)
        finally:
            route = self._route(scope)
            self.metrics.requests.labels(route, str(status)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - start)

    def _route(self, scope: Scope) -> str:
        """The path template of the route a request reached, or would have (one refused before routing: 401, 413)."""
        if scope.get("route") is not None:
            return scope["route"].path
        from starlette.routing import Match

        return next((r.path for r in self.routes if r.matches(scope)[0] == Match.FULL), "other")
