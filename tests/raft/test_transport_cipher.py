"""The Raft link's handshake and frames (``vault_node.raft.transport_cipher``), without sockets."""

from __future__ import annotations

import os

import pytest

from vault_node.raft.transport_cipher import (
    Initiator,
    LinkError,
    LinkKey,
    LinkSecrets,
    parse_public_key,
    respond,
)

SECRET = b"s" * 32


def _pair(
    secret_a: bytes = SECRET, secret_b: bytes = SECRET
) -> tuple[LinkSecrets, LinkSecrets]:
    return LinkSecrets(secret_a, LinkKey.generate()), LinkSecrets(secret_b, LinkKey.generate())


def test_handshake_then_frames_both_ways() -> None:
    a, b = _pair()
    dial = Initiator.start(a, b.key.public)
    answer, peer, b_session = respond(b, dial.hello, lambda key: key == a.key.public)
    assert peer == a.key.public
    a_session = dial.finish(answer)
    for i in range(3):
        assert b_session.open(a_session.seal(b"to b %d" % i)) == b"to b %d" % i
        assert a_session.open(b_session.seal(b"to a %d" % i)) == b"to a %d" % i


def test_non_member_key_is_refused_before_key_agreement() -> None:
    a, b = _pair()
    with pytest.raises(LinkError, match="not a current member"):
        respond(b, Initiator.start(a, b.key.public).hello, lambda key: False)


def test_wrong_transport_secret_is_refused() -> None:
    a, b = _pair(secret_b=os.urandom(32))
    with pytest.raises(LinkError, match="transport secret"):
        respond(b, Initiator.start(a, b.key.public).hello, lambda key: True)


def test_impostor_responder_is_refused() -> None:
    a, b = _pair()
    impostor = LinkSecrets(SECRET, LinkKey.generate())
    dial = Initiator.start(a, b.key.public)
    answer, _, _ = respond(impostor, dial.hello, lambda key: True)
    with pytest.raises(LinkError, match="another link key"):
        dial.finish(answer)


def test_replayed_reordered_and_forged_frames_are_refused() -> None:
    a, b = _pair()
    dial = Initiator.start(a, b.key.public)
    answer, _, b_session = respond(b, dial.hello, lambda key: True)
    a_session = dial.finish(answer)
    first, second = a_session.seal(b"one"), a_session.seal(b"two")
    with pytest.raises(LinkError, match="out of sequence"):
        b_session.open(second)  # reordered
    assert b_session.open(first) == b"one"
    with pytest.raises(LinkError, match="out of sequence"):
        b_session.open(first)  # replayed
    forged = bytearray(second)
    forged[-1] ^= 1
    with pytest.raises(LinkError, match="authentication"):
        b_session.open(bytes(forged))
    assert b_session.open(second) == b"two"  # a refused frame moves nothing forward


def test_each_connection_has_its_own_keys() -> None:
    """A frame from one connection is refused on another between the same two members."""
    a, b = _pair()
    sessions = []
    for _ in range(2):
        dial = Initiator.start(a, b.key.public)
        answer, _, b_session = respond(b, dial.hello, lambda key: True)
        sessions.append((dial.finish(answer), b_session))
    frame = sessions[0][0].seal(b"first connection")
    with pytest.raises(LinkError):
        sessions[1][1].open(frame)


def test_keys_and_reprs_carry_no_secret() -> None:
    key = LinkKey.generate()
    assert LinkKey.from_hex(key.private_hex()).public == key.public
    assert parse_public_key(key.public_hex.upper()) == key.public
    assert key.private_hex() not in repr(key) + repr(LinkSecrets(SECRET, key))
    assert SECRET.decode() not in repr(LinkSecrets(SECRET, key))
    for bad in ("", "00" * 31, "zz" * 32):
        with pytest.raises(LinkError):
            parse_public_key(bad)
        with pytest.raises(LinkError):
            LinkKey.from_hex(bad)
