"""The in-memory age functions (repository objects) agree with the streaming ones on the kit."""

from __future__ import annotations

import hashlib
import os

import pytest

from client_sdk import age
from client_sdk.age.memory import decrypt_bytes, decrypt_into, encrypt_bytes, encrypt_into
from client_sdk.keys import BackupKey

from .test_testkit import OUTCOMES, VECTORS, Vector

RUN = [v for v in VECTORS if v.skip_reason() is None]


def _open(vector: Vector) -> bytes:
    """Like ``age.decrypt`` with several identities: the first that matches opens it."""
    identities = [age.X25519Identity.parse(i) for i in vector.identities()]
    for identity in identities:
        try:
            return bytes(decrypt_bytes(vector.data, identity))
        except age.NoIdentityMatchError:
            continue
    raise age.NoIdentityMatchError("no identity matches")


@pytest.mark.parametrize("vector", RUN, ids=lambda v: v.name)
def test_vector_outcome_matches_the_stream_decryptor(vector: Vector) -> None:
    expected = OUTCOMES[vector.expect]
    if expected is None:
        plain = _open(vector)
        if "payload" in vector.meta:
            assert hashlib.sha256(plain).hexdigest() == vector.meta["payload"][0]
    else:
        with pytest.raises(expected):
            _open(vector)


@pytest.mark.parametrize("size", [0, 1, 65535, 65536, 65537, 3 * 65536, 1_000_003])
def test_round_trip_and_buffers(size: int) -> None:
    key = BackupKey.generate()
    identity, recipient = age.X25519Identity(key.raw), age.X25519Identity(key.raw).recipient
    data = os.urandom(size)
    sealed = encrypt_bytes(data, recipient)
    assert bytes(decrypt_bytes(sealed, identity)) == data
    out = memoryview(bytearray(len(sealed) + 100))
    count = encrypt_into(data, recipient, out)
    plain = memoryview(bytearray(size + 10))
    assert bytes(plain[: decrypt_into(out[:count], identity, plain)]) == data
    with pytest.raises(ValueError):
        encrypt_into(data, recipient, memoryview(bytearray(size)))
    with pytest.raises(age.NoIdentityMatchError):
        decrypt_bytes(sealed, age.X25519Identity.generate())
