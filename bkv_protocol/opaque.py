"""OPAQUE-3DH (RFC 9807): ristretto255, HKDF-SHA-512, HMAC-SHA-512, pluggable KSF.

The vault verifies a password without ever learning it, and without holding
anything that allows an offline guess unless its OPRF seed is also stolen.
Client and server functions are pure: all state is returned as frozen
dataclasses whose secret fields are hidden from ``repr``.

Each randomized function has a ``*_with_randomness`` twin taking the random
values as keyword arguments; only the test vectors use those.

Product conventions: ``credential_identifier`` = account id bytes,
``client_identity`` = account UTF-8 bytes, ``server_identity`` = None (the
server public key), ``context`` = :data:`PRODUCT_CONTEXT`.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass, field
from typing import Final

from bkv_protocol import group, oprf
from bkv_protocol.errors import AuthenticationError, ProtocolError
from bkv_protocol.ksf import KSF
from bkv_protocol.opaque_messages import (
    ENVELOPE_BYTES,
    KE1,
    KE2,
    NH,
    NN,
    NOK,
    NPK,
    NSEED,
    RegistrationRecord,
    build_preamble,
    check_ke3,
    cleartext_credentials,
    derive_keys,
    envelope_keys,
    expand,
    extract,
    identities,
    mac,
    parse_registration_request,
    parse_registration_response,
    require_bytes,
    sha512,
    xor,
)

PRODUCT_CONTEXT: Final = b"BackupKeyVault-v1"
_OPRF_KEY_INFO: Final = b"OPAQUE-DeriveKeyPair"
_DH_KEY_INFO: Final = b"OPAQUE-DeriveDiffieHellmanKeyPair"
_PAD_BYTES: Final = NPK + ENVELOPE_BYTES


@dataclass(frozen=True, eq=False)
class ServerKeys:
    """The fleet's long-term OPAQUE secrets (held inside the vault's HSM module)."""

    oprf_seed: bytes = field(repr=False)
    private_key: bytes = field(repr=False)
    public_key: bytes


@dataclass(frozen=True, eq=False)
class RegistrationState:
    """Client state between the registration request and its finalization."""

    password: bytes = field(repr=False)
    blind: bytes = field(repr=False)


@dataclass(frozen=True, eq=False)
class ClientLoginState:
    """Client state between KE1 and KE3."""

    password: bytes = field(repr=False)
    blind: bytes = field(repr=False)
    client_secret: bytes = field(repr=False)
    ke1: bytes


@dataclass(frozen=True, eq=False)
class ServerLoginState:
    """Server state between KE2 and KE3: only what is needed to check KE3."""

    expected_client_mac: bytes = field(repr=False)
    session_key: bytes = field(repr=False)


def _derive_dh_key_pair(seed: bytes) -> tuple[bytes, bytes]:
    return oprf.derive_key_pair(seed, _DH_KEY_INFO)


def generate_server_keys() -> ServerKeys:
    """Fresh OPRF seed and AKE key pair from the OS CSPRNG."""
    private_key, public_key = _derive_dh_key_pair(secrets.token_bytes(NSEED))
    return ServerKeys(secrets.token_bytes(NH), private_key, public_key)


def server_keys_from(oprf_seed: bytes, private_key: bytes) -> ServerKeys:
    """Rebuild ServerKeys from stored secrets, validating them and deriving the public key."""
    if len(require_bytes(oprf_seed, "oprf_seed")) != NH:
        raise ProtocolError(f"oprf_seed: expected {NH} bytes, got {len(oprf_seed)}")
    scalar = group.deserialize_scalar(require_bytes(private_key, "private key"), "private key")
    return ServerKeys(bytes(oprf_seed), scalar, group.scalar_mult_base(scalar))


def _oprf_key(keys: ServerKeys, credential_identifier: bytes) -> bytes:
    """Per-credential OPRF key: one global seed, so unknown accounts look like real ones."""
    require_bytes(credential_identifier, "credential_identifier")
    seed = expand(keys.oprf_seed, credential_identifier + b"OprfKey", NOK)
    return oprf.derive_private_key(seed, _OPRF_KEY_INFO)


def _randomized_password(password: bytes, blind: bytes, evaluated: bytes, ksf: KSF) -> bytes:
    oprf_output = oprf.finalize(password, blind, evaluated)
    return extract(b"", oprf_output + ksf.stretch(oprf_output))


# --------------------------------------------------------------------- registration


def client_start_registration(password: bytes) -> tuple[RegistrationState, bytes]:
    """CreateRegistrationRequest: returns (state, 32-byte request)."""
    return client_start_registration_with_randomness(password, blind=group.random_scalar())


def client_start_registration_with_randomness(
    password: bytes, *, blind: bytes
) -> tuple[RegistrationState, bytes]:
    """client_start_registration with an injected blind (test vectors only)."""
    require_bytes(password, "password")
    scalar, blinded = oprf.blind(password, blind_scalar=blind)
    return RegistrationState(password, scalar), blinded


def server_registration_response(
    keys: ServerKeys, request: bytes, credential_identifier: bytes
) -> bytes:
    """CreateRegistrationResponse: evaluated element || server public key (64 bytes)."""
    blinded = parse_registration_request(request)
    evaluated = oprf.blind_evaluate(_oprf_key(keys, credential_identifier), blinded)
    return evaluated + keys.public_key


def client_finish_registration(
    state: RegistrationState,
    response: bytes,
    *,
    ksf: KSF,
    client_identity: bytes | None = None,
    server_identity: bytes | None = None,
) -> tuple[bytes, bytes]:
    """FinalizeRegistrationRequest: returns (192-byte record, 64-byte export key)."""
    return client_finish_registration_with_randomness(
        state,
        response,
        ksf=ksf,
        client_identity=client_identity,
        server_identity=server_identity,
        envelope_nonce=secrets.token_bytes(NN),
    )


def client_finish_registration_with_randomness(
    state: RegistrationState,
    response: bytes,
    *,
    ksf: KSF,
    envelope_nonce: bytes,
    client_identity: bytes | None = None,
    server_identity: bytes | None = None,
) -> tuple[bytes, bytes]:
    """client_finish_registration with an injected envelope nonce (test vectors only)."""
    if len(envelope_nonce) != NN:
        raise ProtocolError(f"envelope nonce: expected {NN} bytes")
    evaluated, server_public_key = parse_registration_response(response)
    randomized_password = _randomized_password(state.password, state.blind, evaluated, ksf)
    masking_key = expand(randomized_password, b"MaskingKey", NH)
    auth_key, export_key, seed = envelope_keys(randomized_password, envelope_nonce)
    client_public_key = _derive_dh_key_pair(seed)[1]
    sid, cid = identities(server_public_key, client_public_key, server_identity, client_identity)
    auth_tag = mac(auth_key, envelope_nonce + cleartext_credentials(server_public_key, sid, cid))
    record = RegistrationRecord(client_public_key, masking_key, envelope_nonce + auth_tag)
    return record.serialize(), export_key


def fake_registration_record() -> bytes:
    """A record for an unknown account that answers like a real one (client enumeration defence)."""
    client_public_key = _derive_dh_key_pair(secrets.token_bytes(NSEED))[1]
    return client_public_key + secrets.token_bytes(NH) + bytes(ENVELOPE_BYTES)


# --------------------------------------------------------------------------- login


def client_start_login(password: bytes) -> tuple[ClientLoginState, bytes]:
    """GenerateKE1: returns (state, 96-byte KE1)."""
    return client_start_login_with_randomness(
        password,
        blind=group.random_scalar(),
        client_nonce=secrets.token_bytes(NN),
        client_keyshare_seed=secrets.token_bytes(NSEED),
    )


def client_start_login_with_randomness(
    password: bytes, *, blind: bytes, client_nonce: bytes, client_keyshare_seed: bytes
) -> tuple[ClientLoginState, bytes]:
    """client_start_login with injected randomness (test vectors only)."""
    require_bytes(password, "password")
    if len(client_nonce) != NN:
        raise ProtocolError(f"client nonce: expected {NN} bytes")
    scalar, blinded = oprf.blind(password, blind_scalar=blind)
    client_secret, client_keyshare = _derive_dh_key_pair(client_keyshare_seed)
    ke1 = KE1(blinded, client_nonce, client_keyshare).serialize()
    return ClientLoginState(password, scalar, client_secret, ke1), ke1


def server_start_login(
    keys: ServerKeys,
    record: bytes,
    credential_identifier: bytes,
    ke1: bytes,
    *,
    context: bytes,
    client_identity: bytes | None = None,
    server_identity: bytes | None = None,
) -> tuple[ServerLoginState, bytes]:
    """GenerateKE2: returns (state, 320-byte KE2). Malformed KE1 or record -> ProtocolError."""
    return server_start_login_with_randomness(
        keys,
        record,
        credential_identifier,
        ke1,
        context=context,
        client_identity=client_identity,
        server_identity=server_identity,
        masking_nonce=secrets.token_bytes(NN),
        server_nonce=secrets.token_bytes(NN),
        server_keyshare_seed=secrets.token_bytes(NSEED),
    )


def server_start_login_with_randomness(
    keys: ServerKeys,
    record: bytes,
    credential_identifier: bytes,
    ke1: bytes,
    *,
    context: bytes,
    masking_nonce: bytes,
    server_nonce: bytes,
    server_keyshare_seed: bytes,
    client_identity: bytes | None = None,
    server_identity: bytes | None = None,
) -> tuple[ServerLoginState, bytes]:
    """server_start_login with injected randomness (test vectors only)."""
    if len(masking_nonce) != NN or len(server_nonce) != NN:
        raise ProtocolError(f"server nonces: expected {NN} bytes each")
    rec = RegistrationRecord.parse(record)
    request = KE1.parse(ke1)
    evaluated = oprf.blind_evaluate(_oprf_key(keys, credential_identifier), request.blinded_message)
    pad = expand(rec.masking_key, masking_nonce + b"CredentialResponsePad", _PAD_BYTES)
    credential_response = evaluated + masking_nonce + xor(pad, keys.public_key + rec.envelope)
    sid, cid = identities(keys.public_key, rec.client_public_key, server_identity, client_identity)
    keyshare_secret, keyshare = _derive_dh_key_pair(server_keyshare_seed)
    preamble = build_preamble(
        context, cid, request.serialize(), sid, credential_response, server_nonce, keyshare
    )
    ikm = (
        group.scalar_mult(keyshare_secret, request.client_public_keyshare)
        + group.scalar_mult(keys.private_key, request.client_public_keyshare)
        + group.scalar_mult(keyshare_secret, rec.client_public_key)
    )
    km2, km3, session_key = derive_keys(ikm, preamble)
    server_mac = mac(km2, sha512(preamble))
    expected_client_mac = mac(km3, sha512(preamble + server_mac))
    ke2 = credential_response + server_nonce + keyshare + server_mac
    return ServerLoginState(expected_client_mac, session_key), ke2


def client_finish_login(
    state: ClientLoginState,
    ke2: bytes,
    *,
    ksf: KSF,
    context: bytes,
    client_identity: bytes | None = None,
    server_identity: bytes | None = None,
) -> tuple[bytes, bytes, bytes]:
    """GenerateKE3: returns (KE3, session_key, export_key), 64 bytes each.

    A wrong password, a tampered KE2 or a server without the right keys all
    raise AuthenticationError; they are indistinguishable by design.
    """
    response = KE2.parse(ke2)
    randomized_password = _randomized_password(
        state.password, state.blind, response.evaluated_message, ksf
    )
    masking_key = expand(randomized_password, b"MaskingKey", NH)
    pad = expand(masking_key, response.masking_nonce + b"CredentialResponsePad", _PAD_BYTES)
    unmasked = xor(pad, response.masked_response)
    server_public_key, envelope = unmasked[:NPK], unmasked[NPK:]
    nonce, auth_tag = envelope[:NN], envelope[NN:]
    auth_key, export_key, seed = envelope_keys(randomized_password, nonce)
    client_private_key, client_public_key = _derive_dh_key_pair(seed)
    sid, cid = identities(server_public_key, client_public_key, server_identity, client_identity)
    expected_tag = mac(auth_key, nonce + cleartext_credentials(server_public_key, sid, cid))
    if not hmac.compare_digest(auth_tag, expected_tag):
        raise AuthenticationError("OPAQUE login failed: wrong password or altered server response")
    try:
        group.deserialize_element(server_public_key, "server public key")
        ikm = (
            group.scalar_mult(state.client_secret, response.server_public_keyshare)
            + group.scalar_mult(state.client_secret, server_public_key)
            + group.scalar_mult(client_private_key, response.server_public_keyshare)
        )
    except ProtocolError as exc:
        raise AuthenticationError(str(exc)) from None
    preamble = build_preamble(
        context,
        cid,
        state.ke1,
        sid,
        response.credential_response,
        response.server_nonce,
        response.server_public_keyshare,
    )
    km2, km3, session_key = derive_keys(ikm, preamble)
    expected_server_mac = mac(km2, sha512(preamble))
    if not hmac.compare_digest(response.server_mac, expected_server_mac):
        raise AuthenticationError("OPAQUE login failed: server MAC did not verify")
    client_mac = mac(km3, sha512(preamble + expected_server_mac))
    return client_mac, session_key, export_key


def server_finish_login(state: ServerLoginState, ke3: bytes) -> bytes:
    """ServerFinish: the session key, only if KE3 carries the expected client MAC."""
    client_mac = check_ke3(ke3)
    if not hmac.compare_digest(client_mac, state.expected_client_mac):
        raise AuthenticationError("OPAQUE login failed: client MAC did not verify")
    return state.session_key


__all__ = [
    "PRODUCT_CONTEXT",
    "ClientLoginState",
    "RegistrationState",
    "ServerKeys",
    "ServerLoginState",
    "client_finish_login",
    "client_finish_registration",
    "client_start_login",
    "client_start_registration",
    "fake_registration_record",
    "generate_server_keys",
    "server_finish_login",
    "server_keys_from",
    "server_registration_response",
    "server_start_login",
]
