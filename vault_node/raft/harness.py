"""A Raft replica driven over stdin/stdout, one JSON line per request and reply.

Used by the multi-process Raft tests and by ``bkv_tools.bench_raft``: each
process runs one ``ReplicatedVault`` and the controller talks to it through its
pipes, so killing a process (SIGKILL) is a real crash. The transport secret comes
from the environment (``BKV_RAFT_SECRET``, hex), never from argv. Link keys are
derived from it and each member's address (:func:`harness_link_key`), so every
harness process knows every member's key without a key file: a test-only
shortcut; real nodes each hold their own key file.

Requests: ``{"op": "status"}``, ``{"op": "submit", "command": {...}}``,
``{"op": "entry", "account": hex}``, ``{"op": "snapshot"}``,
``{"op": "load", "count": n, "concurrency": c}`` (timed submits run inside this
process), ``{"op": "quit"}``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from bkv_ops.console import quiet_on_closed_pipe
from vault_node import state as st
from vault_node.raft.membership import Member
from vault_node.raft.replication import (
    CommitTimeoutError,
    NotLeaderError,
    RaftConfig,
    RaftStartupError,
    ReplicatedVault,
)
from vault_node.raft.transport_cipher import LinkKey

SECRET_ENV = "BKV_RAFT_SECRET"  # noqa: S105 (the variable name, not a secret)


def harness_link_key(secret: bytes, address: str) -> LinkKey:
    """The harness member's link key at ``address`` (derived: test clusters only)."""
    seed = HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                info=b"bkv raft harness link key " + address.encode()).derive(secret)
    return LinkKey(X25519PrivateKey.from_private_bytes(seed))


def harness_members(secret: bytes, addresses: list[str]) -> tuple[Member, ...]:
    return tuple(
        Member(a, "harness", a, "", harness_link_key(secret, a).public_hex) for a in addresses
    )


def command_from_json(plain: dict[str, Any]) -> st.Command:
    """Build a command from ``{"op": ..., "account": hex, ...}`` (test and bench input)."""
    op = plain["op"]
    account = bytes.fromhex(plain["account"])
    if op == "put":
        return st.Put(
            account,
            bytes.fromhex(plain["record"]),
            bytes.fromhex(plain["sealed"]),
            int(plain["limit"]),
        )
    if op == "begin":
        return st.BeginAttempt(account)
    if op == "reset":
        return st.ResetAttempts(account, bytes.fromhex(plain["record"]))
    if op == "destroy":
        return st.DestroyIfExhausted(account, bytes.fromhex(plain["record"]))
    if op == "delete":
        return st.Delete(account)
    raise ValueError("unknown op")


def _result_json(result: st.ApplyResult) -> dict[str, Any]:
    return {
        "outcome": result.outcome.value,
        "record": result.record_id.hex(),
        "sealed": result.sealed_record.hex(),
        "attempts": result.attempts,
        "limit": result.limit,
    }


def _status_json(vault: ReplicatedVault) -> dict[str, Any]:
    s = vault.status()
    return {
        "node_id": s.node_id,
        "role": s.role,
        "term": s.term,
        "commit_index": s.commit_index,
        "last_applied": s.last_applied,
        "leader": s.leader_address,
        "digest": s.digest.hex(),
        "accounts": s.accounts,
        "log_entries": s.log_entries,
        "snapshots_written": s.snapshots_written,
        "snapshots_loaded": s.snapshots_loaded,
        "truncation_warnings": s.truncation_warnings,
        "snapshot_busy": vault.snapshotter.busy(),
        "chunks_sent": _GATES.sent,
        "chunks_received": _GATES.received,
    }


class _Gates:
    """Test gates on snapshots (``--gate DIR``): pause at a known point until a file exists.

    ``DIR/create``: a snapshot being taken waits for it before writing rows.
    ``DIR/send``: after the first chunk of each transfer, the sender sends nothing
    more until it exists. The counters say how far a transfer got.
    """

    def __init__(self) -> None:
        self.folder: Path | None = None
        self.sent = 0
        self.received = 0

    def wait(self, name: str) -> None:
        deadline = time.monotonic() + 300
        while self.folder is not None and not (self.folder / name).exists():
            if time.monotonic() > deadline:
                return
            time.sleep(0.02)

    def install(self, snapshotter: Any, folder: Path) -> None:
        self.folder = folder
        write, send, receive = (snapshotter._write, snapshotter.getTransmissionData,
                                snapshotter.setTransmissionData)

        def gated_write(*args: Any) -> None:
            self.wait("create")
            write(*args)

        def gated_send(node: Any) -> Any:
            ongoing = node in snapshotter._transfers  # a transfer's first chunk always goes
            if ongoing and not (folder / "send").exists():
                return None
            data = send(node)
            if isinstance(data, tuple):
                self.sent += 1
            return data

        def counted_receive(data: Any) -> bool:
            self.received += 1
            return bool(receive(data))

        snapshotter._write = gated_write
        snapshotter.getTransmissionData = gated_send
        snapshotter.setTransmissionData = counted_receive


