"""The device's protocol steps as sans-I/O generators, shared by the sync and asyncio clients.

A flow yields ``(message type, request body)`` for each round trip and is sent
the vault's reply body (or thrown the error the round trip raised); it returns
its result. The drivers (``VaultClient``, ``AsyncVaultClient``) only seal, send
and open: the OPAQUE, deposit and KSF logic exists once.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Generator
from typing import Any

from bkv_api.v1 import envelope_pb2
from bkv_protocol import opaque
from bkv_protocol.deposit import open_deposit, open_from_session, seal_deposit
from bkv_protocol.errors import AuthenticationError, ProtocolError
from bkv_protocol.ksf import IDENTITY_KSF, KSF, ksf_from_descriptor
from bkv_protocol.sealing import MAX_ACCOUNT_BYTES
from client_sdk.errors import SessionExpired, VaultProtocolError, WrongPassword
from client_sdk.vault_replies import LOGIN_FINISH, LOGIN_START, REGISTER_FINISH, REGISTER_START

BACKUP_KEY_BYTES = 32
LOGIN_TRIES = 2  # the first login, plus one restart if the vault lost the session

Step = tuple[int, Any]  # (message type, request body)
Flow = Generator[Step, Any, Any]


def register_flow(
    account: str, backup_key: bytes, secret: bytes, ksf: KSF, *, replace: bool
) -> Flow:
    """REGISTER_START then REGISTER_FINISH with the key deposit sealed under the export key."""
    identity = account.encode("utf-8")
    state, request = opaque.client_start_registration(secret)
    start = yield REGISTER_START, envelope_pb2.RegisterStart(registration_request=request)
    try:
        record, export_key = opaque.client_finish_registration(
            state, start.registration_response, ksf=ksf, client_identity=identity
        )
    except ProtocolError:
        raise VaultProtocolError("the vault's registration response is invalid") from None
    yield REGISTER_FINISH, envelope_pb2.RegisterFinish(
        registration_record=record,
        key_deposit=seal_deposit(export_key, account, backup_key),
        ksf=ksf.descriptor,
        registration_ticket=start.registration_ticket,
        replace=replace,
    )


def login_flow(
    account: str, secret: bytes, accept_ksf: Callable[[str], KSF], *, delete: bool = False
) -> Flow:
    """One OPAQUE login; returns the backup key, ``b""`` after a deletion, or None.

    None means the vault lost the session after KE2 (a leader change): the
    password is right and the caller may start again. A wrong password raises
    :class:`WrongPassword` and KE3 is never sent.
    """
    identity = account.encode("utf-8")
    state, ke1 = opaque.client_start_login(secret)
    start = yield LOGIN_START, envelope_pb2.LoginStart(ke1=ke1)
    ksf = accept_ksf(start.ksf)
    try:
        ke3, session_key, export_key = opaque.client_finish_login(
            state, start.ke2, ksf=ksf, context=opaque.PRODUCT_CONTEXT, client_identity=identity
        )
    except AuthenticationError:
        raise WrongPassword(start.attempts_left) from None
    except ProtocolError:
        raise VaultProtocolError("the vault's login response is invalid") from None
    try:
        finish = yield LOGIN_FINISH, envelope_pb2.LoginFinish(
            session_id=start.session_id, ke3=ke3, delete_deposit=delete
        )
    except SessionExpired:
        return None
    if delete:
        if not finish.deleted:
            raise VaultProtocolError("the vault did not confirm the deletion")
        return b""
    try:
        return open_deposit(export_key, account,
                            open_from_session(session_key, account, finish.sealed_deposit))
    except ProtocolError:
        raise VaultProtocolError("the key released by the vault did not open") from None


def ksf_acceptor(own: KSF) -> Callable[[str], KSF]:
    """The KSF recorded at registration, refused if a hostile vault picked a weak one."""

    def accept(descriptor: str) -> KSF:
        if descriptor == own.descriptor:
            return own
        try:
            return ksf_from_descriptor(
                descriptor, allow_identity=own.descriptor == IDENTITY_KSF.descriptor
            )
        except ProtocolError:
            raise VaultProtocolError(
                "the vault asked for unacceptable key-stretching parameters"
            ) from None

    return accept


def lost_twice() -> SessionExpired:
    return SessionExpired("the vault lost the login session twice (leader changes?); try again")


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


def check_account(account: str) -> None:
    if not isinstance(account, str) or not account or not account.isprintable():
        raise ValueError("account must be a non-empty printable string")
    if len(account.encode("utf-8")) > MAX_ACCOUNT_BYTES:
        raise ValueError(f"account must be at most {MAX_ACCOUNT_BYTES} bytes")


def check_backup_key(backup_key: bytes) -> None:
    if not isinstance(backup_key, bytes) or len(backup_key) != BACKUP_KEY_BYTES:
        raise ValueError("backup key must be 32 bytes")
