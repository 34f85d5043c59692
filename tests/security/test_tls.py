"""Transport security against real processes: TLS device -> ChatD, mutual TLS ChatD <-> vault.

One local cluster is created with TLS (the launcher's certificates). Every
refusal below is checked next to an accepted call of the same shape, so each
test fails if the protection it names is switched off.
"""

from __future__ import annotations

import secrets
import stat
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest

from bkv_api.v1 import envelope_pb2, services_pb2, services_pb2_grpc
from bkv_ops import tls, tls_certs
from bkv_protocol.ksf import IDENTITY_KSF
from bkv_protocol.sharding import shard_for
from bkv_protocol.tokens import mint_token
from bkv_tools.launcher import LocalCluster, node_status
from chatd_proxy.config import ChatDConfig
from chatd_proxy.server import ChatDServer
from client_sdk.config import ClientConfig
from client_sdk.errors import VaultUnavailable
from client_sdk.vault_client import VaultClient
from tests.cluster.conftest import running_cluster

pytestmark = pytest.mark.cluster

PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="module")
def tls_cluster() -> Iterator[LocalCluster]:
    with running_cluster("bkv-tls-test-", attempt_limit=3, tls=True) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def config(tls_cluster: LocalCluster) -> ClientConfig:
    return ClientConfig.load(tls_cluster.client_config_path)


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second CA with leaves of every role: right names, wrong issuer."""
    out = tmp_path_factory.mktemp("other-ca")
    tls_certs.ensure_bundle(out, [
        tls_certs.Identity(tls.ROLE_VAULT_NODE, "impostor", ("localhost",), ("127.0.0.1",)),
        tls_certs.Identity(tls.ROLE_CHATD, "chatd-impostor", ("localhost",), ("127.0.0.1",)),
        tls_certs.Identity(tls.ROLE_OPS, "ops"),
    ])
    return out


def leader(cluster: LocalCluster) -> str:
    for view in cluster.status():
        if view.status is not None and view.status.role == "leader":
            return view.grpc_address
    pytest.fail("no leader")


def status_code(address: str, settings: tls.ClientTls | None) -> grpc.StatusCode:
    with tls.open_channel(address, settings) as channel:
        try:
            services_pb2_grpc.VaultStub(channel).Status(services_pb2.StatusRequest(), timeout=5)
        except grpc.RpcError as err:
            code: grpc.StatusCode = err.code()
            return code
    return grpc.StatusCode.OK


def digest(cluster: LocalCluster) -> bytes:
    st = node_status(leader(cluster), tls=cluster.vault_tls)
    assert st is not None
    return bytes(st.state_digest)


# ---- device -> ChatD ----------------------------------------------------------------


def test_client_with_the_cluster_ca_recovers_a_key(config: ClientConfig) -> None:
    assert config.ca_file is not None and config.tls_server_name == tls.CHATD_SERVER_NAME
    account = f"tls-{secrets.token_hex(4)}"
    key = secrets.token_bytes(32)
    with VaultClient(config, ksf=IDENTITY_KSF) as client:
        client.register(account, key, PASSWORD)
        assert client.recover(account, PASSWORD) == key


@pytest.mark.parametrize("how", ["no-ca", "other-ca"])
def test_client_that_cannot_verify_chatd_sends_nothing(
    how: str, tls_cluster: LocalCluster, config: ClientConfig, other_ca: Path
) -> None:
    if how == "no-ca":  # plaintext client against the TLS port
        wrong = ClientConfig(fleet_public_key=config.fleet_public_key, shard_count=1,
                             chatd=config.chatd, deadline_seconds=3.0,
                             token_signing_key_file=config.token_signing_key_file)
    else:
        wrong = ClientConfig(fleet_public_key=config.fleet_public_key, shard_count=1,
                             chatd=config.chatd, deadline_seconds=3.0,
                             token_signing_key_file=config.token_signing_key_file,
                             ca_file=other_ca / tls.CA_FILE,
                             tls_server_name=tls.CHATD_SERVER_NAME)
    before = digest(tls_cluster)
    with VaultClient(wrong, ksf=IDENTITY_KSF) as client, pytest.raises(VaultUnavailable) as info:
        client.register(f"tls-{secrets.token_hex(4)}", secrets.token_bytes(32), PASSWORD)
    message = str(info.value)
    assert "\n" not in message and "unreachable" in message
    if how == "other-ca":
        assert "does not verify against ca_file" in message
    assert digest(tls_cluster) == before  # nothing reached the vault


def test_chatd_health_needs_tls(tls_cluster: LocalCluster) -> None:
    address = tls_cluster.chatd_addresses()[0]
    good = tls_cluster.chatd_tls
    assert good is not None
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    def check(settings: tls.ClientTls | None) -> grpc.StatusCode:
        with tls.open_channel(address, settings) as channel:
            try:
                health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                          timeout=5)
            except grpc.RpcError as err:
                code: grpc.StatusCode = err.code()
                return code
        return grpc.StatusCode.OK

    assert check(good) == grpc.StatusCode.OK
    assert check(None) == grpc.StatusCode.UNAVAILABLE
    # a vault-node certificate is not a ChatD's: the role name does not match
    assert check(tls.ClientTls(good.ca_file, server_name=tls.VAULT_SERVER_NAME)) \
        == grpc.StatusCode.UNAVAILABLE


# ---- ChatD -> vault node ------------------------------------------------------------


def test_vault_node_admits_only_chatd_and_ops_certificates(
    tls_cluster: LocalCluster, other_ca: Path
) -> None:
    address = leader(tls_cluster)
    certs = tls_cluster.state_dir / "tls"
    chatd_name = tls_cluster.process_names()[-1]
    node_name = tls_cluster.nodes()[0]
    ok = grpc.StatusCode.OK
    assert status_code(address, tls.bundle_client(certs / chatd_name, tls.VAULT_SERVER_NAME)) == ok
    assert status_code(address, tls_cluster.vault_tls) == ok
    refused = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.PERMISSION_DENIED}
    cases = {
        "plaintext": None,
        "no client certificate": tls.ClientTls(certs / tls.CA_FILE,
                                               server_name=tls.VAULT_SERVER_NAME),
        "client certificate of another CA": tls.ClientTls(
            certs / tls.CA_FILE, other_ca / "chatd-impostor" / tls.CERT_FILE,
            other_ca / "chatd-impostor" / tls.KEY_FILE, tls.VAULT_SERVER_NAME),
        "vault-node certificate as a client": tls.bundle_client(certs / node_name,
                                                                tls.VAULT_SERVER_NAME),
    }
    for what, settings in cases.items():
        assert status_code(address, settings) in refused, what


def test_role_guard_refuses_a_client_certificate_without_the_chatd_role(
    tls_cluster: LocalCluster, tmp_path: Path
) -> None:
    """A leaf of the right CA that may act as a client but names no admitted role."""
    ca_dir = tls_cluster.state_dir / "tls"
    authority = tls_certs._load_authority(ca_dir / tls.CA_FILE,
                                          ca_dir / tls.CA_KEY_DIR / tls.CA_KEY_FILE)
    from tests.security.test_tls_certs import client_leaf_with_role

    cert, key = client_leaf_with_role(authority, tls.ROLE_VAULT_NODE)
    tls.write_public(tmp_path / "c.pem", cert)
    tls.write_private(tmp_path / "k.pem", key)
    settings = tls.ClientTls(ca_dir / tls.CA_FILE, tmp_path / "c.pem", tmp_path / "k.pem",
                             tls.VAULT_SERVER_NAME)
    assert status_code(leader(tls_cluster), settings) == grpc.StatusCode.PERMISSION_DENIED


class _Impostor(services_pb2_grpc.VaultServicer):  # type: ignore[misc]
    def __init__(self) -> None:
        self.calls = 0

    def Handle(self, request: Any, context: Any) -> Any:
        self.calls += 1
        return envelope_pb2.SealedResponse(sealed=b"forged")


def test_chatd_refuses_a_vault_node_certified_by_another_ca(
    tls_cluster: LocalCluster, config: ClientConfig, other_ca: Path
) -> None:
    impostor = _Impostor()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    services_pb2_grpc.add_VaultServicer_to_server(impostor, server)
    creds = tls.ServerTls(other_ca / "impostor" / tls.CERT_FILE,
                          other_ca / "impostor" / tls.KEY_FILE).credentials(
        require_client_auth=False)
    port = server.add_secure_port("127.0.0.1:0", creds)
    server.start()
    certs = tls_cluster.state_dir / "tls"
    chatd_name = tls_cluster.process_names()[-1]
    assert config.token_signing_key_file is not None
    signing = bytes.fromhex(config.token_signing_key_file.read_text().strip())
    from bkv_protocol import tokens

    chatd = ChatDServer(ChatDConfig.from_mapping({
        "listen": "127.0.0.1:0", "datacenter": "dc9",
        "token_public_key": tokens.public_key_from(signing).hex(),
        "deadline_seconds": 2.0,
        "shards": [{"id": 0, "nodes": [f"127.0.0.1:{port}"]}],
        "tls_cert_file": str(certs / chatd_name / tls.CERT_FILE),
        "tls_key_file": str(certs / chatd_name / tls.KEY_FILE),
        "tls_ca_file": str(certs / tls.CA_FILE),
    }))
    try:
        chatd_port = chatd.start()
        account = "impostor-test"
        request = envelope_pb2.SealedRequest(account=account, shard=shard_for(account, 1),
                                             sealed=b"x" * 64)
        address = f"127.0.0.1:{chatd_port}"
        with tls.open_channel(address, tls_cluster.chatd_tls) as channel, \
                pytest.raises(grpc.RpcError) as info:
            services_pb2_grpc.ChatDStub(channel).Forward(
                request, metadata=[("bkv-account-token", mint_token(signing, account))],
                timeout=10)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert impostor.calls == 0
    finally:
        chatd.stop(grace=0.5)
        server.stop(0)


# ---- files ---------------------------------------------------------------------------


def test_private_keys_are_owner_only(tls_cluster: LocalCluster) -> None:
    certs = tls_cluster.state_dir / "tls"
    keys = sorted(certs.rglob("*key*.pem"))
    assert len(keys) == len(tls_cluster.process_names()) + 2  # + ops + CA
    for key in keys:
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    assert stat.S_IMODE((certs / tls.CA_KEY_DIR).stat().st_mode) == 0o700


def test_status_commands_speak_tls(
    tls_cluster: LocalCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    """`bkv cluster status` reaches the nodes (ops certificate) and the ChatDs (CA)."""
    from bkv_tools.cli import main

    state = str(tls_cluster.state_dir)
    assert main(["cluster", "status", "--state-dir", state, "--json"]) == 0
    assert main(["cluster", "status", "--config", str(tls_cluster.client_config_path),
                 "--json"]) == 0
    assert "leader" in capsys.readouterr().out
