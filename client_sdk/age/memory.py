"""age files held in memory: one call seals or opens a whole buffer.

Repository objects (packs of a few MiB, indexes, snapshots) are small enough
to hold whole, and sealing them without the streaming machinery's threads and
pipes saves a thread hand-off per object. The output is the same age v1 file
``encrypt`` writes; ``chacha20poly1305`` runs in compiled code, one 64 KiB
chunk per call, with the GIL released, so several objects seal in parallel.
"""

from __future__ import annotations

import io
import secrets

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from client_sdk.age import stream
from client_sdk.age.errors import HeaderError, HeaderMacError, NoIdentityMatchError, PayloadError
from client_sdk.age.header import encode_header, read_header, verify_mac
from client_sdk.age.x25519 import X25519Identity, X25519Recipient, check_stanza

_FILE_KEY_SIZE = 16
_CHUNK = stream.CHUNK_SIZE
_SEALED = stream.ENCRYPTED_CHUNK_SIZE
_TAG = stream.TAG_SIZE


def encrypt_bytes(data: bytes | bytearray | memoryview, recipient: X25519Recipient) -> bytearray:
    """The age file of ``data`` for one X25519 recipient."""
    file_key = secrets.token_bytes(_FILE_KEY_SIZE)
    nonce = secrets.token_bytes(stream.NONCE_SIZE)
    header = encode_header([recipient.wrap(file_key)], file_key) + nonce
    aead = ChaCha20Poly1305(stream.payload_key(file_key, nonce))
    view = memoryview(data).cast("B")
    count = max(1, -(-len(view) // _CHUNK))
    out = bytearray(len(header) + len(view) + count * _TAG)
    out[: len(header)] = header
    target = memoryview(out)
    pos = len(header)
    for index in range(count):
        piece = view[index * _CHUNK : (index + 1) * _CHUNK]
        end = pos + len(piece) + _TAG
        nonce_i = stream.chunk_nonce(index, index == count - 1)
        aead.encrypt_into(nonce_i, piece, None, target[pos:end])
        pos = end
    return out


def decrypt_bytes(blob: bytes | bytearray | memoryview, identity: X25519Identity) -> bytearray:
    """The plaintext of the age file ``blob``; raises the same errors as ``decrypt``."""
    view = memoryview(blob).cast("B")
    src = io.BytesIO(view)
    header = read_header(src)
    for stanza in header.stanzas:
        if stanza.type == "X25519":
            check_stanza(stanza)
    file_key = identity.unwrap(header.stanzas)
    if file_key is None:
        raise NoIdentityMatchError("no identity matches any recipient of the file")
    if not verify_mac(file_key, header):
        raise HeaderMacError("header MAC does not match: the header was altered", offset=0)
    start = src.tell()
    if len(view) - start < stream.NONCE_SIZE:
        raise HeaderError("file ends before the payload nonce", offset=start)
    nonce = bytes(view[start : start + stream.NONCE_SIZE])
    start += stream.NONCE_SIZE
    aead = ChaCha20Poly1305(stream.payload_key(file_key, nonce))
    payload = view[start:]
    count = max(1, -(-len(payload) // _SEALED))
    out = bytearray(len(payload) - count * _TAG) if len(payload) >= count * _TAG else bytearray()
    target = memoryview(out)
    pos = 0
    for index in range(count):
        offset = start + index * _SEALED
        piece = payload[index * _SEALED : (index + 1) * _SEALED]
        last = index == count - 1
        if len(piece) < _TAG or (last and index > 0 and len(piece) == _TAG):
            raise PayloadError(f"file is truncated (at byte {offset})", offset=offset, chunk=index)
        end = pos + len(piece) - _TAG
        try:
            aead.decrypt_into(stream.chunk_nonce(index, last), piece, None, target[pos:end])
        except InvalidTag:
            raise PayloadError(
                f"chunk {index} (at byte {offset}) failed to authenticate: the file is damaged",
                offset=offset,
                chunk=index,
            ) from None
        pos = end
    return out
