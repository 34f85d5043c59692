"""The key deposit: the backup key as the vault stores it, and as it releases it.

At registration the client encrypts the backup key under a key derived from the
OPAQUE export key, which only a client knowing the password can recompute; the
vault stores that ciphertext and never sees the backup key. After a successful
login the vault seals the deposit once more under a key derived from the OPAQUE
session key, so only the party that completed *this* login can take it.
Each derivation uses its own HKDF label; the account is bound as associated data.
"""

from __future__ import annotations

import secrets

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from bkv_protocol.errors import AuthenticationError, ProtocolError

BACKUP_KEY_BYTES = 32
OPAQUE_KEY_BYTES = 64  # export key and session key (Nh for SHA-512)
_VERSION = b"\x01"
_NONCE_BYTES = 12
_TAG_BYTES = 16
DEPOSIT_BYTES = len(_VERSION) + _NONCE_BYTES + BACKUP_KEY_BYTES + _TAG_BYTES
MAX_RELEASE_BYTES = len(_VERSION) + _NONCE_BYTES + DEPOSIT_BYTES + _TAG_BYTES

_DEPOSIT_KEY_LABEL = b"bkv deposit key v1"
_DEPOSIT_AAD = b"bkv deposit v1\x00"
_RELEASE_KEY_LABEL = b"bkv deposit release key v1"
_RELEASE_AAD = b"bkv deposit release v1\x00"


def seal_deposit(export_key: bytes, account: str, backup_key: bytes) -> bytes:
    """Client side, at registration: encrypt the backup key under the export key."""
    if len(backup_key) != BACKUP_KEY_BYTES:
        raise ProtocolError("backup key must be 32 bytes")
    key = _derive(export_key, _DEPOSIT_KEY_LABEL, "export key")
    return _seal(key, backup_key, _DEPOSIT_AAD + _account(account))


def open_deposit(export_key: bytes, account: str, deposit: bytes) -> bytes:
    """Client side, after login: recover the backup key from the deposit."""
    if len(deposit) != DEPOSIT_BYTES:
        raise ProtocolError(f"key deposit must be {DEPOSIT_BYTES} bytes")
    key = _derive(export_key, _DEPOSIT_KEY_LABEL, "export key")
    return _open(key, deposit, _DEPOSIT_AAD + _account(account), "key deposit")


def check_deposit_format(deposit: bytes) -> None:
    """Vault side: refuse a deposit that can't be one (the vault can't decrypt it)."""
    if len(deposit) != DEPOSIT_BYTES or deposit[:1] != _VERSION:
        raise ProtocolError(f"key deposit must be {DEPOSIT_BYTES} bytes of format version 1")


def seal_for_session(session_key: bytes, account: str, deposit: bytes) -> bytes:
    """Vault side, after KE3 verified: bind the release to this login's session key."""
    check_deposit_format(deposit)
    key = _derive(session_key, _RELEASE_KEY_LABEL, "session key")
    return _seal(key, deposit, _RELEASE_AAD + _account(account))


def open_from_session(session_key: bytes, account: str, sealed: bytes) -> bytes:
    """Client side: unwrap the released deposit with this login's session key."""
    if len(sealed) != MAX_RELEASE_BYTES:
        raise ProtocolError("released deposit has the wrong length")
    key = _derive(session_key, _RELEASE_KEY_LABEL, "session key")
    return _open(key, sealed, _RELEASE_AAD + _account(account), "released deposit")


def _derive(ikm: bytes, label: bytes, what: str) -> bytes:
    if len(ikm) != OPAQUE_KEY_BYTES:
        raise ProtocolError(f"{what} must be {OPAQUE_KEY_BYTES} bytes")
    return HKDF(algorithm=hashes.SHA512(), length=32, salt=None, info=label).derive(ikm)


def _account(account: str) -> bytes:
    if not isinstance(account, str) or not account:
        raise ProtocolError("account must be a non-empty string")
    return account.encode("utf-8")


def _seal(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    nonce = secrets.token_bytes(_NONCE_BYTES)
    return _VERSION + nonce + ChaCha20Poly1305(key).encrypt(nonce, plaintext, aad)


def _open(key: bytes, sealed: bytes, aad: bytes, what: str) -> bytes:
    if sealed[:1] != _VERSION:
        raise ProtocolError(f"{what} has an unknown format version")
    nonce = sealed[1 : 1 + _NONCE_BYTES]
    try:
        return ChaCha20Poly1305(key).decrypt(nonce, sealed[1 + _NONCE_BYTES :], aad)
    except InvalidTag as err:
        raise AuthenticationError(f"{what} failed authentication") from err
