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

from types import TracebackType
from typing import Any

from bkv_protocol.ksf import KSF, PRODUCTION_KSF
from bkv_protocol.sharding import shard_for
from client_sdk.config import ClientConfig
from client_sdk.errors import SessionExpired
from client_sdk.vault_flows import (
    BACKUP_KEY_BYTES,
    LOGIN_TRIES,
    Flow,
    check_account,
    check_backup_key,
    ksf_acceptor,
    login_flow,
    lost_twice,
    password_bytes,
    register_flow,
)
from client_sdk.vault_replies import open_vault_reply, seal_client_request
from client_sdk.vault_transport import ChatDTransport, TokenSource, VaultTransport

__all__ = ["BACKUP_KEY_BYTES", "VaultClient", "password_bytes"]


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

    # ---- the three operations (the protocol steps are in ``vault_flows``) ---------------

    def register(
        self, account: str, backup_key: bytes, password: str | bytes, *, replace: bool = False
    ) -> None:
        """Deposit ``backup_key`` for ``account`` under ``password``.

        An account that already has a live deposit raises :class:`AlreadyRegistered`
        unless ``replace`` is set; replacing makes the old password useless.
        """
        check_account(account)
        check_backup_key(backup_key)
        secret = password_bytes(password)
        self._run(account, register_flow(account, backup_key, secret, self.ksf, replace=replace))

    def recover(self, account: str, password: str | bytes) -> bytes:
        """Return the 32-byte backup key deposited for ``account``.

        A wrong password raises :class:`WrongPassword` with the guesses left and
        never sends KE3. If the vault forgot the login session between KE2 and
        KE3 (leader change), the password is known to be right and the login
        restarts once; the restart uses one more (then reset) attempt.
        """
        check_account(account)
        secret = password_bytes(password)
        for _ in range(LOGIN_TRIES):
            key = self._run(account, login_flow(account, secret, ksf_acceptor(self.ksf)))
            if key is not None:
                return bytes(key)
        raise lost_twice()

    def delete(self, account: str, password: str | bytes) -> None:
        """Erase the deposit of ``account``; the right password authorises it.

        A login like :meth:`recover` (a wrong password costs an attempt and raises
        :class:`WrongPassword`), whose last step asks the vault to delete the
        record instead of releasing it. The vault commits the deletion through
        Raft, audits it and compacts it off every node's disk.
        """
        check_account(account)
        secret = password_bytes(password)
        for _ in range(LOGIN_TRIES):
            flow = login_flow(account, secret, ksf_acceptor(self.ksf), delete=True)
            if self._run(account, flow) is not None:
                return
        raise lost_twice()

    def _run(self, account: str, flow: Flow) -> Any:
        """Drive a flow: each step is one sealed round trip; errors are thrown back into it."""
        shard = shard_for(account, self.config.shard_count)
        try:
            step = next(flow)
            while True:
                try:
                    reply = self._call(account, shard, *step)
                except SessionExpired as err:
                    step = flow.throw(err)
                    continue
                step = flow.send(reply)
        except StopIteration as done:
            return done.value

    # ---- one round trip -----------------------------------------------------------------

    def _call(self, account: str, shard: int, message_type: int, body: Any) -> Any:
        """Seal, send through ChatD, authenticate the reply; return the expected reply body."""
        request, response_key = seal_client_request(
            self.config.fleet_public_key, account, shard, message_type, body
        )
        sealed = self._transport.forward(request, self._tokens.token_for(account))
        return open_vault_reply(response_key, account, shard, message_type, sealed)
