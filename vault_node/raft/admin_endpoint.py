"""The node side of the admin path: membership changes and snapshots over the Raft port.

Admin requests use pysyncobj's utility channel on the Raft port, so they travel
over the same link as Raft itself (``vault_node.raft.pysyncobj_edge``): only a holder
of the transport secret *and* of a current member's link key (the operator uses
the key of the node whose config it is given) completes the handshake, every
frame is sealed under that connection's own keys with a strict counter, and
nothing is unpickled except plain data. A recorded request can't be replayed,
in its connection or into a new one.

Handlers run on the Raft tick thread (where pysyncobj delivers utility
messages), so they read membership, log and state without racing the apply
path. pysyncobj's own ``add``/``remove``/``set_version`` utility commands are
switched off: every change goes through the checks here (leader only, one
change at a time, never fewer than ``MIN_MEMBERS`` members).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from vault_node.raft.core import VaultSyncObj, is_membership_entry
from vault_node.raft.membership import (
    Member,
    MembershipError,
    check_addition,
    check_removal,
    members_to_plain,
)
from vault_node.raft.pysyncobj_edge import FAIL_REASON

log = logging.getLogger("vault_node.raft.admin_endpoint")

ADMIN_PROTOCOL = 1
CMD_MEMBERS = "bkv_members"
CMD_ADD = "bkv_member_add"
CMD_REMOVE = "bkv_member_remove"
CMD_SNAPSHOT = "bkv_snapshot"
CMD_COMPACT = "bkv_compact"
_DISABLED = ("add", "remove", "set_version")
# pysyncobj may never call back a deposed leader's pending change; the guard expires then.
PENDING_CHANGE_SECONDS = 60.0

Reply = dict[str, Any]
Respond = Callable[[Any, Any], None]


class AdminEndpoint:
    """Serves the admin commands on one replica's Raft port (tick thread only)."""

    def __init__(self, obj: VaultSyncObj) -> None:
        self._obj = obj
        self._pending_until = 0.0  # monotonic deadline of a change queued here, not yet answered

    def install(self) -> None:
        transport = self._obj.bkv_transport()
        for name in _DISABLED:
            transport.setOnUtilityMessageCallback(name, None)
        handlers: dict[str, Callable[[list[Any], Respond], None]] = {
            CMD_MEMBERS: self._members,
            CMD_ADD: self._add,
            CMD_REMOVE: self._remove,
            CMD_SNAPSHOT: self._snapshot,
            CMD_COMPACT: self._compact,
        }
        for name, handler in handlers.items():
            transport.setOnUtilityMessageCallback(name, _guarded(handler))

    # ---- views ------------------------------------------------------------------------

    def _view(self) -> Reply:
        obj = self._obj
        leader = self._leader_address()
        return {
            "protocol": ADMIN_PROTOCOL,
            "ok": True,
            "node": obj.bkv_self_member().to_plain(),
            "leader": leader,
            "is_leader": bool(obj._isLeader()),
            "term": int(obj.raftCurrentTerm),
            "commit_index": int(obj.raftCommitIndex),
            "last_applied": int(obj.raftLastApplied),
            "members": members_to_plain(obj.bkv_members()),
            "change_in_progress": self._change_in_progress(),
        }

    def _leader_address(self) -> str | None:
        address = getattr(self._obj._getLeader(), "address", None)
        return address if isinstance(address, str) else None

    def _refuse(self, error: str, *, retry: bool = False) -> Reply:
        """A refusal carrying this node's member list, so the client learns the link key of
        a leader it was not configured with before following the hint."""
        reply = _refusal(error, retry=retry, leader=self._leader_address(),
                         not_leader=not self._obj._isLeader())
        reply["members"] = members_to_plain(self._obj.bkv_members())
        return reply

    def _change_in_progress(self) -> bool:
        """A membership entry is still uncommitted (or queued): another change must wait."""
        if time.monotonic() < self._pending_until:
            return True
        obj = self._obj
        journal = obj.bkv_journal
        commit = int(obj.raftCommitIndex)
        for position in range(len(journal) - 1, -1, -1):
            command, idx, _term = journal[position]
            if idx <= commit:
                break
            if is_membership_entry(command):
                return True
        return False

    # ---- handlers ---------------------------------------------------------------------

    def _members(self, args: list[Any], respond: Respond) -> None:
        """The leader's view; this node's own view only when asked for (``["local"]``)."""
        if "local" not in args and not self._obj._isLeader():
            respond(self._refuse("not the leader", retry=True), None)
            return
        respond(self._view(), None)

    def _leader_checks(self) -> Reply | None:
        if not self._obj._isLeader():
            return self._refuse("not the leader", retry=True)
        if self._change_in_progress():
            return self._refuse("another membership change is in progress", retry=True)
        return None

    def _add(self, args: list[Any], respond: Respond) -> None:
        refusal = self._leader_checks()
        if refusal is not None:
            respond(refusal, None)
            return
        try:
            new = Member.from_plain(args[0] if args else None)
            current = self._obj.bkv_members()
            if new in current:  # a retried request whose first attempt committed
                respond(self._view(), None)
                return
            check_addition(current, new)
        except MembershipError as err:
            respond(self._refuse(str(err)), None)
            return
        log.info("membership: adding %s (%s) at %s", new.node_id, new.datacenter, new.raft_address)
        self._propose(self._obj.addNodeToCluster, new, respond)

    def _remove(self, args: list[Any], respond: Respond) -> None:
        refusal = self._leader_checks()
        if refusal is not None:
            respond(refusal, None)
            return
        node_id = args[0] if args else None
        try:
            if not isinstance(node_id, str):
                raise MembershipError("a node id is required")
            target = check_removal(self._obj.bkv_members(), node_id)
        except MembershipError as err:
            respond(self._refuse(str(err)), None)
            return
        if target.raft_address == self._obj.bkv_self_member().raft_address:
            # A leader can't remove itself; hand leadership to a caught-up follower first.
            self._obj.transferLeadership(None, callback=None)
            respond(self._refuse("the leader is being removed: moving leadership", retry=True),
                    None)
            return
        log.info("membership: removing %s at %s", target.node_id, target.raft_address)
        self._propose(self._obj.removeNodeFromCluster, target, respond)

    def _propose(self, change: Callable[..., None], member: Member, respond: Respond) -> None:
        """Queue one membership change; answer once it commits or is refused."""

        def done(_result: Any, error: Any) -> None:  # tick thread, once applied or refused
            self._pending_until = 0.0
            if error == FAIL_REASON.SUCCESS:
                respond(self._view(), None)
            else:
                respond(self._refuse(f"change not committed (reason {error})", retry=True), None)

        self._pending_until = time.monotonic() + PENDING_CHANGE_SECONDS
        change(member.node(), callback=done)
        self._obj.bkv_wake.notify()

    def _compact(self, _args: list[Any], respond: Respond) -> None:
        """Take a snapshot of this node now and compact its log (in the background)."""
        obj = self._obj
        obj.forceLogCompaction()
        obj.bkv_wake.notify()
        reply = self._view()
        reply.update(snapshots_written=obj.bkv_snapshots_written)
        respond(reply, None)

    def _snapshot(self, _args: list[Any], respond: Respond) -> None:
        """The leader's applied state at a known log index: nothing acknowledged is missing."""
        obj = self._obj
        if not obj._isLeader():
            respond(self._refuse("not the leader", retry=True), None)
            return
        last = int(obj.raftLastApplied)
        entries = obj.bkv_entries(last - 1, 2)
        if len(entries) != 2 or entries[1][1] != last:
            respond(self._refuse("log position not available yet", retry=True), None)
            return
        with obj.bkv_state_lock:
            plain = obj.bkv_state.to_plain()
        reply = self._view()
        reply.update(
            state=plain,
            last_entry=[int(entries[1][1]), int(entries[1][2])],
            previous_entry=[int(entries[0][1]), int(entries[0][2])],
            epoch=obj.bkv_epoch(),
            cluster_id=obj.bkv_cluster_id(),
        )
        respond(reply, None)


def _guarded(handler: Callable[[list[Any], Respond], None]) -> Callable[[list[Any], Respond], None]:
    """Never let an admin request crash the tick thread; answer with a generic refusal."""

    def run(args: list[Any], respond: Respond) -> None:
        try:
            handler(list(args), respond)
        except Exception:
            log.exception("admin request failed")
            respond(_refusal("internal error"), None)

    return run


def _refusal(
    error: str, *, retry: bool = False, leader: str | None = None, not_leader: bool = False
) -> Reply:
    """A refused request: why, whether to retry, and where the leader is if known."""
    return {
        "protocol": ADMIN_PROTOCOL,
        "ok": False,
        "error": error,
        "retry": retry,
        "leader": leader,
        "not_leader": not_leader,
    }
