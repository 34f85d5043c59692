"""The chaos workload and checks against a real local cluster: leader SIGKILL, majority
loss, and a follower replaced by a new member that catches up from a snapshot.

No containers: five vault processes over three data centers and three ChatDs
on loopback (``LocalCluster``). One module-scoped run (about 30 s of load)
feeds both tests: the real history must pass every check, and a corrupted copy
of it must not.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from bkv_api.v1 import services_pb2
from bkv_tools.launcher import LocalCluster, node_status
from client_sdk.config import ClientConfig
from client_sdk.vault_transport import ChatDTransport

from .checks import CheckReport, run_checks
from .history import Event, History, first_ok_recovery_after, outcome_counts, read_history
from .workload import Workload

pytestmark = pytest.mark.cluster

LIMIT = 4  # small, so attack accounts reach destruction within seconds
LOAD_SECONDS = 20.0
KILL_AFTER = 5.0  # then the leader is down for DOWN_SECONDS
DOWN_SECONDS = 2.0
MAJORITY_LOSS_AFTER = 11.0  # then three followers are down for DOWN_SECONDS * 2, and
# until an operation has ended with an unknown outcome
SEED = 20261123
UNKNOWN_WAIT_SECONDS = 30.0  # bounds the majority loss if no operation ends unknown
MEMBER_TIMEOUT = 90.0  # one membership change (committed, routed, caught up)
AFTER_MEMBERS_SECONDS = 3.0  # load on the new membership before the workload stops


def cluster_digests(config: ClientConfig, *, timeout: float,
                    shard: int = 0) -> dict[str, bytes]:
    """node id -> state digest via ChatD ``ClusterStatus``, once every node agrees.

    Waits (bounded by ``timeout``) until every node of ``shard`` answers with the
    same commit index, applied index and digest; returns the last view either
    way. A node that did not answer maps to ``b""`` (key ``unreachable:<address>``).
    """
    end = time.monotonic() + timeout
    seen: dict[str, bytes] = {}
    tls = getattr(config, "tls", None)
    transport = ChatDTransport(list(config.chatd), config.deadline_seconds,
                               **({"tls": tls} if tls else {}))
    try:
        while True:
            for address in config.chatd:
                try:
                    reply = transport._stub(address).ClusterStatus(
                        services_pb2.ClusterStatusRequest(), timeout=5.0)
                except grpc.RpcError:
                    continue
                nodes = [n for n in reply.nodes if n.shard == shard]
                seen = {n.node_id: bytes(n.state_digest) for n in nodes}
                seen.update({f"unreachable:{u}": b"" for u in reply.unreachable})
                agreed = len({(n.commit_index, n.last_applied, n.state_digest) for n in nodes})
                if nodes and not reply.unreachable and agreed == 1:
                    return seen
                break
            if time.monotonic() >= end:
                return seen
            time.sleep(0.5)
    finally:
        transport.close()


def _unknown_outcomes(workload: Workload) -> int:
    """Operations the workload has ended as ``info`` (sent, no answer) so far."""
    return sum(n for kind, n in workload.stats().items() if kind.endswith(":info"))


def _wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``predicate`` (bounded in time); fail the test with ``what`` on timeout."""
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= end:
            pytest.fail(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.1)


@dataclass
class Run:
    events: list[Event]
    report: CheckReport
    stats: dict[str, int]
    digests: dict[str, bytes]
    killed_at: float
    seconds: float
    members: Members
    probe_account: str  # an attack account driven to exactly one KE2 after the faults


@dataclass
class Members:
    """The membership fault: who left the group and who joined it, and how it caught up."""

    removed: str
    added: str
    snapshots_loaded: int  # by the added member (it started empty: installs only)
    caught_up_to: int
    installed_through: int  # its audit trail's gap line for the first install (0: none)


