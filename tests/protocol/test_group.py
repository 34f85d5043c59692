"""ristretto255 wrapper: strict decoding and scalar arithmetic."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bkv_protocol import group
from bkv_protocol.errors import ProtocolError

ONE = (1).to_bytes(32, "little")
GENERATOR = "e2f2ae0a6abc4e71a884a961c500515f58e30b6aa582dd8db6a65945e08d2d76"
# RFC 9496 appendix A.2: non-canonical field encodings and negative field elements.
BAD_ENCODINGS = [
    "00ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
    "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "f3ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "0100000000000000000000000000000000000000000000000000000000000000",
    "01ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
]


def test_generator_encoding() -> None:
    assert group.scalar_mult_base(ONE).hex() == GENERATOR


@pytest.mark.parametrize("encoding", BAD_ENCODINGS)
def test_rejects_non_canonical_encodings(encoding: str) -> None:
    with pytest.raises(ProtocolError, match="canonical"):
        group.deserialize_element(bytes.fromhex(encoding))


def test_rejects_identity_and_wrong_lengths() -> None:
    with pytest.raises(ProtocolError, match="identity"):
        group.deserialize_element(bytes(32))
    for size in (0, 31, 33, 64):
        with pytest.raises(ProtocolError, match="32 bytes"):
            group.deserialize_element(bytes.fromhex(GENERATOR)[:1] * size)


def test_error_message_names_field_not_value() -> None:
    with pytest.raises(ProtocolError) as info:
        group.deserialize_element(b"\xee" * 32, "KE1 client keyshare")
    assert "KE1 client keyshare" in str(info.value)
    assert "ee" not in str(info.value)


@pytest.mark.parametrize(
    ("scalar", "message"),
    [
        (bytes(32), "zero"),
        (group.ORDER.to_bytes(32, "little"), "reduced"),
        ((group.ORDER + 1).to_bytes(32, "little"), "reduced"),
        (b"\xff" * 32, "reduced"),
        (ONE[:31], "32 bytes"),
    ],
)
def test_rejects_bad_scalars(scalar: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        group.deserialize_scalar(scalar)


def test_scalar_edge_values_accepted() -> None:
    assert group.deserialize_scalar(ONE) == ONE
    top = (group.ORDER - 1).to_bytes(32, "little")
    assert group.deserialize_scalar(top) == top


def test_zero_scalar_operations_raise() -> None:
    with pytest.raises(ProtocolError):
        group.scalar_mult_base(bytes(32))
    with pytest.raises(ProtocolError):
        group.scalar_mult(bytes(32), bytes.fromhex(GENERATOR))
    with pytest.raises(ProtocolError):
        group.scalar_invert(bytes(32))


@settings(max_examples=25, deadline=None)
@given(st.binary(min_size=64, max_size=64))
def test_inverse_undoes_multiplication(seed: bytes) -> None:
    k = group.scalar_from_wide(seed)
    if k == bytes(32):
        return
    point = group.hash_to_group(seed, b"test")
    assert group.scalar_mult(group.scalar_invert(k), group.scalar_mult(k, point)) == point


def test_random_scalar_is_canonical_and_varies() -> None:
    scalars = {group.random_scalar() for _ in range(8)}
    assert len(scalars) == 8
    for s in scalars:
        assert group.deserialize_scalar(s) == s


def test_expand_message_xmd_lengths() -> None:
    assert len(group.expand_message_xmd(b"m", b"dst", 200)) == 200
    long_dst = b"d" * 300
    assert group.expand_message_xmd(b"m", long_dst, 32) != group.expand_message_xmd(
        b"m", long_dst[:255], 32
    )
    with pytest.raises(ProtocolError):
        group.expand_message_xmd(b"m", b"dst", 0)
    with pytest.raises(ProtocolError):
        group.expand_message_xmd(b"m", b"dst", 64 * 256)
