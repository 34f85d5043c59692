"""Raft replication of the vault state (pysyncobj), with the guarantees the vault relies on.

``ReplicatedVault.submit`` returns only after the command is committed -- durably
on a majority -- in this leader's current term and applied here. Anything else
(a follower, a deposed or partitioned leader, a timeout) raises, so callers never
see a success that did not happen. See ``vault_node.raft.core`` for how
pysyncobj is adapted (durable journal, fast replication, safe truncation,
authenticated transport).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vault_node.hsm.errors import HsmError
from vault_node.hsm.high_water import HighWaterMark, LogPosition, RollbackRefused
from vault_node.raft.admin_endpoint import AdminEndpoint
from vault_node.raft.audit import AUDIT_FILE, AuditError, AuditLog
from vault_node.raft.core import SNAPSHOT_MEMBERS_KEY, TRUNCATION_MONITOR, VaultSyncObj
from vault_node.raft.journal import DurableJournal, is_legacy_snapshot, read_snapshot
from vault_node.raft.log_entries import encode_entry
from vault_node.raft.membership import Member, members_from_plain
from vault_node.raft.pysyncobj_edge import FAIL_REASON
from vault_node.raft.snapshot_stream import read_header
from vault_node.raft.snapshotter import Snapshotter
from vault_node.raft.transport_cipher import LinkKey, LinkSecrets
from vault_node.state import AccountEntry, ApplyResult, Command, VaultState
from vault_node.storage.sqlite_store import StoreError

log = logging.getLogger("vault_node.raft")

MIN_TRANSPORT_SECRET_BYTES = 16
JOURNAL_FILE = "raft.journal"
SNAPSHOT_FILE = "raft.snapshot"


ATTEST_SECONDS = 2.0  # how often the applied position is attested to the HSM
DNS_CACHE_SECONDS = 5.0  # pysyncobj's default of 600 s outlives a container's address


class NotLeaderError(Exception):
    """This node can't commit: it is not (or no longer) the leader of the current term."""

    def __init__(self, leader_address: str | None) -> None:
        super().__init__("not leader")
        self.leader_address = leader_address


class CommitTimeoutError(Exception):
    """The command was not confirmed committed in time; its outcome is unknown."""


class RaftStartupError(Exception):
    """The replica can't start safely (missing secret, unreadable snapshot, ...)."""


@dataclass(frozen=True)
class RaftConfig:
    """One node's Raft settings. Defaults suit a loopback or LAN cluster."""

    node_id: str
    self_address: str
    peer_addresses: list[str]  # the other members' Raft addresses (self is ignored if listed)
    data_dir: Path
    transport_secret: bytes = field(repr=False)
    commit_timeout: float = 5.0
    fsync: bool = True  # off only for benchmarks that measure its cost
    heartbeat_interval: float = 0.05
    election_timeout_min: float = 0.3
    election_timeout_max: float = 0.9
    leader_fallback_timeout: float = 1.5  # a leader cut off from a majority steps down
    connection_timeout: float = 2.0
    connection_retry: float = 0.3
    tick_interval: float = 0.05  # idle wake-up period of the Raft thread
    snapshot_min_entries: int = 5000
    snapshot_min_interval: float = 300.0
    bind_address: str | None = None  # listen here instead of self_address (NAT, containers)
    members: tuple[Member, ...] = ()  # the bootstrap list's descriptions (ids, gRPC addresses)
    audit_file: Path | None = None  # the audit trail; None means data_dir / "audit.jsonl"
    link_key: LinkKey | None = field(default=None, repr=False)  # this node's own; required
    join: bool = False  # a node being added: no campaign until its log makes it a member
    high_water: HighWaterMark | None = None  # the HSM's anti-rollback mark for this node


def _link_key(config: RaftConfig) -> LinkKey:
    """This node's link key, checked against its own entry in the bootstrap list."""
    key = config.link_key
    if not isinstance(key, LinkKey):
        raise RaftStartupError(
            "no Raft link key: set link_key_file (or BKV_LINK_KEY); every member needs its own"
        )
    me = next((m for m in config.members if m.raft_address == config.self_address), None)
    if me is not None and me.link_key and me.link_key != key.public_hex:
        raise RaftStartupError(
            "the link key does not match this node's link_public_key in [[peers]]"
        )
    return key


