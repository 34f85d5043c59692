"""Backup: walk the folder, chunk what changed, store only chunks the repository lacks.

Files whose path, size, mtime and inode match the parent snapshot (the newest
earlier backup of the same folder from this host) are not read at all: their
chunk list is copied, as restic does with its parent snapshot. Other files
are cut by the content-defined chunker; each chunk's keyed id is looked up in
the index, and only new chunks go into a pack. Full packs are sealed and
uploaded by worker threads (the AEAD, the MAC and the chunker release the
GIL, so both cores work), with a bounded number in flight so memory stays flat.

Order of publication: packs, then the index object naming them, then the
snapshot. A crash leaves at worst packs no index names (adopted by the next
backup) and never a snapshot that names a missing chunk. On an error or
Ctrl-C, the packs this run wrote are deleted again.
"""

from __future__ import annotations

import collections
import contextlib
import os
import socket
import stat
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from client_sdk.backup.archive import check_source, skip_reason
from client_sdk.backup.errors import BackupError, DamagedBackupError, SourceError, WrongKeyError
from client_sdk.progress import ProgressCallback
from client_sdk.repository.buffers import new_buffer
from client_sdk.repository.chunker import Chunker, Readable
from client_sdk.repository.index import Index, encode_index, new_index_name
from client_sdk.repository.lock import locked
from client_sdk.repository.pack import PackEntry, is_pack_name
from client_sdk.repository.repo import CONFIG_NAME, Repository
from client_sdk.repository.signals import uninterrupted
from client_sdk.repository.snapshot import (
    Node,
    Snapshot,
    link_inside,
    new_snapshot_id,
    snapshot_name,
)
from client_sdk.repository.uploader import Uploads
from client_sdk.storage import StorageError

WINDOW_SIZE = 16 * 1024 * 1024  # each file thread reads through one reused window
FILE_THREADS = 2
READ_AHEAD = 64  # files queued for the file threads
PARENT_SEARCH = 20


@dataclass
class BackupResult:
    """What ``bkv backup create`` reports."""

    snapshot_id: str
    files: int = 0
    dirs: int = 0
    links: int = 0
    size: int = 0
    new_bytes: int = 0
    stored_bytes: int = 0
    unchanged_files: int = 0
    adopted_packs: int = 0


@dataclass
class _Entry:
    rel: str
    info: os.stat_result


def scan(root: Path, on_skip: Callable[[str, str], None]) -> list[_Entry]:
    """Every entry to back up with its lstat, parents before children."""
    found: list[_Entry] = []
    stack = [""]
    while stack:
        rel = stack.pop()
        try:
            with os.scandir(root / rel if rel else root) as it:
                children = list(it)
        except OSError as err:
            raise SourceError(f"can't read {root / rel}: {err.strerror}") from None
        for entry in children:
            path = f"{rel}/{entry.name}" if rel else entry.name
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError as err:
                raise SourceError(f"can't read {root / path}: {err.strerror}") from None
            reason = skip_reason(root, path, info.st_mode)
            if not reason and stat.S_ISLNK(info.st_mode):
                with contextlib.suppress(OSError):  # a read error is reported when it is read
                    if not link_inside(path, os.readlink(root / path)):
                        reason = "symbolic link pointing outside the folder"
            if reason:
                on_skip(str(root / path), reason)
                continue
            found.append(_Entry(path, info))
            if stat.S_ISDIR(info.st_mode):
                stack.append(path)
    found.sort(key=lambda e: e.rel.split("/"))
    return found


