"""Files of the docker compose deployment (``deploy/docker-compose.yml``), and its health probe.

``prepare`` runs on the host, once per state folder (default ``deploy/state/``,
git-ignored), and never overwrites a secret::

    secrets/  (0700) master.key, transport.secret, token-signing.key (0600),
              link/<node>.key: each node's own Raft link key (0600)
    fleet/fleet.sealed        made by ``bkv-vault-node init-fleet``
    config/<service>.toml     node and ChatD configs, paths as seen inside the containers
    compose.env               BKV_STATE and the published ChatD ports (``--env-file``)
    client.toml               points ``bkv vault ...`` at those ports on 127.0.0.1
    layout.json               fleet public key, ports and ``members``, so a second run
                              keeps them

``layout.json``'s ``members`` is the deployment's record of the shard's Raft
membership (made once from the standard five nodes): every node's
``[[peers]]``, every ChatD's node list and the certificates are generated from
it, like the local launcher's ``cluster.json``. ``member add|remove`` change the
record (and the configs), next to the Raft change ``bkv-vault-node member
add|remove`` makes; then ``docker kill -s HUP`` on the ChatDs makes them route
to the new list.

Inside the containers the compose secrets are copied by the entry point to
``/run/bkv`` (memory only, owner ``bkv``). Every vault node is addressed by its
service name (``grpc_address``, ``raft_address``: what peers, ChatDs and leader
hints use, resolved by the container networks' DNS) while it listens on every
interface of its container (``grpc_listen``, ``raft_bind``), since it joins two
networks: its data center's and ``wan``.

``health vault|chatd`` is the container health check: exit 0 when the local
service's ``grpc.health.v1.Health/Check`` says SERVING (a node that knows its
leader; a ChatD that sees a leader in every shard). ``status`` prints
every node as a ChatD sees it (role, term, commit index), from the host.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import tomli_w
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bkv_api.v1 import services_pb2
from bkv_ops import tls
from bkv_ops.cluster_status import NodeIdentity, ask_chatds, format_table, rows_from_reply
from bkv_ops.console import quiet_on_closed_pipe
from bkv_ops.tls_certs import Identity
from bkv_protocol import tokens
from bkv_tools.launcher_layout import (
    CHATD_BURST,
    CHATD_DEADLINE_SECONDS,
    CHATD_RATE_PER_SECOND,
    CLIENT_DEADLINE_SECONDS,
    DATACENTERS,
    LauncherError,
    create_certs,
    create_secrets,
    free_ports,
    init_fleet,
    node_link_key,
    tls_config_keys,
)
from client_sdk.config import ClientConfig

GRPC_PORT = 7100
RAFT_PORT = 7200
CHATD_PORT = 7001
IN_CONTAINER_SECRETS = Path("/run/bkv")
IN_CONTAINER_DATA = Path("/var/lib/bkv/data")
HEALTH_TIMEOUT_SECONDS = 3.0
IN_CONTAINER_TLS = IN_CONTAINER_SECRETS / "tls"  # the service's own certificate folder
IN_CONTAINER_PROBE = IN_CONTAINER_SECRETS / "probe"  # the health probe's (vault nodes)
PROBE_CERT_NAME = "probe"
LISTEN_HOST = "0.0.0.0"  # noqa: S104 (inside a container, on its private networks)


def default_members() -> list[tuple[str, str]]:
    """The first five nodes: dc1-n1, dc1-n2, dc2-n1, dc2-n2, dc3-n1, with their data centers."""
    return [(f"{dc}-n{i}", dc) for dc, count in DATACENTERS for i in range(1, count + 1)]


def node_names(state_dir: Path | None = None) -> list[tuple[str, str]]:
    """(service name, data center) of every member: the ``members`` recorded in
    ``state_dir``'s layout.json, else (no state yet) the first five nodes."""
    if state_dir is not None:
        try:
            layout = json.loads((state_dir / "layout.json").read_text("utf-8"))
        except (OSError, ValueError):
            layout = {}
        if isinstance(layout, dict) and layout.get("members"):
            return [(m["node_id"], m["datacenter"]) for m in layout["members"]]
    return default_members()


def chatd_names() -> list[tuple[str, str]]:
    """(service name, data center) of the ChatD of each data center."""
    return [(f"chatd-{dc}", dc) for dc, _ in DATACENTERS]


def port_variable(chatd: str) -> str:
    """The compose variable holding the host port published for one ChatD."""
    return "BKV_" + chatd.upper().replace("-", "_") + "_PORT"


