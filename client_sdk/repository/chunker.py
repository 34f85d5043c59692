"""Content-defined chunking: FastCDC (2020) from the compiled ``pyfastcdc`` extension.

A cut point depends only on the bytes just before it (a gear rolling hash), so
inserting bytes into a file moves only the boundaries near the insertion and
every other chunk keeps its id. Sizes are bounded (256 KiB .. 4 MiB, about
1 MiB on average). The chunker reads the file through a fixed buffer, so
memory does not grow with the file, and it cuts with the GIL released.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

from pyfastcdc import FastCDC

MIN_SIZE = 256 * 1024
AVG_SIZE = 1024 * 1024
MAX_SIZE = 4 * 1024 * 1024
_COMPILED = FastCDC.__module__.startswith("pyfastcdc.cy")


class Chunker:
    """Cuts streams or buffers; one instance per thread (it is not thread-safe)."""

    def __init__(
        self,
        seed: int,
        *,
        min_size: int = MIN_SIZE,
        avg_size: int = AVG_SIZE,
        max_size: int = MAX_SIZE,
    ) -> None:
        if not _COMPILED:
            raise RuntimeError("pyfastcdc's compiled extension is missing")
        self.min_size, self.avg_size, self.max_size = min_size, avg_size, max_size
        # pyfastcdc's "average" excludes the skipped minimum (FastCDC 2020, 3.4).
        self._cdc = FastCDC(
            avg_size - min_size, min_size=min_size, max_size=max_size, seed=seed
        )

    def stream(self, src: BinaryIO) -> Iterator[memoryview]:
        """Chunks of ``src``; each view is valid only until the next one is taken."""
        for chunk in self._cdc.cut_stream(src):
            yield chunk.data

    def buffer(self, data: bytes | bytearray | memoryview) -> Iterator[memoryview]:
        """Chunks of an in-memory buffer (views into it)."""
        for chunk in self._cdc.cut_buf(data):
            yield chunk.data
