"""Files of a local cluster: port layout, secrets, fleet keys, node/ChatD/client configs.

Pure file work, no long-running processes; :mod:`bkv_tools.launcher` runs them.
Secrets are created once, owner-only, and never overwritten, so a second
``bkv cluster up`` reuses the same fleet and data.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import tomli_w
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from bkv_ops import tls, tls_certs
from bkv_protocol import tokens
from client_sdk.config import ClientConfig

DATACENTERS = (("dc1", 2), ("dc2", 2), ("dc3", 1))
NODES_PER_SHARD = sum(n for _, n in DATACENTERS)
CHATD_DEADLINE_SECONDS = 5.0
CLIENT_DEADLINE_SECONDS = 15.0
CHATD_RATE_PER_SECOND = 20.0
CHATD_BURST = 40


class LauncherError(Exception):
    """The local cluster can't be created, started or reached (one-line message)."""


def free_ports(count: int) -> list[int]:
    """Distinct free loopback ports, held open together so none repeats."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def child_env() -> dict[str, str]:
    """The environment for cluster processes: no BKV_* overrides leak in from the caller."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BKV_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def new_layout(shards: int, attempt_limit: int, allow_identity_ksf: bool) -> dict[str, Any]:
    """Node ids, data centers and fresh loopback ports for every process."""
    ports = iter(free_ports(2 * NODES_PER_SHARD * shards + len(DATACENTERS)))
    nodes = []
    for shard in range(shards):
        for dc, count in DATACENTERS:
            for i in range(1, count + 1):
                nodes.append({
                    "node_id": f"s{shard}-{dc}-n{i}",
                    "datacenter": dc,
                    "shard": shard,
                    "raft_address": f"127.0.0.1:{next(ports)}",
                    "grpc_address": f"127.0.0.1:{next(ports)}",
                })
    chatd = [{"name": f"chatd-{dc}", "datacenter": dc, "listen": f"127.0.0.1:{next(ports)}"}
             for dc, _ in DATACENTERS]
    layout = {"version": 1, "shards": shards, "nodes": nodes, "chatd": chatd,
              "attempt_limit": attempt_limit, "allow_identity_ksf": allow_identity_ksf}
    add_ops_ports(layout)
    return layout


def add_ops_ports(layout: dict[str, Any]) -> bool:
    """Give every node a metrics port and every ChatD a metrics and a status-page port.

    Only entries that lack one get a port (layouts made before these existed are
    upgraded in place); returns whether anything was added.
    """
    wanted = [(entry, "metrics_address") for entry in layout["nodes"]
              if "metrics_address" not in entry]
    wanted += [(entry, key) for entry in layout["chatd"]
               for key in ("metrics_address", "status_address") if key not in entry]
    if not wanted:
        return False
    taken = {int(str(v).rpartition(":")[2]) for entry in layout["nodes"] + layout["chatd"]
             for k, v in entry.items() if k.endswith(("_address", "listen"))}
    ports = iter(p for p in free_ports(len(wanted) + len(taken)) if p not in taken)
    for entry, key in wanted:
        entry[key] = f"127.0.0.1:{next(ports)}"
    return True


