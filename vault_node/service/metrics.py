"""Prometheus metrics of one vault node, on a registry private to the process.

Labels are drawn from small fixed sets (protocol step, outcome, attempt fate):
never an account, account id, session id or anything else a client chooses, so a
scrape reveals traffic volume and health but nobody's identity. Raft gauges are read at scrape
time from :meth:`Replica.status`, so no thread has to keep them fresh.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from bkv_api.v1 import envelope_pb2 as pb
from bkv_ops.metrics import LATENCY_BUCKETS, MetricsEndpoint
from vault_node import state as st
from vault_node.raft.replication import RaftStatus

STEPS: dict[int, str] = {
    pb.REGISTER_START: "register_start",
    pb.REGISTER_FINISH: "register_finish",
    pb.LOGIN_START: "login_start",
    pb.LOGIN_FINISH: "login_finish",
}
_ERROR_OUTCOMES: dict[int, str] = {
    pb.VaultError.LOGIN_FAILED: "wrong_password",
    pb.VaultError.NOT_REGISTERED: "not_registered",
    pb.VaultError.KEY_DESTROYED: "destroyed",
    pb.VaultError.SESSION_EXPIRED: "session_expired",
    pb.VaultError.BAD_REQUEST: "bad_request",
    pb.VaultError.ALREADY_REGISTERED: "already_registered",
}
StatusSource = Callable[[], RaftStatus]
# How a counted attempt (a guess this node counted with BeginAttempt) ended; each one
# ends in exactly one. A client with a wrong password stops after KE2, so its guesses
# end "lapsed" (or "destroyed" for the last one), never "wrong_password".
FATES: dict[str, str] = {
    "success": "KE3 verified: the deposit was released, or deleted at its owner's request",
    "wrong_password": "KE3 sent and it failed verification",
    "lapsed": "the login session expired without a KE3 in time",
    "destroyed": "the attempt ended in the destruction of the record (its last guess)",
    "superseded": "KE3 verified, but the deposit was replaced or erased meanwhile",
    "interrupted": "the session was dropped unfinished: leadership lost, node stopped, "
                   "or the outcome of a verified KE3 could not be committed",
    "unanswered": "counted, but no KE2 left this node (leadership lost, record unreadable)",
}
OUTCOMES = frozenset({*_ERROR_OUTCOMES.values(), "ok", "not_leader", "unavailable", "invalid"})


def outcome_of_error(code: int) -> str:
    """The outcome label of a sealed ``VaultError`` code (unknown codes: ``bad_request``)."""
    return _ERROR_OUTCOMES.get(code, "bad_request")


_STATUS_OUTCOMES = {
    "FAILED_PRECONDITION": "not_leader",
    "UNAVAILABLE": "unavailable",
    "RESOURCE_EXHAUSTED": "unavailable",
}


def outcome_of_status(code: object) -> str:
    """The outcome label of an aborted call's gRPC status (anything else: ``invalid``)."""
    return _STATUS_OUTCOMES.get(getattr(code, "name", ""), "invalid")


class _RaftCollector(Collector):
    """Raft and state gauges computed from one status snapshot per scrape."""

    def __init__(self, status: StatusSource) -> None:
        self._status = status

    def collect(self) -> Iterable[GaugeMetricFamily]:
        s = self._status()
        yield GaugeMetricFamily(
            "bkv_raft_is_leader", "1 while this node is the Raft leader", value=s.role == "leader"
        )
        yield GaugeMetricFamily("bkv_raft_term", "Current Raft term", value=s.term)
        yield GaugeMetricFamily("bkv_raft_commit_index", "Raft commit index", value=s.commit_index)
        yield GaugeMetricFamily(
            "bkv_raft_last_applied", "Last log index applied", value=s.last_applied
        )
        yield GaugeMetricFamily(
            "bkv_raft_apply_lag",
            "Committed entries not yet applied",
            value=max(s.commit_index - s.last_applied, 0),
        )
        yield GaugeMetricFamily("bkv_vault_accounts", "Accounts in the state", value=s.accounts)


class VaultMetrics(MetricsEndpoint):
    """The node's counters and histograms; cheap to update from any thread."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        super().__init__(registry)
        self.requests = Counter(
            "bkv_vault_requests",
            "Vault.Handle calls by protocol step and outcome",
            ["step", "outcome"],
            registry=self.registry,
        )
        self.attempts_counted = Counter(
            "bkv_vault_attempts_counted",
            "Password guesses committed through Raft before KE2",
            registry=self.registry,
        )
        self.deposits_destroyed = Counter(
            "bkv_vault_deposits_destroyed",
            "Key deposits destroyed after the attempt limit",
            registry=self.registry,
        )
        self.attempt_fates = Counter(
            "bkv_vault_attempts",
            "Counted attempts by how they ended (fate); a wrong-password client lapses",
            ["fate"],
            registry=self.registry,
        )
        self.commit_seconds = Histogram(
            "bkv_raft_commit_seconds",
            "Time for a command to commit and apply through Raft",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        for step in STEPS.values():  # export zeros, so dashboards see every series
            for outcome in OUTCOMES:
                self.requests.labels(step=step, outcome=outcome)
        for fate in FATES:
            self.attempt_fates.labels(fate=fate)

    def watch_raft(self, status: StatusSource) -> None:
        """Export the Raft gauges, read from ``status()`` at every scrape."""
        self.registry.register(_RaftCollector(status))

    def watch_open_attempts(self, count: Callable[[], int]) -> None:
        """Export the counted attempts still open (a session waiting for its KE3)."""
        gauge = Gauge("bkv_vault_attempts_open",
                      "Counted attempts whose login session is still open",
                      registry=self.registry)
        gauge.set_function(lambda: float(count()))

    def attempt_ended(self, fate: str) -> None:
        """Record the fate of one counted attempt (called exactly once per attempt)."""
        if fate in FATES:
            self.attempt_fates.labels(fate=fate).inc()

    def request(self, message_type: int, outcome: str) -> None:
        step = STEPS.get(message_type)
        if step is not None and outcome in OUTCOMES:
            self.requests.labels(step=step, outcome=outcome).inc()

    def committed(self, command: st.Command, result: st.ApplyResult, started: float) -> None:
        """Record one submit: its latency, and the guess or destruction it committed."""
        self.commit_seconds.observe(time.monotonic() - started)
        if (isinstance(command, st.BeginAttempt) and result.outcome == st.Outcome.GRANTED
                and not result.repeated):  # a re-delivered guess counts nothing new
            self.attempts_counted.inc()
        # Only the command that destroyed the record reports its attempt count; a
        # BeginAttempt on an already-destroyed record reports none (attempts == 0).
        if result.outcome == st.Outcome.DESTROYED and result.attempts > 0:
            self.deposits_destroyed.inc()
