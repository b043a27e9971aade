"""Prometheus metrics (prometheus-client), served at /metrics.

Counters and histograms are updated where things happen (the HTTP middleware, the
executor); the state of the queue is read from the database at scrape time by a
collector, so every API instance reports the same, true figures.

    crucible_http_requests_total{method,route,status}       counter
    crucible_http_request_duration_seconds{method,route}    histogram
    crucible_sandbox_run_seconds{language,termination}      histogram (this process's runs)
    crucible_evaluations{status,termination,language}       gauge (all, from the database)
    crucible_queue_depth{priority}                          gauge
    crucible_running                                        gauge
    crucible_capacity                                       gauge (this server's sandbox slots)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# One registry for the process (not the global default: tests build many apps).
REGISTRY = CollectorRegistry(auto_describe=True)

HTTP_REQUESTS = Counter(
    "crucible_http_requests",
    "HTTP requests answered, by route template and status",
    ["method", "route", "status"],
    registry=REGISTRY,
)
HTTP_LATENCY = Histogram(
    "crucible_http_request_duration_seconds",
    "Time to answer an HTTP request (streams: until the stream ends)",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
    registry=REGISTRY,
)
RUN_SECONDS = Histogram(
    "crucible_sandbox_run_seconds",
    "Wall-clock time of sandbox runs in this process",
    ["language", "termination"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
    registry=REGISTRY,
)


def observe_request(method: str, route: str, status: int, seconds: float) -> None:
    HTTP_REQUESTS.labels(method, route, str(status)).inc()
    HTTP_LATENCY.labels(method, route).observe(seconds)


def observe_run(language: str, termination: str, seconds: float) -> None:
    RUN_SECONDS.labels(language, termination).observe(seconds)


class StateCollector(Collector):
    """Reads evaluations by status/termination/language, queue depth and running from
    ``snapshot()`` at scrape time."""

    def __init__(self, snapshot: Callable[[], dict[str, Any]]) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[GaugeMetricFamily]:
        snap = self.snapshot()
        evaluations = GaugeMetricFamily(
            "crucible_evaluations",
            "Evaluations in the database by status, termination and language",
            labels=["status", "termination", "language"],
        )
        for (status, termination, language), n in snap["evaluations"].items():
            evaluations.add_metric([status, termination or "", language], n)
        yield evaluations
        depth = GaugeMetricFamily(
            "crucible_queue_depth", "Queued evaluations by priority", labels=["priority"]
        )
        for priority, n in snap["depth"].items():
            depth.add_metric([priority], n)
        yield depth
        yield GaugeMetricFamily("crucible_running", "Evaluations running", value=snap["running"])
        yield GaugeMetricFamily(
            "crucible_capacity", "Sandbox slots of this server", value=snap["capacity"]
        )


def render(snapshot: Callable[[], dict[str, Any]] | None) -> bytes:
    """The exposition text: this process's counters plus, when given, the state."""
    if snapshot is None:
        return generate_latest(REGISTRY)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StateCollector(snapshot))
    return generate_latest(REGISTRY) + generate_latest(registry)
