"""The guess-limited OPAQUE service behind ``Vault.Handle`` and ``Vault.Status``.

Invariant 1 lives here: LOGIN_START commits ``BeginAttempt`` through Raft and
waits for it *before* computing KE2, so every KE2 that leaves the leader is a
guess already counted on a majority. The guess is named by a tag derived from
the KE1's blinded element (``guess_tag``), so a KE1 delivered again -- ChatD
retrying after a lost reply, or replaying a captured request -- is the same
guess and is not counted twice (see ``vault_node.state``). A verified KE3
commits ``ResetAttempts`` before the deposit is released. Only the current
leader answers; all other nodes refuse with FAILED_PRECONDITION and a hint to
the leader.

Envelope problems (garbled, other shard, body not matching the type) are gRPC
INVALID_ARGUMENT; protocol outcomes travel sealed inside ``VaultReply.error`` so
ChatD never learns them. Logs name an account only by an account-id prefix;
routine per-request events are DEBUG (a formatted stderr line per request costs
the leader measurable CPU), failures and destructions stay INFO.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any, NoReturn, Protocol

import grpc
from google.protobuf.message import DecodeError

from bkv_api.v1 import envelope_pb2 as pb
from bkv_api.v1 import services_pb2, services_pb2_grpc
from bkv_protocol import deposit as deposit_mod
from bkv_protocol import sealing
from bkv_protocol.errors import ProtocolError
from bkv_protocol.ksf import ksf_from_descriptor
from bkv_protocol.opaque_messages import (
    KE1,
    KE3_BYTES,
    NOE,
    REGISTRATION_REQUEST_BYTES,
    RegistrationRecord,
)
from vault_node import state as st
from vault_node.config import NodeConfig, PeerConfig
from vault_node.hsm.fleet import FleetHsm, HsmError, StoredRecord, new_record_id
from vault_node.raft.membership import Member
from vault_node.raft.replication import CommitTimeoutError, NotLeaderError, RaftStatus
from vault_node.service.metrics import VaultMetrics, outcome_of_error, outcome_of_status
from vault_node.service.sessions import SESSION_ID_BYTES, LoginSession, SessionTable

log = logging.getLogger("bkv.vault.service")

MAX_ACCOUNT_BYTES = 256
MAX_KSF_DESCRIPTOR = 256
LEADER_METADATA_KEY = "bkv-leader"
GUESS_TAG_LABEL = b"bkv-guess-tag-v1\x00"

_BODY_FOR_TYPE = {
    pb.REGISTER_START: "register_start",
    pb.REGISTER_FINISH: "register_finish",
    pb.LOGIN_START: "login_start",
    pb.LOGIN_FINISH: "login_finish",
}
_Code = pb.VaultError.Code


class Replica(Protocol):
    """What the service needs from the replicated state machine."""

    def submit(self, command: st.Command, timeout: float | None = None) -> st.ApplyResult: ...
    def is_leader(self) -> bool: ...
    def term(self) -> int: ...
    def holds_leadership(self, term: int) -> bool: ...
    def exhausted_records(self) -> list[tuple[bytes, bytes]]: ...
    def entry_view(self, account_id: bytes) -> st.AccountEntry | None: ...
    def leader_address(self) -> str | None: ...
    def leader_reachable(self) -> bool: ...
    def status(self) -> RaftStatus: ...
    def members(self) -> list[Member]: ...


class _Reply(Exception):
    """Internal: a sealed protocol-level error reply (never leaves this module)."""

    def __init__(self, code: pb.VaultError.Code, message: str, attempts_left: int = 0) -> None:
        super().__init__(message)
        self.error = pb.VaultError(code=code, message=message, attempts_left=attempts_left)


class VaultService(services_pb2_grpc.VaultServicer):  # type: ignore[misc]
    """One node's ``Vault`` gRPC service; stateless apart from the session table."""

    def __init__(
        self,
        config: NodeConfig,
        hsm: FleetHsm,
        replica: Replica,
        sessions: SessionTable,
        metrics: VaultMetrics | None = None,
    ) -> None:
        self._cfg = config
        self._metrics = metrics
        self._hsm = hsm
        self._replica = replica
        self._sessions = sessions
        # (account id, guess tag) -> the newest session for that guess, so a
        # re-delivered KE1 replaces its session instead of adding one: free
        # replays must not fill the session table. Oldest forgotten first.
        self._guess_sessions: OrderedDict[tuple[bytes, bytes], bytes] = OrderedDict()
        self._guess_lock = threading.Lock()
        # accounts with a LOGIN_START between its BeginAttempt and its session: the
        # exhausted-record sweep must not destroy a last attempt still being answered
        self._starting: dict[bytes, int] = {}
        self._starting_lock = threading.Lock()
        # the term this node last swept in, and when it first swept in it
        self._sweep_term = -1
        self._sweep_term_since = 0.0
        if metrics is not None:
            metrics.watch_open_attempts(sessions.open_counted)

    # ---- gRPC entry points -------------------------------------------------

    def Handle(self, request: pb.SealedRequest, context: grpc.ServicerContext) -> pb.SealedResponse:
        outcome = "invalid"
        try:
            response, outcome = self._handle(request, context)
            return response
        except Exception:
            outcome = outcome_of_status(context.code())
            raise
        finally:
            if self._metrics is not None:
                self._metrics.request(request.type, outcome)

    def _handle(
        self, request: pb.SealedRequest, context: grpc.ServicerContext
    ) -> tuple[pb.SealedResponse, str]:
        account, shard, mtype = request.account, request.shard, request.type
        _check_envelope(account, shard, mtype, self._cfg.shard, context)
        if not self._replica.is_leader():
            self._abort_not_leader(context, self._replica.leader_address())
        try:
            plain = self._hsm.open_request(account, shard, mtype, request.sealed)
            client = pb.ClientRequest.FromString(plain)
        except (ProtocolError, DecodeError):
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "cannot open request")
        if client.WhichOneof("body") != _BODY_FOR_TYPE[mtype]:
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "body does not match type")
        if len(client.response_key) != sealing.KEY_BYTES:
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "response key must be 32 bytes")
        account_id = self._hsm.account_id(account)
        try:
            reply = self._dispatch(client, account, account_id, context)
        except _Reply as err:
            reply = pb.VaultReply(error=err.error)
        except NotLeaderError as err:
            self._abort_not_leader(context, err.leader_address)
        except CommitTimeoutError:
            _abort(context, grpc.StatusCode.UNAVAILABLE, "commit timed out; retry")
        sealed = sealing.seal_reply(
            client.response_key, account, shard, mtype, reply.SerializeToString()
        )
        outcome = outcome_of_error(reply.error.code) if reply.HasField("error") else "ok"
        return pb.SealedResponse(sealed=sealed), outcome

    def Status(
        self, request: services_pb2.StatusRequest, context: grpc.ServicerContext
    ) -> services_pb2.NodeStatus:
        s = self._replica.status()
        leader = self._member_at(s.leader_address)
        return services_pb2.NodeStatus(
            node_id=self._cfg.node_id,
            datacenter=self._cfg.datacenter,
            shard=self._cfg.shard,
            role=s.role,
            term=s.term,
            commit_index=s.commit_index,
            last_applied=s.last_applied,
            leader_node_id=leader.node_id if leader else "",
            leader_address=leader.grpc_address if leader else "",
            state_digest=s.digest,
            healthy=leader is not None and self._replica.leader_reachable(),
            accounts=s.accounts,
            snapshots_written=s.snapshots_written,
            snapshots_loaded=s.snapshots_loaded,
            log_entries=s.log_entries,
        )

    # ---- the four protocol steps --------------------------------------------

    def _dispatch(
        self, req: pb.ClientRequest, account: str, account_id: bytes, context: Any
    ) -> pb.VaultReply:
        body = req.WhichOneof("body")
        if body == "register_start":
            return self._register_start(req.register_start, account_id)
        if body == "register_finish":
            return self._register_finish(req.register_finish, account_id)
        if body == "login_start":
            return self._login_start(req.login_start, account, account_id, context)
        return self._login_finish(req.login_finish, account, account_id)

    def _register_start(self, body: pb.RegisterStart, account_id: bytes) -> pb.VaultReply:
        """Evaluate the OPRF under a fresh key of this registration's own; counts nothing.

        Nothing here depends on the account's current deposit: the key is new (see
        ``FleetHsm.start_registration``), so the answer tests no stored password.
        """
        if len(body.registration_request) != REGISTRATION_REQUEST_BYTES:
            raise _Reply(_Code.BAD_REQUEST, "malformed registration request")
        try:
            response, ticket = self._hsm.start_registration(body.registration_request, account_id)
        except ProtocolError:
            raise _Reply(_Code.BAD_REQUEST, "malformed registration request") from None
        return pb.VaultReply(register_start=pb.RegisterStartReply(
            registration_response=response, registration_ticket=ticket))

    def _register_finish(self, body: pb.RegisterFinish, account_id: bytes) -> pb.VaultReply:
        try:  # the OPRF key named at REGISTER_START, for this account only
            credential = self._hsm.credential_from_ticket(account_id, body.registration_ticket)
        except HsmError:
            raise _Reply(_Code.BAD_REQUEST, "registration ticket missing or invalid") from None
        try:  # exact length and a valid client public key, so every later login can run
            RegistrationRecord.parse(body.registration_record)
        except ProtocolError:
            raise _Reply(_Code.BAD_REQUEST, "malformed registration record") from None
        try:
            deposit_mod.check_deposit_format(body.key_deposit)
        except ProtocolError:
            raise _Reply(_Code.BAD_REQUEST, "malformed key deposit") from None
        if len(body.ksf) > MAX_KSF_DESCRIPTOR:
            raise _Reply(_Code.BAD_REQUEST, "key-stretching descriptor too long")
        try:
            ksf_from_descriptor(body.ksf, allow_identity=self._cfg.allow_identity_ksf)
        except ValueError:
            raise _Reply(_Code.BAD_REQUEST, "key-stretching parameters not accepted") from None
        current = self._replica.entry_view(account_id)  # the leader's applied state
        if current is not None and not current.destroyed and not body.replace:
            raise _Reply(_Code.ALREADY_REGISTERED, "the account already has a deposit")
        record_id = new_record_id()
        stored = StoredRecord(body.registration_record, body.key_deposit, body.ksf, credential)
        sealed = self._hsm.seal_registration(account_id, record_id, stored)
        limit = self._cfg.attempt_limit
        self._submit(st.Put(account_id, record_id, sealed, limit))
        log.debug("registered account %s", account_id.hex()[:12])
        return pb.VaultReply(register_finish=pb.RegisterFinishReply(attempt_limit=limit))

    def _login_start(
        self, body: pb.LoginStart, account: str, account_id: bytes, context: Any
    ) -> pb.VaultReply:
        try:  # length and both points, before a guess is counted for a request that can't run
            ke1 = KE1.parse(body.ke1)
        except ProtocolError:
            raise _Reply(_Code.BAD_REQUEST, "malformed KE1") from None
        if not self._sessions.has_room():
            _abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED, "too many login sessions")
        # Invariant 1: the guess is durably counted before anything about it is computed.
        tag = guess_tag(account_id, ke1.blinded_message)
        with self._login_starting(account_id):
            return self._counted_login_start(body, account, account_id, tag, context)

    def _counted_login_start(
        self, body: pb.LoginStart, account: str, account_id: bytes, tag: bytes, context: Any
    ) -> pb.VaultReply:
        term = self._replica.term()
        result = self._submit(st.BeginAttempt(account_id, tag))
        counted = result.outcome == st.Outcome.GRANTED and not result.repeated
        if result.outcome == st.Outcome.NOT_REGISTERED:
            raise _Reply(_Code.NOT_REGISTERED, "account not registered")
        if result.outcome == st.Outcome.DESTROYED:
            log.info("login on destroyed account %s", account_id.hex()[:12])
            raise _Reply(_Code.KEY_DESTROYED, "key destroyed after too many wrong passwords")
        if result.outcome != st.Outcome.GRANTED or not result.sealed_record:
            raise _Reply(_Code.BAD_REQUEST, "unexpected state")
        record_id = result.record_id
        attempts_left = max(result.limit - result.attempts, 0)
        last = result.attempts >= result.limit
        try:
            challenge = self._hsm.start_login(
                account, account_id, record_id, result.sealed_record, body.ke1
            )
        except (ProtocolError, HsmError) as err:
            destroyed = last and self._destroy_if_exhausted(account_id, record_id)
            self._attempt_ended(counted, "destroyed" if destroyed else "unanswered")
            what = "malformed KE1" if isinstance(err, ProtocolError) else "record unreadable"
            raise _Reply(_Code.BAD_REQUEST, what, attempts_left) from None
        if not self._replica.holds_leadership(term):
            # The guess is counted; a KE2 leaves only a node still leading the term in
            # which it was. A re-sent KE1 to the new leader is the same guess (free).
            self._attempt_ended(counted, "unanswered")
            self._abort_not_leader(context, self._replica.leader_address())
        session = LoginSession(
            session_id=self._sessions.new_session_id(),
            account=account,
            shard=self._cfg.shard,
            account_id=account_id,
            record_id=record_id,
            server_state=challenge.server_state,
            key_deposit=challenge.key_deposit,
            attempts_left=attempts_left,
            last_attempt=last,
            expires_at=self._sessions.deadline(),
            counted=counted,
        )
        self._add_guess_session(tag, session)
        log.debug("login started for %s (%d left%s)", account_id.hex()[:12], attempts_left,
                  ", guess already counted" if result.repeated else "")
        return pb.VaultReply(
            login_start=pb.LoginStartReply(
                session_id=session.session_id,
                ke2=challenge.ke2,
                attempts_left=attempts_left,
                ksf=challenge.ksf,
            )
        )

    def _login_finish(self, body: pb.LoginFinish, account: str, account_id: bytes) -> pb.VaultReply:
        if len(body.session_id) != SESSION_ID_BYTES or len(body.ke3) != KE3_BYTES:
            raise _Reply(_Code.BAD_REQUEST, "malformed KE3")
        session = self._sessions.take(body.session_id, account_id, self._cfg.shard)
        if session is None:
            raise _Reply(_Code.SESSION_EXPIRED, "login session unknown or expired")
        fate = "interrupted"  # unless an answer below is decided: e.g. a commit that failed
        try:
            fate, reply = self._finish_session(session, body, account, account_id)
            return reply
        finally:
            self._attempt_ended(session.counted, fate)

    def _finish_session(
        self, session: LoginSession, body: pb.LoginFinish, account: str, account_id: bytes
    ) -> tuple[str, pb.VaultReply]:
        """LOGIN_FINISH on a session taken from the table: the reply, and the guess's fate."""
        if self._sessions.expired(session):
            fate = "destroyed" if self._expire(session) else "lapsed"
            return fate, _error(_Code.SESSION_EXPIRED, "login session expired",
                                session.attempts_left)
        try:
            verified = self._hsm.finish_login(session.server_state, body.ke3)
        except ProtocolError:
            destroyed = session.last_attempt and self._destroy_if_exhausted(
                account_id, session.record_id)
            log.info("login failed for %s", account_id.hex()[:12])
            return ("destroyed" if destroyed else "wrong_password",
                    _error(_Code.LOGIN_FAILED, "wrong password", session.attempts_left))
        if body.delete_deposit:  # the verified login authorises erasing this record
            result = self._submit(st.Delete(account_id, session.record_id))
            if result.outcome != st.Outcome.OK:
                return "superseded", _error(_Code.SESSION_EXPIRED, "record changed during login")
            log.info("deleted the deposit of %s at its owner's request", account_id.hex()[:12])
            return "success", pb.VaultReply(login_finish=pb.LoginFinishReply(deleted=True))
        result = self._submit(st.ResetAttempts(account_id, session.record_id))
        if result.outcome != st.Outcome.OK:
            # The record was replaced or erased meanwhile: release nothing.
            return "superseded", _error(_Code.SESSION_EXPIRED, "record changed during login")
        sealed = self._hsm.release_deposit(verified, account, session.key_deposit)
        log.debug("login succeeded for %s", account_id.hex()[:12])
        return "success", pb.VaultReply(login_finish=pb.LoginFinishReply(sealed_deposit=sealed))

    # ---- housekeeping -------------------------------------------------------

    def _add_guess_session(self, tag: bytes, session: LoginSession) -> None:
        """Make ``session`` the only live session of this guess; drop the previous one.

        The client behind a re-delivered KE1 sees only the last reply, so the
        earlier session can never be finished. A dropped last-attempt session
        needs no destruction: its replacement is a last attempt too. The swap is
        atomic, so concurrent deliveries of one KE1 leave exactly one session, and
        a guess this node counted keeps its one fate in whichever session is left.
        """
        key = (session.account_id, tag)
        reset_since = False
        with self._guess_lock:
            previous_id = self._guess_sessions.pop(key, None)
            self._guess_sessions[key] = session.session_id
            while len(self._guess_sessions) > self._cfg.max_sessions:
                self._guess_sessions.popitem(last=False)
            previous = None if previous_id is None else self._sessions.take(
                previous_id, session.account_id, session.shard)
            if previous is not None and previous.counted:
                # counted anew: the counter was reset since the previous delivery
                reset_since = session.counted
                session = dataclasses.replace(session, counted=True)
            self._sessions.add(session)
        if reset_since:  # the earlier delivery's own guess ends here
            self._attempt_ended(True, "interrupted")

    def sweep_expired(self) -> int:
        """Drop expired sessions; a lapsed last attempt destroys the record. Returns count."""
        gone = self._sessions.sweep()
        for session in gone:
            self._attempt_ended(session.counted,
                                "destroyed" if self._expire(session) else "lapsed")
        return len(gone)

    def drop_sessions(self) -> int:
        """Forget every session (leadership lost, or shutdown): none of them can finish here.

        Their guesses stay counted; a client re-sends its KE1 to the new leader for free.
        """
        gone = self._sessions.drain()
        for session in gone:
            self._attempt_ended(session.counted, "interrupted")
        return len(gone)

    def sweep_exhausted(self) -> int:
        """Destroy every record with no guess left and no last attempt open on this leader.

        Such a record can never be released any more: its last attempt failed, lapsed,
        or was answered by a leader that is gone (sessions are not replicated). A new
        leader destroys them without waiting for another request -- once a session
        lifetime has passed since it started leading, so that a last attempt opened on
        its predecessor, whose session could not outlive that, can still be re-delivered
        (the same KE1 is free) and finished here. Returns the destructions committed.
        """
        term, now = self._replica.term(), self._sessions.now()
        if term != self._sweep_term:
            self._sweep_term, self._sweep_term_since = term, now
        if now - self._sweep_term_since < self._sessions.ttl:
            return 0
        # Order matters: a login that counted the last guess before the first read is
        # either still starting at the second read or has its session at the third.
        exhausted = self._replica.exhausted_records()
        if not exhausted:
            return 0
        with self._starting_lock:
            starting = set(self._starting)
        open_now = self._sessions.open_last_attempts()
        destroyed = 0
        for account_id, record_id in exhausted:
            if account_id in open_now or account_id in starting:
                continue
            if self._destroy_if_exhausted(account_id, record_id):
                destroyed += 1
        return destroyed

    @contextlib.contextmanager
    def _login_starting(self, account_id: bytes) -> Iterator[None]:
        with self._starting_lock:
            self._starting[account_id] = self._starting.get(account_id, 0) + 1
        try:
            yield
        finally:
            with self._starting_lock:
                left = self._starting[account_id] - 1
                if left:
                    self._starting[account_id] = left
                else:
                    del self._starting[account_id]

    def _expire(self, session: LoginSession) -> bool:
        """A session ran out: a lapsed last attempt destroys the record. True if it did."""
        return session.last_attempt and self._destroy_if_exhausted(
            session.account_id, session.record_id)

    def _attempt_ended(self, counted: bool, fate: str) -> None:
        """Give a guess this node counted its one fate (others were counted elsewhere)."""
        if counted and self._metrics is not None:
            self._metrics.attempt_ended(fate)

    def _destroy_if_exhausted(self, account_id: bytes, record_id: bytes) -> bool:
        # If it doesn't commit here, the leader's next exhausted-record sweep (or the
        # next BeginAttempt) destroys the record: its counter already reached the limit.
        try:
            result = self._submit(st.DestroyIfExhausted(account_id, record_id))
        except (NotLeaderError, CommitTimeoutError):
            log.warning("could not commit destruction for %s now", account_id.hex()[:12])
            return False
        if result.outcome == st.Outcome.DESTROYED:
            log.info("destroyed record of %s", account_id.hex()[:12])
            return True
        return False

    def _submit(self, command: st.Command) -> st.ApplyResult:
        started = time.monotonic()
        result = self._replica.submit(command, timeout=self._cfg.commit_timeout_seconds)
        if self._metrics is not None:
            self._metrics.committed(command, result, started)
        return result

    def _member_at(self, raft_address: str | None) -> PeerConfig | Member | None:
        """The member at a Raft address: the bootstrap list, else members added at run time."""
        if raft_address is None:
            return None
        peer = self._cfg.peer_by_raft_address(raft_address)
        if peer is not None:
            return peer
        return next((m for m in self._replica.members()
                     if m.raft_address == raft_address and m.grpc_address), None)

    def _abort_not_leader(self, context: Any, raft_leader: str | None) -> NoReturn:
        peer = self._member_at(raft_leader)
        if peer is not None and peer.node_id != self._cfg.node_id:
            context.set_trailing_metadata(((LEADER_METADATA_KEY, peer.grpc_address),))
        _abort(context, grpc.StatusCode.FAILED_PRECONDITION, "not leader")


