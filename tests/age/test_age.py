"""age encryption: round trips, wrong keys, tampering, truncation, streaming behaviour."""

from __future__ import annotations

import io
import os
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from client_sdk import age
from client_sdk.age import bech32, stream
from client_sdk.age.header import read_header

CHUNK = stream.CHUNK_SIZE
ENC_CHUNK = stream.ENCRYPTED_CHUNK_SIZE
BATCH = stream.BATCH_CHUNKS * CHUNK


@pytest.fixture(scope="module")
def identity() -> age.X25519Identity:
    return age.X25519Identity.generate()


def seal(data: bytes, *recipients: age.X25519Identity) -> bytes:
    out = io.BytesIO()
    age.encrypt(io.BytesIO(data), out, [str(r.recipient) for r in recipients])
    return out.getvalue()


def payload_start(sealed: bytes) -> int:
    return read_header(io.BytesIO(sealed)).size + stream.NONCE_SIZE


def open_(sealed: bytes, *identities: age.X25519Identity) -> bytes:
    out = io.BytesIO()
    age.decrypt(io.BytesIO(sealed), out, [i.encode() for i in identities])
    return out.getvalue()


@pytest.mark.parametrize(
    "size",
    [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, BATCH - 1, BATCH, BATCH + 1, 2 * BATCH + 5],
)
def test_round_trip_sizes(identity: age.X25519Identity, size: int) -> None:
    data = os.urandom(size)
    sealed = seal(data, identity)
    chunks = max(1, -(-size // CHUNK))
    assert len(sealed) == payload_start(sealed) + size + 16 * chunks
    assert open_(sealed, identity) == data


def test_every_file_is_fresh(identity: age.X25519Identity) -> None:
    assert seal(b"same", identity) != seal(b"same", identity)


def test_multiple_recipients_and_identities(identity: age.X25519Identity) -> None:
    other = age.X25519Identity.generate()
    sealed = seal(b"family photos", identity, other)
    assert open_(sealed, other) == b"family photos"
    assert open_(sealed, age.X25519Identity.generate(), identity) == b"family photos"


def test_wrong_key_is_no_match(identity: age.X25519Identity) -> None:
    sealed = seal(b"secret", identity)
    out = io.BytesIO()
    with pytest.raises(age.NoIdentityMatchError):
        age.decrypt(io.BytesIO(sealed), out, [age.X25519Identity.generate()])
    assert out.getvalue() == b""


def test_altered_chunk_reports_offset_and_releases_only_verified_chunks(
    identity: age.X25519Identity,
) -> None:
    data = os.urandom(3 * CHUNK + 10)
    sealed = bytearray(seal(data, identity))
    start = payload_start(bytes(sealed))
    sealed[start + ENC_CHUNK + 100] ^= 1
    out = io.BytesIO()
    with pytest.raises(age.PayloadError) as info:
        age.decrypt(io.BytesIO(bytes(sealed)), out, [identity])
    assert info.value.offset == start + ENC_CHUNK
    assert info.value.chunk == 1
    assert out.getvalue() == data[:CHUNK]


def test_truncation_at_chunk_boundary_is_detected(identity: age.X25519Identity) -> None:
    data = os.urandom(3 * CHUNK)
    sealed = seal(data, identity)
    cut = payload_start(sealed) + 2 * ENC_CHUNK
    with pytest.raises(age.PayloadError, match="truncated") as info:
        open_(sealed[:cut], identity)
    assert info.value.offset == cut


def test_truncation_mid_chunk_is_detected(identity: age.X25519Identity) -> None:
    sealed = seal(os.urandom(2 * CHUNK), identity)
    with pytest.raises(age.PayloadError) as info:
        open_(sealed[:-1], identity)
    assert info.value.chunk == 1


def test_reordered_chunks_are_detected(identity: age.X25519Identity) -> None:
    sealed = seal(os.urandom(3 * CHUNK), identity)
    start = payload_start(sealed)
    first, second = (sealed[start + i * ENC_CHUNK : start + (i + 1) * ENC_CHUNK] for i in (0, 1))
    swapped = sealed[:start] + second + first + sealed[start + 2 * ENC_CHUNK :]
    with pytest.raises(age.PayloadError) as info:
        open_(swapped, identity)
    assert info.value.offset == start
    assert info.value.chunk == 0


def test_trailing_data_is_detected(identity: age.X25519Identity) -> None:
    sealed = seal(os.urandom(CHUNK), identity)
    with pytest.raises(age.PayloadError, match="after the final chunk") as info:
        open_(sealed + b"x", identity)
    assert info.value.offset == len(sealed)


def test_altered_header_fails_the_mac(identity: age.X25519Identity) -> None:
    other = age.X25519Identity.generate()
    sealed = seal(b"data", identity)
    header = read_header(io.BytesIO(sealed))
    # Re-wrap the same file key for someone else and splice it in: MAC must catch it.
    extra = other.recipient.wrap(os.urandom(16)).encode()
    spliced = sealed.replace(b"\n---", b"\n" + extra[:-1] + b"\n---", 1)
    assert spliced != sealed and header.size < len(sealed)
    with pytest.raises(age.HeaderMacError):
        open_(spliced, identity)


def test_not_an_age_file(identity: age.X25519Identity) -> None:
    with pytest.raises(age.HeaderError, match="not an age file"):
        open_(b"PK\x03\x04 a zip file", identity)


def test_armored_input_is_unsupported(identity: age.X25519Identity) -> None:
    with pytest.raises(age.UnsupportedFormatError):
        open_(b"-----BEGIN AGE ENCRYPTED FILE-----\nYWdl\n", identity)


def test_huge_header_line_is_bounded(identity: age.X25519Identity) -> None:
    hostile = b"age-encryption.org/v1\n-> " + b"A" * (1 << 20)
    with pytest.raises(age.HeaderError, match="too long"):
        open_(hostile, identity)


class Trickle(io.RawIOBase):
    """A stream that returns at most 1000 bytes per read, like a pipe."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        piece = self._data.read(min(len(buffer), 1000))
        buffer[: len(piece)] = piece
        return len(piece)


def test_short_reads_are_handled(identity: age.X25519Identity) -> None:
    data = os.urandom(2 * CHUNK + 3)
    sealed = io.BytesIO()
    age.encrypt(Trickle(data), sealed, [str(identity.recipient)])  # type: ignore[arg-type]
    out = io.BytesIO()
    age.decrypt(Trickle(sealed.getvalue()), out, [identity])  # type: ignore[arg-type]
    assert out.getvalue() == data


class Zeros(io.RawIOBase):
    """``size`` zero bytes, generated on demand (never held in memory)."""

    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        count = min(len(buffer), self.left)
        buffer[:count] = bytes(count)
        self.left -= count
        return count


class Sink(io.RawIOBase):
    def __init__(self) -> None:
        self.count = 0

    def writable(self) -> bool:
        return True

    def write(self, data: memoryview) -> int:  # type: ignore[override]
        self.count += len(data)
        return len(data)


def test_memory_stays_flat(identity: age.X25519Identity) -> None:
    size = 48 * 1024 * 1024
    sink = Sink()
    tracemalloc.start()
    try:
        age.encrypt(Zeros(size), sink, [str(identity.recipient)])  # type: ignore[arg-type]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sink.count > size
    assert peak < 8 * 1024 * 1024, f"peak {peak} bytes for a {size}-byte input"


class FullDisk(Sink):
    def write(self, data: memoryview) -> int:  # type: ignore[override]
        if self.count > 2 * BATCH:
            raise OSError(28, "No space left on device")
        return super().write(data)


def test_write_errors_propagate_without_hanging(identity: age.X25519Identity) -> None:
    sink = FullDisk()
    with pytest.raises(OSError, match="No space"):
        age.encrypt(Zeros(8 * BATCH), sink, [str(identity.recipient)])  # type: ignore[arg-type]
    assert sink.count <= 4 * BATCH


def test_bad_recipient_and_identity_strings() -> None:
    with pytest.raises(age.KeyEncodingError):
        age.encrypt(io.BytesIO(b""), io.BytesIO(), ["age1notarecipient"])
    with pytest.raises(age.KeyEncodingError):
        age.encrypt(io.BytesIO(b""), io.BytesIO(), [])
    with pytest.raises(age.KeyEncodingError):
        age.decrypt(io.BytesIO(b""), io.BytesIO(), ["AGE-SECRET-KEY-1QQQ"])


def test_a_bare_string_is_not_a_list_of_keys(identity: age.X25519Identity) -> None:
    with pytest.raises(TypeError):
        age.encrypt(io.BytesIO(b""), io.BytesIO(), str(identity.recipient))
    with pytest.raises(TypeError):
        age.decrypt(io.BytesIO(b""), io.BytesIO(), identity.encode())


def test_recipient_string_round_trip(identity: age.X25519Identity) -> None:
    text = str(identity.recipient)
    assert text.startswith("age1")
    assert str(age.X25519Recipient.parse(text)) == text
    assert str(age.X25519Recipient.parse(text.upper())) == text
    again = age.X25519Identity.parse(identity.encode())
    assert str(again.recipient) == text
    assert identity.encode() not in repr(identity)


def test_bech32_rejects_corruption() -> None:
    good = bech32.encode("age", bytes(range(32)))
    assert bech32.decode(good) == ("age", bytes(range(32)))
    flipped = good[:-1] + ("q" if good[-1] != "q" else "p")
    for bad in (flipped, good[:10] + good[10:].upper(), good.replace("1", "", 1), good + "b"):
        with pytest.raises(bech32.Bech32Error):
            bech32.decode(bad)


BIP173_VALID = (
    "A12UEL5L",
    "an83characterlonghumanreadablepartthatcontainsthenumber1andtheexcludedcharactersbio1tt5tgs",
    "abcdef1qpzry9x8gf2tvdw0s3jn54khce6mua7lmqqqxw",
)


@pytest.mark.parametrize("text", BIP173_VALID)
def test_bip173_valid_checksums(text: str) -> None:
    hrp, _ = bech32.decode(text)
    assert hrp == text.lower()[: text.rfind("1")]


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_any_single_byte_change_is_rejected(data: st.DataObject) -> None:
    identity = _FUZZ_IDENTITY
    sealed = bytearray(_FUZZ_SEALED)
    index = data.draw(st.integers(0, len(sealed) - 1))
    sealed[index] ^= data.draw(st.integers(1, 255))
    with pytest.raises(age.AgeError):
        open_(bytes(sealed), identity)


@settings(max_examples=150, deadline=None)
@given(tail=st.binary(max_size=300))
def test_garbage_after_version_line_never_crashes(tail: bytes) -> None:
    with pytest.raises(age.AgeError):
        open_(b"age-encryption.org/v1\n" + tail, _FUZZ_IDENTITY)


_FUZZ_IDENTITY = age.X25519Identity.generate()
_FUZZ_SEALED = seal(os.urandom(CHUNK + 7), _FUZZ_IDENTITY, age.X25519Identity.generate())
