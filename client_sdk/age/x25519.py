"""The native X25519 recipient type: "age1..." recipients, "AGE-SECRET-KEY-1..." identities.

Wrapping: an ephemeral X25519 share, a wrap key from HKDF-SHA-256 over the
shared secret (salt = share || recipient), and ChaCha20-Poly1305 with an
all-zero nonce around the 16-byte file key.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from client_sdk.age import bech32
from client_sdk.age.errors import HeaderError, KeyEncodingError
from client_sdk.age.header import Stanza, b64decode, b64encode

STANZA_TYPE = "X25519"
KEY_SIZE = 32
FILE_KEY_SIZE = 16
_WRAPPED_SIZE = FILE_KEY_SIZE + 16
_INFO = b"age-encryption.org/v1/X25519"
_ZERO_NONCE = bytes(12)
RECIPIENT_HRP = "age"
IDENTITY_HRP = "age-secret-key-"


def _wrap_key(shared: bytes, share: bytes, recipient: bytes) -> bytes:
    return HKDF(hashes.SHA256(), 32, salt=share + recipient, info=_INFO).derive(shared)


class X25519Recipient:
    """The public half: who a file is encrypted to."""

    __slots__ = ("_public",)

    def __init__(self, public: bytes) -> None:
        if len(public) != KEY_SIZE:
            raise KeyEncodingError("an X25519 recipient is 32 bytes")
        self._public = bytes(public)

    @classmethod
    def parse(cls, text: str) -> X25519Recipient:
        """Parse "age1..." (Bech32, HRP "age")."""
        try:
            hrp, data = bech32.decode(text.strip())
        except bech32.Bech32Error as err:
            raise KeyEncodingError(f"malformed age recipient: {err}") from None
        if hrp != RECIPIENT_HRP or len(data) != KEY_SIZE:
            raise KeyEncodingError("not an X25519 age recipient (expected age1...)")
        return cls(data)

    @property
    def public_bytes(self) -> bytes:
        return self._public

    def __str__(self) -> str:
        return bech32.encode(RECIPIENT_HRP, self._public)

    def __repr__(self) -> str:
        return f"X25519Recipient({self})"

    def wrap(self, file_key: bytes) -> Stanza:
        """Wrap ``file_key`` in a fresh stanza (new ephemeral secret every call)."""
        ephemeral = X25519PrivateKey.from_private_bytes(secrets.token_bytes(KEY_SIZE))
        share = ephemeral.public_key().public_bytes_raw()
        shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(self._public))
        key = _wrap_key(shared, share, self._public)
        body = ChaCha20Poly1305(key).encrypt(_ZERO_NONCE, file_key, None)
        return Stanza(STANZA_TYPE, (b64encode(share),), body)


class X25519Identity:
    """The secret half: a 32-byte X25519 scalar that unwraps stanzas addressed to it."""

    __slots__ = ("_private", "_public")

    def __init__(self, secret: bytes) -> None:
        if len(secret) != KEY_SIZE:
            raise KeyEncodingError("an X25519 identity is 32 bytes")
        self._private = X25519PrivateKey.from_private_bytes(bytes(secret))
        self._public = self._private.public_key().public_bytes_raw()

    @classmethod
    def generate(cls) -> X25519Identity:
        return cls(secrets.token_bytes(KEY_SIZE))

    @classmethod
    def parse(cls, text: str) -> X25519Identity:
        """Parse "AGE-SECRET-KEY-1..." (Bech32, HRP "AGE-SECRET-KEY-")."""
        return cls(decode_identity(text))

    def encode(self) -> str:
        """The identity string, uppercase as age prints it. Handle as a secret."""
        return encode_identity(self._private.private_bytes_raw())

    @property
    def recipient(self) -> X25519Recipient:
        return X25519Recipient(self._public)

    def __repr__(self) -> str:
        return f"X25519Identity(recipient={self.recipient})"

    def unwrap(self, stanzas: Sequence[Stanza]) -> bytes | None:
        """Return the file key from the first X25519 stanza that opens, else None.

        Malformed X25519 stanzas raise :class:`HeaderError`; other types are ignored.
        """
        for stanza in stanzas:
            if stanza.type != STANZA_TYPE:
                continue
            share = check_stanza(stanza)
            try:
                shared = self._private.exchange(X25519PublicKey.from_public_bytes(share))
            except ValueError:  # the library refuses an all-zero (low-order) result
                shared = bytes(KEY_SIZE)
            if hmac.compare_digest(shared, bytes(KEY_SIZE)):
                raise HeaderError("X25519 stanza has a low-order ephemeral share")
            key = _wrap_key(shared, share, self._public)
            try:
                return ChaCha20Poly1305(key).decrypt(_ZERO_NONCE, stanza.body, None)
            except InvalidTag:
                continue
        return None


def check_stanza(stanza: Stanza) -> bytes:
    """Validate an X25519 stanza's shape; return its ephemeral share."""
    if len(stanza.args) != 1:
        raise HeaderError("X25519 stanza must have exactly one argument after its type")
    try:
        share = b64decode(stanza.args[0])
    except ValueError:
        raise HeaderError("X25519 stanza share is not canonical base64") from None
    if len(share) != KEY_SIZE:
        raise HeaderError("X25519 stanza share is not 32 bytes")
    if len(stanza.body) != _WRAPPED_SIZE:
        raise HeaderError("X25519 stanza body is not 32 bytes")
    return share


def decode_identity(text: str) -> bytes:
    """The raw 32-byte scalar of an "AGE-SECRET-KEY-1..." string (errors never echo it)."""
    try:
        hrp, data = bech32.decode(text.strip())
    except bech32.Bech32Error:
        raise KeyEncodingError("malformed age identity") from None
    if hrp != IDENTITY_HRP or len(data) != KEY_SIZE:
        raise KeyEncodingError("not an X25519 age identity (expected AGE-SECRET-KEY-1...)")
    return data


def encode_identity(secret: bytes) -> str:
    """Bech32 "AGE-SECRET-KEY-1..." of a raw 32-byte scalar."""
    if len(secret) != KEY_SIZE:
        raise KeyEncodingError("an X25519 identity is 32 bytes")
    return bech32.encode(IDENTITY_HRP, secret).upper()


def recipient_for(secret: bytes) -> str:
    """The "age1..." recipient of a raw 32-byte scalar: X25519(secret, basepoint)."""
    return str(X25519Identity(secret).recipient)
