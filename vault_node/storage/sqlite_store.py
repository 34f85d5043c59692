"""The vault state of one node in SQLite: memory does not grow with the deposits.

Why SQLite: it ships with Python (no extra wheel or service), it is crash-safe
(atomic commits, WAL), and in WAL mode a reader holds a consistent view while
the writer goes on -- exactly what a snapshot taken during commits needs. LMDB
would be faster per read, but the vault is bound by Raft round trips and the
HSM, not by point lookups (see docs/capacity.md).

The store decides nothing (``vault_node.state.VaultState`` does); it keeps the
accounts, the digest sum, the exhausted-record index and the index of the last
applied command, all in the same transaction, so after a crash the state and
"where it stands" always agree. Writes accumulate in one open transaction that
the Raft layer commits once per tick (``commit``); durability comes from the
Raft journal, which is replayed from ``applied_index`` on start-up, and from
``commit(durable=True)`` before the journal is ever compacted.

``secure_delete`` is on: a destroyed or replaced sealed record is overwritten
in the database file, and ``erase_checkpoint`` truncates the write-ahead log so
no older page image keeps it.

Checkpoints (copying the write-ahead log into the database) never run on the
writer: after a long snapshot read, the log may hold many megabytes, and
copying them inside a commit would stall the Raft thread past an election
timeout. A background thread checkpoints on its own connection instead.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

from vault_node.state import GUESS_TAG_BYTES, AccountEntry, entry_head

DB_FILE = "state.sqlite"
SCHEMA_VERSION = 1
_CACHE_KIB = 32 * 1024  # page cache per connection: bounded, whatever the shard holds
ITEMS_BATCH = 2048
CHECKPOINT_SECONDS = 1.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS accounts (
    account_id BLOB PRIMARY KEY,
    record_id BLOB NOT NULL,
    sealed BLOB NOT NULL,
    attempts INTEGER NOT NULL,
    lim INTEGER NOT NULL,
    destroyed INTEGER NOT NULL,
    tags BLOB NOT NULL,
    head BLOB NOT NULL  -- state.entry_head: a snapshot row is a concatenation in SQL
);
CREATE TABLE IF NOT EXISTS exhausted (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    account_id BLOB NOT NULL UNIQUE,
    record_id BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
"""


class StoreError(Exception):
    """The state database is unusable (another version, damaged, or not ours)."""


def _tags(blob: bytes) -> tuple[bytes, ...]:
    return tuple(blob[i : i + GUESS_TAG_BYTES] for i in range(0, len(blob), GUESS_TAG_BYTES))


def _entry(row: tuple[bytes, bytes, int, int, int, bytes]) -> AccountEntry:
    record_id, sealed, attempts, lim, destroyed, tags = row
    return AccountEntry(record_id, sealed, attempts, lim, bool(destroyed), _tags(tags))