class Archiver:
    """One backup run against an opened repository.

    Files are read, cut and hashed by ``workers`` file threads at once (the
    chunker, the MAC and reads release the GIL); the dedup decision and the
    copy into the current pack happen under one lock, in whatever order files
    finish; the snapshot keeps the folder's order.
    """

    def __init__(
        self,
        repo: Repository,
        index: Index,
        parent: Snapshot | None,
        *,
        workers: int,
        progress: ProgressCallback | None = None,
    ) -> None:
        self.repo = repo
        self.index = index
        self.parent = {n.path: n for n in parent.tree if n.type == "file"} if parent else {}
        self.uploads = Uploads(repo, workers)
        self.readers = ThreadPoolExecutor(FILE_THREADS, thread_name_prefix="bkv-read")
        self.local = threading.local()
        self.lock = threading.Lock()
        self.builder = self.uploads.builder()
        self.progress = progress
        self.done_bytes = 0
        self.total_bytes = 0
        self.new_bytes = 0

    def run(self, root: Path, entries: list[_Entry], result: BackupResult) -> list[Node]:
        self.total_bytes = sum(e.info.st_size for e in entries if stat.S_ISREG(e.info.st_mode))
        nodes: list[Node] = []
        reading: collections.deque[tuple[Node, Future[None]]] = collections.deque()
        for entry in entries:
            info = entry.info
            node = Node(entry.rel, "dir", stat.S_IMODE(info.st_mode), info.st_mtime_ns)
            nodes.append(node)
            if stat.S_ISREG(info.st_mode):
                node.type, node.inode = "file", info.st_ino
                result.files += 1
                if not self._unchanged(node, info, result):
                    reading.append((node, self.readers.submit(self._file, root / entry.rel, node)))
                    while len(reading) > READ_AHEAD:
                        self._collect(reading.popleft(), result)
            elif stat.S_ISLNK(info.st_mode):
                node.type = "symlink"
                try:
                    node.target = os.readlink(root / entry.rel)
                except OSError as err:
                    raise SourceError(f"can't read {root / entry.rel}: {err.strerror}") from None
                if not link_inside(entry.rel, node.target):
                    raise SourceError(f"can't read {root / entry.rel}: it changed while being "
                                      "backed up")  # fmt: skip
                result.links += 1
            else:
                result.dirs += 1
        while reading:
            self._collect(reading.popleft(), result)
        self.readers.shutdown(wait=True)
        if self.builder.entries:
            self.uploads.submit(self.builder)
        else:
            self.uploads.free.put(self.builder.buffer)
        self.uploads.finish()
        result.new_bytes = self.new_bytes
        result.size = sum(n.size for n in nodes)
        return nodes

    def stop(self) -> None:
        """After a failure: let running file threads end, start no more."""
        self.readers.shutdown(wait=True, cancel_futures=True)

    def _collect(self, item: tuple[Node, Future[None]], result: BackupResult) -> None:
        node, future = item
        future.result()
        self._advance(node.size)

    def _unchanged(self, node: Node, info: os.stat_result, result: BackupResult) -> bool:
        """The parent snapshot's chunks, when path, size, mtime and inode all match."""
        old = self.parent.get(node.path)
        if (
            old is None
            or (old.size, old.mtime_ns, old.inode) != (info.st_size, info.st_mtime_ns, info.st_ino)
            or not all(c in self.index for c in old.chunks)
        ):
            return False
        node.size, node.chunks = old.size, list(old.chunks)
        result.unchanged_files += 1
        self._advance(old.size)
        return True

    def _file(self, path: Path, node: Node) -> None:
        """File thread: read, cut and hash one file; store its new chunks."""
        local = self.local
        if not hasattr(local, "window"):
            local.window, local.chunker = new_buffer(WINDOW_SIZE), self.repo.chunker()
        try:
            with open(path, "rb", buffering=0) as handle:
                self._chunks(handle, node, local.chunker, local.window)
        except OSError as err:
            reason = err.strerror or "it changed while being backed up"
            raise SourceError(f"can't read {path}: {reason}") from None

    def _chunks(self, handle: Readable, node: Node, chunker: Chunker, window: memoryview) -> None:
        chunk_id = self.repo.keys.chunk_id
        index = self.index
        for data in chunker.file(handle, window):
            cid = chunk_id(data)
            node.chunks.append(cid)
            node.size += len(data)
            if cid in index:
                continue
            with self.lock:
                if cid in index:
                    continue
                index.add_pack(self.builder.name, [self.builder.add(cid, data)])
                self.new_bytes += len(data)
                if self.builder.full():
                    self.uploads.submit(self.builder)
                    self.builder = self.uploads.builder()

    def _advance(self, count: int) -> None:
        if self.progress is not None:
            self.done_bytes += count
            self.progress(self.done_bytes, self.total_bytes)


