"""The service's leadership and destruction decisions, driven step by step.

``ScriptedReplica`` applies committed commands to the real, pure ``VaultState``
(as every node does) and lets a test decide leadership and term at each step,
which a real cluster can't be made to do deterministically at the instant
between a commit and the KE2 that follows it.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

import grpc
import pytest

from bkv_api.v1 import envelope_pb2 as pb
from bkv_protocol import opaque, sealing
from tests.vault.test_vault_units import _raw
from vault_node import state as st
from vault_node.config import NodeConfig
from vault_node.hsm.fleet import FleetHsm, SoftwareMasterKey, init_fleet
from vault_node.raft.replication import NotLeaderError
from vault_node.service.sessions import SessionTable
from vault_node.service.vault import VaultService

LIMIT = 3


class ScriptedReplica:
    """The Replica protocol over a real VaultState; leadership is the test's to set."""

    def __init__(self) -> None:
        self.state = st.VaultState()
        self.current_term = 1
        self.leading = True
        self.after_commit: Callable[[st.Command], None] = lambda command: None
        self.committed: list[st.Command] = []

    def submit(self, command: st.Command, timeout: float | None = None) -> st.ApplyResult:
        if not self.leading:
            raise NotLeaderError(None)
        result = self.state.apply(command)
        self.committed.append(command)
        self.after_commit(command)
        return result

    def is_leader(self) -> bool:
        return self.leading

    def term(self) -> int:
        return self.current_term

    def holds_leadership(self, term: int) -> bool:
        return self.leading and term == self.current_term

    def exhausted_records(self) -> list[tuple[bytes, bytes]]:
        return self.state.exhausted()

    def entry_view(self, account_id: bytes) -> st.AccountEntry | None:
        return self.state.entry(account_id)

    def leader_address(self) -> str | None:
        return None

    def leader_reachable(self) -> bool:
        return self.leading

    def status(self) -> Any:
        raise NotImplementedError

    def members(self) -> list[Any]:
        return []


class Aborted(Exception):
    def __init__(self, code: grpc.StatusCode) -> None:
        super().__init__(code.name)
        self.code = code


class Context:
    """The two things the service does with a gRPC context."""

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise Aborted(code)

    def set_trailing_metadata(self, metadata: object) -> None:
        pass

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNKNOWN


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


TTL = 30.0


@pytest.fixture()
def clock() -> Clock:
    return Clock()


@pytest.fixture()
def vault(clock: Clock) -> tuple[VaultService, ScriptedReplica, FleetHsm]:
    master = SoftwareMasterKey(secrets.token_bytes(32))
    hsm = FleetHsm.open_fleet(master, init_fleet(master))
    cfg = NodeConfig.from_mapping(_raw(attempt_limit=LIMIT, allow_identity_ksf=True))
    replica = ScriptedReplica()
    sessions = SessionTable(max_sessions=100, ttl_seconds=TTL, clock=clock)
    return VaultService(cfg, hsm, replica, sessions), replica, hsm


def _call(service: VaultService, hsm: FleetHsm, account: str, mtype: int,
          **body: Any) -> pb.VaultReply:
    key = sealing.new_response_key()
    plain = pb.ClientRequest(response_key=key, **body).SerializeToString()
    envelope = pb.SealedRequest(account=account, shard=0, type=mtype,  # type: ignore[arg-type]
                                sealed=sealing.seal_request(hsm.fleet_public_key, account, 0,
                                                            mtype, plain))
    response = service.Handle(envelope, Context())
    return pb.VaultReply.FromString(sealing.open_reply(key, account, 0, mtype, response.sealed))


def _register(service: VaultService, hsm: FleetHsm, account: str) -> None:
    from bkv_protocol import deposit
    from bkv_protocol.ksf import IDENTITY_KSF

    state, request = opaque.client_start_registration(b"pw")
    start = _call(service, hsm, account, pb.REGISTER_START,
                  register_start=pb.RegisterStart(registration_request=request)).register_start
    record, export_key = opaque.client_finish_registration(
        state, start.registration_response, ksf=IDENTITY_KSF, client_identity=account.encode())
    _call(service, hsm, account, pb.REGISTER_FINISH, register_finish=pb.RegisterFinish(
        registration_record=record, key_deposit=deposit.seal_deposit(export_key, account,
                                                                     bytes(32)),
        ksf=IDENTITY_KSF.descriptor, registration_ticket=start.registration_ticket))


