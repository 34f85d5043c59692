"""`bkv bench shard`: a five-node shard holding N deposits -- memory, disk, restarts,
snapshots under load, catch-up of an empty member, recoveries per second.

The shard is a real local cluster (``bkv cluster``: five vault processes in three
data centers, ChatD in front). A few hundred accounts are registered through
the whole protocol; the rest are bulk-loaded: each is the sealed record of a
real registration, re-sealed by the fleet's HSM for its own account id and
record id, inserted with exactly the entry a ``Put`` writes (attempts 0, the
configured limit), into one node's state database while the shard is stopped
and copied to the others, so every node holds the same state at the same
Raft position. Everything after that runs through the real cluster.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bkv_api.v1 import envelope_pb2
from bkv_tools.bench_vault import TimingTransport, percentile
from bkv_tools.launcher import LocalCluster, node_status

Printer = Callable[[str], None]
BULK_BATCH = 5000
TARGETS = {"rss_mib_per_node_at_10m": 1024.0, "restart_s": 10.0,
           "commit_p99_ms_during_snapshot": 50.0, "catchup_s": 60.0,
           "recoveries_per_s": 300.0}


@dataclass(frozen=True)
class ShardBenchSettings:
    """How much work to do (all bounded)."""

    deposits: int = 1_000_000
    real_accounts: int = 200
    clients: int = 8
    recoveries: int = 400
    timeout_s: float = 900.0  # every wait below gives up after this


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _disk_mib(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2**20


class _Shard:
    """The benchmark's view of the local cluster: configs, data dirs, pids, status."""

    def __init__(self, cluster: LocalCluster, timeout: float) -> None:
        from vault_node.config import NodeConfig

        self.cluster = cluster
        self.timeout = timeout
        self.nodes = cluster.nodes(0)
        self.configs = {n: NodeConfig.load(cluster.config_path(n)) for n in self.nodes}

    def data_dir(self, node: str) -> Path:
        return Path(self.configs[node].data_dir)

    def status(self, node: str) -> Any:
        return node_status(self.cluster.node(node)["grpc_address"], tls=self.cluster.vault_tls)

    def leader(self) -> str:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            leader = self.cluster.leader(0)
            if leader:
                return leader
            time.sleep(0.1)
        raise RuntimeError("no leader")

    def pid(self, node: str) -> int:
        pid = self.cluster._pid(node)
        if pid is None:
            raise RuntimeError(f"{node} is not running")
        return pid

    def wait_caught_up(self, node: str, accounts: int) -> None:
        """Until ``node`` serves, holds ``accounts`` deposits and applied the leader's commit."""
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            mine = self.status(node)
            leader = self.status(self.leader())
            if (mine is not None and leader is not None and mine.healthy
                    and mine.accounts == accounts
                    and mine.last_applied >= leader.commit_index > 0):
                return
            time.sleep(0.05)
        raise RuntimeError(f"{node} did not catch up within {self.timeout:.0f} s")

    def digests_equal(self) -> bool:
        """Once every node applied the same index (bounded wait): one digest?"""
        deadline = time.monotonic() + 30
        while True:
            views = [self.status(n) for n in self.nodes]
            applied = {v.last_applied for v in views if v is not None}
            if (len(applied) == 1 and None not in views) or time.monotonic() > deadline:
                return len({v.state_digest for v in views if v is not None}) == 1 == len(applied)
            time.sleep(0.1)

    def snapshot_now(self, node: str, *, local: bool = False) -> None:
        subprocess.run(
            [sys.executable, "-m", "vault_node.cli", "snapshot", "now", "--config",
             str(self.cluster.config_path(node)), *(["--local"] if local else [])],
            check=True, capture_output=True, timeout=60)

    def snapshot_everywhere(self) -> None:
        """Every node snapshots, so whoever leads sends a snapshot (holding the bulk-loaded
        rows) to a member that needs one, never a log that does not."""
        before = {n: self.status(n).snapshots_written for n in self.nodes}
        for node in self.nodes:
            self.snapshot_now(node, local=True)
        deadline = time.monotonic() + self.timeout
        while any(self.status(n).snapshots_written <= before[n] for n in self.nodes):
            if time.monotonic() > deadline:
                raise RuntimeError("the nodes did not snapshot in time")
            time.sleep(0.2)


