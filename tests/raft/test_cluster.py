"""Real multi-process Raft clusters on loopback: replication, crashes, restarts, snapshots."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from typing import Any

import pytest

pytestmark = pytest.mark.cluster


def _put(account: bytes, record: bytes, limit: int = 10) -> dict[str, Any]:
    return {"op": "put", "account": account.hex(), "record": record.hex(),
            "sealed": os.urandom(48).hex(), "limit": limit}


def _begin(account: bytes) -> dict[str, Any]:
    return {"op": "begin", "account": account.hex()}


def _no_truncation(cluster: Any) -> None:
    for n in cluster.alive():
        assert n.status()["truncation_warnings"] == 0
        log = (n.data_dir.parent / f"{n.node_id}.log").read_text()
        assert "truncat" not in log, log


def test_three_nodes_commit_and_apply_everywhere(raft_cluster: Callable[..., Any]) -> None:
    c = raft_cluster(3)
    c.start()
    leader = c.leader()
    follower = next(n for n in c.nodes if n is not leader)
    deadline = time.monotonic() + 10
    while follower.status()["leader"] != leader.address and time.monotonic() < deadline:
        time.sleep(0.05)
    account, record = os.urandom(32), os.urandom(16)
    reply = follower.call(op="submit", command=_put(account, record))
    assert reply["error"] == "not_leader" and reply["leader"] == leader.address
    assert c.submit(_put(account, record, limit=2))["outcome"] == "ok"
    assert [c.submit(_begin(account))["attempts"] for _ in range(2)] == [1, 2]
    assert c.submit(_begin(account))["outcome"] == "destroyed"
    c.wait_converged()
    for n in c.nodes:
        entry = n.call(op="entry", account=account.hex())["entry"]
        assert entry["destroyed"] and entry["sealed"] == "" and entry["attempts"] == 2
    invalid = leader.call(op="submit", command={"op": "begin", "account": "00"})
    assert invalid == {"error": "invalid"}
    _no_truncation(c)
    c.stop()


def test_leader_crash_restart_all_and_counters(raft_cluster: Callable[..., Any]) -> None:
    c = raft_cluster(5)
    c.start()
    accounts = [(os.urandom(32), os.urandom(16)) for _ in range(5)]
    for account, record in accounts:
        c.submit(_put(account, record))
    for i, (account, _) in enumerate(accounts):
        for _ in range(i):
            c.submit(_begin(account))
    old = c.leader()
    old.kill()  # SIGKILL: a real crash
    survivors = c.alive()
    new = c.leader(among=survivors)
    assert new is not old
    account0 = accounts[0][0]
    assert new.call(op="submit", command=_begin(account0))["result"]["outcome"] == "granted"
    old.start()  # the crashed node catches up
    c.barrier()
    digest = c.wait_converged(c.nodes)
    _no_truncation(c)
    # crash every node at once, then restart all: state, digest and counters survive
    before = [c.nodes[0].call(op="entry", account=a.hex())["entry"] for a, _ in accounts]
    if not c.failed_submits:
        assert [e["attempts"] for e in before] == [1, 1, 2, 3, 4]
    for n in c.nodes:
        n.kill()
    c.start()
    c.wait_converged(c.nodes, expect=digest)
    for (account, _), entry in zip(accounts, before, strict=True):
        for n in c.nodes:
            assert n.call(op="entry", account=account.hex())["entry"] == entry
    assert c.submit(_begin(accounts[4][0]))["attempts"] == before[4]["attempts"] + 1
    c.wait_converged(c.nodes)
    _no_truncation(c)
    c.stop()


def test_snapshot_compaction_and_restart(raft_cluster: Callable[..., Any]) -> None:
    c = raft_cluster(3, extra=["--snapshot-min-entries", "20"])
    c.start()
    account, record = os.urandom(32), os.urandom(16)
    c.submit(_put(account, record, limit=100))
    for _ in range(45):
        c.submit(_begin(account))
    def compacted(s: dict[str, Any]) -> bool:
        # A node holds a durable snapshot it wrote itself or one installed from the
        # leader (a follower that fell behind the leader's compaction point).
        has_snapshot = s["snapshots_written"] > 0 or s["snapshots_loaded"] > 0
        return bool(has_snapshot and s["log_entries"] < 40)

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        statuses = [n.status() for n in c.nodes]
        if all(compacted(s) for s in statuses):
            break
        time.sleep(0.1)
    assert all(compacted(s) for s in statuses), [
        (s["snapshots_written"], s["snapshots_loaded"], s["log_entries"], s["last_applied"])
        for s in statuses]
    assert sum(s["snapshots_written"] for s in statuses) > 0
    c.barrier()
    digest = c.wait_converged()
    before = c.nodes[0].call(op="entry", account=account.hex())["entry"]
    assert 45 <= before["attempts"] <= 45 + len(c.failed_submits)
    for n in c.nodes:
        n.stop()
    c.start()
    c.wait_converged(c.nodes, expect=digest)
    for n in c.nodes:
        assert n.call(op="entry", account=account.hex())["entry"] == before
    c.failed_submits.clear()
    base = c.submit(_begin(account))["attempts"]
    assert before["attempts"] + 1 <= base <= before["attempts"] + 1 + len(c.failed_submits)
    c.failed_submits.clear()
    # a node that lost its whole data dir is restored by snapshot install
    lagging = next(n for n in c.nodes if n.status()["role"] != "leader")
    lagging.kill()
    for f in lagging.data_dir.iterdir():
        f.unlink()
    for _ in range(25):
        c.submit(_begin(account))
    lagging.start()
    c.wait_converged(c.nodes)
    # a submit reported as failed may still have committed (never the reverse)
    attempts = lagging.call(op="entry", account=account.hex())["entry"]["attempts"]
    assert base + 25 <= attempts <= base + 25 + len(c.failed_submits), c.failed_submits
    _no_truncation(c)
    c.stop()


def test_wrong_transport_secret_cannot_join(raft_cluster: Callable[..., Any]) -> None:
    good = os.urandom(32)
    c = raft_cluster(3, secrets=[good, good, os.urandom(32)])
    c.start()
    intruder = c.nodes[2]
    honest = c.nodes[:2]
    account, record = os.urandom(32), os.urandom(16)
    leader = c.leader(among=honest)
    assert leader.call(op="submit", command=_put(account, record))["result"]["outcome"] == "ok"
    time.sleep(1.5)  # several election timeouts: the intruder keeps trying
    c.wait_converged(honest)
    s = intruder.status()
    assert s["accounts"] == 0 and s["role"] != "leader" and s["leader"] is None
    assert intruder.call(op="submit", command=_begin(account))["error"] == "not_leader"
    assert c.leader(among=honest).call(op="submit", command=_begin(account))["result"][
        "attempts"] == 1
    c.stop()


def test_partitioned_leader_never_reports_success(raft_cluster: Callable[..., Any]) -> None:
    c = raft_cluster(3)
    c.start()
    account, record = os.urandom(32), os.urandom(16)
    c.submit(_put(account, record))
    leader = c.leader()
    followers = [n for n in c.nodes if n is not leader]
    for n in followers:  # freeze the majority: the leader is cut off
        n.proc.send_signal(signal.SIGSTOP)
    try:
        reply = leader.call(op="submit", command={**_begin(account)}, timeout=20)
        assert "result" not in reply and reply["error"] in ("timeout", "not_leader"), reply
        time.sleep(1.5)  # past the fallback timeout: it no longer claims leadership
        assert leader.status()["role"] != "leader"
        assert leader.call(op="submit", command=_begin(account))["error"] == "not_leader"
    finally:
        for n in followers:
            n.proc.send_signal(signal.SIGCONT)
    assert c.submit(_begin(account))["outcome"] == "granted"
    c.wait_converged(c.nodes)
    _no_truncation(c)
    c.stop()


@pytest.mark.parametrize("join", [True, False])
def test_a_node_that_is_not_a_member_yet_never_campaigns(
        raft_cluster: Callable[..., Any], join: bool) -> None:
    """Two of five nodes up, one of them joining: no majority exists, so no campaign
    succeeds -- a voter becomes a candidate again and again, a joiner never does."""
    c = raft_cluster(5)
    c.nodes[0].start()
    joiner = c.nodes[4]
    if join:
        joiner.extra = [*joiner.extra, "--join"]
    joiner.start()
    deadline = time.monotonic() + 3.0  # ten election timeouts and more
    while time.monotonic() < deadline:
        time.sleep(0.2)
    assert joiner.status()["role"] != "leader"
    c.stop()
    campaigned = "-> candidate" in (joiner.data_dir.parent / f"{joiner.node_id}.log").read_text()
    assert campaigned != join
