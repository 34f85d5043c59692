"""Multi-process Raft cluster fixture: real processes on free loopback ports."""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

DRIVER = Path(__file__).with_name("raft_driver.py")
SECRET = os.urandom(32)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class NodeProcess:
    """One replica process; requests and replies are JSON lines on its pipes."""

    def __init__(self, node_id: str, address: str, peers: list[str], data_dir: Path,
                 secret: bytes, extra: list[str]) -> None:
        self.node_id, self.address, self.peers, self.data_dir = node_id, address, peers, data_dir
        self.secret, self.extra = secret, extra
        self.proc: subprocess.Popen[str] | None = None
        self.lines: queue.Queue[str] = queue.Queue()

    def start(self) -> None:
        env = dict(os.environ, BKV_RAFT_SECRET=self.secret.hex())
        log = open(self.data_dir.parent / f"{self.node_id}.log", "a")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, str(DRIVER), "--node-id", self.node_id, "--self", self.address,
             "--peers", ",".join(self.peers), "--data-dir", str(self.data_dir), *self.extra],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True, env=env,
        )
        log.close()
        self.lines = queue.Queue()
        out = self.proc.stdout
        assert out is not None
        lines = self.lines
        threading.Thread(target=lambda: [lines.put(x) for x in out], daemon=True).start()
        ready = self._read(20.0)
        assert ready.get("ready"), ready

    def _read(self, timeout: float) -> dict[str, Any]:
        try:
            return dict(json.loads(self.lines.get(timeout=timeout)))
        except queue.Empty:
            raise AssertionError(f"{self.node_id}: no reply within {timeout}s") from None

    def call(self, timeout: float = 15.0, **request: Any) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return self._read(timeout)

    def status(self) -> dict[str, Any]:
        return self.call(op="status")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None

    def stop(self) -> None:
        """Clean shutdown through the control channel (SIGKILL if it does not exit)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                self.call(op="quit", timeout=10)
                self.proc.wait(timeout=10)
            except (AssertionError, OSError, subprocess.TimeoutExpired):
                pass
        self.kill()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class Cluster:
    def __init__(self, root: Path, size: int, extra: list[str], secrets: list[bytes]) -> None:
        addresses = [f"127.0.0.1:{free_port()}" for _ in range(size)]
        self.nodes = [
            NodeProcess(f"n{i}", a, addresses, root / f"n{i}", secrets[i], extra)
            for i, a in enumerate(addresses)
        ]
        for n in self.nodes:
            n.data_dir.mkdir(parents=True, exist_ok=True)
        self.failed_submits: list[dict[str, Any]] = []

    def start(self) -> None:
        for n in self.nodes:
            n.start()

    def alive(self) -> list[NodeProcess]:
        return [n for n in self.nodes if n.alive]

    def leader(self, timeout: float = 20.0, among: list[NodeProcess] | None = None) -> NodeProcess:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for n in among or self.alive():
                if n.status()["role"] == "leader":
                    return n
            time.sleep(0.1)
        raise AssertionError("no leader elected")

    def submit(self, command: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
        """Submit through whoever leads, retrying across elections (bounded)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            reply = self.leader(timeout=max(0.1, deadline - time.monotonic())).call(
                op="submit", command=command)
            if "result" in reply:
                return dict(reply["result"])
            self.failed_submits.append(reply)
            time.sleep(0.1)
        raise AssertionError("submit did not commit in time")

    def barrier(self) -> None:
        """Commit one more entry: every earlier entry is then committed or gone for good."""
        self.submit({"op": "put", "account": os.urandom(32).hex(),
                     "record": os.urandom(16).hex(), "sealed": "00", "limit": 1})

    def wait_converged(self, nodes: list[NodeProcess] | None = None,
                       timeout: float = 15.0, expect: str | None = None) -> str:
        """Wait until every given node applied the same state (``expect`` if given)."""
        deadline = time.monotonic() + timeout
        statuses: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            statuses = [n.status() for n in nodes or self.alive()]
            seen = {(s["digest"], s["last_applied"]) for s in statuses}
            if len(seen) == 1 and expect in (None, statuses[0]["digest"]) and all(
                    s["leader"] for s in statuses):
                return str(statuses[0]["digest"])
            time.sleep(0.1)
        raise AssertionError(f"nodes did not converge: {statuses}")

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()


@pytest.fixture
def raft_cluster(tmp_path: Path) -> Iterator[Callable[..., Cluster]]:
    made: list[Cluster] = []

    def make(size: int, *, extra: list[str] | None = None,
             secrets: list[bytes] | None = None) -> Cluster:
        cluster = Cluster(tmp_path / f"c{len(made)}", size, extra or [],
                          secrets or [SECRET] * size)
        made.append(cluster)
        return cluster

    yield make
    for cluster in made:
        for n in cluster.nodes:
            n.kill()
