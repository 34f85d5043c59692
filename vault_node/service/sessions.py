"""Login sessions between KE2 and KE3, held only in the leader's memory.

A session is single use and short lived. It is never replicated: after a leader
change the client simply starts again (its guess was already counted). Sessions
for an account's last allowed attempt are remembered as such, so that a wrong
KE3 *or* an expiry destroys the record. Every session leaves the table through
``take``, ``sweep`` or ``drain``, so the service can give each counted guess one fate.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

SESSION_ID_BYTES = 16


@dataclass(frozen=True)
class LoginSession:
    """What the leader keeps between LOGIN_START and LOGIN_FINISH."""

    session_id: bytes = field(repr=False)
    account: str = field(repr=False)
    shard: int
    account_id: bytes = field(repr=False)
    record_id: bytes = field(repr=False)
    server_state: Any = field(repr=False)
    key_deposit: bytes = field(repr=False)
    attempts_left: int
    last_attempt: bool
    expires_at: float
    # True when this session carries a guess this node counted (not a free re-delivery
    # of one counted before): its end is the attempt's fate in the metrics
    counted: bool = False


class SessionTable:
    """Thread-safe, bounded map session_id -> LoginSession with expiry."""

    def __init__(
        self,
        *,
        max_sessions: int,
        ttl_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._max = max_sessions
        self._ttl = ttl_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._sessions: dict[bytes, LoginSession] = {}

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions)

    @staticmethod
    def new_session_id() -> bytes:
        return secrets.token_bytes(SESSION_ID_BYTES)

    def open_counted(self) -> int:
        """Sessions whose guess this node counted and whose fate is still open."""
        with self._lock:
            return sum(1 for s in self._sessions.values() if s.counted)

    def deadline(self) -> float:
        return self._clock() + self._ttl

    def now(self) -> float:
        """The table's clock (monotonic seconds; a test's fake clock in unit tests)."""
        return self._clock()

    @property
    def ttl(self) -> float:
        return self._ttl

    def has_room(self) -> bool:
        """Checked *before* a guess is counted, so a full table never costs an attempt."""
        with self._lock:
            return len(self._sessions) < self._max

    def add(self, session: LoginSession) -> None:
        # Never refuses: the guess behind it is already committed. has_room() bounds the
        # table to max_sessions plus the number of concurrent handlers.
        with self._lock:
            self._sessions[session.session_id] = session

    def take(self, session_id: bytes, account_id: bytes, shard: int) -> LoginSession | None:
        """Remove and return the session if it belongs to this account and shard.

        A session id presented for another account leaves that session untouched.
        The caller must still check :meth:`expired` on the result.
        """
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None:
                return None
            if session.shard != shard or not hmac.compare_digest(session.account_id, account_id):
                return None
            del self._sessions[session_id]
            return session

    def expired(self, session: LoginSession) -> bool:
        return self._clock() >= session.expires_at

    def open_last_attempts(self) -> set[bytes]:
        """Account ids with an unexpired last-attempt session (it may still succeed)."""
        now = self._clock()
        with self._lock:
            return {s.account_id for s in self._sessions.values()
                    if s.last_attempt and now < s.expires_at}

    def sweep(self) -> list[LoginSession]:
        """Remove and return every expired session."""
        now = self._clock()
        with self._lock:
            gone = [s for s in self._sessions.values() if now >= s.expires_at]
            for s in gone:
                del self._sessions[s.session_id]
        return gone

    def drain(self) -> list[LoginSession]:
        """Remove and return every session (on loss of leadership or shutdown)."""
        with self._lock:
            gone = list(self._sessions.values())
            self._sessions.clear()
        return gone
