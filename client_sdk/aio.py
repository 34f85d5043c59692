"""The vault client for asyncio apps: the same operations, errors and protocol as ``VaultClient``.

The protocol steps are the shared sans-I/O flows (``client_sdk.vault_flows``);
the ChatD transport is ``grpc.aio`` with the same rotation and deadline policy
(``ForwardPlan``) as the blocking one. The CPU-bound parts of a step (OPAQUE,
sealing, Argon2id) run inline, as they take milliseconds and hold no lock.
"""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Any

import grpc

from bkv_api.v1 import services_pb2_grpc
from bkv_ops.tls import ClientTls, TlsError, open_aio_channel
from bkv_protocol.ksf import KSF, PRODUCTION_KSF
from bkv_protocol.sharding import shard_for
from client_sdk.config import ClientConfig
from client_sdk.errors import ConfigError, SessionExpired, VaultProtocolError
from client_sdk.vault_flows import (
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
from client_sdk.vault_transport import (
    _CHANNEL_OPTIONS,
    TOKEN_METADATA_KEY,
    ForwardPlan,
    TokenSource,
)

__all__ = ["AsyncChatDTransport", "AsyncVaultClient"]


class AsyncChatDTransport:
    """``ChatD.Forward`` over ``grpc.aio`` channels, one per configured ChatD."""

    def __init__(
        self, addresses: list[str], deadline_seconds: float, *, tls: ClientTls | None = None
    ) -> None:
        if not addresses:
            raise ConfigError("no ChatD address configured")
        self._addresses = list(addresses)
        self._deadline = deadline_seconds
        self._tls = tls
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._preferred = 0

    async def forward(self, request: Any, token: str) -> bytes:
        """Send ``request`` to the first ChatD that answers; return the sealed reply."""
        plan = ForwardPlan(len(self._addresses), self._deadline, self._preferred)
        while (attempt := plan.next()) is not None:
            index, timeout, pause = attempt
            if pause:
                await asyncio.sleep(pause)
            stub = services_pb2_grpc.ChatDStub(self._channel(self._addresses[index]))
            try:
                reply = await stub.Forward(
                    request, metadata=[(TOKEN_METADATA_KEY, token)], timeout=timeout
                )
            except grpc.aio.AioRpcError as err:
                plan.failed(err)
                continue
            self._preferred = index
            sealed = reply.sealed
            if not isinstance(sealed, bytes):
                raise VaultProtocolError("ChatD answered with a malformed reply")
            return sealed
        raise plan.give_up(self._addresses, self._tls)

    def _channel(self, address: str) -> grpc.aio.Channel:
        channel = self._channels.get(address)
        if channel is None:
            try:
                channel = open_aio_channel(address, self._tls, _CHANNEL_OPTIONS)
            except TlsError as err:
                raise ConfigError(str(err)) from None
            self._channels[address] = channel
        return channel

    async def close(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            await channel.close()


class AsyncVaultClient:
    """``VaultClient`` for asyncio: ``async with AsyncVaultClient(config) as vault: ...``.

    Same arguments, same behaviour, same :mod:`client_sdk.errors` classes.
    """

    def __init__(self, config: ClientConfig, *, ksf: KSF = PRODUCTION_KSF) -> None:
        self.config = config
        self.ksf = ksf
        self._tokens = TokenSource(config)
        self._transport = AsyncChatDTransport(config.chatd, config.deadline_seconds,
                                              tls=config.tls)

    def __repr__(self) -> str:
        return f"AsyncVaultClient(chatd={self.config.chatd!r}, ksf={self.ksf.descriptor!r})"

    async def __aenter__(self) -> AsyncVaultClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Release network resources (idempotent)."""
        await self._transport.close()

    async def register(
        self, account: str, backup_key: bytes, password: str | bytes, *, replace: bool = False
    ) -> None:
        """Deposit ``backup_key`` for ``account`` under ``password`` (see ``VaultClient``)."""
        check_account(account)
        check_backup_key(backup_key)
        secret = password_bytes(password)
        await self._run(account, register_flow(account, backup_key, secret, self.ksf,
                                               replace=replace))

    async def recover(self, account: str, password: str | bytes) -> bytes:
        """The 32-byte backup key deposited for ``account`` (see ``VaultClient.recover``)."""
        check_account(account)
        secret = password_bytes(password)
        for _ in range(LOGIN_TRIES):
            key = await self._run(account, login_flow(account, secret, ksf_acceptor(self.ksf)))
            if key is not None:
                return bytes(key)
        raise lost_twice()

    async def delete(self, account: str, password: str | bytes) -> None:
        """Erase the deposit of ``account``; the right password authorises it."""
        check_account(account)
        secret = password_bytes(password)
        for _ in range(LOGIN_TRIES):
            flow = login_flow(account, secret, ksf_acceptor(self.ksf), delete=True)
            if await self._run(account, flow) is not None:
                return
        raise lost_twice()

    async def _run(self, account: str, flow: Flow) -> Any:
        shard = shard_for(account, self.config.shard_count)
        try:
            step = next(flow)
            while True:
                try:
                    reply = await self._call(account, shard, *step)
                except SessionExpired as err:
                    step = flow.throw(err)
                    continue
                step = flow.send(reply)
        except StopIteration as done:
            return done.value

    async def _call(self, account: str, shard: int, message_type: int, body: Any) -> Any:
        request, response_key = seal_client_request(
            self.config.fleet_public_key, account, shard, message_type, body
        )
        sealed = await self._transport.forward(request, self._tokens.token_for(account))
        return open_vault_reply(response_key, account, shard, message_type, sealed)