def _login_start(service: VaultService, hsm: FleetHsm, account: str) -> pb.VaultReply:
    _, ke1 = opaque.client_start_login(b"guess")
    return _call(service, hsm, account, pb.LOGIN_START, login_start=pb.LoginStart(ke1=ke1))


def test_no_ke2_when_the_term_changed_after_the_commit(
    vault: tuple[VaultService, ScriptedReplica, FleetHsm]
) -> None:
    service, replica, hsm = vault
    _register(service, hsm, "alice")

    def deposed(command: st.Command) -> None:
        if isinstance(command, st.BeginAttempt):  # another leader took over meanwhile
            replica.current_term += 1

    replica.after_commit = deposed
    with pytest.raises(Aborted) as err:
        _login_start(service, hsm, "alice")
    assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION
    entry = replica.state.entry(hsm.account_id("alice"))
    assert entry is not None and entry.attempts == 1  # counted, and no KE2 left
    assert len(service._sessions) == 0


def test_no_ke2_when_the_lease_ran_out(vault: tuple[VaultService, ScriptedReplica, FleetHsm]
                                       ) -> None:
    service, replica, hsm = vault
    _register(service, hsm, "bob")
    replica.after_commit = lambda command: setattr(replica, "leading", False)
    with pytest.raises(Aborted) as err:
        _login_start(service, hsm, "bob")
    assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION


def test_exhausted_records_are_destroyed_unless_a_last_attempt_is_open(
    vault: tuple[VaultService, ScriptedReplica, FleetHsm], clock: Clock
) -> None:
    service, replica, hsm = vault
    assert service.sweep_exhausted() == 0  # first sweep of this term: the clock starts
    clock.now += TTL
    for account in ("held", "lapsed"):
        _register(service, hsm, account)
        for _ in range(LIMIT):
            assert _login_start(service, hsm, account).WhichOneof("body") == "login_start"
    held, lapsed = hsm.account_id("held"), hsm.account_id("lapsed")
    assert {a for a, _ in replica.exhausted_records()} == {held, lapsed}
    # "lapsed" lost its session (a leader change drops them all); "held" still has one
    for session in list(service._sessions._sessions.values()):
        if session.account_id == lapsed:
            service._sessions.take(session.session_id, lapsed, 0)
    assert service.sweep_exhausted() == 1
    lapsed_entry, held_entry = replica.state.entry(lapsed), replica.state.entry(held)
    assert lapsed_entry is not None and lapsed_entry.destroyed
    assert held_entry is not None and not held_entry.destroyed
    # a new leader has no sessions at all: it destroys the other one too, but only
    # once a session lifetime has passed since its term began (a re-delivered KE1 of
    # the last attempt may still arrive and finish on it)
    service._sessions.drain()
    replica.current_term += 1
    assert service.sweep_exhausted() == 0
    clock.now += TTL - 1
    assert service.sweep_exhausted() == 0
    clock.now += 1
    assert service.sweep_exhausted() == 1
    assert replica.exhausted_records() == []


def test_a_last_attempt_being_answered_is_not_swept(
    vault: tuple[VaultService, ScriptedReplica, FleetHsm], clock: Clock
) -> None:
    """The sweep runs between the commit of the last guess and its session: it must wait."""
    service, replica, hsm = vault
    service.sweep_exhausted()
    clock.now += TTL
    _register(service, hsm, "carol")
    for _ in range(LIMIT - 1):
        _login_start(service, hsm, "carol")
    swept: list[int] = []

    def sweep_now(command: st.Command) -> None:
        if isinstance(command, st.BeginAttempt):
            swept.append(service.sweep_exhausted())

    replica.after_commit = sweep_now
    reply = _login_start(service, hsm, "carol")
    assert reply.WhichOneof("body") == "login_start" and reply.login_start.attempts_left == 0
    assert swept == [0]
    entry = replica.state.entry(hsm.account_id("carol"))
    assert entry is not None and not entry.destroyed