def connect(path: Path, *, fsync: bool = True) -> sqlite3.Connection:
    """A connection with the vault's settings (WAL, secure delete, bounded cache)."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10.0)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={'NORMAL' if fsync else 'OFF'}")
    conn.execute("PRAGMA secure_delete=ON")
    conn.execute(f"PRAGMA cache_size=-{_CACHE_KIB}")
    conn.execute("PRAGMA journal_size_limit=0")  # a reset write-ahead log keeps no old pages
    conn.execute("PRAGMA wal_autocheckpoint=0")  # see the module docstring: never in a commit
    return conn


class SqliteStore:
    """A ``StateStore`` over one SQLite file; one writer (the Raft tick thread)."""

    def __init__(self, path: Path, *, fsync: bool = True) -> None:
        self.path = path
        self._fsync = fsync
        self._lock = threading.RLock()
        self._in_tx = False
        self._checkpoint_lock = threading.Lock()
        self._checkpointer: sqlite3.Connection | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fresh = not path.exists()
            self._db = connect(path, fsync=fsync)
            if fresh:
                path.chmod(0o600)
            self._db.executescript(_SCHEMA)
            version = self._meta("schema_version")
            if version is None:
                self._set_meta("schema_version", SCHEMA_VERSION)
            elif version != SCHEMA_VERSION:
                raise StoreError(f"{path}: state schema version {version} is not supported")
            count, total = self._meta("count"), self._meta("digest_sum")
            self._count = count if isinstance(count, int) else 0
            self._sum = int.from_bytes(total) if isinstance(total, bytes) else 0
            applied = self._meta("applied_index")
            self._applied = applied if isinstance(applied, int) else 0
            self._dirty = False  # count, sum and applied index are written at commit
        except sqlite3.DatabaseError as err:
            raise StoreError(f"{path} is not a usable state database: {err}") from None
        self.commit()

    def start_checkpointer(self, interval: float = CHECKPOINT_SECONDS) -> None:
        """Checkpoint the write-ahead log every ``interval`` seconds, off the writer."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._checkpoint_loop, args=(interval,),
                                            name="state-checkpoint", daemon=True)
            self._thread.start()

    def _checkpoint_loop(self, interval: float) -> None:
        while not self._stop.wait(interval):
            with contextlib.suppress(sqlite3.Error):
                self.checkpoint()

    def checkpoint(self, *, truncate: bool = False) -> None:
        """Copy the log into the database on a separate connection (never blocks on the writer
        for long: PASSIVE first; TRUNCATE waits at most for the writer's current commit)."""
        with self._checkpoint_lock:
            if self._checkpointer is None:
                self._checkpointer = connect(self.path, fsync=self._fsync)
            self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)")
            if truncate:
                self._checkpointer.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        with self._checkpoint_lock:
            if self._checkpointer is not None:
                self._checkpointer.close()
                self._checkpointer = None
        with self._lock:
            with contextlib.suppress(sqlite3.Error):
                self.commit()
            self._db.close()

    # ---- meta -------------------------------------------------------------------------

    def _meta(self, key: str) -> object:
        row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else row[0]

    def _set_meta(self, key: str, value: object) -> None:
        self._begin()
        self._db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES(?, ?)", (key, value))

    def meta(self, key: str) -> object:
        with self._lock:
            return self._meta(key)

    def set_meta(self, key: str, value: object) -> None:
        with self._lock:
            self._set_meta(key, value)

    def applied_index(self) -> int:
        """Index of the last vault command applied into this database (0: none)."""
        return self._applied

    def set_applied(self, index: int) -> None:
        with self._lock:
            self._begin()
            self._applied, self._dirty = index, True

    # ---- transactions -----------------------------------------------------------------

    def _begin(self) -> None:
        if not self._in_tx:
            self._db.execute("BEGIN IMMEDIATE")
            self._in_tx = True

    def _write_totals(self) -> None:
        """The running totals, once per transaction rather than once per command."""
        if self._dirty:
            self._db.executemany("INSERT OR REPLACE INTO meta(key, value) VALUES(?, ?)", [
                ("count", self._count), ("digest_sum", self._sum.to_bytes(32)),
                ("applied_index", self._applied)])
            self._dirty = False

    def commit(self, *, durable: bool = False) -> None:
        """Commit what was applied; ``durable`` also fsyncs the write-ahead log."""
        with self._lock:
            if self._in_tx:
                self._write_totals()
                self._db.execute("COMMIT")
                self._in_tx = False
            if durable and self._fsync:
                self._db.execute("PRAGMA synchronous=FULL")
                try:  # a commit in FULL mode syncs the log, with every frame before it
                    self._set_meta("durable_mark", self._applied)
                    self._db.execute("COMMIT")
                    self._in_tx = False
                finally:
                    self._db.execute("PRAGMA synchronous=NORMAL")

    def erase_checkpoint(self) -> None:
        """Copy the committed log into the database and truncate it: no stale page image
        keeps a removed record (what is committed by now; callers commit first)."""
        self.checkpoint(truncate=True)

    # ---- StateStore -------------------------------------------------------------------

    def get(self, account_id: bytes) -> AccountEntry | None:
        with self._lock:
            row = self._db.execute(
                "SELECT record_id, sealed, attempts, lim, destroyed, tags FROM accounts "
                "WHERE account_id=?", (account_id,)).fetchone()
        return None if row is None else _entry(row)

    def put(self, account_id: bytes, entry: AccountEntry, *, new: bool) -> None:
        with self._lock:
            self._begin()
            self._db.execute(
                "INSERT OR REPLACE INTO accounts VALUES(?, ?, ?, ?, ?, ?, ?, ?)",
                (account_id, entry.record_id, entry.sealed_record, entry.attempts, entry.limit,
                 int(entry.destroyed), b"".join(entry.guess_tags), entry_head(entry)))
            if new:
                self._count += 1
                self._dirty = True

    def delete(self, account_id: bytes) -> None:
        with self._lock:
            self._begin()
            if self._db.execute("DELETE FROM accounts WHERE account_id=?", (account_id,)).rowcount:
                self._count -= 1
                self._dirty = True

    def count(self) -> int:
        return self._count

    def items(self) -> Iterator[tuple[bytes, AccountEntry]]:
        """Every entry in account-id order, read in batches (the caller holds no lock)."""
        after = b""
        while True:
            with self._lock:
                rows = self._db.execute(
                    "SELECT account_id, record_id, sealed, attempts, lim, destroyed, tags "
                    "FROM accounts WHERE account_id > ? ORDER BY account_id LIMIT ?",
                    (after, ITEMS_BATCH)).fetchall()
            for row in rows:
                yield row[0], _entry(row[1:])
            if len(rows) < ITEMS_BATCH:
                return
            after = rows[-1][0]

    def digest_sum(self) -> int:
        return self._sum

    def set_digest_sum(self, value: int) -> None:
        with self._lock:
            self._begin()
            self._sum, self._dirty = value, True

    def set_exhausted(self, account_id: bytes, record_id: bytes | None) -> None:
        with self._lock:
            self._begin()
            if record_id is None:
                self._db.execute("DELETE FROM exhausted WHERE account_id=?", (account_id,))
            else:
                self._db.execute(
                    "INSERT INTO exhausted(account_id, record_id) VALUES(?, ?) "
                    "ON CONFLICT(account_id) DO UPDATE SET record_id=excluded.record_id",
                    (account_id, record_id))

    def exhausted(self) -> list[tuple[bytes, bytes]]:
        with self._lock:
            return [(a, r) for a, r in self._db.execute(
                "SELECT account_id, record_id FROM exhausted ORDER BY seq")]

    # ---- read views and bulk loading ---------------------------------------------------

    def read_view(self) -> ReadView:
        """A consistent view of the committed state, held until closed; commits go on."""
        with self._lock:
            self.commit()
            conn = connect(self.path, fsync=self._fsync)
            conn.execute("BEGIN")
            row = conn.execute(
                "SELECT (SELECT value FROM meta WHERE key='applied_index'), "
                "(SELECT value FROM meta WHERE key='count'), "
                "(SELECT value FROM meta WHERE key='digest_sum')").fetchone()
        return ReadView(conn, row[0] or 0, row[1] or 0, int.from_bytes(row[2] or b""))

    def insert_rows(self, rows: list[tuple[bytes, AccountEntry]]) -> None:
        """Bulk insert of new entries (loading a checked snapshot); the caller keeps the sums."""
        with self._lock:
            self._begin()
            self._db.executemany(
                "INSERT INTO accounts VALUES(?, ?, ?, ?, ?, ?, ?, ?)",
                [(a, e.record_id, e.sealed_record, e.attempts, e.limit, int(e.destroyed),
                  b"".join(e.guess_tags), entry_head(e)) for a, e in rows])
            self._db.executemany(
                "INSERT INTO exhausted(account_id, record_id) VALUES(?, ?)",
                [(a, e.record_id) for a, e in rows
                 if not e.destroyed and e.attempts >= e.limit])
            self._count += len(rows)
            self._dirty = True


