"""The pure state machine: semantics, validation, snapshots, digests (no sockets)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs

from vault_node import state as st

A = b"a" * 32
B = b"b" * 32
R1 = b"1" * 16
R2 = b"2" * 16


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
    for c in (st.Put(A, R1, b"sealed", 7), st.BeginAttempt(A), st.ResetAttempts(A, R1),
              st.DestroyIfExhausted(A, R2), st.Delete(B)):
        assert st.decode_command(st.encode_command(c)) == c
    for junk in (b"", b"\x09" + A, b"\x02" + A + b"x", b"\x01" + A + R1 + b"\x00\x00x"):
        with pytest.raises(ValueError):
            st.decode_command(junk)


def test_reprs_hide_secrets() -> None:
    put = st.Put(A, R1, b"SECRETSEALED", 3)
    s = st.VaultState()
    s.apply(put)
    granted = s.apply(st.BeginAttempt(A))
    for text in (repr(put), repr(granted), repr(s.entry(A)), repr(s)):
        assert "SECRETSEALED" not in text and A.hex() not in text and "aaaa" not in text


_accounts = hs.sampled_from([bytes([i]) * 32 for i in range(3)])
_records = hs.sampled_from([bytes([i]) * 16 for i in range(3)])
_commands = hs.one_of(
    hs.builds(st.Put, _accounts, _records, hs.binary(min_size=1, max_size=8),
              hs.integers(1, 4)),
    hs.builds(st.BeginAttempt, _accounts),
    hs.builds(st.ResetAttempts, _accounts, _records),
    hs.builds(st.DestroyIfExhausted, _accounts, _records),
    hs.builds(st.Delete, _accounts),
)


@settings(max_examples=300, deadline=None)
@given(hs.lists(_commands, max_size=60))
def test_granted_never_exceeds_limit_between_resets(commands: list[st.Command]) -> None:
    """Per deposit (Put), GRANTED results since the last successful reset never exceed limit."""
    s = st.VaultState()
    granted: dict[bytes, int] = {}
    for c in commands:
        r = s.apply(c)
        reset = isinstance(c, st.ResetAttempts) and r.outcome == st.Outcome.OK
        if isinstance(c, st.Put) or reset:
            granted[c.account_id] = 0
        elif r.outcome == st.Outcome.GRANTED:
            granted[c.account_id] += 1
            assert granted[c.account_id] <= r.limit
            assert r.attempts == granted[c.account_id]
        e = s.entry(c.account_id)
        if e is not None:
            assert 0 <= e.attempts <= e.limit
            assert not (e.destroyed and e.sealed_record)


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


def test_from_plain_rejects_malformed() -> None:
    good = st.VaultState()
    good.apply(st.Put(A, R1, b"x", 5))
    plain = good.to_plain()
    bad_attempts = {"version": 1, "entries": [[A.hex(), R1.hex(), "78", 9, 5, False]]}
    destroyed_with_record = {"version": 1, "entries": [[A.hex(), R1.hex(), "78", 5, 5, True]]}
    for bad in ({"version": 2, "entries": []}, bad_attempts, destroyed_with_record,
                {"version": 1}, {"version": 1, "entries": [["zz"]]}):
        with pytest.raises(ValueError):
            st.VaultState.from_plain(bad)
    assert st.VaultState.from_plain(plain).digest() == good.digest()
