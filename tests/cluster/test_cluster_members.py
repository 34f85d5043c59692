"""`bkv cluster member add|remove` on a real local cluster: the Raft group, the layout
(`cluster status`), every config and ChatD's routing agree after each change, and
`cluster up|down` start and stop exactly the recorded members."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bkv_protocol.ksf import IDENTITY_KSF
from bkv_tools.launcher import LocalCluster, chatd_routes
from client_sdk.config import ClientConfig
from client_sdk.vault_client import VaultClient

from .conftest import running_cluster, wait_until

pytestmark = pytest.mark.cluster
BKV = str(Path(sys.executable).parent / "bkv")
ADDED = "s0-dc3-n2"
KEY = bytes(range(32))
PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with running_cluster("bkv-members-test-", tls=True) as c:
        yield c


def bkv(cluster: LocalCluster, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BKV_")}
    return subprocess.run([BKV, "cluster", *args, "--state-dir", str(cluster.state_dir)],
                          capture_output=True, text=True, timeout=180, env=env)


def status_doc(cluster: LocalCluster) -> dict[str, Any]:
    """`bkv cluster status --json` once it exits 0 (a node may miss one probe when busy)."""
    found: list[dict[str, Any]] = []

    def healthy() -> bool:
        proc = bkv(cluster, "status", "--json")
        found[:] = [json.loads(proc.stdout)] if proc.stdout else []
        return proc.returncode == 0

    wait_until(healthy, 60, "`bkv cluster status` to exit 0")
    return found[0]


def status_ids(doc: dict[str, Any]) -> set[str]:
    return {n["node_id"] for dc in doc["datacenters"] for n in dc["nodes"]}


def processes_with_config(path: Path) -> list[int]:
    """Live processes whose command line runs ``--config path``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rpartition(")")[2].split()[0]
        except (OSError, IndexError):
            continue
        if state != "Z" and str(path).encode() in args:
            pids.append(int(entry.name))
    return pids


def pids(cluster: LocalCluster) -> dict[str, int]:
    found = {}
    for name in cluster.process_names():
        running = processes_with_config(cluster.config_path(name))
        assert len(running) == 1, f"{name}: {running}"
        found[name] = running[0]
    return found


def assert_everyone_agrees(cluster: LocalCluster) -> None:
    """Raft group == layout == `cluster status` == each ChatD's routes == configs."""
    layout_ids = set(cluster.nodes(0))
    assert {m.node_id for m in cluster.raft_members(0)} == layout_ids
    assert status_ids(status_doc(cluster)) == layout_ids
    addresses = {cluster.node(n)["grpc_address"] for n in layout_ids}
    for name in cluster.process_names():
        config = tomllib.loads(cluster.config_path(name).read_text())
        if name.startswith("chatd-"):
            assert set(config["shards"][0]["nodes"]) == addresses, name
        else:
            assert {p["node_id"] for p in config["peers"]} == layout_ids, name

    def routed() -> bool:
        for address in cluster.chatd_addresses():
            seen = chatd_routes(address, cluster.chatd_tls)
            if seen is None or seen[0].get(0) != layout_ids or seen[1]:
                return False
        return True

    wait_until(routed, 30, "every ChatD to route to exactly the members")


def register_and_recover(cluster: LocalCluster, account: str) -> None:
    config = ClientConfig.load(cluster.client_config_path)
    with VaultClient(config, ksf=IDENTITY_KSF) as vault:
        vault.register(account, KEY, PASSWORD)
        assert vault.recover(account, PASSWORD) == KEY


def _leader_and_term(cluster: LocalCluster) -> tuple[str, int]:
    views = [v for v in cluster.status() if v.status is not None and v.status.role == "leader"]
    assert len(views) == 1, [v.node_id for v in views]
    assert views[0].status is not None
    return views[0].node_id, int(views[0].status.term)


def test_add_a_member(cluster: LocalCluster) -> None:
    register_and_recover(cluster, "before-add")
    before = _leader_and_term(cluster)
    proc = bkv(cluster, "member", "add", ADDED)
    assert proc.returncode == 0, proc.stderr
    # the new node never campaigned: the same leader leads the same term
    assert _leader_and_term(cluster) == before
    assert ADDED in cluster.nodes(0)
    node = cluster.node(ADDED)
    assert node["datacenter"] == "dc3" and "pending" not in node
    assert (cluster.state_dir / "tls" / ADDED / "cert.pem").exists()  # its own certificate
    assert_everyone_agrees(cluster)
    register_and_recover(cluster, "after-add")
    doc = status_doc(cluster)  # exit 0: no two members differ at one applied index
    assert doc["diverged"] == []
    rows = [n for dc in doc["datacenters"] for n in dc["nodes"]]
    assert all(len(r["digest"]) == 64 and r["role"] in ("leader", "follower") for r in rows)
    listed = bkv(cluster, "member", "list", "--json")
    assert listed.returncode == 0 and json.loads(listed.stdout)["agree"], listed.stdout


def test_up_after_add_restarts_nothing_and_rewrites_no_config(cluster: LocalCluster) -> None:
    before = pids(cluster)
    written = {n: cluster.config_path(n).stat().st_mtime_ns for n in before}
    chatd = cluster.process_names()[-1]
    cluster._pid_path(chatd).unlink()  # a lost pid file must not start a second ChatD
    again = LocalCluster(cluster.state_dir, tls=True)
    again.up(timeout=120)
    assert pids(cluster) == before
    assert {n: cluster.config_path(n).stat().st_mtime_ns for n in before} == written
    assert ADDED in again.process_names()


def test_remove_the_leader(cluster: LocalCluster) -> None:
    leader = cluster.leader(0)
    assert leader is not None
    data_dir = cluster.state_dir / "nodes" / leader
    proc = bkv(cluster, "member", "remove", leader)
    assert proc.returncode == 0, proc.stderr
    assert leader not in cluster.nodes(0)
    assert not processes_with_config(cluster.config_path(leader))
    assert not data_dir.exists()
    assert list(data_dir.parent.glob(f"{leader}.removed-*"))  # kept aside, not deleted
    assert_everyone_agrees(cluster)
    assert leader not in status_ids(status_doc(cluster))
    register_and_recover(cluster, "after-remove")
    TestState.removed = leader


class TestState:
    removed = ""


def test_up_after_remove_does_not_start_the_removed_member(cluster: LocalCluster) -> None:
    before = pids(cluster)
    again = LocalCluster(cluster.state_dir, tls=True)
    again.up(timeout=120)
    assert pids(cluster) == before
    assert TestState.removed and TestState.removed not in again.process_names()
    proc = bkv(cluster, "status")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert TestState.removed not in proc.stdout and ADDED in proc.stdout
    assert "digest" in proc.stdout.splitlines()[0]


def test_down_stops_the_added_member(cluster: LocalCluster) -> None:
    proc = bkv(cluster, "down")
    assert proc.returncode == 0, proc.stderr
    for name in cluster.process_names():
        assert not processes_with_config(cluster.config_path(name)), name
    again = LocalCluster(cluster.state_dir, tls=True)
    again.up(timeout=150)  # the recorded members come back on their data
    assert_everyone_agrees(cluster)
    register_and_recover(cluster, "after-restart")
