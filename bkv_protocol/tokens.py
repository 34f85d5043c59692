"""Account tokens: short-lived Ed25519 statements "this caller owns account X until T".

ChatD needs to know which account a caller speaks for (to rate-limit and to
stop one account from burning another's guesses) without learning anything
else. A token is::

    base64url_nopad( version(1) || expiry(uint64 BE, Unix seconds)
                     || len(account)(uint16 BE) || account(UTF-8) || signature(64) )

and the Ed25519 signature covers a domain-separation label followed by every
byte before it, so a signature made for another purpose can't be replayed as a
token. Verification is strict: exactly one encoding of a given token is
accepted (no padding, no trailing bytes, canonical base64), so tokens can be
compared and logged by hash safely.
"""

from __future__ import annotations

import base64
import binascii
import struct
import time

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from bkv_protocol.errors import ProtocolError

TOKEN_VERSION = 1
_LABEL = b"bkv-account-token-v1\x00"
_HEADER = struct.Struct(">BQH")  # version, expiry, account length
_SIGNATURE_BYTES = 64
KEY_BYTES = 32
MAX_ACCOUNT_BYTES = 256
MAX_TTL_SECONDS = 7 * 24 * 3600
# Tokens longer than this are refused before any decoding work.
MAX_TOKEN_CHARS = 4 * (_HEADER.size + MAX_ACCOUNT_BYTES + _SIGNATURE_BYTES) // 3 + 4


def generate_signing_key() -> tuple[bytes, bytes]:
    """A fresh Ed25519 key pair: (private seed, public key), 32 bytes each."""
    private = Ed25519PrivateKey.generate()
    return _private_bytes(private), _public_bytes(private.public_key())


def public_key_from(signing_key: bytes) -> bytes:
    """The verification key that matches a 32-byte signing seed."""
    return _public_bytes(_load_private(signing_key).public_key())


def mint_token(
    signing_key: bytes, account: str, *, ttl_seconds: int = 3600, now: float | None = None
) -> str:
    """Sign a token for ``account`` that expires ``ttl_seconds`` from ``now``."""
    if not 0 < ttl_seconds <= MAX_TTL_SECONDS:
        raise ProtocolError(f"token lifetime must be 1..{MAX_TTL_SECONDS} seconds")
    account_bytes = _account_bytes(account)
    issued = time.time() if now is None else now
    expiry = int(issued) + ttl_seconds
    body = _HEADER.pack(TOKEN_VERSION, expiry, len(account_bytes)) + account_bytes
    signature = _load_private(signing_key).sign(_LABEL + body)
    return base64.urlsafe_b64encode(body + signature).rstrip(b"=").decode("ascii")


def verify_token(public_key: bytes, token: str, *, now: float | None = None) -> str:
    """Return the account a valid, unexpired token speaks for; ProtocolError otherwise."""
    raw = _decode(token)
    if len(raw) < _HEADER.size + _SIGNATURE_BYTES:
        raise ProtocolError("token is too short")
    version, expiry, length = _HEADER.unpack_from(raw)
    if version != TOKEN_VERSION:
        raise ProtocolError(f"unsupported token version {version}")
    if len(raw) != _HEADER.size + length + _SIGNATURE_BYTES:
        raise ProtocolError("token length does not match its account length")
    body, signature = raw[:-_SIGNATURE_BYTES], raw[-_SIGNATURE_BYTES:]
    if len(public_key) != KEY_BYTES:
        raise ProtocolError("token verification key must be 32 bytes")
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, _LABEL + body)
    except InvalidSignature:
        raise ProtocolError("token signature is not valid") from None
    current = time.time() if now is None else now
    if current >= expiry:
        raise ProtocolError("token has expired")
    try:
        account = body[_HEADER.size :].decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("token account is not UTF-8") from None
    _account_bytes(account)  # the same rules as minting
    return account


def _decode(token: str) -> bytes:
    if not isinstance(token, str) or not token:
        raise ProtocolError("token is empty")
    if len(token) > MAX_TOKEN_CHARS:
        raise ProtocolError("token is too long")
    if not token.isascii():
        raise ProtocolError("token is not base64url")
    padded = token + "=" * (-len(token) % 4)
    try:
        raw = base64.urlsafe_b64decode(padded.encode("ascii"))
    except (binascii.Error, ValueError):
        raise ProtocolError("token is not base64url") from None
    # b64decode ignores nothing in urlsafe mode but tolerates non-zero pad bits;
    # re-encoding pins the single canonical form.
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != token:
        raise ProtocolError("token is not canonically encoded")
    return raw


def _account_bytes(account: str) -> bytes:
    if not isinstance(account, str) or not account:
        raise ProtocolError("account must be a non-empty string")
    encoded = account.encode("utf-8")
    if len(encoded) > MAX_ACCOUNT_BYTES:
        raise ProtocolError(f"account is longer than {MAX_ACCOUNT_BYTES} bytes")
    if not account.isprintable():
        raise ProtocolError("account contains control characters")
    return encoded


def _load_private(signing_key: bytes) -> Ed25519PrivateKey:
    if not isinstance(signing_key, bytes) or len(signing_key) != KEY_BYTES:
        raise ProtocolError("token signing key must be 32 bytes")
    return Ed25519PrivateKey.from_private_bytes(signing_key)


def _private_bytes(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


def _public_bytes(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)
