"""pysyncobj integration internals: durable journal hook, fast replication, safe truncation.

Only ``vault_node.raft.replication`` uses this module. What it changes in pysyncobj's
behaviour, and why:

* **Durability before counting (invariant 6).** Every message this node sends
  (except a leader's AppendEntries, below) is preceded by one ``fdatasync`` of
  the journal if anything was appended since the last one, and every tick
  starts with the same. So a follower's AppendEntries acknowledgement and a
  leader's self-count in the commit computation only ever cover entries
  already on disk; a whole batch costs one fsync (group commit).
* **Latency.** pysyncobj replicates on its heartbeat. Here the tick thread is
  woken as soon as a command is queued, and the leader sends AppendEntries in
  the same tick in which it appended the batch.
* **No truncation of matching entries.** pysyncobj truncates a follower's log
  after ``prevLogIdx`` whenever the follower holds more entries, even when they
  match the leader's (a delayed or duplicated AppendEntries). Raft only
  truncates on conflict; committed entries never conflict, so this filter
  skips the already-held prefix and answers stale messages itself. pysyncobj's
  "truncating already-applied log entries" message is counted by
  ``TruncationMonitor`` so tests can assert it never fires.
* **Parallel leader fsync.** A leader sends a new batch *before* syncing its
  own journal and syncs right after, in the same call, so its disk write
  overlaps the followers'. The commit computation that counts the leader runs
  only in a later tick (the acknowledgements arrive in a later poll), after
  that sync. An AppendEntries acknowledges nothing, so sending it early is
  safe (the optimisation of section 10.2.1 of Ongaro's Raft thesis).
* **Authenticated, never executable link (invariant 5).** Every module-level
  change to pysyncobj lives in ``vault_node.raft.pysyncobj_edge`` (imported first,
  with its import-time shape check): the restricted codec for every pickle,
  and :class:`~vault_node.raft.pysyncobj_edge.LinkConnection` for every connection.
  ``password`` is set so pysyncobj runs its per-connection random-key exchange,
  and the node's "encryptor" is a :class:`~vault_node.raft.pysyncobj_edge.LinkPolicy`:
  its link secrets and the question "is this link key a current member's?".
  :class:`DurableTransport` gives each dialled connection the link key of the
  member it dials and refuses an incoming connection that claims another
  member's address than its key's, or a read-only node.
* **Membership survives restarts.** Dynamic membership is on (changes come
  only through ``vault_node.raft.admin_endpoint``). Snapshots record the members (with
  their ids and gRPC addresses) under ``SNAPSHOT_MEMBERS_KEY``, and at start-up
  the membership entries after the snapshot are replayed, so a restarted node
  uses the latest configuration in its log rather than its bootstrap list.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import select
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from vault_node.raft.audit import AuditLog
from vault_node.raft.journal import (
    DurableJournal,
    base_entry,
    fsync_dir,
    is_legacy_snapshot,
    read_snapshot,
)
from vault_node.raft.log_entries import decode_entry
from vault_node.raft.membership import (
    Member,
    decode_change,
    describe,
    encode_change,
    members_from_plain,
    members_to_plain,
)
from vault_node.raft.pysyncobj_edge import (  # importing it installs the hooks
    COMMAND_TYPE,
    MAX_ENTRY_TRANSMISSION_BYTES,
    LinkConnection,
    LinkPolicy,
    PipeNotifier,
    SyncObj,
    SyncObjConf,
    TCPTransport,
    replicated,
)
from vault_node.raft.snapshot_stream import SnapshotHeader, read_header, read_stream
from vault_node.raft.snapshotter import Snapshotter
from vault_node.raft.transport_cipher import LinkSecrets
from vault_node.state import (
    ApplyResult,
    Command,
    Delete,
    Outcome,
    Put,
    VaultState,
    state_digest,
)
from vault_node.storage.sqlite_store import DB_FILE, ReadView, SqliteStore

log = logging.getLogger("vault_node.raft")

_TRUNCATION_TEXT = "truncating already-applied log entries"
ERASE_DELAY_SECONDS = 3.0  # destroyed or replaced record -> log compaction on this node
MAX_TRANSMISSION_BYTES = MAX_ENTRY_TRANSMISSION_BYTES
SNAPSHOT_MEMBERS_KEY = "raft_members"


class TruncationMonitor(logging.Handler):
    """Counts pysyncobj's truncation-of-applied-entries message and re-reports it as an error."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if _TRUNCATION_TEXT in str(record.msg):
            self.count += 1
            log.error("raft safety: pysyncobj truncated already-applied log entries")