def read_only_view(path: Path) -> ReadView:
    """A read view of a stopped node's database, opened read-only (nothing is written)."""
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
        conn.execute("BEGIN")
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    except sqlite3.DatabaseError as err:
        raise StoreError(f"{path} is not a usable state database: {err}") from None
    applied, count, total = meta.get("applied_index"), meta.get("count"), meta.get("digest_sum")
    view = ReadView(conn, applied if isinstance(applied, int) else 0,
                    count if isinstance(count, int) else 0,
                    int.from_bytes(total) if isinstance(total, bytes) else 0)
    view.meta = meta
    return view


class ReadView:
    """A read transaction on its own connection: the state as of one applied index."""

    def __init__(self, conn: sqlite3.Connection, applied: int, count: int, digest_sum: int) -> None:
        self._conn = conn
        self.meta: dict[str, object] = {}
        self.applied_index = applied
        self.count = count
        self.digest_sum = digest_sum

    def encoded_rows(self, batch: int = ITEMS_BATCH) -> Iterator[list[bytes]]:
        """Each entry as ``state.entry_bytes``, in account-id order, built by SQLite itself
        (a snapshot of millions of entries costs the Raft process little Python time)."""
        cursor = self._conn.execute(
            "SELECT CAST(account_id || record_id || head || tags || sealed AS BLOB) FROM accounts "
            "ORDER BY account_id")
        while rows := cursor.fetchmany(batch):
            yield [r[0] for r in rows]

    def rows(self, batch: int = ITEMS_BATCH) -> Iterator[list[tuple[bytes, AccountEntry]]]:
        cursor = self._conn.execute(
            "SELECT account_id, record_id, sealed, attempts, lim, destroyed, tags "
            "FROM accounts ORDER BY account_id")
        while rows := cursor.fetchmany(batch):
            yield [(r[0], _entry(r[1:])) for r in rows]

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._conn.execute("ROLLBACK")
        self._conn.close()

    def __enter__(self) -> ReadView:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
