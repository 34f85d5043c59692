"""The vault node's audit trail: one JSON line per applied command, identical on every node.

Lines are written from the Raft apply path, so every node writes the same
events in the same order with the same Raft index; the time is the one the
leader stamped into the entry (``log_entries.encode_entry``), not this node's clock.
A line names the account only by its keyed account id (already a one-way hash
of the account), never a sealed record, key, password or session.

Raft membership changes (``member add``/``remove``) are entries too and get a
``membership`` line when committed: the change, the member's node id, data center,
Raft address and a fingerprint of its link public key. The leader stamps no time
into membership entries, so their ``time`` is null.

The file is append-only and idempotent by index: after a restart the node
re-applies its journal and lines at or below the last audited index are
skipped. Entries covered by a snapshot installed from the leader were never
applied here, so their range is recorded as one explicit ``gap`` line.
Lines are written at apply time and fsynced at most once a second from the Raft
tick, always before a snapshot is written, and at close -- not with every
journal sync: a crash can lose only lines whose entries are still in the journal
(the snapshot path synced everything older), and those are re-applied, so
re-audited, at restart. This keeps the audit off the commit path's fsyncs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from vault_node.state import (
    ApplyResult,
    BeginAttempt,
    Command,
    Delete,
    DestroyIfExhausted,
    Put,
    ResetAttempts,
)

AUDIT_FILE = "audit.jsonl"
SYNC_INTERVAL_SECONDS = 1.0

log = logging.getLogger("vault_node.raft.audit")

_EVENTS: dict[type, str] = {
    Put: "registration",
    BeginAttempt: "attempt",
    ResetAttempts: "success",
    DestroyIfExhausted: "destruction",
    Delete: "delete",
}


class AuditError(Exception):
    """The audit file can't be opened or read as an audit trail."""


