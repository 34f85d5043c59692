"""Find and follow the Raft leader of a shard, within a deadline.

Only the leader answers ``Vault.Handle``. ChatD caches the leader per shard,
follows the ``bkv-leader`` hint a follower returns, and on a dead or unknown
node tries the others with exponential backoff until the deadline. A hint is
followed only if it names a configured node of that shard, so a node can't
point ChatD at an arbitrary address.

The router also keeps a view of which nodes answer at all (from its own tries
and from the health probes). When every node was seen recently and more than
a minority have been silent for :data:`NO_QUORUM_CONFIRM_SECONDS`, no leader can
be elected: ``forward`` then fails (after a failed try, or a leader stuck on a
commit) with UNAVAILABLE and the trailing metadata
``bkv-no-quorum: "<unreachable>/<total>"`` instead of retrying until the
deadline. A leader change (a majority still answering) is retried as before.

The node list changes with the shard's membership: :meth:`ShardRouter.set_nodes`
(ChatD calls it when SIGHUP makes it re-read its config) routes to the new list
at once; a removed node is never tried again, nor followed as a leader hint.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from bkv_api.v1 import envelope_pb2, services_pb2, services_pb2_grpc
from bkv_ops.tls import ClientTls, open_channel

log = logging.getLogger("bkv.chatd.routing")

LEADER_METADATA_KEY = "bkv-leader"
NO_QUORUM_METADATA_KEY = "bkv-no-quorum"
# A node's answer (or silence) counts for the quorum view this long.
VIEW_FRESH_SECONDS = 3.0
# Fewer than a majority must answer this long before ChatD calls it "no quorum":
# a node restarting, a node slow under load, or one lost probe does not make it say so.
NO_QUORUM_CONFIRM_SECONDS = 2.0
VIEW_POLL_SECONDS = 0.25  # how often a waiting forward looks at the view
COMMIT_PATIENCE_SECONDS = 0.5  # a call waits this long before the view may cancel it
# The vault's own UNAVAILABLE answer: the node is up (its commit did not make it).
_NODE_ANSWERED_UNAVAILABLE = "commit timed out"
MAX_MESSAGE_BYTES = 64 * 1024
CHANNEL_OPTIONS = (
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
)
# One try may wait this long: long enough for a slow Raft commit, short enough
# that a hung (not dead) node leaves time to try another within the deadline.
PER_TRY_SECONDS = 3.0
BACKOFF_START_SECONDS = 0.02
BACKOFF_MAX_SECONDS = 0.5
# Codes after which another node (or the same one, later) may succeed.
_RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.FAILED_PRECONDITION}
# A removed node's channel is closed this long after the change, once no call can use it.
RETIRED_CHANNEL_SECONDS = 2 * PER_TRY_SECONDS


@dataclass(frozen=True)
class VaultFailure(Exception):
    """The shard answered with a final error, or nobody answered in time.

    ``no_quorum`` is ``(unreachable, total)`` when the shard lost its majority.
    ``from_vault`` says a vault node answered with ``code``; otherwise ChatD gave up
    itself (deadline, no quorum) and ``code`` is its own.
    """

    code: grpc.StatusCode
    details: str
    no_quorum: tuple[int, int] | None = None
    from_vault: bool = False


def no_quorum_failure(unreachable: int, total: int) -> VaultFailure:
    """The failure ChatD returns for a shard without a majority of reachable nodes."""
    return VaultFailure(
        grpc.StatusCode.UNAVAILABLE,
        f"the vault has no quorum: {unreachable} of {total} nodes unreachable; "
        "try again later",
        (unreachable, total),
    )


class ShardRouter:
    """Sends envelopes of one shard to its leader; thread-safe."""

    def __init__(
        self,
        shard: int,
        nodes: Sequence[str],
        on_retry: Callable[[], None] | None = None,
        *,
        tls: ClientTls | None = None,
    ) -> None:
        self.shard = shard
        self.tls = tls  # set: mutual TLS to the nodes, which must show a vault-node certificate
        self._on_retry = on_retry  # told of every try after the first (metrics)
        self.nodes = tuple(dict.fromkeys(nodes))
        if not self.nodes:
            raise ValueError(f"shard {shard}: no vault node to route to")
        self._lock = threading.Lock()
        self._leader: str | None = None
        self._next = 0
        self._channels = {addr: open_channel(addr, tls, CHANNEL_OPTIONS) for addr in self.nodes}
        # node -> (answered, when last seen, silent since: the first unanswered try in a row)
        self._seen: dict[str, tuple[bool, float, float | None]] = {}
        self._stubs = {addr: services_pb2_grpc.VaultStub(ch) for addr, ch in self._channels.items()}

    def close(self) -> None:
        with self._lock:
            channels = list(self._channels.values())
        for channel in channels:
            channel.close()

    def set_nodes(self, nodes: Sequence[str]) -> tuple[list[str], list[str]]:
        """Route to ``nodes`` from now on (the shard's members after a change).

        Returns ``(added, removed)`` addresses. A removed node is forgotten at once:
        no new try goes to it and its leader hints are ignored; its channel is
        closed a little later, so a call already under way ends on its own.
        """
        wanted = tuple(dict.fromkeys(nodes))
        if not wanted:
            raise ValueError(f"shard {self.shard}: no vault node to route to")
        with self._lock:
            old = self._channels
            added = [a for a in wanted if a not in old]
            removed = [a for a in old if a not in wanted]
            channels = {a: old[a] if a in old else open_channel(a, self.tls, CHANNEL_OPTIONS)
                        for a in wanted}
            self._stubs = {a: self._stubs[a] if a in self._stubs
                           else services_pb2_grpc.VaultStub(channels[a]) for a in wanted}
            self._channels = channels
            self.nodes = wanted
            if self._leader not in channels:
                self._leader = None
            self._seen = {a: seen for a, seen in self._seen.items() if a in channels}
            self._next = 0
        retired = [old[a] for a in removed]
        if retired:
            timer = threading.Timer(RETIRED_CHANNEL_SECONDS,
                                    lambda: [ch.close() for ch in retired])
            timer.daemon = True
            timer.start()
        return added, removed

    @property
    def leader(self) -> str | None:
        with self._lock:
            return self._leader

    def forward(
        self, request: envelope_pb2.SealedRequest, deadline_seconds: float
    ) -> envelope_pb2.SealedResponse:
        """Deliver ``request`` to the leader; VaultFailure on a final error or timeout."""
        deadline = time.monotonic() + deadline_seconds
        backoff = BACKOFF_START_SECONDS
        hops = 0  # hints followed without a pause; bounded so stale views can't spin
        tries = 0
        while True:
            if tries and self._on_retry is not None:
                self._on_retry()
            tries += 1
            # Only after a try failed: a leader that answers is never second-guessed by
            # the view (followers too busy to answer a probe in time still commit).
            lost = self.quorum_lost() if tries > 1 else None
            if lost is not None:
                raise no_quorum_failure(*lost)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise VaultFailure(grpc.StatusCode.UNAVAILABLE, "no vault leader reachable")
            target = self._pick()
            try:
                reply = self._handle(target, request, min(remaining, PER_TRY_SECONDS))
            except _Gone:
                continue  # no longer a member: pick again from the current list
            except grpc.RpcError as err:
                code = err.code()
                answered = _answered(err)
                if answered is not None:
                    self.note(target, answered)
                if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                    log.warning("shard %d: node %s did not answer in time", self.shard, target)
                    self._forget(target)
                    self._skip(target)
                    continue
                if code not in _RETRYABLE:
                    raise VaultFailure(code, _final_details(err), from_vault=True) from None
                hint = _leader_hint(err) if code == grpc.StatusCode.FAILED_PRECONDITION else None
                if self._follow(target, hint) and hops < len(self.nodes):
                    hops += 1
                    continue  # a fresh hint: try the leader at once
                hops = 0
                self._skip(target)
                time.sleep(min(backoff * random.uniform(0.5, 1.0), max(0.0, remaining)))
                backoff = min(backoff * 2, BACKOFF_MAX_SECONDS)
                continue
            self.note(target, True)
            with self._lock:
                self._leader = target
            return reply

    def _handle(self, target: str, request: envelope_pb2.SealedRequest, timeout: float
                ) -> envelope_pb2.SealedResponse:
        """One ``Handle`` call; while it waits (a leader stuck committing), watch the view.

        The wait is bounded by the call's own ``timeout``; a quorum lost meanwhile
        (and a call that waited :data:`COMMIT_PATIENCE_SECONDS` already, well
        beyond a healthy commit) cancels the call and ends the forward with "no quorum".
        """
        with self._lock:
            stub = self._stubs.get(target)
        if stub is None:  # removed from the shard since it was picked
            raise _Gone()
        call = stub.Handle.future(request, timeout=timeout)
        started = time.monotonic()
        for _ in range(int(timeout / VIEW_POLL_SECONDS) + 2):
            try:
                reply: envelope_pb2.SealedResponse = call.result(timeout=VIEW_POLL_SECONDS)
                return reply
            except grpc.FutureTimeoutError:
                waited = time.monotonic() - started
                lost = self.quorum_lost() if waited >= COMMIT_PATIENCE_SECONDS else None
                if lost is not None:
                    call.cancel()
                    raise no_quorum_failure(*lost) from None
        reply = call.result()  # past the call's deadline: it has ended by now
        return reply

    def note(self, address: str, answered: bool, now: float | None = None) -> None:
        """Record that ``address`` answered (any gRPC status of its own) or did not."""
        if address not in self._channels:
            return
        now = time.monotonic() if now is None else now
        with self._lock:
            before = self._seen.get(address)
            silent_since = None
            if not answered:
                silent_since = before[2] if before is not None and before[2] is not None else now
            self._seen[address] = (answered, now, silent_since)

    def quorum_lost(self, now: float | None = None) -> tuple[int, int] | None:
        """``(unreachable, total)`` once fewer than a majority answer, confirmed; else None.

        Needs a recent observation of every node: a stale or partial view never
        counts as lost, so the default stays "retry until the deadline".
        """
        now = time.monotonic() if now is None else now
        with self._lock:
            total = len(self.nodes)
            seen = [self._seen.get(a) for a in self.nodes]
        fresh = [s for s in seen if s is not None and now - s[1] <= VIEW_FRESH_SECONDS]
        if len(fresh) < total:
            return None
        silent = [s[2] for s in fresh if not s[0] and s[2] is not None]
        confirmed = sum(1 for since in silent if now - since >= NO_QUORUM_CONFIRM_SECONDS)
        if total - confirmed > total // 2:
            return None
        return len(silent), total

    def _pick(self) -> str:
        with self._lock:
            if self._leader is not None:
                return self._leader
            target = self.nodes[self._next % len(self.nodes)]
            self._next += 1
            return target

    def _skip(self, target: str) -> None:
        """Make the round robin move past ``target``."""
        with self._lock:
            if target not in self.nodes:
                return
            if self.nodes[(self._next - 1) % len(self.nodes)] != target:
                self._next = self.nodes.index(target) + 1

    def _forget(self, target: str) -> None:
        with self._lock:
            if self._leader == target:
                self._leader = None

    def _follow(self, refused_by: str, hint: str | None) -> bool:
        """Update the cached leader after a refusal; True if there is a new node to try now."""
        with self._lock:
            if hint is not None and hint in self._channels and hint != refused_by:
                fresh = self._leader != hint
                self._leader = hint
                return fresh
            if self._leader == refused_by or self._leader is None:
                self._leader = None
            return False

    def status(self, timeout: float) -> list[tuple[str, services_pb2.NodeStatus | None]]:
        """Every node's ``Vault.Status`` (None for the unreachable), asked in parallel."""
        with self._lock:
            stubs = dict(self._stubs)
        futures = [(addr, stub.Status.future(services_pb2.StatusRequest(), timeout=timeout))
                   for addr, stub in stubs.items()]
        results: list[tuple[str, services_pb2.NodeStatus | None]] = []
        for addr, future in futures:
            try:
                results.append((addr, future.result()))
            except grpc.RpcError:
                results.append((addr, None))
        return results


class _Gone(Exception):
    """The picked node left the shard's node list before the call went out."""


def _leader_hint(err: grpc.RpcError) -> str | None:
    trailing: Any = err.trailing_metadata() if hasattr(err, "trailing_metadata") else None
    for key, value in trailing or ():
        if key == LEADER_METADATA_KEY and isinstance(value, str) and value:
            return value
    return None


def _answered(err: grpc.RpcError) -> bool | None:
    """Whether the node itself answered (a status of its own); None when it can't be told.

    A timeout says nothing: a leader waiting for a commit is up, a paused node is
    not (the health probes, which answer at once, tell them apart).
    """
    code = err.code() if hasattr(err, "code") else None
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return None
    if code == grpc.StatusCode.UNAVAILABLE:
        details = err.details() if hasattr(err, "details") else None
        return isinstance(details, str) and details.startswith(_NODE_ANSWERED_UNAVAILABLE)
    return True


def _final_details(err: grpc.RpcError) -> str:
    details = err.details() if hasattr(err, "details") else None
    text = details if isinstance(details, str) else "vault error"
    return text[:200]
