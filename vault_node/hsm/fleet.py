"""The HSM boundary: every long-term fleet secret lives here and only here.

The fleet secrets (OPRF seed, OPAQUE AKE key pair, HPKE key pair, account-hash
key) are held by :class:`FleetHsm`, which exposes *operations* on them, never the
secrets. At rest they are sealed under a 32-byte master key behind the narrow
:class:`MasterKeyBackend` interface, which a PKCS#11 backend can implement; the
same master key seals every OPAQUE record stored in the Raft state, so reading a
node's disk yields nothing a password can be checked against.

Sealed blobs are ``version || nonce || ChaCha20-Poly1305(ct)`` with associated
data = a purpose label + the length-prefixed binding (e.g. account id and
record id), so a blob can't be moved to another purpose, account or record.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from bkv_protocol import deposit as deposit_mod
from bkv_protocol import opaque, sealing
from bkv_protocol.errors import AuthenticationError, ProtocolError
from vault_node.hsm.errors import HsmError
from vault_node.hsm.high_water import (
    MAC_KEY_BYTES,
    MAC_KEY_INFO,
    HighWaterMark,
    SoftwareHighWater,
    file_label,
)

MASTER_KEY_BYTES = 32
MASTER_KEY_ENV = "BKV_MASTER_KEY"
_VERSION = b"\x01"
_NONCE_BYTES = 12
_TAG_BYTES = 16
_FLEET_MAGIC = b"BKVFLEET"
_FLEET_LABEL = b"bkv fleet secrets v1\x00"
_RECORD_LABEL = b"bkv record v1\x00"
_RECORD_PLAIN_V1 = b"\x01"  # no credential identifier: the account name was the identifier
_RECORD_PLAIN_V2 = b"\x02"  # the registration's own credential identifier is stored
_ACCOUNT_LABEL = b"bkv account id v1\x00"
_TICKET_KEY_LABEL = b"bkv registration ticket key v1\x00"
_TICKET_LABEL = b"bkv registration ticket v1\x00"
_TICKET_VERSION = b"\x01"
_TICKET_NONCE_BYTES = 32
_TICKET_MAC_BYTES = 16
TICKET_BYTES = 1 + _TICKET_NONCE_BYTES + _TICKET_MAC_BYTES
# Prefix of every per-registration credential identifier. A legacy identifier is
# the account's UTF-8 name, which never contains NUL, so the two never collide.
CREDENTIAL_PREFIX = b"bkv-cred-v2\x00"
ACCOUNT_HASH_KEY_BYTES = 32
RECORD_ID_BYTES = 16


class MasterKeyBackend(Protocol):
    """What the HSM needs from its root (software or PKCS#11): sealing, and the high-water mark."""

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        """Encrypt and authenticate ``plaintext`` bound to ``aad``."""
        ...

    def open(self, sealed: bytes, aad: bytes) -> bytes:
        """Reverse :meth:`seal`; raise :class:`HsmError` on any mismatch."""
        ...

    def high_water(self, scope: str) -> HighWaterMark:
        """The anti-rollback mark named ``scope`` (one per node), kept by this HSM.

        See :mod:`vault_node.hsm.high_water`; ``scope`` comes from ``node_scope``.
        """
        ...


class SoftwareMasterKey:
    """A master key held in process memory (loaded from a 0600 file or the environment).

    Its high-water mark (:meth:`high_water`) is a MAC'd file next to the key file,
    ``<key file>.high-water.<scope>``, or at ``high_water_file``. Being on the same
    disk as the key, it cannot survive a rollback of that disk: see
    :class:`vault_node.hsm.high_water.SoftwareHighWater`.
    """

    __slots__ = ("_aead", "_mark_key", "high_water_file", "key_file")

    def __init__(
        self,
        key: bytes,
        *,
        key_file: Path | None = None,
        high_water_file: Path | None = None,
    ) -> None:
        if len(key) != MASTER_KEY_BYTES:
            raise HsmError(f"master key must be {MASTER_KEY_BYTES} bytes")
        self._aead = ChaCha20Poly1305(key)
        self._mark_key = HKDF(
            algorithm=hashes.SHA256(), length=MAC_KEY_BYTES, salt=None, info=MAC_KEY_INFO
        ).derive(key)
        self.key_file = key_file
        self.high_water_file = high_water_file

    def __repr__(self) -> str:
        return "SoftwareMasterKey(<redacted>)"

    @classmethod
    def from_file(cls, path: Path, *, high_water_file: Path | None = None) -> SoftwareMasterKey:
        """Load a hex key file; refuse one that group or others could read or write."""
        try:
            info = path.stat()
        except OSError as err:
            raise HsmError(f"cannot read master key file {path}: {err.strerror}") from None
        if stat.S_IMODE(info.st_mode) & 0o077:
            raise HsmError(
                f"master key file {path} is more open than 0600 "
                f"(mode {stat.S_IMODE(info.st_mode):04o}); run: chmod 600 {path}"
            )
        try:
            text = path.read_text("ascii").strip()
        except (OSError, UnicodeDecodeError):
            raise HsmError(f"cannot read master key file {path}") from None
        return cls(
            _parse_hex_key(text, f"master key file {path}"),
            key_file=path,
            high_water_file=high_water_file,
        )

    @classmethod
    def load(
        cls,
        path: Path | None,
        env: Mapping[str, str] | None = None,
        *,
        high_water_file: Path | None = None,
    ) -> SoftwareMasterKey:
        """``$BKV_MASTER_KEY`` (hex) if set, else the key file at ``path``."""
        environ = os.environ if env is None else env
        text = environ.get(MASTER_KEY_ENV)
        if text:
            return cls(
                _parse_hex_key(text.strip(), MASTER_KEY_ENV), high_water_file=high_water_file
            )
        if path is None:
            raise HsmError(f"no master key: set {MASTER_KEY_ENV} or master_key_file")
        return cls.from_file(path, high_water_file=high_water_file)

    def high_water_path(self, scope: str) -> Path:
        """Where the mark named ``scope`` is kept: ``high_water_file``, else beside the key."""
        if self.high_water_file is not None:
            return self.high_water_file
        if self.key_file is None:
            raise HsmError(
                f"the software HSM keeps its high-water mark next to its master key file; "
                f"with the key in ${MASTER_KEY_ENV}, set high_water_file"
            )
        return self.key_file.with_name(f"{self.key_file.name}.high-water.{file_label(scope)}")

    def high_water(self, scope: str) -> HighWaterMark:
        return SoftwareHighWater(self.high_water_path(scope), self._mark_key, scope)

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        nonce = secrets.token_bytes(_NONCE_BYTES)
        return _VERSION + nonce + self._aead.encrypt(nonce, plaintext, aad)

    def open(self, sealed: bytes, aad: bytes) -> bytes:
        if len(sealed) < 1 + _NONCE_BYTES + _TAG_BYTES or sealed[:1] != _VERSION:
            raise HsmError("sealed blob is truncated or of an unknown version")
        nonce = sealed[1 : 1 + _NONCE_BYTES]
        try:
            return self._aead.decrypt(nonce, sealed[1 + _NONCE_BYTES :], aad)
        except InvalidTag:
            raise HsmError("sealed blob does not open with this master key") from None


def create_master_key_file(path: Path) -> bool:
    """Create a fresh hex master key file with mode 0600; False if it already exists."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(secrets.token_bytes(MASTER_KEY_BYTES).hex() + "\n")
    return True


def _parse_hex_key(text: str, where: str) -> bytes:
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise HsmError(f"{where} is not hex") from None
    if len(key) != MASTER_KEY_BYTES:
        raise HsmError(f"{where} must hold {MASTER_KEY_BYTES * 2} hex digits")
    return key


def _fields(*parts: bytes) -> bytes:
    """Injective encoding: each part prefixed by its 2-byte length."""
    return b"".join(struct.pack(">H", len(p)) + p for p in parts)


def _split(blob: bytes, count: int, what: str) -> list[bytes]:
    out: list[bytes] = []
    pos = 0
    for _ in range(count):
        if pos + 2 > len(blob):
            raise HsmError(f"{what} is malformed")
        (size,) = struct.unpack_from(">H", blob, pos)
        pos += 2
        if pos + size > len(blob):
            raise HsmError(f"{what} is malformed")
        out.append(blob[pos : pos + size])
        pos += size
    if pos != len(blob):
        raise HsmError(f"{what} is malformed")
    return out


@dataclass(frozen=True)
class StoredRecord:
    """What the vault keeps per account (sealed at rest): OPAQUE record, deposit, KSF.

    ``credential_identifier`` is the OPRF key name of this registration (chosen by
    the vault at REGISTER_START, see :meth:`FleetHsm.start_registration`). Records
    written before it existed decode with ``b""``: their identifier is the account.
    """

    registration_record: bytes = field(repr=False)
    key_deposit: bytes = field(repr=False)
    ksf: str
    credential_identifier: bytes = field(default=b"", repr=False)

    def encode(self) -> bytes:
        if not self.credential_identifier:
            return _RECORD_PLAIN_V1 + _fields(
                self.registration_record, self.key_deposit, self.ksf.encode("utf-8")
            )
        return _RECORD_PLAIN_V2 + _fields(
            self.registration_record,
            self.key_deposit,
            self.ksf.encode("utf-8"),
            self.credential_identifier,
        )

    @classmethod
    def decode(cls, blob: bytes) -> StoredRecord:
        if blob[:1] == _RECORD_PLAIN_V1:
            record, deposit, ksf = _split(blob[1:], 3, "stored record")
            return cls(record, deposit, ksf.decode("utf-8"))
        if blob[:1] == _RECORD_PLAIN_V2:
            record, deposit, ksf, credential = _split(blob[1:], 4, "stored record")
            if not credential.startswith(CREDENTIAL_PREFIX):
                raise HsmError("stored record is malformed")
            return cls(record, deposit, ksf.decode("utf-8"), credential)
        raise HsmError("stored record has an unknown version")


@dataclass(frozen=True)
class LoginChallenge:
    """The outcome of a server login start: the state stays in the leader, KE2 goes out."""

    server_state: Any = field(repr=False)
    ke2: bytes = field(repr=False)
    key_deposit: bytes = field(repr=False)
    ksf: str


class VerifiedLogin:
    """Proof that KE3 verified; holds the session key without ever showing it."""

    __slots__ = ("_session_key",)

    def __init__(self, session_key: bytes) -> None:
        self._session_key = session_key

    def __repr__(self) -> str:
        return "VerifiedLogin(<redacted>)"


class FleetHsm:
    """Operations over the fleet secrets; the secrets themselves never leave this object."""

    __slots__ = (
        "_account_key",
        "_backend",
        "_hpke_private",
        "_opaque",
        "_ticket_key",
        "fleet_public_key",
    )

    def __init__(self, backend: MasterKeyBackend, plaintext_secrets: bytes) -> None:
        seed, opaque_private, hpke_private, account_key = _split(
            plaintext_secrets, 4, "fleet secrets"
        )
        if len(account_key) != ACCOUNT_HASH_KEY_BYTES:
            raise HsmError("fleet secrets are malformed")
        try:
            self._opaque = opaque.server_keys_from(seed, opaque_private)
            self.fleet_public_key = sealing.fleet_public_key(hpke_private)
        except ProtocolError:
            raise HsmError("fleet secrets are malformed") from None
        self._hpke_private = hpke_private
        self._account_key = account_key
        self._ticket_key = hmac.new(account_key, _TICKET_KEY_LABEL, hashlib.sha256).digest()
        self._backend = backend

    def __repr__(self) -> str:
        return f"FleetHsm(fleet_public_key={self.fleet_public_key.hex()[:16]}...)"

    @classmethod
    def open_fleet(cls, backend: MasterKeyBackend, sealed_fleet: bytes) -> FleetHsm:
        """Load the fleet from its sealed file contents; HsmError if the key doesn't open it."""
        if not sealed_fleet.startswith(_FLEET_MAGIC):
            raise HsmError("not a fleet file")
        plain = backend.open(sealed_fleet[len(_FLEET_MAGIC) :], _FLEET_LABEL)
        return cls(backend, plain)

    @classmethod
    def from_file(cls, backend: MasterKeyBackend, path: Path) -> FleetHsm:
        try:
            blob = path.read_bytes()
        except OSError as err:
            raise HsmError(f"cannot read fleet file {path}: {err.strerror}") from None
        return cls.open_fleet(backend, blob)

    @property
    def opaque_public_key(self) -> bytes:
        return bytes(self._opaque.public_key)

    def account_id(self, account: str) -> bytes:
        """Keyed hash of the account: what the replicated state and disks see instead."""
        message = _ACCOUNT_LABEL + account.encode("utf-8")
        return hmac.new(self._account_key, message, hashlib.sha256).digest()

    def open_request(self, account: str, shard: int, message_type: int, sealed: bytes) -> bytes:
        """Open a client's HPKE-sealed request (raises ProtocolError if it doesn't open)."""
        return sealing.open_request(self._hpke_private, account, shard, message_type, sealed)

    def start_registration(self, request: bytes, account_id: bytes) -> tuple[bytes, bytes]:
        """Answer a RegistrationRequest under a fresh OPRF key; return (response, ticket).

        Each registration gets its own credential identifier, drawn here, so the
        OPRF key this evaluation uses is one no stored deposit uses: a
        REGISTER_START can never serve as an uncounted password test against the
        account's current deposit (SECURITY.md, "Every use of a deposit's
        secrets"). The ticket carries the identifier to REGISTER_FINISH, bound to
        the account by a MAC under a fleet secret.
        """
        nonce = secrets.token_bytes(_TICKET_NONCE_BYTES)
        response = opaque.server_registration_response(
            self._opaque, request, CREDENTIAL_PREFIX + nonce
        )
        ticket = _TICKET_VERSION + nonce + self._ticket_mac(account_id, nonce)
        return bytes(response), ticket

    def credential_from_ticket(self, account_id: bytes, ticket: bytes) -> bytes:
        """The credential identifier a ticket of this account names; HsmError if forged."""
        if len(ticket) != TICKET_BYTES or ticket[:1] != _TICKET_VERSION:
            raise HsmError("registration ticket is malformed")
        nonce = ticket[1 : 1 + _TICKET_NONCE_BYTES]
        if not hmac.compare_digest(ticket[1 + _TICKET_NONCE_BYTES :],
                                   self._ticket_mac(account_id, nonce)):
            raise HsmError("registration ticket does not belong to this account")
        return CREDENTIAL_PREFIX + nonce

    def _ticket_mac(self, account_id: bytes, nonce: bytes) -> bytes:
        mac = hmac.new(self._ticket_key, _TICKET_LABEL + _fields(account_id, nonce),
                       hashlib.sha256)
        return mac.digest()[:_TICKET_MAC_BYTES]

    def seal_record(self, account_id: bytes, record_id: bytes, plaintext: bytes) -> bytes:
        return self._backend.seal(plaintext, _RECORD_LABEL + _fields(account_id, record_id))

    def open_record(self, account_id: bytes, record_id: bytes, sealed: bytes) -> bytes:
        return self._backend.open(sealed, _RECORD_LABEL + _fields(account_id, record_id))

    def seal_registration(self, account_id: bytes, record_id: bytes, record: StoredRecord) -> bytes:
        return self.seal_record(account_id, record_id, record.encode())

    def start_login(
        self,
        account: str,
        account_id: bytes,
        record_id: bytes,
        sealed_record: bytes,
        ke1: bytes,
        *,
        context: bytes = opaque.PRODUCT_CONTEXT,
    ) -> LoginChallenge:
        """Open the stored record inside the boundary and answer KE1 with KE2."""
        stored = StoredRecord.decode(self.open_record(account_id, record_id, sealed_record))
        identity = account.encode("utf-8")
        state, ke2 = opaque.server_start_login(
            self._opaque,
            stored.registration_record,
            stored.credential_identifier or identity,
            ke1,
            context=context,
            client_identity=identity,
            server_identity=None,
        )
        return LoginChallenge(state, bytes(ke2), stored.key_deposit, stored.ksf)

    def finish_login(self, server_state: Any, ke3: bytes) -> VerifiedLogin:
        """Verify KE3; raises AuthenticationError for a wrong password."""
        return VerifiedLogin(bytes(opaque.server_finish_login(server_state, ke3)))

    def release_deposit(self, verified: VerifiedLogin, account: str, key_deposit: bytes) -> bytes:
        """Seal the deposit under the session key of a verified login."""
        return deposit_mod.seal_for_session(verified._session_key, account, key_deposit)


def init_fleet(backend: MasterKeyBackend) -> bytes:
    """Generate every fleet secret and return the sealed fleet file contents."""
    keys = opaque.generate_server_keys()
    hpke_private, _ = sealing.generate_fleet_keypair()
    plain = _fields(
        bytes(keys.oprf_seed),
        bytes(keys.private_key),
        hpke_private,
        secrets.token_bytes(ACCOUNT_HASH_KEY_BYTES),
    )
    return _FLEET_MAGIC + backend.seal(plain, _FLEET_LABEL)


def new_record_id() -> bytes:
    return secrets.token_bytes(RECORD_ID_BYTES)


__all__: Sequence[str] = (
    "TICKET_BYTES",
    "AuthenticationError",
    "FleetHsm",
    "HsmError",
    "LoginChallenge",
    "MasterKeyBackend",
    "SoftwareMasterKey",
    "StoredRecord",
    "VerifiedLogin",
    "create_master_key_file",
    "init_fleet",
    "new_record_id",
)
