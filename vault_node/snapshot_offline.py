"""Read a stopped node's data directory into snapshot contents, without writing to it.

The state is the node's Raft snapshot plus the committed journal entries after
it, applied exactly as the node would apply them on start-up. Journal entries
are pysyncobj pickles; they are decoded by an unpickler that refuses every
global but a latin-1 bytes constructor, so a tampered disk can't run code here
(an entry needing anything else is refused). Nothing in the directory is
modified, not even a torn journal tail. Take it from a cleanly stopped node: the
commit index on disk may lag by up to a second after a crash.
"""

from __future__ import annotations

import contextlib
import json
import struct
import time
import zlib
from pathlib import Path

from vault_node import safe_pickle
from vault_node.journal import read_snapshot
from vault_node.log_entries import decode_entry
from vault_node.membership import Member
from vault_node.raft_core import SNAPSHOT_MEMBERS_KEY
from vault_node.replication import JOURNAL_FILE, SNAPSHOT_FILE
from vault_node.snapshot_file import FORMAT_VERSION, SnapshotContents, SnapshotFileError
from vault_node.state import VaultState

# The journal file's layout (vault_node.journal): magic, then per entry
# payload length, crc32 over (index, term, payload), index, term, payload.
_MAGIC = b"BKVJRNL1"
_HEADER = struct.Struct(">IIQQ")
_REGULAR = 0  # pysyncobj's _COMMAND_TYPE.REGULAR


def _journal_entries(path: Path) -> list[tuple[bytes, int, int]]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    if not data.startswith(_MAGIC):
        raise SnapshotFileError(f"{path} is not a vault Raft journal")
    entries, pos = [], len(_MAGIC)
    while pos + _HEADER.size <= len(data):
        length, crc, idx, term = _HEADER.unpack_from(data, pos)
        payload = data[pos + _HEADER.size : pos + _HEADER.size + length]
        if len(payload) != length or zlib.crc32(struct.pack(">QQ", idx, term) + payload) != crc:
            break  # a torn tail was never acknowledged
        entries.append((payload, idx, term))
        pos += _HEADER.size + length
    return entries


def _commit_index(data_dir: Path) -> int:
    try:
        meta = json.loads((data_dir / (JOURNAL_FILE + ".meta")).read_bytes())
    except FileNotFoundError:
        return 0
    except ValueError:
        raise SnapshotFileError("the Raft metadata file is unreadable") from None
    value = meta.get("commit_index", 0) if isinstance(meta, dict) else 0
    return value if type(value) is int else 0


def _vault_entry(command: bytes) -> bytes | None:
    """The vault command inside a pysyncobj REGULAR entry, or None for other entry types."""
    if command[:1] != bytes([_REGULAR]):
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
    """The committed state of a stopped node's data directory as snapshot contents."""
    state, first = VaultState(), 0
    positions: list[tuple[int, int]] = []
    snapshot = data_dir / SNAPSHOT_FILE
    try:
        if snapshot.exists():
            plain, last, previous = read_snapshot(snapshot)
            plain.pop(SNAPSHOT_MEMBERS_KEY, None)
            state = VaultState.from_plain(plain)
            first = last[1]
            positions = [(previous[1], previous[2]), (last[1], last[2])]
    except (OSError, ValueError, KeyError, TypeError):
        raise SnapshotFileError(f"the node's snapshot {snapshot} is unusable") from None
    commit = _commit_index(data_dir)
    for command, idx, term in _journal_entries(data_dir / JOURNAL_FILE):
        if idx <= first or idx > commit:
            continue
        encoded = _vault_entry(command)
        if encoded is not None:
            with contextlib.suppress(ValueError):  # a malformed entry is a no-op, as on the node
                state.apply(decode_entry(encoded)[0])
        positions.append((idx, term))
    if len(positions) < 2:
        raise SnapshotFileError(f"{data_dir} holds no committed state")
    return SnapshotContents.from_plain({
        "format": FORMAT_VERSION,
        "state": state.to_plain(),
        "members": [m.to_plain() for m in members],
        "last_entry": list(positions[-1]),
        "previous_entry": list(positions[-2]),
        "taken_at": int(time.time()),
        "source_node": node_id,
    })
