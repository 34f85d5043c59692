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

from collections.abc import Callable

from bkv_ops.health import NOT_SERVING, OVERALL, SERVING, HealthReporter
from vault_node.config import NodeConfig
from vault_node.raft.replication import ReplicatedVault

VAULT_SERVICE_NAME = "bkv.v1.Vault"
SERVICE_NAMES = (OVERALL, VAULT_SERVICE_NAME)
HEALTH_INTERVAL_SECONDS = 0.5

__all__ = ["NOT_SERVING", "SERVING", "HealthReporter", "can_answer", "vault_health"]


def can_answer(cfg: NodeConfig, replica: ReplicatedVault) -> bool:
    """A configured leader is known and reachable, and this node reaches a majority.

    Both connection tests matter: a follower cut off from every peer never starts
    an election, so it names its dead leader forever; and once one peer is back it
    would still name that dead leader until its election timeout.
    """
    if cfg.peer_by_raft_address(replica.leader_address()) is None:
        return False
    return replica.leader_reachable()


def vault_health(check: Callable[[], bool]) -> HealthReporter:
    """The reporter a vault node registers: ``""`` and ``bkv.v1.Vault``."""
    return HealthReporter(check, SERVICE_NAMES, HEALTH_INTERVAL_SECONDS, thread_name="vault-health")
