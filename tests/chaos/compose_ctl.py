"""Drive one docker compose deployment of the vault for the chaos suite.

A deployment gets its own compose project name, so it never touches another
run's containers, networks or volumes. Node gRPC ports are not published: the
suite sees the cluster only as a device would, through the ChatDs published on
127.0.0.1, plus the container engine for faults. Every call to ``docker`` or
``docker-compose`` has a timeout; every wait loop is bounded in time and count.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from bkv_api.v1 import services_pb2
from bkv_tools import compose_layout
from bkv_tools.launcher_layout import LauncherError, node_link_key, update_config_key
from client_sdk.config import ClientConfig

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "deploy" / "docker-compose.yml"
BASE_IMAGE = "bkv-base:bookworm"
IMAGE = "bkv:local"
DOCKER_TIMEOUT = 60.0
POLL_SECONDS = 0.25
MAX_POLLS = 10_000  # hard cap on any wait loop, beside its deadline
STATUS_TIMEOUT = 2.0
NODE_CONFIG = "/etc/bkv/node.toml"  # a vault node's config, inside its container
DATA_MOUNT = "/var/lib/bkv"  # a vault node's volume, inside its container
ADMIN_TIMEOUT = 30.0  # `bkv-vault-node member|snapshot ... --timeout`


class ComposeError(Exception):
    """A docker / docker-compose command failed or a bounded wait ran out."""


def run(argv: list[str], *, timeout: float = DOCKER_TIMEOUT,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run one engine command; ComposeError (with its stderr tail) when it fails."""
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              check=False, cwd=ROOT)
    except subprocess.TimeoutExpired:
        raise ComposeError(f"{' '.join(argv[:4])} ... timed out after {timeout:g}s") from None
    if check and proc.returncode != 0:
        raise ComposeError(f"{' '.join(argv[:4])} ... exited {proc.returncode}: "
                           f"{proc.stderr.strip()[-800:]}")
    return proc


def engine_ready() -> bool:
    """Whether the docker and docker-compose clients exist and an engine answers."""
    if shutil.which("docker") is None or shutil.which("docker-compose") is None:
        return False
    try:
        return run(["docker", "version"], timeout=30, check=False).returncode == 0
    except ComposeError:
        return False


def build_image(timeout: float = 900.0) -> float:
    """Build ``bkv:local`` offline from the cached base image and wheelhouse; seconds taken."""
    start = time.monotonic()
    run(["bash", "scripts/docker-setup.sh", "base", "wheelhouse"], timeout=timeout)
    run(["docker", "build", "-q", "--network", "none", "-f", "deploy/Dockerfile", "-t", IMAGE,
         "--build-arg", f"BASE_IMAGE={BASE_IMAGE}", "--build-arg", "WHEELHOUSE=1", "."],
        timeout=timeout)
    return time.monotonic() - start


def datacenters() -> list[str]:
    """The data centers of the layout, in order (dc1, dc2, dc3)."""
    return list(dict.fromkeys(dc for _, dc in compose_layout.node_names()))


def nodes_in(dc: str) -> list[str]:
    """The vault node services of one data center."""
    return [name for name, d in compose_layout.node_names() if d == dc]


def all_nodes() -> list[str]:
    """Every vault node service."""
    return [name for name, _ in compose_layout.node_names()]


def chatd_of(dc: str) -> str:
    """The ChatD service of one data center."""
    return f"chatd-{dc}"


def datacenter_of(node: str) -> str:
    """The data center a vault node service lives in."""
    return dict(compose_layout.node_names())[node]


def _node_id(name_or_address: str) -> str:
    """ChatD names unreachable nodes by address (``dc1-n1:7100``): the host is the service."""
    return name_or_address.rsplit(":", 1)[0]


