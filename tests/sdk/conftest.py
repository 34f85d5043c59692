"""An in-process vault for SDK protocol tests: the real vault service, HSM and state machine.

Only Raft is left out: commands apply to one ``VaultState`` at once, so these
tests exercise the client against the vault's real protocol logic in
milliseconds. The cluster smoke test covers the full path through ChatD.
"""

from __future__ import annotations

import secrets
import threading
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
from vault_node import state as st
from vault_node.config import NodeConfig
from vault_node.hsm import FleetHsm, SoftwareMasterKey, init_fleet
from vault_node.service import VaultService
from vault_node.sessions import SessionTable

ATTEMPT_LIMIT = 10


class ImmediateReplica:
    """A one-member 'replica': every command commits as soon as it is submitted."""

    def __init__(self) -> None:
        self.state = st.VaultState()
        self._lock = threading.Lock()

    def submit(self, command: Any, timeout: float | None = None) -> st.ApplyResult:
        with self._lock:
            return self.state.apply(command)

    def is_leader(self) -> bool:
        return True

    def leader_address(self) -> str | None:
        return None

    def status(self) -> Any:
        return None


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
    replica: ImmediateReplica
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
    peer = {
        "node_id": "dc1-n1",
        "datacenter": "dc1",
        "raft_address": "127.0.0.1:1",
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
    replica = ImmediateReplica()
    sessions = SessionTable(max_sessions=100, ttl_seconds=30.0)
    services_pb2_grpc.add_VaultServicer_to_server(VaultService(cfg, hsm, replica, sessions), server)
    server.start()
    try:
        yield InProcessVault(address, hsm.fleet_public_key, replica, sessions)
    finally:
        server.stop(grace=None).wait(5)
