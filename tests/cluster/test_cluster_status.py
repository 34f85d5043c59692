"""`bkv cluster status` (local and by client config), metrics ports, JSON logs of processes."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from bkv_api.v1 import services_pb2
from bkv_ops.cluster_status import (
    NodeIdentity,
    build_rows,
    format_table,
    shards_without_leader,
    status_document,
)
from bkv_tools import compose_layout
from bkv_tools.launcher import LocalCluster
from bkv_tools.launcher_layout import LauncherError, add_ops_ports, new_layout
from client_sdk.config import ClientConfig

from .conftest import wait_until

BKV = str(Path(sys.executable).parent / "bkv")
SECRET_FIELD_WORDS = ("password", "token", "secret", "seed", "ke1", "ke2", "ke3")


def bkv_status(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([BKV, "cluster", "status", *args], capture_output=True, text=True,
                          timeout=60)


def status_json(*args: str) -> tuple[int, dict[str, Any]]:
    proc = bkv_status(*args, "--json")
    assert proc.stdout, proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def settled_status(*args: str, timeout: float = 30.0) -> dict[str, Any]:
    """``--json`` status once it exits 0: on a busy machine a node may miss one deadline."""
    result: list[dict[str, Any]] = []

    def healthy() -> bool:
        code, doc = status_json(*args)
        result[:] = [doc]
        return code == 0

    wait_until(healthy, timeout, f"`bkv cluster status {' '.join(args)}` to exit 0")
    return result[0]


def all_nodes(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [n for dc in doc["datacenters"] for n in dc["nodes"]]


# ---- pure parts ------------------------------------------------------------------------------


def _status(node: str, dc: str, role: str, term: int, commit: int, applied: int
            ) -> services_pb2.NodeStatus:
    return services_pb2.NodeStatus(node_id=node, datacenter=dc, shard=0, role=role, term=term,
                                   commit_index=commit, last_applied=applied, healthy=True)


def test_rows_compute_lag_from_the_leader_and_name_silent_nodes() -> None:
    rows = build_rows(
        [("a:1", _status("n1", "dc1", "leader", 3, 10, 9)),
         ("a:2", _status("n2", "dc2", "follower", 3, 8, 7)),
         ("a:3", _status("n3", "dc2", "leader", 2, 12, 12)),  # a stale leader of term 2
         ("a:4", None)],
        known={"a:4": NodeIdentity("n4", "dc3", 0)},
    )
    by_id = {r.node_id: r for r in rows}
    assert by_id["n1"].leader and not by_id["n3"].leader
    assert (by_id["n1"].lag, by_id["n2"].lag, by_id["n3"].lag) == (1, 3, 0)
    assert not by_id["n4"].reachable and by_id["n4"].datacenter == "dc3"
    table = format_table(rows)
    assert [line for line in table.splitlines() if line.endswith(":")] == ["dc1:", "dc2:",
                                                                          "dc3:"]
    assert "lag" in table.splitlines()[0]
    assert shards_without_leader(rows) == []


def test_no_leader_means_unknown_lag() -> None:
    rows = build_rows([("a:1", _status("n1", "dc1", "follower", 3, 10, 9)), ("a:2", None)])
    assert rows[0].lag is None and shards_without_leader(rows) == [0]
    doc = status_document(rows)
    assert doc["leaders"] == {} and doc["unreachable"] == ["a:2"]
    assert " ? " in format_table(rows)


def test_old_layouts_get_ops_ports_once() -> None:
    layout = new_layout(1, 10, False)
    ports = {v for e in layout["nodes"] + layout["chatd"] for k, v in e.items()
             if k.endswith(("_address", "listen"))}
    assert len(ports) == 5 * 3 + 3 * 3  # grpc, raft, metrics per node; listen, metrics, status
    for entry in layout["nodes"] + layout["chatd"]:
        entry.pop("metrics_address")
        entry.pop("status_address", None)
    assert add_ops_ports(layout)
    again = json.loads(json.dumps(layout))
    assert not add_ops_ports(again) and again == layout
    assert all("status_address" in c for c in layout["chatd"])


# ---- a real cluster -------------------------------------------------------------------------


@pytest.mark.cluster
def test_local_status_shows_every_node_lag_and_ops_ports(cluster: LocalCluster) -> None:
    doc = settled_status("--state-dir", str(cluster.state_dir))
    nodes = all_nodes(doc)
    assert sorted(n["node_id"] for n in nodes) == sorted(cluster.nodes())
    assert [n["node_id"] for n in nodes if n["leader"]] == [cluster.leader(0)]
    assert all(isinstance(n["lag"], int) and n["lag"] >= 0 for n in nodes)
    assert all(n["extra"]["metrics"].startswith("127.0.0.1:") for n in nodes)
    assert {dc["name"] for dc in doc["datacenters"]} == {"dc1", "dc2", "dc3"}
    assert all(c["status_page"].startswith("http://127.0.0.1:") for c in doc["chatd"])
    text = bkv_status("--state-dir", str(cluster.state_dir))
    assert text.returncode in (0, 10), text.stderr
    assert "lag" in text.stdout.splitlines()[0] and "status page http://" in text.stdout


@pytest.mark.cluster
def test_metrics_ports_answer(cluster: LocalCluster) -> None:
    node = cluster.node(cluster.nodes()[0])
    chatd = cluster.layout["chatd"][0]
    for address, name in ((node["metrics_address"], "bkv_raft_"),
                          (chatd["metrics_address"], "bkv_chatd_")):
        with urllib.request.urlopen(f"http://{address}/metrics", timeout=5.0) as response:
            assert name in response.read().decode("utf-8")


@pytest.mark.cluster
def test_status_through_a_client_config(cluster: LocalCluster) -> None:
    doc = settled_status("--config", str(cluster.client_config_path))
    assert sorted(n["node_id"] for n in all_nodes(doc)) == sorted(cluster.nodes())
    assert len(doc["leaders"]) == 1 and doc["unreachable"] == []
    text = bkv_status("--config", str(cluster.client_config_path))
    assert text.returncode in (0, 10) and "dc1:" in text.stdout


@pytest.mark.cluster
def test_no_chatd_answering_is_an_error(tmp_path: Path, cluster: LocalCluster) -> None:
    config = tmp_path / "client.toml"
    text = cluster.client_config_path.read_text()
    for chatd in cluster.layout["chatd"]:
        text = text.replace(chatd["listen"], "127.0.0.1:1")
    config.write_text(text)
    proc = bkv_status("--config", str(config))
    assert proc.returncode == 8 and "no ChatD answered" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.cluster
def test_compose_status_helpers_ask_every_chatd(cluster: LocalCluster) -> None:
    """``compose_layout.wait_ready`` / ``cluster_status`` against real ChatDs."""
    config = ClientConfig.load(cluster.client_config_path)
    reply = compose_layout.wait_ready(config, 30.0)
    assert sorted(n.node_id for n in reply.nodes) == sorted(cluster.nodes())
    assert any(n.role == "leader" for n in reply.nodes)
    assert compose_layout.cluster_status(config) is not None
    silent = dataclasses.replace(config, chatd=["127.0.0.1:1"])
    assert compose_layout.cluster_status(silent, timeout=1.0) is None
    with pytest.raises(LauncherError, match="a ChatD does not answer"):
        compose_layout.wait_ready(dataclasses.replace(config, chatd=[*config.chatd,
                                                                     "127.0.0.1:1"]), 2.0)


@pytest.mark.cluster
def test_every_log_line_is_json_with_identity(cluster: LocalCluster) -> None:
    logs = sorted((cluster.state_dir / "logs").glob("*.log"))
    assert {p.stem for p in logs} == set(cluster.process_names())
    for path in logs:
        lines = path.read_text("utf-8").splitlines()
        assert lines, f"{path.name} is empty"
        for line in lines:
            entry = json.loads(line)  # fails the test on any non-JSON line
            assert {"ts", "level", "logger", "msg", "service", "node"} <= set(entry), line
            assert entry["node"] == path.stem
            datetime.fromisoformat(entry["ts"].replace("Z", "+00:00"))
            assert not [k for k in entry if any(w in k.lower() for w in SECRET_FIELD_WORDS)]


@pytest.mark.cluster
def test_a_stopped_node_is_listed_unreachable(cluster: LocalCluster) -> None:
    leader = cluster.leader(0)
    victim = next(n for n in cluster.nodes(0) if n != leader)
    cluster.kill_node(victim)
    try:
        code, doc = status_json("--state-dir", str(cluster.state_dir))
        assert code == 10, doc  # degraded: still a leader, one node silent
        assert victim in doc["unreachable"]
        row = next(n for n in all_nodes(doc) if n["node_id"] == victim)
        assert row["health"] == "unreachable" and row["lag"] is None
        text = bkv_status("--state-dir", str(cluster.state_dir)).stdout
        assert any(line.startswith(victim) and "unreachable" in line
                   for line in text.splitlines())
        code, doc = status_json("--config", str(cluster.client_config_path))
        assert code == 10 and cluster.node(victim)["grpc_address"] in doc["unreachable"]
    finally:
        cluster.restart_node(victim)
        settled_status("--state-dir", str(cluster.state_dir), timeout=60)
