"""One view of a vault cluster for people and scripts: rows, a table and a JSON document.

``bkv cluster status`` (local launcher or any client config), the compose
deployment's ``status`` command and ChatD's status page all show the same
columns, computed here from ``NodeStatus`` messages. Pure: no network, no files;
:func:`ask_chatds`, the one network edge, imports gRPC only when called.

Lag is the shard leader's commit index minus the node's last applied index
(unknown, ``None``, while the shard has no leader), so it counts entries a node
still has to apply, including the leader's own backlog. ``digest`` is the start
of the node's state digest (SHA-256 of its replicated state): two nodes of a
shard that have applied the same index must hold the same state, and
:func:`diverged` names the ones that don't.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from bkv_api.v1 import services_pb2

if TYPE_CHECKING:
    from bkv_ops.tls import ClientTls

UNKNOWN_DC = "unknown"  # a silent node nobody could name (listed last)
DIGEST_PREFIX_HEX = 12  # digest characters shown in the table (the JSON has all 64)


@dataclass(frozen=True)
class NodeIdentity:
    """What is known of a node without asking it (layout, or an earlier answer)."""

    node_id: str
    datacenter: str
    shard: int


@dataclass(frozen=True)
class NodeRow:
    """One vault node in the status view; ``reachable`` False means it did not answer."""

    node_id: str
    datacenter: str
    shard: int
    address: str
    reachable: bool
    role: str = "unreachable"
    term: int | None = None
    commit_index: int | None = None
    last_applied: int | None = None
    lag: int | None = None
    healthy: bool = False
    leader: bool = False
    accounts: int | None = None
    digest: str = ""  # the state digest in hex; "" when unknown
    extra: dict[str, str] = field(default_factory=dict)  # e.g. metrics address

    @property
    def health(self) -> str:
        if not self.reachable:
            return "unreachable"
        return "ok" if self.healthy else "degraded"


def build_rows(
    entries: Iterable[tuple[str, services_pb2.NodeStatus | None]],
    known: Mapping[str, NodeIdentity] | None = None,
    extra: Mapping[str, Mapping[str, str]] | None = None,
) -> list[NodeRow]:
    """Rows from ``(address, status or None)`` pairs; ``known`` names silent addresses.

    ``extra`` adds per-node columns by node id (the launcher's metrics ports).
    """
    known = known or {}
    extra = extra or {}
    entries = list(entries)
    leaders = _leaders(s for _, s in entries if s is not None)
    rows = []
    for address, st in entries:
        if st is None:
            who = known.get(address, NodeIdentity(address or "?", UNKNOWN_DC, -1))
            rows.append(NodeRow(node_id=who.node_id, datacenter=who.datacenter,
                                shard=who.shard, address=address, reachable=False,
                                extra=dict(extra.get(who.node_id, {}))))
            continue
        leader = leaders.get(st.shard)
        rows.append(NodeRow(
            node_id=st.node_id, datacenter=st.datacenter, shard=st.shard, address=address,
            reachable=True, role=st.role, term=st.term, commit_index=st.commit_index,
            last_applied=st.last_applied,
            lag=None if leader is None else max(0, leader.commit_index - st.last_applied),
            healthy=st.healthy, leader=leader is not None and leader.node_id == st.node_id,
            accounts=st.accounts, digest=st.state_digest.hex(),
            extra=dict(extra.get(st.node_id, {}))))
    return sorted(rows, key=lambda r: (r.datacenter == UNKNOWN_DC, r.datacenter, r.shard,
                                       r.node_id))


def rows_from_reply(
    reply: services_pb2.ClusterStatusReply, known: Mapping[str, NodeIdentity] | None = None
) -> list[NodeRow]:
    """Rows from ``ChatD.ClusterStatus`` (which gives no address for nodes that answered)."""
    entries: list[tuple[str, services_pb2.NodeStatus | None]] = [("", s) for s in reply.nodes]
    entries += [(address, None) for address in reply.unreachable]
    return build_rows(entries, known)


def _leaders(statuses: Iterable[services_pb2.NodeStatus]) -> dict[int, services_pb2.NodeStatus]:
    """Per shard, the node calling itself leader in the highest term."""
    best: dict[int, services_pb2.NodeStatus] = {}
    for st in statuses:
        if st.role == "leader" and (st.shard not in best or st.term > best[st.shard].term):
            best[st.shard] = st
    return best


def shards_without_leader(rows: Iterable[NodeRow]) -> list[int]:
    """Shards (of the rows that name one) where no node is the leader."""
    rows = list(rows)
    shards = {r.shard for r in rows if r.shard >= 0}
    led = {r.shard for r in rows if r.leader}
    return sorted(shards - led)


@dataclass(frozen=True)
class Divergence:
    """Nodes of one shard that applied the same log index but hold different states."""

    shard: int
    applied: int
    by_digest: dict[str, list[str]]  # digest (hex) -> node ids

    def describe(self) -> str:
        groups = "; ".join(f"{digest[:DIGEST_PREFIX_HEX]}: {', '.join(sorted(nodes))}"
                           for digest, nodes in sorted(self.by_digest.items()))
        return (f"shard {self.shard}: STATE DIVERGED at applied index {self.applied} "
                f"({groups})")


def diverged(rows: Iterable[NodeRow]) -> list[Divergence]:
    """Per shard and applied index, the answering nodes whose state digests differ.

    Nodes at different applied indexes may differ (one is behind); nodes at the
    same index must not: Raft applies the same entries in the same order.
    """
    groups: dict[tuple[int, int], dict[str, list[str]]] = {}
    for r in rows:
        if r.reachable and r.digest and r.last_applied is not None:
            groups.setdefault((r.shard, r.last_applied), {}).setdefault(
                r.digest, []).append(r.node_id)
    return [Divergence(shard, applied, by_digest)
            for (shard, applied), by_digest in sorted(groups.items()) if len(by_digest) > 1]


def datacenters(rows: Iterable[NodeRow]) -> list[str]:
    """The data centers of ``rows`` in display order (the unknown one last)."""
    return sorted({r.datacenter for r in rows}, key=lambda dc: (dc == UNKNOWN_DC, dc))


def _cell(value: int | None) -> str:
    return "?" if value is None else str(value)


def format_table(rows: Iterable[NodeRow]) -> str:
    """A header, then per data center a ``dcN:`` line and one line per node (id first)."""
    rows = list(rows)
    extra_names = sorted({k for r in rows for k in r.extra})
    head = (f"{'node':<16} {'dc':<7} {'shard':>5} {'role':<11} {'term':>5} {'commit':>7} "
            f"{'applied':>7} {'lag':>5} {'digest':<{DIGEST_PREFIX_HEX}} {'health':<11} "
            f"{'address':<21}")
    lines = [" ".join([head, *(f"{n:<21}" for n in extra_names)]).rstrip()]
    for dc in datacenters(rows):
        lines.append(f"{dc}:")
        for r in (r for r in rows if r.datacenter == dc):
            shard = "?" if r.shard < 0 else str(r.shard)
            line = (f"{r.node_id:<16} {r.datacenter:<7} {shard:>5} {r.role:<11} "
                    f"{_cell(r.term):>5} {_cell(r.commit_index):>7} {_cell(r.last_applied):>7} "
                    f"{_cell(r.lag):>5} {r.digest[:DIGEST_PREFIX_HEX] or '?':<{DIGEST_PREFIX_HEX}} "
                    f"{r.health:<11} {r.address or '-':<21}")
            line += "".join(f" {r.extra.get(n, '-'):<21}" for n in extra_names)
            lines.append(line.rstrip())
    return "\n".join(lines)


def row_dict(row: NodeRow) -> dict[str, Any]:
    """A row as JSON-ready data, with the derived ``health``."""
    data = asdict(row)
    data["health"] = row.health
    return data


def status_document(rows: Iterable[NodeRow], **more: Any) -> dict[str, Any]:
    """The JSON view: nodes grouped by data center, leader per shard, plus ``more`` keys."""
    rows = list(rows)
    leaders = {str(r.shard): r.node_id for r in rows if r.leader}
    groups = [
        {"name": dc, "nodes": [row_dict(r) for r in rows if r.datacenter == dc]}
        for dc in datacenters(rows)
    ]
    return {"datacenters": groups, "leaders": leaders,
            "shards_without_leader": shards_without_leader(rows),
            "unreachable": [r.node_id for r in rows if not r.reachable],
            "diverged": [{"shard": d.shard, "applied": d.applied, "digests": d.by_digest}
                         for d in diverged(rows)], **more}


def ask_chatds(
    addresses: Iterable[str], timeout: float = 3.0, *, tls: ClientTls | None = None
) -> tuple[str, services_pb2.ClusterStatusReply] | None:
    """``ChatD.ClusterStatus`` from the first ChatD that answers (and which one), else None."""
    import grpc  # the network edge: the rest of this module stays pure

    from bkv_api.v1 import services_pb2_grpc
    from bkv_ops.tls import open_channel

    for address in addresses:
        with open_channel(address, tls) as channel:
            try:
                reply: services_pb2.ClusterStatusReply = services_pb2_grpc.ChatDStub(
                    channel).ClusterStatus(services_pb2.ClusterStatusRequest(), timeout=timeout)
            except grpc.RpcError:
                continue
        return address, reply
    return None
