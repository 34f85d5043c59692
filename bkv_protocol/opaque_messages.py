"""OPAQUE-3DH wire formats and key schedule (RFC 9807, ristretto255 / SHA-512).

Fixed-size messages are split by exact length and every element is validated
here, so the protocol functions in :mod:`bkv_protocol.opaque` only ever see
well-formed values. The key-schedule helpers (HKDF-SHA-512, HMAC-SHA-512,
Expand-Label) live here too because both sides share them.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from typing import Final

from bkv_protocol import group
from bkv_protocol.errors import AuthenticationError, ProtocolError

NH: Final = 64  # hash / KDF / MAC output
NM: Final = 64  # MAC output
NX: Final = 64  # KDF extract output
NN: Final = 32  # nonces
NSEED: Final = 32  # key-pair seeds
NOK: Final = 32  # OPRF private key
NPK: Final = 32  # encoded public key
NSK: Final = 32  # encoded private key
NOE: Final = 32  # encoded OPRF element
ENVELOPE_BYTES: Final = NN + NM
RECORD_BYTES: Final = NPK + NH + ENVELOPE_BYTES  # 192
REGISTRATION_REQUEST_BYTES: Final = NOE  # 32
REGISTRATION_RESPONSE_BYTES: Final = NOE + NPK  # 64
CREDENTIAL_RESPONSE_BYTES: Final = NOE + NN + NPK + ENVELOPE_BYTES  # 192
KE1_BYTES: Final = NOE + NN + NPK  # 96
KE2_BYTES: Final = CREDENTIAL_RESPONSE_BYTES + NN + NPK + NM  # 320
KE3_BYTES: Final = NM  # 64
MAX_IDENTITY_BYTES: Final = 0xFFFF


def extract(salt: bytes, ikm: bytes) -> bytes:
    """HKDF-Extract with SHA-512 (an empty salt means NH zero bytes, as in RFC 5869)."""
    return hmac.digest(salt or bytes(NH), ikm, "sha512")


def expand(prk: bytes, info: bytes, length: int) -> bytes:
    """HKDF-Expand with SHA-512."""
    if length > 255 * NH:
        raise ProtocolError("HKDF-Expand: output too long")
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.digest(prk, block + info + bytes([counter]), "sha512")
        out += block
        counter += 1
    return out[:length]


def mac(key: bytes, msg: bytes) -> bytes:
    """HMAC-SHA-512."""
    return hmac.digest(key, msg, "sha512")


def sha512(msg: bytes) -> bytes:
    """The suite's hash function."""
    return hashlib.sha512(msg).digest()


def expand_label(secret: bytes, label: bytes, context: bytes, length: int) -> bytes:
    """Expand-Label with the "OPAQUE-" prefix (TLS 1.3 style CustomLabel)."""
    full_label = b"OPAQUE-" + label
    info = (
        length.to_bytes(2, "big")
        + bytes([len(full_label)])
        + full_label
        + bytes([len(context)])
        + context
    )
    return expand(secret, info, length)


def length_prefixed(data: bytes, what: str) -> bytes:
    """I2OSP(len, 2) || data, refusing values that cannot be encoded."""
    if len(data) > MAX_IDENTITY_BYTES:
        raise ProtocolError(f"{what}: longer than {MAX_IDENTITY_BYTES} bytes")
    return len(data).to_bytes(2, "big") + data


def _check_length(data: bytes, expected: int, what: str) -> None:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ProtocolError(f"{what}: expected bytes")
    if len(data) != expected:
        raise ProtocolError(f"{what}: expected {expected} bytes, got {len(data)}")


@dataclass(frozen=True)
class KE1:
    """CredentialRequest (blinded element) followed by the AuthRequest."""

    blinded_message: bytes
    client_nonce: bytes
    client_public_keyshare: bytes

    def serialize(self) -> bytes:
        return self.blinded_message + self.client_nonce + self.client_public_keyshare

    @classmethod
    def parse(cls, data: bytes) -> KE1:
        """Server side: exact length, both elements valid and not the identity."""
        _check_length(data, KE1_BYTES, "KE1")
        data = bytes(data)
        return cls(
            group.deserialize_element(data[:NOE], "KE1 blinded element"),
            data[NOE : NOE + NN],
            group.deserialize_element(data[NOE + NN :], "KE1 client keyshare"),
        )


@dataclass(frozen=True)
class KE2:
    """CredentialResponse followed by the AuthResponse."""

    evaluated_message: bytes
    masking_nonce: bytes
    masked_response: bytes
    server_nonce: bytes
    server_public_keyshare: bytes
    server_mac: bytes

    @property
    def credential_response(self) -> bytes:
        return self.evaluated_message + self.masking_nonce + self.masked_response

    def serialize(self) -> bytes:
        return (
            self.credential_response
            + self.server_nonce
            + self.server_public_keyshare
            + self.server_mac
        )

    @classmethod
    def parse(cls, data: bytes) -> KE2:
        """Client side: a bad length is malformed input; a bad element fails authentication."""
        _check_length(data, KE2_BYTES, "KE2")
        data = bytes(data)
        cut = [NOE, NN, NPK + ENVELOPE_BYTES, NN, NPK, NM]
        parts, pos = [], 0
        for size in cut:
            parts.append(data[pos : pos + size])
            pos += size
        try:
            group.deserialize_element(parts[0], "KE2 evaluated element")
            group.deserialize_element(parts[4], "KE2 server keyshare")
        except ProtocolError as exc:
            raise AuthenticationError(str(exc)) from None
        return cls(*parts)


