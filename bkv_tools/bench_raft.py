"""Raft commit benchmark: a local 5-node cluster of processes, fsync on and off.

Prints single-commit latency (p50/p99, one submitter) and commits/s with N
concurrent submitters on the leader. Each figure is a commit on a majority
followed by the leader's apply -- what a vault request waits for per Raft step.
Run: ``python -m bkv_tools.bench_raft [--commits 300] [--concurrency 1,8,32]``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any

from bkv_ops.console import quiet_on_closed_pipe
from vault_node.raft.harness import SECRET_ENV


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Node:
    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc

    def call(self, **request: Any) -> dict[str, Any]:
        stdin, stdout = self.proc.stdin, self.proc.stdout
        assert stdin is not None and stdout is not None
        stdin.write(json.dumps(request) + "\n")
        stdin.flush()
        line = stdout.readline()
        if not line:
            raise RuntimeError("benchmark node exited")
        return dict(json.loads(line))


def _start_cluster(root: Path, size: int, fsync: bool, log: IO[str]) -> list[_Node]:
    addresses = [f"127.0.0.1:{_free_port()}" for _ in range(size)]
    env = dict(os.environ, **{SECRET_ENV: os.urandom(32).hex()})
    nodes = []
    for i, address in enumerate(addresses):
        argv = [sys.executable, "-m", "vault_node.raft.harness", "--node-id", f"n{i}",
                "--self", address, "--peers", ",".join(addresses),
                "--data-dir", str(root / f"n{i}")]
        if not fsync:
            argv.append("--no-fsync")
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=log, text=True, env=env)
        nodes.append(_Node(proc))
    for node in nodes:
        assert node.proc.stdout is not None
        if not json.loads(node.proc.stdout.readline() or "{}").get("ready"):
            raise RuntimeError("benchmark node failed to start")
    return nodes


def _leader(nodes: list[_Node], timeout: float = 20.0) -> _Node:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for node in nodes:
            if node.call(op="status")["role"] == "leader":
                return node
        time.sleep(0.1)
    raise RuntimeError("no leader elected")


def _stop(nodes: list[_Node]) -> None:
    for node in nodes:
        if node.proc.poll() is None:
            try:
                node.call(op="quit")
                node.proc.wait(timeout=10)
            except (RuntimeError, OSError, subprocess.TimeoutExpired):
                node.proc.send_signal(signal.SIGKILL)
                node.proc.wait(timeout=10)


def run(size: int, commits: int, concurrency: list[int], fsync: bool) -> list[dict[str, Any]]:
    """Start a cluster, run the loads on its leader, stop it; return one row per load."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="bkv-bench-raft-") as tmp:
        root = Path(tmp)
        with open(root / "nodes.log", "w") as log:
            nodes = _start_cluster(root, size, fsync, log)
            try:
                leader = _leader(nodes)
                leader.call(op="load", count=20, concurrency=1)  # warm-up
                for n in concurrency:
                    stats = leader.call(op="load", count=max(commits, n), concurrency=n)
                    rows.append({"fsync": fsync, "concurrency": n, **stats})
            finally:
                _stop(nodes)
    return rows


@quiet_on_closed_pipe
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nodes", type=int, default=5)
    parser.add_argument("--commits", type=int, default=300)
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    levels = [int(x) for x in args.concurrency.split(",") if x]
    rows = []
    for fsync in (True, False):
        rows += run(args.nodes, args.commits, levels, fsync)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"Raft commit benchmark: {args.nodes} node processes on loopback, "
          f"{args.commits} commits per row")
    print(f"{'fsync':>5} {'submitters':>10} {'p50 ms':>8} {'p99 ms':>8} {'commits/s':>10} "
          f"{'failed':>6}")
    for r in rows:
        print(f"{'on' if r['fsync'] else 'off':>5} {r['concurrency']:>10} {r['p50_ms']:>8.2f} "
              f"{r['p99_ms']:>8.2f} {r['commits_per_second']:>10.0f} {r['failures']:>6}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
