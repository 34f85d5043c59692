"""The fault schedule of the chaos suite: which faults, in what order, for how long.

Each fault is short — inject, hold one to three seconds while the workload keeps
running, heal, then wait (bounded) until the cluster names a leader again — so
that a hundred and more of them fit in a few minutes of a live workload. Every
injected fault is recorded, with the moments the leader was lost, so recovery
times can be read from the operation history afterwards.

One fault changes the Raft group itself (``member-readd``): a follower is removed
(the removal committed and gone from the leader's member list), stopped and its
data volume emptied; the leader is asked to snapshot and compact its log; then
the node comes back as a new member with a new link key and must catch up from
a snapshot sent by the leader. Its heal is over only once the node has applied
what the leader had committed when it was added.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from tests.chaos.compose_ctl import (
    ComposeCluster,
    ComposeError,
    all_nodes,
    chatd_of,
    datacenter_of,
    datacenters,
    nodes_in,
)


class FaultKind(StrEnum):
    """The faults the suite injects."""

    KILL_LEADER = "kill-leader"        # docker kill -s KILL, then docker start
    PAUSE_LEADER = "pause-leader"      # docker pause, then unpause
    PARTITION_DC = "partition-dc"      # a DC's nodes off the wan network, then back
    STOP_DC = "stop-dc"                # docker stop of a DC's nodes and ChatD, then start
    RESTART_ALL = "restart-all"        # docker restart of all 5 nodes at once
    MEMBER_READD = "member-readd"      # member remove of a follower, wipe, member add back


# One round mixes every kind; every RESTART_EVERY-th round also restarts everything and
# every MEMBER_EVERY-th round also takes a follower out of the group and back.
ROUND = (FaultKind.KILL_LEADER, FaultKind.PARTITION_DC, FaultKind.PAUSE_LEADER,
         FaultKind.STOP_DC, FaultKind.KILL_LEADER, FaultKind.PARTITION_DC,
         FaultKind.PAUSE_LEADER)
RESTART_EVERY = 3
MEMBER_EVERY = 2


def schedule(count: int) -> list[FaultKind]:
    """The first ``count`` faults of the fixed cycle (deterministic, every kind early)."""
    plan: list[FaultKind] = []
    rounds = 0
    while len(plan) < count:
        plan.extend(ROUND)
        rounds += 1
        if rounds % RESTART_EVERY == 1:
            plan.append(FaultKind.RESTART_ALL)
        if rounds % MEMBER_EVERY == 1:
            plan.append(FaultKind.MEMBER_READD)
    return plan[:count]


@dataclass(frozen=True)
class FaultRecord:
    """One injected fault. Times are ``time.monotonic()`` of this process."""

    kind: FaultKind
    target: str                # the node or data center hit ("all" for restart-all)
    began_at: float            # before the wait for a leader to aim at
    injected_at: float
    healed_at: float
    leader_before: str | None
    leader_lost: bool          # the leader was among the nodes hit
    leader_after: str | None   # None: no leader within the settle timeout
    settled_at: float          # when a leader was known again after healing
    error: str = ""            # an engine command that failed (the fault may be partial)
    note: str = ""             # what the heal saw (member-readd: how the node caught up)


@dataclass(frozen=True)
class FaultTiming:
    """Knobs of one fault: how long it holds and how long to wait for a leader after."""

    hold_min: float = 1.0
    hold_max: float = 2.0
    settle_timeout: float = 30.0
    stop_grace: int = 1
    member_timeout: float = 90.0  # a membership change committed, a new member caught up


class FaultInjector:
    """Injects faults one at a time into a live cluster and records each one."""

    def __init__(self, cluster: ComposeCluster, *, seed: int,
                 timing: FaultTiming | None = None) -> None:
        self.cluster = cluster
        self.timing = timing or FaultTiming()
        self.records: list[FaultRecord] = []
        self._rng = random.Random(seed)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None
        self._note = ""

    # ---- one fault ----

    def inject(self, kind: FaultKind) -> FaultRecord:
        """Inject one fault, hold it, heal it, wait (bounded) for a leader; record it."""
        began = time.monotonic()
        leader = self.cluster.wait_leader(self.timing.settle_timeout)
        target, hit, undo = self._prepare(kind, leader)
        error = ""
        self._note = ""
        injected = time.monotonic()
        try:
            self._do(kind, target, hit)
        except ComposeError as err:
            error = str(err)[:300]
        time.sleep(self._rng.uniform(self.timing.hold_min, self.timing.hold_max))
        try:
            undo()
        except ComposeError as err:
            error = (error + "; " if error else "") + str(err)[:300]
        healed = time.monotonic()
        after = self.cluster.wait_leader(self.timing.settle_timeout)
        record = FaultRecord(kind=kind, target=target, began_at=began, injected_at=injected,
                             healed_at=healed,
                             leader_before=leader, leader_lost=leader is not None and leader in hit,
                             leader_after=after, settled_at=time.monotonic(), error=error,
                             note=self._note)
        self.records.append(record)
        return record

    def _prepare(self, kind: FaultKind, leader: str | None
                 ) -> tuple[str, list[str], Callable[[], None]]:
        """Target, nodes hit and the undo action of one fault."""
        c = self.cluster
        node = leader or self._rng.choice(all_nodes())
        if kind is FaultKind.KILL_LEADER:
            return node, [node], lambda: c.start([node])
        if kind is FaultKind.PAUSE_LEADER:
            return node, [node], lambda: c.unpause(node)
        if kind is FaultKind.RESTART_ALL:
            return "all", all_nodes(), lambda: c.start(all_nodes())
        if kind is FaultKind.MEMBER_READD:
            follower = self._rng.choice([n for n in all_nodes() if n != leader])
            return follower, [follower], lambda: self._readd(follower)
        # a data center: the leader's half of the time, any other otherwise
        dc = datacenter_of(node) if self._rng.random() < 0.5 else self._rng.choice(datacenters())
        hit = nodes_in(dc)
        if kind is FaultKind.PARTITION_DC:
            return dc, hit, lambda: c.connect_wan(hit)
        return dc, hit, lambda: c.start([*hit, chatd_of(dc)])

    def _speaker(self, besides: str) -> str:
        """A member to run admin commands in: the leader, else any other member."""
        leader = self.cluster.wait_leader(self.timing.settle_timeout)
        if leader is not None and leader != besides:
            return leader
        return next(n for n in all_nodes() if n != besides and n not in self.cluster.removed)

    def _take_out(self, node: str) -> None:
        """Remove ``node`` from the group (committed), empty its volume, compact the leader."""
        c = self.cluster
        c.member_remove(node, self._speaker(node), self.timing.member_timeout)
        c.wipe_data(node, grace=self.timing.stop_grace)
        # The leader snapshots and compacts its log now, so the node can only catch up
        # from a snapshot; wait (bounded) until the snapshot is written.
        leader = self._speaker(node)
        before = c.statuses().get(leader)
        c.admin(leader, ["snapshot", "now", "--json"])
        end = time.monotonic() + self.timing.member_timeout
        while before is not None and time.monotonic() < end:
            now = c.statuses().get(leader)
            if now is not None and now.snapshots_written > before.snapshots_written:
                return
            time.sleep(0.25)
        raise ComposeError(f"{leader} wrote no snapshot after `snapshot now`")

    def _readd(self, node: str) -> None:
        """Add the emptied node back; it must have caught up by a snapshot install."""
        if node not in self.cluster.removed:  # its removal failed (recorded): still a member
            self.cluster.start([node])
            return
        status = self.cluster.member_add(node, self._speaker(node), self.timing.member_timeout)
        self._note = (f"caught up to {status.last_applied}, "
                      f"{status.snapshots_loaded} snapshot(s) installed")
        if status.snapshots_loaded < 1:
            raise ComposeError(f"{node} caught up without a snapshot install")

    def _do(self, kind: FaultKind, target: str, hit: list[str]) -> None:
        c = self.cluster
        if kind is FaultKind.MEMBER_READD:
            self._take_out(target)
        elif kind is FaultKind.KILL_LEADER:
            c.kill(target)
        elif kind is FaultKind.PAUSE_LEADER:
            c.pause(target)
        elif kind is FaultKind.PARTITION_DC:
            c.disconnect_wan(hit)
        elif kind is FaultKind.STOP_DC:  # its ChatD too: clients must fail over
            c.stop([*hit, chatd_of(target)], grace=self.timing.stop_grace)
        else:
            c.restart(hit, grace=self.timing.stop_grace)

    # ---- the schedule, in a background thread ----

    def run(self, plan: list[FaultKind], deadline: float) -> None:
        """Inject ``plan`` in order until it ends, ``deadline`` (monotonic) or ``stop()``."""
        for kind in plan:
            if self._stop.is_set() or time.monotonic() >= deadline:
                return
            self.inject(kind)

    def start(self, plan: list[FaultKind], deadline: float) -> None:
        """Run the plan in a background thread (errors kept in ``self.error``)."""
        def body() -> None:
            try:
                self.run(plan, deadline)
            except BaseException as err:  # reported by the suite, never lost
                self.error = err
        self._thread = threading.Thread(target=body, name="faults", daemon=True)
        self._thread.start()

    def stop(self, timeout: float) -> None:
        """Ask the schedule to stop after the current fault and wait for it (bounded)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def running(self) -> bool:
        """Whether the schedule thread still runs."""
        return self._thread is not None and self._thread.is_alive()

    # ---- what happened ----

    def describe(self) -> list[str]:
        """One line per fault: timings (aim, inject+hold+heal, settle) and any engine error."""
        return [f"{i:4d} {r.kind.value:<13} {r.target:<7} leader {r.leader_before or '-'}"
                f"{' (lost)' if r.leader_lost else ''} -> {r.leader_after or 'NONE'}  "
                f"aim {r.injected_at - r.began_at:5.1f}s fault {r.healed_at - r.injected_at:5.1f}s"
                f" settle {r.settled_at - r.healed_at:5.1f}s"
                f"{'  ERROR ' + r.error if r.error else ''}{'  ' + r.note if r.note else ''}"
                for i, r in enumerate(self.records, 1)]

    def counts(self) -> Counter[str]:
        """Injected faults by kind."""
        return Counter(r.kind.value for r in self.records)

    def leader_losses(self) -> list[FaultRecord]:
        """The faults that took the leader out (kill/pause of it, its DC, restart-all)."""
        return [r for r in self.records if r.leader_lost]
