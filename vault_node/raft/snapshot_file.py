"""Sealed snapshot files: the vault state at a known log index, for backup and cluster rebuild.

File layout: ``magic(8) | format version(1) | fleet id(32) | sealed body``. The
body (JSON: state table, members, log position) is sealed under the HSM master
key with associated data binding the label, the format version and the fleet id,
so a file can't be altered, downgraded or restored into another fleet. Records
inside the state stay sealed exactly as the replicated state holds them, and
destroyed records stay as tombstones, so a restore never brings one back.

A restore writes the node's Raft snapshot into an empty data directory only: a
node that holds any state refuses, which keeps a restore from silently rolling
back attempt counters on a live member (see SECURITY.md for the residual risk).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vault_node.hsm.fleet import HsmError, MasterKeyBackend
from vault_node.raft.core import SNAPSHOT_MEMBERS_KEY
from vault_node.raft.journal import fsync_dir, write_snapshot
from vault_node.raft.membership import Member, MembershipError, members_from_plain, members_to_plain
from vault_node.raft.pysyncobj_edge import COMMAND_TYPE as _COMMAND_TYPE
from vault_node.raft.replication import SNAPSHOT_FILE
from vault_node.state import VaultState

FORMAT_VERSION = 1
_MAGIC = b"BKVSSNAP"
_AAD_LABEL = b"bkv sealed snapshot\x00"
_FLEET_ID_LABEL = b"bkv fleet id v1\x00"
_FLEET_ID_BYTES = 32
_NO_OP = bytes([_COMMAND_TYPE.NO_OP])


class SnapshotFileError(Exception):
    """The snapshot file can't be written, opened or restored; one line for the operator."""


def fleet_id(fleet_public_key: bytes) -> bytes:
    """A stable identifier of the fleet, derived from its public key."""
    return hashlib.sha256(_FLEET_ID_LABEL + fleet_public_key).digest()


@dataclass(frozen=True)
class SnapshotContents:
    """What a sealed snapshot holds. ``state`` is ``VaultState.to_plain()`` output."""

    state: dict[str, Any]
    members: tuple[Member, ...]
    last_entry: tuple[int, int]  # (log index, term) the state includes
    previous_entry: tuple[int, int]
    taken_at: int  # unix seconds
    source_node: str
    epoch: int = 0  # the shard's epoch when taken (each rebuild starts the next one)
    cluster_id: str = ""  # the shard identity it was taken from

    def __repr__(self) -> str:
        return (
            f"SnapshotContents(index={self.last_entry[0]}, accounts={self.accounts}, "
            f"members={len(self.members)})"
        )

    @property
    def accounts(self) -> int:
        entries = self.state.get("entries", [])
        return len(entries) if isinstance(entries, list) else 0

    def to_plain(self) -> dict[str, Any]:
        return {
            "format": FORMAT_VERSION,
            "state": self.state,
            "members": members_to_plain(self.members),
            "last_entry": list(self.last_entry),
            "previous_entry": list(self.previous_entry),
            "taken_at": self.taken_at,
            "source_node": self.source_node,
            "epoch": self.epoch,
            "cluster_id": self.cluster_id,
        }

    @classmethod
    def from_plain(cls, plain: Any) -> SnapshotContents:
        """Validate everything before anything is used; SnapshotFileError if malformed."""
        try:
            if not isinstance(plain, dict) or plain.get("format") != FORMAT_VERSION:
                raise ValueError("unsupported snapshot format")
            state = plain["state"]
            VaultState.from_plain(state)  # must load exactly as a node would load it
            last, previous = _position(plain["last_entry"]), _position(plain["previous_entry"])
            if not previous[0] < last[0] or previous[1] > last[1]:
                raise ValueError("inconsistent log position")
            taken_at, source = plain["taken_at"], plain["source_node"]
            if type(taken_at) is not int or not isinstance(source, str):
                raise ValueError("malformed snapshot header")
            members = tuple(members_from_plain(plain["members"]))
            epoch, cluster_id = plain.get("epoch", 0), plain.get("cluster_id", "")
            if type(epoch) is not int or epoch < 0 or not isinstance(cluster_id, str):
                raise ValueError("malformed shard identity")
        except (KeyError, TypeError, ValueError, MembershipError) as err:
            raise SnapshotFileError(f"snapshot contents are malformed ({err})") from None
        return cls(state, members, last, previous, taken_at, source, epoch, cluster_id)


def _position(value: Any) -> tuple[int, int]:
    if (
        not isinstance(value, list)
        or len(value) != 2
        or any(type(v) is not int or v < 0 for v in value)
    ):
        raise ValueError("malformed log position")
    return value[0], value[1]


