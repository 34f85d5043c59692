"""The compose deployment for real: build the image offline, bring 5 vault nodes over 3
data-center networks and 3 ChatDs up, deposit and recover a key with the ``bkv`` CLI
through a published ChatD port, survive the loss of the leader's container, tear down.

Needs a running container engine (``scripts/docker-setup.sh`` installs and starts one);
skipped otherwise. Every wait is bounded.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bkv_tools import compose_layout
from client_sdk.config import ClientConfig
from client_sdk.keys import read_key_file

pytestmark = [pytest.mark.slow, pytest.mark.cluster, pytest.mark.timeout(1500)]

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "deploy" / "docker-compose.yml"
BASE_IMAGE = "bkv-base:bookworm"
IMAGE = "bkv:local"
BKV = str(Path(sys.executable).parent / "bkv")
READY_TIMEOUT = 180.0
HEALTHY_TIMEOUT = 120.0
PASSWORD = "correct horse battery staple"


def _run(argv: list[str], *, timeout: float, stdin: str | None = None,
         check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=timeout,
                          check=False, cwd=ROOT)
    if check and proc.returncode != 0:
        pytest.fail(f"{' '.join(argv[:4])}... exited {proc.returncode}: {proc.stderr[-2000:]}")
    return proc


def _engine_ready() -> bool:
    if shutil.which("docker") is None or shutil.which("docker-compose") is None:
        return False
    return _run(["docker", "version"], timeout=30, check=False).returncode == 0


@dataclass
class Deployment:
    compose: list[str]
    state: Path
    client_config: Path

    def container(self, service: str) -> str:
        return _run([*self.compose, "ps", "-q", service], timeout=60).stdout.strip()

    def new_key(self, path: Path) -> Path:
        _run([BKV, "key", "new", "--out", str(path)], timeout=60)
        return path

    def bkv(self, *args: str, password: str | None = None) -> subprocess.CompletedProcess[str]:
        """A ``bkv vault`` command against this deployment's client.toml."""
        argv = [BKV, *args, "--config", str(self.client_config)]
        if password is not None:
            argv.append("--password-stdin")
        stdin = None if password is None else password + "\n"
        return _run(argv, timeout=90, stdin=stdin, check=False)


@pytest.fixture(scope="module")
def image() -> str:
    if not _engine_ready():
        pytest.skip("no container engine answers (run scripts/docker-setup.sh)")
    _run(["bash", "scripts/docker-setup.sh", "base", "wheelhouse"], timeout=1200)
    _run(["docker", "build", "-q", "--network", "none", "-f", "deploy/Dockerfile", "-t", IMAGE,
          "--build-arg", f"BASE_IMAGE={BASE_IMAGE}", "--build-arg", "WHEELHOUSE=1", "."],
         timeout=900)
    return IMAGE


