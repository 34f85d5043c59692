"""Concurrent clients that drive the vault one protocol step at a time and record every step.

Each client thread owns a few accounts: *honest* ones (recoveries, the odd
wrong guess or abandoned login, never enough to destroy them) and *attack*
ones (guessed to destruction, then registered again with a new generation).
Now and then a client also recovers an honest account of another client, so
some accounts see concurrent sessions. Every step is one history operation
(``register``, ``begin`` = KE1, ``finish`` = KE3), sent once, to one ChatD,
with its own deadline: a lost reply becomes ``info`` rather than a retry, so a
step commits at most what ChatD's own retries commit. Backup keys are derived
from (run secret, account, generation) so a released key names its
generation; passwords and keys stay in memory, the history holds only
generations and flags.
"""

from __future__ import annotations

import hashlib
import hmac
import random
import secrets
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import grpc

from bkv_api.v1 import envelope_pb2 as pb
from bkv_protocol import opaque
from bkv_protocol.deposit import open_deposit, open_from_session, seal_deposit
from bkv_protocol.errors import AuthenticationError, ProtocolError
from bkv_protocol.ksf import IDENTITY_KSF, KSF, PRODUCTION_KSF, ksf_from_descriptor
from bkv_protocol.opaque_messages import KE3_BYTES
from bkv_protocol.sharding import shard_for
from client_sdk.config import ClientConfig
from client_sdk.errors import KeyDestroyed, NotRegistered, SessionExpired, VaultError, WrongPassword
from client_sdk.vault_flows import password_bytes
from client_sdk.vault_replies import (
    LOGIN_FINISH,
    LOGIN_START,
    REGISTER_FINISH,
    REGISTER_START,
    open_vault_reply,
    seal_client_request,
)
from client_sdk.vault_transport import TOKEN_METADATA_KEY, ChatDTransport, TokenSource

from .history import History, outcome_of

CALL_TIMEOUT = 6.0  # one step; a little above ChatD's own 5 s deadline for finding a leader
OVERLAP_RATE = 0.1  # share of actions spent on another client's honest account
# Refused by ChatD before anything is forwarded: the step certainly did not happen.
_NOT_SENT = {grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAUTHENTICATED,
             grpc.StatusCode.PERMISSION_DENIED}


