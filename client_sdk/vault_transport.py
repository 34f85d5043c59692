"""Getting sealed envelopes to the vault: gRPC to ChatD, and the account token it demands.

ChatD only ever sees a :class:`SealedRequest` (routing data in the clear,
payload sealed to the fleet) and relays a sealed reply; nothing here needs to
be secret from it except the bearer token. The transport tries the configured
ChatD addresses in order and rotates on UNAVAILABLE / DEADLINE_EXCEEDED, all
within one overall deadline; every other gRPC status is final and mapped to a
:mod:`client_sdk.errors` class. An UNAVAILABLE carrying ChatD's ``bkv-no-quorum``
trailer means the shard lost its majority: the other ChatDs are still asked once
(another data center may see the leader), then :class:`NoQuorum` is raised
without waiting for the deadline.

A request retried after DEADLINE_EXCEEDED may have reached the vault already:
a LOGIN_START may then count one guess twice. That errs on the side the guess
limit protects, and a later successful login resets the count.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Protocol

import grpc

from bkv_api.v1 import services_pb2_grpc
from bkv_ops.tls import ClientTls, TlsError, open_channel
from bkv_protocol.tokens import mint_token
from client_sdk.config import ClientConfig
from client_sdk.errors import (
    AccountRejected,
    ConfigError,
    NoQuorum,
    RateLimited,
    VaultError,
    VaultProtocolError,
    VaultUnavailable,
)

TOKEN_METADATA_KEY = "bkv-account-token"  # noqa: S105 (a header name, not a secret)
NO_QUORUM_METADATA_KEY = "bkv-no-quorum"  # ChatD's trailer: "<unreachable>/<total>"
TOKEN_TTL_SECONDS = 300
MAX_CACHED_TOKENS = 1024  # accounts whose current token is kept for reuse
MAX_MESSAGE_BYTES = 1 << 20
MIN_TRY_SECONDS = 1.0
ROUNDS = 3  # passes over the ChatD list before giving up (the deadline usually ends it first)
_BACKOFF_SECONDS = 0.2
_CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
]
_RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


class VaultTransport(Protocol):
    """Delivers one sealed request and returns the sealed reply bytes (or raises VaultError)."""

    def forward(self, request: Any, token: str) -> bytes: ...

    def close(self) -> None: ...


class TokenSource:
    """Account tokens for ChatD: minted locally (dev clusters) or the configured one.

    The signing key is read lazily, once, and kept out of the repr. A minted
    token is reused for the account until half its lifetime has passed: every
    request of a login then carries the same token, which spares the client a
    signature and lets ChatD answer from its cache of verified tokens.
    """

    def __init__(self, config: ClientConfig, *, ttl_seconds: int = TOKEN_TTL_SECONDS) -> None:
        if config.token_signing_key_file is None and config.token is None:
            raise ConfigError(
                "client config has neither token_signing_key_file nor token: "
                "no way to authenticate the account to ChatD"
            )
        self._key_file = config.token_signing_key_file
        self._static = config.token
        self._ttl = ttl_seconds
        self._signing_key: bytes | None = None
        self._minted: dict[str, tuple[str, float]] = {}  # account -> (token, reuse until)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        source = "signing key file" if self._key_file is not None else "configured token"
        return f"TokenSource({source})"

    def token_for(self, account: str) -> str:
        """A token for ``account``: a fresh short-lived one, or the configured static token."""
        if self._key_file is None:
            assert self._static is not None
            return self._static
        now = time.monotonic()
        with self._lock:
            cached = self._minted.get(account)
            if cached is not None and now < cached[1]:
                return cached[0]
            if self._signing_key is None:
                self._signing_key = read_signing_key(self._key_file)
            key = self._signing_key
        token: str = mint_token(key, account, ttl_seconds=self._ttl)
        with self._lock:
            if len(self._minted) >= MAX_CACHED_TOKENS:
                self._minted.clear()
            self._minted[account] = (token, now + self._ttl / 2)
        return token


def read_signing_key(path: Path) -> bytes:
    """Read a 32-byte Ed25519 seed stored raw or as 64 hex digits."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise ConfigError(f"token signing key {path}: can't read it ({err.strerror})") from None
    if len(raw) == 32:
        return raw
    text = raw.strip()
    if len(text) == 64:
        try:
            return bytes.fromhex(text.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            pass
    raise ConfigError(f"token signing key {path}: expected 32 raw bytes or 64 hex digits")


class ChatDTransport:
    """gRPC client for ``ChatD.Forward`` over the configured front ends, with rotation."""

    def __init__(
        self, addresses: list[str], deadline_seconds: float, *, tls: ClientTls | None = None
    ) -> None:
        if not addresses:
            raise ConfigError("no ChatD address configured")
        self._tls = tls  # set: TLS only; ChatD's certificate must chain to tls.ca_file
        self._addresses = list(addresses)
        self._deadline = deadline_seconds
        self._channels: dict[str, grpc.Channel] = {}
        self._stubs: dict[str, services_pb2_grpc.ChatDStub] = {}
        self._preferred = 0
        self._lock = threading.Lock()

    def forward(self, request: Any, token: str) -> bytes:
        """Send ``request`` to the first ChatD that answers; return ``SealedResponse.sealed``."""
        plan = ForwardPlan(len(self._addresses), self._deadline, self._preferred)
        while (attempt := plan.next()) is not None:
            index, timeout, pause = attempt
            if pause:
                time.sleep(pause)
            try:
                reply = self._stub(self._addresses[index]).Forward(
                    request, metadata=[(TOKEN_METADATA_KEY, token)], timeout=timeout
                )
            except grpc.RpcError as err:
                plan.failed(err)
                continue
            self._preferred = index
            sealed = reply.sealed
            if not isinstance(sealed, bytes):
                raise VaultProtocolError("ChatD answered with a malformed reply")
            return sealed
        raise plan.give_up(self._addresses, self._tls)

    def close(self) -> None:
        """Close every channel opened so far."""
        with self._lock:
            channels, self._channels = list(self._channels.values()), {}
            self._stubs = {}
        for channel in channels:
            channel.close()

    def _stub(self, address: str) -> services_pb2_grpc.ChatDStub:
        """One channel and stub per ChatD, made on first use (a stub per call costs CPU)."""
        with self._lock:
            stub = self._stubs.get(address)
            if stub is None:
                try:
                    channel = open_channel(address, self._tls, _CHANNEL_OPTIONS)
                except TlsError as err:
                    raise ConfigError(str(err)) from None
                self._channels[address] = channel
                stub = self._stubs[address] = services_pb2_grpc.ChatDStub(channel)
            return stub


class ForwardPlan:
    """Which ChatD to try next and for how long, shared by the sync and asyncio transports.

    Tries the configured front ends in order from the last one that answered,
    rotating on UNAVAILABLE / DEADLINE_EXCEEDED, all within one overall
    deadline, with a pause after each whole round; any other status is final.
    After one ChatD reports a lost quorum the others are asked once, then
    :class:`NoQuorum` ends it.
    """

    def __init__(self, count: int, deadline_seconds: float, preferred: int) -> None:
        self._n = count
        self._end = time.monotonic() + deadline_seconds
        self._per_try_cap = max(deadline_seconds / count, MIN_TRY_SECONDS)
        self._first = preferred
        self._attempt = -1
        self._tried: set[int] = set()
        self.last_failure = ""
        self.no_quorum: tuple[int, int] | None = None

    def next(self) -> tuple[int, float, float] | None:
        """(ChatD index, the try's timeout, pause before it), or None when out of time."""
        self._attempt += 1
        attempt = self._attempt
        if attempt >= ROUNDS * self._n:
            return None
        remaining = self._end - time.monotonic()
        if remaining <= 0:
            return None
        if self.no_quorum is not None and len(self._tried) == self._n:
            raise NoQuorum(*self.no_quorum)  # every ChatD tried, none reached a leader
        pause = 0.0
        if attempt and attempt % self._n == 0:  # a whole round failed: let front ends recover
            pause = min(_BACKOFF_SECONDS * (attempt // self._n), remaining / 2)
            remaining -= pause
        index = (self._first + attempt) % self._n
        self._tried.add(index)
        return index, max(min(remaining, self._per_try_cap), 0.001), pause

    def failed(self, err: grpc.RpcError) -> None:
        """Note a failed try; raise the mapped error unless it is worth another try."""
        code = err.code() if isinstance(err, grpc.Call) else grpc.StatusCode.UNKNOWN
        details = err.details() if isinstance(err, grpc.Call) else None
        if code not in _RETRYABLE:
            raise map_status(code, details) from None
        self.last_failure = _clean(details) or code.name
        self.no_quorum = _no_quorum(err) or self.no_quorum

    def give_up(self, addresses: list[str], tls: ClientTls | None) -> VaultError:
        """The error once no try succeeded in time."""
        if self.no_quorum is not None:
            return NoQuorum(*self.no_quorum)
        suffix = f" (last error: {self.last_failure})" if self.last_failure else ""
        return VaultUnavailable(
            f"vault unreachable via {', '.join(addresses)}"
            f"{_tls_hint(tls, self.last_failure)}{suffix}"
        )


def _tls_hint(tls: ClientTls | None, failure: str) -> str:
    """Name the likely TLS mistake: an untrusted certificate, or plaintext against TLS."""
    text = failure.lower()
    if tls is not None and any(w in text for w in ("handshake", "certificate", "hostname")):
        return f": ChatD's certificate does not verify against ca_file {tls.ca_file}"
    if tls is None and "socket closed" in text:
        return ": if ChatD serves TLS, set ca_file in the client config"
    return ""


def map_status(code: grpc.StatusCode, details: str | None) -> VaultError:
    """The error for a final (non-retryable) gRPC status from ChatD."""
    why = _clean(details)
    suffix = f" ({why})" if why else ""
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return AccountRejected(f"ChatD rejected the account token{suffix}")
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return AccountRejected(f"ChatD refused the token for this account{suffix}")
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return RateLimited(f"too many requests for this account, try again shortly{suffix}")
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return VaultProtocolError(
            f"the vault refused the request{suffix}: "
            "check fleet_public_key and shard_count in the client config"
        )
    if code in _RETRYABLE:
        return VaultUnavailable(f"vault unavailable{suffix}")
    return VaultError(f"ChatD call failed with {code.name}{suffix}")


def _no_quorum(err: grpc.RpcError) -> tuple[int, int] | None:
    """ChatD's ``bkv-no-quorum: "3/5"`` trailer as (unreachable, total), if present and sane."""
    trailing: Any = err.trailing_metadata() if isinstance(err, grpc.Call) else None
    for key, value in trailing or ():
        if key != NO_QUORUM_METADATA_KEY or not isinstance(value, str):
            continue
        down, _, total = value.partition("/")
        if down.isdigit() and total.isdigit() and 0 < int(down) <= int(total) <= 1000:
            return int(down), int(total)
    return None


def _clean(details: str | None, limit: int = 200) -> str:
    """Server-provided text, made safe for a one-line message."""
    if not details:
        return ""
    text = "".join(ch if ch.isprintable() else " " for ch in details).strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"
