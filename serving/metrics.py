"""Prometheus metrics of the HTTP service, in the text exposition format (version 0.0.4).

Request counts by route, method and status; latency histograms by route (measured inside the app, from
the first byte of the request reaching it to the last byte of the response leaving it); signals by side;
requests refused by the skew guard by reason. Each app has its own registry, so two apps in one process
(tests) never share counters.

Monitoring gauges (``MONITOR_GAUGES``), read when scraped from what ``add_monitor``'s function returns
(the app composes them from the latest ``featurestore monitor`` and ``consistency`` reports and the online
store): drift, freshness, consistency, live performance and signal counts.

>>> metrics = HttpMetrics()
>>> metrics.observe("GET", "/health", 200, 0.0004)
>>> 'featurestore_http_requests_total{method="GET",route="/health",status="200"} 1.0' in metrics.render().decode()
True
>>> metrics.add_monitor(lambda: [("featurestore_feature_psi", {"model": "m", "feature": "a"}, 0.3)])
>>> 'featurestore_feature_psi{feature="a",model="m"} 0.3' in metrics.render().decode()
True
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

__all__ = ["LATENCY_BUCKETS", "MONITOR_GAUGES", "GaugeSample", "HttpMetrics", "MonitorCollector"]

#: (gauge name, labels, value)
GaugeSample = tuple[str, Mapping[str, str], float]

#: Every monitoring gauge: name -> (help, label names).
MONITOR_GAUGES: dict[str, tuple[str, tuple[str, ...]]] = {
    "featurestore_monitor_status": ("Latest featurestore monitor status: 0 OK, 1 WARN, 2 ALERT, -1 SKIP", ("model",)),
    "featurestore_monitor_check_status": ("Status of each monitor check: 0 OK, 1 WARN, 2 ALERT, -1 SKIP",
                                          ("model", "check", "subject", "figure")),
    "featurestore_monitor_rows": ("Rows in the latest monitor window", ("model", "source")),
    "featurestore_monitor_signals": ("Signals of the model version in the latest monitor window", ("model", "side")),
    "featurestore_feature_psi": ("PSI of a model input in the monitor window against its training set",
                                 ("model", "feature")),
    "featurestore_feature_ks": ("KS statistic of a model input against its training set", ("model", "feature")),
    "featurestore_feature_null_rate": ("Share of null values of a model input in the monitor window",
                                       ("model", "feature")),
    "featurestore_prediction_psi": ("PSI of the model's scores against its training set's", ("model",)),
    "featurestore_prediction_ks": ("KS statistic of the model's scores against its training set's", ("model",)),
    "featurestore_live_ic": ("Spearman IC of matured live signals (live) and of the backtest (backtest)",
                             ("model", "of")),
    "featurestore_live_hit_rate": ("Hit rate of matured live signals (live) and of the backtest (backtest)",
                                   ("model", "of")),
    "featurestore_freshness_age_seconds": ("Age of the newest online row of a view and symbol", ("view", "symbol")),
    "featurestore_consistency_match_share": ("Share of served rows equal bit for bit to the offline recomputation",
                                             ("view", "feature")),
    "featurestore_consistency_rows": ("Rows of the latest consistency check (compared, only_served, only_offline)",
                                      ("view", "kind")),
}


class MonitorCollector:
    """The monitoring gauges, from ``samples()`` at every scrape (a sample of an unknown gauge is an error)."""

    def __init__(self, samples: Callable[[], Iterable[GaugeSample]]) -> None:
        self._samples = samples

    def collect(self) -> Iterator[GaugeMetricFamily]:
        families = {name: GaugeMetricFamily(name, help_text, labels=labels)
                    for name, (help_text, labels) in MONITOR_GAUGES.items()}
        for name, labels, value in self._samples():
            family = families[name]
            family.add_metric([labels[label] for label in MONITOR_GAUGES[name][1]], value)
        yield from families.values()

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

    def add_monitor(self, samples: Callable[[], Iterable[GaugeSample]]) -> None:
        """Expose the monitoring gauges ``samples()`` gives, read at every scrape."""
        self.registry.register(MonitorCollector(samples))

    def render(self) -> bytes:
        return generate_latest(self.registry)
