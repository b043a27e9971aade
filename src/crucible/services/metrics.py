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
    crucible_warm_sandboxes{runtime}                        gauge (this process's idle warm ones)
    crucible_warm_sandbox_memory_bytes{runtime}             gauge (memory they hold)
    crucible_warm_sandbox_pids{runtime}                     gauge (processes they hold)
    crucible_warm_sandbox_requests_total{result}            counter (hit | miss)
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from crucible.engine import Sandbox

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


class WarmPoolCollector(Collector):
    """What this process's warm one-shot sandboxes hold, read at scrape time: idle
    sandboxes are not free, so their memory and pids are counted."""

    def __init__(self) -> None:
        self.engines: weakref.WeakSet[Sandbox] = weakref.WeakSet()

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        idle = GaugeMetricFamily(
            "crucible_warm_sandboxes", "Idle warm one-shot sandboxes", labels=["runtime"]
        )
        memory = GaugeMetricFamily(
            "crucible_warm_sandbox_memory_bytes",
            "Memory charged to idle warm sandboxes",
            labels=["runtime"],
        )
        pids = GaugeMetricFamily(
            "crucible_warm_sandbox_pids", "Processes in idle warm sandboxes", labels=["runtime"]
        )
        requests = CounterMetricFamily(
            "crucible_warm_sandbox_requests",
            "Runs that found a warm sandbox of their shape (hit) or not (miss)",
            labels=["result"],
        )
        totals: dict[str, list[int]] = {}
        hits = misses = 0
        for engine in list(self.engines):
            for st in engine.warm_stats():
                row = totals.setdefault(st.runtime, [0, 0, 0])
                row[0] += st.idle
                row[1] += st.memory_bytes
                row[2] += st.pids
            hits += engine.pool.hits
            misses += engine.pool.misses
        for name, (n, mem, procs) in sorted(totals.items()):
            idle.add_metric([name], n)
            memory.add_metric([name], mem)
            pids.add_metric([name], procs)
        requests.add_metric(["hit"], hits)
        requests.add_metric(["miss"], misses)
        yield from (idle, memory, pids, requests)


WARM_POOL = WarmPoolCollector()
REGISTRY.register(WARM_POOL)


def watch_warm_pool(engine: Sandbox) -> None:
    """Report ``engine``'s warm sandboxes in this process's metrics."""
    WARM_POOL.engines.add(engine)


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