def taken_now(
    state: Any, members: Any, last_entry: Any, previous_entry: Any, source_node: str,
    epoch: Any = 0, cluster_id: Any = "",
) -> SnapshotContents:
    """Contents taken at this moment, from plain data; validated like a file's contents."""
    return SnapshotContents.from_plain({
        "format": FORMAT_VERSION,
        "state": state,
        "members": members,
        "last_entry": last_entry,
        "previous_entry": previous_entry,
        "taken_at": int(time.time()),
        "source_node": source_node,
        "epoch": epoch,
        "cluster_id": cluster_id,
    })


def contents_from_reply(reply: dict[str, Any]) -> SnapshotContents:
    """Build (and validate) the contents from a node's admin snapshot reply."""
    node = reply.get("node")
    return taken_now(
        reply.get("state"),
        reply.get("members"),
        reply.get("last_entry"),
        reply.get("previous_entry"),
        node.get("node_id", "") if isinstance(node, dict) else "",
        reply.get("epoch", 0),
        reply.get("cluster_id", ""),
    )


def _aad(fid: bytes) -> bytes:
    return _AAD_LABEL + bytes([FORMAT_VERSION]) + fid


def seal(master: MasterKeyBackend, fleet_public_key: bytes, contents: SnapshotContents) -> bytes:
    """The sealed file bytes."""
    fid = fleet_id(fleet_public_key)
    body = json.dumps(contents.to_plain(), sort_keys=True, separators=(",", ":")).encode()
    return _MAGIC + bytes([FORMAT_VERSION]) + fid + master.seal(body, _aad(fid))


def open_sealed(
    master: MasterKeyBackend, fleet_public_key: bytes, blob: bytes
) -> SnapshotContents:
    """Check and open a sealed file; SnapshotFileError for anything but an intact file of ours."""
    header = len(_MAGIC) + 1 + _FLEET_ID_BYTES
    if len(blob) <= header or not blob.startswith(_MAGIC):
        raise SnapshotFileError("not a sealed vault snapshot")
    if blob[len(_MAGIC)] != FORMAT_VERSION:
        raise SnapshotFileError(f"unsupported snapshot format version {blob[len(_MAGIC)]}")
    fid = fleet_id(fleet_public_key)
    if blob[len(_MAGIC) + 1 : header] != fid:
        raise SnapshotFileError("the snapshot belongs to another fleet")
    try:
        body = master.open(blob[header:], _aad(fid))
    except HsmError:
        raise SnapshotFileError(
            "the snapshot does not open: altered, or sealed under another master key"
        ) from None
    try:
        plain = json.loads(body)
    except ValueError:
        raise SnapshotFileError("snapshot contents are malformed") from None
    return SnapshotContents.from_plain(plain)


def write_file(path: Path, blob: bytes) -> None:
    """Write ``blob`` to a new file, mode 0600, atomically; never overwrites."""
    if path.exists():
        raise SnapshotFileError(f"{path} already exists; refusing to overwrite")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, blob)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.link(tmp, path)  # fails instead of replacing a file created meanwhile
        fsync_dir(path.parent)
    except FileExistsError:
        raise SnapshotFileError(f"{path} already exists; refusing to overwrite") from None
    except OSError as err:
        raise SnapshotFileError(f"cannot write {path}: {err.strerror}") from None
    finally:
        tmp.unlink(missing_ok=True)


def restore_into(data_dir: Path, contents: SnapshotContents, members: tuple[Member, ...]) -> Path:
    """Install ``contents`` as the Raft snapshot of a stopped node with an empty data directory.

    ``members`` (the node's bootstrap list) becomes the restored membership, so a
    cluster can be rebuilt on new addresses. Returns the snapshot path written.
    """
    if data_dir.exists():
        if not data_dir.is_dir():
            raise SnapshotFileError(f"{data_dir} is not a directory")
        if any(data_dir.iterdir()):
            raise SnapshotFileError(
                f"data directory {data_dir} is not empty; restore only into a stopped node's "
                "empty data directory"
            )
    try:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        plain = dict(contents.state)
        plain[SNAPSHOT_MEMBERS_KEY] = members_to_plain(members)
        last = (_NO_OP, *contents.last_entry)
        previous = (_NO_OP, *contents.previous_entry)
        path = data_dir / SNAPSHOT_FILE
        write_snapshot(path, plain, last, previous, durable=True)
    except OSError as err:
        raise SnapshotFileError(f"cannot write into {data_dir}: {err.strerror}") from None
    return path
