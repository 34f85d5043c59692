"""ChatD against real vault nodes: finding the leader, following hints, cluster status."""

from __future__ import annotations

import secrets
import socket
import time
from collections.abc import Iterator

import grpc
import pytest

from bkv_api.v1 import services_pb2, services_pb2_grpc
from bkv_protocol import tokens
from bkv_protocol.ksf import IDENTITY_KSF
from bkv_tools.launcher import LocalCluster
from chatd_proxy.config import ChatDConfig
from chatd_proxy.server import ChatDServer
from client_sdk.config import ClientConfig
from client_sdk.vault_client import VaultClient

pytestmark = pytest.mark.cluster


def _dead_address() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


@pytest.fixture()
def hinted_chatd(cluster: LocalCluster) -> Iterator[tuple[ChatDServer, str]]:
    """An extra ChatD whose node list starts with a dead address and then followers."""
    leader = cluster.leader(0)
    assert leader is not None
    followers = [cluster.node(n)["grpc_address"] for n in cluster.nodes(0) if n != leader]
    signing = bytes.fromhex((cluster.secrets_dir / "token-signing.key").read_text().strip())
    config = ChatDConfig.from_mapping({
        "listen": "127.0.0.1:0",
        "datacenter": "test",
        "token_public_key": tokens.public_key_from(signing).hex(),
        "deadline_seconds": 10.0,
        "shards": [{"id": 0, "nodes": [_dead_address(), *followers,
                                       cluster.node(leader)["grpc_address"]]}],
    })
    server = ChatDServer(config)
    port = server.start()
    try:
        yield server, f"127.0.0.1:{port}"
    finally:
        server.stop(0)


def test_chatd_finds_the_leader_past_dead_nodes_and_followers(
    cluster: LocalCluster, config: ClientConfig, hinted_chatd: tuple[ChatDServer, str]
) -> None:
    server, address = hinted_chatd
    direct = ClientConfig(
        fleet_public_key=config.fleet_public_key, shard_count=1, chatd=[address],
        deadline_seconds=20, token_signing_key_file=config.token_signing_key_file,
    )
    account, key = f"hint-{secrets.token_hex(4)}", secrets.token_bytes(32)
    with VaultClient(direct, ksf=IDENTITY_KSF) as client:
        client.register(account, key, "pw")
        assert client.recover(account, "pw") == key
    router = server.service._routers[0]
    assert router.leader == cluster.node(cluster.leader(0) or "")["grpc_address"]


def test_cluster_status_through_chatd(cluster: LocalCluster) -> None:
    # ChatD gives each node a short status timeout; on a loaded machine a first
    # connection can miss it, so ask again (bounded) until every node answered.
    with grpc.insecure_channel(cluster.chatd_addresses()[0]) as channel:
        for _ in range(10):
            reply = services_pb2_grpc.ChatDStub(channel).ClusterStatus(
                services_pb2.ClusterStatusRequest(), timeout=10
            )
            if not reply.unreachable:
                break
            time.sleep(0.5)
    assert list(reply.unreachable) == []
    assert sorted(n.node_id for n in reply.nodes) == sorted(cluster.nodes(0))
    assert sum(n.role == "leader" for n in reply.nodes) == 1
