"""`bkv cluster up|status|down|member`: a local 3-data-center cluster on loopback."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from bkv_tools.cli.common import CliError
from bkv_tools.cli.exit_codes import ExitCode
from client_sdk.config import ClientConfig, default_state_dir

T = TypeVar("T")

if TYPE_CHECKING:  # the launcher pulls in gRPC: import it only when a cluster command runs
    from bkv_tools.launcher import LocalCluster, NodeView


def register(sub: Any) -> None:
    """Add the `cluster` command group to the `bkv` parser."""
    parser = sub.add_parser("cluster", help="run a local multi-data-center vault cluster")
    group = parser.add_subparsers(dest="cluster_command", required=True, metavar="ACTION")
    up = group.add_parser("up", help="create (first time) and start the cluster")
    up.add_argument("--shards", type=int, default=1, help="Raft groups of 5 nodes (default 1)")
    up.add_argument("--timeout", type=float, default=None,
                    help="seconds to wait for a healthy cluster (default 120)")
    up.set_defaults(handler=_up)
    status = group.add_parser(
        "status", help="show every node by data center (local cluster, or --config)",
        description="Every member by data center: role, term, commit index, applied, lag, "
                    "state digest and health. Exit 0 healthy, 10 some node unreachable, 9 a "
                    "shard without a leader or a majority (no quorum), 8 no ChatD answers, "
                    "6 two members hold different states at the same applied index.")
    status.add_argument("--config", type=Path, default=None,
                        help="client config of any cluster (e.g. deploy/state/client.toml): "
                             "ask its ChatDs instead of the local cluster's nodes")
    status.add_argument("--json", action="store_true", help="print one JSON document")
    status.set_defaults(handler=_status)
    down = group.add_parser("down", help="stop every process of the cluster")
    down.set_defaults(handler=_down)
    member = group.add_parser("member", help="add or remove a vault node of the local cluster")
    msub = member.add_subparsers(dest="member_command", required=True, metavar="ACTION")
    add = msub.add_parser(
        "add", help="make, start and add a new member (link key, certificate, config)",
        description="Make the new node's link key, certificate and config, start it, add it "
                    "to the shard's Raft group through the leader, then record it in the "
                    "layout, every member's [[peers]] and every ChatD's shard list (the "
                    "ChatDs reload on SIGHUP). Waits until it caught up and ChatD routes to it.")
    add.add_argument("node_id", metavar="NAME", help="the new node's id (e.g. s0-dc3-n2)")
    add.add_argument("--shard", type=int, default=0, help="the shard to join (default 0)")
    add.add_argument("--datacenter", default=None,
                     help="its data center (default: the one with the fewest members)")
    remove = msub.add_parser(
        "remove", help="remove a member, stop it, set its data aside",
        description="Remove the member from its shard's Raft group (the leader hands over "
                    "first if it is the one), stop it, rename its data directory, config and "
                    "link key to NAME.removed-TIME (nothing is deleted) and record it in the "
                    "layout, the other members' [[peers]] and every ChatD's shard list.")
    remove.add_argument("node_id", metavar="NAME")
    members = msub.add_parser("list", help="the Raft group's members next to the layout's")
    members.add_argument("--json", action="store_true", help="print one JSON document")
    for p in (add, remove):
        p.add_argument("--timeout", type=float, default=None,
                       help="seconds for the whole change (default 60)")
    add.set_defaults(handler=_member_add)
    remove.set_defaults(handler=_member_remove)
    members.set_defaults(handler=_member_list)
    for p in (up, status, down, add, remove, members):
        p.add_argument("--state-dir", type=Path, default=None,
                       help="cluster state directory (default: $BKV_STATE_DIR, else "
                            "$XDG_STATE_HOME/bkv/local-cluster, else "
                            "~/.local/state/bkv/local-cluster)")


def _cluster(args: argparse.Namespace, shards: int = 1) -> LocalCluster:
    from bkv_tools.launcher import LocalCluster

    state = args.state_dir if args.state_dir is not None else default_state_dir()
    return LocalCluster(state, shards, tls=True)  # TLS for a new cluster


def _up(args: argparse.Namespace) -> int:
    if not 1 <= args.shards <= 16:
        raise CliError("--shards must be between 1 and 16", ExitCode.USAGE)
    cluster = _cluster(args, args.shards)
    from bkv_tools.launcher import DEFAULT_UP_TIMEOUT, LauncherError

    print(f"starting local cluster in {cluster.state_dir} ...", flush=True)
    try:
        cluster.up(timeout=DEFAULT_UP_TIMEOUT if args.timeout is None else args.timeout)
    except LauncherError as err:
        raise CliError(str(err), ExitCode.ERROR) from None
    _print_status(cluster.status(), cluster.layout)
    print(f"client config: {cluster.client_config_path}")
    return 0


def _status(args: argparse.Namespace) -> int:
    if args.config is not None:
        return _remote_status(args.config, args.json)
    from bkv_tools.launcher import LauncherError

    cluster = _cluster(args)
    try:
        cluster.reconcile()  # a change interrupted earlier: finish it from the Raft log
        views = _settled(cluster.status, lambda v: _rows(v, cluster.layout))
    except LauncherError as err:
        raise CliError(str(err), ExitCode.ERROR) from None
    return _print_status(views, cluster.layout, as_json=args.json)


def _settled(probe: Callable[[], T], rows_of: Callable[[T], list[Any]],
                tries: int = 3, pause: float = 0.5) -> T:
    """Probe again while two nodes seem to differ at one applied index.

    A node may apply an entry between reading its digest and its index; a real
    divergence stays, a passing one does not.
    """
    from bkv_ops.cluster_status import diverged

    result = probe()
    for _ in range(tries - 1):
        if not diverged(rows_of(result)):
            break
        time.sleep(pause)
        result = probe()
    return result


def _remote_status(config_path: Path, as_json: bool) -> int:
    """Any cluster, through the first ChatD of the client config that answers."""
    from bkv_ops.cluster_status import ask_chatds, rows_from_reply

    try:
        client = ClientConfig.load(config_path)
    except ValueError as err:
        raise CliError(str(err), ExitCode.USAGE) from None
    try:
        answer = ask_chatds(client.chatd, tls=client.tls)
    except ValueError as err:  # TlsError: the CA file can't be read
        raise CliError(str(err), ExitCode.USAGE) from None
    if answer is None:
        raise CliError(f"no ChatD answered ({', '.join(client.chatd)})", ExitCode.UNAVAILABLE)
    address, first = answer
    unused = [first]

    def probe() -> Any:
        if unused:
            return unused.pop()
        fresh = ask_chatds([address], tls=client.tls)
        return first if fresh is None else fresh[1]

    reply = _settled(probe, rows_from_reply)
    return _report(rows_from_reply(reply), [{"name": "answering", "listen": address}], as_json)


def _print_status(views: list[NodeView], layout: dict[str, Any], *, as_json: bool = False
                  ) -> int:
    """Nodes grouped by data center; unreachable nodes are marked, never hidden."""
    return _report(_rows(views, layout), layout.get("chatd", []), as_json)


def _rows(views: list[NodeView], layout: dict[str, Any]) -> list[Any]:
    from bkv_ops.cluster_status import NodeIdentity, build_rows

    known = {v.grpc_address: NodeIdentity(v.node_id, v.datacenter, v.shard) for v in views}
    extra = {n["node_id"]: {"metrics": n["metrics_address"]}
             for n in layout.get("nodes", []) if "metrics_address" in n}
    return build_rows([(v.grpc_address, v.status) for v in views], known, extra)


def _report(rows: list[Any], chatds: list[dict[str, Any]], as_json: bool) -> int:
    """Print the table (or JSON) and the ChatDs; the exit code says how healthy it looks."""
    from bkv_ops.cluster_status import (
        diverged,
        format_table,
        shards_without_leader,
        status_document,
    )

    chatd_view = [{"name": c["name"], "address": c["listen"],
                   "metrics": c.get("metrics_address", ""),
                   "status_page": f"http://{c['status_address']}/"
                   if c.get("status_address") else ""} for c in chatds]
    if as_json:
        print(json.dumps(status_document(rows, chatd=chatd_view), indent=2))
    else:
        print(format_table(rows))
        for c in chatd_view:
            line = f"chatd {c['name']}: {c['address']}"
            line += f"  metrics http://{c['metrics']}/metrics" if c["metrics"] else ""
            line += f"  status page {c['status_page']}" if c["status_page"] else ""
            print(line)
    lost = shards_without_quorum(rows)
    for shard, (down, total) in sorted(lost.items()):
        print(f"shard {shard}: NO QUORUM, {down} of {total} nodes unreachable", file=sys.stderr)
    divergences = diverged(rows)
    for divergence in divergences:
        print(divergence.describe(), file=sys.stderr)
    if divergences:
        return ExitCode.DAMAGED  # replicas disagree: worse than any outage
    if lost or shards_without_leader(rows):
        return ExitCode.NO_QUORUM
    return ExitCode.DEGRADED if any(not r.reachable for r in rows) else ExitCode.OK


def shards_without_quorum(rows: list[Any]) -> dict[int, tuple[int, int]]:
    """``{shard: (unreachable, total)}`` for shards where no majority of nodes answers.

    A leader cut off from its majority may still call itself leader; this counts
    answers instead. Rows of unknown shard count for the only shard, if there is one.
    """
    shards = sorted({r.shard for r in rows if r.shard >= 0})
    unknown = [r for r in rows if r.shard < 0]
    lost = {}
    for shard in shards:
        members = [r for r in rows if r.shard == shard] + (unknown if len(shards) == 1 else [])
        down = sum(1 for r in members if not r.reachable)
        if len(members) - down <= len(members) // 2:
            lost[shard] = (down, len(members))
    return lost


def _member_add(args: argparse.Namespace) -> int:
    from bkv_tools.launcher import MEMBER_TIMEOUT, LauncherError

    cluster = _cluster(args)
    print(f"adding {args.node_id} to shard {args.shard} ...", flush=True)
    try:
        node = cluster.member_add(args.node_id, args.shard, args.datacenter,
                                  MEMBER_TIMEOUT if args.timeout is None else args.timeout)
    except LauncherError as err:
        raise CliError(str(err), ExitCode.ERROR) from None
    print(f"added {node['node_id']} ({node['datacenter']}, shard {node['shard']}): "
          f"grpc {node['grpc_address']}, raft {node['raft_address']}; "
          f"config {cluster.config_path(node['node_id'])}")
    return 0


def _member_remove(args: argparse.Namespace) -> int:
    from bkv_tools.launcher import MEMBER_TIMEOUT, LauncherError

    cluster = _cluster(args)
    print(f"removing {args.node_id} ...", flush=True)
    try:
        record = cluster.member_remove(
            args.node_id, MEMBER_TIMEOUT if args.timeout is None else args.timeout)
    except LauncherError as err:
        raise CliError(str(err), ExitCode.ERROR) from None
    print(f"removed {record['node_id']} from shard {record['shard']} and stopped it")
    for path in record["set_aside"]:
        print(f"  kept aside: {path}")
    return 0


def _member_list(args: argparse.Namespace) -> int:
    """Per shard, the Raft group's members (the truth) and whether the layout agrees."""
    from bkv_tools.launcher import LauncherError

    cluster = _cluster(args)
    try:
        cluster.reconcile()
        shards: list[dict[str, Any]] = []
        for shard in range(cluster.shards):
            raft = sorted(m.node_id for m in cluster.raft_members(shard))
            shards.append({"shard": shard, "raft_members": raft,
                           "layout_members": sorted(cluster.nodes(shard))})
    except LauncherError as err:
        raise CliError(str(err), ExitCode.UNAVAILABLE) from None
    agree = all(s["raft_members"] == s["layout_members"] for s in shards)
    if args.json:
        print(json.dumps({"shards": shards, "agree": agree}, indent=2))
    else:
        for s in shards:
            print(f"shard {s['shard']}: {' '.join(s['raft_members'])}")
            if s["raft_members"] != s["layout_members"]:
                print(f"  the layout records: {' '.join(s['layout_members'])}")
    return ExitCode.OK if agree else ExitCode.ERROR


def _down(args: argparse.Namespace) -> int:
    from bkv_tools.launcher import LauncherError

    cluster = _cluster(args)
    try:
        stopped = cluster.down()
    except LauncherError as err:
        raise CliError(str(err), ExitCode.ERROR) from None
    print(f"stopped {len(stopped)} process(es)" if stopped else "nothing was running")
    return 0
