"""Rebuild a whole shard from a sealed snapshot: the only way a snapshot file becomes state.

Restoring a file into one member of a running shard forks it (that member can
win an election with an older history), and rolling a shard back gives guesses
back. So a rebuild:

* takes every member's config (the shard's whole bootstrap list) and refuses
  while any of them answers on its Raft or gRPC port;
* says what the snapshot rolls back: its time, its log index, and -- from each
  member's audit trail -- how many counted attempts and registrations came
  after it;
* asks each member's HSM: a snapshot older than the position that HSM already
  attested is refused unless the operator passes ``--accept-rollback``, which
  is then written into the rebuilt audit trail with what was rolled back;
* moves each old data directory aside (nothing is deleted) and writes a new
  one holding the snapshot at a fresh shard identity and the next epoch, so a
  node still holding the old history can't be mistaken for a member.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from vault_node.config import NodeConfig
from vault_node.hsm.fleet import MasterKeyBackend
from vault_node.hsm.high_water import HighWaterMark, LogPosition, RollbackRefused
from vault_node.raft.audit import AUDIT_FILE, AuditError, read_audit
from vault_node.raft.journal import atomic_write, fsync_dir, meta_path
from vault_node.raft.membership import Member, bootstrap_members, members_to_plain
from vault_node.raft.pysyncobj_edge import COMMAND_TYPE
from vault_node.raft.replication import JOURNAL_FILE, SNAPSHOT_FILE
from vault_node.raft.snapshot_file import SnapshotContents
from vault_node.raft.snapshot_stream import SnapshotHeader, write_stream
from vault_node.state import VaultState
from vault_node.storage.sqlite_store import DB_FILE, SqliteStore

_NO_OP = bytes([COMMAND_TYPE.NO_OP])
PROBE_SECONDS = 1.0


class RebuildError(Exception):
    """The rebuild did not start (nothing was changed); one line for the operator."""

    def __init__(self, message: str, *, rollback: bool = False) -> None:
        super().__init__(message)
        self.rollback = rollback  # refused because the snapshot is older than an HSM attested


@dataclass(frozen=True)
class MemberTarget:
    """One member to rebuild: its config and its HSM's anti-rollback mark."""

    config: NodeConfig
    mark: HighWaterMark


