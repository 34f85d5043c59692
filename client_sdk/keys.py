"""The backup key: 32 random bytes the user writes down as 64 hex digits.

The key is used directly as an X25519 secret scalar. Its age identity
("AGE-SECRET-KEY-1...") opens every backup made with it, and its public
half ("age1...") is the recipient a device encrypts new backups to, so a
device never needs the secret just to make a backup.
"""

from __future__ import annotations

import contextlib
import hmac
import os
import secrets
from pathlib import Path
from typing import NoReturn

from client_sdk.age import x25519
from client_sdk.age.errors import KeyEncodingError
from client_sdk.fsutil import fsync_dir

KEY_BYTES = 32
HEX_DIGITS = 2 * KEY_BYTES
_GROUP = 4
_HEX = frozenset("0123456789abcdefABCDEF")
_SEPARATORS = frozenset(" -")
MAX_KEY_FILE_BYTES = 4096


class KeyFormatError(ValueError):
    """Typed or stored key text is not a valid backup key; the message says what and where."""


class BackupKey:
    """A 256-bit backup key. Its repr and str never reveal the secret."""

    __slots__ = ("_raw",)

    def __init__(self, raw: bytes) -> None:
        if len(raw) != KEY_BYTES:
            raise KeyFormatError(f"a backup key is {KEY_BYTES} bytes")
        self._raw = bytes(raw)

    @classmethod
    def generate(cls) -> BackupKey:
        """A fresh key from the operating system's CSPRNG."""
        return cls(secrets.token_bytes(KEY_BYTES))

    @classmethod
    def parse(cls, text: str) -> BackupKey:
        """Parse the 64 hex digits; any case, spaces and dashes are accepted.

        Whitespace around the key (e.g. a trailing newline) is ignored;
        positions in error messages count from 1 in ``text`` as given.
        """
        lead = len(text) - len(text.lstrip())
        digits: list[str] = []
        for index, char in enumerate(text.strip(), start=lead + 1):
            if char in _HEX:
                digits.append(char)
            elif char not in _SEPARATORS:
                raise KeyFormatError(f"unexpected character {char!r} at position {index}")
        if len(digits) != HEX_DIGITS:
            raise KeyFormatError(f"key has {len(digits)} hex digits, expected {HEX_DIGITS}")
        return cls(bytes.fromhex("".join(digits)))

    @classmethod
    def from_identity(cls, identity: str) -> BackupKey:
        """The key behind an "AGE-SECRET-KEY-1..." identity string."""
        try:
            raw = x25519.decode_identity(identity)
        except KeyEncodingError:
            raise KeyFormatError("not an X25519 age identity (AGE-SECRET-KEY-1...)") from None
        return cls(raw)

    @property
    def raw(self) -> bytes:
        """The 32 secret bytes."""
        return self._raw

    def digits(self) -> str:
        """64 lowercase hex digits in 16 space-separated groups of 4 (for writing down)."""
        text = self._raw.hex()
        return " ".join(text[i : i + _GROUP] for i in range(0, HEX_DIGITS, _GROUP))

    def identity(self) -> str:
        """The age identity ("AGE-SECRET-KEY-1..."), which `age -d -i` accepts. Secret."""
        return x25519.encode_identity(self._raw)

    def recipient(self) -> str:
        """The public age recipient ("age1...") that new backups are encrypted to."""
        return x25519.recipient_for(self._raw)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BackupKey):
            return NotImplemented
        return hmac.compare_digest(self._raw, other._raw)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<BackupKey recipient={self.recipient()}>"

    __str__ = __repr__

    def __reduce__(self) -> NoReturn:
        raise TypeError("backup keys are not picklable")


def read_key_file(path: str | os.PathLike[str]) -> BackupKey:
    """Read a key file (the 64-digit text); errors name the file, never the key."""
    try:
        return BackupKey.parse(read_key_text(path))
    except KeyFormatError as err:
        raise KeyFormatError(f"{Path(path)}: {err}") from None


def read_key_text(path: str | os.PathLike[str]) -> str:
    """A key file's text as stored, unparsed (to look for a typo in it); OSError if unreadable."""
    file = Path(path)
    with file.open("rb") as handle:
        data = handle.read(MAX_KEY_FILE_BYTES + 1)
    if len(data) > MAX_KEY_FILE_BYTES:
        raise KeyFormatError("too large to be a key file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise KeyFormatError("not a text key file") from None


def write_key_file(
    path: str | os.PathLike[str], key: BackupKey, *, overwrite: bool = False
) -> None:
    """Atomically write ``key`` as text with mode 0600.

    The key goes to a private temporary file in the same directory, is synced,
    then linked into place: without ``overwrite`` an existing file is never
    replaced (``FileExistsError``), and a crash leaves no half-written key.
    """
    target = Path(path)
    temp = target.with_name(f".{target.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write((key.digits() + "\n").encode("ascii"))
            handle.flush()
            os.fsync(handle.fileno())
        if overwrite:
            os.replace(temp, target)
        else:
            os.link(temp, target)  # fails if target exists: no clobbering race
            os.unlink(temp)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
    fsync_dir(target.parent)
