"""One real local cluster (5 vault nodes over 3 DCs + 3 ChatDs) shared by the attack tests.

The attacks talk to the vault leader directly (an attacker who owns ChatD or the
network) or through ChatD (an attacker who owns a device). The attempt limit is
kept small so that exhausting a deposit is quick; the Identity KSF keeps tests
on the vault's logic instead of Argon2id. Everything else is the production path.
"""

from __future__ import annotations

import secrets
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from bkv_api.v1 import services_pb2, services_pb2_grpc
from bkv_tools.launcher import LocalCluster
from client_sdk.config import ClientConfig
from tests.vault.conftest import VaultTestClient

ATTEMPT_LIMIT = 3
UP_TIMEOUT = 150.0
RPC_TIMEOUT = 10.0


@pytest.fixture(scope="session")
def sec_cluster() -> Iterator[LocalCluster]:
    # Not tmp_path_factory: pytest may prune numbered temp dirs of a concurrent run.
    with tempfile.TemporaryDirectory(prefix="bkv-security-test-") as tmp:
        cluster = LocalCluster(
            Path(tmp) / "state", attempt_limit=ATTEMPT_LIMIT, allow_identity_ksf=True
        )
        try:
            cluster.up(timeout=UP_TIMEOUT)
            yield cluster
        finally:
            cluster.down(grace=5)


@pytest.fixture(scope="session")
def sec_config(sec_cluster: LocalCluster) -> ClientConfig:
    return ClientConfig.load(sec_cluster.client_config_path)


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``predicate`` (bounded in time); fail the test with ``what`` on timeout."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout:g}s waiting for {what}")


def node_status(address: str) -> services_pb2.NodeStatus | None:
    with grpc.insecure_channel(address) as channel:
        try:
            reply: services_pb2.NodeStatus = services_pb2_grpc.VaultStub(channel).Status(
                services_pb2.StatusRequest(), timeout=2.0
            )
            return reply
        except grpc.RpcError:
            return None


def leader_address(cluster: LocalCluster, timeout: float = 30.0) -> str:
    """The gRPC address of shard 0's current leader (bounded wait)."""
    found: list[str] = []

    def has_leader() -> bool:
        node_id = cluster.leader(0)
        if node_id is None:
            return False
        found.append(cluster.node(node_id)["grpc_address"])
        return True

    wait_until(has_leader, timeout, "a leader")
    return found[-1]


def converged_digest(cluster: LocalCluster, timeout: float = 20.0) -> bytes:
    """Wait until every running node of shard 0 holds the same state; return its digest."""
    seen: list[bytes] = []

    def same() -> bool:
        views = [v for v in cluster.status() if v.shard == 0 and v.running]
        statuses = [v.status for v in views]
        if not views or any(s is None for s in statuses):
            return False
        done = [s for s in statuses if s is not None]
        if len({s.state_digest for s in done}) != 1 or len({s.last_applied for s in done}) != 1:
            return False
        seen.append(done[0].state_digest)
        return True

    wait_until(same, timeout, "the shard to converge")
    return seen[-1]


def new_account(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(6)}"


def direct_client(cluster: LocalCluster, config: ClientConfig) -> VaultTestClient:
    """A client that talks ``Vault.Handle`` on the current leader, bypassing ChatD."""
    return VaultTestClient(leader_address(cluster), config.fleet_public_key)



def signing_key(config: ClientConfig) -> bytes:
    """The local cluster's token signing key (dev clusters let the device mint tokens)."""
    assert config.token_signing_key_file is not None
    return bytes.fromhex(config.token_signing_key_file.read_text().strip())
