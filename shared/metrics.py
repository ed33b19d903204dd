"""Prometheus metrics (SPEC §2), one registry per application so that several apps can share a process."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "handshake_http_requests", "HTTP requests answered", ["method", "status"], registry=self.registry
        )
        self.token_verifications = Counter(
            "handshake_token_verifications", "Tokens checked", ["kind", "result"], registry=self.registry
        )
        self.logins = Counter("handshake_logins", "Login attempts", ["result"], registry=self.registry)
        self.mqtt_connections = Gauge("handshake_mqtt_connections", "Open MQTT connections", registry=self.registry)
        self.commands = Counter("handshake_commands", "Commands relayed", ["result"], registry=self.registry)
        self.mqtt_renewals = Counter(
            "handshake_mqtt_renewals", "Tokens renewed over live MQTT connections", ["result"], registry=self.registry
        )
        self.gc_full_collections = Counter(
            "handshake_gc_full_collections",
            "Full garbage collections run by handshake serve: settle (what is new since the last pass), growth or interval (deep: everything)",
            ["reason"],
            registry=self.registry,
        )
        self.revocation_propagation = Histogram(
            "handshake_revocation_propagation_seconds",
            "From a revocation's commit to this process applying it",
            buckets=(0.005, 0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10),
            registry=self.registry,
        )

        self._children: dict[tuple[Any, tuple[str, ...]], Any] = {}

    def child(self, metric: Counter, *values: str) -> Counter:
        """The series of a labelled counter for these label values, looked up once: prometheus' own
        labels() takes a lock and builds its key on every call, a measurable share of a request."""
        key = (metric, values)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*values)
        return found

    def render(self) -> bytes:
        return generate_latest(self.registry)
