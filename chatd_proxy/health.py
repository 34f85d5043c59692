"""The standard ``grpc.health.v1.Health`` service of ChatD.

ChatD is SERVING (for ``""`` and ``bkv.v1.ChatD``) when, for every shard, at
least one vault node says it is SERVING, i.e. knows its Raft leader: then a
``Forward`` can reach someone who answers. The check asks the nodes' own
health service, which costs the node a dictionary lookup (``Vault.Status``
hashes the whole state). Per shard it asks every node in parallel, once per
:data:`HEALTH_INTERVAL_SECONDS` (:data:`RECOVERY_INTERVAL_SECONDS` while not
serving). Every answer or silence also feeds the router's quorum view, so a
shard that lost its majority is named as such without waiting for a request to
time out. Shutdown turns ChatD NOT_SERVING for good.
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bkv_ops.health import NOT_SERVING, OVERALL, SERVING, HealthReporter
from bkv_ops.tls import open_channel
from chatd_proxy.routing import CHANNEL_OPTIONS, ShardRouter

CHATD_SERVICE_NAME = "bkv.v1.ChatD"
VAULT_SERVICE_NAME = "bkv.v1.Vault"
SERVICE_NAMES = (OVERALL, CHATD_SERVICE_NAME)
HEALTH_INTERVAL_SECONDS = 1.0
RECOVERY_INTERVAL_SECONDS = 0.25  # while NOT_SERVING: notice a new leader soon
PROBE_TIMEOUT_SECONDS = 1.0
__all__ = ["NOT_SERVING", "SERVING", "ChatDHealth", "ShardProbe"]


class ShardProbe:
    """Asks the vault nodes of one shard whether any of them can answer."""

    def __init__(self, router: ShardRouter, timeout: float = PROBE_TIMEOUT_SECONDS) -> None:
        self._router = router
        self._timeout = timeout
        self._channels: dict[str, grpc.Channel] = {}
        self._stubs: dict[str, health_pb2_grpc.HealthStub] = {}
        self._follow_router()

    def _follow_router(self) -> list[str]:
        """Probe the router's current nodes (they change with the shard's membership)."""
        nodes = list(self._router.nodes)
        if set(nodes) != set(self._channels):
            for address in [a for a in self._channels if a not in nodes]:
                self._channels.pop(address).close()
                self._stubs.pop(address)
            for address in (a for a in nodes if a not in self._channels):
                # the router's short reconnect backoff: a node that comes back is seen soon
                channel = open_channel(address, self._router.tls, CHANNEL_OPTIONS)
                self._channels[address] = channel
                self._stubs[address] = health_pb2_grpc.HealthStub(channel)
        return nodes

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()

    def has_leader(self) -> bool:
        """True if some node of the shard is SERVING; every node is asked, in parallel.

        Asking all (not only the usual node) keeps the router's quorum view fresh,
        so a lost majority is named within a couple of seconds.
        """
        return self._ask(self._follow_router())

    def _ask(self, addresses: Sequence[str]) -> bool:
        request = health_pb2.HealthCheckRequest(service=VAULT_SERVICE_NAME)
        calls = [(a, self._stubs[a].Check.future(request, timeout=self._timeout))
                 for a in addresses]
        found = False
        for address, call in calls:
            try:
                reply = call.result()
            except grpc.RpcError:
                self._router.note(address, False)
                continue
            self._router.note(address, True)
            found = found or reply.status == SERVING
        return found


class ChatDHealth(HealthReporter):
    """Publishes "every shard has a reachable leader" as ChatD's health status."""

    def __init__(
        self,
        routers: Sequence[ShardRouter],
        interval: float = HEALTH_INTERVAL_SECONDS,
        recovery_interval: float = RECOVERY_INTERVAL_SECONDS,
    ) -> None:
        self._probes = [ShardProbe(r) for r in routers]
        super().__init__(
            lambda: all(probe.has_leader() for probe in self._probes),
            SERVICE_NAMES,
            interval,
            recovery_interval,
            thread_name="chatd-health",
        )

    def stop(self) -> None:
        """NOT_SERVING from now on; stop probing and close the probe channels."""
        super().stop()
        for probe in self._probes:
            probe.close()
