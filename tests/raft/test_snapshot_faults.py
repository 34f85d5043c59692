"""Snapshots under faults, on real replica processes: a node killed while it takes a
snapshot, a member killed while it receives one, a leader killed while it sends one.

Each situation is made to happen with the harness's gates (``--gate``): the
snapshot waits at a known point until the test opens the gate, so the kill
lands exactly there. Afterwards every node converges to one digest and every
acknowledged deposit is on every node.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.raft.conftest import Cluster, NodeProcess


def _until(check: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _puts(node: NodeProcess, count: int) -> list[str]:
    acked = node.call(op="puts", count=count, timeout=120)["acknowledged"]
    assert len(acked) == count  # one stable leader: every deposit is acknowledged
    return list(acked)


def _all_present(c: Cluster, accounts: list[str]) -> None:
    for node in c.nodes:
        missing = [a for a in accounts if node.call(op="entry", account=a)["entry"] is None]
        assert not missing, f"{node.node_id} lost {len(missing)} acknowledged deposits"


def _wipe(node: NodeProcess) -> None:
    for item in node.data_dir.iterdir():
        item.unlink()


def test_a_node_killed_while_taking_a_snapshot_loses_nothing(
        raft_cluster: Callable[..., Any], tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    gate.mkdir()
    c = raft_cluster(3, extra=["--gate", str(gate), "--snapshot-min-entries", "100000"])
    c.start()
    leader = c.leader()
    acked = _puts(leader, 300)
    leader.call(op="snapshot")
    _until(lambda: leader.status()["snapshot_busy"], "the snapshot to start")
    # the snapshot waits at the gate: commits go on meanwhile
    acked += _puts(leader, 50)
    assert leader.status()["snapshots_written"] == 0
    leader.kill()
    survivor = c.leader(among=c.alive())
    acked += _puts(survivor, 50)
    leader.start()
    c.wait_converged(c.nodes, timeout=30)
    _all_present(c, acked)
    # now let it finish one, and restart from the snapshot and the state database
    (gate / "create").touch()
    leader.call(op="snapshot")
    _until(lambda: leader.status()["snapshots_written"] >= 1, "the snapshot to finish")
    _until(lambda: not leader.status()["snapshot_busy"], "the compaction")
    leader.kill()
    leader.start()
    digest = c.wait_converged(c.nodes, timeout=30)
    assert leader.status()["log_entries"] < 100  # it replays only the tail
    _all_present(c, acked)
    assert len({n.status()["digest"] for n in c.nodes}) == 1 == len({digest})


def test_members_killed_during_a_snapshot_transfer_converge(
        raft_cluster: Callable[..., Any], tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    gate.mkdir()
    (gate / "create").touch()
    c = raft_cluster(3, extra=["--gate", str(gate), "--snapshot-chunk-bytes", "4096"])
    c.start()
    leader = c.leader()
    lagging = next(n for n in c.nodes if n is not leader)
    lagging.kill()
    _wipe(lagging)
    acked = _puts(leader, 300)
    for node in c.alive():  # whoever leads next also sends a snapshot, not its log
        node.call(op="snapshot")
    _until(lambda: all(n.status()["snapshots_written"] >= 1 and n.status()["log_entries"] < 50
                       for n in c.alive()), "compaction on the live nodes")

    # 1. the receiving member is killed halfway through the transfer
    lagging.start()
    _until(lambda: lagging.status()["chunks_received"] >= 1, "the transfer to start")
    assert lagging.status()["accounts"] == 0  # a partial transfer installs nothing
    lagging.kill()
    lagging.start()
    _until(lambda: lagging.status()["chunks_received"] >= 1, "the transfer to start again")
    assert lagging.status()["accounts"] == 0

    # 2. the sending leader is killed halfway through the transfer
    leader.kill()
    (gate / "send").touch()
    survivor = c.leader(among=c.alive())
    acked += _puts(survivor, 20)
    c.wait_converged(c.alive(), timeout=60)
    leader.start()
    c.wait_converged(c.nodes, timeout=60)
    _all_present(c, acked)
    assert lagging.status()["snapshots_loaded"] >= 1