def write_secret(path: Path, make: Callable[[], str]) -> None:
    """Create a 0600 secret file once; an existing one is kept as it is."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    with os.fdopen(fd, "w", encoding="ascii") as out:
        out.write(make())


def create_secrets(secrets_dir: Path) -> None:
    """The Raft transport secret and the token signing key (the master key comes from
    ``init-fleet``)."""
    secrets_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    secrets_dir.chmod(0o700)
    write_secret(secrets_dir / "transport.secret", lambda: secrets.token_hex(32) + "\n")
    write_secret(secrets_dir / "token-signing.key",
                 lambda: tokens.generate_signing_key()[0].hex() + "\n")


LINK_KEY_DIR = "link"


def node_link_key(secrets_dir: Path, node_id: str) -> tuple[Path, str]:
    """A node's own Raft link key file (made once, 0600) and its public key in hex.

    Each node's key is its credential on the Raft link; the public halves go into
    every node's ``[[peers]]`` (format: 64 hex digits, ``bkv-vault-node link-key``).
    """
    folder = secrets_dir / LINK_KEY_DIR
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = folder / f"{node_id}.key"
    write_secret(path, lambda: X25519PrivateKey.generate().private_bytes_raw().hex() + "\n")
    private = X25519PrivateKey.from_private_bytes(bytes.fromhex(path.read_text("ascii").strip()))
    return path, private.public_key().public_bytes_raw().hex()


TLS_DIR = "tls"
OPS_CERT_NAME = "ops"


def local_identities(layout: dict[str, Any]) -> list[tls_certs.Identity]:
    """A certificate per node, per ChatD and for the probes of a local cluster.

    Everything is on loopback: every leaf is valid for 127.0.0.1 and ``localhost``;
    the role names (checked by ChatD and the SDK) tell a node from a ChatD.
    """
    local = {"dns_names": ("localhost",), "ip_addresses": ("127.0.0.1",)}
    identities = [tls_certs.Identity(tls.ROLE_VAULT_NODE, n["node_id"], **local)
                  for n in layout["nodes"]]
    identities += [tls_certs.Identity(tls.ROLE_CHATD, c["name"], **local) for c in layout["chatd"]]
    identities.append(tls_certs.Identity(tls.ROLE_OPS, OPS_CERT_NAME))
    return identities


def create_certs(
    tls_dir: Path, identities: list[tls_certs.Identity], *, keep_ca_key: bool = True
) -> None:
    """The cluster CA and the certificates of ``identities`` in ``tls_dir`` (each made once)."""
    try:
        tls_certs.ensure_bundle(tls_dir, identities, keep_ca_key=keep_ca_key)
    except (tls.TlsError, OSError) as err:
        raise LauncherError(f"cannot create certificates: {err}") from None


def tls_config_keys(folder: Path) -> dict[str, str]:
    """The ``tls_*_file`` config keys of a service whose certificate folder is ``folder``."""
    return {"tls_cert_file": str(folder / tls.CERT_FILE),
            "tls_key_file": str(folder / tls.KEY_FILE),
            "tls_ca_file": str(folder / tls.CA_FILE)}


def init_fleet(state_dir: Path) -> str:
    """Run ``bkv-vault-node init-fleet`` once; return the fleet's HPKE public key (hex)."""
    fleet_file = state_dir / "fleet" / "fleet.sealed"
    if fleet_file.exists():
        raise LauncherError(f"{fleet_file} exists but the cluster layout is missing")
    proc = subprocess.run(
        [sys.executable, "-m", "vault_node.cli", "init-fleet",
         "--master-key-file", str(state_dir / "secrets" / "master.key"),
         "--fleet-file", str(fleet_file), "--json"],
        capture_output=True, text=True, timeout=120, env=child_env(), check=False,
    )
    if proc.returncode != 0:
        reason = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise LauncherError(f"init-fleet failed: {reason}")
    try:
        key = json.loads(proc.stdout)["fleet_public_key"]
    except (ValueError, KeyError, TypeError):
        raise LauncherError("init-fleet printed no fleet_public_key") from None
    if not isinstance(key, str) or len(key) != 64:
        raise LauncherError("init-fleet printed a malformed fleet_public_key")
    return key


def members(layout: dict[str, Any], shard: int | None = None) -> list[dict[str, Any]]:
    """The recorded members (of ``shard``, or all): the layout's ``nodes`` list.

    ``nodes`` is the deployment's record of each shard's Raft membership: the
    launcher's ``cluster member add|remove`` changes the Raft group and this list
    in one operation, and every config, ``up``, ``status`` and ``down`` read it.
    """
    return [n for n in layout["nodes"] if shard is None or n["shard"] == shard]


def peer_entries(state_dir: Path, layout: dict[str, Any], shard: int) -> list[dict[str, str]]:
    """``[[peers]]`` of a node config: every recorded member of ``shard`` with its link key."""
    secrets_dir = state_dir / "secrets"
    return [{**{k: p[k] for k in ("node_id", "datacenter", "raft_address", "grpc_address")},
             "link_public_key": node_link_key(secrets_dir, p["node_id"])[1]}
            for p in members(layout, shard)]


