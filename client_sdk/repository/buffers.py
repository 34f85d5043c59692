"""Reusable buffers for packs: touching fresh memory costs more than sealing it.

On a virtual machine the first write to a new page is several times slower
than ChaCha20-Poly1305 over it, so every pack-sized buffer is an anonymous
``mmap`` allocated once and reused: its pages stay mapped (and count in RSS)
only up to the largest pack actually seen.
"""

from __future__ import annotations

import mmap
import threading

from client_sdk.repository.chunker import MAX_SIZE
from client_sdk.repository.pack import MAX_ENTRIES, MAX_PACK_BYTES, TARGET_SIZE, TRAILER_ENTRY

SEAL_MARGIN = 64 * 1024  # the age header and the tags: 16 bytes per 64 KiB
PACK_CAPACITY = TARGET_SIZE + MAX_SIZE + MAX_ENTRIES * TRAILER_ENTRY + 64
SEALED_CAPACITY = MAX_PACK_BYTES + SEAL_MARGIN

_local = threading.local()


def new_buffer(size: int) -> memoryview:
    return memoryview(mmap.mmap(-1, size))


def sealed_buffer() -> memoryview:
    """This thread's buffer for a sealed pack (uploads and downloads)."""
    buffer: memoryview | None = getattr(_local, "sealed", None)
    if buffer is None:
        buffer = _local.sealed = new_buffer(SEALED_CAPACITY)
    return buffer


def plain_buffer() -> memoryview:
    """This thread's buffer for an opened pack (downloads only)."""
    buffer: memoryview | None = getattr(_local, "plain", None)
    if buffer is None:
        buffer = _local.plain = new_buffer(MAX_PACK_BYTES)
    return buffer