def format_time(time_ms: int | None) -> str | None:
    """ISO 8601 UTC with milliseconds, from the leader's stamp (``None`` if unstamped)."""
    if time_ms is None:
        return None
    stamp = datetime.fromtimestamp(time_ms / 1000, tz=UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{time_ms % 1000:03d}Z"


def audit_record(
    index: int, command: Command | None, result: ApplyResult, time_ms: int | None
) -> dict[str, Any]:
    """The audit line for one applied entry: what happened, never what was stored.

    ``command`` is ``None`` for a committed entry that did not decode.
    """
    record: dict[str, Any] = {
        "index": index,
        "time": format_time(time_ms),
        "event": "invalid" if command is None else _EVENTS[type(command)],
        "outcome": result.outcome.value,
    }
    if command is not None:
        record["account"] = command.account_id.hex()
        record_id = getattr(command, "record_id", b"") or result.record_id
        if record_id:
            record["record"] = record_id.hex()
        if not isinstance(command, Delete):
            record["attempts"] = result.attempts
            record["limit"] = result.limit
        if result.repeated:  # a guess already counted since the last reset, delivered again
            record["repeated"] = True
    return record


_CHANGE_NAMES = {"add": "add", "rem": "remove"}  # pysyncobj's names -> the audit's


def link_key_fingerprint(link_key_hex: str) -> str | None:
    """First 16 hex digits of SHA-256 over the raw link public key (None if unknown)."""
    if not link_key_hex:
        return None
    return hashlib.sha256(bytes.fromhex(link_key_hex)).hexdigest()[:16]


def membership_record(index: int, payload: bytes) -> dict[str, Any]:
    """The audit line for a committed membership entry (``membership.encode_change`` bytes).

    Membership entries carry no leader timestamp, so ``time`` is null. A payload that
    does not decode (pysyncobj ignores it too) is audited as ``outcome: invalid``.
    """
    from vault_node.raft.membership import decode_change  # keeps pysyncobj out of the CLI

    record: dict[str, Any] = {"index": index, "time": None, "event": "membership"}
    change = decode_change(payload)
    if change is None:
        record["outcome"] = "invalid"
        return record
    kind, member = change
    record.update(
        change=_CHANGE_NAMES[kind],
        node=member.node_id,
        datacenter=member.datacenter,
        raft_address=member.raft_address,
        link_key_fingerprint=link_key_fingerprint(member.link_key),
    )
    return record


def gap_record(first: int, last: int, reason: str = "snapshot") -> dict[str, Any]:
    """Entries ``first..last`` have no lines here: installed by snapshot, or a failed write."""
    return {"index": last, "event": "gap", "first": first, "reason": reason}


def encode_line(record: dict[str, Any]) -> bytes:
    return json.dumps(record, separators=(",", ":"), sort_keys=True).encode("ascii") + b"\n"


class AuditLog:
    """The append-only audit file of one node; used from the Raft tick thread."""

    def __init__(self, path: Path, *, fsync: bool = True) -> None:
        self.path = Path(path)
        self._fsync = fsync
        self._lock = threading.Lock()
        self._dirty = False
        self._synced_at = time.monotonic()
        self._lost_from = 0  # first index whose line could not be written, if any
        self.write_errors = 0
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        except OSError as err:
            raise AuditError(f"cannot open the audit file {self.path}: {err.strerror}") from None
        try:
            os.fchmod(self._fd, 0o600)
            self.last_index = self._recover()
        except (OSError, AuditError):
            os.close(self._fd)
            raise

    def __repr__(self) -> str:
        return f"AuditLog(path={str(self.path)!r}, last_index={self.last_index})"

    def _recover(self) -> int:
        """The last audited index; drops a torn final line left by a crash mid-write."""
        size = os.fstat(self._fd).st_size
        data = os.pread(self._fd, size, 0) if size else b""
        complete = data[: data.rfind(b"\n") + 1]
        if len(complete) != len(data):
            os.ftruncate(self._fd, len(complete))
        last = 0
        for record in _ordered_records(complete, self.path):
            last = record["index"]
        return last

    def record(
        self, index: int, command: Command | None, result: ApplyResult, time_ms: int | None
    ) -> None:
        """Audit one applied entry, unless this index was audited before (a journal replay)."""
        if index <= self.last_index:
            return
        self._append(encode_line(audit_record(index, command, result, time_ms)), index)

    def membership(self, index: int, payload: bytes) -> None:
        """Audit one committed membership entry, unless this index was audited before."""
        if index <= self.last_index:
            return
        self._append(encode_line(membership_record(index, payload)), index)

    def snapshot_installed(self, last_index: int) -> None:
        """State jumped to ``last_index`` without applying entries: note the unaudited range."""
        if last_index > self.last_index:
            self._append(encode_line(gap_record(self.last_index + 1, last_index)), last_index)

    def applied_unaudited(self, index: int) -> None:
        """An entry the state already held at start-up (a crash lost its line): say so."""
        if index > self.last_index:
            self._append(encode_line(gap_record(self.last_index + 1, index, "crash")), index)

    def _append(self, line: bytes, index: int) -> None:
        """Write one line. Never raises: the apply path must not fail on the audit's disk.

        A line that can't be written is logged and later covered by a gap line
        (reason ``write_error``) in front of the next line that can.
        """
        with self._lock:
            try:
                if self._lost_from:
                    gap = gap_record(self._lost_from, index - 1, "write_error")
                    prefix = encode_line(gap) if index - 1 >= self._lost_from else b""
                else:
                    prefix = b""
                before = os.fstat(self._fd).st_size
                try:
                    _write_all(self._fd, prefix + line)
                except OSError:
                    os.ftruncate(self._fd, before)  # no torn line in the middle of the file
                    raise
            except OSError as err:
                self.write_errors += 1
                self._lost_from = self._lost_from or self.last_index + 1
                log.error("audit: cannot write %s: %s", self.path, err.strerror)
                return
            self._lost_from = 0
            self.last_index = index
            self._dirty = True

    def sync_if_due(self, interval: float = SYNC_INTERVAL_SECONDS) -> None:
        """``sync`` unless the last one was less than ``interval`` seconds ago."""
        now = time.monotonic()
        if now - self._synced_at >= interval:
            self._synced_at = now
            self.sync()

    def sync(self) -> None:
        """Make written lines durable (one fsync if anything was written since the last)."""
        with self._lock:
            if self._dirty and self._fsync:
                try:
                    os.fsync(self._fd)
                except OSError as err:
                    self.write_errors += 1
                    log.error("audit: cannot sync %s: %s", self.path, err.strerror)
            self._dirty = False

    def close(self) -> None:
        self.sync()
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def read_audit(path: Path, since: int = 0) -> Iterator[dict[str, Any]]:
    """Yield the audit lines with index >= ``since``; AuditError if the file is not ordered.

    A torn final line (no newline) is ignored, as the node does at start-up.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise AuditError(f"cannot read the audit file {path}: {err.strerror}") from None
    for record in _ordered_records(data[: data.rfind(b"\n") + 1], path):
        if record["index"] >= since:
            yield record


def _ordered_records(lines: bytes, path: Path) -> Iterator[dict[str, Any]]:
    """Each complete line as a record; AuditError unless indexes strictly increase."""
    last = 0
    for number, line in enumerate(lines.splitlines(), 1):
        try:
            record = json.loads(line)
            index = record["index"]
        except (ValueError, KeyError, TypeError):
            raise AuditError(f"{path}: line {number} is not an audit line") from None
        if not isinstance(record, dict) or type(index) is not int or index <= last:
            raise AuditError(f"{path}: line {number} is out of order (index {index!r})")
        last = index
        yield record


def print_audit(config_path: Path, since: int = 0) -> int:
    """``bkv-vault-node audit``: print a node's audit lines in order; 1 if the file is damaged."""
    from vault_node.config import ConfigError, NodeConfig  # the CLI edge only

    try:
        cfg = NodeConfig.load(config_path)
        path = cfg.audit_file or cfg.data_dir / AUDIT_FILE
        for record in read_audit(path, since):
            print(encode_line(record).decode("ascii"), end="")
    except (ConfigError, AuditError) as err:
        print(f"bkv-vault-node: {err}", file=sys.stderr)
        return 1
    return 0
