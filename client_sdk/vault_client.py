"""The device's side of the Backup Key Vault: deposit a backup key, get it back with a password.

Registration runs OPAQUE registration and stores, next to the OPAQUE record,
the backup key encrypted under the OPAQUE export key (``bkv_protocol.deposit``),
so the vault never sees the password or the key. Recovery runs an OPAQUE
login: the vault counts the guess before it sends KE2, the client learns from
KE2 whether the password was right, and only then sends KE3, after which the
vault releases the deposit sealed under the session key.

Product conventions (shared with the vault): ``client_identity`` is the
account's UTF-8 bytes, ``server_identity`` is unset, the AKE context is
``PRODUCT_CONTEXT``. A ``str`` password is NFC-normalised before use (the same
password typed on two systems may arrive composed or decomposed); ``bytes``
are used as given.
"""

from __future__ import annotations

import unicodedata
from types import TracebackType
from typing import Any

from bkv_api.v1 import envelope_pb2
from bkv_protocol import opaque
from bkv_protocol.deposit import open_deposit, open_from_session, seal_deposit
from bkv_protocol.errors import AuthenticationError, ProtocolError
from bkv_protocol.ksf import IDENTITY_KSF, KSF, PRODUCTION_KSF, ksf_from_descriptor
from bkv_protocol.sealing import MAX_ACCOUNT_BYTES
from bkv_protocol.sharding import shard_for
from client_sdk.config import ClientConfig
from client_sdk.errors import SessionExpired, VaultProtocolError, WrongPassword
from client_sdk.vault_replies import (
    LOGIN_FINISH,
    LOGIN_START,
    REGISTER_FINISH,
    REGISTER_START,
    open_vault_reply,
    seal_client_request,
)
from client_sdk.vault_transport import ChatDTransport, TokenSource, VaultTransport

BACKUP_KEY_BYTES = 32
LOGIN_TRIES = 2  # the first login, plus one restart if the vault lost the session