def bulk_load(shard: _Shard, count: int, say: Printer) -> float:
    """Add ``count`` deposits to every node of the stopped shard; returns seconds taken."""
    from vault_node.hsm.fleet import FleetHsm, new_record_id
    from vault_node.hsm.pkcs11 import load_master_key
    from vault_node.state import AccountEntry, VaultState, entry_hash
    from vault_node.storage.sqlite_store import DB_FILE, SqliteStore

    start = time.perf_counter()
    for node in shard.nodes:
        if (shard.data_dir(node) / "raft.snapshot").exists():
            # a snapshot sent to a lagging member would not hold the bulk-loaded rows
            raise RuntimeError(f"{node} already took a snapshot: bulk-load a fresh shard only")
    first = shard.nodes[0]
    cfg = shard.configs[first]
    hsm = FleetHsm.open_fleet(load_master_key(cfg), cfg.fleet_file.read_bytes())
    store = SqliteStore(shard.data_dir(first) / DB_FILE, fsync=False)
    state = VaultState(store)
    real = next(iter(store.items()), None)
    if real is None:
        raise RuntimeError("no registered account to copy a record from")
    account_id, entry = real
    plaintext = hsm.open_record(account_id, entry.record_id, entry.sealed_record)
    total, done = store.digest_sum(), 0
    prefix = secrets.token_hex(4)
    while done < count:
        rows = []
        for i in range(done, min(count, done + BULK_BATCH)):
            aid, rid = hsm.account_id(f"bulk-{prefix}-{i}"), new_record_id()
            row = AccountEntry(rid, hsm.seal_record(aid, rid, plaintext), 0, entry.limit)
            total += entry_hash(aid, row)
            rows.append((aid, row))
        store.insert_rows(rows)
        done += len(rows)
        if done % 200_000 < BULK_BATCH:
            say(f"  bulk-loaded {done} of {count} deposits")
    store.set_digest_sum(total % (1 << 256))
    store.commit(durable=True)
    digest, accounts = state.digest(), len(state)
    store.close()
    for other in shard.nodes[1:]:
        target = shard.data_dir(other) / DB_FILE
        for suffix in ("-wal", "-shm"):
            Path(str(target) + suffix).unlink(missing_ok=True)
        shutil.copyfile(shard.data_dir(first) / DB_FILE, target.with_name(DB_FILE + ".bulk"))
        os.replace(target.with_name(DB_FILE + ".bulk"), target)
        check = SqliteStore(target, fsync=False)
        if VaultState(check).digest() != digest:
            raise RuntimeError("a copied state database differs")
        check.close()
    say(f"  {accounts} deposits on every node, digest {digest.hex()[:16]}")
    return time.perf_counter() - start


