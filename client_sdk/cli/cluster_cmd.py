"""`bkv cluster up|status|down`: a local 3-data-center cluster on loopback."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from client_sdk.cli.common import CliError
from client_sdk.config import default_state_dir

if TYPE_CHECKING:  # the launcher pulls in gRPC: import it only when a cluster command runs
    from client_sdk.launcher import LocalCluster, NodeView


def register(sub: Any) -> None:
    """Add the `cluster` command group to the `bkv` parser."""
    parser = sub.add_parser("cluster", help="run a local multi-data-center vault cluster")
    group = parser.add_subparsers(dest="cluster_command", required=True, metavar="ACTION")
    up = group.add_parser("up", help="create (first time) and start the cluster")
    up.add_argument("--shards", type=int, default=1, help="Raft groups of 5 nodes (default 1)")
    up.add_argument("--timeout", type=float, default=None,
                    help="seconds to wait for a healthy cluster (default 120)")
    up.set_defaults(handler=_up)
    status = group.add_parser("status", help="show every node by data center")
    status.set_defaults(handler=_status)
    down = group.add_parser("down", help="stop every process of the cluster")
    down.set_defaults(handler=_down)
    for p in (up, status, down):
        p.add_argument("--state-dir", type=Path, default=None,
                       help="cluster state directory (default: $BKV_STATE_DIR or "
                            "~/.local/state/bkv/local-cluster)")


def _cluster(args: argparse.Namespace, shards: int = 1) -> LocalCluster:
    from client_sdk.launcher import LocalCluster

    state = args.state_dir if args.state_dir is not None else default_state_dir()
    return LocalCluster(state, shards)


def _up(args: argparse.Namespace) -> int:
    if not 1 <= args.shards <= 16:
        raise CliError("--shards must be between 1 and 16", 2)
    cluster = _cluster(args, args.shards)
    from client_sdk.launcher import DEFAULT_UP_TIMEOUT, LauncherError

    print(f"starting local cluster in {cluster.state_dir} ...", flush=True)
    try:
        cluster.up(timeout=DEFAULT_UP_TIMEOUT if args.timeout is None else args.timeout)
    except LauncherError as err:
        raise CliError(str(err), 4) from None
    _print_status(cluster.status(), cluster.chatd_addresses())
    print(f"client config: {cluster.client_config_path}")
    return 0


def _status(args: argparse.Namespace) -> int:
    from client_sdk.launcher import LauncherError

    cluster = _cluster(args)
    try:
        views = cluster.status()
        chatd = cluster.chatd_addresses()
    except LauncherError as err:
        raise CliError(str(err), 4) from None
    _print_status(views, chatd)
    return 0 if all(v.status is not None for v in views) else 4


def _down(args: argparse.Namespace) -> int:
    from client_sdk.launcher import LauncherError

    cluster = _cluster(args)
    try:
        stopped = cluster.down()
    except LauncherError as err:
        raise CliError(str(err), 4) from None
    print(f"stopped {len(stopped)} process(es)" if stopped else "nothing was running")
    return 0


def _print_status(views: list[NodeView], chatd: list[str]) -> None:
    """Nodes grouped by data center; unreachable nodes are marked, never hidden."""
    for dc in sorted({v.datacenter for v in views}):
        print(f"{dc}:")
        for v in sorted((v for v in views if v.datacenter == dc), key=lambda v: v.node_id):
            st = v.status
            if st is None:
                state = "running, not answering" if v.running else "stopped"
                print(f"  {v.node_id:<14} shard {v.shard}  UNREACHABLE ({state})  {v.grpc_address}")
                continue
            print(f"  {v.node_id:<14} shard {st.shard}  {st.role:<9} term {st.term:<4} "
                  f"commit {st.commit_index:<6} applied {st.last_applied:<6} "
                  f"accounts {st.accounts:<5} {v.grpc_address}")
    print("chatd: " + ", ".join(chatd))
