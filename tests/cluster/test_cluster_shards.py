"""Two shards: ChatD routes every account to its own shard's Raft group, and only there."""

from __future__ import annotations

import secrets
from collections import Counter
from pathlib import Path

import pytest

from bkv_protocol.ksf import IDENTITY_KSF
from bkv_protocol.sharding import shard_for
from bkv_tools.launcher import LocalCluster
from client_sdk.config import ClientConfig
from client_sdk.vault_client import VaultClient

from .conftest import converged, start_cluster, wait_until

pytestmark = pytest.mark.cluster


def _accounts_per_shard(cluster: LocalCluster) -> dict[int, set[int]]:
    seen: dict[int, set[int]] = {0: set(), 1: set()}
    for view in cluster.status():
        if view.status is not None:
            seen[view.shard].add(view.status.accounts)
    return seen


def test_accounts_route_to_their_shard(tmp_path: Path) -> None:
    cluster = start_cluster(tmp_path / "two-shards", shards=2)
    try:
        config = ClientConfig.load(cluster.client_config_path)
        assert config.shard_count == 2
        accounts = [f"user-{secrets.token_hex(4)}" for _ in range(8)]
        expected = Counter(shard_for(a, 2) for a in accounts)
        assert set(expected) == {0, 1} or len(accounts) < 4  # both shards get work
        keys = {a: secrets.token_bytes(32) for a in accounts}
        with VaultClient(config, ksf=IDENTITY_KSF) as client:
            for account in accounts:
                client.register(account, keys[account], "pw")
            for s in (0, 1):
                wait_until(lambda s=s: converged(cluster, s), 60, f"shard {s} to converge")
            assert _accounts_per_shard(cluster) == {0: {expected[0]}, 1: {expected[1]}}
            for account in accounts:
                assert client.recover(account, "pw") == keys[account]
    finally:
        cluster.down(grace=5)
