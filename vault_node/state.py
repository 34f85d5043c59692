"""The vault's replicated state machine: pure, deterministic, no I/O.

Every node applies the same committed commands in the same order and must reach
the same state, so nothing here reads clocks, randomness or the environment.
The Raft layer (``vault_node.raft.replication``) only moves encoded commands around;
all policy -- attempt counting and destruction -- lives here, where it can be
tested exhaustively without sockets.

What is counted is distinct guesses, not deliveries: a ``BeginAttempt`` whose
guess tag was already counted since the last reset is the same guess delivered
again (a retried or replayed KE1) and costs nothing. That keeps the limit exact,
because a guess is tested through the OPRF evaluation of the KE1's blinded
element, which is deterministic: any number of KE2 for one blinded element test
one password.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

ACCOUNT_ID_BYTES = 32
RECORD_ID_BYTES = 16
GUESS_TAG_BYTES = 16
MIN_LIMIT = 1
MAX_LIMIT = 100
MAX_SEALED_RECORD_BYTES = 16 * 1024  # keeps every log entry far below one Raft batch


class Outcome(StrEnum):
    """What applying a command did."""

    GRANTED = "granted"
    DESTROYED = "destroyed"
    NOT_REGISTERED = "not_registered"
    OK = "ok"
    STALE = "stale"
    INVALID = "invalid"  # a committed entry that fails validation: applied as a no-op


@dataclass(frozen=True)
class Put:
    """Store (or replace) an account's record; resets its attempt counter."""

    account_id: bytes
    record_id: bytes
    sealed_record: bytes
    limit: int

    def __repr__(self) -> str:  # never print sealed material or raw ids
        return f"Put(limit={self.limit}, sealed_record=<{len(self.sealed_record)} bytes>)"


@dataclass(frozen=True)
class BeginAttempt:
    """Count one password guess before the guess can be tested.

    ``guess_tag`` (``GUESS_TAG_BYTES``) names the guess; the service derives it from
    the KE1's blinded element. Empty means untagged (log entries written before
    tags existed): such an attempt is always counted.
    """

    account_id: bytes
    guess_tag: bytes = b""

    def __repr__(self) -> str:
        return f"BeginAttempt(tagged={bool(self.guess_tag)})"


@dataclass(frozen=True)
class ResetAttempts:
    """A successful login: counter back to zero (only for the record that was verified)."""

    account_id: bytes
    record_id: bytes

    def __repr__(self) -> str:
        return "ResetAttempts()"


@dataclass(frozen=True)
class DestroyIfExhausted:
    """The last allowed guess failed or expired: erase the record now."""

    account_id: bytes
    record_id: bytes

    def __repr__(self) -> str:
        return "DestroyIfExhausted()"


@dataclass(frozen=True)
class Delete:
    """Forget an account entirely (tombstone included).

    With ``record_id`` (a deletion authorised by a login), only while that record
    is still the account's live record; empty deletes whatever is there.
    """

    account_id: bytes
    record_id: bytes = b""

    def __repr__(self) -> str:
        return f"Delete(bound={bool(self.record_id)})"


Command = Put | BeginAttempt | ResetAttempts | DestroyIfExhausted | Delete


@dataclass(frozen=True)
class ApplyResult:
    """The result of one applied command, as seen by the node that submitted it."""

    outcome: Outcome
    record_id: bytes = b""
    sealed_record: bytes = b""
    attempts: int = 0
    limit: int = 0
    repeated: bool = False  # GRANTED for a guess already counted: nothing was counted now

    def __repr__(self) -> str:
        return (
            f"ApplyResult(outcome={self.outcome.value}, attempts={self.attempts}, "
            f"limit={self.limit}, repeated={self.repeated}, "
            f"sealed_record=<{len(self.sealed_record)} bytes>)"
        )


@dataclass(frozen=True)
class AccountEntry:
    """One account's state. A destroyed entry is a tombstone with no sealed record.

    ``guess_tags`` are the tagged guesses counted since the last reset, in the
    order counted: at most ``attempts`` of them, none once destroyed.
    """

    record_id: bytes
    sealed_record: bytes
    attempts: int
    limit: int
    destroyed: bool = False
    guess_tags: tuple[bytes, ...] = ()

    def __repr__(self) -> str:
        return (
            f"AccountEntry(attempts={self.attempts}, limit={self.limit}, "
            f"destroyed={self.destroyed})"
        )


