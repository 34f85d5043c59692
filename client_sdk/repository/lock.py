"""Repository locks: backups share the repository, forget/prune needs it alone.

A lock is an object ``lock-<hex>.age`` holding ``{"exclusive", "host", "pid",
"time"}``. Writers first publish their lock, then read every other one: a
backup gives way to a live exclusive lock; forget gives way to any live lock.
If two take their locks at the same moment both may give way, never both
proceed. A lock is stale (and removed by the next exclusive locker) when its
process is gone on this host, or when it is older than :data:`STALE_AFTER`:
that is how a killed backup's lock goes away.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass

from client_sdk.backup.errors import BackupError, DamagedBackupError, WrongKeyError
from client_sdk.repository.repo import Repository
from client_sdk.storage import ObjectNotFound

LOCK_PREFIX = "lock-"
LOCK_SUFFIX = ".age"
STALE_AFTER = 24 * 3600
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


@contextlib.contextmanager
def locked(repo: Repository, *, exclusive: bool) -> Iterator[list[LockInfo]]:
    """Hold a lock for the block; yields the other live locks seen when it was taken."""
    name = f"{LOCK_PREFIX}{secrets.token_hex(16)}{LOCK_SUFFIX}"
    body = {
        "exclusive": exclusive,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "time": time.time(),
    }
    repo.write(name, json.dumps(body).encode())
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
        with contextlib.suppress(Exception):
            repo.storage.delete(name)
