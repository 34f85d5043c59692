"""OPAQUE-3DH (RFC 9807) ristretto255 vectors, byte for byte, with the identity KSF."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bkv_protocol import opaque
from bkv_protocol.ksf import IDENTITY_KSF

VECTORS = Path(__file__).parent.parent / "data" / "opaque_vectors.json"
_ALL = [v for v in json.loads(VECTORS.read_text()) if v["config"]["Group"] == "ristretto255"]
REAL = [v for v in _ALL if v["config"]["Fake"] == "False"]
FAKE = [v for v in _ALL if v["config"]["Fake"] == "True"]


def _h(vector: dict[str, Any], section: str, name: str) -> bytes:
    return bytes.fromhex(vector[section][name])


def _identities(vector: dict[str, Any]) -> dict[str, bytes | None]:
    inputs = vector["inputs"]
    return {
        "client_identity": bytes.fromhex(inputs["client_identity"])
        if "client_identity" in inputs
        else None,
        "server_identity": bytes.fromhex(inputs["server_identity"])
        if "server_identity" in inputs
        else None,
    }


def test_vector_counts() -> None:
    # Real vectors: identities unset and set; fake vector: unknown-account KE2.
    assert len(REAL) == 2
    assert len(FAKE) == 1
    assert [_identities(v)["client_identity"] is None for v in REAL] == [True, False]
    assert all(v["config"]["KSF"] == "Identity" for v in _ALL)


@pytest.mark.parametrize("vector", REAL, ids=["no-identities", "identities"])
def test_real_vector(vector: dict[str, Any]) -> None:
    def i(name: str) -> bytes:
        return _h(vector, "inputs", name)

    def o(name: str) -> bytes:
        return _h(vector, "outputs", name)

    ids = _identities(vector)
    context = bytes.fromhex(vector["config"]["Context"])
    keys = opaque.server_keys_from(i("oprf_seed"), i("server_private_key"))
    assert keys.public_key == i("server_public_key")
    cred_id, password = i("credential_identifier"), i("password")

    reg_state, request = opaque.client_start_registration_with_randomness(
        password, blind=i("blind_registration")
    )
    assert request == o("registration_request")
    response = opaque.server_registration_response(keys, request, cred_id)
    assert response == o("registration_response")
    record, export_key = opaque.client_finish_registration_with_randomness(
        reg_state, response, ksf=IDENTITY_KSF, envelope_nonce=i("envelope_nonce"), **ids
    )
    assert record == o("registration_upload")
    assert export_key == o("export_key")

    login_state, ke1 = opaque.client_start_login_with_randomness(
        password,
        blind=i("blind_login"),
        client_nonce=i("client_nonce"),
        client_keyshare_seed=i("client_keyshare_seed"),
    )
    assert ke1 == o("KE1")
    server_state, ke2 = opaque.server_start_login_with_randomness(
        keys,
        record,
        cred_id,
        ke1,
        context=context,
        masking_nonce=i("masking_nonce"),
        server_nonce=i("server_nonce"),
        server_keyshare_seed=i("server_keyshare_seed"),
        **ids,
    )
    assert ke2 == o("KE2")
    ke3, session_key, login_export_key = opaque.client_finish_login(
        login_state, ke2, ksf=IDENTITY_KSF, context=context, **ids
    )
    assert ke3 == o("KE3")
    assert session_key == o("session_key")
    assert login_export_key == o("export_key")
    assert opaque.server_finish_login(server_state, ke3) == o("session_key")


@pytest.mark.parametrize("vector", FAKE, ids=["fake-record"])
def test_fake_vector(vector: dict[str, Any]) -> None:
    def i(name: str) -> bytes:
        return _h(vector, "inputs", name)

    keys = opaque.server_keys_from(i("oprf_seed"), i("server_private_key"))
    assert keys.public_key == i("server_public_key")
    # The fake record: the vector's client public key and masking key, all-zero envelope.
    record = i("client_public_key") + i("masking_key") + bytes(96)
    _, ke2 = opaque.server_start_login_with_randomness(
        keys,
        record,
        i("credential_identifier"),
        i("KE1"),
        context=bytes.fromhex(vector["config"]["Context"]),
        masking_nonce=i("masking_nonce"),
        server_nonce=i("server_nonce"),
        server_keyshare_seed=i("server_keyshare_seed"),
        **_identities(vector),
    )
    assert ke2 == _h(vector, "outputs", "KE2")