@dataclass(frozen=True)
class RollbackReport:
    """What a snapshot rolls back, as far as the members' own records tell."""

    snapshot_index: int
    snapshot_epoch: int
    taken_at: int
    newest_attested: LogPosition | None
    attempts_after: int  # counted attempts after the snapshot (most any audit trail shows)
    registrations_after: int
    audited_up_to: int  # the highest index any audit trail reached (0: none available)

    @property
    def rolls_back(self) -> bool:
        attested = self.newest_attested
        return bool(self.attempts_after or self.registrations_after) or (
            attested is not None
            and attested > LogPosition(self.snapshot_epoch, self.snapshot_index))

    def lines(self) -> list[str]:
        when = datetime.fromtimestamp(self.taken_at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        age = max(0, int(time.time()) - self.taken_at)
        out = [f"snapshot taken {when} ({age // 3600} h {age % 3600 // 60} min ago), "
               f"log index {self.snapshot_index}, epoch {self.snapshot_epoch}"]
        if self.audited_up_to:
            out.append(f"the members' audit trails reach index {self.audited_up_to}: the snapshot "
                       f"predates {self.attempts_after} counted attempts and "
                       f"{self.registrations_after} registrations")
        else:
            out.append("no member's audit trail is available: what it rolls back is unknown")
        if self.newest_attested is not None:
            out.append(f"the members' HSMs attested up to {self.newest_attested}")
        return out

    def to_plain(self) -> dict[str, Any]:
        return {"snapshot_index": self.snapshot_index, "snapshot_epoch": self.snapshot_epoch,
                "taken_at": self.taken_at,
                "newest_attested": None if self.newest_attested is None
                else self.newest_attested.to_plain(),
                "attempts_after": self.attempts_after,
                "registrations_after": self.registrations_after,
                "audited_up_to": self.audited_up_to}


def answering(address: str, timeout: float = PROBE_SECONDS) -> bool:
    """Something accepts connections at ``host:port``."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


def check_whole_shard(configs: Sequence[NodeConfig]) -> tuple[Member, ...]:
    """Every member of one shard, none running; their common bootstrap list."""
    if not configs:
        raise RebuildError("give the config of every member of the shard (--config, repeated)")
    members = bootstrap_members(configs[0].peers)
    listed = {m.node_id for m in members}
    given = {c.node_id for c in configs}
    if len(given) != len(configs):
        raise RebuildError("the same member is given twice")
    if {c.shard for c in configs} != {configs[0].shard}:
        raise RebuildError("the configs belong to different shards")
    for cfg in configs:
        if {p.node_id for p in cfg.peers} != listed:
            raise RebuildError(f"{cfg.node_id}'s [[peers]] differ from {configs[0].node_id}'s")
    if given != listed:
        missing = ", ".join(sorted(listed - given)) or "none"
        extra = ", ".join(sorted(given - listed)) or "none"
        raise RebuildError("a rebuild takes every member of the shard at once (a member restored "
                           "alone would fork it); missing: " + missing + "; not members: " + extra)
    for cfg in configs:
        for address in (cfg.raft_bind, cfg.grpc_listen):
            if answering(address):
                raise RebuildError(f"{cfg.node_id} answers on {address}: stop every member of "
                                   "the shard before rebuilding it")
    return members


def _audit_path(cfg: NodeConfig) -> Path:
    return cfg.audit_file or Path(cfg.data_dir) / AUDIT_FILE


def rollback_report(contents: SnapshotContents, targets: Sequence[MemberTarget]
                    ) -> RollbackReport:
    """Count, from each member's audit trail, what happened after the snapshot."""
    index = contents.last_entry[0]
    attempts = registrations = audited = 0
    for target in targets:
        path = _audit_path(target.config)
        if not path.exists():
            continue
        a = r = 0
        try:
            for line in read_audit(path, since=index + 1):
                audited = max(audited, int(line["index"]))
                if line.get("event") == "attempt" and line.get("outcome") == "granted" \
                        and not line.get("repeated"):
                    a += 1
                elif line.get("event") == "registration" and line.get("outcome") == "ok":
                    r += 1
        except AuditError:
            continue  # a damaged trail tells nothing; the HSM marks still do
        attempts, registrations = max(attempts, a), max(registrations, r)
    marks = [m for m in (t.mark.current() for t in targets) if m is not None]
    return RollbackReport(index, contents.epoch, contents.taken_at, max(marks, default=None),
                          attempts, registrations, audited)


def check_marks(contents: SnapshotContents, targets: Sequence[MemberTarget]) -> None:
    """Every member's HSM must accept the snapshot's position (RebuildError if any refuses)."""
    position = LogPosition(contents.epoch, contents.last_entry[0])
    for target in targets:
        try:
            target.mark.check(position)
        except RollbackRefused as err:
            raise RebuildError(
                f"{target.config.node_id}'s HSM refuses: {err}. Rebuilding from this snapshot "
                "gives back every guess counted after it; if that is what you intend, run again "
                "with --accept-rollback (recorded in the audit trail)", rollback=True) from None


def rebuild(contents: SnapshotContents, targets: Sequence[MemberTarget], *,
            accept_rollback: bool, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Rebuild every member from ``contents``; returns what was done (for --json)."""
    configs = [t.config for t in targets]
    members = check_whole_shard(configs)
    report = rollback_report(contents, targets)
    for line in report.lines():
        say(line)
    if not accept_rollback:
        check_marks(contents, targets)
    epochs = [m.epoch for m in (t.mark.current() for t in targets) if m is not None]
    epoch = max([contents.epoch, *epochs]) + 1
    cluster_id = secrets.token_hex(16)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    moved: dict[str, str] = {}
    for target in targets:
        moved.update(_set_aside(target.config, stamp))
        _write_member(target.config, contents, members, cluster_id, epoch, report,
                      accept_rollback)
        position = LogPosition(epoch, contents.last_entry[0])
        if accept_rollback:
            target.mark.accept_rollback(position)
        else:
            target.mark.attest(position)
        say(f"{target.config.node_id}: rebuilt at log index {contents.last_entry[0]}, "
            f"epoch {epoch}")
    return {"cluster_id": cluster_id, "epoch": epoch, "accounts": contents.accounts,
            "rollback": report.to_plain(), "accepted_rollback": accept_rollback,
            "moved_aside": moved}


def _set_aside(cfg: NodeConfig, stamp: str) -> dict[str, str]:
    """Move the member's data directory (and an outside audit trail) aside: nothing deleted."""
    moved = {}
    for path in (Path(cfg.data_dir), cfg.audit_file):
        if path is None or not path.exists():
            continue
        if path != Path(cfg.data_dir) and path.is_relative_to(Path(cfg.data_dir)):
            continue  # moves with the data directory
        aside = path.with_name(f"{path.name}.before-rebuild-{stamp}")
        os.rename(path, aside)
        moved[str(path)] = str(aside)
    return moved


def _write_member(cfg: NodeConfig, contents: SnapshotContents, members: tuple[Member, ...],
                  cluster_id: str, epoch: int, report: RollbackReport,
                  accepted: bool) -> None:
    data_dir = Path(cfg.data_dir)
    data_dir.mkdir(mode=0o700, parents=True)
    # the state, checked row by row as a node would load it, in a scratch store
    scratch_path = data_dir / (DB_FILE + ".rebuild")
    store = SqliteStore(scratch_path, fsync=False)
    try:
        state = VaultState.from_plain(contents.state, store)
        store.commit()
        last_index, last_term = contents.last_entry
        previous_index, previous_term = contents.previous_entry
        header = SnapshotHeader(
            last=(_NO_OP, last_index, last_term), previous=(_NO_OP, previous_index, previous_term),
            state_index=last_index, count=len(state), digest=state.digest(),
            members=members_to_plain(members), cluster_id=cluster_id, epoch=epoch,
            taken_at_ms=contents.taken_at * 1000)
        with store.read_view() as view:
            write_stream(data_dir / SNAPSHOT_FILE, header, view.encoded_rows(), durable=True)
    finally:
        store.close()
        for suffix in ("", "-wal", "-shm"):
            Path(str(scratch_path) + suffix).unlink(missing_ok=True)
    # elections start after the snapshot's term: a term never goes back in the log
    journal_meta = {"term": last_term, "voted_for": None, "commit_index": last_index}
    atomic_write(meta_path(data_dir / JOURNAL_FILE), json.dumps(journal_meta).encode())
    line = {"index": last_index, "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "event": "rollback_accepted" if accepted else "rebuild",
            "cluster_id": cluster_id, "epoch": epoch, "accounts": contents.accounts,
            "rolled_back": report.to_plain()}
    audit = _audit_path(cfg)
    audit.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(audit, json.dumps(line, sort_keys=True).encode() + b"\n")
    fsync_dir(data_dir)


def targets_for(configs: Sequence[NodeConfig],
                backend_of: Callable[[NodeConfig], MasterKeyBackend],
                mark_of: Callable[[NodeConfig, MasterKeyBackend], HighWaterMark]
                ) -> list[MemberTarget]:
    return [MemberTarget(cfg, mark_of(cfg, backend_of(cfg))) for cfg in configs]
