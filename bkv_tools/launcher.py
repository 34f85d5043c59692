"""A local multi-data-center cluster on loopback: secrets, configs, processes, health.

Per shard, 5 vault nodes spread over 3 data centers (dc1: 2, dc2: 2, dc3: 1) and
one ChatD per data center in front of every shard. Everything lives in one
state directory so a second ``up`` reuses the same ports, secrets and data:

    secrets/  (0700) master.key, transport.secret, token-signing.key (0600),
              link/<node>.key: each node's own Raft link key (0600)
    fleet/fleet.sealed   config/*.toml   nodes/<id>/   logs/<name>.log
    pids/<name>.pid      cluster.json (layout)         client.toml

Processes are detached (own session) and tracked by pid; a pid is only
signalled when ``/proc/<pid>/cmdline`` still names our config file, so a
recycled pid is never killed.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
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
    OPS_CERT_NAME,
    TLS_DIR,
    LauncherError,
    add_ops_ports,
    child_env,
    create_certs,
    create_secrets,
    free_ports,
    init_fleet,
    local_identities,
    new_layout,
    write_configs,
)
from client_sdk.config import ClientConfig

__all__ = ["DATACENTERS", "LauncherError", "LocalCluster", "NodeView", "free_ports",
           "node_status"]

STATUS_TIMEOUT = 1.0
DEFAULT_UP_TIMEOUT = 120.0
STOP_GRACE_SECONDS = 10.0


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
            if not self._running(name):
                self._spawn(name)
        self.wait_healthy(timeout)
        return ClientConfig.load(self.client_config_path)

    def down(self, grace: float = STOP_GRACE_SECONDS) -> list[str]:
        """SIGTERM every process we started, SIGKILL after ``grace``; returns names stopped."""
        if not self._load_layout(required=False):
            return []
        names = [n for n in self.process_names() if self._running(n)]
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
        if self.layout:
            return True
        path = self.state_dir / "cluster.json"
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
        self.shards = int(self.layout["shards"])
        return True

    def _save_layout(self) -> None:
        path = self.state_dir / "cluster.json"
        path.write_text(json.dumps(self.layout, indent=2) + "\n", "utf-8")

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
            return proc.pid if proc.poll() is None else None
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
