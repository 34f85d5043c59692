"""Snapshots that never stall replication: pysyncobj's ``Serializer``, replaced.

pysyncobj takes a snapshot on its tick thread (or in a forked child, which a
process with gRPC threads and an open database must not do), and a node's
whole state would be written while no entry is replicated. Here:

* **Taking one** costs the tick thread a durable commit of the state database
  and the opening of a read transaction (a consistent view at the applied
  index); a background thread streams the view into the snapshot file while
  commits go on. pysyncobj compacts the journal only once the file is complete
  and durable (``checkSerializing`` reports success then), never before.
* **Sending one** to a new or lagging member reads the complete file in
  bounded chunks. A transfer keeps the file it started with; while transfers
  of the previous file are under way, the new file's success is held back (so
  the journal still matches what they send) and no new transfer starts.
* **Receiving one** writes the chunks to a side file; at the last chunk it is
  checked (trailer hash, rows against the header's digest) and loaded into a
  fresh database beside the live one, which replaces it only then. A torn,
  altered or interrupted transfer installs nothing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from pathlib import Path
from typing import IO, Any, Protocol

from vault_node.raft.pysyncobj_edge import SERIALIZER_STATE
from vault_node.raft.snapshot_stream import SnapshotHeader, write_stream
from vault_node.storage.sqlite_store import ReadView

log = logging.getLogger("vault_node.raft")

CHUNK_BYTES = 512 * 1024  # one AppendEntries message of a snapshot transfer
# A chunk goes out only while less than this is still queued for the member: a slow
# receiver must not pile the whole snapshot into the sender's connection buffer
# (pysyncobj appends to one bytes object, so a growing backlog costs quadratic
# copying on the Raft thread and stalls heartbeats past an election timeout).
MAX_BACKLOG_CHUNKS = 2
BACKLOG_WAIT_SECONDS = 0.005
MAX_INCOMING_BYTES = 1 << 40


class SnapshotOwner(Protocol):
    """What the snapshotter needs from the replica (``VaultSyncObj``)."""

    def bkv_open_view(self) -> ReadView: ...
    def bkv_header(self, view: ReadView, last: Any, previous: Any, cluster: Any
                   ) -> SnapshotHeader: ...
    def bkv_snapshot_written(self) -> None: ...
    def bkv_load_snapshot(self, path: Path, *, installed: bool) -> tuple[Any, Any, Any]: ...
    def bkv_backlog(self, node: Any, wait: float = 0.0) -> int: ...


class Snapshotter:
    """Creates, sends and receives snapshot files for one replica (pysyncobj's interface)."""

    def __init__(self, owner: SnapshotOwner, path: Path, *, durable: bool,
                 chunk_bytes: int = CHUNK_BYTES) -> None:
        self._owner = owner
        self._path = path
        self._incoming_path = path.with_name(path.name + ".incoming")
        self._durable = durable
        self.chunk_bytes = chunk_bytes
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._result: bool | None = None  # outcome of the finished background write
        self._current_id = 0
        self._transfers: dict[Any, IO[bytes]] = {}
        self._held_by: set[Any] = set()  # transfers of the previous file still running
        self._incoming: IO[bytes] | None = None
        self._incoming_size = 0
        self._received = False
        # a crash may leave a half-written or half-received file: never used, removed
        for stale in (path.with_name(path.name + ".tmp"), self._incoming_path):
            stale.unlink(missing_ok=True)

    # ---- taking a snapshot --------------------------------------------------------------

    def checkSerializing(self) -> tuple[int, int | None]:
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return SERIALIZER_STATE.SERIALIZING, self._current_id
            if self._result is None:
                return SERIALIZER_STATE.NOT_SERIALIZING, None
            if self._result and self._held_by & set(self._transfers):
                return SERIALIZER_STATE.SERIALIZING, self._current_id
            ok, self._result, self._thread = self._result, None, None
            self._held_by = set()
        return (SERIALIZER_STATE.SUCCESS if ok else SERIALIZER_STATE.FAILED), self._current_id

    def busy(self) -> bool:
        with self._lock:
            return self._thread is not None or self._result is not None

    def serialize(self, data: Any, snapshot_id: int) -> None:
        """Start a snapshot of the state at ``data``'s last entry (tick thread)."""
        if self.busy():
            return
        _, last, previous, cluster = data
        try:
            view = self._owner.bkv_open_view()
            header = self._owner.bkv_header(view, last, previous, cluster)
        except Exception:
            log.exception("cannot start a snapshot")
            with self._lock:
                self._result = False
            return
        with self._lock:
            self._current_id = snapshot_id
            self._thread = threading.Thread(target=self._write, args=(view, header),
                                            name="raft-snapshot", daemon=True)
            self._thread.start()

    def _write(self, view: ReadView, header: SnapshotHeader) -> None:
        ok = False
        try:
            with view:
                write_stream(self._path, header, view.encoded_rows(), durable=self._durable)
            self._owner.bkv_snapshot_written()
            ok = True
        except Exception:
            log.exception("writing a snapshot failed; the journal is kept")
        with self._lock:
            self._result = ok
            if ok:
                self._held_by = set(self._transfers)

    def wait(self, timeout: float | None = None) -> None:
        """Block until a snapshot being written is done (tests and shutdown)."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)

    # ---- loading (start-up and installs) ------------------------------------------------

    def deserialize(self) -> tuple[None, Any, Any, Any]:
        installed, self._received = self._received, False
        path = self._incoming_path if installed else self._path
        last, previous, cluster = self._owner.bkv_load_snapshot(path, installed=installed)
        if installed:
            os.replace(self._incoming_path, self._path)
        return None, last, previous, cluster

    # ---- sending ------------------------------------------------------------------------

    def getTransmissionData(self, node: Any) -> tuple[bytes, bool, bool] | bool | None:
        if self._owner.bkv_backlog(node, BACKLOG_WAIT_SECONDS) >= \
                MAX_BACKLOG_CHUNKS * self.chunk_bytes:
            # the member has not taken the previous chunks yet; the short wait keeps
            # pysyncobj's send loop (it runs for one heartbeat period) from spinning
            return None
        with self._lock:
            transfer = self._transfers.get(node)
            if transfer is None:
                if self._held_by or not self._path.is_file():
                    return None  # the new file waits for its compaction
                try:
                    transfer = self._transfers[node] = self._path.open("rb")
                except OSError:
                    log.exception("cannot open the snapshot for a transfer")
                    return None
        first = transfer.tell() == 0
        try:
            data = transfer.read(self.chunk_bytes)
        except OSError:
            log.exception("reading the snapshot for a transfer failed")
            self.cancelTransmisstion(node)
            return False
        last = not data
        if last:
            self.cancelTransmisstion(node)
        return data, first, last

    def cancelTransmisstion(self, node: Any) -> None:  # pysyncobj's spelling
        with self._lock:
            transfer = self._transfers.pop(node, None)
        if transfer is not None:
            transfer.close()

    # ---- receiving ----------------------------------------------------------------------

    def setTransmissionData(self, data: Any) -> bool:
        """One chunk from the leader; True once a complete file waits to be installed."""
        if not (isinstance(data, tuple) and len(data) == 3 and isinstance(data[0], bytes)):
            return False
        chunk, first, last = data
        if first:
            self._close_incoming()
            fd = os.open(self._incoming_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            self._incoming, self._incoming_size = os.fdopen(fd, "wb"), 0
        incoming = self._incoming
        if incoming is None:
            return False
        self._incoming_size += len(chunk)
        if self._incoming_size > MAX_INCOMING_BYTES:
            log.warning("dropping a snapshot transfer past %d bytes", MAX_INCOMING_BYTES)
            self._close_incoming()
            return False
        try:
            incoming.write(chunk)
            if not last:
                return False
            incoming.flush()
            if self._durable:
                os.fsync(incoming.fileno())
        except OSError:
            log.exception("writing a received snapshot failed")
            self._close_incoming()
            return False
        incoming.close()
        self._incoming = None
        self._received = True
        return True

    def _close_incoming(self) -> None:
        if self._incoming is not None:
            with contextlib.suppress(OSError):
                self._incoming.close()
            self._incoming = None

    def close(self) -> None:
        self.wait(30.0)
        for node in list(self._transfers):
            self.cancelTransmisstion(node)
        self._close_incoming()

