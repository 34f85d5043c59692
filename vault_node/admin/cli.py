"""`bkv-vault-node member|snapshot|link-key|hsm ...`: the operator's admin commands.

Exit codes, the project-wide table (``bkv_tools.cli.exit_codes``, which the vault
does not import): 0 ok, 1 the cluster refused the change, 2 bad configuration,
arguments or file, 6 the HSM's high-water mark is damaged or was edited, 8 no node
answered in time (try later), 12 the node refused the transport secret.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

from vault_node.admin.client import (
    AdminClient,
    AdminError,
    AdminRefusedError,
    AdminUnavailableError,
)
from vault_node.admin.rebuild import RebuildError, rebuild, targets_for
from vault_node.config import ConfigError, NodeConfig, load_transport_secret
from vault_node.hsm.fleet import FleetHsm, HsmError, MasterKeyBackend
from vault_node.hsm.high_water import HighWaterDamaged
from vault_node.hsm.pkcs11 import Pkcs11MasterKey, load_master_key, node_high_water
from vault_node.raft.admin_endpoint import (
    CMD_ADD,
    CMD_COMPACT,
    CMD_MEMBERS,
    CMD_REMOVE,
    CMD_SNAPSHOT,
)
from vault_node.raft.membership import (
    Member,
    MembershipError,
    bootstrap_members,
    members_from_plain,
)
from vault_node.raft.snapshot_file import (
    SnapshotFileError,
    contents_from_reply,
    open_sealed,
    seal,
    write_file,
)
from vault_node.raft.snapshot_offline import read_data_dir
from vault_node.raft.transport_cipher import LinkKey, LinkSecrets, load_link_key

EXIT_REFUSED = 1
EXIT_BAD_INPUT = 2
EXIT_DAMAGED = 6
EXIT_UNAVAILABLE = 8
EXIT_SECRET_REFUSED = 12
DEFAULT_TIMEOUT = 30.0


class _Fail(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def _client(cfg: NodeConfig) -> tuple[AdminClient, list[str]]:
    """A client with the config's link credentials, and the Raft addresses to start from.

    It speaks with the link key of the node whose config it was given: only a
    current member's credentials get an admin request past the handshake.
    """
    secrets = LinkSecrets(bytes(load_transport_secret(cfg)), load_link_key(cfg))
    keys = {p.raft_address: bytes.fromhex(p.link_public_key) for p in cfg.peers}
    seeds = [cfg.raft_address, *(p.raft_address for p in cfg.other_peers)]
    return AdminClient(secrets, keys), seeds


def _fleet(cfg: NodeConfig) -> tuple[MasterKeyBackend, bytes]:
    master = load_master_key(cfg)
    return master, FleetHsm.from_file(master, cfg.fleet_file).fleet_public_key


def _print_members(reply: dict[str, Any], as_json: bool) -> None:
    members = members_from_plain(reply.get("members"))
    leader = reply.get("leader")
    if as_json:
        print(json.dumps({"leader": leader, "members": [m.to_plain() for m in members]}))
        return
    for m in members:
        mark = "*" if m.raft_address == leader else " "
        grpc_address = m.grpc_address or "(unknown)"
        print(f"{mark} {m.node_id:<16} {m.datacenter:<10} raft {m.raft_address:<21} "
              f"grpc {grpc_address}")
    print(f"{len(members)} members; * = leader")


def _ask(args: argparse.Namespace, command: list[Any]) -> tuple[NodeConfig, dict[str, Any]]:
    cfg = NodeConfig.load(args.config)
    client, seeds = _client(cfg)
    try:
        return cfg, client.call_leader(seeds, command, args.timeout)
    except AdminError as err:
        raise _Fail(str(err), _admin_code(err)) from None


def _admin_code(err: AdminError) -> int:
    """Tell "the secret is wrong" and "try later" apart from a refused change."""
    if isinstance(err, AdminRefusedError):
        return EXIT_SECRET_REFUSED
    if isinstance(err, AdminUnavailableError):
        return EXIT_UNAVAILABLE
    return EXIT_REFUSED


def _member_list(args: argparse.Namespace) -> None:
    if not args.local:
        _print_members(_ask(args, [CMD_MEMBERS])[1], args.json)
        return
    cfg = NodeConfig.load(args.config)
    client, _seeds = _client(cfg)
    try:
        reply = client.request(cfg.raft_address, [CMD_MEMBERS, "local"], args.timeout)
    except AdminError as err:
        raise _Fail(str(err), _admin_code(err)) from None
    _print_members(reply, args.json)


def _member_add(args: argparse.Namespace) -> None:
    try:
        new = Member(args.node_id, args.datacenter, args.raft_address, args.grpc_address,
                     args.link_public_key)
    except MembershipError as err:
        raise _Fail(str(err), EXIT_BAD_INPUT) from None
    _print_members(_ask(args, [CMD_ADD, new.to_plain()])[1], args.json)


def _member_remove(args: argparse.Namespace) -> None:
    _print_members(_ask(args, [CMD_REMOVE, args.node_id])[1], args.json)


def _listening(address: str) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=1.0):
            return True
    except OSError:
        return False


def _snapshot_take(args: argparse.Namespace) -> None:
    cfg = NodeConfig.load(args.config)
    master, fleet_public_key = _fleet(cfg)  # before asking: fail early on a bad key
    if args.out.exists():
        raise _Fail(f"{args.out} already exists; refusing to overwrite", EXIT_BAD_INPUT)
    if args.offline:
        if _listening(cfg.raft_address):
            raise _Fail(f"{cfg.node_id} is running (its Raft port answers); "
                        "take the snapshot without --offline", EXIT_BAD_INPUT)
        contents = read_data_dir(cfg.data_dir, cfg.node_id, bootstrap_members(cfg.peers))
    else:
        contents = contents_from_reply(_ask(args, [CMD_SNAPSHOT])[1])
    write_file(args.out, seal(master, fleet_public_key, contents))
    print(f"wrote sealed snapshot {args.out}: log index {contents.last_entry[0]}, "
          f"{contents.accounts} accounts, {len(contents.members)} members, "
          f"from {contents.source_node}")


def _snapshot_now(args: argparse.Namespace) -> None:
    if args.local:
        cfg = NodeConfig.load(args.config)
        client, _seeds = _client(cfg)
        try:
            reply = client.request(cfg.raft_address, [CMD_COMPACT], args.timeout)
        except AdminError as err:
            raise _Fail(str(err), _admin_code(err)) from None
    else:
        reply = _ask(args, [CMD_COMPACT])[1]
    if args.json:
        print(json.dumps({"leader": reply.get("node", {}), "ok": True}))
    else:
        print("the leader is taking a snapshot and will compact its log (in the background)")


def _snapshot_restore(args: argparse.Namespace) -> None:
    del args
    raise _Fail("a snapshot is never restored into one member (it would fork the shard and "
                "give guesses back): rebuild the whole stopped shard with `bkv-vault-node shard "
                "rebuild --from FILE --config NODE.toml ...` (every member's config), or let an "
                "empty member catch up from the leader", EXIT_BAD_INPUT)


def _shard_rebuild(args: argparse.Namespace) -> None:
    configs = [NodeConfig.load(path) for path in args.config]
    master, fleet_public_key = _fleet(configs[0])
    try:
        blob = args.source.read_bytes()
    except OSError as err:
        raise _Fail(f"cannot read {args.source}: {err.strerror}", EXIT_BAD_INPUT) from None
    contents = open_sealed(master, fleet_public_key, blob)
    try:
        targets = targets_for(configs, load_master_key, node_high_water)
        result = rebuild(contents, targets, accept_rollback=args.accept_rollback,
                         say=(lambda _line: None) if args.json else print)
    except RebuildError as err:
        raise _Fail(str(err), EXIT_SECRET_REFUSED if err.rollback else EXIT_REFUSED) from None
    except HsmError as err:
        raise _Fail(f"HSM: {err}", EXIT_BAD_INPUT) from None
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        print(f"rebuilt {len(configs)} members with {contents.accounts} accounts at epoch "
              f"{result['epoch']}; old data directories kept as *.before-rebuild-*; "
              "start the members now")

def _link_key_new(args: argparse.Namespace) -> None:
    """Write a fresh private link key (0600, never overwriting) and print its public half."""
    key = LinkKey.generate()
    try:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise _Fail(f"{args.out} already exists; refusing to overwrite", EXIT_BAD_INPUT) from None
    except OSError as err:
        raise _Fail(f"cannot write {args.out}: {err.strerror}", EXIT_BAD_INPUT) from None
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(key.private_hex() + "\n")
    print(key.public_hex)


def _link_key_show(args: argparse.Namespace) -> None:
    """The public half of a node's link key: what `member add --link-public-key` takes."""
    print(load_link_key(NodeConfig.load(args.config)).public_hex)


