"""The Raft transport cipher that replaces pysyncobj's Fernet: round trip, refusals, ordering."""

from __future__ import annotations

import os

import pytest
from cryptography.exceptions import InvalidTag

from vault_node.raft.transport_cipher import TransportCipher

SECRET = os.urandom(32)


def test_a_peer_with_the_same_secret_opens_frames_in_order() -> None:
    sender, receiver = TransportCipher(SECRET), TransportCipher(SECRET)
    frames = [sender.encrypt_at_time(f"message {i}".encode(), 0) for i in range(3)]
    counters = [receiver.extract_timestamp(f) for f in frames]
    assert counters == sorted(counters) and len(set(counters)) == 3
    assert [receiver.decrypt(f) for f in frames] == [b"message 0", b"message 1", b"message 2"]
    assert b"message" not in b"".join(frames)


def test_a_sender_never_reuses_a_nonce() -> None:
    sender = TransportCipher(SECRET)
    headers = {sender.encrypt_at_time(b"same", 0)[:25] for _ in range(100)}
    assert len(headers) == 100


def test_another_secret_is_refused() -> None:
    frame = TransportCipher(os.urandom(32)).encrypt_at_time(b"pickle bytes", 0)
    with pytest.raises(InvalidTag):
        TransportCipher(SECRET).decrypt(frame)


@pytest.mark.parametrize("position", [0, 1, 20, 24, 25, -1])
def test_any_flipped_byte_is_refused(position: int) -> None:
    frame = bytearray(TransportCipher(SECRET).encrypt_at_time(b"pickle bytes", 0))
    frame[position] ^= 0x01
    with pytest.raises((InvalidTag, ValueError)):
        TransportCipher(SECRET).decrypt(bytes(frame))


def test_short_or_foreign_frames_are_refused() -> None:
    cipher = TransportCipher(SECRET)
    for junk in (b"", b"\x01" * 10, b"\x02" + os.urandom(200), b"\x01" + os.urandom(200)):
        with pytest.raises((InvalidTag, ValueError)):
            cipher.decrypt(junk)
    for junk in (b"", b"\x01" * 10, b"\x02" + os.urandom(200)):
        with pytest.raises(ValueError):
            cipher.extract_timestamp(junk)


def test_repr_shows_no_key_material() -> None:
    assert repr(TransportCipher(SECRET)) == "TransportCipher()"
