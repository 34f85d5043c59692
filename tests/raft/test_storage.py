"""The state on disk: SQLite store against the in-memory one, snapshot streams (no sockets)."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

from vault_node import state as st
from vault_node.raft.snapshot_stream import (
    SnapshotFormatError,
    SnapshotHeader,
    read_header,
    read_stream,
    write_stream,
)
from vault_node.storage.sqlite_store import SqliteStore, StoreError

_accounts = hs.sampled_from([bytes([i]) * 32 for i in range(1, 5)])
_records = hs.sampled_from([bytes([i]) * 16 for i in range(1, 4)])
_tags = hs.sampled_from([b"", b"\x01" * 16, b"\x02" * 16, b"\x03" * 16])
_commands = hs.one_of(
    hs.builds(st.Put, _accounts, _records, hs.binary(min_size=1, max_size=40),
              hs.integers(1, 4)),
    hs.builds(st.BeginAttempt, _accounts, _tags),
    hs.builds(st.ResetAttempts, _accounts, _records),
    hs.builds(st.DestroyIfExhausted, _accounts, _records),
    hs.builds(st.Delete, _accounts, hs.sampled_from([b"", b"\x01" * 16])),
)


def _snapshot(store: SqliteStore, path: Path, state_index: int = 7) -> SnapshotHeader:
    store.commit()
    with store.read_view() as view:
        header = SnapshotHeader(
            last=(b"\x02cmd", 9, 2), previous=(b"\x01", 8, 2), state_index=state_index,
            count=view.count, digest=st.state_digest(view.count, view.digest_sum),
            members=[], cluster_id="c1", epoch=1, taken_at_ms=1)
        write_stream(path, header, view.encoded_rows(), durable=False)
    return header


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(hs.lists(_commands, max_size=50))
def test_the_disk_store_decides_exactly_like_memory(tmp_path: Path, commands: list[st.Command]
                                                   ) -> None:
    db = tmp_path / f"{os.urandom(4).hex()}.sqlite"
    memory, disk = st.VaultState(), st.VaultState(SqliteStore(db, fsync=False))
    for command in commands:
        assert disk.apply(command) == memory.apply(command)
        assert disk.digest() == memory.digest() and len(disk) == len(memory)
        assert disk.exhausted() == memory.exhausted()
    # a digest computed incrementally equals one computed from scratch
    assert st.VaultState.from_plain(memory.to_plain()).digest() == disk.digest()
    disk.store.close()  # type: ignore[attr-defined]
    reopened = st.VaultState(SqliteStore(db, fsync=False))
    assert reopened.digest() == memory.digest() and reopened.to_plain() == memory.to_plain()


def test_a_read_view_is_frozen_while_commits_go_on(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.sqlite", fsync=False)
    state = st.VaultState(store)
    state.apply(st.Put(b"a" * 32, b"1" * 16, b"x" * 100, 3))
    store.commit()
    view = store.read_view()
    before = state.digest()
    state.apply(st.Put(b"b" * 32, b"1" * 16, b"y" * 100, 3))
    state.apply(st.BeginAttempt(b"a" * 32))
    store.commit()
    rows = [r for batch in view.rows() for r in batch]
    assert [a for a, _ in rows] == [b"a" * 32] and rows[0][1].attempts == 0
    assert st.state_digest(view.count, view.digest_sum) == before != state.digest()
    view.close()


def test_snapshot_round_trip_and_every_damage_is_refused(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.sqlite", fsync=False)
    state = st.VaultState(store)
    for i in range(300):
        state.apply(st.Put(i.to_bytes(32), b"1" * 16, os.urandom(50 + i), 5))
        if i % 3 == 0:
            state.apply(st.BeginAttempt(i.to_bytes(32), bytes([i % 256]) * 16))
    path = tmp_path / "snap"
    header = _snapshot(store, path)
    assert read_header(path) == header
    loaded = SqliteStore(tmp_path / "l.sqlite", fsync=False)
    got, total = read_stream(path, loaded.insert_rows)
    loaded.set_digest_sum(total)
    assert got == header and st.VaultState(loaded).digest() == state.digest()
    assert st.VaultState(loaded).to_plain() == state.to_plain()

    data = path.read_bytes()
    damaged = {
        "flipped byte in a row": data[:5000] + bytes([data[5000] ^ 1]) + data[5001:],
        "truncated": data[:-100],
        "trailer cut": data[:-1],
        "extra byte": data + b"\0",
        "other magic": b"X" + data[1:],
    }
    for name, blob in damaged.items():
        path.write_bytes(blob)
        with pytest.raises(SnapshotFormatError):
            read_stream(path, lambda _rows: None)
        assert name


def test_a_header_that_lies_about_the_rows_is_refused(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.sqlite", fsync=False)
    st.VaultState(store).apply(st.Put(b"a" * 32, b"1" * 16, b"x", 3))
    store.commit()
    path = tmp_path / "snap"
    with store.read_view() as view:
        header = SnapshotHeader((b"\x02", 9, 2), (b"\x01", 8, 2), 7, view.count,
                                b"\0" * 32, [], "c", 0, 0)
        write_stream(path, header, view.encoded_rows(), durable=False)
    with pytest.raises(SnapshotFormatError, match="do not match"):
        read_stream(path, lambda _rows: None)


def test_secure_delete_leaves_no_destroyed_record_in_any_file(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.sqlite")
    state = st.VaultState(store)
    secret = os.urandom(600)
    state.apply(st.Put(b"a" * 32, b"1" * 16, secret, 1))
    for i in range(50):
        state.apply(st.Put(i.to_bytes(32), b"1" * 16, os.urandom(600), 3))
    store.commit(durable=True)
    state.apply(st.BeginAttempt(b"a" * 32))
    state.apply(st.DestroyIfExhausted(b"a" * 32, b"1" * 16))
    store.commit()
    store.erase_checkpoint()
    for f in tmp_path.iterdir():
        assert secret not in f.read_bytes(), f.name


def test_a_file_that_is_not_a_state_database_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "s.sqlite"
    bad.write_bytes(b"not a database" * 100)
    with pytest.raises(StoreError):
        SqliteStore(bad)
    other = tmp_path / "o.sqlite"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value)")
        conn.execute("INSERT INTO meta VALUES('schema_version', 99)")
    with pytest.raises(StoreError, match="version 99"):
        SqliteStore(other)
