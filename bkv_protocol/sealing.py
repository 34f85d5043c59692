"""Client <-> vault sealing: ChatD relays these bytes but can neither read nor alter them.

Requests are HPKE-sealed (RFC 9180, base mode, X25519 / HKDF-SHA256 /
ChaCha20-Poly1305) to the fleet public key the client pins. The HPKE ``info``
binds the account, the shard and the protocol step, so an envelope opened under
any other binding fails. Each request carries a fresh response key; the reply is
ChaCha20-Poly1305-sealed under it with the same binding (and a distinct label)
as associated data, so a reply can't be swapped for another step's reply.
"""

from __future__ import annotations

import secrets
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from bkv_protocol.errors import AuthenticationError, ProtocolError

KEY_BYTES = 32
MAX_ACCOUNT_BYTES = 256
# enc (32-byte X25519 share) + Poly1305 tag
_HPKE_OVERHEAD = 32 + 16
_REPLY_VERSION = b"\x01"
_NONCE_BYTES = 12
_REPLY_OVERHEAD = len(_REPLY_VERSION) + _NONCE_BYTES + 16
_REQUEST_LABEL = b"bkv request v1\x00"
_REPLY_LABEL = b"bkv reply v1\x00"
# Mirrors bkv.v1.MessageType; kept here so this module stays free of generated code.
MESSAGE_TYPES = frozenset({1, 2, 3, 4})

_SUITE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.CHACHA20_POLY1305)


def binding(account: str, shard: int, message_type: int) -> bytes:
    """Canonical, injective encoding of what a sealed message is bound to."""
    if not isinstance(account, str) or not account:
        raise ProtocolError("account must be a non-empty string")
    account_bytes = account.encode("utf-8")
    if len(account_bytes) > MAX_ACCOUNT_BYTES:
        raise ProtocolError(f"account is longer than {MAX_ACCOUNT_BYTES} bytes")
    if not 0 <= shard < 2**32:
        raise ProtocolError("shard out of range")
    if message_type not in MESSAGE_TYPES:
        raise ProtocolError(f"unknown message type {message_type}")
    prefix = struct.pack(">H", len(account_bytes))
    return prefix + account_bytes + struct.pack(">IB", shard, message_type)


def generate_fleet_keypair() -> tuple[bytes, bytes]:
    """Return a fresh (private, public) raw X25519 key pair for HPKE."""
    private = X25519PrivateKey.generate()
    return private.private_bytes_raw(), private.public_key().public_bytes_raw()


def fleet_public_key(private_key: bytes) -> bytes:
    """Derive the raw public key the clients pin from the raw private key."""
    return _private_key(private_key).public_key().public_bytes_raw()


def new_response_key() -> bytes:
    """A fresh 32-byte key under which the vault seals its reply to one request."""
    return secrets.token_bytes(KEY_BYTES)


def seal_request(
    fleet_public_key: bytes, account: str, shard: int, message_type: int, plaintext: bytes
) -> bytes:
    """HPKE-seal ``plaintext`` to the fleet, bound to account, shard and step."""
    info = _REQUEST_LABEL + binding(account, shard, message_type)
    if len(fleet_public_key) != KEY_BYTES:
        raise ProtocolError("fleet public key must be 32 bytes")
    try:
        public = X25519PublicKey.from_public_bytes(fleet_public_key)
    except ValueError as err:
        raise ProtocolError("fleet public key is not a valid X25519 key") from err
    return _SUITE.encrypt(plaintext, public, info=info)


def open_request(
    fleet_private_key: bytes, account: str, shard: int, message_type: int, sealed: bytes
) -> bytes:
    """Open a sealed request; any tampering or other binding raises AuthenticationError."""
    info = _REQUEST_LABEL + binding(account, shard, message_type)
    if len(sealed) < _HPKE_OVERHEAD:
        raise ProtocolError("sealed request is truncated")
    private = _private_key(fleet_private_key)
    try:
        return _SUITE.decrypt(sealed, private, info=info)
    except Exception as err:  # InvalidTag, or a malformed encapsulated key
        raise AuthenticationError(
            "sealed request does not open for this fleet key, account, shard and step"
        ) from err


def seal_reply(
    response_key: bytes, account: str, shard: int, message_type: int, plaintext: bytes
) -> bytes:
    """AEAD-seal the vault's reply under the response key the request carried."""
    aad = _REPLY_LABEL + binding(account, shard, message_type)
    nonce = secrets.token_bytes(_NONCE_BYTES)
    return _REPLY_VERSION + nonce + _aead(response_key).encrypt(nonce, plaintext, aad)


def open_reply(
    response_key: bytes, account: str, shard: int, message_type: int, sealed: bytes
) -> bytes:
    """Open the vault's reply; a reply for another request or step raises AuthenticationError."""
    aad = _REPLY_LABEL + binding(account, shard, message_type)
    if len(sealed) < _REPLY_OVERHEAD:
        raise ProtocolError("sealed reply is truncated")
    if sealed[:1] != _REPLY_VERSION:
        raise ProtocolError("sealed reply has an unknown version")
    nonce = sealed[1 : 1 + _NONCE_BYTES]
    try:
        return _aead(response_key).decrypt(nonce, sealed[1 + _NONCE_BYTES :], aad)
    except InvalidTag as err:
        raise AuthenticationError("sealed reply failed authentication") from err


def _aead(key: bytes) -> ChaCha20Poly1305:
    if len(key) != KEY_BYTES:
        raise ProtocolError("response key must be 32 bytes")
    return ChaCha20Poly1305(key)


def _private_key(raw: bytes) -> X25519PrivateKey:
    if len(raw) != KEY_BYTES:
        raise ProtocolError("fleet private key must be 32 bytes")
    return X25519PrivateKey.from_private_bytes(raw)
