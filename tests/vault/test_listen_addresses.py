"""Listen vs advertised addresses: ``grpc_listen`` / ``raft_bind`` parsing and a real cluster."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from bkv_api.v1 import services_pb2
from tests.vault.conftest import Cluster, VaultTestClient, init_fleet, write_node_configs
from vault_node.config import ConfigError, NodeConfig

GRPC = "n1.example:7100"
RAFT = "n1.example:7200"


def raw_config(**extra: Any) -> dict[str, Any]:
    peer = {"node_id": "n1", "datacenter": "dc1", "raft_address": RAFT, "grpc_address": GRPC}
    return {
        **peer,
        "shard": 0,
        "data_dir": "/var/lib/bkv/data",
        "fleet_file": "/run/bkv/fleet_sealed",
        "peers": [peer],
        **extra,
    }


def test_listen_addresses_default_to_the_advertised_ones() -> None:
    cfg = NodeConfig.from_mapping(raw_config())
    assert (cfg.grpc_listen, cfg.raft_bind) == (GRPC, RAFT)


def test_explicit_listen_addresses_leave_the_advertised_ones_alone() -> None:
    cfg = NodeConfig.from_mapping(
        raw_config(grpc_listen="0.0.0.0:7100", raft_bind="10.0.0.5:17200")
    )
    assert (cfg.grpc_listen, cfg.raft_bind) == ("0.0.0.0:7100", "10.0.0.5:17200")
    assert (cfg.grpc_address, cfg.raft_address) == (GRPC, RAFT)
    assert (cfg.self_peer.grpc_address, cfg.self_peer.raft_address) == (GRPC, RAFT)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"grpc_listen": "0.0.0.0"}, "'grpc_listen' must be host:port, got '0.0.0.0'"),
        ({"grpc_listen": ":7100"}, "'grpc_listen' must be host:port"),
        ({"raft_bind": "0.0.0.0:70000"}, "'raft_bind' must be host:port"),
        ({"raft_bind": "host:port"}, "'raft_bind' must be host:port"),
        ({"raft_bind": ""}, "'raft_bind' must be a non-empty string"),
        ({"grpc_listen": 7100}, "'grpc_listen' must be a non-empty string"),
        (
            {"grpc_listen": "0.0.0.0:7100", "raft_bind": "127.0.0.1:7100"},
            "'grpc_listen' and 'raft_bind' must not use the same port",
        ),
        (
            {"grpc_listen": "10.0.0.5:7300", "raft_bind": "10.0.0.5:7300"},
            "'grpc_listen' and 'raft_bind' must not use the same port",
        ),
    ],
)
def test_invalid_listen_addresses_give_one_line_errors(
    extra: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as err:
        NodeConfig.from_mapping(raw_config(**extra), where="node.toml")
    text = str(err.value)
    assert text.startswith("node.toml: ") and message in text and "\n" not in text


def test_same_port_on_distinct_hosts_is_allowed() -> None:
    cfg = NodeConfig.from_mapping(
        raw_config(grpc_listen="10.0.0.5:7300", raft_bind="10.0.0.6:7300")
    )
    assert cfg.grpc_listen.endswith(":7300") and cfg.raft_bind.endswith(":7300")


LOOPBACK_V4 = "0100007F"  # 127.0.0.1 as /proc/net/tcp prints it
V4_MAPPED = "0000000000000000FFFF0000"  # the ::ffff:0:0/96 prefix in /proc/net/tcp6


def listening_hosts(port: int) -> set[str]:
    """Local addresses (hex, as in /proc/net/tcp*) of the TCP sockets listening on ``port``."""
    hosts = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            host, _, port_hex = fields[1].partition(":")
            if fields[3] == "0A" and int(port_hex, 16) == port:  # 0A: LISTEN
                hosts.add(host.removeprefix(V4_MAPPED))  # gRPC may bind ::ffff:127.0.0.1
    return hosts




def advertise_localhost(configs: list[dict[str, Any]]) -> None:
    """Advertise ``localhost:P`` and bind ``127.0.0.1:P`` on every node; rewrite the files."""

    def named(address: str) -> str:
        return "localhost:" + address.rpartition(":")[2]

    peers = [
        {**p, "grpc_address": named(p["grpc_address"]), "raft_address": named(p["raft_address"])}
        for p in configs[0]["peers"]
    ]
    for cfg in configs:
        cfg["grpc_listen"], cfg["raft_bind"] = cfg["grpc_address"], cfg["raft_address"]
        cfg["grpc_address"], cfg["raft_address"] = named(cfg["grpc_address"]), named(
            cfg["raft_address"]
        )
        cfg["peers"] = peers
        path = Path(cfg["config_path"])
        path.write_text(tomli_w.dumps({k: v for k, v in cfg.items() if k != "config_path"}))


@pytest.mark.cluster
def test_cluster_listens_on_bind_addresses_and_advertises_names(tmp_path: Path) -> None:
    keys = init_fleet(tmp_path)
    configs = write_node_configs(tmp_path, 3)
    advertise_localhost(configs)
    for cfg in configs:
        loaded = NodeConfig.load(Path(cfg["config_path"]))
        assert loaded.grpc_listen.startswith("127.0.0.1:")
        assert loaded.grpc_address.startswith("localhost:")
    cluster = Cluster(tmp_path, keys, configs)
    cluster.start()
    try:
        leader = cluster.wait_for_leader()  # every node reports the same advertised address
        assert leader.startswith("localhost:")
        for cfg in configs:
            status = cluster.status(cfg["grpc_address"])
            assert isinstance(status, services_pb2.NodeStatus)
            assert status.leader_address == leader
            # only the configured loopback sockets, not "localhost"'s ::1 nor every interface
            for which in ("grpc_listen", "raft_bind"):
                port = int(cfg[which].rpartition(":")[2])
                assert listening_hosts(port) == {LOOPBACK_V4}, (which, cfg[which])
        client = VaultTestClient(leader, cluster.fleet_public_key)
        try:
            backup_key = secrets.token_bytes(32)
            assert client.register("listen-alice", b"pw", backup_key) > 0
            assert client.recover("listen-alice", b"pw") == backup_key
        finally:
            client.close()
    finally:
        cluster.stop()
