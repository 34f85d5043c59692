"""Pack files: many chunks in one object, so storage sees a few MiB-sized files, not chunks.

Plaintext layout (the whole thing is then one age file)::

    chunk 0 | chunk 1 | ... | chunk n-1 | entry 0 | ... | entry n-1 | n (u32) | "bkvpack1"

An entry is the chunk's 32-byte id and its length (u32, big endian); offsets
follow from the lengths. The trailer makes every pack self-describing, so a
pack whose index was never written (a killed backup) can still be adopted.
"""

from __future__ import annotations

import secrets
import struct
from dataclasses import dataclass

from client_sdk.repository.keys import ID_SIZE

PACK_PREFIX = "pack-"
PACK_SUFFIX = ".age"
TARGET_SIZE = 8 * 1024 * 1024
MAX_ENTRIES = 16384  # many tiny files: the trailer stays small
MAX_PACK_BYTES = 64 * 1024 * 1024
MAGIC = b"bkvpack1"
_ENTRY = struct.Struct(f">{ID_SIZE}sI")
_TAIL = struct.Struct(">I8s")
TRAILER_ENTRY = _ENTRY.size


class PackFormatError(ValueError):
    """The plaintext of a pack does not follow the layout."""


@dataclass(frozen=True, slots=True)
class PackEntry:
    chunk_id: bytes
    offset: int
    length: int


def new_pack_name() -> str:
    return f"{PACK_PREFIX}{secrets.token_hex(16)}{PACK_SUFFIX}"


def is_pack_name(name: str) -> bool:
    return name.startswith(PACK_PREFIX) and name.endswith(PACK_SUFFIX)


class PackBuilder:
    """Collects chunks in a caller's buffer until the pack is big enough to be sealed.

    The buffer is reused from pack to pack (see :mod:`.buffers`); it must hold
    :data:`TARGET_SIZE` plus one largest chunk plus the largest trailer.
    """

    def __init__(self, buffer: memoryview) -> None:
        self.name = new_pack_name()
        self.buffer = buffer
        self.size = 0
        self.entries: list[PackEntry] = []

    def add(self, chunk_id: bytes, data: bytes | bytearray | memoryview) -> PackEntry:
        entry = PackEntry(chunk_id, self.size, len(data))
        self.buffer[self.size : self.size + len(data)] = data
        self.size += len(data)
        self.entries.append(entry)
        return entry

    def full(self) -> bool:
        return self.size >= TARGET_SIZE or len(self.entries) >= MAX_ENTRIES

    def finish(self) -> memoryview:
        """The plaintext with its trailer appended (a view into the buffer)."""
        pos = self.size
        for entry in self.entries:
            _ENTRY.pack_into(self.buffer, pos, entry.chunk_id, entry.length)
            pos += _ENTRY.size
        _TAIL.pack_into(self.buffer, pos, len(self.entries), MAGIC)
        return self.buffer[: pos + _TAIL.size]


def parse_trailer(plain: bytes | bytearray | memoryview) -> list[PackEntry]:
    """The entries of a pack's plaintext; :class:`PackFormatError` if it is malformed."""
    view = memoryview(plain)
    if len(view) < _TAIL.size:
        raise PackFormatError("too short for a pack")
    count, magic = _TAIL.unpack_from(view, len(view) - _TAIL.size)
    table = len(view) - _TAIL.size - count * _ENTRY.size
    if magic != MAGIC or table < 0:
        raise PackFormatError("no pack trailer")
    entries: list[PackEntry] = []
    offset = 0
    for index in range(count):
        chunk_id, length = _ENTRY.unpack_from(view, table + index * _ENTRY.size)
        entries.append(PackEntry(chunk_id, offset, length))
        offset += length
    if offset != table:
        raise PackFormatError("pack trailer does not match its data")
    return entries
