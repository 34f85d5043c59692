"""Durable journal, snapshot files and the AppendEntries filter (no sockets)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vault_node.raft.core import filter_append_entries
from vault_node.raft.journal import DurableJournal, base_entry, read_snapshot, write_snapshot


def _journal(tmp_path: Path, entries: list[tuple[bytes, int, int]]) -> DurableJournal:
    j = DurableJournal(tmp_path / "raft.journal")
    for e in entries:
        j.add(*e)
    j.sync()
    return j


def test_reload_truncate_and_compact(tmp_path: Path) -> None:
    entries = [(b"c%d" % i, i, 1 + i // 3) for i in range(1, 8)]
    j = _journal(tmp_path, entries)
    assert j.sync_count == 1  # one fsync for the whole batch
    j.setCurrentTerm(5, "127.0.0.1:1")
    j.setRaftCommitIndex(4)
    j._destroy()
    j = DurableJournal(tmp_path / "raft.journal")
    assert [j[i] for i in range(len(j))] == entries
    assert (j.getCurrentTerm(), j.getVotedForNodeId(), j.getRaftCommitIndex()) == (
        5, "127.0.0.1:1", 4)
    j.deleteEntriesFrom(5)
    j.add(b"new", 6, 9)
    j.deleteEntriesTo(2)
    j._destroy()
    j = DurableJournal(tmp_path / "raft.journal")
    # the snapshot's base entry keeps its index and term; its command is a no-op
    assert [j[i] for i in range(len(j))] == [
        base_entry(entries[2]), *entries[3:5], (b"new", 6, 9)]
    assert j[0][0] != entries[2][0] and j[0][1:] == entries[2][1:]
    j.clear()
    j._destroy()
    assert len(DurableJournal(tmp_path / "raft.journal")) == 0


def test_torn_tail_is_cut_off(tmp_path: Path) -> None:
    j = _journal(tmp_path, [(b"one", 1, 1), (b"two", 2, 1)])
    j._destroy()
    path = tmp_path / "raft.journal"
    data = path.read_bytes()
    path.write_bytes(data[:-2])  # crash in the middle of the last record
    j = DurableJournal(path)
    assert len(j) == 1 and j[0] == (b"one", 1, 1)
    j.add(b"three", 2, 2)
    j._destroy()
    assert DurableJournal(path)[-1] == (b"three", 2, 2)


def test_corrupted_record_stops_replay(tmp_path: Path) -> None:
    j = _journal(tmp_path, [(b"one", 1, 1), (b"two", 2, 1)])
    j._destroy()
    path = tmp_path / "raft.journal"
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    assert len(DurableJournal(path)) == 1


def test_foreign_file_refused(tmp_path: Path) -> None:
    path = tmp_path / "raft.journal"
    path.write_bytes(b"PYSYNCOBJ something else")
    with pytest.raises(RuntimeError):
        DurableJournal(path)


def test_snapshot_round_trip_and_tamper(tmp_path: Path) -> None:
    path = tmp_path / "snap"
    write_snapshot(path, {"version": 1, "entries": []}, (b"\x00", 9, 2), (b"\x01", 8, 2))
    assert read_snapshot(path) == ({"version": 1, "entries": []}, (b"\x00", 9, 2),
                                   (b"\x01", 8, 2))
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    data = path.read_bytes().replace(b'"entries"', b'"entriez"')
    path.write_bytes(data)
    with pytest.raises(ValueError):
        read_snapshot(path)


def _ae(prev: int, prev_term: int, entries: list[tuple[bytes, int, int]],
        commit: int = 0) -> dict[str, object]:
    return {"type": "append_entries", "term": 3, "commit_index": commit, "prevLogIdx": prev,
            "prevLogTerm": prev_term, "entries": entries}


def test_filter_skips_held_entries(tmp_path: Path) -> None:
    log = [(b"e%d" % i, i, 1) for i in range(1, 6)]
    j = _journal(tmp_path, log)
    # all entries already held and the log goes further: answered without truncation
    msg, ack = filter_append_entries(j, _ae(2, 1, log[2:4], commit=5))
    assert "prevLogIdx" not in msg and msg["commit_index"] == 4
    assert ack == {"type": "next_node_idx", "next_node_idx": 5, "reset": False, "success": True}
    # a heartbeat with an older prevLogIdx: same
    msg, ack = filter_append_entries(j, _ae(3, 1, []))
    assert "prevLogIdx" not in msg and ack is not None and ack["next_node_idx"] == 4
    # partly held, partly new: only the new suffix reaches pysyncobj
    new = (b"e6", 6, 3)
    msg, ack = filter_append_entries(j, _ae(3, 1, [*log[3:5], new]))
    assert ack is None and msg["prevLogIdx"] == 5 and msg["entries"] == [new]
    # a real conflict keeps the conflicting suffix so pysyncobj replaces it
    conflict = [(b"x4", 4, 2), (b"x5", 5, 2)]
    msg, ack = filter_append_entries(j, _ae(3, 1, conflict))
    assert ack is None and msg["prevLogIdx"] == 3 and msg["entries"] == conflict
    # prev mismatch or missing: untouched (pysyncobj rejects it)
    for bad in (_ae(3, 2, []), _ae(9, 1, [])):
        assert filter_append_entries(j, bad) == (bad, None)
    # exactly up to date: untouched semantics (prev = last)
    msg, ack = filter_append_entries(j, _ae(5, 1, []))
    assert ack is None and msg["prevLogIdx"] == 5


def test_truncation_monitor_counts_pysyncobj_message() -> None:
    import logging

    from vault_node.raft.replication import truncation_warnings

    before = truncation_warnings()
    logging.getLogger("pysyncobj.syncobj").critical(
        "truncating already-applied log entries from index %d (last applied: %d)", 5, 9)
    assert truncation_warnings() == before + 1
    from vault_node.raft.core import TRUNCATION_MONITOR

    TRUNCATION_MONITOR.count = before  # leave the process-wide counter as found
