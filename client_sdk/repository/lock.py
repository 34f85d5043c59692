"""Repository locks: backups share the repository, forget/prune needs it alone.

A lock is an object ``lock-<hex>.age`` holding ``{"exclusive", "host", "pid",
"time"}``. Writers first publish their lock, then read every other one: a
backup gives way to a live exclusive lock; forget gives way to any live lock.
If two take their locks at the same moment both may give way, never both
proceed. A lock is stale (and removed by the next exclusive locker) when its
process is gone on this host, or when it is older than :data:`STALE_AFTER`:
that is how a killed backup's lock goes away. A holder rewrites its lock every
:data:`REFRESH_EVERY`, so a backup that runs for days is never taken for dead.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

from client_sdk.backup.errors import BackupError, DamagedBackupError, WrongKeyError
from client_sdk.repository.repo import Repository
from client_sdk.storage import ObjectNotFound

LOCK_PREFIX = "lock-"
LOCK_SUFFIX = ".age"
STALE_AFTER = 24 * 3600
REFRESH_EVERY = 3600.0  # a holder rewrites its lock this often: it is never STALE_AFTER old
MAX_LOCK_BYTES = 64 * 1024


class RepositoryLocked(BackupError):
    """Another process holds a lock that this operation cannot share."""


@dataclass(frozen=True)
class LockInfo:
    name: str
    exclusive: bool
    host: str
    pid: int
    time: float

    def stale(self, now: float) -> bool:
        if now - self.time > STALE_AFTER:
            return True
        if self.host != socket.gethostname():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False


def is_lock_name(name: str) -> bool:
    return name.startswith(LOCK_PREFIX) and name.endswith(LOCK_SUFFIX)


def read_locks(repo: Repository, names: list[str], own: str | None = None) -> list[LockInfo]:
    """Every readable lock but ``own``; unreadable ones count as stale exclusive locks."""
    found: list[LockInfo] = []
    for name in names:
        if not is_lock_name(name) or name == own:
            continue
        try:
            data = json.loads(repo.read(name, MAX_LOCK_BYTES))
            found.append(
                LockInfo(name, bool(data["exclusive"]), str(data["host"]), int(data["pid"]),
                         float(data["time"]))
            )  # fmt: skip
        except ObjectNotFound:
            continue
        except (WrongKeyError, DamagedBackupError, ValueError, KeyError, TypeError):
            found.append(LockInfo(name, True, "", 0, 0.0))
    return found


def _lock_body(exclusive: bool) -> bytes:
    body = {
        "exclusive": exclusive,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "time": time.time(),
    }
    return json.dumps(body).encode()


class _Refresher:
    """Rewrites the lock every ``every`` seconds, so a long run never looks stale."""

    def __init__(self, repo: Repository, name: str, exclusive: bool, every: float) -> None:
        self._stop = threading.Event()
        self._args = (repo, name, exclusive, every)
        self._thread = threading.Thread(target=self._run, name="bkv-lock", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        repo, name, exclusive, every = self._args
        while not self._stop.wait(every):
            with contextlib.suppress(Exception):  # the next round tries again
                repo.write(name, _lock_body(exclusive))

    def stop(self) -> None:
        """After this returns, the lock is never written again (so it can be deleted)."""
        self._stop.set()
        self._thread.join(timeout=60)


@contextlib.contextmanager
def locked(
    repo: Repository, *, exclusive: bool, refresh: float = REFRESH_EVERY
) -> Iterator[list[LockInfo]]:
    """Hold a lock for the block; yields the other live locks seen when it was taken."""
    name = f"{LOCK_PREFIX}{secrets.token_hex(16)}{LOCK_SUFFIX}"
    repo.write(name, _lock_body(exclusive))
    refresher = _Refresher(repo, name, exclusive, refresh)
    try:
        now = time.time()
        others = read_locks(repo, repo.storage.names(), own=name)
        live = [lock for lock in others if not lock.stale(now)]
        blocking = live if exclusive else [lock for lock in live if lock.exclusive]
        if blocking:
            who = blocking[0]
            what = "forget/prune" if who.exclusive else "a backup"
            where = f" on {who.host} (pid {who.pid})" if who.host else ""
            raise RepositoryLocked(f"{repo.url} is in use by {what}{where}: try again later")
        if exclusive:
            for lock in others:
                if lock.stale(now):
                    repo.storage.delete(lock.name)
        yield live
    finally:
        refresher.stop()
        with contextlib.suppress(Exception):
            repo.storage.delete(name)
