"""Every guess a node counts ends in exactly one fate, through the real service and state.

A real client with a wrong password stops after KE2 (its envelope does not open),
so the only trace of a guessing attack in the metrics is the fate of its attempts:
``lapsed``, and ``destroyed`` for the last one. The service runs on the real pure
``VaultState`` (``ScriptedReplica``) with a fake clock for the session lifetime.
"""

from __future__ import annotations

import secrets

import grpc
import pytest
from prometheus_client import CollectorRegistry

from bkv_api.v1 import envelope_pb2 as pb
from bkv_protocol import opaque
from bkv_protocol.errors import AuthenticationError
from bkv_protocol.ksf import IDENTITY_KSF
from tests.vault.test_service_decisions import (
    LIMIT,
    TTL,
    Aborted,
    Clock,
    ScriptedReplica,
    _call,
    _register,
)
from tests.vault.test_vault_units import _raw
from vault_node import state as st
from vault_node.config import NodeConfig
from vault_node.hsm.fleet import FleetHsm, SoftwareMasterKey, init_fleet
from vault_node.raft.replication import CommitTimeoutError
from vault_node.service.metrics import FATES, VaultMetrics
from vault_node.service.sessions import SessionTable
from vault_node.service.vault import VaultService

RIGHT = b"pw"  # the password tests.vault.test_service_decisions._register deposits


