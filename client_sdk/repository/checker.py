"""Check: is every snapshot restorable? Structure by default, every byte with ``read_data``.

Structure: the config, every index and snapshot open under the key and parse;
every chunk a snapshot names is in the index; every pack the index names is in
storage. Data: every pack is fetched and opened (age authenticates it), its
trailer must agree with the index, and every chunk must match its keyed id.
Packs no index names (left by a killed backup) are reported, not errors.
"""

from __future__ import annotations

import hmac
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from client_sdk.backup.errors import DamagedBackupError
from client_sdk.repository.pack import PackEntry, is_pack_name
from client_sdk.repository.repo import CONFIG_NAME, Repository
from client_sdk.storage import ObjectNotFound


@dataclass
class CheckReport:
    snapshots: int = 0
    packs: int = 0
    chunks: int = 0
    unindexed_packs: int = 0
    read_bytes: int = 0
    errors: list[str] = field(default_factory=list)


def check(repo: Repository, *, read_data: bool = False, workers: int = 2) -> CheckReport:
    """Collect every problem instead of stopping at the first."""
    report = CheckReport()
    names = repo.storage.names()
    if CONFIG_NAME in names:
        repo.check_config()  # a wrong key stops here, with its own error
    index = repo.load_index(names)
    report.packs, report.chunks = len(index.packs), len(index.chunks)
    present = set(names)
    for name in sorted(index.packs):
        if name not in present:
            report.errors.append(f"{name} is missing (named by the index)")
    report.unindexed_packs = sum(1 for n in names if is_pack_name(n) and n not in index.packs)
    for snapshot_id in repo.snapshot_ids(names):
        try:
            snap = repo.load_snapshot(snapshot_id)
        except (DamagedBackupError, ObjectNotFound) as err:
            report.errors.append(str(err))
            continue
        report.snapshots += 1
        lost = sum(1 for n in snap.tree for c in n.chunks if c not in index)
        if lost:
            report.errors.append(f"backup {snapshot_id} names {lost} chunks that are in no pack")
    if read_data:
        wanted = [n for n in sorted(index.packs) if n in present]
        with ThreadPoolExecutor(workers) as pool:
            for problem, size in pool.map(lambda n: _read_pack(repo, n, index.packs[n]), wanted):
                report.read_bytes += size
                if problem:
                    report.errors.append(problem)
    return report


def _read_pack(repo: Repository, name: str, listed: list[PackEntry]) -> tuple[str | None, int]:
    try:
        plain, entries = repo.read_pack(name)
    except DamagedBackupError as err:
        return str(err), 0
    view = memoryview(plain)
    by_offset = {(e.chunk_id, e.offset, e.length) for e in entries}
    if any((e.chunk_id, e.offset, e.length) not in by_offset for e in listed):
        return f"{name} does not hold what the index says", len(plain)
    for entry in entries:
        data = view[entry.offset : entry.offset + entry.length]
        if not hmac.compare_digest(repo.keys.chunk_id(data), entry.chunk_id):
            return f"{name} is damaged: a chunk does not match its id", len(plain)
    return None, len(plain)
