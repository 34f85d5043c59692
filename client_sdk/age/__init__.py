"""age v1 file encryption (https://age-encryption.org/v1) with X25519 recipients.

Backups are age files so that the stock ``age`` tool can always open them
with the identity exported from the 64-digit backup key. This package
implements the binary format, the X25519 recipient type and the STREAM
payload; scrypt, ASCII armor, plugins and post-quantum recipients are not
implemented (their stanzas are parsed and skipped).

Both directions stream with constant memory. ``decrypt`` writes plaintext only
after the chunk it belongs to authenticated, but a damaged file can still leave
a prefix written: callers that need all-or-nothing write to a temporary file.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import BinaryIO

from client_sdk.age import stream, x25519
from client_sdk.age.errors import (
    AgeError,
    DamagedFileError,
    HeaderError,
    HeaderMacError,
    KeyEncodingError,
    NoIdentityMatchError,
    PayloadError,
    UnsupportedFormatError,
)
from client_sdk.age.header import encode_header, read_header, verify_mac
from client_sdk.age.x25519 import X25519Identity, X25519Recipient

FILE_KEY_SIZE = 16

__all__ = [
    "AgeError",
    "DamagedFileError",
    "HeaderError",
    "HeaderMacError",
    "KeyEncodingError",
    "NoIdentityMatchError",
    "PayloadError",
    "UnsupportedFormatError",
    "X25519Identity",
    "X25519Recipient",
    "decrypt",
    "encrypt",
]


def encrypt(src: BinaryIO, dst: BinaryIO, recipients: Sequence[str | X25519Recipient]) -> None:
    """Encrypt everything readable from ``src`` to ``dst`` for ``recipients`` ("age1...")."""
    if isinstance(recipients, str):
        raise TypeError("recipients must be a sequence of strings, not a string")
    parsed = [r if isinstance(r, X25519Recipient) else X25519Recipient.parse(r) for r in recipients]
    if not parsed:
        raise KeyEncodingError("at least one recipient is required")
    file_key = secrets.token_bytes(FILE_KEY_SIZE)
    nonce = secrets.token_bytes(stream.NONCE_SIZE)
    header = encode_header([r.wrap(file_key) for r in parsed], file_key)
    stream.write_all(dst, memoryview(header + nonce))
    stream.encrypt_payload(stream.payload_key(file_key, nonce), src, dst)


def decrypt(src: BinaryIO, dst: BinaryIO, identities: Sequence[str | X25519Identity]) -> None:
    """Decrypt the age file in ``src`` to ``dst`` with any of ``identities``.

    Raises :class:`NoIdentityMatchError` for a wrong key, :class:`DamagedFileError`
    (or a subclass) for a malformed, altered or truncated file, and
    :class:`UnsupportedFormatError` for armored files.
    """
    if isinstance(identities, str):
        raise TypeError("identities must be a sequence of strings, not a string")
    parsed = [i if isinstance(i, X25519Identity) else X25519Identity.parse(i) for i in identities]
    if not parsed:
        raise KeyEncodingError("at least one identity is required")
    header = read_header(src)
    for stanza in header.stanzas:
        if stanza.type == x25519.STANZA_TYPE:
            x25519.check_stanza(stanza)
    file_key = None
    for identity in parsed:
        file_key = identity.unwrap(header.stanzas)
        if file_key is not None:
            break
    if file_key is None:
        raise NoIdentityMatchError("no identity matches any recipient of the file")
    if not verify_mac(file_key, header):
        raise HeaderMacError("header MAC does not match: the header was altered", offset=0)
    nonce = bytearray(stream.NONCE_SIZE)
    if stream.read_full(src, memoryview(nonce)) != stream.NONCE_SIZE:
        raise HeaderError("file ends before the payload nonce", offset=header.size)
    key = stream.payload_key(file_key, bytes(nonce))
    stream.decrypt_payload(key, src, dst, base_offset=header.size + stream.NONCE_SIZE)
