"""Read a stopped node's data directory into snapshot contents, without writing to it.

The state is the node's state database plus the committed journal entries it
does not hold yet, applied exactly as the node would apply them on start-up. Journal entries
are pysyncobj pickles; they are decoded by an unpickler that refuses every
global but a latin-1 bytes constructor, so a tampered disk can't run code here
(an entry needing anything else is refused). Nothing in the directory is
modified, not even a torn journal tail. Take it from a cleanly stopped node: the
commit index on disk may lag by up to a second after a crash.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from vault_node.raft import safe_pickle
from vault_node.raft.core import SNAPSHOT_MEMBERS_KEY
from vault_node.raft.journal import (
    Entry,
    is_legacy_snapshot,
    load_meta,
    meta_path,
    read_records,
    read_snapshot,
)
from vault_node.raft.log_entries import decode_entry
from vault_node.raft.membership import Member
from vault_node.raft.pysyncobj_edge import COMMAND_TYPE as _COMMAND_TYPE
from vault_node.raft.replication import JOURNAL_FILE, SNAPSHOT_FILE
from vault_node.raft.snapshot_file import SnapshotContents, SnapshotFileError, taken_now
from vault_node.raft.snapshot_stream import read_header
from vault_node.state import VaultState, state_digest
from vault_node.storage.sqlite_store import DB_FILE, StoreError, read_only_view

_REGULAR = bytes([_COMMAND_TYPE.REGULAR])


def _journal_entries(path: Path) -> list[Entry]:
    """The journal's intact entries, read as the node reads them (a torn tail is left alone)."""
    try:
        return read_records(path.read_bytes())[0]
    except FileNotFoundError:
        return []
    except ValueError:
        raise SnapshotFileError(f"{path} is not a vault Raft journal") from None


def _commit_index(journal_path: Path) -> int:
    try:
        meta = load_meta(meta_path(journal_path))
    except RuntimeError:
        raise SnapshotFileError("the Raft metadata file is unreadable") from None
    value = meta.get("commit_index", 0)
    return value if type(value) is int else 0


def _vault_entry(command: bytes) -> bytes | None:
    """The vault command inside a pysyncobj REGULAR entry, or None for other entry types."""
    if command[:1] != _REGULAR:
        return None
    try:
        decoded = safe_pickle.loads(command[1:])
    except (safe_pickle.UnpicklingError, EOFError, ValueError, TypeError):
        raise SnapshotFileError("a journal entry is malformed") from None
    if isinstance(decoded, tuple) and len(decoded) == 2 and isinstance(decoded[1], tuple):
        args = decoded[1]
        if len(args) == 1 and isinstance(args[0], bytes):
            return args[0]
    raise SnapshotFileError("a journal entry is malformed")


def read_data_dir(data_dir: Path, node_id: str, members: tuple[Member, ...]) -> SnapshotContents:
    """The committed state of a stopped node's data directory as snapshot contents.

    The state database, then the committed journal entries it does not hold yet,
    applied exactly as the node would apply them on start-up.
    """
    state, applied, epoch, cluster_id = VaultState(), 0, 0, ""
    positions: list[tuple[int, int]] = []
    snapshot, db = data_dir / SNAPSHOT_FILE, data_dir / DB_FILE
    try:
        if snapshot.exists():
            legacy = is_legacy_snapshot(snapshot)
            if legacy:
                plain, last, previous = read_snapshot(snapshot)
                plain.pop(SNAPSHOT_MEMBERS_KEY, None)
                state, applied = VaultState.from_plain(plain), last[1]
            else:
                header = read_header(snapshot)
                last, previous = header.last, header.previous
                epoch, cluster_id = header.epoch, header.cluster_id
            positions = [(previous[1], previous[2]), (last[1], last[2])]
            if not legacy and not db.exists():
                raise SnapshotFileError(f"{data_dir} has a snapshot but no state database")
        if db.exists() and not applied:
            with read_only_view(db) as view:
                for batch in view.rows():
                    for account_id, entry in batch:
                        state.load_entry(account_id, entry)
                applied = view.applied_index
                meta_epoch, meta_id = view.meta.get("epoch"), view.meta.get("cluster_id")
                epoch = meta_epoch if isinstance(meta_epoch, int) else epoch
                cluster_id = meta_id if isinstance(meta_id, str) else cluster_id
            if state.digest() != state_digest(view.count, view.digest_sum):
                raise SnapshotFileError(f"the state database in {data_dir} is inconsistent")
    except (OSError, ValueError, KeyError, TypeError, StoreError):
        raise SnapshotFileError(f"the node's state in {data_dir} is unusable") from None
    journal = data_dir / JOURNAL_FILE
    commit = _commit_index(journal)
    first = positions[-1][0] if positions else 0
    for command, idx, term in _journal_entries(journal):
        if idx > commit:
            continue
        encoded = _vault_entry(command) if idx > applied else None
        if encoded is not None:
            with contextlib.suppress(ValueError):  # a malformed entry is a no-op, as on the node
                state.apply(decode_entry(encoded)[0])
        if idx > first:
            positions.append((idx, term))
    if len(positions) < 2:
        raise SnapshotFileError(f"{data_dir} holds no committed state")
    return taken_now(state.to_plain(), [m.to_plain() for m in members],
                     list(positions[-1]), list(positions[-2]), node_id, epoch, cluster_id)
