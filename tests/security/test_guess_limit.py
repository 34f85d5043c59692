"""The guess limit under attack: a client that cheats still gets at most N KE2 per deposit.

Guards (``vault_node/service/vault.py`` ``_login_start``): ``BeginAttempt`` is committed
through Raft before KE2 is computed, and the state machine
(``vault_node/state.py``) refuses and erases the record once the counter has
reached the limit. Sessions are single use (``SessionTable.take``). Each test
counts every KE2 the attacker received and fails if it exceeds the limit, or if
the correct password still recovers the key afterwards.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from bkv_api.v1 import envelope_pb2 as pb
from bkv_protocol import group, opaque, sealing, tokens
from bkv_protocol.opaque_messages import NOE
from bkv_tools.launcher import LocalCluster
from client_sdk.config import ClientConfig
from tests.security.conftest import (
    ATTEMPT_LIMIT,
    RPC_TIMEOUT,
    converged_digest,
    direct_client,
    leader_address,
    new_account,
    signing_key,
    wait_until,
)
from tests.vault.conftest import LoginInProgress, VaultCallError, VaultTestClient

pytestmark = pytest.mark.cluster

PASSWORD = b"correct horse"
WRONG = b"wrong guess"


def _assert_destroyed(client: VaultTestClient, account: str) -> None:
    with pytest.raises(VaultCallError) as err:
        client.recover(account, PASSWORD)
    assert err.value.code == pb.VaultError.KEY_DESTROYED


def _try_login_start(client: VaultTestClient, account: str) -> bool:
    """One KE1; True if the vault answered with a KE2 (a testable guess)."""
    try:
        reply = client.login_start(account, WRONG)
    except VaultCallError as err:
        assert err.code == pb.VaultError.KEY_DESTROYED, err
        return False
    return len(reply.reply.ke2) > 0


@pytest.fixture()
def victim(sec_cluster: LocalCluster, sec_config: ClientConfig) -> tuple[VaultTestClient, str]:
    client = direct_client(sec_cluster, sec_config)
    account = new_account("victim")
    assert client.register(account, PASSWORD, os.urandom(32)) == ATTEMPT_LIMIT
    return client, account


def test_skipping_ke3_still_counts(victim: tuple[VaultTestClient, str]) -> None:
    client, account = victim
    try:
        got = sum(_try_login_start(client, account) for _ in range(ATTEMPT_LIMIT + 3))
        assert got == ATTEMPT_LIMIT
        _assert_destroyed(client, account)
    finally:
        client.close()


def test_parallel_sessions_share_one_budget(victim: tuple[VaultTestClient, str]) -> None:
    client, account = victim
    tries = 4 * ATTEMPT_LIMIT
    barrier = threading.Barrier(tries, timeout=30)

    def attack(_: int) -> bool:
        barrier.wait()
        return _try_login_start(client, account)

    try:
        with ThreadPoolExecutor(max_workers=tries) as pool:
            got = sum(pool.map(attack, range(tries)))
        assert got <= ATTEMPT_LIMIT
        _assert_destroyed(client, account)
    finally:
        client.close()


def _send(
    send: Callable[[pb.SealedRequest], pb.SealedResponse],
    envelope: pb.SealedRequest,
    key: bytes,
) -> pb.VaultReply:
    """Deliver one sealed request and open the vault's sealed reply."""
    response = send(envelope)
    return pb.VaultReply.FromString(
        sealing.open_reply(key, envelope.account, envelope.shard, envelope.type, response.sealed)
    )


def _login_start_envelope(
    client: VaultTestClient, account: str, ke1: bytes
) -> tuple[pb.SealedRequest, bytes]:
    key = sealing.new_response_key()
    request = pb.ClientRequest(response_key=key, login_start=pb.LoginStart(ke1=ke1))
    return client.seal(account, pb.LOGIN_START, request), key


def _direct(client: VaultTestClient) -> Callable[[pb.SealedRequest], pb.SealedResponse]:
    """Deliver straight to the vault node the client talks to, as ChatD does."""

    def send(envelope: pb.SealedRequest) -> pb.SealedResponse:
        response: pb.SealedResponse = client.stub.Handle(envelope, timeout=RPC_TIMEOUT)
        return response

    return send


def _via_chatd(
    config: ClientConfig, channel: grpc.Channel, account: str
) -> Callable[[pb.SealedRequest], pb.SealedResponse]:
    """Forward through ChatD as a device (or ChatD itself) would, with the account's token."""
    forward = channel.unary_unary(
        "/bkv.v1.ChatD/Forward",
        request_serializer=pb.SealedRequest.SerializeToString,
        response_deserializer=pb.SealedResponse.FromString,
    )
    token = tokens.mint_token(signing_key(config), account)

    def send(envelope: pb.SealedRequest) -> pb.SealedResponse:
        reply: pb.SealedResponse = forward(
            envelope, timeout=RPC_TIMEOUT, metadata=[("bkv-account-token", token)]
        )
        return reply

    return send


