"""Forget snapshots, then prune: delete what no remaining snapshot uses.

Runs under an exclusive lock, so no backup adds packs meanwhile. Packs whose
chunks are all still used stay; packs with none are deleted; packs with some
are repacked (their used chunks copied into new packs). Publication order
keeps the repository valid if prune is killed: new packs, then one new index
naming everything kept, then the old index objects are deleted, and only then
the packs nobody names any more.
"""

from __future__ import annotations

from dataclasses import dataclass

from client_sdk.backup import BACKUP_SUFFIX, MANIFEST_SUFFIX
from client_sdk.backup.errors import BackupError, BackupNotFound
from client_sdk.repository.buffers import PACK_CAPACITY, new_buffer
from client_sdk.repository.index import encode_index, is_index_name, new_index_name
from client_sdk.repository.lock import locked
from client_sdk.repository.pack import PackBuilder, PackEntry, is_pack_name
from client_sdk.repository.repo import CONFIG_NAME, Repository
from client_sdk.repository.snapshot import SNAPSHOT_ID_RE, Snapshot, snapshot_name

ABANDONED_AFTER = 3600.0  # an unfinished upload this old has no live writer


@dataclass
class ForgetResult:
    removed: list[str]
    kept: int = 0
    deleted_packs: int = 0
    repacked_packs: int = 0
    abandoned_uploads: int = 0


def forget(
    repo: Repository, *, ids: list[str] | None = None, keep_last: int | None = None
) -> ForgetResult:
    """Remove the named snapshots (or all but the newest ``keep_last``), then prune."""
    if (ids is None) == (keep_last is None):
        raise BackupError("give snapshot ids or --keep-last N")
    if keep_last is not None and keep_last < 0:
        raise BackupError("--keep-last must be 0 or more")
    if CONFIG_NAME in repo.storage.names():
        repo.check_config()
    with locked(repo, exclusive=True):
        names = repo.storage.names()
        present = set(names)
        all_ids = repo.snapshot_ids(names)
        if ids is not None:
            for sid in ids:
                legacy = sid + BACKUP_SUFFIX in present
                if not SNAPSHOT_ID_RE.fullmatch(sid) or (sid not in all_ids and not legacy):
                    raise BackupNotFound(f"backup not found: {sid} in {repo.url}")
            doomed = list(dict.fromkeys(ids))
        else:
            assert keep_last is not None
            doomed = all_ids[: max(0, len(all_ids) - keep_last)]
        # Every backup that stays must be readable before anything is deleted:
        # prune keeps only what they name.
        kept = repo.load_snapshots([s for s in all_ids if s not in doomed])
        for sid in doomed:
            if sid in all_ids:
                repo.storage.delete(snapshot_name(sid))
            else:  # a backup of the single-file format
                repo.storage.delete(sid + MANIFEST_SUFFIX)
                repo.storage.delete(sid + BACKUP_SUFFIX)
        result = ForgetResult(doomed, kept=len(kept))
        prune(repo, result, kept)
        result.abandoned_uploads = repo.storage.remove_abandoned(ABANDONED_AFTER)
    return result


def prune(repo: Repository, result: ForgetResult, kept: list[Snapshot]) -> None:
    """Delete or repack what the ``kept`` snapshots do not use (exclusive lock held)."""
    names = repo.storage.names()
    index = repo.load_index(names)
    needed: set[bytes] = set()
    for snap in kept:
        for node in snap.tree:
            needed.update(node.chunks)
    keep: dict[str, list[PackEntry]] = {}
    partial: dict[str, list[PackEntry]] = {}
    drop: list[str] = [n for n in names if is_pack_name(n) and n not in index.packs]
    for pack in sorted(index.packs):
        entries = index.packs[pack]
        used = []
        for entry in entries:
            if entry.chunk_id in needed:
                needed.discard(entry.chunk_id)  # a second copy elsewhere is not needed
                used.append(entry)
        if len(used) == len(entries):
            keep[pack] = entries
        elif used:
            partial[pack] = used
        else:
            drop.append(pack)
    buffer = new_buffer(PACK_CAPACITY)
    builder = PackBuilder(buffer)
    for pack, used in sorted(partial.items()):
        plain, _entries = repo.read_pack(pack)
        view = memoryview(plain)
        for entry in used:
            builder.add(entry.chunk_id, view[entry.offset : entry.offset + entry.length])
            if builder.full():
                keep[builder.name] = list(builder.entries)
                repo.write_pack(builder.name, builder.finish())
                builder = PackBuilder(buffer)
        drop.append(pack)
    if builder.entries:
        keep[builder.name] = list(builder.entries)
        repo.write_pack(builder.name, builder.finish())
    old_indexes = [n for n in names if is_index_name(n)]
    if not drop and len(old_indexes) <= 1:
        return
    if keep:
        repo.write(new_index_name(), encode_index(keep))
    for name in old_indexes:
        repo.storage.delete(name)
    for name in drop:
        repo.storage.delete(name)
    result.deleted_packs = len(drop) - len(partial)
    result.repacked_packs = len(partial)