def node_config(name: str, datacenter: str, attempt_limit: int,
                allow_identity_ksf: bool = False,
                link_keys: dict[str, str] | None = None,
                members: list[tuple[str, str]] | None = None) -> dict[str, Any]:
    """One vault node's TOML content (single shard), with in-container paths.

    ``members``: the shard's (name, data center) list for ``[[peers]]`` (default:
    the first five nodes).

    ``link_keys``: node name -> link public key (hex) for ``[[peers]]``; each node's
    private key is its own compose secret. ``allow_identity_ksf`` is for test
    deployments only (fast fault-injection runs).
    """
    keys = link_keys or {}
    peers = [{"node_id": n, "datacenter": dc, "raft_address": f"{n}:{RAFT_PORT}",
              "grpc_address": f"{n}:{GRPC_PORT}",
              **({"link_public_key": keys[n]} if n in keys else {})}
             for n, dc in (members or default_members())]
    return {
        "node_id": name,
        "datacenter": datacenter,
        "shard": 0,
        "grpc_address": f"{name}:{GRPC_PORT}",
        "raft_address": f"{name}:{RAFT_PORT}",
        "grpc_listen": f"{LISTEN_HOST}:{GRPC_PORT}",
        "raft_bind": f"{LISTEN_HOST}:{RAFT_PORT}",
        "data_dir": str(IN_CONTAINER_DATA),
        "fleet_file": str(IN_CONTAINER_SECRETS / "fleet_sealed"),
        "master_key_file": str(IN_CONTAINER_SECRETS / "master_key"),
        # the secret is read-only: the software HSM's anti-rollback mark lives on the
        # node's volume, outside its data directory (a real HSM keeps it in the token)
        "high_water_file": str(IN_CONTAINER_DATA.parent / "high-water"),
        "transport_secret_file": str(IN_CONTAINER_SECRETS / "transport_secret"),
        "link_key_file": str(IN_CONTAINER_SECRETS / "link_key"),
        "attempt_limit": attempt_limit,
        "allow_identity_ksf": allow_identity_ksf,
        "log_format": "json",
        "peers": peers,
    }


def chatd_config(datacenter: str, token_public_key: bytes,
                 members: list[tuple[str, str]] | None = None) -> dict[str, Any]:
    """One ChatD's TOML content: listens on every interface, routes to every member."""
    return {
        "listen": f"0.0.0.0:{CHATD_PORT}",
        "datacenter": datacenter,
        "token_public_key": token_public_key.hex(),
        "deadline_seconds": CHATD_DEADLINE_SECONDS,
        "rate_limit": {"per_account_per_second": CHATD_RATE_PER_SECOND, "burst": CHATD_BURST},
        "shards": [{"id": 0, "nodes": [f"{n}:{GRPC_PORT}"
                                       for n, _ in (members or default_members())]}],
        "log_format": "json",
    }


def tls_identities(members: list[tuple[str, str]] | None = None) -> list[Identity]:
    """Certificates of the deployment: nodes by service name, ChatDs also for the host's
    published ports (127.0.0.1, localhost), and the vault nodes' health probe."""
    ids = [Identity(tls.ROLE_VAULT_NODE, n, (n,)) for n, _ in (members or default_members())]
    ids += [Identity(tls.ROLE_CHATD, n, (n, "localhost"), ("127.0.0.1",))
            for n, _ in chatd_names()]
    ids.append(Identity(tls.ROLE_OPS, PROBE_CERT_NAME))
    return ids


