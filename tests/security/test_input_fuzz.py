"""Malformed, oversized, replayed and misdirected input to every gRPC method of Vault and ChatD.

Each case expects a precise gRPC status or a sealed protocol error, a server
that still answers afterwards, and no change of the replicated state where
none is due. ``UNKNOWN`` is never acceptable: it is what gRPC reports when a
handler raised an unexpected exception. ``INTERNAL`` is gRPC's own answer to a
request body that is not protobuf at all (the handler never runs).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

from bkv_api.v1 import envelope_pb2 as pb
from bkv_protocol import deposit, opaque, sealing, tokens
from bkv_protocol.ksf import IDENTITY_KSF
from bkv_tools.launcher import LocalCluster
from client_sdk.config import ClientConfig
from tests.security.conftest import (
    RPC_TIMEOUT,
    converged_digest,
    direct_client,
    leader_address,
    new_account,
    node_status,
    signing_key,
)
from tests.vault.conftest import VaultTestClient

pytestmark = pytest.mark.cluster

C = grpc.StatusCode
VAULT_HANDLE = "/bkv.v1.Vault/Handle"
VAULT_STATUS = "/bkv.v1.Vault/Status"
CHATD_FORWARD = "/bkv.v1.ChatD/Forward"
CHATD_STATUS = "/bkv.v1.ChatD/ClusterStatus"
# Allowed outcomes per method for arbitrary bytes (never UNKNOWN = unhandled exception).
ALLOWED = {
    VAULT_HANDLE: {C.INVALID_ARGUMENT, C.INTERNAL},
    VAULT_STATUS: {C.OK, C.INTERNAL},
    CHATD_FORWARD: {C.UNAUTHENTICATED, C.PERMISSION_DENIED, C.INVALID_ARGUMENT, C.INTERNAL},
    CHATD_STATUS: {C.OK, C.INTERNAL},
}
FUZZ = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
BIG = 1 << 22


class Raw:
    """Raw-bytes gRPC calls (identity serializers) to the leader and to one ChatD."""

    def __init__(self, cluster: LocalCluster, config: ClientConfig) -> None:
        opts = [("grpc.max_send_message_length", BIG), ("grpc.max_receive_message_length", BIG)]
        self.vault = grpc.insecure_channel(leader_address(cluster), options=opts)
        self.chatd = grpc.insecure_channel(config.chatd[0], options=opts)
        signing = signing_key(config)
        self.token = tokens.mint_token(signing, "fuzz-account")

    def call(self, method: str, payload: bytes, token: bool = True) -> grpc.StatusCode:
        channel = self.vault if method.startswith("/bkv.v1.Vault/") else self.chatd
        metadata = [("bkv-account-token", self.token)] if token else None
        try:
            channel.unary_unary(method)(payload, timeout=RPC_TIMEOUT, metadata=metadata)
        except grpc.RpcError as err:
            code: grpc.StatusCode = err.code()
            return code
        return C.OK

    def close(self) -> None:
        self.vault.close()
        self.chatd.close()


@pytest.fixture(scope="module")
def raw(sec_cluster: LocalCluster, sec_config: ClientConfig) -> Iterator[Raw]:
    r = Raw(sec_cluster, sec_config)
    yield r
    r.close()


@pytest.fixture(scope="module")
def baseline(sec_cluster: LocalCluster) -> bytes:
    """The replicated state before this module's fuzzing (which must not change it)."""
    return converged_digest(sec_cluster)


@pytest.fixture()
def client(sec_cluster: LocalCluster, sec_config: ClientConfig) -> Iterator[VaultTestClient]:
    c = direct_client(sec_cluster, sec_config)
    yield c
    c.close()


def _still_serving(cluster: LocalCluster) -> None:
    for node_id in cluster.nodes(0):
        assert node_status(cluster.node(node_id)["grpc_address"]) is not None, node_id


@FUZZ
@given(payload=hs.binary(max_size=2048), method=hs.sampled_from(sorted(ALLOWED)))
def test_random_bytes_every_method(
    baseline: bytes, raw: Raw, payload: bytes, method: str
) -> None:
    assert raw.call(method, payload) in ALLOWED[method]