def _snapshot_now(cluster: LocalCluster, node: str) -> str:
    """`bkv-vault-node snapshot now` with ``node``'s config: the leader snapshots and
    compacts its log; returns the leader's node id (once its new snapshot is written)."""
    def written(name: str) -> int:
        st = node_status(cluster.node(name)["grpc_address"], tls=cluster.vault_tls)
        return -1 if st is None else int(st.snapshots_written)

    leader = cluster.leader(0) or node
    before = written(leader)
    proc = subprocess.run([sys.executable, "-m", "vault_node.cli", "snapshot", "now", "--json",
                           "--config", str(cluster.config_path(node))],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    leader = json.loads(proc.stdout)["leader"]["node_id"]
    if leader != cluster.leader(0):
        before = -1  # another node answered as leader: any snapshot of it will do
    _wait_for(lambda: written(leader) > max(before, 0), MEMBER_TIMEOUT,
              f"a new snapshot on {leader}")
    return str(leader)


def _replace_a_follower(cluster: LocalCluster) -> Members:
    """Remove a follower from the Raft group while the workload runs, then add a new member
    on an empty data dir, after the leader compacted its log: it can only catch up by a
    snapshot install. Each step is waited for (bounded)."""
    _wait_for(lambda: cluster.leader(0) is not None, MEMBER_TIMEOUT, "a leader")
    leader = cluster.leader(0)
    follower = next(n for n in cluster.nodes(0) if n != leader)
    datacenter = cluster.node(follower)["datacenter"]
    cluster.member_remove(follower, timeout=MEMBER_TIMEOUT)  # returns once committed
    assert follower not in {m.node_id for m in cluster.raft_members(0)}
    speaker = next(n for n in cluster.nodes(0) if n != follower)
    _snapshot_now(cluster, speaker)
    added = f"{follower}-b"  # a new member: new name, ports, link key and empty data dir
    cluster.member_add(added, shard=0, datacenter=datacenter, timeout=MEMBER_TIMEOUT)
    assert added in {m.node_id for m in cluster.raft_members(0)}
    status = node_status(cluster.node(added)["grpc_address"], tls=cluster.vault_tls)
    assert status is not None, f"{added} does not answer after it was added"
    audit = cluster.state_dir / "nodes" / added / "audit.jsonl"
    gaps = [json.loads(line) for line in audit.read_text("utf-8").splitlines()
            if '"gap"' in line]
    installed = max((int(g["index"]) for g in gaps if g.get("reason") == "snapshot"), default=0)
    return Members(follower, added, int(status.snapshots_loaded), int(status.last_applied),
                   installed)


def _load_with_leader_kill(cluster: LocalCluster, history: History) -> Run:
    config = ClientConfig.load(cluster.client_config_path)
    started = time.monotonic()
    # The deadline only bounds a run that fails half-way: the workload is stopped below.
    workload = Workload(config, history, clients=6, accounts_per_client=4, attempt_limit=LIMIT,
                        seed=SEED, max_ops=5_000,
                        deadline=started + LOAD_SECONDS + 2 * MEMBER_TIMEOUT)
    killed_at = 0.0
    try:
        workload.start()
        time.sleep(KILL_AFTER)
        leader = cluster.leader(0)
        assert leader is not None, "no leader before the kill"
        killed_at = time.monotonic()
        cluster.kill_node(leader, signal.SIGKILL)
        time.sleep(DOWN_SECONDS)
        cluster.restart_node(leader)
        # No majority for a while: commits time out, outcomes become unknown, and
        # entries appended meanwhile may still commit after the nodes return.
        time.sleep(max(0.0, started + MAJORITY_LOSS_AFTER - time.monotonic()))
        leader = cluster.leader(0)
        victims = [n for n in cluster.nodes(0) if n != leader][:3]
        unknown_before = _unknown_outcomes(workload)
        for node in victims:
            cluster.kill_node(node, signal.SIGKILL)
        time.sleep(DOWN_SECONDS * 2)
        # The majority stays down until an operation has ended without an answer:
        # the test asserts on that situation, so it makes it happen instead of
        # hoping one was in flight (under CPU load the loss could fall between ops).
        _wait_for(lambda: _unknown_outcomes(workload) > unknown_before, UNKNOWN_WAIT_SECONDS,
                  "an operation with an unknown outcome during the majority loss")
        for node in victims:
            cluster.restart_node(node)
        # A membership fault under load: a follower leaves, a new member joins empty.
        members = _replace_a_follower(cluster)
        time.sleep(max(AFTER_MEMBERS_SECONDS, started + LOAD_SECONDS - time.monotonic()))
        workload.stop(20.0)
        # The corruption test needs a settled attack account with a KE2: made, not hoped for.
        probe = workload.one_guess_account(30.0)
        workload.final_verification(30.0)
        digests = cluster_digests(config, timeout=30.0)
    finally:
        workload.stop(20.0)
        workload.close()
        history.close()
    events = read_history(history.path)
    report = run_checks(events, attempt_limit=LIMIT, digests=digests)
    return Run(events, report, workload.stats(), digests, killed_at, time.monotonic() - started,
               members, probe)


@pytest.fixture(scope="module")
def run() -> Iterator[Run]:
    # Not tmp_path_factory: another pytest run on the machine may prune numbered dirs.
    with tempfile.TemporaryDirectory(prefix="bkv-chaos-local-") as tmp:
        cluster = LocalCluster(Path(tmp) / "state", 1, attempt_limit=LIMIT,
                               allow_identity_ksf=True)
        try:
            cluster.up(timeout=150.0)
            yield _load_with_leader_kill(cluster, History(Path(tmp) / "history.jsonl"))
        finally:
            cluster.down(grace=5)


def test_real_history_passes_every_check(run: Run) -> None:
    counts = outcome_counts(run.events)
    recovery = first_ok_recovery_after(run.events, run.killed_at)
    print(f"\nlocal chaos run: {run.seconds:.1f}s, {len(run.events)} events")
    print(run.report.summary())
    print(f"workload stats: {run.stats}")
    print("recovery after leader kill: "
          + ("none" if recovery is None else f"{recovery - run.killed_at:.2f}s"))
    print(f"membership: removed {run.members.removed}, added {run.members.added} "
          f"(caught up to {run.members.caught_up_to}, "
          f"{run.members.snapshots_loaded} snapshot(s) installed, the first through "
          f"index {run.members.installed_through})")
    assert run.report.violations == []
    assert run.report.unknown == []
    assert len(run.digests) == 5 and all(run.digests.values())
    # the digests come from the members after the change: the new one, not the removed one
    assert run.members.added in run.digests and run.members.removed not in run.digests
    assert run.members.snapshots_loaded >= 1  # it caught up from the leader's snapshot
    assert run.members.installed_through > 0  # ... which its audit trail records
    for kind, least in (("register:ok", 10), ("begin:ke2", 30), ("begin:destroyed", 2),
                        ("finish:gen", 10), ("finish:login_failed", 5)):
        assert counts.get(kind, 0) >= least, (kind, counts)
    assert run.stats.get("abandoned_logins", 0) >= 2
    assert run.stats.get("overlap_recoveries", 0) >= 1
    assert run.stats.get("final_unresolved", 0) == 0
    assert not [k for k in run.stats if k.startswith("client_crash")], run.stats
    assert run.stats.get("final_resolved", 0) >= 10
    assert recovery is not None
    unknown = sum(n for k, n in counts.items() if k.endswith((":info", ":pending")))
    assert unknown >= 1, counts  # the run held the majority down until one was unknown
    assert "password" not in "".join(e.to_json() for e in run.events)


def test_corrupted_copy_of_the_real_history_is_caught(run: Run) -> None:
    events = list(run.events)
    ends = {e.op: i for i, e in enumerate(events) if e.type != "invoke"}
    uncertain = {e.account for e in events if e.type == "info"}
    uncertain |= {e.account for e in events if e.type == "invoke" and e.op not in ends}
    # The KE2 of an attack account (registered, then one wrong guess; no correct login,
    # no unknown outcome) replayed right after the real one with the older count: as if
    # the vault lost a guess.
    assert run.probe_account not in uncertain
    candidates = [e for e in events
                  if e.type == "ok" and e.f == "begin" and e.account == run.probe_account
                  and isinstance(e.value, dict) and e.value.get("ke2")]
    assert len(candidates) == 1, candidates
    ok = candidates[0]
    inv = next(e for e in events if e.op == ok.op and e.type == "invoke")
    fake = max(e.op for e in events) + 1
    older = {"ke2": True, "attempts_left": ok.value["attempts_left"] + 1}
    forged = [dataclasses.replace(inv, op=fake, proc="forged"),
              dataclasses.replace(ok, op=fake, proc="forged", value=older)]
    at = ends[ok.op] + 1
    report = run_checks(events[:at] + forged + events[at:], attempt_limit=LIMIT,
                        digests=run.digests)
    assert report.violations, "a replayed KE2 with an older count went unnoticed"
    assert all(ok.account in v for v in report.violations), report.violations
