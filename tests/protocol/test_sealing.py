"""Request/reply sealing: round trips, and every way a relay could tamper with an envelope."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bkv_protocol import sealing
from bkv_protocol.errors import AuthenticationError, ProtocolError

LOGIN_START, LOGIN_FINISH = 3, 4


@pytest.fixture(scope="module")
def fleet() -> tuple[bytes, bytes]:
    return sealing.generate_fleet_keypair()


def test_request_round_trip(fleet: tuple[bytes, bytes]) -> None:
    private, public = fleet
    sealed = sealing.seal_request(public, "alice", 0, LOGIN_START, b"ke1")
    assert sealing.open_request(private, "alice", 0, LOGIN_START, sealed) == b"ke1"
    assert sealing.fleet_public_key(private) == public


@pytest.mark.parametrize(
    ("account", "shard", "step"),
    [("mallory", 0, LOGIN_START), ("alice", 1, LOGIN_START), ("alice", 0, LOGIN_FINISH)],
)
def test_request_bound_to_account_shard_and_step(
    fleet: tuple[bytes, bytes], account: str, shard: int, step: int
) -> None:
    private, public = fleet
    sealed = sealing.seal_request(public, "alice", 0, LOGIN_START, b"ke1")
    with pytest.raises(AuthenticationError):
        sealing.open_request(private, account, shard, step, sealed)


def test_request_for_another_fleet_is_rejected(fleet: tuple[bytes, bytes]) -> None:
    private, _ = fleet
    _, other_public = sealing.generate_fleet_keypair()
    sealed = sealing.seal_request(other_public, "alice", 0, LOGIN_START, b"x")
    with pytest.raises(AuthenticationError):
        sealing.open_request(private, "alice", 0, LOGIN_START, sealed)


@given(position=st.integers(min_value=0, max_value=10_000), flip=st.integers(1, 255))
def test_any_flipped_byte_is_rejected(position: int, flip: int) -> None:
    private, public = _FLEET
    sealed = bytearray(sealing.seal_request(public, "alice", 0, LOGIN_START, b"payload"))
    sealed[position % len(sealed)] ^= flip
    with pytest.raises(ProtocolError):
        sealing.open_request(private, "alice", 0, LOGIN_START, bytes(sealed))


_FLEET = sealing.generate_fleet_keypair()


@pytest.mark.parametrize("cut", [0, 1, 47, -1])
def test_truncated_request_is_rejected(fleet: tuple[bytes, bytes], cut: int) -> None:
    private, public = fleet
    sealed = sealing.seal_request(public, "alice", 0, LOGIN_START, b"payload")
    with pytest.raises(ProtocolError):
        sealing.open_request(private, "alice", 0, LOGIN_START, sealed[:cut])


def test_reply_round_trip_and_binding() -> None:
    key = sealing.new_response_key()
    sealed = sealing.seal_reply(key, "alice", 0, LOGIN_START, b"ke2")
    assert sealing.open_reply(key, "alice", 0, LOGIN_START, sealed) == b"ke2"
    with pytest.raises(AuthenticationError):
        sealing.open_reply(key, "alice", 0, LOGIN_FINISH, sealed)
    with pytest.raises(AuthenticationError):
        sealing.open_reply(key, "bob", 0, LOGIN_START, sealed)
    with pytest.raises(AuthenticationError):
        sealing.open_reply(sealing.new_response_key(), "alice", 0, LOGIN_START, sealed)
    with pytest.raises(ProtocolError):
        sealing.open_reply(key, "alice", 0, LOGIN_START, sealed[:20])
    tampered = bytearray(sealed)
    tampered[-1] ^= 1
    with pytest.raises(AuthenticationError):
        sealing.open_reply(key, "alice", 0, LOGIN_START, bytes(tampered))


@pytest.mark.parametrize(
    ("account", "shard", "step", "message"),
    [
        ("", 0, 1, "non-empty"),
        ("a" * 257, 0, 1, "longer than"),
        ("alice", -1, 1, "shard"),
        ("alice", 0, 9, "unknown message type"),
    ],
)
def test_malformed_binding(account: str, shard: int, step: int, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        sealing.binding(account, shard, step)


def test_binding_is_injective() -> None:
    assert sealing.binding("ab", 1, 1) != sealing.binding("a", 1, 1)
    assert sealing.binding("alice", 1, 2) != sealing.binding("alice", 2, 1)


def test_bad_keys_are_rejected() -> None:
    with pytest.raises(ProtocolError, match="32 bytes"):
        sealing.seal_request(b"short", "alice", 0, 1, b"")
    with pytest.raises(ProtocolError, match="32 bytes"):
        sealing.open_request(b"short", "alice", 0, 1, b"\0" * 64)
    with pytest.raises(ProtocolError, match="32 bytes"):
        sealing.seal_reply(b"short", "alice", 0, 1, b"")
