"""Durable Raft journal and snapshot files for pysyncobj.

pysyncobj's own file journal writes through mmap and never fsyncs, so an entry a
node has acknowledged can vanish in a power loss. This journal appends with
``os.pwrite`` and leaves durability to ``sync()``, which the replication layer
calls once per batch (group commit) before the node counts or acknowledges
anything. Term and vote are written with fsync before ``setCurrentTerm`` returns,
because pysyncobj sends the vote right after. Records carry a CRC so a torn tail
(a crash mid-write of an unacknowledged entry) is detected and cut off on load.

Snapshots are JSON plain data (no pickle) with a SHA-256 trailer, written
tmp + fsync + rename + directory fsync.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import os
import struct
import zlib
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_MAGIC = b"BKVJRNL1"
_HEADER = struct.Struct(">IIQQ")  # payload length, crc32, index, term
SNAPSHOT_MAGIC_V1 = b"BKVSNAP1\n"
NO_OP_COMMAND_TYPE = 1  # pysyncobj's _COMMAND_TYPE.NO_OP (the edge checks it at import)
_BASE_ENTRY_COMMAND = bytes([NO_OP_COMMAND_TYPE])  # what a snapshot's base entry keeps

Entry = tuple[bytes, int, int]  # (command, log index, term) as pysyncobj stores them


def fsync_dir(path: Path) -> None:
    """Make a rename or link in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` so a crash leaves either the old or the new file."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    if durable:
        fsync_dir(path.parent)


def _crc(command: bytes, idx: int, term: int) -> int:
    return zlib.crc32(struct.pack(">QQ", idx, term) + command)


def read_records(data: bytes) -> tuple[list[Entry], list[int], int]:
    """The intact records of a journal file's bytes: entries, their offsets, where they end.

    Stops at the first short or CRC-failing record (a torn tail, never
    acknowledged); the caller decides what to do with the bytes after the end.
    ValueError unless ``data`` starts with the journal magic.
    """
    if not data.startswith(_MAGIC):
        raise ValueError("not a vault Raft journal")
    entries: list[Entry] = []
    offsets: list[int] = []
    pos = len(_MAGIC)
    while pos + _HEADER.size <= len(data):
        length, crc, idx, term = _HEADER.unpack_from(data, pos)
        start = pos + _HEADER.size
        payload = data[start : start + length]
        if len(payload) != length or _crc(payload, idx, term) != crc:
            break
        offsets.append(pos)
        entries.append((payload, idx, term))
        pos = start + length
    return entries, offsets, pos


def meta_path(journal_path: Path) -> Path:
    """Where the journal's term, vote and commit index live."""
    return journal_path.with_name(journal_path.name + ".meta")


def load_meta(path: Path) -> dict[str, Any]:
    """The metadata table (empty if there is none yet); RuntimeError if unreadable."""
    try:
        meta = json.loads(path.read_bytes())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        raise RuntimeError(f"unreadable Raft metadata file {path}") from err
    if not isinstance(meta, dict):
        raise RuntimeError(f"malformed Raft metadata file {path}")
    return meta


class DurableJournal:
    """An append-only, CRC-checked Raft log whose writes become durable on ``sync()``."""

    def __init__(self, path: Path, *, fsync: bool = True) -> None:
        self._path = path
        self._meta_path = meta_path(path)
        self._fsync = fsync
        self._entries: list[Entry] = []
        self._offsets: list[int] = []
        self._dirty = False
        self.sync_count = 0
        self._meta = load_meta(self._meta_path)
        self._meta_dirty = False
        self._fd = self._open_and_load()

    # ---- loading -----------------------------------------------------------------

    def _open_and_load(self) -> int:
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        data = b""
        with contextlib.suppress(OSError):
            data = os.pread(fd, os.fstat(fd).st_size, 0)
        if not data:
            os.pwrite(fd, _MAGIC, 0)
            os.fsync(fd)
            fsync_dir(self._path.parent)
            self._end = len(_MAGIC)
            return fd
        try:
            self._entries, self._offsets, pos = read_records(data)
        except ValueError:
            os.close(fd)
            raise RuntimeError(f"{self._path} is not a vault Raft journal") from None
        if pos != len(data):
            log.warning("raft journal: discarding a torn tail of %d bytes", len(data) - pos)
            os.ftruncate(fd, pos)
            os.fsync(fd)
        self._end = pos
        return fd

    # ---- pysyncobj Journal interface ------------------------------------------------

    def add(self, command: bytes, idx: int, term: int) -> None:
        command = bytes(command)
        header = _HEADER.pack(len(command), _crc(command, idx, term), idx, term)
        os.pwrite(self._fd, header + command, self._end)
        self._offsets.append(self._end)
        self._entries.append((command, idx, term))
        self._end += len(header) + len(command)
        self._dirty = True

    def clear(self) -> None:
        self._truncate_at(0)

    def deleteEntriesFrom(self, entryFrom: int) -> None:
        if entryFrom < len(self._entries):
            self._truncate_at(entryFrom)

    def _truncate_at(self, position: int) -> None:
        offset = self._offsets[position] if position < len(self._offsets) else self._end
        del self._entries[position:]
        del self._offsets[position:]
        os.ftruncate(self._fd, offset)
        self._end = offset
        self._dirty = True

    def deleteEntriesTo(self, entryTo: int) -> None:
        """Drop the prefix covered by a snapshot: rewrite the journal atomically.

        pysyncobj keeps the snapshot's base entry as the log's first one, but only
        for its index and term: it is never applied or sent again (a follower that
        needs it gets the snapshot). Its command is blanked to a no-op, so a record
        that entry carried (one since destroyed or replaced) leaves the disk too.
        """
        if self._fsync:
            fsync_dir(self._path.parent)  # the snapshot's rename is durable before the log shrinks
        keep = self._entries[entryTo:]
        if keep:
            keep[0] = base_entry(keep[0])
        blob = bytearray(_MAGIC)
        offsets = []
        for command, idx, term in keep:
            offsets.append(len(blob))
            blob += _HEADER.pack(len(command), _crc(command, idx, term), idx, term) + command
        atomic_write(self._path, bytes(blob), durable=self._fsync)
        os.close(self._fd)
        self._fd = os.open(self._path, os.O_RDWR)
        self._entries, self._offsets, self._end = list(keep), offsets, len(blob)
        self._dirty = False

    def __getitem__(self, item: Any) -> Any:
        return self._entries[item]

    def __len__(self) -> int:
        return len(self._entries)

    def _destroy(self) -> None:
        if self._fd < 0:
            return
        self.sync()
        self._store_meta()
        os.close(self._fd)
        self._fd = -1

    def setRaftCommitIndex(self, raftCommitIndex: int) -> None:
        if self._meta.get("commit_index") != raftCommitIndex:
            self._meta["commit_index"] = raftCommitIndex
            self._meta_dirty = True

    def getRaftCommitIndex(self) -> int:
        return int(self._meta.get("commit_index", 1))

    def setCurrentTerm(self, term: int, votedForNodeId: str | None) -> None:
        """Durable before returning: pysyncobj sends the vote right after this call."""
        self._meta["term"] = term
        self._meta["voted_for"] = votedForNodeId
        self._store_meta()

    def getCurrentTerm(self) -> int:
        return int(self._meta.get("term", 0))

    def getVotedForNodeId(self) -> str | None:
        voted = self._meta.get("voted_for")
        return voted if isinstance(voted, str) else None

    def onOneSecondTimer(self) -> None:
        if self._meta_dirty:
            self._store_meta()

    # ---- durability ---------------------------------------------------------------

    def _store_meta(self) -> None:
        atomic_write(
            self._meta_path, json.dumps(self._meta, sort_keys=True).encode(), durable=self._fsync
        )
        self._meta_dirty = False

    def sync(self) -> None:
        """Make every appended or truncated entry durable (one fsync for the whole batch)."""
        if self._dirty and self._fd >= 0:
            if self._fsync:
                os.fdatasync(self._fd)
            self._dirty = False
            self.sync_count += 1

    @property
    def dirty(self) -> bool:
        return self._dirty

    @property
    def fsync_enabled(self) -> bool:
        return self._fsync


# ---- snapshots -------------------------------------------------------------------------


def base_entry(entry: Entry) -> Entry:
    """A snapshot's base (``previous``) entry as kept on disk: index and term, a no-op command.

    The snapshot and the journal must agree on it (pysyncobj compares them when it
    loads a snapshot), so both blank it the same way.
    """
    _command, idx, term = entry
    return _BASE_ENTRY_COMMAND, idx, term


def _entry_plain(entry: Entry) -> list[Any]:
    command, idx, term = entry
    return [bytes(command).hex(), int(idx), int(term)]


def _entry_from_plain(plain: Any) -> Entry:
    command_hex, idx, term = plain
    if type(idx) is not int or type(term) is not int:
        raise ValueError("malformed snapshot entry")
    return bytes.fromhex(command_hex), idx, term


def write_snapshot(
    path: Path, state_plain: dict[str, Any], last: Entry, previous: Entry, *, durable: bool = True
) -> None:
    """Write a snapshot (state as of entry ``last``) atomically."""
    body = json.dumps(
        {
            "state": state_plain,
            "last_entry": _entry_plain(last),
            "previous_entry": _entry_plain(previous),
        },
        sort_keys=True,
        separators=(",", ":"),
    ).encode()
    trailer = hashlib.sha256(body).hexdigest().encode()
    atomic_write(path, SNAPSHOT_MAGIC_V1 + body + b"\n" + trailer, durable=durable)


def is_legacy_snapshot(path: Path) -> bool:
    """A snapshot in the JSON format written before the state database existed.

    Reads the magic only: the current format's files run to hundreds of megabytes.
    """
    with path.open("rb") as f:
        return f.read(len(SNAPSHOT_MAGIC_V1)) == SNAPSHOT_MAGIC_V1


def read_snapshot(path: Path) -> tuple[dict[str, Any], Entry, Entry]:
    """Read and check a snapshot: (state plain data, last entry, previous entry)."""
    data = path.read_bytes()
    if not data.startswith(SNAPSHOT_MAGIC_V1):
        raise ValueError("not a vault snapshot")
    body, _, trailer = data[len(SNAPSHOT_MAGIC_V1) :].rpartition(b"\n")
    if not hmac.compare_digest(hashlib.sha256(body).hexdigest().encode(), trailer):
        raise ValueError("snapshot checksum mismatch")
    plain = json.loads(body)
    return (
        plain["state"],
        _entry_from_plain(plain["last_entry"]),
        _entry_from_plain(plain["previous_entry"]),
    )


def make_durable(path: Path, *, fsync: bool = True) -> None:
    """Owner-only mode and fsync for a snapshot pysyncobj received from the leader."""
    os.chmod(path, 0o600)  # pysyncobj creates received files with the default umask
    if not fsync:
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_dir(path.parent)