@FUZZ
@given(
    account=hs.text(max_size=300),
    shard=hs.integers(0, 2**32 - 1),
    mtype=hs.integers(0, 2**31 - 1),
    sealed=hs.binary(max_size=512),
)
def test_structured_envelopes(
    raw: Raw, account: str, shard: int, mtype: int, sealed: bytes
) -> None:
    body = pb.SealedRequest(account=account, shard=shard, type=mtype, sealed=sealed)  # type: ignore[arg-type]
    payload = body.SerializeToString()
    assert raw.call(VAULT_HANDLE, payload) == C.INVALID_ARGUMENT  # never opens
    assert raw.call(CHATD_FORWARD, payload) in {C.PERMISSION_DENIED, C.INVALID_ARGUMENT}


INNER_ACCOUNT = "fuzz-inner-unregistered"
STEPS = [pb.REGISTER_START, pb.REGISTER_FINISH, pb.LOGIN_START, pb.LOGIN_FINISH]


@FUZZ
@given(plain=hs.binary(max_size=1024), mtype=hs.sampled_from(STEPS))
def test_random_plaintext_inside_a_valid_seal(
    baseline: bytes, client: VaultTestClient, plain: bytes, mtype: int
) -> None:
    """Past the HPKE layer: the sealed ClientRequest itself is garbage."""
    sealed = sealing.seal_request(client.fleet_public_key, INNER_ACCOUNT, 0, mtype, plain)
    request = pb.SealedRequest(account=INNER_ACCOUNT, shard=0, type=mtype, sealed=sealed)  # type: ignore[arg-type]
    try:
        response = client.stub.Handle(request, timeout=RPC_TIMEOUT)
    except grpc.RpcError as err:
        assert _code(err) == C.INVALID_ARGUMENT
    else:  # it happened to parse as a request with a 32-byte response key
        assert response.sealed


@FUZZ
@given(
    mtype=hs.sampled_from(STEPS),
    first=hs.binary(max_size=200),
    second=hs.binary(max_size=200),
    text=hs.text(max_size=300),
)
def test_random_fields_inside_a_valid_request(
    baseline: bytes, client: VaultTestClient, mtype: int, first: bytes, second: bytes, text: str
) -> None:
    """Well-formed envelopes whose protocol fields have random contents and lengths."""
    bodies: dict[int, dict[str, object]] = {
        pb.REGISTER_START: {"register_start": pb.RegisterStart(registration_request=first)},
        pb.REGISTER_FINISH: {"register_finish": pb.RegisterFinish(
            registration_record=first, key_deposit=second, ksf=text)},
        pb.LOGIN_START: {"login_start": pb.LoginStart(ke1=first)},
        pb.LOGIN_FINISH: {"login_finish": pb.LoginFinish(session_id=first, ke3=second)},
    }
    envelope, key = _sealed(client, INNER_ACCOUNT, mtype, **bodies[mtype])
    reply = _reply(client, envelope, key)
    if reply.WhichOneof("body") == "error":
        assert reply.error.code in {
            pb.VaultError.BAD_REQUEST, pb.VaultError.NOT_REGISTERED, pb.VaultError.SESSION_EXPIRED
        }, reply.error
    else:  # random bytes that form a valid point give a (harmless) registration response
        assert reply.WhichOneof("body") == "register_start"


def test_fuzzing_changed_nothing(raw: Raw, sec_cluster: LocalCluster, baseline: bytes) -> None:
    before = baseline
    for method in ALLOWED:
        for payload in (b"", b"\xff" * 64, b"\x0a\xff\xff\xff\xff\x0f", os.urandom(1024)):
            assert raw.call(method, payload) in ALLOWED[method] | {C.OK}
            assert raw.call(method, payload, token=False) in ALLOWED[method] | {C.OK}
    assert converged_digest(sec_cluster) == before
    _still_serving(sec_cluster)


def test_oversized_messages(raw: Raw, sec_cluster: LocalCluster) -> None:
    huge = pb.SealedRequest(account="a", type=pb.LOGIN_START, sealed=os.urandom(70_000))
    assert raw.call(VAULT_HANDLE, huge.SerializeToString()) == C.RESOURCE_EXHAUSTED
    assert raw.call(CHATD_FORWARD, huge.SerializeToString()) == C.RESOURCE_EXHAUSTED
    long_account = pb.SealedRequest(account="x" * 300, type=pb.LOGIN_START, sealed=b"s")
    assert raw.call(VAULT_HANDLE, long_account.SerializeToString()) == C.INVALID_ARGUMENT
    _still_serving(sec_cluster)


