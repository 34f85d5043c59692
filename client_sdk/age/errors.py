"""Errors raised by the age implementation.

The split follows what a caller must do differently: a wrong key
(:class:`NoIdentityMatchError`) means "ask for another key", while a
:class:`DamagedFileError` means the file itself can't be trusted. Messages
never contain key material.
"""

from __future__ import annotations


class AgeError(Exception):
    """Base class of every age error."""


class KeyEncodingError(AgeError, ValueError):
    """A recipient ("age1...") or identity ("AGE-SECRET-KEY-1...") string is malformed."""


class NoIdentityMatchError(AgeError):
    """The header is well formed, but none of its stanzas opens with the given identities."""


class UnsupportedFormatError(AgeError):
    """The input uses an age feature this implementation doesn't support (e.g. ASCII armor)."""


class DamagedFileError(AgeError):
    """The file is malformed, tampered with or truncated.

    ``offset`` is the byte offset in the encrypted file where the problem was
    detected (the start of the offending line or chunk), when known; ``chunk``
    is the STREAM chunk index for payload errors.
    """

    def __init__(
        self, message: str, *, offset: int | None = None, chunk: int | None = None
    ) -> None:
        super().__init__(message)
        self.offset = offset
        self.chunk = chunk


class HeaderError(DamagedFileError):
    """The header doesn't parse, or a stanza addressed to us is malformed."""


class HeaderMacError(DamagedFileError):
    """A file key was unwrapped but the header MAC doesn't match: the header was altered."""


class PayloadError(DamagedFileError):
    """The encrypted payload doesn't authenticate all the way to a valid final chunk."""
