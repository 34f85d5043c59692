"""One real local cluster per module (5 vault nodes over 3 DCs + 3 ChatD), and raw protocol steps.

The cluster accepts the Identity KSF so that tests spend their time on the
vault, not on Argon2id; everything else is the production code path.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bkv_api.v1 import envelope_pb2 as pb
from bkv_protocol import opaque
from bkv_protocol.ksf import IDENTITY_KSF
from bkv_protocol.sharding import shard_for
from bkv_tools.launcher import LocalCluster
from client_sdk.config import ClientConfig
from client_sdk.vault_client import VaultClient
from client_sdk.vault_replies import open_vault_reply, seal_client_request
from client_sdk.vault_transport import ChatDTransport, TokenSource

UP_TIMEOUT = 150.0


def start_cluster(state: Path, shards: int = 1, **options: Any) -> LocalCluster:
    cluster = LocalCluster(state, shards, allow_identity_ksf=True, **options)
    try:
        cluster.up(timeout=UP_TIMEOUT)
    except BaseException:
        cluster.down(grace=3)
        raise
    return cluster


@contextlib.contextmanager
def running_cluster(prefix: str, shards: int = 1, **options: Any) -> Iterator[LocalCluster]:
    """A cluster started in a new temporary folder, stopped on exit (module fixtures)."""
    # Not tmp_path_factory: pytest prunes old numbered temp dirs, which another
    # pytest run on the machine may do while this cluster still uses its state.
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        c = start_cluster(Path(tmp) / "state", shards, **options)
        try:
            yield c
        finally:
            c.down(grace=5)


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with running_cluster("bkv-cluster-test-") as c:
        yield c


@pytest.fixture(scope="module")
def config(cluster: LocalCluster) -> ClientConfig:
    return ClientConfig.load(cluster.client_config_path)


@pytest.fixture()
def client(config: ClientConfig) -> Iterator[VaultClient]:
    with VaultClient(config, ksf=IDENTITY_KSF) as c:
        yield c


class RawClient:
    """Single protocol steps (e.g. KE1 without KE3), through the real ChatD path."""

    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        self.transport = ChatDTransport(config.chatd, config.deadline_seconds)
        self.tokens = TokenSource(config)

    def close(self) -> None:
        self.transport.close()

    def call(self, account: str, message_type: int, body: Any) -> Any:
        shard = shard_for(account, self.config.shard_count)
        request, key = seal_client_request(
            self.config.fleet_public_key, account, shard, message_type, body
        )
        sealed = self.transport.forward(request, self.tokens.token_for(account))
        return open_vault_reply(key, account, shard, message_type, sealed)

    def login_start(self, account: str, password: bytes) -> Any:
        """Send KE1 only; returns the LoginStartReply (raises the mapped VaultError)."""
        _, ke1 = opaque.client_start_login(password)
        return self.call(account, pb.LOGIN_START, pb.LoginStart(ke1=ke1))


@pytest.fixture()
def raw(config: ClientConfig) -> Iterator[RawClient]:
    r = RawClient(config)
    yield r
    r.close()


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``predicate`` (bounded in time); fail the test with ``what`` on timeout."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout:g}s waiting for {what}")


def digests(cluster: LocalCluster, shard: int = 0) -> dict[str, bytes | None]:
    return {
        v.node_id: (v.status.state_digest if v.status is not None else None)
        for v in cluster.status()
        if v.shard == shard
    }


def converged(cluster: LocalCluster, shard: int = 0) -> bool:
    """Every node of the shard answers, has applied everything and holds the same digest."""
    views = [v for v in cluster.status() if v.shard == shard]
    if any(v.status is None for v in views):
        return False
    statuses = [v.status for v in views if v.status is not None]
    return len({s.state_digest for s in statuses}) == 1 and len(
        {s.last_applied for s in statuses}
    ) == 1
