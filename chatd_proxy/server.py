"""The ChatD gRPC service: authenticate, rate-limit, route; never read the payload.

ChatD sees only the routing data of a :class:`SealedRequest` (account, shard,
type); the body is sealed to the vault fleet. It checks that the caller's
token speaks for that account, that the shard is the account's, and that the
account is within its rate, then relays the sealed reply untouched. Logs carry
shards and status codes, never accounts, tokens or payloads.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from concurrent import futures
from typing import TYPE_CHECKING, Any, NoReturn

import grpc
from grpc_health.v1 import health_pb2_grpc

from bkv_api.v1 import envelope_pb2, services_pb2, services_pb2_grpc
from bkv_ops.tls import VAULT_SERVER_NAME, ClientTls, ServerTls, TlsError
from bkv_protocol.errors import ProtocolError
from bkv_protocol.sharding import shard_for
from chatd_proxy.config import ChatDConfig
from chatd_proxy.health import ChatDHealth
from chatd_proxy.metrics import ChatDMetrics
from chatd_proxy.ratelimit import RateLimiter, client_address
from chatd_proxy.routing import (
    MAX_MESSAGE_BYTES,
    NO_QUORUM_METADATA_KEY,
    ShardRouter,
    VaultFailure,
)
from chatd_proxy.tokencache import VerifiedTokenCache

if TYPE_CHECKING:
    from chatd_proxy.status_page import StatusPage

log = logging.getLogger("bkv.chatd")

TOKEN_METADATA_KEY = "bkv-account-token"  # noqa: S105 (a header name)
STATUS_TIMEOUT_SECONDS = 1.0
GRPC_WORKERS = 32
MAX_CONCURRENT_RPCS = 256


class ChatDService(services_pb2_grpc.ChatDServicer):  # type: ignore[misc]
    """Forward and ClusterStatus; stateless apart from leader caches and rate buckets."""

    def __init__(self, config: ChatDConfig, metrics: ChatDMetrics | None = None) -> None:
        self._config = config
        self.metrics = metrics if metrics is not None else ChatDMetrics()
        self._tokens = VerifiedTokenCache(config.token_public_key)
        to_vault = vault_tls(config)
        self._routers = [
            ShardRouter(i, nodes, self.metrics.retries.inc, tls=to_vault)
            for i, nodes in enumerate(config.shards)
        ]
        self._limiter = RateLimiter(
            config.rate_limit.per_account_per_second, config.rate_limit.burst
        )
        self._address_limiter = RateLimiter(
            config.rate_limit.per_address_per_second, config.rate_limit.address_burst
        )

    @property
    def routers(self) -> list[ShardRouter]:
        return list(self._routers)

    def close(self) -> None:
        for router in self._routers:
            router.close()

    def set_shards(self, shards: tuple[tuple[str, ...], ...]) -> list[str]:
        """Route each shard to its new node list (after a membership change).

        The number of shards can't change (accounts are hashed onto it); ValueError
        then, and nothing changes. Returns one line per shard that changed.
        """
        if len(shards) != len(self._routers):
            raise ValueError(f"the config has {len(shards)} shards, ChatD runs "
                             f"{len(self._routers)}; the shard count needs a restart")
        changes = []
        for router, nodes in zip(self._routers, shards, strict=True):
            added, removed = router.set_nodes(nodes)
            if added or removed:
                changes.append(f"shard {router.shard}: +{added} -{removed}")
        return changes

    def Forward(
        self, request: envelope_pb2.SealedRequest, context: Any
    ) -> envelope_pb2.SealedResponse:
        try:
            response = self._forward(request, context)
        except Exception:
            self.metrics.request(context.code() or grpc.StatusCode.UNKNOWN)
            raise
        self.metrics.request(None)
        return response

    def _forward(
        self, request: envelope_pb2.SealedRequest, context: Any
    ) -> envelope_pb2.SealedResponse:
        self._check_address(context)  # before any signature check: a hash, not a verify
        token = _metadata(context, TOKEN_METADATA_KEY)
        if token is None:
            _abort(context, grpc.StatusCode.UNAUTHENTICATED, "missing account token")
        try:
            account = self._tokens.verify(token)
        except ProtocolError as err:
            _abort(context, grpc.StatusCode.UNAUTHENTICATED, f"account token refused: {err}")
        if account != request.account:
            _abort(context, grpc.StatusCode.PERMISSION_DENIED,
                   "the account token is for another account")
        if request.shard != shard_for(account, len(self._routers)):
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "wrong shard for this account")
        if not self._limiter.allow(account):
            self.metrics.refused("account")
            _abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED,
                   "rate limit exceeded for this account; slow down and retry")
        router = self._routers[request.shard]
        started = time.monotonic()
        try:
            response = router.forward(request, self._config.deadline_seconds)
        except VaultFailure as failure:
            self.metrics.vault_outcome(failure.code, from_vault=failure.from_vault)
            log.info("shard %d: forward failed: %s", request.shard, failure.code.name)
            if failure.no_quorum is not None:
                # tells the device "try later" at once; the sealed protocol is untouched
                unreachable, total = failure.no_quorum
                context.set_trailing_metadata(
                    ((NO_QUORUM_METADATA_KEY, f"{unreachable}/{total}"),))
            _abort(context, failure.code, failure.details)
        except Exception:
            self.metrics.vault_outcome(grpc.StatusCode.UNKNOWN, from_vault=False)
            raise
        finally:
            self.metrics.forwarded(started)
        self.metrics.vault_outcome(None, from_vault=True)
        return response

    def ClusterStatus(
        self, request: services_pb2.ClusterStatusRequest, context: Any
    ) -> services_pb2.ClusterStatusReply:
        del request
        self._check_address(context)  # one call fans out to every vault node
        reply = services_pb2.ClusterStatusReply()
        for address, status in self.node_statuses():
            if status is None:
                reply.unreachable.append(address)
            else:
                reply.nodes.append(status)
        return reply

    def _check_address(self, context: Any) -> None:
        """Refuse with RESOURCE_EXHAUSTED once the caller's host has spent its bucket."""
        if not self._address_limiter.allow(client_address(str(context.peer()))):
            self.metrics.refused("address")
            _abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED,
                   "rate limit exceeded for this client address; slow down and retry")

    def node_statuses(self) -> list[tuple[str, services_pb2.NodeStatus | None]]:
        """Every vault node's address and ``Status`` (None if it did not answer), by shard."""
        return [entry for router in self._routers
                for entry in router.status(STATUS_TIMEOUT_SECONDS)]


