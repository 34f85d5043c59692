"""Incremental, deduplicated backups: a repository of age-encrypted packs, index and snapshots.

One concept per module: :mod:`.chunker` (content-defined chunking),
:mod:`.keys` (keys derived from the backup key), :mod:`.pack`, :mod:`.index`,
:mod:`.snapshot` (object formats), :mod:`.repo` (sealed objects in storage),
:mod:`.lock`, :mod:`.archiver` (backup), :mod:`.restorer`, :mod:`.checker`,
:mod:`.pruner` (forget and prune). The formats are specified in
docs/repository.md. Backups of the older single-file format in the same
storage are listed, restored and forgotten alongside snapshots.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from client_sdk import backup as single_file
from client_sdk.backup.archive import check_source
from client_sdk.backup.errors import BackupError, BackupNotFound, DamagedBackupError
from client_sdk.keys import BackupKey
from client_sdk.progress import ProgressCallback
from client_sdk.repository import archiver, checker, pruner, restorer
from client_sdk.repository.archiver import BackupResult
from client_sdk.repository.checker import CheckReport
from client_sdk.repository.lock import RepositoryLocked
from client_sdk.repository.pruner import ForgetResult
from client_sdk.repository.repo import CONFIG_NAME, Repository
from client_sdk.repository.restorer import PathNotInSnapshot, RestoreResult
from client_sdk.repository.snapshot import snapshot_name
from client_sdk.storage import open_storage

__all__ = [
    "BackupResult",
    "BackupSummary",
    "CheckReport",
    "ForgetResult",
    "PathNotInSnapshot",
    "Repository",
    "RepositoryLocked",
    "RestoreResult",
    "check",
    "create",
    "forget",
    "list_backups",
    "restore",
]


@dataclass(frozen=True)
class BackupSummary:
    """One line of ``bkv backup list``; ``files`` is None for single-file backups."""

    backup_id: str
    created: datetime
    files: int | None
    size: int
    new_bytes: int
    kind: str


def create(
    src_dir: Path,
    url: str,
    key: BackupKey,
    *,
    s3_endpoint: str | None = None,
    on_skip: Callable[[str, str], None] | None = None,
    progress: ProgressCallback | None = None,
) -> BackupResult:
    """Back up ``src_dir`` into the repository at ``url`` (created on first use).

    Only files whose size, mtime or inode changed since the last backup of the
    same folder are read, and only chunks the repository lacks are uploaded.
    Returns the new snapshot's id and what was stored. Raises ``SourceError``,
    ``WrongKeyError`` (the repository belongs to another key), ``StorageError``.
    """
    check_source(Path(src_dir))  # before the storage folder is created
    repo = Repository.open(url, key, create=True, s3_endpoint=s3_endpoint)
    workers = 4
    return archiver.create(src_dir, repo, on_skip=on_skip, progress=progress, workers=workers)


def list_backups(
    url: str,
    key: BackupKey,
    *,
    s3_endpoint: str | None = None,
    on_damaged: Callable[[str], None] | None = None,
) -> list[BackupSummary]:
    """Snapshots and single-file backups, oldest first.

    A damaged snapshot raises, or with ``on_damaged`` is reported there and left
    out, so one bad object does not hide every other backup.
    """
    repo = Repository.open(url, key, s3_endpoint=s3_endpoint)
    names = repo.storage.names()
    found = [
        BackupSummary(i.backup_id, i.created, None, i.size, i.size, "single-file")
        for i in single_file.list_backups(url, s3_endpoint=s3_endpoint)
    ]
    ids = repo.snapshot_ids(names)
    if ids and CONFIG_NAME in names:
        repo.check_config()
    for snapshot_id in ids:
        try:
            snap = repo.load_snapshot(snapshot_id)
        except DamagedBackupError as err:
            if on_damaged is None:
                raise
            on_damaged(str(err))
            continue
        summary = snap.summary
        found.append(
            BackupSummary(snap.id, snap.time, summary.get("files", 0), summary.get("size", 0),
                          summary.get("new_bytes", 0), "snapshot")
        )  # fmt: skip
    return sorted(found, key=lambda s: s.backup_id)


def restore(
    backup_id: str,
    url: str,
    key: BackupKey,
    dest: Path,
    *,
    path: str | None = None,
    s3_endpoint: str | None = None,
    progress: ProgressCallback | None = None,
) -> RestoreResult:
    """Restore a snapshot, or a single-file backup, by id."""
    storage = open_storage(url, s3_endpoint=s3_endpoint)
    names = set(storage.names())
    repo = Repository(storage, key)
    if snapshot_name(backup_id) in names:
        return restorer.restore(repo, backup_id, dest, path=path, progress=progress)
    if backup_id + single_file.BACKUP_SUFFIX in names:
        if path is not None:
            raise BackupError("--path works with incremental backups only")
        single_file.restore_backup(
            backup_id, key, dest, storage_url=url, s3_endpoint=s3_endpoint, progress=progress
        )
        return RestoreResult()
    single_file.check_destination(Path(dest))
    raise BackupNotFound(f"backup not found: {backup_id} in {storage.url}")


def forget(
    url: str,
    key: BackupKey,
    *,
    ids: list[str] | None = None,
    keep_last: int | None = None,
    s3_endpoint: str | None = None,
) -> ForgetResult:
    """Forget backups (``ids``, or all but the ``keep_last`` newest), then prune unused data.

    Takes the repository alone (``RepositoryLocked`` while a backup runs) and
    deletes nothing while a backup it keeps cannot be read.
    """
    repo = Repository.open(url, key, s3_endpoint=s3_endpoint)
    return pruner.forget(repo, ids=ids, keep_last=keep_last)


def check(
    url: str, key: BackupKey, *, read_data: bool = False, s3_endpoint: str | None = None
) -> CheckReport:
    """Check the repository's structure, or with ``read_data`` every byte of every pack."""
    repo = Repository.open(url, key, s3_endpoint=s3_endpoint)
    return checker.check(repo, read_data=read_data)
