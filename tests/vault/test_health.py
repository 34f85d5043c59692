"""The gRPC health service of vault nodes: SERVING only while a leader is known."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2

from bkv_tools import compose_layout
from tests.vault.conftest import (
    NODE_CMD,
    Cluster,
    clean_env,
    health_check,
    started_cluster,
    wait_health,
)
from vault_node.service.health import NOT_SERVING, SERVING, vault_health

SERVICES = ("", "bkv.v1.Vault")
WAIT_SECONDS = 10.0


def check(address: str, service: str) -> int | grpc.StatusCode:
    return health_check(address, service)


def wait_status(address: str, want: int, deadline: float = WAIT_SECONDS) -> float:
    return wait_health(address, SERVICES, want, deadline)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with started_cluster(tmp_path_factory.mktemp("vault-health"), 3) as c:
        yield c


@pytest.mark.cluster
def test_every_node_serving_once_a_leader_exists(cluster: Cluster) -> None:
    for cfg in cluster.configs:
        wait_status(cfg["grpc_address"], SERVING)
    # the container health probe agrees
    address = cluster.configs[0]["grpc_address"]
    assert compose_layout.main(["health", "vault", "--address", address]) == 0


@pytest.mark.cluster
def test_unknown_service_is_not_found(cluster: Cluster) -> None:
    address = cluster.configs[0]["grpc_address"]
    assert check(address, "bkv.v1.NoSuchService") == grpc.StatusCode.NOT_FOUND
    assert check(address, "bkv.v1.ChatD") == grpc.StatusCode.NOT_FOUND


@pytest.mark.cluster
def test_survivor_of_a_lost_majority_turns_not_serving(cluster: Cluster) -> None:
    """Kill the leader and one follower: the last node can't elect anyone."""
    leader = cluster.wait_for_leader()
    follower = next(c["grpc_address"] for c in cluster.configs if c["grpc_address"] != leader)
    survivor = next(c["grpc_address"] for c in cluster.configs
                    if c["grpc_address"] not in (leader, follower))
    wait_status(survivor, SERVING)
    cluster.kill(leader)
    cluster.kill(follower)
    took = wait_status(survivor, NOT_SERVING)
    print(f"survivor NOT_SERVING {took:.2f}s after losing the majority")
    assert check(survivor, "bkv.v1.NoSuchService") == grpc.StatusCode.NOT_FOUND
    assert not compose_layout.healthy("vault", survivor)

    restart(cluster, follower)  # a majority again: a leader is elected, both serve
    took = wait_status(survivor, SERVING, deadline=20.0)
    status = cluster.status(survivor)  # SERVING names a live leader, not the killed one
    assert status is not None and status.leader_address in (survivor, follower)
    wait_status(follower, SERVING)
    print(f"survivor SERVING again {took:.2f}s after a peer restarted")


def restart(cluster: Cluster, grpc_address: str) -> None:
    """Start the (killed) node serving ``grpc_address`` again, with its data directory."""
    index = next(i for i, c in enumerate(cluster.configs) if c["grpc_address"] == grpc_address)
    cfg = cluster.configs[index]
    with open(cluster.state / f"{cfg['node_id']}.log", "ab") as log:
        cluster.procs[index] = subprocess.Popen(
            [*NODE_CMD, "run", "--config", cfg["config_path"]],
            stdout=log, stderr=subprocess.STDOUT, env=clean_env(),
        )


def test_reporter_publishes_changes_and_stays_down_after_stop() -> None:
    state = {"ok": False}
    reporter = vault_health(lambda: state["ok"])
    request = health_pb2.HealthCheckRequest(service="bkv.v1.Vault")

    class Context:
        def set_code(self, code: grpc.StatusCode) -> None:
            raise AssertionError(code)

    def status() -> int:
        return int(reporter.servicer.Check(request, Context()).status)

    assert status() == NOT_SERVING and not reporter.serving
    state["ok"] = True
    reporter.update()
    assert status() == SERVING and reporter.serving
    reporter.stop()
    assert status() == NOT_SERVING and not reporter.serving
    reporter.update()  # a late check can't bring a stopped node back
    assert status() == NOT_SERVING


def test_failing_check_means_not_serving() -> None:
    calls = []

    def broken() -> bool:
        calls.append(1)
        raise RuntimeError("replica gone")

    reporter = vault_health(broken)
    reporter.update()
    assert calls and not reporter.serving
    reporter.stop()