def test_replayed_ke1_envelope_costs_one_attempt(
    victim: tuple[VaultTestClient, str], sec_config: ClientConfig
) -> None:
    """One sealed LOGIN_START replayed, to the leader and through ChatD, is one guess."""
    client, account = victim
    _, ke1 = opaque.client_start_login(WRONG)
    envelope, key = _login_start_envelope(client, account, ke1)

    direct = _direct(client)
    try:
        with grpc.insecure_channel(sec_config.chatd[0]) as channel:
            via_chatd = _via_chatd(sec_config, channel, account)
            replies = [_send(direct if i % 2 else via_chatd, envelope, key)
                       for i in range(ATTEMPT_LIMIT + 3)]
        assert all(r.WhichOneof("body") == "login_start" for r in replies), replies
        assert {r.login_start.attempts_left for r in replies} == {ATTEMPT_LIMIT - 1}
        # Fresh KE2s, one OPRF evaluation: every replay tests the same password.
        assert len({r.login_start.ke2 for r in replies}) == len(replies)
        assert len({r.login_start.ke2[:NOE] for r in replies}) == 1
        # The next fresh login proves that exactly one attempt was spent.
        login = client.login_start(account, PASSWORD)
        assert login.reply.attempts_left == ATTEMPT_LIMIT - 2
        assert len(client.login_finish(account, login)) == 32
        # A success clears the counted guesses: the old capture costs one attempt again.
        again = _send(direct, envelope, key)
        assert again.login_start.attempts_left == ATTEMPT_LIMIT - 1
        assert client.login_start(account, WRONG).reply.attempts_left == ATTEMPT_LIMIT - 2
    finally:
        client.close()


def test_replayed_ke1_keeps_only_the_newest_session(
    victim: tuple[VaultTestClient, str],
) -> None:
    """A re-delivered KE1 replaces its session, so free replays cannot fill the table."""
    client, account = victim
    state, ke1 = opaque.client_start_login(PASSWORD)
    envelope, key = _login_start_envelope(client, account, ke1)

    direct = _direct(client)
    try:
        replies = [_send(direct, envelope, key).login_start for _ in range(3)]
        for older in replies[:-1]:
            with pytest.raises(VaultCallError) as err:
                client.login_finish(account, LoginInProgress(state, older))
            assert err.value.code == pb.VaultError.SESSION_EXPIRED
        assert len(client.login_finish(account, LoginInProgress(state, replies[-1]))) == 32
        # The dropped sessions cost nothing: the counter was reset by the success.
        assert client.login_start(account, WRONG).reply.attempts_left == ATTEMPT_LIMIT - 1
    finally:
        client.close()


def _ke1_for_blind(blind: bytes) -> bytes:
    """A KE1 for the wrong password with a chosen blind; nonce and keyshare are fresh."""
    _, ke1 = opaque.client_start_login_with_randomness(
        WRONG, blind=blind, client_nonce=os.urandom(32), client_keyshare_seed=os.urandom(32)
    )
    return ke1


def test_distinct_ke1s_each_cost_one_attempt_and_replays_none(
    victim: tuple[VaultTestClient, str],
) -> None:
    """K distinct guesses for one password cost K attempts; re-deliveries cost nothing."""
    client, account = victim
    captured: list[tuple[pb.SealedRequest, bytes]] = []
    evaluated: set[bytes] = set()

    def deliver(envelope: pb.SealedRequest, key: bytes) -> int | None:
        """attempts_left of a KE2, or None once the deposit is destroyed."""
        reply = _send(lambda e: client.stub.Handle(e, timeout=RPC_TIMEOUT), envelope, key)
        if reply.WhichOneof("body") != "login_start":
            assert reply.error.code == pb.VaultError.KEY_DESTROYED, reply
            return None
        evaluated.add(reply.login_start.ke2[:NOE])
        return reply.login_start.attempts_left

    try:
        for fresh in range(ATTEMPT_LIMIT + 2):
            blind = group.random_scalar()
            ke1, twin = _ke1_for_blind(blind), _ke1_for_blind(blind)
            assert ke1 != twin and ke1[:NOE] == twin[:NOE]
            captured.append(_login_start_envelope(client, account, ke1))
            expected = ATTEMPT_LIMIT - 1 - fresh if fresh < ATTEMPT_LIMIT else None
            assert deliver(*captured[-1]) == expected
            # Same blinded element under another nonce and keyshare: the same guess.
            assert deliver(*_login_start_envelope(client, account, twin)) == expected
            # Every earlier capture again: the count it reports is the current one.
            assert {deliver(*old) for old in captured} == {expected}
            assert len(evaluated) <= ATTEMPT_LIMIT
        assert len(evaluated) == ATTEMPT_LIMIT
        _assert_destroyed(client, account)
    finally:
        client.close()


