"""A local multi-data-center cluster on loopback: secrets, configs, processes, health.

Per shard, 5 vault nodes spread over 3 data centers (dc1: 2, dc2: 2, dc3: 1) and
one ChatD per data center in front of every shard. Everything lives in one
state directory so a second ``up`` reuses the same ports, secrets and data:

    secrets/  (0700) master.key, transport.secret, token-signing.key (0600),
              link/<node>.key: each node's own Raft link key (0600)
    fleet/fleet.sealed   config/*.toml   nodes/<id>/   logs/<name>.log
    pids/<name>.pid      cluster.json (layout)         client.toml

``cluster.json`` is the deployment's record of each shard's membership (its
``nodes``), kept equal to the Raft group's by :meth:`LocalCluster.member_add`
and :meth:`LocalCluster.member_remove`, which change both in one operation (an
interrupted one is marked ``pending`` and finished by the next command from the
Raft log's answer). ``up``, ``status``, ``down``, the node ``[[peers]]`` and the
ChatD shard lists all follow it; ``up`` writes only configs that are missing.

Processes are detached (own session) and tracked by pid; a pid is only
signalled when ``/proc/<pid>/cmdline`` still names our config file, so a
recycled pid is never killed. A process whose pid file was lost is found again
by its command line before anything is started, so nothing runs twice.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import tomli_w
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bkv_api.v1 import services_pb2, services_pb2_grpc
from bkv_ops.tls import (
    CA_FILE,
    CHATD_SERVER_NAME,
    VAULT_SERVER_NAME,
    ClientTls,
    bundle_client,
    open_channel,
)
from bkv_tools.launcher_layout import (
    DATACENTERS,
    LINK_KEY_DIR,
    OPS_CERT_NAME,
    TLS_DIR,
    LauncherError,
    add_ops_ports,
    chatd_shards,
    child_env,
    create_certs,
    create_secrets,
    free_ports,
    init_fleet,
    local_identities,
    members,
    new_layout,
    node_config,
    node_link_key,
    peer_entries,
    replace_file,
    update_config_key,
    write_configs,
)
from client_sdk.config import ClientConfig
from vault_node.admin.client import AdminClient, AdminError
from vault_node.config import NodeConfig
from vault_node.raft.admin_endpoint import CMD_ADD, CMD_MEMBERS, CMD_REMOVE
from vault_node.raft.membership import Member, MembershipError, members_from_plain
from vault_node.raft.transport_cipher import LinkSecrets, load_link_key

__all__ = ["DATACENTERS", "LauncherError", "LocalCluster", "NodeView", "free_ports",
           "node_status"]

STATUS_TIMEOUT = 1.0
DEFAULT_UP_TIMEOUT = 120.0
STOP_GRACE_SECONDS = 10.0
MEMBER_TIMEOUT = 60.0
ADMIN_QUERY_SECONDS = 10.0
# A node id names files and folders: letters, digits, '.', '_', '-'; "chatd-" is ChatD's.
NODE_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")


@dataclass(frozen=True)
class NodeView:
    """One vault node as seen by ``status()``: its layout and, if it answered, its status."""

    node_id: str
    datacenter: str
    shard: int
    grpc_address: str
    running: bool
    status: services_pb2.NodeStatus | None


class LocalCluster:
    """Library face of ``bkv cluster``; tests drive it directly."""

    def __init__(
        self,
        state_dir: Path,
        shards: int = 1,
        *,
        attempt_limit: int = 10,
        allow_identity_ksf: bool = False,
        tls: bool = False,
    ) -> None:
        """``tls``: a new cluster's nodes serve mutual TLS and ChatDs TLS (an existing
        cluster keeps what it was created with)."""
        self.state_dir = Path(state_dir).expanduser().resolve()
        self.tls = tls
        self.shards = shards
        self.attempt_limit = attempt_limit
        self.allow_identity_ksf = allow_identity_ksf
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self.layout: dict[str, Any] = {}
        self._layout_stamp: tuple[int, int, int] | None = None

    # ---- paths -------------------------------------------------------------------
    @property
    def secrets_dir(self) -> Path:
        return self.state_dir / "secrets"

    @property
    def client_config_path(self) -> Path:
        return self.state_dir / "client.toml"

    @property
    def vault_tls(self) -> ClientTls | None:
        """How the operator's probes reach vault nodes (ops certificate), None: plaintext."""
        self._load_layout()
        if not self.layout.get("tls"):
            return None
        folder = self.state_dir / TLS_DIR / OPS_CERT_NAME
        return bundle_client(folder, VAULT_SERVER_NAME)

    @property
    def chatd_tls(self) -> ClientTls | None:
        """How a device reaches the ChatDs; None: plaintext."""
        self._load_layout()
        if not self.layout.get("tls"):
            return None
        return ClientTls(self.state_dir / TLS_DIR / CA_FILE, server_name=CHATD_SERVER_NAME)

    def config_path(self, name: str) -> Path:
        return self.state_dir / "config" / f"{name}.toml"

    def log_path(self, name: str) -> Path:
        return self.state_dir / "logs" / f"{name}.log"

    def _pid_path(self, name: str) -> Path:
        return self.state_dir / "pids" / f"{name}.pid"

    # ---- public API -------------------------------------------------------------
    def up(self, timeout: float = DEFAULT_UP_TIMEOUT) -> ClientConfig:
        """Create what is missing, start what is not running, wait until healthy."""
        self._prepare()
        for name in self.process_names():
            if not self._running(name) and not self._adopt(name):
                self._check_ports_free(name)
                self._spawn(name)
        self.wait_healthy(timeout)
        self.reconcile()
        return ClientConfig.load(self.client_config_path)

    def down(self, grace: float = STOP_GRACE_SECONDS) -> list[str]:
        """SIGTERM every process we started, SIGKILL after ``grace``; returns names stopped."""
        if not self._load_layout(required=False):
            return []
        names = [n for n in self.process_names() if self._running(n) or self._adopt(n)]
        for name in names:
            self._signal(name, signal.SIGTERM)
        end = time.monotonic() + grace
        while time.monotonic() < end and any(self._running(n) for n in names):
            time.sleep(0.1)
        for name in names:
            if self._running(name):
                self._signal(name, signal.SIGKILL)
        for name in names:
            self._reap(name, 5.0)
            self._pid_path(name).unlink(missing_ok=True)
        return names

    def status(self) -> list[NodeView]:
        """Every vault node's ``Vault.Status`` (None when it does not answer)."""
        self._load_layout()
        probe_tls = self.vault_tls
        views = []
        for node in self.layout["nodes"]:
            views.append(
                NodeView(
                    node_id=node["node_id"],
                    datacenter=node["datacenter"],
                    shard=node["shard"],
                    grpc_address=node["grpc_address"],
                    running=self._running(node["node_id"]),
                    status=node_status(node["grpc_address"], tls=probe_tls),
                )
            )
        return views

    def chatd_addresses(self) -> list[str]:
        self._load_layout()
        return [c["listen"] for c in self.layout["chatd"]]

    def node(self, node_id: str) -> dict[str, Any]:
        """The layout entry of one node (ids, data center, shard, addresses)."""
        self._load_layout()
        for node in self.layout["nodes"]:
            if node["node_id"] == node_id:
                return dict(node)
        raise LauncherError(f"no node {node_id!r} in this cluster")

    def nodes(self, shard: int | None = None) -> list[str]:
        self._load_layout()
        return [n["node_id"] for n in self.layout["nodes"] if shard in (None, n["shard"])]

    def leader(self, shard: int = 0) -> str | None:
        """The node that reports itself leader of ``shard`` in the highest term, if any."""
        return _leader_of(self.status(), shard)

    def kill_node(self, node_id: str, sig: int = signal.SIGKILL, timeout: float = 15.0) -> None:
        """Send ``sig`` to one node and wait for it to exit."""
        self.node(node_id)
        self._signal(node_id, sig)
        end = time.monotonic() + timeout
        while self._running(node_id) and time.monotonic() < end:
            time.sleep(0.05)
        if self._running(node_id):
            raise LauncherError(f"{node_id} did not exit within {timeout:g}s")
        self._reap(node_id, 1.0)
        self._pid_path(node_id).unlink(missing_ok=True)

    def pause_node(self, node_id: str) -> None:
        """SIGSTOP one node: it keeps its sockets but answers nothing (a hung host)."""
        self.node(node_id)
        if not self._running(node_id):
            raise LauncherError(f"{node_id} is not running")
        self._signal(node_id, signal.SIGSTOP)

    def resume_node(self, node_id: str) -> None:
        """SIGCONT a node paused with :meth:`pause_node`."""
        self.node(node_id)
        self._signal(node_id, signal.SIGCONT)

    def restart_node(self, node_id: str) -> None:
        """Start one node again (killing it first if it still runs)."""
        if self._running(node_id):
            self.kill_node(node_id, signal.SIGTERM)
        self._spawn(node_id)

    def cpu_seconds(self) -> dict[str, float]:
        """CPU time (user + system) used so far by each running process, from /proc."""
        ticks = os.sysconf("SC_CLK_TCK")
        usage: dict[str, float] = {}
        for name in self.process_names():
            pid = self._pid(name)
            if pid is None:
                continue
            try:
                fields = Path(f"/proc/{pid}/stat").read_text("ascii", "replace")
            except OSError:
                continue
            parts = fields.rpartition(")")[2].split()
            usage[name] = (int(parts[11]) + int(parts[12])) / ticks
        return usage

    def process_names(self) -> list[str]:
        self._load_layout()
        return [n["node_id"] for n in self.layout["nodes"]] + [
            c["name"] for c in self.layout["chatd"]
        ]

    def wait_healthy(self, timeout: float = DEFAULT_UP_TIMEOUT) -> None:
        """Until every shard has a leader and every ChatD answers; LauncherError on timeout."""
        end = time.monotonic() + timeout
        missing: list[str] = []
        chatd_tls = self.chatd_tls
        while time.monotonic() < end:
            dead = [n for n in self.process_names() if not self._running(n)]
            if dead:
                raise LauncherError(
                    f"{dead[0]} exited during start-up ({self._last_log_line(dead[0])}); "
                    f"see {self.log_path(dead[0])}"
                )
            views = self.status()  # one round of probes for every shard
            missing = [f"shard {s}: no leader" for s in range(self.shards)
                       if _leader_of(views, s) is None]
            missing += [f"ChatD {a} not serving" for a in self.chatd_addresses()
                        if not _ready(a, chatd_tls)]
            if not missing:
                return
            time.sleep(0.3)
        raise LauncherError(f"cluster not healthy after {timeout:g}s ({missing[0]})")

    def _last_log_line(self, name: str) -> str:
        try:
            lines = self.log_path(name).read_text("utf-8", "replace").strip().splitlines()
        except OSError:
            return "no log"
        return lines[-1][-200:] if lines else "empty log"

    # ---- membership ----------------------------------------------------------------
    def member_add(self, node_id: str, shard: int = 0, datacenter: str | None = None,
                   timeout: float = MEMBER_TIMEOUT) -> dict[str, Any]:
        """Add a new vault node to ``shard``, every step, and record it; returns its entry.

        Makes its link key, certificate (TLS clusters) and config from the same
        template as every node, starts it, asks the shard's leader to add it to the
        Raft group, then records it: ``cluster.json``, every member's ``[[peers]]``
        and every ChatD's shard list (ChatDs re-read it on SIGHUP). Returns once the
        new member has caught up and every ChatD routes to it.
        """
        self._load_layout()
        self.reconcile()
        _check_node_id(node_id)
        if any(n["node_id"] == node_id for n in self.layout["nodes"]):
            raise LauncherError(f"{node_id} is already a member")
        if not 0 <= shard < self.shards:
            raise LauncherError(f"no shard {shard} (this cluster has {self.shards})")
        if datacenter is None:
            counts = {dc: 0 for dc, _ in DATACENTERS}
            for n in members(self.layout, shard):
                counts[n["datacenter"]] = counts.get(n["datacenter"], 0) + 1
            datacenter = min(counts, key=lambda dc: (counts[dc], dc))
        _check_node_id(datacenter, "datacenter")
        end = time.monotonic() + timeout
        raft, grpc_port, metrics = self._free_ports(3)
        node: dict[str, Any] = {"node_id": node_id, "datacenter": datacenter, "shard": shard,
                "raft_address": f"127.0.0.1:{raft}", "grpc_address": f"127.0.0.1:{grpc_port}",
                "metrics_address": f"127.0.0.1:{metrics}", "pending": "add"}
        self.layout["nodes"].append(node)
        self._save_layout()  # the intent first: an interrupted add is finished or undone later
        try:
            self._set_aside(node_id)  # leftovers of an earlier member of that name
            if self.layout.get("tls"):
                create_certs(self.state_dir / TLS_DIR, local_identities(self.layout))
            link_public = node_link_key(self.secrets_dir, node_id)[1]
            config = node_config(self.state_dir, self.layout, node)
            config["join"] = True  # no campaign before the leader adds it: same leader, term
            replace_file(self.config_path(node_id), tomli_w.dumps(config))
            self._spawn(node_id)
            self._wait_answering(node, end)
            member = Member(node_id, datacenter, node["raft_address"], node["grpc_address"],
                            link_public)
            self._admin_call(shard, [CMD_ADD, member.to_plain()], end, without=node_id)
        except BaseException:
            if node_id in self._raft_member_ids(shard, required=False):
                raise  # the change committed after all: the next command records it
            self._undo_add(node)
            raise
        self._finish_add(node)
        self._wait_routed(shard, end)
        self._wait_caught_up(node, end)
        return dict(node)

    def member_remove(self, node_id: str, timeout: float = MEMBER_TIMEOUT) -> dict[str, Any]:
        """Remove a member from its shard, stop it and record it; returns the removal record.

        Asks the leader to remove it from the Raft group (with another member's
        credentials; a leader hands over first), stops its process, moves its data
        directory, config and link key aside (``<name>.removed-<UTC time>``, never
        deleted) and records the removal in ``cluster.json``, the remaining members'
        ``[[peers]]`` and every ChatD's shard list.
        """
        self._load_layout()
        self.reconcile()
        node = next((n for n in self.layout["nodes"] if n["node_id"] == node_id), None)
        if node is None:
            raise LauncherError(f"{node_id} is not a member of this cluster")
        end = time.monotonic() + timeout
        node["pending"] = "remove"
        self._save_layout()
        try:
            self._admin_call(node["shard"], [CMD_REMOVE, node_id], end, without=node_id)
        except BaseException:
            if node_id not in self._raft_member_ids(node["shard"], required=False):
                self._finish_remove(node)
                raise
            node.pop("pending", None)  # refused: it stays a member
            self._save_layout()
            raise
        record = self._finish_remove(node)
        self._wait_routed(node["shard"], end)
        return record

    def raft_members(self, shard: int = 0, timeout: float = ADMIN_QUERY_SECONDS
                     ) -> list[Member]:
        """The shard's members as its Raft leader knows them (the ground truth)."""
        reply = self._admin_call(shard, [CMD_MEMBERS], time.monotonic() + timeout)
        return members_from_plain(reply.get("members"))

    def reconcile(self) -> list[str]:
        """Finish or undo membership changes that were interrupted; returns what was done.

        A ``pending`` entry is settled by the Raft log: a node it lists is a member,
        any other is not. Without an answer from a leader the entry stays pending.
        """
        if not self._load_layout(required=False):
            return []
        done = []
        for node in [n for n in self.layout["nodes"] if n.get("pending")]:
            ids = self._raft_member_ids(node["shard"], required=False)
            if not ids:
                continue
            member = node["node_id"] in ids
            if node["pending"] == "add" and member:
                self._finish_add(node)
                done.append(f"recorded the addition of {node['node_id']}")
            elif node["pending"] == "add":
                self._undo_add(node)
                done.append(f"undid the unfinished addition of {node['node_id']}")
            elif member:
                node.pop("pending", None)
                self._save_layout()
                done.append(f"{node['node_id']} is still a member (its removal did not commit)")
            else:
                self._finish_remove(node)
                done.append(f"recorded the removal of {node['node_id']}")
        return done

    def _finish_add(self, node: dict[str, Any]) -> None:
        node.pop("pending", None)
        self._save_layout()
        self._publish_membership(node["shard"])

    def _undo_add(self, node: dict[str, Any]) -> None:
        """A node whose addition did not commit: stop it, keep its files aside, forget it."""
        self._stop(node["node_id"])
        self.layout["nodes"] = [n for n in self.layout["nodes"] if n is not node]
        self._save_layout()
        self._set_aside(node["node_id"])

    def _finish_remove(self, node: dict[str, Any]) -> dict[str, Any]:
        """A node no longer in the Raft group: stop it, set its files aside, record it."""
        self._stop(node["node_id"])
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        aside = self._set_aside(node["node_id"], stamp)
        record = {**{k: v for k, v in node.items() if k != "pending"},
                  "removed_at": stamp, "set_aside": [str(p) for p in aside]}
        self.layout["nodes"] = [n for n in self.layout["nodes"] if n is not node]
        self.layout.setdefault("removed", []).append(record)
        self._save_layout()
        self._publish_membership(node["shard"])
        return record

    def _publish_membership(self, shard: int) -> None:
        """The recorded membership into every member's ``[[peers]]`` and every ChatD."""
        recorded = [n for n in members(self.layout, shard) if n.get("pending") != "add"]
        view = {**self.layout, "nodes": recorded}
        peers = peer_entries(self.state_dir, view, shard)
        for node in recorded:
            path = self.config_path(node["node_id"])
            if path.exists():
                update_config_key(path, "peers", peers)
        shards = chatd_shards({**self.layout, "nodes": [
            n for n in self.layout["nodes"] if n.get("pending") != "add"]})
        for chatd in self.layout["chatd"]:
            path = self.config_path(chatd["name"])
            if path.exists():
                update_config_key(path, "shards", shards)
            if self._running(chatd["name"]) or self._adopt(chatd["name"]):
                self._signal(chatd["name"], signal.SIGHUP)  # ChatD re-reads its node lists

    def _set_aside(self, node_id: str, stamp: str | None = None) -> list[Path]:
        """Rename a node's data dir, config and link key to ``<name>.removed-<stamp>``."""
        stamp = stamp or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        moved = []
        for path in (self.state_dir / "nodes" / node_id, self.config_path(node_id),
                     self.secrets_dir / LINK_KEY_DIR / f"{node_id}.key"):
            if path.exists():
                target = path.with_name(f"{path.name}.removed-{stamp}")
                n = 1
                while target.exists():
                    n += 1
                    target = path.with_name(f"{path.name}.removed-{stamp}-{n}")
                path.rename(target)
                moved.append(target)
        return moved

    def _stop(self, name: str, grace: float = STOP_GRACE_SECONDS) -> None:
        if not self._running(name) and not self._adopt(name):
            self._pid_path(name).unlink(missing_ok=True)
            return
        self._signal(name, signal.SIGTERM)
        end = time.monotonic() + grace
        while self._running(name) and time.monotonic() < end:
            time.sleep(0.1)
        if self._running(name):
            self._signal(name, signal.SIGKILL)
        self._reap(name, 5.0)
        self._pid_path(name).unlink(missing_ok=True)

    def _admin_client(self, shard: int, without: str | None = None
                      ) -> tuple[AdminClient, list[str]]:
        """An admin client with a recorded member's link credentials, and whom to ask."""
        known = [n for n in members(self.layout, shard) if n.get("pending") != "add"]
        settled = [n for n in known if n["node_id"] != without]
        speakers = [n for n in settled if not n.get("pending")] or settled
        if not speakers:
            raise LauncherError(f"shard {shard} has no recorded member to speak for")
        try:
            secret = (self.secrets_dir / "transport.secret").read_text("utf-8").strip()
            keys = {n["node_id"]: node_link_key(self.secrets_dir, n["node_id"])
                    for n in known}
            own = load_link_key(NodeConfig.load(self.config_path(speakers[0]["node_id"])),
                                env={})
        except (OSError, ValueError) as err:
            raise LauncherError(f"cannot read the admin credentials: {err}") from None
        client = AdminClient(LinkSecrets(secret.encode("utf-8"), own),
                             {n["raft_address"]: bytes.fromhex(keys[n["node_id"]][1])
                              for n in known})
        return client, [n["raft_address"] for n in speakers + settled]

    def _admin_call(self, shard: int, command: list[Any], end: float,
                    without: str | None = None) -> dict[str, Any]:
        client, seeds = self._admin_client(shard, without)
        try:
            return client.call_leader(list(dict.fromkeys(seeds)), command,
                                      max(1.0, end - time.monotonic()))
        except AdminError as err:
            raise LauncherError(f"shard {shard}: {err}") from None

    def _raft_member_ids(self, shard: int, *, required: bool = True) -> set[str]:
        """The node ids of the Raft group; empty (if not ``required``) when nobody answers."""
        try:
            return {m.node_id for m in self.raft_members(shard)}
        except (LauncherError, MembershipError):
            if required:
                raise
            return set()

    def _free_ports(self, count: int) -> list[int]:
        taken = {int(str(v).rpartition(":")[2])
                 for entry in self.layout["nodes"] + self.layout["chatd"]
                 for k, v in entry.items() if k.endswith(("_address", "listen"))}
        ports = [p for p in free_ports(count + len(taken)) if p not in taken]
        return ports[:count]

    def _wait_answering(self, node: dict[str, Any], end: float) -> None:
        """Until a just-started node answers ``Vault.Status``; LauncherError if it exits."""
        probe_tls = self.vault_tls
        while time.monotonic() < end:
            if not self._running(node["node_id"]):
                raise LauncherError(
                    f"{node['node_id']} exited during start-up "
                    f"({self._last_log_line(node['node_id'])}); "
                    f"see {self.log_path(node['node_id'])}")
            if node_status(node["grpc_address"], tls=probe_tls) is not None:
                return
            time.sleep(0.2)
        raise LauncherError(f"{node['node_id']} did not answer in time")

    def _wait_routed(self, shard: int, end: float) -> None:
        """Until every running ChatD reports exactly the recorded members of ``shard``."""
        wanted = {n["node_id"] for n in members(self.layout, shard)}
        removed = self._removed(shard)
        chatd_tls = self.chatd_tls
        pending = [c["listen"] for c in self.layout["chatd"] if self._running(c["name"])]
        while pending and time.monotonic() < end:
            still = []
            for address in pending:
                seen = chatd_routes(address, chatd_tls)
                if seen is None or seen[0].get(shard, set()) != wanted or seen[1] & removed:
                    still.append(address)
            pending = still
            if pending:
                time.sleep(0.2)
        if pending:
            raise LauncherError(f"ChatD {pending[0]} does not route to the shard's members "
                                "in time")

    def _removed(self, shard: int) -> set[str]:
        current = {n["grpc_address"] for n in members(self.layout, shard)}
        return {r["grpc_address"] for r in self.layout.get("removed", [])
                if r["shard"] == shard and r["grpc_address"] not in current}

    def _wait_caught_up(self, node: dict[str, Any], end: float) -> None:
        """Until the new member has applied what its leader had committed when it joined."""
        probe_tls = self.vault_tls
        leader = self.leader(node["shard"])
        target = None
        if leader is not None:
            st = node_status(self.node(leader)["grpc_address"], tls=probe_tls)
            target = None if st is None else st.commit_index
        while target is not None and time.monotonic() < end:
            st = node_status(node["grpc_address"], tls=probe_tls)
            if st is not None and st.last_applied >= target:
                return
            time.sleep(0.2)
        if target is not None:
            raise LauncherError(f"{node['node_id']} was added but has not caught up yet")

    # ---- creation ------------------------------------------------------------------
    def _prepare(self) -> None:
        for sub in ("config", "logs", "pids", "nodes", "fleet"):
            (self.state_dir / sub).mkdir(parents=True, exist_ok=True)
        if self._load_layout(required=False):
            if self.layout["shards"] != self.shards:
                raise LauncherError(
                    f"{self.state_dir} holds a {self.layout['shards']}-shard cluster; "
                    f"use --shards {self.layout['shards']} or another --state-dir"
                )
        else:
            self.layout = new_layout(self.shards, self.attempt_limit, self.allow_identity_ksf)
            self.layout["tls"] = self.tls
        add_ops_ports(self.layout)  # a layout from before metrics ports gets them once
        create_secrets(self.secrets_dir)
        if "fleet_public_key" not in self.layout:
            self.layout["fleet_public_key"] = init_fleet(self.state_dir)
        if self.layout.get("tls"):
            create_certs(self.state_dir / TLS_DIR, local_identities(self.layout))
        self._save_layout()
        write_configs(self.state_dir, self.layout)

    def _load_layout(self, *, required: bool = True) -> bool:
        """Read ``cluster.json``, again whenever another process (a ``bkv cluster member``
        command) has changed it since this object last read or wrote it."""
        path = self.state_dir / "cluster.json"
        stamp = _file_stamp(path)
        if self.layout and (stamp is None or stamp == self._layout_stamp):
            return True
        try:
            self.layout = json.loads(path.read_text("utf-8"))
        except FileNotFoundError:
            if required:
                raise LauncherError(
                    f"no local cluster in {self.state_dir} (run `bkv cluster up`)"
                ) from None
            return False
        except ValueError:
            raise LauncherError(f"{path} is damaged") from None
        self._layout_stamp = stamp
        self.shards = int(self.layout["shards"])
        return True

    def _save_layout(self) -> None:
        path = self.state_dir / "cluster.json"
        replace_file(path, json.dumps(self.layout, indent=2) + "\n")
        self._layout_stamp = _file_stamp(path)

    # ---- processes ---------------------------------------------------------------
    def _spawn(self, name: str) -> None:
        config = str(self.config_path(name))
        if name.startswith("chatd-"):
            argv = [sys.executable, "-m", "chatd_proxy.cli", "--config", config]
        else:
            argv = [sys.executable, "-m", "vault_node.cli", "run", "--config", config]
        with open(self.log_path(name), "ab") as log:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=child_env(), start_new_session=True, close_fds=True,
            )
        self._procs[name] = proc
        self._pid_path(name).write_text(f"{proc.pid}\n", "ascii")

    def _pid(self, name: str) -> int | None:
        """The pid of ``name`` if that process is alive and still runs our config."""
        proc = self._procs.get(name)
        if proc is not None:
            # Our own child: poll() is exact (and /proc may still show the
            # pre-exec command line right after the fork).
            if proc.poll() is None:
                return proc.pid
            del self._procs[name]  # exited; another process may have started it again
        try:
            pid = int(self._pid_path(name).read_text("ascii").strip())
        except (OSError, ValueError):
            return None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            stat = Path(f"/proc/{pid}/stat").read_text("ascii", "replace")
        except OSError:
            return None
        if str(self.config_path(name)).encode() not in cmdline:
            return None  # the pid was recycled by an unrelated process
        if stat.rpartition(")")[2].split()[:1] == ["Z"]:
            return None  # exited, waiting to be reaped
        return pid

    def _running(self, name: str) -> bool:
        return self._pid(name) is not None

    def _adopt(self, name: str) -> bool:
        """Find a live process of ours running ``name``'s config whose pid file was lost.

        Looks for our own processes whose command line has ``--config <config path>``;
        records the pid so that ``up`` starts nothing twice and ``down`` stops it.
        """
        wanted = str(self.config_path(name)).encode()
        uid = os.getuid()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                if entry.stat().st_uid != uid:
                    continue
                args = (entry / "cmdline").read_bytes().split(b"\0")
                state = (entry / "stat").read_text("ascii", "replace")
            except OSError:
                continue
            if state.rpartition(")")[2].split()[:1] == ["Z"]:
                continue
            if any(a == b"--config" and b == wanted for a, b in itertools.pairwise(args)):
                self._pid_path(name).write_text(f"{entry.name}\n", "ascii")
                return self._running(name)
        return False

    def _check_ports_free(self, name: str) -> None:
        """Refuse to start ``name`` when another process holds one of its ports."""
        entry: dict[str, Any] = next((e for e in self.layout["nodes"] + self.layout["chatd"]
                                      if name in (e.get("node_id"), e.get("name"))), {})
        for key in ("listen", "grpc_address", "raft_address"):
            address = entry.get(key)
            if isinstance(address, str) and _port_taken(address):
                raise LauncherError(
                    f"{name}: {address} is in use by another process (not the one "
                    f"recorded in {self._pid_path(name)}); stop it first")

    def _signal(self, name: str, sig: int) -> None:
        pid = self._pid(name)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def _reap(self, name: str, timeout: float) -> None:
        proc = self._procs.pop(name, None)
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout)


