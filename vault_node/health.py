"""The standard ``grpc.health.v1.Health`` service of a vault node.

A node is SERVING (for the whole server, ``""``, and for ``bkv.v1.Vault``) only
while it can answer a client: its replicated state is loaded (the replica loads
its snapshot and journal before the server starts), it knows a leader that is a
configured peer, be it itself or another node, and it is connected to a majority.
A candidate, or a node cut off from a majority, is NOT_SERVING, so orchestrators
and load balancers route around it. A daemon thread re-evaluates the state every
:data:`HEALTH_INTERVAL_SECONDS`; shutdown turns the node NOT_SERVING for good.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from grpc_health.v1 import health, health_pb2

from vault_node.config import NodeConfig
from vault_node.replication import ReplicatedVault

log = logging.getLogger("bkv.vault.health")

VAULT_SERVICE_NAME = "bkv.v1.Vault"
SERVICE_NAMES = (health.OVERALL_HEALTH, VAULT_SERVICE_NAME)
HEALTH_INTERVAL_SECONDS = 0.5
SERVING: int = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING: int = health_pb2.HealthCheckResponse.NOT_SERVING


def can_answer(cfg: NodeConfig, replica: ReplicatedVault) -> bool:
    """A configured leader is known and reachable, and this node reaches a majority.

    Both connection tests matter: a follower cut off from every peer never starts
    an election, so it names its dead leader forever; and once one peer is back it
    would still name that dead leader until its election timeout.
    """
    if cfg.peer_by_raft_address(replica.leader_address()) is None:
        return False
    return replica.leader_reachable()


class HealthReporter:
    """Publishes ``check()`` as the status of ``services``, re-evaluated periodically.

    Watchers are notified only on a change, so a stable node sends nothing.
    """

    def __init__(
        self,
        check: Callable[[], bool],
        services: tuple[str, ...] = SERVICE_NAMES,
        interval: float = HEALTH_INTERVAL_SECONDS,
    ) -> None:
        self._check = check
        self._services = services
        self._interval = interval
        self.servicer: Any = health.HealthServicer()
        self._status = NOT_SERVING
        for name in services:  # the servicer starts with "" SERVING: not yet true
            self.servicer.set(name, NOT_SERVING)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="vault-health", daemon=True)

    @property
    def serving(self) -> bool:
        return self._status == SERVING

    def start(self) -> None:
        self.update()
        self._thread.start()

    def update(self) -> None:
        """Evaluate ``check`` once and publish the result if it changed."""
        try:
            ok = bool(self._check())
        except Exception:  # a failing check means "can't answer", never a dead thread
            log.exception("health check failed")
            ok = False
        status = SERVING if ok else NOT_SERVING
        if status == self._status or self._stop.is_set():
            return
        self._status = status
        for name in self._services:
            self.servicer.set(name, status)
        log.info("health: %s", "SERVING" if ok else "NOT_SERVING")

    def stop(self) -> None:
        """NOT_SERVING from now on (also for late ``update`` calls); stop the thread."""
        self._stop.set()
        self._status = NOT_SERVING
        self.servicer.enter_graceful_shutdown()
        if self._thread.is_alive():
            self._thread.join(timeout=5.0)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self.update()