def test_replayed_ke3_gives_no_extra_guess(victim: tuple[VaultTestClient, str]) -> None:
    client, account = victim
    try:
        login = client.login_start(account, WRONG)
        key = sealing.new_response_key()
        ke3 = os.urandom(64)  # what a client holding a wrong password can send
        finish = client.seal(
            account,
            pb.LOGIN_FINISH,
            pb.ClientRequest(
                response_key=key,
                login_finish=pb.LoginFinish(session_id=login.reply.session_id, ke3=ke3),
            ),
        )
        codes = []
        for _ in range(3):
            response = client.stub.Handle(finish, timeout=RPC_TIMEOUT)
            reply = pb.VaultReply.FromString(
                sealing.open_reply(key, account, client.shard, pb.LOGIN_FINISH, response.sealed)
            )
            codes.append(reply.error.code)
        assert codes == [pb.VaultError.LOGIN_FAILED] + [pb.VaultError.SESSION_EXPIRED] * 2
        # One guess was used; exactly ATTEMPT_LIMIT - 1 remain, then destruction.
        got = sum(_try_login_start(client, account) for _ in range(ATTEMPT_LIMIT + 1))
        assert got == ATTEMPT_LIMIT - 1
        _assert_destroyed(client, account)
    finally:
        client.close()


def test_leader_kill_during_attack_grants_no_extra_guess(
    sec_cluster: LocalCluster, sec_config: ClientConfig
) -> None:
    """Hammer KE1 from several threads while the leader is SIGKILLed mid-attack."""
    account = new_account("race")
    first = direct_client(sec_cluster, sec_config)
    try:
        first.register(account, PASSWORD, os.urandom(32))
        # A right-password session on the old leader: stale once that leader dies.
        stale = first.login_start(account, PASSWORD)
    finally:
        first.close()
    old_leader = sec_cluster.leader(0)
    assert old_leader is not None
    ke2s = 1
    lock = threading.Lock()
    stop = threading.Event()
    addresses = [sec_cluster.node(n)["grpc_address"] for n in sec_cluster.nodes(0)]

    def hammer(offset: int) -> None:
        nonlocal ke2s
        clients = [VaultTestClient(a, sec_config.fleet_public_key) for a in addresses]
        try:
            end = time.monotonic() + 20.0
            i = offset
            while not stop.is_set() and time.monotonic() < end:
                i += 1
                try:
                    got = _try_login_start(clients[i % len(clients)], account)
                except grpc.RpcError as err:  # follower, dead node or commit timeout
                    assert err.code() in (
                        grpc.StatusCode.FAILED_PRECONDITION,
                        grpc.StatusCode.UNAVAILABLE,
                        grpc.StatusCode.DEADLINE_EXCEEDED,
                    ), err
                    time.sleep(0.02)
                    continue
                with lock:
                    ke2s += got
        finally:
            for c in clients:
                c.close()

    threads = [threading.Thread(target=hammer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.05)  # kill while the first BeginAttempts are in flight
    sec_cluster.kill_node(old_leader)
    time.sleep(3.0)
    stop.set()
    for t in threads:
        t.join(timeout=30)
    try:
        assert ke2s <= ATTEMPT_LIMIT, f"{ke2s} KE2 for a limit of {ATTEMPT_LIMIT}"
        client = VaultTestClient(leader_address(sec_cluster), sec_config.fleet_public_key)
        try:
            # Whatever is left of the budget (nothing, normally) ends in destruction.
            # The new leader never saw the stale session: its KE3 releases nothing.
            with pytest.raises(VaultCallError) as err:
                client.login_finish(account, stale)
            assert err.value.code == pb.VaultError.SESSION_EXPIRED
            extra = sum(_try_login_start(client, account) for _ in range(ATTEMPT_LIMIT + 1))
            assert ke2s + extra <= ATTEMPT_LIMIT
            _assert_destroyed(client, account)
        finally:
            client.close()
    finally:
        sec_cluster.restart_node(old_leader)
        wait_until(lambda: old_leader in _running(sec_cluster), 30, "the node to restart")
        converged_digest(sec_cluster, timeout=60)


def _running(cluster: LocalCluster) -> set[str]:
    return {v.node_id for v in cluster.status() if v.status is not None}
