"""Prometheus metrics of one ChatD, on a registry private to the process.

ChatD forwards sealed traffic it cannot read, and its metrics keep to what it
can see without identifying anyone: final gRPC status names, retries, rate-limit
refusals and forwarding latency. No label ever carries an account or a token.
"""

from __future__ import annotations

import time
from wsgiref.simple_server import WSGIServer

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

_STATUS_NAMES = frozenset(code.name for code in grpc.StatusCode)


class ChatDMetrics:
    """Counters and the forwarding histogram; safe to update from any thread."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._http: WSGIServer | None = None
        self.requests = Counter(
            "bkv_chatd_requests",
            "ChatD.Forward calls by final gRPC status",
            ["outcome"],
            registry=self.registry,
        )
        self.retries = Counter(
            "bkv_chatd_retries",
            "Extra tries at vault nodes (leader hints, dead or slow nodes)",
            registry=self.registry,
        )
        self.rate_limited = Counter(
            "bkv_chatd_rate_limited",
            "Requests refused by the per-account rate limit",
            registry=self.registry,
        )
        self.forward_seconds = Histogram(
            "bkv_chatd_forward_seconds",
            "Time to relay one envelope to the shard leader and back",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=self.registry,
        )

    def request(self, code: object) -> None:
        """Count one Forward by its final status (``None`` means OK)."""
        name = "OK" if code is None else getattr(code, "name", "UNKNOWN")
        self.requests.labels(outcome=name if name in _STATUS_NAMES else "UNKNOWN").inc()

    def forwarded(self, started: float) -> None:
        self.forward_seconds.observe(time.monotonic() - started)

    def serve(self, address: str) -> None:
        """Start the scrape endpoint on ``host:port`` (a daemon thread)."""
        host, _, port = address.rpartition(":")
        self._http, _ = start_http_server(int(port), addr=host, registry=self.registry)

    def close(self) -> None:
        """Stop the scrape endpoint, if one was started."""
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
