"""Restore: rebuild a snapshot (or one path of it) in a new folder, pack by pack.

Each needed pack is fetched and opened once, by one of a few worker threads;
every chunk's keyed id is recomputed before its bytes are written, with
``pwrite`` at the chunk's place in its file, so files spanning many packs fill
in any order. Everything happens in a private temporary folder beside the
destination, renamed into place only when complete; any failure or Ctrl-C
removes it, so the destination is never half-filled.
"""

from __future__ import annotations

import hmac
import os
import posixpath
import secrets
import shutil
import stat
import threading
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from client_sdk.backup import check_destination
from client_sdk.backup.errors import (
    BackupError,
    BackupNotFound,
    DamagedBackupError,
    DestinationError,
)
from client_sdk.progress import ProgressCallback
from client_sdk.repository.index import Index
from client_sdk.repository.repo import Repository
from client_sdk.repository.signals import uninterrupted
from client_sdk.repository.snapshot import Node, Snapshot
from client_sdk.storage import ObjectNotFound


@dataclass
class RestoreResult:
    files: int = 0
    bytes: int = 0


@dataclass(frozen=True, slots=True)
class _Piece:
    chunk_id: bytes
    offset: int
    length: int
    file: Path
    file_offset: int


class PathNotInSnapshot(BackupError):
    """``--path`` names nothing in the snapshot."""


def load(repo: Repository, snapshot_id: str) -> Snapshot:
    try:
        return repo.load_snapshot(snapshot_id)
    except ObjectNotFound:
        raise BackupNotFound(f"backup not found: {snapshot_id} in {repo.url}") from None


def select(snapshot: Snapshot, path: str | None) -> list[Node]:
    """The nodes to restore: all, or ``path`` with its content and its parent folders."""
    tree = snapshot.tree
    links = {n.path for n in tree if n.type == "symlink"}
    for node in tree:
        parent = node.path.rpartition("/")[0]
        while parent:
            if parent in links:
                raise DamagedBackupError(f"snapshot {snapshot.id} has an entry inside a link")
            parent = parent.rpartition("/")[0]
    if path is None:
        return list(tree)
    wanted = posixpath.normpath(path.replace(os.sep, "/")).strip("/")
    wanted = "" if wanted == "." else wanted
    chosen = [n for n in tree if n.path == wanted or n.path.startswith(wanted + "/")]
    if not wanted or not chosen:
        raise PathNotInSnapshot(f"{path} is not in backup {snapshot.id}")
    parents = set()
    parent = wanted.rpartition("/")[0]
    while parent:
        parents.add(parent)
        parent = parent.rpartition("/")[0]
    return [n for n in tree if n.path in parents] + chosen


def restore(
    repo: Repository,
    snapshot_id: str,
    dest: Path,
    *,
    path: str | None = None,
    progress: ProgressCallback | None = None,
    workers: int = 2,
) -> RestoreResult:
    """Restore into ``dest`` (absent or empty), all or nothing."""
    dest = Path(dest)
    check_destination(dest)
    snapshot = load(repo, snapshot_id)
    nodes = select(snapshot, path)
    index = repo.load_index(repo.storage.names())
    missing = {c for n in nodes for c in n.chunks if c not in index}
    if missing:
        raise DamagedBackupError(
            f"backup {snapshot_id} in {repo.url} is damaged: {len(missing)} chunks are in no index"
        )
    temp = dest.parent / f".{dest.name}.restore-{secrets.token_hex(6)}"
    try:
        temp.mkdir(mode=0o700)
    except OSError as err:
        raise DestinationError(f"can't write in {dest.parent}: {err.strerror}") from None
    try:
        result = _Restorer(repo, index, temp, progress).run(nodes, workers)
        mode = stat.S_IMODE(dest.stat().st_mode) if dest.is_dir() else 0o700
        temp.chmod(mode)
        with uninterrupted():  # restored means done: an interrupt now changes nothing
            os.rename(temp, dest)  # replaces dest only if it is still an empty folder
        return result
    except OSError as err:
        raise DestinationError(f"can't restore into {dest}: {err.strerror or err}") from None
    finally:
        with uninterrupted():
            shutil.rmtree(temp, ignore_errors=True)


class _Restorer:
    def __init__(
        self, repo: Repository, index: Index, root: Path, progress: ProgressCallback | None
    ) -> None:
        self.repo = repo
        self.index = index
        self.root = root
        self.progress = progress
        self.lock = threading.Lock()
        self.done = 0
        self.total = 0

    def run(self, nodes: list[Node], workers: int) -> RestoreResult:
        result = RestoreResult()
        plan: dict[str, list[_Piece]] = defaultdict(list)
        for node in nodes:
            target = self.root / node.path
            if node.type == "dir":
                target.mkdir(mode=0o700)
            elif node.type == "file":
                if not node.chunks:  # the others are created by their first chunk
                    os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
                offset = 0
                for cid in node.chunks:
                    loc = self.index.chunks[cid]
                    plan[loc.pack].append(_Piece(cid, loc.offset, loc.length, target, offset))
                    offset += loc.length
                result.files += 1
                result.bytes += node.size
        self.total = result.bytes
        with ThreadPoolExecutor(workers, thread_name_prefix="bkv-restore") as pool:
            for _ in pool.map(self._pack, plan.items()):
                pass
        for node in nodes:  # links last: nothing is ever written through one
            if node.type == "symlink":
                os.symlink(node.target, self.root / node.path)
        for node in reversed(nodes):  # children first: a folder's mtime is set last
            target = self.root / node.path
            if node.type != "symlink":
                target.chmod(node.mode)
            os.utime(target, ns=(node.mtime_ns, node.mtime_ns), follow_symlinks=False)
        return result

    def _pack(self, item: tuple[str, list[_Piece]]) -> None:
        name, pieces = item
        plain, _entries = self.repo.read_pack(name)
        view = memoryview(plain)
        chunk_id = self.repo.keys.chunk_id
        verified: set[tuple[bytes, int]] = set()
        for piece in pieces:
            data = view[piece.offset : piece.offset + piece.length]
            if (piece.chunk_id, piece.offset) not in verified:
                if len(data) != piece.length or not hmac.compare_digest(
                    chunk_id(data), piece.chunk_id
                ):
                    raise DamagedBackupError(
                        f"{name} in {self.repo.url} is damaged: a chunk does not match its id"
                    )
                verified.add((piece.chunk_id, piece.offset))
            fd = os.open(piece.file, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                written = os.pwrite(fd, data, piece.file_offset)
                while written < len(data):
                    written += os.pwrite(fd, data[written:], piece.file_offset + written)
            finally:
                os.close(fd)
            if self.progress is not None:
                with self.lock:
                    self.done += piece.length
                    self.progress(self.done, self.total)


__all__ = ["PathNotInSnapshot", "RestoreResult", "restore", "select"]
