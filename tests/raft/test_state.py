"""The pure state machine: semantics, validation, snapshots, digests (no sockets)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs

from vault_node import state as st
from vault_node.raft import log_entries as le

A = b"a" * 32
B = b"b" * 32
R1 = b"1" * 16
R2 = b"2" * 16
T1 = b"\x01" * 16
T2 = b"\x02" * 16
T3 = b"\x03" * 16


def test_put_then_attempts_until_destroyed() -> None:
    s = st.VaultState()
    assert s.apply(st.Put(A, R1, b"sealed", 3)).outcome == st.Outcome.OK
    for n in (1, 2, 3):
        r = s.apply(st.BeginAttempt(A))
        assert (r.outcome, r.attempts, r.limit, r.sealed_record, r.record_id) == (
            st.Outcome.GRANTED, n, 3, b"sealed", R1)
    r = s.apply(st.BeginAttempt(A))
    assert r.outcome == st.Outcome.DESTROYED and r.sealed_record == b""
    entry = s.entry(A)
    assert entry is not None and entry.destroyed and entry.sealed_record == b""
    assert s.apply(st.BeginAttempt(A)).outcome == st.Outcome.DESTROYED
    assert s.apply(st.ResetAttempts(A, R1)).outcome == st.Outcome.STALE


def test_unknown_account() -> None:
    s = st.VaultState()
    assert s.apply(st.BeginAttempt(A)).outcome == st.Outcome.NOT_REGISTERED
    assert s.apply(st.ResetAttempts(A, R1)).outcome == st.Outcome.NOT_REGISTERED
    assert s.apply(st.DestroyIfExhausted(A, R1)).outcome == st.Outcome.NOT_REGISTERED


def test_reset_only_for_current_record() -> None:
    s = st.VaultState()
    s.apply(st.Put(A, R1, b"x", 5))
    s.apply(st.BeginAttempt(A))
    s.apply(st.Put(A, R2, b"y", 5))  # re-registration replaces and resets
    assert s.entry(A) == st.AccountEntry(R2, b"y", 0, 5)
    s.apply(st.BeginAttempt(A))
    assert s.apply(st.ResetAttempts(A, R1)).outcome == st.Outcome.STALE
    assert s.entry(A).attempts == 1  # type: ignore[union-attr]
    assert s.apply(st.ResetAttempts(A, R2)).outcome == st.Outcome.OK
    assert s.entry(A).attempts == 0  # type: ignore[union-attr]


def test_destroy_if_exhausted() -> None:
    s = st.VaultState()
    s.apply(st.Put(A, R1, b"x", 1))
    assert s.apply(st.DestroyIfExhausted(A, R1)).outcome == st.Outcome.STALE
    assert s.apply(st.BeginAttempt(A)).outcome == st.Outcome.GRANTED
    assert s.apply(st.DestroyIfExhausted(A, R2)).outcome == st.Outcome.STALE
    assert s.apply(st.DestroyIfExhausted(A, R1)).outcome == st.Outcome.DESTROYED
    assert s.entry(A).destroyed  # type: ignore[union-attr]
    s.apply(st.Delete(A))
    assert s.entry(A) is None and len(s) == 0


@pytest.mark.parametrize(
    "command",
    [
        st.Put(b"short", R1, b"x", 10),
        st.Put(A, b"short", b"x", 10),
        st.Put(A, R1, b"", 10),
        st.Put(A, R1, b"x", 0),
        st.Put(A, R1, b"x", 101),
        st.Put(A, R1, b"x" * (st.MAX_SEALED_RECORD_BYTES + 1), 10),
        st.Put(A, R1, "text", 10),  # type: ignore[arg-type]
        st.BeginAttempt(b"x" * 31),
        st.BeginAttempt(A, b"x" * 15),
        st.BeginAttempt(A, b"x" * 17),
        st.BeginAttempt(A, "t" * 16),  # type: ignore[arg-type]
        st.ResetAttempts(A, b""),
        "not a command",
    ],
)
def test_invalid_commands(command: object) -> None:
    with pytest.raises(ValueError):
        st.validate(command)
    s = st.VaultState()
    assert s.apply(command).outcome == st.Outcome.INVALID  # committed garbage: no-op, no crash
    assert len(s) == 0


def test_encoding_round_trip_and_garbage() -> None:
    for c in (st.Put(A, R1, b"sealed", 7), st.BeginAttempt(A), st.BeginAttempt(A, T1),
              st.ResetAttempts(A, R1), st.DestroyIfExhausted(A, R2), st.Delete(B),
              st.Delete(B, R1)):
        assert le.decode_command(le.encode_command(c)) == c
        command, time_ms = le.decode_entry(le.encode_entry(c, 1234))
        assert (command, time_ms) == (c, 1234)
    for junk in (b"", b"\x09" + A, b"\x02" + A + b"x", b"\x01" + A + R1 + b"\x00\x00x",
                 b"\x02" + A + T1 + b"x", b"\x02" + A + T1[:15], b"\x05" + A + T1[:15]):
        with pytest.raises(ValueError):
            le.decode_command(junk)


def test_untagged_entries_of_the_old_format_still_decode() -> None:
    """A BeginAttempt logged before tags existed is tag 2 + account id: counted every time."""
    old = b"\x02" + A
    assert le.decode_command(old) == st.BeginAttempt(A, b"")
    assert le.encode_command(st.BeginAttempt(A)) == old
    s = st.VaultState()
    s.apply(st.Put(A, R1, b"x", 2))
    assert [s.apply(le.decode_command(old)).attempts for _ in range(2)] == [1, 2]
    assert s.apply(le.decode_command(old)).outcome == st.Outcome.DESTROYED


def test_same_tag_twice_counts_once() -> None:
    s = st.VaultState()
    s.apply(st.Put(A, R1, b"sealed", 5))
    first = s.apply(st.BeginAttempt(A, T1))
    again = s.apply(st.BeginAttempt(A, T1))
    assert (first.outcome, first.attempts, first.repeated) == (st.Outcome.GRANTED, 1, False)
    assert (again.outcome, again.attempts, again.repeated) == (st.Outcome.GRANTED, 1, True)
    assert (again.sealed_record, again.record_id, again.limit) == (b"sealed", R1, 5)
    assert s.apply(st.BeginAttempt(A, T2)).attempts == 2
    assert s.apply(st.BeginAttempt(A)).attempts == 3  # untagged: always counted
    assert s.apply(st.BeginAttempt(A)).attempts == 4
    assert s.entry(A) == st.AccountEntry(R1, b"sealed", 4, 5, False, (T1, T2))


def test_same_tag_at_the_limit_is_granted_not_destroyed() -> None:
    s = st.VaultState()
    s.apply(st.Put(A, R1, b"sealed", 2))
    s.apply(st.BeginAttempt(A, T1))
    assert s.apply(st.BeginAttempt(A, T2)).attempts == 2
    for tag in (T2, T1, T2):
        r = s.apply(st.BeginAttempt(A, tag))
        assert (r.outcome, r.attempts, r.repeated) == (st.Outcome.GRANTED, 2, True)
    assert not s.entry(A).destroyed  # type: ignore[union-attr]
    r = s.apply(st.BeginAttempt(A, T3))  # a new guess at the limit
    assert (r.outcome, r.attempts, r.sealed_record) == (st.Outcome.DESTROYED, 2, b"")
    entry = s.entry(A)
    assert entry is not None and entry.destroyed and entry.guess_tags == ()
    assert s.apply(st.BeginAttempt(A, T1)).outcome == st.Outcome.DESTROYED


def test_destroy_if_exhausted_clears_tags_and_refuses_repeats() -> None:
    s = st.VaultState()
    s.apply(st.Put(A, R1, b"sealed", 1))
    s.apply(st.BeginAttempt(A, T1))
    assert s.apply(st.DestroyIfExhausted(A, R1)).outcome == st.Outcome.DESTROYED
    assert s.entry(A).guess_tags == ()  # type: ignore[union-attr]
    assert s.apply(st.BeginAttempt(A, T1)).outcome == st.Outcome.DESTROYED


def test_reset_and_put_clear_the_tags() -> None:
    s = st.VaultState()
    s.apply(st.Put(A, R1, b"x", 5))
    s.apply(st.BeginAttempt(A, T1))
    assert s.apply(st.ResetAttempts(A, R1)).outcome == st.Outcome.OK
    assert s.entry(A) == st.AccountEntry(R1, b"x", 0, 5)
    r = s.apply(st.BeginAttempt(A, T1))  # counted again after the reset
    assert (r.attempts, r.repeated) == (1, False)
    s.apply(st.Put(A, R2, b"y", 5))
    assert s.entry(A) == st.AccountEntry(R2, b"y", 0, 5)
    assert s.apply(st.BeginAttempt(A, T1)).attempts == 1


def test_tags_are_bounded_by_the_limit() -> None:
    s = st.VaultState()
    s.apply(st.Put(A, R1, b"x", 3))
    for i in range(10):
        s.apply(st.BeginAttempt(A, bytes([i]) * 16))
        entry = s.entry(A)
        assert entry is not None and len(entry.guess_tags) <= min(entry.attempts, 3)
    assert s.entry(A).destroyed  # type: ignore[union-attr]


def test_reprs_hide_secrets() -> None:
    put = st.Put(A, R1, b"SECRETSEALED", 3)
    s = st.VaultState()
    s.apply(put)
    granted = s.apply(st.BeginAttempt(A))
    for text in (repr(put), repr(granted), repr(s.entry(A)), repr(s)):
        assert "SECRETSEALED" not in text and A.hex() not in text and "aaaa" not in text


_accounts = hs.sampled_from([bytes([i]) * 32 for i in range(3)])
_records = hs.sampled_from([bytes([i]) * 16 for i in range(3)])
_tags = hs.sampled_from([b""] + [bytes([i]) * 16 for i in range(1, 6)])  # b"": untagged
_commands = hs.one_of(
    hs.builds(st.Put, _accounts, _records, hs.binary(min_size=1, max_size=8),
              hs.integers(1, 4)),
    hs.builds(st.BeginAttempt, _accounts),
    hs.builds(st.BeginAttempt, _accounts, _tags),
    hs.builds(st.BeginAttempt, _accounts, _tags),
    hs.builds(st.ResetAttempts, _accounts, _records),
    hs.builds(st.DestroyIfExhausted, _accounts, _records),
    hs.builds(st.Delete, _accounts),
    hs.builds(st.Delete, _accounts, _records),
)


@settings(max_examples=400, deadline=None)
@given(hs.lists(_commands, max_size=60))
def test_granted_never_exceeds_limit_between_resets(commands: list[st.Command]) -> None:
    """Per deposit (Put), DISTINCT guesses GRANTED since the last reset never exceed limit.

    A guess is a tag (repeats of it are the same guess) or an untagged attempt
    (each one a guess of its own); repeats must be granted without counting.
    """
    s = st.VaultState()
    tags: dict[bytes, set[bytes]] = {}
    untagged: dict[bytes, int] = {}
    for c in commands:
        before = s.entry(c.account_id)
        r = s.apply(c)
        reset = isinstance(c, st.ResetAttempts) and r.outcome == st.Outcome.OK
        if isinstance(c, st.Put) or reset:
            tags[c.account_id], untagged[c.account_id] = set(), 0
        elif isinstance(c, st.BeginAttempt) and r.outcome == st.Outcome.GRANTED:
            assert before is not None
            seen = tags[c.account_id]
            assert r.repeated == (c.guess_tag in seen)
            if r.repeated:
                assert r.attempts == before.attempts and s.entry(c.account_id) == before
            elif c.guess_tag:
                seen.add(c.guess_tag)
            else:
                untagged[c.account_id] += 1
            distinct = len(seen) + untagged[c.account_id]
            assert distinct <= r.limit and r.attempts == distinct
        e = s.entry(c.account_id)
        if e is not None:
            assert 0 <= e.attempts <= e.limit
            assert not (e.destroyed and (e.sealed_record or e.guess_tags))
            assert len(e.guess_tags) <= e.attempts and len(set(e.guess_tags)) == len(e.guess_tags)
            if not e.destroyed:
                assert set(e.guess_tags) == tags[c.account_id]


@settings(max_examples=100, deadline=None)
@given(hs.lists(_commands, max_size=40))
def test_digest_determinism_and_snapshot_round_trip(commands: list[st.Command]) -> None:
    a, b = st.VaultState(), st.VaultState()
    results_a = [a.apply(c) for c in commands]
    results_b = [b.apply(c) for c in commands]
    assert results_a == results_b
    assert a.digest() == b.digest()
    restored = st.VaultState.from_plain(a.to_plain())
    assert restored.digest() == a.digest() and len(restored) == len(a)
    for c in commands:  # and it behaves identically afterwards
        assert restored.apply(c) == a.apply(c)


def test_digest_distinguishes_counters() -> None:
    a, b = st.VaultState(), st.VaultState()
    for s in (a, b):
        s.apply(st.Put(A, R1, b"x", 5))
    b.apply(st.BeginAttempt(A))
    assert a.digest() != b.digest()


def test_digest_distinguishes_tags() -> None:
    a, b, c = st.VaultState(), st.VaultState(), st.VaultState()
    for s in (a, b, c):
        s.apply(st.Put(A, R1, b"x", 5))
    a.apply(st.BeginAttempt(A))
    b.apply(st.BeginAttempt(A, T1))
    c.apply(st.BeginAttempt(A, T2))
    assert len({a.digest(), b.digest(), c.digest()}) == 3
    assert st.VaultState.from_plain(b.to_plain()).entry(A) == b.entry(A)


def test_from_plain_rejects_malformed() -> None:
    good = st.VaultState()
    good.apply(st.Put(A, R1, b"x", 5))
    plain = good.to_plain()
    bad_attempts = {"version": 1, "entries": [[A.hex(), R1.hex(), "78", 9, 5, False]]}
    destroyed_with_record = {"version": 1, "entries": [[A.hex(), R1.hex(), "78", 5, 5, True]]}

    def v2(attempts: int, destroyed: bool, tags: object, sealed: str = "78") -> dict[str, Any]:
        return {"version": 2, "entries": [[A.hex(), R1.hex(), sealed, attempts, 5, destroyed,
                                           tags]]}

    for bad in ({"version": 3, "entries": []}, bad_attempts, destroyed_with_record,
                {"version": 1}, {"version": 1, "entries": [["zz"]]},
                {"version": 2, "entries": [[A.hex(), R1.hex(), "78", 0, 5, False]]},
                {"version": 1, "entries": [[A.hex(), R1.hex(), "78", 0, 5, False, []]]},
                v2(1, False, [T1.hex(), T2.hex()]),  # more tags than attempts
                v2(2, False, [T1.hex(), T1.hex()]),  # a tag twice
                v2(1, False, [T1.hex()[:30]]),  # short tag
                v2(1, False, T1.hex()),  # not a list
                v2(1, True, [T1.hex()], sealed=""),  # a tombstone keeps no tags
                {"version": 2, "entries": [[A.hex(), R1.hex(), "78", 0, 5, False, []]] * 2}):
        with pytest.raises(ValueError):
            st.VaultState.from_plain(bad)
    assert st.VaultState.from_plain(plain).digest() == good.digest()
    assert plain["version"] == 2
    assert st.VaultState.from_plain(v2(1, False, [T1.hex()])).entry(A) == st.AccountEntry(
        R1, b"x", 1, 5, False, (T1,))


def test_version_1_snapshots_still_load() -> None:
    old = {"version": 1, "entries": [[A.hex(), R1.hex(), "78", 2, 5, False]]}
    s = st.VaultState.from_plain(old)
    assert s.entry(A) == st.AccountEntry(R1, b"x", 2, 5)
    assert s.apply(st.BeginAttempt(A, T1)).attempts == 3


@given(hs.lists(_commands, max_size=60))
def test_exhausted_index_matches_the_entries(commands: list[st.Command]) -> None:
    """The leader's sweep list is exactly the live records with no guess left, also after a
    snapshot round trip."""
    state = st.VaultState()
    for command in commands:
        state.apply(command)
        expected = {
            account_id: entry.record_id
            for account_id in {c.account_id for c in commands}
            if (entry := state.entry(account_id)) is not None
            and not entry.destroyed and entry.attempts >= entry.limit
        }
        assert dict(state.exhausted()) == expected
    restored = st.VaultState.from_plain(state.to_plain())
    assert dict(restored.exhausted()) == dict(state.exhausted())


def test_a_delete_bound_to_a_record_spares_its_replacement() -> None:
    state = st.VaultState()
    state.apply(st.Put(A, R1, b"first", 3))
    state.apply(st.Put(A, R2, b"second", 3))  # replaced between the login and its deletion
    assert state.apply(st.Delete(A, R1)).outcome == st.Outcome.STALE
    assert state.entry(A) is not None
    assert state.apply(st.Delete(A, R2)).outcome == st.Outcome.OK
    assert state.entry(A) is None
    assert state.apply(st.Delete(A, R2)).outcome == st.Outcome.STALE  # nothing left to delete
    state.apply(st.Put(A, R1, b"x", 1))
    state.apply(st.BeginAttempt(A))
    state.apply(st.BeginAttempt(A))  # destroyed: a tombstone is not the record a login saw
    assert state.apply(st.Delete(A, R1)).outcome == st.Outcome.STALE
    assert state.apply(st.Delete(A)).outcome == st.Outcome.OK  # the unbound form still works
