"""ChatD's gRPC health: SERVING only while every shard has a vault node that knows its leader."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import grpc
import pytest

from bkv_protocol import tokens
from bkv_tools import compose_layout
from chatd_proxy.config import ChatDConfig
from chatd_proxy.health import NOT_SERVING, SERVING
from chatd_proxy.server import ChatDServer
from tests.vault.conftest import Cluster, health_check, started_cluster, wait_health

SERVICES = ("", "bkv.v1.ChatD")
WAIT_SECONDS = 10.0


def _dead_address() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def _chatd(shards: list[list[str]]) -> ChatDServer:
    public_key = tokens.generate_signing_key()[1]
    server = ChatDServer(ChatDConfig.from_mapping({
        "listen": "127.0.0.1:0",
        "datacenter": "dc1",
        "token_public_key": public_key.hex(),
        "deadline_seconds": 1.0,
        "rate_limit": {"per_account_per_second": 1.0, "burst": 5},
        "shards": [{"id": i, "nodes": nodes} for i, nodes in enumerate(shards)],
    }))
    server.start()
    return server


def check(port: int, service: str) -> int | grpc.StatusCode:
    return health_check(f"127.0.0.1:{port}", service)


def wait_status(port: int, want: int, deadline: float = WAIT_SECONDS) -> float:
    return wait_health(f"127.0.0.1:{port}", SERVICES, want, deadline)


@pytest.fixture(scope="module")
def vault(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A one-node shard: it elects itself at once."""
    with started_cluster(tmp_path_factory.mktemp("chatd-health"), 1) as c:
        yield c


@pytest.mark.cluster
def test_serving_until_the_shard_loses_its_nodes(vault: Cluster) -> None:
    node = vault.configs[0]["grpc_address"]
    healthy = _chatd([[_dead_address(), node]])  # one dead node of two is fine
    half = _chatd([[node], [_dead_address()]])  # a shard without nodes is not
    try:
        wait_status(healthy.port, SERVING)
        assert compose_layout.healthy("chatd", f"127.0.0.1:{healthy.port}")
        assert not compose_layout.healthy("chatd", f"127.0.0.1:{half.port}")
        half.health.update()  # one full probe round, synchronously
        assert not half.health.serving
        assert all(check(half.port, s) == NOT_SERVING for s in SERVICES)
        assert check(healthy.port, "bkv.v1.Vault") == grpc.StatusCode.NOT_FOUND

        vault.kill(node)
        took = wait_status(healthy.port, NOT_SERVING)
        print(f"ChatD NOT_SERVING {took:.2f}s after its shard went down")
    finally:
        half.stop(0)
        healthy.stop(0)
    assert not healthy.health.serving


def test_no_vault_at_all_is_not_serving() -> None:
    server = _chatd([[_dead_address()]])
    try:
        server.health.update()
        assert all(check(server.port, s) == NOT_SERVING for s in SERVICES)
    finally:
        server.stop(0)
