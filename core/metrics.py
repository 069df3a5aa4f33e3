"""Prometheus metrics of one Hearth process, in a registry of its own (no global state between tests)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class Metrics:
    """Every metric Hearth exports; faces and services update them, GET /metrics renders them."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.http_requests = Counter(
            "hearth_http_requests",
            "HTTP requests served",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.websockets_open = Gauge(
            "hearth_websockets_open", "websocket connections open now", ["face"], registry=self.registry
        )
        self.actions_running = Gauge("hearth_actions_running", "actions running now", registry=self.registry)
        self.actions_total = Counter(
            "hearth_actions", "actions finished, by outcome", ["outcome"], registry=self.registry
        )
        self.db_latency = Histogram(
            "hearth_database_latency_seconds",
            "time of database reads and writes as seen by the caller",
            ["op"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=self.registry,
        )
        self.auth_failures = Counter(
            "hearth_auth_failures", "credentials refused, by kind", ["kind"], registry=self.registry
        )
        self.bus_dropped = Counter(
            "hearth_bus_dropped",
            "bus messages dropped for slow subscribers",
            ["topic"],
            registry=self.registry,
        )

        self.calls_ignored_frames = Counter(
            "hearth_calls_ignored_frames",
            "frames after a call's first message that were not a known signal (ignored, protocol v1)",
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