def _sealed(client: VaultTestClient, account: str, mtype: int, **body: object) -> tuple[
    pb.SealedRequest, bytes
]:
    key = sealing.new_response_key()
    return client.seal(account, mtype, pb.ClientRequest(response_key=key, **body)), key  # type: ignore[arg-type]


def _reply(client: VaultTestClient, envelope: pb.SealedRequest, key: bytes) -> pb.VaultReply:
    response = client.stub.Handle(envelope, timeout=RPC_TIMEOUT)
    return pb.VaultReply.FromString(
        sealing.open_reply(key, envelope.account, envelope.shard, envelope.type, response.sealed)
    )


def _code(call: grpc.RpcError) -> grpc.StatusCode:
    code: grpc.StatusCode = call.code()
    return code


NON_CANONICAL = b"\xff" * 32  # not a valid ristretto255 encoding
IDENTITY = b"\x00" * 32  # the identity element, refused by the protocol


def test_invalid_points_and_fields_are_refused_without_state_change(
    client: VaultTestClient, sec_cluster: LocalCluster
) -> None:
    account = new_account("points")
    client.register(account, b"pw", os.urandom(32))
    before = converged_digest(sec_cluster)
    good_record, _ = _record(account)
    _, probe = opaque.client_start_registration(b"pw")
    ticket = client.call(account, pb.REGISTER_START, register_start=pb.RegisterStart(
        registration_request=probe)).register_start.registration_ticket
    bad_cases: list[tuple[int, dict[str, object]]] = [
        (pb.REGISTER_START, {"register_start": pb.RegisterStart(registration_request=bad)})
        for bad in (NON_CANONICAL, IDENTITY, b"\x01" * 33)
    ]
    bad_cases += [
        # Guard: KE1 points are validated before BeginAttempt is committed.
        (pb.LOGIN_START, {"login_start": pb.LoginStart(ke1=NON_CANONICAL + os.urandom(64))}),
        (pb.LOGIN_START, {"login_start": pb.LoginStart(ke1=os.urandom(64) + IDENTITY)}),
        (pb.LOGIN_START, {"login_start": pb.LoginStart(ke1=os.urandom(97))}),
        (pb.REGISTER_FINISH, {"register_finish": pb.RegisterFinish(
            registration_record=NON_CANONICAL + good_record[32:],
            key_deposit=deposit.seal_deposit(os.urandom(64), account, os.urandom(32)),
            ksf=IDENTITY_KSF.descriptor, registration_ticket=ticket)}),
        (pb.REGISTER_FINISH, {"register_finish": pb.RegisterFinish(
            registration_record=good_record, key_deposit=b"short", ksf=IDENTITY_KSF.descriptor,
            registration_ticket=ticket)}),
        (pb.REGISTER_FINISH, {"register_finish": pb.RegisterFinish(
            registration_record=good_record,
            key_deposit=deposit.seal_deposit(os.urandom(64), account, os.urandom(32)),
            ksf="k" * 10_000, registration_ticket=ticket)}),
        (pb.LOGIN_FINISH, {"login_finish": pb.LoginFinish(session_id=os.urandom(17),
                                                          ke3=os.urandom(64))}),
    ]
    for mtype, body in bad_cases:
        envelope, key = _sealed(client, account, mtype, **body)
        reply = _reply(client, envelope, key)
        assert reply.WhichOneof("body") == "error", (mtype, body)
        assert reply.error.code == pb.VaultError.BAD_REQUEST, (mtype, reply.error)
    # A response key of the wrong size can't carry a sealed reply: gRPC status instead.
    envelope = client.seal(account, pb.LOGIN_START, pb.ClientRequest(
        response_key=b"k" * 31, login_start=pb.LoginStart(ke1=os.urandom(96))))
    with pytest.raises(grpc.RpcError) as err:
        client.stub.Handle(envelope, timeout=RPC_TIMEOUT)
    assert _code(err.value) == C.INVALID_ARGUMENT
    assert converged_digest(sec_cluster) == before
    assert client.recover(account, b"pw")  # no attempt was spent by any of the above


