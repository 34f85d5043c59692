"""Snapshots: one small object per backup that names every entry and its chunks.

Stored as ``snapshot-<id>.age``, JSON::

    {"format": "bkv-snapshot/v1", "id": "20261130T120000Z-a1b2c3",
     "time": "2026-11-30T12:00:00Z", "host": "...", "source": "/abs/path",
     "parent": "<id>" | null,
     "summary": {"files": n, "dirs": n, "links": n, "size": bytes, "new_bytes": bytes},
     "tree": [{"path": "a/b.jpg", "type": "file", "mode": 420, "mtime_ns": n,
               "size": n, "inode": n, "chunks": ["<id hex>", ...]},
              {"path": "a", "type": "dir", "mode": 493, "mtime_ns": n},
              {"path": "l", "type": "symlink", "mode": 511, "mtime_ns": n, "target": "a/b.jpg"}]}

Paths are relative, "/"-separated, parents before children; bytes that are
not UTF-8 travel as Python's surrogate escapes inside JSON's ``\\u`` escapes.
"""

from __future__ import annotations

import json
import posixpath
import re
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

SNAPSHOT_PREFIX = "snapshot-"
SNAPSHOT_SUFFIX = ".age"
SNAPSHOT_FORMAT = "bkv-snapshot/v1"
MAX_SNAPSHOT_BYTES = 1024 * 1024 * 1024
SNAPSHOT_ID_RE = re.compile(r"\d{8}T\d{6}Z-[0-9a-f]{6}")
_ID_TIME = "%Y%m%dT%H%M%SZ"
_TIME = "%Y-%m-%dT%H:%M:%SZ"
KINDS = ("file", "dir", "symlink")


class SnapshotFormatError(ValueError):
    """A snapshot object's plaintext is not a valid snapshot."""


def new_snapshot_id(now: datetime) -> str:
    """UTC second, then microseconds (20 bits) and 4 random bits: ids sort by creation."""
    moment = now.astimezone(UTC)
    suffix = (moment.microsecond << 4) | secrets.randbelow(16)
    return f"{moment.strftime(_ID_TIME)}-{suffix:06x}"


def snapshot_name(snapshot_id: str) -> str:
    return f"{SNAPSHOT_PREFIX}{snapshot_id}{SNAPSHOT_SUFFIX}"


def snapshot_id_of(name: str) -> str | None:
    """The id in an object name, or None when it is not a snapshot object."""
    if name.startswith(SNAPSHOT_PREFIX) and name.endswith(SNAPSHOT_SUFFIX):
        sid = name[len(SNAPSHOT_PREFIX) : -len(SNAPSHOT_SUFFIX)]
        return sid if SNAPSHOT_ID_RE.fullmatch(sid) else None
    return None


@dataclass(slots=True)
class Node:
    path: str
    type: str
    mode: int
    mtime_ns: int
    size: int = 0
    inode: int = 0
    chunks: list[bytes] = field(default_factory=list)
    target: str = ""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "path": self.path, "type": self.type, "mode": self.mode, "mtime_ns": self.mtime_ns
        }
        if self.type == "file":
            out.update(size=self.size, inode=self.inode, chunks=[c.hex() for c in self.chunks])
        elif self.type == "symlink":
            out["target"] = self.target
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Node:
        path, kind = data["path"], data["type"]
        if not isinstance(path, str) or kind not in KINDS or not _safe_path(path):
            raise SnapshotFormatError(f"unsafe or malformed entry {path!r}")
        node = cls(path, kind, int(data["mode"]) & 0o7777, int(data["mtime_ns"]))
        if kind == "file":
            node.size, node.inode = int(data["size"]), int(data.get("inode", 0))
            node.chunks = [bytes.fromhex(c) for c in data["chunks"]]
        elif kind == "symlink":
            node.target = str(data["target"])
            if not link_inside(path, node.target):
                raise SnapshotFormatError(f"link {path!r} points outside the backup")
        return node


@dataclass
class Snapshot:
    id: str
    time: datetime
    host: str
    source: str
    parent: str | None
    summary: dict[str, int]
    tree: list[Node]

    def encode(self) -> bytes:
        data = {
            "format": SNAPSHOT_FORMAT,
            "id": self.id,
            "time": self.time.strftime(_TIME),
            "host": self.host,
            "source": self.source,
            "parent": self.parent,
            "summary": self.summary,
            "tree": [node.to_json() for node in self.tree],
        }
        return json.dumps(data, separators=(",", ":")).encode()


def decode_snapshot(raw: bytes | bytearray, expected_id: str) -> Snapshot:
    """Parse a snapshot strictly; it must carry the id its object name gave."""
    try:
        data = json.loads(raw)
        if not isinstance(data, dict) or data.get("format") != SNAPSHOT_FORMAT:
            raise SnapshotFormatError("not a bkv snapshot")
        if data["id"] != expected_id:
            raise SnapshotFormatError("snapshot id does not match its name")
        summary = {str(k): int(v) for k, v in data["summary"].items()}
        tree = [Node.from_json(item) for item in data["tree"]]
        when = datetime.strptime(data["time"], _TIME).replace(tzinfo=UTC)
        parent = data.get("parent")
        return Snapshot(
            expected_id, when, str(data["host"]), str(data["source"]),
            parent if isinstance(parent, str) else None, summary, tree,
        )  # fmt: skip
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        if isinstance(err, SnapshotFormatError):
            raise
        raise SnapshotFormatError(f"malformed snapshot: {err}") from None


def _safe_path(path: str) -> bool:
    parts = path.split("/")
    return bool(path) and not path.startswith("/") and all(p not in ("", ".", "..") for p in parts)


def link_inside(link_path: str, target: str) -> bool:
    """Whether a relative link target stays inside the restored folder."""
    if posixpath.isabs(target):
        return False
    joined = posixpath.normpath(posixpath.join(posixpath.dirname(link_path), target))
    return joined != ".." and not joined.startswith("../") and not posixpath.isabs(joined)
