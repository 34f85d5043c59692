"""Every use of a deposit's secrets is counted or reveals nothing (SECURITY.md's table).

A hostile ChatD (the real ChatD certificate, raw gRPC, no account token) and a
hostile device (through ChatD with the account's real token) try the attacks the
accounting table lists: REGISTER_START as an uncounted password oracle against
a KE2 already obtained, REGISTER_FINISH with forged tickets, and the ops probe
certificate calling the vault. One TLS cluster with a small attempt limit.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bkv_api.v1 import envelope_pb2 as pb
from bkv_api.v1 import services_pb2
from bkv_ops import tls
from bkv_protocol import deposit, opaque, sealing, tokens
from bkv_protocol.ksf import IDENTITY_KSF
from bkv_tools.launcher import LocalCluster, node_status
from client_sdk.config import ClientConfig
from tests.cluster.conftest import running_cluster
from tests.security.conftest import signing_key, wait_until
from tests.security.oracle import (
    candidate_matches,
    masking_key_from_login,
    masking_key_from_registration,
)
from tests.vault.conftest import VaultTestClient

pytestmark = pytest.mark.cluster

LIMIT = 3
PASSWORD = b"correct horse battery"
WRONG = b"wrong guess"
CANDIDATES = [b"123456", b"password", PASSWORD, b"letmein", PASSWORD, b"qwerty",
              b"correct horse", b"dragon", b"monkey", b"111111", b"abc123", PASSWORD]

Send = Callable[[pb.SealedRequest], pb.SealedResponse]


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with running_cluster("bkv-accounting-test-", attempt_limit=LIMIT, tls=True) as c:
        yield c


@pytest.fixture(scope="module")
def config(cluster: LocalCluster) -> ClientConfig:
    return ClientConfig.load(cluster.client_config_path)


def _leader(cluster: LocalCluster) -> str:
    found: list[str] = []

    def has_leader() -> bool:
        for view in cluster.status():
            if view.status is not None and view.status.role == "leader":
                found.append(view.grpc_address)
                return True
        return False

    wait_until(has_leader, 30, "a leader")
    return found[-1]


def _chatd_cert(cluster: LocalCluster) -> tls.ClientTls:
    """The real ChatD certificate, as a ChatD turned hostile holds it."""
    name = cluster.process_names()[-1]
    return tls.bundle_client(cluster.state_dir / "tls" / name, tls.VAULT_SERVER_NAME)


def _digest(cluster: LocalCluster) -> bytes:
    st = node_status(_leader(cluster), tls=cluster.vault_tls)
    assert st is not None
    return bytes(st.state_digest)


class Hostile:
    """Seals requests with only the fleet's public key and delivers them through ``send``."""

    def __init__(self, sealer: VaultTestClient, send: Send) -> None:
        self.sealer, self.send = sealer, send

    def call(self, account: str, mtype: pb.MessageType, **body: object) -> pb.VaultReply:
        key = sealing.new_response_key()
        envelope = self.sealer.seal(account, mtype, pb.ClientRequest(response_key=key, **body))
        sealed = self.send(envelope).sealed
        return pb.VaultReply.FromString(sealing.open_reply(key, account, 0, mtype, sealed))

    def register_start(self, account: str, password: bytes
                       ) -> tuple[opaque.RegistrationState, pb.RegisterStartReply]:
        state, request = opaque.client_start_registration(password)
        reply = self.call(account, pb.REGISTER_START,
                          register_start=pb.RegisterStart(registration_request=request))
        assert reply.WhichOneof("body") == "register_start", reply
        return state, reply.register_start

    def register(self, account: str, password: bytes, key: bytes) -> None:
        state, start = self.register_start(account, password)
        record, export_key = opaque.client_finish_registration(
            state, start.registration_response, ksf=IDENTITY_KSF,
            client_identity=account.encode())
        reply = self.call(account, pb.REGISTER_FINISH, register_finish=pb.RegisterFinish(
            registration_record=record, key_deposit=deposit.seal_deposit(export_key, account, key),
            ksf=IDENTITY_KSF.descriptor, registration_ticket=start.registration_ticket))
        assert reply.register_finish.attempt_limit == LIMIT, reply

    def login_start(self, account: str, password: bytes
                    ) -> tuple[opaque.ClientLoginState, pb.LoginStartReply]:
        state, ke1 = opaque.client_start_login(password)
        reply = self.call(account, pb.LOGIN_START, login_start=pb.LoginStart(ke1=ke1))
        assert reply.WhichOneof("body") == "login_start", reply
        return state, reply.login_start

    def login_finish(self, account: str, state: opaque.ClientLoginState,
                     start: pb.LoginStartReply) -> bytes:
        ke3, session_key, export_key = opaque.client_finish_login(
            state, start.ke2, ksf=IDENTITY_KSF, context=opaque.PRODUCT_CONTEXT,
            client_identity=account.encode())
        reply = self.call(account, pb.LOGIN_FINISH, login_finish=pb.LoginFinish(
            session_id=start.session_id, ke3=ke3))
        released = deposit.open_from_session(session_key, account,
                                             reply.login_finish.sealed_deposit)
        return deposit.open_deposit(export_key, account, released)


