"""`bkv bench vault`: registrations/s, recoveries/s and recovery latency of a vault shard.

Latency is the vault's share of a recovery: the KE1->KE2 round trip (which
commits "attempt +1" through Raft) plus the KE3->deposit round trip (which
commits the reset), each measured around the network call, so the client's
key stretching between them is excluded. The client's Argon2id cost is
measured on its own. Against a cluster it starts itself the benchmark lets
the vault accept the Identity KSF so that client CPU does not cap the
throughput figure; against ``--config`` it uses the production KSF.
"""

from __future__ import annotations

import os
import secrets
import statistics
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bkv_api.v1 import envelope_pb2
from bkv_tools.launcher import LocalCluster
from client_sdk.config import ClientConfig

Printer = Callable[[str], None]
TARGET_P50_MS = 15.0
TARGET_P99_MS = 50.0
TARGET_RECOVERIES_PER_SECOND = 300.0
MAX_FORWARDS_PER_ACCOUNT = 30  # stay under ChatD's per-account burst


@dataclass(frozen=True)
class BenchSettings:
    """How much work to do (all bounded)."""

    accounts: int = 40
    recoveries: int = 400
    clients: int = 8
    sequential_commits: int = 20


class TimingTransport:
    """Wraps the real ChatD transport and records each round trip's duration by type."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self._lock = threading.Lock()
        self._local = threading.local()  # this thread's last KE1->KE2 time
        self.samples: dict[int, list[float]] = defaultdict(list)
        self.recoveries: list[float] = []  # KE1->KE2 + KE3->deposit, paired per thread

    def forward(self, request: Any, token: str) -> bytes:
        start = time.perf_counter()
        try:
            reply: bytes = self._inner.forward(request, token)
            return reply
        finally:
            elapsed = time.perf_counter() - start
            kind = int(request.type)
            with self._lock:
                self.samples[kind].append(elapsed)
                if kind == envelope_pb2.LOGIN_FINISH and hasattr(self._local, "ke2"):
                    self.recoveries.append(self._local.ke2 + elapsed)
            if kind == envelope_pb2.LOGIN_START:
                self._local.ke2 = elapsed

    def clear(self) -> None:
        with self._lock:
            self.samples.clear()
            self.recoveries.clear()

    def close(self) -> None:
        self._inner.close()


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


@contextmanager
def _cluster(
    config_path: Path | None, say: Printer
) -> Iterator[tuple[ClientConfig, LocalCluster | None]]:
    if config_path is not None:
        yield ClientConfig.load(config_path), None
        return
    with tempfile.TemporaryDirectory(prefix="bkv-bench-") as tmp:
        cluster = LocalCluster(Path(tmp) / "cluster", allow_identity_ksf=True)
        say("starting a temporary local cluster (5 nodes, 3 data centers) ...")
        try:
            yield cluster.up(), cluster
        finally:
            cluster.down()


def _cpu_report(cluster: LocalCluster, before: dict[str, float], after: dict[str, float],
                count: int, client_ms: float, say: Printer) -> float:
    """Where the CPU went, per recovery: ChatD, the leader, the followers, the load generator.

    Returns the total, from which the CPU-bound ceiling of this machine follows:
    every process here shares the same cores, so recoveries/s can't exceed
    cores / total CPU per recovery, however many clients run.
    """
    leader = cluster.leader(0)
    groups: dict[str, float] = defaultdict(float)
    for name, seconds in after.items():
        used = seconds - before.get(name, 0.0)
        group = "ChatD" if name.startswith("chatd-") else (
            "leader" if name == leader else "followers")
        groups[group] += used
    parts = ", ".join(f"{g} {groups[g] / count * 1000:.1f} ms" for g in sorted(groups))
    say(f"  cluster CPU per recovery: {parts}")
    total_ms = sum(groups.values()) / count * 1000 + client_ms
    cores = os.cpu_count() or 1
    say(f"  total CPU per recovery incl. the load generator: {total_ms:.1f} ms -> at most "
        f"{cores * 1000 / total_ms:.0f} recoveries/s on {cores} otherwise idle CPUs")
    return total_ms


def run_bench(settings: BenchSettings, *, config_path: Path | None = None,
              say: Printer = print) -> dict[str, float]:
    """Run the benchmark, print the figures, and return them (milliseconds / per second)."""
    from bkv_protocol.ksf import IDENTITY_KSF, PRODUCTION_KSF
    from client_sdk.vault_client import VaultClient
    from client_sdk.vault_transport import ChatDTransport

    figures: dict[str, float] = {}
    ksf_times = []
    for _ in range(3):
        start = time.perf_counter()
        PRODUCTION_KSF.stretch(secrets.token_bytes(64))
        ksf_times.append(time.perf_counter() - start)
    figures["client_ksf_ms"] = statistics.median(ksf_times) * 1000
    say(f"client key stretching ({PRODUCTION_KSF.descriptor}): "
        f"{figures['client_ksf_ms']:.0f} ms per login (client side, not in vault figures)")

    with _cluster(config_path, say) as (config, cluster):
        own = cluster is not None
        ksf = IDENTITY_KSF if own else PRODUCTION_KSF
        transport = TimingTransport(ChatDTransport(config.chatd, config.deadline_seconds))
        local = threading.local()

        def client() -> VaultClient:
            if not hasattr(local, "client"):
                local.client = VaultClient(config, ksf=ksf, transport=transport)
            vault_client: VaultClient = local.client
            return vault_client

        n_accounts = max(settings.accounts, -(-2 * settings.recoveries // MAX_FORWARDS_PER_ACCOUNT))
        accounts = [f"bench-{secrets.token_hex(6)}" for _ in range(n_accounts)]
        password = secrets.token_bytes(16)
        key = secrets.token_bytes(32)

        # Single commit latency: one client, one REGISTER_FINISH at a time.
        seq = accounts[: settings.sequential_commits]
        for account in seq:
            client().register(account, key, password)
        commits = list(transport.samples[envelope_pb2.REGISTER_FINISH])
        figures["commit_p50_ms"] = percentile(commits, 50) * 1000
        say(f"single commit latency (REGISTER_FINISH round trip, sequential, n={len(commits)}):"
            f" p50 {figures['commit_p50_ms']:.1f} ms")

        # Uncontended recovery latency: one client, one recovery at a time.
        transport.clear()
        for i in range(settings.sequential_commits * 2):
            client().recover(seq[i % len(seq)], password)
        solo = list(transport.recoveries)
        figures["solo_recovery_p50_ms"] = percentile(solo, 50) * 1000
        figures["solo_recovery_p99_ms"] = percentile(solo, 99) * 1000
        say(f"recovery latency, one client (KE1->KE2 + KE3->deposit via ChatD, n={len(solo)}): "
            f"p50 {figures['solo_recovery_p50_ms']:.1f} ms (target <= {TARGET_P50_MS:.0f}), "
            f"p99 {figures['solo_recovery_p99_ms']:.1f} ms (target <= {TARGET_P99_MS:.0f})")

        with ThreadPoolExecutor(max_workers=settings.clients) as pool:
            rest = accounts[len(seq):]
            start = time.perf_counter()
            list(pool.map(lambda a: client().register(a, key, password), rest))
            elapsed = time.perf_counter() - start
            if rest:
                figures["registrations_per_s"] = len(rest) / elapsed
                say(f"registrations: {len(rest)} with {settings.clients} clients in "
                    f"{elapsed:.2f}s = {figures['registrations_per_s']:.0f}/s")

            transport.clear()
            work = [accounts[i % len(accounts)] for i in range(settings.recoveries)]

            def recover(account: str) -> None:
                if client().recover(account, password) != key:
                    raise RuntimeError("recovered the wrong key")

            cluster_cpu = cluster.cpu_seconds() if cluster is not None else {}
            start = time.perf_counter()
            cpu_start = time.process_time()
            list(pool.map(recover, work))
            elapsed = time.perf_counter() - start
            cpu = time.process_time() - cpu_start
            if cluster is not None:
                cluster_cpu_after = cluster.cpu_seconds()
        figures["recoveries_per_s"] = len(work) / elapsed
        ke2 = transport.samples[envelope_pb2.LOGIN_START]
        ke3 = transport.samples[envelope_pb2.LOGIN_FINISH]
        per_recovery = list(transport.recoveries)
        figures["recovery_p50_ms"] = percentile(per_recovery, 50) * 1000
        figures["recovery_p99_ms"] = percentile(per_recovery, 99) * 1000
        client_note = "Identity KSF on the client" if own else "production KSF on the client"
        say(f"recoveries: {len(work)} with {settings.clients} clients in {elapsed:.2f}s = "
            f"{figures['recoveries_per_s']:.0f}/s per shard ({client_note}; "
            f"target >= {TARGET_RECOVERIES_PER_SECOND:.0f}/s)")
        figures["client_cpu_ms_per_recovery"] = cpu / len(work) * 1000
        say(f"  the load generator itself used {figures['client_cpu_ms_per_recovery']:.1f} ms "
            f"CPU per recovery on a {os.cpu_count()}-CPU machine it shares with the cluster")
        if cluster is not None:
            figures["total_cpu_ms_per_recovery"] = _cpu_report(
                cluster, cluster_cpu, cluster_cpu_after, len(work),
                figures["client_cpu_ms_per_recovery"], say)
        say(f"recovery latency under {settings.clients} concurrent clients: "
            f"p50 {figures['recovery_p50_ms']:.1f} ms, p99 {figures['recovery_p99_ms']:.1f} ms")
        say(f"  KE1->KE2 p50 {percentile(ke2, 50) * 1000:.1f} ms, "
            f"KE3->deposit p50 {percentile(ke3, 50) * 1000:.1f} ms")
        transport.close()
    return figures