_MEMBERSHIP_ENTRY = COMMAND_TYPE.MEMBERSHIP  # an entry's first byte


def is_membership_entry(command: bytes) -> bool:
    """A log entry that changes the Raft group's membership."""
    return command[:1] == bytes([_MEMBERSHIP_ENTRY])


TRUNCATION_MONITOR = TruncationMonitor()
logging.getLogger("pysyncobj.syncobj").addHandler(TRUNCATION_MONITOR)

def filter_append_entries(
    journal: DurableJournal, message: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Rewrite an AppendEntries so pysyncobj never truncates entries that match the leader's.

    Returns the message to hand to pysyncobj and, for a stale message whose entries
    this node already holds, the acknowledgement to send on its behalf.
    """
    prev_idx, prev_term = message.get("prevLogIdx"), message.get("prevLogTerm")
    entries = message.get("entries") or []
    if prev_idx is None or len(journal) == 0:
        return message, None
    first, last = journal[0][1], journal[-1][1]
    if not first <= prev_idx <= last or journal[prev_idx - first][2] != prev_term:
        return message, None  # pysyncobj rejects it without truncating
    held = 0
    for _command, idx, term in entries:
        if idx != prev_idx + held + 1 or idx > last or journal[idx - first][2] != term:
            break
        held += 1
    matched = prev_idx + held
    if held == len(entries) and matched < last:
        stale = {k: v for k, v in message.items() if k not in ("prevLogIdx", "prevLogTerm")}
        stale.pop("entries", None)
        stale["commit_index"] = min(int(message.get("commit_index", 0)), matched)
        ack = {
            "type": "next_node_idx",
            "next_node_idx": matched + 1,
            "reset": False,
            "success": True,
        }
        return stale, ack
    if held == 0:
        return message, None
    rewritten = dict(message)
    rewritten["prevLogIdx"] = matched
    rewritten["prevLogTerm"] = journal[matched - first][2]
    rewritten["entries"] = entries[held:]
    return rewritten, None


class DurableTransport(TCPTransport):  # type: ignore[misc]
    """TCP transport that syncs the journal before anything leaves and filters AppendEntries.

    It also binds connections to members: a dialled connection must meet the link
    key of the member it dials, and an incoming one may only claim the address of
    the member whose key it authenticated with (never a read-only node).
    """

    def __init__(self, syncObj: Any, selfNode: Any, otherNodes: Any) -> None:
        self._bkv_transmitted = 0  # bytes of the chunked entry being received
        super().__init__(syncObj, selfNode, otherNodes)

    def addNode(self, node: Any) -> None:
        super().addNode(node)
        conn = self._connections.get(node)
        if isinstance(conn, LinkConnection):
            conn.bkv_expected_peer = self._syncObj.bkv_link_key_of(node)

    def _onIncomingMessageReceived(self, conn: Any, message: Any) -> None:
        if conn.sendRandKey:
            # past the random-key exchange: an admin command, or the member it claims to be
            if isinstance(message, list):
                known = self._onUtilityMessageCallbacks
                if not (message and isinstance(message[0], str) and message[0] in known):
                    self._bkv_refuse(conn, "unknown admin command")
                    return
            else:
                node = self._nodeAddrToNode.get(message) if isinstance(message, str) else None
                key = None if node is None else self._syncObj.bkv_link_key_of(node)
                peer = getattr(conn, "bkv_peer_key", None)
                if key is None or peer is None or key != peer:
                    self._bkv_refuse(conn, "a peer claimed a member address its key does not own")
                    return
                if self._shouldConnect(node):
                    # Only one side of a pair dials (pysyncobj orders them by address).
                    # pysyncobj would put this incoming connection in place of the one
                    # it dials with and later redial on it, without the member's key.
                    self._bkv_refuse(conn, "a member this node dials may not dial it")
                    return
        super()._onIncomingMessageReceived(conn, message)

    def _bkv_refuse(self, conn: Any, reason: str) -> None:
        log.warning("raft link: dropping a connection: %s", reason)
        conn.disconnect()
        self._unknownConnections.discard(conn)

    def _journal(self) -> DurableJournal:
        journal: DurableJournal = self._syncObj.bkv_journal
        return journal

    def send(self, node: Any, message: Any) -> bool:
        if (isinstance(message, dict) and message.get("type") == "append_entries"
                and "serialized" in message and message["serialized"] is None
                and self._syncObj.bkv_backlog(node)):
            # a snapshot transfer waiting for a slow member: an empty message would only
            # queue behind the chunks (which carry the term and commit index themselves)
            return True
        if not (
            isinstance(message, dict)
            and message.get("type") == "append_entries"
            and self._syncObj._isLeader()
        ):
            # Anything else may acknowledge entries (a follower's next_node_idx):
            # durable first. A leader's AppendEntries acknowledges nothing; the
            # leader syncs right after sending (``VaultSyncObj``).
            self._journal().sync()
        return bool(super().send(node, message))

    def setOnMessageReceivedCallback(self, callback: Callable[..., Any]) -> None:
        super().setOnMessageReceivedCallback(functools.partial(self._filtered, callback))

    def _filtered(self, callback: Callable[..., Any], node: Any, message: Any) -> None:
        if not self._bkv_transmission_ok(message):
            return  # the connection that sent it is cut by LinkConnection's own count
        ack = None
        if (
            isinstance(message, dict)
            and message.get("type") == "append_entries"
            and "prevLogIdx" in message
            and "transmission" not in message
            and isinstance(message.get("term"), int)
            and message["term"] >= self._syncObj.raftCurrentTerm
        ):
            message, ack = filter_append_entries(self._journal(), message)
        callback(node, message)
        if ack is not None:
            self.send(node, ack)


    def _bkv_transmission_ok(self, message: Any) -> bool:
        """Bound pysyncobj's reassembly of a large entry (one ``__recvTransmission`` buffer
        for all peers, grown without limit): chunks past :data:`MAX_TRANSMISSION_BYTES`
        since the last "start", from whichever connections, are not delivered."""
        if not (isinstance(message, dict) and message.get("type") == "append_entries"
                and "transmission" in message):
            return True
        data = message.get("data")
        if not isinstance(data, bytes):
            return False
        start = message["transmission"] == "start"
        self._bkv_transmitted = len(data) + (0 if start else self._bkv_transmitted)
        if self._bkv_transmitted > MAX_TRANSMISSION_BYTES:
            log.warning("raft link: ignoring an entry transmission past %d bytes",
                        MAX_TRANSMISSION_BYTES)
            return False
        return True


class VaultSyncObj(SyncObj):  # type: ignore[misc]
    """The pysyncobj object replicating ``VaultState``. All mutation happens on its tick thread."""

    def __init__(
        self,
        self_address: str,
        peers: list[str],
        conf_kwargs: dict[str, Any],
        journal: DurableJournal,
        snapshot_path: Path,
        audit: AuditLog,
        link: LinkSecrets,
        *,
        known_members: Mapping[str, Member] | None = None,
        voter: bool = True,
    ) -> None:
        self.bkv_journal = journal
        self.bkv_known_members = dict(known_members or {})  # raft address -> bootstrap entry
        self._bkv_snapshot_index = 0  # log index covered by the snapshot loaded at start-up
        self.bkv_audit = audit
        self._bkv_member_keys: frozenset[bytes] | None = None  # cache, None: recompute
        self.bkv_link = LinkPolicy(link, self.bkv_is_member_key)
        self.bkv_store = SqliteStore(snapshot_path.parent / DB_FILE, fsync=journal.fsync_enabled)
        self.bkv_store.start_checkpointer()
        self.bkv_state = VaultState(self.bkv_store)
        self.bkv_state_lock = threading.RLock()
        # a node that is not (yet) a member never campaigns: it can't depose the leader
        self.bkv_voter = voter
        self._bkv_erase_requested = False
        self.bkv_snapshot_path = snapshot_path
        self.bkv_snapshot_error: str | None = None
        self.bkv_snapshots_written = 0
        self.bkv_snapshots_loaded = 0  # read at start-up or installed from the leader
        self._bkv_erase_due: float | None = None  # when to compact away a removed record
        self.bkv_erasures = 0  # compactions asked for to erase removed records
        self._bkv_durable = journal.fsync_enabled
        conf = SyncObjConf(
            journalFile=journal,
            fullDumpFile=str(snapshot_path),
            serializer=self._bkv_no_serializer,
            deserializer=self._bkv_no_serializer,
            useFork=False,
            autoTick=False,
            appendEntriesUseBatch=True,
            commandsWaitLeader=False,
            dynamicMembershipChange=True,
            **conf_kwargs,
        )
        super().__init__(self_address, peers, conf, transportClass=DurableTransport)
        self.bkv_snapshotter = Snapshotter(self, snapshot_path, durable=self._bkv_durable)
        self._SyncObj__serializer = self.bkv_snapshotter
        self.bkv_wake = PipeNotifier(self._poller)
        self._bkv_restore_membership()

    @property
    def encryptor(self) -> LinkPolicy:
        """What the transport gives every connection, instead of pysyncobj's Fernet."""
        return self.bkv_link

    def bkv_link_key_of(self, node: Any) -> bytes | None:
        """The link key of a member (its description, else the bootstrap list); None: unknown."""
        return describe(node, self.bkv_known_members).link_public_key

    def bkv_is_member_key(self, key: bytes) -> bool:
        """Is ``key`` the link key of a member as of the end of this node's log (self included)?"""
        keys = self._bkv_member_keys
        if keys is None:
            found = (self.bkv_link_key_of(node) for node in self._bkv_cluster())
            keys = self._bkv_member_keys = frozenset(k for k in found if k is not None)
        return key in keys

    def _SyncObj__doChangeCluster(self, request: Any, reverse: bool = False) -> Any:
        self._bkv_member_keys = None
        if (isinstance(request, list) and len(request) == 3
                and request[2] == self._SyncObj__selfNode):
            self.bkv_voter = (request[0] == "add") != reverse
        try:
            return super()._SyncObj__doChangeCluster(request, reverse)
        finally:
            self._bkv_member_keys = None

    def _SyncObj__updateClusterConfiguration(self, newNodes: Any) -> None:
        self._bkv_member_keys = None
        try:
            super()._SyncObj__updateClusterConfiguration(newNodes)
        finally:
            self._bkv_member_keys = None

    def _SyncObj__doApplyCommand(self, command: bytes) -> Any:
        # Audit hook: pysyncobj applies a membership entry when it is appended and only
        # passes it through here, with the other committed entries, once it commits.
        if is_membership_entry(command):
            self.bkv_audit.membership(int(self.raftLastApplied) + 1, command[1:])
        return super()._SyncObj__doApplyCommand(command)

    @replicated  # type: ignore[untyped-decorator]
    def _bkv_apply(self, encoded: bytes) -> ApplyResult:
        """Apply one committed entry; a malformed one is a logged no-op, never a crash."""
        index = int(self.raftLastApplied) + 1  # pysyncobj counts an entry once applied
        if index <= self.bkv_store.applied_index():
            # the state database already holds it (a restart replays the journal
            # from the snapshot): applying it again would count a guess twice
            self.bkv_audit.applied_unaudited(index)
            return ApplyResult(Outcome.STALE)
        command: Command | None = None
        time_ms: int | None = None
        try:
            command, time_ms = decode_entry(encoded)
        except ValueError:
            log.error("ignoring a malformed committed command")
            result = ApplyResult(Outcome.INVALID)
            with self.bkv_state_lock:
                self.bkv_store.set_applied(index)
        else:
            with self.bkv_state_lock:
                replaces = isinstance(command, Put | Delete) and (
                    self.bkv_state.entry(command.account_id) is not None)
                result = self.bkv_state.apply(command)
                self.bkv_store.set_applied(index)
            if result.outcome == Outcome.DESTROYED or (replaces and result.outcome == Outcome.OK):
                self._bkv_schedule_erase()
        self.bkv_audit.record(index, command, result, time_ms)
        return result

    def _bkv_schedule_erase(self) -> None:
        """A sealed record left the state: compact the log soon, so no copy stays on disk.

        The record's ``Put`` entry sits in the journal (and maybe in the previous
        snapshot) until a snapshot covers it. Compacting ``ERASE_DELAY_SECONDS``
        after the first such entry batches a burst of destructions into one
        snapshot while keeping every node's disk free of the record well within a
        minute (SECURITY.md, "Destroyed means gone").
        """
        if self._bkv_erase_due is None:
            self._bkv_erase_due = time.monotonic() + ERASE_DELAY_SECONDS

    def submit_encoded(self, encoded: bytes, callback: Callable[[Any, int], None]) -> None:
        self._bkv_apply(encoded, callback=callback)
        self.bkv_wake.notify()

    # ---- tick hooks -------------------------------------------------------------------

    def _onTick(self, timeToWait: float = 0.0) -> None:
        # Entries appended in the previous tick become durable before this tick's
        # commit computation counts this node's own log.
        self.bkv_journal.sync()
        if self._bkv_erase_due is not None and time.monotonic() >= self._bkv_erase_due:
            self._bkv_erase_due = None
            self.bkv_erasures += 1
            self._bkv_erase_requested = True
            self.forceLogCompaction()  # runs at the end of this tick
        self.bkv_audit.sync_if_due()  # the journal can rebuild it: no fsync per tick
        if not self.bkv_voter:
            self._SyncObj__raftElectionDeadline = time.monotonic() + 3600.0
        super()._onTick(timeToWait)
        with self.bkv_state_lock:
            self.bkv_store.commit()  # one transaction per tick; the journal is the durable copy

    def _checkCommandsToApply(self) -> None:
        before = len(self.bkv_journal)
        super()._checkCommandsToApply()
        if self._isLeader() and len(self.bkv_journal) != before:
            # Replicate the batch now instead of on the next heartbeat, and make
            # it durable here while the followers write theirs; the leader counts
            # itself in the commit only from the next tick, after this sync.
            self._SyncObj__sendAppendEntries()
        self.bkv_journal.sync()

    # ---- snapshots (vault_node.raft.snapshotter calls these) ---------------------------

    def _bkv_no_serializer(self, *_args: Any) -> Any:
        raise RuntimeError("snapshots go through the Snapshotter")

    def bkv_open_view(self) -> ReadView:
        """Tick thread: the applied state made durable, and a read view of it."""
        self.bkv_audit.sync()  # no audited entry may be lost behind a snapshot
        with self.bkv_state_lock:
            self.bkv_store.commit(durable=True)
            return self.bkv_store.read_view()

    def bkv_local_position(self) -> tuple[int, int]:
        """(epoch, highest log index this node holds: journal, snapshot or state); (0, 0): none."""
        journal, store = self.bkv_journal, self.bkv_store
        last = journal[-1][1] if len(journal) else 0
        if last <= 1 and not self._bkv_snapshot_index and not store.applied_index() \
                and not store.count():
            return 0, 0  # nothing but pysyncobj's first no-op: an empty node
        return self.bkv_epoch(), int(max(last, self._bkv_snapshot_index, store.applied_index()))

    def bkv_backlog(self, node: Any, wait: float = 0.0) -> int:
        """Bytes queued on the connection to ``node`` and not yet taken by the socket,
        after handing the socket what it takes (waiting up to ``wait`` s for room)."""
        conn = self.bkv_transport()._connections.get(node)
        if conn is None:
            return 0
        conn._TcpConnection__trySendBuffer()
        pending = int(conn.getSendBufferSize())
        sock = getattr(conn, "_TcpConnection__socket", None)
        if pending and wait > 0 and sock is not None:
            with contextlib.suppress(OSError, ValueError):
                select.select([], [sock], [], wait)
            conn._TcpConnection__trySendBuffer()
            pending = int(conn.getSendBufferSize())
        return pending

    def bkv_epoch(self) -> int:
        """How many times this shard was rebuilt from a snapshot (0: never)."""
        value = self.bkv_store.meta("epoch")
        return value if isinstance(value, int) else 0

    def bkv_cluster_id(self) -> str:
        """The shard identity this node's state belongs to ("" before any rebuild)."""
        value = self.bkv_store.meta("cluster_id")
        return value if isinstance(value, str) else ""

    def bkv_header(self, view: ReadView, last: Any, previous: Any, cluster: Any) -> SnapshotHeader:
        members = members_to_plain(describe(node, self.bkv_known_members) for node in cluster)
        return SnapshotHeader(
            last=(bytes(last[0]), int(last[1]), int(last[2])), previous=base_entry(previous),
            state_index=view.applied_index, count=view.count,
            digest=state_digest(view.count, view.digest_sum), members=members,
            cluster_id=self.bkv_cluster_id(), epoch=self.bkv_epoch(),
            taken_at_ms=time.time_ns() // 1_000_000)

    def bkv_snapshot_written(self) -> None:
        """Background thread: the file is complete; erase removed records' old pages."""
        self.bkv_snapshots_written += 1
        if self._bkv_erase_requested:  # the removal was committed before the view opened
            self._bkv_erase_requested = False
            self.bkv_store.erase_checkpoint()

    def bkv_load_snapshot(self, path: Path, *, installed: bool) -> tuple[Any, Any, Any]:
        """Start-up or install: make the state database match the snapshot at ``path``.

        At start-up a database at or past the snapshot (same shard identity) is
        kept as it is -- only the journal tail is replayed. Otherwise (an install
        from the leader, a lost or older database) the checked rows are loaded
        into a fresh database that replaces the live one only once complete.
        """
        try:
            if is_legacy_snapshot(path):
                header = self._bkv_load_v1(path)
            else:
                header = read_header(path)
                same_shard = self.bkv_cluster_id() == header.cluster_id
                if installed or not same_shard or \
                        self.bkv_store.applied_index() < header.state_index:
                    self._bkv_load_rows(path)
        except Exception as err:
            self.bkv_snapshot_error = f"snapshot {path} unusable: {type(err).__name__}"
            log.error("%s", self.bkv_snapshot_error)
            raise
        last_index = int(header.last[1])
        if installed:
            self.bkv_audit.snapshot_installed(last_index)
            # loading may have taken longer than an election timeout: don't campaign for it
            self._SyncObj__raftElectionDeadline = time.monotonic() + float(
                self._SyncObj__conf.raftMaxTimeout)
        self.bkv_snapshots_loaded += 1
        self._bkv_snapshot_index = last_index
        members = members_from_plain(header.members) if header.members else None
        cluster = self._bkv_cluster() if members is None else [m.node() for m in members]
        if members is not None:  # a snapshot without this node: it was removed (or never added)
            me = self._SyncObj__selfNode
            self.bkv_voter = any(node == me for node in cluster)
        return header.last, header.previous, cluster

    def _bkv_load_rows(self, path: Path) -> SnapshotHeader:
        """Check and load a snapshot into a fresh database, then swap it in."""
        loaded: list[SnapshotHeader] = []

        def fill(fresh: SqliteStore) -> tuple[int, str, int]:
            header, digest_sum = read_stream(path, fresh.insert_rows)
            fresh.set_digest_sum(digest_sum)
            loaded.append(header)
            return header.state_index, header.cluster_id, header.epoch

        self._bkv_load_fresh(fill)
        return loaded[0]

    def _bkv_load_v1(self, path: Path) -> SnapshotHeader:
        """A snapshot written before the state database existed (JSON, version 1)."""
        plain, last, previous = read_snapshot(path)
        members = plain.pop(SNAPSHOT_MEMBERS_KEY, [])

        def fill(fresh: SqliteStore) -> tuple[int, str, int]:
            VaultState.from_plain(plain, fresh)
            return int(last[1]), "", 0

        self._bkv_load_fresh(fill)
        state = VaultState(self.bkv_store)
        return SnapshotHeader(last, previous, int(last[1]), len(state), state.digest(),
                              members if isinstance(members, list) else [])

    def _bkv_load_fresh(self, fill: Callable[[SqliteStore], tuple[int, str, int]]) -> None:
        """Build a fresh database beside the live one with ``fill`` (which returns the
        applied index, shard identity and epoch), then swap it in; on any failure the
        half-built database is removed and the live one is untouched."""
        fresh_path = self.bkv_store.path.with_name(DB_FILE + ".load")
        _remove_db(fresh_path)
        fresh = SqliteStore(fresh_path, fsync=False)
        try:
            applied, cluster_id, epoch = fill(fresh)
            self._bkv_finish_load(fresh, applied, cluster_id, epoch)
        except BaseException:
            fresh.close()
            _remove_db(fresh_path)
            raise

    def _bkv_finish_load(self, fresh: SqliteStore, applied: int, cluster_id: str,
                         epoch: int) -> None:
        fresh.set_applied(applied)
        fresh.set_meta("cluster_id", cluster_id)
        fresh.set_meta("epoch", epoch)
        fresh.commit()
        fresh.close()  # checkpoints and removes its write-ahead log
        live = self.bkv_store.path
        with self.bkv_state_lock:
            self.bkv_store.close()
            _remove_db(live, keep_main=True)
            os.replace(fresh.path, live)
            if self._bkv_durable:
                fsync_dir(live.parent)
            self.bkv_store = SqliteStore(live, fsync=self._bkv_durable)
            self.bkv_store.start_checkpointer()
            self.bkv_state = VaultState(self.bkv_store)

    # ---- membership -------------------------------------------------------------------

    def _bkv_cluster(self) -> list[Any]:
        others: set[Any] = self._SyncObj__otherNodes.copy()
        return [*others, self._SyncObj__selfNode]

    # ---- read-only views for the rest of the Raft layer (no private names outside) -----

    def bkv_role_code(self) -> int:
        """pysyncobj's role number: 0 follower, 1 candidate, 2 leader."""
        return int(self._SyncObj__raftState)

    def bkv_majority_answered_since(self, since: float) -> bool:
        """This node and the members that answered it after ``since`` (monotonic): a majority?"""
        others = list(self._SyncObj__otherNodes)
        if not others:
            return True
        responses: dict[Any, float] = self._SyncObj__lastResponseTime
        fresh = 1 + sum(1 for node in others if responses.get(node, 0.0) > since)
        return fresh > (len(others) + 1) / 2

    def bkv_transport(self) -> Any:
        """pysyncobj's transport of this node (admin handlers register on it)."""
        return self._SyncObj__transport

    def bkv_entries(self, first: int, count: int) -> list[Any]:
        """``count`` log entries from index ``first`` ((command, index, term) tuples)."""
        entries: list[Any] = self._SyncObj__getEntries(first, count)
        return entries

    def bkv_members(self) -> list[Member]:
        """Every voting member as of the end of this node's log (self included)."""
        return [describe(node, self.bkv_known_members) for node in self._bkv_cluster()]

    def addNodeToCluster(self, node: Any, callback: Any = None) -> None:
        """Membership entries are JSON (``membership.encode_change``), never pickles."""
        self._bkv_change_cluster("add", node, callback)

    def removeNodeFromCluster(self, node: Any, callback: Any = None) -> None:
        self._bkv_change_cluster("rem", node, callback)

    def _bkv_change_cluster(self, kind: str, node: Any, callback: Any) -> None:
        member = describe(node, self.bkv_known_members)
        self._applyCommand(encode_change(kind, member), callback, _MEMBERSHIP_ENTRY)

    def _SyncObj__parseChangeClusterRequest(self, command: bytes) -> list[Any] | None:
        """pysyncobj's hook for membership entries, reading our JSON form."""
        if not is_membership_entry(command):
            return None
        change = decode_change(command[1:])
        if change is None:
            log.error("ignoring a malformed membership entry")
            return None
        kind, member = change
        node = member.node()
        return [kind, node.id, node]

    def bkv_self_member(self) -> Member:
        return describe(self._SyncObj__selfNode, self.bkv_known_members)

    def _bkv_restore_membership(self) -> None:
        """Rebuild membership as of the end of the log: the snapshot's, then later changes.

        pysyncobj restores membership only from a snapshot and otherwise applies a
        membership entry when it arrives, so after a restart it would fall back to the
        bootstrap list. Here the snapshot is loaded right away (instead of at the first
        tick) and the membership entries after it are replayed, as Raft prescribes
        (a node uses the latest configuration in its log, committed or not).
        """
        if getattr(self, "_SyncObj__needLoadDumpFile", True) and self.bkv_snapshot_path.is_file():
            self._SyncObj__loadDumpFile(clearJournal=False)
        self._SyncObj__needLoadDumpFile = False
        journal = self.bkv_journal
        for position in range(len(journal)):
            command, idx, _term = journal[position]
            if idx <= self._bkv_snapshot_index:
                continue
            request = self._SyncObj__parseChangeClusterRequest(command)
            if request is not None:
                self._SyncObj__doChangeCluster(request)


def _remove_db(path: Path, *, keep_main: bool = False) -> None:
    """Remove a database's side files (and the database itself unless ``keep_main``)."""
    for suffix in ("-wal", "-shm", "-journal") if keep_main else ("", "-wal", "-shm", "-journal"):
        Path(str(path) + suffix).unlink(missing_ok=True)

