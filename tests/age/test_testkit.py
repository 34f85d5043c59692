"""C2SP CCTV age test kit: every vector for a feature we implement must behave as specified.

Vectors are skipped only by explicit feature checks (armor, passphrase/scrypt,
post-quantum identities), never because they fail. Beyond the expected outcome
and payload hash, vectors that parse are also used to check that our header
encoder and STREAM encryptor reproduce the exact bytes of the file.
"""

from __future__ import annotations

import hashlib
import io
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from client_sdk import age
from client_sdk.age import stream
from client_sdk.age.header import VERSION_LINE, read_header

KIT = Path(__file__).resolve().parents[1] / "data" / "age_testkit"
PQ_IDENTITY_PREFIX = "AGE-SECRET-KEY-PQ-"
# Counts for the kit as committed; a change means vectors were added or removed.
EXPECTED_RUN = 67
EXPECTED_SKIPPED = {
    "armor is not implemented": 33,
    "scrypt (passphrase) is not implemented": 25,
    "hybrid post-quantum identities are not implemented": 18,
}


@dataclass
class Vector:
    name: str
    meta: dict[str, list[str]] = field(default_factory=dict)
    data: bytes = b""

    @property
    def expect(self) -> str:
        return self.meta["expect"][0]

    def skip_reason(self) -> str | None:
        """Explicit feature checks: the only way a vector is left out."""
        if self.meta.get("armored") == ["yes"]:
            return "armor is not implemented"
        if "passphrase" in self.meta:
            return "scrypt (passphrase) is not implemented"
        if any(i.startswith(PQ_IDENTITY_PREFIX) for i in self.meta.get("identity", [])):
            return "hybrid post-quantum identities are not implemented"
        return None

    def identities(self) -> list[str]:
        # A vector with no identity at all (e.g. "empty") only exercises header
        # parsing, so any identity will do.
        return self.meta.get("identity") or [age.X25519Identity.generate().encode()]


def load(path: Path) -> Vector:
    raw = path.read_bytes()
    text, _, body = raw.partition(b"\n\n")
    vector = Vector(path.name)
    for line in text.decode().splitlines():
        key, _, value = line.partition(": ")
        vector.meta.setdefault(key, []).append(value)
    if vector.meta.get("compressed") == ["zlib"]:
        body = zlib.decompress(body)
    vector.data = body
    return vector


VECTORS = sorted((load(p) for p in KIT.iterdir() if p.name != "README.md"), key=lambda v: v.name)
OUTCOMES: dict[str, type[BaseException] | None] = {
    "success": None,
    "no match": age.NoIdentityMatchError,
    "HMAC failure": age.HeaderMacError,
    "header failure": age.HeaderError,
    "payload failure": age.PayloadError,
}


def test_kit_is_present_and_accounted_for() -> None:
    run = [v for v in VECTORS if v.skip_reason() is None]
    skipped: dict[str, int] = {}
    for vector in VECTORS:
        reason = vector.skip_reason()
        if reason is not None:
            skipped[reason] = skipped.get(reason, 0) + 1
    print(f"\nage testkit: {len(run)} vectors run, {sum(skipped.values())} skipped: {skipped}")
    assert len(run) == EXPECTED_RUN
    assert skipped == EXPECTED_SKIPPED
    assert {v.expect for v in run} == set(OUTCOMES)


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: v.name)
def test_vector(vector: Vector) -> None:
    reason = vector.skip_reason()
    if reason is not None:
        pytest.skip(reason)
    expected = OUTCOMES[vector.expect]
    out = io.BytesIO()
    if expected is None:
        age.decrypt(io.BytesIO(vector.data), out, vector.identities())
    else:
        with pytest.raises(expected) as info:
            age.decrypt(io.BytesIO(vector.data), out, vector.identities())
        # Subclasses must not mask each other (e.g. a header error reported as a MAC error).
        assert type(info.value) is expected
    if "payload" in vector.meta:
        # Everything released, even before a payload failure, must match.
        assert hashlib.sha256(out.getvalue()).hexdigest() == vector.meta["payload"][0]


PARSEABLE = [v for v in VECTORS if v.skip_reason() is None and v.expect != "header failure"]


@pytest.mark.parametrize("vector", PARSEABLE, ids=lambda v: v.name)
def test_header_reencodes_byte_for_byte(vector: Vector) -> None:
    src = io.BytesIO(vector.data)
    header = read_header(src)
    encoded = VERSION_LINE + b"".join(s.encode() for s in header.stanzas) + b"---"
    assert encoded == header.signed
    assert src.tell() == header.size
    assert vector.data[: header.size].endswith(b"\n")


SUCCESSES = [v for v in VECTORS if v.skip_reason() is None and v.expect == "success"]


@pytest.mark.parametrize("vector", SUCCESSES, ids=lambda v: v.name)
def test_stream_reencrypts_byte_for_byte(vector: Vector) -> None:
    """With the vector's file key and nonce, our STREAM encryptor rebuilds its payload."""
    file_key = bytes.fromhex(vector.meta["file key"][0])
    header = read_header(io.BytesIO(vector.data))
    start = header.size + stream.NONCE_SIZE
    nonce, payload = vector.data[header.size : start], vector.data[start:]
    key = stream.payload_key(file_key, nonce)
    plain = io.BytesIO()
    stream.decrypt_payload(key, io.BytesIO(payload), plain)
    again = io.BytesIO()
    stream.encrypt_payload(key, io.BytesIO(plain.getvalue()), again)
    assert again.getvalue() == payload