class ChatDServer:
    """The gRPC server process wiring: bind, serve, stop."""

    def __init__(self, config: ChatDConfig) -> None:
        self.config = config
        self.service = ChatDService(config)
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=GRPC_WORKERS, thread_name_prefix="chatd"),
            options=[
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.so_reuseport", 0),
            ],
            maximum_concurrent_rpcs=MAX_CONCURRENT_RPCS,
        )
        services_pb2_grpc.add_ChatDServicer_to_server(self.service, self._server)
        self.health = ChatDHealth(self.service.routers)
        health_pb2_grpc.add_HealthServicer_to_server(self.health.servicer, self._server)
        self.port = 0
        self.status_page: StatusPage | None = None
        self.status_port = 0

    def start(self) -> int:
        """Bind the configured address (port 0 picks one); return the bound port."""
        credentials = _server_credentials(self.config)
        try:
            self.port = (self._server.add_insecure_port(self.config.listen) if credentials is None
                         else self._server.add_secure_port(self.config.listen, credentials))
        except RuntimeError:
            self.port = 0
        if self.port == 0:
            raise OSError(f"cannot listen on {self.config.listen}")
        if self.config.metrics_address:
            self.service.metrics.serve(self.config.metrics_address)
        if self.config.status_address:
            from chatd_proxy.status_page import StatusPage

            self.status_page = StatusPage(self.service.node_statuses,
                                          self.service.metrics.requests, self.config.datacenter,
                                          shards=self.config.shards,
                                          peers=self.config.peer_status_addresses)
            self.status_port = self.status_page.serve(self.config.status_address)
        self._server.start()
        self.health.start()
        log.info("ChatD (%s) listening on port %d, %d shard(s)",
                 self.config.datacenter, self.port, len(self.config.shards))
        return self.port

    def wait(self) -> None:
        self._server.wait_for_termination()

    def reload(self, config: ChatDConfig) -> list[str]:
        """Take the shards' node lists of a re-read config (SIGHUP); other keys need a restart.

        Returns the changes made; ValueError (nothing changed) if the shard count differs.
        """
        changes = self.service.set_shards(config.shards)
        if self.status_page is not None:
            self.status_page.set_shards(config.shards)
        self.config = dataclasses.replace(self.config, shards=config.shards)
        return changes

    def stop(self, grace: float = 2.0) -> None:
        self.health.stop()
        self._server.stop(grace).wait()
        self.service.close()
        self.service.metrics.close()
        if self.status_page is not None:
            self.status_page.close()


def vault_tls(config: ChatDConfig) -> ClientTls | None:
    """Mutual TLS towards the vault nodes, or None (plaintext) when no TLS files are set.

    The name checked is the vault-node role's, not the dialled address: only a
    certificate the cluster CA issued to a vault node passes, whatever its address.
    """
    if config.tls_ca_file is None:
        return None
    return ClientTls(config.tls_ca_file, config.tls_cert_file, config.tls_key_file,
                     VAULT_SERVER_NAME)


def _server_credentials(config: ChatDConfig) -> grpc.ServerCredentials | None:
    """TLS for devices (no client certificate asked); OSError on unusable files."""
    if config.tls_cert_file is None or config.tls_key_file is None:
        return None
    try:
        return ServerTls(config.tls_cert_file, config.tls_key_file).credentials(
            require_client_auth=False)
    except TlsError as err:
        raise OSError(str(err)) from None


def _metadata(context: Any, key: str) -> str | None:
    for k, value in context.invocation_metadata() or ():
        if k == key and isinstance(value, str):
            return value
    return None


def _abort(context: Any, code: grpc.StatusCode, details: str) -> NoReturn:
    context.abort(code, details)
    raise AssertionError("unreachable: context.abort raises")
