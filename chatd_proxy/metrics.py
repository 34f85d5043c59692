"""Prometheus metrics of one ChatD, on a registry private to the process.

ChatD forwards sealed traffic it cannot read, and its metrics keep to what it
can see without identifying anyone: final gRPC status names, the status that ended
each relayed request and whether a vault node or ChatD itself gave it, retries,
rate-limit refusals and forwarding latency. No label ever carries an account or a token.
"""

from __future__ import annotations

import time

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram

from bkv_ops.metrics import LATENCY_BUCKETS, MetricsEndpoint

_STATUS_NAMES = frozenset(code.name for code in grpc.StatusCode)


class ChatDMetrics(MetricsEndpoint):
    """Counters and the forwarding histogram; safe to update from any thread."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        super().__init__(registry)
        self.requests = Counter(
            "bkv_chatd_requests",
            "ChatD.Forward calls by final gRPC status",
            ["outcome"],
            registry=self.registry,
        )
        self.relayed = Counter(
            "bkv_chatd_vault_outcomes",
            "Requests relayed to the vault, by the gRPC status that ended them: a vault "
            "node's (source=vault), or ChatD's own when no node gave a final answer "
            "(source=chatd)",
            ["code", "source"],
            registry=self.registry,
        )
        self.relayed.labels(code="OK", source="vault")
        self.retries = Counter(
            "bkv_chatd_retries",
            "Extra tries at vault nodes (leader hints, dead or slow nodes)",
            registry=self.registry,
        )
        self.rate_limited = Counter(
            "bkv_chatd_rate_limited",
            "Requests refused by a rate limit (per account or per client address)",
            registry=self.registry,
        )
        self.rate_limited_by = Counter(
            "bkv_chatd_rate_limit_refusals",
            "Requests refused, by which limit refused them",
            ["limit"],
            registry=self.registry,
        )
        self.forward_seconds = Histogram(
            "bkv_chatd_forward_seconds",
            "Time to relay one envelope to the shard leader and back",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

    def request(self, code: object) -> None:
        """Count one Forward by its final status (``None`` means OK)."""
        name = "OK" if code is None else getattr(code, "name", "UNKNOWN")
        self.requests.labels(outcome=name if name in _STATUS_NAMES else "UNKNOWN").inc()

    def vault_outcome(self, code: object, *, from_vault: bool) -> None:
        """Count one relayed request by who ended it with which status (``None`` means OK).

        ChatD can't read the sealed answers, so a wrong password is an OK here; the
        codes tell "not leader", "no quorum" or a refused envelope from a healthy relay.
        """
        name = "OK" if code is None else getattr(code, "name", "UNKNOWN")
        self.relayed.labels(code=name if name in _STATUS_NAMES else "UNKNOWN",
                            source="vault" if from_vault else "chatd").inc()

    def refused(self, limit: str) -> None:
        """Count one rate-limit refusal; ``limit`` is ``"address"`` or ``"account"``."""
        self.rate_limited.inc()
        self.rate_limited_by.labels(limit=limit).inc()

    def forwarded(self, started: float) -> None:
        self.forward_seconds.observe(time.monotonic() - started)
