"""Prometheus endpoints of real vault nodes: counts per step, Raft gauges, no identities."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import tomli_w

from bkv_tools.launcher_layout import free_ports
from tests.vault.conftest import (
    TEST_ATTEMPT_LIMIT,
    Cluster,
    Samples,
    VaultCallError,
    VaultTestClient,
    init_fleet,
    scrape,
    write_node_configs,
)
from vault_node.config import ConfigError, NodeConfig

ACCOUNT = "+15550001111-metrics"
DOOMED = "+15550002222-metrics"


def requests(samples: Samples, step: str, outcome: str) -> float:
    return samples.get(("bkv_vault_requests_total", (("outcome", outcome), ("step", step))), 0.0)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    state = tmp_path_factory.mktemp("vault-metrics")
    configs = write_node_configs(state, 3)
    for cfg, port in zip(configs, free_ports(len(configs)), strict=True):
        cfg["metrics_address"] = f"127.0.0.1:{port}"
        on_disk = {k: v for k, v in cfg.items() if k != "config_path"}
        Path(cfg["config_path"]).write_text(tomli_w.dumps(on_disk))
    c = Cluster(state, init_fleet(state), configs)
    c.start()
    try:
        c.wait_for_leader()
        yield c
    finally:
        c.stop()


@pytest.mark.cluster
def test_nodes_count_steps_and_expose_raft_state(cluster: Cluster) -> None:
    leader = cluster.wait_for_leader()
    client = VaultTestClient(leader, cluster.fleet_public_key)
    try:
        client.register(ACCOUNT, b"right", b"k" * 32)
        with pytest.raises(VaultCallError):
            client.recover(ACCOUNT, b"wrong")
        assert client.recover(ACCOUNT, b"right") == b"k" * 32
        client.register(DOOMED, b"right", b"d" * 32)
        for _ in range(TEST_ATTEMPT_LIMIT):
            with pytest.raises(VaultCallError):
                client.recover(DOOMED, b"wrong")
        with pytest.raises(VaultCallError):
            client.login_start(DOOMED, b"right")
    finally:
        client.close()
    follower = next(c for c in cluster.configs if c["grpc_address"] != leader)
    follower_client = VaultTestClient(follower["grpc_address"], cluster.fleet_public_key)
    try:
        with pytest.raises(grpc.RpcError) as err:
            follower_client.login_start(ACCOUNT, b"right")
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    finally:
        follower_client.close()

    scraped = {c["grpc_address"]: scrape(c["metrics_address"]) for c in cluster.configs}
    for text, samples in scraped.values():
        assert "+1555" not in text  # neither account appears anywhere
        label_values = {value for _, labels in samples for _, value in labels}
        assert not any("1555" in value for value in label_values)
    _, lead = scraped[leader]
    assert requests(lead, "register_start", "ok") == 2
    assert requests(lead, "register_finish", "ok") == 2
    assert requests(lead, "login_start", "ok") == 2 + TEST_ATTEMPT_LIMIT
    assert requests(lead, "login_finish", "wrong_password") == 1 + TEST_ATTEMPT_LIMIT
    assert requests(lead, "login_finish", "ok") == 1
    assert requests(lead, "login_start", "destroyed") == 1
    assert lead[("bkv_vault_attempts_counted_total", ())] == 2 + TEST_ATTEMPT_LIMIT
    assert lead[("bkv_vault_deposits_destroyed_total", ())] == 1
    assert lead[("bkv_raft_commit_seconds_count", ())] >= 4 + 2 + TEST_ATTEMPT_LIMIT
    assert lead[("bkv_vault_accounts", ())] == 2
    _, other = scraped[follower["grpc_address"]]
    assert requests(other, "login_start", "not_leader") == 1
    leaders = [s[("bkv_raft_is_leader", ())] for _, s in scraped.values()]
    assert sorted(leaders) == [0.0, 0.0, 1.0]
    for _, samples in scraped.values():
        assert samples[("bkv_raft_term", ())] >= 1
        assert samples[("bkv_raft_commit_index", ())] >= samples[("bkv_raft_last_applied", ())]
        assert samples[("bkv_raft_apply_lag", ())] >= 0


def test_metrics_address_is_validated(tmp_path: Path) -> None:
    cfg = write_node_configs(tmp_path, 1)[0]
    raw = {k: v for k, v in cfg.items() if k != "config_path"}
    assert NodeConfig.from_mapping(raw).metrics_address == ""
    raw["metrics_address"] = "127.0.0.1:9464"
    assert NodeConfig.from_mapping(raw).metrics_address == "127.0.0.1:9464"
    raw["metrics_address"] = "no-port"
    with pytest.raises(ConfigError, match="metrics_address"):
        NodeConfig.from_mapping(raw)