@dataclass(frozen=True)
class RaftStatus:
    """A consistent-enough view of this replica for status pages and tests."""

    node_id: str
    role: str
    term: int
    commit_index: int
    last_applied: int
    leader_address: str | None
    digest: bytes
    accounts: int
    log_entries: int
    snapshots_written: int
    snapshots_loaded: int  # read at start-up or installed from the leader
    truncation_warnings: int


_ROLES = {0: "follower", 1: "candidate", 2: "leader"}


def check_snapshot_file(path: Path) -> None:
    """Refuse to start on an unusable snapshot rather than silently start from nothing."""
    if not path.exists():
        return
    try:
        if is_legacy_snapshot(path):
            plain = read_snapshot(path)[0]
            members_from_plain(plain.pop(SNAPSHOT_MEMBERS_KEY, []))
            VaultState.from_plain(plain)
        else:
            members_from_plain(read_header(path).members)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise RaftStartupError(f"snapshot {path} is unusable") from err


def truncation_warnings() -> int:
    """How often pysyncobj truncated already-applied entries in this process (must stay 0)."""
    return TRUNCATION_MONITOR.count


class _Waiter:
    __slots__ = ("done", "error", "leader", "result", "term")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: Any = None
        self.error: int | None = None
        self.leader = False
        self.term = -1


