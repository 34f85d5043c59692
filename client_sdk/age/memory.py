"""age files held in memory: one call seals or opens a whole buffer.

Repository objects (packs of a few MiB, indexes, snapshots) are small enough
to hold whole, and sealing them without the streaming machinery's threads and
pipes saves a thread hand-off per object. The output is the same age v1 file
``encrypt`` writes; ChaCha20-Poly1305 runs in compiled code, one 64 KiB chunk
per call with the GIL released, so several objects seal in parallel.

The ``*_into`` forms write into a caller's buffer: reusing one buffer for
every object avoids touching fresh memory, which costs more than the cipher.
"""

from __future__ import annotations

import io
import secrets

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from client_sdk.age import stream
from client_sdk.age.errors import HeaderError, HeaderMacError, NoIdentityMatchError, PayloadError
from client_sdk.age.header import Header, encode_header, read_header, verify_mac
from client_sdk.age.x25519 import STANZA_TYPE, X25519Identity, X25519Recipient, check_stanza

Buffer = bytes | bytearray | memoryview

_FILE_KEY_SIZE = 16
_CHUNK = stream.CHUNK_SIZE
_SEALED = stream.ENCRYPTED_CHUNK_SIZE
_TAG = stream.TAG_SIZE
_HEADER_WINDOW = 64 * 1024


def _chunks(size: int) -> int:
    return max(1, -(-size // _CHUNK))


def _prepare(recipient: X25519Recipient) -> tuple[bytes, ChaCha20Poly1305]:
    file_key = secrets.token_bytes(_FILE_KEY_SIZE)
    nonce = secrets.token_bytes(stream.NONCE_SIZE)
    header = encode_header([recipient.wrap(file_key)], file_key) + nonce
    return header, ChaCha20Poly1305(stream.payload_key(file_key, nonce))


def _seal(data: Buffer, header: bytes, aead: ChaCha20Poly1305, out: memoryview) -> int:
    view = memoryview(data).cast("B")
    count = _chunks(len(view))
    need = len(header) + len(view) + count * _TAG
    if len(out) < need:
        raise ValueError(f"output buffer too small: {need} bytes needed")
    out[: len(header)] = header
    pos = len(header)
    for index in range(count):
        piece = view[index * _CHUNK : (index + 1) * _CHUNK]
        end = pos + len(piece) + _TAG
        nonce = stream.chunk_nonce(index, index == count - 1)
        aead.encrypt_into(nonce, piece, None, out[pos:end])
        pos = end
    return pos


def encrypt_into(data: Buffer, recipient: X25519Recipient, out: memoryview) -> int:
    """Write the age file of ``data`` into ``out``; return its length."""
    header, aead = _prepare(recipient)
    return _seal(data, header, aead, out)


def encrypt_bytes(data: Buffer, recipient: X25519Recipient) -> bytearray:
    """The age file of ``data`` for one X25519 recipient."""
    header, aead = _prepare(recipient)
    size = len(memoryview(data).cast("B"))
    out = bytearray(len(header) + size + _chunks(size) * _TAG)
    _seal(data, header, aead, memoryview(out))
    return out


def _header(view: memoryview) -> tuple[Header, int]:
    """Parse the header from a small window (no copy of the whole file)."""
    src = io.BytesIO(view[:_HEADER_WINDOW])
    try:
        return read_header(src), src.tell()
    except HeaderError:
        if len(view) <= _HEADER_WINDOW:
            raise
    src = io.BytesIO(view)
    return read_header(src), src.tell()


def _open(blob: Buffer, identity: X25519Identity) -> tuple[ChaCha20Poly1305, memoryview, int]:
    view = memoryview(blob).cast("B")
    header, start = _header(view)
    for stanza in header.stanzas:
        if stanza.type == STANZA_TYPE:
            check_stanza(stanza)
    file_key = identity.unwrap(header.stanzas)
    if file_key is None:
        raise NoIdentityMatchError("no identity matches any recipient of the file")
    if not verify_mac(file_key, header):
        raise HeaderMacError("header MAC does not match: the header was altered", offset=0)
    if len(view) - start < stream.NONCE_SIZE:
        raise HeaderError("file ends before the payload nonce", offset=start)
    nonce = bytes(view[start : start + stream.NONCE_SIZE])
    start += stream.NONCE_SIZE
    return ChaCha20Poly1305(stream.payload_key(file_key, nonce)), view[start:], start


def plain_size(sealed_payload: int) -> int:
    count = max(1, -(-sealed_payload // _SEALED))
    return max(0, sealed_payload - count * _TAG)


def _unseal(aead: ChaCha20Poly1305, payload: memoryview, start: int, out: memoryview) -> int:
    count = max(1, -(-len(payload) // _SEALED))
    last = len(payload) - (count - 1) * _SEALED  # only the last chunk can be short
    if last < _TAG or (count > 1 and last == _TAG):
        offset = start + (count - 1) * _SEALED
        raise PayloadError(f"file is truncated (at byte {offset})", offset=offset, chunk=count - 1)
    need = plain_size(len(payload))
    if len(out) < need:
        raise ValueError(f"output buffer too small: {need} bytes needed")
    pos = 0
    for index in range(count):
        offset = start + index * _SEALED
        piece = payload[index * _SEALED : (index + 1) * _SEALED]
        last = index == count - 1
        if len(piece) < _TAG or (last and index > 0 and len(piece) == _TAG):
            raise PayloadError(f"file is truncated (at byte {offset})", offset=offset, chunk=index)
        end = pos + len(piece) - _TAG
        try:
            aead.decrypt_into(stream.chunk_nonce(index, last), piece, None, out[pos:end])
        except InvalidTag:
            raise PayloadError(
                f"chunk {index} (at byte {offset}) failed to authenticate: the file is damaged",
                offset=offset,
                chunk=index,
            ) from None
        pos = end
    return pos


def decrypt_into(blob: Buffer, identity: X25519Identity, out: memoryview) -> int:
    """Open the age file ``blob`` into ``out``; return the plaintext length."""
    aead, payload, start = _open(blob, identity)
    return _unseal(aead, payload, start, out)


def decrypt_bytes(blob: Buffer, identity: X25519Identity) -> bytearray:
    """The plaintext of the age file ``blob``; raises the same errors as ``decrypt``."""
    aead, payload, start = _open(blob, identity)
    out = bytearray(plain_size(len(payload)))
    _unseal(aead, payload, start, memoryview(out))
    return out
