"""The HSM boundary: sealing under the master key, the fleet file, and OPAQUE inside it."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from bkv_protocol import deposit, opaque, sealing
from bkv_protocol.errors import AuthenticationError
from bkv_protocol.ksf import IDENTITY_KSF
from vault_node.hsm.fleet import (
    MASTER_KEY_ENV,
    FleetHsm,
    HsmError,
    SoftwareMasterKey,
    StoredRecord,
    create_master_key_file,
    init_fleet,
    new_record_id,
)

KEY = bytes(range(32))


@pytest.fixture(scope="module")
def hsm() -> FleetHsm:
    master = SoftwareMasterKey(KEY)
    return FleetHsm.open_fleet(master, init_fleet(master))


def test_seal_open_round_trip_and_aad_binding() -> None:
    master = SoftwareMasterKey(KEY)
    sealed = master.seal(b"secret", b"aad")
    assert master.open(sealed, b"aad") == b"secret"
    assert b"secret" not in sealed
    with pytest.raises(HsmError):
        master.open(sealed, b"other aad")
    with pytest.raises(HsmError):
        SoftwareMasterKey(secrets.token_bytes(32)).open(sealed, b"aad")


@pytest.mark.parametrize("position", [0, 5, 20, -1])
def test_any_tampering_is_refused(position: int) -> None:
    master = SoftwareMasterKey(KEY)
    sealed = bytearray(master.seal(b"secret", b"aad"))
    sealed[position] ^= 0x01
    with pytest.raises(HsmError):
        master.open(bytes(sealed), b"aad")
    with pytest.raises(HsmError):
        master.open(bytes(sealed[:10]), b"aad")


def test_master_key_file_created_0600_and_loaded(tmp_path: Path) -> None:
    path = tmp_path / "secrets" / "master.key"
    assert create_master_key_file(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert not create_master_key_file(path)  # never overwritten
    master = SoftwareMasterKey.load(path, env={})
    assert SoftwareMasterKey.load(path, env={}).open(master.seal(b"x", b""), b"") == b"x"


def test_master_key_file_more_open_than_0600_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    create_master_key_file(path)
    path.chmod(0o640)
    with pytest.raises(HsmError, match="more open than 0600"):
        SoftwareMasterKey.load(path, env={})


def test_environment_overrides_the_file_and_is_validated(tmp_path: Path) -> None:
    master = SoftwareMasterKey.load(None, env={MASTER_KEY_ENV: KEY.hex()})
    assert SoftwareMasterKey(KEY).open(master.seal(b"x", b""), b"") == b"x"
    with pytest.raises(HsmError) as err:
        SoftwareMasterKey.load(None, env={MASTER_KEY_ENV: "zz" * 32})
    assert "zz" not in str(err.value)
    with pytest.raises(HsmError):
        SoftwareMasterKey.load(None, env={})


def test_no_secret_in_reprs(hsm: FleetHsm) -> None:
    master = SoftwareMasterKey(KEY)
    assert KEY.hex() not in repr(master) and "redacted" in repr(master)
    stored = StoredRecord(b"\xaa" * 192, b"\xbb" * 93, "identity")
    assert "aa" not in repr(stored) and "bb" not in repr(stored)
    assert "oprf" not in repr(hsm).lower() and len(repr(hsm)) < 80


def test_fleet_file_opens_only_with_its_master_key() -> None:
    master = SoftwareMasterKey(KEY)
    blob = init_fleet(master)
    a, b = FleetHsm.open_fleet(master, blob), FleetHsm.open_fleet(master, blob)
    assert a.fleet_public_key == b.fleet_public_key
    assert a.opaque_public_key == b.opaque_public_key
    with pytest.raises(HsmError):
        FleetHsm.open_fleet(SoftwareMasterKey(secrets.token_bytes(32)), blob)
    with pytest.raises(HsmError):
        FleetHsm.open_fleet(master, b"not a fleet")


def test_account_ids_are_keyed_per_fleet(hsm: FleetHsm) -> None:
    master = SoftwareMasterKey(KEY)
    other = FleetHsm.open_fleet(master, init_fleet(master))
    assert hsm.account_id("alice") == hsm.account_id("alice")
    assert hsm.account_id("alice") != hsm.account_id("bob")
    assert hsm.account_id("alice") != other.account_id("alice")
    assert len(hsm.account_id("alice")) == 32


def test_records_are_bound_to_account_and_record_id(hsm: FleetHsm) -> None:
    aid, rid = hsm.account_id("alice"), new_record_id()
    sealed = hsm.seal_record(aid, rid, b"record")
    assert hsm.open_record(aid, rid, sealed) == b"record"
    with pytest.raises(HsmError):
        hsm.open_record(hsm.account_id("bob"), rid, sealed)
    with pytest.raises(HsmError):
        hsm.open_record(aid, new_record_id(), sealed)


def test_requests_open_only_inside_the_hsm(hsm: FleetHsm) -> None:
    sealed = sealing.seal_request(hsm.fleet_public_key, "alice", 0, 1, b"hello")
    assert hsm.open_request("alice", 0, 1, sealed) == b"hello"
    with pytest.raises(AuthenticationError):
        hsm.open_request("alice", 0, 2, sealed)


def _register(hsm: FleetHsm, account: str, password: bytes, backup_key: bytes) -> bytes:
    state, request = opaque.client_start_registration(password)
    aid = hsm.account_id(account)
    response, ticket = hsm.start_registration(request, aid)
    record, export_key = opaque.client_finish_registration(
        state, response, ksf=IDENTITY_KSF, client_identity=account.encode()
    )
    credential = hsm.credential_from_ticket(aid, ticket)
    stored = StoredRecord(
        record, deposit.seal_deposit(export_key, account, backup_key), "x", credential
    )
    return hsm.seal_registration(aid, b"r" * 16, stored)


def test_full_opaque_login_through_the_boundary(hsm: FleetHsm) -> None:
    account, key = "alice", secrets.token_bytes(32)
    sealed = _register(hsm, account, b"pw", key)
    aid = hsm.account_id(account)
    state, ke1 = opaque.client_start_login(b"pw")
    challenge = hsm.start_login(account, aid, b"r" * 16, sealed, ke1)
    assert challenge.ksf == "x"
    ke3, session_key, export_key = opaque.client_finish_login(
        state,
        challenge.ke2,
        ksf=IDENTITY_KSF,
        context=opaque.PRODUCT_CONTEXT,
        client_identity=account.encode(),
    )
    verified = hsm.finish_login(challenge.server_state, ke3)
    assert "redacted" in repr(verified)
    released = hsm.release_deposit(verified, account, challenge.key_deposit)
    opened = deposit.open_from_session(session_key, account, released)
    assert deposit.open_deposit(export_key, account, opened) == key


def test_wrong_password_fails_ke3(hsm: FleetHsm) -> None:
    account = "bob"
    sealed = _register(hsm, account, b"right", secrets.token_bytes(32))
    state, ke1 = opaque.client_start_login(b"wrong")
    challenge = hsm.start_login(account, hsm.account_id(account), b"r" * 16, sealed, ke1)
    with pytest.raises(AuthenticationError):
        opaque.client_finish_login(
            state,
            challenge.ke2,
            ksf=IDENTITY_KSF,
            context=opaque.PRODUCT_CONTEXT,
            client_identity=account.encode(),
        )
    with pytest.raises(AuthenticationError):
        hsm.finish_login(challenge.server_state, secrets.token_bytes(64))


# ---- REGISTER_START is no password oracle (SECURITY.md, "Every use of a deposit's secrets")


def _ke2_for(hsm: FleetHsm, account: str, sealed: bytes, password: bytes) -> bytes:
    _, ke1 = opaque.client_start_login(password)
    return hsm.start_login(account, hsm.account_id(account), b"r" * 16, sealed, ke1).ke2


def test_the_oracle_check_finds_a_password_when_the_oprf_key_is_shared() -> None:
    """The attack works against the old convention (OPRF key named by the account)."""
    from tests.security.oracle import candidate_matches, masking_key_from_registration

    keys, account = opaque.generate_server_keys(), "carol"
    state, request = opaque.client_start_registration(b"secret")
    record, _ = opaque.client_finish_registration(
        state, opaque.server_registration_response(keys, request, account.encode()),
        ksf=IDENTITY_KSF, client_identity=account.encode())
    _, ke1 = opaque.client_start_login(b"any guess")
    _, ke2 = opaque.server_start_login(keys, record, account.encode(), ke1,
                                       context=opaque.PRODUCT_CONTEXT,
                                       client_identity=account.encode(), server_identity=None)
    hits = []
    for candidate in (b"123456", b"secret", b"password"):
        state, request = opaque.client_start_registration(candidate)
        response = opaque.server_registration_response(keys, request, account.encode())
        mk = masking_key_from_registration(state, response, account)
        hits.append(candidate_matches(bytes(ke2), mk, bytes(keys.public_key)))
    assert hits == [False, True, False]


def test_registration_start_evaluates_under_a_fresh_key_each_time(hsm: FleetHsm) -> None:
    """The same attack through the HSM: no REGISTER_START answer unmasks a KE2."""
    from tests.security.oracle import candidate_matches, masking_key_from_registration

    account = "dave"
    sealed = _register(hsm, account, b"secret", secrets.token_bytes(32))
    ke2 = _ke2_for(hsm, account, sealed, b"a counted guess")
    aid = hsm.account_id(account)
    for candidate in (b"secret", b"secret", b"123456"):
        state, request = opaque.client_start_registration(candidate)
        response, _ticket = hsm.start_registration(request, aid)
        mk = masking_key_from_registration(state, response, account)
        assert not candidate_matches(ke2, mk, hsm.opaque_public_key)


def test_registration_tickets_are_bound_to_their_account(hsm: FleetHsm) -> None:
    _, request = opaque.client_start_registration(b"pw")
    alice, bob = hsm.account_id("alice"), hsm.account_id("bob")
    response_1, ticket_1 = hsm.start_registration(request, alice)
    response_2, ticket_2 = hsm.start_registration(request, alice)
    assert response_1 != response_2 and ticket_1 != ticket_2  # a new OPRF key each time
    assert hsm.credential_from_ticket(alice, ticket_1) != hsm.credential_from_ticket(
        alice, ticket_2)
    for forged in (b"", ticket_1[:-1], ticket_1[:-1] + bytes([ticket_1[-1] ^ 1]),
                   bytes(len(ticket_1))):
        with pytest.raises(HsmError):
            hsm.credential_from_ticket(alice, forged)
    with pytest.raises(HsmError):
        hsm.credential_from_ticket(bob, ticket_1)  # another account's ticket


def test_records_without_a_credential_identifier_still_log_in(hsm: FleetHsm) -> None:
    """Deposits made before per-registration keys keep working (the account names the key)."""
    account, key = "erin", secrets.token_bytes(32)
    aid = hsm.account_id(account)
    # the old REGISTER_START: a record whose OPRF key the account name selects
    keys = opaque.server_keys_from(*_fleet_opaque_keys(hsm))
    state, request = opaque.client_start_registration(b"pw")
    record, export_key = opaque.client_finish_registration(
        state, opaque.server_registration_response(keys, request, account.encode()),
        ksf=IDENTITY_KSF, client_identity=account.encode())
    legacy = StoredRecord(record, deposit.seal_deposit(export_key, account, key), "x")
    assert legacy.encode()[:1] == b"\x01"
    sealed = hsm.seal_registration(aid, b"r" * 16, legacy)
    state, ke1 = opaque.client_start_login(b"pw")
    challenge = hsm.start_login(account, aid, b"r" * 16, sealed, ke1)
    ke3, _, _ = opaque.client_finish_login(state, challenge.ke2, ksf=IDENTITY_KSF,
                                           context=opaque.PRODUCT_CONTEXT,
                                           client_identity=account.encode())
    hsm.finish_login(challenge.server_state, ke3)


def _fleet_opaque_keys(hsm: FleetHsm) -> tuple[bytes, bytes]:
    """The OPRF seed and AKE private key, read the way only a test may."""
    server_keys = hsm._opaque
    return bytes(server_keys.oprf_seed), bytes(server_keys.private_key)