@pytest.fixture(params=["leader-with-chatd-cert-no-token", "through-chatd-with-token"])
def hostile(request: pytest.FixtureRequest, cluster: LocalCluster,
            config: ClientConfig) -> Iterator[tuple[Hostile, str]]:
    account = f"oracle-{secrets.token_hex(5)}"
    sealer = VaultTestClient(_leader(cluster), config.fleet_public_key, tls=_chatd_cert(cluster))
    try:
        if request.param.startswith("leader"):
            def send(envelope: pb.SealedRequest) -> pb.SealedResponse:
                reply: pb.SealedResponse = sealer.stub.Handle(envelope, timeout=10)
                return reply
            yield Hostile(sealer, send), account
        else:
            with tls.open_channel(cluster.chatd_addresses()[0], cluster.chatd_tls) as channel:
                forward = channel.unary_unary(
                    "/bkv.v1.ChatD/Forward",
                    request_serializer=pb.SealedRequest.SerializeToString,
                    response_deserializer=pb.SealedResponse.FromString)
                token = tokens.mint_token(signing_key(config), account)

                def send(envelope: pb.SealedRequest) -> pb.SealedResponse:
                    reply: pb.SealedResponse = forward(
                        envelope, timeout=10, metadata=[("bkv-account-token", token)])
                    return reply
                yield Hostile(sealer, send), account
    finally:
        sealer.close()


def test_register_start_is_no_password_oracle(
    hostile: tuple[Hostile, str], cluster: LocalCluster
) -> None:
    """One counted KE2, then REGISTER_START evaluations of candidates: none tests the password."""
    attacker, account = hostile
    key = os.urandom(32)
    attacker.register(account, PASSWORD, key)
    _, counted = attacker.login_start(account, WRONG)  # the one guess the attacker pays for
    assert counted.attempts_left == LIMIT - 1
    before = _digest(cluster)
    hits = 0
    for candidate in CANDIDATES:
        state, start = attacker.register_start(account, candidate)
        mask = masking_key_from_registration(state, start.registration_response, account)
        hits += candidate_matches(counted.ke2, mask, _server_public_key(start, state, account))
    assert hits == 0  # 12 evaluations, 3 of them of the right password: no test
    assert _digest(cluster) == before  # and REGISTER_START changed no counter
    # Control: the check does find the password from the right evaluation, and only
    # the one guess above was counted.
    state, login = attacker.login_start(account, PASSWORD)
    assert login.attempts_left == LIMIT - 2
    assert candidate_matches(counted.ke2, masking_key_from_login(state, login.ke2),
                             _server_public_key_from(login.ke2, state))
    assert attacker.login_finish(account, state, login) == key


def _server_public_key(start: pb.RegisterStartReply, state: opaque.RegistrationState,
                       account: str) -> bytes:
    """The vault's AKE public key, as every registration response carries it."""
    return bytes(start.registration_response[32:64])


def _server_public_key_from(ke2: bytes, state: opaque.ClientLoginState) -> bytes:
    """Unmask with the honest client's key: the first 32 bytes are the server public key."""
    from bkv_protocol.opaque_messages import KE2, NPK, expand, xor

    parsed = KE2.parse(ke2)
    pad = expand(masking_key_from_login(state, ke2),
                 parsed.masking_nonce + b"CredentialResponsePad", NPK)
    return xor(pad, parsed.masked_response[:NPK])