def _high_water_show(args: argparse.Namespace) -> None:
    """Print the node's anti-rollback mark as its HSM holds it (reads only)."""
    cfg = NodeConfig.load(args.config)
    master = load_master_key(cfg)
    try:
        mark = node_high_water(cfg, master)
        position = mark.current()
    finally:
        if isinstance(master, Pkcs11MasterKey):
            master.close()
    if args.json:
        print(json.dumps({
            "node_id": cfg.node_id,
            "shard": cfg.shard,
            "backend": "software" if cfg.pkcs11 is None else "pkcs11",
            "where": mark.where,
            "high_water": None if position is None else position.to_plain(),
        }))
        return
    state = "nothing attested yet" if position is None else str(position)
    print(f"{cfg.node_id} (shard {cfg.shard}) high-water mark: {state}")
    print(f"kept in {mark.where}")


def _handle(args: argparse.Namespace) -> int:
    try:
        args.action(args)
    except _Fail as err:
        print(f"bkv-vault-node: {err}", file=sys.stderr)
        return err.code
    except HighWaterDamaged as err:
        print(f"bkv-vault-node: {err}", file=sys.stderr)
        return EXIT_DAMAGED
    except (ConfigError, HsmError, SnapshotFileError, MembershipError) as err:
        print(f"bkv-vault-node: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


def add_commands(sub: Any) -> None:
    """Register `member`, `link-key`, `snapshot` and `hsm` on the `bkv-vault-node` sub-parsers."""
    member = sub.add_parser("member", help="list, add or remove Raft group members")
    msub = member.add_subparsers(dest="member_command", required=True)
    specs = [
        ("list", "show the members as the leader sees them", _member_list),
        ("add", "add a member (start it first, with the current members as peers); "
                "its link public key becomes the credential the others accept", _member_add),
        ("remove", "remove a member (never below 3); the others refuse its link key from "
                   "then on", _member_remove),
    ]
    for name, text, action in specs:
        p = msub.add_parser(name, help=text)
        _common(p)
        p.add_argument("--json", action="store_true", help="print the member list as JSON")
        if name == "list":
            p.add_argument("--local", action="store_true",
                           help="this node's own view, even without a leader")
        if name in ("add", "remove"):
            p.add_argument("--node-id", required=True)
        if name == "add":
            p.add_argument("--datacenter", required=True)
            p.add_argument("--raft-address", required=True, help="host:port")
            p.add_argument("--grpc-address", required=True, help="host:port")
            p.add_argument(
                "--link-public-key", required=True, metavar="HEX",
                help="the new member's link public key (64 hex digits): printed by "
                     "`bkv-vault-node link-key new`, or `link-key show --config` on the new node",
            )
        p.set_defaults(handler=_handle, action=action)
    link = sub.add_parser("link-key", help="this node's own Raft link key (its credential)")
    lsub = link.add_subparsers(dest="link_command", required=True)
    new = lsub.add_parser("new", help="write a new private link key (0600) and print its "
                                      "public half for [[peers]] and `member add`")
    new.add_argument("--out", type=Path, required=True, help="key file to create")
    new.set_defaults(handler=_handle, action=_link_key_new)
    show = lsub.add_parser("show", help="print the public half of the config's link key")
    show.add_argument("--config", type=Path, required=True, help="the node's node.toml")
    show.set_defaults(handler=_handle, action=_link_key_show)
    _add_shard_commands(sub)
    snapshot = sub.add_parser("snapshot", help="take a sealed snapshot, or make the leader "
                                               "snapshot now")
    ssub = snapshot.add_subparsers(dest="snapshot_command", required=True)
    take = ssub.add_parser("take", help="seal the leader's applied state into a file")
    _common(take)
    take.add_argument("--out", type=Path, required=True)
    take.add_argument("--offline", action="store_true",
                      help="read this stopped node's data dir instead of asking the leader")
    take.set_defaults(handler=_handle, action=_snapshot_take)
    now = ssub.add_parser("now", help="make the leader take its own Raft snapshot and compact "
                                      "its log now (it also does so by itself)")
    _common(now)
    now.add_argument("--json", action="store_true")
    now.add_argument("--local", action="store_true",
                     help="this config's own node instead of the leader")
    now.set_defaults(handler=_handle, action=_snapshot_now)
    restore = ssub.add_parser("restore", help="refused: use `shard rebuild` (a whole shard)")
    restore.add_argument("--config", type=Path, required=True, help="the node's node.toml")
    restore.add_argument("--in", dest="input", type=Path, required=True)
    restore.set_defaults(handler=_handle, action=_snapshot_restore)
    hsm = sub.add_parser("hsm", help="what this node's HSM module holds about the node")
    hsub = hsm.add_subparsers(dest="hsm_command", required=True)
    high_water = hsub.add_parser(
        "high-water", help="the anti-rollback mark: the furthest log position the HSM attested"
    )
    hwsub = high_water.add_subparsers(dest="high_water_command", required=True)
    hw_show = hwsub.add_parser("show", help="print the node's high-water mark")
    hw_show.add_argument("--config", type=Path, required=True, help="the node's node.toml")
    hw_show.add_argument("--json", action="store_true", help="print the mark as JSON")
    hw_show.set_defaults(handler=_handle, action=_high_water_show)


def _add_shard_commands(sub: Any) -> None:
    shard = sub.add_parser("shard", help="operations on a whole shard")
    shsub = shard.add_subparsers(dest="shard_command", required=True)
    rebuild_p = shsub.add_parser(
        "rebuild",
        help="rebuild every member of a stopped shard from a sealed snapshot, at a new shard "
             "identity; says what it rolls back. Exit 1: a member runs or is missing; "
             "12: an HSM refuses an older snapshot (see --accept-rollback)")
    rebuild_p.add_argument("--from", dest="source", type=Path, required=True,
                           help="sealed snapshot (`snapshot take`)")
    rebuild_p.add_argument("--config", type=Path, action="append", required=True,
                           help="a member's node.toml; give every member of the shard")
    rebuild_p.add_argument("--accept-rollback", action="store_true",
                           help="rebuild even from a snapshot older than what the members' HSMs "
                                "attested: every guess counted after it is given back; recorded "
                                "in the audit trail with what was rolled back")
    rebuild_p.add_argument("--json", action="store_true")
    rebuild_p.set_defaults(handler=_handle, action=_shard_rebuild)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, required=True, help="any member's node.toml")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                   help=f"seconds to wait for the leader (default {DEFAULT_TIMEOUT:.0f})")
