"""Key-stretching functions (KSF) for OPAQUE.

OPAQUE stretches the OPRF output on the client so that an attacker who steals
the vault's OPRF key still pays a memory-hard cost per password guess. The
parameters are recorded per registration as a descriptor string (e.g.
``"argon2id;v=19;m=65536;t=3;p=1"``) so they can be raised later without
breaking old records.

A descriptor may come from a hostile server, so :func:`ksf_from_descriptor`
parses strictly and refuses both parameters below the production floor (a
downgrade) and absurdly high ones (a denial of service on the device).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Protocol, runtime_checkable

import pysodium

from bkv_protocol.errors import ProtocolError

OUTPUT_BYTES: Final = 64
ARGON2_VERSION: Final = 19
KIB: Final = 1024
# Production floor and ceiling for parameters read from a descriptor.
MIN_MEMORY_KIB: Final = 64 * 1024
MIN_COST_KIB_PASSES: Final = 3 * 64 * 1024
MAX_MEMORY_KIB: Final = 1024 * 1024
MAX_PASSES: Final = 10
_DESCRIPTOR = re.compile(r"argon2id;v=19;m=([1-9][0-9]{0,8});t=([1-9][0-9]?);p=1")


@runtime_checkable
class KSF(Protocol):
    """A key-stretching function: ``stretch`` is deterministic, ``descriptor`` names it."""

    @property
    def descriptor(self) -> str:
        """Canonical, parseable name with every parameter."""
        ...

    def stretch(self, msg: bytes) -> bytes:
        """Stretch the OPRF output into ``OUTPUT_BYTES`` (identity KSF: unchanged)."""
        ...


@dataclass(frozen=True)
class _IdentityKSF:
    """The identity KSF of the OPAQUE test vectors. Never used for real passwords."""

    @property
    def descriptor(self) -> str:
        return "identity"

    def stretch(self, msg: bytes) -> bytes:
        return bytes(msg)


IDENTITY_KSF: Final[KSF] = _IdentityKSF()


@dataclass(frozen=True)
class Argon2idKSF:
    """Argon2id (RFC 9106) via libsodium: 64-byte output, all-zero salt, parallelism 1.

    The salt is fixed because OPAQUE's OPRF output is already unique per user
    and server; this matches the Argon2id instantiation in the OPAQUE spec.
    ``memlimit`` is in bytes (libsodium's unit) and must be a whole number of KiB.
    """

    opslimit: int
    memlimit: int

    def __post_init__(self) -> None:
        ops_min, ops_max = pysodium.crypto_pwhash_OPSLIMIT_MIN, pysodium.crypto_pwhash_OPSLIMIT_MAX
        mem_min, mem_max = pysodium.crypto_pwhash_MEMLIMIT_MIN, pysodium.crypto_pwhash_MEMLIMIT_MAX
        if not ops_min <= self.opslimit <= ops_max:
            raise ProtocolError("argon2id: opslimit out of range")
        if self.memlimit % KIB or not mem_min <= self.memlimit <= mem_max:
            raise ProtocolError("argon2id: memlimit out of range or not a multiple of 1 KiB")

    @property
    def descriptor(self) -> str:
        return f"argon2id;v={ARGON2_VERSION};m={self.memlimit // KIB};t={self.opslimit};p=1"

    def stretch(self, msg: bytes) -> bytes:
        out = pysodium.crypto_pwhash(
            OUTPUT_BYTES,
            msg,
            bytes(pysodium.crypto_pwhash_SALTBYTES),
            self.opslimit,
            self.memlimit,
            pysodium.crypto_pwhash_ALG_ARGON2ID13,
        )
        return bytes(out)


PRODUCTION_KSF: Final[KSF] = Argon2idKSF(opslimit=3, memlimit=64 * 1024 * KIB)
"""The one place production KSF parameters are chosen.

RFC 9106 section 4 recommends t=1, p=4, m=2 GiB first and, for
memory-constrained uses, t=3, p=4, m=64 MiB. libsodium computes Argon2id with
one lane only (p=1), so we take the second option's memory and passes at p=1:
m=64 MiB, t=3. That fits phones and costs an attacker the same memory-hard
work per guess; the descriptor records it so a later increase keeps old
records working.
"""


def ksf_from_descriptor(descriptor: str, *, allow_identity: bool = False) -> KSF:
    """Parse a KSF descriptor strictly; refuse downgrades and denial-of-service parameters.

    Accepts ``"argon2id;v=19;m=<KiB>;t=<passes>;p=1"`` with m >= 64 MiB,
    m * t >= the production cost, m <= 1 GiB, t <= 10; ``"identity"`` only with
    ``allow_identity=True`` (vector tests).
    """
    if descriptor == "identity":
        if allow_identity:
            return IDENTITY_KSF
        raise ProtocolError("KSF descriptor: the identity KSF is not allowed here")
    match = _DESCRIPTOR.fullmatch(descriptor)
    if match is None:
        raise ProtocolError(
            "KSF descriptor: unrecognised format (want argon2id;v=19;m=..;t=..;p=1)"
        )
    memory_kib, passes = int(match.group(1)), int(match.group(2))
    if memory_kib > MAX_MEMORY_KIB or passes > MAX_PASSES:
        raise ProtocolError("KSF descriptor: parameters above the accepted maximum")
    if memory_kib < MIN_MEMORY_KIB or memory_kib * passes < MIN_COST_KIB_PASSES:
        raise ProtocolError("KSF descriptor: parameters below the production floor")
    return Argon2idKSF(opslimit=passes, memlimit=memory_kib * KIB)