def _record(account: str) -> tuple[bytes, bytes]:
    """A well-formed registration record made against a throwaway server key set."""
    keys = opaque.generate_server_keys()
    state, request = opaque.client_start_registration(b"pw")
    response = opaque.server_registration_response(keys, request, account.encode())
    record, export_key = opaque.client_finish_registration(
        state, response, ksf=IDENTITY_KSF, client_identity=account.encode()
    )
    return bytes(record), bytes(export_key)


def test_envelopes_cannot_be_moved_to_another_account_type_or_shard(
    client: VaultTestClient, sec_cluster: LocalCluster, sec_config: ClientConfig
) -> None:
    victim, attacker = new_account("victim"), new_account("attacker")
    client.register(victim, b"pw", os.urandom(32))
    before = converged_digest(sec_cluster)
    envelope, _ = _sealed(client, victim, pb.LOGIN_START,
                          login_start=pb.LoginStart(ke1=opaque.client_start_login(b"x")[1]))
    moved = [
        pb.SealedRequest(account=attacker, shard=0, type=pb.LOGIN_START, sealed=envelope.sealed),
        pb.SealedRequest(account=victim, shard=0, type=pb.REGISTER_START, sealed=envelope.sealed),
        pb.SealedRequest(account=victim, shard=1, type=pb.LOGIN_START, sealed=envelope.sealed),
    ]
    for request in moved:
        with pytest.raises(grpc.RpcError) as err:
            client.stub.Handle(request, timeout=RPC_TIMEOUT)
        assert _code(err.value) == C.INVALID_ARGUMENT
    # Through ChatD: a token for one account can't carry another account's envelope.
    signing = signing_key(sec_config)
    with grpc.insecure_channel(sec_config.chatd[0]) as channel:
        forward = channel.unary_unary(
            CHATD_FORWARD, request_serializer=pb.SealedRequest.SerializeToString,
            response_deserializer=pb.SealedResponse.FromString)
        with pytest.raises(grpc.RpcError) as err:
            forward(envelope, timeout=RPC_TIMEOUT,
                    metadata=[("bkv-account-token", tokens.mint_token(signing, attacker))])
        assert _code(err.value) == C.PERMISSION_DENIED
    assert converged_digest(sec_cluster) == before


def test_login_finish_replay_and_session_misuse(
    client: VaultTestClient, sec_cluster: LocalCluster
) -> None:
    account, other = new_account("replay"), new_account("other")
    backup_key = os.urandom(32)
    client.register(account, b"pw", backup_key)
    client.register(other, b"pw", os.urandom(32))

    # KE3 for a session id nobody issued.
    envelope, key = _sealed(client, account, pb.LOGIN_FINISH, login_finish=pb.LoginFinish(
        session_id=os.urandom(16), ke3=os.urandom(64)))
    assert _reply(client, envelope, key).error.code == pb.VaultError.SESSION_EXPIRED

    login = client.login_start(account, b"pw")
    ke3, _session_key, _export = opaque.client_finish_login(
        login.state, login.reply.ke2, ksf=IDENTITY_KSF, context=opaque.PRODUCT_CONTEXT,
        client_identity=account.encode())
    # The session presented under another account is refused and left intact (SessionTable.take).
    envelope, key = _sealed(client, other, pb.LOGIN_FINISH, login_finish=pb.LoginFinish(
        session_id=login.reply.session_id, ke3=ke3))
    assert _reply(client, envelope, key).error.code == pb.VaultError.SESSION_EXPIRED

    envelope, key = _sealed(client, account, pb.LOGIN_FINISH, login_finish=pb.LoginFinish(
        session_id=login.reply.session_id, ke3=ke3))
    first = _reply(client, envelope, key)
    assert first.WhichOneof("body") == "login_finish"
    after_first = converged_digest(sec_cluster)
    # Replaying the very same sealed LOGIN_FINISH: sessions are single use.
    for _ in range(2):
        again = _reply(client, envelope, key)
        assert again.error.code == pb.VaultError.SESSION_EXPIRED
    assert converged_digest(sec_cluster) == after_first
    assert client.recover(account, b"pw") == backup_key
