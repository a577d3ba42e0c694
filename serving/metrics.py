"""Prometheus metrics of the HTTP service, in the text exposition format (version 0.0.4).

Request counts by route, method and status; latency histograms by route (measured inside the app, from
the first byte of the request reaching it to the last byte of the response leaving it); signals by side;
requests refused by the skew guard by reason. Each app has its own registry, so two apps in one process
(tests) never share counters.

>>> metrics = HttpMetrics()
>>> metrics.observe("GET", "/health", 200, 0.0004)
>>> 'featurestore_http_requests_total{method="GET",route="/health",status="200"} 1.0' in metrics.render().decode()
True
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

__all__ = ["LATENCY_BUCKETS", "HttpMetrics"]

#: Seconds: fine below a millisecond, where a healthy request lands.
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.01, 0.025, 0.05, 0.1,
                   0.25, 1.0)


class HttpMetrics:
    """The service's counters and histograms, and their exposition."""

    content_type = CONTENT_TYPE_PLAIN_0_0_4

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("featurestore_http_requests", "HTTP requests by route, method and status",
                                ["route", "method", "status"], registry=self.registry)
        self.latency = Histogram("featurestore_http_request_duration_seconds", "HTTP request latency inside the app",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=self.registry)
        signals = Counter("featurestore_signals", "Signals returned, by side", ["side"], registry=self.registry)
        self.signals = {side: signals.labels(side) for side in ("LONG", "SHORT", "FLAT")}
        self.refusals = Counter("featurestore_scoring_refusals", "Score requests refused by the skew guard, by reason",
                                ["reason"], registry=self.registry)
        self._children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        children = self._children.get((route, method, status))
        if children is None:  # a few routes, methods and statuses: cache the labelled children
            children = self._children[route, method, status] = (self.requests.labels(route, method, str(status)),
                                                                 self.latency.labels(route))
        children[0].inc()
        children[1].observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
