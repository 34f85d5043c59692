"""The backup pipeline: folder -> tar stream -> age, and age -> tar -> folder, with threads.

Create: a producer thread packs the folder as a streaming tar into an OS pipe
while the caller age-encrypts the pipe into a storage writer. Restore: a
worker thread decrypts into a pipe while the caller extracts it. Memory stays
flat whatever the size, and each stage's error is judged only after both
stages ended, so an early end of one is never mistaken for success.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tarfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, cast

from client_sdk import age
from client_sdk.backup.errors import (
    DamagedBackupError,
    DestinationError,
    SourceError,
    WrongKeyError,
)
from client_sdk.keys import BackupKey
from client_sdk.progress import CountingStream, ProgressCallback

TAR_BUFSIZE = 256 * 1024
_BLOCK = tarfile.BLOCKSIZE


def check_source(root: Path) -> Path:
    """Fail early, before any storage is touched, when the folder can't be backed up."""
    try:
        info = root.stat()
    except FileNotFoundError:
        raise SourceError(f"folder to back up not found: {root}") from None
    except OSError as err:
        raise SourceError(f"can't read {root}: {err.strerror}") from None
    if not stat.S_ISDIR(info.st_mode):
        raise SourceError(f"not a folder: {root}")
    if not os.access(root, os.R_OK | os.X_OK):
        raise SourceError(f"can't read {root}: Permission denied")
    return root


