"""The Prometheus scrape endpoint both servers run, over a per-process registry."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, start_http_server

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

# Latency buckets (seconds) for request and commit histograms: a few ms to a deadline.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class MetricsEndpoint:
    """Serves ``registry`` over HTTP on demand; never the process-global default registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._http: WSGIServer | None = None

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