def run_shard_bench(settings: ShardBenchSettings, say: Printer = print) -> dict[str, float]:
    """Run every step, print the figures, return them (keys name their unit)."""
    from bkv_protocol.ksf import IDENTITY_KSF
    from client_sdk.vault_client import VaultClient
    from client_sdk.vault_transport import ChatDTransport

    figures: dict[str, float] = {"deposits": float(settings.deposits)}
    with tempfile.TemporaryDirectory(prefix="bkv-bench-shard-") as tmp:
        cluster = LocalCluster(Path(tmp) / "cluster", allow_identity_ksf=True)
        say("starting a local shard (5 nodes, 3 data centers) ...")
        config = cluster.up()
        shard = _Shard(cluster, settings.timeout_s)
        transport = TimingTransport(ChatDTransport(config.chatd, config.deadline_seconds))
        local = threading.local()

        def client() -> VaultClient:
            if not hasattr(local, "client"):
                local.client = VaultClient(config, ksf=IDENTITY_KSF, transport=transport)
            vault_client: VaultClient = local.client
            return vault_client

        accounts = [f"real-{secrets.token_hex(6)}" for _ in range(settings.real_accounts)]
        password, key = secrets.token_bytes(16), secrets.token_bytes(32)
        with ThreadPoolExecutor(settings.clients) as pool:
            list(pool.map(lambda a: client().register(a, key, password), accounts))
        rss_small = max(_rss_mib(shard.pid(n)) for n in shard.nodes)
        say(f"registered {len(accounts)} accounts through the protocol; "
            f"node RSS {rss_small:.0f} MiB")
        try:
            cluster.down()
            bulk = max(0, settings.deposits - len(accounts))
            say(f"bulk-loading {bulk} deposits (sealed by the fleet HSM) ...")
            figures["bulk_load_s"] = bulk_load(shard, bulk, say)
            total = len(accounts) + bulk
            start = time.perf_counter()
            cluster.up()
            for node in shard.nodes:
                shard.wait_caught_up(node, total)
            figures["cold_start_s"] = time.perf_counter() - start
            shard.snapshot_everywhere()
            _memory_and_disk(shard, total, rss_small, figures, say)
            _restarts(shard, total, figures, say)
            _snapshot_under_load(shard, client, accounts, password, transport, figures, say)
            _catch_up(shard, total, figures, say)
            _recoveries(client, accounts, password, key, transport, settings, figures, say)
            equal = shard.digests_equal()
            figures["digests_equal"] = float(equal)
            say(f"state digests equal on all {len(shard.nodes)} nodes: {equal}")
        finally:
            transport.close()
            cluster.down()
    return figures


def _memory_and_disk(shard: _Shard, total: int, rss_small: float, figures: dict[str, float],
                     say: Printer) -> None:
    rss = [_rss_mib(shard.pid(n)) for n in shard.nodes]
    disk = [_disk_mib(shard.data_dir(n)) for n in shard.nodes]
    figures["rss_mib_per_node"] = max(rss)
    figures["rss_mib_per_node_small"] = rss_small
    slope = max(0.0, max(rss) - rss_small) * 2**20 / max(1, total)
    figures["rss_bytes_per_deposit"] = slope
    figures["rss_mib_per_node_at_10m_projected"] = rss_small + slope * 10_000_000 / 2**20
    figures["disk_mib_per_node"] = max(disk)
    figures["disk_bytes_per_deposit"] = max(disk) * 2**20 / max(1, total)
    say(f"node RSS: max {max(rss):.0f} MiB (min {min(rss):.0f}) with {total} deposits, "
        f"{rss_small:.0f} MiB with a few hundred; slope {slope:.1f} B/deposit -> "
        f"{figures['rss_mib_per_node_at_10m_projected']:.0f} MiB "
        f"projected at 10 M (target <= {TARGETS['rss_mib_per_node_at_10m']:.0f})")
    say(f"disk per node: {max(disk):.0f} MiB = {figures['disk_bytes_per_deposit']:.0f} B/deposit")


def _restarts(shard: _Shard, total: int, figures: dict[str, float], say: Printer) -> None:
    leader = shard.leader()
    follower = next(n for n in shard.nodes if n != leader)
    for name, node in (("follower", follower), ("leader", leader)):
        shard.cluster.kill_node(node)  # SIGKILL: a crash, not a clean stop
        start = time.perf_counter()
        shard.cluster.restart_node(node)
        shard.wait_caught_up(node, total)
        figures[f"restart_{name}_s"] = time.perf_counter() - start
        say(f"restart of the {name} after SIGKILL, until it serves caught up: "
            f"{figures[f'restart_{name}_s']:.1f} s (target <= {TARGETS['restart_s']:.0f})")