_GATES = _Gates()


def run_load(vault: ReplicatedVault, count: int, concurrency: int) -> dict[str, Any]:
    """``count`` commits from ``concurrency`` threads; latency percentiles and throughput."""
    account, record = os.urandom(st.ACCOUNT_ID_BYTES), os.urandom(st.RECORD_ID_BYTES)
    vault.submit(st.Put(account, record, b"\x00" * 200, 10))
    latencies: list[float] = []
    failures = 0
    lock = threading.Lock()
    per_thread = max(1, count // concurrency)

    def worker() -> None:
        nonlocal failures
        for _ in range(per_thread):
            t0 = time.perf_counter()
            try:
                vault.submit(st.ResetAttempts(account, record))
            except (NotLeaderError, CommitTimeoutError):
                with lock:
                    failures += 1
                continue
            with lock:
                latencies.append(time.perf_counter() - t0)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    elapsed = time.perf_counter() - start
    latencies.sort()

    def pct(p: float) -> float:
        return (
            latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000 if latencies else 0
        )

    return {
        "commits": len(latencies),
        "failures": failures,
        "seconds": elapsed,
        "commits_per_second": len(latencies) / elapsed if elapsed else 0.0,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
    }


def _puts(vault: ReplicatedVault, count: int, size: int) -> dict[str, Any]:
    """``count`` new deposits from 8 threads; the ids of those acknowledged."""
    done: list[str] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        for _ in range(n):
            account = os.urandom(st.ACCOUNT_ID_BYTES)
            try:
                vault.submit(st.Put(account, os.urandom(st.RECORD_ID_BYTES), os.urandom(size), 5))
            except (NotLeaderError, CommitTimeoutError):
                continue
            with lock:
                done.append(account.hex())

    threads = [threading.Thread(target=worker, args=(count // 8 + (i < count % 8),))
               for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    return {"acknowledged": done}


def _handle(vault: ReplicatedVault, request: dict[str, Any]) -> dict[str, Any]:
    op = request.get("op")
    if op == "status":
        return _status_json(vault)
    if op == "submit":
        try:
            command = command_from_json(request["command"])
            return {"result": _result_json(vault.submit(command, request.get("timeout")))}
        except NotLeaderError as err:
            return {"error": "not_leader", "leader": err.leader_address}
        except CommitTimeoutError:
            return {"error": "timeout"}
        except ValueError:
            return {"error": "invalid"}
    if op == "entry":
        entry = vault.entry_view(bytes.fromhex(request["account"]))
        if entry is None:
            return {"entry": None}
        return {
            "entry": {
                "record": entry.record_id.hex(),
                "attempts": entry.attempts,
                "limit": entry.limit,
                "destroyed": entry.destroyed,
                "sealed": entry.sealed_record.hex(),
            }
        }
    if op == "snapshot":
        vault.force_snapshot()
        return {"ok": True}
    if op == "load":
        return run_load(vault, int(request["count"]), int(request["concurrency"]))
    if op == "puts":
        return _puts(vault, int(request["count"]), int(request.get("size", 600)))
    return {"error": "unknown op"}


@quiet_on_closed_pipe
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--node-id", required=True)
    parser.add_argument("--self", dest="self_address", required=True)
    parser.add_argument("--peers", required=True, help="comma-separated Raft addresses")
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--no-fsync", action="store_true")
    parser.add_argument("--snapshot-min-entries", type=int, default=5000)
    parser.add_argument("--snapshot-chunk-bytes", type=int, default=0)
    parser.add_argument("--join", action="store_true", help="not a member yet: never campaign")
    parser.add_argument("--gate", type=Path, default=None, help="snapshot test gates (_Gates)")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    try:
        secret = bytes.fromhex(os.environ.get(SECRET_ENV, ""))
        peers = [p for p in args.peers.split(",") if p]
        vault = ReplicatedVault(
            RaftConfig(
                node_id=args.node_id,
                self_address=args.self_address,
                peer_addresses=peers,
                data_dir=args.data_dir,
                transport_secret=secret,
                link_key=harness_link_key(secret, args.self_address),
                members=harness_members(secret, sorted({*peers, args.self_address})),
                fsync=not args.no_fsync,
                snapshot_min_entries=args.snapshot_min_entries,
                join=args.join,
            )
        )
    except (RaftStartupError, ValueError) as err:
        print(json.dumps({"error": f"startup: {err}"}), flush=True)
        return 1
    if args.snapshot_chunk_bytes:
        vault.snapshotter.chunk_bytes = args.snapshot_chunk_bytes
    if args.gate is not None:
        _GATES.install(vault.snapshotter, args.gate)
    print(json.dumps({"ready": True}), flush=True)
    try:
        for line in sys.stdin:
            try:
                request = json.loads(line)
            except ValueError:
                print(json.dumps({"error": "bad json"}), flush=True)
                continue
            if request.get("op") == "quit":
                break
            print(json.dumps(_handle(vault, request)), flush=True)
    finally:
        vault.close()
    print(json.dumps({"bye": True}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