def _check_bytes(value: object, name: str, exact: int | None = None, maximum: int = 0) -> None:
    if not isinstance(value, bytes):
        raise ValueError(f"{name} must be bytes")
    if exact is not None and len(value) != exact:
        raise ValueError(f"{name} must be {exact} bytes")
    if maximum and len(value) > maximum:
        raise ValueError(f"{name} must be at most {maximum} bytes")


def validate(command: object) -> None:
    """Raise ValueError unless ``command`` is well formed; the leader checks before submitting."""
    if not isinstance(command, Put | BeginAttempt | ResetAttempts | DestroyIfExhausted | Delete):
        raise ValueError("unknown command type")
    _check_bytes(command.account_id, "account_id", ACCOUNT_ID_BYTES)
    if isinstance(command, Put | ResetAttempts | DestroyIfExhausted):
        _check_bytes(command.record_id, "record_id", RECORD_ID_BYTES)
    if isinstance(command, Delete) and command.record_id != b"":
        _check_bytes(command.record_id, "record_id", RECORD_ID_BYTES)
    if isinstance(command, BeginAttempt) and command.guess_tag != b"":
        _check_bytes(command.guess_tag, "guess_tag", GUESS_TAG_BYTES)
    if isinstance(command, Put):
        _check_bytes(command.sealed_record, "sealed_record", maximum=MAX_SEALED_RECORD_BYTES)
        if not command.sealed_record:
            raise ValueError("sealed_record must not be empty")
        if type(command.limit) is not int or not MIN_LIMIT <= command.limit <= MAX_LIMIT:
            raise ValueError(f"limit must be an integer in {MIN_LIMIT}..{MAX_LIMIT}")


class StateStore(Protocol):
    """Where the accounts live: a dict in memory, or an embedded engine on disk.

    The store only keeps what ``VaultState`` decides; it makes no decision.
    ``items`` yields in account-id order so snapshots are canonical.
    """

    def get(self, account_id: bytes) -> AccountEntry | None: ...
    def put(self, account_id: bytes, entry: AccountEntry, *, new: bool) -> None: ...
    def delete(self, account_id: bytes) -> None: ...
    def count(self) -> int: ...
    def items(self) -> Iterator[tuple[bytes, AccountEntry]]: ...
    def digest_sum(self) -> int: ...
    def set_digest_sum(self, value: int) -> None: ...
    def set_exhausted(self, account_id: bytes, record_id: bytes | None) -> None: ...
    def exhausted(self) -> list[tuple[bytes, bytes]]: ...


class MemoryStore:
    """The whole state in a dict: tests, tools and small shards."""

    def __init__(self) -> None:
        self._entries: dict[bytes, AccountEntry] = {}
        self._sum = 0
        # account id -> record id of every live record whose counter reached its limit
        self._exhausted: dict[bytes, bytes] = {}

    def get(self, account_id: bytes) -> AccountEntry | None:
        return self._entries.get(account_id)

    def put(self, account_id: bytes, entry: AccountEntry, *, new: bool) -> None:
        self._entries[account_id] = entry

    def delete(self, account_id: bytes) -> None:
        self._entries.pop(account_id, None)

    def count(self) -> int:
        return len(self._entries)

    def items(self) -> Iterator[tuple[bytes, AccountEntry]]:
        for account_id in sorted(self._entries):
            yield account_id, self._entries[account_id]

    def digest_sum(self) -> int:
        return self._sum

    def set_digest_sum(self, value: int) -> None:
        self._sum = value

    def set_exhausted(self, account_id: bytes, record_id: bytes | None) -> None:
        if record_id is None:
            self._exhausted.pop(account_id, None)
        else:
            self._exhausted[account_id] = record_id

    def exhausted(self) -> list[tuple[bytes, bytes]]:
        return list(self._exhausted.items())


_DIGEST_MODULUS = 1 << 256


def _exhausted_record(entry: AccountEntry | None) -> bytes | None:
    """The record id if ``entry`` is a live record with no guess left."""
    if entry is None or entry.destroyed or entry.attempts < entry.limit:
        return None
    return entry.record_id


def entry_head(e: AccountEntry) -> bytes:
    """The fixed-size part of an entry's encoding: counters, flags and lengths."""
    return struct.pack(">HHBBI", e.attempts, e.limit, int(e.destroyed), len(e.guess_tags),
                       len(e.sealed_record))