class _Lost(Exception):
    """A step without a vault answer: ``kind`` is "fail" (never ran) or "info" (unknown)."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind


@dataclass
class _Account:
    """What the owning client believes about one account (never a secret in the repr)."""

    name: str
    honest: bool
    password: bytes
    status: str = "none"  # none | live | unknown | destroyed
    since_reset: int = 0  # begins since the client last saw the counter reset
    retired: bool = False

    def __repr__(self) -> str:
        return f"_Account({self.name!r}, honest={self.honest}, status={self.status})"


class Workload:
    """``clients`` threads of mixed vault steps until ``stop()``, ``max_ops`` or ``deadline``.

    ``deadline`` is a ``time.monotonic()`` instant. ``identity_ksf`` registers
    with the Identity KSF (the cluster must allow it); otherwise Argon2id.
    """

    def __init__(self, client_config: ClientConfig, history: History, *, clients: int = 6,
                 accounts_per_client: int = 4, attempt_limit: int, seed: int, max_ops: int,
                 deadline: float, identity_ksf: bool = True,
                 call_timeout: float = CALL_TIMEOUT) -> None:
        if clients < 1 or accounts_per_client < 2 or attempt_limit < 3:
            raise ValueError("need >= 1 client, >= 2 accounts each and an attempt limit >= 3")
        self.config = client_config
        self.history = history
        self.limit = attempt_limit
        self.max_ops = max_ops
        self.deadline = deadline
        self.call_timeout = call_timeout
        self.ksf: KSF = IDENTITY_KSF if identity_ksf else PRODUCTION_KSF
        self._seed = seed
        self._secret = secrets.token_bytes(32)
        self._prefix = f"chaos-{seed}-{secrets.token_hex(3)}"
        self._tokens = TokenSource(client_config)
        tls = getattr(client_config, "tls", None)
        self._transports = [
            ChatDTransport([a], client_config.deadline_seconds, **({"tls": tls} if tls else {}))
            for a in client_config.chatd
        ]
        self._lock = threading.Lock()
        self._ops = 0
        self._gens: Counter[str] = Counter()
        self._stats: Counter[str] = Counter()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._owned = [
            [self._new_account(c, i, honest=i % 2 == 0) for i in range(accounts_per_client)]
            for c in range(clients)
        ]
        self._retired: list[_Account] = []

    def __repr__(self) -> str:
        return f"Workload(clients={len(self._owned)}, ops={self._ops})"

    # ---- lifecycle ----------------------------------------------------------------

    def start(self) -> None:
        """Start the client threads."""
        for c in range(len(self._owned)):
            t = threading.Thread(target=self._run, args=(c,), name=f"chaos-c{c}", daemon=True)
            self._threads.append(t)
            t.start()

    def stop(self, timeout: float) -> None:
        """Ask every client to stop after its current step; wait at most ``timeout`` seconds."""
        self._stop.set()
        end = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, end - time.monotonic()))
        with self._lock:
            self._stats["threads_still_running"] = sum(t.is_alive() for t in self._threads)

    def close(self) -> None:
        """Close the ChatD channels (idempotent; ``final_verification`` ends with it)."""
        for transport in self._transports:
            transport.close()

    def stats(self) -> dict[str, int]:
        """Counters by step outcome, gRPC failure, overlap, retirement and final reads."""
        with self._lock:
            return dict(sorted(self._stats.items()))

    def final_verification(self, timeout: float) -> None:
        """Recover every account that should still hold a key, retrying until a definite answer.

        Ends with ``finish`` -> gen, or ``begin`` -> destroyed / not registered;
        everything is recorded (proc ``final``), so the checks see these reads.
        """
        end = time.monotonic() + timeout
        accounts = [a for owned in self._owned for a in owned] + self._retired
        pending = [a for a in accounts if a.status in ("live", "unknown")]
        for account in pending:
            resolved = False
            while not resolved and time.monotonic() < end:
                outcome = self._recover(account, "final", correct=True, budgeted=False)
                resolved = outcome in ("gen", "destroyed", "not_registered")
                if not resolved:
                    time.sleep(0.2)
            self._count("final_resolved" if resolved else "final_unresolved")
        self.close()

    def one_guess_account(self, timeout: float, proc: str = "probe") -> str:
        """A new attack account that answered exactly one KE2, every step definite.

        Registers a fresh attack account and makes one wrong guess (KE1, never a
        KE3), both recorded under ``proc``. An attempt that ends without a definite
        answer (or with anything but ok and KE2) is left as it is and made again
        on another fresh account, until ``timeout``; returns the account's name.
        """
        end = time.monotonic() + timeout
        slot = 0
        while time.monotonic() < end:
            slot += 1
            account = self._new_account(len(self._owned), slot, honest=False)
            if (self._register(account, proc, budgeted=False) == "ok"
                    and self._recover(account, proc, correct=False, abandon=True,
                                      budgeted=False) == "ke2"):
                return account.name
            time.sleep(0.2)
        raise TimeoutError(f"no attack account settled on one KE2 within {timeout:g}s")

    # ---- one client ---------------------------------------------------------------

    def _run(self, c: int) -> None:
        try:
            self._loop(c)
        except Exception as err:  # a bug in the workload, not a vault outcome: count it
            self._count(f"client_crash:{type(err).__name__}")

    def _loop(self, c: int) -> None:
        rng = random.Random(self._seed * 1000 + c)
        proc = f"c{c}"
        while not self._stop.is_set() and time.monotonic() < self.deadline:
            if rng.random() < OVERLAP_RATE and len(self._owned) > 1:
                other = rng.choice([o for i, o in enumerate(self._owned) if i != c])
                honest = [a for a in other if a.honest and a.status == "live"]
                if honest:
                    self._count("overlap_recoveries")
                    if self._recover(rng.choice(honest), proc, correct=True,
                                     foreign=True) == "out":
                        break
                    continue
            slot = rng.randrange(len(self._owned[c]))
            account = self._owned[c][slot]
            if not self._act(account, proc, rng):
                break  # out of operations
            if account.retired:
                self._owned[c][slot] = self._new_account(c, slot, honest=account.honest)
                with self._lock:
                    self._retired.append(account)
            self._stop.wait(rng.uniform(0.005, 0.03))

    def _act(self, a: _Account, proc: str, rng: random.Random) -> bool:
        """One action on an owned account; False when the operation budget is spent."""
        if a.status in ("none", "destroyed") or (a.honest and rng.random() < 0.05):
            return self._register(a, proc) != "out"
        if a.honest:
            careful = a.status == "live" and a.since_reset == 0
            roll = rng.random()
            if careful and roll < 0.2:
                return self._recover(a, proc, correct=False) != "out"
            if careful and roll < 0.35:
                return self._recover(a, proc, correct=True, abandon=True) != "out"
            return self._recover(a, proc, correct=True) != "out"
        abandon = rng.random() < 0.3
        return self._recover(a, proc, correct=False, abandon=abandon) != "out"

    def _new_account(self, c: int, slot: int, *, honest: bool) -> _Account:
        with self._lock:
            self._gens["names"] += 1
            n = self._gens["names"]
        kind = "h" if honest else "x"
        name = f"{self._prefix}-c{c}-{kind}{slot}-{n}"
        word = hmac.new(self._secret, b"password\x00" + name.encode(), hashlib.sha256).hexdigest()
        return _Account(name, honest, password_bytes(f"correct horse {word[:16]}"))

    def _key(self, account: str, gen: int) -> bytes:
        message = f"key\x00{account}\x00{gen}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).digest()

    def _take_op(self, budgeted: bool) -> bool:
        with self._lock:
            if budgeted and self._ops >= self.max_ops:
                return False
            self._ops += 1
            return True

    def _count(self, what: str, n: int = 1) -> None:
        with self._lock:
            self._stats[what] += n

    # ---- steps ----------------------------------------------------------------------

    def _register(self, a: _Account, proc: str, *, budgeted: bool = True) -> str:
        if not self._take_op(budgeted):
            return "out"
        with self._lock:
            self._gens[a.name] += 1
            gen = self._gens[a.name]
        op = self.history.invoke(proc, "register", a.name, {"gen": gen})
        identity = a.name.encode()
        try:
            state, request = opaque.client_start_registration(a.password)
            try:
                start = self._call(a.name, REGISTER_START,
                                   pb.RegisterStart(registration_request=request))
            except (_Lost, VaultError):
                raise _Lost("fail", "registration start failed") from None  # nothing committed
            record, export_key = opaque.client_finish_registration(
                state, start.registration_response, ksf=self.ksf, client_identity=identity)
            deposit = seal_deposit(export_key, a.name, self._key(a.name, gen))
            self._call(a.name, REGISTER_FINISH, pb.RegisterFinish(
                registration_record=record, key_deposit=deposit, ksf=self.ksf.descriptor,
                registration_ticket=start.registration_ticket, replace=True))
        except _Lost as lost:
            return self._settle(op, "register", lost.kind, None, a, resets=True)
        except (VaultError, ProtocolError):
            return self._settle(op, "register", "info", None, a, resets=True)
        a.status, a.since_reset = "live", 0
        return self._settle(op, "register", "ok", None, a)

    def _recover(self, a: _Account, proc: str, *, correct: bool, abandon: bool = False,
                 foreign: bool = False, budgeted: bool = True) -> str:
        """begin (+ finish unless ``abandon``); returns the last outcome kind."""
        if not self._take_op(budgeted):
            return "out"
        owner = not foreign and proc != "final"
        secret = a.password if correct else password_bytes(f"wrong {secrets.token_hex(4)}")
        state, ke1 = opaque.client_start_login(secret)
        op = self.history.invoke(proc, "begin", a.name, None)
        mine = a if owner else None
        try:
            reply = self._call(a.name, LOGIN_START, pb.LoginStart(ke1=ke1))
        except NotRegistered:
            return self._settle(op, "begin", "ok", {"error": "not_registered"}, mine)
        except KeyDestroyed:
            return self._settle(op, "begin", "ok", {"error": "destroyed"}, mine)
        except _Lost as lost:
            return self._settle(op, "begin", lost.kind, None, mine)
        except VaultError:
            return self._settle(op, "begin", "info", None, mine)
        left = int(reply.attempts_left)
        self._settle(op, "begin", "ok", {"ke2": True, "attempts_left": left}, mine)
        if abandon:
            self._count("abandoned_logins")
            return "ke2"
        try:
            ke3, session_key, export_key = opaque.client_finish_login(
                state, reply.ke2, ksf=self._ksf_for(reply.ksf), context=opaque.PRODUCT_CONTEXT,
                client_identity=a.name.encode())
        except (AuthenticationError, ProtocolError):
            if correct:
                self._count("unexpected_ke2_rejections")
                return "ke2"
            ke3, session_key, export_key = secrets.token_bytes(KE3_BYTES), b"", b""
        return self._finish(a, proc, op, reply.session_id, ke3, session_key, export_key,
                            correct=correct, left=left, owner=owner, budgeted=budgeted)

    def _finish(self, a: _Account, proc: str, begin_op: int, session_id: bytes, ke3: bytes,
                session_key: bytes, export_key: bytes, *, correct: bool, left: int,
                owner: bool, budgeted: bool) -> str:
        mine = a if owner else None
        if not self._take_op(budgeted):
            return "out"
        op = self.history.invoke(proc, "finish", a.name, {
            "correct": correct, "ke2_attempts_left": left, "begin": begin_op})
        try:
            reply = self._call(a.name, LOGIN_FINISH,
                               pb.LoginFinish(session_id=session_id, ke3=ke3))
        except WrongPassword as err:
            value = {"error": "login_failed", "attempts_left": err.attempts_left}
            return self._settle(op, "finish", "ok", value, mine)
        except SessionExpired:
            return self._settle(op, "finish", "ok", {"error": "session_expired"}, mine)
        except KeyDestroyed:
            return self._settle(op, "finish", "ok", {"error": "destroyed"}, mine)
        except NotRegistered:
            return self._settle(op, "finish", "ok", {"error": "not_registered"}, mine)
        except _Lost as lost:
            return self._settle(op, "finish", lost.kind, None, mine, resets=correct)
        except VaultError:
            return self._settle(op, "finish", "info", None, mine, resets=correct)
        try:
            key = open_deposit(export_key, a.name, open_from_session(
                session_key, a.name, reply.sealed_deposit))
        except ProtocolError:
            return self._settle(op, "finish", "ok", {"error": "deposit_unreadable"}, mine)
        with self._lock:
            top = self._gens[a.name]
        gen = next((g for g in range(top, 0, -1)
                    if hmac.compare_digest(key, self._key(a.name, g))), None)
        value = {"gen": gen} if gen is not None else {"error": "unknown_key"}
        return self._settle(op, "finish", "ok", value, mine)

    def _settle(self, op: int, f: str, kind: str, value: Any, a: _Account | None,
                *, resets: bool = False) -> str:
        """Complete ``op`` in the history, update the owner's belief, return the outcome kind."""
        self.history.complete(op, kind, value)
        outcome = outcome_of(kind, value)
        self._count(f"{f}:{outcome}")
        if a is None:
            return outcome
        if f == "begin" and kind != "fail":
            a.since_reset += 1
        if outcome == "destroyed":
            a.status = "destroyed"
        elif outcome == "not_registered":
            a.status = "none"
        elif outcome == "gen":
            a.status, a.since_reset = "live", 0
        elif kind == "info" and resets:
            # A reset may or may not happen later: give the slot a fresh account so the
            # KE2-limit check keeps whole windows on the accounts still in play.
            a.status, a.retired = "unknown", True
            self._count("retired_accounts")
        return outcome

    # ---- one round trip ---------------------------------------------------------------

    def _call(self, account: str, message_type: int, body: Any) -> Any:
        """Seal, send once through one ChatD, authenticate and return the reply body."""
        shard = shard_for(account, self.config.shard_count)
        request, response_key = seal_client_request(
            self.config.fleet_public_key, account, shard, message_type, body)
        index = random.randrange(len(self._transports))
        address = self.config.chatd[index]
        stub = self._transports[index]._stub(address)
        try:
            reply = stub.Forward(request, timeout=self.call_timeout, metadata=[
                (TOKEN_METADATA_KEY, self._tokens.token_for(account))])
        except grpc.RpcError as err:
            code = err.code() if isinstance(err, grpc.Call) else grpc.StatusCode.UNKNOWN
            self._count(f"grpc:{code.name}")
            raise _Lost("fail" if code in _NOT_SENT else "info", code.name) from None
        return open_vault_reply(response_key, account, shard, message_type, reply.sealed)

    def _ksf_for(self, descriptor: str) -> KSF:
        if descriptor == self.ksf.descriptor:
            return self.ksf
        return ksf_from_descriptor(descriptor, allow_identity=self.ksf is IDENTITY_KSF)

