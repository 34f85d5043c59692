"""The age v1 header: strict parsing and canonical encoding.

The header is read line by line straight from the input stream, so the
payload starts exactly where the MAC line ends and nothing is over-read.
Parsing follows the ABNF of the spec to the letter; anything else is a
:class:`HeaderError`, because a lax parser would make age files malleable.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from typing import BinaryIO

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from client_sdk.age.errors import HeaderError, UnsupportedFormatError

VERSION_LINE = b"age-encryption.org/v1\n"
_VERSION_PREFIX = b"age-encryption.org/"
_ARMOR_PREFIX = b"-----BEGIN"  # PEM armor: "-----BEGIN AGE ENCRYPTED FILE-----"
_STANZA_PREFIX = b"-> "
_MAC_PREFIX = b"---"
_COLUMNS = 64
MAC_SIZE = 32
_MAC_B64_LEN = 43
# Bounds against hostile input: the largest native stanza argument is ~1.6 KB.
MAX_LINE_BYTES = 16 * 1024
MAX_HEADER_BYTES = 1024 * 1024
_B64_ALPHABET = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")


def b64encode(data: bytes) -> str:
    """Unpadded standard base64, as age writes it."""
    return base64.b64encode(data).decode("ascii").rstrip("=")


def b64decode(text: bytes | str) -> bytes:
    """Decode unpadded base64, rejecting padding, foreign characters and non-canonical forms."""
    raw_text = text.encode("ascii", "replace") if isinstance(text, str) else text
    if not _B64_ALPHABET.issuperset(raw_text) or len(raw_text) % 4 == 1:
        raise ValueError("invalid base64")
    try:
        decoded = base64.b64decode(raw_text + b"=" * (-len(raw_text) % 4), validate=True)
    except binascii.Error:
        raise ValueError("invalid base64") from None
    if base64.b64encode(decoded).rstrip(b"=") != raw_text:
        raise ValueError("non-canonical base64")
    return decoded


@dataclass(frozen=True)
class Stanza:
    """One recipient stanza: its type (first argument), further arguments and body."""

    type: str
    args: tuple[str, ...]
    body: bytes

    def encode(self) -> bytes:
        """Canonical encoding: argument line, body wrapped at 64 columns, short final line."""
        args = [arg.encode("utf-8") for arg in (self.type, *self.args)]
        if not all(_is_argument(arg) for arg in args):
            raise ValueError("stanza arguments must be non-empty printable ASCII")
        body = b64encode(self.body).encode("ascii")
        lines = [b" ".join([b"->", *args])]
        lines += [body[i : i + _COLUMNS] for i in range(0, len(body), _COLUMNS)]
        if len(body) % _COLUMNS == 0:
            lines.append(b"")
        return b"\n".join(lines) + b"\n"


@dataclass(frozen=True)
class Header:
    """A parsed header. ``signed`` is the exact byte string the MAC covers."""

    stanzas: tuple[Stanza, ...]
    mac: bytes
    signed: bytes

    @property
    def size(self) -> int:
        """Length in bytes of the whole header, MAC line included."""
        return len(self.signed) + 1 + _MAC_B64_LEN + 1


def _is_argument(arg: bytes) -> bool:
    return bool(arg) and all(0x21 <= c <= 0x7E for c in arg)


def header_mac_key(file_key: bytes) -> bytes:
    """HKDF-SHA-256(file key, salt = empty, info = "header")."""
    return HKDF(hashes.SHA256(), 32, salt=b"", info=b"header").derive(file_key)


def compute_mac(file_key: bytes, signed: bytes) -> bytes:
    """HMAC-SHA-256 over the header up to and including the "---" mark."""
    return hmac.new(header_mac_key(file_key), signed, hashlib.sha256).digest()


def verify_mac(file_key: bytes, header: Header) -> bool:
    """Constant-time check of the header MAC under ``file_key``."""
    return hmac.compare_digest(compute_mac(file_key, header.signed), header.mac)


def encode_header(stanzas: Sequence[Stanza], file_key: bytes) -> bytes:
    """Serialise a complete header, MAC line included."""
    if not stanzas:
        raise ValueError("a header needs at least one stanza")
    signed = VERSION_LINE + b"".join(s.encode() for s in stanzas) + _MAC_PREFIX
    return signed + b" " + b64encode(compute_mac(file_key, signed)).encode("ascii") + b"\n"


class _LineReader:
    """Reads LF-terminated lines from a stream, keeping the bytes read and bounding sizes."""

    def __init__(self, src: BinaryIO) -> None:
        self._src = src
        self.consumed = bytearray()

    @property
    def offset(self) -> int:
        return len(self.consumed)

    def line(self) -> bytes:
        """Next line including its LF; a missing LF means the header is truncated."""
        start = self.offset
        budget = min(MAX_LINE_BYTES, MAX_HEADER_BYTES - start)
        line = self._src.readline(budget + 1)
        self.consumed += line
        if not line.endswith(b"\n"):
            if len(line) > budget:
                raise HeaderError("header line or header too long", offset=start)
            raise HeaderError("file ends inside the header", offset=start)
        return line


def read_header(src: BinaryIO) -> Header:
    """Parse a v1 header from ``src``, leaving the stream at the first payload byte."""
    reader = _LineReader(src)
    first = src.readline(len(VERSION_LINE))
    reader.consumed += first
    if first != VERSION_LINE:
        if first.startswith(_ARMOR_PREFIX):
            raise UnsupportedFormatError("ASCII-armored age files are not supported")
        if first.rstrip(b"\r") == VERSION_LINE[:-1]:
            raise HeaderError("version line must end with LF (not CRLF)", offset=0)
        if first.startswith(_VERSION_PREFIX):
            raise HeaderError("unsupported age format version", offset=0)
        raise HeaderError("not an age file (no age-encryption.org/v1 line)", offset=0)
    stanzas: list[Stanza] = []
    while True:
        start = reader.offset
        line = reader.line()
        if line.startswith(_STANZA_PREFIX):
            stanzas.append(_parse_stanza(line, start, reader))
        elif line.startswith(_MAC_PREFIX):
            if not stanzas:
                raise HeaderError("header has no recipient stanza", offset=start)
            mac = _parse_mac_line(line, start)
            signed = bytes(reader.consumed[:start]) + _MAC_PREFIX
            return Header(tuple(stanzas), mac, signed)
        else:
            raise HeaderError("malformed header line", offset=start)


def _parse_mac_line(line: bytes, start: int) -> bytes:
    if len(line) != len(_MAC_PREFIX) + 1 + _MAC_B64_LEN + 1 or line[3:4] != b" ":
        raise HeaderError("malformed MAC line", offset=start)
    try:
        return b64decode(line[4:-1])
    except ValueError:
        raise HeaderError("malformed MAC line", offset=start) from None


def _parse_stanza(arg_line: bytes, start: int, reader: _LineReader) -> Stanza:
    args = arg_line[len(_STANZA_PREFIX) : -1].split(b" ")
    if not all(_is_argument(a) for a in args):
        raise HeaderError("malformed stanza argument line", offset=start)
    body = bytearray()
    while True:
        line_start = reader.offset
        line = reader.line()
        text = line[:-1]
        if len(text) > _COLUMNS or not _B64_ALPHABET.issuperset(text):
            raise HeaderError("malformed stanza body line", offset=line_start)
        body += text
        if len(text) < _COLUMNS:
            break
    try:
        decoded = b64decode(bytes(body))
    except ValueError:
        raise HeaderError("stanza body is not canonical base64", offset=start) from None
    names = [a.decode("ascii") for a in args]
    return Stanza(names[0], tuple(names[1:]), decoded)
