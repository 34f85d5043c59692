"""`bkv cluster up|status|down`: a local 3-data-center cluster on loopback."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bkv_tools.cli.common import CliError
from bkv_tools.cli.exit_codes import ExitCode
from client_sdk.config import ClientConfig, default_state_dir

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
        description="Every vault node by data center: role, term, commit index, applied, lag "
                    "and health. Exit 0 healthy, 10 some node unreachable, 9 a shard without a "
                    "leader or a majority (no quorum), 8 no ChatD answers.")
    status.add_argument("--config", type=Path, default=None,
                        help="client config of any cluster (e.g. deploy/state/client.toml): "
                             "ask its ChatDs instead of the local cluster's nodes")
    status.add_argument("--json", action="store_true", help="print one JSON document")
    status.set_defaults(handler=_status)
    down = group.add_parser("down", help="stop every process of the cluster")
    down.set_defaults(handler=_down)
    for p in (up, status, down):
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
        views = cluster.status()
    except LauncherError as err:
        raise CliError(str(err), ExitCode.ERROR) from None
    return _print_status(views, cluster.layout, as_json=args.json)


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
    address, reply = answer
    return _report(rows_from_reply(reply), [{"name": "answering", "listen": address}], as_json)


def _print_status(views: list[NodeView], layout: dict[str, Any], *, as_json: bool = False
                  ) -> int:
    """Nodes grouped by data center; unreachable nodes are marked, never hidden."""
    from bkv_ops.cluster_status import NodeIdentity, build_rows

    known = {v.grpc_address: NodeIdentity(v.node_id, v.datacenter, v.shard) for v in views}
    extra = {n["node_id"]: {"metrics": n["metrics_address"]}
             for n in layout.get("nodes", []) if "metrics_address" in n}
    rows = build_rows([(v.grpc_address, v.status) for v in views], known, extra)
    return _report(rows, layout.get("chatd", []), as_json)


def _report(rows: list[Any], chatds: list[dict[str, Any]], as_json: bool) -> int:
    """Print the table (or JSON) and the ChatDs; the exit code says how healthy it looks."""
    from bkv_ops.cluster_status import format_table, shards_without_leader, status_document

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


def _down(args: argparse.Namespace) -> int:
    from bkv_tools.launcher import LauncherError

    cluster = _cluster(args)
    try:
        stopped = cluster.down()
    except LauncherError as err:
        raise CliError(str(err), ExitCode.ERROR) from None
    print(f"stopped {len(stopped)} process(es)" if stopped else "nothing was running")
    return 0
