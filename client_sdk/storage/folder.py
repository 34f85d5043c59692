"""Local-folder storage: one file per object, published by an atomic rename."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import secrets
import time
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from client_sdk.fsutil import fsync_dir
from client_sdk.storage.base import (
    ObjectNotFound,
    ObjectReader,
    ObjectWriter,
    Storage,
    StorageError,
    StorageNotFound,
    check_name,
)

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

_PART_SUFFIX = ".part"
_DIRECT = getattr(os, "O_DIRECT", 0)
_DIRECT_MIN = 1024 * 1024
_BLOCK = 4096


def _fail(path: Path, err: OSError) -> StorageError:
    return StorageError(f"{path}: {err.strerror or err}")


class FolderStorage(Storage):
    """Objects are files in ``path``; in-progress uploads are hidden ``.*.part`` files."""

    def __init__(self, path: Path, *, create: bool = False) -> None:
        self.path = path
        self.url = str(path)
        try:
            if create:
                path.mkdir(parents=True, exist_ok=True)
            if not path.exists():
                raise StorageNotFound(f"storage not found: {path}")
            if not path.is_dir():
                raise StorageError(f"storage is not a folder: {path}")
        except OSError as err:
            raise _fail(path, err) from None

    def open_writer(self, name: str) -> ObjectWriter:
        return _FileWriter(self.path, check_name(name))

    def write_small(self, name: str, data: bytes | memoryview) -> None:
        """Large page-aligned buffers (packs) bypass the page cache with O_DIRECT.

        Filling fresh page-cache pages costs more CPU than sealing the data, and a
        pack is not read back soon. Where O_DIRECT is refused (tmpfs, other
        systems) or the buffer is not aligned, the ordinary path writes it.
        """
        view = memoryview(data).cast("B")
        if len(view) >= _DIRECT_MIN and _DIRECT and _aligned(view):
            target = self.path / check_name(name)
            if _write_direct(self.path, target, view):
                return
        super().write_small(name, data)

    def read_into(self, name: str, buffer: memoryview, limit: int) -> int:
        """Large objects into an aligned buffer are read with O_DIRECT, like they are written."""
        if not (_DIRECT and len(buffer) >= _DIRECT_MIN and _aligned(buffer)):
            return super().read_into(name, buffer, limit)
        path = self.path / check_name(name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | _DIRECT)
        except FileNotFoundError:
            raise ObjectNotFound(f"{name} not found in {self.url}") from None
        except OSError as err:
            if err.errno == errno.EINVAL:
                return super().read_into(name, buffer, limit)
            raise _fail(path, err) from None
        try:
            size = os.fstat(fd).st_size
            if size > min(limit, len(buffer) - _BLOCK):
                raise StorageError(f"{name} is larger than expected")
            span = -(-size // _BLOCK) * _BLOCK
            got = 0
            while got < size:
                count = os.readv(fd, [buffer[got:span]])
                if not count:
                    break
                got += count
            return got
        except OSError as err:
            if err.errno == errno.EINVAL:
                return super().read_into(name, buffer, limit)
            raise _fail(path, err) from None
        finally:
            os.close(fd)

    def open_reader(self, name: str) -> ObjectReader:
        path = self.path / check_name(name)
        try:
            handle = path.open("rb")
        except FileNotFoundError:
            raise ObjectNotFound(f"{name} not found in {self.url}") from None
        except OSError as err:
            raise _fail(path, err) from None
        return _FileReader(handle)

    def names(self) -> list[str]:
        try:
            with os.scandir(self.path) as entries:
                return sorted(
                    e.name
                    for e in entries
                    if not e.name.startswith(".") and e.is_file(follow_symlinks=False)
                )
        except FileNotFoundError:
            raise StorageNotFound(f"storage not found: {self.path}") from None
        except OSError as err:
            raise _fail(self.path, err) from None

    def remove_abandoned(self, older_than: float) -> int:
        """Hidden ``.*.part`` files whose writer is gone (a killed process leaves them)."""
        limit = time.time() - older_than
        removed = 0
        try:
            with os.scandir(self.path) as entries:
                for entry in entries:
                    if not (entry.name.startswith(".") and entry.name.endswith(_PART_SUFFIX)):
                        continue
                    with contextlib.suppress(OSError):
                        if entry.stat(follow_symlinks=False).st_mtime < limit:
                            os.unlink(entry.path)
                            removed += 1
        except OSError as err:
            raise _fail(self.path, err) from None
        return removed

    def delete(self, name: str) -> None:
        path = self.path / check_name(name)
        try:
            path.unlink(missing_ok=True)
        except OSError as err:
            raise _fail(path, err) from None


def _aligned(view: memoryview) -> bool:
    try:
        address = ctypes.addressof(ctypes.c_char.from_buffer(view))
    except (TypeError, ValueError):  # read-only buffers can't be checked
        return False
    return address % _BLOCK == 0


def _write_direct(folder: Path, target: Path, view: memoryview) -> bool:
    """Write, sync and publish ``view`` with O_DIRECT; False if the system refuses it."""
    temp = folder / f".{target.name}.{secrets.token_hex(6)}{_PART_SUFFIX}"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | _DIRECT
    try:
        fd = os.open(temp, flags, 0o600)
    except OSError as err:
        if err.errno == errno.EINVAL:
            return False
        raise _fail(temp, err) from None
    try:
        try:
            body = len(view) - len(view) % _BLOCK
            done = 0
            while done < body:
                done += os.write(fd, view[done:body])
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~_DIRECT)
            while done < len(view):
                done += os.write(fd, view[done:])
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, target)
    except BaseException as err:
        with contextlib.suppress(OSError):
            temp.unlink(missing_ok=True)
        if isinstance(err, OSError):
            if err.errno == errno.EINVAL:
                return False  # the filesystem takes O_DIRECT opens but not its writes
            raise _fail(target, err) from None
        raise
    fsync_dir(folder)
    return True


class _FileWriter(ObjectWriter):
    """Writes a private temporary file next to the target; commit = fsync + rename."""

    def __init__(self, folder: Path, name: str) -> None:
        super().__init__()
        self._folder = folder
        self._target = folder / name
        self._temp = folder / f".{name}.{secrets.token_hex(6)}{_PART_SUFFIX}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(self._temp, flags, 0o600)
        except OSError as err:
            raise _fail(self._temp, err) from None
        self._file: BinaryIO = os.fdopen(fd, "wb")

    def _write(self, view: memoryview) -> None:
        try:
            self._file.write(view)
        except OSError as err:
            raise _fail(self._target, err) from None

    def _commit(self) -> None:
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            os.replace(self._temp, self._target)
        except OSError as err:
            raise _fail(self._target, err) from None  # the base class aborts
        fsync_dir(self._folder)

    def _abort(self) -> None:
        with contextlib.suppress(OSError):
            self._file.close()
        with contextlib.suppress(OSError):
            self._temp.unlink(missing_ok=True)


class _FileReader(ObjectReader):
    def __init__(self, handle: BinaryIO) -> None:
        super().__init__(os.fstat(handle.fileno()).st_size)
        self._handle = handle

    def readinto(self, buffer: WriteableBuffer, /) -> int:
        return self._handle.readinto(buffer)  # type: ignore[attr-defined,no-any-return]

    def close(self) -> None:
        self._handle.close()
        super().close()