def prepare(state_dir: Path, *, attempt_limit: int = 10,
            allow_identity_ksf: bool | None = None, use_tls: bool = True,
            keep_ca_key: bool = True) -> ClientConfig:
    """Create what is missing in ``state_dir`` (secrets and fleet once), rewrite the configs.

    ``allow_identity_ksf`` is recorded in layout.json; ``None`` keeps the recorded
    choice (default off), so regenerating the configs after a membership change
    keeps what the deployment was prepared with.

    ``use_tls`` (the default, and what ``deploy/docker-compose.yml`` expects): the
    certificates in ``tls/`` are made once; nodes serve mutual TLS, ChatDs TLS, and
    ``client.toml`` names the CA. ``keep_ca_key=False`` discards the CA key.
    """
    state_dir = state_dir.expanduser().resolve()
    for sub in ("config", "fleet"):
        (state_dir / sub).mkdir(parents=True, exist_ok=True)
    create_secrets(state_dir / "secrets")
    layout_path = state_dir / "layout.json"
    try:
        layout: dict[str, Any] = json.loads(layout_path.read_text("utf-8"))
    except FileNotFoundError:
        ports = free_ports(len(DATACENTERS))
        layout = {"version": 1, "attempt_limit": attempt_limit,
                  "ports": {name: port for (name, _), port in zip(chatd_names(), ports,
                                                                  strict=True)}}
    except ValueError:
        raise LauncherError(f"{layout_path} is damaged") from None
    if "fleet_public_key" not in layout:
        layout["fleet_public_key"] = init_fleet(state_dir)
    if allow_identity_ksf is not None:
        layout["allow_identity_ksf"] = allow_identity_ksf
    identity_ksf = bool(layout.get("allow_identity_ksf", False))
    if not layout.get("members"):
        layout["members"] = [{"node_id": n, "datacenter": dc} for n, dc in default_members()]
    members = [(m["node_id"], m["datacenter"]) for m in layout["members"]]
    layout_path.write_text(json.dumps(layout, indent=2) + "\n", "utf-8")
    if use_tls:
        create_certs(state_dir / "tls", tls_identities(members), keep_ca_key=keep_ca_key)
    tls_keys = tls_config_keys(IN_CONTAINER_TLS) if use_tls else {}

    config_dir = state_dir / "config"
    link_keys = {name: node_link_key(state_dir / "secrets", name)[1] for name, _ in members}
    for name, dc in members:
        toml = tomli_w.dumps(node_config(name, dc, int(layout["attempt_limit"]),
                                         identity_ksf, link_keys, members) | tls_keys)
        (config_dir / f"{name}.toml").write_text(toml, "utf-8")
    signing = bytes.fromhex(
        (state_dir / "secrets" / "token-signing.key").read_text("ascii").strip()
    )
    for name, dc in chatd_names():
        toml = tomli_w.dumps(chatd_config(dc, tokens.public_key_from(signing), members)
                             | tls_keys)
        (config_dir / f"{name}.toml").write_text(toml, "utf-8")
    env = f"BKV_STATE={state_dir}\n" + "".join(
        f"{port_variable(n)}={layout['ports'][n]}\n" for n, _ in chatd_names())
    (state_dir / "compose.env").write_text(env, "ascii")
    client = ClientConfig(
        fleet_public_key=bytes.fromhex(layout["fleet_public_key"]),
        shard_count=1,
        chatd=[f"127.0.0.1:{layout['ports'][n]}" for n, _ in chatd_names()],
        deadline_seconds=CLIENT_DEADLINE_SECONDS,
        token_signing_key_file=state_dir / "secrets" / "token-signing.key",
        ca_file=state_dir / "tls" / tls.CA_FILE if use_tls else None,
        tls_server_name=tls.CHATD_SERVER_NAME if use_tls else None,
    )
    client.save(state_dir / "client.toml")
    return client


def probe_tls(kind: str, tls_dir: Path | None) -> tls.ClientTls | None:
    """The probe's TLS: for a node, the ops certificate in ``tls_dir``; for a ChatD, its CA."""
    if tls_dir is None:
        return None
    if kind == "vault":
        return tls.bundle_client(tls_dir, tls.VAULT_SERVER_NAME)
    return tls.ClientTls(tls_dir / tls.CA_FILE, server_name=tls.CHATD_SERVER_NAME)


def healthy(kind: str, address: str, timeout: float = HEALTH_TIMEOUT_SECONDS, *,
            tls_dir: Path | None = None) -> bool:
    """Whether the vault node / ChatD at ``address`` reports SERVING over the gRPC health API."""
    service = "bkv.v1.Vault" if kind == "vault" else "bkv.v1.ChatD"
    try:
        channel = tls.open_channel(address, probe_tls(kind, tls_dir))
    except tls.TlsError:
        return False
    with channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def cluster_status(
    client: ClientConfig, timeout: float = HEALTH_TIMEOUT_SECONDS
) -> services_pb2.ClusterStatusReply | None:
    """``ChatD.ClusterStatus`` from the first ChatD of ``client`` that answers, else None."""
    answer = ask_chatds(client.chatd, timeout, tls=client.tls)
    return None if answer is None else answer[1]


def wait_ready(client: ClientConfig, timeout: float) -> services_pb2.ClusterStatusReply:
    """Until every ChatD answers and sees all nodes with one leader; LauncherError on timeout."""
    end = time.monotonic() + timeout
    problem = "no ChatD answered"
    chatd_tls = client.tls
    while time.monotonic() < end:
        answers = [ask_chatds([address], HEALTH_TIMEOUT_SECONDS, tls=chatd_tls)
                   for address in client.chatd]
        replies = [None if a is None else a[1] for a in answers]
        reply = replies[0]
        if any(r is None for r in replies):
            problem = "a ChatD does not answer"
        elif reply is not None and reply.unreachable:
            problem = f"{reply.unreachable[0]} unreachable"
        elif reply is not None and not any(n.role == "leader" for n in reply.nodes):
            problem = "no leader elected"
        elif reply is not None:
            return reply
        time.sleep(1.0)
    raise LauncherError(f"deployment not ready after {timeout:g}s ({problem})")


