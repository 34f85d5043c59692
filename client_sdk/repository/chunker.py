"""Content-defined chunking: FastCDC (2020) from the compiled ``pyfastcdc`` extension.

A cut point depends only on the bytes just before it (a gear rolling hash), so
inserting bytes into a file moves only the boundaries near the insertion and
every other chunk keeps its id. Sizes are bounded (256 KiB .. 4 MiB, about
1 MiB on average). The chunker reads the file through a fixed buffer, so
memory does not grow with the file, and it cuts with the GIL released.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from pyfastcdc import FastCDC

MIN_SIZE = 256 * 1024
AVG_SIZE = 1024 * 1024
MAX_SIZE = 4 * 1024 * 1024
_COMPILED = FastCDC.__module__.startswith("pyfastcdc.cy")


class Readable(Protocol):
    def readinto(self, buffer: memoryview, /) -> int | None: ...


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

    def file(self, src: Readable, window: memoryview) -> Iterator[memoryview]:
        """Chunks of ``src`` read through ``window``, a buffer the caller reuses.

        Each view points into ``window`` and is valid only until the next one is
        taken. A chunk that ends where the window's data ends may be cut short
        by the window, so it is carried over and cut again with more data; every
        other cut point depends only on the bytes before it, so the chunks are
        exactly those of the whole file cut at once.
        """
        if len(window) <= 2 * self.max_size:
            raise ValueError("the window must hold more than two largest chunks")
        filled, eof = 0, False
        while True:
            while not eof and filled < len(window):
                count = src.readinto(window[filled:])
                if not count:
                    eof = True
                else:
                    filled += count
            start = 0
            for chunk in self._cdc.cut_buf(window[:filled]):
                end = start + chunk.length
                if end == filled and not eof:
                    break
                yield window[start:end]
                start = end
            if eof:
                return
            window[: filled - start] = window[start:filled]
            filled -= start

    def buffer(self, data: bytes | bytearray | memoryview) -> Iterator[memoryview]:
        """Chunks of an in-memory buffer (views into it)."""
        for chunk in self._cdc.cut_buf(data):
            yield chunk.data