def node_config(state_dir: Path, layout: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    """One node's TOML content: the template of every node of the local cluster.

    ``[[peers]]`` is the node's bootstrap list (used while it has no Raft state):
    the shard's recorded members, which include ``node`` itself.
    """
    secrets_dir = state_dir / "secrets"
    link_key_file = node_link_key(secrets_dir, node["node_id"])[0]
    peers = peer_entries(state_dir, layout, node["shard"])
    if not any(p["node_id"] == node["node_id"] for p in peers):
        raise LauncherError(f"{node['node_id']} is not a recorded member of its shard")
    return {
        **{k: node[k] for k in ("node_id", "datacenter", "shard", "grpc_address",
                                "raft_address", "metrics_address")},
        "data_dir": str(state_dir / "nodes" / node["node_id"]),
        "fleet_file": str(state_dir / "fleet" / "fleet.sealed"),
        "master_key_file": str(secrets_dir / "master.key"),
        "transport_secret_file": str(secrets_dir / "transport.secret"),
        "link_key_file": str(link_key_file),
        "attempt_limit": layout["attempt_limit"],
        "allow_identity_ksf": layout["allow_identity_ksf"],
        "log_format": "json",
        **(tls_config_keys(state_dir / TLS_DIR / node["node_id"]) if layout.get("tls") else {}),
        "peers": peers,
    }


def chatd_shards(layout: dict[str, Any]) -> list[dict[str, Any]]:
    """ChatD's ``[[shards]]``: each shard's recorded members' gRPC addresses."""
    return [{"id": s, "nodes": [n["grpc_address"] for n in members(layout, s)]}
            for s in range(layout["shards"])]


def chatd_config(state_dir: Path, layout: dict[str, Any], chatd: dict[str, Any]
                 ) -> dict[str, Any]:
    """One ChatD's TOML content."""
    signing = bytes.fromhex(
        (state_dir / "secrets" / "token-signing.key").read_text("ascii").strip())
    return {
        "listen": chatd["listen"],
        "datacenter": chatd["datacenter"],
        "token_public_key": tokens.public_key_from(signing).hex(),
        "deadline_seconds": CHATD_DEADLINE_SECONDS,
        "rate_limit": {"per_account_per_second": CHATD_RATE_PER_SECOND,
                       "burst": CHATD_BURST},
        "shards": chatd_shards(layout),
        "log_format": "json",
        "metrics_address": chatd["metrics_address"],
        "status_address": chatd["status_address"],
        "peer_status_addresses": [c["status_address"] for c in layout["chatd"]
                                  if c is not chatd and c.get("status_address")],
        **(tls_config_keys(state_dir / TLS_DIR / chatd["name"]) if layout.get("tls") else {}),
    }


def write_new_file(path: Path, text: str) -> bool:
    """Write ``text`` to ``path`` unless it exists; whether it was written."""
    try:
        with open(path, "x", encoding="utf-8") as out:
            out.write(text)
    except FileExistsError:
        return False
    return True


def replace_file(path: Path, text: str) -> None:
    """Replace ``path`` atomically (a reader sees the old or the new file, never half)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, "utf-8")
    os.replace(tmp, path)


def update_config_key(path: Path, key: str, value: Any) -> None:
    """Set one top-level key of an existing TOML config, keeping every other key."""
    try:
        raw = tomllib.loads(path.read_text("utf-8"))
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise LauncherError(f"cannot update {path}: {err}") from None
    raw[key] = value
    replace_file(path, tomli_w.dumps(raw))


def write_configs(state_dir: Path, layout: dict[str, Any]) -> list[Path]:
    """Node TOMLs, ChatD TOMLs (config/) and client.toml that are missing, from the layout.

    An existing config is never rewritten: it is the running process's, and only a
    membership change (:func:`update_config_key` on ``peers`` / ``shards``) edits it.
    The layout has its ops ports (:func:`add_ops_ports`) and says whether it uses TLS.
    Returns the files written.
    """
    secrets_dir = state_dir / "secrets"
    use_tls = bool(layout.get("tls"))
    config_dir = state_dir / "config"
    written = []
    for node in members(layout):
        path = config_dir / f"{node['node_id']}.toml"
        if not path.exists() and write_new_file(
                path, tomli_w.dumps(node_config(state_dir, layout, node))):
            written.append(path)
    for chatd in layout["chatd"]:
        path = config_dir / f"{chatd['name']}.toml"
        if not path.exists() and write_new_file(
                path, tomli_w.dumps(chatd_config(state_dir, layout, chatd))):
            written.append(path)
    if (state_dir / "client.toml").exists():
        return written
    written.append(state_dir / "client.toml")
    ClientConfig(
        fleet_public_key=bytes.fromhex(layout["fleet_public_key"]),
        shard_count=layout["shards"],
        chatd=[c["listen"] for c in layout["chatd"]],
        deadline_seconds=CLIENT_DEADLINE_SECONDS,
        token_signing_key_file=secrets_dir / "token-signing.key",
        ca_file=state_dir / TLS_DIR / tls.CA_FILE if use_tls else None,
        tls_server_name=tls.CHATD_SERVER_NAME if use_tls else None,
    ).save(state_dir / "client.toml")
    return written