def _file_stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


def _check_node_id(value: str, what: str = "node id") -> None:
    if not NODE_ID_PATTERN.fullmatch(value) or value.startswith("chatd-"):
        raise LauncherError(f"{what} {value!r}: use letters, digits, '.', '_' and '-' "
                            "(at most 63, not starting with 'chatd-')")


def _port_taken(address: str) -> bool:
    host, _, port = address.rpartition(":")
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, int(port)))
        except OSError as err:
            return err.errno == errno.EADDRINUSE
    return False


def chatd_routes(address: str, tls: ClientTls | None = None
                 ) -> tuple[dict[int, set[str]], set[str]] | None:
    """What a ChatD routes to (``ChatD.ClusterStatus``): the ids of the answering nodes by
    shard, and the addresses of the silent ones; None if the ChatD does not answer."""
    with open_channel(address, tls) as channel:
        try:
            reply = services_pb2_grpc.ChatDStub(channel).ClusterStatus(
                services_pb2.ClusterStatusRequest(), timeout=5.0)
        except grpc.RpcError:
            return None
    answering: dict[int, set[str]] = {}
    for st in reply.nodes:
        answering.setdefault(st.shard, set()).add(st.node_id)
    return answering, set(reply.unreachable)


def _leader_of(views: list[NodeView], shard: int) -> str | None:
    best: tuple[int, str] | None = None
    for view in views:
        st = view.status
        is_leader = view.shard == shard and st is not None and st.role == "leader"
        if is_leader and st is not None and (best is None or st.term > best[0]):
            best = (st.term, view.node_id)
    return None if best is None else best[1]


def node_status(
    address: str, timeout: float = STATUS_TIMEOUT, *, tls: ClientTls | None = None
) -> services_pb2.NodeStatus | None:
    """``Vault.Status`` of one node, or None if it does not answer in time."""
    with open_channel(address, tls) as channel:
        try:
            reply: services_pb2.NodeStatus = services_pb2_grpc.VaultStub(channel).Status(
                services_pb2.StatusRequest(), timeout=timeout
            )
            return reply
        except grpc.RpcError:
            return None


def _ready(address: str, settings: ClientTls | None = None) -> bool:
    """ChatD's gRPC health says SERVING: it sees a leader in every shard."""
    with open_channel(address, settings) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="bkv.v1.ChatD"), timeout=5.0
            )
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)