def _snapshot_under_load(shard: _Shard, client: Callable[[], Any], accounts: list[str],
                         password: bytes, transport: TimingTransport,
                         figures: dict[str, float], say: Printer) -> None:
    """KE1->KE2 round trips (each commits a counted attempt) before and during a snapshot."""
    leader = shard.leader()

    def commits(until: Callable[[], bool], limit: int, minimum: int = 5) -> list[float]:
        transport.clear()
        i = 0  # at least ``minimum``: a small shard's snapshot may be done at once
        while (i < minimum or not until()) and i < limit:
            client().recover(accounts[i % len(accounts)], password)
            i += 1
        return list(transport.samples[envelope_pb2.LOGIN_START])

    base = commits(lambda: False, 100)
    before = shard.status(leader).snapshots_written
    start = time.perf_counter()
    shard.snapshot_now(leader)
    during = commits(lambda: shard.status(leader).snapshots_written > before, 100_000)
    took = time.perf_counter() - start
    figures["commit_p50_ms"] = percentile(base, 50) * 1000
    figures["commit_p99_ms"] = percentile(base, 99) * 1000
    figures["commit_p50_ms_during_snapshot"] = percentile(during, 50) * 1000
    figures["commit_p99_ms_during_snapshot"] = percentile(during, 99) * 1000
    figures["snapshot_s"] = took
    say(f"commit latency (KE1->KE2, one counted attempt committed), n={len(base)}: "
        f"p50 {figures['commit_p50_ms']:.1f} ms, p99 {figures['commit_p99_ms']:.1f} ms")
    say(f"  while the leader took a snapshot ({took:.1f} s, n={len(during)}): "
        f"p50 {figures['commit_p50_ms_during_snapshot']:.1f} ms, "
        f"p99 {figures['commit_p99_ms_during_snapshot']:.1f} ms "
        f"(target <= {TARGETS['commit_p99_ms_during_snapshot']:.0f})")
    snap = shard.data_dir(leader) / "raft.snapshot"
    if snap.exists():
        figures["snapshot_mib"] = snap.stat().st_size / 2**20


def _catch_up(shard: _Shard, total: int, figures: dict[str, float], say: Printer) -> None:
    """An empty member (its data dir wiped) catches up from the leader by snapshot install."""
    leader = shard.leader()
    node = next(n for n in reversed(shard.nodes) if n != leader)
    shard.cluster.kill_node(node)
    for item in shard.data_dir(node).iterdir():
        if item.is_dir():
            shutil.rmtree(item)
        else:
            item.unlink()
    start = time.perf_counter()
    shard.cluster.restart_node(node)
    shard.wait_caught_up(node, total)
    figures["catchup_s"] = time.perf_counter() - start
    say(f"catch-up of an empty member ({total} deposits, snapshot install): "
        f"{figures['catchup_s']:.1f} s (target <= {TARGETS['catchup_s']:.0f})")


def _recoveries(client: Callable[[], Any], accounts: list[str], password: bytes, key: bytes,
                transport: TimingTransport, settings: ShardBenchSettings,
                figures: dict[str, float], say: Printer) -> None:
    transport.clear()
    work = [accounts[i % len(accounts)] for i in range(settings.recoveries)]

    def recover(account: str) -> None:
        if client().recover(account, password) != key:
            raise RuntimeError("recovered the wrong key")

    with ThreadPoolExecutor(settings.clients) as pool:
        start = time.perf_counter()
        list(pool.map(recover, work))
        elapsed = time.perf_counter() - start
    per = list(transport.recoveries)
    figures["recoveries_per_s"] = len(work) / elapsed
    figures["recovery_p50_ms"] = percentile(per, 50) * 1000
    figures["recovery_p99_ms"] = percentile(per, 99) * 1000
    say(f"recoveries with {settings.clients} clients: {figures['recoveries_per_s']:.0f}/s "
        f"(target >= {TARGETS['recoveries_per_s']:.0f}), p50 {figures['recovery_p50_ms']:.1f} ms,"
        f" p99 {figures['recovery_p99_ms']:.1f} ms")


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="bkv bench shard")
    parser.add_argument("--deposits", type=int, default=1_000_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    quiet = args.json
    try:
        figures = run_shard_bench(ShardBenchSettings(deposits=args.deposits),
                                  say=(lambda _s: None) if quiet else print)
    except (RuntimeError, OSError, subprocess.SubprocessError) as err:
        print(f"bkv bench shard: {err}", file=sys.stderr)
        return 1
    if quiet:
        print(json.dumps({k: round(v, 3) for k, v in figures.items()}, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
