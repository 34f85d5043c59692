"""The guess limit under attack: a client that cheats still gets at most N KE2 per deposit.

Guards (``vault_node/service.py`` ``_login_start``): ``BeginAttempt`` is committed
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
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from bkv_api.v1 import envelope_pb2 as pb
from bkv_protocol import opaque, sealing
from client_sdk.config import ClientConfig
from client_sdk.launcher import LocalCluster
from tests.security.conftest import (
    ATTEMPT_LIMIT,
    RPC_TIMEOUT,
    converged_digest,
    direct_client,
    leader_address,
    new_account,
    wait_until,
)
from tests.vault.conftest import VaultCallError, VaultTestClient

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


def test_replayed_ke1_envelope_is_counted_every_time(
    victim: tuple[VaultTestClient, str],
) -> None:
    """Replaying one sealed LOGIN_START burns attempts (documented) but never adds guesses."""
    client, account = victim
    key = sealing.new_response_key()
    _, ke1 = opaque.client_start_login(WRONG)
    request = pb.ClientRequest(response_key=key, login_start=pb.LoginStart(ke1=ke1))
    envelope = client.seal(account, pb.LOGIN_START, request)
    ke2s = 0
    destroyed = 0
    try:
        for _ in range(ATTEMPT_LIMIT + 3):
            response = client.stub.Handle(envelope, timeout=RPC_TIMEOUT)
            reply = pb.VaultReply.FromString(
                sealing.open_reply(key, account, client.shard, pb.LOGIN_START, response.sealed)
            )
            if reply.WhichOneof("body") == "login_start":
                ke2s += 1
            else:
                assert reply.error.code == pb.VaultError.KEY_DESTROYED
                destroyed += 1
        assert ke2s == ATTEMPT_LIMIT and destroyed == 3
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