@pytest.fixture(scope="module")
def deployment(image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    state = tmp_path_factory.mktemp("compose") / "state"
    client = compose_layout.prepare(state, attempt_limit=3)
    compose = ["docker-compose", "-p", f"bkvtest{os.getpid()}", "-f", str(COMPOSE_FILE),
               "--env-file", str(state / "compose.env")]
    try:
        _run([*compose, "up", "-d", "--no-build"], timeout=300)
        compose_layout.wait_ready(client, READY_TIMEOUT)
        yield Deployment(compose, state, state / "client.toml")
    finally:
        _run([*compose, "down", "-v", "--timeout", "10"], timeout=300, check=False)


def _health(container: str) -> str:
    out = _run(["docker", "inspect", "--format", "{{json .State.Health}}", container],
               timeout=30).stdout
    return str(json.loads(out)["Status"])


def test_every_container_becomes_healthy(deployment: Deployment) -> None:
    services = [n for n, _ in compose_layout.node_names() + compose_layout.chatd_names()]
    containers = {s: deployment.container(s) for s in services}
    assert all(containers.values())
    end = time.monotonic() + HEALTHY_TIMEOUT
    states: dict[str, str] = {}
    while time.monotonic() < end:
        states = {s: _health(c) for s, c in containers.items()}
        if all(v == "healthy" for v in states.values()):
            break
        time.sleep(2)
    assert all(v == "healthy" for v in states.values()), states


def test_services_run_unprivileged_with_secrets_in_memory(deployment: Deployment) -> None:
    out = _run(["docker", "exec", deployment.container("dc2-n1"), "sh", "-c",
                "grep -E '^(Uid|CapEff)' /proc/1/status; stat -c '%a %U' /run/bkv/master_key;"
                " grep ' /run/bkv ' /proc/mounts"], timeout=60).stdout
    assert "Uid:\t10001\t10001\t10001\t10001" in out
    assert "CapEff:\t0000000000000000" in out
    assert "400 bkv" in out
    assert "tmpfs" in out


def test_register_then_recover_through_a_published_chatd_port(
    deployment: Deployment, tmp_path: Path
) -> None:
    key_file, found = tmp_path / "my.key", tmp_path / "found.key"
    deployment.new_key(key_file)
    reg = deployment.bkv("vault", "register", "--account", "alice", "--key-file",
                         str(key_file), password=PASSWORD)
    assert reg.returncode == 0, reg.stderr
    wrong = deployment.bkv("vault", "recover", "--account", "alice", "--out-key-file",
                           str(found), password="not it")
    assert wrong.returncode == 2 and "2 attempts left" in wrong.stderr
    assert not found.exists()
    rec = deployment.bkv("vault", "recover", "--account", "alice", "--out-key-file",
                         str(found), password=PASSWORD)
    assert rec.returncode == 0, rec.stderr
    assert read_key_file(found).raw == read_key_file(key_file).raw


def test_recovery_survives_losing_the_leader_container(
    deployment: Deployment, tmp_path: Path
) -> None:
    key_file, found = tmp_path / "k.key", tmp_path / "found.key"
    deployment.new_key(key_file)
    reg = deployment.bkv("vault", "register", "--account", "bob", "--key-file", str(key_file),
                         password=PASSWORD)
    assert reg.returncode == 0, reg.stderr
    client = ClientConfig.load(deployment.client_config)
    reply = compose_layout.wait_ready(client, READY_TIMEOUT)
    leader = next(n.node_id for n in reply.nodes if n.role == "leader")
    _run([*deployment.compose, "stop", "--timeout", "10", leader], timeout=120)
    try:
        rec = deployment.bkv("vault", "recover", "--account", "bob", "--out-key-file",
                             str(found), password=PASSWORD)
        assert rec.returncode == 0, rec.stderr
        assert read_key_file(found).raw == read_key_file(key_file).raw
        status = compose_layout.cluster_status(client)
        assert status is not None
        # ChatD names unreachable nodes by address (the proto comment says node id)
        assert {leader, f"{leader}:{compose_layout.GRPC_PORT}"} & set(status.unreachable)
    finally:
        _run([*deployment.compose, "start", leader], timeout=120)
    compose_layout.wait_ready(client, READY_TIMEOUT)


def test_key_destroyed_after_the_attempt_limit(deployment: Deployment, tmp_path: Path) -> None:
    key_file, found = tmp_path / "c.key", tmp_path / "found.key"
    deployment.new_key(key_file)
    reg = deployment.bkv("vault", "register", "--account", "carol", "--key-file",
                         str(key_file), password=PASSWORD)
    assert reg.returncode == 0, reg.stderr
    for _ in range(3):  # the deployment's limit
        bad = deployment.bkv("vault", "recover", "--account", "carol", "--out-key-file",
                             str(found), password="guess")
        assert bad.returncode == 2, bad.stderr
    last = deployment.bkv("vault", "recover", "--account", "carol", "--out-key-file",
                          str(found), password=PASSWORD)
    assert last.returncode != 0 and "destroyed" in last.stderr.lower(), last.stderr
    assert not found.exists()


def test_status_view_lists_every_node(deployment: Deployment, capsys: pytest.CaptureFixture[str]
                                      ) -> None:
    assert compose_layout.main(["status", "--state-dir", str(deployment.state),
                                "--wait", "60"]) == 0
    out = capsys.readouterr().out
    for name, dc in compose_layout.node_names():
        assert any(line.startswith(name) and f" {dc} " in line for line in out.splitlines())
    assert out.count(" leader ") == 1
