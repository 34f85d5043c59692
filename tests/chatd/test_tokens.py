"""Account tokens: round trip, expiry, tampering, canonical encoding."""

from __future__ import annotations

import base64

import pytest

from bkv_protocol import tokens
from bkv_protocol.errors import ProtocolError

NOW = 1_800_000_000.0


@pytest.fixture(scope="module")
def keypair() -> tuple[bytes, bytes]:
    return tokens.generate_signing_key()


def test_round_trip(keypair: tuple[bytes, bytes]) -> None:
    private, public = keypair
    token = tokens.mint_token(private, "alice@example", ttl_seconds=60, now=NOW)
    assert tokens.verify_token(public, token, now=NOW + 59) == "alice@example"
    assert tokens.public_key_from(private) == public


def test_unicode_account(keypair: tuple[bytes, bytes]) -> None:
    private, public = keypair
    token = tokens.mint_token(private, "zoë", now=NOW)
    assert tokens.verify_token(public, token, now=NOW) == "zoë"


def test_expired(keypair: tuple[bytes, bytes]) -> None:
    private, public = keypair
    token = tokens.mint_token(private, "alice", ttl_seconds=60, now=NOW)
    with pytest.raises(ProtocolError, match="expired"):
        tokens.verify_token(public, token, now=NOW + 60)


def test_other_key_refused(keypair: tuple[bytes, bytes]) -> None:
    private, _ = keypair
    _, other_public = tokens.generate_signing_key()
    token = tokens.mint_token(private, "alice", now=NOW)
    with pytest.raises(ProtocolError, match="signature"):
        tokens.verify_token(other_public, token, now=NOW)


def _raw(token: str) -> bytearray:
    return bytearray(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))


def _enc(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@pytest.mark.parametrize("index", [0, 1, 8, 9, 11, 15, -1])
def test_every_field_is_signed(keypair: tuple[bytes, bytes], index: int) -> None:
    private, public = keypair
    raw = _raw(tokens.mint_token(private, "alice", now=NOW))
    raw[index] ^= 0x01
    with pytest.raises(ProtocolError):
        tokens.verify_token(public, _enc(bytes(raw)), now=NOW)


def test_account_swap_refused(keypair: tuple[bytes, bytes]) -> None:
    private, public = keypair
    raw = _raw(tokens.mint_token(private, "alice", now=NOW))
    raw[11:16] = b"mallo"
    with pytest.raises(ProtocolError, match="signature"):
        tokens.verify_token(public, _enc(bytes(raw)), now=NOW)


def test_non_canonical_forms_refused(keypair: tuple[bytes, bytes]) -> None:
    private, public = keypair
    token = tokens.mint_token(private, "alice", now=NOW)
    for bad in (token + "=", token + "A", " " + token, token.replace("-", "+")):
        if bad == token:
            continue
        with pytest.raises(ProtocolError):
            tokens.verify_token(public, bad, now=NOW)
    # Trailing bytes after the signature.
    with pytest.raises(ProtocolError, match="length"):
        tokens.verify_token(public, _enc(bytes(_raw(token)) + b"\x00"), now=NOW)


@pytest.mark.parametrize("junk", ["", "!!!!", "a" * 5000, "é"])
def test_garbage_refused(keypair: tuple[bytes, bytes], junk: str) -> None:
    with pytest.raises(ProtocolError):
        tokens.verify_token(keypair[1], junk, now=NOW)


def test_mint_refuses_bad_input(keypair: tuple[bytes, bytes]) -> None:
    private, _ = keypair
    with pytest.raises(ProtocolError):
        tokens.mint_token(private, "", now=NOW)
    with pytest.raises(ProtocolError):
        tokens.mint_token(private, "a" * 300, now=NOW)
    with pytest.raises(ProtocolError):
        tokens.mint_token(private, "alice", ttl_seconds=0, now=NOW)
    with pytest.raises(ProtocolError):
        tokens.mint_token(b"short", "alice", now=NOW)


def test_error_messages_hold_no_secrets(keypair: tuple[bytes, bytes]) -> None:
    private, public = keypair
    token = tokens.mint_token(private, "alice", now=NOW)
    with pytest.raises(ProtocolError) as info:
        tokens.verify_token(public, token, now=NOW + 10_000)
    assert token not in str(info.value)
    assert private.hex() not in str(info.value)
