"""OPRF mode 0 (base mode) of RFC 9497 with the ristretto255-SHA512 suite.

OPAQUE uses the OPRF so that the vault can turn a password into a strong
secret without ever seeing the password: the client blinds its input, the
server multiplies by its key, the client unblinds and hashes. Only the base
mode is needed (OPAQUE does not use the verifiable modes).

Randomness is injectable (``blind_scalar=``) so the published vectors can be checked
byte for byte; production callers leave it unset.
"""

from __future__ import annotations

import hashlib

from bkv_protocol import group
from bkv_protocol.errors import ProtocolError

MODE_OPRF = 0
SUITE_IDENTIFIER = b"ristretto255-SHA512"
#: "OPRFV1-" || I2OSP(mode, 1) || "-" || identifier
CONTEXT_STRING = b"OPRFV1-" + bytes([MODE_OPRF]) + b"-" + SUITE_IDENTIFIER
HASH_TO_GROUP_DST = b"HashToGroup-" + CONTEXT_STRING
HASH_TO_SCALAR_DST = b"HashToScalar-" + CONTEXT_STRING
DERIVE_KEY_PAIR_DST = b"DeriveKeyPair" + CONTEXT_STRING
OUTPUT_BYTES = 64
SEED_BYTES = 32
_MAX_DERIVE_ATTEMPTS = 256


def _i2osp2(value: int) -> bytes:
    if not 0 <= value < 1 << 16:
        raise ProtocolError("OPRF input longer than 65535 bytes")
    return value.to_bytes(2, "big")


def derive_private_key(seed: bytes, info: bytes) -> bytes:
    """The private half of DeriveKeyPair (saves a base-point multiplication on the server)."""
    if len(seed) != SEED_BYTES:
        raise ProtocolError(f"OPRF seed: expected {SEED_BYTES} bytes, got {len(seed)}")
    derive_input = seed + _i2osp2(len(info)) + info
    for counter in range(_MAX_DERIVE_ATTEMPTS):
        sk = group.hash_to_scalar(derive_input + bytes([counter]), DERIVE_KEY_PAIR_DST)
        if int.from_bytes(sk, "little") != 0:
            return sk
    raise ProtocolError("DeriveKeyPair failed")  # pragma: no cover - probability ~2^-2000


def derive_key_pair(seed: bytes, info: bytes) -> tuple[bytes, bytes]:
    """DeriveKeyPair: deterministic (private scalar, public element) from a seed."""
    sk = derive_private_key(seed, info)
    return sk, group.scalar_mult_base(sk)


def hash_input_to_group(oprf_input: bytes) -> bytes:
    """HashToGroup(input); the identity means the input is unusable (InvalidInputError)."""
    element = group.hash_to_group(oprf_input, HASH_TO_GROUP_DST)
    if group.is_identity(element):
        raise ProtocolError("OPRF input hashes to the identity element")  # pragma: no cover
    return element


def blind(oprf_input: bytes, *, blind_scalar: bytes | None = None) -> tuple[bytes, bytes]:
    """Blind: returns (blind scalar, serialized blinded element)."""
    if blind_scalar is None:
        scalar = group.random_scalar()
    else:
        scalar = group.deserialize_scalar(blind_scalar, "blind")
    return scalar, group.scalar_mult(scalar, hash_input_to_group(oprf_input))


def blind_evaluate(private_key: bytes, blinded_element: bytes) -> bytes:
    """BlindEvaluate (server): private_key * blinded element, after validating the element."""
    element = group.deserialize_element(blinded_element, "blinded element")
    return group.scalar_mult(private_key, element)


def _finalize_hash(oprf_input: bytes, unblinded: bytes) -> bytes:
    hash_input = (
        _i2osp2(len(oprf_input)) + oprf_input + _i2osp2(len(unblinded)) + unblinded + b"Finalize"
    )
    return hashlib.sha512(hash_input).digest()


def finalize(oprf_input: bytes, blind_scalar: bytes, evaluated_element: bytes) -> bytes:
    """Finalize (client): unblind the server's answer and hash it with the input."""
    element = group.deserialize_element(evaluated_element, "evaluated element")
    unblinded = group.scalar_mult(group.scalar_invert(blind_scalar), element)
    return _finalize_hash(oprf_input, unblinded)


def evaluate(private_key: bytes, oprf_input: bytes) -> bytes:
    """Evaluate: the PRF output computed directly by a holder of the key."""
    element = group.scalar_mult(private_key, hash_input_to_group(oprf_input))
    return _finalize_hash(oprf_input, element)