class VaultClient:
    """Talks to the vault fleet through ChatD.

    Vault and network outcomes raise ``client_sdk.errors.VaultError``
    subclasses; bad arguments raise ValueError/TypeError before anything is
    sent; a config without any account token raises ConfigError here.

    ``ksf`` is the key-stretching function used at registration (its
    descriptor is stored with the record). At login the vault returns the
    descriptor recorded at registration; the client accepts it if it equals
    its own, or if ``ksf_from_descriptor`` finds it within safe bounds.
    ``transport`` replaces the gRPC path to ChatD (e.g. another network stack).
    """

    def __init__(
        self,
        config: ClientConfig,
        *,
        ksf: KSF = PRODUCTION_KSF,
        transport: VaultTransport | None = None,
    ) -> None:
        self.config = config
        self.ksf = ksf
        self._tokens = TokenSource(config)
        if transport is None:
            transport = ChatDTransport(config.chatd, config.deadline_seconds, tls=config.tls)
        self._transport: VaultTransport = transport

    def __repr__(self) -> str:
        return f"VaultClient(chatd={self.config.chatd!r}, ksf={self.ksf.descriptor!r})"

    def __enter__(self) -> VaultClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Release network resources (idempotent)."""
        self._transport.close()

    # ---- registration -------------------------------------------------------------------

    def register(
        self, account: str, backup_key: bytes, password: str | bytes, *, replace: bool = False
    ) -> None:
        """Deposit ``backup_key`` for ``account`` under ``password``.

        An account that already has a live deposit raises :class:`AlreadyRegistered`
        unless ``replace`` is set; replacing makes the old password useless.
        """
        _check_account(account)
        if not isinstance(backup_key, bytes) or len(backup_key) != BACKUP_KEY_BYTES:
            raise ValueError("backup key must be 32 bytes")
        secret = password_bytes(password)
        shard = shard_for(account, self.config.shard_count)
        identity = account.encode("utf-8")

        state, request = opaque.client_start_registration(secret)
        start = self._call(
            account,
            shard,
            REGISTER_START,
            envelope_pb2.RegisterStart(registration_request=request),
        )
        try:
            record, export_key = opaque.client_finish_registration(
                state, start.registration_response, ksf=self.ksf, client_identity=identity
            )
        except ProtocolError:
            raise VaultProtocolError("the vault's registration response is invalid") from None
        deposit = seal_deposit(export_key, account, backup_key)
        self._call(
            account,
            shard,
            REGISTER_FINISH,
            envelope_pb2.RegisterFinish(
                registration_record=record,
                key_deposit=deposit,
                ksf=self.ksf.descriptor,
                registration_ticket=start.registration_ticket,
                replace=replace,
            ),
        )

    # ---- recovery -----------------------------------------------------------------------

    def recover(self, account: str, password: str | bytes) -> bytes:
        """Return the 32-byte backup key deposited for ``account``.

        A wrong password raises :class:`WrongPassword` with the guesses left and
        never sends KE3. If the vault forgot the login session between KE2 and
        KE3 (leader change), the password is known to be right and the login
        restarts once; the restart uses one more (then reset) attempt.
        """
        _check_account(account)
        secret = password_bytes(password)
        shard = shard_for(account, self.config.shard_count)
        for _ in range(LOGIN_TRIES):
            key = self._login(account, shard, secret)
            if key is not None:
                return key
        raise SessionExpired("the vault lost the login session twice (leader changes?); try again")

    def delete(self, account: str, password: str | bytes) -> None:
        """Erase the deposit of ``account``; the right password authorises it.

        A login like :meth:`recover` (a wrong password costs an attempt and raises
        :class:`WrongPassword`), whose last step asks the vault to delete the
        record instead of releasing it. The vault commits the deletion through
        Raft, audits it and compacts it off every node's disk.
        """
        _check_account(account)
        secret = password_bytes(password)
        shard = shard_for(account, self.config.shard_count)
        for _ in range(LOGIN_TRIES):
            if self._login(account, shard, secret, delete=True) is not None:
                return
        raise SessionExpired("the vault lost the login session twice (leader changes?); try again")

    def _login(
        self, account: str, shard: int, secret: bytes, *, delete: bool = False
    ) -> bytes | None:
        """One OPAQUE login; None when the vault lost the session after KE2 (restartable).

        Returns the backup key, or ``b""`` when ``delete`` erased the deposit.
        """
        identity = account.encode("utf-8")
        state, ke1 = opaque.client_start_login(secret)
        start = self._call(account, shard, LOGIN_START, envelope_pb2.LoginStart(ke1=ke1))
        ksf = self._accept_ksf(start.ksf)
        try:
            ke3, session_key, export_key = opaque.client_finish_login(
                state,
                start.ke2,
                ksf=ksf,
                context=opaque.PRODUCT_CONTEXT,
                client_identity=identity,
            )
        except AuthenticationError:
            # Wrong password (the envelope did not open): KE3 is never sent.
            raise WrongPassword(start.attempts_left) from None
        except ProtocolError:
            raise VaultProtocolError("the vault's login response is invalid") from None
        try:
            finish = self._call(
                account,
                shard,
                LOGIN_FINISH,
                envelope_pb2.LoginFinish(
                    session_id=start.session_id, ke3=ke3, delete_deposit=delete
                ),
            )
        except SessionExpired:
            return None
        if delete:
            if not finish.deleted:
                raise VaultProtocolError("the vault did not confirm the deletion")
            return b""
        try:
            deposit = open_from_session(session_key, account, finish.sealed_deposit)
            return open_deposit(export_key, account, deposit)
        except ProtocolError:
            raise VaultProtocolError("the key released by the vault did not open") from None

    def _accept_ksf(self, descriptor: str) -> KSF:
        """The KSF recorded at registration, refused if a hostile vault picked it."""
        if descriptor == self.ksf.descriptor:
            return self.ksf
        try:
            return ksf_from_descriptor(
                descriptor, allow_identity=self.ksf.descriptor == IDENTITY_KSF.descriptor
            )
        except ProtocolError:
            raise VaultProtocolError(
                "the vault asked for unacceptable key-stretching parameters"
            ) from None

    # ---- one round trip -----------------------------------------------------------------

    def _call(self, account: str, shard: int, message_type: int, body: Any) -> Any:
        """Seal, send through ChatD, authenticate the reply; return the expected reply body."""
        request, response_key = seal_client_request(
            self.config.fleet_public_key, account, shard, message_type, body
        )
        sealed = self._transport.forward(request, self._tokens.token_for(account))
        return open_vault_reply(response_key, account, shard, message_type, sealed)


def password_bytes(password: str | bytes) -> bytes:
    """The bytes OPAQUE sees: NFC-normalised UTF-8 for ``str``, ``bytes`` unchanged."""
    if isinstance(password, str):
        secret = unicodedata.normalize("NFC", password).encode("utf-8")
    elif isinstance(password, bytes):
        secret = password
    else:
        raise TypeError("password must be str or bytes")
    if not secret:
        raise ValueError("password must not be empty")
    return secret


def _check_account(account: str) -> None:
    if not isinstance(account, str) or not account or not account.isprintable():
        raise ValueError("account must be a non-empty printable string")
    if len(account.encode("utf-8")) > MAX_ACCOUNT_BYTES:
        raise ValueError(f"account must be at most {MAX_ACCOUNT_BYTES} bytes")