def guess_tag(account_id: bytes, blinded_element: bytes) -> bytes:
    """Name one password guess: the OPRF input it is tested through, per account.

    Every KE2 for the same blinded element carries the same OPRF evaluation, so
    they all test the same password. The element is uniformly random to anyone
    without the client's blind, so the tag reveals nothing and may be replicated.
    Both inputs have fixed lengths, so plain concatenation is unambiguous.
    """
    if len(account_id) != st.ACCOUNT_ID_BYTES or len(blinded_element) != NOE:
        raise ValueError("account id or blinded element has the wrong length")
    digest = hashlib.sha256(GUESS_TAG_LABEL + account_id + blinded_element).digest()
    return digest[: st.GUESS_TAG_BYTES]


def _error(code: pb.VaultError.Code, message: str, attempts_left: int = 0) -> pb.VaultReply:
    """A sealed protocol error, as a reply."""
    return pb.VaultReply(error=pb.VaultError(code=code, message=message,
                                             attempts_left=attempts_left))


def _check_envelope(account: str, shard: int, mtype: int, my_shard: int, context: Any) -> None:
    raw = account.encode("utf-8", "surrogatepass")
    if not 1 <= len(raw) <= MAX_ACCOUNT_BYTES or not account.isprintable():
        _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "invalid account")
    if shard != my_shard:
        _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "wrong shard")
    if mtype not in _BODY_FOR_TYPE:
        _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "unknown message type")


def _abort(context: Any, code: grpc.StatusCode, details: str) -> NoReturn:
    context.abort(code, details)
    raise AssertionError("unreachable: context.abort raises")
