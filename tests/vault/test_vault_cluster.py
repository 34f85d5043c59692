"""End to end against a real 3-node shard: the guess limit, leader-only answers, envelope checks."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import grpc
import pytest

from bkv_api.v1 import envelope_pb2 as pb
from bkv_protocol import deposit, opaque, sealing
from bkv_protocol.ksf import IDENTITY_KSF
from tests.vault.conftest import TEST_ATTEMPT_LIMIT, Cluster, VaultCallError, VaultTestClient

pytestmark = pytest.mark.cluster
Code = pb.VaultError.Code


def _account() -> str:
    return f"acct-{secrets.token_hex(6)}"


@pytest.fixture
def client(cluster: Cluster) -> Iterator[VaultTestClient]:
    c = VaultTestClient(cluster.wait_for_leader(), cluster.fleet_public_key)
    try:
        yield c
    finally:
        c.close()


def _digest(cluster: Cluster, address: str) -> bytes:
    status = cluster.status(address)
    assert status is not None
    return bytes(status.state_digest)


def test_register_then_recover_releases_the_backup_key(client: VaultTestClient) -> None:
    account, key = _account(), secrets.token_bytes(32)
    assert client.register(account, b"correct horse", key) == TEST_ATTEMPT_LIMIT
    assert client.recover(account, b"correct horse") == key
    # Success reset the counter: the next guess leaves limit-1.
    login = client.login_start(account, b"correct horse")
    assert login.reply.attempts_left == TEST_ATTEMPT_LIMIT - 1
    assert login.reply.ksf == "identity"
    assert client.login_finish(account, login) == key


def test_wrong_password_decrements_and_limit_destroys(client: VaultTestClient) -> None:
    account, key = _account(), secrets.token_bytes(32)
    client.register(account, b"right", key)
    for left in range(TEST_ATTEMPT_LIMIT - 1, -1, -1):
        with pytest.raises(VaultCallError) as err:
            client.recover(account, b"wrong")
        assert err.value.code == Code.LOGIN_FAILED
        assert err.value.attempts_left == left
    # The limit is reached: no KE2 ever again, even with the right password.
    with pytest.raises(VaultCallError) as err:
        client.login_start(account, b"right")
    assert err.value.code == Code.KEY_DESTROYED


def test_ke1_without_ke3_counts_as_a_guess(client: VaultTestClient) -> None:
    account, key = _account(), secrets.token_bytes(32)
    client.register(account, b"pw", key)
    lefts = [client.login_start(account, b"guess").reply.attempts_left for _ in range(3)]
    assert lefts == [TEST_ATTEMPT_LIMIT - 1 - i for i in range(TEST_ATTEMPT_LIMIT)]
    with pytest.raises(VaultCallError) as err:
        client.login_start(account, b"pw")
    assert err.value.code == Code.KEY_DESTROYED


def test_unregistered_account(client: VaultTestClient) -> None:
    with pytest.raises(VaultCallError) as err:
        client.login_start(_account(), b"pw")
    assert err.value.code == Code.NOT_REGISTERED


def test_session_is_single_use_and_bound_to_its_account(client: VaultTestClient) -> None:
    alice, bob, key = _account(), _account(), secrets.token_bytes(32)
    client.register(alice, b"pw-a", key)
    client.register(bob, b"pw-b", secrets.token_bytes(32))
    login = client.login_start(alice, b"pw-a")
    # Bob presenting Alice's session id gets nothing and leaves her session intact.
    with pytest.raises(VaultCallError) as err:
        client.call(
            bob,
            pb.LOGIN_FINISH,
            login_finish=pb.LoginFinish(session_id=login.reply.session_id, ke3=bytes(64)),
        )
    assert err.value.code == Code.SESSION_EXPIRED
    assert client.login_finish(alice, login) == key
    with pytest.raises(VaultCallError) as err:
        client.login_finish(alice, login)
    assert err.value.code == Code.SESSION_EXPIRED


def test_followers_refuse_with_a_leader_hint(cluster: Cluster) -> None:
    leader = cluster.wait_for_leader()
    followers = [c["grpc_address"] for c in cluster.configs if c["grpc_address"] != leader]
    assert len(followers) == 2
    for address in followers:
        c = VaultTestClient(address, cluster.fleet_public_key)
        try:
            with pytest.raises(grpc.RpcError) as err:
                c.login_start(_account(), b"pw")
        finally:
            c.close()
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert err.value.details() == "not leader"
        assert dict(err.value.trailing_metadata() or ())["bkv-leader"] == leader


def _handle(client: VaultTestClient, envelope: pb.SealedRequest) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as err:
        client.stub.Handle(envelope, timeout=10)
    code: grpc.StatusCode = err.value.code()
    return code


def test_bad_envelopes_are_invalid_argument_and_change_nothing(
    cluster: Cluster, client: VaultTestClient
) -> None:
    leader = cluster.wait_for_leader()
    alice = _account()
    client.register(alice, b"pw", secrets.token_bytes(32))
    before = _digest(cluster, leader)
    _, ke1 = opaque.client_start_login(b"pw")
    body = pb.ClientRequest(
        response_key=sealing.new_response_key(), login_start=pb.LoginStart(ke1=ke1)
    )
    good = client.seal(alice, pb.LOGIN_START, body)
    bad = {
        "garbage": pb.SealedRequest(
            account=alice, shard=0, type=pb.LOGIN_START, sealed=secrets.token_bytes(200)
        ),
        "cross-account": pb.SealedRequest(
            account=_account(), shard=0, type=pb.LOGIN_START, sealed=good.sealed
        ),
        "cross-step": pb.SealedRequest(
            account=alice, shard=0, type=pb.LOGIN_FINISH, sealed=good.sealed
        ),
        "wrong-shard": pb.SealedRequest(
            account=alice, shard=1, type=pb.LOGIN_START, sealed=good.sealed
        ),
        "unknown-type": pb.SealedRequest(account=alice, shard=0, type=9, sealed=good.sealed),  # type: ignore[arg-type]
        "empty-account": pb.SealedRequest(
            account="", shard=0, type=pb.REGISTER_START, sealed=good.sealed
        ),
        "body-not-matching-type": client.seal(alice, pb.REGISTER_START, body),
    }
    for name, envelope in bad.items():
        assert _handle(client, envelope) == grpc.StatusCode.INVALID_ARGUMENT, name
    assert _digest(cluster, leader) == before
    # The untouched original still works, and only it counted a guess.
    reply = client.stub.Handle(good, timeout=10)
    assert reply.sealed
    assert _digest(cluster, leader) != before


def test_malformed_bodies_get_a_sealed_bad_request(client: VaultTestClient) -> None:
    account = _account()
    state, request = opaque.client_start_registration(b"pw")
    started = client.call(
        account, pb.REGISTER_START, register_start=pb.RegisterStart(registration_request=request)
    ).register_start
    response, ticket = started.registration_response, started.registration_ticket
    record, export_key = opaque.client_finish_registration(
        state, response, ksf=IDENTITY_KSF, client_identity=account.encode()
    )
    good_deposit = deposit.seal_deposit(export_key, account, bytes(32))
    weak_ksf = "argon2id;v=19;m=8;t=1;p=1"  # below the production floor
    for bad_record, bad_deposit, ksf in [
        (bytes(191), good_deposit, "identity"),
        (bytes(192), good_deposit, "identity"),  # not a valid client public key
        (record, good_deposit[:-1], "identity"),
        (record, good_deposit, weak_ksf),
        (record, good_deposit, "x" * 300),
    ]:
        with pytest.raises(VaultCallError) as err:
            client.call(
                account,
                pb.REGISTER_FINISH,
                register_finish=pb.RegisterFinish(
                    registration_record=bad_record, key_deposit=bad_deposit, ksf=ksf,
                    registration_ticket=ticket,
                ),
            )
        assert err.value.code == Code.BAD_REQUEST
    # None of them registered anything.
    with pytest.raises(VaultCallError) as err:
        client.login_start(account, b"pw")
    assert err.value.code == Code.NOT_REGISTERED
    with pytest.raises(VaultCallError) as err:
        client.call(account, pb.LOGIN_START, login_start=pb.LoginStart(ke1=bytes(10)))
    assert err.value.code == Code.BAD_REQUEST


def test_status_reports_the_shard(cluster: Cluster) -> None:
    leader = cluster.wait_for_leader()
    statuses = [cluster.status(c["grpc_address"]) for c in cluster.configs]
    assert all(s is not None and s.healthy and s.leader_address == leader for s in statuses)
    roles = sorted(s.role for s in statuses if s is not None)
    assert roles.count("leader") == 1
