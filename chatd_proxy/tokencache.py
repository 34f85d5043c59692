"""Remember account tokens ChatD has already verified, until they expire.

A client sends the same token with every request of a session (LOGIN_START,
LOGIN_FINISH, ...). Verifying its Ed25519 signature again each time costs
ChatD more CPU than the rest of the token handling, and the answer can't
change: the same string under the same key verifies the same way. So a token
that passed ``verify_token`` is remembered, by its exact string, with the
account and the expiry it carries; a later request with that string is
accepted while the expiry lies in the future, and the entry is dropped once it
doesn't. The cache is bounded (least recently used entries go first) and its
contents are never logged or shown.
"""

from __future__ import annotations

import base64
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from bkv_protocol.errors import ProtocolError
from bkv_protocol.tokens import verify_token

DEFAULT_MAX_ENTRIES = 4096
# A token's bytes start with version(1) then expiry(uint64, big-endian, Unix seconds).
_EXPIRY = struct.Struct(">Q")


class VerifiedTokenCache:
    """``verify(token) -> account`` with the verdicts of unexpired tokens remembered."""

    def __init__(
        self,
        public_key: bytes,
        *,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be positive")
        self._public_key = public_key
        self._max = max_entries
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, tuple[str, int]] = OrderedDict()

    def __repr__(self) -> str:
        return f"VerifiedTokenCache({len(self)} entries)"

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def verify(self, token: str) -> str:
        """The account ``token`` speaks for; ProtocolError if invalid or expired."""
        now = self._clock()
        with self._lock:
            hit = self._entries.get(token)
            if hit is not None:
                account, expiry = hit
                if now < expiry:
                    self._entries.move_to_end(token)
                    return account
                del self._entries[token]
        account = verify_token(self._public_key, token, now=now)
        expiry = _expiry_of(token)
        with self._lock:
            self._entries[token] = (account, expiry)
            self._entries.move_to_end(token)
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)
        return account


def _expiry_of(verified_token: str) -> int:
    """The expiry field of a token ``verify_token`` accepted (so its encoding is canonical)."""
    raw = base64.urlsafe_b64decode(verified_token + "=" * (-len(verified_token) % 4))
    if len(raw) < 1 + _EXPIRY.size:
        raise ProtocolError("token is too short")
    expiry: int = _EXPIRY.unpack_from(raw, 1)[0]
    return expiry
