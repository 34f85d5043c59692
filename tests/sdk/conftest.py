"""An in-process vault for SDK protocol tests: the real vault service, HSM and Raft replica.

The replica is a one-member Raft group (real journal, real pysyncobj), so these
tests exercise the client against the vault's real protocol logic in
milliseconds; the transport goes straight to ``Vault.Handle``. The cluster smoke
test and tests/cluster cover the full path through ChatD and a 5-node group.
"""

from __future__ import annotations

import secrets
import socket
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from bkv_api.v1 import services_pb2_grpc
from client_sdk.config import ClientConfig
from client_sdk.vault_transport import map_status
from vault_node.config import NodeConfig
from vault_node.hsm.fleet import FleetHsm, SoftwareMasterKey, init_fleet
from vault_node.raft.replication import RaftConfig, ReplicatedVault
from vault_node.raft.transport_cipher import LinkKey
from vault_node.service.sessions import SessionTable
from vault_node.service.vault import VaultService

ATTEMPT_LIMIT = 10


class DirectVaultTransport:
    """Sends envelopes straight to ``Vault.Handle`` (no ChatD), recording each step sent."""

    def __init__(self, address: str) -> None:
        self._channel = grpc.insecure_channel(address)
        self._stub = services_pb2_grpc.VaultStub(self._channel)
        self.sent: list[int] = []
        self.tamper_reply = False
        self.before_send: Any = None

    def forward(self, request: Any, token: str) -> bytes:
        assert token  # the client always authenticates the account
        if self.before_send is not None:
            self.before_send(request)
        self.sent.append(request.type)
        try:
            sealed: bytes = self._stub.Handle(request, timeout=10).sealed
        except grpc.RpcError as err:
            raise map_status(err.code(), err.details()) from None
        if self.tamper_reply:
            sealed = sealed[:-1] + bytes([sealed[-1] ^ 0x01])
        return sealed

    def close(self) -> None:
        self._channel.close()


@dataclass
class InProcessVault:
    address: str
    fleet_public_key: bytes
    replica: ReplicatedVault
    sessions: SessionTable

    def client_config(self) -> ClientConfig:
        return ClientConfig(
            fleet_public_key=self.fleet_public_key,
            shard_count=1,
            chatd=[self.address],
            deadline_seconds=10.0,
            token="unused-by-the-direct-transport",
        )


@pytest.fixture(scope="module")
def vault(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessVault]:
    tmp: Path = tmp_path_factory.mktemp("vault")
    backend = SoftwareMasterKey(secrets.token_bytes(32))
    hsm = FleetHsm.open_fleet(backend, init_fleet(backend))
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    port = server.add_insecure_port("127.0.0.1:0")
    address = f"127.0.0.1:{port}"
    raft_port = socket.socket()
    raft_port.bind(("127.0.0.1", 0))
    raft_address = f"127.0.0.1:{raft_port.getsockname()[1]}"
    raft_port.close()
    peer = {
        "node_id": "dc1-n1",
        "datacenter": "dc1",
        "raft_address": raft_address,
        "grpc_address": address,
    }
    cfg = NodeConfig.from_mapping(
        {
            **peer,
            "shard": 0,
            "data_dir": str(tmp / "data"),
            "fleet_file": str(tmp / "fleet.sealed"),
            "attempt_limit": ATTEMPT_LIMIT,
            "allow_identity_ksf": True,
            "peers": [peer],
        }
    )
    replica = ReplicatedVault(
        RaftConfig(
            node_id="dc1-n1",
            self_address=raft_address,
            peer_addresses=[raft_address],
            data_dir=tmp / "raft",
            transport_secret=secrets.token_bytes(32),
            link_key=LinkKey.generate(),
        )
    )
    deadline = time.monotonic() + 15
    while not replica.is_leader():  # a one-member group elects itself
        assert time.monotonic() < deadline, "single-member Raft group elected no leader"
        time.sleep(0.05)
    sessions = SessionTable(max_sessions=100, ttl_seconds=30.0)
    services_pb2_grpc.add_VaultServicer_to_server(VaultService(cfg, hsm, replica, sessions), server)
    server.start()
    try:
        yield InProcessVault(address, hsm.fleet_public_key, replica, sessions)
    finally:
        server.stop(grace=None).wait(5)
        replica.close()