@dataclass(frozen=True)
class RegistrationRecord:
    """What the vault stores per account: client public key, masking key, envelope."""

    client_public_key: bytes
    masking_key: bytes = field(repr=False)
    envelope: bytes = field(repr=False)

    def serialize(self) -> bytes:
        return self.client_public_key + self.masking_key + self.envelope

    @classmethod
    def parse(cls, data: bytes) -> RegistrationRecord:
        """Server side: exact length and a valid client public key."""
        _check_length(data, RECORD_BYTES, "registration record")
        data = bytes(data)
        return cls(
            group.deserialize_element(data[:NPK], "record client public key"),
            data[NPK : NPK + NH],
            data[NPK + NH :],
        )


def parse_registration_response(data: bytes) -> tuple[bytes, bytes]:
    """Client side: (evaluated element, server public key), both validated."""
    _check_length(data, REGISTRATION_RESPONSE_BYTES, "registration response")
    data = bytes(data)
    return (
        group.deserialize_element(data[:NOE], "registration evaluated element"),
        group.deserialize_element(data[NOE:], "registration server public key"),
    )


def parse_registration_request(data: bytes) -> bytes:
    """Server side: the blinded element, validated."""
    _check_length(data, REGISTRATION_REQUEST_BYTES, "registration request")
    return group.deserialize_element(bytes(data), "registration blinded element")


def check_ke3(data: bytes) -> bytes:
    """Server side: KE3 is just the client MAC."""
    _check_length(data, KE3_BYTES, "KE3")
    return bytes(data)


# ------------------------------------------------------------- key schedule


def require_bytes(value: object, what: str) -> bytes:
    """Refuse str and other types early, with a message that names the argument."""
    if not isinstance(value, bytes):
        raise ProtocolError(f"{what} must be bytes")
    return value


def identities(
    server_public_key: bytes,
    client_public_key: bytes,
    server_identity: bytes | None,
    client_identity: bytes | None,
) -> tuple[bytes, bytes]:
    """(server_identity, client_identity) with the public keys as defaults."""
    sid = server_public_key if server_identity is None else server_identity
    cid = client_public_key if client_identity is None else client_identity
    if not sid or not cid:
        raise ProtocolError("identities must be non-empty (use None for the default)")
    return sid, cid


def cleartext_credentials(server_public_key: bytes, sid: bytes, cid: bytes) -> bytes:
    """CleartextCredentials: what the envelope's auth tag binds the keys and identities to."""
    return (
        server_public_key
        + length_prefixed(sid, "server identity")
        + length_prefixed(cid, "client identity")
    )


def envelope_keys(randomized_password: bytes, nonce: bytes) -> tuple[bytes, bytes, bytes]:
    """(auth_key, export_key, client key-pair seed) bound to the envelope nonce."""
    return (
        expand(randomized_password, nonce + b"AuthKey", NH),
        expand(randomized_password, nonce + b"ExportKey", NH),
        expand(randomized_password, nonce + b"PrivateKey", NSEED),
    )


def xor(a: bytes, b: bytes) -> bytes:
    """Byte-wise XOR of equal-length strings (the credential-response mask)."""
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


def build_preamble(
    context: bytes,
    cid: bytes,
    ke1: bytes,
    sid: bytes,
    credential_response: bytes,
    server_nonce: bytes,
    server_public_keyshare: bytes,
) -> bytes:
    """The 3DH transcript both sides MAC and derive keys from."""
    return (
        b"OPAQUEv1-"
        + length_prefixed(require_bytes(context, "context"), "context")
        + length_prefixed(cid, "client identity")
        + ke1
        + length_prefixed(sid, "server identity")
        + credential_response
        + server_nonce
        + server_public_keyshare
    )


def derive_keys(ikm: bytes, preamble: bytes) -> tuple[bytes, bytes, bytes]:
    """(Km2, Km3, session_key) from the 3DH shared secrets and the transcript."""
    prk = extract(b"", ikm)
    transcript_hash = sha512(preamble)
    handshake_secret = expand_label(prk, b"HandshakeSecret", transcript_hash, NX)
    session_key = expand_label(prk, b"SessionKey", transcript_hash, NX)
    km2 = expand_label(handshake_secret, b"ServerMAC", b"", NX)
    km3 = expand_label(handshake_secret, b"ClientMAC", b"", NX)
    return km2, km3, session_key
