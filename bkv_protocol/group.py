"""ristretto255 group and scalar field over libsodium (via pysodium).

This is the prime-order group every OPRF and OPAQUE operation of the project
runs in. Elements travel as 32-byte canonical ristretto255 encodings and
scalars as 32-byte little-endian integers below the group order ``L``.

Decoding is strict on purpose: a peer-supplied element must be a canonical
encoding of a point other than the identity, and a peer-supplied scalar must be
canonical and non-zero. Anything else raises :class:`ProtocolError` whose
message names the field, never its value.
"""

from __future__ import annotations

import hashlib
import hmac

import pysodium

from bkv_protocol.errors import ProtocolError

ELEMENT_BYTES = 32
SCALAR_BYTES = 32
#: Order of the ristretto255 group (RFC 9496).
ORDER = 2**252 + 27742317777372353535851937790883648493
_IDENTITY = bytes(ELEMENT_BYTES)
_WIDE_BYTES = 64
_SHA512_BLOCK = 128
_SHA512_OUT = 64


def is_identity(element: bytes) -> bool:
    """True for the encoding of the identity (the all-zero string)."""
    return hmac.compare_digest(element, _IDENTITY)


def deserialize_element(data: bytes, what: str = "group element") -> bytes:
    """Validate a peer-supplied element: right length, canonical, not the identity."""
    if len(data) != ELEMENT_BYTES:
        raise ProtocolError(f"{what}: expected {ELEMENT_BYTES} bytes, got {len(data)}")
    if not pysodium.crypto_core_ristretto255_is_valid_point(data):
        raise ProtocolError(f"{what}: not a canonical ristretto255 encoding")
    if is_identity(data):
        raise ProtocolError(f"{what}: identity element")
    return bytes(data)


def deserialize_scalar(data: bytes, what: str = "scalar") -> bytes:
    """Validate a scalar: right length, canonical (< L) and non-zero."""
    if len(data) != SCALAR_BYTES:
        raise ProtocolError(f"{what}: expected {SCALAR_BYTES} bytes, got {len(data)}")
    value = int.from_bytes(data, "little")
    if value >= ORDER:
        raise ProtocolError(f"{what}: not reduced modulo the group order")
    if value == 0:
        raise ProtocolError(f"{what}: zero scalar")
    return bytes(data)


def scalar_mult(scalar: bytes, element: bytes) -> bytes:
    """``scalar * element``; both must already be validated.

    libsodium refuses an identity result (and an invalid input point); either
    can only come from hostile input, so it surfaces as ProtocolError.
    """
    try:
        return bytes(pysodium.crypto_scalarmult_ristretto255(scalar, element))
    except ValueError:
        raise ProtocolError("scalar multiplication gave the identity element") from None


def scalar_mult_base(scalar: bytes) -> bytes:
    """``scalar * G`` for the ristretto255 generator G."""
    try:
        return bytes(pysodium.crypto_scalarmult_ristretto255_base(scalar))
    except ValueError:
        raise ProtocolError("base-point multiplication gave the identity element") from None


def scalar_invert(scalar: bytes) -> bytes:
    """Multiplicative inverse modulo L (the scalar must be non-zero)."""
    try:
        return bytes(pysodium.crypto_core_ristretto255_scalar_invert(scalar))
    except ValueError:
        raise ProtocolError("cannot invert the zero scalar") from None


def scalar_from_wide(data: bytes) -> bytes:
    """Reduce 64 uniform bytes (little-endian) modulo L: the unbiased hash-to-scalar map."""
    if len(data) != _WIDE_BYTES:
        raise ProtocolError(f"wide scalar: expected {_WIDE_BYTES} bytes, got {len(data)}")
    return bytes(pysodium.crypto_core_ristretto255_scalar_reduce(data))


def random_scalar() -> bytes:
    """Uniform non-zero scalar from libsodium's CSPRNG."""
    while True:
        candidate = bytes(pysodium.crypto_core_ristretto255_scalar_random())
        if int.from_bytes(candidate, "little") != 0:
            return candidate


def element_from_uniform(data: bytes) -> bytes:
    """Map 64 uniform bytes to an element (ristretto255 one-way map, RFC 9496)."""
    if len(data) != _WIDE_BYTES:
        raise ProtocolError(f"uniform bytes: expected {_WIDE_BYTES} bytes, got {len(data)}")
    return bytes(pysodium.crypto_core_ristretto255_from_hash(data))


def expand_message_xmd(msg: bytes, dst: bytes, length: int) -> bytes:
    """expand_message_xmd with SHA-512 (RFC 9380, section 5.3.1)."""
    if len(dst) > 255:
        dst = hashlib.sha512(b"H2C-OVERSIZE-DST-" + dst).digest()
    ell = -(-length // _SHA512_OUT)
    if ell > 255 or length > 65535 or length <= 0:
        raise ProtocolError("expand_message_xmd: requested length out of range")
    dst_prime = dst + bytes([len(dst)])
    msg_prime = bytes(_SHA512_BLOCK) + msg + length.to_bytes(2, "big") + b"\x00" + dst_prime
    b0 = hashlib.sha512(msg_prime).digest()
    blocks = [hashlib.sha512(b0 + b"\x01" + dst_prime).digest()]
    for i in range(2, ell + 1):
        mixed = bytes(x ^ y for x, y in zip(b0, blocks[-1], strict=True))
        blocks.append(hashlib.sha512(mixed + bytes([i]) + dst_prime).digest())
    return b"".join(blocks)[:length]


def hash_to_group(msg: bytes, dst: bytes) -> bytes:
    """hash_to_ristretto255: expand to 64 bytes, then the one-way map."""
    return element_from_uniform(expand_message_xmd(msg, dst, _WIDE_BYTES))


def hash_to_scalar(msg: bytes, dst: bytes) -> bytes:
    """HashToScalar for ristretto255: expand to 64 bytes, reduce modulo L."""
    return scalar_from_wide(expand_message_xmd(msg, dst, _WIDE_BYTES))
