"""The index: which pack holds each chunk, and where in it.

Stored as ``index-<random>.age`` objects, each JSON::

    {"format": "bkv-index/v1",
     "packs": [{"name": "pack-<hex>.age", "chunks": [["<id hex>", offset, length], ...]}]}

Every backup adds one index object for the packs it wrote; forget/prune
replaces them all with one. Readers take the union of all index objects, so a
chunk listed twice (two backups that ran at once) is harmless.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field

from client_sdk.repository.pack import PackEntry, is_pack_name

INDEX_PREFIX = "index-"
INDEX_SUFFIX = ".age"
INDEX_FORMAT = "bkv-index/v1"
MAX_INDEX_BYTES = 512 * 1024 * 1024


class IndexFormatError(ValueError):
    """An index object's plaintext is not a valid index."""


def new_index_name() -> str:
    return f"{INDEX_PREFIX}{secrets.token_hex(16)}{INDEX_SUFFIX}"


def is_index_name(name: str) -> bool:
    return name.startswith(INDEX_PREFIX) and name.endswith(INDEX_SUFFIX)


@dataclass(frozen=True, slots=True)
class Location:
    pack: str
    offset: int
    length: int


@dataclass
class Index:
    """The in-memory union of index objects: chunk id -> location, and pack -> entries."""

    chunks: dict[bytes, Location] = field(default_factory=dict)
    packs: dict[str, list[PackEntry]] = field(default_factory=dict)

    def add_pack(self, name: str, entries: Iterable[PackEntry]) -> None:
        listed = self.packs.setdefault(name, [])
        for entry in entries:
            listed.append(entry)
            self.chunks.setdefault(entry.chunk_id, Location(name, entry.offset, entry.length))

    def __contains__(self, chunk_id: bytes) -> bool:
        return chunk_id in self.chunks

    def merge(self, other: Index) -> None:
        for name, entries in other.packs.items():
            if name not in self.packs:
                self.add_pack(name, entries)


def encode_index(packs: dict[str, list[PackEntry]]) -> bytes:
    body = [
        {"name": name, "chunks": [[e.chunk_id.hex(), e.offset, e.length] for e in entries]}
        for name, entries in sorted(packs.items())
    ]
    return json.dumps({"format": INDEX_FORMAT, "packs": body}, separators=(",", ":")).encode()


def decode_index(raw: bytes | bytearray) -> Index:
    """Parse one index object's plaintext strictly."""
    try:
        data = json.loads(raw)
        if not isinstance(data, dict) or data.get("format") != INDEX_FORMAT:
            raise IndexFormatError("not a bkv index")
        index = Index()
        for pack in data["packs"]:
            name = pack["name"]
            if not isinstance(name, str) or not is_pack_name(name):
                raise IndexFormatError("bad pack name in index")
            entries = [
                PackEntry(bytes.fromhex(cid), int(off), int(length))
                for cid, off, length in pack["chunks"]
            ]
            index.add_pack(name, entries)
    except (ValueError, KeyError, TypeError) as err:
        if isinstance(err, IndexFormatError):
            raise
        raise IndexFormatError(f"malformed index: {err}") from None
    return index
