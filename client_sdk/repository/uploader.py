"""Sealing and uploading packs in worker threads, a bounded number at a time.

Pack buffers come from a fixed pool of ``workers + 1``: taking one blocks while
that many packs are being filled or are in flight, which bounds memory. On S3
the workers' uploads run in parallel; on a folder, their writes and fsyncs.
"""

from __future__ import annotations

import contextlib
import queue
from concurrent.futures import Future, ThreadPoolExecutor

from client_sdk.repository.buffers import PACK_CAPACITY, new_buffer
from client_sdk.repository.pack import PackBuilder, PackEntry
from client_sdk.repository.repo import Repository
from client_sdk.storage import StorageError


class Uploads:
    """Sealing and uploading packs in worker threads.

    Pack buffers come from a fixed pool of ``workers + 1``: taking one blocks
    while that many packs are in flight, which bounds memory.
    """

    def __init__(self, repo: Repository, workers: int) -> None:
        self.repo = repo
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="bkv-pack")
        self.free: queue.SimpleQueue[memoryview] = queue.SimpleQueue()
        for _ in range(workers + 1):
            self.free.put(new_buffer(PACK_CAPACITY))
        self.futures: list[Future[int]] = []
        self.started: list[str] = []
        self.written: dict[str, list[PackEntry]] = {}
        self.stored = 0

    def builder(self) -> PackBuilder:
        while True:
            try:
                return PackBuilder(self.free.get(timeout=0.5))
            except queue.Empty:
                self._reap(block=False)  # a failed upload must not leave us waiting

    def submit(self, builder: PackBuilder) -> None:
        self.started.append(builder.name)
        try:
            future = self.pool.submit(self._store, builder)
        except BaseException:
            self.free.put(builder.buffer)
            raise
        self.futures.append(future)
        self._reap(block=False)

    def _store(self, builder: PackBuilder) -> int:
        try:
            size = self.repo.write_pack(builder.name, builder.finish())
            self.written[builder.name] = list(builder.entries)
            return size
        finally:
            self.free.put(builder.buffer)

    def _reap(self, *, block: bool) -> None:
        pending: list[Future[int]] = []
        for future in self.futures:
            if block or future.done():
                self.stored += future.result()
            else:
                pending.append(future)
        self.futures = pending

    def finish(self) -> None:
        self._reap(block=True)
        self.pool.shutdown(wait=True)

    def discard(self) -> None:
        """Stop, wait for the workers, and delete every pack this run started."""
        self.pool.shutdown(wait=True, cancel_futures=True)
        for name in self.started:
            with contextlib.suppress(StorageError):
                self.repo.storage.delete(name)