def scan(root: Path, on_skip: Callable[[str, str], None]) -> tuple[list[str], int]:
    """Relative paths to archive (parents before children) and the tar size estimate."""
    entries: list[str] = []
    estimate = 2 * _BLOCK
    stack = [""]
    while stack:
        rel = stack.pop()
        try:
            with os.scandir(root / rel if rel else root) as it:
                children = sorted(it, key=lambda e: e.name, reverse=True)
        except OSError as err:
            raise SourceError(f"can't read {root / rel}: {err.strerror}") from None
        for entry in children:
            path = f"{rel}/{entry.name}" if rel else entry.name
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError as err:
                raise SourceError(f"can't read {root / path}: {err.strerror}") from None
            reason = skip_reason(root, path, info.st_mode)
            if reason:
                on_skip(str(root / path), reason)
                continue
            entries.append(path)
            data = -(-info.st_size // _BLOCK) * _BLOCK if stat.S_ISREG(info.st_mode) else 0
            estimate += 3 * _BLOCK + data
            if stat.S_ISDIR(info.st_mode):
                stack.append(path)
    entries.sort()  # "a" < "a/b": every folder precedes its content
    return entries, estimate


def skip_reason(root: Path, rel: str, mode: int) -> str | None:
    """Why an entry can't be in a backup that restores safely, or None to keep it."""
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    if stat.S_ISLNK(mode):
        try:
            target = os.readlink(root / rel)
            real_root = os.path.realpath(root)
            resolved = os.path.realpath(root / rel)
        except OSError as err:
            raise SourceError(f"can't read {root / rel}: {err.strerror}") from None
        # The same rule restore enforces: links stay relative and inside the folder.
        if os.path.isabs(target) or os.path.commonpath([real_root, resolved]) != real_root:
            return "symbolic link pointing outside the folder"
        return None
    return "not a regular file, folder or link"


def _anonymous(info: tarfile.TarInfo) -> tarfile.TarInfo:
    """Drop owner names and ids: they are not needed to restore and identify the user."""
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def write_tar(
    root: Path,
    entries: list[str],
    wfile: BinaryIO,
    progress: ProgressCallback | None,
    estimate: int,
) -> None:
    """Producer stage: stream the entries as tar into the pipe, then close it."""
    out = cast(BinaryIO, CountingStream(wfile, progress, estimate)) if progress else wfile
    try:
        with tarfile.open(fileobj=out, mode="w|", bufsize=TAR_BUFSIZE) as tar:
            for rel in entries:
                try:
                    tar.add(root / rel, arcname=rel, recursive=False, filter=_anonymous)
                except BrokenPipeError:
                    raise
                except OSError as err:
                    reason = err.strerror or "it changed while being backed up"
                    raise SourceError(f"can't read {root / rel}: {reason}") from None
    finally:
        wfile.close()


def _strict_filter(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo | None:
    """tarfile's "data" filter, plus: absolute names and ".." are refused, not rewritten."""
    name = member.name.replace(os.sep, "/")
    if name.startswith("/") or os.path.isabs(member.name):
        raise tarfile.AbsolutePathError(member)
    if ".." in name.split("/"):
        raise tarfile.OutsideDestinationError(member, os.path.join(dest, member.name))
    return tarfile.data_filter(member, dest)


def _decrypt(reader: BinaryIO, key: BackupKey, wfile: BinaryIO) -> None:
    """Worker stage; closing the pipe on any outcome lets the extractor see EOF."""
    try:
        age.decrypt(reader, wfile, [key.identity()])
    finally:
        wfile.close()


def extract(reader: Any, key: BackupKey, temp: Path, progress: ProgressCallback | None) -> None:
    """Decrypt in a worker thread, untar in this one; judge the outcome only after both ended."""
    source = CountingStream(reader, progress, reader.size) if progress else reader
    stage_error: Exception | None = None
    with pipe() as (rfile, wfile):
        worker = Worker(_decrypt, source, key, wfile)
        try:
            with tarfile.open(fileobj=rfile, mode="r|") as tar:
                tar.extractall(temp, filter=_strict_filter)  # noqa: S202 - filtered
            while rfile.read(TAR_BUFSIZE):  # let age reach and check the final chunk
                pass
        except Exception as err:
            stage_error = err
        finally:
            rfile.close()  # unblocks a decryptor stuck on a full pipe
            worker.join()
    # The decryptor's verdict comes first: tar only ever saw authenticated bytes.
    error = worker.error
    if isinstance(error, age.NoIdentityMatchError):
        raise WrongKeyError("this key does not open this backup")
    if isinstance(error, age.DamagedFileError):
        where = f" (at byte {error.offset})" if error.offset is not None else ""
        raise DamagedBackupError(f"the backup is damaged{where}", error.offset)
    if isinstance(error, age.AgeError):
        raise DamagedBackupError(f"not a backup file: {error}")
    if error is not None and not isinstance(error, BrokenPipeError):
        raise error
    if isinstance(stage_error, tarfile.FilterError):
        raise DamagedBackupError(f"the backup holds an unsafe entry: {stage_error}")
    if isinstance(stage_error, tarfile.TarError | EOFError):
        raise DamagedBackupError(f"the backup is not a valid archive: {stage_error}")
    if isinstance(stage_error, OSError):
        raise DestinationError(f"can't restore into {temp.parent}: {stage_error.strerror}")
    if stage_error is not None:
        raise stage_error


@contextlib.contextmanager
def pipe() -> Iterator[tuple[BinaryIO, BinaryIO]]:
    """An OS pipe as two binary files; both ends are closed on exit."""
    rfd, wfd = os.pipe()
    rfile = cast(BinaryIO, os.fdopen(rfd, "rb"))
    wfile = cast(BinaryIO, os.fdopen(wfd, "wb"))
    try:
        yield rfile, wfile
    finally:
        for end in (wfile, rfile):
            with contextlib.suppress(OSError):
                end.close()


class Worker:
    """Runs one pipeline stage in a thread and keeps its exception for the caller."""

    def __init__(self, target: Callable[..., None], *args: Any) -> None:
        self.error: BaseException | None = None
        self._target = target
        self._thread = threading.Thread(target=self._run, args=args, daemon=True)
        self._thread.start()

    def _run(self, *args: Any) -> None:
        try:
            self._target(*args)
        except BaseException as err:
            self.error = err

    def join(self) -> None:
        self._thread.join()

    def reraise(self) -> None:
        if self.error is not None:
            raise self.error