def _find_parent(repo: Repository, ids: list[str], source: str, host: str) -> Snapshot | None:
    for snapshot_id in reversed(ids[-PARENT_SEARCH:]):
        try:
            snap = repo.load_snapshot(snapshot_id)
        except DamagedBackupError:
            continue
        if snap.source == source and snap.host == host:
            return snap
    return None


def _adopt_orphans(repo: Repository, index: Index, names: list[str], workers: int) -> int:
    """Index the complete packs a killed backup left behind, so they are reused."""
    orphans = [n for n in names if is_pack_name(n) and n not in index.packs]

    def entries(name: str) -> list[PackEntry] | None:
        try:
            return repo.read_pack(name)[1]
        except (DamagedBackupError, WrongKeyError):
            return None  # not ours or not whole: prune removes it

    adopted = 0
    with ThreadPoolExecutor(workers) as pool:
        for name, found in zip(orphans, pool.map(entries, orphans), strict=True):
            if found is not None:
                index.add_pack(name, found)
                adopted += 1
    return adopted


def create(
    src_dir: Path,
    repo: Repository,
    *,
    on_skip: Callable[[str, str], None] | None = None,
    progress: ProgressCallback | None = None,
    workers: int = 2,
) -> BackupResult:
    """Back up ``src_dir`` into ``repo``; return the new snapshot's id and figures."""
    root = check_source(Path(src_dir))
    source = str(root.resolve())
    host = socket.gethostname()
    entries = scan(root, on_skip or (lambda _path, _reason: None))
    names = repo.storage.names()
    has_config = repo.has_config(names)
    if has_config:
        repo.check_config()
    with locked(repo, exclusive=False) as others:
        names = repo.storage.names()
        index = repo.load_index(names)
        ids = repo.snapshot_ids(names)
        parent = _find_parent(repo, ids, source, host)
        result = BackupResult(new_snapshot_id(datetime.now(UTC)))
        adopted_before = set(index.packs)
        if not others:  # a live backup's packs are its own to index
            result.adopted_packs = _adopt_orphans(repo, index, names, workers)
        adopted = {n: index.packs[n] for n in index.packs if n not in adopted_before}
        archiver = Archiver(repo, index, parent, workers=workers, progress=progress)
        index_name = new_index_name()
        snap_name = snapshot_name(result.snapshot_id)
        try:
            nodes = archiver.run(root, entries, result)
            written = {**adopted, **archiver.uploads.written}
            result.stored_bytes = archiver.uploads.stored
            if written:
                result.stored_bytes += repo.write(index_name, encode_index(written))
            if not has_config and CONFIG_NAME not in repo.storage.names():
                repo.write_config()
            snapshot = Snapshot(
                result.snapshot_id, datetime.now(UTC).replace(microsecond=0), host, source,
                parent.id if parent else None, _summary(result), nodes,
            )  # fmt: skip
            with uninterrupted():  # published means done: an interrupt now changes nothing
                result.stored_bytes += repo.write(snap_name, snapshot.encode())
        except BaseException:
            with uninterrupted():
                archiver.stop()
                if not _published(repo, snap_name):
                    archiver.uploads.discard()
                    with contextlib.suppress(StorageError):
                        repo.storage.delete(index_name)
            raise
    return result


def _published(repo: Repository, name: str) -> bool:
    """Whether ``name`` made it to storage (an interrupt can land just after publishing)."""
    try:
        return name in repo.storage.names()
    except StorageError:
        return False


def _summary(result: BackupResult) -> dict[str, int]:
    return {
        "files": result.files,
        "dirs": result.dirs,
        "links": result.links,
        "size": result.size,
        "new_bytes": result.new_bytes,
    }


__all__ = ["Archiver", "BackupError", "BackupResult", "create", "scan"]