def entry_bytes(account_id: bytes, e: AccountEntry) -> bytes:
    """The canonical encoding of one account's state (also the snapshot row format)."""
    return account_id + e.record_id + entry_head(e) + b"".join(e.guess_tags) + e.sealed_record


def entry_hash(account_id: bytes, e: AccountEntry) -> int:
    """One entry's contribution to the state digest (a sum of these, mod 2^256)."""
    return int.from_bytes(hashlib.sha256(b"bkv-entry-v3\x00" + entry_bytes(account_id, e)).digest())


def state_digest(count: int, digest_sum: int) -> bytes:
    """The digest of a state from its entry count and the sum of its entry hashes.

    A sum of per-entry hashes is independent of order and updated in O(1) per
    command, so a shard of millions of accounts never re-reads them to say
    where it stands; equal states give equal digests on every node.
    """
    return hashlib.sha256(
        b"bkv-vault-state-v3\x00" + struct.pack(">Q", count) + digest_sum.to_bytes(32)
    ).digest()


class VaultState:
    """All accounts of one shard. Mutated only through ``apply``."""

    def __init__(self, store: StateStore | None = None) -> None:
        self._store: StateStore = store if store is not None else MemoryStore()

    @property
    def store(self) -> StateStore:
        return self._store

    def __len__(self) -> int:
        return self._store.count()

    def __repr__(self) -> str:
        return f"VaultState(accounts={len(self)})"

    def entry(self, account_id: bytes) -> AccountEntry | None:
        return self._store.get(account_id)

    def exhausted(self) -> list[tuple[bytes, bytes]]:
        """(account id, record id) of live records with no guess left, oldest first."""
        return self._store.exhausted()

    def apply(self, command: object) -> ApplyResult:
        """Apply one committed command. Never raises: a malformed entry is a no-op."""
        try:
            validate(command)
        except ValueError:
            return ApplyResult(Outcome.INVALID)
        return self._apply(command)

    def _write(self, account_id: bytes, old: AccountEntry | None, new: AccountEntry | None) -> None:
        """Store the decision, keeping the digest sum and the exhausted index in step."""
        store = self._store
        total = store.digest_sum()
        if old is not None:
            total -= entry_hash(account_id, old)
        if new is None:
            store.delete(account_id)
        else:
            total += entry_hash(account_id, new)
            store.put(account_id, new, new=old is None)
        store.set_digest_sum(total % _DIGEST_MODULUS)
        before = _exhausted_record(old)
        after = _exhausted_record(new)
        if after != before:  # the index changes rarely: most commands leave it alone
            store.set_exhausted(account_id, after)

    def _apply(self, command: object) -> ApplyResult:
        if not isinstance(command, Command):  # validate() refused it already; explicit under -O
            return ApplyResult(Outcome.INVALID)
        account_id = command.account_id
        current = self._store.get(account_id)
        if isinstance(command, Put):
            self._write(account_id, current, AccountEntry(
                command.record_id, command.sealed_record, 0, command.limit))
            return ApplyResult(Outcome.OK, command.record_id, attempts=0, limit=command.limit)
        if isinstance(command, Delete):
            if command.record_id and (
                current is None or current.destroyed or current.record_id != command.record_id
            ):
                return ApplyResult(Outcome.STALE)  # replaced or destroyed meanwhile
            if current is not None:
                self._write(account_id, current, None)
            return ApplyResult(Outcome.OK)
        if current is None:
            return ApplyResult(Outcome.NOT_REGISTERED)
        if isinstance(command, BeginAttempt):
            if current.destroyed:
                return ApplyResult(Outcome.DESTROYED, current.record_id, limit=current.limit)
            tag = command.guess_tag
            if tag and tag in current.guess_tags:  # the same guess again: already paid for
                return ApplyResult(Outcome.GRANTED, current.record_id, current.sealed_record,
                                   current.attempts, current.limit, repeated=True)
            if current.attempts >= current.limit:
                self._destroy(account_id, current)
                return ApplyResult(
                    Outcome.DESTROYED,
                    current.record_id,
                    attempts=current.attempts,
                    limit=current.limit,
                )
            attempts = current.attempts + 1
            tags = (*current.guess_tags, tag) if tag else current.guess_tags
            self._write(account_id, current, AccountEntry(
                current.record_id, current.sealed_record, attempts, current.limit, False, tags))
            return ApplyResult(
                Outcome.GRANTED, current.record_id, current.sealed_record, attempts, current.limit
            )
        if current.destroyed or current.record_id != command.record_id:
            return ApplyResult(Outcome.STALE, current.record_id, limit=current.limit)
        if isinstance(command, ResetAttempts):
            self._write(account_id, current, AccountEntry(
                current.record_id, current.sealed_record, 0, current.limit))
            return ApplyResult(Outcome.OK, current.record_id, attempts=0, limit=current.limit)
        # DestroyIfExhausted
        if current.attempts >= current.limit:
            self._destroy(account_id, current)
            return ApplyResult(
                Outcome.DESTROYED,
                current.record_id,
                attempts=current.attempts,
                limit=current.limit,
            )
        return ApplyResult(
            Outcome.STALE, current.record_id, attempts=current.attempts, limit=current.limit
        )

    def _destroy(self, account_id: bytes, current: AccountEntry) -> None:
        self._write(account_id, current, AccountEntry(
            current.record_id, b"", current.attempts, current.limit, destroyed=True))

    # ---- loading, snapshots and digests -----------------------------------------------

    def load_entry(self, account_id: bytes, entry: AccountEntry) -> None:
        """Add one entry read from a checked snapshot (ValueError on a duplicate)."""
        if len(account_id) != ACCOUNT_ID_BYTES or self._store.get(account_id) is not None:
            raise ValueError("malformed snapshot entry")
        self._write(account_id, None, entry)

    def digest(self) -> bytes:
        """Equal digests mean equal states (see ``state_digest``)."""
        return state_digest(self._store.count(), self._store.digest_sum())

    def to_plain(self) -> dict[str, Any]:
        """Snapshot as JSON-compatible plain data (hex strings, ints, bools).

        For tools and small shards (sealed snapshot files); a node's own snapshots
        stream rows (``vault_node.raft.snapshot_stream``). Version 2 adds each
        entry's guess tags; version 1 snapshots (no tags) still load.
        """
        return {
            "version": 2,
            "entries": [
                [
                    account_id.hex(),
                    e.record_id.hex(),
                    e.sealed_record.hex(),
                    e.attempts,
                    e.limit,
                    e.destroyed,
                    [t.hex() for t in e.guess_tags],
                ]
                for account_id, e in self._store.items()
            ],
        }

    @classmethod
    def from_plain(cls, plain: dict[str, Any], store: StateStore | None = None) -> VaultState:
        """Rebuild a state from ``to_plain`` output; raises ValueError if malformed."""
        version = plain.get("version") if isinstance(plain, dict) else None
        if version not in (1, 2):
            raise ValueError("unsupported snapshot version")
        state = cls(store)
        try:
            for item in plain["entries"]:
                if not isinstance(item, list) or len(item) != (6 if version == 1 else 7):
                    raise ValueError("malformed snapshot entry")
                state.load_entry(bytes.fromhex(item[0]), _entry_from_plain(item[1:]))
        except (KeyError, TypeError) as err:
            raise ValueError("malformed snapshot") from err
        return state


