"""Account -> shard: a stable hash, identical on the device, in ChatD and in the vault."""

from __future__ import annotations

import hashlib

from bkv_protocol.errors import ProtocolError

_LABEL = b"bkv-shard-v1\x00"


def shard_for(account: str, shard_count: int) -> int:
    """Return the shard (0 .. shard_count-1) that holds ``account``.

    SHA-256 keeps the mapping stable across processes and Python versions
    (unlike ``hash()``); the modulo bias over 2**64 is negligible.
    """
    if shard_count < 1:
        raise ProtocolError("shard count must be at least 1")
    digest = hashlib.sha256(_LABEL + account.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % shard_count