def test_register_finish_needs_the_ticket_of_its_own_account(
    hostile: tuple[Hostile, str], cluster: LocalCluster
) -> None:
    attacker, account = hostile
    attacker.register(account, PASSWORD, os.urandom(32))
    state, start = attacker.register_start(account, b"new password")
    # another account's genuine ticket (fetched at the leader: a device has no other token)
    _, probe = opaque.client_start_registration(b"x")
    other = attacker.sealer.call(f"other-{secrets.token_hex(4)}", pb.REGISTER_START,
                                 register_start=pb.RegisterStart(registration_request=probe)
                                 ).register_start
    record, export_key = opaque.client_finish_registration(
        state, start.registration_response, ksf=IDENTITY_KSF, client_identity=account.encode())
    sealed_key = deposit.seal_deposit(export_key, account, os.urandom(32))
    ticket = start.registration_ticket
    before = _digest(cluster)
    for forged in (b"", ticket[:-1], ticket[:-1] + bytes([ticket[-1] ^ 1]),
                   other.registration_ticket, os.urandom(len(ticket))):
        reply = attacker.call(account, pb.REGISTER_FINISH, register_finish=pb.RegisterFinish(
            registration_record=record, key_deposit=sealed_key, ksf=IDENTITY_KSF.descriptor,
            registration_ticket=forged))
        assert reply.error.code == pb.VaultError.BAD_REQUEST, reply
        assert "ticket" in reply.error.message
    assert _digest(cluster) == before
    # the deposit is still the first one: the old password opens it
    state, login = attacker.login_start(account, PASSWORD)
    assert len(attacker.login_finish(account, state, login)) == 32


def test_ops_certificate_reads_status_and_health_only(
    cluster: LocalCluster, config: ClientConfig
) -> None:
    """The probe certificate can't relay a request: no attempt spent, nothing changes."""
    leader = _leader(cluster)
    chatd = VaultTestClient(leader, config.fleet_public_key, tls=_chatd_cert(cluster))
    ops = VaultTestClient(leader, config.fleet_public_key, tls=cluster.vault_tls)
    try:
        account = f"ops-{secrets.token_hex(5)}"
        chatd.register(account, PASSWORD, os.urandom(32))
        before = _digest(cluster)
        _, ke1 = opaque.client_start_login(WRONG)
        _, request = opaque.client_start_registration(WRONG)
        bodies: dict[int, dict[str, object]] = {
            pb.LOGIN_START: {"login_start": pb.LoginStart(ke1=ke1)},
            pb.REGISTER_START: {"register_start": pb.RegisterStart(registration_request=request)},
            pb.REGISTER_FINISH: {"register_finish": pb.RegisterFinish()},
            pb.LOGIN_FINISH: {"login_finish": pb.LoginFinish(session_id=bytes(16), ke3=bytes(64))},
        }
        for mtype, body in bodies.items():
            envelope = ops.seal(account, mtype, pb.ClientRequest(
                response_key=sealing.new_response_key(), **body))  # type: ignore[arg-type]
            with pytest.raises(grpc.RpcError) as err:
                ops.stub.Handle(envelope, timeout=10)
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED, mtype
        assert _digest(cluster) == before
        # what a probe needs still works, for the probe and for ChatD
        for client in (ops, chatd):
            status = client.stub.Status(services_pb2.StatusRequest(), timeout=10)
            assert status.role == "leader"
            health = health_pb2_grpc.HealthStub(client.channel).Check(
                health_pb2.HealthCheckRequest(), timeout=10)
            assert health.status == health_pb2.HealthCheckResponse.SERVING
        # no attempt was spent by the refused calls
        login = chatd.login_start(account, PASSWORD)
        assert login.reply.attempts_left == LIMIT - 1
        assert len(chatd.login_finish(account, login)) == 32
    finally:
        chatd.close()
        ops.close()


def test_every_vault_node_method_has_its_roles() -> None:
    """A method added later is refused to everyone until it is given roles on purpose."""
    from vault_node.server import METHOD_ROLES

    names = {f"/bkv.v1.Vault/{m.name}"
             for m in services_pb2.DESCRIPTOR.services_by_name["Vault"].methods}
    assert names <= set(METHOD_ROLES)
    assert METHOD_ROLES["/bkv.v1.Vault/Handle"] == (tls.ROLE_CHATD,)
    guard = tls.RoleGuard(METHOD_ROLES)
    assert guard.roles_for("/bkv.v1.Vault/NotYetThere") == frozenset()
    assert tls.ROLE_OPS not in guard.roles_for("/bkv.v1.Vault/Handle")
    assert tls.ROLE_VAULT_NODE not in set().union(*METHOD_ROLES.values())