class Node:
    """One node's service with its metrics, on a real state machine."""

    def __init__(self, clock: Clock) -> None:
        master = SoftwareMasterKey(secrets.token_bytes(32))
        self.hsm = FleetHsm.open_fleet(master, init_fleet(master))
        cfg = NodeConfig.from_mapping(_raw(attempt_limit=LIMIT, allow_identity_ksf=True))
        self.replica = ScriptedReplica()
        self.metrics = VaultMetrics(CollectorRegistry())
        sessions = SessionTable(max_sessions=100, ttl_seconds=TTL, clock=clock)
        self.service = VaultService(cfg, self.hsm, self.replica, sessions, self.metrics)

    def sample(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value

    def fates(self) -> dict[str, float]:
        found = {f: self.sample("bkv_vault_attempts_total", fate=f) for f in FATES}
        return {f: n for f, n in found.items() if n}

    def check_every_attempt_has_one_fate(self) -> None:
        counted = self.sample("bkv_vault_attempts_counted_total")
        open_now = self.sample("bkv_vault_attempts_open")
        assert counted == sum(self.fates().values()) + open_now

    def register(self, account: str) -> None:
        _register(self.service, self.hsm, account)

    def start(self, account: str, password: bytes, ke1: tuple[object, bytes] | None = None
              ) -> tuple[object, pb.VaultReply]:
        state, raw_ke1 = ke1 if ke1 is not None else opaque.client_start_login(password)
        reply = _call(self.service, self.hsm, account, pb.LOGIN_START,
                      login_start=pb.LoginStart(ke1=raw_ke1))
        return state, reply

    def finish(self, account: str, login: tuple[object, pb.VaultReply], *,
               delete: bool = False) -> pb.VaultReply:
        """KE3 as a client computes it, or (wrong password) 64 bytes that can't verify."""
        state, reply = login
        try:
            ke3, _, _ = opaque.client_finish_login(
                state, reply.login_start.ke2, ksf=IDENTITY_KSF,
                context=opaque.PRODUCT_CONTEXT, client_identity=account.encode())
        except AuthenticationError:
            ke3 = secrets.token_bytes(64)
        return _call(self.service, self.hsm, account, pb.LOGIN_FINISH,
                     login_finish=pb.LoginFinish(session_id=reply.login_start.session_id,
                                                 ke3=ke3, delete_deposit=delete))


@pytest.fixture()
def clock() -> Clock:
    return Clock()


@pytest.fixture()
def node(clock: Clock) -> Node:
    return Node(clock)


def _error(reply: pb.VaultReply) -> str:
    return pb.VaultError.Code.Name(reply.error.code) if reply.HasField("error") else "ok"


def test_success_and_a_wrong_ke3(node: Node) -> None:
    node.register("alice")
    assert _error(node.finish("alice", node.start("alice", b"wrong"))) == "LOGIN_FAILED"
    assert _error(node.finish("alice", node.start("alice", RIGHT))) == "ok"
    assert node.fates() == {"wrong_password": 1, "success": 1}
    node.check_every_attempt_has_one_fate()


def test_a_guessing_client_lapses_and_its_last_guess_destroys(node: Node, clock: Clock) -> None:
    """What a real attacker with the SDK leaves behind: KE1s whose sessions run out."""
    node.register("bob")
    for _ in range(LIMIT):
        assert _error(node.start("bob", b"guess")[1]) == "ok"  # KE2 arrives; no KE3 follows
    node.check_every_attempt_has_one_fate()
    assert node.sample("bkv_vault_attempts_open") == LIMIT
    assert node.sample("bkv_vault_requests_total", step="login_finish",
                       outcome="wrong_password") == 0  # the old metric never saw them
    clock.now += TTL
    assert node.service.sweep_expired() == LIMIT
    assert node.fates() == {"lapsed": LIMIT - 1, "destroyed": 1}
    assert node.sample("bkv_vault_deposits_destroyed_total") == 1
    entry = node.replica.state.entry(node.hsm.account_id("bob"))
    assert entry is not None and entry.destroyed
    node.check_every_attempt_has_one_fate()
    assert _error(node.start("bob", RIGHT)[1]) == "KEY_DESTROYED"  # not a counted attempt
    node.check_every_attempt_has_one_fate()


def test_a_late_ke3_lapsed_and_a_wrong_last_ke3_destroys(node: Node, clock: Clock) -> None:
    node.register("carol")
    late = node.start("carol", RIGHT)
    clock.now += TTL
    assert _error(node.finish("carol", late)) == "SESSION_EXPIRED"
    assert node.fates() == {"lapsed": 1}
    node.start("carol", b"guess")
    last = node.start("carol", b"guess")
    assert last[1].login_start.attempts_left == 0
    assert _error(node.finish("carol", last)) == "LOGIN_FAILED"
    assert node.fates() == {"lapsed": 1, "destroyed": 1}
    node.check_every_attempt_has_one_fate()  # the middle guess is still open


def test_a_redelivered_ke1_is_one_attempt_with_one_fate(node: Node) -> None:
    """ChatD's retry of a KE1 gets a new session for the same, already counted guess."""
    node.register("dave")
    ke1 = opaque.client_start_login(RIGHT)
    node.start("dave", RIGHT, ke1)
    again = node.start("dave", RIGHT, ke1)  # free: the same blinded element
    assert node.sample("bkv_vault_attempts_counted_total") == 1
    assert node.sample("bkv_vault_attempts_open") == 1  # the first session was replaced
    assert _error(node.finish("dave", again)) == "ok"
    assert node.fates() == {"success": 1}
    node.check_every_attempt_has_one_fate()
    # after a reset the same KE1 is a new guess: the session it replaces ends its own
    old = opaque.client_start_login(b"guess")
    node.start("dave", b"guess", old)
    assert _error(node.finish("dave", node.start("dave", RIGHT))) == "ok"  # resets
    node.start("dave", b"guess", old)
    assert node.sample("bkv_vault_attempts_counted_total") == 4
    assert node.fates() == {"success": 2, "interrupted": 1}
    assert node.sample("bkv_vault_attempts_open") == 1
    node.check_every_attempt_has_one_fate()


def test_sessions_dropped_on_leadership_loss_are_interrupted(node: Node) -> None:
    node.register("erin")
    node.start("erin", RIGHT)
    node.start("erin", b"guess")
    assert node.service.drop_sessions() == 2
    assert node.fates() == {"interrupted": 2}
    node.check_every_attempt_has_one_fate()


def test_no_ke2_after_a_term_change_is_unanswered(node: Node) -> None:
    node.register("frank")

    def deposed(command: st.Command) -> None:
        if isinstance(command, st.BeginAttempt):
            node.replica.current_term += 1

    node.replica.after_commit = deposed
    with pytest.raises(Aborted):
        node.start("frank", RIGHT)
    assert node.fates() == {"unanswered": 1}
    node.check_every_attempt_has_one_fate()


def test_a_deposit_erased_during_the_login_supersedes_it(node: Node) -> None:
    node.register("gina")
    login = node.start("gina", RIGHT)
    node.replica.submit(st.Delete(node.hsm.account_id("gina"), b""))  # erased meanwhile
    assert _error(node.finish("gina", login)) == "SESSION_EXPIRED"
    assert node.fates() == {"superseded": 1}
    node.register("gina")
    deleted = node.finish("gina", node.start("gina", RIGHT), delete=True)
    assert deleted.login_finish.deleted
    assert node.fates() == {"superseded": 1, "success": 1}
    node.check_every_attempt_has_one_fate()


def test_a_commit_that_fails_after_a_verified_ke3_is_interrupted(node: Node) -> None:
    node.register("hank")
    login = node.start("hank", RIGHT)

    def slow(command: st.Command) -> None:
        if isinstance(command, st.ResetAttempts):  # its commit is not confirmed in time
            raise CommitTimeoutError("commit timed out")

    node.replica.after_commit = slow
    with pytest.raises(Aborted) as err:
        node.finish("hank", login)
    assert err.value.code == grpc.StatusCode.UNAVAILABLE
    assert node.fates() == {"interrupted": 1}
    node.check_every_attempt_has_one_fate()
