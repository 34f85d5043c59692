"""The standard ``grpc.health.v1.Health`` service of ChatD.

ChatD is SERVING (for ``""`` and ``bkv.v1.ChatD``) when, for every shard, at
least one vault node says it is SERVING, i.e. knows its Raft leader: then a
``Forward`` can reach someone who answers. The check asks the nodes' own
health service, which costs the node a dictionary lookup (``Vault.Status``
hashes the whole state). Per shard it asks one node first (the router's cached
leader, else the node that last said SERVING) and all nodes in parallel only if
that one does not, so a steady shard costs one call per
:data:`HEALTH_INTERVAL_SECONDS` (:data:`RECOVERY_INTERVAL_SECONDS` while not
serving). Shutdown turns ChatD NOT_SERVING for good.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from chatd_proxy.routing import CHANNEL_OPTIONS, ShardRouter

log = logging.getLogger("bkv.chatd.health")

CHATD_SERVICE_NAME = "bkv.v1.ChatD"
VAULT_SERVICE_NAME = "bkv.v1.Vault"
SERVICE_NAMES = (health.OVERALL_HEALTH, CHATD_SERVICE_NAME)
HEALTH_INTERVAL_SECONDS = 1.0
RECOVERY_INTERVAL_SECONDS = 0.25  # while NOT_SERVING: notice a new leader soon
PROBE_TIMEOUT_SECONDS = 0.5
SERVING: int = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING: int = health_pb2.HealthCheckResponse.NOT_SERVING


class ShardProbe:
    """Asks the vault nodes of one shard whether any of them can answer."""

    def __init__(self, router: ShardRouter, timeout: float = PROBE_TIMEOUT_SECONDS) -> None:
        self._router = router
        self._timeout = timeout
        self._last_good: str | None = None
        # the router's short reconnect backoff: a node that comes back is seen within a second
        self._channels = {a: grpc.insecure_channel(a, options=CHANNEL_OPTIONS)
                          for a in router.nodes}
        self._stubs = {a: health_pb2_grpc.HealthStub(ch) for a, ch in self._channels.items()}

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()

    def has_leader(self) -> bool:
        """True if some node of the shard is SERVING; one call when the usual node is."""
        first = self._router.leader or self._last_good
        if first is not None and first in self._stubs and self._ask([first]):
            return True
        return self._ask([a for a in self._router.nodes if a != first])

    def _ask(self, addresses: Sequence[str]) -> bool:
        request = health_pb2.HealthCheckRequest(service=VAULT_SERVICE_NAME)
        calls = [(a, self._stubs[a].Check.future(request, timeout=self._timeout))
                 for a in addresses]
        found = False
        for address, call in calls:
            try:
                reply = call.result()
            except grpc.RpcError:
                continue
            if reply.status == SERVING and not found:
                found = True
                self._last_good = address
        return found


class ChatDHealth:
    """Publishes "every shard has a reachable leader" as ChatD's health status."""

    def __init__(
        self,
        routers: Sequence[ShardRouter],
        interval: float = HEALTH_INTERVAL_SECONDS,
        recovery_interval: float = RECOVERY_INTERVAL_SECONDS,
    ) -> None:
        self._probes = [ShardProbe(r) for r in routers]
        self._interval = interval
        self._recovery_interval = recovery_interval
        self.servicer: Any = health.HealthServicer()
        self._status = NOT_SERVING
        for name in SERVICE_NAMES:  # the servicer starts with "" SERVING: not yet known
            self.servicer.set(name, NOT_SERVING)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="chatd-health", daemon=True)

    @property
    def serving(self) -> bool:
        return self._status == SERVING

    def start(self) -> None:
        self._thread.start()

    def update(self) -> None:
        """Probe every shard once and publish the result if it changed."""
        try:
            ok = all(probe.has_leader() for probe in self._probes)
        except Exception:  # a failed round means "can't tell", never a dead thread
            log.exception("health probe failed")
            ok = False
        status = SERVING if ok else NOT_SERVING
        if status == self._status or self._stop.is_set():
            return
        self._status = status
        for name in SERVICE_NAMES:
            self.servicer.set(name, status)
        log.info("health: %s", "SERVING" if ok else "NOT_SERVING")

    def stop(self) -> None:
        """NOT_SERVING from now on; stop probing and close the probe channels."""
        self._stop.set()
        self._status = NOT_SERVING
        self.servicer.enter_graceful_shutdown()
        if self._thread.is_alive():
            self._thread.join(timeout=5.0)
        for probe in self._probes:
            probe.close()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.update()
            pause = self._interval if self.serving else self._recovery_interval
            if self._stop.wait(pause):
                return