@dataclass
class ComposeCluster:
    """One compose project: its state folder, client config and container ids."""

    state: Path
    project: str
    client: ClientConfig
    _ids: dict[str, str] = field(default_factory=dict)
    _wan_ips: dict[str, str] = field(default_factory=dict)  # of the disconnected containers
    removed: dict[str, str] = field(default_factory=dict)  # members taken out: node -> DC
    divergence: str = ""  # the last view `converged` saw that did not agree

    @classmethod
    def prepare(cls, state: Path, *, attempt_limit: int) -> ComposeCluster:
        """Secrets, fleet and configs (identity KSF allowed: a test deployment) in ``state``."""
        client = compose_layout.prepare(state, attempt_limit=attempt_limit,
                                        allow_identity_ksf=True)
        project = f"bkvchaos{os.getpid()}x{int(time.time()) % 100_000}"
        return cls(state=state, project=project, client=client)

    @property
    def compose(self) -> list[str]:
        """The docker-compose command prefix of this project."""
        return ["docker-compose", "-p", self.project, "-f", str(COMPOSE_FILE),
                "--env-file", str(self.state / "compose.env")]

    def up(self, timeout: float = 300.0) -> None:
        """Create and start every container (no build: the image must exist)."""
        run([*self.compose, "up", "-d", "--no-build"], timeout=timeout)
        self._ids.clear()

    def down(self, timeout: float = 300.0) -> None:
        """Remove the containers, networks and volumes of this project; never raises."""
        with contextlib.suppress(ComposeError):
            for cid in self._ids.values():  # a paused container blocks `down`
                run(["docker", "unpause", cid], timeout=30, check=False)
        with contextlib.suppress(ComposeError):
            run([*self.compose, "down", "-v", "--timeout", "5"], timeout=timeout, check=False)

    def container(self, service: str) -> str:
        """The container id of one service (cached: ids survive stop/start/restart)."""
        if service not in self._ids:
            cid = run([*self.compose, "ps", "-q", service]).stdout.strip()
            if not cid:
                raise ComposeError(f"no container for {service}")
            self._ids[service] = cid
        return self._ids[service]

    def chatd_client(self, index: int) -> ClientConfig:
        """A client config that talks to one ChatD only."""
        return dataclasses.replace(self.client, chatd=[self.client.chatd[index]])

    # ---- what the cluster says about itself, through the ChatDs ----

    def statuses(self, timeout: float = STATUS_TIMEOUT) -> dict[str, services_pb2.NodeStatus]:
        """Every node that answers any ChatD, by node id (first ChatD's answer wins)."""
        seen: dict[str, services_pb2.NodeStatus] = {}
        for i in range(len(self.client.chatd)):
            reply = compose_layout.cluster_status(self.chatd_client(i), timeout)
            if reply is None:
                continue
            for node in reply.nodes:
                seen.setdefault(node.node_id, node)
            if len(seen) == len(all_nodes()):
                break
        return seen

    def leader(self, timeout: float = STATUS_TIMEOUT) -> str | None:
        """The leader of the highest term that the first ChatD naming one reports, if any.

        One ChatD's view suffices (and is quicker while a node hangs); a deposed leader
        cut off with its data center reports a lower term than the new one."""
        for i in range(len(self.client.chatd)):
            reply = compose_layout.cluster_status(self.chatd_client(i), timeout)
            leaders = [] if reply is None else [n for n in reply.nodes if n.role == "leader"]
            if leaders:
                return str(max(leaders, key=lambda n: n.term).node_id)
        return None

    def wait_leader(self, timeout: float) -> str | None:
        """Poll until some node is leader; None when ``timeout`` passes."""
        end = time.monotonic() + timeout
        for _ in range(MAX_POLLS):
            found = self.leader()
            if found is not None or time.monotonic() >= end:
                return found
            time.sleep(POLL_SECONDS)
        return None

    def wait_all_nodes(self, timeout: float) -> bool:
        """Poll until every node answers and exactly one says leader."""
        end = time.monotonic() + timeout
        for _ in range(MAX_POLLS):
            seen = self.statuses()
            if len(seen) == len(all_nodes()) and sum(
                    s.role == "leader" for s in seen.values()) == 1:
                return True
            if time.monotonic() >= end:
                return False
            time.sleep(POLL_SECONDS)
        return False

    def converged(self, timeout: float) -> dict[str, services_pb2.NodeStatus]:
        """Once healed: wait until all nodes report one commit index, applied it and agree on
        the state digest; returns the last statuses seen (the caller compares digests)."""
        end = time.monotonic() + timeout
        seen: dict[str, services_pb2.NodeStatus] = {}
        for _ in range(MAX_POLLS):
            seen = self.statuses()
            if len(seen) == len(all_nodes()):
                commits = {s.commit_index for s in seen.values()}
                applied = {s.last_applied for s in seen.values()}
                digests = {s.state_digest for s in seen.values()}
                if len(commits) == 1 and applied == commits and len(digests) == 1:
                    return seen
            self.divergence = " ".join(f"{n}:{s.role[:1]}{s.term}/{s.commit_index}/"
                                       f"{s.last_applied}/{s.state_digest.hex()[:6]}"
                                       for n, s in sorted(seen.items()))
            if time.monotonic() >= end:
                return seen
            time.sleep(1.0)
        return seen

    # ---- faults (each one engine command, bounded) ----

    def kill(self, service: str) -> None:
        """SIGKILL the service's main process (the container stops at once)."""
        run(["docker", "kill", "-s", "KILL", self.container(service)])

    def start(self, services: list[str]) -> None:
        """Start stopped containers; a no-op for running ones (the engine may have
        restarted a killed one already)."""
        run(["docker", "start", *[self.container(s) for s in services]], timeout=120)

    def stop(self, services: list[str], grace: int = 2) -> None:
        """Stop containers (SIGTERM, then SIGKILL after ``grace`` seconds)."""
        run(["docker", "stop", "-t", str(grace), *[self.container(s) for s in services]],
            timeout=120)

    def pause(self, service: str) -> None:
        """Freeze every process of a container (cgroup freezer): a node that stops in time.

        Under load the freezer can give up ("unable to freeze"): tried twice."""
        try:
            run(["docker", "pause", self.container(service)])
        except ComposeError:
            time.sleep(0.2)
            run(["docker", "pause", self.container(service)])

    def unpause(self, service: str) -> None:
        """Thaw a paused container."""
        run(["docker", "unpause", self.container(service)])

    def restart(self, services: list[str], grace: int = 2) -> None:
        """Restart containers all at once (one engine call each, in parallel)."""
        ids = [self.container(s) for s in services]
        with ThreadPoolExecutor(max_workers=len(ids)) as pool:
            list(pool.map(lambda cid: run(["docker", "restart", "-t", str(grace), cid],
                                          timeout=120), ids))

    @property
    def wan(self) -> str:
        """The engine's name of the inter-data-center network of this project."""
        return f"{self.project}_wan"

    def wan_ip(self, service: str) -> str:
        """The container's address on ``wan`` ("" when it is not attached)."""
        fmt = "{{range $k, $v := .NetworkSettings.Networks}}{{$k}}={{$v.IPAddress}} {{end}}"
        out = run(["docker", "inspect", "-f", fmt, self.container(service)]).stdout.split()
        return next((kv.split("=", 1)[1] for kv in out if kv.startswith(self.wan + "=")), "")

    def disconnect_wan(self, services: list[str]) -> None:
        """Cut containers off the ``wan`` network: their data center is partitioned off.

        Their addresses are remembered: peers cache name lookups (pysyncobj keeps a
        resolved address for minutes), so a node must come back at the same address,
        or a peer would talk to another node under this one's name."""
        for s in services:
            self._wan_ips.setdefault(s, self.wan_ip(s))
            run(["docker", "network", "disconnect", "-f", self.wan, self.container(s)])

    def connect_wan(self, services: list[str]) -> None:
        """Reattach containers to ``wan`` under their service name, each at its old address.

        The engine hands out the lowest free address, so reattaching in ascending order
        of the old addresses restores them; checked, and retried a bounded number of times.
        """
        todo = sorted((s for s in services if s in self._wan_ips),
                      key=lambda s: tuple(int(x) for x in self._wan_ips[s].split(".")))
        for _ in range(3):
            for s in todo:
                run(["docker", "network", "connect", "--alias", s, self.wan, self.container(s)])
            wrong = [s for s in todo if self.wan_ip(s) != self._wan_ips[s]]
            if not wrong:
                break
            for s in todo:
                run(["docker", "network", "disconnect", "-f", self.wan, self.container(s)])
        else:
            raise ComposeError(f"could not restore the wan addresses of {', '.join(todo)}")
        for s in todo:
            del self._wan_ips[s]

    # ---- membership: Raft group changes through a member's own admin credentials ----

    def admin(self, via: str, args: list[str]) -> str:
        """``bkv-vault-node ARGS`` inside member ``via``'s container (as the service user,
        with its node.toml: the transport secret and its link key); returns stdout."""
        return run(["docker", "exec", "-u", "bkv", self.container(via), "bkv-vault-node",
                    *args, "--config", NODE_CONFIG, "--timeout", f"{ADMIN_TIMEOUT:g}"],
                   timeout=ADMIN_TIMEOUT + 30).stdout

    def raft_members(self, via: str) -> dict[str, dict[str, str]]:
        """The Raft group as its leader lists it (asked through ``via``): node -> member."""
        out = self.admin(via, ["member", "list", "--json"])
        try:
            return {m["node_id"]: m for m in json.loads(out)["members"]}
        except (ValueError, KeyError, TypeError):
            raise ComposeError(f"unexpected `member list` output: {out[:200]!r}") from None

    def record(self, action: str, node: str, datacenter: str = "") -> None:
        """Record a membership change in the layout (configs rewritten from it)."""
        try:
            compose_layout.record_member(self.state, action, node, datacenter)
        except LauncherError as err:
            raise ComposeError(f"layout: {err}") from None

    def hup_chatds(self) -> None:
        """Make every ChatD re-read its node list (its config is rewritten by the layout)."""
        for name, _ in compose_layout.chatd_names():
            run(["docker", "kill", "-s", "HUP", self.container(name)])

    def member_remove(self, node: str, via: str, timeout: float) -> None:
        """Take ``node`` out of the Raft group, then record it and re-route the ChatDs.

        ``member remove`` returns once the removal is committed; the leader's member
        list is then polled (bounded) until it no longer names the node."""
        self.admin(via, ["member", "remove", "--node-id", node, "--json"])
        self.removed[node] = datacenter_of(node)
        end = time.monotonic() + timeout
        for _ in range(MAX_POLLS):
            if node not in self.raft_members(via):
                break
            if time.monotonic() >= end:
                raise ComposeError(f"{node} still a member {timeout:g}s after its removal")
            time.sleep(POLL_SECONDS)
        self.record("remove", node)
        self.hup_chatds()

    def wipe_data(self, node: str, grace: int = 2) -> None:
        """Stop a node's container and empty its data directory (the container stays)."""
        self.stop([node], grace=grace)
        fmt = ('{{range .Mounts}}{{if eq .Destination "' + DATA_MOUNT + '"}}{{.Name}}'
               '{{end}}{{end}}')
        volume = run(["docker", "inspect", "-f", fmt, self.container(node)]).stdout.strip()
        if not volume:
            raise ComposeError(f"{node} has no data volume")
        run(["docker", "run", "--rm", "--network", "none", "--entrypoint", "sh",
             "-v", f"{volume}:{DATA_MOUNT}", IMAGE, "-c",
             # the software HSM's mark (``high-water``) stays: an empty node may start
             f"rm -rf {DATA_MOUNT}/data && test ! -e {DATA_MOUNT}/data"])

    def member_add(self, node: str, via: str, timeout: float) -> services_pb2.NodeStatus:
        """Bring a removed node back as a new member on an empty data volume.

        Gives it a new link key (the old one was revoked with the removal), records
        it, starts it with ``join = true`` (it never campaigns before it is a member),
        asks the leader to add it, re-routes the ChatDs and waits (bounded) until it
        has applied what the leader had committed when it was added; returns its
        status (``snapshots_loaded`` says whether it caught up from a snapshot)."""
        datacenter = self.removed[node]
        (self.state / "secrets" / "link" / f"{node}.key").unlink(missing_ok=True)
        self.record("add", node, datacenter)
        try:
            update_config_key(self.state / "config" / f"{node}.toml", "join", True)
        except LauncherError as err:
            raise ComposeError(str(err)) from None
        public_key = node_link_key(self.state / "secrets", node)[1]
        self.start([node])
        self.admin(via, ["member", "add", "--node-id", node, "--datacenter", datacenter,
                         "--raft-address", f"{node}:{compose_layout.RAFT_PORT}",
                         "--grpc-address", f"{node}:{compose_layout.GRPC_PORT}",
                         "--link-public-key", public_key, "--json"])
        del self.removed[node]
        self.hup_chatds()
        end = time.monotonic() + timeout
        target: int | None = None
        for _ in range(MAX_POLLS):
            seen = self.statuses()
            leaders = [s for s in seen.values() if s.role == "leader"]
            if target is None and leaders:
                target = int(max(leaders, key=lambda s: s.term).commit_index)
            mine = seen.get(node)
            if target is not None and mine is not None and mine.last_applied >= target:
                return mine
            if time.monotonic() >= end:
                raise ComposeError(f"{node} added but not caught up in {timeout:g}s")
            time.sleep(POLL_SECONDS)
        raise ComposeError(f"{node} added but not caught up")

    def heal(self, timeout: float = 180.0) -> None:
        """Undo every fault: unpause, reconnect to wan, start everything, and add back any
        member a fault took out of the Raft group."""
        services = all_nodes() + [n for n, _ in compose_layout.chatd_names()]
        for s in services:
            state = run(["docker", "inspect", "-f", "{{.State.Status}}", self.container(s)],
                        check=False).stdout.strip()
            if state == "paused":
                self.unpause(s)
        self.connect_wan(list(self._wan_ips))
        out = set(self.removed)
        self.start([s for s in services if s not in out])
        for node in list(out):
            via = self.wait_leader(timeout) or next(n for n in all_nodes() if n not in out)
            if node in self.raft_members(via):  # the removal never committed: a member still
                del self.removed[node]
                if node not in dict(compose_layout.node_names(self.state)):
                    self.record("add", node, datacenter_of(node))
                self.start([node])
                self.hup_chatds()
            else:
                self.member_add(node, via, timeout)
        if not self.wait_all_nodes(timeout):
            raise ComposeError(f"cluster not whole {timeout:g}s after healing")

    def logs_tail(self, lines: int = 40) -> str:
        """The last lines of every container's log, for a failure report."""
        return run([*self.compose, "logs", "--no-color", "--tail", str(lines)], timeout=120,
                   check=False).stdout


def node_from_address(address: str) -> str:
    """Node id from a ChatD ``unreachable`` entry."""
    return _node_id(address)