def check_entry(entry: AccountEntry) -> AccountEntry:
    """``entry`` if it is one the state machine can produce; ValueError otherwise."""
    tags = entry.guess_tags
    if (
        len(entry.record_id) != RECORD_ID_BYTES
        or type(entry.attempts) is not int
        or type(entry.limit) is not int
        or type(entry.destroyed) is not bool
        or not 0 <= entry.attempts <= entry.limit
        or not MIN_LIMIT <= entry.limit <= MAX_LIMIT
        or (entry.destroyed and (entry.sealed_record or tags))
        or (not entry.destroyed and not entry.sealed_record)
        or len(entry.sealed_record) > MAX_SEALED_RECORD_BYTES
        or len(tags) > entry.attempts
        or len(set(tags)) != len(tags)
        or any(len(t) != GUESS_TAG_BYTES for t in tags)
    ):
        raise ValueError("malformed snapshot entry")
    return entry


def _entry_from_plain(item: list[Any]) -> AccountEntry:
    """One snapshot entry after its account id; version 1 entries have no tag list."""
    record_hex, sealed_hex, attempts, limit, destroyed, *rest = item
    tag_list = rest[0] if rest else []
    if not isinstance(tag_list, list):
        raise ValueError("malformed snapshot entry")
    tags = tuple(bytes.fromhex(t) for t in tag_list)
    return check_entry(AccountEntry(bytes.fromhex(record_hex), bytes.fromhex(sealed_hex),
                                    attempts, limit, destroyed, tags))