def record_member(state_dir: Path, action: str, name: str, datacenter: str = "") -> list[str]:
    """Add or remove ``name`` in layout.json's ``members`` (the membership record) and
    regenerate the configs from it; returns the member names after the change."""
    layout_path = state_dir / "layout.json"
    try:
        layout = json.loads(layout_path.read_text("utf-8"))
    except (OSError, ValueError):
        raise LauncherError(f"no deployment in {state_dir} (run prepare first)") from None
    members = layout.get("members") or [{"node_id": n, "datacenter": dc}
                                        for n, dc in default_members()]
    known = [m["node_id"] for m in members]
    if action == "add":
        if name in known:
            raise LauncherError(f"{name} is already a member")
        if not datacenter:
            raise LauncherError("a new member needs its data center")
        members.append({"node_id": name, "datacenter": datacenter})
    else:
        if name not in known:
            raise LauncherError(f"{name} is not a member")
        members = [m for m in members if m["node_id"] != name]
        layout.setdefault("removed", []).append(
            {"node_id": name, "removed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    layout["members"] = members
    layout_path.write_text(json.dumps(layout, indent=2) + "\n", "utf-8")
    if action == "remove":
        (state_dir / "config" / f"{name}.toml").unlink(missing_ok=True)
    prepare(state_dir, use_tls=(state_dir / "tls").exists())
    return [m["node_id"] for m in members]


def format_status(reply: services_pb2.ClusterStatusReply,
                  state_dir: Path | None = None) -> str:
    """The same table as ``bkv cluster status``: nodes by data center, then the silent ones."""
    known = {f"{name}:{GRPC_PORT}": NodeIdentity(name, dc, 0)
             for name, dc in node_names(state_dir)}
    return format_table(rows_from_reply(reply, known))


@quiet_on_closed_pipe
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bkv_tools.compose_layout",
        description="files and health check of the docker compose deployment")
    sub = parser.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="create secrets, fleet and configs (idempotent)")
    prep.add_argument("--state-dir", type=Path, default=Path("deploy/state"))
    prep.add_argument("--no-keep-ca-key", action="store_true",
                      help="discard the CA key after issuing the certificates (first run)")
    prep.add_argument("--attempt-limit", type=int, default=10,
                      help="wrong guesses before a key is destroyed (first run only)")
    health = sub.add_parser("health", help="container health check")
    health.add_argument("kind", choices=("vault", "chatd"))
    health.add_argument("--tls-dir", type=Path, default=None,
                        help="certificate folder: vault: the probe's (ops) certificate, key "
                             "and CA; chatd: the CA (default: plaintext)")
    health.add_argument("--address", default=None,
                        help="default: 127.0.0.1 and the service's port in the container")
    status = sub.add_parser("status", help="every node as the first answering ChatD sees it")
    status.add_argument("--state-dir", type=Path, default=Path("deploy/state"))
    status.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                        help="first wait up to SECONDS for every node and a leader")
    member = sub.add_parser(
        "member", help="record a member added or removed (with `bkv-vault-node member`) "
                       "and regenerate the configs from the record")
    member.add_argument("action", choices=("add", "remove"))
    member.add_argument("name", help="the node's service name (e.g. dc3-n2)")
    member.add_argument("--datacenter", default="", help="the new member's data center")
    member.add_argument("--state-dir", type=Path, default=Path("deploy/state"))
    args = parser.parse_args(argv)
    if args.command == "member":
        try:
            names = record_member(args.state_dir.resolve(), args.action, args.name,
                                  args.datacenter)
        except LauncherError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        print(f"members: {' '.join(names)}; configs rewritten in {args.state_dir / 'config'}; "
              "send SIGHUP to every ChatD (docker kill -s HUP) to route to them")
        return 0
    if args.command == "status":
        try:
            client = ClientConfig.load(args.state_dir / "client.toml")
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        try:
            reply = wait_ready(client, args.wait) if args.wait > 0 else cluster_status(client)
        except LauncherError as err:
            print(f"error: {err}", file=sys.stderr)
            return 4
        if reply is None:
            print("error: no ChatD answered", file=sys.stderr)
            return 4
        print(format_status(reply, args.state_dir))
        return 0
    if args.command == "health":
        port = GRPC_PORT if args.kind == "vault" else CHATD_PORT
        address = args.address or f"127.0.0.1:{port}"
        return 0 if healthy(args.kind, address, tls_dir=args.tls_dir) else 1
    if not 1 <= args.attempt_limit <= 100:
        parser.error("--attempt-limit must be in 1..100")
    try:
        prepare(args.state_dir, attempt_limit=args.attempt_limit,
                keep_ca_key=not args.no_keep_ca_key)
    except LauncherError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"deployment files in {args.state_dir.resolve()}; client config: "
          f"{(args.state_dir / 'client.toml').resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
