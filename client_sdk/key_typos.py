"""Finding the one mistyped digit in a backup key that does not open a backup.

A key typed from paper with one wrong, missing, extra or swapped digit is, to
the cipher, simply another key. Each backup therefore records a short
fingerprint of the key's *public* recipient (see :func:`fingerprint`), and when
a typed key does not match it, :func:`find_typo` tries every single-edit variant
of what was typed -- each substitution (64 x 15), adjacent transposition (63),
insertion (when a digit is missing) or deletion (when one is extra) -- and names
the position whose correction matches. Each variant costs one X25519 public-key
derivation in compiled code, about 2,000 of them in all.

The fingerprint reveals nothing storage does not already know: which backups
were made with the same key (they sit side by side) -- and 64 bits of a public
key's hash help no search of a 256-bit secret.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterator
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from client_sdk.keys import HEX_DIGITS, BackupKey

FINGERPRINT_PREFIX = "bkvfp1-"
_LABEL = b"bkv backup key fingerprint v1\x00"
_FINGERPRINT_BYTES = 8
_HEX_DIGITS = "0123456789abcdef"


def fingerprint(key: BackupKey) -> str:
    """A short public fingerprint of ``key`` (of its age recipient, not of the secret)."""
    return _fingerprint_of(key.raw)


def fingerprint_of_public(public: bytes) -> str:
    """The fingerprint of an X25519 recipient's 32 public bytes (no secret needed)."""
    digest = hashlib.sha256(_LABEL + public).digest()[:_FINGERPRINT_BYTES]
    return FINGERPRINT_PREFIX + digest.hex()


def _fingerprint_of(raw: bytes) -> str:
    return fingerprint_of_public(
        X25519PrivateKey.from_private_bytes(raw).public_key().public_bytes_raw())


# A repository records its key's fingerprint in the *name* of one small object
# (``key-<fingerprint>.age``), so it can be read without the key while every
# object stays an age file.
_MARKER_PREFIX = "key-"
_MARKER_SUFFIX = ".age"


def marker_name(fp: str) -> str:
    return f"{_MARKER_PREFIX}{fp}{_MARKER_SUFFIX}"


def fingerprints_in(names: list[str]) -> list[str]:
    """The key fingerprints recorded by the marker objects among ``names``."""
    found = []
    for name in names:
        if name.startswith(_MARKER_PREFIX + FINGERPRINT_PREFIX) and name.endswith(_MARKER_SUFFIX):
            found.append(name[len(_MARKER_PREFIX) : -len(_MARKER_SUFFIX)])
    return found


def matches(key: BackupKey, expected: str) -> bool:
    return hmac.compare_digest(fingerprint(key).encode(), expected.encode())


@dataclass(frozen=True)
class Typo:
    """One edit that turns the typed digits into the key whose fingerprint matched."""

    kind: str  # "substitution" | "transposition" | "insertion" | "deletion"
    position: int  # 1-based digit number in what was typed (spaces and dashes not counted)
    typed: str = ""  # the digit(s) as typed
    correct: str = ""  # what opens the backup there
    key: BackupKey | None = None

    def message(self) -> str:
        """What to tell the user; names positions and digits, never the whole key."""
        where = f"digit {self.position} (group {(self.position - 1) // 4 + 1})"
        if self.kind == "substitution":
            return (f"{where} looks wrong: with {self.correct!r} instead of {self.typed!r} "
                    "this key opens the backup")
        if self.kind == "transposition":
            return (f"digits {self.position} and {self.position + 1} look swapped: as "
                    f"{self.correct!r} instead of {self.typed!r} this key opens the backup")
        if self.kind == "insertion":
            return (f"a digit seems to be missing before digit {self.position}: with "
                    f"{self.correct!r} there this key opens the backup")
        return f"{where} ({self.typed!r}) seems to be extra: without it this key opens the backup"


def typed_digits(text: str) -> str | None:
    """The hex digits of typed key text, lowercased; None if anything else is in it."""
    out = []
    for char in text.strip():
        if char in " -\t\r\n":
            continue
        low = char.lower()
        if low not in _HEX_DIGITS:
            return None
        out.append(low)
    return "".join(out)


def digit_count(text: str) -> int:
    """How many hex digits ``text`` holds (-1 if it holds anything but digits and separators)."""
    digits = typed_digits(text)
    return -1 if digits is None else len(digits)


def find_typo(text: str, expected: str) -> Typo | None:
    """The first single edit of ``text`` whose key has fingerprint ``expected``, if any.

    None when no single edit matches (more than one mistake, or another key
    altogether). Several edits can match only when they give keys that differ in
    the bits X25519 clamps away: such keys have the same public key and all open
    the backup, so the first (substitutions, then transpositions) is reported.
    """
    digits = typed_digits(text)
    if digits is None or abs(len(digits) - HEX_DIGITS) > 1:
        return None
    want = expected.encode()
    for typo, candidate in _variants(digits):
        raw = bytes.fromhex(candidate)
        if hmac.compare_digest(_fingerprint_of(raw).encode(), want):
            return Typo(typo.kind, typo.position, typo.typed, typo.correct, BackupKey(raw))
    return None


def _variants(digits: str) -> Iterator[tuple[Typo, str]]:
    n = len(digits)
    if n == HEX_DIGITS:
        for i, typed in enumerate(digits):
            for digit in _HEX_DIGITS:
                if digit != typed:
                    yield Typo("substitution", i + 1, typed, digit), (
                        digits[:i] + digit + digits[i + 1 :])
        for i in range(n - 1):
            if digits[i] != digits[i + 1]:
                pair = digits[i : i + 2]
                yield Typo("transposition", i + 1, pair, pair[::-1]), (
                    digits[:i] + pair[::-1] + digits[i + 2 :])
    elif n == HEX_DIGITS - 1:
        for i in range(n + 1):
            for digit in _HEX_DIGITS:
                yield Typo("insertion", i + 1, "", digit), digits[:i] + digit + digits[i:]
    elif n == HEX_DIGITS + 1:
        for i, typed in enumerate(digits):
            yield Typo("deletion", i + 1, typed, ""), digits[:i] + digits[i + 1 :]