class ReplicatedVault:
    """The vault state replicated over a pysyncobj Raft group; thread-safe ``submit``."""

    def __init__(self, config: RaftConfig) -> None:
        secret = config.transport_secret
        if not isinstance(secret, bytes) or len(secret) < MIN_TRANSPORT_SECRET_BYTES:
            raise RaftStartupError(
                f"a transport secret of at least {MIN_TRANSPORT_SECRET_BYTES} bytes is required"
            )
        link = LinkSecrets(bytes(secret), _link_key(config))
        for member in config.members:
            if not member.link_key:
                log.warning("member %s has no link_public_key in [[peers]]: its Raft link "
                            "is refused until it has one", member.node_id)
        self._config = config
        data_dir = Path(config.data_dir)
        data_dir.mkdir(parents=True, exist_ok=True)
        snapshot_path = data_dir / SNAPSHOT_FILE
        check_snapshot_file(snapshot_path)
        try:
            audit = AuditLog(config.audit_file or data_dir / AUDIT_FILE, fsync=config.fsync)
        except AuditError as err:
            raise RaftStartupError(str(err)) from None
        try:
            journal = DurableJournal(data_dir / JOURNAL_FILE, fsync=config.fsync)
        except (OSError, RuntimeError) as err:
            audit.close()
            raise RaftStartupError(f"cannot open the Raft journal in {data_dir}") from err
        self._audit = audit
        peers = [p for p in config.peer_addresses if p != config.self_address]
        # pysyncobj binds every interface when bindAddress is None; default to the
        # advertised address instead so a loopback node stays on loopback.
        bind = config.bind_address or config.self_address
        conf_kwargs = {
            "password": secret,
            "appendEntriesPeriod": config.heartbeat_interval,
            "raftMinTimeout": config.election_timeout_min,
            "raftMaxTimeout": config.election_timeout_max,
            "leaderFallbackTimeout": config.leader_fallback_timeout,
            "connectionTimeout": config.connection_timeout,
            "connectionRetryTime": config.connection_retry,
            "logCompactionMinEntries": config.snapshot_min_entries,
            "logCompactionMinTime": config.snapshot_min_interval,
            "maxBindRetries": 5,
            "bindRetryTime": 0.2,
            # Peers are named by DNS in container deployments, where an address can move
            # to another container after a network reconnect: don't trust a lookup long.
            "dnsCacheTime": DNS_CACHE_SECONDS,
            "dnsFailCacheTime": DNS_CACHE_SECONDS,
            "onStateChanged": self._on_state_changed,
            "bindAddress": bind,
        }
        try:
            self._obj = VaultSyncObj(
                config.self_address, peers, conf_kwargs, journal, snapshot_path, audit, link,
                known_members={m.raft_address: m for m in config.members},
                voter=not config.join,
            )
            AdminEndpoint(self._obj).install()
        except StoreError as err:
            journal._destroy()
            audit.close()
            raise RaftStartupError(str(err)) from None
        except Exception as err:  # pysyncobj reports bind failures as a bare SyncObjException
            journal._destroy()
            audit.close()
            raise RaftStartupError(f"cannot listen on {bind}") from err
        try:
            self._check_high_water()
        except RaftStartupError:
            self._obj.destroy()
            with self._obj.bkv_state_lock:
                self._obj.bkv_store.close()
            audit.close()
            raise
        self._attested: LogPosition | None = None
        self._pending: set[_Waiter] = set()
        self._pending_lock = threading.Lock()
        self._stop = threading.Event()
        self._obj.doTick(0.0)  # loads the snapshot and journal before anyone asks
        self._thread = threading.Thread(target=self._tick_loop, name="raft-tick", daemon=True)
        self._thread.start()
        if config.high_water is not None:
            threading.Thread(target=self._attest_loop, args=(config.high_water,),
                             name="raft-attest", daemon=True).start()
        log.info(
            "raft node %s listening on %s as %s with %d peers",
            config.node_id,
            bind,
            config.self_address,
            len(peers),
        )

    # ---- the HSM's anti-rollback mark ----------------------------------------------------

    def _check_high_water(self) -> None:
        """Refuse to start on a state older than this node's HSM already attested.

        A node with no state at all is let through: it holds nothing to roll back
        and catches up from the leader. Anything else must be at or past the mark.
        """
        mark = self._config.high_water
        epoch, index = self._obj.bkv_local_position()
        if mark is None or (epoch, index) == (0, 0):
            return
        try:
            mark.check(LogPosition(epoch, index))
        except RollbackRefused as err:
            raise RaftStartupError(
                f"the HSM refuses this node's state: {err}; its data directory was rolled "
                "back (or belongs to an older epoch of the shard). Empty it to let the node "
                "catch up from the leader, or rebuild the shard (bkv-vault-node shard rebuild)"
            ) from None
        except HsmError as err:
            raise RaftStartupError(f"the HSM's anti-rollback mark is unusable: {err}") from None

    def _attest_loop(self, mark: HighWaterMark) -> None:
        """Tell the HSM how far this node's applied state got, every ``ATTEST_SECONDS``."""
        failed_at = 0.0
        while not self._stop.wait(ATTEST_SECONDS):
            obj = self._obj
            position = LogPosition(obj.bkv_epoch(), int(obj.raftLastApplied))
            if position.index == 0 or (self._attested is not None and position <= self._attested):
                continue
            try:
                mark.attest(position)
                self._attested = position
            except (HsmError, OSError) as err:
                if time.monotonic() - failed_at > 60:
                    failed_at = time.monotonic()
                    log.error("cannot attest the applied position to the HSM: %s", err)

    # ---- the tick thread ----------------------------------------------------------------

    def _tick_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._obj.doTick(self._config.tick_interval)
            except Exception:  # keep the replica alive; pysyncobj errors carry no payloads
                log.exception("raft tick failed")
                time.sleep(self._config.tick_interval)

    def _on_state_changed(self, old: int, new: int) -> None:
        log.info("raft role %s -> %s", _ROLES.get(old, old), _ROLES.get(new, new))

    # ---- public API -------------------------------------------------------------------

    def submit(self, command: Command, timeout: float | None = None) -> ApplyResult:
        """Replicate ``command``; return this node's apply result once committed in its term.

        The entry carries this leader's clock (ms since the epoch), so every node's
        audit trail shows the same time for it. Raises ValueError (invalid command,
        before anything is sent), NotLeaderError (not leader, or leadership lost
        before commit) or CommitTimeoutError.
        """
        encoded = encode_entry(command, time.time_ns() // 1_000_000)
        if self._stop.is_set() or not self.is_leader():
            raise NotLeaderError(self.leader_address())
        term = self._obj.raftCurrentTerm
        waiter = _Waiter()

        def on_result(result: Any, error: int) -> None:  # runs on the tick thread
            waiter.result, waiter.error = result, error
            waiter.leader, waiter.term = self._obj._isLeader(), self._obj.raftCurrentTerm
            waiter.done.set()

        with self._pending_lock:
            self._pending.add(waiter)
        try:
            self._obj.submit_encoded(encoded, on_result)
            wait = self._config.commit_timeout if timeout is None else timeout
            if not waiter.done.wait(wait):
                raise CommitTimeoutError("commit not confirmed in time")
        finally:
            with self._pending_lock:
                self._pending.discard(waiter)
        if (
            waiter.error == FAIL_REASON.SUCCESS
            and waiter.leader
            and waiter.term == term
            and isinstance(waiter.result, ApplyResult)
        ):
            return waiter.result
        if waiter.error == FAIL_REASON.QUEUE_FULL:
            raise CommitTimeoutError("replication queue full")
        raise NotLeaderError(self.leader_address())

    def is_leader(self) -> bool:
        return bool(self._obj._isLeader())

    def term(self) -> int:
        return int(self._obj.raftCurrentTerm)

    def holds_leadership(self, term: int) -> bool:
        """Still leader of ``term``, and a majority answered within an election timeout.

        pysyncobj notices a lost leadership only when its tick thread runs; a leader
        paused (SIGSTOP, a long GC, a VM freeze) and resumed would otherwise still
        believe it leads while another node does. A follower does not start an
        election before ``election_timeout_min`` after hearing from this leader, so
        answers from a majority within that window mean no other leader exists yet.
        """
        obj = self._obj
        if self._stop.is_set() or not obj._isLeader() or int(obj.raftCurrentTerm) != term:
            return False
        return obj.bkv_majority_answered_since(time.monotonic() - self._config.election_timeout_min)

    def exhausted_records(self) -> list[tuple[bytes, bytes]]:
        """(account id, record id) of live records whose counter reached the limit."""
        with self._obj.bkv_state_lock:
            return self._obj.bkv_state.exhausted()

    def leader_reachable(self) -> bool:
        """This node reaches a majority and is, or is connected to, the leader it names.

        A follower cut off from every peer never starts an election, so it keeps
        naming a leader that may be gone; only live connections say it can answer.
        """
        obj = self._obj
        if not bool(obj.hasQuorum):
            return False
        return self.is_leader() or bool(obj.isNodeConnected(obj._getLeader()))

    def leader_address(self) -> str | None:
        leader = self._obj._getLeader()
        address = getattr(leader, "address", None)
        return address if isinstance(address, str) else None

    def members(self) -> list[Member]:
        """The voting members as of the end of this node's log, with ids and gRPC addresses."""
        return self._obj.bkv_members()

    def digest(self) -> bytes:
        with self._obj.bkv_state_lock:
            return self._obj.bkv_state.digest()

    def status(self) -> RaftStatus:
        with self._obj.bkv_state_lock:
            digest, accounts = self._obj.bkv_state.digest(), len(self._obj.bkv_state)
        obj = self._obj
        return RaftStatus(
            node_id=self._config.node_id,
            role=_ROLES.get(obj.bkv_role_code(), "unknown"),
            term=int(obj.raftCurrentTerm),
            commit_index=int(obj.raftCommitIndex),
            last_applied=int(obj.raftLastApplied),
            leader_address=self.leader_address(),
            digest=digest,
            accounts=accounts,
            log_entries=len(obj.bkv_journal),
            snapshots_written=obj.bkv_snapshots_written,
            snapshots_loaded=obj.bkv_snapshots_loaded,
            truncation_warnings=truncation_warnings(),
        )

    def entry_view(self, account_id: bytes) -> AccountEntry | None:
        """The local (possibly lagging) entry of an account, for tests and diagnostics."""
        with self._obj.bkv_state_lock:
            return self._obj.bkv_state.entry(account_id)

    @property
    def snapshotter(self) -> Snapshotter:
        """This node's snapshot maker, sender and receiver (diagnostics and test harness)."""
        return self._obj.bkv_snapshotter

    def force_snapshot(self) -> None:
        """Ask for a snapshot + log compaction at the next tick."""
        self._obj.forceLogCompaction()
        self._obj.bkv_wake.notify()

    def close(self) -> None:
        """Stop the tick thread, fail pending submits, close sockets and the journal."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._obj.bkv_wake.notify()
        self._thread.join(timeout=5.0)
        with self._pending_lock:
            for waiter in self._pending:
                waiter.error = FAIL_REASON.LEADER_CHANGED
                waiter.done.set()
        self._obj.bkv_snapshotter.close()
        self._obj.destroy()
        with self._obj.bkv_state_lock:
            self._obj.bkv_store.close()
        self._audit.close()
        log.info("raft node %s stopped", self._config.node_id)

    def __enter__(self) -> ReplicatedVault:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
