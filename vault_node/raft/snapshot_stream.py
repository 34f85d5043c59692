"""A node's Raft snapshot as a stream of rows: written from a read view, checked before use.

Layout::

    "BKVSNAP3" | u32 header length | header (JSON) | rows | u32 0 | SHA-256 of all before

Each row is ``u32 length | vault_node.state.entry_bytes(account_id, entry)``, in
account-id order. The header says where the state stands (the Raft entries it
includes, the index of the last vault command applied, the shard's identity and
epoch, the members) and what it holds (entry count and state digest). A reader
accepts the rows only once the trailer hash and the recomputed digest match:
a torn, truncated or altered file installs nothing.

Nothing here holds the whole state in memory: writing reads the view in
batches, loading inserts in batches.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from vault_node.raft.journal import Entry, fsync_dir
from vault_node.state import (
    ACCOUNT_ID_BYTES,
    GUESS_TAG_BYTES,
    RECORD_ID_BYTES,
    AccountEntry,
    check_entry,
    entry_hash,
    state_digest,
)

MAGIC = b"BKVSNAP3"
FORMAT_VERSION = 3
_U32 = struct.Struct(">I")
_FIXED = struct.Struct(">HHBBI")
_ROW_HEAD = ACCOUNT_ID_BYTES + RECORD_ID_BYTES + _FIXED.size
MAX_HEADER_BYTES = 1 << 20
MAX_ROW_BYTES = _ROW_HEAD + 100 * GUESS_TAG_BYTES + 16 * 1024
_DIGEST_MODULUS = 1 << 256
LOAD_BATCH = 4096


class SnapshotFormatError(ValueError):
    """Not an intact snapshot of this format."""


@dataclass(frozen=True)
class SnapshotHeader:
    """Where a snapshot's state stands and what it holds."""

    last: Entry  # the Raft entry the state includes up to (its command kept as is)
    previous: Entry  # the entry before it (command blanked: never applied or sent again)
    state_index: int  # index of the last vault command applied into the state
    count: int
    digest: bytes
    members: list[Any] = field(default_factory=list)
    cluster_id: str = ""  # the shard's identity; a rebuilt shard gets a fresh one
    epoch: int = 0  # how many times the shard was rebuilt from a snapshot
    taken_at_ms: int = 0

    def to_json(self) -> bytes:
        plain = {
            "version": FORMAT_VERSION,
            "last": [self.last[0].hex(), self.last[1], self.last[2]],
            "previous": [self.previous[0].hex(), self.previous[1], self.previous[2]],
            "state_index": self.state_index,
            "count": self.count,
            "digest": self.digest.hex(),
            "members": self.members,
            "cluster_id": self.cluster_id,
            "epoch": self.epoch,
            "taken_at_ms": self.taken_at_ms,
        }
        return json.dumps(plain, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> SnapshotHeader:
        try:
            plain = json.loads(data)
            if plain["version"] != FORMAT_VERSION:
                raise SnapshotFormatError("unsupported snapshot version")
            last, previous = (_entry(plain[k]) for k in ("last", "previous"))
            header = cls(last, previous, plain["state_index"], plain["count"],
                         bytes.fromhex(plain["digest"]), plain["members"],
                         plain["cluster_id"], plain["epoch"], plain["taken_at_ms"])
        except (ValueError, KeyError, TypeError) as err:
            raise SnapshotFormatError("malformed snapshot header") from err
        ints = (header.state_index, header.count, header.epoch, header.taken_at_ms)
        if (any(type(v) is not int or v < 0 for v in ints) or len(header.digest) != 32
                or not isinstance(header.members, list) or not isinstance(header.cluster_id, str)
                or header.state_index > header.last[1] or header.previous[1] >= header.last[1]):
            raise SnapshotFormatError("malformed snapshot header")
        return header


def _entry(value: Any) -> Entry:
    command_hex, idx, term = value
    if type(idx) is not int or type(term) is not int or idx < 0 or term < 0:
        raise SnapshotFormatError("malformed snapshot header")
    return bytes.fromhex(command_hex), idx, term


def parse_row(row: bytes) -> tuple[bytes, AccountEntry]:
    """One row back into (account id, entry); SnapshotFormatError unless well formed."""
    if len(row) < _ROW_HEAD:
        raise SnapshotFormatError("short snapshot row")
    account_id = row[:ACCOUNT_ID_BYTES]
    record_id = row[ACCOUNT_ID_BYTES : ACCOUNT_ID_BYTES + RECORD_ID_BYTES]
    attempts, limit, destroyed, ntags, sealed_len = _FIXED.unpack_from(
        row, ACCOUNT_ID_BYTES + RECORD_ID_BYTES)
    tags_end = _ROW_HEAD + ntags * GUESS_TAG_BYTES
    if destroyed > 1 or len(row) != tags_end + sealed_len:
        raise SnapshotFormatError("malformed snapshot row")
    tags = tuple(row[i : i + GUESS_TAG_BYTES] for i in range(_ROW_HEAD, tags_end, GUESS_TAG_BYTES))
    try:
        entry = check_entry(AccountEntry(record_id, row[tags_end:], attempts, limit,
                                         bool(destroyed), tags))
    except ValueError:
        raise SnapshotFormatError("malformed snapshot row") from None
    return account_id, entry


class _HashingWriter:
    def __init__(self, out: IO[bytes]) -> None:
        self.out, self.hash, self.size = out, hashlib.sha256(), 0

    def write(self, data: bytes) -> None:
        self.out.write(data)
        self.hash.update(data)
        self.size += len(data)


SYNC_EVERY_BYTES = 16 << 20


def write_stream(path: Path, header: SnapshotHeader, rows: Iterator[list[bytes]], *,
                 durable: bool) -> int:
    """Write a snapshot atomically (tmp, fsync, rename); returns its size in bytes.

    ``rows`` are ``entry_bytes`` encodings in account-id order. A durable write
    syncs every ``SYNC_EVERY_BYTES`` as it goes, so the final sync is no burst
    that would hold up the journal's fsyncs (the commit path) behind it.
    """
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb", buffering=1 << 20) as raw:
            out = _HashingWriter(raw)
            head = header.to_json()
            out.write(MAGIC + _U32.pack(len(head)) + head)
            synced = 0
            for batch in rows:
                out.write(b"".join([_U32.pack(len(b)) + b for b in batch]))
                if durable and out.size - synced >= SYNC_EVERY_BYTES:
                    raw.flush()
                    os.fdatasync(raw.fileno())
                    synced = out.size
            out.write(_U32.pack(0))
            raw.write(out.hash.digest())
            raw.flush()
            if durable:
                os.fsync(raw.fileno())
            size = out.size + 32
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    if durable:
        fsync_dir(path.parent)
    return size


class _HashingReader:
    def __init__(self, source: IO[bytes]) -> None:
        self.source, self.hash = source, hashlib.sha256()

    def read(self, n: int) -> bytes:
        data = self.source.read(n)
        if len(data) != n:
            raise SnapshotFormatError("truncated snapshot")
        self.hash.update(data)
        return data


def read_header(path: Path) -> SnapshotHeader:
    """The header alone (no check of the rows): where a snapshot on disk stands."""
    with path.open("rb") as f:
        reader = _HashingReader(f)
        return _header(reader)


def _header(reader: _HashingReader) -> SnapshotHeader:
    if reader.read(len(MAGIC)) != MAGIC:
        raise SnapshotFormatError("not a vault Raft snapshot")
    (length,) = _U32.unpack(reader.read(4))
    if length > MAX_HEADER_BYTES:
        raise SnapshotFormatError("snapshot header too large")
    return SnapshotHeader.from_json(reader.read(length))


def read_stream(path: Path, sink: Callable[[list[tuple[bytes, AccountEntry]]], None]
                ) -> tuple[SnapshotHeader, int]:
    """Feed every row to ``sink`` in batches, then check the whole file.

    Returns the header and the state's digest sum. Raises SnapshotFormatError
    if the file is torn, altered or inconsistent with its header -- after rows
    were fed, so ``sink`` must write somewhere that is thrown away on failure
    (a temporary database)."""
    count, total, previous = 0, 0, b""
    with path.open("rb", buffering=1 << 20) as f:
        reader = _HashingReader(f)
        header = _header(reader)
        batch: list[tuple[bytes, AccountEntry]] = []
        while True:
            (length,) = _U32.unpack(reader.read(4))
            if length == 0:
                break
            if length > MAX_ROW_BYTES:
                raise SnapshotFormatError("snapshot row too large")
            account_id, entry = parse_row(reader.read(length))
            if account_id <= previous:
                raise SnapshotFormatError("snapshot rows out of order")
            previous = account_id
            total += entry_hash(account_id, entry)
            count += 1
            batch.append((account_id, entry))
            if len(batch) >= LOAD_BATCH:
                sink(batch)
                batch = []
        if batch:
            sink(batch)
        expected = reader.hash.digest()
        trailer = f.read(32)
        if f.read(1) or not hmac.compare_digest(trailer, expected):
            raise SnapshotFormatError("snapshot checksum mismatch")
    total %= _DIGEST_MODULUS
    if count != header.count or state_digest(count, total) != header.digest:
        raise SnapshotFormatError("snapshot rows do not match its header")
    return header, total
