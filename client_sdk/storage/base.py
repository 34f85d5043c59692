"""The storage interface and its errors.

Objects are written through an :class:`ObjectWriter` that publishes nothing
until :meth:`ObjectWriter.commit`, so an interrupted upload never shows up as a
backup, and read back through a streaming :class:`ObjectReader`, so neither
direction holds a whole backup in memory.
"""

from __future__ import annotations

import io
from abc import ABC, abstractmethod
from types import TracebackType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer, WriteableBuffer


class StorageError(Exception):
    """Storage failed; the message names the storage or object, never any content."""


class StorageURLError(StorageError):
    """The storage URL is malformed or of an unsupported kind."""


class StorageNotFound(StorageError):
    """The folder or bucket does not exist."""


class ObjectNotFound(StorageError):
    """The storage exists but holds no object of that name."""


class StorageUnavailable(StorageError):
    """The storage could not be reached or refused the request."""


def check_name(name: str) -> str:
    """Object names are single path components: no traversal out of the folder or prefix."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\x00" in name:
        raise StorageURLError(f"invalid object name {name!r}")
    return name


class ObjectWriter(io.RawIOBase, ABC):
    """A write-only stream that becomes a visible object only when committed.

    Leaving the ``with`` block without :meth:`commit` (an error, an interrupt)
    discards everything written so far.
    """

    def __init__(self) -> None:
        super().__init__()
        self._done = False
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: ReadableBuffer, /) -> int:
        if self._done:
            raise ValueError("write to a finished object")
        view = memoryview(data).cast("B")
        self._write(view)
        self.size += len(view)
        return len(view)

    def commit(self) -> int:
        """Publish the object; return its size in bytes."""
        if self._done:
            raise ValueError("object already finished")
        try:
            self._commit()
        except BaseException:
            # Also on KeyboardInterrupt: nothing half-published may stay behind.
            self._done = True
            self._abort()
            raise
        self._done = True
        return self.size

    def abort(self) -> None:
        """Discard the object (idempotent, never raises for cleanup problems)."""
        if not self._done:
            self._done = True
            self._abort()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.abort()
        super().__exit__(exc_type, exc, tb)

    @abstractmethod
    def _write(self, view: memoryview) -> None: ...

    @abstractmethod
    def _commit(self) -> None: ...

    @abstractmethod
    def _abort(self) -> None: ...


class ObjectReader(io.RawIOBase, ABC):
    """A read-only stream over one stored object; ``size`` is known up front."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def readable(self) -> bool:
        return True

    @abstractmethod
    def readinto(self, buffer: WriteableBuffer, /) -> int: ...


class Storage(ABC):
    """A flat namespace of objects: a folder, or the objects directly under an S3 prefix."""

    url: str

    @abstractmethod
    def open_writer(self, name: str) -> ObjectWriter:
        """Start writing object ``name`` (an existing object is only replaced on commit)."""

    @abstractmethod
    def open_reader(self, name: str) -> ObjectReader:
        """Stream object ``name``; :class:`ObjectNotFound` when absent."""

    @abstractmethod
    def names(self) -> list[str]:
        """Names of every object, sorted."""

    @abstractmethod
    def delete(self, name: str) -> None:
        """Remove object ``name`` (no error if absent)."""

    def remove_abandoned(self, older_than: float) -> int:
        """Delete uploads a killed process left unfinished, older than ``older_than`` seconds.

        Returns how many went. Nothing by default: S3 buckets reap abandoned
        multipart uploads with a lifecycle rule.
        """
        del older_than
        return 0

    def read_small(self, name: str, limit: int) -> bytes:
        """The whole content of a small object; :class:`StorageError` above ``limit`` bytes."""
        with self.open_reader(name) as reader:
            if reader.size > limit:
                raise StorageError(f"{name} is larger than expected")
            data = reader.read(limit + 1)
        if data is None or len(data) > limit:
            raise StorageError(f"{name} is larger than expected")
        return data

    def read_into(self, name: str, buffer: memoryview, limit: int) -> int:
        """Read a whole object into ``buffer`` (reused by the caller); return its size."""
        with self.open_reader(name) as reader:
            size = reader.size
            if size > min(limit, len(buffer)):
                raise StorageError(f"{name} is larger than expected")
            got = 0
            while got < size:
                count = reader.readinto(buffer[got:size])
                if not count:
                    break
                got += count
        return got

    def write_small(self, name: str, data: bytes | memoryview) -> None:
        """Write a small object in one go (published atomically)."""
        with self.open_writer(name) as writer:
            writer.write(data)
            writer.commit()
