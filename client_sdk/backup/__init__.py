"""Folder backups: a tar stream, encrypted as an age file, streamed to storage.

Create: a producer thread packs the folder as a streaming tar into an OS pipe;
the calling thread age-encrypts the pipe straight into a storage writer, so
memory stays flat for any backup size. The object ``<id>.age`` is published
only once complete, then its public manifest ``<id>.json`` (time, size,
recipient; the file list stays inside the encrypted tar).

Restore: the reverse pipeline extracts into a private temporary folder beside
the destination, which is renamed into place only after the whole file
authenticated (age releases only authenticated chunks, and the final chunk
proves nothing was cut off). Any failure removes the temporary folder, so the
destination is never created half-filled. Extraction uses tarfile's ``data``
filter made stricter: no absolute paths, no ``..``, no devices, no links
leaving the root. The pipeline itself lives in :mod:`client_sdk.backup.archive`.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO, cast

from client_sdk import age
from client_sdk.backup.archive import Worker, check_source, extract, pipe, scan, write_tar
from client_sdk.backup.errors import (
    BackupError,
    BackupNotFound,
    DamagedBackupError,
    DestinationError,
    InvalidRecipientError,
    SourceError,
    WrongKeyError,
)
from client_sdk.keys import BackupKey
from client_sdk.progress import ProgressCallback
from client_sdk.storage import ObjectNotFound, Storage, open_storage, split_object_url

__all__ = [
    "BACKUP_ID_RE",
    "BackupError",
    "BackupInfo",
    "BackupNotFound",
    "DamagedBackupError",
    "DestinationError",
    "InvalidRecipientError",
    "SourceError",
    "WrongKeyError",
    "create_backup",
    "list_backups",
    "new_backup_id",
    "restore_backup",
]

BACKUP_SUFFIX = ".age"
MANIFEST_SUFFIX = ".json"
MANIFEST_FORMAT = "bkv-backup/v1"
MAX_MANIFEST_BYTES = 64 * 1024
BACKUP_ID_RE = re.compile(r"\d{8}T\d{6}Z-[0-9a-f]{6}")
_ID_TIME = "%Y%m%dT%H%M%SZ"


@dataclass(frozen=True)
class BackupInfo:
    """What a manifest says about one backup (public data only)."""

    backup_id: str
    created: datetime
    size: int
    recipient: str


def new_backup_id(now: datetime | None = None) -> str:
    """Time-sortable, unguessable-enough id: UTC second + 24 random bits."""
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    return f"{moment.strftime(_ID_TIME)}-{secrets.token_hex(3)}"


def create_backup(
    src_dir: Path,
    storage_url: str,
    recipient: str,
    *,
    progress: ProgressCallback | None = None,
    s3_endpoint: str | None = None,
    on_skip: Callable[[str, str], None] | None = None,
) -> str:
    """Back up ``src_dir`` to ``storage_url`` for ``recipient`` ("age1..."); return the id.

    Entries tar can't restore safely (sockets, devices, symlinks pointing out
    of the folder) are skipped and reported to ``on_skip(path, reason)``.
    """
    try:
        parsed = age.X25519Recipient.parse(recipient)
    except age.KeyEncodingError as err:
        raise InvalidRecipientError(str(err)) from None
    root = check_source(Path(src_dir))
    entries, estimate = scan(root, on_skip or (lambda _path, _reason: None))
    storage = open_storage(storage_url, create=True, s3_endpoint=s3_endpoint)
    backup_id = new_backup_id()
    with storage.open_writer(backup_id + BACKUP_SUFFIX) as writer:
        with pipe() as (rfile, wfile):
            producer = Worker(write_tar, root, entries, wfile, progress, estimate)
            try:
                age.encrypt(rfile, cast(BinaryIO, writer), [parsed])
            finally:
                rfile.close()  # unblocks a producer stuck on a full pipe
                producer.join()
        producer.reraise()
        size = writer.commit()
    created = datetime.strptime(backup_id[:16], _ID_TIME).replace(tzinfo=UTC)
    manifest = {
        "format": MANIFEST_FORMAT,
        "id": backup_id,
        "created": created.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "size": size,
        "recipient": str(parsed),
    }
    storage.write_small(backup_id + MANIFEST_SUFFIX, json.dumps(manifest, indent=2).encode())
    return backup_id


def list_backups(storage_url: str, *, s3_endpoint: str | None = None) -> list[BackupInfo]:
    """Every complete backup in the storage, oldest first."""
    storage = open_storage(storage_url, s3_endpoint=s3_endpoint)
    names = set(storage.names())
    found: list[BackupInfo] = []
    for name in sorted(names):
        backup_id = name.removesuffix(MANIFEST_SUFFIX)
        complete = backup_id + BACKUP_SUFFIX in names
        if name.endswith(MANIFEST_SUFFIX) and BACKUP_ID_RE.fullmatch(backup_id) and complete:
            info = _read_manifest(storage, backup_id)
            if info is not None:
                found.append(info)
    return found


def restore_backup(
    url_or_id: str,
    key: BackupKey,
    dest_dir: Path,
    *,
    progress: ProgressCallback | None = None,
    storage_url: str | None = None,
    s3_endpoint: str | None = None,
) -> None:
    """Restore a backup (its URL, or its id in ``storage_url``) into ``dest_dir``.

    ``dest_dir`` must be absent or empty; it is created (mode 0700 if new)
    only when the whole backup authenticated and extracted.
    """
    dest = Path(dest_dir)
    check_destination(dest)
    if storage_url is not None:
        location, name = storage_url, url_or_id
    elif BACKUP_ID_RE.fullmatch(url_or_id):
        raise BackupError(f"{url_or_id} is a backup id: name its storage with --from URL")
    else:
        location, name = split_object_url(url_or_id)
    name = name if name.endswith(BACKUP_SUFFIX) else name + BACKUP_SUFFIX
    storage = open_storage(location, s3_endpoint=s3_endpoint)
    try:
        reader = storage.open_reader(name)
    except ObjectNotFound:
        label = name.removesuffix(BACKUP_SUFFIX)
        raise BackupNotFound(f"backup not found: {label} in {storage.url}") from None
    temp = dest.parent / f".{dest.name}.restore-{secrets.token_hex(6)}"
    try:
        temp.mkdir(mode=0o700)
    except OSError as err:
        reader.close()
        raise DestinationError(f"can't write in {dest.parent}: {err.strerror}") from None
    try:
        with reader:
            extract(reader, key, temp, progress)
        mode = stat.S_IMODE(dest.stat().st_mode) if dest.is_dir() else 0o700
        temp.chmod(mode)
        os.rename(temp, dest)  # replaces dest only if it is still an empty folder
    except OSError as err:
        raise DestinationError(f"can't restore into {dest}: {err.strerror or err}") from None
    finally:
        shutil.rmtree(temp, ignore_errors=True)


# --- helpers --------------------------------------------------------------------------------------


def check_destination(dest: Path) -> None:
    """Refuse before downloading anything: restores never merge into existing data."""
    if dest.is_symlink() or (dest.exists() and not dest.is_dir()):
        raise DestinationError(f"{dest} exists and is not a folder")
    if dest.is_dir():
        try:
            if any(dest.iterdir()):
                raise DestinationError(f"{dest} is not empty")
        except OSError as err:
            raise DestinationError(f"can't use {dest}: {err.strerror}") from None
    elif not dest.parent.is_dir():
        raise DestinationError(f"folder {dest.parent} does not exist")


def _read_manifest(storage: Storage, backup_id: str) -> BackupInfo | None:
    """Parse one manifest; a malformed one hides its backup from the listing."""
    try:
        raw = storage.read_small(backup_id + MANIFEST_SUFFIX, MAX_MANIFEST_BYTES)
        data = json.loads(raw)
        created = datetime.strptime(data["created"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        size, recipient = data["size"], data["recipient"]
    except (ObjectNotFound, ValueError, KeyError, TypeError):
        return None
    if data.get("format") != MANIFEST_FORMAT or data.get("id") != backup_id:
        return None
    if not isinstance(size, int) or not isinstance(recipient, str):
        return None
    return BackupInfo(backup_id, created, size, recipient)
