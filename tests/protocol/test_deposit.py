"""Key deposit: only the export key opens it; only the session key opens its release."""

from __future__ import annotations

import secrets

import pytest

from bkv_protocol import deposit
from bkv_protocol.errors import AuthenticationError, ProtocolError

EXPORT_KEY = bytes(range(64))
SESSION_KEY = bytes(range(64, 128))
BACKUP_KEY = bytes(range(32))


def test_deposit_round_trip() -> None:
    sealed = deposit.seal_deposit(EXPORT_KEY, "alice", BACKUP_KEY)
    assert len(sealed) == deposit.DEPOSIT_BYTES
    assert BACKUP_KEY not in sealed
    deposit.check_deposit_format(sealed)
    assert deposit.open_deposit(EXPORT_KEY, "alice", sealed) == BACKUP_KEY


def test_deposit_is_randomised() -> None:
    first = deposit.seal_deposit(EXPORT_KEY, "alice", BACKUP_KEY)
    assert first != deposit.seal_deposit(EXPORT_KEY, "alice", BACKUP_KEY)


def test_other_export_key_or_account_fails() -> None:
    sealed = deposit.seal_deposit(EXPORT_KEY, "alice", BACKUP_KEY)
    with pytest.raises(AuthenticationError):
        deposit.open_deposit(secrets.token_bytes(64), "alice", sealed)
    with pytest.raises(AuthenticationError):
        deposit.open_deposit(EXPORT_KEY, "bob", sealed)


def test_release_round_trip_and_binding() -> None:
    sealed = deposit.seal_deposit(EXPORT_KEY, "alice", BACKUP_KEY)
    released = deposit.seal_for_session(SESSION_KEY, "alice", sealed)
    assert deposit.open_from_session(SESSION_KEY, "alice", released) == sealed
    with pytest.raises(AuthenticationError):
        deposit.open_from_session(EXPORT_KEY, "alice", released)
    with pytest.raises(AuthenticationError):
        deposit.open_from_session(SESSION_KEY, "bob", released)


def test_labels_separate_the_two_layers() -> None:
    """A release can't be opened as a deposit even with the same 64-byte key."""
    sealed = deposit.seal_deposit(EXPORT_KEY, "alice", BACKUP_KEY)
    released = deposit.seal_for_session(EXPORT_KEY, "alice", sealed)
    with pytest.raises(ProtocolError):
        deposit.open_deposit(EXPORT_KEY, "alice", released)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: deposit.seal_deposit(EXPORT_KEY, "alice", b"short"), "backup key must be 32"),
        (lambda: deposit.seal_deposit(b"short", "alice", BACKUP_KEY), "export key must be 64"),
        (lambda: deposit.seal_deposit(EXPORT_KEY, "", BACKUP_KEY), "account"),
        (lambda: deposit.open_deposit(EXPORT_KEY, "alice", b"\x01" * 10), "must be 61 bytes"),
        (lambda: deposit.check_deposit_format(b"\x02" * 61), "format version"),
        (lambda: deposit.seal_for_session(SESSION_KEY, "alice", b"junk"), "format version"),
        (lambda: deposit.open_from_session(SESSION_KEY, "alice", b"junk"), "wrong length"),
    ],
)
def test_malformed_input(call: object, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        call()  # type: ignore[operator]


def test_tampered_deposit_fails() -> None:
    sealed = bytearray(deposit.seal_deposit(EXPORT_KEY, "alice", BACKUP_KEY))
    sealed[20] ^= 0x40
    with pytest.raises(AuthenticationError):
        deposit.open_deposit(EXPORT_KEY, "alice", bytes(sealed))
