"""The chaos workload and checks against a real local cluster: leader SIGKILL, majority loss.

No containers: five vault processes over three data centers and three ChatDs
on loopback (``LocalCluster``). One module-scoped run (about 20 s of load)
feeds both tests: the real history must pass every check, and a corrupted copy
of it must not.
"""

from __future__ import annotations

import dataclasses
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from bkv_api.v1 import services_pb2
from bkv_tools.launcher import LocalCluster
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


def _load_with_leader_kill(cluster: LocalCluster, history: History) -> Run:
    config = ClientConfig.load(cluster.client_config_path)
    started = time.monotonic()
    workload = Workload(config, history, clients=6, accounts_per_client=4, attempt_limit=LIMIT,
                        seed=SEED, max_ops=5_000, deadline=started + LOAD_SECONDS)
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
        time.sleep(max(0.0, started + LOAD_SECONDS - time.monotonic()))
        workload.stop(20.0)
        workload.final_verification(30.0)
        digests = cluster_digests(config, timeout=30.0)
    finally:
        workload.stop(20.0)
        workload.close()
        history.close()
    events = read_history(history.path)
    report = run_checks(events, attempt_limit=LIMIT, digests=digests)
    return Run(events, report, workload.stats(), digests, killed_at, time.monotonic() - started)


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
    assert run.report.violations == []
    assert run.report.unknown == []
    assert len(run.digests) == 5 and all(run.digests.values())
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
    # A KE2 of an attack account (no correct logins, no unknown outcomes) replayed
    # right after the real one with the older count: as if the vault lost a guess.
    candidates = [e for e in events
                  if e.type == "ok" and e.f == "begin" and "-x" in e.account
                  and e.account not in uncertain and e.proc != "final"
                  and isinstance(e.value, dict) and e.value.get("ke2")]
    assert candidates, "no KE2 on a settled attack account in the history"
    ok = candidates[len(candidates) // 2]
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
