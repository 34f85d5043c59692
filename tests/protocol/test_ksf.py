"""Key-stretching functions: Argon2id output, descriptors, downgrade and DoS refusal."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

from bkv_protocol.errors import ProtocolError
from bkv_protocol.ksf import (
    IDENTITY_KSF,
    KSF,
    PRODUCTION_KSF,
    Argon2idKSF,
    ksf_from_descriptor,
)

SMALL = Argon2idKSF(opslimit=1, memlimit=8 * 1024)


def test_identity_ksf() -> None:
    assert IDENTITY_KSF.stretch(b"abc") == b"abc"
    assert IDENTITY_KSF.descriptor == "identity"
    assert isinstance(IDENTITY_KSF, KSF)


def test_argon2id_matches_independent_implementation() -> None:
    # Same parameters through OpenSSL's Argon2id (via `cryptography`): 16 zero bytes of salt, p=1.
    msg = bytes(range(64))
    reference = Argon2id(salt=bytes(16), length=64, iterations=1, lanes=1, memory_cost=8).derive(
        msg
    )
    out = SMALL.stretch(msg)
    assert out == reference
    assert len(out) == 64
    assert SMALL.stretch(msg[:-1] + b"\x00") != out


def test_production_parameters() -> None:
    assert PRODUCTION_KSF.descriptor == "argon2id;v=19;m=65536;t=3;p=1"
    assert isinstance(PRODUCTION_KSF, Argon2idKSF)
    assert PRODUCTION_KSF.memlimit == 64 * 1024 * 1024


def test_descriptor_round_trip() -> None:
    for descriptor in (
        "argon2id;v=19;m=65536;t=3;p=1",
        "argon2id;v=19;m=262144;t=1;p=1",
        "argon2id;v=19;m=1048576;t=10;p=1",
    ):
        assert ksf_from_descriptor(descriptor).descriptor == descriptor
    assert ksf_from_descriptor(PRODUCTION_KSF.descriptor) == PRODUCTION_KSF


def test_identity_only_when_allowed() -> None:
    with pytest.raises(ProtocolError, match="identity"):
        ksf_from_descriptor("identity")
    assert ksf_from_descriptor("identity", allow_identity=True) is IDENTITY_KSF


@pytest.mark.parametrize(
    "descriptor",
    [
        "argon2id;v=19;m=65535;t=3;p=1",  # memory below floor
        "argon2id;v=19;m=65536;t=2;p=1",  # total cost below floor
        "argon2id;v=19;m=131072;t=1;p=1",  # total cost below floor
        "argon2id;v=19;m=8;t=1;p=1",
    ],
)
def test_refuses_downgrade(descriptor: str) -> None:
    with pytest.raises(ProtocolError, match="below the production floor"):
        ksf_from_descriptor(descriptor)


@pytest.mark.parametrize(
    "descriptor",
    ["argon2id;v=19;m=1048577;t=3;p=1", "argon2id;v=19;m=65536;t=11;p=1"],
)
def test_refuses_denial_of_service(descriptor: str) -> None:
    with pytest.raises(ProtocolError, match="maximum"):
        ksf_from_descriptor(descriptor)


@pytest.mark.parametrize(
    "descriptor",
    [
        "",
        "argon2i;v=19;m=65536;t=3;p=1",
        "argon2id;v=16;m=65536;t=3;p=1",
        "argon2id;v=19;m=65536;t=3;p=4",
        "argon2id;v=19;t=3;m=65536;p=1",
        "argon2id;v=19;m=065536;t=3;p=1",
        "argon2id;v=19;m=+65536;t=3;p=1",
        "argon2id;v=19;m=65536;t=3;p=1\n",
        "argon2id;v=19;m=65536;t=3;p=1;x=1",
        "ARGON2ID;v=19;m=65536;t=3;p=1",
        "argon2id;v=19;m=\uff16\uff15\uff15\uff13\uff16;t=3;p=1",  # full-width digits
        "argon2id;v=19;m=99999999999999;t=3;p=1",
        "Identity",
    ],
)
def test_refuses_malformed(descriptor: str) -> None:
    with pytest.raises(ProtocolError):
        ksf_from_descriptor(descriptor, allow_identity=True)


def test_constructor_validates() -> None:
    with pytest.raises(ProtocolError):
        Argon2idKSF(opslimit=0, memlimit=64 * 1024 * 1024)
    with pytest.raises(ProtocolError):
        Argon2idKSF(opslimit=3, memlimit=64 * 1024 * 1024 + 1)
