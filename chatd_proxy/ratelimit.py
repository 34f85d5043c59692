"""Token buckets per account and per client address, so no one can flood the vault.

Buckets are keyed by a keyed hash of the account (or address), never the value
itself, and the table is bounded: idle (full) buckets are swept once it grows.
The per-address bucket is checked before any token is verified, so a flood of
unauthenticated or many-account requests from one host is refused cheaply.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable
from urllib.parse import unquote

MAX_BUCKETS = 100_000


class RateLimiter:
    """Thread-safe token bucket per account: ``rate`` tokens/s, at most ``burst`` stored."""

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_buckets: int = MAX_BUCKETS,
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        self._rate = rate
        self._burst = float(burst)
        self._clock = clock
        self._max = max_buckets
        self._salt = os.urandom(16)
        self._lock = threading.Lock()
        self._buckets: dict[bytes, tuple[float, float]] = {}  # key -> (tokens, last refill)

    def allow(self, account: str) -> bool:
        """Take one token for ``account`` (or any key); False when its bucket is empty."""
        key = hashlib.blake2b(account.encode("utf-8"), key=self._salt, digest_size=16).digest()
        now = self._clock()
        with self._lock:
            tokens, last = self._buckets.get(key, (self._burst, now))
            tokens = min(self._burst, tokens + (now - last) * self._rate)
            allowed = tokens >= 1.0
            if allowed:
                tokens -= 1.0
            self._buckets[key] = (tokens, now)
            if len(self._buckets) > self._max:
                self._sweep(now)
            return allowed

    def __len__(self) -> int:
        with self._lock:
            return len(self._buckets)

    def _sweep(self, now: float) -> None:
        """Drop buckets that have refilled (forgetting them changes nothing); else the oldest."""
        full = [k for k, (t, last) in self._buckets.items()
                if t + (now - last) * self._rate >= self._burst]
        for key in full:
            del self._buckets[key]
        if len(self._buckets) > self._max:
            oldest = sorted(self._buckets, key=lambda k: self._buckets[k][1])
            for key in oldest[: len(self._buckets) - self._max]:
                del self._buckets[key]


def client_address(peer: str) -> str:
    """The host part of a gRPC peer string, so every connection of one host shares a bucket.

    ``ipv4:1.2.3.4:5678`` -> ``1.2.3.4``, ``ipv6:[::1]:5678`` -> ``::1``; unix
    sockets and anything unrecognised share one bucket per scheme (a local
    front end is one client).
    """
    scheme, sep, rest = peer.partition(":")
    rest = unquote(rest)  # gRPC percent-encodes brackets and zone ids in ipv6 peers
    if not sep:
        return "unknown"
    if scheme == "ipv4":
        host = rest.rpartition(":")[0]
        return host or rest or "ipv4"
    if scheme == "ipv6":
        host = rest.rpartition(":")[0] if rest.startswith("[") else rest
        host = host.strip("[]").partition("%")[0]  # zone ids are per-interface, not per-host
        return host.lower() or "ipv6"
    return scheme  # "unix", "unix-abstract", ...
