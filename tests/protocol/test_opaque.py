"""OPAQUE-3DH round trips, property tests, and every rejection on both sides."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from bkv_protocol import opaque
from bkv_protocol.errors import AuthenticationError, ProtocolError
from bkv_protocol.ksf import IDENTITY_KSF, KSF, PRODUCTION_KSF, Argon2idKSF

CTX = opaque.PRODUCT_CONTEXT
ACCOUNT = "alice@example"
CID = ACCOUNT.encode()
IDENTITY = bytes(32)
NON_CANONICAL = b"\xff" * 31 + b"\x7f"
KEYS = opaque.generate_server_keys()


@dataclass(frozen=True)
class Registered:
    password: bytes
    record: bytes
    export_key: bytes


def register(
    password: bytes, ksf: KSF = IDENTITY_KSF, keys: opaque.ServerKeys = KEYS
) -> Registered:
    state, request = opaque.client_start_registration(password)
    assert len(request) == 32
    response = opaque.server_registration_response(keys, request, CID)
    assert len(response) == 64
    record, export_key = opaque.client_finish_registration(
        state, response, ksf=ksf, client_identity=CID
    )
    return Registered(password, record, export_key)


def login(
    reg: Registered, password: bytes, ksf: KSF = IDENTITY_KSF
) -> tuple[bytes, bytes, bytes, bytes]:
    """Full login; returns (server session key, client session key, export key, KE3)."""
    client, ke1 = opaque.client_start_login(password)
    server, ke2 = opaque.server_start_login(
        KEYS, reg.record, CID, ke1, context=CTX, client_identity=CID
    )
    ke3, session_key, export_key = opaque.client_finish_login(
        client, ke2, ksf=ksf, context=CTX, client_identity=CID
    )
    return opaque.server_finish_login(server, ke3), session_key, export_key, ke3


@pytest.fixture(scope="module")
def alice() -> Registered:
    return register(b"correct horse battery staple")


@pytest.fixture
def exchange(alice: Registered) -> tuple[opaque.ClientLoginState, opaque.ServerLoginState, bytes]:
    client, ke1 = opaque.client_start_login(alice.password)
    server, ke2 = opaque.server_start_login(
        KEYS, alice.record, CID, ke1, context=CTX, client_identity=CID
    )
    return client, server, ke2


def finish(client: opaque.ClientLoginState, ke2: bytes) -> tuple[bytes, bytes, bytes]:
    return opaque.client_finish_login(
        client, ke2, ksf=IDENTITY_KSF, context=CTX, client_identity=CID
    )


def flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


# ------------------------------------------------------------------ happy paths


def test_round_trip_sizes_and_keys(alice: Registered) -> None:
    assert len(alice.record) == 192
    server_key, client_key, export_key, ke3 = login(alice, alice.password)
    assert server_key == client_key and len(client_key) == 64
    assert export_key == alice.export_key and len(ke3) == 64
    assert login(alice, alice.password)[1] != client_key  # fresh session keys


@settings(max_examples=20, deadline=None)
@given(password=st.binary(max_size=64), other=st.binary(max_size=64))
def test_property_right_password_only(password: bytes, other: bytes) -> None:
    assume(password != other)
    reg = register(password)
    server_key, client_key, export_key, _ = login(reg, password)
    assert server_key == client_key
    assert export_key == reg.export_key
    with pytest.raises(AuthenticationError):
        login(reg, other)


def test_small_argon2id_round_trip() -> None:
    ksf = Argon2idKSF(opslimit=1, memlimit=8 * 1024)
    reg = register(b"pw", ksf)
    assert login(reg, b"pw", ksf)[2] == reg.export_key
    with pytest.raises(AuthenticationError):
        login(reg, b"pw", IDENTITY_KSF)  # a different KSF is a different password


def test_production_ksf_round_trip() -> None:
    reg = register("pässwörd".encode(), PRODUCTION_KSF)
    server_key, client_key, export_key, _ = login(reg, "pässwörd".encode(), PRODUCTION_KSF)
    assert server_key == client_key and export_key == reg.export_key


def test_server_keys_from_round_trip() -> None:
    rebuilt = opaque.server_keys_from(KEYS.oprf_seed, KEYS.private_key)
    assert rebuilt.public_key == KEYS.public_key


def test_reprs_hide_secrets(alice: Registered) -> None:
    client, ke1 = opaque.client_start_login(alice.password)
    server, _ = opaque.server_start_login(
        KEYS, alice.record, CID, ke1, context=CTX, client_identity=CID
    )
    reg_state, _ = opaque.client_start_registration(alice.password)
    for obj, secrets in [
        (KEYS, [KEYS.oprf_seed, KEYS.private_key]),
        (client, [client.password, client.blind, client.client_secret]),
        (server, [server.session_key, server.expected_client_mac]),
        (reg_state, [reg_state.password, reg_state.blind]),
    ]:
        text = repr(obj)
        for secret in secrets:
            assert secret.hex() not in text and repr(secret) not in text


# ------------------------------------------------------------- server-side checks


@pytest.mark.parametrize(
    ("seed", "key"),
    [
        (bytes(63), KEYS.private_key),
        (KEYS.oprf_seed, bytes(32)),
        (KEYS.oprf_seed, b"\xff" * 32),
        (KEYS.oprf_seed, KEYS.private_key[:31]),
    ],
)
def test_server_keys_from_rejects(seed: bytes, key: bytes) -> None:
    with pytest.raises(ProtocolError):
        opaque.server_keys_from(seed, key)


@pytest.mark.parametrize("request_bytes", [b"", bytes(31), bytes(33), IDENTITY, NON_CANONICAL])
def test_registration_request_rejected(request_bytes: bytes) -> None:
    with pytest.raises(ProtocolError):
        opaque.server_registration_response(KEYS, request_bytes, CID)


def _ke1_variants() -> list[bytes]:
    _, ke1 = opaque.client_start_login(b"x")
    return [
        ke1[:95],
        ke1 + b"\x00",
        b"",
        IDENTITY + ke1[32:],
        NON_CANONICAL + ke1[32:],
        ke1[:64] + IDENTITY,
        ke1[:64] + NON_CANONICAL,
    ]


@pytest.mark.parametrize("ke1", _ke1_variants())
def test_bad_ke1_rejected(alice: Registered, ke1: bytes) -> None:
    with pytest.raises(ProtocolError) as info:
        opaque.server_start_login(KEYS, alice.record, CID, ke1, context=CTX)
    assert not isinstance(info.value, AuthenticationError)


@pytest.mark.parametrize(
    "mangle",
    [
        lambda r: r[:191],
        lambda r: r + b"\x00",
        lambda r: IDENTITY + r[32:],
        lambda r: NON_CANONICAL + r[32:],
    ],
)
def test_bad_record_rejected(alice: Registered, mangle: object) -> None:
    _, ke1 = opaque.client_start_login(alice.password)
    with pytest.raises(ProtocolError):
        opaque.server_start_login(KEYS, mangle(alice.record), CID, ke1, context=CTX)  # type: ignore[operator]


def test_tampered_ke3_rejected(
    exchange: tuple[opaque.ClientLoginState, opaque.ServerLoginState, bytes],
) -> None:
    client, server, ke2 = exchange
    ke3, _, _ = finish(client, ke2)
    for index in (0, 31, 63):
        with pytest.raises(AuthenticationError):
            opaque.server_finish_login(server, flip(ke3, index))
    with pytest.raises(ProtocolError):
        opaque.server_finish_login(server, ke3[:63])
    assert opaque.server_finish_login(server, ke3) == finish(client, ke2)[1]


def test_ke3_from_another_session_rejected(alice: Registered) -> None:
    _, _, _, old_ke3 = login(alice, alice.password)
    _, ke1 = opaque.client_start_login(alice.password)
    server, _ = opaque.server_start_login(
        KEYS, alice.record, CID, ke1, context=CTX, client_identity=CID
    )
    with pytest.raises(AuthenticationError):
        opaque.server_finish_login(server, old_ke3)


def test_empty_identity_rejected(alice: Registered) -> None:
    _, ke1 = opaque.client_start_login(alice.password)
    with pytest.raises(ProtocolError, match="non-empty"):
        opaque.server_start_login(KEYS, alice.record, CID, ke1, context=CTX, client_identity=b"")


# ------------------------------------------------------------- client-side checks


def test_wrong_password(alice: Registered) -> None:
    with pytest.raises(AuthenticationError, match="wrong password"):
        login(alice, b"correct horse battery stapler")


@pytest.mark.parametrize(
    ("what", "index"),
    [
        ("evaluated element", 0),
        ("masking nonce", 40),
        ("masked server key", 70),
        ("masked envelope nonce", 100),
        ("masked envelope tag", 150),
        ("server nonce", 200),
        ("server keyshare", 230),
        ("server MAC", 300),
    ],
)
def test_tampered_ke2_rejected(
    exchange: tuple[opaque.ClientLoginState, opaque.ServerLoginState, bytes], what: str, index: int
) -> None:
    client, _, ke2 = exchange
    with pytest.raises(AuthenticationError):
        finish(client, flip(ke2, index))
    assert finish(client, ke2)[0]  # the untouched KE2 still works


@pytest.mark.parametrize(
    ("start", "bad"), [(0, IDENTITY), (0, NON_CANONICAL), (224, IDENTITY), (224, NON_CANONICAL)]
)
def test_invalid_points_in_ke2(
    exchange: tuple[opaque.ClientLoginState, opaque.ServerLoginState, bytes], start: int, bad: bytes
) -> None:
    client, _, ke2 = exchange
    with pytest.raises(AuthenticationError):
        finish(client, ke2[:start] + bad + ke2[start + 32 :])


def test_ke2_wrong_length(
    exchange: tuple[opaque.ClientLoginState, opaque.ServerLoginState, bytes],
) -> None:
    client, _, ke2 = exchange
    for bad in (ke2[:319], ke2 + b"\x00", b""):
        with pytest.raises(ProtocolError):
            finish(client, bad)


def test_context_and_identity_must_match(
    exchange: tuple[opaque.ClientLoginState, opaque.ServerLoginState, bytes],
) -> None:
    client, _, ke2 = exchange
    with pytest.raises(AuthenticationError):
        opaque.client_finish_login(
            client, ke2, ksf=IDENTITY_KSF, context=b"other", client_identity=CID
        )
    with pytest.raises(AuthenticationError):
        opaque.client_finish_login(
            client, ke2, ksf=IDENTITY_KSF, context=CTX, client_identity=b"bob"
        )
    with pytest.raises(AuthenticationError):
        opaque.client_finish_login(
            client, ke2, ksf=IDENTITY_KSF, context=CTX, client_identity=CID, server_identity=b"evil"
        )


def test_wrong_credential_identifier_or_server_keys(alice: Registered) -> None:
    client, ke1 = opaque.client_start_login(alice.password)
    _, ke2 = opaque.server_start_login(
        KEYS, alice.record, b"bob", ke1, context=CTX, client_identity=CID
    )
    with pytest.raises(AuthenticationError):
        finish(client, ke2)
    client, ke1 = opaque.client_start_login(alice.password)
    _, ke2 = opaque.server_start_login(
        opaque.generate_server_keys(), alice.record, CID, ke1, context=CTX, client_identity=CID
    )
    with pytest.raises(AuthenticationError):
        finish(client, ke2)


def test_fake_record_fails_like_wrong_password() -> None:
    client, ke1 = opaque.client_start_login(b"guess")
    record = opaque.fake_registration_record()
    assert len(record) == 192
    _, ke2 = opaque.server_start_login(KEYS, record, CID, ke1, context=CTX, client_identity=CID)
    assert len(ke2) == 320
    with pytest.raises(AuthenticationError, match="wrong password"):
        finish(client, ke2)


@pytest.mark.parametrize("response_bytes", ["short", "identity", "non-canonical", "bad-key"])
def test_bad_registration_response(response_bytes: str) -> None:
    state, request = opaque.client_start_registration(b"pw")
    good = opaque.server_registration_response(KEYS, request, CID)
    bad = {
        "short": good[:63],
        "identity": IDENTITY + good[32:],
        "non-canonical": NON_CANONICAL + good[32:],
        "bad-key": good[:32] + IDENTITY,
    }[response_bytes]
    with pytest.raises(ProtocolError):
        opaque.client_finish_registration(state, bad, ksf=IDENTITY_KSF)


def test_password_must_be_bytes() -> None:
    with pytest.raises(ProtocolError):
        opaque.client_start_login("text")  # type: ignore[arg-type]


def test_bench_prints_figures(capsys: pytest.CaptureFixture[str]) -> None:
    from bkv_tools import bench_opaque as bench

    assert bench.main(["--runs", "3", "--client-runs", "1"]) == 0
    out = capsys.readouterr().out
    assert "server login (start + finish): n=3" in out
    assert "server registration response: n=3" in out
    assert "client login [argon2id;v=19;m=65536;t=3;p=1]: n=1" in out
